"""Objects as the API server returns them → the records the planners read (planning.observe)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gpufleet.planning.observe import missed_by_the_watch, observe_pod, stored_status, version_of


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


def md(name: str, uid: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ml", "name": name, "uid": uid}}


@pytest.mark.parametrize(
    ("known", "listed", "settled", "gone", "replaced"),
    [
        pytest.param(
            [md("a", "1"), md("b", "2")], [md("a", "1")], {"a", "b"}, {"b"}, {}, id="deleted unwatched"
        ),
        pytest.param([md("a", "1")], [], set(), set(), {}, id="created after the list began: kept"),
        pytest.param(
            [md("a", "1")], [md("a", "9")], {"a"}, set(), {"a": "9"}, id="deleted and created again"
        ),
        pytest.param([md("a", "1")], [md("a", "9")], set(), set(), {}, id="changed since the list: newer"),
        pytest.param([], [md("a", "1")], set(), set(), {}, id="listed, not yet watched: the watch adds it"),
        pytest.param([md("a", "1")], [md("a", "1")], {"a"}, set(), {}, id="nothing missed"),
    ],
)
def test_what_the_watch_missed(
    known: list[dict[str, Any]],
    listed: list[dict[str, Any]],
    settled: set[str],
    gone: set[str],
    replaced: dict[str, str],
) -> None:
    found_gone, found_replaced = missed_by_the_watch(
        {("ml", b["metadata"]["name"]): b for b in known}, listed, {("ml", name) for name in settled}
    )
    assert found_gone == {("ml", name) for name in gone}
    assert {key[1]: body["metadata"]["uid"] for key, body in found_replaced.items()} == replaced
