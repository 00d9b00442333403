"""Events never delay a reconcile (runtime.events.QueuedEvents): queued at once, posted by one thread,
bounded, coalesced, and a stop that returns on time whatever the API server does."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gpufleet.adapters.kube import KubeApi, KubeError
from gpufleet.planning.report import EventView
from gpufleet.runtime import operator_metrics as metrics
from gpufleet.runtime.events import QueuedEvents, post_event
from tests.unit.fake_kube import FakeKube

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
WAIT = 5.0  # seconds a condition may take before the test fails; met in milliseconds when all is well


def md(name: str = "llama", uid: str = "u1") -> dict[str, Any]:
    return {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ml", "uid": uid},
        "spec": {"replicas": 2},
    }


class GatedKube(FakeKube):
    """create_event waits for the gate (set: pass at once); `posting` is set while one is held there."""

    def __init__(self, fail: Callable[[str], bool] = lambda reason: False) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.posting = threading.Event()
        self.fail = fail
        self.changed = threading.Condition()
        self.involved: list[dict[str, Any]] = []

    def create_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str, now: datetime
    ) -> None:
        self.posting.set()
        self.gate.wait()
        with self.changed:
            try:
                if self.fail(reason):
                    raise KubeError(503, f"event {reason}: the API server is unavailable")
                super().create_event(involved, event_type, reason, message, now)
                self.involved.append(involved)
            finally:
                self.changed.notify_all()

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]

    def wait_for(self, condition: Callable[[], bool]) -> None:
        with self.changed:
            assert self.changed.wait_for(condition, WAIT), f"timed out; posted {self.reasons()}"


@pytest.fixture
def kube() -> Iterator[GatedKube]:
    fake = GatedKube()
    yield fake
    fake.gate.set()  # never leave a poster thread blocked behind a test


def queued(kube: KubeApi, capacity: int = 1000) -> tuple[QueuedEvents, list[str], list[int]]:
    drops: list[str] = []
    depths: list[int] = []
    return QueuedEvents(kube, capacity, on_drop=drops.append, on_depth=depths.append), drops, depths


def event(queue: QueuedEvents, reason: str, message: str = "", uid: str = "u1") -> None:
    queue.create_event(md(uid=uid), "Normal", reason, message or reason, NOW)


def test_an_event_is_queued_at_once_while_the_api_server_holds_the_post(kube: GatedKube) -> None:
    queue, _, depths = queued(kube)
    queue.start()
    event(queue, "First")
    assert kube.posting.wait(WAIT)  # the poster is now held inside create_event
    event(queue, "Second")  # returns, though the poster is still held
    assert kube.events == []
    assert queue.depth == 1
    kube.gate.set()
    kube.wait_for(lambda: kube.reasons() == ["First", "Second"])
    assert queue.stop(WAIT)
    assert depths[-1] == 0


def test_events_are_posted_in_order_about_the_object_and_time_they_name(kube: GatedKube) -> None:
    queue, _, _ = queued(kube)
    reasons = [f"Reason{i}" for i in range(50)]
    for reason in reasons:
        event(queue, reason)
    kube.gate.set()
    queue.start()
    kube.wait_for(lambda: len(kube.events) == 50)
    assert kube.reasons() == reasons
    # Only what an Event references is kept while it waits, not the whole body.
    assert kube.involved[0] == {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llama", "namespace": "ml", "uid": "u1"},
    }
    assert queue.stop(WAIT)
    assert queue.posted == 50


def test_a_full_queue_drops_its_oldest_event_and_counts_it(kube: GatedKube) -> None:
    queue, drops, depths = queued(kube, capacity=3)
    for reason in ("A", "B", "C", "D", "E"):
        event(queue, reason)
    assert queue.depth == 3
    assert drops == ["queue_full", "queue_full"]
    assert queue.dropped["queue_full"] == 2
    assert max(depths) == 3
    kube.gate.set()
    queue.start()
    kube.wait_for(lambda: len(kube.events) == 3)
    assert kube.reasons() == ["C", "D", "E"]
    assert queue.stop(WAIT)


def test_an_event_identical_to_one_still_waiting_is_posted_once(kube: GatedKube) -> None:
    queue, drops, _ = queued(kube)
    for _ in range(100):  # a reconcile retried a hundred times while the API server was slow
        event(queue, "Unschedulable", "2 pods pending")
    event(queue, "Unschedulable", "3 pods pending")  # says something else
    event(queue, "Unschedulable", "2 pods pending", uid="u2")  # another object (same name, new uid)
    assert queue.depth == 3
    kube.gate.set()
    queue.start()
    kube.wait_for(lambda: len(kube.events) == 3)
    assert queue.stop(WAIT)
    assert drops == []  # coalesced, not dropped: what they say is posted


def test_the_same_event_once_posted_is_posted_again(kube: GatedKube) -> None:
    kube.gate.set()
    queue, _, _ = queued(kube)
    queue.start()
    event(queue, "Autoscaled")
    kube.wait_for(lambda: len(kube.events) == 1)
    event(queue, "Autoscaled")
    kube.wait_for(lambda: len(kube.events) == 2)
    assert queue.stop(WAIT)


def test_a_failed_post_is_counted_not_retried_and_the_poster_carries_on() -> None:
    kube = GatedKube(fail=lambda reason: reason == "Refused")
    kube.gate.set()
    queue, drops, _ = queued(kube)
    queue.start()
    for reason in ("Before", "Refused", "After"):
        event(queue, reason)
    kube.wait_for(lambda: kube.reasons() == ["Before", "After"])
    assert queue.stop(WAIT)
    assert drops == ["post_failed"]
    assert queue.posted == 2


def test_stop_posts_what_waits_then_drops_later_events() -> None:
    kube = GatedKube()
    kube.gate.set()
    queue, drops, _ = queued(kube)
    for reason in ("A", "B", "C"):
        event(queue, reason)
    queue.start()
    assert queue.stop(WAIT)
    assert kube.reasons() == ["A", "B", "C"]
    event(queue, "Late")
    assert drops == ["stopped"]
    assert queue.stop(WAIT)  # idempotent
    queue.start()  # a stopped queue stays stopped
    event(queue, "Later")
    assert kube.reasons() == ["A", "B", "C"]


def test_stop_returns_within_its_timeout_when_a_post_hangs(kube: GatedKube) -> None:
    queue, drops, depths = queued(kube)
    queue.start()
    for reason in ("Hangs", "Waits", "AlsoWaits"):
        event(queue, reason)
    assert kube.posting.wait(WAIT)
    assert not queue.stop(0.01)  # returns although the post never does
    assert drops == ["stopped", "stopped"]
    assert (queue.depth, depths[-1]) == (0, 0)
    kube.gate.set()  # the API server answers at last: the held post lands, nothing after it
    kube.wait_for(lambda: kube.reasons() == ["Hangs"])


def test_stop_is_safe_when_never_started() -> None:
    kube = GatedKube()
    queue, drops, _ = queued(kube)
    assert queue.stop(WAIT)
    event(queue, "Late")
    assert drops == ["stopped"]
    assert kube.events == []


def test_every_other_call_goes_straight_through() -> None:
    fake = FakeKube()
    queue: KubeApi = QueuedEvents(fake)  # a KubeApi like the one it wraps
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "namespace": "ml"}}
    assert queue.apply(pod)["metadata"]["resourceVersion"] == "1"
    assert queue.get("v1", "Pod", "ml", "p1") is not None
    assert [p["metadata"]["name"] for p in queue.list("v1", "Pod", "ml", "")] == ["p1"]
    assert queue.patch("v1", "Pod", "ml", "p1", {"metadata": {"labels": {"a": "b"}}})["metadata"]["labels"]
    queue.patch_status("gpufleet.io/v1alpha1", "ModelDeployment", "ml", "llama", {"replicas": 1})
    queue.patch_scale("gpufleet.io/v1alpha1", "ModelDeployment", "ml", "llama", 3)
    assert queue.evict("ml", "p1")
    queue.delete("v1", "Pod", "ml", "p1")
    assert (fake.applies, fake.patches, fake.status_patches, fake.scales, fake.evictions, fake.deletes) == (
        ["Pod/p1"],
        ["Pod/p1"],
        1,
        [("llama", 3)],
        ["p1"],
        ["Pod/p1"],
    )
    with pytest.raises(KubeError):  # errors too
        queue.patch("v1", "Pod", "ml", "gone", {})
    assert fake.events == []


def test_post_event_through_the_queue_returns_before_the_post(kube: GatedKube) -> None:
    queue, _, _ = queued(kube)
    queue.start()
    post_event(queue, md(), EventView("Warning", "InvalidSpec", "spec.replicas: too many"), NOW)
    assert kube.posting.wait(WAIT)
    assert kube.events == []
    kube.gate.set()
    kube.wait_for(lambda: kube.events == [("Warning", "InvalidSpec", "spec.replicas: too many")])
    assert queue.stop(WAIT)


def test_drops_and_depth_reach_the_operators_metrics(kube: GatedKube) -> None:
    def dropped() -> float:
        return REGISTRY.get_sample_value("gpufleet_events_dropped_total", {"reason": "queue_full"}) or 0.0

    before = dropped()
    queue = QueuedEvents(kube, 2, on_drop=metrics.event_dropped, on_depth=metrics.EVENT_QUEUE_DEPTH.set)
    for reason in ("A", "B", "C"):
        event(queue, reason)
    assert dropped() - before == 1
    assert REGISTRY.get_sample_value("gpufleet_event_queue_depth") == 2
    assert REGISTRY.get_sample_value("gpufleet_events_dropped_total", {"reason": "post_failed"}) is not None
    queue.stop(WAIT)
    assert REGISTRY.get_sample_value("gpufleet_event_queue_depth") == 0


def test_flush_waits_for_what_was_queued_before_it_and_gives_up_at_its_timeout(kube: GatedKube) -> None:
    queue, _, _ = queued(kube)
    queue.start()
    try:
        event(queue, "SpotInterruption")
        assert not queue.flush_events(0.05)  # the API server holds the post: not yet
        kube.gate.set()
        assert queue.flush_events(WAIT)
        assert kube.reasons() == ["SpotInterruption"]
        assert queue.flush_events(0.0)  # nothing waits: at once
    finally:
        queue.stop(WAIT)
