"""Spot handling around the planner: the capacity store, the SQS consumer, cost, and reconciles that drain."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.adapters.sqs import QueueMessage
from gpufleet.handlers import metrics
from gpufleet.handlers.capacity import CapacityStore
from gpufleet.handlers.interruptions import InterruptionConsumer
from gpufleet.handlers.reconcile import Reconciler
from gpufleet.planning.cost import ProductPrices, estimate, product_for
from gpufleet.planning.workloads import (
    LABEL_CAPACITY_TYPE,
    LABEL_MODEL_DEPLOYMENT,
    LABEL_ZONE,
    WorkloadOptions,
)
from tests.unit.fake_kube import FakeKube
from tests.unit.test_reconcile import deployments, sample

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CAPACITY_LABEL = "karpenter.sh/capacity-type"


def node(
    name: str,
    zone: str,
    capacity: str = "spot",
    ready: bool = True,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone, CAPACITY_LABEL: capacity}},
        "spec": {"providerID": f"aws:///{zone}/{instance(name)}", "taints": taints or []},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def instance(node_name: str) -> str:
    """A real-looking EC2 instance id for a node name."""
    return "i-" + hashlib.sha256(node_name.encode()).hexdigest()[:17]


def warning_body(instance: str, region: str = "us-east-1") -> str:
    return json.dumps(
        {
            "version": "0",
            "id": "1",
            "detail-type": "EC2 Spot Instance Interruption Warning",
            "source": "aws.ec2",
            "account": "123456789012",
            "time": "2026-11-22T12:00:00Z",
            "region": region,
            "resources": [],
            "detail": {"instance-id": instance, "instance-action": "terminate"},
        }
    )


def store() -> CapacityStore:
    return CapacityStore(CAPACITY_LABEL, "spot")


# --- the store -----------------------------------------------------------------------------------


def test_a_taint_dooms_the_node_and_keeps_its_first_deadline() -> None:
    s = store()
    assert not s.update_node(node("n1", "us-east-1b"), NOW)
    taint = [{"key": "aws-node-termination-handler/spot-itn", "effect": "NoSchedule"}]
    assert s.update_node(node("n1", "us-east-1b", taints=taint), NOW)
    # read again later: the same doom, not a later deadline (NoSchedule taints carry no timeAdded)
    assert not s.update_node(node("n1", "us-east-1b", taints=taint), NOW + timedelta(seconds=30))
    cloud, node_dooms = s.dooms({"n1"}, [])
    assert cloud == []
    (doom,) = node_dooms
    assert (doom.kind, doom.zone, doom.capacity_type, doom.deadline) == (
        "interruption",
        "us-east-1b",
        "spot",
        NOW + timedelta(seconds=120),
    )
    assert s.update_node(node("n1", "us-east-1b"), NOW + timedelta(seconds=40))  # untainted: cleared
    assert s.dooms({"n1"}, []) == ([], [])


def test_cloud_signals_map_instances_to_nodes_and_models() -> None:
    s = store()
    s.update_node(node("n1", "us-east-1b"), NOW)
    s.update_pod(("ml", "llama"), "ml/p1", "n1")
    consumer = InterruptionConsumer(FakeQueue([]), s, lambda key: None, lambda: NOW)
    assert consumer.handle(QueueMessage("m1", "r1", warning_body(instance("n1")))) == "handled"
    cloud, _ = s.dooms({"n1"}, [])
    assert [(d.node, d.kind, d.deadline) for d in cloud] == [
        ("n1", "interruption", NOW + timedelta(seconds=120))
    ]
    assert s.models_on("n1") == {("ml", "llama")}


def test_spot_pressure_elsewhere_in_the_zone_is_visible_for_cooldowns() -> None:
    s = store()
    s.update_node(node("n1", "us-east-1b"), NOW)
    s.update_node(node("n2", "us-east-1c"), NOW)
    s.delete_node("n1", NOW)
    cloud, _ = s.dooms(set(), ["us-east-1b"])
    assert [(d.node, d.kind) for d in cloud] == [("n1", "terminated")]
    assert s.dooms(set(), ["us-east-1c"]) == ([], [])


def test_signals_of_nodes_long_gone_are_forgotten() -> None:
    s = store()
    s.update_node(node("n1", "us-east-1b"), NOW)
    s.delete_node("n1", NOW)
    s.forget_cloud(NOW - timedelta(seconds=1))
    assert len(s.dooms(set(), ["us-east-1b"])[0]) == 1
    s.forget_cloud(NOW + timedelta(seconds=1))
    assert s.dooms(set(), ["us-east-1b"]) == ([], [])


def test_a_zone_is_lost_when_its_nodes_go_and_none_is_ready() -> None:
    s = store()
    for name in ("a1", "a2"):
        s.update_node(node(name, "us-east-1a", "on-demand"), NOW)
    s.update_node(node("b1", "us-east-1b"), NOW)
    s.update_node(node("a1", "us-east-1a", "on-demand", ready=False), NOW)
    assert s.lost_zones(NOW) == {}  # one node down is a node problem
    s.delete_node("a2", NOW + timedelta(seconds=5))
    assert s.lost_zones(NOW + timedelta(seconds=5)) == {"us-east-1a": NOW}
    assert s.lost_zones(NOW + timedelta(minutes=11)) == {}  # the window passed


def test_spot_reclaims_alone_never_make_a_zone_lost() -> None:
    # A Karpenter zone holding only the spot nodes it keeps losing: a cooldown, not an outage.
    s = store()
    for name in ("s1", "s2", "s3"):
        s.update_node(node(name, "us-east-1b"), NOW)
        s.delete_node(name, NOW)
    assert s.lost_zones(NOW) == {}


def test_the_notice_is_a_setting() -> None:
    s = CapacityStore(CAPACITY_LABEL, "spot", notice=timedelta(seconds=30))  # GCP and Azure spot
    taint = [{"key": "aws-node-termination-handler/spot-itn", "effect": "NoSchedule"}]
    s.update_node(node("n1", "us-east-1b", taints=taint), NOW)
    _, (doom,) = s.dooms({"n1"}, [])
    assert doom.deadline == NOW + timedelta(seconds=30)
    consumer = InterruptionConsumer(FakeQueue([]), s, lambda key: None, lambda: NOW)
    consumer.handle(QueueMessage("m", "r", warning_body(instance("n1"))))
    (cloud,), _ = s.dooms({"n1"}, [])
    assert cloud.deadline == NOW + timedelta(seconds=30)


# --- the consumer --------------------------------------------------------------------------------


class FakeQueue:
    region = "us-east-1"
    account: str | None = "123456789012"

    def __init__(self, batches: list[list[QueueMessage]], fail: int = 0) -> None:
        self.batches = batches
        self.fail = fail
        self.deleted: list[str] = []

    def receive(
        self, wait_seconds: int = 20, max_messages: int = 10, visibility_timeout: int = 20
    ) -> list[QueueMessage]:
        self.asked = (wait_seconds, visibility_timeout)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("queue unreachable")
        return self.batches.pop(0) if self.batches else []

    def delete(self, receipt_handle: str) -> None:
        self.deleted.append(receipt_handle)


def test_every_message_is_deleted_and_counted_whatever_it_is() -> None:
    s = store()
    s.update_node(node("n1", "us-east-1b"), NOW)
    s.update_pod(("ml", "llama"), "ml/p1", "n1")
    enqueued: list[tuple[str, str]] = []
    messages = [
        QueueMessage("1", "r1", warning_body(instance("n1"))),
        QueueMessage("2", "r2", "{not json"),
        QueueMessage("3", "r3", warning_body(instance("n1"), region="eu-west-1")),
        QueueMessage("4", "r4", warning_body(instance("elsewhere"))),
    ]
    queue = FakeQueue([messages])
    consumer = InterruptionConsumer(queue, s, enqueued.append, lambda: NOW)
    before = _counts()
    assert consumer.poll_once() == 4
    assert queue.asked == (20, 20)  # Karpenter's long poll and visibility by default
    assert queue.deleted == ["r1", "r2", "r3", "r4"]
    assert enqueued == [("ml", "llama")]
    after = _counts()
    assert {k: after[k] - before[k] for k in after} == {
        "handled": 1,
        "malformed": 1,
        "foreign": 1,
        "no-node": 1,
    }
    assert metrics.INTERRUPTION_QUEUE_UP._value.get() == 1


def _counts() -> dict[str, float]:
    totals = dict.fromkeys(("handled", "malformed", "foreign", "no-node"), 0.0)
    for sample_ in metrics.INTERRUPTION_EVENTS.collect()[0].samples:
        outcome = sample_.labels["outcome"]
        if sample_.name.endswith("_total") and outcome in totals:
            totals[outcome] += sample_.value
    return totals


def test_an_unreachable_queue_is_reported_and_retried() -> None:
    queue = FakeQueue([[]], fail=2)
    consumer = InterruptionConsumer(queue, store(), lambda key: None, lambda: NOW, max_backoff_seconds=0.01)
    with pytest.raises(ConnectionError):
        consumer.poll_once()
    assert metrics.INTERRUPTION_QUEUE_UP._value.get() == 1  # set only by a run loop's failure handling

    waits: list[float] = []

    def stop_after_recovery(delay: float) -> bool:
        waits.append(delay)
        return False

    consumer.stopped.wait = stop_after_recovery  # type: ignore[method-assign]
    original = queue.receive

    def receive_then_stop(wait_seconds: int = 20, visibility_timeout: int = 20) -> list[QueueMessage]:
        result = original(wait_seconds=wait_seconds, visibility_timeout=visibility_timeout)
        consumer.stopped.set()
        return result

    queue.receive = receive_then_stop  # type: ignore[method-assign]
    consumer.run()
    assert waits == [0.01]  # one failure left: backed off once, then read, then stopped
    assert metrics.INTERRUPTION_QUEUE_UP._value.get() == 1


# --- cost ----------------------------------------------------------------------------------------

A100 = ProductPrices(on_demand=27.45, gpus_per_instance=8, spot={"a": 11.8, "b": 12.6}, instance_type="p4de")


def test_cost_counts_each_replicas_share_of_its_instance() -> None:
    found = estimate([("a", "on-demand"), ("a", "spot"), ("c", "spot")], 4, "A100", A100)
    # 4 GPUs = half an instance: 13.725 on-demand, 5.9 spot in a, the spot mean 6.1 in c (no price)
    assert found.per_hour == pytest.approx(13.725 + 5.9 + 6.1)
    assert found.on_demand_equivalent_per_hour == pytest.approx(3 * 13.725)
    assert "below all on-demand" in found.message
    assert found.to_json()["perHour"] == round(13.725 + 5.9 + 6.1, 2)


def test_cost_without_prices_says_what_to_set() -> None:
    assert product_for(None, {"A100": A100, "H100": A100}) == (None, None)
    assert product_for(None, {"A100": A100}) == ("A100", A100)
    found = estimate([("a", "spot")], 1, "H100", None)
    assert found.per_hour is None
    assert "GPUFLEET_PRICES" in found.message


# --- reconciles ----------------------------------------------------------------------------------


def pod(kube: FakeKube, name: str, zone: str, capacity: str, node_name: str, ready: bool = True) -> None:
    kube.objects[("Pod", "ml", name)] = {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "labels": {
                LABEL_MODEL_DEPLOYMENT: "llama-3-70b",
                LABEL_ZONE: zone,
                LABEL_CAPACITY_TYPE: capacity,
            },
        },
        "spec": {"nodeName": node_name},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_a_reconcile_keeps_the_doomed_replica_until_its_replacement_is_ready_then_drains_it() -> None:
    kube, s = FakeKube(), store()
    clock = [NOW]
    reconciler = Reconciler(
        kube,
        WorkloadOptions(),
        clock=lambda: clock[0],
        capacity=s,
        prices={"NVIDIA-A100-SXM4-80GB": A100},
    )
    capacity = {
        "zones": ["us-east-1a", "us-east-1b", "us-east-1c"],
        "onDemandReplicas": 1,
        "spotPercent": 100,
    }
    body = sample(replicas=3, capacity=capacity)  # us-east-1a on-demand, 1b spot, 1c spot
    reconciler.reconcile(body)
    assert deployments(kube) == {
        "llama-3-70b-us-east-1a-on-demand": 1,
        "llama-3-70b-us-east-1b-spot": 1,
        "llama-3-70b-us-east-1c-spot": 1,
    }
    for zone, capacity in (("us-east-1a", "on-demand"), ("us-east-1b", "spot"), ("us-east-1c", "spot")):
        s.update_node(node(f"n-{zone}", zone, capacity), NOW)
        pod(kube, f"p-{zone}", zone, capacity, f"n-{zone}")
    consumer = InterruptionConsumer(FakeQueue([]), s, lambda key: None, lambda: NOW)
    consumer.handle(QueueMessage("m", "r", warning_body(instance("n-us-east-1b"))))

    body["status"] = kube.last_status
    outcome = reconciler.reconcile(body)
    # spot in 1b cools down: the replacement goes to 1a spot, the doomed replica keeps serving
    assert deployments(kube) == {
        "llama-3-70b-us-east-1a-on-demand": 1,
        "llama-3-70b-us-east-1a-spot": 1,
        "llama-3-70b-us-east-1b-spot": 1,
        "llama-3-70b-us-east-1c-spot": 1,
    }
    assert outcome.drained == []
    assert outcome.requeue_after == pytest.approx(60)
    status = kube.last_status
    assert status["spot"]["interruptionsHandled"] == 1
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["SpotInterrupted"] == ("True", "SpotInterruption")
    assert conditions["ZoneDegraded"] == ("True", "SpotCoolingDown")
    assert status["cost"]["perHour"] > 0
    assert any(reason == "SpotInterruption" for _, reason, _ in kube.events)

    pod(kube, "p-new", "us-east-1a", "spot", "n-us-east-1a")  # the replacement is ready
    body["status"] = kube.last_status
    clock[0] = NOW + timedelta(seconds=20)
    outcome = reconciler.reconcile(body)
    assert outcome.drained == [("p-us-east-1b", "replaced")]
    assert "Pod/p-us-east-1b" in kube.deletes
    assert "llama-3-70b-us-east-1b-spot" not in deployments(kube)
    interrupted = next(c for c in kube.last_status["conditions"] if c["type"] == "SpotInterrupted")
    assert interrupted["status"] == "True"
    assert "1 draining now" in interrupted["message"]
    # once the drained pod is gone, the interruption is over
    body["status"] = kube.last_status
    reconciler.reconcile(body)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in kube.last_status["conditions"]}
    assert conditions["SpotInterrupted"] == ("False", "NoneInProgress")


def test_status_members_that_went_away_are_deleted_and_an_invalid_spec_leaves_spot_and_cost_alone() -> None:
    kube, s = FakeKube(), store()
    reconciler = Reconciler(kube, WorkloadOptions(), clock=lambda: NOW, capacity=s)
    body = sample()
    # As a restarted operator finds it: a fallback that has ended since, and a price no longer known.
    body["status"] = {
        "spot": {"interruptionsHandled": 1, "fallbackSince": "2026-11-22T11:00:00Z"},
        "cost": {"currency": "USD", "perHour": 41.2, "message": "old"},
    }
    reconciler.reconcile(body)
    assert kube.last_status["spot"]["fallbackSince"] is None
    assert "fallbackSince" not in kube.stored_status["spot"]
    assert kube.last_status["cost"]["perHour"] is None
    assert kube.stored_status["spot"]["interruptionsHandled"] == 1

    broken = sample()
    broken["spec"]["accelerator"]["tensorParallelSize"] = 2
    broken["status"] = kube.stored_status
    reconciler.reconcile(broken)
    assert "spot" not in kube.last_status
    assert "cost" not in kube.last_status
