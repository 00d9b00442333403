"""Shared test helpers and fixtures.

One real local control plane per test session (hack/cluster.sh), shared by the
integration and e2e tests; set GPUFLEET_KUBECONFIG to reuse a running one (for
example `hack/cluster.sh up` left running while iterating); it is then not stopped.
Tests wait on conditions with deadlines (`wait_until`), never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config

from fleetsim.cloud import ElasticMQServer, MotoServer
from fleetsim.local import CRD_FILE, ROOT, ControlPlane, control_plane, free_port
from fleetsim.local import OperatorProcess as LocalOperator
from fleetsim.pools import load_fleet, operator_prices
from fleetsim.sim import operator_cloud_env
from tests.chart.helm import run_installer

__all__ = ["ROOT", "Cluster", "OperatorProcess", "wait_until"]

T = TypeVar("T")

# The e2e simulator's fleet and time scale (tests/e2e/conftest.py): the session operator is set up for it.
E2E_FLEET = ROOT / "tests" / "e2e" / "fleet-us-west-2.yaml"
E2E_TIME_SCALE = 50
# Five minutes of spot notice rather than AWS's two: at 50x, two minutes are 2.4 s real, less than the
# real-time latencies (watch, reconcile, scheduling, the kubelet's poll) that no time scale shrinks.
# The operator is told the same notice, as it would be on a cloud with a longer one.
E2E_SPOT_NOTICE_SECONDS = 300


def wait_until(
    probe: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Call `probe` until it returns something truthy; fail with its last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


# The tests' Cluster is the shared local stack's ControlPlane (fleetsim.local).
Cluster = ControlPlane


# The real HPA in kube-controller-manager drives KEDA's ScaledObjects (tests/e2e/test_keda.py): it syncs every
# second instead of every 15 s, so that test stays short. No other test makes an HPA: nothing else notices.
HPA_SYNC_PERIOD_FLAG = "--horizontal-pod-autoscaler-sync-period=1s"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reuse = os.environ.get("GPUFLEET_KUBECONFIG")
    extra = f"{os.environ.get('GPUFLEET_CONTROLLER_MANAGER_EXTRA_ARGS', '')} {HPA_SYNC_PERIOD_FLAG}".strip()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("GPUFLEET_CONTROLLER_MANAGER_EXTRA_ARGS", extra)  # read by hack/cluster.sh up only
            started = control_plane(Path(reuse) if reuse else None, tmp_path_factory.mktemp("cluster"))
            plane = started.__enter__()
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield plane
    finally:
        started.__exit__(None, None, None)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test so tests cannot see each other's objects."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def crd_established(cluster: Cluster, name: str) -> bool:
    # A CRD just created can have no status yet, or `conditions: null`.
    status = cluster.get_json("crd", name).get("status") or {}
    return any(c["type"] == "Established" and c["status"] == "True" for c in status.get("conditions") or [])


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> Cluster:
    """The generated CRD, installed and Established."""
    cluster.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
    wait_until(
        lambda: crd_established(cluster, "modeldeployments.gpufleet.io"), timeout=30, what="CRD Established"
    )
    return cluster


GATEWAY_API_CRDS = [
    "gatewayclasses.gateway.networking.k8s.io",
    "gateways.gateway.networking.k8s.io",
    "httproutes.gateway.networking.k8s.io",
]


def install_crds(cluster: Cluster, script: str, names: list[str]) -> str:
    """Run a pinned hack/install-*-crds.sh, apply what it fetched and wait until the CRDs are
    Established; the folder of the CRD files."""
    try:
        folder = run_installer(ROOT / "hack" / script)
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    cluster.kubectl("apply", "--server-side", "-f", folder)
    wait_until(
        lambda: all(crd_established(cluster, name) for name in names),
        timeout=30,
        what=f"{', '.join(names)} Established",
    )
    return folder


@pytest.fixture(scope="session")
def gateway_api_crds(cluster: Cluster) -> Cluster:
    """The pinned Gateway API CRDs (hack/install-gateway-api-crds.sh), installed and Established on the
    session's control plane: the one the e2e `sim` fixture runs on too, so e2e tests ask for both."""
    install_crds(cluster, "install-gateway-api-crds.sh", GATEWAY_API_CRDS)
    return cluster


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


class OperatorProcess(LocalOperator):
    """The operator against the test control plane, with its webhook on loopback and short timers."""

    def __init__(self, cluster: Cluster, workdir: Path) -> None:
        prometheus_port = free_port()
        moto_port = free_port()
        e2e_fleet = load_fleet(E2E_FLEET)
        super().__init__(
            cluster.kubeconfig,
            workdir,
            {
                "GPUFLEET_UNSCHEDULABLE_AFTER_SECONDS": "5",
                "GPUFLEET_WEBHOOK_ENABLED": "true",
                "GPUFLEET_WEBHOOK_PORT": str(free_port()),
                "GPUFLEET_WEBHOOK_HOST": "127.0.0.1",
                "GPUFLEET_WEBHOOK_LISTEN_ADDRESS": "127.0.0.1",
                "GPUFLEET_WEBHOOK_CERT_DIR": str(workdir / "webhook-certs"),
                # The e2e simulator's Prometheus will listen here; until it does, autoscaling holds.
                "GPUFLEET_PROMETHEUS_URL": f"http://127.0.0.1:{prometheus_port}",
                "GPUFLEET_AUTOSCALE_INTERVAL_SECONDS": "2",
                # Scrapes come every second here (90 s is three 30 s DCGM intervals in a cluster).
                "GPUFLEET_AUTOSCALE_STALE_AFTER_SECONDS": "8",
                # ... and its moto server here: the operator reads its interruption queue.
                **operator_cloud_env(
                    f"http://127.0.0.1:{moto_port}", e2e_fleet.region, E2E_TIME_SCALE, E2E_SPOT_NOTICE_SECONDS
                ),
                "GPUFLEET_PRICES": json.dumps(operator_prices(e2e_fleet.pools)),
                # 500 simulated seconds rather than 300: pods the integration tests leave pending on
                # purpose (fake nodes without room) are checked at GPUFLEET_UNSCHEDULABLE_AFTER_SECONDS
                # (5 s), well before the operator would move them to another zone.
                "GPUFLEET_SPOT_FALLBACK_AFTER_SECONDS": "10",
            },
        )
        self.cluster = cluster
        self.prometheus_port = prometheus_port
        self.moto_port = moto_port

    def start(self, timeout: float = 60.0) -> None:
        super().start(timeout)

        def webhook_registered() -> bool:
            result = self.cluster.kubectl("get", "validatingwebhookconfiguration", "gpufleet.io", check=False)
            return result.returncode == 0

        wait_until(webhook_registered, timeout=30, what="ValidatingWebhookConfiguration gpufleet.io")


@pytest.fixture(scope="session")
def operator(crd: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    process = OperatorProcess(crd, tmp_path_factory.mktemp("operator"))
    process.start()
    yield process
    process.stop()
    # A webhook left behind that points at a dead port would block every later ModelDeployment write.
    crd.kubectl("delete", "validatingwebhookconfiguration", "gpufleet.io", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """The adapters read credentials from boto3's default chain only: give it dummy ones, nothing else."""
    with pytest.MonkeyPatch.context() as patch:
        for name in (
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ):
            patch.delenv(name, raising=False)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_SESSION_TOKEN", "testing")
        patch.setenv("AWS_CONFIG_FILE", "/dev/null")
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory, aws_env: None) -> Iterator[MotoServer]:
    """One moto server per test module (SQS and EC2 alike), on loopback."""
    with MotoServer(log=tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(scope="module")
def elasticmq(tmp_path_factory: pytest.TempPathFactory, aws_env: None) -> Iterator[ElasticMQServer]:
    """An SQS that holds a backlog of 10,000 messages (hack/install-elasticmq.sh, `make sqsdeps`)."""
    installed = subprocess.run(
        ["bash", str(ROOT / "hack" / "install-elasticmq.sh")], capture_output=True, text=True, check=False
    )
    if installed.returncode != 0:
        pytest.fail(f"hack/install-elasticmq.sh failed:\n{installed.stderr}", pytrace=False)
    jars = Path(installed.stdout.strip().splitlines()[-1]) / "lib"
    with ElasticMQServer(jars, tmp_path_factory.mktemp("elasticmq")).start(timeout=60) as server:
        yield server


# --- the fault suite's figures, printed once at the end of the run ---------------------------------------

FAULT_FIGURES: dict[str, list[str]] = {}
PEERS = (
    "Peers: Karpenter's interruption controller also makes its record durable on the node before it deletes "
    "the message (taint karpenter.sh/disrupted, NodeClaim deletion) and drains through the Eviction API "
    "(REFERENCE.md line 14); kube-controller-manager's controllers take the same Lease rules (client-go). "
    "Neither publishes a figure for kills, pauses, backlogs or API faults to compare with."
)


def record_fault_figure(fault: str, figure: str) -> None:
    """One line of the fault suite's summary (test_kills.py, test_*faults.py, test_two_operators.py)."""
    FAULT_FIGURES.setdefault(fault, []).append(figure)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FAULT_FIGURES:
        return
    terminalreporter.section("fault suite")
    for fault, figures in FAULT_FIGURES.items():
        for figure in figures:
            terminalreporter.write_line(f"{fault:<22} {figure}")
    terminalreporter.write_line(PEERS)
