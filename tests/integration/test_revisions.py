"""Revisions of the serving template on the real API server: ControllerRevisions owned by the
ModelDeployment, numbered like a StatefulSet's history, pruned to revisionHistoryLimit, garbage-collected
with it; `gpufleet history` and `gpufleet rollback` against them; an operator killed in the middle; a name
that someone else holds; a rollback racing another writer."""

from __future__ import annotations

import io
from typing import Any

import pytest
import yaml

from gpufleet.adapters.kube import KubeError, RestKubeApi, load_http
from gpufleet.api.v1alpha1 import API_VERSION, KIND
from gpufleet.cli import main
from tests.conftest import ROOT, Cluster, OperatorProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fleet")]

SAMPLE = ROOT / "samples" / "llama-3-70b-a100-spot.yaml"
MD = "gpufleet.io/model-deployment"
NAME = "llama-3-70b"
OLD, NEW, NEWER = "vllm/vllm-openai:v0.33.0", "vllm/vllm-openai:v0.34.0", "vllm/vllm-openai:v0.34.1"


def model(image: str = OLD, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    doc["spec"].setdefault("autoscaling", {})["enabled"] = False
    doc["spec"]["engine"]["image"] = image
    doc["spec"].update(spec)
    return doc


def apply(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc))


def history(cluster: Cluster, namespace: str) -> dict[int, dict[str, Any]]:
    """The model's ControllerRevisions by number."""
    items = cluster.get_json("controllerrevisions", "-n", namespace, "-l", f"{MD}={NAME}")["items"]
    return {item["revision"]: item for item in items}


def revisions_status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = cluster.get_json("md", NAME, "-n", namespace).get("status") or {}
    return status.get("revisions") or {}


def images(cluster: Cluster, namespace: str) -> set[str]:
    items = cluster.get_json("deployments", "-n", namespace, "-l", f"{MD}={NAME}")["items"]
    return {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in items}


def wait_for_current(cluster: Cluster, namespace: str, number: int, image: str) -> dict[str, Any]:
    def there() -> bool:
        current = revisions_status(cluster, namespace).get("current") or {}
        return current.get("revision") == number and current.get("image") == image

    wait_until(there, timeout=30, what=f"status.revisions.current = revision {number} ({image})")
    return revisions_status(cluster, namespace)


def cli(cluster: Cluster, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main([*args, "--kubeconfig", str(cluster.kubeconfig)], out)
    return code, out.getvalue()


def test_template_changes_make_revisions_and_rollback_restores_one(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, model(OLD))
    first = wait_for_current(cluster, namespace, 1, OLD)
    (only,) = history(cluster, namespace).values()
    owner = only["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == (KIND, NAME, True)
    assert only["data"]["spec"]["engine"]["image"] == OLD
    assert first["current"]["name"] == only["metadata"]["name"]

    # Scaling is not a new template.
    cluster.kubectl("scale", f"md/{NAME}", "-n", namespace, "--replicas=3")
    wait_until(
        lambda: cluster.get_json("md", NAME, "-n", namespace).get("status", {}).get("desiredReplicas") == 3,
        timeout=30,
        what="3 replicas desired",
    )
    assert list(history(cluster, namespace)) == [1]

    apply(cluster, namespace, model(NEW, replicas=3))
    second = wait_for_current(cluster, namespace, 2, NEW)
    assert second["current"]["changes"] == f"engine.image: {OLD} → {NEW}"
    assert sorted(history(cluster, namespace)) == [1, 2]
    # The integration fleet's pods never get Ready: no revision has rolled out, so none is stable.
    assert "stable" not in second
    wait_until(lambda: images(cluster, namespace) == {NEW}, timeout=30, what="every group on the new image")

    code, listing = cli(cluster, "history", NAME, "-n", namespace)
    assert code == 0, listing
    lines = listing.splitlines()
    assert lines[1].split()[0] == "1"
    assert lines[2].split()[:2] == ["2", "current"]
    assert f"engine.image: {OLD} → {NEW}" in lines[2]

    code, text = cli(cluster, "rollback", NAME, "-n", namespace, "--dry-run")
    assert code == 0, text
    assert yaml.safe_load(text)["spec"]["engine"]["image"] == OLD
    assert revisions_status(cluster, namespace)["current"]["revision"] == 2  # a dry run writes nothing

    # The rollback patch carries the version it read: a status write by the operator in between refuses
    # it ("changed while rolling back ... run the command again"), and a user runs it again, as here.
    def rolled_back() -> tuple[int, str] | None:
        found = cli(cluster, "rollback", NAME, "-n", namespace)
        return None if "changed while rolling back" in found[1] else found

    code, text = wait_until(rolled_back, timeout=30, what="gpufleet rollback written")
    assert code == 0, text
    assert f"rolled back to revision 1 ({first['current']['name']})" in text
    body = cluster.get_json("md", NAME, "-n", namespace)
    assert body["spec"]["engine"]["image"] == OLD
    assert body["spec"]["replicas"] == 3  # only the serving template is written back
    # The operator renumbers the old revision rather than copying it, and rolls the groups back.
    third = wait_for_current(cluster, namespace, 3, OLD)
    assert third["current"]["name"] == first["current"]["name"]
    assert sorted(history(cluster, namespace)) == [2, 3]
    wait_until(
        lambda: images(cluster, namespace) == {OLD}, timeout=30, what="every group back on the old image"
    )

    code, text = cli(cluster, "rollback", NAME, "-n", namespace, "--to-revision", "1")
    assert code == 1
    assert "has no revision 1 (revisions kept: 2, 3)" in text
    code, text = cli(cluster, "rollback", NAME, "-n", namespace, "--to-revision", "3")
    assert code == 1
    assert "already what" in text


def test_history_is_pruned_to_the_limit_and_survives_a_killed_operator(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, model(OLD, revisionHistoryLimit=1))
    wait_for_current(cluster, namespace, 1, OLD)
    apply(cluster, namespace, model(NEW, revisionHistoryLimit=1))
    operator.restart(kill=True)  # right after the write: the new operator finds the history as it is
    wait_for_current(cluster, namespace, 2, NEW)
    apply(cluster, namespace, model(NEWER, revisionHistoryLimit=1))
    wait_for_current(cluster, namespace, 3, NEWER)
    wait_until(lambda: sorted(history(cluster, namespace)) == [2, 3], timeout=30, what="revision 1 pruned")
    assert revisions_status(cluster, namespace)["history"] == 2

    cluster.kubectl("delete", f"md/{NAME}", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_until(lambda: history(cluster, namespace) == {}, timeout=60, what="revisions garbage-collected")


def test_a_revision_name_held_by_someone_else_is_left_alone(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, model(OLD))
    taken = wait_for_current(cluster, namespace, 1, OLD)["current"]["name"]
    cluster.kubectl("delete", f"md/{NAME}", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_until(lambda: history(cluster, namespace) == {}, timeout=60, what="revisions garbage-collected")
    foreign = {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {"name": taken, "namespace": namespace, "labels": {"app": "someone-else"}},
        "data": {"note": "not gpufleet's"},
        "revision": 7,
    }
    apply(cluster, namespace, foreign)
    apply(cluster, namespace, model(OLD))
    status = wait_for_current(cluster, namespace, 1, OLD)
    assert status["current"]["name"] == f"{taken}-2"
    untouched = cluster.get_json("controllerrevision", taken, "-n", namespace)
    assert untouched["data"] == {"note": "not gpufleet's"}
    assert "ownerReferences" not in untouched["metadata"]


def test_a_rollback_racing_another_writer_writes_nothing(operator: OperatorProcess, namespace: str) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, model(OLD))
    wait_for_current(cluster, namespace, 1, OLD)
    kube = RestKubeApi(load_http(str(cluster.kubeconfig)))
    stale = kube.get(API_VERSION, KIND, namespace, NAME)
    assert stale is not None
    apply(cluster, namespace, model(NEW))  # someone writes after the rollback read the object
    operations = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": stale["metadata"]["resourceVersion"]},
        {"op": "add", "path": "/spec/engine/image", "value": NEWER},
    ]
    with pytest.raises(KubeError) as refused:
        kube.json_patch(API_VERSION, KIND, namespace, NAME, operations)
    assert refused.value.status == 422
    live = kube.get(API_VERSION, KIND, namespace, NAME)
    assert live is not None
    assert live["spec"]["engine"]["image"] == NEW
