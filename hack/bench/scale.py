"""Scale benchmark: the operator's own cost on a 1,000-GPU fleet as the number of models grows.

    python hack/bench/scale.py [--n 10 50 200] [--window 150] [--time-scale 10] [--kubeconfig PATH]

For each N in turn, on one control plane: a fresh scale-mode fleet (fleetsim.scale_fleet: 125
p4de.24xlarge nodes = 1,000 A100 80GB over three zones, spot, on-demand and MIG 3g.40gb pools; the
real scheduler, controller-manager, Prometheus, moto SQS and a gpufleet operator) in a fresh
namespace with N autoscaled ModelDeployments: every tenth Llama 3 70B TP4, three in ten Llama 3 8B
on a MIG slice, the rest Llama 3 8B TP1. Once every one is Ready the load starts and runs for
`--window` real seconds: most models at a steady half of their replicas' capacity, 15 % of them
(the 8B ones) on a diurnal curve from 0.4 to 2.6 replicas' worth, one simulated "day" per window,
so that at N = 200 about 30 GPUs come and go; three spot interruption warnings, each for the
spot node hosting the most replicas at the time.

Printed per N, measured over the window: the operator's CPU (cores, mean and p99 over sliding
10 s windows, /proc/<pid>/stat), its peak RSS (VmHWM), its API requests per second by verb (the
API server's audit log, which records only the operator's service account), Prometheus queries
per second (Prometheus's own counter; nothing else queries it during the window), reconcile
p50/p99 (gpufleet_reconcile_duration_seconds), autoscaler sweep p50/max
(gpufleet_autoscaler_sweep_duration_seconds), and the real seconds from each spot warning to the
first and to the last replacement pod of the doomed replicas. Then how each grows from the
smallest N to the largest. Figures only, never assertions. See hack/bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from benchkit import BenchError, fleet_in_namespace, log, or_failure, require_operator_alive
from kubernetes import client, config
from reconcile import histogram_quantile, scrape

from fleetsim.loadgen import DiurnalTrace
from fleetsim.local import ROOT, ControlPlane, control_plane
from fleetsim.scale_fleet import ScaleOptions, ScaleSimulation
from fleetsim.scale_model import FluidReplica, Workload
from fleetsim.scenario import parse_scenario
from fleetsim.vllm_model import profile_for
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION
from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT

ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")
GPU = "NVIDIA-A100-SXM4-80GB"
MIG = "3g.40gb"
# 125 nodes: (spot, on-demand, MIG on-demand) per zone; spot pools may grow by 2 for replacements.
NODES = {"us-east-1a": (26, 12, 4), "us-east-1b": (26, 12, 4), "us-east-1c": (25, 12, 4)}
WORKLOAD = Workload(prompt=512, output=128)
STEADY_LOAD = 0.5  # of the replicas' capacity
SWING_LOW, SWING_HIGH = 0.4, 2.6  # one replica's capacity, times
INTERRUPT_AT = (0.3, 0.55, 0.8)  # of the window
SA_NAME = "gpufleet-bench-operator"
SA_USER = f"system:serviceaccount:default:{SA_NAME}"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    # Only service accounts: the operator runs as one; the simulator and the control plane as admin.
    "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}],
}
READY_TIMEOUT_S = 900.0
REPLACEMENT_TIMEOUT_S = 60.0
CPU_WINDOW_S = 10


# --- the fleet and the models -----------------------------------------------------------------------


def fleet_yaml(prefix: str) -> dict[str, Any]:
    pools = []
    for zone, (spot, on_demand, mig) in NODES.items():
        z = zone[-1]
        pools += [
            {"name": f"{prefix}-{z}-spot", "capacity_type": "spot", "count": spot, "max_count": spot + 2},
            {
                "name": f"{prefix}-{z}-od",
                "capacity_type": "on-demand",
                "count": on_demand,
                "max_count": on_demand,
            },
            {
                "name": f"{prefix}-{z}-mig",
                "capacity_type": "on-demand",
                "count": mig,
                "max_count": mig,
                "mig_profile": MIG,
            },
        ]
        for pool in pools[-3:]:
            pool.update(instance_type="p4de.24xlarge", zone=zone)
    return {"region": "us-east-1", "provisioning_delay_s": 35, "gpu_boot_extra_s": 45, "pools": pools}


@dataclass(frozen=True)
class Kind:
    name: str
    model: str
    tp: int
    mig: str | None
    params: float
    capacity: float  # requests/s one replica serves (FluidReplica)
    gpus: float  # GPUs per replica


def _kind(name: str, model: str, tp: int, mig: str | None, params: float) -> Kind:
    profile = profile_for(model, tp, GPU, mig_profile=mig, max_model_len=4096)
    gpus = tp if mig is None else 1 / 2  # 3g.40gb: two per GPU
    return Kind(name, model, tp, mig, params, FluidReplica(profile, WORKLOAD).capacity, gpus)


KINDS = {
    "70b": _kind("70b", "Meta-Llama-3-70B-Instruct", 4, None, 70.6e9),
    "8b": _kind("8b", "Meta-Llama-3-8B-Instruct", 1, None, 8.03e9),
    "mig": _kind("mig", "Meta-Llama-3-8B-Instruct", 1, MIG, 8.03e9),
}


def kind_of(index: int) -> Kind:
    return KINDS["70b" if index % 10 == 0 else "mig" if index % 10 in (1, 2, 3) else "8b"]


def swings(index: int) -> bool:
    return kind_of(index).name == "8b" and index % 20 in (4, 5, 14)  # 3 in 20


def model_deployment(index: int, scale: float) -> dict[str, Any]:
    kind = kind_of(index)
    name = f"md-{index:04d}"
    accelerator: dict[str, Any] = {"gpuProduct": GPU, "tensorParallelSize": kind.tp}
    if kind.mig:
        accelerator = {"gpuProduct": GPU, "migProfile": kind.mig}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "uri": f"s3://models/meta-llama/{kind.model}",
                "servedName": name,
                "parameterCount": kind.params,
                "maxModelLen": 4096,
            },
            "accelerator": accelerator,
            "replicas": 2,
            "minReplicas": 1 if swings(index) else 2,
            "maxReplicas": 4,
            "autoscaling": {"enabled": True, "targetQueueDepth": 8, "scaleDownDelaySeconds": 30},
            "capacity": (
                {"zones": list(ZONES), "spotPercent": 0}
                if kind.mig
                else {
                    "zones": list(ZONES),
                    "onDemandReplicas": 1,
                    "spotPercent": 70,
                    "fallbackToOnDemand": True,
                    "zoneCooldownSeconds": max(1, round(300 / scale)),
                }
            ),
        },
    }


def offered_load(index: int, period: float) -> Callable[[float], float]:
    kind = kind_of(index)
    if swings(index):
        return DiurnalTrace.model_validate(
            {"min": SWING_LOW * kind.capacity, "max": SWING_HIGH * kind.capacity, "period": period}
        )
    rate = STEADY_LOAD * 2 * kind.capacity
    return lambda _t: rate


# --- measurements -----------------------------------------------------------------------------------


class CpuSampler:
    """The operator's CPU seconds (utime + stime) every second, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _read(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime (fields 14, 15)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self._read()))
            except OSError:
                return
            self._stop.wait(1.0)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def windows(self) -> list[float]:
        """Cores over every sliding CPU_WINDOW_S window (one start per sample)."""
        out = []
        for i, (t0, c0) in enumerate(self.samples):
            j = i + CPU_WINDOW_S
            if j >= len(self.samples):
                break
            t1, c1 = self.samples[j]
            out.append((c1 - c0) / (t1 - t0))
        return out


def rss_mib(pid: int, field: str = "VmHWM") -> float:
    """VmHWM: the peak resident set over the process's life; VmRSS: now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return math.nan


def audit_verbs(path: Path | None, start: int, end: int) -> Counter[str] | None:
    """The operator's requests by verb between two offsets of the audit log (watches counted once, when
    they start; other requests when they complete)."""
    if path is None or not path.exists():
        return None
    verbs: Counter[str] = Counter()
    with path.open("rb") as log_file:
        log_file.seek(start)
        for line in log_file.read(max(0, end - start)).splitlines():
            event = json.loads(line)
            if event.get("user", {}).get("username") != SA_USER:
                continue
            verb, stage = event.get("verb", ""), event.get("stage")
            if (verb == "watch") == (stage == "ResponseStarted"):
                verbs[verb] += 1
    return verbs


def replacements_written_after(
    path: Path | None, models: Sequence[str], sent_at: float
) -> list[float | None]:
    """Per doomed model, seconds from sending the warning to the operator's first Deployment write for it
    (the audit log's completion time): its own reaction, without the controller-manager's work of
    turning the Deployment into a ReplicaSet and a pod. None for a model it wrote no Deployment of (a
    replica the autoscaler was removing anyway is deleted, not replaced) or without an audit log."""
    if path is None or not path.exists():
        return [None] * len(models)
    first: dict[str, float] = {}
    with path.open("rb") as log_file:
        for line in log_file:
            event = json.loads(line)
            ref = event.get("objectRef") or {}
            if (
                event.get("user", {}).get("username") != SA_USER
                or event.get("verb") != "patch"
                or ref.get("resource") != "deployments"
            ):
                continue
            when = datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")).timestamp()
            model = next((m for m in models if str(ref.get("name", "")).startswith(f"{m}-")), None)
            if model is not None and when >= sent_at and model not in first:
                first[model] = when
    return [first[m] - sent_at if m in first else None for m in models]


def received_after(operator_log: Path, instance_id: str, sent_at: float) -> float | None:
    """Seconds from sending the warning to the operator's log line for it (its clock, local time)."""
    text = operator_log.read_text(errors="replace") if operator_log.exists() else ""
    for line in text.splitlines():
        if f"Interruption Warning for {instance_id}" in line and line.startswith("["):
            stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            return stamp - sent_at
    return None


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else math.nan


@dataclass
class Figures:
    n: int
    pods: int = 0
    gpus_min: float = 0.0
    gpus_max: float = 0.0
    cpu_mean: float = math.nan
    cpu_p99: float = math.nan
    rss_mib: float = math.nan
    rss_end_mib: float = math.nan
    window_s: float = 0.0
    verbs: Counter[str] | None = None
    prom_qps: float = math.nan
    reconcile_p50: float | None = None
    reconcile_p99: float | None = None
    reconciles: float = 0.0
    sweep_p50: float | None = None
    sweep_max: float | None = None
    sweeps: float = 0.0
    first_replacement: list[float | None] = field(default_factory=list)
    # per warning, per doomed model: when the operator first wrote one of its Deployments
    written: list[list[float | None]] = field(default_factory=list)
    all_replacements: list[float | None] = field(default_factory=list)
    doomed: list[int] = field(default_factory=list)
    received: list[float | None] = field(default_factory=list)  # warning -> the operator logged it
    operator_errors: int = 0
    lost_requests: float = 0.0


# --- one N ------------------------------------------------------------------------------------------


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


class Trial:
    def __init__(self, cp: ControlPlane, n: int, args: argparse.Namespace, workdir: Path, audit: Path | None):
        self.cp, self.n, self.args, self.audit = cp, n, args, audit
        self.warnings: list[tuple[list[str], float]] = []  # (doomed models, when the warning was sent)
        self.workdir = workdir / f"n{n}"
        self.namespace = f"bench-scale-{n}-{uuid.uuid4().hex[:5]}"
        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def _pods(self, selector: str = LABEL_MODEL_DEPLOYMENT) -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(
            self.namespace, label_selector=selector, _preload_content=False
        )
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def _all_ready(self) -> tuple[int, int]:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]
        ready = sum(
            1 for md in items if md.get("status", {}).get("readyReplicas", 0) >= md["spec"]["replicas"] > 0
        )
        return ready, len(items)

    def _gpus(self) -> float:
        return sum(
            KINDS_BY_NAME_GPUS.get(p["metadata"]["labels"].get(LABEL_MODEL_DEPLOYMENT, ""), 0.0)
            for p in self._pods()
            if _ready(p)
        )

    def _interrupt(
        self, simulation: ScaleSimulation, loop: asyncio.AbstractEventLoop
    ) -> tuple[float | None, float | None, int, float | None]:
        pods = self._pods()
        per_node = Counter(p["spec"].get("nodeName") for p in pods)
        spot = [n for n, r in simulation.nodes.items() if r.pool.capacity_type == "spot" and per_node.get(n)]
        if not spot:
            return None, None, 0, None
        node = max(spot, key=lambda n: (per_node[n], n))
        doomed = [p for p in pods if p["spec"].get("nodeName") == node]
        models = sorted({p["metadata"]["labels"][LABEL_MODEL_DEPLOYMENT] for p in doomed})
        selector = f"{LABEL_MODEL_DEPLOYMENT} in ({','.join(models)})"
        before = {p["metadata"]["name"] for p in self._pods(selector)}
        log(f"n={self.n}: spot warning for {node} ({len(doomed)} replicas of {len(models)} models)")
        instance_id = simulation.nodes[node].instance_id  # the node is gone after the notice
        sent_at = time.time()
        self.warnings.append((models, sent_at))
        started = time.monotonic()
        asyncio.run_coroutine_threadsafe(simulation.interrupt(node, None), loop)
        first = last = None
        while time.monotonic() - started < REPLACEMENT_TIMEOUT_S:
            new = {p["metadata"]["name"] for p in self._pods(selector)} - before
            if new and first is None:
                first = time.monotonic() - started
            if len(new) >= len(doomed):
                last = time.monotonic() - started
                break
            time.sleep(0.1)
        received = received_after(simulation.operator.log, instance_id, sent_at)
        return first, last, len(doomed), received

    def run(self) -> Figures:
        args, n = self.args, self.n
        self.workdir.mkdir(parents=True, exist_ok=True)
        fleet = self.workdir / "fleet.yaml"
        fleet.write_text(yaml.safe_dump(fleet_yaml(f"n{n}"), sort_keys=False))
        manifests = self.workdir / "models.yaml"
        manifests.write_text(yaml.safe_dump_all([model_deployment(i, args.time_scale) for i in range(n)]))
        for i in range(n):
            KINDS_BY_NAME_GPUS[f"md-{i:04d}"] = kind_of(i).gpus
        scenario = parse_scenario(
            {
                "name": f"bench-scale-{n}",
                "timeScale": args.time_scale,
                "duration": args.window * args.time_scale,
                "fleet": str(fleet),
                "namespace": self.namespace,
                "apply": [str(manifests)],
                # No resync beyond the default 10 s of fleetsim's operator: that is work per model too.
                "operatorEnv": {"GPUFLEET_RESYNC_SECONDS": "60"},
            },
            ROOT,
        )
        simulation = ScaleSimulation(
            scenario,
            self.cp.kubeconfig,
            self.workdir,
            ScaleOptions(workload=WORKLOAD),
            operator_kubeconfig=self.args.operator_kubeconfig,
            kubectl=self.cp.kubectl_path,
        )
        period = args.window * args.time_scale
        simulation.metrics.rates = {
            (self.namespace, f"md-{i:04d}"): offered_load(i, period) for i in range(n)
        }
        figures = Figures(n)
        with fleet_in_namespace(self.core, simulation, self.namespace, f"n={n}") as background:
            log(f"n={n}: {sum(sum(v) for v in NODES.values())} nodes up; waiting for {n} ModelDeployments")
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                require_operator_alive(simulation, f"n={n}")
                ready, total = self._all_ready()
                if total == n and ready == n:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"n={n}: {ready} of {n} ModelDeployments Ready after {READY_TIMEOUT_S:.0f}s"
                    )
                time.sleep(2.0)
            operator = simulation.operator
            assert operator.process is not None
            pid = operator.process.pid
            metrics_url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
            log(f"n={n}: all Ready; load and {len(INTERRUPT_AT)} spot warnings for {args.window:.0f}s")
            simulation.metrics.start_load()
            before = scrape(metrics_url)
            queries_before = simulation.prometheus.queries_answered()
            audit_start = self.audit.stat().st_size if self.audit and self.audit.exists() else 0
            gpus: list[float] = []
            started = time.monotonic()
            with CpuSampler(pid) as cpu:
                for at in INTERRUPT_AT:
                    while time.monotonic() - started < at * args.window:
                        gpus.append(self._gpus())
                        time.sleep(5.0)
                    first, last, doomed, received = self._interrupt(simulation, background.loop)
                    figures.received.append(received)
                    figures.first_replacement.append(first)
                    figures.all_replacements.append(last)
                    figures.doomed.append(doomed)
                while time.monotonic() - started < args.window:
                    gpus.append(self._gpus())
                    time.sleep(5.0)
                figures.window_s = time.monotonic() - started
            after = scrape(metrics_url)
            figures.prom_qps = (simulation.prometheus.queries_answered() - queries_before) / figures.window_s
            audit_end = self.audit.stat().st_size if self.audit and self.audit.exists() else 0
            figures.verbs = audit_verbs(self.audit, audit_start, audit_end)
            figures.written = [replacements_written_after(self.audit, m, t) for m, t in self.warnings]
            windows = cpu.windows()
            figures.cpu_mean = statistics.fmean(windows) if windows else math.nan
            figures.cpu_p99 = _pct(windows, 0.99)
            figures.rss_mib = rss_mib(pid)
            figures.rss_end_mib = rss_mib(pid, "VmRSS")
            figures.pods = len(self._pods())
            figures.gpus_min, figures.gpus_max = (min(gpus), max(gpus)) if gpus else (0.0, 0.0)
            for q, name in ((0.5, "reconcile_p50"), (0.99, "reconcile_p99")):
                setattr(
                    figures, name, histogram_quantile(q, before, after, "gpufleet_reconcile_duration_seconds")
                )
            figures.reconciles = _count(before, after, "gpufleet_reconcile_duration_seconds_count")
            figures.sweep_p50 = histogram_quantile(
                0.5, before, after, "gpufleet_autoscaler_sweep_duration_seconds"
            )
            figures.sweep_max = histogram_quantile(
                1.0, before, after, "gpufleet_autoscaler_sweep_duration_seconds"
            )
            figures.sweeps = _count(before, after, "gpufleet_autoscaler_sweep_duration_seconds_count")
            figures.lost_requests = simulation.metrics.lost
            require_operator_alive(simulation, f"n={n}")
            text = operator.log.read_text(errors="replace") if operator.log.exists() else ""
            figures.operator_errors = sum(
                1 for line in text.splitlines() if "ERROR" in line or "Traceback" in line
            )
        return figures


KINDS_BY_NAME_GPUS: dict[str, float] = {}


def _count(before: Any, after: Any, name: str) -> float:
    return float(sum(v for _, v in after.get(name, [])) - sum(v for _, v in before.get(name, [])))


# --- the report -------------------------------------------------------------------------------------


def _s(value: float | None, unit: str = "s") -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f} {unit}"
    )


def _writes(delays: Sequence[float | None]) -> str:
    """ "[0.12 0.14 0.23 37.90 -] s": the operator's first Deployment write per doomed model, in order; a
    late one is a model the autoscaler was shrinking (its doomed replica deleted, not replaced)."""
    shown = [f"{d:.2f}" for d in sorted(d for d in delays if d is not None)]
    shown += ["-"] * (len(delays) - len(shown))
    return f"[{' '.join(shown)}] s" if shown else "n/a"


def report_lines(f: Figures) -> list[str]:
    name = f"n={f.n:<4}"
    verbs = (
        ", ".join(f"{verb} {count / f.window_s:.2f}" for verb, count in sorted(f.verbs.items()))
        if f.verbs is not None
        else "n/a (no audit log: --kubeconfig)"
    )
    total = sum(f.verbs.values()) / f.window_s if f.verbs is not None else math.nan
    written = f.written or [[] for _ in f.doomed]
    replacements = ", ".join(
        f"{_s(first)}/{_s(last)} ({doomed} doomed; operator read it after {_s(received)}, "
        f"wrote their Deployments after {_writes(wrote)})"
        for first, last, doomed, received, wrote in zip(
            f.first_replacement, f.all_replacements, f.doomed, f.received, written, strict=True
        )
    )
    return [
        f"{name} fleet: {f.pods} vLLM pods, ready GPUs {f.gpus_min:.0f}-{f.gpus_max:.0f} over the window "
        f"({f.window_s:.0f} s real)",
        f"{name} operator CPU: mean {f.cpu_mean:.3f} cores, p99 {f.cpu_p99:.3f} (sliding {CPU_WINDOW_S} s "
        f"windows); peak RSS {f.rss_mib:.0f} MiB ({f.rss_end_mib:.0f} MiB at the window's end)",
        f"{name} operator API requests/s: {total:.2f} ({verbs})",
        f"{name} Prometheus queries/s: {f.prom_qps:.2f}",
        f"{name} reconcile p50 {_s(f.reconcile_p50)} p99 {_s(f.reconcile_p99)} "
        f"({f.reconciles:.0f} reconciles); "
        f"autoscale sweep p50 {_s(f.sweep_p50)} max {_s(f.sweep_max)} ({f.sweeps:.0f} sweeps)",
        f"{name} spot warning -> first/last replacement pod created (real s): {replacements}",
        f"{name} operator log: {f.operator_errors} ERROR/Traceback lines; requests lost with killed replicas "
        f"(fluid model): {f.lost_requests:.0f}",
    ]


def growth_lines(results: Sequence[Figures]) -> list[str]:
    if len(results) < 2:
        return []
    lo, hi = results[0], results[-1]

    def ratio(a: float | None, b: float | None) -> str:
        if a is None or b is None or math.isnan(a) or math.isnan(b) or a <= 0:
            return "n/a"
        return f"{b / a:.2f}x"

    def median_reaction(f: Figures) -> float | None:
        times = [t for t in f.all_replacements if t is not None]
        return statistics.median(times) if times else None

    lo_api = sum(lo.verbs.values()) / lo.window_s if lo.verbs else None
    hi_api = sum(hi.verbs.values()) / hi.window_s if hi.verbs else None
    return [
        f"growth n={lo.n} -> n={hi.n} ({hi.n / lo.n:.0f}x models): "
        f"CPU mean {ratio(lo.cpu_mean, hi.cpu_mean)}, "
        f"p99 {ratio(lo.cpu_p99, hi.cpu_p99)}; RSS {ratio(lo.rss_mib, hi.rss_mib)}; API requests/s "
        f"{ratio(lo_api, hi_api)}; Prometheus queries/s {ratio(lo.prom_qps, hi.prom_qps)}; reconcile p99 "
        f"{ratio(lo.reconcile_p99, hi.reconcile_p99)}; sweep p50 {ratio(lo.sweep_p50, hi.sweep_p50)}; "
        f"warning -> all replacements (median) {ratio(median_reaction(lo), median_reaction(hi))}",
    ]


# --- the control plane ------------------------------------------------------------------------------


def operator_kubeconfig(cp: ControlPlane, out: Path) -> Path:
    """A cluster-admin service account of its own for the operator, so the audit log tells it apart."""
    cp.kubectl("create", "serviceaccount", SA_NAME, "-n", "default", check=False)
    cp.kubectl(
        "create", "clusterrolebinding", SA_NAME, "--clusterrole=cluster-admin",
        f"--serviceaccount=default:{SA_NAME}", check=False,
    )  # fmt: skip
    token = cp.kubectl("create", "token", SA_NAME, "-n", "default", "--duration=12h").stdout.strip()
    kubeconfig = yaml.safe_load(cp.kubeconfig.read_text())
    for user in kubeconfig["users"]:
        user["user"] = {"token": token}
    out.write_text(yaml.safe_dump(kubeconfig))
    return out


def run(args: argparse.Namespace) -> list[Figures]:
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-bench-scale-"))
    log(f"work folder (operator, Prometheus, moto and audit logs): {workdir}")
    audit: Path | None = None
    if args.kubeconfig is None:
        audit = workdir / "audit.log"
        policy = workdir / "audit-policy.yaml"
        rules = AUDIT_POLICY["rules"]
        if args.audit_writes:
            # The bodies of the operator's writes, to see what it writes (not only how often).
            rules = [
                {"level": "Request", "userGroups": ["system:serviceaccounts"], "verbs": ["patch"]},
                *rules,
            ]
        policy.write_text(yaml.safe_dump({**AUDIT_POLICY, "rules": rules}))
        os.environ["GPUFLEET_APISERVER_EXTRA_ARGS"] = f"--audit-policy-file={policy} --audit-log-path={audit}"
    results = []
    with control_plane(args.kubeconfig, workdir / "cluster") as cp:
        args.operator_kubeconfig = operator_kubeconfig(cp, workdir / "operator.kubeconfig")
        for n in args.n:
            started = time.monotonic()
            figures = Trial(cp, n, args, workdir, audit).run()
            log(f"n={n}: done in {time.monotonic() - started:.0f}s real")
            results.append(figures)
            print("\n".join(report_lines(figures)), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, nargs="+", default=[10, 50, 200], help="model counts (default 10 50 200)"
    )
    parser.add_argument(
        "--window", type=float, default=150.0, help="real seconds measured per N (default 150)"
    )
    parser.add_argument("--time-scale", type=float, default=10.0, help="simulated seconds per real second")
    parser.add_argument("--kubeconfig", type=Path, help="reuse this control plane (no audit log: no verbs)")
    parser.add_argument(
        "--audit-writes",
        action="store_true",
        help="log the bodies of the operator's PATCHes in the audit log",
    )
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.n) or args.window < 60 or args.time_scale <= 0:
        parser.error("--n takes positive integers, --window at least 60, --time-scale > 0")
    results = or_failure(lambda: run(args))
    if results is None:
        return 1
    for line in growth_lines(results):
        print(line)
    last = results[-1]
    met = last.cpu_p99 < 0.5 and last.rss_mib * 1.048576 < 200  # MiB -> MB
    print(
        f"scale: n={last.n} cpu_mean={last.cpu_mean:.3f} cpu_p99={last.cpu_p99:.3f} "
        f"rss_mib={last.rss_mib:.0f} goal(p99 < 0.5 core, < 200 MB): {'met' if met else 'not met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
