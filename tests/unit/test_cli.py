"""`gpufleet validate` and `gpufleet crds` as a user runs them."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpufleet.cli import main

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "samples").glob("*.yaml"))


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_there_are_three_samples() -> None:
    assert {p.name for p in SAMPLES} >= {
        "llama-3-70b-a100-spot.yaml",
        "llama-3-8b-mig.yaml",
        "llama-3-70b-fp8-tp2.yaml",
    }


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name for p in SAMPLES])
def test_samples_are_valid(sample: Path) -> None:
    code, out = run("validate", str(sample))
    *warnings, last = out.splitlines()
    assert (code, last) == (0, "1 ModelDeployment(s) valid")
    assert all(": warning: " in line for line in warnings)


def test_invalid_file_reports_file_object_and_field(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "samples" / "llama-3-70b-a100-spot.yaml").read_text())
    doc["spec"]["accelerator"]["tensorParallelSize"] = 1
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all([other, doc]))
    code, out = run("validate", str(path))
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: llama-3-70b: spec.accelerator.tensorParallelSize: ")
    assert "use tensorParallelSize: 4" in lines[0]


def test_unreadable_and_broken_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    code, out = run("validate", str(tmp_path / "missing.yaml"), str(broken))
    assert code == 1
    assert "missing.yaml: -: cannot read file" in out
    assert "broken.yaml: -: not valid YAML" in out


def test_file_without_model_deployments_fails(tmp_path: Path) -> None:
    path = tmp_path / "cm.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert run("validate", str(path)) == (1, f"no ModelDeployment found in {path}\n")


def test_crds_command_prints_the_committed_crd() -> None:
    code, out = run("crds")
    assert code == 0
    assert out == (ROOT / "crds" / "gpufleet.io_modeldeployments.yaml").read_text()


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpufleet", "validate", str(SAMPLES[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_fit_prints_every_option_with_the_manifests_own_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "NVIDIA-A100-SXM4-80GB: {instanceType: p4de.24xlarge, gpusPerInstance: 8, onDemand: 27.44705}\n"
    )
    code, out = run("fit", str(ROOT / "samples" / "llama-3-70b-a100-spot.yaml"), "--prices", str(prices))
    assert code == 0
    rows = {
        " ".join(line[2:].split()[:3]): line[2:].split()
        for line in out.splitlines()
        if line[2:5] in ("TP ", "MIG")
    }
    chosen = [line for line in out.splitlines() if line.startswith("* ")]
    assert len(chosen) == 1
    assert chosen[0].startswith("* TP 4         bf16")
    # the case study: 4-bit halves the GPUs (and the cost) of a replica that still batches fully
    tp4, awq2 = rows["TP 4 bf16"], rows["TP 2 awq/gptq"]
    assert (tp4[3], tp4[-1], tp4[-3]) == ("4", "ok", "13.72")
    assert (awq2[3], awq2[-1], awq2[-3]) == ("2", "ok", "6.86")
    assert "weights do not fit: TP 1 bf16" in out


def test_fit_from_flags_and_what_it_cannot_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUFLEET_PRICES", raising=False)
    code, out = run("fit", "--model", "hf://Qwen/Qwen3-8B", "--gpu", "NVIDIA-A100-SXM4-80GB")
    assert code == 0
    assert "maxModelLen 40960" in out
    assert "prices: none configured" in out
    assert "MIG 1g.20gb" in out
    assert run("fit", "--model", "hf://acme/mystery", "--gpu", "NVIDIA-A100-SXM4-80GB")[0] == 1
    assert run("fit")[0] == 1
