"""The autoscaler's plan (planning.autoscale): which readings to take, then what to write, as data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.planning.autoscale import autoscale_target, autoscaled_spec, plan_autoscale
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
