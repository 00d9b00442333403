"""The operator's wheel (what the image installs) holds the gpufleet package and nothing else.

The fleet simulator (hack/fleetsim), the tests and the benchmarks live in the same repository but
are not the product: hack/pyproject.toml is the simulator's own project.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _build_artifacts(folder: str, names: list[str]) -> set[str]:
    """What not to copy: version control, virtualenvs and caches (dot names), and earlier builds."""
    return {
        name
        for name in names
        if name.startswith(".")
        or name in {"__pycache__", "build", "dist"}
        or name.endswith((".egg-info", ".pyc"))
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built as the Dockerfile builds it, from a copy of the whole repository.

    The whole repository, so that a package discovered anywhere in it would show; a copy, so that the
    build's own build/ and *.egg-info folders are left there and not in the work tree.
    """
    source = tmp_path_factory.mktemp("source") / "gpufleet"
    shutil.copytree(ROOT, source, ignore=_build_artifacts)
    out = tmp_path_factory.mktemp("wheels")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_gpufleet_only(wheel: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/", 1)[0] for name in names}
    expected = {"gpufleet", f"gpufleet-{version}.dist-info"}
    assert top == expected, f"{wheel.name} holds {sorted(top - expected)} besides gpufleet"
    assert "gpufleet/handlers/operator.py" in names  # not an empty package
