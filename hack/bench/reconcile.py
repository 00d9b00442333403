"""Reconcile benchmark: gpufleet against the built-in Deployment controller, same API server.

    python hack/bench/reconcile.py [--n 100 500] [--kubeconfig PATH]

For each N it creates N ModelDeployments at once and times the operator until
every one has status.observedGeneration == generation and its Deployments
exist; then it creates N plain Deployments and times kube-controller-manager
until every one is observed and has its ReplicaSet. It prints figures and never
asserts timings: this is a benchmark, not a test. See hack/bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from benchkit import CREATE_THREADS, BenchError, create_all, install_crd, log, numbered_model_deployment
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from fleetsim.local import CLUSTER_SCRIPT, ROOT, ControlPlane, control_plane
from fleetsim.local import OperatorProcess as LocalOperator
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION
from gpufleet.config import Settings
from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT

SAMPLE = ROOT / "samples" / "llama-3-70b-a100-spot.yaml"
CRD_NAME = f"{PLURAL}.{GROUP}"

THREADS = CREATE_THREADS
# The sample at 2 replicas plans one on-demand and one spot group: two Deployments.
DEPLOYMENTS_PER_MD = 2
POLL_SECONDS = 0.5
CONVERGE_TIMEOUT = 15 * 60
PROGRESS_EVERY = 10.0
NAMESPACE_GONE_TIMEOUT = 180
OPERATOR_READY_TIMEOUT = 60
REFERENCE_IMAGE = "registry.k8s.io/pause:3.10"

# Published figures of other systems (/work/shared/REFERENCE.md), printed for context only.
ANCHORS = (
    "controller-runtime, shipwright build #649: 1150 objects in 22 s with 10 workers and QPS 100 (≈ 52/s)",
    "controller-runtime, NVSentinel #1512: ≈ 230 reconciles/s, P99 9-10 ms",
)

Samples = dict[str, list[tuple[dict[str, str], float]]]


def api_client(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    # One pooled connection per creating thread; urllib3 otherwise discards and reopens them.
    configuration.connection_pool_maxsize = THREADS
    return client.ApiClient(configuration)


# --- Prometheus text -----------------------------------------------------------------------------


def scrape(url: str, token: str | None = None) -> Samples:
    request = urllib.request.Request(url)
    context = None
    if token:
        request.add_header("Authorization", f"Bearer {token}")
        # The controller-manager serves a self-signed certificate on loopback.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def total(samples: Samples, metric: str, **labels: str) -> float:
    """Sum of a metric over every label set that includes `labels`."""
    return sum(
        value
        for sample_labels, value in samples.get(metric, [])
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )


def delta(before: Samples, after: Samples, metric: str, **labels: str) -> float:
    return total(after, metric, **labels) - total(before, metric, **labels)


# Requests to the API server that, in this benchmark, only gpufleet's reconciles make: server-side
# applies of what it owns, ModelDeployment status patches and namespaced lists of Deployments and Pods
# (controllers list cluster-wide through informers; the benchmark's own polls are cluster-scoped).
# Events are left out: the controller-manager and the scheduler post them too.
OPERATOR_ONLY_REQUESTS = (
    {"verb": "APPLY", "group": "apps", "resource": "deployments"},
    {"verb": "APPLY", "group": "", "resource": "services"},
    {"verb": "APPLY", "group": "policy", "resource": "poddisruptionbudgets"},
    {"verb": "PATCH", "group": GROUP, "resource": PLURAL, "subresource": "status"},
    {"verb": "LIST", "group": "apps", "resource": "deployments", "scope": "namespace"},
    {"verb": "LIST", "group": "", "resource": "pods", "scope": "namespace"},
)


def apiserver_metrics(api: client.ApiClient) -> Samples:
    response = api.call_api(
        "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True
    )
    samples: Samples = {}
    for family in text_string_to_metric_families(response.data.decode()):
        if family.name == "apiserver_request":  # the parser drops _total from counter families
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def operator_requests_seen(before: Samples, after: Samples) -> float:
    return sum(delta(before, after, "apiserver_request_total", **labels) for labels in OPERATOR_ONLY_REQUESTS)


def histogram_quantile(q: float, before: Samples, after: Samples, name: str) -> float | None:
    """Quantile of the observations made between two scrapes, interpolated inside buckets as PromQL does."""
    counts: dict[float, float] = {}
    for labels, value in after.get(f"{name}_bucket", []):
        counts[float(labels["le"])] = value
    for labels, value in before.get(f"{name}_bucket", []):
        counts[float(labels["le"])] -= value
    bounds = sorted(counts)
    if not bounds or counts[bounds[-1]] <= 0:
        return None
    rank = q * counts[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if counts[bound] >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bucket: its bound is all we know
            inside = counts[bound] - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, counts[bound]
    return lower


# --- the operator under test ---------------------------------------------------------------------


class Operator(LocalOperator):
    """The operator with the figures the benchmark reads: /metrics, errors in its log, peak RSS."""

    def __init__(self, kubeconfig: Path, workdir: Path) -> None:
        # A resync during the run would add reconciles that no event asked for.
        super().__init__(
            kubeconfig, workdir, {"GPUFLEET_WEBHOOK_ENABLED": "false", "GPUFLEET_RESYNC_SECONDS": "600"}
        )

    def start(self, timeout: float = OPERATOR_READY_TIMEOUT) -> None:
        try:
            super().start(timeout)
        except RuntimeError as error:
            raise BenchError(str(error)) from error

    def check_alive(self) -> None:
        if not self.alive():
            code = None if self.process is None else self.process.returncode
            raise BenchError(f"the operator exited (code {code}); last lines of its log:\n{self.log_tail()}")

    def error_lines(self) -> int:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return sum(1 for line in text.splitlines() if "ERROR" in line or line.startswith("Traceback"))

    def metrics(self) -> Samples:
        self.check_alive()
        try:
            return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")
        except OSError as error:
            raise BenchError(f"reading the operator's /metrics failed: {error}\n{self.log_tail()}") from error

    def peak_rss_mib(self) -> float | None:
        """VmHWM: the resident set's high-water mark over the process's life."""
        if self.process is None:
            return None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
        return None


# --- objects and namespaces ----------------------------------------------------------------------


def model_deployment(template: dict[str, Any], index: int, namespace: str) -> dict[str, Any]:
    body = numbered_model_deployment(template, index, namespace)
    body["spec"]["replicas"] = 2
    # Autoscaling would make replicas depend on metrics; the benchmark wants a fixed plan.
    body["spec"].setdefault("autoscaling", {})["enabled"] = False
    return body


def plain_deployment(index: int, namespace: str) -> dict[str, Any]:
    labels = {"app": f"ref-{index:04d}"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"ref-{index:04d}", "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "pause", "image": REFERENCE_IMAGE}]},
            },
        },
    }


class Namespaces:
    """A fresh namespace per phase, deleted without waiting; `settle` waits before the next phase.

    Waiting there, not at deletion, keeps an earlier phase's garbage collection
    (hundreds of Deployments, ReplicaSets and pods) from loading the next one.
    """

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.deleted: list[str] = []

    @contextmanager
    def fresh(self, prefix: str) -> Iterator[str]:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace({"metadata": {"name": name}})
        try:
            yield name
        finally:
            try:
                self.core.delete_namespace(name)
                self.deleted.append(name)
            except ApiException as error:
                log(f"could not delete namespace {name}: {error.status} {error.reason}")

    def settle(self) -> None:
        deadline = time.monotonic() + NAMESPACE_GONE_TIMEOUT
        while self.deleted and time.monotonic() < deadline:
            self.deleted = [name for name in self.deleted if self._exists(name)]
            if self.deleted:
                time.sleep(POLL_SECONDS)
        if self.deleted:
            log(f"namespaces still terminating after {NAMESPACE_GONE_TIMEOUT}s: {self.deleted}; going on")
            self.deleted = []

    def _exists(self, name: str) -> bool:
        try:
            self.core.read_namespace(name, _preload_content=False)
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            raise


# --- convergence ---------------------------------------------------------------------------------


def wait_converged(
    what: str, progress: Callable[[], tuple[bool, str]], started: float, check: Callable[[], None]
) -> float:
    """Poll until `progress` says done; returns seconds since `started`."""
    next_report = time.monotonic() + PROGRESS_EVERY
    while True:
        check()
        done, state = progress()
        now = time.monotonic()
        if done:
            return now - started
        if now - started > CONVERGE_TIMEOUT:
            raise BenchError(f"{what} did not converge within {CONVERGE_TIMEOUT}s: {state}")
        if now >= next_report:
            log(f"{what}: {now - started:.0f}s, {state}")
            next_report = now + PROGRESS_EVERY
        time.sleep(POLL_SECONDS)


def items(response: Any) -> list[dict[str, Any]]:
    """Items of a list fetched with _preload_content=False: raw JSON, no client model classes to build."""
    result: list[dict[str, Any]] = json.loads(response.data)["items"]
    return result


def observed(objects: Iterable[dict[str, Any]]) -> int:
    return sum(
        1
        for obj in objects
        if (obj.get("status") or {}).get("observedGeneration") == obj["metadata"].get("generation")
    )


def ours_progress(api: client.ApiClient, namespace: str, n: int) -> tuple[bool, str]:
    custom = client.CustomObjectsApi(api)
    done = observed(
        items(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _preload_content=False))
    )
    if done < n:
        # Status is written after the Deployments are applied: listing them earlier adds load, not news.
        return False, f"{done}/{n} ModelDeployments observed"
    # Cluster-scoped with a namespace field selector, so the API server's count of namespaced
    # Deployment lists stays the operator's alone (see OPERATOR_ONLY_REQUESTS).
    made = len(
        items(
            client.AppsV1Api(api).list_deployment_for_all_namespaces(
                field_selector=f"metadata.namespace={namespace}",
                label_selector=LABEL_MODEL_DEPLOYMENT,
                _preload_content=False,
            )
        )
    )
    want = DEPLOYMENTS_PER_MD * n
    return made == want, f"{done}/{n} ModelDeployments observed, {made}/{want} Deployments"


def reference_progress(api: client.ApiClient, namespace: str, n: int) -> tuple[bool, str]:
    apps = client.AppsV1Api(api)
    done = observed(items(apps.list_namespaced_deployment(namespace, _preload_content=False)))
    if done < n:
        # The controller records observedGeneration after it has made the ReplicaSet.
        return False, f"{done}/{n} Deployments observed"
    made = len(items(apps.list_namespaced_replica_set(namespace, _preload_content=False)))
    return made == n, f"{done}/{n} Deployments observed, {made}/{n} ReplicaSets"


# --- the two measurements ------------------------------------------------------------------------


@dataclass
class OursResult:
    create_seconds: float
    seconds: float
    reconciles: dict[str, float]
    requests: float
    requests_seen: float  # by the API server; see OPERATOR_ONLY_REQUESTS
    p50: float | None
    p99: float | None
    peak_rss_mib: float | None
    error_lines: int
    log_file: Path


@dataclass
class ReferenceResult:
    create_seconds: float
    seconds: float
    # From the controller-manager's metrics, when it is reachable: deployment workqueue items processed,
    # API requests of all its controllers, and their summed wait in client-side rate limiters.
    syncs: float | None = None
    requests: float | None = None
    throttled_seconds: float | None = None


@dataclass(frozen=True)
class Figures:
    n: int
    ours: OursResult
    reference: ReferenceResult
    # The same controller with its client-side rate limit lifted and our worker count (None when the
    # benchmark reuses a control plane it cannot restart).
    unthrottled: ReferenceResult | None = None


def bench_ours(
    cp: ControlPlane, api: client.ApiClient, namespaces: Namespaces, n: int, workdir: Path
) -> OursResult:
    template = yaml.safe_load(SAMPLE.read_text())
    custom = client.CustomObjectsApi(api)
    operator = Operator(cp.kubeconfig, workdir / f"operator-n{n}")
    with namespaces.fresh(f"bench-md-{n}") as namespace:
        try:
            operator.start()
            bodies = [model_deployment(template, i, namespace) for i in range(n)]
            before, server_before = operator.metrics(), apiserver_metrics(api)
            log(f"ours, N={n}: creating {n} ModelDeployments in {namespace}")
            started = time.monotonic()
            create_all(
                lambda b: custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, b, _preload_content=False
                ),
                bodies,
            )
            created = time.monotonic() - started
            seconds = wait_converged(
                f"ours, N={n}", lambda: ours_progress(api, namespace, n), started, operator.check_alive
            )
            after, server_after = operator.metrics(), apiserver_metrics(api)
            return OursResult(
                create_seconds=created,
                seconds=seconds,
                reconciles={
                    result: delta(before, after, "gpufleet_reconciles_total", result=result)
                    for result in ("ok", "invalid", "error")
                },
                requests=delta(before, after, "gpufleet_kube_requests_total"),
                requests_seen=operator_requests_seen(server_before, server_after),
                p50=histogram_quantile(0.5, before, after, "gpufleet_reconcile_duration_seconds"),
                p99=histogram_quantile(0.99, before, after, "gpufleet_reconcile_duration_seconds"),
                peak_rss_mib=operator.peak_rss_mib(),
                error_lines=operator.error_lines(),
                log_file=operator.log,
            )
        finally:
            # Stopped before its namespace goes, so the deletion is not part of what it does.
            operator.stop()


def controller_manager_metrics(cp: ControlPlane) -> Samples | None:
    """kube-controller-manager's own metrics, when hack/cluster.sh started it (port and token known)."""
    if cp.state is None:
        return None
    try:
        ports = dict(
            line.split("=", 1) for line in (cp.state / "ports.env").read_text().splitlines() if "=" in line
        )
        token = (cp.state / "token").read_text().strip()
        return scrape(f"https://127.0.0.1:{ports['CONTROLLER_PORT']}/metrics", token)
    except (OSError, KeyError, ValueError) as error:
        log(f"controller-manager metrics unavailable: {error}")
        return None


def bench_reference(
    cp: ControlPlane, api: client.ApiClient, namespaces: Namespaces, n: int
) -> ReferenceResult:
    apps = client.AppsV1Api(api)
    with namespaces.fresh(f"bench-ref-{n}") as namespace:
        bodies = [plain_deployment(i, namespace) for i in range(n)]
        before = controller_manager_metrics(cp)
        log(f"reference, N={n}: creating {n} Deployments in {namespace}")
        started = time.monotonic()
        create_all(lambda b: apps.create_namespaced_deployment(namespace, b, _preload_content=False), bodies)
        created = time.monotonic() - started
        seconds = wait_converged(
            f"reference, N={n}", lambda: reference_progress(api, namespace, n), started, lambda: None
        )
        after = controller_manager_metrics(cp)
    result = ReferenceResult(create_seconds=created, seconds=seconds)
    if before is not None and after is not None:
        result.syncs = delta(before, after, "workqueue_work_duration_seconds_count", name="deployment")
        result.requests = delta(before, after, "rest_client_requests_total")
        result.throttled_seconds = delta(before, after, "rest_client_rate_limiter_duration_seconds_sum")
    return result


# --- report --------------------------------------------------------------------------------------


def ratio(ours: float, reference: float) -> str:
    return f"{ours / reference:.2f}x" if reference else "n/a"


def milliseconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f}ms"


def report_lines(figures: Figures) -> list[str]:
    n, ours, ref = figures.n, figures.ours, figures.reference
    reconciles = sum(ours.reconciles.values())
    by_result = ", ".join(f"{k}={v:.0f}" for k, v in ours.reconciles.items())
    rate = reconciles / ours.seconds
    lines = [
        f"N={n} create burst ({THREADS} threads, inside time-to-converge): "
        f"ours={ours.create_seconds:.2f}s reference={ref.create_seconds:.2f}s",
        f"N={n} time-to-converge: ours={ours.seconds:.2f}s reference={ref.seconds:.2f}s "
        f"ratio={ratio(ours.seconds, ref.seconds)}",
    ]
    if ref.syncs is None:
        lines.append(f"N={n} reconciles/s: ours={rate:.1f} ({reconciles:.0f} reconciles: {by_result})")
    else:
        ref_rate = ref.syncs / ref.seconds
        lines += [
            f"N={n} reconciles/s: ours={rate:.1f} reference={ref_rate:.1f} ratio={ratio(rate, ref_rate)} "
            "(reference: kube-controller-manager deployment workqueue syncs)",
            f"N={n} reconciles per object: ours={reconciles / n:.2f} reference={ref.syncs / n:.2f} "
            f"ratio={ratio(reconciles, ref.syncs)} (ours: {by_result})",
        ]
    if ref.requests is not None and ref.throttled_seconds is not None:
        lines.append(
            f"N={n} reference throttling: kube-controller-manager made {ref.requests:.0f} API requests "
            f"({ref.requests / ref.seconds:.1f}/s, all controllers) that waited {ref.throttled_seconds:.0f}s "
            "in total in its client-side rate limiters (--kube-api-qps 20, --kube-api-burst 30: defaults)"
        )
    fast = figures.unthrottled
    if fast is None:
        lines.append(f"N={n} unthrottled reference: not run (a reused control plane is not restarted)")
    else:
        lines.append(
            f"N={n} time-to-converge vs unthrottled reference ({' '.join(UNTHROTTLED_FLAGS)}): "
            f"ours={ours.seconds:.2f}s reference={fast.seconds:.2f}s "
            f"ratio={ratio(ours.seconds, fast.seconds)}"
        )
        if fast.throttled_seconds is not None and fast.syncs is not None:
            lines.append(
                f"N={n} unthrottled reference: {fast.syncs:.0f} deployment syncs, "
                f"{fast.throttled_seconds:.1f}s waited in client-side rate limiters"
            )
    rss = "n/a" if ours.peak_rss_mib is None else f"{ours.peak_rss_mib:.1f} MiB"
    lines += [
        f"N={n} API requests per ModelDeployment: ours={ours.requests / n:.1f} "
        "(gpufleet_kube_requests_total; kopf's ModelDeployment watch is not counted)",
        f"N={n} API requests per ModelDeployment, API server's count: ours={ours.requests_seen / n:.1f} "
        "(applies, status patches, namespaced lists; Events excluded)",
        f"N={n} reconcile duration: ours p50={milliseconds(ours.p50)} p99={milliseconds(ours.p99)} "
        "(interpolated from histogram buckets)",
        f"N={n} operator peak RSS: ours={rss} (VmHWM)",
        f"N={n} operator log: {ours.error_lines} ERROR/Traceback lines ({ours.log_file})",
    ]
    return lines


# kube-controller-manager on equal terms with the operator: no client-side throttling (defaults: QPS 20,
# burst 30) and as many Deployment workers as the operator has reconcile workers (default 5; ours 8).
UNTHROTTLED_FLAGS = (
    "--kube-api-qps=100000",
    "--kube-api-burst=100000",
    f"--concurrent-deployment-syncs={Settings().workers}",
)


def restart_controller_manager(cp: ControlPlane, *flags: str) -> None:
    assert cp.state is not None
    subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), "restart-controller-manager", str(cp.state), *flags],
        check=True,
        capture_output=True,
        timeout=180,
    )


def run(counts: Sequence[int], kubeconfig: Path | None) -> list[Figures]:
    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-bench-"))
    log(f"work folder (operator logs): {workdir}")
    results: list[Figures] = []
    log("starting a control plane" if kubeconfig is None else f"reusing {kubeconfig}")
    with control_plane(kubeconfig, workdir / "cluster") as cp:
        api = api_client(cp.kubeconfig)
        install_crd(cp, api)
        namespaces = Namespaces(api)
        for n in counts:
            namespaces.settle()
            ours = bench_ours(cp, api, namespaces, n, workdir)
            namespaces.settle()
            reference = bench_reference(cp, api, namespaces, n)
            unthrottled = None
            if cp.state is not None:
                log(f"restarting kube-controller-manager with {' '.join(UNTHROTTLED_FLAGS)}")
                restart_controller_manager(cp, *UNTHROTTLED_FLAGS)
                try:
                    namespaces.settle()
                    unthrottled = bench_reference(cp, api, namespaces, n)
                finally:
                    restart_controller_manager(cp)  # its defaults again, for the next N
            figures = Figures(n, ours, reference, unthrottled)
            results.append(figures)
            print("\n".join(report_lines(figures)), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, nargs="+", default=[100, 500], help="object counts (default 100 500)"
    )
    parser.add_argument("--kubeconfig", type=Path, help="reuse this control plane instead of starting one")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.n):
        parser.error("--n takes positive integers")
    try:
        results = run(args.n, args.kubeconfig)
    except ApiException as error:
        print(f"benchmark failed: API request: {error.status} {error.reason}: {error.body}", file=sys.stderr)
        return 1
    except (BenchError, RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    print("Published figures of other systems, for context only (not measured here):")
    for anchor in ANCHORS:
        print(f"  {anchor}")
    last = max(results, key=lambda f: f.n)
    ours, reference = last.ours.seconds, last.reference.seconds
    print(f"reconcile: ours={ours:.2f} reference={reference:.2f} ratio={ours / reference:.2f}")
    if last.unthrottled is not None:
        fast = last.unthrottled.seconds
        print(f"reconcile vs unthrottled: ours={ours:.2f} reference={fast:.2f} ratio={ours / fast:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
