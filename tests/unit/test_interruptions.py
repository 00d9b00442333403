"""The interruption queue consumer: every message read is recorded or counted, and deleted."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gpufleet.adapters.sqs import QueueMessage
from gpufleet.config import Settings
from gpufleet.runtime import operator_metrics as metrics
from gpufleet.runtime.interruptions import FIRST_BACKOFF_SECONDS, InterruptionConsumer
from gpufleet.runtime.work_queue import jittered_backoff
from tests.unit.spot_objects import FakeQueue, instance, node, store, warning_body

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


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
    consumer = InterruptionConsumer(
        queue, store(), lambda key: None, lambda: NOW, max_backoff_seconds=0.01, jitter=lambda: 0.999999
    )
    metrics.INTERRUPTION_QUEUE_UP.set(1)  # a global gauge: whatever ran before must not decide this test
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
    assert waits == pytest.approx([0.01])  # one failure left: backed off once, then read, then stopped
    assert metrics.INTERRUPTION_QUEUE_UP._value.get() == 1


def test_the_queue_is_read_only_once_the_nodes_and_pods_are_known() -> None:
    queue = FakeQueue([[QueueMessage("1", "r1", warning_body(instance("n1")))]])
    s = store()
    attempts: list[str] = []

    def prepare() -> None:
        attempts.append("prepare")
        if len(attempts) == 1:
            raise ConnectionError("the API server is restarting")
        s.update_node(node("n1", "us-east-1b"), NOW)
        s.update_pod(("ml", "llama"), "ml/p1", "n1")

    enqueued: list[tuple[str, str]] = []
    consumer = InterruptionConsumer(
        queue, s, enqueued.append, lambda: NOW, max_backoff_seconds=0.01, prepare=prepare
    )
    original = queue.receive

    def receive_then_stop(wait_seconds: int = 20, visibility_timeout: int = 20) -> list[QueueMessage]:
        attempts.append("receive")
        consumer.stopped.set()
        return original(wait_seconds=wait_seconds, visibility_timeout=visibility_timeout)

    queue.receive = receive_then_stop  # type: ignore[method-assign]
    consumer.stopped.wait = lambda delay: False  # type: ignore[method-assign]
    consumer.run()
    # Read at startup, the warning finds its node and its model, not "no node of this cluster".
    assert attempts == ["prepare", "prepare", "receive"]
    assert enqueued == [("ml", "llama")]
    assert queue.deleted == ["r1"]


def backoff_seconds(failures: int, cap: float, jitter: float) -> float:
    """The consumer's wait after `failures` failed polls in a row."""
    return jittered_backoff(failures, FIRST_BACKOFF_SECONDS, cap, jitter)


def test_queue_back_off_grows_is_capped_and_jittered_between_half_and_all() -> None:
    assert [backoff_seconds(n, 10.0, jitter=0.999999) for n in (1, 2, 3, 4, 5, 9)] == pytest.approx(
        [1, 2, 4, 8, 10, 10], rel=1e-5
    )
    assert [backoff_seconds(n, 10.0, jitter=0.0) for n in (1, 4, 9)] == [0.5, 4.0, 5.0]
    # Two pollers that failed together wait different times.
    assert backoff_seconds(3, 10.0, 0.1) != backoff_seconds(3, 10.0, 0.7)
    # Hours of outage: thousands of failures in a row still wait the cap (2.0 ** 1024 would overflow).
    assert backoff_seconds(5000, 10.0, jitter=0.999999) == pytest.approx(10.0)


def test_the_default_back_off_reads_the_queue_again_well_inside_a_warnings_notice() -> None:
    longest = backoff_seconds(50, Settings.defaults().interruption_queue_max_backoff_seconds, jitter=0.999999)
    assert longest <= 10.0 < Settings.defaults().spot_notice_seconds / 10


def test_messages_leave_nothing_behind_but_counts_of_a_fixed_set_of_labels() -> None:
    # No message ids, instances or signals are kept per message: a backlog of thousands read through
    # (duplicates, other clusters' instances, garbage) holds no more afterwards than before.
    s = store()
    s.update_node(node("n1", "us-east-1b"), NOW)
    messages = [
        QueueMessage(str(i), f"r{i}", warning_body(instance(f"elsewhere-{i}")) if i % 3 else "{not json")
        for i in range(3000)
    ] + [QueueMessage(f"dup-{i}", f"d{i}", warning_body(instance("n1"))) for i in range(3000)]
    consumer = InterruptionConsumer(FakeQueue([messages]), s, lambda key: None, lambda: NOW)
    sizes, series = s.sizes(), _series()
    assert consumer.poll_once() == 6000
    assert s.sizes() == {**sizes, "cloud_dooms": 1}  # the one node's one signal
    # At most the three kinds of outcome seen here are new series, not one per message or instance.
    assert len(_series() - series) <= 3


def _series() -> set[tuple[tuple[str, str], ...]]:
    return {
        tuple(sorted(sample.labels.items()))
        for sample in metrics.INTERRUPTION_EVENTS.collect()[0].samples
        if sample.name.endswith("_total")
    }
