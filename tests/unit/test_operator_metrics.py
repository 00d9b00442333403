"""The operator's metrics (an interface: alerts, dashboard and runbooks use them) and what queries them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpufleet.api.v1alpha1 import ModelDeploymentStatus, RolloutStatus
from gpufleet.runtime import operator_metrics as metrics
from tests.unit.helpers import sample
from tests.unit.test_reconcile import World

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "charts" / "gpufleet" / "files" / "alerts.yaml"
DASHBOARD = ROOT / "charts" / "gpufleet" / "files" / "dashboards" / "gpufleet.json"
# Exported by the vLLM pods and dcgm-exporter (REFERENCE.md "Metric names"), not by the operator.
FOREIGN = {
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:time_to_first_token_seconds_bucket",
    "DCGM_FI_DEV_GPU_UTIL",
    # vLLM's OpenAI server (prometheus-fastapi-instrumentator's defaults in vLLM 0.34.0)
    "http_requests_total",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:generation_tokens_total",
}
MD = ("namespace", "name")
# name -> (type, label names): what the alerts, the dashboard and the runbooks were written against.
INTERFACE = {
    "gpufleet_reconciles": ("counter", ("result",)),
    "gpufleet_reconcile_duration_seconds": ("histogram", ()),
    "gpufleet_kube_requests": ("counter", ("verb", "resource")),
    "gpufleet_events_dropped": ("counter", ("reason",)),
    "gpufleet_event_queue_depth": ("gauge", ()),
    "gpufleet_object_writes": ("counter", ("kind", "action")),
    "gpufleet_autoscaler_decisions": ("counter", ("reason",)),
    "gpufleet_model_deployments": ("gauge", ()),
    "gpufleet_work_queue_depth": ("gauge", ()),
    "gpufleet_leader": ("gauge", ()),
    "gpufleet_condition": ("gauge", (*MD, "type")),
    "gpufleet_placement_replicas": ("gauge", (*MD, "zone", "capacity_type", "state")),
    "gpufleet_unschedulable_replicas": ("gauge", MD),
    "gpufleet_rollout_phase": ("gauge", (*MD, "phase")),
    "gpufleet_rollout_step": ("gauge", MD),
    "gpufleet_rollout_weight_percent": ("gauge", MD),
    "gpufleet_model_slo_seconds": ("gauge", (*MD, "signal")),
    "gpufleet_autoscaler_signal_age_seconds": ("gauge", MD),
    "gpufleet_autoscaler_sweep_duration_seconds": ("histogram", ()),
    "gpufleet_estimated_cost_per_hour": ("gauge", MD),
    "gpufleet_on_demand_equivalent_cost_per_hour": ("gauge", MD),
    "gpufleet_interruption_events": ("counter", ("source", "type", "outcome")),
    "gpufleet_replacements": ("counter", (*MD, "reason")),
    "gpufleet_interruption_queue_up": ("gauge", ()),
    "gpufleet_interruption_queue_last_success_timestamp_seconds": ("gauge", ()),
    "gpufleet_interruption_queue_errors": ("counter", ()),
}
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def _families() -> dict[str, tuple[str, tuple[str, ...]]]:
    found = {}
    for family in REGISTRY.collect():
        if family.name.startswith("gpufleet_"):
            collector = REGISTRY._names_to_collectors.get(family.name) or REGISTRY._names_to_collectors.get(
                family.name + "_total"
            )
            labels = tuple(getattr(collector, "_labelnames", ()))
            found[family.name] = (family.type, labels)
    return found


def _exported_names() -> dict[str, tuple[str, ...]]:
    """Sample name -> label names, for every operator metric."""
    names = {}
    for family, (kind, labels) in _families().items():
        for suffix in SUFFIXES[kind]:
            names[family + suffix] = (*labels, "le") if suffix == "_bucket" else labels
    return names


def test_the_interface_metrics_exist_with_their_types_and_labels() -> None:
    families = _families()
    for name, expected in INTERFACE.items():
        assert families.get(name) == expected, f"{name}: {families.get(name)} != {expected}"


def test_a_model_deployments_series_are_exported_and_forgotten_with_it() -> None:
    metrics.CONDITION.labels(namespace="ml", name="m", type="Degraded").set(1)
    metrics.PLACEMENT_REPLICAS.labels(
        namespace="ml", name="m", zone="us-east-1a", capacity_type="spot", state="ready"
    ).set(2)
    metrics.COST_PER_HOUR.labels(namespace="ml", name="m").set(40.96)
    metrics.REPLACEMENTS.labels(namespace="ml", name="m", reason="Interruption").inc()
    metrics.ROLLOUT_PHASE.labels(namespace="ml", name="m", phase="Aborted").set(1)
    metrics.ROLLOUT_STEP.labels(namespace="ml", name="m").set(2)
    metrics.CONDITION.labels(namespace="ml", name="other", type="Ready").set(1)

    def samples() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = generate_latest(REGISTRY).decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    exported = samples()
    assert (
        exported[
            ("gpufleet_condition", frozenset({("namespace", "ml"), ("name", "m"), ("type", "Degraded")}))
        ]
        == 1
    )
    placement = {("namespace", "ml"), ("name", "m"), ("zone", "us-east-1a"), ("capacity_type", "spot")}
    assert exported[("gpufleet_placement_replicas", frozenset({*placement, ("state", "ready")}))] == 2
    assert (
        exported[("gpufleet_estimated_cost_per_hour", frozenset({("namespace", "ml"), ("name", "m")}))]
        == 40.96
    )

    metrics.forget_model_deployment("ml", "m")
    left = samples()
    assert not [key for key in left if ("name", "m") in key[1] and ("namespace", "ml") in key[1]]
    assert (
        "gpufleet_condition",
        frozenset({("namespace", "ml"), ("name", "other"), ("type", "Ready")}),
    ) in left
    metrics.forget_model_deployment("ml", "other")


_IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
}


def _selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names in its matchers) for every metric a PromQL expression reads."""
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", "x", expr)  # Grafana variables
    found: list[tuple[str, set[str]]] = []

    def matcher(match: re.Match[str]) -> str:
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", re.sub(r'"[^"]*"', '""', match.group(2))))
        found.append((match.group(1), labels))
        return " "

    expr = re.sub(rf"({_IDENT})\s*\{{([^}}]*)\}}", matcher, expr)
    expr = re.sub(r'"[^"]*"', " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    for match in re.finditer(rf"(?<![\w:.])({_IDENT})(\s*\()?", expr):
        name, call = match.group(1), match.group(2)
        if not call and name not in _KEYWORDS and not re.fullmatch(r"[0-9.e+-]+|Inf|NaN", name):
            found.append((name, set()))
    return found


def _expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = dashboard["templating"]["list"]
    exprs += [
        (v["name"], re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", v["query"]["query"]))
        for v in variables
        if v["type"] == "query"
    ]
    return exprs


def test_the_selector_parser_sees_every_metric_and_matcher() -> None:
    parsed = _selectors(
        'sum by (zone) (rate(a_total{x="1", y=~"$v"}[5m])) / on (instance) b == 1 and c{z!="}"}'
    )
    assert parsed == [("a_total", {"x", "y"}), ("c", {"z"}), ("b", set())]


@pytest.mark.parametrize(("where", "expr"), _expressions(), ids=[w for w, _ in _expressions()])
def test_alerts_and_dashboard_read_only_exported_metrics_and_labels(where: str, expr: str) -> None:
    exported = _exported_names()
    selectors = _selectors(expr)
    assert selectors, f"{where}: no metric found in {expr!r}"
    for name, labels in selectors:
        if name in FOREIGN:
            continue
        assert name in exported, f"{where}: {name} is neither an operator metric nor a vLLM/DCGM one"
        assert labels <= set(exported[name]), (
            f"{where}: {name} has no label(s) {labels - set(exported[name])}"
        )


def test_the_rollout_gauges_follow_status_and_go_with_the_rollout() -> None:
    rollout = RolloutStatus(revision=2, step=1, steps=2, phase="Paused", target_weight=10, weight=33)
    metrics.export_status(("ml", "r"), ModelDeploymentStatus(rollout=rollout), 0)
    text = generate_latest(REGISTRY).decode()
    assert 'gpufleet_rollout_phase{name="r",namespace="ml",phase="Paused"} 1.0' in text
    assert 'gpufleet_rollout_weight_percent{name="r",namespace="ml"} 33.0' in text
    metrics.export_status(("ml", "r"), ModelDeploymentStatus(), 0)
    text = generate_latest(REGISTRY).decode()
    assert 'name="r"' not in "".join(
        line for line in text.splitlines() if line.startswith("gpufleet_rollout")
    )
    metrics.forget_model_deployment("ml", "r")


def test_the_models_objective_is_exported_from_a_valid_spec_and_kept_through_an_invalid_one() -> None:
    def slo() -> str:
        text = generate_latest(REGISTRY).decode()
        return "".join(
            line for line in text.splitlines() if line.startswith('gpufleet_model_slo_seconds{name="llama')
        )

    body = sample(slo={"ttftP95Seconds": 1.5})
    metrics.record_reconcile(("ml", "llama-3-70b"), World().plan(body))
    assert 'gpufleet_model_slo_seconds{name="llama-3-70b",namespace="ml",signal="ttft_p95"} 1.5' in slo()
    invalid = sample(slo={"ttftP95Seconds": 1.5}, replicas=-1)
    metrics.record_reconcile(("ml", "llama-3-70b"), World().plan(invalid))
    assert "1.5" in slo()  # unknown, not gone: the alert keeps its objective
    metrics.record_reconcile(("ml", "llama-3-70b"), World().plan(sample()))
    assert slo() == ""
    metrics.forget_model_deployment("ml", "llama-3-70b")
