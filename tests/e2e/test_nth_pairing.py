"""aws-node-termination-handler and gpufleet together, as many clusters run them.

The real NTH (v1.25.6, hack/install-nth.sh, `make nth`; fleetsim.nth) runs in queue-processor mode beside
the shared control plane: it owns an SQS queue of its own on the session's moto server, looks the instance up
in moto's EC2, and cordons, taints (`aws-node-termination-handler/spot-itn`) and drains the node through the
Eviction API. The session operator is swapped for one without a queue URL for this module (its spot failover
stays on), so all it learns of the interruption is NTH's taint. Time runs 50x with five simulated minutes of
notice (6 s real, tests/conftest.py); NTH's own timers are real seconds (queue poll 2 s, event loop 1 s).

What really happens (seen in every run on this machine): NTH taints the node, then lists its pods, cordons
it and starts evicting about a second later. By then gpufleet has read the taint and scaled up the other
zone's Deployment for the replacement, which raises the PodDisruptionBudget's expected count (3 + 1) while
the replacement starts: the budget (maxUnavailable 1) allows no eviction, NTH's is refused (429) and retried
every 5 s. The replacement serves, gpufleet drains the doomed replica (preStop, then vLLM drains), and NTH's
retry finds it gone and reports the node drained. So the model never runs short and no request fails. The
race the other way, NTH evicting before gpufleet has seen its taint (an operator down or slow), would let
the budget take one replica before its replacement exists; the test then holds the model to that one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from fleetsim.background import BackgroundSimulation
from fleetsim.cloud import CloudEvents
from fleetsim.nth import SPOT_ITN_TAINT, NodeTerminationHandler
from fleetsim.nth import install as install_nth
from tests.conftest import E2E_SPOT_NOTICE_SECONDS, E2E_TIME_SCALE, OperatorProcess, wait_until
from tests.e2e.conftest import HERE, NAMESPACE
from tests.e2e.pods import apply_sample, constant_load, model_pods, serving

pytestmark = pytest.mark.e2e

MODEL = "llama-3-8b-nth"
REGION = "us-west-2"
NTH_QUEUE = "nth-interruptions"  # NTH's own queue: the operator's (gpufleet-interruptions) sees nothing
QUEUE_SETTING = "GPUFLEET_INTERRUPTION_QUEUE_URL"


@pytest.fixture(scope="module")
def queueless_operator(operator: OperatorProcess, sim: BackgroundSimulation) -> Iterator[OperatorProcess]:
    """The session operator restarted without a queue URL: no SQS consumer, spot failover on."""
    saved = operator.env.get(QUEUE_SETTING)
    operator.stop()
    operator.env[QUEUE_SETTING] = ""
    try:
        operator.start()
        yield operator
    finally:
        operator.stop()
        if saved is None:
            operator.env.pop(QUEUE_SETTING, None)
        else:
            operator.env[QUEUE_SETTING] = saved
        operator.start()


@pytest.fixture(scope="module")
def nth(
    queueless_operator: OperatorProcess, sim: BackgroundSimulation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[NodeTerminationHandler, CloudEvents]]:
    try:
        build = install_nth()
    except RuntimeError as error:
        pytest.fail(f"{error}\n(`make nth` builds NTH once, about 4 minutes)", pytrace=False)
    moto = sim.simulation.moto.endpoint_url
    queue = CloudEvents(moto, REGION, queue_name=NTH_QUEUE)
    queue.create_queue()
    handler = NodeTerminationHandler(
        queueless_operator.cluster,
        build,
        tmp_path_factory.mktemp("nth"),
        queue_url=queue.queue_url,
        aws_endpoint=moto,
        region=REGION,
        # NTH's drain timeout is its node grace period: the notice, in real seconds at this time scale.
        node_grace_s=round(E2E_SPOT_NOTICE_SECONDS / E2E_TIME_SCALE),
    )
    with handler:
        yield handler, queue


@pytest.fixture(scope="module")
def nth_model(queueless_operator: OperatorProcess, sim: BackgroundSimulation) -> Iterator[str]:
    apply_sample(queueless_operator, HERE / "llama-3-8b-spot.yaml", MODEL, NAMESPACE)
    try:
        wait_until(
            lambda: len(_serving(sim)) == 3,
            timeout=120,
            interval=0.5,
            what=f"three ready replicas of {MODEL}",
        )
    except AssertionError as error:
        raise AssertionError(f"{error}\n{_explain(sim, queueless_operator)}") from None
    yield MODEL
    queueless_operator.cluster.kubectl(
        "delete", "modeldeployment", MODEL, "-n", NAMESPACE, "--wait=true", "--timeout=60s", check=False
    )


def _serving(sim: BackgroundSimulation) -> list[dict[str, Any]]:
    return [p for p in model_pods(sim, MODEL) if serving(p)]


def _explain(sim: BackgroundSimulation, operator: OperatorProcess) -> str:
    """The model's pods, the nodes, the simulator's story and the operator's log, to tell why."""
    pods = [
        (p["metadata"]["name"], p["spec"].get("nodeName"), p.get("status", {}).get("phase"), serving(p))
        for p in model_pods(sim, MODEL)
    ]
    nodes = {name: (r.pool.name, r.instance_id) for name, r in list(sim.simulation.nodes.items())}
    return (
        f"pods: {pods}\nnodes: {nodes}\nsimulator:\n"
        + "\n".join(sim.simulation.snapshot.events[-30:])
        + f"\noperator log:\n{operator.log_tail(4000)}"
    )


def _zone(sim: BackgroundSimulation, node: str) -> str:
    record = sim.simulation.nodes.get(node)
    return record.pool.zone if record is not None else ""


@dataclass
class Timeline:
    """When each thing was first seen, in real seconds after the warning was sent."""

    started: float = field(default_factory=time.monotonic)
    first: dict[str, float] = field(default_factory=dict)
    fewest_serving: int = 99
    samples: int = 0

    def saw(self, what: str) -> None:
        self.first.setdefault(what, round(time.monotonic() - self.started, 2))

    def __str__(self) -> str:
        order = sorted(self.first.items(), key=lambda item: item[1])
        return ", ".join(f"{what} at {at:.2f} s" for what, at in order) + (
            f"; fewest serving replicas {self.fewest_serving} over {self.samples} samples"
        )


def _watch(
    sim: BackgroundSimulation, node: str, doomed: set[str], timeline: Timeline, stop: threading.Event
) -> None:
    """Sample the node and the model's pods until `stop`, every 0.1 s real (5 simulated seconds)."""
    core = sim.simulation.core
    while not stop.is_set():
        present = node in sim.simulation.nodes
        if present:
            try:
                spec = core.read_node(node).spec
                if spec.unschedulable:
                    timeline.saw("cordoned")
                if any(t.key == SPOT_ITN_TAINT for t in spec.taints or []):
                    timeline.saw("tainted")
            except Exception:  # the node can go between the two reads
                present = False
        if not present:
            timeline.saw("node reclaimed")
        pods = model_pods(sim, MODEL)
        left = [p for p in pods if p["metadata"]["name"] in doomed]
        if any(p["metadata"].get("deletionTimestamp") for p in left):
            timeline.saw("doomed replica terminating")
        if not left:
            timeline.saw("doomed replica gone")
        up = [p for p in pods if serving(p)]
        off = [p for p in up if p["spec"].get("nodeName") != node]
        timeline.fewest_serving = min(timeline.fewest_serving, len(up))
        timeline.samples += 1
        if len(off) >= 3:
            timeline.saw("3 serving off the doomed node")
        stop.wait(0.1)


def test_nth_drains_and_gpufleet_replaces_from_the_taint_before_the_node_goes_with_no_failed_request(
    sim: BackgroundSimulation,
    queueless_operator: OperatorProcess,
    nth: tuple[NodeTerminationHandler, CloudEvents],
    nth_model: str,
) -> None:
    handler, queue = nth
    simulation = sim.simulation
    spot = [
        p
        for p in _serving(sim)
        if p["metadata"]["labels"]["gpufleet.io/capacity-type"] == "spot"
        and _zone(sim, p["spec"]["nodeName"]) == "us-west-2b"
    ]
    assert spot, "the spec places one spot replica in us-west-2b"
    node = spot[0]["spec"]["nodeName"]
    record = simulation.nodes[node]
    doomed = {p["metadata"]["name"] for p in model_pods(sim, MODEL) if p["spec"].get("nodeName") == node}
    load = constant_load(sim, NAMESPACE, MODEL)
    running = asyncio.run_coroutine_threadsafe(load.run(900), sim.loop)  # 18 s real, the whole story

    async def interruption() -> None:
        # As Simulation.interrupt, but the warning goes to NTH's queue: the cloud reclaims the instance
        # after the notice whatever anyone did.
        await asyncio.to_thread(
            queue.spot_interruption_warning, record.instance_id, record.pool.zone, datetime.now(UTC)
        )
        await simulation.clock.sleep(E2E_SPOT_NOTICE_SECONDS)
        await simulation.lose_node(node, "spot instance reclaimed (NTH pairing test)")

    timeline = Timeline()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(sim, node, doomed, timeline, stop), daemon=True)
    reclaim = asyncio.run_coroutine_threadsafe(interruption(), sim.loop)
    watcher.start()
    try:
        reclaim.result(timeout=60)
        wait_until(lambda: "node reclaimed" in timeline.first, timeout=10, what="the reclaim seen")
        report = running.result(timeout=120)
    finally:
        stop.set()
        watcher.join(timeout=10)
    events = queueless_operator.cluster.kubectl(
        "get", "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={MODEL}",
        "--sort-by=.lastTimestamp",
        "-o", "jsonpath={range .items[*]}{.lastTimestamp} {.reason}: {.message}{'\\n'}{end}",
    ).stdout  # fmt: skip
    # The endpoints controller's complaints about loopback pod IPs are noise here (ENVIRONMENT.md).
    ours = [line for line in events.splitlines() if "FailedToUpdateEndpoint" not in line]
    story = (
        f"timeline: {timeline}\nNTH:\n"
        + "\n".join(handler.actions()[-30:])
        + "\ngpufleet's Events:\n"
        + "\n".join(ours)
        + "\nsimulator:\n"
        + "\n".join(simulation.snapshot.events[-15:])
    )
    print(story)

    # NTH found the node through moto's EC2 (instance id -> providerID) and cordoned and tainted it.
    assert "tainted" in timeline.first, story
    assert "cordoned" in timeline.first, story
    assert timeline.first["tainted"] < timeline.first["node reclaimed"], story
    # ... and set out to drain it through the Eviction API.
    assert any(f"evicting pod {NAMESPACE}/{name}" in line for line in handler.actions() for name in doomed), (
        story
    )
    # The doomed replica left (NTH's eviction or gpufleet's drain) before the node went, not with it.
    left = min(timeline.first.get(w, 1e9) for w in ("doomed replica terminating", "doomed replica gone"))
    assert left < timeline.first["node reclaimed"], story
    # gpufleet, with no queue, read the taint and had the replicas back off the node before it went.
    assert "3 serving off the doomed node" in timeline.first, story
    assert timeline.first["3 serving off the doomed node"] < timeline.first["node reclaimed"], story
    # The race between NTH's eviction and gpufleet's make-before-break. gpufleet's replacement raises the
    # PDB's expected count (3 + 1) while it starts, so the budget (maxUnavailable 1) allows no eviction
    # until it serves: NTH's eviction is refused (429, retried every 5 s) and the model never runs short.
    # Only an eviction that came before gpufleet had seen the taint could take one replica (the budget).
    refused = any(
        "error when evicting" in line and f'"{name}"' in line and "disruption budget" in line
        for line in handler.actions()
        for name in doomed
    )
    assert timeline.samples > 20, story  # the watcher sampled the whole notice (0.1 s apart)
    assert timeline.fewest_serving >= (3 if refused else 2), story
    interrupted = queueless_operator.cluster.kubectl(
        "get", "events", "-n", NAMESPACE, "--field-selector",
        f"involvedObject.name={MODEL},reason=SpotInterruption",
        "-o", "jsonpath={range .items[*]}{.message}{'\\n'}{end}",
    ).stdout  # fmt: skip
    assert node in interrupted, f"no SpotInterruption Event naming {node}:\n{interrupted}\n{story}"
    # Nothing failed: NTH's eviction is graceful (preStop, then vLLM drains), and gpufleet's replacement
    # served before the node went.
    assert report.sent > 1000
    assert dict(report.errors) == {}, story
    assert report.ok == report.sent
    # NTH saw its drain through (its eviction refused, then the pod gone) and, only then, deleted the
    # message (its PostDrainTask): aws-sdk-go v1's ReceiveMessage, DescribeInstances and DeleteMessage
    # against moto, with not one failed receive or lookup in its log.
    wait_until(
        lambda: any(f"cordoned and drained node_name={node}" in line for line in handler.actions()),
        timeout=30,
        what="NTH's drain reported done",
    )

    def queue_empty() -> bool:
        attributes = queue.sqs.get_queue_attributes(QueueUrl=queue.queue_url, AttributeNames=["All"])
        counts = attributes["Attributes"]
        return counts["ApproximateNumberOfMessages"] == counts["ApproximateNumberOfMessagesNotVisible"] == "0"

    wait_until(queue_empty, timeout=30, what="NTH's queue empty")
    problems = [line for line in handler.actions() if "problem monitoring" in line.lower()]
    assert problems == [], "\n".join(problems)
    assert handler.alive()
    wait_until(lambda: len(_serving(sim)) == 3, timeout=60, what="three ready replicas of the model again")
