"""Run a scenario: the fleet, Prometheus, the AWS endpoint, the operator, load and faults.

Everything the scenario needs is started here and stopped at the end, in
reverse order, whatever happens in between. The control plane itself is the
caller's (the CLI starts one with hack/cluster.sh when none is given).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from fleetsim.accounting import Accounting, NodeSample, ReplicaSample
from fleetsim.clock import SimClock
from fleetsim.cloud import DEFAULT_ACCOUNT, DEFAULT_QUEUE, CloudEvents, MotoServer
from fleetsim.kubelet import SimKubelet, server_factory_for
from fleetsim.loadgen import LoadGenerator, LoadReport, parse_trace, ready_endpoints
from fleetsim.local import CRD_FILE, OperatorProcess, free_port
from fleetsim.pools import Fleet, Pool, load_fleet, node_manifest, operator_prices
from fleetsim.prometheus import PrometheusServer, TargetWriter
from fleetsim.provisioner import Provisioner
from fleetsim.scenario import Event, Scenario

log = logging.getLogger("fleetsim")

MD_LABEL = "gpufleet.io/model-deployment"


@dataclass
class NodeRecord:
    name: str
    pool: Pool
    instance_id: str


@dataclass
class Snapshot:
    """What the live view shows, in simulated time."""

    elapsed: float = 0.0
    replicas: dict[tuple[str, str], tuple[int, int]] = field(
        default_factory=dict
    )  # (zone, cap) -> (all, ready)
    nodes: dict[str, int] = field(default_factory=dict)  # capacity type -> nodes
    queue_depth: float | None = None
    running: float | None = None
    sent: int = 0
    ok: int = 0
    errors: int = 0
    ok_per_second: float = 0.0
    events: list[str] = field(default_factory=list)


@dataclass
class Summary:
    scenario: str
    load: LoadReport | None
    accounting: Accounting
    events: list[str]
    prometheus_running_series: int


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        kubeconfig: Path,
        workdir: Path,
        kubectl: str = "kubectl",
        on_tick: Callable[[Snapshot], None] | None = None,
        run_operator: bool = True,
        prometheus_port: int | None = None,
        moto_port: int | None = None,
    ) -> None:
        self.scenario = scenario
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.kubectl = kubectl
        self.on_tick = on_tick
        self.clock = SimClock(scenario.time_scale)
        self.fleet: Fleet = load_fleet(scenario.fleet)
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.kubelet = SimKubelet(
            self.api,
            self.clock,
            scenario.params.kubelet,
            server_factory=server_factory_for(self.fleet.engine),
            volumes_root=workdir / "pods",
            builds=scenario.builds,
        )
        self.nodes: dict[str, NodeRecord] = {}
        self.lost_zones: set[str] = set()
        self.spot_out_zones: set[str] = set()  # zones whose spot capacity ran out (spotOutage events)
        self.snapshot = Snapshot()
        self.accounting = Accounting()
        self.moto = MotoServer(moto_port or free_port(), log=workdir / "moto.log")
        self.cloud: CloudEvents | None = None
        self.prometheus = PrometheusServer(workdir / "prometheus", prometheus_port or free_port())
        self.targets = TargetWriter(self.core, workdir / "prometheus")
        self.operator = OperatorProcess(
            kubeconfig,
            workdir / "operator",
            {
                "GPUFLEET_WEBHOOK_ENABLED": "false",
                # The autoscaler reads the simulator's Prometheus, as it would the cluster's.
                "GPUFLEET_PROMETHEUS_URL": self.prometheus.url,
                **operator_cloud_env(
                    self.moto.endpoint_url,
                    self.fleet.region,
                    scenario.time_scale,
                    scenario.params.cloud.spot_notice_seconds,
                ),
                "GPUFLEET_PRICES": json.dumps(operator_prices(self.fleet.pools)),
                **scenario.operator_env,
            },
        )
        self.loadgen: LoadGenerator | None = None
        self.run_operator = run_operator
        self.provisioner: Provisioner | None = None
        self._counters: dict[str, int] = {}
        self._background: list[asyncio.Task[None]] = []

    # ---- fleet -----------------------------------------------------------------------------------

    def _note(self, text: str) -> None:
        stamp = f"t={self.snapshot.elapsed:6.0f}s"
        self.snapshot.events.append(f"{stamp} {text}")
        log.info("%s %s", stamp, text)

    async def launch(self, pool: Pool) -> NodeRecord:
        """A new instance of the pool joins the cluster as a Node."""
        index = self._counters[pool.name] = self._counters.get(pool.name, 0) + 1
        assert self.cloud is not None
        instance_id = await asyncio.to_thread(self.cloud.launch_instance, pool)
        ip = self.kubelet.addresses.take("node")
        manifest = node_manifest(pool, index, instance_id, ip)
        await self.kubelet.add_node(manifest, ip)
        record = NodeRecord(manifest["metadata"]["name"], pool, instance_id)
        self.nodes[record.name] = record
        return record

    async def lose_node(self, name: str, reason: str) -> None:
        record = self.nodes.pop(name, None)
        await self.kubelet.remove_node(name)
        if record is not None and self.cloud is not None:
            await asyncio.to_thread(self.cloud.terminate_instance, record.instance_id)
            await asyncio.to_thread(
                self.cloud.state_change, record.instance_id, "shutting-down", datetime.now(UTC)
            )
        self._note(f"node {name} gone ({reason})")

    async def interrupt(
        self, name: str, rebalance_first: float | None, notice_s: float | None = None
    ) -> None:
        record = self.nodes.get(name)
        if record is None or self.cloud is None:
            self._note(f"interrupt: no node {name}")
            return
        if rebalance_first:
            await asyncio.to_thread(
                self.cloud.rebalance_recommendation, record.instance_id, record.pool.zone, datetime.now(UTC)
            )
            self._note(f"rebalance recommendation for {name} ({record.instance_id})")
            await self.clock.sleep(rebalance_first)
        await asyncio.to_thread(
            self.cloud.spot_interruption_warning, record.instance_id, record.pool.zone, datetime.now(UTC)
        )
        notice = self.scenario.params.cloud.spot_notice_seconds if notice_s is None else notice_s
        self._note(f"spot interruption warning for {name} ({record.instance_id}), {notice:.0f}s notice")
        await self.clock.sleep(notice)
        await self.lose_node(name, "spot instance reclaimed")

    async def spot_outage(self, zone: str, seconds: float) -> None:
        """No spot node can be launched in `zone` for `seconds` simulated seconds; running ones stay."""
        self.spot_out_zones.add(zone)
        self._note(f"spot capacity out in {zone} for {seconds:.0f}s")
        try:
            await self.clock.sleep(seconds)
        finally:
            self.spot_out_zones.discard(zone)
        self._note(f"spot capacity back in {zone}")

    async def _run_event(self, event: Event) -> None:
        if event.interrupt is not None:
            target = event.interrupt.node or next(
                (n for n, r in sorted(self.nodes.items()) if r.pool.name == event.interrupt.pool), None
            )
            if target is None:
                self._note(f"interrupt: pool {event.interrupt.pool} has no node")
                return
            await self.interrupt(
                target, event.interrupt.rebalance_first_seconds, event.interrupt.notice_seconds
            )
        elif event.zone_outage is not None:
            zone = event.zone_outage
            self.lost_zones.add(zone)
            self._note(f"zone outage: {zone}")
            for name in [n for n, r in self.nodes.items() if r.pool.zone == zone]:
                await self.lose_node(name, f"zone {zone} down")
        elif event.spot_outage is not None:
            await self.spot_outage(event.spot_outage.zone, event.spot_outage.seconds)
        elif event.delete_node is not None:
            await self.lose_node(event.delete_node, "deleted")
        elif event.scale is not None:
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object_scale,
                "gpufleet.io",
                "v1alpha1",
                self.scenario.namespace,
                "modeldeployments",
                event.scale.model_deployment,
                {"spec": {"replicas": event.scale.replicas}},
            )
            self._note(f"kubectl scale md/{event.scale.model_deployment} --replicas={event.scale.replicas}")
        elif event.patch is not None:
            await self.patch_model_deployment(event.patch.model_deployment, event.patch.spec)

    async def patch_model_deployment(self, name: str, spec: dict[str, Any]) -> None:
        """`kubectl patch md/NAME --type merge -p '{"spec": ...}'`: a JSON merge patch of the spec. A refusal
        (no such ModelDeployment, a spec the API server rejects) is recorded, not raised: it is part of the
        story, as it would be for someone typing the command."""
        body = {"spec": spec}
        command = f"kubectl patch md/{name} --type merge -p '{json.dumps(body, separators=(',', ':'))}'"
        try:
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object,
                "gpufleet.io",
                "v1alpha1",
                self.scenario.namespace,
                "modeldeployments",
                name,
                body,
                _content_type="application/merge-patch+json",
            )
        except ApiException as error:
            self._note(f"{command}: refused ({error.status} {error.reason})")
            return
        self._note(command)

    async def _timeline(self) -> None:
        started = self.clock.now()
        tasks = []
        for event in sorted(self.scenario.events, key=lambda e: e.at):
            await self.clock.sleep(max(0.0, event.at - (self.clock.now() - started)))
            tasks.append(asyncio.get_running_loop().create_task(self._run_event(event)))
        await asyncio.gather(*tasks)

    # ---- observation -----------------------------------------------------------------------------

    def _pods(self) -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(
            self.scenario.namespace, label_selector=MD_LABEL, _preload_content=False
        )
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def _sample(self, seconds: float) -> None:
        replicas = []
        counts: dict[tuple[str, str], list[int]] = {}
        for pod in self._pods():
            labels = pod["metadata"].get("labels", {})
            key = (labels.get("gpufleet.io/zone", ""), labels.get("gpufleet.io/capacity-type", ""))
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions", [])
            )
            replicas.append(ReplicaSample(key[0], key[1], ready))
            entry = counts.setdefault(key, [0, 0])
            entry[0] += 1
            entry[1] += int(ready)
        nodes = [
            NodeSample(r.pool.name, r.pool.capacity_type, r.pool.gpus_per_node, r.pool.hourly_price())
            for r in self.nodes.values()
        ]
        self.accounting.add(seconds, replicas, nodes)
        self.snapshot.replicas = {k: (v[0], v[1]) for k, v in counts.items()}
        self.snapshot.nodes = {}
        for node in nodes:
            self.snapshot.nodes[node.capacity_type] = self.snapshot.nodes.get(node.capacity_type, 0) + 1

    def _query(self, promql: str) -> float | None:
        try:
            result = self.prometheus.query(promql)
        except Exception:
            return None
        return float(result[0]["value"][1]) if result else None

    async def _sampler(self, interval: float = 5.0) -> None:
        while True:
            await self.clock.sleep(interval)
            self.snapshot.elapsed += interval
            await asyncio.to_thread(self._sample, interval)
            model = self.scenario.load.model if self.scenario.load else ""
            self.snapshot.queue_depth = await asyncio.to_thread(
                self._query, f'sum(vllm:num_requests_waiting{{model_name="{model}"}})'
            )
            self.snapshot.running = await asyncio.to_thread(
                self._query, f'sum(vllm:num_requests_running{{model_name="{model}"}})'
            )
            if self.loadgen is not None:
                report = self.loadgen.report()
                self.snapshot.ok_per_second = (report.ok - self.snapshot.ok) / interval
                self.snapshot.sent, self.snapshot.ok = report.sent, report.ok
                self.snapshot.errors = sum(report.errors.values())
            if self.on_tick is not None:
                self.on_tick(self.snapshot)

    async def _targets(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.targets.write)
            await asyncio.sleep(1.0)

    # ---- lifecycle -------------------------------------------------------------------------------

    def _kubectl(self, *args: str) -> str:
        result = subprocess.run(
            [self.kubectl, "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def _ready(self) -> bool:
        for path in self.scenario.apply:
            for name in self._names_in(path):
                try:
                    status = self.custom.get_namespaced_custom_object(
                        "gpufleet.io", "v1alpha1", self.scenario.namespace, "modeldeployments", name
                    ).get("status", {})
                except ApiException:
                    return False
                desired = status.get("desiredReplicas", 0)
                if desired == 0 or status.get("readyReplicas", 0) < desired:
                    return False
        return True

    @staticmethod
    def _names_in(path: Path) -> list[str]:
        import yaml

        return [
            d["metadata"]["name"]
            for d in yaml.safe_load_all(path.read_text())
            if isinstance(d, dict) and d.get("kind") == "ModelDeployment"
        ]

    async def _provision_loop(self, provisioner: Provisioner) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                for pool in await asyncio.to_thread(
                    provisioner.decide, self.nodes, self.lost_zones, self.spot_out_zones
                ):
                    asyncio.get_running_loop().create_task(self._provision(pool, provisioner))
            except Exception:
                log.exception("provisioning failed")

    async def _provision(self, pool: Pool, provisioner: Provisioner) -> None:
        self._note(f"provisioning a node in {pool.name}")
        await self.clock.sleep(self.fleet.provisioning_delay_s + self.fleet.gpu_boot_extra_s)
        try:
            record = await self.launch(pool)
            self._note(f"node {record.name} joined ({pool.zone}, {pool.capacity_type})")
        finally:
            provisioner.landed(pool)

    async def start(self) -> None:
        """Bring up the AWS endpoint, the nodes, Prometheus and the operator; apply the manifests."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.moto.start)
        self.cloud = CloudEvents(self.moto.endpoint_url, self.fleet.region)
        await asyncio.to_thread(self.cloud.create_queue)
        await asyncio.to_thread(self.kubelet.reserve_addresses_in_use)
        self.kubelet.start()
        for pool in self.fleet.pools:
            for _ in range(pool.count):
                await self.launch(pool)
        await asyncio.to_thread(self.targets.write)
        await asyncio.to_thread(self.prometheus.start)
        self._background.append(loop.create_task(self._targets()))
        await asyncio.to_thread(self._kubectl, "apply", "--server-side", "-f", str(CRD_FILE))
        await asyncio.to_thread(
            self._kubectl,
            "wait",
            "--for",
            "condition=Established",
            "--timeout=60s",
            "crd/modeldeployments.gpufleet.io",
        )
        if self.run_operator:
            await asyncio.to_thread(self.operator.start)
        self.provisioner = Provisioner(self.core, self.fleet)
        self._background.append(loop.create_task(self._provision_loop(self.provisioner)))
        for path in self.scenario.apply:
            await asyncio.to_thread(self._kubectl, "apply", "-n", self.scenario.namespace, "-f", str(path))
        self._note("applied " + ", ".join(p.name for p in self.scenario.apply))
        self._background.append(loop.create_task(self._sampler()))

    async def wait_ready(self) -> None:
        deadline = self.clock.now() + self.scenario.ready_timeout
        while not await asyncio.to_thread(self._ready):
            if self.clock.now() > deadline:
                raise RuntimeError(f"not Ready within {self.scenario.ready_timeout:.0f} simulated seconds")
            await asyncio.sleep(0.5)
        self._note("every ModelDeployment is Ready")

    async def stop(self) -> None:
        """Stop everything start() started, in reverse order; safe after a partial start."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        self.operator.stop()
        await self.kubelet.stop()
        with contextlib.suppress(Exception):
            self.prometheus.stop()
        with contextlib.suppress(Exception):
            self.moto.stop()

    async def run(self) -> Summary:
        """The whole scenario; returns its summary. Stops everything it started."""
        try:
            await self.start()
            await self.wait_ready()
            report = await self._load_and_events()
            running = await asyncio.to_thread(self.prometheus.query, "vllm:num_requests_running")
            return Summary(
                self.scenario.name, report, self.accounting, list(self.snapshot.events), len(running)
            )
        finally:
            await self.stop()

    async def _load_and_events(self) -> LoadReport | None:
        timeline = asyncio.get_running_loop().create_task(self._timeline())
        spec = self.scenario.load
        report = None
        if spec is not None:
            namespace = self.scenario.namespace
            self.loadgen = LoadGenerator(
                lambda: ready_endpoints(self.core, namespace, spec.service),
                spec.model,
                parse_trace(spec.trace),
                self.clock,
                prompt_tokens=spec.prompt_tokens,
                max_tokens=spec.max_tokens,
            )
            await self.loadgen.run(self.scenario.duration)
            report = self.loadgen.report()
        else:
            await self.clock.sleep(self.scenario.duration)
        if not timeline.done():
            timeline.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timeline
        return report


def operator_cloud_env(
    moto_endpoint: str, region: str, time_scale: float, notice_s: float = 120.0
) -> dict[str, str]:
    """What a gpufleet operator needs to read this simulator's interruption queue, timers time-scaled.

    The queue URL is known before the queue exists (moto's account, fleetsim's queue name), so an
    operator can be started first; it backs off for at most 2 s while the queue is missing.
    The failover timers are divided by the time scale like every simulated delay: the spot notice
    (the operator counts a warning's deadline from it), the drain margin before a deadline, the
    pending time that makes spot unavailable, the wait before retrying it, the window in which
    lost nodes make a zone lost, and how long replicas on a NotReady node are kept.
    """

    def scaled(seconds: float) -> str:
        return str(max(1, round(seconds / time_scale)))

    return {
        "GPUFLEET_INTERRUPTION_QUEUE_URL": f"{moto_endpoint}/{DEFAULT_ACCOUNT}/{DEFAULT_QUEUE}",
        "GPUFLEET_AWS_REGION": region,
        "GPUFLEET_AWS_ENDPOINT_URL": moto_endpoint,
        "GPUFLEET_INTERRUPTION_QUEUE_MAX_BACKOFF_SECONDS": "2",
        # Short polls and visibility: a long poll left open by an operator that was stopped holds
        # the messages it swallows invisible for the visibility timeout (20 s real by default).
        "GPUFLEET_INTERRUPTION_QUEUE_WAIT_SECONDS": "1",
        "GPUFLEET_INTERRUPTION_QUEUE_VISIBILITY_SECONDS": scaled(20),
        # moto accepts any credentials; these keep boto3 from looking for real ones.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "GPUFLEET_SPOT_NOTICE_SECONDS": scaled(notice_s),
        "GPUFLEET_ZONE_LOSS_WINDOW_SECONDS": scaled(600),
        "GPUFLEET_INTERRUPTION_DRAIN_SECONDS": scaled(60),
        "GPUFLEET_SPOT_FALLBACK_AFTER_SECONDS": scaled(300),
        "GPUFLEET_SPOT_RETURN_AFTER_SECONDS": scaled(900),
        "GPUFLEET_NOT_READY_EVICTION_SECONDS": scaled(300),
    }
