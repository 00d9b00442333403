"""Shared test helpers and fixtures.

One real local control plane per test session (hack/cluster.sh), shared by the
integration and e2e tests; set GPUFLEET_KUBECONFIG to reuse a running one (for
example `hack/cluster.sh up` left running while iterating); it is then not stopped.
Tests wait on conditions with deadlines (`wait_until`), never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config

T = TypeVar("T")


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


ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = ROOT / "hack" / "cluster.sh"
# The first run on a fresh machine builds the control plane from source.
CLUSTER_UP_TIMEOUT = 60 * 60


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    kubectl_path: str

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


def _kubectl_for(kubeconfig: Path) -> str:
    bin_file = kubeconfig.parent / "bin"
    if bin_file.exists():
        return str(Path(bin_file.read_text().strip()) / "kubectl")
    return "kubectl"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reuse = os.environ.get("GPUFLEET_KUBECONFIG")
    if reuse:
        kubeconfig = Path(reuse)
        yield Cluster(kubeconfig, _kubectl_for(kubeconfig))
        return
    state = tmp_path_factory.mktemp("cluster")
    try:
        up = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "up", str(state)],
            capture_output=True,
            text=True,
            timeout=CLUSTER_UP_TIMEOUT,
            check=False,
        )
        if up.returncode != 0:
            pytest.fail(f"hack/cluster.sh up failed:\n{up.stderr[-4000:]}", pytrace=False)
        kubeconfig = Path(up.stdout.strip().splitlines()[-1])
        yield Cluster(kubeconfig, _kubectl_for(kubeconfig))
    finally:
        subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "down", str(state)], capture_output=True, timeout=120, check=False
        )


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test so tests cannot see each other's objects."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> Cluster:
    """The generated CRD, installed and Established."""
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "gpufleet.io_modeldeployments.yaml"))

    def established() -> bool:
        conditions = cluster.get_json("crd", "modeldeployments.gpufleet.io")["status"].get("conditions", [])
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_until(established, timeout=30, what="CRD Established")
    return cluster


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


class OperatorProcess:
    """`python -m gpufleet run` against the test control plane, with the webhook on loopback."""

    def __init__(self, cluster: Cluster, workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.health_port = _free_port()
        self.metrics_port = _free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "GPUFLEET_HEALTH_PORT": str(self.health_port),
            "GPUFLEET_METRICS_PORT": str(self.metrics_port),
            "GPUFLEET_RESYNC_SECONDS": "10",
            "GPUFLEET_UNSCHEDULABLE_AFTER_SECONDS": "5",
            "GPUFLEET_WEBHOOK_ENABLED": "true",
            "GPUFLEET_WEBHOOK_PORT": str(_free_port()),
            "GPUFLEET_WEBHOOK_HOST": "127.0.0.1",
            "GPUFLEET_WEBHOOK_LISTEN_ADDRESS": "127.0.0.1",
            "GPUFLEET_WEBHOOK_CERT_DIR": str(workdir / "webhook-certs"),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.workdir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gpufleet", "run"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

        def healthy() -> bool:
            if self.process is None or self.process.poll() is not None:
                raise AssertionError(f"the operator exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(healthy, timeout=60, what="operator liveness endpoint")

        def webhook_registered() -> bool:
            result = self.cluster.kubectl("get", "validatingwebhookconfiguration", "gpufleet.io", check=False)
            return result.returncode == 0

        wait_until(webhook_registered, timeout=30, what="ValidatingWebhookConfiguration gpufleet.io")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


@pytest.fixture(scope="session")
def operator(crd: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    process = OperatorProcess(crd, tmp_path_factory.mktemp("operator"))
    process.start()
    yield process
    process.stop()
    # A webhook left behind that points at a dead port would block every later ModelDeployment write.
    crd.kubectl("delete", "validatingwebhookconfiguration", "gpufleet.io", "--ignore-not-found", check=False)
