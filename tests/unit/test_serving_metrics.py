"""The Prometheus adapter against a stub Prometheus HTTP API on loopback: queries, empty answers, errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from gpufleet.adapters.serving_metrics import MetricQueries, PrometheusMetrics

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SAMPLED = NOW - timedelta(seconds=12)
# Checked first: these wrap the same series as the signals below.
GUARDS = {"count(": "2", "timestamp(": str(SAMPLED.timestamp())}
ANSWERS = {
    "vllm:num_requests_waiting": "7",
    "vllm:num_requests_running": "24",
    "vllm:kv_cache_usage_perc": "0.62",
    "DCGM_FI_DEV_GPU_UTIL": "0.97",
}


class _Stub(BaseHTTPRequestHandler):
    queries: ClassVar[list[str]] = []
    timeouts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        params = parse_qs(urlparse(self.path).query)
        query = params.get("query", [""])[0]
        self.queries.append(query)
        self.timeouts.append(params.get("timeout", [""])[0])
        value = next((v for k, v in (GUARDS | ANSWERS).items() if k in query), None)
        result = [] if value is None else [{"metric": {}, "value": [1.0, value]}]
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
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_reads_every_signal_with_the_templated_queries(prometheus: str) -> None:
    metrics = PrometheusMetrics(prometheus).read("ml", "llama-3-70b", ["p-1", "p-2"], mig=False, now=NOW)
    assert (metrics.waiting, metrics.running, metrics.kv_cache_usage, metrics.gpu_utilization) == (
        7.0,
        24.0,
        0.62,
        0.97,
    )
    assert metrics.error is None
    # The oldest sample's own time, not the query's, and how many replicas report.
    assert (metrics.sampled_at, metrics.reporting_replicas) == (SAMPLED, 2)
    assert 'namespace="ml",model_name="llama-3-70b"' in _Stub.queries[0]
    assert 'pod=~"p-1|p-2"' in _Stub.queries[3]
    # Prometheus rejects "5.0s" ("cannot parse to a valid duration"): integer milliseconds it takes.
    assert set(_Stub.timeouts) == {"5000ms"}


def test_mig_uses_the_engine_activity_metric_which_is_absent_here(prometheus: str) -> None:
    metrics = PrometheusMetrics(prometheus).read("ml", "m", ["p"], mig=True, now=NOW)
    assert "DCGM_FI_PROF_GR_ENGINE_ACTIVE" in _Stub.queries[3]
    assert metrics.gpu_utilization is None  # no series is missing data, not an idle GPU
    assert metrics.waiting == 7.0


def test_custom_queries_for_other_label_names(prometheus: str) -> None:
    queries = MetricQueries(waiting='sum(vllm:num_requests_waiting{kubernetes_namespace="$namespace"})')
    PrometheusMetrics(prometheus, queries).read("ml", "m", [], mig=False, now=NOW)
    assert _Stub.queries[0] == 'sum(vllm:num_requests_waiting{kubernetes_namespace="ml"})'
    assert 'pod=~"^$"' in _Stub.queries[3]


def test_an_unreachable_prometheus_is_an_error_not_zero() -> None:
    metrics = PrometheusMetrics("http://127.0.0.1:9", timeout_seconds=1).read("ml", "m", ["p"], False, NOW)
    assert (metrics.waiting, metrics.running, metrics.kv_cache_usage, metrics.gpu_utilization) == (None,) * 4
    assert metrics.error is not None
    assert "127.0.0.1:9" in metrics.error


def test_the_connection_pool_holds_as_many_connections_as_evaluations_run_at_once() -> None:
    url = "http://127.0.0.1:9"
    # prometheus-api-client keeps 10; more evaluations at once would reconnect on every query.
    metrics = PrometheusMetrics(url, connections=24)
    assert metrics.session.get_adapter(url).poolmanager.connection_pool_kw["maxsize"] == 24


def test_a_model_name_cannot_leave_its_string_in_the_query(prometheus: str) -> None:
    # Stored before servedName was validated: read as one (odd) name, never as more PromQL.
    hostile = 'x"}) + sum(foo{namespace="other"}) #\\'
    PrometheusMetrics(prometheus).read("ml", hostile, ["p-1"], mig=False, now=NOW)
    assert _Stub.queries[0] == (
        'sum(vllm:num_requests_waiting{namespace="ml",'
        'model_name="x\\"}) + sum(foo{namespace=\\"other\\"}) #\\\\"})'
    )
