"""Steady-state API requests: the operator with its watch caches against the same operator before them.

    python hack/bench/steady_reads.py [--n 100] [--window 60] [--resync 10] [--before REV]

On a control plane of its own, for each operator in turn: N ModelDeployments (the 70B sample, 2
replicas, autoscaling off) are created and converge; then for `--window` seconds nothing changes and
the resync (every `--resync` s) reconciles every model again. Counted in that window, per
ModelDeployment per minute:

- the API server's count of namespaced LISTs of pods and Deployments (apiserver_request_total, scope
  namespace; nothing else in this control plane lists them per namespace), and
- every request the operator made (its gpufleet_kube_requests_total; the caches' WATCHes included,
  the baseline's kopf watch streams not).

"ours" is this checkout; "baseline" is the code at `--before` (default: the last commit before the
caches), run from a temporary git worktree: the real previous operator, not a re-implementation.
Figures only, never assertions. See hack/bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from benchkit import BenchError, create_all, install_crd, log
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from reconcile import (
    SAMPLE,
    Namespaces,
    api_client,
    apiserver_metrics,
    delta,
    model_deployment,
    ours_progress,
    scrape,
    wait_converged,
)

from fleetsim.local import ROOT, control_plane
from fleetsim.local import OperatorProcess as LocalOperator
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION

# main before the watch caches (issue 16 item 1): reconciles listed pods and Deployments every pass.
BEFORE_CACHES = "4c7ad19dc46af435e067ac3f1b517405a84bfc6d"
REQUESTS = "gpufleet_kube_requests_total"
REPLICAS_PER_MODEL = 2  # reconcile.model_deployment's spec
# After the last status counts its pods, before the window opens: the last follow-up reconciles.
SETTLE_SECONDS = 10
LISTS = (
    {"verb": "LIST", "resource": "pods", "scope": "namespace"},
    {"verb": "LIST", "resource": "deployments", "scope": "namespace"},
)


@dataclass(frozen=True)
class Steady:
    label: str
    reconciles: float
    lists_seen: float  # namespaced pod and Deployment LISTs, the API server's count
    requests: float  # the operator's own count of its requests
    minutes: float
    n: int
    by_verb: dict[str, float]  # "verb resource" → requests (empty for an operator without the labels)

    def per_model_minute(self, value: float) -> float:
        return value / self.n / self.minutes


@dataclass(frozen=True)
class Bench:
    api: client.ApiClient
    kubeconfig: Path
    namespaces: Namespaces
    workdir: Path
    n: int
    window: float


def scrape_both(api: client.ApiClient, operator: LocalOperator) -> tuple[Any, Any]:
    return scrape(f"http://127.0.0.1:{operator.metrics_port}/metrics"), apiserver_metrics(api)


def measure(label: str, bench: Bench, env: dict[str, str]) -> Steady:
    api, namespaces, n, window = bench.api, bench.namespaces, bench.n, bench.window
    operator = LocalOperator(bench.kubeconfig, bench.workdir / label, env)
    template = yaml.safe_load(SAMPLE.read_text())
    custom = client.CustomObjectsApi(api)
    namespaces.settle()
    with namespaces.fresh(f"steady-{label}") as namespace:
        try:
            operator.start()
            log(f"{label}: creating {n} ModelDeployments in {namespace}")
            started = time.monotonic()
            create_all(
                lambda b: custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, b, _preload_content=False
                ),
                [model_deployment(template, i, namespace) for i in range(n)],
            )

            def alive() -> None:
                if not operator.alive():
                    raise BenchError(f"{label}: the operator exited:\n{operator.log_tail()}")

            wait_converged(label, lambda: ours_progress(api, namespace, n), started, alive)
            # Steady means the follow-ups of creation are over too: every pod exists and every status
            # counts them (the ReplicaSet controller creates 2N pods at its own pace).
            wait_converged(label, lambda: statuses_settled(api, namespace, n), started, alive)
            time.sleep(SETTLE_SECONDS)
            own_before, server_before = scrape_both(api, operator)
            opened = time.monotonic()
            log(f"{label}: converged; counting for {window:.0f}s")
            time.sleep(window)
            alive()
            own_after, server_after = scrape_both(api, operator)
            minutes = (time.monotonic() - opened) / 60
        finally:
            operator.stop()
    return Steady(
        label,
        reconciles=delta(own_before, own_after, "gpufleet_reconciles_total"),
        lists_seen=sum(delta(server_before, server_after, "apiserver_request_total", **k) for k in LISTS),
        requests=delta(own_before, own_after, "gpufleet_kube_requests_total"),
        minutes=minutes,
        n=n,
        by_verb=by_verb(own_before, own_after),
    )


def by_verb(before: Any, after: Any) -> dict[str, float]:
    labels = {
        (sample["verb"], sample["resource"])
        for sample, _ in after.get(REQUESTS, [])
        if "verb" in sample and "resource" in sample
    }
    counted = {
        f"{verb} {resource}": delta(before, after, REQUESTS, verb=verb, resource=resource)
        for verb, resource in sorted(labels)
    }
    return {k: v for k, v in counted.items() if v}


def statuses_settled(api: client.ApiClient, namespace: str, n: int) -> tuple[bool, str]:
    custom = client.CustomObjectsApi(api)
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _preload_content=False)
    counted = sum(
        1
        for md in json.loads(listed.data)["items"]
        if (md.get("status") or {}).get("replicas") == REPLICAS_PER_MODEL
    )
    return counted == n, f"{counted}/{n} ModelDeployments count their {REPLICAS_PER_MODEL} pods"


def worktree(revision: str, where: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), revision],
        check=True,
        capture_output=True,
    )
    return where


def ratio(ours: float, baseline: float) -> str:
    return f"{ours / baseline:.2f}x" if baseline else "n/a"


def report(ours: Steady, baseline: Steady, resync: float) -> list[str]:
    lines = []
    for what, field in (
        ("reconciles", "reconciles"),
        ("namespaced LISTs of pods and Deployments (API server's count)", "lists_seen"),
        ("API requests, all verbs (operator's count)", "requests"),
    ):
        mine = ours.per_model_minute(getattr(ours, field))
        theirs = baseline.per_model_minute(getattr(baseline, field))
        lines.append(
            f"N={ours.n} resync={resync:.0f}s per ModelDeployment per minute, {what}: "
            f"ours={mine:.2f} baseline={theirs:.2f} ratio={ratio(mine, theirs)}"
        )
    for steady in (ours, baseline):
        if steady.by_verb:
            parts = ", ".join(f"{k} {steady.per_model_minute(v):.3f}" for k, v in steady.by_verb.items())
            lines.append(f"N={ours.n} {steady.label}: per ModelDeployment per minute by verb: {parts}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100, help="ModelDeployments (default 100)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds counted at steady state")
    parser.add_argument("--resync", type=float, default=10.0, help="the operators' resync interval, s")
    parser.add_argument("--before", default=BEFORE_CACHES, help="the baseline's git revision")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-steady-"))
    log(f"work folder (operator logs): {workdir}")
    base_tree = workdir / "baseline-src"
    try:
        worktree(args.before, base_tree)
        with control_plane(None, workdir / "cluster") as cp:
            api = api_client(cp.kubeconfig)
            install_crd(cp, api)
            bench = Bench(api, cp.kubeconfig, Namespaces(api), workdir, args.n, args.window)
            common = {"GPUFLEET_WEBHOOK_ENABLED": "false", "GPUFLEET_RESYNC_SECONDS": str(args.resync)}
            ours = measure("ours", bench, common)
            # The baseline's package first on the path: `python -m gpufleet` then runs the old code.
            path = os.pathsep.join(filter(None, [str(base_tree / "operator"), os.environ.get("PYTHONPATH")]))
            baseline = measure("baseline", bench, {**common, "PYTHONPATH": path})
    except ApiException as error:
        print(f"benchmark failed: API request: {error.status} {error.reason}", file=sys.stderr)
        return 1
    except (BenchError, RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)],
            check=False,
            capture_output=True,
        )
    print(f"baseline: gpufleet at {args.before[:12]} (LIST per reconcile), run from a git worktree")
    print("\n".join(report(ours, baseline, args.resync)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
