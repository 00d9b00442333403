"""The local stack the tests, the simulator, the demo and the benchmarks share.

A control plane from hack/cluster.sh (started and always stopped, or reused
from a kubeconfig), kubectl against it, free loopback ports, and the gpufleet
operator as a subprocess. One copy of each, so they cannot drift apart.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = ROOT / "hack" / "cluster.sh"
CRD_FILE = ROOT / "crds" / "gpufleet.io_modeldeployments.yaml"
# The first run on a fresh machine builds the control plane from source (~7 minutes on 2 cores).
CLUSTER_UP_TIMEOUT = 60 * 60


def run_install_script(script: Path, timeout: float) -> Path:
    """Run one of hack/install-*.sh (a build cached by version: instant once built) and return the
    folder it prints last."""
    built = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if built.returncode != 0:
        raise RuntimeError(f"hack/{script.name} failed:\n{built.stderr[-3000:]}")
    return Path(built.stdout.strip().splitlines()[-1])


def stop_process(process: subprocess.Popen[Any] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; nothing when it has already exited."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ControlPlane:
    kubeconfig: Path
    kubectl_path: str
    # hack/cluster.sh's state folder when known (ports and binaries of the components).
    state: Path | None = None

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


def from_kubeconfig(kubeconfig: Path) -> ControlPlane:
    """A control plane to reuse; kubectl from hack/cluster.sh's state folder when it is one."""
    if not kubeconfig.is_file():
        raise RuntimeError(f"no kubeconfig at {kubeconfig}")
    state = kubeconfig.parent
    bin_file = state / "bin"
    kubectl = str(Path(bin_file.read_text().strip()) / "kubectl") if bin_file.is_file() else "kubectl"
    return ControlPlane(kubeconfig, kubectl, state if (state / "ports.env").exists() else None)


@contextmanager
def control_plane(kubeconfig: Path | None, state: Path) -> Iterator[ControlPlane]:
    """Reuse `kubeconfig`, or start a control plane in `state` and always stop it afterwards."""
    if kubeconfig is not None:
        yield from_kubeconfig(kubeconfig.resolve())
        return
    try:
        up = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "up", str(state)],
            capture_output=True,
            text=True,
            timeout=CLUSTER_UP_TIMEOUT,
            check=False,
        )
        if up.returncode != 0:
            raise RuntimeError(f"hack/cluster.sh up failed:\n{up.stderr[-4000:]}")
        yield from_kubeconfig(Path(up.stdout.strip().splitlines()[-1]))
    finally:
        subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "down", str(state)], capture_output=True, timeout=120, check=False
        )


class OperatorProcess:
    """`python -m gpufleet run` with its health and metrics on free loopback ports.

    Each start logs to its own file (`operator-<n>.log` in `workdir`), so a
    restart keeps the earlier run's log for the post-mortem.
    """

    def __init__(self, kubeconfig: Path, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "GPUFLEET_HEALTH_PORT": str(self.health_port),
            "GPUFLEET_METRICS_PORT": str(self.metrics_port),
            "GPUFLEET_RESYNC_SECONDS": "10",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.workdir / f"operator-{self.starts}.log"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gpufleet", "run"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"the operator exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/healthz", timeout=1
                ) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the operator did not become healthy within {timeout}s:\n{self.log_tail()}")

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
