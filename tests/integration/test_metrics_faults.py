"""The operator's Prometheus reader behind a TCP fault proxy (Toxiproxy) in front of a real Prometheus.

Slow answers, connections reset and Prometheus unreachable must each come back quickly as a reading
with an error, which the planner holds on (tests/unit/test_scaling.py; the operator-level story, with
partial and stale data, is tests/e2e/test_metrics_faults.py), never as an exception, a hang, or zeros.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge

from fleetsim.local import free_port
from fleetsim.prometheus import VLLM_TARGETS_FILE, PrometheusServer
from fleetsim.toxiproxy import ToxiproxyServer
from gpufleet.adapters.serving_metrics import ModelMetrics, PrometheusMetrics
from tests.conftest import record_fault_figure, wait_until
from tests.integration.metrics_pages import serve_text_format

pytestmark = pytest.mark.integration

NAMESPACE, MODEL = "metrics-faults", "llama"
TIMEOUT_SECONDS = 1.0


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping two replicas' vLLM gauges (served here with vLLM's metric names)."""
    labels = ["model_name"]
    gauges = {
        "vllm:num_requests_waiting": 3.0,
        "vllm:num_requests_running": 5.0,
        "vllm:kv_cache_usage_perc": 0.4,
    }
    ports = [free_port(), free_port()]
    servers = []
    for port in ports:
        replica = CollectorRegistry()
        for name, value in gauges.items():
            Gauge(name, name, labels, registry=replica).labels(MODEL).set(value)
        servers.append(serve_text_format(port, replica))
    work: Path = tmp_path_factory.mktemp("prometheus")
    targets = [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": NAMESPACE, "pod": f"{MODEL}-{i}"}}
        for i, port in enumerate(ports)
    ]
    (work / VLLM_TARGETS_FILE).write_text(json.dumps(targets))
    server = PrometheusServer(work, free_port(), scrape_interval_s=1.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        for metrics_server in servers:
            metrics_server.shutdown()


def timed_read(reader: PrometheusMetrics) -> tuple[ModelMetrics, float]:
    began = time.monotonic()
    reading = reader.read(NAMESPACE, MODEL, [f"{MODEL}-0", f"{MODEL}-1"], mig=False, now=datetime.now(UTC))
    return reading, time.monotonic() - began


def test_slow_reset_and_unreachable_prometheus_read_as_errors_quickly_and_recover(
    prometheus: PrometheusServer, toxiproxy: ToxiproxyServer
) -> None:
    listen = toxiproxy.proxy("prometheus", f"127.0.0.1:{prometheus.port}")
    reader = PrometheusMetrics(f"http://127.0.0.1:{listen}", timeout_seconds=TIMEOUT_SECONDS)

    def complete() -> ModelMetrics | None:
        reading, _ = timed_read(reader)
        return reading if reading.reporting_replicas == 2 else None

    healthy = wait_until(complete, timeout=30, interval=0.5, what="both replicas' samples")
    assert (healthy.error, healthy.waiting, healthy.running) == (None, 6.0, 10.0)

    faults = {
        "slow (answers 3 s late)": [("slow-down", "latency", "downstream", {"latency": 3000})],
        "connections reset": [("resets", "reset_peer", "downstream", {"timeout": 0})],
    }
    took: dict[str, float] = {}
    for fault, toxics in [*faults.items(), ("unreachable", [])]:
        if toxics:
            for name, kind, stream, attributes in toxics:
                toxiproxy.add("prometheus", name, kind, stream, **attributes)
        else:
            toxiproxy.enable("prometheus", False)
        reading, took[fault] = timed_read(reader)
        assert reading.error is not None, fault
        assert (reading.waiting, reading.running, reading.reporting_replicas) == (None, None, None), fault
        if toxics:
            for name, *_ in toxics:
                toxiproxy.remove("prometheus", name)
        else:
            toxiproxy.enable("prometheus", True)
        recovered, _ = timed_read(reader)
        assert (recovered.error, recovered.running) == (None, 10.0), f"after {fault}"

    record_fault_figure(
        "Prometheus faults",
        "through Toxiproxy, query timeout 1 s: "
        + ", ".join(f"{fault} read as an error in {seconds:.1f}s" for fault, seconds in took.items())
        + "; read again at once after each",
    )
    # One timed-out attempt and one retry per reading, at most: an evaluation is never held up for long.
    assert max(took.values()) < 4 * TIMEOUT_SECONDS + 1
