"""The operator against the real control plane: Deployments per zone × capacity type, the real
scheduler placing their pods on fake GPU nodes, drift, scale, deletion, restart, the webhook."""

from __future__ import annotations

import copy
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, Cluster, OperatorProcess, record_fault_figure, wait_until
from tests.integration.fleet import TEST_FLEET

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fleet")]

SPOT_SAMPLE = ROOT / "samples" / "llama-3-70b-a100-spot.yaml"
MIG_SAMPLE = ROOT / "samples" / "llama-3-8b-mig.yaml"
NODES = {n.name: n for n in TEST_FLEET}
MD = "gpufleet.io/model-deployment"


def load(path: Path, **spec: Any) -> dict[str, Any]:
    """A sample with changes; autoscaling off, since these tests set replicas themselves."""
    doc = yaml.safe_load(path.read_text())
    doc["spec"].setdefault("autoscaling", {})["enabled"] = False
    doc["spec"].update(spec)
    return doc


def apply(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc))


def deployments(cluster: Cluster, namespace: str, md: str) -> dict[str, dict[str, Any]]:
    items = cluster.get_json("deployments", "-n", namespace, "-l", f"{MD}={md}")["items"]
    return {d["metadata"]["name"]: d for d in items}


def replicas_by_deployment(cluster: Cluster, namespace: str, md: str) -> dict[str, int]:
    return {name: d["spec"]["replicas"] for name, d in deployments(cluster, namespace, md).items()}


def pods(cluster: Cluster, namespace: str, md: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json("pods", "-n", namespace, "-l", f"{MD}={md}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def wait_for_groups(
    cluster: Cluster, namespace: str, md: str, expected: dict[str, int], timeout: float = 30
) -> None:
    wait_until(
        lambda: replicas_by_deployment(cluster, namespace, md) == expected,
        timeout=timeout,
        what=f"Deployments {expected}",
    )


def condition(cluster: Cluster, namespace: str, md: str, kind: str) -> dict[str, Any] | None:
    status = cluster.get_json("md", md, "-n", namespace).get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


SAMPLE_GROUPS = {"llama-3-70b-us-east-1a-on-demand": 1, "llama-3-70b-us-east-1b-spot": 1}
FIVE_GROUPS = {
    "llama-3-70b-us-east-1a-on-demand": 1,
    "llama-3-70b-us-east-1a-spot": 1,
    "llama-3-70b-us-east-1b-spot": 1,
    "llama-3-70b-us-east-1c-on-demand": 1,
    "llama-3-70b-us-east-1c-spot": 1,
}


def reasons_and_messages(cluster: Any, namespace: str) -> str:
    """Every Event's reason and message in the namespace (Events are posted from a queue, a moment after
    what they report)."""
    return cluster.kubectl(
        "get", "events", "-n", namespace, "-o", "jsonpath={range .items[*]}{.reason} {.message}{'\\n'}{end}"
    ).stdout


def test_sample_becomes_groups_whose_pods_bind_to_matching_nodes(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, load(SPOT_SAMPLE))
    wait_for_groups(cluster, namespace, "llama-3-70b", SAMPLE_GROUPS)

    def all_bound() -> list[dict[str, Any]] | None:
        found = pods(cluster, namespace, "llama-3-70b")
        return found if len(found) == 2 and all(p["spec"].get("nodeName") for p in found) else None

    for pod in wait_until(all_bound, timeout=60, what="both pods bound by the scheduler"):
        node = NODES[pod["spec"]["nodeName"]]
        labels = pod["metadata"]["labels"]
        assert node.zone == labels["gpufleet.io/zone"]
        assert node.capacity_type == labels["gpufleet.io/capacity-type"]
        assert node.product == "NVIDIA-A100-SXM4-80GB"
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "4"}

    service = cluster.get_json("service", "llama-3-70b", "-n", namespace)
    assert service["spec"]["selector"] == {MD: "llama-3-70b"}
    pdb = cluster.get_json("pdb", "llama-3-70b", "-n", namespace)
    assert pdb["spec"]["maxUnavailable"] == 1
    for obj in [service, pdb, *deployments(cluster, namespace, "llama-3-70b").values()]:
        assert [r["kind"] for r in obj["metadata"]["ownerReferences"]] == ["ModelDeployment"]

    def status_reported() -> dict[str, Any] | None:
        status = cluster.get_json("md", "llama-3-70b", "-n", namespace).get("status", {})
        return status if status.get("replicas") == 2 else None

    status = wait_until(status_reported, timeout=30, what="status.replicas 2")
    assert status["desiredReplicas"] == 2
    assert status["selector"] == f"{MD}=llama-3-70b"
    assert {(p["zone"], p["capacityType"]) for p in status["placement"]} == {
        ("us-east-1a", "on-demand"),
        ("us-east-1b", "spot"),
    }
    # Events are posted from a queue of their own, a moment after the status.
    wait_until(
        lambda: (
            "CreatedGroup Applied Deployment llama-3-70b-us-east-1a-on-demand "
            in reasons_and_messages(cluster, namespace)
        ),
        timeout=15,
        what="a CreatedGroup Event",
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as response:
        exported = response.read().decode()
    assert re.search(r'^gpufleet_reconciles_total\{result="ok"\} [1-9]', exported, re.MULTILINE)
    assert re.search(
        r'^gpufleet_object_writes_total\{action="apply",kind="Deployment"\} [1-9]', exported, re.MULTILINE
    )


def test_tensor_parallel_4_never_lands_on_a_node_with_two_gpus(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    doc = load(SPOT_SAMPLE, replicas=1, minReplicas=1)
    # No on-demand fallback: once the pod has been pending for GPUFLEET_SPOT_FALLBACK_AFTER_SECONDS the
    # operator would otherwise move it to on-demand, where no node matches, and the scheduler's
    # message this test reads would change.
    doc["spec"]["capacity"] = {"zones": ["us-east-1d"], "spotPercent": 100, "fallbackToOnDemand": False}
    apply(cluster, namespace, doc)

    def unschedulable() -> str | None:
        found = pods(cluster, namespace, "llama-3-70b")
        conditions = {c["type"]: c for p in found for c in p.get("status", {}).get("conditions", [])}
        scheduled = conditions.get("PodScheduled", {})
        return scheduled.get("message") if scheduled.get("reason") == "Unschedulable" else None

    message = wait_until(unschedulable, timeout=60, what="the scheduler to refuse the pod")
    assert "Insufficient nvidia.com/gpu" in message
    assert all(not p["spec"].get("nodeName") for p in pods(cluster, namespace, "llama-3-70b"))

    def degraded() -> dict[str, Any] | None:
        found = condition(cluster, namespace, "llama-3-70b", "Degraded")
        return found if found and found["status"] == "True" else None

    reported = wait_until(degraded, timeout=60, what="Degraded=True")
    assert reported["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in reported["message"]


def test_mig_replicas_request_the_slice_and_bind_only_to_mig_nodes(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, load(MIG_SAMPLE, replicas=2))
    wait_for_groups(cluster, namespace, "llama-3-8b", {"llama-3-8b-on-demand": 2})

    def bound() -> list[dict[str, Any]] | None:
        found = pods(cluster, namespace, "llama-3-8b")
        return found if len(found) == 2 and all(p["spec"].get("nodeName") for p in found) else None

    for pod in wait_until(bound, timeout=60, what="MIG pods bound"):
        assert pod["spec"]["nodeName"] == "mig-a-od-1"
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-2g.20gb": "1"}


def test_image_change_rolls_every_group(operator: OperatorProcess, namespace: str) -> None:
    cluster = operator.cluster
    doc = load(SPOT_SAMPLE)
    apply(cluster, namespace, doc)
    wait_for_groups(cluster, namespace, "llama-3-70b", SAMPLE_GROUPS)
    doc["spec"]["engine"]["image"] = "vllm/vllm-openai:v0.11.1"
    apply(cluster, namespace, doc)

    def images() -> set[str]:
        return {
            d["spec"]["template"]["spec"]["containers"][0]["image"]
            for d in deployments(cluster, namespace, "llama-3-70b").values()
        }

    wait_until(lambda: images() == {"vllm/vllm-openai:v0.11.1"}, timeout=30, what="new image in every group")

    def new_replica_sets() -> bool:
        sets = cluster.get_json("replicasets", "-n", namespace, "-l", f"{MD}=llama-3-70b")["items"]
        rolled = [
            s for s in sets if s["spec"]["template"]["spec"]["containers"][0]["image"].endswith("v0.11.1")
        ]
        return len(rolled) == 2

    wait_until(new_replica_sets, timeout=30, what="a new ReplicaSet per group")


def test_scaling_2_5_2_adds_and_removes_groups(operator: OperatorProcess, namespace: str) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, load(SPOT_SAMPLE))
    wait_for_groups(cluster, namespace, "llama-3-70b", SAMPLE_GROUPS)
    cluster.kubectl("scale", "md/llama-3-70b", "-n", namespace, "--replicas=5")
    wait_for_groups(cluster, namespace, "llama-3-70b", FIVE_GROUPS)
    cluster.kubectl("scale", "md/llama-3-70b", "-n", namespace, "--replicas=2")
    wait_for_groups(cluster, namespace, "llama-3-70b", SAMPLE_GROUPS)


def test_kubectl_scale_past_max_is_clamped_and_reported(operator: OperatorProcess, namespace: str) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, load(SPOT_SAMPLE, maxReplicas=3))
    wait_for_groups(cluster, namespace, "llama-3-70b", SAMPLE_GROUPS)
    cluster.kubectl("scale", "md/llama-3-70b", "-n", namespace, "--replicas=9")

    def limited() -> dict[str, Any] | None:
        found = condition(cluster, namespace, "llama-3-70b", "ScalingLimited")
        return found if found and found["status"] == "True" else None

    reported = wait_until(limited, timeout=30, what="ScalingLimited=True")
    assert reported["reason"] == "TooManyReplicas"
    assert sum(replicas_by_deployment(cluster, namespace, "llama-3-70b").values()) == 3
    # The object stays editable: the webhook does not deny an update that leaves replicas alone.
    cluster.kubectl("label", "md/llama-3-70b", "-n", namespace, "team=ml")


def test_hand_edits_and_deletions_of_owned_deployments_are_reverted(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, load(SPOT_SAMPLE))
    wait_for_groups(cluster, namespace, "llama-3-70b", SAMPLE_GROUPS)
    cluster.kubectl("scale", "deployment/llama-3-70b-us-east-1b-spot", "-n", namespace, "--replicas=4")
    cluster.kubectl(
        "set",
        "image",
        "deployment/llama-3-70b-us-east-1a-on-demand",
        "-n",
        namespace,
        "vllm=vllm/vllm-openai:hack",
    )

    def reverted() -> bool:
        found = deployments(cluster, namespace, "llama-3-70b")
        image = found["llama-3-70b-us-east-1a-on-demand"]["spec"]["template"]["spec"]["containers"][0][
            "image"
        ]
        return (
            found["llama-3-70b-us-east-1b-spot"]["spec"]["replicas"] == 1
            and image == load(SPOT_SAMPLE)["spec"]["engine"]["image"]
        )

    wait_until(reverted, timeout=30, what="hand edits reverted")
    cluster.kubectl("delete", "deployment/llama-3-70b-us-east-1b-spot", "-n", namespace)
    wait_for_groups(cluster, namespace, "llama-3-70b", SAMPLE_GROUPS)
    cluster.kubectl("delete", "service/llama-3-70b", "pdb/llama-3-70b", "-n", namespace)

    def service_and_pdb_back() -> bool:
        found = cluster.kubectl("get", "service/llama-3-70b", "pdb/llama-3-70b", "-n", namespace, check=False)
        return found.returncode == 0

    wait_until(service_and_pdb_back, timeout=30, what="Service and PDB recreated")
    wait_until(
        lambda: {"RevertedDrift", "RestoredGroup"} <= set(reasons_and_messages(cluster, namespace).split()),
        timeout=15,
        what="RevertedDrift and RestoredGroup Events",
    )


def test_deleting_the_model_deployment_removes_everything_it_owned(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, load(SPOT_SAMPLE))
    wait_for_groups(cluster, namespace, "llama-3-70b", SAMPLE_GROUPS)
    cluster.kubectl("delete", "md/llama-3-70b", "-n", namespace, "--wait=true", "--timeout=60s")

    def all_gone() -> bool:
        left = cluster.kubectl(
            "get",
            "deployments,services,pdb,replicasets",
            "-n",
            namespace,
            "-l",
            f"{MD}=llama-3-70b",
            "-o",
            "name",
        )
        return left.stdout.strip() == ""

    wait_until(all_gone, timeout=60, what="garbage collection of owned objects")


def test_the_webhook_rejects_an_invalid_manifest_with_the_fix(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    doc = load(SPOT_SAMPLE)
    doc["spec"]["accelerator"]["tensorParallelSize"] = 1
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc), check=False)
    assert result.returncode != 0
    assert "denied the request" in result.stderr
    assert "spec.accelerator.tensorParallelSize" in result.stderr
    assert "use tensorParallelSize: 4, or quantization: fp8" in result.stderr
    assert cluster.kubectl("get", "md", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_restart_mid_reconcile_converges_without_duplicates_or_orphans(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, load(SPOT_SAMPLE, replicas=5))
    operator.stop(kill=True)  # SIGKILL right after the write: the reconcile is cut wherever it was
    operator.start()
    wait_for_groups(cluster, namespace, "llama-3-70b", FIVE_GROUPS, timeout=60)
    cluster.kubectl("scale", "md/llama-3-70b", "-n", namespace, "--replicas=2")
    operator.restart(kill=True)
    wait_for_groups(cluster, namespace, "llama-3-70b", SAMPLE_GROUPS, timeout=60)
    services = cluster.get_json("services", "-n", namespace, "-l", f"{MD}=llama-3-70b")["items"]
    assert [s["metadata"]["name"] for s in services] == ["llama-3-70b"]


def test_an_invalid_object_that_got_in_leaves_workloads_alone(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    doc = load(SPOT_SAMPLE)
    apply(cluster, namespace, doc)
    wait_for_groups(cluster, namespace, "llama-3-70b", SAMPLE_GROUPS)
    before = {
        n: d["metadata"]["generation"] for n, d in deployments(cluster, namespace, "llama-3-70b").items()
    }
    # As if the webhook were off: remove its configuration, then write a spec the operator cannot use.
    cluster.kubectl("delete", "validatingwebhookconfiguration", "gpufleet.io")
    broken = copy.deepcopy(doc)
    broken["spec"]["accelerator"]["tensorParallelSize"] = 1
    broken["spec"]["replicas"] = 3
    apply(cluster, namespace, broken)
    try:

        def invalid() -> dict[str, Any] | None:
            found = condition(cluster, namespace, "llama-3-70b", "Valid")
            return found if found and found["status"] == "False" else None

        reported = wait_until(invalid, timeout=30, what="Valid=False")
        assert "use tensorParallelSize: 4" in reported["message"]
        after = {
            n: d["metadata"]["generation"] for n, d in deployments(cluster, namespace, "llama-3-70b").items()
        }
        assert after == before
    finally:
        operator.restart()  # registers the webhook configuration again


FOREIGN = {
    "Service": {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "llama-3-70b", "labels": {"app": "database"}},
        "spec": {"selector": {"app": "database"}, "ports": [{"port": 5432}]},
    },
    "PodDisruptionBudget": {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "llama-3-70b", "labels": {"app": "database"}},
        "spec": {"selector": {"matchLabels": {"app": "database"}}, "minAvailable": 2},
    },
}


def untouched_by_us(live: dict[str, Any]) -> bool:
    """No owner reference, and no field managed by the operator (the API server's managed fields)."""
    managers = {m.get("manager") for m in live["metadata"].get("managedFields", [])}
    return "ownerReferences" not in live["metadata"] and "gpufleet" not in managers


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_an_object_of_the_models_name_that_belongs_to_someone_else_is_never_taken(
    operator: OperatorProcess, namespace: str, kind: str
) -> None:
    cluster = operator.cluster
    theirs = FOREIGN[kind]
    cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(theirs))
    apply(cluster, namespace, load(SPOT_SAMPLE))
    wait_for_groups(cluster, namespace, "llama-3-70b", SAMPLE_GROUPS)

    def conflict() -> dict[str, Any] | None:
        found = condition(cluster, namespace, "llama-3-70b", "Degraded")
        return found if found and found["reason"] == "ObjectConflict" else None

    degraded = wait_until(conflict, timeout=30, what="Degraded=True ObjectConflict")
    assert f"{kind} {namespace}/llama-3-70b exists" in degraded["message"]
    live = cluster.get_json(kind.lower(), "llama-3-70b", "-n", namespace, "--show-managed-fields")
    # Their selector is what the operator would have to change to serve the model's pods.
    assert live["spec"]["selector"] == theirs["spec"]["selector"]
    assert untouched_by_us(live)
    # Deleting the ModelDeployment leaves their object where it was (nothing to collect).
    cluster.kubectl("delete", "md", "llama-3-70b", "-n", namespace, "--wait=true")
    wait_until(
        lambda: not deployments(cluster, namespace, "llama-3-70b"), timeout=60, what="Deployments collected"
    )
    after = cluster.get_json(kind.lower(), "llama-3-70b", "-n", namespace, "--show-managed-fields")
    assert after["spec"] == live["spec"]
    assert untouched_by_us(after)
    record_fault_figure(
        "foreign objects",
        f"a {kind} of the model's name owned by someone else: reported (ObjectConflict), 0 fields taken "
        "(managed fields), kept when the ModelDeployment was deleted",
    )


def test_a_deployment_of_a_groups_name_that_belongs_to_someone_else_is_never_taken(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    theirs = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "llama-3-70b-us-east-1b-spot", "labels": {"app": "theirs"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "theirs"}},
            "template": {
                "metadata": {"labels": {"app": "theirs"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/theirs:1"}]},
            },
        },
    }
    cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(theirs))
    apply(cluster, namespace, load(SPOT_SAMPLE))
    # the other group is created; this one is left to its owner and reported
    wait_for_groups(cluster, namespace, "llama-3-70b", {"llama-3-70b-us-east-1a-on-demand": 1})

    def conflict() -> dict[str, Any] | None:
        found = condition(cluster, namespace, "llama-3-70b", "Degraded")
        return found if found and found["reason"] == "ObjectConflict" else None

    degraded = wait_until(conflict, timeout=30, what="Degraded=True ObjectConflict")
    assert f"Deployment {namespace}/llama-3-70b-us-east-1b-spot exists" in degraded["message"]
    live = cluster.get_json(
        "deployment", "llama-3-70b-us-east-1b-spot", "-n", namespace, "--show-managed-fields"
    )
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/theirs:1"
    assert untouched_by_us(live)
    record_fault_figure(
        "foreign objects",
        "a Deployment of a group's name owned by someone else: reported (ObjectConflict), 0 fields taken "
        "(managed fields); the group created once its owner removed it",
    )
    # its owner removes it: the group is created, and the conflict clears
    cluster.kubectl("delete", "deployment", "llama-3-70b-us-east-1b-spot", "-n", namespace, "--wait=true")
    wait_for_groups(cluster, namespace, "llama-3-70b", SAMPLE_GROUPS, timeout=60)
    wait_until(
        lambda: (condition(cluster, namespace, "llama-3-70b", "Degraded") or {}).get("status") == "False",
        timeout=30,
        what="Degraded=False",
    )


def grant(cluster: Cluster, namespace: str, user: str, name: str, rules: list[dict[str, Any]]) -> None:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name},
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    for obj in (role, binding):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(obj))


MD_AUTHOR = [
    {"apiGroups": ["gpufleet.io"], "resources": ["modeldeployments"], "verbs": ["get", "create", "patch"]}
]


def test_a_modeldeployment_may_only_reference_what_its_author_may_read(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    grant(cluster, namespace, "alice", "md-author", MD_AUTHOR)
    doc = load(SPOT_SAMPLE)  # spec.model.credentialsSecret: hf-token
    refused = cluster.kubectl(
        "--as=alice", "create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc), check=False
    )
    assert refused.returncode != 0
    assert "spec.model.credentialsSecret: alice may not get secrets 'hf-token'" in refused.stderr
    assert cluster.kubectl("get", "md", "llama-3-70b", "-n", namespace, check=False).returncode != 0
    # allowed to read that one Secret, alice may use it
    secret_rule = {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["hf-token"],
        "verbs": ["get"],
    }
    grant(cluster, namespace, "alice", "hf-reader", [secret_rule])
    cluster.kubectl("--as=alice", "create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc))
    # bob may edit ModelDeployments but read no Secret: what it already reads he may keep, not add to
    grant(cluster, namespace, "bob", "md-author", MD_AUTHOR)
    cluster.kubectl(
        "--as=bob",
        "patch",
        "md",
        "llama-3-70b",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"replicas":3}}',
    )
    steal = {
        "spec": {
            "engine": {
                "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "prod-db", "key": "password"}}}]
            }
        }
    }
    stolen = cluster.kubectl(
        "--as=bob",
        "patch",
        "md",
        "llama-3-70b",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps(steal),
        check=False,
    )
    assert stolen.returncode != 0
    assert "spec.engine.env[0].valueFrom.secretKeyRef: bob may not get secrets 'prod-db'" in stolen.stderr
