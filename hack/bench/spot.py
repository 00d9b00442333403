"""Spot benchmark: gpufleet's interruption handling against no handling and a cordon-and-drain handler.

    python hack/bench/spot.py [--time-scale 30] [--duration 7200] [--rate 1.5] [--kubeconfig PATH]
                              [--image vllm/vllm-openai:v0.11.0] [--drain-seconds 0]

One control plane; three trials in turn, each on a fresh simulated fleet
(fleetsim: spot and on-demand p4de.24xlarge pools in three zones, vLLM pods,
Prometheus, moto, a gpufleet operator) in a fresh namespace, with the same
ModelDeployment (Llama 3 8B, TP 1, 6 replicas: 1 on-demand, 5 on spot over
us-east-1a/b/c), the same steady load (Poisson arrivals, same seed) and the
same fault timeline: a spot interruption every 20 simulated minutes on the spot
node of a given zone that hosts the most replicas, some with a rebalance
recommendation first, and one zone without spot capacity for 35 minutes.

- ours:  the operator as shipped (spot failover on): zone cooldown, replacements
         ordered at once in other zones, the doomed replica kept serving until
         its replacement is ready, on-demand fallback;
- none:  GPUFLEET_SPOT_FAILOVER=false: plain placement; pods die with their node
         and their Deployments recreate them;
- drain: GPUFLEET_SPOT_FAILOVER=false, and this process plays
         aws-node-termination-handler in queue mode: on a spot interruption
         warning it cordons the node and evicts its pods through the Eviction
         API (policy/v1, the operator's PDB applies); rebalance recommendations
         are ignored.

Per trial it prints failed requests by kind, replica-seconds below desired,
latency percentiles, cost against the same replica-seconds on on-demand, and
how many interruptions the notice covered (replicas back to desired, off the
doomed node, before the node went). It never asserts: this is a benchmark, not
a test. See hack/bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from benchkit import fleet_in_namespace, log, or_failure, require_operator_alive, run_trials
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fleetsim.cloud import SPOT_WARNING
from fleetsim.cloud import client as aws_client
from fleetsim.loadgen import LoadGenerator, LoadReport, parse_trace, ready_endpoints
from fleetsim.local import ROOT, ControlPlane
from fleetsim.pools import INSTANCE_TYPES, SPOT_PRICE_FRACTION
from fleetsim.scenario import parse_scenario
from fleetsim.sim import Simulation
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION
from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT

TRIALS = ("ours", "none", "drain")

# --- the workload -----------------------------------------------------------------------------------

MODEL = "llama-3-8b"
REGION = "us-east-1"
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")
INSTANCE_TYPE = "p4de.24xlarge"  # 8 × A100 80GB
REPLICAS = 6
ON_DEMAND_REPLICAS = 1
GPUS_PER_REPLICA = 1  # tensorParallelSize 1
PROMPT_TOKENS = 512
MAX_TOKENS = 128
NOTICE_S = 120.0  # the AWS notice; fleetsim's default

# --- the fault timeline, simulated seconds after the load starts ------------------------------------

# (at, zone, rebalance recommendation this long before the warning or None). The node hit is the
# spot node of that zone hosting the most of the model's replicas when the event comes (the same
# rule in every trial); if that zone has none on spot, the spot node hosting the most anywhere.
INTERRUPTIONS: tuple[tuple[float, str, float | None], ...] = (
    (600.0, "us-east-1b", None),
    (1800.0, "us-east-1c", 120.0),
    (3000.0, "us-east-1a", None),
    (4200.0, "us-east-1b", 60.0),
    (5400.0, "us-east-1c", None),
    (6600.0, "us-east-1b", None),
)
# (at, zone, seconds): no spot node can be launched in that zone meanwhile (fleetsim spotOutage).
SPOT_OUTAGE = (3000.0, "us-east-1a", 2100.0)

# --- timers -----------------------------------------------------------------------------------------

ZONE_COOLDOWN_S = 300.0  # spec.capacity.zoneCooldownSeconds' default, divided by the time scale
ENDPOINT_REFRESH_S = 5.0  # simulated seconds between the load generator's endpoint lists
OBSERVE_S = 10.0  # simulated seconds between samples of the fleet (fixed grid)
NTH_EVICTION_RETRY_S = 5.0  # kubectl drain's retry after a 429 (PDB), simulated
NTH_NODE_GRACE_S = 120.0  # NTH's nodeTerminationGracePeriod default, simulated
READY_TIMEOUT_REAL_S = 240.0


# --- figures (pure) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float  # simulated seconds since the load started
    desired: int  # spec.replicas
    ready_nodes: tuple[str, ...]  # node of every ready, non-terminating pod
    placed: int  # pods on a node (ready or starting), not terminating
    spot: int  # of those, on spot nodes
    cost_per_hour: float  # their nodes' share: pool price × GPUs / GPUs per node
    on_demand_per_hour: float  # the same pods at the on-demand price


@dataclass
class Hit:
    """One interruption as it happened in a trial."""

    at: float  # the event (the rebalance recommendation, if any)
    zone: str
    rebalance_s: float | None
    node: str = ""
    replicas: int = 0  # the model's pods on the node when it was picked
    note: str = ""

    @property
    def warning_at(self) -> float:
        return self.at + (self.rebalance_s or 0.0)


@dataclass
class Integrals:
    seconds: float = 0.0
    below: float = 0.0  # replica-seconds below desired
    desired: float = 0.0
    replica_seconds: float = 0.0  # placed pods
    spot_seconds: float = 0.0
    cost: float = 0.0
    on_demand_cost: float = 0.0


def integrate(samples: Sequence[Sample], end: float) -> Integrals:
    """Each sample holds until the next one (the last until `end`)."""
    out = Integrals()
    for i, sample in enumerate(samples):
        until = samples[i + 1].t if i + 1 < len(samples) else end
        dt = max(0.0, until - sample.t)
        out.seconds += dt
        out.below += max(0, sample.desired - len(sample.ready_nodes)) * dt
        out.desired += sample.desired * dt
        out.replica_seconds += sample.placed * dt
        out.spot_seconds += sample.spot * dt
        out.cost += sample.cost_per_hour * dt / 3600
        out.on_demand_cost += sample.on_demand_per_hour * dt / 3600
    return out


def replaced_after(samples: Sequence[Sample], hit: Hit) -> float | None:
    """Simulated seconds from the warning until `desired` replicas were ready off the doomed node
    (0 when they already were, e.g. after a rebalance recommendation); None if never in the run."""
    for sample in samples:
        if sample.t < hit.warning_at - OBSERVE_S:
            continue
        if sum(1 for node in sample.ready_nodes if node != hit.node) >= sample.desired:
            return max(0.0, sample.t - hit.warning_at)
    return None


# --- one trial --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    scale: float
    duration: float
    rate: float
    seed: int
    # The vLLM image (None: the operator's default) and the operator's drain seconds (None: its default):
    # an image before v0.18.0 with drain 0 shows what SIGTERM's abort costs (hack/bench/README.md).
    image: str | None = None
    drain_seconds: int | None = None
    # Tokens generated per request: long generations outlast the preStop delay and show what SIGTERM cuts.
    max_tokens: int = MAX_TOKENS


@dataclass
class TrialResult:
    trial: str
    report: LoadReport
    samples: list[Sample]
    window_s: float
    hits: list[Hit]
    nth: list[str]  # drain: what the handler did
    reasons: Counter[str]  # operator Events by reason
    operator_errors: int
    operator_log: Path
    errors: int  # failed observations

    @property
    def integrals(self) -> Integrals:
        return integrate(self.samples, self.window_s)

    @property
    def failed(self) -> int:
        return self.report.error_count

    @property
    def cost_ratio(self) -> float:
        figures = self.integrals
        return figures.cost / figures.on_demand_cost if figures.on_demand_cost else 0.0

    def covered(self) -> list[float | None]:
        return [replaced_after(self.samples, hit) if hit.node else None for hit in self.hits]

    @property
    def interrupted(self) -> int:
        return sum(1 for hit in self.hits if hit.node)

    @property
    def within_notice(self) -> int:
        return sum(1 for c in self.covered() if c is not None and c < NOTICE_S)


def on_demand_gpu_hour() -> float:
    itype = INSTANCE_TYPES[INSTANCE_TYPE]
    return itype.on_demand_per_hour / itype.gpu_count


def lowest_ratio() -> float:
    """Cost / all-on-demand of the spec's own mix: the on-demand floor, every other replica on spot."""
    spot = REPLICAS - ON_DEMAND_REPLICAS
    return (ON_DEMAND_REPLICAS + spot * SPOT_PRICE_FRACTION) / REPLICAS


def fleet_yaml(trial: str) -> dict[str, Any]:
    # Pool names carry the trial: each trial's nodes have names of their own.
    pools = []
    for zone in ZONES:
        suffix = zone[-1]
        pools.append(
            {
                "name": f"{trial}-1{suffix}-spot",
                "instance_type": INSTANCE_TYPE,
                "zone": zone,
                "capacity_type": "spot",
                "count": 1,
                "max_count": 4,
            }
        )
        pools.append(
            {
                "name": f"{trial}-1{suffix}-od",
                "instance_type": INSTANCE_TYPE,
                "zone": zone,
                "capacity_type": "on-demand",
                # The floor replica goes to the first zone; the others are for the fallback.
                "count": 1 if zone == ZONES[0] else 0,
                "max_count": 2,
            }
        )
    return {"region": REGION, "provisioning_delay_s": 35, "gpu_boot_extra_s": 45, "pools": pools}


def model_deployment(settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL},
        "spec": {
            "model": {
                "uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct",
                "parameterCount": 8.03e9,
                "maxModelLen": 4096,
            },
            "accelerator": {"gpuProduct": "NVIDIA-A100-SXM4-80GB", "tensorParallelSize": GPUS_PER_REPLICA},
            "replicas": REPLICAS,
            "minReplicas": 1,
            "maxReplicas": REPLICAS,
            "autoscaling": {"enabled": False},
            **({"engine": {"image": settings.image}} if settings.image else {}),
            "capacity": {
                "zones": list(ZONES),
                "onDemandReplicas": ON_DEMAND_REPLICAS,
                "spotPercent": 100,
                "fallbackToOnDemand": True,
                "zoneCooldownSeconds": max(1, round(ZONE_COOLDOWN_S / settings.scale)),
            },
        },
    }


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


class Trial:
    def __init__(self, cp: ControlPlane, trial: str, settings: Settings, workdir: Path) -> None:
        self.cp = cp
        self.trial = trial
        self.settings = settings
        self.workdir = workdir / trial
        self.namespace = f"bench-spot-{trial}-{uuid.uuid4().hex[:6]}"
        self.errors = 0
        self.nth: list[str] = []

    # ---- API helpers (blocking; called in threads) -------------------------------------------------

    def _pods(self, simulation: Simulation) -> list[dict[str, Any]]:
        response = simulation.core.list_namespaced_pod(
            self.namespace, label_selector=f"{LABEL_MODEL_DEPLOYMENT}={MODEL}", _preload_content=False
        )
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def _sample(self, simulation: Simulation, t: float) -> Sample:
        md = simulation.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, MODEL)
        pods = self._pods(simulation)
        ready = tuple(p["spec"].get("nodeName", "") for p in pods if _ready(p))
        placed = spot = 0
        cost = on_demand = 0.0
        for pod in pods:
            record = simulation.nodes.get(pod["spec"].get("nodeName") or "")
            if record is None:
                continue  # pending, or its node is already gone
            placed += 1
            share = GPUS_PER_REPLICA / record.pool.gpus_per_node
            cost += record.pool.hourly_price() * share
            on_demand += record.pool.instance.on_demand_per_hour * share
            spot += record.pool.capacity_type == "spot"
        return Sample(t, int(md["spec"]["replicas"]), ready, placed, spot, cost, on_demand)

    def _pick(self, simulation: Simulation, zone: str) -> tuple[str, int, str]:
        """The spot node of `zone` hosting the most replicas (else of any zone): (node, replicas, note)."""
        per_node = Counter(p["spec"].get("nodeName") for p in self._pods(simulation))
        spot = {
            name: record
            for name, record in list(simulation.nodes.items())
            if record.pool.capacity_type == "spot" and per_node.get(name)
        }
        here = sorted((n for n, r in spot.items() if r.pool.zone == zone), key=lambda n: (-per_node[n], n))
        if here:
            return here[0], per_node[here[0]], ""
        anywhere = sorted(spot, key=lambda n: (-per_node[n], n))
        if anywhere:
            return anywhere[0], per_node[anywhere[0]], f"no replica on spot in {zone}"
        return "", 0, "no replica on spot anywhere: skipped"

    def _reasons(self, simulation: Simulation) -> Counter[str]:
        events = simulation.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={MODEL},involvedObject.kind=ModelDeployment"
        ).items
        reasons: Counter[str] = Counter()
        for event in events:
            reasons[event.reason or "?"] += event.count or 1
        return reasons

    # ---- coroutines on the simulation's loop -------------------------------------------------------

    async def _observe(self, simulation: Simulation, started: float, samples: list[Sample]) -> None:
        clock = simulation.clock
        tick = 0
        while True:
            try:
                samples.append(await asyncio.to_thread(self._sample, simulation, clock.now() - started))
            except Exception as error:  # one failed sample must not end the trial; it is counted
                self.errors += 1
                log(f"{self.trial}: observation failed: {type(error).__name__}: {error}")
            tick += 1
            await asyncio.sleep(max(0.0, clock.real(started + tick * OBSERVE_S - clock.now())))

    async def _interruption(self, simulation: Simulation, started: float, hit: Hit) -> None:
        clock = simulation.clock
        await asyncio.sleep(max(0.0, clock.real(started + hit.at - clock.now())))
        hit.node, hit.replicas, hit.note = await asyncio.to_thread(self._pick, simulation, hit.zone)
        log(
            f"{self.trial}: t={hit.at:.0f}s interrupting {hit.node or '-'} ({hit.replicas} replicas"
            + (f"; {hit.note}" if hit.note else "")
            + (f"; rebalance recommendation {hit.rebalance_s:.0f}s first" if hit.rebalance_s else "")
            + ")"
        )
        if hit.node:
            await simulation.interrupt(hit.node, hit.rebalance_s, NOTICE_S)

    async def _outage(self, simulation: Simulation, started: float) -> None:
        at, zone, seconds = SPOT_OUTAGE
        clock = simulation.clock
        await asyncio.sleep(max(0.0, clock.real(started + at - clock.now())))
        log(f"{self.trial}: t={at:.0f}s no spot capacity in {zone} for {seconds:.0f}s")
        await simulation.spot_outage(zone, seconds)

    # ---- drain: aws-node-termination-handler in queue mode -----------------------------------------

    async def _nth(self, simulation: Simulation, started: float) -> None:
        """Read the trial's queue (the operator does not when failover is off); act on spot warnings.

        As NTH's queue processor: each message is deleted once handled; a spot interruption warning
        → the node with that instance id in its providerID is cordoned and drained; a rebalance
        recommendation or a state change → nothing (NTH's defaults)."""
        assert simulation.cloud is not None
        sqs = aws_client("sqs", simulation.moto.endpoint_url, simulation.fleet.region)
        url = simulation.cloud.queue_url
        loop = asyncio.get_running_loop()
        drains: set[asyncio.Task[None]] = set()
        while True:
            try:
                answer = await asyncio.to_thread(
                    sqs.receive_message, QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1
                )
            except Exception as error:
                self.errors += 1
                log(f"drain: receive failed: {type(error).__name__}: {error}")
                await asyncio.sleep(0.5)
                continue
            for message in answer.get("Messages", []):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    body = json.loads(message["Body"])
                    if body.get("detail-type") == SPOT_WARNING:
                        task = loop.create_task(
                            self._cordon_and_drain(simulation, started, body["detail"]["instance-id"])
                        )
                        drains.add(task)
                        task.add_done_callback(drains.discard)
                await asyncio.to_thread(
                    sqs.delete_message, QueueUrl=url, ReceiptHandle=message["ReceiptHandle"]
                )

    async def _cordon_and_drain(self, simulation: Simulation, started: float, instance_id: str) -> None:
        clock = simulation.clock
        t = clock.now() - started
        nodes = (await asyncio.to_thread(simulation.core.list_node)).items
        node = next(
            (n.metadata.name for n in nodes if (n.spec.provider_id or "").endswith(f"/{instance_id}")), None
        )
        if node is None:
            self.nth.append(f"t={t:.0f}s warning for {instance_id}: no node")
            return
        await asyncio.to_thread(simulation.core.patch_node, node, {"spec": {"unschedulable": True}})
        pods = (
            await asyncio.to_thread(
                simulation.core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={node}"
            )
        ).items
        victims = [
            (p.metadata.namespace, p.metadata.name) for p in pods if p.metadata.deletion_timestamp is None
        ]
        results = await asyncio.gather(*(self._evict(simulation, node, ns, name) for ns, name in victims))
        evicted = [
            f"{name} after {waited:.0f}s"
            for (_, name), (ok, waited) in zip(victims, results, strict=True)
            if ok
        ]
        blocked = [name for (_, name), (ok, _) in zip(victims, results, strict=True) if not ok]
        self.nth.append(
            f"t={t:.0f}s cordoned {node}; evicted {', '.join(evicted) or 'none'}"
            + (f"; blocked by the PDB until the node went: {', '.join(blocked)}" if blocked else "")
        )

    async def _evict(
        self, simulation: Simulation, node: str, namespace: str, name: str
    ) -> tuple[bool, float]:
        """Evict until it is accepted, the pod is gone, or the node is (NTH's node grace period)."""
        clock = simulation.clock
        first = clock.now()
        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace))
        while node in simulation.nodes and clock.now() - first < NTH_NODE_GRACE_S:
            try:
                await asyncio.to_thread(simulation.core.create_namespaced_pod_eviction, name, namespace, body)
                return True, clock.now() - first
            except ApiException as error:
                if error.status == 404:
                    return True, clock.now() - first
                if error.status != 429:  # 429: the PDB allows no disruption now; retry
                    self.errors += 1
                    log(f"drain: eviction of {name} failed: {error.status} {error.reason}")
            await clock.sleep(NTH_EVICTION_RETRY_S)
        return False, clock.now() - first

    # ---- the trial ---------------------------------------------------------------------------------

    async def drive(self, simulation: Simulation) -> tuple[LoadReport, list[Sample], float, list[Hit]]:
        settings = self.settings
        clock = simulation.clock
        load = LoadGenerator(
            lambda: ready_endpoints(simulation.core, self.namespace, MODEL),
            MODEL,
            parse_trace({"kind": "constant", "rate": settings.rate}),
            clock,
            prompt_tokens=PROMPT_TOKENS,
            max_tokens=settings.max_tokens,
            seed=settings.seed,
            refresh_s=ENDPOINT_REFRESH_S,
        )
        samples: list[Sample] = []
        hits = [Hit(at, zone, rebalance) for at, zone, rebalance in INTERRUPTIONS if at < settings.duration]
        loop = asyncio.get_running_loop()
        started = clock.now()
        tasks = [loop.create_task(self._observe(simulation, started, samples))]
        tasks += [loop.create_task(self._interruption(simulation, started, hit)) for hit in hits]
        if SPOT_OUTAGE[0] < settings.duration:
            tasks.append(loop.create_task(self._outage(simulation, started)))
        if self.trial == "drain":
            tasks.append(loop.create_task(self._nth(simulation, started)))
        try:
            report = await load.run(settings.duration)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return report, samples, clock.now() - started, hits

    def _write_inputs(self) -> tuple[Path, Path]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        fleet = self.workdir / "fleet.yaml"
        fleet.write_text(yaml.safe_dump(fleet_yaml(self.trial), sort_keys=False))
        manifest = self.workdir / "model.json"
        manifest.write_text(json.dumps(model_deployment(self.settings), indent=2))
        return fleet, manifest

    def run(self, core: client.CoreV1Api) -> TrialResult:
        settings = self.settings
        fleet, manifest = self._write_inputs()
        env = {} if self.trial == "ours" else {"GPUFLEET_SPOT_FAILOVER": "false"}
        if settings.drain_seconds is not None:
            env["GPUFLEET_DRAIN_SECONDS"] = str(settings.drain_seconds)
        scenario = parse_scenario(
            {
                "name": f"bench-spot-{self.trial}",
                "timeScale": settings.scale,
                "duration": settings.duration,
                "fleet": str(fleet),
                "namespace": self.namespace,
                "apply": [str(manifest)],
                "operatorEnv": env,
            },
            ROOT,
        )
        simulation = Simulation(
            scenario, self.cp.kubeconfig, self.workdir, kubectl=self.cp.kubectl_path, run_operator=True
        )
        with fleet_in_namespace(core, simulation, self.namespace, self.trial) as background:
            log(f"{self.trial}: starting the fleet, Prometheus, moto and the operator in {self.namespace}")
            background.call(simulation.wait_ready(), timeout=READY_TIMEOUT_REAL_S)
            real = settings.duration / settings.scale
            log(f"{self.trial}: load and faults for {settings.duration:.0f} s simulated ({real:.0f} s real)")
            report, samples, window, hits = background.call(self.drive(simulation), timeout=real + 600)
            require_operator_alive(simulation, self.trial)
            reasons = self._reasons(simulation)
            operator_log = simulation.operator.log
            text = operator_log.read_text(errors="replace") if operator_log.exists() else ""
            operator_errors = sum(1 for line in text.splitlines() if "ERROR" in line or "Traceback" in line)
            with contextlib.suppress(OSError):
                (self.workdir / "fleet-events.txt").write_text("\n".join(simulation.snapshot.events) + "\n")
            return TrialResult(
                self.trial,
                report,
                samples,
                window,
                hits,
                list(self.nth),
                reasons,
                operator_errors,
                operator_log,
                self.errors,
            )


# --- the report -------------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def report_lines(result: TrialResult) -> list[str]:
    name = f"{result.trial:<5}"
    report = result.report
    figures = result.integrals
    errors = ", ".join(f"{kind}: {n}" for kind, n in sorted(report.errors.items())) or "none"
    covered = result.covered()
    hours = figures.seconds / 3600 if figures.seconds else 1.0
    lines = [
        f"{name} failed requests: {result.failed} of {report.sent} ({errors})",
        f"{name} replica-seconds below desired: {figures.below:.0f} "
        f"({figures.below / figures.desired:.2%} of {figures.desired:.0f} desired replica-seconds; "
        f"ready pods sampled every {OBSERVE_S:g} s simulated)",
        f"{name} latency of answered requests: p50 {_s(report.latency_p50)} p99 {_s(report.latency_p99)}; "
        f"TTFT p50 {_s(report.ttft_p50)} p99 {_s(report.ttft_p99)} ({report.ok} answered)",
        f"{name} cost: ${figures.cost / hours:.2f}/h for ready+starting replicas "
        f"(mean {figures.replica_seconds / figures.seconds:.2f}, "
        f"{figures.spot_seconds / figures.replica_seconds:.0%} of replica-seconds on spot); "
        f"all-on-demand ${figures.on_demand_cost / hours:.2f}/h; "
        f"ratio {result.cost_ratio:.3f}",
        f"{name} interruptions: {result.interrupted}, covered by the {NOTICE_S:.0f} s notice: "
        f"{result.within_notice} "
        f"(desired replicas ready off the doomed node after: "
        + ", ".join(
            f"{h.zone[-2:]}/{h.node}×{h.replicas}{'(rb)' if h.rebalance_s else ''} "
            + ("never" if c is None else f"{c:.0f}s")
            for h, c in zip(result.hits, covered, strict=True)
            if h.node
        )
        + ")",
    ]
    skipped = [f"t={h.at:.0f}s {h.note}" for h in result.hits if h.note]
    if skipped:
        lines.append(f"{name} interruption notes: {'; '.join(skipped)}")
    for action in result.nth:
        lines.append(f"{name} node-termination-handler: {action}")
    if result.reasons:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(result.reasons.items()))
        lines.append(f"{name} operator Events by reason: {reasons}")
    lines.append(
        f"{name} operator log: {result.operator_errors} ERROR/Traceback lines ({result.operator_log})"
    )
    if result.errors:
        lines.append(f"{name} errors: {result.errors} observations or handler calls failed (see stderr)")
    return lines


def caveat_lines(scale: float) -> list[str]:
    def scaled(seconds: float) -> str:
        return f"{max(1, round(seconds / scale))} s real"

    return [
        f"caveat: time scale {scale:g}; scaled: the notice ({NOTICE_S:.0f} s, and the operator is told it: "
        f"GPUFLEET_SPOT_NOTICE_SECONDS {scaled(NOTICE_S)}), cold starts, node launches, the load; the "
        f"operator's drain margin ({scaled(60)} = 60 s), spot fallback after ({scaled(300)}), return after "
        f"({scaled(900)}), zone-loss window ({scaled(600)}), "
        f"zoneCooldownSeconds ({scaled(ZONE_COOLDOWN_S)}); "
        f"NTH's eviction retry ({NTH_EVICTION_RETRY_S:g} s) and node grace ({NTH_NODE_GRACE_S:.0f} s)",
        f"caveat: not scaled: the simulated kubelet's 0.5 s pod poll (= {0.5 * scale:.0f} s simulated), the "
        f"provisioner's 1 s loop (= {scale:.0f} s), the operator's and API server's own latency; they "
        "delay every replacement in every trial",
        "caveat: a reclaimed node's pods vanish at once and leave the endpoints within one refresh "
        f"({ENDPOINT_REFRESH_S:g} s); on a cluster they stay endpoints until the node is NotReady (~40 s), "
        "so failures of 'none' are a lower bound",
    ]


def run(trials: Sequence[str], settings: Settings, kubeconfig: Path | None) -> dict[str, TrialResult]:
    return run_trials(
        "spot",
        trials,
        kubeconfig,
        lambda cp, core, trial, workdir: Trial(cp, trial, settings, workdir).run(core),
        report_lines,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--time-scale", type=float, default=30.0, help="simulated seconds per real second (default 30)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=7200.0,
        help="simulated seconds of load and faults (default 7200: 2 h)",
    )
    parser.add_argument("--rate", type=float, default=1.5, help="requests per simulated second (default 1.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrivals (the same in every trial)")
    parser.add_argument("--trials", nargs="+", choices=TRIALS, default=list(TRIALS), help="default all")
    parser.add_argument("--kubeconfig", type=Path, help="reuse this control plane instead of starting one")
    parser.add_argument("--image", help="the vLLM image of the ModelDeployment (default: the operator's)")
    parser.add_argument(
        "--drain-seconds", type=int, help="the operator's GPUFLEET_DRAIN_SECONDS (default: its own, 120)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=MAX_TOKENS, help=f"tokens per request (default {MAX_TOKENS})"
    )
    args = parser.parse_args(argv)
    if args.time_scale <= 0 or args.duration <= 0 or args.rate <= 0:
        parser.error("--time-scale, --duration and --rate must be > 0")
    if args.drain_seconds is not None and args.drain_seconds < 0:
        parser.error("--drain-seconds must be >= 0")
    if args.max_tokens < 1:
        parser.error("--max-tokens must be >= 1")
    settings = Settings(
        args.time_scale, args.duration, args.rate, args.seed, args.image, args.drain_seconds, args.max_tokens
    )
    results = or_failure(lambda: run(args.trials, settings, args.kubeconfig))
    if results is None:
        return 1
    for line in caveat_lines(settings.scale):
        print(line)

    def figure(trial: str, value: Callable[[TrialResult], float], digits: int) -> str:
        return f"{value(results[trial]):.{digits}f}" if trial in results else "n/a"

    if "ours" in results:
        ours = results["ours"]
        zero = ours.failed == 0
        half = ours.cost_ratio <= 0.5
        print(
            "goal (zero failed requests where the notice covers the replacement's start; cost at most half "
            f"of all-on-demand): {'met' if zero and half else 'not met'} "
            f"(failed: {ours.failed}; the notice covered {ours.within_notice} of {ours.interrupted} "
            f"interruptions; cost ratio {ours.cost_ratio:.3f}; the spec's own mix, {ON_DEMAND_REPLICAS} "
            f"on-demand + {REPLICAS - ON_DEMAND_REPLICAS} spot replicas at {SPOT_PRICE_FRACTION:g} × the "
            f"on-demand price, is {lowest_ratio():.3f})"
        )
    failed = " ".join(f"{t}={figure(t, lambda r: r.failed, 0)}" for t in TRIALS)
    ratios = " ".join(f"{t}={figure(t, lambda r: r.cost_ratio, 3)}" for t in TRIALS)
    print(f"spot: failed {failed} cost_vs_ondemand {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
