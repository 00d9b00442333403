"""A canary rollout through whole reconciles (spec.rollout.steps): slots, templates, status, Events.

The World of test_reconcile plays the API server; `settle` plays the Deployment controller and the
kubelets (every Deployment's pods exist and are ready). The stories check what a platform engineer
watches: the stable replicas never restart or shrink before canary ones are ready, the canary runs in
slot b beside them, and promotion or abort ends it without restarting what stays.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gpufleet.planning.reconcile import ReconcilePlan
from gpufleet.planning.rollout import ANNOTATION_PROMOTE
from gpufleet.planning.workloads import ANNOTATION_TEMPLATE_HASH, LABEL_SLOT
from tests.unit.helpers import sample
from tests.unit.test_reconcile import NOW, World, applies

STABLE = ("llama-3-70b-us-east-1a-on-demand", "llama-3-70b-us-east-1b-spot")
OLD_IMAGE, NEW_IMAGE = "vllm/vllm-openai:v0.34.0", "vllm/vllm-openai:v0.33.1"


def settle(world: World) -> None:
    """Every Deployment's pods exist, carry its template's labels and are ready."""
    world.pods = []
    for name, deployment in world.deployments.items():
        replicas = deployment["spec"]["replicas"]
        deployment["status"] = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
        }
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        for i in range(replicas):
            world.pods.append(
                {
                    "metadata": {"name": f"{name}-{i}", "namespace": "ml", "labels": dict(labels)},
                    "spec": {"nodeName": f"node-{name}-{i}"},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}]},
                }
            )


def step(world: World, body: dict[str, Any], after: timedelta = timedelta()) -> ReconcilePlan:
    plan = world.plan(body, now=NOW + after)
    world.carry_out(plan, body)
    return plan


def canary_body(**rollout: Any) -> dict[str, Any]:
    body = sample(rollout={"steps": [{"weight": 50, "pauseSeconds": 600}], **rollout})
    return body


def stable_world(body: dict[str, Any]) -> World:
    world = World()
    world.converge(body)
    settle(world)
    world.converge(body)
    assert body["status"]["revisions"]["stable"]["revision"] == 1
    return world


def images(world: World) -> dict[str, str]:
    return {
        name: d["spec"]["template"]["spec"]["containers"][0]["image"] for name, d in world.deployments.items()
    }


def events(plan: ReconcilePlan) -> list[str]:
    return [e.reason for e in plan.status.events]


def test_a_good_revision_goes_through_its_steps_and_is_promoted_without_restarting_stable_pods() -> None:
    body = canary_body()
    world = stable_world(body)
    hashes = {n: d["metadata"]["annotations"][ANNOTATION_TEMPLATE_HASH] for n, d in world.deployments.items()}

    body["spec"]["engine"]["image"] = NEW_IMAGE
    started = step(world, body)
    # The stable Deployments are not touched: the canary is a new Deployment in slot b.
    assert {k: v for k, v in applies(started).items() if k.startswith("Deployment/")} == {
        f"Deployment/{STABLE[0]}-b": "CreatedGroup"
    }
    assert images(world) == {STABLE[0]: OLD_IMAGE, STABLE[1]: OLD_IMAGE, f"{STABLE[0]}-b": NEW_IMAGE}
    canary = world.deployments[f"{STABLE[0]}-b"]
    assert canary["spec"]["selector"]["matchLabels"][LABEL_SLOT] == "b"
    status = body["status"]
    assert status["revisions"]["canary"]["revision"] == 2
    assert status["revisions"]["stable"]["revision"] == 1
    assert status["rollout"]["step"] == 1
    assert status["rollout"]["phase"] == "Progressing"
    assert "RolloutStarted" in events(started)
    progressing = {c["type"]: c for c in status["conditions"]}["Progressing"]
    assert progressing["reason"] == "CanaryRollout"

    settle(world)
    reached = step(world, body)
    # 50 % of 2 replicas: the ready canary replaces the stable replica of its group.
    assert STABLE[0] not in world.deployments
    assert "CanaryWeightReached" in events(reached)
    assert reached.requeue_after == 600
    settle(world)
    step(world, body, after=timedelta(seconds=10))
    assert body["status"]["rollout"]["weight"] == 50
    assert body["status"]["rollout"]["phase"] == "Paused"
    assert (
        world.deployments[STABLE[1]]["metadata"]["annotations"][ANNOTATION_TEMPLATE_HASH] == hashes[STABLE[1]]
    )

    settle(world)
    promoting = step(world, body, after=timedelta(seconds=600))
    assert body["status"]["rollout"]["phase"] == "Promoting"
    assert f"Deployment/{STABLE[1]}-b" in applies(promoting)

    settle(world)
    promoted = step(world, body, after=timedelta(seconds=700))
    assert "RolloutPromoted" in events(promoted)
    assert set(world.deployments) == {f"{STABLE[0]}-b", f"{STABLE[1]}-b"}
    revisions = body["status"]["revisions"]
    assert (revisions["stable"]["revision"], revisions["stableSlot"]) == (2, "b")
    assert "canary" not in revisions
    assert "rollout" not in body["status"]

    # Steady after promotion: nothing more to write, the canary's Deployments were not restarted.
    settle(world)
    world.converge(body)
    assert set(images(world).values()) == {NEW_IMAGE}


def test_spec_back_at_the_stable_revision_removes_the_canary_and_restores_stable_replicas() -> None:
    body = canary_body()
    world = stable_world(body)
    body["spec"]["engine"]["image"] = NEW_IMAGE
    step(world, body)
    settle(world)
    step(world, body)
    assert STABLE[0] not in world.deployments

    body["spec"]["engine"]["image"] = OLD_IMAGE
    aborted = step(world, body)
    assert "RolloutAborted" in events(aborted)
    assert {r.name for r in aborted.removals if r.kind == "Deployment"} == {f"{STABLE[0]}-b"}
    assert images(world) == {STABLE[0]: OLD_IMAGE, STABLE[1]: OLD_IMAGE}
    assert "rollout" not in body["status"]


def test_a_canary_that_never_gets_ready_keeps_every_stable_replica() -> None:
    body = canary_body()
    world = stable_world(body)
    body["spec"]["engine"]["image"] = NEW_IMAGE
    step(world, body)
    stable_pods = list(world.pods)  # the canary's pod never comes up
    for later in (60, 3600, 86400):
        plan = step(world, body, after=timedelta(seconds=later))
        world.pods = stable_pods
        assert plan.removals == ()
        assert {n: d["spec"]["replicas"] for n, d in world.deployments.items() if not n.endswith("-b")} == {
            STABLE[0]: 1,
            STABLE[1]: 1,
        }
    assert body["status"]["rollout"]["message"] == "0 of 1 canary replicas ready"


def test_a_step_without_pause_waits_for_the_promote_annotation() -> None:
    body = sample(rollout={"steps": [{"weight": 50}]})
    world = stable_world(body)
    body["spec"]["engine"]["image"] = NEW_IMAGE
    step(world, body)
    settle(world)
    step(world, body)
    waiting = step(world, body, after=timedelta(days=2))
    assert body["status"]["rollout"]["phase"] == "WaitingForPromotion"
    assert waiting.requeue_after is None
    body["metadata"]["annotations"] = {ANNOTATION_PROMOTE: "2/1"}
    step(world, body, after=timedelta(days=2))
    assert body["status"]["rollout"]["phase"] == "Promoting"


def test_an_invalid_spec_mid_rollout_leaves_the_rollout_as_it_was() -> None:
    body = canary_body()
    world = stable_world(body)
    body["spec"]["engine"]["image"] = NEW_IMAGE
    step(world, body)
    body["spec"]["replicas"] = -1
    plan = world.plan(body)
    assert not plan.valid
    assert plan.applies == ()
    assert plan.removals == ()
    # The merge patch leaves status.rollout (and the revisions) as stored.
    assert plan.status.patch is not None
    assert "rollout" not in plan.status.patch
    assert "revisions" not in plan.status.patch
    # ... and so does what the operator remembers: fixed, the spec resumes the same step.
    step_before = body["status"]["rollout"]["step"]
    world.carry_out(plan, body)
    body["spec"]["replicas"] = 2
    resumed = step(world, body, after=timedelta(seconds=5))
    assert "RolloutStarted" not in events(resumed)
    assert body["status"]["rollout"]["step"] == step_before


def test_the_operator_restarting_mid_rollout_resumes_the_same_step() -> None:
    body = canary_body()
    world = stable_world(body)
    body["spec"]["engine"]["image"] = NEW_IMAGE
    step(world, body)
    settle(world)
    step(world, body)
    reached_at = body["status"]["rollout"]["weightReachedAt"]
    world.applied.clear()
    world.status = None  # the new operator only has what the API server stored
    resumed = step(world, body, after=timedelta(seconds=300))
    assert body["status"]["rollout"]["weightReachedAt"] == reached_at
    assert resumed.requeue_after == 300
    assert events(resumed) == []


def analysed_body() -> dict[str, Any]:
    return sample(rollout={"steps": [{"weight": 50, "pauseSeconds": 60}], "analysis": {"minRequests": 10}})


def judgement(verdict: str, message: str, step: int = 1) -> dict[str, Any]:
    at = (NOW + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"revision": 2, "step": step, "verdict": verdict, "checkedAt": at, "message": message}


def test_a_failed_analysis_rolls_the_canary_back_and_names_the_metric() -> None:
    body = analysed_body()
    world = stable_world(body)
    body["spec"]["engine"]["image"] = NEW_IMAGE
    step(world, body)
    settle(world)
    step(world, body)
    assert STABLE[0] not in world.deployments  # the ready canary took its group's stable replica
    # The pause is over but nothing was judged yet: the step holds.
    held = step(world, body, after=timedelta(seconds=90))
    assert body["status"]["rollout"]["phase"] == "Held"
    assert held.removals == ()

    message = "error rate 20.0 % on the canary (stable 0.0 %), limit 1.0 %"
    body["status"]["analysis"] = judgement("Failed", message)
    failed = step(world, body, after=timedelta(seconds=95))
    assert "CanaryFailed" in events(failed)
    warning = next(e for e in failed.status.events if e.reason == "CanaryFailed")
    assert warning.type == "Warning"
    assert message in warning.message
    assert {r.name for r in failed.removals if r.kind == "Deployment"} == {f"{STABLE[0]}-b"}
    assert images(world) == {STABLE[0]: OLD_IMAGE, STABLE[1]: OLD_IMAGE}
    assert world.deployments[STABLE[0]]["spec"]["replicas"] == 1
    progressing = {c["type"]: c for c in body["status"]["conditions"]}["Progressing"]
    assert (progressing["status"], progressing["reason"]) == ("False", "CanaryFailed")
    assert message in progressing["message"]
    # The analysis loop's member is not the reconcile's to rewrite or delete.
    assert failed.status.patch is not None
    assert "analysis" not in failed.status.patch

    settle(world)
    again = step(world, body, after=timedelta(hours=3))
    assert again.applies == ()
    assert again.removals == ()
    assert body["status"]["rollout"]["phase"] == "Aborted"


def test_a_passed_analysis_lets_the_step_end_when_its_pause_does() -> None:
    body = analysed_body()
    world = stable_world(body)
    body["spec"]["engine"]["image"] = NEW_IMAGE
    step(world, body)
    settle(world)
    step(world, body)
    body["status"]["analysis"] = judgement("Passed", "120 canary requests within every limit")
    step(world, body, after=timedelta(seconds=61))
    assert body["status"]["rollout"]["phase"] == "Promoting"


def test_rollback_after_promotion_takes_the_warm_standby_without_restarting_it() -> None:
    body = sample(
        replicas=4,
        minReplicas=1,
        rollout={
            "steps": [{"weight": 50, "pauseSeconds": 60}],
            "keepPrevious": {"replicas": 1, "seconds": 600},
        },
    )
    body["spec"]["autoscaling"]["enabled"] = False
    world = stable_world(body)
    old = dict(world.deployments)
    body["spec"]["engine"]["image"] = NEW_IMAGE
    for seconds in (0, 1, 61, 62, 63):
        step(world, body, after=timedelta(seconds=seconds))
        settle(world)
    revisions = body["status"]["revisions"]
    assert (revisions["stable"]["revision"], revisions["stableSlot"]) == (2, "b")
    standby = revisions["standby"]
    assert (standby["revision"], standby["replicas"]) == (1, 1)
    assert standby["costPerHour"] > 0
    # One replica of revision 1 stays warm in its old Deployment, whose template did not change.
    (warm,) = [n for n in world.deployments if not n.endswith("-b")]
    assert world.deployments[warm]["spec"]["replicas"] == 1
    assert world.deployments[warm]["spec"]["template"] == old[warm]["spec"]["template"], (
        "the warm replica's pod template is the one it ran as stable"
    )

    # `gpufleet rollback`: spec back at revision 1 (renumbered 3). Its warm replica serves at once.
    body["spec"]["engine"]["image"] = OLD_IMAGE
    restoring = step(world, body, after=timedelta(seconds=70))
    assert "RestoringFromStandby" in events(restoring)
    assert world.deployments[warm]["spec"]["template"] == old[warm]["spec"]["template"]
    settle(world)
    step(world, body, after=timedelta(seconds=71))
    settle(world)
    step(world, body, after=timedelta(seconds=72))
    revisions = body["status"]["revisions"]
    assert (revisions["stable"]["revision"], revisions["stableSlot"]) == (3, "a")
    assert set(images(world).values()) == {OLD_IMAGE, NEW_IMAGE}  # revision 2 now the warm one
    assert revisions["standby"]["revision"] == 2


def test_a_rollout_ended_by_this_operator_does_not_come_back_from_a_stale_body() -> None:
    body = canary_body()
    world = stable_world(body)
    body["spec"]["engine"]["image"] = NEW_IMAGE
    step(world, body)
    settle(world)
    step(world, body)
    stale = {**body["status"]}  # the watch still shows the canary running
    body["spec"]["engine"]["image"] = OLD_IMAGE
    aborted = step(world, body)
    assert "RolloutAborted" in events(aborted)
    body["status"] = stale
    again = world.plan(body, now=NOW + timedelta(seconds=1))
    assert "RolloutAborted" not in [e.reason for e in again.status.events]
    assert again.status.status.rollout is None
