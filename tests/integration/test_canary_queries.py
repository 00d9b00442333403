"""The canary analysis' Prometheus queries, run by a real Prometheus on vLLM's metric names.

A page plays two pods in the shape vLLM 0.34.0 exports (http_requests_total from
prometheus-fastapi-instrumentator, status grouped 5xx; the TTFT and inter-token latency histograms),
with the namespace and pod labels a PodMonitor gives; requests arrive while Prometheus scrapes it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from fleetsim.local import free_port
from fleetsim.prometheus import VLLM_TARGETS_FILE, PrometheusServer
from gpufleet.adapters.serving_metrics import PrometheusMetrics, canary_pod_figures
from gpufleet.planning.analysis import P95, histogram_quantile
from tests.conftest import wait_until
from tests.integration.metrics_pages import serve_text_format

pytestmark = pytest.mark.integration

NAMESPACE = "canary"
TTFT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5)


class TwoPods:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["namespace", "pod"]
        self.requests = Counter(
            "http_requests", "requests", [*labels, "handler", "method", "status"], registry=self.registry
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "ttft", labels, buckets=TTFT_BUCKETS, registry=self.registry
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "itl",
            labels,
            buckets=(0.01, 0.05, 0.1),
            registry=self.registry,
        )
        self.tokens = Counter("vllm:generation_tokens", "tokens", labels, registry=self.registry)

    def serve(self, pod: str, handler: str, status: str, ttft: float) -> None:
        self.requests.labels(NAMESPACE, pod, handler, "POST", status).inc()
        if status == "2xx" and handler.startswith("/v1/"):
            self.ttft.labels(NAMESPACE, pod).observe(ttft)
            self.itl.labels(NAMESPACE, pod).observe(0.03)
            self.tokens.labels(NAMESPACE, pod).inc(16)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusServer, TwoPods]]:
    pods = TwoPods()
    # Every series exists (at zero) before the first scrape, as a running vLLM's do.
    for pod in ("stable-0", "canary-0"):
        for status in ("2xx", "5xx"):
            pods.requests.labels(NAMESPACE, pod, "/v1/completions", "POST", status)
        pods.ttft.labels(NAMESPACE, pod)
        pods.itl.labels(NAMESPACE, pod)
        pods.tokens.labels(NAMESPACE, pod)
    pods.requests.labels(NAMESPACE, "canary-0", "/health", "GET", "2xx")
    port = free_port()
    page = serve_text_format(port, pods.registry)
    work: Path = tmp_path_factory.mktemp("prometheus-canary")
    (work / VLLM_TARGETS_FILE).write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {}}]))
    server = PrometheusServer(work, free_port(), scrape_interval_s=1.0)
    server.start()
    try:
        wait_until(
            lambda: len(server.query("http_requests_total")) == 5, timeout=30, interval=0.5, what="the series"
        )
        time.sleep(2.5)  # two scrapes at zero: increase() counts from them
        for _ in range(100):
            pods.serve("stable-0", "/v1/completions", "2xx", ttft=0.2)
        for i in range(100):
            pods.serve("canary-0", "/v1/completions", "5xx" if i % 5 == 0 else "2xx", ttft=0.8)
            pods.serve("canary-0", "/health", "2xx", ttft=0.0)  # not a completion: never counted
        served = 'sum(http_requests_total{handler="/v1/completions"})'
        wait_until(
            lambda: [float(s["value"][1]) for s in server.query(served)] == [200.0],
            timeout=30,
            interval=0.5,
            what="the requests scraped",
        )
        time.sleep(1.5)
        yield server, pods
    finally:
        server.stop()
        page.shutdown()


def test_each_pods_requests_errors_and_histograms_over_the_window(
    scraped: tuple[PrometheusServer, TwoPods],
) -> None:
    server, _ = scraped
    source = PrometheusMetrics(server.url)
    found = canary_pod_figures(source, NAMESPACE, ["stable-0", "canary-0", "gone-0"], window_seconds=120)
    assert set(found) == {"stable-0", "canary-0"}
    canary, stable = found["canary-0"], found["stable-0"]
    # increase() extrapolates a series that began inside the window to the window's end (up to 1.1
    # scrape intervals): with ~10 s of series and 1 s scrapes that stretched by a loaded machine, counts
    # come out up to about a third high. Both pods are one target, scraped together, so they stretch
    # alike, and shares do not stretch at all.
    assert 100 <= canary.requests <= 135
    assert 100 <= stable.requests <= 135
    assert canary.requests == pytest.approx(stable.requests, rel=0.01)
    assert canary.errors / canary.requests == pytest.approx(0.2, abs=0.01)
    assert stable.errors == 0
    assert canary.ttft is not None
    assert stable.ttft is not None
    assert set(canary.ttft) == {*TTFT_BUCKETS, math.inf}
    # 80 canary first tokens at 0.8 s: in (0.5, 1]; stable's 100 at 0.2 s: in (0.1, 0.25].
    canary_p95 = histogram_quantile(P95, canary.ttft)
    stable_p95 = histogram_quantile(P95, stable.ttft)
    assert canary_p95 is not None
    assert stable_p95 is not None
    assert 0.5 < canary_p95 <= 1.0
    assert 0.1 < stable_p95 <= 0.25
    assert canary.itl is not None


def test_each_pods_output_tokens_per_second_for_the_cost_per_token(
    scraped: tuple[PrometheusServer, TwoPods],
) -> None:
    server, _ = scraped
    sweep = PrometheusMetrics(server.url).sweep()
    rates = sweep.pod_values("generation_tokens", NAMESPACE, ["stable-0", "canary-0", "gone-0"])
    assert set(rates) == {"stable-0", "canary-0"}
    # 100 and 80 answered requests of 16 tokens each, within the query's 5-minute rate window.
    assert rates["stable-0"] > rates["canary-0"] > 0
    assert rates["stable-0"] / rates["canary-0"] == pytest.approx(100 / 80, rel=0.1)
    assert sweep.queries_made == 1  # one fleet-wide query, shared by every model of the sweep


def test_a_pod_without_series_is_absent_not_zero(scraped: tuple[PrometheusServer, TwoPods]) -> None:
    server, _ = scraped
    assert canary_pod_figures(PrometheusMetrics(server.url), NAMESPACE, ["gone-0"], window_seconds=60) == {}
