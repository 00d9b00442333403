"""Objects as the API server returns them → the records the planners read (planning.observe)."""

from __future__ import annotations

from datetime import UTC, datetime

from gpufleet.planning.observe import observe_pod, stored_status, version_of


def test_observe_pod_reads_scheduling_failure() -> None:
    pod = {
        "metadata": {"name": "p", "labels": {"gpufleet.io/zone": "a", "gpufleet.io/capacity-type": "spot"}},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    "lastTransitionTime": "2026-11-22T11:50:00Z",
                }
            ],
        },
    }
    observed = observe_pod(pod)
    assert (observed.zone, observed.capacity_type, observed.ready) == ("a", "spot", False)
    assert observed.unschedulable_since == datetime(2026, 11, 22, 11, 50, tzinfo=UTC)
    assert "Insufficient" in observed.unschedulable_message


def test_a_status_member_that_does_not_read_is_left_out_and_the_rest_kept() -> None:
    stored = stored_status(
        {
            "desiredReplicas": 3,
            "spot": {"interruptionsHandled": -1},  # edited by hand: not a count
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-22T11:00:00Z"}],
        }
    )
    assert stored.desired_replicas == 3
    assert stored.spot is None
    assert stored.conditions[0].last_transition_time == datetime(2026, 11, 22, 11, 0, tzinfo=UTC)


def test_a_time_without_a_zone_was_not_written_by_gpufleet() -> None:
    stored = stored_status({"spot": {"fallbackSince": "2026-11-22T11:00:00"}, "replicas": 2})
    assert stored.spot is None
    assert stored.replicas == 2
    assert stored_status("garbage").replicas == 0


def test_a_change_is_the_generation_where_the_kind_has_one() -> None:
    assert version_of({"metadata": {"generation": 4, "resourceVersion": "99"}}) == "g4"
    assert version_of({"metadata": {"resourceVersion": "99"}}) == "rv99"
