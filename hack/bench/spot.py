"""Spot benchmark: gpufleet's interruption handling against none, the real node-termination handler, both.

    python hack/bench/spot.py [--time-scale 4] [--duration 7200] [--rate 1.5] [--rounds 1]
                              [--policies none nth ours nth+ours] [--kubeconfig PATH]
                              [--image vllm/vllm-openai:v0.11.0] [--drain-seconds 0]

One control plane; four trials in turn (per round), each on a fresh simulated fleet
(fleetsim: spot and on-demand p4de.24xlarge pools in three zones, vLLM pods,
Prometheus, moto, a gpufleet operator) in a fresh namespace, with the same
ModelDeployment (Llama 3 8B, TP 1, 6 replicas: 1 on-demand, 5 on spot over
us-east-1a/b/c), the same steady load (Poisson arrivals, same seed) and the
same fault timeline: a spot interruption every 20 simulated minutes on the spot
node of a given zone that hosts the most replicas, some with a rebalance
recommendation first, and one zone without spot capacity for 35 minutes.

- none:     GPUFLEET_SPOT_FAILOVER=false: plain placement; pods die with their
            node and their Deployments recreate them;
- nth:      GPUFLEET_SPOT_FAILOVER=false, and the real aws-node-termination-handler
            (v1.25.6, hack/install-nth.sh, fleetsim.nth) in queue-processor mode owns
            the trial's SQS queue: on a warning (or a rebalance recommendation, which
            queue mode drains too) it taints, cordons and drains the node with
            evictions that respect the operator's PodDisruptionBudget;
- ours:     the operator as shipped (spot failover on, reading the queue): zone
            cooldown, replacements ordered at once in other zones, the doomed
            replica kept serving until its replacement is ready, on-demand fallback;
- nth+ours: NTH owns the queue, taints and drains as in `nth`; the operator has no
            queue URL (no SQS consumer of its own) and reacts to NTH's taints with
            its spot failover on, as many clusters would run both.

NTH's timers are compiled in and run in real seconds (queue poll 2 s, event loop
1 s, an eviction refused by a PodDisruptionBudget retried every 5 s), so the
default time scale is 4: the slowest of them, the 5 s retry, is 20 simulated
seconds, a sixth of the 120 s notice (at the old default of 30 it would be 150 s,
longer than the notice). A round of four trials takes about 2 hours.

Per trial it prints failed requests by kind, replica-seconds below desired,
latency percentiles, cost against the same replica-seconds on on-demand, and
how many interruptions the notice covered (replicas back to desired, off the
doomed node, before the node went); then each policy's figures against nth's
(the real peer) and, with --rounds N, the mean and range over the rounds. It
never asserts: this is a benchmark, not a test. See hack/bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import sys
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from benchkit import (
    BenchError,
    fleet_in_namespace,
    log,
    operator_lines,
    or_failure,
    require_operator_alive,
    run_trials,
)
from kubernetes import client

from fleetsim import nth as nth_handler
from fleetsim.loadgen import LoadGenerator, LoadReport, parse_trace, ready_endpoints
from fleetsim.local import ROOT, ControlPlane
from fleetsim.pools import INSTANCE_TYPES, SPOT_PRICE_FRACTION
from fleetsim.scenario import parse_scenario
from fleetsim.sim import Simulation
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION
from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT

# nth: the real aws-node-termination-handler (fleetsim.nth); the re-implemented cordon-and-drain ("drain")
# it replaces is gone: the real one does all it did, and taints, and drains on rebalance recommendations.
POLICIES = ("none", "nth", "ours", "nth+ours")
WITH_NTH = ("nth", "nth+ours")
PEER = "nth"  # the policy every other one is compared with: what a cluster runs without gpufleet

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
READY_TIMEOUT_REAL_S = 240.0
# NTH's timers are real seconds (fleetsim.nth); at this scale its 5 s eviction retry is 20 simulated seconds.
DEFAULT_TIME_SCALE = 4.0


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
    nth: list[str]  # nth, nth+ours: what the real handler did, from its log
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


def trial_name(policy: str, round_number: int) -> str:
    return policy if round_number == 1 else f"{policy}#{round_number}"


def trial_names(policies: Sequence[str], rounds: int) -> list[str]:
    """Policies interleaved round by round (none, nth, ours, nth+ours, none#2, …), so that a slow spell of
    the machine falls on every policy of a round rather than on all rounds of one policy."""
    return [trial_name(policy, n) for n in range(1, rounds + 1) for policy in policies]


def policy_of(trial: str) -> str:
    return trial.split("#", 1)[0]


def slug(trial: str) -> str:
    """The trial's name as it can stand in a namespace or node name: nth+ours#2 -> nth-ours-2."""
    return re.sub(r"[^a-z0-9-]+", "-", trial.lower())


def fleet_yaml(trial: str) -> dict[str, Any]:
    # Pool names carry the trial: each trial's nodes have names of their own.
    trial = slug(trial)
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
    def __init__(
        self,
        cp: ControlPlane,
        trial: str,
        settings: Settings,
        workdir: Path,
        nth: nth_handler.NthBuild | None,
    ) -> None:
        self.cp = cp
        self.trial = trial
        self.policy = policy_of(trial)
        self.settings = settings
        self.workdir = workdir / slug(trial)
        self.namespace = f"bench-spot-{slug(trial)}-{uuid.uuid4().hex[:6]}"
        self.errors = 0
        self.nth_build = nth
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

    # ---- the real aws-node-termination-handler (nth, nth+ours) --------------------------------------

    @contextlib.contextmanager
    def _handler(self, simulation: Simulation) -> Iterator[nth_handler.NodeTerminationHandler | None]:
        """NTH on the trial's moto queue and EC2 while the load runs; stopped before the fleet goes."""
        if self.policy not in WITH_NTH:
            yield None
            return
        assert self.nth_build is not None
        assert simulation.cloud is not None
        handler = nth_handler.NodeTerminationHandler(
            self.cp,
            self.nth_build,
            self.workdir / "nth",
            queue_url=simulation.cloud.queue_url,
            aws_endpoint=simulation.moto.endpoint_url,
            region=simulation.fleet.region,
            # NTH's drain gives up after its node grace period: the notice, in real seconds.
            node_grace_s=round(NOTICE_S / self.settings.scale),
        )
        log(f"{self.trial}: starting aws-node-termination-handler on the trial's queue")
        with handler:
            yield handler

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
        env = {
            "none": {"GPUFLEET_SPOT_FAILOVER": "false"},
            "nth": {"GPUFLEET_SPOT_FAILOVER": "false"},
            "ours": {},
            # No queue URL: no SQS consumer (runtime/composition_root.py starts one only with a URL); the
            # operator learns of an interruption from NTH's taint.
            "nth+ours": {"GPUFLEET_INTERRUPTION_QUEUE_URL": ""},
        }[self.policy]
        if settings.drain_seconds is not None:
            env["GPUFLEET_DRAIN_SECONDS"] = str(settings.drain_seconds)
        scenario = parse_scenario(
            {
                "name": f"bench-spot-{slug(self.trial)}",
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
            span = f"{settings.duration:.0f} s simulated ({real:.0f} s real)"
            with self._handler(simulation) as handler:
                log(f"{self.trial}: load and faults for {span}")
                report, samples, window, hits = background.call(self.drive(simulation), timeout=real + 600)
                if handler is not None:
                    if not handler.alive():
                        raise BenchError(f"{self.trial}: NTH exited:\n{handler.log_tail()}")
                    self.nth = nth_summary(handler)
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


def nth_summary(handler: nth_handler.NodeTerminationHandler) -> list[str]:
    """What NTH did, from its log: taints by kind, drains seen through, eviction attempts and refusals."""
    actions = handler.actions()

    def count(*needles: str) -> int:
        return sum(1 for line in actions if all(needle in line for needle in needles))

    taints = Counter(
        match.group(1)
        for line in actions
        if (match := re.search(r"taint_key=(\S+)", line)) and "added" in line
    )
    drained = [
        m.group(1) for line in actions if (m := re.search(r"cordoned and drained node_name=(\S+)", line))
    ]
    lines = [
        "taints added: "
        + (", ".join(f"{key.split('/')[-1]} {n}" for key, n in sorted(taints.items())) or "none")
        + f"; drains seen through: {len(drained)} ({', '.join(drained) or '-'}); eviction attempts "
        f"{count('evicting pod ')}, refused by a PodDisruptionBudget "
        f"{count('error when evicting', 'budget')} "
        f"(retried every {nth_handler.EVICTION_RETRY_S:g} s real); drains that failed or timed out "
        f"{count('problem while trying to cordon and drain')}; queue or lookup problems "
        f"{count('problem monitoring')}",
        f"log: {handler.log_path}",
    ]
    return lines


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def label(trial: str) -> str:
    """How a trial is printed: the real NTH says so, as every re-implementation would have to."""
    return trial.replace("nth", "nth(real)") if policy_of(trial) in WITH_NTH else trial


def report_lines(result: TrialResult) -> list[str]:
    name = f"{label(result.trial):<16}"
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
        lines.append(f"{name} aws-node-termination-handler v1.25.6: {action}")
    lines += operator_lines(
        name,
        result.reasons,
        result.operator_errors,
        result.operator_log,
        result.errors,
        "observations or handler calls",
    )
    return lines


def caveat_lines(scale: float) -> list[str]:
    def scaled(seconds: float) -> str:
        return f"{max(1, round(seconds / scale))} s real"

    return [
        f"caveat: time scale {scale:g}; scaled: the notice ({NOTICE_S:.0f} s, and the operator is told it: "
        f"GPUFLEET_SPOT_NOTICE_SECONDS {scaled(NOTICE_S)}), cold starts, node launches, the load; the "
        f"operator's drain margin ({scaled(60)} = 60 s), spot fallback after ({scaled(300)}), return after "
        f"({scaled(900)}), zone-loss window ({scaled(600)}), "
        f"zoneCooldownSeconds ({scaled(ZONE_COOLDOWN_S)}); NTH's node grace period, its drain's timeout "
        f"(NODE_TERMINATION_GRACE_PERIOD {scaled(NOTICE_S)} = the notice)",
        f"caveat: not scaled: NTH's compiled-in timers, queue poll {nth_handler.QUEUE_POLL_S:g} s, "
        f"event loop {nth_handler.EVENT_LOOP_S:g} s, eviction retry after a PDB refusal "
        f"{nth_handler.EVICTION_RETRY_S:g} s "
        f"(= {nth_handler.QUEUE_POLL_S * scale:g}, {nth_handler.EVENT_LOOP_S * scale:g} and "
        f"{nth_handler.EVICTION_RETRY_S * scale:g} s simulated, against the {NOTICE_S:.0f} s notice; the "
        "queue poll is a long poll that returns when a message arrives); its SQS visibility timeout (20 s)",
        f"caveat: not scaled: the simulated kubelet's 0.5 s pod poll (= {0.5 * scale:g} s simulated), the "
        f"provisioner's 1 s loop (= {scale:g} s), the operator's and API server's own latency; they "
        "delay every replacement in every trial",
        "caveat: a reclaimed node's pods vanish at once and leave the endpoints within one refresh "
        f"({ENDPOINT_REFRESH_S:g} s); on a cluster they stay endpoints until the node is NotReady (~40 s), "
        "so failures of 'none' are a lower bound",
    ]


@dataclass(frozen=True)
class Figures:
    """What the summary compares, of one trial."""

    failed: int
    below: float  # share of desired replica-seconds below desired
    cost_ratio: float
    covered: int
    interrupted: int


def figures_of(result: TrialResult) -> Figures:
    integrals = result.integrals
    below = integrals.below / integrals.desired if integrals.desired else 0.0
    return Figures(result.failed, below, result.cost_ratio, result.within_notice, result.interrupted)


def _ratio(value: float, peer: float) -> str:
    return f"{value / peer:.2f}x" if peer else ("1x (both 0)" if not value else f"n/a ({PEER} 0)")


def summary_lines(figures: dict[str, Figures], rounds: int) -> list[str]:
    """Per policy, the mean (and range over rounds); each policy against nth, the real peer; the last line."""
    by_policy: dict[str, list[Figures]] = {}
    for trial, trial_figures in figures.items():
        by_policy.setdefault(policy_of(trial), []).append(trial_figures)
    means = {
        policy: (
            statistics.fmean(f.failed for f in runs),
            statistics.fmean(f.below for f in runs),
            statistics.fmean(f.cost_ratio for f in runs),
        )
        for policy, runs in by_policy.items()
    }
    lines = []
    for policy in POLICIES:
        runs = by_policy.get(policy, [])
        if not runs:
            continue
        failed, below, cost = means[policy]
        spread = ""
        if len(runs) > 1:
            spread = (
                f" (over {len(runs)} rounds; ranges: failed {min(f.failed for f in runs)}-"
                f"{max(f.failed for f in runs)}, below {min(f.below for f in runs):.2%}-"
                f"{max(f.below for f in runs):.2%}, cost {min(f.cost_ratio for f in runs):.3f}-"
                f"{max(f.cost_ratio for f in runs):.3f})"
            )
        covered = sum(f.covered for f in runs)
        interrupted = sum(f.interrupted for f in runs)
        lines.append(
            f"{label(policy):<14} mean failed requests {failed:.1f}, "
            f"replica-seconds below desired {below:.2%}, "
            f"cost vs all-on-demand {cost:.3f}, interruptions covered by the notice {covered} of "
            f"{interrupted}{spread}"
        )
    if PEER in means:
        peer = means[PEER]
        for policy in POLICIES:
            if policy == PEER or policy not in means:
                continue
            mine = means[policy]
            lines.append(
                f"{label(policy)} / {label(PEER)}{' (means)' if rounds > 1 else ''}: failed requests "
                f"{_ratio(mine[0], peer[0])}, replica-seconds below desired {_ratio(mine[1], peer[1])}, "
                f"cost {_ratio(mine[2], peer[2])}"
            )

    def figure(policy: str, index: int, digits: int) -> str:
        return f"{means[policy][index]:.{digits}f}" if policy in means else "n/a"

    failed_line = " ".join(f"{p}={figure(p, 0, 1 if rounds > 1 else 0)}" for p in POLICIES)
    below_line = " ".join(f"{p}={figure(p, 1, 4)}" for p in POLICIES)
    cost_line = " ".join(f"{p}={figure(p, 2, 3)}" for p in POLICIES)
    lines.append(f"spot: failed {failed_line} below_desired {below_line} cost_vs_ondemand {cost_line}")
    return lines


def run(
    policies: Sequence[str], settings: Settings, kubeconfig: Path | None, rounds: int = 1
) -> dict[str, TrialResult]:
    # Built once (`make nth`), before the control plane starts, when a policy needs it.
    build = nth_handler.install() if set(policies) & set(WITH_NTH) else None
    return run_trials(
        "spot",
        trial_names(policies, rounds),
        kubeconfig,
        lambda cp, core, trial, workdir: Trial(cp, trial, settings, workdir, build).run(core),
        report_lines,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=DEFAULT_TIME_SCALE,
        help=f"simulated seconds per real second (default {DEFAULT_TIME_SCALE:g}: NTH's 5 s eviction retry "
        f"is then {nth_handler.EVICTION_RETRY_S * DEFAULT_TIME_SCALE:g} s of the 120 s notice)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=7200.0,
        help="simulated seconds of load and faults (default 7200: 2 h)",
    )
    parser.add_argument("--rate", type=float, default=1.5, help="requests per simulated second (default 1.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrivals (the same in every trial)")
    parser.add_argument(
        "--policies", nargs="+", choices=POLICIES, default=list(POLICIES), help="trials to run (default all)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the trials this many times, interleaved (default 1)"
    )
    parser.add_argument("--kubeconfig", type=Path, help="reuse this control plane instead of starting one")
    parser.add_argument("--image", help="the vLLM image of the ModelDeployment (default: the operator's)")
    parser.add_argument(
        "--drain-seconds", type=int, help="the operator's GPUFLEET_DRAIN_SECONDS (default: its own, 120)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=MAX_TOKENS, help=f"tokens per request (default {MAX_TOKENS})"
    )
    args = parser.parse_args(argv)
    if args.time_scale <= 0 or args.duration <= 0 or args.rate <= 0 or args.rounds < 1:
        parser.error("--time-scale, --duration and --rate must be > 0, --rounds at least 1")
    if args.drain_seconds is not None and args.drain_seconds < 0:
        parser.error("--drain-seconds must be >= 0")
    if args.max_tokens < 1:
        parser.error("--max-tokens must be >= 1")
    settings = Settings(
        args.time_scale, args.duration, args.rate, args.seed, args.image, args.drain_seconds, args.max_tokens
    )
    results = or_failure(lambda: run(args.policies, settings, args.kubeconfig, args.rounds))
    if results is None:
        return 1
    for line in caveat_lines(settings.scale):
        print(line)
    for trial, ours in results.items():
        if policy_of(trial) != "ours":
            continue
        zero = ours.failed == 0
        half = ours.cost_ratio <= 0.5
        print(
            f"goal{'' if trial == 'ours' else f' ({trial})'} (zero failed requests where the notice covers "
            "the replacement's start; cost at most half of all-on-demand): "
            f"{'met' if zero and half else 'not met'} "
            f"(failed: {ours.failed}; the notice covered {ours.within_notice} of {ours.interrupted} "
            f"interruptions; cost ratio {ours.cost_ratio:.3f}; the spec's own mix, {ON_DEMAND_REPLICAS} "
            f"on-demand + {REPLICAS - ON_DEMAND_REPLICAS} spot replicas at {SPOT_PRICE_FRACTION:g} × the "
            f"on-demand price, is {lowest_ratio():.3f})"
        )
    figures = {trial: figures_of(result) for trial, result in results.items()}
    print("\n".join(summary_lines(figures, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
