"""The autoscaler's plan (planning.autoscale): which readings to take, then what to write, as data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.planning.autoscale import autoscale_target, autoscaled_spec, plan_autoscale
from gpufleet.planning.merge_patch import as_stored
from tests.unit.helpers import Readings, sample, scaling_timings
from tests.unit.spot_objects import pod_object

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def pods(ready: int, starting: int = 0, leaving: int = 0) -> list[dict[str, Any]]:
    found = [
        pod_object(f"p{i}", "us-east-1a", "spot", "n1", ready=i < ready) for i in range(ready + starting)
    ]
    for i in range(leaving):
        gone = pod_object(f"gone{i}", "us-east-1a", "spot", "n1")
        gone["metadata"]["deletionTimestamp"] = "2026-11-22T11:59:00Z"
        found.append(gone)
    return found


def target(body: dict[str, Any], ready: int = 2, starting: int = 0, leaving: int = 0) -> Any:
    spec = autoscaled_spec(body)
    assert spec is not None
    return autoscale_target(body, spec, pods(ready, starting, leaving))


def test_autoscaling_off_or_a_spec_that_does_not_read_is_never_scaled() -> None:
    off = sample()
    off["spec"]["autoscaling"]["enabled"] = False
    assert autoscaled_spec(off) is None
    broken = sample()
    broken["spec"]["replicas"] = "many"
    assert autoscaled_spec(broken) is None


def test_the_readings_are_taken_for_ready_pods_and_the_served_model_name() -> None:
    body = sample()
    found = target(body, ready=2, starting=1, leaving=1)
    assert (found.ready_pods, found.starting_replicas) == (("p0", "p1"), 1)  # a leaving pod is neither
    assert (found.model_name, found.mig) == ("llama-3-70b", False)
    body["spec"]["model"]["servedName"] = "llama3"
    assert target(body).model_name == "llama3"


def test_a_queue_asks_for_more_replicas_with_an_event_and_a_status() -> None:
    plan = plan_autoscale(target(sample()), Readings(NOW, 40, 60, 0.9, 0.99), scaling_timings(), NOW)
    assert plan.scale_to == plan.decision.replicas > 2
    assert plan.event is not None
    assert plan.event.reason == "Autoscaled"
    assert plan.event.message.startswith(f"Scaled from 2 to {plan.scale_to} replicas (QueueDepth)")
    assert plan.status_patch is not None
    block = plan.status_patch["autoscaler"]
    assert (block["desiredReplicas"], block["lastScaleTime"]) == (plan.scale_to, "2026-11-22T12:00:00Z")
    assert block["metrics"] == {
        "waiting": 40,
        "running": 60,
        "kvCacheUsage": 0.9,
        "gpuUtilization": 0.99,
        "readyReplicas": 2,
        "startingReplicas": 0,
    }
    assert (
        plan_autoscale(
            target(sample()), Readings(NOW, 0, 1, 0.1, None, reporting_replicas=1), scaling_timings(), NOW
        ).status.metrics.reporting_replicas
        == 1
    )


def test_missing_readings_hold_and_an_unchanged_status_is_not_written_again() -> None:
    body = sample()
    down = Readings(NOW, None, None, None, None, error="Prometheus at http://p: timeout")
    first = plan_autoscale(target(body), down, scaling_timings(), NOW)
    assert (first.scale_to, first.event, first.decision.reason) == (None, None, "MetricsMissing")
    assert first.status_patch is not None
    body["status"] = {"autoscaler": first.status.to_json()}
    later = NOW + timedelta(seconds=15)
    again = plan_autoscale(
        target(body), Readings(later, None, None, None, None, error=down.error), scaling_timings(), later
    )
    assert again.status_patch is None


@pytest.mark.parametrize("stored", [{"lastScaleTime": "not a time"}, {"state": "garbage"}])
def test_a_status_block_that_does_not_read_starts_over_and_is_replaced(stored: dict[str, Any]) -> None:
    body = sample()
    body["status"] = {"autoscaler": {"active": True, **stored}}
    plan = plan_autoscale(target(body), Readings(NOW, 0, 10, 0.5, None), scaling_timings(), NOW)
    assert plan.status_patch is not None
    assert plan.decision.state.recommendations[0][0] == NOW  # a new history, not the unreadable one


def _run(body: dict[str, Any], readings: Readings, at: datetime, refresh: int = 60) -> Any:
    """One evaluation whose status write (if any) lands in `body` as the API server would keep it."""
    plan = plan_autoscale(target(body), readings, scaling_timings(status_refresh_seconds=refresh), at)
    if plan.status_patch is not None:
        body["status"] = {"autoscaler": as_stored(plan.status_patch["autoscaler"])}
    return plan


def test_moving_readings_under_the_same_decision_are_written_at_most_once_a_refresh() -> None:
    body = sample()
    assert _run(body, Readings(NOW, 0, 10, 0.50, None), NOW).status_patch is not None
    written = []
    for step in range(1, 9):  # two minutes of 15 s evaluations, every reading a little different
        at = NOW + timedelta(seconds=15 * step)
        plan = _run(body, Readings(at, 0, 10 + step % 2, 0.50 + step / 1000, None), at)
        assert plan.decision.replicas == 2
        assert plan.scale_to is None
        if plan.status_patch is not None:
            written.append(step)
    assert written == [4, 8]  # 60 s after the last write, not every 15 s
    assert body["status"]["autoscaler"]["lastEvaluationTime"] == "2026-11-22T12:02:00Z"


def test_refresh_zero_writes_every_evaluation_whose_readings_moved() -> None:
    body = sample()
    _run(body, Readings(NOW, 0, 10, 0.50, None), NOW, refresh=0)
    at = NOW + timedelta(seconds=15)
    assert _run(body, Readings(at, 0, 11, 0.51, None), at, refresh=0).status_patch is not None


def test_a_new_decision_is_written_at_once_inside_the_refresh() -> None:
    body = sample()
    _run(body, Readings(NOW, 0, 10, 0.50, None), NOW)
    at = NOW + timedelta(seconds=15)
    plan = _run(body, Readings(at, 40, 60, 0.95, None), at)
    assert plan.scale_to is not None
    assert plan.status_patch is not None
    assert body["status"]["autoscaler"]["desiredReplicas"] == plan.scale_to


def test_a_ready_replica_more_is_written_at_once() -> None:
    body = sample()
    _run(body, Readings(NOW, 0, 10, 0.50, None), NOW)
    at = NOW + timedelta(seconds=15)
    plan = plan_autoscale(
        target(body, ready=1, starting=1), Readings(at, 0, 10, 0.50, None), scaling_timings(), at
    )
    assert plan.status_patch is not None


def test_an_idle_model_costs_no_write_however_long_it_stays_idle() -> None:
    body = sample()
    _run(body, Readings(NOW, 0, 0, 0.0, None), NOW)
    for step in range(1, 20):
        at = NOW + timedelta(seconds=15 * step)
        assert _run(body, Readings(at, 0, 0, 0.0, None), at).status_patch is None


def test_requests_stopping_are_written_at_once_and_the_idle_clock_never_starts_early() -> None:
    body = sample(minReplicas=0)
    body["spec"]["autoscaling"]["scaleToZeroAfterSeconds"] = 300
    _run(body, Readings(NOW, 0, 10, 0.5, None), NOW)
    for step in range(1, 4):  # busy until 12:00:45, written only at 12:00:00
        at = NOW + timedelta(seconds=15 * step)
        assert _run(body, Readings(at, 0, 10 + step, 0.5, None), at).status_patch is None
    idle_at = NOW + timedelta(seconds=60)
    assert _run(body, Readings(idle_at, 0, 0, 0.0, None), idle_at).status_patch is not None
    # The stored lastActiveTime was 12:00:00; the idle clock starts at the first idle evaluation instead.
    assert body["status"]["autoscaler"]["state"]["lastActiveTime"] == "2026-11-22T12:01:00Z"
    early = idle_at + timedelta(seconds=299)
    assert _run(body, Readings(early, 0, 0, 0.0, None), early).decision.replicas == 2
    due = idle_at + timedelta(seconds=300)
    assert _run(body, Readings(due, 0, 0, 0.0, None), due).decision.replicas == 0
