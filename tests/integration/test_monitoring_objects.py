"""The chart's ServiceMonitor, PodMonitor and PrometheusRule against the Prometheus Operator's own CRDs.

Rendering proves only that the templates are YAML. Here the API server checks them against the
published schemas (hack/install-monitoring-crds.sh, pinned): wrong types, bad durations and unknown
fields are refused, and what it would store must be what the chart wrote, since a structural schema
drops unknown fields silently.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.chart.helm import render
from tests.conftest import Cluster, install_crds

pytestmark = pytest.mark.integration

INSTALL_SCRIPT = "install-monitoring-crds.sh"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
CRD_NAMES = [
    "servicemonitors.monitoring.coreos.com",
    "podmonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
]


@pytest.fixture(scope="module")
def monitoring_crds(cluster: Cluster) -> Iterator[Cluster]:
    """The pinned Prometheus Operator CRDs, installed and Established; removed after the module."""
    folder = install_crds(cluster, INSTALL_SCRIPT, CRD_NAMES)
    yield cluster
    cluster.kubectl("delete", "-f", str(folder), "--wait=false", check=False)


def _monitoring_objects(namespace: str) -> list[dict[str, Any]]:
    objects = render(
        "--set",
        "monitoring.serviceMonitor.enabled=true",
        "--set",
        "monitoring.serviceMonitor.labels.release=kube-prometheus-stack",
        "--set",
        "monitoring.podMonitor.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.prometheusRule.alertLabels.team=ml-platform",
        namespace=namespace,
    )
    return [o for o in objects if o["kind"] in MONITORING_KINDS]


def _kept(sent: Any, stored: Any) -> bool:
    """Everything sent is in what would be stored (which may add the schema's defaults)."""
    if isinstance(sent, dict):
        return isinstance(stored, dict) and all(k in stored and _kept(v, stored[k]) for k, v in sent.items())
    if isinstance(sent, list):
        return (
            isinstance(stored, list)
            and len(sent) == len(stored)
            and all(_kept(a, b) for a, b in zip(sent, stored, strict=True))
        )
    return bool(sent == stored)


def test_kept_sees_a_dropped_or_changed_field() -> None:
    sent = {"a": [{"b": 1, "c": "x"}], "d": {"e": True}}
    assert _kept(sent, {"a": [{"b": 1, "c": "x", "default": "y"}], "d": {"e": True}})
    assert not _kept(sent, {"a": [{"b": 1}], "d": {"e": True}})  # pruned
    assert not _kept(sent, {"a": [{"b": 2, "c": "x"}], "d": {"e": True}})  # changed
    assert not _kept(sent, {"a": [], "d": {"e": True}})


def _dry_run(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    # Strict field validation: an unknown field is an error, not a warning.
    return cluster.kubectl(
        "create",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        namespace,
        "-o",
        "json",
        "-f",
        "-",
        stdin=yaml.safe_dump(obj),
        check=False,
    )


def test_the_monitoring_objects_are_accepted_as_written(monitoring_crds: Cluster, namespace: str) -> None:
    objects = _monitoring_objects(namespace)
    assert sorted(o["kind"] for o in objects) == sorted(MONITORING_KINDS)
    for obj in objects:
        result = _dry_run(monitoring_crds, namespace, obj)
        assert result.returncode == 0, f"{obj['kind']} refused:\n{result.stderr}"
        stored = json.loads(result.stdout)
        # Nothing pruned, nothing changed: the API server keeps what the chart wrote (plus defaults).
        assert _kept(obj["spec"], stored["spec"]), f"{obj['kind']}: {obj['spec']}\nstored: {stored['spec']}"
        assert _kept(obj["metadata"]["labels"], stored["metadata"]["labels"]), obj["kind"]


def test_the_schemas_refuse_what_the_chart_must_not_write(monitoring_crds: Cluster, namespace: str) -> None:
    """The check above can fail: the same objects, broken, are refused and the error names the field."""
    by_kind = {o["kind"]: o for o in _monitoring_objects(namespace)}

    bad_interval = copy.deepcopy(by_kind["ServiceMonitor"])
    bad_interval["spec"]["endpoints"][0]["interval"] = "every 30 seconds"
    unknown_field = copy.deepcopy(by_kind["PodMonitor"])
    unknown_field["spec"]["podMetricsEndpoints"][0]["scrapeEvery"] = "15s"
    rule_without_expr = copy.deepcopy(by_kind["PrometheusRule"])
    del rule_without_expr["spec"]["groups"][0]["rules"][0]["expr"]

    for obj, field in (
        (bad_interval, "spec.endpoints[0].interval"),
        (unknown_field, "scrapeEvery"),
        (rule_without_expr, "spec.groups[0].rules[0].expr"),
    ):
        result = _dry_run(monitoring_crds, namespace, obj)
        assert result.returncode != 0, f"{obj['kind']} with a broken {field} was accepted"
        assert field in result.stderr, result.stderr
