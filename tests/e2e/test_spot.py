"""Spot interruption failover end to end: moto SQS, simulated nodes and vLLM, the session operator.

The stories run in order on one model (Llama 3 8B, one GPU per replica, zones
us-west-2a and us-west-2b, one on-demand replica and two spot): a warning with
enough notice, messages that are not ours, spot capacity gone everywhere (on-demand
fallback and the return to spot), a zone outage, and last a node
taint while the queue is down (the restarted moto server has forgotten the
fleet's instances). Time runs 50x (tests/e2e/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from fleetsim.background import BackgroundSimulation
from fleetsim.cloud import client
from fleetsim.scenario import Event
from tests.conftest import OperatorProcess, wait_until
from tests.e2e.conftest import HERE, NAMESPACE
from tests.e2e.pods import constant_load, model_deployment, model_pods, serving
from tests.e2e.scrape import metric

SPOT_MODEL = "llama-3-8b-spot"
ZONE_LABEL = "topology.kubernetes.io/zone"


def _pods(sim: BackgroundSimulation) -> list[dict[str, Any]]:
    return model_pods(sim, SPOT_MODEL)


_ready = serving


def _ready_pods(sim: BackgroundSimulation) -> list[dict[str, Any]]:
    return [p for p in _pods(sim) if _ready(p)]


def _md(sim: BackgroundSimulation) -> dict[str, Any]:
    return model_deployment(sim, NAMESPACE, SPOT_MODEL)


def _condition(sim: BackgroundSimulation, kind: str) -> dict[str, Any]:
    conditions = _md(sim).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == kind), {})


def _zone_of(sim: BackgroundSimulation, pod: dict[str, Any]) -> str:
    labels: dict[str, str] = sim.simulation.core.read_node(pod["spec"]["nodeName"]).metadata.labels
    return labels[ZONE_LABEL]


def _wait(sim: BackgroundSimulation, probe: Any, timeout: float, what: str) -> Any:
    """wait_until, and on a timeout the model's pods and conditions, to tell why."""
    try:
        return wait_until(probe, timeout=timeout, interval=0.5, what=what)
    except AssertionError as error:
        pods = [
            (
                p["metadata"]["name"],
                p["metadata"]["labels"].get("gpufleet.io/zone"),
                p["metadata"]["labels"].get("gpufleet.io/capacity-type"),
                p["spec"].get("nodeName"),
                _ready(p),
            )
            for p in _pods(sim)
        ]
        status = _md(sim).get("status", {})
        # The model's Events, oldest first, and the simulator's own story, to tell what happened when.
        listed = sim.simulation.core.list_namespaced_event(
            NAMESPACE, field_selector=f"involvedObject.name={SPOT_MODEL}"
        )
        story = [
            f"{e.last_timestamp or e.event_time} {e.reason}: {e.message}"
            for e in sorted(listed.items, key=lambda e: str(e.last_timestamp or e.event_time))
        ]
        raise AssertionError(
            f"{error}\npods: {pods}\nconditions: {status.get('conditions')}\nspot: {status.get('spot')}"
            f"\nevents:\n"
            + "\n".join(story[-40:])
            + "\nsimulator:\n"
            + "\n".join(sim.simulation.snapshot.events[-40:])
        ) from None


def _posted(operator: OperatorProcess, reason: str) -> list[str]:
    """The Events of that reason, once there is one: they are posted from a queue of their own, a
    moment after the status that the test waited for."""
    return wait_until(lambda: _events(operator, reason), timeout=15, what=f"a {reason} Event")


def _events(operator: OperatorProcess, reason: str) -> list[str]:
    result = operator.cluster.kubectl(
        "get",
        "events",
        "-n",
        NAMESPACE,
        "--field-selector",
        f"involvedObject.name={SPOT_MODEL},reason={reason}",
        "-o",
        "jsonpath={range .items[*]}{.message}{'\\n'}{end}",
    )
    return [line for line in result.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def spot_model(sim: BackgroundSimulation, operator: OperatorProcess) -> Iterator[str]:
    if not operator.alive():
        operator.start()
    operator.cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(HERE / "llama-3-8b-spot.yaml"))
    wait_until(lambda: len(_ready_pods(sim)) == 3, timeout=120, what="three ready replicas of the spot model")
    yield SPOT_MODEL
    operator.cluster.kubectl(
        "delete", "modeldeployment", SPOT_MODEL, "-n", NAMESPACE, "--wait=false", check=False
    )


def test_a_warning_gets_a_ready_replacement_in_another_zone_before_the_node_goes_and_no_request_fails(
    sim: BackgroundSimulation, operator: OperatorProcess, spot_model: str
) -> None:
    simulation = sim.simulation
    victim = next(
        p
        for p in _ready_pods(sim)
        if p["metadata"]["labels"]["gpufleet.io/capacity-type"] == "spot" and _zone_of(sim, p) == "us-west-2b"
    )
    node = victim["spec"]["nodeName"]
    before = {p["metadata"]["name"] for p in _pods(sim)}
    load = constant_load(sim, NAMESPACE, spot_model)
    # 900 simulated seconds of load (18 s real) span the whole story.
    running = asyncio.run_coroutine_threadsafe(load.run(900), sim.loop)
    # The e2e fleet's five minutes of notice (6 s real; tests/conftest.py), longer than an 8B replica
    # takes to start (about a minute).
    interruption = asyncio.run_coroutine_threadsafe(simulation.interrupt(node, None), sim.loop)

    def replacement_ready() -> dict[str, Any] | None:
        return next(
            (
                p
                for p in _ready_pods(sim)
                if p["metadata"]["name"] not in before and _zone_of(sim, p) == "us-west-2a"
            ),
            None,
        )

    replacement = wait_until(
        replacement_ready, timeout=30, interval=0.2, what="a ready replacement in us-west-2a"
    )
    assert replacement["metadata"]["labels"]["gpufleet.io/capacity-type"] == "spot"
    assert node in simulation.nodes, "the replacement must be ready before the node is reclaimed"

    def victim_drained() -> bool:
        names = {p["metadata"]["name"]: p for p in _pods(sim)}
        pod = names.get(victim["metadata"]["name"])
        return pod is None or bool(pod["metadata"].get("deletionTimestamp"))

    wait_until(victim_drained, timeout=30, interval=0.2, what="the doomed replica drained")
    assert node in simulation.nodes, "the doomed replica must be drained before the node goes"
    interruption.result(timeout=60)
    report = running.result(timeout=120)
    assert report.sent > 1000
    assert dict(report.errors) == {}
    assert report.ok == report.sent

    status = _md(sim)["status"]
    assert status["spot"]["interruptionsHandled"] >= 1
    (message,) = [m for m in _events(operator, "SpotInterruption") if node in m]
    assert victim["metadata"]["name"] in message
    assert "us-west-2b" in message
    wait_until(lambda: len(_ready_pods(sim)) == 3, timeout=30, what="three ready replicas again")


def test_garbage_and_foreign_messages_are_counted_and_deleted(
    sim: BackgroundSimulation, operator: OperatorProcess, spot_model: str
) -> None:
    cloud = sim.simulation.cloud
    assert cloud is not None
    sqs = client("sqs", sim.simulation.moto.endpoint_url, "us-west-2")
    port = operator.metrics_port

    def count(outcome: str) -> float:
        return metric(port, "gpufleet_interruption_events_total", outcome=outcome)

    before = {outcome: count(outcome) for outcome in ("malformed", "foreign", "unknown", "no-node")}
    foreign = {**_warning("i-0123456789abcdef0"), "region": "eu-central-1"}
    for body in (
        "not json at all",
        json.dumps({"Type": "Notification", "Message": "{}"}),  # an SNS envelope
        json.dumps(foreign),
        json.dumps({**_warning("i-0123456789abcdef0"), "detail-type": "EC2 AMI State Change"}),
        json.dumps(_warning("i-0fffffffffffffff0")),  # a well-formed warning for no node of ours
    ):
        sqs.send_message(QueueUrl=cloud.queue_url, MessageBody=body)

    def all_counted() -> bool:
        return (
            count("malformed") > before["malformed"]
            and count("foreign") >= before["foreign"] + 2
            and count("unknown") > before["unknown"]
            and count("no-node") > before["no-node"]
        )

    wait_until(all_counted, timeout=30, interval=0.2, what="every message counted by outcome")

    def queue_empty() -> bool:
        attributes = sqs.get_queue_attributes(QueueUrl=cloud.queue_url, AttributeNames=["All"])["Attributes"]
        return (
            attributes["ApproximateNumberOfMessages"] == "0"
            and attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
        )

    wait_until(queue_empty, timeout=30, what="the messages deleted")
    assert operator.alive()
    # Nothing was taken away for input the operator could not use. (More than 3 can be ready: when
    # the first story's cooldown ends, spot moves back to 2b, made before the 2a replica is removed.)
    assert len(_ready_pods(sim)) >= 3
    assert _md(sim)["spec"]["replicas"] == 3


def _warning(instance_id: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "EC2 Spot Instance Interruption Warning",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2026-11-22T12:00:00Z",
        "region": "us-west-2",
        "resources": [f"arn:aws:ec2:us-west-2a:instance/{instance_id}"],
        "detail": {"instance-id": instance_id, "instance-action": "terminate"},
    }


def test_with_no_spot_capacity_anywhere_spot_replicas_fall_back_to_on_demand_and_return_later(
    sim: BackgroundSimulation, operator: OperatorProcess, spot_model: str
) -> None:
    simulation = sim.simulation
    # No spot launches in either zone for 3000 simulated seconds (60 s real), and the spot
    # nodes are reclaimed. The outage must outlast the fallback: pods pending past the fallback delay
    # (10 s here), in the zones one after the other when they do not go pending together.
    outages = [
        asyncio.run_coroutine_threadsafe(simulation.spot_outage(zone, 3000), sim.loop)
        for zone in ("us-west-2a", "us-west-2b")
    ]
    # A spot launch granted before the outage still joins during it, as an instance AWS has already
    # started does; the operator rightly moves replicas onto it. So wait for those to land, then take
    # every spot node (those with room left would take the replicas back at once).
    provisioner = simulation.provisioner
    assert provisioner is not None
    spot_pools = {pool.name for pool in simulation.fleet.pools if pool.capacity_type == "spot"}
    wait_until(
        lambda: not any(flight.pool in spot_pools for flight in list(provisioner.in_flight)),
        timeout=30,
        what="spot launches granted before the outage landed",
    )
    spot_nodes = [name for name, record in simulation.nodes.items() if record.pool.capacity_type == "spot"]
    assert spot_nodes
    for name in sorted(spot_nodes):
        sim.call(simulation.lose_node(name, "spot capacity reclaimed by the e2e test"))

    def on_demand_only() -> bool:
        ready = _ready_pods(sim)
        kinds = {p["metadata"]["labels"]["gpufleet.io/capacity-type"] for p in ready}
        return (
            len(ready) == 3
            and kinds == {"on-demand"}
            and _condition(sim, "OnDemandFallback").get("status") == "True"
        )

    _wait(sim, on_demand_only, 120, "three ready on-demand replicas in fallback")
    assert _posted(operator, "OnDemandFallback")
    assert _md(sim)["status"]["spot"]["fallbackSince"]
    for outage in outages:
        outage.result(timeout=120)

    def back_on_spot() -> bool:
        ready = _ready_pods(sim)
        spot = [p for p in ready if p["metadata"]["labels"]["gpufleet.io/capacity-type"] == "spot"]
        return (
            len(spot) == 2
            and len(ready) == 3
            and _condition(sim, "OnDemandFallback").get("status") == "False"
        )

    # Cooldowns end, spot is tried again with growing waits; on-demand serves until spot is ready.
    _wait(sim, back_on_spot, 180, "spot replicas back, fallback over")
    assert _posted(operator, "SpotRestored")
    # The write that ended the fallback deleted its start time; a plain merge patch would keep it.
    assert "fallbackSince" not in _md(sim)["status"]["spot"]


def test_a_zone_outage_moves_the_replicas_into_the_other_zone(
    sim: BackgroundSimulation, operator: OperatorProcess, spot_model: str
) -> None:
    simulation = sim.simulation
    sim.call(simulation._run_event(Event.model_validate({"at": 0, "zoneOutage": "us-west-2a"})))

    def all_in_2b() -> bool:
        ready = _ready_pods(sim)
        return len(ready) == 3 and all(_zone_of(sim, p) == "us-west-2b" for p in ready)

    # A lost zone is avoided for a cooldown, then tried again; still down, its pending pods make it
    # unavailable and the replicas go back to 2b: allow for one such retry.
    _wait(sim, all_in_2b, 180, "three ready replicas in us-west-2b")
    # The zone was reported lost when it went. By the time the replicas are ready in 2b, that cooldown
    # may have given way to the retry's (its pods pending there: SpotCoolingDown, OnDemandUnavailable),
    # so the reason now depends on timing; that 2a is avoided does not.
    assert any("zone us-west-2a unavailable (ZoneLost)" in m for m in _posted(operator, "ZoneLost"))
    degraded = _condition(sim, "ZoneDegraded")
    assert degraded["status"] == "True"
    assert "us-west-2a" in degraded["message"]

    # Spot in 2b: at once when a 2b spot node had room; otherwise the spot replicas pend while one is
    # provisioned (80 simulated seconds), past the fallback delay (10 s here), so they run on on-demand
    # first and come back to spot when the fallback's cooldown ends, as in the test above.
    def spot_and_on_demand_in_2b() -> bool:
        ready = _ready_pods(sim)
        kinds = {p["metadata"]["labels"]["gpufleet.io/capacity-type"] for p in ready}
        return all_in_2b() and kinds == {"on-demand", "spot"}

    _wait(sim, spot_and_on_demand_in_2b, 180, "spot and on-demand replicas ready in us-west-2b")


def test_with_the_queue_unreachable_a_termination_handler_taint_still_moves_replicas(
    sim: BackgroundSimulation, operator: OperatorProcess, spot_model: str
) -> None:
    simulation = sim.simulation
    simulation.moto.stop()
    try:
        wait_until(
            lambda: metric(operator.metrics_port, "gpufleet_interruption_queue_up") == 0,
            timeout=60,
            interval=0.5,
            what="the operator to report the queue down",
        )
        spot = [p for p in _ready_pods(sim) if p["metadata"]["labels"]["gpufleet.io/capacity-type"] == "spot"]
        node = spot[0]["spec"]["nodeName"]
        doomed = {p["metadata"]["name"] for p in _pods(sim) if p["spec"].get("nodeName") == node}
        operator.cluster.kubectl(
            "taint", "node", node, "aws-node-termination-handler/spot-itn=true:NoSchedule"
        )
        try:

            def moved() -> bool:
                ready = _ready_pods(sim)
                names = {p["metadata"]["name"] for p in ready}
                return (
                    len(ready) == 3
                    and not names & doomed
                    and all(p["spec"]["nodeName"] != node for p in ready)
                )

            _wait(sim, moved, 120, "the replicas moved off the tainted node")
            assert _posted(operator, "SpotInterruption")
        finally:
            operator.cluster.kubectl(
                "taint", "node", node, "aws-node-termination-handler/spot-itn=true:NoSchedule-", check=False
            )
    finally:
        # Back for whatever runs next: a fresh moto server on the same port, with the queue.
        simulation.moto.start()
        cloud = simulation.cloud
        assert cloud is not None
        cloud.reset_queue()
        wait_until(
            lambda: metric(operator.metrics_port, "gpufleet_interruption_queue_up") == 1,
            timeout=60,
            interval=0.5,
            what="the queue readable again",
        )
