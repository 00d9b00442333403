"""What the simulator benchmarks share: logging, a fleet per trial in its own namespace, the trial loop
and the one way a benchmark reports that it could not produce a figure."""

from __future__ import annotations

import contextlib
import copy
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from fleetsim.background import BackgroundSimulation
from fleetsim.local import CRD_FILE, ControlPlane, control_plane
from fleetsim.sim import Simulation
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION

NAMESPACE_GONE_TIMEOUT = 180.0
CREATE_THREADS = 16  # a burst of clients creating objects at once

R = TypeVar("R")


class BenchError(Exception):
    """The benchmark could not produce a figure; the message says why."""


def log(message: str) -> None:
    # Progress goes to stderr so stdout holds only the figures.
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def wait_namespace_gone(core: client.CoreV1Api, name: str, timeout: float = NAMESPACE_GONE_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespace(name)
        except ApiException as error:
            if error.status == 404:
                return True
        time.sleep(0.5)
    return False


def install_crd(cp: ControlPlane, api: client.ApiClient) -> None:
    crd_name = f"{PLURAL}.{GROUP}"
    cp.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd_name}")
    # Established comes before the watch cache is filled: until then lists answer 429 "storage is
    # (re)initializing", and the operator's first watch would back off in the middle of the burst.
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + 60
    while True:
        try:
            custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1, _preload_content=False)
            return
        except ApiException as error:
            if error.status != 429 or time.monotonic() > deadline:
                raise BenchError(f"listing {crd_name} failed: {error.status} {error.reason}") from error
            time.sleep(0.5)


def numbered_model_deployment(template: dict[str, Any], index: int, namespace: str) -> dict[str, Any]:
    """A copy of a sample ModelDeployment named md-NNNN in `namespace`."""
    body = copy.deepcopy(template)
    body["metadata"] = {"name": f"md-{index:04d}", "namespace": namespace}
    # PyYAML reads YAML 1.1, where 70.6e9 (no sign in the exponent) is a string; kubectl reads a number.
    model = body["spec"]["model"]
    model["parameterCount"] = float(model["parameterCount"])
    return body


def create_all(create: Callable[[dict[str, Any]], object], bodies: Sequence[dict[str, Any]]) -> None:
    """Create every body from a thread pool, as a burst of clients would; fail on the first error."""
    with ThreadPoolExecutor(max_workers=CREATE_THREADS) as pool:
        futures = [pool.submit(create, body) for body in bodies]
        errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        first = errors[0]
        detail = f"{first.status} {first.reason}: {first.body}" if isinstance(first, ApiException) else first
        raise BenchError(f"{len(errors)} of {len(bodies)} creates failed; first: {detail}")


@contextlib.contextmanager
def fleet_in_namespace(
    core: client.CoreV1Api, simulation: Simulation, namespace: str, label: str
) -> Iterator[BackgroundSimulation]:
    """The simulation running in the background with `namespace` created; on the way out the namespace
    goes while the simulated kubelet still runs, so its pods terminate as on a cluster, and only then
    do the nodes go, so the next trial starts on a clean control plane."""
    background = BackgroundSimulation(simulation)
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        background.start()
        yield background
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespace(namespace)
        gone = wait_namespace_gone(core, namespace)
        background.stop()
        if not gone:
            log(f"{label}: namespace {namespace} still there after {NAMESPACE_GONE_TIMEOUT:.0f}s")


def require_operator_alive(simulation: Simulation, label: str) -> None:
    if not simulation.operator.alive():
        raise BenchError(f"{label}: the operator exited:\n{simulation.operator.log_tail()}")


def run_trials(
    bench: str,
    trials: Sequence[str],
    kubeconfig: Path | None,
    run_trial: Callable[[ControlPlane, client.CoreV1Api, str, Path], R],
    report: Callable[[R], list[str]],
    *,
    display: Callable[[str], str] = str,
) -> dict[str, R]:
    """Each trial in turn on one control plane (started here unless `kubeconfig` names one), its
    report printed as soon as it ends; `display` names a trial in the progress lines."""
    workdir = Path(tempfile.mkdtemp(prefix=f"gpufleet-bench-{bench}-"))
    log(f"work folder (operator, Prometheus and moto logs per trial): {workdir}")
    results: dict[str, R] = {}
    log("starting a control plane" if kubeconfig is None else f"reusing {kubeconfig}")
    with control_plane(kubeconfig, workdir / "cluster") as cp:
        core = client.CoreV1Api(config.new_client_from_config(config_file=str(cp.kubeconfig)))
        for trial in trials:
            started = time.monotonic()
            result = run_trial(cp, core, trial, workdir)
            results[trial] = result
            log(f"{display(trial)}: done in {time.monotonic() - started:.0f}s real")
            print("\n".join(report(result)), flush=True)
    return results


def or_failure(run: Callable[[], R]) -> R | None:
    """`run()`, or None after printing why the benchmark could not produce its figures."""
    try:
        return run()
    except ApiException as error:
        print(f"benchmark failed: API request: {error.status} {error.reason}: {error.body}", file=sys.stderr)
    except (BenchError, RuntimeError, TimeoutError, OSError, ValueError, subprocess.SubprocessError) as error:
        print(f"benchmark failed: {type(error).__name__}: {error}", file=sys.stderr)
    return None


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator; None when it has no finite value (a denominator of 0)."""
    if denominator == 0 or math.isinf(numerator) or math.isinf(denominator):
        return None
    return numerator / denominator


def number(value: float | None, digits: int) -> str:
    return "n/a" if value is None or math.isinf(value) else f"{value:.{digits}f}"


def spread(values: Sequence[float | None], digits: int) -> str:
    """` (min-max over N rounds)` of the finite values; "" for one round or none known."""
    known = [v for v in values if v is not None and not math.isinf(v)]
    if len(values) < 2 or not known:
        return ""
    rounds = f"{len(values)}" if len(known) == len(values) else f"{len(known)} of {len(values)}"
    return f" ({number(min(known), digits)}-{number(max(known), digits)} over {rounds} rounds)"


def operator_lines(
    name: str,
    reasons: Mapping[str, int],
    operator_errors: int,
    operator_log: Path,
    errors: int,
    failed: str = "observations",
) -> list[str]:
    """A trial's closing lines: the operator's Events by reason, its log's errors, and the benchmark's
    own failed calls (`failed` says what they were)."""
    lines = []
    if reasons:
        counted = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        lines.append(f"{name} operator Events by reason: {counted}")
    lines.append(f"{name} operator log: {operator_errors} ERROR/Traceback lines ({operator_log})")
    if errors:
        lines.append(f"{name} errors: {errors} {failed} failed (see stderr)")
    return lines
