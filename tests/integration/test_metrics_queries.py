"""The autoscaler's Prometheus queries do not grow with the number of models: counted by a real Prometheus."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge

from fleetsim.local import free_port
from fleetsim.prometheus import VLLM_TARGETS_FILE, PrometheusServer
from gpufleet.adapters.serving_metrics import PER_MODEL_QUERIES, MetricQueries, PrometheusMetrics
from tests.conftest import wait_until
from tests.integration.metrics_pages import serve_text_format

pytestmark = pytest.mark.integration

NAMESPACE = "many-models"
MODELS = [f"model-{i:02d}" for i in range(40)]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping one page with two replicas of each of 40 models (each waiting i)."""
    registry = CollectorRegistry()
    labels = ["namespace", "model_name", "pod"]
    waiting = Gauge("vllm:num_requests_waiting", "waiting", labels, registry=registry)
    running = Gauge("vllm:num_requests_running", "running", labels, registry=registry)
    kv = Gauge("vllm:kv_cache_usage_perc", "kv", labels, registry=registry)
    for i, model in enumerate(MODELS):
        for replica in range(2):
            pod = f"{model}-{replica}"
            waiting.labels(NAMESPACE, model, pod).set(i)
            running.labels(NAMESPACE, model, pod).set(1)
            kv.labels(NAMESPACE, model, pod).set(0.5)
    port = free_port()
    page = serve_text_format(port, registry)
    work: Path = tmp_path_factory.mktemp("prometheus-many")
    (work / VLLM_TARGETS_FILE).write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {}}]))
    server = PrometheusServer(work, free_port(), scrape_interval_s=1.0)
    server.start()
    try:
        wait_until(
            lambda: len(server.query("vllm:num_requests_running")) == 2 * len(MODELS),
            timeout=30,
            interval=0.5,
            what="every replica's series",
        )
        yield server
    finally:
        server.stop()
        page.shutdown()


def sweep_queries(
    prometheus: PrometheusServer, queries: MetricQueries, models: list[str]
) -> tuple[float, list[float | None]]:
    """Prometheus queries one sweep over `models` costs, and each model's queue read."""
    sweep = PrometheusMetrics(prometheus.url, queries).sweep()
    before = prometheus.queries_answered()
    now = datetime.now(UTC)
    readings = [sweep.read(NAMESPACE, m, [f"{m}-0", f"{m}-1"], mig=False, now=now) for m in models]
    assert all(r.error is None for r in readings)
    return prometheus.queries_answered() - before, [r.waiting for r in readings]


def test_a_sweep_asks_prometheus_the_same_queries_for_forty_models_as_for_one(
    prometheus: PrometheusServer,
) -> None:
    one, _ = sweep_queries(prometheus, MetricQueries(), MODELS[:1])
    forty, waiting = sweep_queries(prometheus, MetricQueries(), MODELS)
    assert one == forty == 6  # waiting, running, KV cache, GPU, replicas reporting, oldest sample
    assert waiting == [2.0 * i for i in range(len(MODELS))]  # each model's own two replicas
    # The same readings asked model by model cost six queries each.
    per_model, same = sweep_queries(prometheus, PER_MODEL_QUERIES, MODELS)
    assert per_model == 6 * len(MODELS)
    assert same == waiting
