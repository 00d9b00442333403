"""Helm for the tests: GPUFLEET_HELM, else hack/install-helm.sh's cached binary (installed if missing).

Also `run_installer`, for the other hack/install-*.sh scripts the tests need."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gpufleet"
INSTALL_SCRIPT = ROOT / "hack" / "install-helm.sh"


def run_installer(script: Path) -> str:
    """Run a hack/install-*.sh script (idempotent, quick once cached); the path it prints last."""
    result = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    if result.returncode != 0:
        raise RuntimeError(f"hack/{script.name} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


@functools.cache
def helm_binary() -> str:
    return os.environ.get("GPUFLEET_HELM") or run_installer(INSTALL_SCRIPT)


def helm(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def render(*args: str, release: str = "gpufleet", namespace: str = "gpufleet-system") -> list[dict[str, Any]]:
    """`helm template` of the chart with extra arguments; the rendered objects."""
    out = helm("template", release, str(CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
