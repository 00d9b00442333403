"""Scale mode: a fleet of hundreds of GPU nodes and models on one small machine.

The full simulator runs a vLLM server (an HTTP site, a scheduler stepping per
token batch) per pod and a dcgm-exporter per node; at 1,000 GPUs that is more
than two cores can drive beside a control plane. Scale mode keeps everything
the operator talks to real and cuts only what it cannot see:

- ScaleKubelet is fleetsim's SimKubelet (Leases, Ready heartbeats, image pull
  and weight-loading delays, Running/Ready, preStop and drain, pods dying with
  their node) with a replica that binds no port: a FluidReplica
  (fleetsim.scale_model) computes its queue from the load it receives;
- ScaleMetrics serves every replica's vLLM gauges on one /metrics and every
  GPU's dcgm-exporter series on one /dcgm, with the labels Prometheus would
  give them on a cluster (namespace, pod, container, node; dcgm's own), so the
  operator's fleet-wide queries read what they would read from 1,000 pods;
- a model's offered load (requests/s over simulated time) is split evenly over
  its ready, non-draining replicas, as a round-robin balancer would.

ScaleSimulation is fleetsim's Simulation (moto, SQS interruptions, the
provisioner, Prometheus, the operator) with those two swapped in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes.client.exceptions import ApiException

from fleetsim.clock import SimClock
from fleetsim.dcgm import render as render_dcgm
from fleetsim.kubelet import NODE_LABEL, SimKubelet, SimNode, _devices
from fleetsim.local import free_port
from fleetsim.prometheus import DCGM_TARGETS_FILE, VLLM_TARGETS_FILE, PrometheusServer
from fleetsim.scale_model import FluidReplica, Workload
from fleetsim.scenario import Scenario
from fleetsim.sim import Simulation
from fleetsim.vllm_model import EngineProfile

log = logging.getLogger("fleetsim.scale")

RateFn = Callable[[float], float]  # simulated seconds since the load started -> requests/s
TICK_REAL_S = 0.5
LEASE_EVERY_S = 10.0  # real seconds, as the kubelet's default; the Lease lasts 40 s
STATUS_EVERY_S = 60.0
HEARTBEAT_CONCURRENCY = 6  # asyncio's default thread pool on 2 cores
VLLM_GAUGES = (
    ("vllm:num_requests_running", "Number of requests in model execution batches."),
    ("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
    ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
)


class ScaleReplica:
    """One pod's engine in scale mode: fleetsim.kubelet's Server protocol without a port."""

    def __init__(
        self, metrics: ScaleMetrics, namespace: str, pod: str, node: str, model: str, profile: EngineProfile
    ) -> None:
        self.metrics = metrics
        self.namespace, self.pod, self.node, self.model = namespace, pod, node, model
        self.fluid = FluidReplica(profile, metrics.workload)
        self.draining = False
        self.refuse_scrapes = False

    async def start(self) -> None:
        self.metrics.replicas[self.pod_key] = self

    async def stop(self) -> None:
        # A killed engine: its queue is lost with it.
        if self.metrics.replicas.pop(self.pod_key, None) is not None:
            self.metrics.lost += self.fluid.in_flight()

    def start_draining(self) -> None:
        self.draining = True

    def gpu_utilization(self) -> float:
        return self.fluid.busy

    def in_flight(self) -> int:
        return int(self.fluid.in_flight() + 0.999)

    @property
    def pod_key(self) -> tuple[str, str]:
        return (self.namespace, self.pod)


class ScaleMetrics:
    """Every replica's vLLM gauges and every node's GPUs, each on one endpoint; the load's clock."""

    def __init__(self, clock: SimClock, workload: Workload, port: int | None = None) -> None:
        self.clock = clock
        self.workload = workload
        self.port = port or free_port()
        self.replicas: dict[tuple[str, str], ScaleReplica] = {}
        self.rates: dict[tuple[str, str], RateFn] = {}  # (namespace, served model name) -> offered load
        self.kubelet: ScaleKubelet | None = None
        self.started_at: float | None = None  # simulated; the load starts at start_load()
        self.lost = 0.0
        self._runner: web.AppRunner | None = None
        self._tick: asyncio.Task[None] | None = None

    def start_load(self) -> None:
        self.started_at = self.clock.now()

    def offered(self, namespace: str, model: str) -> float:
        rate = self.rates.get((namespace, model))
        if rate is None or self.started_at is None:
            return 0.0
        return rate(self.clock.now() - self.started_at)

    def advance(self, dt: float) -> None:
        by_model: dict[tuple[str, str], list[ScaleReplica]] = {}
        for replica in self.replicas.values():
            by_model.setdefault((replica.namespace, replica.model), []).append(replica)
        for (namespace, model), replicas in by_model.items():
            serving = [r for r in replicas if not r.draining]
            share = self.offered(namespace, model) / len(serving) if serving else 0.0
            for replica in replicas:
                replica.fluid.advance(0.0 if replica.draining else share, dt)

    async def _ticker(self) -> None:
        last = self.clock.now()
        while True:
            await asyncio.sleep(TICK_REAL_S)
            now = self.clock.now()
            self.advance(now - last)
            last = now

    def vllm_page(self) -> str:
        lines: list[str] = []
        replicas = sorted(self.replicas.values(), key=lambda r: r.pod_key)
        values: dict[str, Callable[[ScaleReplica], float]] = {
            "vllm:num_requests_running": lambda r: r.fluid.running,
            "vllm:num_requests_waiting": lambda r: r.fluid.waiting,
            "vllm:kv_cache_usage_perc": lambda r: r.fluid.kv_cache_usage,
        }
        for name, doc in VLLM_GAUGES:
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge"]
            value = values[name]
            for r in replicas:
                # The labels a PodMonitor's relabelling gives (fleetsim.prometheus) plus vLLM's model_name.
                labels = (
                    f'container="vllm",model_name="{r.model}",namespace="{r.namespace}",'
                    f'node="{r.node}",pod="{r.pod}"'
                )
                lines.append(f"{name}{{{labels}}} {value(r):.6g}")
        return "\n".join(lines) + "\n"

    def dcgm_page(self) -> str:
        kubelet = self.kubelet
        if kubelet is None:
            return ""
        return "".join(render_dcgm(kubelet.gpu_samples(node), node.name) for node in kubelet.nodes.values())

    async def _vllm(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.vllm_page(), content_type="text/plain")

    async def _dcgm(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.dcgm_page(), content_type="text/plain")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._vllm)
        app.router.add_get("/dcgm", self._dcgm)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._runner = runner
        self._tick = asyncio.get_running_loop().create_task(self._ticker())

    async def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            await asyncio.gather(self._tick, return_exceptions=True)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def write_targets(self, workdir: Path) -> None:
        """file_sd: Prometheus scrapes the two pages; the series carry their own labels."""
        workdir.mkdir(parents=True, exist_ok=True)
        address = f"127.0.0.1:{self.port}"
        for name, labels in (
            (VLLM_TARGETS_FILE, {}),
            (DCGM_TARGETS_FILE, {"__metrics_path__": "/dcgm"}),
        ):
            staged = workdir / f".{name}.tmp"
            staged.write_text(json.dumps([{"targets": [address], "labels": labels}]))
            staged.replace(workdir / name)


class ScaleKubelet(SimKubelet):
    """SimKubelet whose pods run a ScaleReplica, and whose nodes have no dcgm-exporter of their own."""

    def __init__(
        self,
        api: Any,
        clock: SimClock,
        params: Any,
        metrics: ScaleMetrics,
        poll_seconds: float = 1.0,
    ) -> None:
        super().__init__(api, clock, params, server_factory=self._replica, poll_seconds=poll_seconds)
        self.metrics = metrics
        metrics.kubelet = self

    def _replica(
        self,
        host: str,
        _port: int,
        name: str,
        profile: EngineProfile,
        _clock: SimClock,
        _loras: Sequence[str],
    ) -> ScaleReplica:
        pod = next(p for p in self.pods.values() if p.ip == host)
        return ScaleReplica(self.metrics, pod.namespace, pod.name, pod.node, name, profile)

    def gpu_samples(self, node: SimNode) -> Any:
        return self._gpu_samples(node)

    async def add_node(self, manifest: dict[str, Any], ip: str) -> SimNode:
        # As SimKubelet.add_node without the per-node exporter: ScaleMetrics renders all GPUs at once.
        name = manifest["metadata"]["name"]
        labels = manifest["metadata"].setdefault("labels", {})
        labels[NODE_LABEL] = "true"
        try:
            await asyncio.to_thread(self.core.create_node, manifest)
        except ApiException as error:
            if error.status != 409:
                raise
        await asyncio.to_thread(self.core.patch_node_status, name, {"status": manifest["status"]})
        node = SimNode(
            name=name,
            ip=ip,
            product=labels.get("nvidia.com/gpu.product", ""),
            devices=_devices(manifest),
            memory_mib=int(labels.get("nvidia.com/gpu.memory", "81920")),
        )
        self.nodes[name] = node
        await self._heartbeat(node)
        return node

    async def _renew_lease(self, node: SimNode) -> None:
        lease = {"spec": {"holderIdentity": node.name, "renewTime": datetime.now(UTC)}}
        await asyncio.to_thread(self.leases.patch_namespaced_lease, node.name, "kube-node-lease", lease)

    async def _heartbeats(self) -> None:
        # SimKubelet renews every node's Lease and Ready condition one after the other; 125 nodes x 2
        # requests in a row can outlast the 40 s Lease on a loaded machine, and the node lifecycle
        # controller then marks every pod NotReady. Here Leases are renewed concurrently every
        # LEASE_EVERY_S and the Ready condition posted every STATUS_EVERY_S, as a real kubelet does
        # (node status is reported every 5 minutes when nothing changes, the Lease every 10 s).
        gate = asyncio.Semaphore(HEARTBEAT_CONCURRENCY)
        last_status = -math.inf

        async def one(node: SimNode, status: bool) -> None:
            async with gate:
                try:
                    await (self._heartbeat(node) if status else self._renew_lease(node))
                except ApiException as error:
                    log.warning("heartbeat of %s failed: %s", node.name, error.reason)

        while True:
            started = time.monotonic()
            status = started - last_status >= STATUS_EVERY_S
            await asyncio.gather(*(one(node, status) for node in list(self.nodes.values())))
            if status:
                last_status = started
            await asyncio.sleep(max(0.5, LEASE_EVERY_S - (time.monotonic() - started)))


class _Targets:
    """Stands in for Simulation's TargetWriter: the two scale-mode targets never change."""

    def __init__(self, metrics: ScaleMetrics, workdir: Path) -> None:
        self.metrics, self.workdir = metrics, workdir
        self.written = False

    def write(self) -> tuple[int, int]:
        if not self.written:
            self.metrics.write_targets(self.workdir)
            self.written = True
        return 1, 1


@dataclass(frozen=True)
class ScaleOptions:
    workload: Workload = field(default_factory=Workload)
    scrape_interval_s: float = 5.0  # dcgm-exporter's default is 30 s; the operator reads every 15 s
    pod_poll_s: float = 1.0  # the kubelet's pod list (a LIST of every pod, so not every 0.5 s)


class ScaleSimulation(Simulation):
    """fleetsim's Simulation with ScaleKubelet and ScaleMetrics in place of engines and exporters.

    `operator_kubeconfig`: the operator's own credentials (so the API server's audit log tells its
    requests from the simulator's); default the simulator's."""

    def __init__(
        self,
        scenario: Scenario,
        kubeconfig: Path,
        workdir: Path,
        options: ScaleOptions | None = None,
        operator_kubeconfig: Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scenario, kubeconfig, workdir, **kwargs)
        options = options or ScaleOptions()
        self.metrics = ScaleMetrics(self.clock, options.workload)
        self.kubelet = ScaleKubelet(
            self.api,
            self.clock,
            scenario.params.kubelet,
            metrics=self.metrics,
            poll_seconds=options.pod_poll_s,
        )
        self.prometheus = PrometheusServer(
            workdir / "prometheus", self.prometheus.port, scrape_interval_s=options.scrape_interval_s
        )
        self.targets = _Targets(self.metrics, workdir / "prometheus")  # type: ignore[assignment]
        self.operator.env["GPUFLEET_PROMETHEUS_URL"] = self.prometheus.url
        if operator_kubeconfig is not None:
            self.operator.kubeconfig = operator_kubeconfig
            self.operator.env["KUBECONFIG"] = str(operator_kubeconfig)

    async def start(self) -> None:
        await self.metrics.start()
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.metrics.stop()

    async def _sampler(self, interval: float = 5.0) -> None:
        # The full simulator's live view lists pods and queries Prometheus every 5 simulated seconds;
        # at this scale that would load the machine the benchmark measures. The caller observes.
        await asyncio.Event().wait()


__all__ = ["ScaleKubelet", "ScaleMetrics", "ScaleOptions", "ScaleReplica", "ScaleSimulation"]
