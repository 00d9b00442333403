"""The operator image's inputs: pinned dependencies that cover pyproject's, a non-root user."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement

from tests.chart.helm import ROOT

LOCK = ROOT / "hack" / "image" / "requirements.txt"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{line}: not pinned with =="
            pins[_normal(name)] = version
    return pins


def test_every_runtime_dependency_is_pinned_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _locked()
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = _normal(requirement.name)
        assert name in pins, f"{name} is a dependency but not pinned in {LOCK.relative_to(ROOT)}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} is outside pyproject's {requirement.specifier}"
        )


def test_the_dockerfile_installs_the_pins_only_and_runs_as_non_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-deps -r /src/requirements.txt" in dockerfile
    assert re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE) == ["65532:65532"]
    assert 'ENTRYPOINT ["gpufleet"]' in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*"  # everything out, then only what the build copies back in
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE):
        for source in copied.split():
            assert (ROOT / source).exists(), f"COPY {source}: missing"
            assert f"!{source}" in ignored or f"!{source}/" in ignored, (
                f"{source} is excluded by .dockerignore"
            )
