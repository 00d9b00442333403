"""The Prometheus adapter against a stub Prometheus HTTP API on loopback: fleet-wide queries split by
model, per-model templates, empty answers, errors."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from gpufleet.adapters.serving_metrics import (
    FleetAnswerError,
    MetricQueries,
    PrometheusMetrics,
    by_labels,
    model_value,
    per_model,
    setting,
)
from gpufleet.config import Settings

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SAMPLED = NOW - timedelta(seconds=12)
MODELS = [f"model-{i}" for i in range(50)]


def _model_series(value: float) -> list[dict[str, Any]]:
    """Every model of namespace ml, model-i answering value + i."""
    return [
        {"metric": {"namespace": "ml", "model_name": m}, "value": [1.0, str(value + i)]}
        for i, m in enumerate(MODELS)
    ]


def _pod_series() -> list[dict[str, Any]]:
    return [
        {"metric": {"namespace": "ml", "pod": f"{m}-{r}"}, "value": [1.0, str(0.5 + r / 10)]}
        for m in MODELS
        for r in range(2)
    ]


# Checked first: these wrap the same series as the signals below.
FLEET = {
    "count by": lambda: _model_series(2),
    "timestamp(": lambda: _model_series(SAMPLED.timestamp()),
    "vllm:num_requests_waiting": lambda: _model_series(7),
    "vllm:num_requests_running": lambda: _model_series(24),
    "vllm:kv_cache_usage_perc": lambda: _model_series(0.62),
    "DCGM_FI_DEV_GPU_UTIL": _pod_series,
}


class _Stub(BaseHTTPRequestHandler):
    queries: ClassVar[list[str]] = []
    timeouts: ClassVar[list[str]] = []
    unlabelled: ClassVar[bool] = False

    def do_GET(self) -> None:
        params = parse_qs(urlparse(self.path).query)
        query = params.get("query", [""])[0]
        self.queries.append(query)
        self.timeouts.append(params.get("timeout", [""])[0])
        answer = next((make for key, make in FLEET.items() if key in query), None)
        result = [] if answer is None else answer()
        if self.unlabelled or (result and "by (" not in query):  # an aggregate over everything: one series
            result = [{"metric": {}, "value": result[0]["value"]}] if result else []
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def prometheus() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    _Stub.queries = []
    _Stub.timeouts = []
    _Stub.unlabelled = False
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_each_model_is_read_from_one_fleet_wide_query_per_signal(prometheus: str) -> None:
    metrics = PrometheusMetrics(prometheus).read(
        "ml", "model-3", ["model-3-0", "model-3-1"], mig=False, now=NOW
    )
    assert (metrics.waiting, metrics.running, metrics.kv_cache_usage) == (10.0, 27.0, pytest.approx(3.62))
    assert metrics.gpu_utilization == pytest.approx(0.55)  # the mean of its two pods, 0.5 and 0.6
    assert metrics.error is None
    # The oldest sample's own time, not the query's, and how many replicas report.
    assert (metrics.sampled_at, metrics.reporting_replicas) == (SAMPLED + timedelta(seconds=3), 5)
    assert all("$" not in q and "model-3" not in q for q in _Stub.queries)
    # Prometheus rejects "5.0s" ("cannot parse to a valid duration"): integer milliseconds it takes.
    assert set(_Stub.timeouts) == {"5000ms"}


def test_a_sweep_asks_the_same_queries_for_fifty_models_as_for_one(prometheus: str) -> None:
    source = PrometheusMetrics(prometheus)
    one = source.sweep()
    one.read("ml", "model-0", ["model-0-0"], mig=False, now=NOW)
    for_one = len(_Stub.queries)
    _Stub.queries = []
    sweep = source.sweep()
    readings = [sweep.read("ml", m, [f"{m}-0", f"{m}-1"], mig=False, now=NOW) for m in MODELS]
    assert len(_Stub.queries) == for_one == sweep.queries_made == 6
    assert [r.waiting for r in readings] == [7.0 + i for i in range(len(MODELS))]


def test_threads_of_one_sweep_share_each_answer(prometheus: str) -> None:
    sweep = PrometheusMetrics(prometheus).sweep()
    threads = [
        threading.Thread(target=sweep.read, args=("ml", m, [f"{m}-0"], False, NOW)) for m in MODELS[:16]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(_Stub.queries) == 6


def test_a_model_without_series_reads_as_missing_not_zero(prometheus: str) -> None:
    metrics = PrometheusMetrics(prometheus).read("other", "model-1", ["model-1-0"], mig=False, now=NOW)
    assert (metrics.waiting, metrics.running, metrics.gpu_utilization, metrics.reporting_replicas) == (
        None,
    ) * 4
    assert (metrics.sampled_at, metrics.error) == (NOW, None)


def test_mig_uses_the_engine_activity_metric_which_is_absent_here(prometheus: str) -> None:
    metrics = PrometheusMetrics(prometheus).read("ml", "model-1", ["model-1-0"], mig=True, now=NOW)
    assert any("DCGM_FI_PROF_GR_ENGINE_ACTIVE" in q for q in _Stub.queries)
    assert metrics.gpu_utilization is None  # no series is missing data, not an idle GPU
    assert metrics.waiting == 8.0


def test_per_model_templates_are_still_run_for_each_model(prometheus: str) -> None:
    queries = MetricQueries(waiting='sum(vllm:num_requests_waiting{kubernetes_namespace="$namespace"})')
    metrics = PrometheusMetrics(prometheus, queries).read("ml", "m", [], mig=False, now=NOW)
    assert 'sum(vllm:num_requests_waiting{kubernetes_namespace="ml"})' in _Stub.queries
    assert metrics.waiting == 7.0
    pods = MetricQueries(gpu_utilization='avg(DCGM_FI_DEV_GPU_UTIL{pod=~"$pods"}) / 100')
    PrometheusMetrics(prometheus, pods).read("ml", "m", [], mig=False, now=NOW)
    assert 'avg(DCGM_FI_DEV_GPU_UTIL{pod=~"^$"}) / 100' in _Stub.queries


def test_a_fleet_wide_template_that_loses_the_labels_is_an_error_naming_the_setting(prometheus: str) -> None:
    _Stub.unlabelled = True
    metrics = PrometheusMetrics(prometheus).read("ml", "model-1", ["model-1-0"], mig=False, now=NOW)
    assert metrics.error is not None
    assert "GPUFLEET_QUERY_" in metrics.error
    assert "by (namespace, model_name)" in metrics.error
    assert metrics.waiting is None


def test_an_unreachable_prometheus_is_an_error_not_zero() -> None:
    metrics = PrometheusMetrics("http://127.0.0.1:9", timeout_seconds=1).read("ml", "m", ["p"], False, NOW)
    assert (metrics.waiting, metrics.running, metrics.kv_cache_usage, metrics.gpu_utilization) == (None,) * 4
    assert metrics.error is not None
    assert "127.0.0.1:9" in metrics.error


def test_a_failed_fleet_query_is_every_models_error_and_is_not_asked_again() -> None:
    sweep = PrometheusMetrics("http://127.0.0.1:9", timeout_seconds=1).sweep()
    first = sweep.read("ml", "a", ["p"], False, NOW)
    second = sweep.read("ml", "b", ["q"], False, NOW)
    assert first.error is not None
    assert second.error is not None
    assert sweep.queries_made == 1  # the first signal failed; the sweep does not ask it again


def test_the_connection_pool_holds_as_many_connections_as_evaluations_run_at_once() -> None:
    url = "http://127.0.0.1:9"
    # prometheus-api-client keeps 10; more evaluations at once would reconnect on every query.
    metrics = PrometheusMetrics(url, connections=24)
    assert metrics.session.get_adapter(url).poolmanager.connection_pool_kw["maxsize"] == 24


def test_a_model_name_cannot_leave_its_string_in_a_per_model_query(prometheus: str) -> None:
    # Stored before servedName was validated: read as one (odd) name, never as more PromQL.
    queries = MetricQueries(
        waiting='sum(vllm:num_requests_waiting{namespace="$namespace",model_name="$model"})'
    )
    hostile = 'x"}) + sum(foo{namespace="other"}) #\\'
    PrometheusMetrics(prometheus, queries).read("ml", hostile, ["p-1"], mig=False, now=NOW)
    assert _Stub.queries[2] == (
        'sum(vllm:num_requests_waiting{namespace="ml",'
        'model_name="x\\"}) + sum(foo{namespace=\\"other\\"}) #\\\\"})'
    )


def test_per_model_means_a_placeholder() -> None:
    assert per_model('sum(x{namespace="$namespace"})')
    assert per_model('avg(x{pod=~"$pods"})')
    assert not per_model(MetricQueries.waiting)
    assert not per_model(MetricQueries.gpu_utilization)


def test_answers_are_keyed_by_model_or_by_pod_and_a_pods_mean_is_over_those_present() -> None:
    answer = by_labels("gpu_utilization", [{"metric": {"namespace": "a", "pod": "p"}, "value": [0, "0.4"]}])
    assert answer == {("a", "p"): 0.4}
    assert model_value("gpu_utilization", answer, "a", "m", ["p", "gone"]) == 0.4
    assert model_value("gpu_utilization", answer, "a", "m", ["gone"]) is None
    keyed = by_labels("waiting", [{"metric": {"namespace": "a", "model_name": "m"}, "value": [0, "3"]}])
    assert model_value("waiting", keyed, "a", "m", []) == 3.0
    assert model_value("waiting", keyed, "b", "m", []) is None  # same model name, other namespace
    with pytest.raises(FleetAnswerError, match="GPUFLEET_QUERY_WAITING"):
        by_labels("waiting", [{"metric": {"model_name": "m"}, "value": [0, "3"]}])


def test_idle_gpus_without_a_pod_are_no_models_and_not_an_error() -> None:
    # dcgm-exporter labels a GPU with namespace and pod only while a pod holds it; `by (namespace, pod)`
    # puts the idle ones in one group without those labels.
    answer = by_labels(
        "gpu_utilization",
        [{"metric": {}, "value": [0, "0"]}, {"metric": {"namespace": "a", "pod": "p"}, "value": [0, "0.9"]}],
    )
    assert answer == {("a", "p"): 0.9}
    assert by_labels("gpu_utilization", [{"metric": {}, "value": [0, "0"]}]) == {}
    # A model signal with some series labelled reads those (a stray unlabelled series is no model's).
    mixed = [
        {"metric": {}, "value": [0, "1"]},
        {"metric": {"namespace": "a", "model_name": "m"}, "value": [0, "2"]},
    ]
    assert by_labels("waiting", mixed) == {("a", "m"): 2.0}


def test_the_setting_an_error_names_is_the_one_that_sets_the_query(monkeypatch: pytest.MonkeyPatch) -> None:
    for signal in (f.name for f in dataclasses.fields(MetricQueries)):
        monkeypatch.setenv(setting(signal), f"sum by (namespace, model_name) ({signal})")
        assert getattr(Settings().metric_queries(), signal) == f"sum by (namespace, model_name) ({signal})"
