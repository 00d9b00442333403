"""Status and conditions from observation, with time passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.api.v1alpha1 import Condition, ModelDeploymentSpec, ModelDeploymentStatus
from gpufleet.planning.observe import ObservedDeployment, ObservedPod, observe_deployment, observe_pod
from gpufleet.planning.placement import PlacementGroup
from gpufleet.planning.status import StatusInput, compute_status, decide_replicas

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
EARLIER = "2026-11-22T11:00:00Z"


def spec(**fields: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"model": {"uri": "hf://org/model"}, **fields})


def pod(name: str, zone: str = "a", kind: str = "spot", ready: bool = True, **extra: Any) -> ObservedPod:
    return ObservedPod(name=name, zone=zone, capacity_type=kind, ready=ready, **extra)  # type: ignore[arg-type]


def status(pods: list[ObservedPod], replicas: int = 2, **extra: Any) -> dict[str, Any]:
    decision = decide_replicas(spec(replicas=replicas, minReplicas=0, maxReplicas=10))
    inp = StatusInput(
        generation=3,
        desired=decision,
        groups=[PlacementGroup("a", "spot", replicas)],
        pods=pods,
        deployments=extra.pop("deployments", []),
        selector="gpufleet.io/model-deployment=m",
        **extra,
    )
    return compute_status(inp, NOW).to_json()


def conditions(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in result["conditions"]}


@pytest.mark.parametrize(
    ("replicas", "min_replicas", "max_replicas", "desired", "reason"),
    [
        (3, 1, 10, 3, "DesiredWithinRange"),
        (20, 1, 12, 12, "TooManyReplicas"),
        (0, 2, 12, 2, "TooFewReplicas"),
        (40, 1, None, 40, "DesiredWithinRange"),
    ],
)
def test_decide_replicas_clamps(
    replicas: int, min_replicas: int, max_replicas: int | None, desired: int, reason: str
) -> None:
    decision = decide_replicas(spec(replicas=replicas, minReplicas=min_replicas, maxReplicas=max_replicas))
    assert (decision.desired, decision.reason, decision.clamped) == (desired, reason, desired != replicas)


@pytest.mark.parametrize(
    ("pods", "replicas", "ready", "progressing"),
    [
        ([pod("p1"), pod("p2")], 2, ("True", "AllReplicasReady"), ("False", "Converged")),
        ([pod("p1"), pod("p2", ready=False)], 2, ("False", "PartiallyReady"), ("True", "Scaling")),
        ([pod("p1", ready=False)], 2, ("False", "NoReplicasReady"), ("True", "Scaling")),
        ([], 0, ("True", "ScaledToZero"), ("False", "Converged")),
        ([pod("p1")], 0, ("True", "ScalingToZero"), ("True", "Scaling")),
        # a terminating pod is not counted as capacity
        ([pod("p1"), pod("p2", terminating=True)], 2, ("False", "PartiallyReady"), ("True", "Scaling")),
    ],
)
def test_ready_and_progressing(
    pods: list[ObservedPod], replicas: int, ready: tuple[str, str], progressing: tuple[str, str]
) -> None:
    result = conditions(status(pods, replicas=replicas))
    assert result["Ready"] == ready
    assert result["Progressing"] == progressing
    assert result["Valid"] == ("True", "Valid")


def test_counts_and_placement() -> None:
    result = status([pod("p1", "a"), pod("p2", "b", ready=False), pod("p3", "a", "on-demand")], replicas=3)
    assert (result["replicas"], result["readyReplicas"], result["desiredReplicas"]) == (3, 2, 3)
    assert result["observedGeneration"] == 3
    assert result["selector"] == "gpufleet.io/model-deployment=m"
    assert result["placement"] == [
        {"zone": "a", "capacityType": "on-demand", "replicas": 1, "readyReplicas": 1},
        {"zone": "a", "capacityType": "spot", "replicas": 1, "readyReplicas": 1},
        {"zone": "b", "capacityType": "spot", "replicas": 1, "readyReplicas": 0},
    ]


def test_rollout_in_progress() -> None:
    rolling = ObservedDeployment(
        "m-a-spot", replicas=2, updated_replicas=1, ready_replicas=2, generation=4, observed_generation=4
    )
    result = conditions(status([pod("p1"), pod("p2")], deployments=[rolling]))
    assert result["Progressing"] == ("True", "RollingOut")


def test_degraded_only_after_the_threshold() -> None:
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    fresh = pod(
        "p2", ready=False, unschedulable_since=NOW - timedelta(minutes=2), unschedulable_message=message
    )
    old = pod(
        "p2", ready=False, unschedulable_since=NOW - timedelta(minutes=6), unschedulable_message=message
    )
    assert conditions(status([pod("p1"), fresh]))["Degraded"] == ("False", "AsExpected")
    result = status([pod("p1"), old])
    degraded = next(c for c in result["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in degraded["message"]


def test_scaling_limited_when_clamped() -> None:
    decision = decide_replicas(spec(replicas=20, maxReplicas=12))
    inp = StatusInput(3, decision, [], [], [], "s")
    result = conditions(compute_status(inp, NOW).to_json())
    assert result["ScalingLimited"] == ("True", "TooManyReplicas")


def test_invalid_spec_keeps_counts_and_reports() -> None:
    inp = StatusInput(
        generation=5,
        desired=None,
        groups=[],
        pods=[pod("p1"), pod("p2")],
        deployments=[],
        selector="s",
        problems=["spec.replicas: too many"],
        previous=ModelDeploymentStatus(desired_replicas=2),
    )
    result = compute_status(inp, NOW).to_json()
    assert conditions(result)["Valid"] == ("False", "InvalidSpec")
    assert "spec.replicas: too many" in result["conditions"][0]["message"]
    assert result["desiredReplicas"] == 2
    assert conditions(result)["Ready"] == ("True", "AllReplicasReady")


def test_last_transition_time_moves_only_on_flips() -> None:
    previous = [
        {"type": "Ready", "status": "True", "reason": "AllReplicasReady", "lastTransitionTime": EARLIER},
        {"type": "Degraded", "status": "True", "reason": "Unschedulable", "lastTransitionTime": EARLIER},
    ]
    stored = ModelDeploymentStatus(conditions=[Condition.model_validate(c) for c in previous])
    result = status([pod("p1"), pod("p2")], previous=stored)
    times = {c["type"]: c["lastTransitionTime"] for c in result["conditions"]}
    assert times["Ready"] == EARLIER
    assert times["Degraded"] == "2026-11-22T12:00:00Z"
    assert all(c["observedGeneration"] == 3 for c in result["conditions"])


def _pod_status(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "m-x", "labels": {}},
        "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}], **status},
    }


NO_SUCH_BUCKET = "fatal error: An error occurred (NoSuchBucket) when calling the ListObjectsV2 operation"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        # an adapter fetch failing again and again: the init container, its back-off and aws's error
        (
            {
                "initContainerStatuses": [
                    {
                        "name": "fetch-adapter-0",
                        "restartCount": 2,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                        "lastState": {"terminated": {"exitCode": 1, "message": NO_SUCH_BUCKET}},
                    }
                ]
            },
            "init container fetch-adapter-0: CrashLoopBackOff (back-off 40s), 2 restarts, last exit 1: "
            + NO_SUCH_BUCKET,
        ),
        # a wrong image never restarts: failing at once
        (
            {
                "containerStatuses": [
                    {"name": "vllm", "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}}
                ]
            },
            "container vllm: ImagePullBackOff",
        ),
        # one restart is a hiccup; starting (a GPU replica takes minutes) is not failing
        (
            {
                "containerStatuses": [
                    {
                        "name": "vllm",
                        "restartCount": 1,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"exitCode": 137}},
                    }
                ]
            },
            "",
        ),
        ({"containerStatuses": [{"name": "vllm", "restartCount": 0, "state": {"running": {}}}]}, ""),
        # started again after failing three times, and not ready yet: still reported, with the last exit
        (
            {
                "containerStatuses": [
                    {
                        "name": "vllm",
                        "restartCount": 3,
                        "state": {"running": {}},
                        "lastState": {"terminated": {"exitCode": 1, "message": "CUDA out of memory"}},
                    },
                ]
            },
            "container vllm: restarting, 3 restarts, last exit 1: CUDA out of memory",
        ),
    ],
)
def test_a_pod_that_keeps_failing_is_told_as_the_kubelet_tells_it(
    status: dict[str, Any], expected: str
) -> None:
    assert observe_pod(_pod_status(**status)).failing == expected


def test_a_ready_pod_is_never_failing() -> None:
    raw = _pod_status(containerStatuses=[{"name": "vllm", "restartCount": 5, "state": {"running": {}}}])
    raw["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    raw["status"]["containerStatuses"][0]["lastState"] = {"terminated": {"exitCode": 1}}
    assert observe_pod(raw).failing == ""


def test_failing_replicas_make_the_model_degraded_and_name_the_cause() -> None:
    stuck = pod(
        "p3",
        ready=False,
        failing="init container fetch-adapter-0: CrashLoopBackOff, last exit 1: NoSuchBucket",
    )
    result = status([pod("p1"), pod("p2"), stuck])
    degraded = next(c for c in result["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ReplicasFailing")
    assert degraded["message"] == (
        "1 pod(s) not starting: p3: "
        "init container fetch-adapter-0: CrashLoopBackOff, last exit 1: NoSuchBucket"
    )
    # the serving replicas still count: Ready is about them
    assert conditions(result)["Ready"] == ("True", "AllReplicasReady")


def test_a_deployment_past_its_progress_deadline_stops_progressing_and_degrades() -> None:
    overdue = ObservedDeployment(
        "m-a-spot",
        replicas=2,
        updated_replicas=1,
        ready_replicas=2,
        generation=4,
        observed_generation=4,
        deadline_exceeded=True,
    )
    result = conditions(status([pod("p1"), pod("p2")], deployments=[overdue]))
    assert result["Progressing"] == ("False", "ProgressDeadlineExceeded")
    assert result["Degraded"] == ("True", "ProgressDeadlineExceeded")


def test_the_deployment_controllers_deadline_verdict_is_read() -> None:
    raw: dict[str, Any] = {
        "metadata": {"name": "m-a-spot", "generation": 4},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 4,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"},
            ],
        },
    }
    assert observe_deployment(raw).deadline_exceeded
    raw["status"]["conditions"][1] = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
    assert not observe_deployment(raw).deadline_exceeded
