"""The canary planner (planning/rollout.py): weights by replica ratio, steps, pauses, holds, promotion."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gpufleet.api.v1alpha1 import Analysis, AnalysisStatus, KeepPrevious, RolloutStatus, RolloutStep, Slot
from gpufleet.planning.observe import ObservedPod
from gpufleet.planning.placement import CapacityType, PlacementGroup
from gpufleet.planning.rollout import (
    ANNOTATION_PROMOTE,
    PromoteError,
    RolloutInput,
    RolloutPlan,
    Standby,
    distribute,
    plan_rollout,
    promote_patch,
    reached_weight,
    split,
    surge_replicas,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
STEPS = (RolloutStep(weight=10, pause_seconds=600), RolloutStep(weight=50, pause_seconds=1800))
A = PlacementGroup("us-east-1a", "spot", 2)
B = PlacementGroup("us-east-1b", "on-demand", 2)


@pytest.mark.parametrize(
    ("weight", "total", "expected"),
    [
        (10, 0, (0, 0)),
        (10, 1, (1, 1)),  # one replica: the canary is a surge replica beside it, 50 %
        (10, 3, (1, 2)),  # the smallest canary is one replica: 33 %, not 10 %
        (50, 3, (1, 2)),  # floor: the canary never goes past the weight when it can stay at or under it
        (50, 4, (2, 2)),
        (10, 20, (2, 18)),
        (99, 4, (3, 1)),  # before 100 % one stable replica stays
        (100, 1, (1, 0)),
        (100, 5, (5, 0)),
    ],
)
def test_split_reaches_the_weight_with_the_smallest_canary(
    weight: int, total: int, expected: tuple[int, int]
) -> None:
    assert split(weight, total) == expected


@pytest.mark.parametrize(
    ("canary", "stable", "weight"), [(0, 0, 0), (1, 2, 33), (1, 1, 50), (2, 0, 100), (1, 9, 10)]
)
def test_reached_weight_is_the_share_of_ready_replicas(canary: int, stable: int, weight: int) -> None:
    assert reached_weight(canary, stable) == weight


@pytest.mark.parametrize(
    ("count", "sizes", "expected"),
    [
        (1, (2, 2), (1, 0)),  # ties go to the group listed first
        (3, (2, 2), (2, 1)),
        (2, (3, 1), (2, 0)),  # in proportion: 1.5 and 0.5, the larger remainder first
        (3, (1, 1, 4), (1, 0, 2)),
        (9, (2, 2), (2, 2)),  # never more than a group has
        (2, (0, 4), (0, 2)),
    ],
)
def test_distribute_is_proportional_and_capped(
    count: int, sizes: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    groups = [PlacementGroup(f"z{i}", "spot", n) for i, n in enumerate(sizes)]
    shares = distribute(count, groups)
    assert tuple(shares[g.key] for g in groups) == expected


@pytest.mark.parametrize(
    ("gpus", "per_replica", "replicas"), [(None, 4, None), (4, 4, 1), (9, 4, 2), (1, 1, 1)]
)
def test_surge_budget_in_whole_replicas(gpus: int | None, per_replica: int, replicas: int | None) -> None:
    assert surge_replicas(gpus, per_replica) == replicas


def pod(name: str, group: PlacementGroup, slot: Slot, ready: bool = True) -> ObservedPod:
    return ObservedPod(name, group.zone, group.capacity_type, ready, slot=slot)


def pods(group: PlacementGroup, slot: Slot, ready: int, starting: int = 0) -> list[ObservedPod]:
    prefix = f"{group.zone}-{slot}"
    return [pod(f"{prefix}-{i}", group, slot) for i in range(ready)] + [
        pod(f"{prefix}-s{i}", group, slot, ready=False) for i in range(starting)
    ]


def state(step: int, reached: datetime | None = None, revision: int = 2) -> RolloutStatus:
    return RolloutStatus(
        revision=revision,
        step=step,
        steps=len(STEPS),
        phase="Progressing",
        target_weight=0,
        step_started_at=NOW - timedelta(hours=1),
        weight_reached_at=reached,
    )


def given(**changes: object) -> RolloutInput:
    base = RolloutInput(
        steps=STEPS,
        paused=False,
        surge_replicas=None,
        groups=(A, B),
        pods=pods(A, "a", 2) + pods(B, "a", 2),
        current=2,
        stable=1,
        stable_slot="a",
        state=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def counts(plan: RolloutPlan) -> dict[tuple[str, Slot], int]:
    return {(s.zone, s.slot): s.replicas for s in plan.slots}


def reasons(plan: RolloutPlan) -> list[str]:
    return [e.reason for e in plan.events]


def test_no_steps_rolls_every_group_in_the_stable_slot() -> None:
    plan = plan_rollout(given(steps=()), NOW)
    assert not plan.canary
    assert not plan.promoted
    assert plan.status is None
    assert counts(plan) == {("us-east-1a", "a"): 2, ("us-east-1b", "a"): 2}


def test_a_new_model_has_no_stable_revision_to_canary_against() -> None:
    plan = plan_rollout(given(stable=None, current=1, pods=[]), NOW)
    assert not plan.canary
    assert plan.status is None
    assert counts(plan) == {("us-east-1a", "a"): 2, ("us-east-1b", "a"): 2}


def test_a_new_revision_starts_step_one_and_keeps_every_stable_replica_until_the_canary_is_ready() -> None:
    plan = plan_rollout(given(), NOW)
    assert plan.canary
    assert reasons(plan) == ["RolloutStarted"]
    # 10 % of 4 is one canary replica, in the first group; no stable replica goes before it is ready.
    assert counts(plan) == {
        ("us-east-1a", "a"): 2,
        ("us-east-1a", "b"): 1,
        ("us-east-1b", "a"): 2,
        ("us-east-1b", "b"): 0,
    }
    assert plan.status is not None
    assert (plan.status.step, plan.status.phase, plan.status.weight) == (1, "Progressing", 0)
    assert plan.status.step_started_at == NOW


def test_a_ready_canary_replaces_one_stable_replica_and_starts_the_pause() -> None:
    ready = pods(A, "a", 2) + pods(B, "a", 2) + pods(A, "b", 1)
    plan = plan_rollout(given(pods=ready, state=state(1)), NOW)
    assert counts(plan)[("us-east-1a", "a")] == 1
    assert reasons(plan) == ["CanaryWeightReached"]
    assert plan.status is not None
    assert (plan.status.phase, plan.status.weight_reached_at, plan.status.weight) == ("Paused", NOW, 20)
    assert plan.requeue_after == 600


def test_the_pause_ends_on_time_and_the_next_step_starts() -> None:
    ready = pods(A, "a", 1) + pods(B, "a", 2) + pods(A, "b", 1)
    during = plan_rollout(given(pods=ready, state=state(1, reached=NOW - timedelta(seconds=599))), NOW)
    assert during.status is not None
    assert during.status.step == 1
    assert during.requeue_after == pytest.approx(1)
    after = plan_rollout(given(pods=ready, state=state(1, reached=NOW - timedelta(seconds=600))), NOW)
    assert after.status is not None
    assert (after.status.step, after.status.phase, after.status.weight_reached_at) == (2, "Progressing", None)
    # 50 % of 4: two canary replicas, one per group; the second group's stable stays until its is ready.
    assert counts(after) == {
        ("us-east-1a", "a"): 1,
        ("us-east-1a", "b"): 1,
        ("us-east-1b", "a"): 2,
        ("us-east-1b", "b"): 1,
    }


def test_a_canary_that_never_gets_ready_never_takes_stable_capacity() -> None:
    starting = pods(A, "a", 2) + pods(B, "a", 2) + pods(A, "b", 0, starting=1)
    plan = plan_rollout(given(pods=starting, state=state(1)), NOW + timedelta(hours=5))
    assert counts(plan)[("us-east-1a", "a")] == 2
    assert counts(plan)[("us-east-1b", "a")] == 2
    assert plan.status is not None
    assert plan.status.phase == "Progressing"
    assert plan.status.message == "0 of 1 canary replicas ready"


def test_the_surge_budget_starts_canary_replicas_in_batches() -> None:
    # Step 2 of 8 replicas is 4 canary replicas; a budget of one replica starts them one at a time.
    groups = (replace(A, replicas=4), replace(B, replicas=4))
    stable = pods(groups[0], "a", 4) + pods(groups[1], "a", 4)
    first = plan_rollout(given(groups=groups, pods=stable, state=state(2), surge_replicas=1), NOW)
    assert sum(s.replicas for s in first.slots if s.canary) == 1
    one_ready = stable + pods(groups[0], "b", 1)
    second = plan_rollout(given(groups=groups, pods=one_ready, state=state(2), surge_replicas=1), NOW)
    assert sum(s.replicas for s in second.slots if s.canary) == 2
    assert sum(s.replicas for s in second.slots if not s.canary) == 7


def test_one_replica_gets_a_canary_beside_it_until_the_last_step() -> None:
    single = (PlacementGroup("us-east-1a", "spot", 1),)
    ready = pods(single[0], "a", 1) + pods(single[0], "b", 1)
    plan = plan_rollout(given(groups=single, pods=ready, state=state(1)), NOW)
    assert counts(plan) == {("us-east-1a", "a"): 1, ("us-east-1a", "b"): 1}
    assert plan.status is not None
    assert plan.status.weight == 50


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"paused": True}, "held: spec.rollout.paused is set"),
        ({"hold": "SpotInterrupted handling under way"}, "held: SpotInterrupted handling under way"),
    ],
)
def test_a_hold_keeps_the_step_past_its_pause(changes: dict[str, object], why: str) -> None:
    ready = pods(A, "a", 1) + pods(B, "a", 2) + pods(A, "b", 1)
    plan = plan_rollout(given(pods=ready, state=state(1, reached=NOW - timedelta(hours=2)), **changes), NOW)
    assert plan.status is not None
    assert (plan.status.step, plan.status.phase, plan.status.message) == (1, "Held", why)


def test_a_step_without_a_pause_waits_for_promote_of_that_step() -> None:
    steps = (RolloutStep(weight=50),)
    ready = pods(A, "a", 1) + pods(B, "a", 1) + pods(A, "b", 1) + pods(B, "b", 1)
    waiting = plan_rollout(
        given(steps=steps, pods=ready, state=state(1, reached=NOW - timedelta(days=3))), NOW
    )
    assert waiting.status is not None
    assert waiting.status.phase == "WaitingForPromotion"
    assert waiting.requeue_after is None
    stale = plan_rollout(given(steps=steps, pods=ready, state=state(1, reached=NOW), promote="1/1"), NOW)
    assert stale.status is not None
    assert stale.status.phase == "WaitingForPromotion"
    promoted = plan_rollout(given(steps=steps, pods=ready, state=state(1, reached=NOW), promote="2/1"), NOW)
    assert promoted.status is not None
    assert (promoted.status.step, promoted.status.phase) == (2, "Promoting")
    # The last step: the canary takes every replica, stable ones go as canary ones get ready.
    assert counts(promoted) == {
        ("us-east-1a", "a"): 1,
        ("us-east-1a", "b"): 2,
        ("us-east-1b", "a"): 1,
        ("us-east-1b", "b"): 2,
    }


def test_promotion_swaps_the_slots_once_every_canary_replica_is_ready() -> None:
    ready = pods(A, "b", 2) + pods(B, "b", 2)
    plan = plan_rollout(given(pods=ready, state=state(3)), NOW)
    assert plan.promoted
    assert not plan.canary
    assert plan.status is None
    assert plan.stable_slot == "b"
    assert counts(plan) == {("us-east-1a", "b"): 2, ("us-east-1b", "b"): 2}
    assert reasons(plan) == ["RolloutPromoted"]


def test_after_promotion_spec_runs_in_the_new_stable_slot() -> None:
    plan = plan_rollout(given(stable=2, stable_slot="b", pods=pods(A, "b", 2) + pods(B, "b", 2)), NOW)
    assert counts(plan) == {("us-east-1a", "b"): 2, ("us-east-1b", "b"): 2}
    # The next revision's canary goes to slot a.
    nxt = plan_rollout(
        given(current=3, stable=2, stable_slot="b", pods=pods(A, "b", 2) + pods(B, "b", 2)), NOW
    )
    assert {s.slot for s in nxt.slots if s.canary} == {"a"}


def test_spec_back_at_stable_aborts_the_canary_at_once() -> None:
    ready = pods(A, "a", 1) + pods(B, "a", 2) + pods(A, "b", 1)
    plan = plan_rollout(given(current=1, pods=ready, state=state(2)), NOW)
    assert not plan.canary
    assert plan.status is None
    assert counts(plan) == {("us-east-1a", "a"): 2, ("us-east-1b", "a"): 2}
    assert reasons(plan) == ["RolloutAborted"]


def test_a_newer_revision_mid_rollout_restarts_the_steps_in_the_same_canary_slot() -> None:
    ready = pods(A, "a", 1) + pods(B, "a", 2) + pods(A, "b", 1)
    plan = plan_rollout(given(current=3, pods=ready, state=state(2, revision=2)), NOW)
    assert plan.status is not None
    assert (plan.status.revision, plan.status.step) == (3, 1)
    assert reasons(plan)[0] == "RolloutStarted"
    assert {s.slot for s in plan.slots if s.canary} == {"b"}


def test_the_autoscaler_changes_the_total_and_the_split_follows() -> None:
    bigger = (replace(A, replicas=5), replace(B, replicas=5))
    plan = plan_rollout(given(groups=bigger, state=state(2, reached=None)), NOW)
    # 50 % of 10 is five canary replicas, 3 + 2 by group size and remainder.
    assert [s.replicas for s in plan.slots if s.canary] == [3, 2]
    assert [s.replicas for s in plan.slots if not s.canary] == [5, 5]


def test_scaled_to_zero_the_rollout_runs_through_without_replicas() -> None:
    empty = (replace(A, replicas=0), replace(B, replicas=0))
    plan = plan_rollout(given(groups=empty, pods=[], state=state(3)), NOW)
    assert plan.promoted
    assert plan.stable_slot == "b"


def test_a_plan_computed_again_from_its_own_status_changes_nothing() -> None:
    ready = pods(A, "a", 2) + pods(B, "a", 2) + pods(A, "b", 1)
    first = plan_rollout(given(pods=ready, state=state(1)), NOW)
    again = plan_rollout(given(pods=ready, state=first.status), NOW + timedelta(seconds=5))
    assert again.events == ()
    assert again.slots == first.slots
    assert again.status is not None
    assert first.status is not None
    assert again.status.weight_reached_at == first.status.weight_reached_at


def test_groups_without_a_zone_split_by_capacity_type() -> None:
    kinds: tuple[CapacityType, ...] = ("spot", "on-demand")
    groups = tuple(PlacementGroup("", kind, 1) for kind in kinds)
    plan = plan_rollout(given(groups=groups, pods=[], state=state(1)), NOW)
    assert [(s.capacity_type, s.slot, s.replicas) for s in plan.slots] == [
        ("spot", "a", 1),
        ("spot", "b", 1),
        ("on-demand", "a", 1),
        ("on-demand", "b", 0),
    ]


def body_with(rollout: dict[str, int] | None) -> dict[str, object]:
    status = {"rollout": rollout} if rollout else {}
    return {"metadata": {"name": "m", "resourceVersion": "41"}, "status": status}


def test_promote_names_the_revision_and_step_and_carries_the_version_read() -> None:
    patch, what = promote_patch(body_with({"revision": 3, "step": 1, "steps": 2}))
    assert patch == {"metadata": {"resourceVersion": "41", "annotations": {ANNOTATION_PROMOTE: "3/1"}}}
    assert what == "revision 3: step 1/2 ends now; next is step 2/2"
    _, last = promote_patch(body_with({"revision": 3, "step": 2, "steps": 2}))
    assert last.endswith("the last step: the canary takes every replica")


@pytest.mark.parametrize(
    ("rollout", "words"),
    [
        (None, "no canary rollout in progress"),
        ({"revision": 3, "step": 3, "steps": 2}, "already taking every replica"),
    ],
)
def test_promote_refuses_when_there_is_nothing_to_promote(rollout: dict[str, int] | None, words: str) -> None:
    with pytest.raises(PromoteError, match=words):
        promote_patch(body_with(rollout))


ANALYSIS = Analysis.model_validate({})


def judged(verdict: str, step: int = 1, at: datetime = NOW, revision: int = 2) -> AnalysisStatus:
    return AnalysisStatus.model_validate(
        {
            "revision": revision,
            "step": step,
            "verdict": verdict,
            "checkedAt": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "message": f"{verdict.lower()} because",
        }
    )


AT_WEIGHT = pods(A, "a", 1) + pods(B, "a", 2) + pods(A, "b", 1)
PAUSED_OUT = state(1, reached=NOW - timedelta(seconds=700))


@pytest.mark.parametrize(
    ("judgement", "step", "phase", "message"),
    [
        pytest.param(None, 1, "Held", "held: analysis: no judgement of this step yet", id="not judged yet"),
        pytest.param(
            judged("Passed", at=NOW - timedelta(seconds=800)),
            1,
            "Held",
            "held: analysis: no judgement of this step yet",
            id="judged before the weight was reached",
        ),
        pytest.param(
            judged("NoData"), 1, "Held", "held: analysis NoData: nodata because", id="no data never promotes"
        ),
        pytest.param(
            judged("Inconclusive"),
            1,
            "Held",
            "held: analysis Inconclusive: inconclusive because",
            id="too few requests",
        ),
        pytest.param(
            judged("Passed", step=2),
            1,
            "Held",
            "held: analysis: no judgement of this step yet",
            id="another step",
        ),
        pytest.param(
            judged("Passed"), 2, "Progressing", "1 of 2 canary replicas ready", id="passed: next step"
        ),
    ],
)
def test_with_analysis_a_step_ends_only_on_a_passed_judgement_of_it(
    judgement: AnalysisStatus | None, step: int, phase: str, message: str
) -> None:
    plan = plan_rollout(given(pods=AT_WEIGHT, state=PAUSED_OUT, analysis=ANALYSIS, judgement=judgement), NOW)
    assert plan.status is not None
    assert (plan.status.step, plan.status.phase, plan.status.message) == (step, phase, message)


def test_a_failed_judgement_rolls_the_canary_back_and_holds_it_back() -> None:
    plan = plan_rollout(
        given(pods=AT_WEIGHT, state=state(1, reached=NOW), analysis=ANALYSIS, judgement=judged("Failed")), NOW
    )
    assert plan.canary
    assert plan.status is not None
    assert plan.status.phase == "Aborted"
    assert plan.status.message == "analysis failed: failed because"
    assert counts(plan) == {
        ("us-east-1a", "a"): 2,
        ("us-east-1a", "b"): 0,
        ("us-east-1b", "a"): 2,
        ("us-east-1b", "b"): 0,
    }
    (event,) = plan.events
    assert (event.type, event.reason) == ("Warning", "CanaryFailed")
    assert "revision 2 rolled back at step 1: failed because; revision 1 takes every replica" in event.message
    # Level-triggered: the next plan keeps it rolled back, quietly, while spec asks for revision 2.
    again = plan_rollout(
        given(pods=AT_WEIGHT, state=plan.status, analysis=ANALYSIS), NOW + timedelta(hours=1)
    )
    assert again.status == plan.status
    assert again.events == ()
    assert counts(again) == counts(plan)
    # A fixed spec (revision 3) starts a new canary; revision 2's pods still in the slot are not its own.
    fixed = plan_rollout(
        given(current=3, current_hash="h3", pods=AT_WEIGHT, state=plan.status, analysis=ANALYSIS), NOW
    )
    assert fixed.status is not None
    assert (fixed.status.revision, fixed.status.phase) == (3, "Progressing")


def test_a_failed_judgement_of_another_revision_is_not_this_canarys() -> None:
    plan = plan_rollout(
        given(pods=AT_WEIGHT, state=PAUSED_OUT, analysis=ANALYSIS, judgement=judged("Failed", revision=1)),
        NOW,
    )
    assert plan.status is not None
    assert plan.status.phase == "Held"


def test_promote_by_hand_ends_the_step_whatever_the_analysis_says_short_of_failing() -> None:
    plan = plan_rollout(
        given(
            pods=AT_WEIGHT,
            state=PAUSED_OUT,
            analysis=ANALYSIS,
            judgement=judged("Inconclusive"),
            promote="2/1",
        ),
        NOW,
    )
    assert plan.status is not None
    assert plan.status.step == 2


def test_only_the_canary_revisions_own_pods_count() -> None:
    replaced = [replace(p, revision_hash="h2") for p in pods(A, "b", 1)]
    own = [replace(p, revision_hash="h3") for p in pods(B, "b", 1)]
    plan = plan_rollout(
        given(current=3, current_hash="h3", pods=pods(A, "a", 2) + pods(B, "a", 2) + replaced + own), NOW
    )
    assert plan.status is not None
    assert plan.status.canary_replicas == 1


KEEP = KeepPrevious(replicas=1, seconds=3600)


def test_while_the_canary_takes_every_replica_the_ones_to_keep_warm_stay() -> None:
    ready = pods(A, "a", 2) + pods(B, "a", 2) + pods(A, "b", 2) + pods(B, "b", 1)
    plan = plan_rollout(given(pods=ready, state=state(3), keep_previous=KEEP, stable_name="m-1"), NOW)
    assert plan.status is not None
    assert plan.status.phase == "Promoting"
    # Group A's stable replicas would all go (two canary ones are ready); one stays warm.
    assert counts(plan)[("us-east-1a", "a")] == 1


def test_promotion_keeps_the_previous_revision_warm_in_its_slot() -> None:
    ready = pods(A, "a", 1) + pods(A, "b", 2) + pods(B, "b", 2)
    plan = plan_rollout(given(pods=ready, state=state(3), keep_previous=KEEP, stable_name="m-1"), NOW)
    assert plan.promoted
    assert plan.stable_slot == "b"
    assert plan.standby == Standby(1, "m-1", 1, NOW + timedelta(hours=1))
    assert [(s.zone, s.slot, s.replicas) for s in plan.slots if s.standby] == [
        ("us-east-1a", "a", 1),
        ("us-east-1b", "a", 0),
    ]
    assert plan.requeue_after == 3600
    assert "1 of revision 1's stay warm until 13:00:00Z" in plan.events[0].message


def test_the_standby_stays_until_its_time_then_goes() -> None:
    standby = Standby(1, "m-1", 1, NOW + timedelta(minutes=10))
    kept = plan_rollout(given(current=2, stable=2, stable_slot="b", standby=standby, keep_previous=KEEP), NOW)
    assert kept.standby == standby
    assert [(s.slot, s.replicas) for s in kept.slots if s.standby] == [("a", 1), ("a", 0)]
    assert kept.requeue_after == 600
    gone = plan_rollout(
        given(current=2, stable=2, stable_slot="b", standby=standby, keep_previous=KEEP),
        NOW + timedelta(minutes=10),
    )
    assert gone.standby is None
    assert not [s for s in gone.slots if s.standby]
    assert reasons(gone) == ["StandbyReleased"]


def test_a_new_canary_takes_the_standby_slot() -> None:
    standby = Standby(1, "m-1", 1, NOW + timedelta(minutes=10))
    plan = plan_rollout(given(current=3, stable=2, stable_slot="b", standby=standby, keep_previous=KEEP), NOW)
    assert plan.canary
    assert plan.standby is None
    assert {s.slot for s in plan.slots if s.canary} == {"a"}


def test_back_to_the_warm_revision_its_replicas_serve_at_once_and_the_rest_follow() -> None:
    standby = Standby(1, "m-1", 1, NOW + timedelta(minutes=10))
    # Revision 2 runs 4 replicas in slot b; revision 1 has one warm replica in slot a.
    live = pods(A, "b", 2) + pods(B, "b", 2) + pods(A, "a", 1)
    back = given(
        current=1,
        stable=2,
        stable_slot="b",
        standby=standby,
        keep_previous=KEEP,
        pods=live,
        stable_name="m-2",
    )
    plan = plan_rollout(back, NOW)
    assert reasons(plan)[0] == "RestoringFromStandby"
    assert plan.status is not None
    assert plan.status.phase == "Promoting"
    # Slot a grows to every replica; slot b gives up one replica in group A for the warm one.
    assert counts(plan) == {
        ("us-east-1a", "a"): 2,
        ("us-east-1a", "b"): 1,
        ("us-east-1b", "a"): 2,
        ("us-east-1b", "b"): 2,
    }
    done = plan_rollout(replace(back, pods=pods(A, "a", 2) + pods(B, "a", 2), state=plan.status), NOW)
    assert done.promoted
    assert done.stable_slot == "a"
    assert done.standby is not None
    assert done.standby.revision == 2


@pytest.mark.parametrize(
    ("step", "canary_ready", "route_weight", "why"),
    [
        (1, 0, 0, "no ready canary: a router must send it nothing"),
        (1, 1, 10, "step 1's one replica is ready: exactly 10 %, where the replica ratio says 25 %"),
        (2, 1, 25, "step 2 needs 2 canary replicas and 1 is ready: no more than its share of ready ones"),
        (2, 2, 50, "step 2's replicas are ready: exactly 50 %"),
    ],
)
def test_a_router_gets_the_steps_exact_weight_once_its_canary_replicas_are_ready(
    step: int, canary_ready: int, route_weight: int, why: str
) -> None:
    canary = pods(A, "b", canary_ready)
    stable = pods(A, "a", 2 - min(canary_ready, 2)) + pods(B, "a", 2)
    for routed in (False, True):
        plan = plan_rollout(given(pods=stable + canary, state=state(step), routed=routed), NOW)
        assert plan.route_weight == route_weight, why
        assert plan.status is not None
        ratio = reached_weight(canary_ready, len(stable))
        assert plan.status.weight == (route_weight if routed else ratio), why
