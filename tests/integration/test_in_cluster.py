"""The operator with a pod's credentials and nothing else, as the chart runs it: no kubeconfig, a service
account token and the cluster's CA under /var/run/secrets/kubernetes.io/serviceaccount (a private mount
namespace gives the process its own /run), KUBERNETES_SERVICE_HOST/PORT. Its own requests (adapters.kube_http)
and kopf's watch (the on.login handler) must both work for a ModelDeployment to get its Deployments."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetsim.in_cluster import PodCredentials, pod_credentials
from fleetsim.local import free_port
from tests.conftest import ROOT, Cluster, wait_until
from tests.e2e.scrape import metric

pytestmark = pytest.mark.integration


def _pod_files(cluster: Cluster, namespace: str, folder: Path) -> PodCredentials:
    """A service account bound to cluster-admin, its token and the CA in `folder`."""
    name = f"op-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "serviceaccount", name, "-n", namespace)
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        name,
        "--clusterrole=cluster-admin",
        f"--serviceaccount={namespace}:{name}",
    )
    cluster.kubectl("label", "clusterrolebinding", name, "gpufleet-test=in-cluster")
    return pod_credentials(cluster, namespace, name, folder, duration="1h")


@pytest.fixture
def in_cluster_operator(
    crd: Cluster, namespace: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to give the operator a pod's /run", pytrace=False)
    cluster = crd
    credentials = _pod_files(cluster, namespace, tmp_path / "account")
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    metrics_port = free_port()
    env.update(
        credentials.env(),
        HOME=str(tmp_path),  # no ~/.kube/config to fall back on
        GPUFLEET_NAMESPACES=f'["{namespace}"]',  # other tests' operators own the rest of the cluster
        GPUFLEET_HEALTH_PORT=str(free_port()),
        GPUFLEET_METRICS_PORT=str(metrics_port),
        GPUFLEET_SPOT_FAILOVER="false",
    )
    log = (tmp_path / "operator.log").open("wb")
    process = subprocess.Popen(
        credentials.command([sys.executable, "-m", "gpufleet", "run"]),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    yield process, metrics_port
    cluster.kubectl("delete", "clusterrolebinding", "-l", "gpufleet-test=in-cluster", check=False)
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def test_with_a_pods_credentials_the_operator_reconciles_and_kopf_watches(
    crd: Cluster,
    namespace: str,
    in_cluster_operator: tuple[subprocess.Popen[bytes], int],
    tmp_path: Path,
) -> None:
    process, metrics_port = in_cluster_operator
    log_file = tmp_path / "operator.log"

    def log() -> str:
        if process.poll() is not None:
            raise AssertionError(f"the operator exited:\n{log_file.read_text(errors='replace')[-3000:]}")
        return log_file.read_text(errors="replace")

    # kopf logged in through our handler (with kube_http's credentials), not a fallback of its own.
    wait_until(lambda: "Activity 'login' succeeded" in log(), timeout=60, interval=0.5, what="kopf's login")
    assert "login_via_client" not in log()
    doc: dict[str, Any] = yaml.safe_load((ROOT / "samples" / "llama-3-70b-a100-spot.yaml").read_text())
    doc["spec"]["autoscaling"]["enabled"] = False
    crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc))

    # Counted by this operator itself, which watches only this namespace: another operator sharing the
    # control plane (cluster-wide, from other tests) may reconcile the same object, but not in these counts.
    def reconciled_here() -> bool:
        log()
        applies = metric(metrics_port, "gpufleet_kube_requests_total", verb="apply", resource="deployments")
        reconciles = metric(metrics_port, "gpufleet_reconcile_duration_seconds_count")
        return applies >= 1 and reconciles >= 1

    wait_until(reconciled_here, timeout=60, interval=0.5, what="the in-cluster operator's own reconcile")
