"""The generated CRD on a real kube-apiserver: install, defaults, rejections, kubectl UX."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet.api.v1alpha1 import DEFAULT_IMAGE
from tests.conftest import ROOT, Cluster, wait_until

pytestmark = pytest.mark.integration

SAMPLES = sorted((ROOT / "samples").glob("*.yaml"))
SPOT_SAMPLE = ROOT / "samples" / "llama-3-70b-a100-spot.yaml"


def _table(text: str) -> list[dict[str, str]]:
    """Parse kubectl's column output by header offsets (empty cells are blank, not shifted)."""
    header, *lines = text.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [{n: line[a:b].strip() for n, (a, b) in zip(names, bounds, strict=True)} for line in lines]


def _apply(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> Any:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc), check=False)


def test_the_crd_is_accepted_and_established(crd: Cluster) -> None:
    names = crd.get_json("crd", "modeldeployments.gpufleet.io")["status"]["acceptedNames"]
    assert names["kind"] == "ModelDeployment"
    assert names["shortNames"] == ["md"]


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name for p in SAMPLES])
def test_samples_are_accepted(crd: Cluster, namespace: str, sample: Path) -> None:
    crd.kubectl("apply", "-n", namespace, "-f", str(sample))
    name = yaml.safe_load(sample.read_text())["metadata"]["name"]
    stored = crd.get_json("md", name, "-n", namespace)
    assert stored["spec"]["model"]["uri"] == yaml.safe_load(sample.read_text())["spec"]["model"]["uri"]


def test_schema_defaults_are_filled_in_by_the_server(crd: Cluster, namespace: str) -> None:
    minimal = {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "minimal"},
        "spec": {"model": {"uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct"}},
    }
    assert _apply(crd, namespace, minimal).returncode == 0
    spec = crd.get_json("md", "minimal", "-n", namespace)["spec"]
    assert spec["engine"]["image"] == DEFAULT_IMAGE
    assert spec["accelerator"]["tensorParallelSize"] == 1
    assert spec["replicas"] == 1
    assert spec["autoscaling"]["scaleDownDelaySeconds"] == 300
    assert spec["capacity"]["fallbackToOnDemand"] is True
    assert spec["model"]["quantization"] == "none"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ("accelerator", "tensorParallelSize"),
            3,
            r"spec\.accelerator\.tensorParallelSize: Unsupported value: 3",
        ),
        (
            ("capacity", "spotPercent"),
            150,
            r"spec\.capacity\.spotPercent: Invalid value: 150: .*less than or equal to 100",
        ),
        (("model", "uri"), "gs://bucket/x", r"spec\.model\.uri: Invalid value: \"gs://bucket/x\""),
        (("replicas",), -1, r"spec\.replicas: Invalid value: -1: .*greater than or equal to 0"),
    ],
    ids=["tensorParallelSize 3", "spotPercent 150", "gs uri", "negative replicas"],
)
def test_the_api_server_rejects_field_errors(
    crd: Cluster, namespace: str, path: tuple[str, ...], value: Any, expected: str
) -> None:
    doc = copy.deepcopy(yaml.safe_load(SPOT_SAMPLE.read_text()))
    node = doc["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    result = _apply(crd, namespace, doc)
    assert result.returncode != 0
    assert re.search(expected, result.stderr), result.stderr


def test_kubectl_explain_shows_the_descriptions(crd: Cluster) -> None:
    def explained() -> str | None:
        result = crd.kubectl("explain", "modeldeployment.spec.accelerator", check=False)
        return result.stdout if result.returncode == 0 and "tensorParallelSize" in result.stdout else None

    text = wait_until(explained, timeout=30, what="kubectl explain to see the published schema")
    assert "GPUs per replica, all on one node" in text
    assert "nvidia.com/gpu.product" in text
    assert "migProfile" in text


def _table_with_object(crd: Cluster, namespace: str) -> tuple[dict[str, str], dict[str, Any]]:
    """One table row and the object it was printed from.

    The e2e session's operator watches every namespace and may write status at any moment,
    so the row is taken between two reads of the object with the same resourceVersion.
    """

    def snapshot() -> tuple[dict[str, str], dict[str, Any]] | None:
        before = crd.get_json("md", "llama-3-70b", "-n", namespace)
        rows = _table(crd.kubectl("get", "md", "-n", namespace).stdout)
        after = crd.get_json("md", "llama-3-70b", "-n", namespace)
        same = before["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]
        return (rows[0], after) if same and len(rows) == 1 else None

    return wait_until(snapshot, timeout=30, what="a table row printed from an unchanged object")


def test_kubectl_get_shows_the_printer_columns(crd: Cluster, namespace: str) -> None:
    crd.kubectl("apply", "-n", namespace, "-f", str(SPOT_SAMPLE))
    header = crd.kubectl("get", "md", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "GPU", "TP", "READY", "DESIRED", "REVISION", "STEP", "STATUS", "AGE"]
    row, obj = _table_with_object(crd, namespace)
    assert row["NAME"] == "llama-3-70b"
    assert row["MODEL"] == "hf://meta-llama/Meta-Llama-3-70B-Instruct"
    assert row["GPU"] == "NVIDIA-A100-SXM4-80GB"
    assert row["TP"] == "4"
    assert row["DESIRED"] == str(obj["spec"]["replicas"]) == "2"
    status = obj.get("status", {})
    # Blank until an operator writes status, then the ready count and the Ready condition's reason.
    assert row["READY"] == str(status.get("readyReplicas", ""))
    ready = [c["reason"] for c in status.get("conditions", []) if c["type"] == "Ready"]
    assert row["STATUS"] == (ready[0] if ready else "")
    current = (status.get("revisions") or {}).get("current") or {}
    assert row["REVISION"] == str(current.get("revision", ""))
    # No rollout steps in the sample: no canary step to show.
    assert row["STEP"] == ""
    wide = crd.kubectl("get", "md", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert "MIG" in wide
    assert "SPOT%" in wide
    assert "STABLE" in wide
    assert "WEIGHT" in wide


def test_kubectl_scale_changes_spec_replicas(crd: Cluster, namespace: str) -> None:
    crd.kubectl("apply", "-n", namespace, "-f", str(SPOT_SAMPLE))
    crd.kubectl("scale", "md/llama-3-70b", "-n", namespace, "--replicas=3")
    assert crd.get_json("md", "llama-3-70b", "-n", namespace)["spec"]["replicas"] == 3
    scale = crd.get_json("md", "llama-3-70b", "-n", namespace, "--subresource=scale")
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 3


def test_status_is_a_subresource(crd: Cluster, namespace: str) -> None:
    doc = yaml.safe_load(SPOT_SAMPLE.read_text())
    doc["status"] = {"replicas": 7}
    assert _apply(crd, namespace, doc).returncode == 0
    stored = crd.get_json("md", "llama-3-70b", "-n", namespace)
    # Writes to the main resource cannot set status: only the operator, through /status, does.
    assert stored.get("status", {}).get("replicas") != 7
