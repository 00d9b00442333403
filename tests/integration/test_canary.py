"""Canary rollouts (spec.rollout.steps) on the real API server, scheduler and controller-manager.

No container runs here: pods are marked Ready through the status subresource, as a kubelet would, so
the real ReplicaSet and Deployment controllers count them. What is checked is what only a real API
server can show: slot b's Deployment and selector beside the untouched stable Deployments, the stable
Deployments removed only once canary pods are ready, the operator killed mid-rollout resuming the
same step, and `gpufleet promote` ending a pause without end.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from kubernetes import client

from gpufleet.cli import main
from tests.conftest import ROOT, Cluster, OperatorProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fleet")]

SAMPLE = ROOT / "samples" / "llama-3-70b-a100-spot.yaml"
MD = "gpufleet.io/model-deployment"
SLOT = "gpufleet.io/slot"
NAME = "llama-3-70b"
OLD, NEW = "vllm/vllm-openai:v0.33.0", "vllm/vllm-openai:v0.34.0"
GROUPS = (f"{NAME}-us-east-1a-on-demand", f"{NAME}-us-east-1b-spot")


def model(image: str, steps: list[dict[str, int]]) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    doc["spec"]["autoscaling"]["enabled"] = False
    doc["spec"]["engine"]["image"] = image
    doc["spec"]["rollout"] = {"steps": steps}
    return doc


def apply(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc))


def status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return cluster.get_json("md", NAME, "-n", namespace).get("status") or {}


def deployments(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    items = cluster.get_json("deployments", "-n", namespace, "-l", f"{MD}={NAME}")["items"]
    return {d["metadata"]["name"]: d for d in items}


def mark_ready(core: client.CoreV1Api, namespace: str) -> int:
    """Every scheduled pod of the model not yet Ready is marked Ready, as its kubelet would; returns
    how many pods of the model are Ready."""
    ready = 0
    for pod in core.list_namespaced_pod(namespace, label_selector=f"{MD}={NAME}").items:
        if pod.metadata.deletion_timestamp or not pod.spec.node_name:
            continue
        ready += 1
        if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
            continue
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": stamp}
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        core.patch_namespaced_pod_status(
            pod.metadata.name, namespace, {"status": {"phase": "Running", "conditions": conditions}}
        )
    return ready


def settle_until(core: client.CoreV1Api, cluster: Cluster, namespace: str, done: Any, what: str) -> Any:
    """Keep marking new pods Ready (the kubelet's part) until `done(status)` holds."""

    def check() -> Any:
        mark_ready(core, namespace)
        return done(status(cluster, namespace))

    return wait_until(check, timeout=60, what=what)


def settle_stable(core: client.CoreV1Api, cluster: Cluster, namespace: str, revision: int) -> None:
    """Keep marking pods Ready until status names `revision` the stable one."""
    settle_until(
        core,
        cluster,
        namespace,
        lambda s: ((s.get("revisions") or {}).get("stable") or {}).get("revision") == revision,
        f"revision {revision} stable",
    )


def event_reasons(cluster: Cluster, namespace: str) -> set[str]:
    items = cluster.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={NAME}")[
        "items"
    ]
    return {e["reason"] for e in items}


def images(found: Iterable[dict[str, Any]]) -> dict[str, str]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"] for d in found}


def test_a_canary_beside_the_stable_revision_survives_a_killed_operator_and_is_promoted(
    operator: OperatorProcess, namespace: str, api: client.ApiClient
) -> None:
    cluster, core = operator.cluster, client.CoreV1Api(api)
    steps = [{"weight": 50, "pauseSeconds": 4}]
    apply(cluster, namespace, model(OLD, steps))
    settle_stable(core, cluster, namespace, 1)
    before = deployments(cluster, namespace)
    assert set(before) == set(GROUPS)

    apply(cluster, namespace, model(NEW, steps))
    canary = f"{GROUPS[0]}-b"
    wait_until(lambda: canary in deployments(cluster, namespace), timeout=30, what=f"Deployment {canary}")
    during = deployments(cluster, namespace)
    assert during[canary]["spec"]["selector"]["matchLabels"][SLOT] == "b"
    assert images(during.values()) == {GROUPS[0]: OLD, GROUPS[1]: OLD, canary: NEW}
    for name in GROUPS:  # the stable Deployments were not written: no restart of their pods
        assert during[name]["metadata"]["generation"] == before[name]["metadata"]["generation"]
    # Until the canary's pod is Ready no stable replica goes: the rollout waits at step 1.
    rollout = status(cluster, namespace)["rollout"]
    assert (rollout["revision"], rollout["step"], rollout["phase"]) == (2, 1, "Progressing")
    assert (status(cluster, namespace)["revisions"]["canary"]["revision"]) == 2

    operator.restart(kill=True)
    settle_stable(core, cluster, namespace, 2)
    final = status(cluster, namespace)
    assert final["revisions"]["stableSlot"] == "b"
    assert "rollout" not in final
    assert "canary" not in final["revisions"]
    wait_until(
        lambda: set(deployments(cluster, namespace)) == {f"{g}-b" for g in GROUPS},
        timeout=30,
        what="only slot b's Deployments left",
    )
    assert set(images(deployments(cluster, namespace).values()).values()) == {NEW}
    reasons = event_reasons(cluster, namespace)
    assert {"RolloutStarted", "CanaryWeightReached", "RolloutPromoted"} <= reasons


def cli(cluster: Cluster, *args: str) -> tuple[int, str]:
    """The command line, run again as a user would when it says the model changed under it (its patch
    carries the version it read, and the operator's status writes move that on)."""

    def once() -> tuple[int, str] | None:
        out = io.StringIO()
        code = main([*args, "--kubeconfig", str(cluster.kubeconfig)], out)
        return None if "run the command again" in out.getvalue() else (code, out.getvalue())

    return wait_until(once, timeout=30, what=f"gpufleet {args[0]} without a concurrent change")


def test_gpufleet_promote_ends_a_pause_without_end_and_rollback_aborts_the_next_canary(
    operator: OperatorProcess, namespace: str, api: client.ApiClient
) -> None:
    cluster, core = operator.cluster, client.CoreV1Api(api)
    steps = [{"weight": 50}]
    apply(cluster, namespace, model(OLD, steps))
    code, out = cli(cluster, "promote", NAME, "-n", namespace)
    assert code == 1
    assert "no canary rollout in progress" in out
    settle_stable(core, cluster, namespace, 1)
    apply(cluster, namespace, model(NEW, steps))
    settle_until(
        core,
        cluster,
        namespace,
        lambda s: (s.get("rollout") or {}).get("phase") == "WaitingForPromotion",
        "step 1 waiting for promotion",
    )
    code, out = cli(cluster, "promote", NAME, "-n", namespace)
    assert code == 0, out
    assert "step 1/1 ends now" in out
    annotations = cluster.get_json("md", NAME, "-n", namespace)["metadata"]["annotations"]
    assert annotations["gpufleet.io/promote"] == "2/1"
    settle_stable(core, cluster, namespace, 2)

    # A third revision's canary runs in slot a; `gpufleet rollback` puts spec back at revision 2, which
    # ends it at once: slot a's Deployments go, slot b keeps serving.
    apply(cluster, namespace, model("vllm/vllm-openai:v0.34.1", steps))
    wait_until(lambda: GROUPS[0] in deployments(cluster, namespace), timeout=30, what="the canary in slot a")
    code, out = cli(cluster, "rollback", NAME, "-n", namespace)
    assert code == 0, out
    wait_until(
        lambda: set(deployments(cluster, namespace)) == {f"{g}-b" for g in GROUPS},
        timeout=30,
        what="the canary's Deployments removed",
    )
    assert set(images(deployments(cluster, namespace).values()).values()) == {NEW}
    assert "RolloutAborted" in event_reasons(cluster, namespace)
