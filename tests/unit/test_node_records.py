"""A cloud signal is recorded on its Node before its message is deleted, and read back after a restart."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.adapters.kube import KubeError
from gpufleet.adapters.sqs import QueueMessage
from gpufleet.planning.failover import Doom
from gpufleet.planning.nodes import (
    CAPACITY_SIGNAL_KEY,
    read_node,
    read_signal_record,
    signal_record_patch,
)
from gpufleet.runtime.interruptions import InterruptionConsumer
from gpufleet.runtime.node_records import NodeRecorder
from tests.unit.fake_kube import FakeKube, merge
from tests.unit.spot_objects import CAPACITY_LABEL, FakeQueue, instance, node, store, warning_body

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def doom(kind: str = "interruption", deadline: datetime | None = NOW + timedelta(seconds=120)) -> Doom:
    return Doom("n1", "us-east-1b", "spot", kind, NOW, deadline, instance("n1"), f"{kind} for n1")


def stored_node(name: str = "n1", **extra: Any) -> dict[str, Any]:
    obj = node(name, "us-east-1b", **extra)
    obj["apiVersion"], obj["kind"] = "v1", "Node"
    obj["metadata"]["resourceVersion"] = "7"
    obj["metadata"]["labels"]["node.kubernetes.io/instance-type"] = "p4d.24xlarge"
    return obj


def test_a_warning_is_recorded_with_a_no_schedule_taint_and_reads_back() -> None:
    live = stored_node(taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}])
    patch = signal_record_patch(live, doom())
    assert patch is not None
    assert patch["metadata"]["resourceVersion"] == "7"  # a concurrent taint change is a 409, not lost
    assert [t["key"] for t in patch["spec"]["taints"]] == ["nvidia.com/gpu", CAPACITY_SIGNAL_KEY]
    recorded = merge(live, patch)
    info = read_node(
        recorded, capacity_type_label=CAPACITY_LABEL, spot_value="spot", notice=timedelta(0), now=NOW
    ).info
    back = read_signal_record(recorded, info)
    assert back == replace(doom(), instance_type="p4d.24xlarge")
    # recorded once: the same signal again (a duplicate message) asks for nothing
    assert signal_record_patch(recorded, doom()) is None


def test_a_rebalance_is_recorded_without_a_taint_and_a_later_warning_adds_it() -> None:
    live = stored_node()
    patch = signal_record_patch(live, doom("rebalance", None))
    assert patch is not None
    assert "spec" not in patch  # the node may stay for days: not taken out of scheduling
    recorded = merge(live, patch)
    warned = signal_record_patch(recorded, doom())
    assert warned is not None
    assert [t["key"] for t in warned["spec"]["taints"]] == [CAPACITY_SIGNAL_KEY]
    # an out-of-order rebalance after the warning does not replace it
    assert signal_record_patch(merge(recorded, warned), doom("rebalance", None)) is None


@pytest.mark.parametrize(
    "garbage", ["{", "[]", json.dumps({"kind": "interruption"}), json.dumps({"since": 3})]
)
def test_an_unreadable_record_is_none(garbage: str) -> None:
    live = stored_node()
    live["metadata"]["annotations"] = {CAPACITY_SIGNAL_KEY: garbage}
    assert read_signal_record(live) is None


def kube_with(*nodes: dict[str, Any]) -> FakeKube:
    kube = FakeKube()
    for obj in nodes:
        kube.objects[("Node", "", obj["metadata"]["name"])] = obj
    return kube


def test_the_recorder_reads_again_after_a_conflict() -> None:
    kube = kube_with(stored_node())
    real_patch = kube.patch
    calls = []

    def someone_else_first(*args: Any) -> dict[str, Any]:
        calls.append(args)
        if len(calls) == 1:  # Karpenter taints the node between our read and our write
            kube.edit(
                "Node",
                "",
                "n1",
                lambda o: o["spec"]["taints"].append(
                    {"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}
                ),
            )
        return real_patch(*args)

    kube.patch = someone_else_first  # type: ignore[method-assign]
    NodeRecorder(kube).record(doom())
    keys = [t["key"] for t in kube.objects[("Node", "", "n1")]["spec"]["taints"]]
    assert keys == ["karpenter.sh/disrupted", CAPACITY_SIGNAL_KEY]  # neither taint lost
    assert len(calls) == 2


def test_a_message_is_deleted_only_once_recorded_on_its_node() -> None:
    s = store()
    s.update_node(stored_node(), NOW)
    kube = kube_with(stored_node())
    queue = FakeQueue([[QueueMessage("1", "r1", warning_body(instance("n1")))]] * 2)

    def api_down(d: Doom) -> None:
        raise KubeError(503, "apiserver restarting")

    s.update_pod(("ml", "llama"), "ml/p1", "n1")
    enqueued: list[tuple[str, str]] = []
    down = InterruptionConsumer(queue, s, enqueued.append, lambda: NOW, record=api_down)
    assert down.poll_once() == 1
    assert queue.deleted == []  # it comes back after the visibility timeout
    assert enqueued == [("ml", "llama")]  # and is acted on from memory meanwhile
    up = InterruptionConsumer(queue, s, lambda key: None, lambda: NOW, record=NodeRecorder(kube).record)
    up.poll_once()
    assert queue.deleted == ["r1"]
    assert CAPACITY_SIGNAL_KEY in kube.objects[("Node", "", "n1")]["metadata"]["annotations"]


def test_a_restarted_operator_reads_the_warning_back_from_the_node() -> None:
    first = store()
    first.update_node(stored_node(), NOW)
    kube = kube_with(stored_node())
    consumer = InterruptionConsumer(
        FakeQueue([]), first, lambda key: None, lambda: NOW, record=NodeRecorder(kube).record
    )
    consumer.handle(QueueMessage("1", "r1", warning_body(instance("n1"))))
    # a new process: nothing in memory, the node as the watch (or the priming list) shows it
    fresh = store()
    fresh.update_node(kube.objects[("Node", "", "n1")], NOW + timedelta(seconds=30))
    (restored,) = fresh.snapshot(NOW + timedelta(seconds=30)).cloud_dooms
    (original,) = first.snapshot(NOW).cloud_dooms
    assert (restored.kind, restored.since, restored.deadline) == (
        original.kind,
        original.since,
        original.deadline,
    )
    assert restored.instance_type == "p4d.24xlarge"
