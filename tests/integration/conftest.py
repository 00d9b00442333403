"""One real local control plane per test session (hack/cluster.sh).

Set GPUFLEET_KUBECONFIG to reuse a running control plane (for example
`hack/cluster.sh up` left running while iterating); it is then not stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
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
