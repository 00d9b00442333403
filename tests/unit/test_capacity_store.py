"""The capacity store: what the node watch and the interruption queue recorded, as a reconcile reads it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from gpufleet.adapters.sqs import QueueMessage
from gpufleet.planning.capacity_signals import CapacitySignal
from gpufleet.planning.failover import Doom
from gpufleet.planning.observe import owner_key
from gpufleet.planning.reconcile import dooms_for
from gpufleet.planning.zone_loss import lost_zones
from gpufleet.runtime.capacity_store import CapacityStore
from gpufleet.runtime.interruptions import InterruptionConsumer
from tests.unit.spot_objects import FakeQueue, instance, node, store, warning_body

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def dooms(s: CapacityStore, nodes: Iterable[str], zones: Iterable[str]) -> tuple[list[Doom], list[Doom]]:
    return dooms_for(s.snapshot(NOW), nodes, zones)


def lost(s: CapacityStore, now: datetime) -> dict[str, datetime]:
    snapshot = s.snapshot(now)
    return lost_zones(snapshot.losses, snapshot.ready_zones, now, s.zone_loss_window)


def test_a_taint_dooms_the_node_and_keeps_its_first_deadline() -> None:
    s = store()
    assert not s.update_node(node("n1", "us-east-1b"), NOW)
    taint = [{"key": "aws-node-termination-handler/spot-itn", "effect": "NoSchedule"}]
    assert s.update_node(node("n1", "us-east-1b", taints=taint), NOW)
    # read again later: the same doom, not a later deadline (NoSchedule taints carry no timeAdded)
    assert not s.update_node(node("n1", "us-east-1b", taints=taint), NOW + timedelta(seconds=30))
    cloud, node_dooms = dooms(s, {"n1"}, [])
    assert cloud == []
    (doom,) = node_dooms
    assert (doom.kind, doom.zone, doom.capacity_type, doom.deadline) == (
        "interruption",
        "us-east-1b",
        "spot",
        NOW + timedelta(seconds=120),
    )
    assert s.update_node(node("n1", "us-east-1b"), NOW + timedelta(seconds=40))  # untainted: cleared
    assert dooms(s, {"n1"}, []) == ([], [])


def test_cloud_signals_map_instances_to_nodes_and_models() -> None:
    s = store()
    s.update_node(node("n1", "us-east-1b"), NOW)
    s.update_pod(("ml", "llama"), "ml/p1", "n1")
    consumer = InterruptionConsumer(FakeQueue([]), s, lambda key: None, lambda: NOW)
    assert consumer.handle(QueueMessage("m1", "r1", warning_body(instance("n1")))) == "handled"
    cloud, _ = dooms(s, {"n1"}, [])
    assert [(d.node, d.kind, d.deadline) for d in cloud] == [
        ("n1", "interruption", NOW + timedelta(seconds=120))
    ]
    assert s.models_on("n1") == {("ml", "llama")}


def test_spot_pressure_elsewhere_in_the_zone_is_visible_for_cooldowns() -> None:
    s = store()
    s.update_node(node("n1", "us-east-1b"), NOW)
    s.update_node(node("n2", "us-east-1c"), NOW)
    s.delete_node("n1", NOW)
    cloud, _ = dooms(s, set(), ["us-east-1b"])
    assert [(d.node, d.kind) for d in cloud] == [("n1", "terminated")]
    assert dooms(s, set(), ["us-east-1c"]) == ([], [])


def test_signals_of_nodes_long_gone_are_forgotten() -> None:
    s = store()
    s.update_node(node("n1", "us-east-1b"), NOW)
    s.delete_node("n1", NOW)
    s.forget_cloud(NOW - timedelta(seconds=1))
    assert len(dooms(s, set(), ["us-east-1b"])[0]) == 1
    s.forget_cloud(NOW + timedelta(seconds=1))
    assert dooms(s, set(), ["us-east-1b"]) == ([], [])


def test_a_zone_is_lost_when_its_nodes_go_and_none_is_ready() -> None:
    s = store()
    for name in ("a1", "a2"):
        s.update_node(node(name, "us-east-1a", "on-demand"), NOW)
    s.update_node(node("b1", "us-east-1b"), NOW)
    s.update_node(node("a1", "us-east-1a", "on-demand", ready=False), NOW)
    assert lost(s, NOW) == {}  # one node down is a node problem
    s.delete_node("a2", NOW + timedelta(seconds=5))
    assert lost(s, NOW + timedelta(seconds=5)) == {"us-east-1a": NOW}
    assert lost(s, NOW + timedelta(minutes=11)) == {}  # the window passed


def test_spot_reclaims_alone_never_make_a_zone_lost() -> None:
    # A Karpenter zone holding only the spot nodes it keeps losing: a cooldown, not an outage.
    s = store()
    for name in ("s1", "s2", "s3"):
        s.update_node(node(name, "us-east-1b"), NOW)
        s.delete_node(name, NOW)
    assert lost(s, NOW) == {}


def test_the_notice_is_a_setting() -> None:
    s = store(notice=timedelta(seconds=30))  # GCP and Azure spot
    taint = [{"key": "aws-node-termination-handler/spot-itn", "effect": "NoSchedule"}]
    s.update_node(node("n1", "us-east-1b", taints=taint), NOW)
    _, (doom,) = dooms(s, {"n1"}, [])
    assert doom.deadline == NOW + timedelta(seconds=30)
    consumer = InterruptionConsumer(FakeQueue([]), s, lambda key: None, lambda: NOW)
    consumer.handle(QueueMessage("m", "r", warning_body(instance("n1"))))
    (cloud,), _ = dooms(s, {"n1"}, [])
    assert cloud.deadline == NOW + timedelta(seconds=30)


def test_empty_node_entries_are_forgotten() -> None:
    s = store()
    s.update_node(node("n1", "us-east-1b"), NOW)
    s.update_pod(("ml", "llama"), "ml/p1", "n1")
    s.update_pod(("ml", "llama"), "ml/p1", "n2")  # rescheduled
    assert s.models_on("n1") == set()
    assert set(s._pods) == {"n2"}
    s.delete_pod("ml/p1")
    assert s._pods == {}


def test_a_fresh_store_is_primed_from_lists_as_the_watches_would_fill_it() -> None:
    s = store()
    pod = {
        "metadata": {"name": "p1", "namespace": "ml", "labels": {"gpufleet.io/model-deployment": "llama"}},
        "spec": {"nodeName": "n1"},
    }
    stray = {"metadata": {"name": "x", "namespace": "ml", "labels": {}}, "spec": {"nodeName": "n1"}}
    s.prime([node("n1", "us-east-1b")], [pod, stray], owner_key, NOW)
    assert s.models_on("n1") == {("ml", "llama")}
    found = s.node_for_instance(instance("n1"))
    assert found is not None
    assert (found.name, found.zone) == ("n1", "us-east-1b")


# --- nothing grows without bound ---------------------------------------------------------------------

EMPTY = {
    "nodes": 0,
    "instances": 0,
    "node_dooms": 0,
    "cloud_dooms": 0,
    "pod_nodes": 0,
    "pods": 0,
    "losses": 0,
}
MANY = 10_000


def test_deleted_nodes_and_their_pods_leave_nothing_once_their_signals_are_old() -> None:
    s = store()
    taint = [{"key": "aws-node-termination-handler/spot-itn", "effect": "NoSchedule"}]
    for i in range(MANY):
        s.update_node(node(f"n{i}", "us-east-1b", taints=taint if i % 2 else None), NOW)
        s.update_pod(("ml", f"m{i % 7}"), f"ml/p{i}", f"n{i}")
    for i in range(MANY):
        s.delete_pod(f"ml/p{i}")
        s.delete_node(f"n{i}", NOW)
    # Kept for now, by rule: each deletion is a loss within the window and a signal within retention.
    assert s.sizes() == {**EMPTY, "cloud_dooms": MANY, "losses": MANY}
    # Later deletions sweep them, with no forget_cloud from outside.
    later = NOW + s.zone_loss_window + s.signal_retention + timedelta(minutes=1)
    s.update_node(node("last", "us-east-1c"), later)
    s.delete_node("last", later)
    assert s.sizes() == {**EMPTY, "cloud_dooms": 1, "losses": 1}


def test_a_signal_ahead_of_its_deadline_outlives_its_node_until_the_deadline_has_passed() -> None:
    s = store()
    s.update_node(node("n1", "us-east-1b"), NOW)
    s.update_node(node("n2", "us-east-1b"), NOW)
    start = NOW + timedelta(hours=3)
    s.record_cloud(CapacitySignal("scheduled-change", "sqs", NOW, start, instance("n1")))
    s.delete_node("n1", NOW)
    s.delete_node("n2", start)  # a sweep at the deadline keeps it
    assert [d.kind for d in s.snapshot(start).cloud_dooms] == ["scheduled-change", "terminated"]
    s.forget_cloud(start + timedelta(seconds=1))
    assert s.snapshot(start).cloud_dooms == ()


def test_the_pods_of_a_deleted_model_are_forgotten_with_it() -> None:
    s = store()
    s.update_node(node("n1", "us-east-1b"), NOW)
    for i in range(MANY):
        s.update_pod(("ml", "gone"), f"ml/gone-{i}", f"n{i % 100}")
    s.update_pod(("ml", "stays"), "ml/stays-0", "n1")
    s.forget_model(("ml", "gone"))
    assert (s.sizes()["pods"], s.sizes()["pod_nodes"]) == (1, 1)
    assert s.models_on("n1") == {("ml", "stays")}
    s.delete_pod("ml/gone-1")  # its deletion seen after all: nothing to do


def test_a_name_taken_by_another_machine_drops_the_old_instance() -> None:
    s = store()
    for i in range(MANY):  # the same name over and over, the deletions never seen
        again = node("n1", "us-east-1b")
        again["spec"]["providerID"] = f"aws:///us-east-1b/{instance(f'machine-{i}')}"
        s.update_node(again, NOW)
    assert s.sizes()["instances"] == 1
    assert s.node_for_instance(instance("machine-0")) is None
    found = s.node_for_instance(instance(f"machine-{MANY - 1}"))
    assert found is not None
    assert found.name == "n1"
