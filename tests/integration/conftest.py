"""Integration fixtures: fake GPU nodes kept Ready by a kubelet stand-in (no pods run on them)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from fleetsim.local import CRD_FILE, ControlPlane, control_plane
from fleetsim.toxiproxy import ToxiproxyServer
from tests.conftest import ROOT, wait_until
from tests.integration.fleet import FakeKubelet


@pytest.fixture(scope="session")
def fleet(api: client.ApiClient) -> Iterator[FakeKubelet]:
    kubelet = FakeKubelet(api)
    kubelet.start()
    yield kubelet
    kubelet.stop()


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete"]},
        # Reads by the operators under test (service accounts), to count their LISTs and WATCHes; the
        # control plane's own components read as other users and stay out of the log.
        {"level": "Metadata", "verbs": ["get", "list", "watch"], "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


@dataclass(frozen=True)
class AuditedPlane:
    """A control plane of its own, with the CRD and an audit log of every write and of the service
    accounts' reads: the fault tests restart and starve its API server, which the session's shared one
    must not suffer."""

    plane: ControlPlane
    state: Path  # hack/cluster.sh's folder (ports.env: the etcd and API server ports)
    audit_log: Path


@pytest.fixture(scope="session")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditedPlane]:
    work = tmp_path_factory.mktemp("audited")
    policy, log = work / "audit-policy.yaml", work / "audit.log"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPUFLEET_APISERVER_EXTRA_ARGS", f"--audit-policy-file={policy} --audit-log-path={log}")
        started = control_plane(None, work / "cluster")
        plane = started.__enter__()
    try:
        plane.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
        wait_until(
            lambda: plane.kubectl("get", "crd", "modeldeployments.gpufleet.io", check=False).returncode == 0,
            timeout=30,
            what="the CRD",
        )
        yield AuditedPlane(plane, work / "cluster", log)
    finally:
        started.__exit__(None, None, None)


def service_account_kubeconfig(plane: ControlPlane, namespace: str, name: str, out: Path) -> Path:
    """A kubeconfig of its own for an operator, so the audit log tells it apart (cluster-admin)."""
    plane.kubectl("create", "serviceaccount", name, "-n", namespace)
    plane.kubectl(
        "create",
        "clusterrolebinding",
        name,
        "--clusterrole=cluster-admin",
        f"--serviceaccount={namespace}:{name}",
    )
    token = plane.kubectl("create", "token", name, "-n", namespace, "--duration=2h").stdout.strip()
    config = yaml.safe_load(plane.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    out.write_text(yaml.safe_dump(config))
    return out


@pytest.fixture(scope="session")
def toxiproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToxiproxyServer]:
    """A TCP fault proxy (hack/install-toxiproxy.sh builds it from the Go module proxy)."""
    built = subprocess.run(
        ["bash", str(ROOT / "hack" / "install-toxiproxy.sh")], capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        pytest.fail(f"hack/install-toxiproxy.sh failed:\n{built.stderr[-3000:]}", pytrace=False)
    binary = Path(built.stdout.strip().splitlines()[-1])
    with ToxiproxyServer(binary, tmp_path_factory.mktemp("toxiproxy") / "toxiproxy.log") as server:
        yield server
