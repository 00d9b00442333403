"""Autoscaler sweep benchmark: one evaluation of N autoscaled ModelDeployments, fleet-wide queries against
per-model queries.

    python hack/bench/autoscale_sweep.py [--n 100 400] [--concurrency 8] [--sweeps 5] [--kubeconfig PATH]

Every GPUFLEET_AUTOSCALE_INTERVAL_SECONDS (15 s) the operator evaluates each
autoscaled ModelDeployment: it lists the model's pods, reads its signals from
Prometheus, decides, and writes only what changed. A sweep that outlasts the
interval delays every decision of every model.

This runs the operator's own sweep (gpufleet.runtime.autoscaler.evaluate_all
over the Autoscaler, its Kubernetes client and its Prometheus reader, built as
the operator builds them) against a real API server and a real Prometheus that
holds vLLM series for every model, two ways, alternating, on the same objects:

- ours:     the default queries, one per signal for every model (a sweep's reader
            asks each once);
- baseline: the same signals asked for each model on its own
            (serving_metrics.PER_MODEL_QUERIES, the defaults of the release before);

both with a pool of --concurrency threads (GPUFLEET_AUTOSCALE_CONCURRENCY). It
prints the median sweep time of each, the queries Prometheus answered per sweep
(its own counter), their ratios, and how many models fit in one 15 s interval.
It never asserts: this is a benchmark, not a test. See hack/bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import yaml
from benchkit import BenchError, create_all, install_crd, log, numbered_model_deployment, or_failure
from kubernetes import client

from fleetsim.local import ROOT, ControlPlane, control_plane, free_port
from fleetsim.prometheus import VLLM_TARGETS_FILE, PrometheusServer
from gpufleet.adapters.kube import RestKubeApi, load_api_client
from gpufleet.adapters.serving_metrics import PER_MODEL_QUERIES, MetricQueries, PrometheusMetrics
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION
from gpufleet.config import Settings
from gpufleet.runtime.autoscaler import Autoscaler, evaluate_all

SAMPLE = ROOT / "samples" / "llama-3-70b-a100-spot.yaml"
INTERVAL_S = 15.0  # GPUFLEET_AUTOSCALE_INTERVAL_SECONDS' default
SERIES_TIMEOUT_S = 90.0  # Prometheus applies new targets on a 5 s tick, then scrapes every second


# --- the vLLM series Prometheus scrapes -------------------------------------------------------------


class _Exposition(BaseHTTPRequestHandler):
    """One /metrics page with every model's vLLM gauges, as a PodMonitor would give Prometheus.

    Idle models (no requests, an empty KV cache): every evaluation holds, so a sweep does the same
    reads each time and writes nothing once the first sweep has recorded status.
    """

    page: ClassVar[bytes] = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: object) -> None:
        return


def exposition(namespace: str, models: Sequence[str]) -> bytes:
    lines = []
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
        lines.append(f"# TYPE {name} gauge")
        lines += [f'{name}{{namespace="{namespace}",model_name="{m}",pod="{m}-0"}} 0' for m in models]
    return ("\n".join(lines) + "\n").encode()


@contextmanager
def serving_series(namespace: str, models: Sequence[str], prometheus: PrometheusServer) -> Iterator[None]:
    _Exposition.page = exposition(namespace, models)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Exposition)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    targets = [{"targets": [f"127.0.0.1:{server.server_address[1]}"], "labels": {}}]
    staged = prometheus.workdir / f".{VLLM_TARGETS_FILE}.tmp"
    staged.write_text(json.dumps(targets))
    staged.replace(prometheus.workdir / VLLM_TARGETS_FILE)  # a rename: file_sd never reads half a file
    try:
        deadline = time.monotonic() + SERIES_TIMEOUT_S
        query = f'count(vllm:num_requests_waiting{{namespace="{namespace}"}})'
        while True:
            found = prometheus.query(query)
            if found and int(float(found[0]["value"][1])) == len(models):
                break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"Prometheus did not have {len(models)} models' series in {SERIES_TIMEOUT_S}s"
                )
            time.sleep(0.5)
        yield
    finally:
        server.shutdown()


# --- objects ----------------------------------------------------------------------------------------


def model_deployment(template: dict[str, Any], index: int, namespace: str) -> dict[str, Any]:
    body = numbered_model_deployment(template, index, namespace)
    body["spec"]["model"]["servedName"] = body["metadata"]["name"]  # each model its own series
    body["spec"]["autoscaling"]["enabled"] = True
    return body


def current_bodies(custom: client.CustomObjectsApi, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    """What the operator's watch would hold: every object as the API server has it now."""
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return {(namespace, item["metadata"]["name"]): item for item in items}


# --- sweeps -----------------------------------------------------------------------------------------


@dataclass
class Figures:
    n: int
    concurrency: int
    ours: list[float]
    baseline: list[float]
    failures: int  # evaluations that raised, over every timed sweep
    queries: dict[str, float] = field(default_factory=dict)  # Prometheus queries per sweep, by kind

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline)


def timed_sweep(
    autoscaler: Autoscaler, bodies: dict[tuple[str, str], dict[str, Any]], workers: int
) -> tuple[float, int]:
    """One sweep as the operator runs it: one reader for the sweep, `workers` evaluations at once."""

    async def sweep() -> tuple[float, int]:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="autoscaler") as executor:
            started = time.perf_counter()
            evaluate = functools.partial(autoscaler.evaluate, metrics=autoscaler.sweep_reader())
            results = await evaluate_all(bodies, evaluate, executor)
            elapsed = time.perf_counter() - started
        return elapsed, sum(1 for r in results.values() if isinstance(r, Exception))

    return asyncio.run(sweep())


def bench(cp: ControlPlane, prometheus: PrometheusServer, n: int, concurrency: int, sweeps: int) -> Figures:
    api = load_api_client(str(cp.kubeconfig), connections=concurrency + 4)
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    namespace = f"bench-sweep-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        template = yaml.safe_load(SAMPLE.read_text())
        create_all(
            lambda body: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body),
            [model_deployment(template, i, namespace) for i in range(n)],
        )
        models = [f"md-{i:04d}" for i in range(n)]
        with serving_series(namespace, models, prometheus):
            kinds = {
                kind: Autoscaler(
                    RestKubeApi(api),
                    PrometheusMetrics(prometheus.url, queries, connections=concurrency),
                    clock=lambda: datetime.now(UTC),
                    timings=Settings.defaults().scaling_timings(),
                )
                for kind, queries in (("ours", MetricQueries()), ("baseline", PER_MODEL_QUERIES))
            }
            # The first sweep records every model's status.autoscaler; later ones only read.
            warm, failed = timed_sweep(kinds["ours"], current_bodies(custom, namespace), concurrency)
            log(f"n={n}: first sweep (writes status) {warm:.2f}s, {failed} failed")
            figures = Figures(n, concurrency, [], [], 0)
            asked = dict.fromkeys(kinds, 0.0)
            for round_ in range(sweeps):
                # Alternate which goes first, so neither always meets a warmer cache.
                order = ["baseline", "ours"] if round_ % 2 == 0 else ["ours", "baseline"]
                for kind in order:
                    before = prometheus.queries_answered()
                    elapsed, failed = timed_sweep(kinds[kind], current_bodies(custom, namespace), concurrency)
                    asked[kind] += prometheus.queries_answered() - before
                    (figures.ours if kind == "ours" else figures.baseline).append(elapsed)
                    figures.failures += failed
            figures.queries = {kind: total / sweeps for kind, total in asked.items()}
            return figures
    finally:
        core.delete_namespace(namespace)


def report_lines(figures: Figures) -> list[str]:
    n, ours, baseline = figures.n, figures.ours_median, figures.baseline_median

    def rate(times: list[float]) -> str:
        median = statistics.median(times)
        return (
            f"sweep median {median:.2f}s (min {min(times):.2f}, max {max(times):.2f}; {len(times)} sweeps); "
            f"{median / n * 1000:.1f} ms per model; "
            f"fits {int(INTERVAL_S / median * n)} models in {INTERVAL_S:g}s"
        )

    queries = figures.queries
    return [
        f"n={n} ours (fleet-wide queries): {rate(figures.ours)}; "
        f"{queries['ours']:.0f} Prometheus queries a sweep",
        f"n={n} baseline (per-model queries): {rate(figures.baseline)}; "
        f"{queries['baseline']:.0f} Prometheus queries a sweep",
        f"n={n} ratio baseline/ours: time {baseline / ours:.2f}x, queries "
        f"{queries['baseline'] / max(queries['ours'], 1):.0f}x (both at concurrency {figures.concurrency}); "
        f"failed evaluations: {figures.failures}",
    ]


def run(counts: Sequence[int], concurrency: int, sweeps: int, kubeconfig: Path | None) -> list[Figures]:
    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-bench-sweep-"))
    log(f"work folder (Prometheus): {workdir}")
    results = []
    log("starting a control plane" if kubeconfig is None else f"reusing {kubeconfig}")
    with control_plane(kubeconfig, workdir / "cluster") as cp:
        install_crd(cp, load_api_client(str(cp.kubeconfig)))
        with PrometheusServer(workdir / "prometheus", free_port()) as prometheus:
            for n in counts:
                figures = bench(cp, prometheus, n, concurrency, sweeps)
                results.append(figures)
                print("\n".join(report_lines(figures)), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[100, 400], help="model counts (default 100 400)")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="threads of both (default 8, the setting's)"
    )
    parser.add_argument(
        "--sweeps", type=int, default=5, help="timed sweeps of each kind per count (default 5)"
    )
    parser.add_argument("--kubeconfig", type=Path, help="reuse this control plane instead of starting one")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.n) or args.concurrency < 1 or args.sweeps < 1:
        parser.error("--n, --concurrency and --sweeps take positive integers")
    results = or_failure(lambda: run(args.n, args.concurrency, args.sweeps, args.kubeconfig))
    if results is None:
        return 1
    last = max(results, key=lambda f: f.n)
    ours, baseline = last.ours_median, last.baseline_median
    print(f"autoscale_sweep: n={last.n} ours={ours:.2f} baseline={baseline:.2f} ratio={baseline / ours:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
