"""The command lines gpufleet generates, parsed by the real `vllm serve` parser of the default release.

hack/install-vllm-parser.sh installs that release's parser (cached); hack/vllm_parser.py runs it in its own
interpreter, once for every command line here. A flag vLLM does not know, a value its parser refuses, or
a flag spelt as an abbreviation that only argparse's prefix matching accepts fails the test.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet.api.v1alpha1 import DEFAULT_IMAGE, ModelDeployment, ModelDeploymentSpec
from gpufleet.api.vllm_versions import NEWEST_KNOWN, format_version
from gpufleet.planning.placement import PlacementGroup
from gpufleet.planning.workloads import Owner, WorkloadOptions, desired_workloads
from tests.chart.helm import run_installer
from tests.unit.dotted import with_changes
from tests.unit.helpers import workload_options

ROOT = Path(__file__).resolve().parents[2]
INSTALLER = ROOT / "hack" / "install-vllm-parser.sh"
RUNNER = ROOT / "hack" / "vllm_parser.py"
SAMPLES = sorted((ROOT / "samples").glob("*.yaml"))

LLAMA_70B: dict[str, Any] = {
    "model": {
        "uri": "hf://meta-llama/Meta-Llama-3-70B-Instruct",
        "parameterCount": 70.6e9,
        "dtype": "bfloat16",
    },
    "accelerator": {"gpuProduct": "NVIDIA-A100-SXM4-80GB", "tensorParallelSize": 4},
}
# Edge cases of the spec → flags mapping: every source scheme, every dtype and quantization, MIG, LoRA from
# each source, served names with the characters the API allows, the engine flags users tune, and drain 0.
EDGE_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "minimal": ({"model": {"uri": "hf://meta-llama/Meta-Llama-3-8B"}}, {}),
    "s3 source (Run:ai streamer)": (
        with_changes(
            LLAMA_70B, {"model__uri": "s3://models-bucket/llama-3-70b", "model__credentialsSecret": "s3"}
        ),
        {},
    ),
    "pvc source": (with_changes(LLAMA_70B, {"model__uri": "pvc://weights/llama-3-70b"}), {}),
    "float16, fp8, max-model-len, tp 8": (
        with_changes(
            LLAMA_70B,
            {
                "model__dtype": "float16",
                "model__quantization": "fp8",
                "model__maxModelLen": 8192,
                "accelerator__tensorParallelSize": 8,
            },
        ),
        {},
    ),
    "awq": (with_changes(LLAMA_70B, {"model__quantization": "awq", "model__dtype": "auto"}), {}),
    "gptq": (with_changes(LLAMA_70B, {"model__quantization": "gptq"}), {}),
    "mig slice": (
        with_changes(
            LLAMA_70B,
            {
                "model__uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct",
                "model__parameterCount": 8.03e9,
                "accelerator": {"gpuProduct": "NVIDIA-A100-SXM4-80GB", "migProfile": "3g.40gb"},
            },
        ),
        {},
    ),
    "lora from hf, pvc and s3; served name with org, tag and version": (
        with_changes(
            LLAMA_70B,
            {
                "model__servedName": "meta-llama/llama-3-70b:instruct@v1.2+rc",
                "engine__loraAdapters": [
                    {"name": "sql", "uri": "hf://acme/llama-3-70b-sql-lora"},
                    {"name": "chat", "uri": "pvc://adapters/chat"},
                    {"name": "legal", "uri": "s3://adapters-bucket/legal"},
                ],
            },
        ),
        {},
    ),
    "lora slots and rank set; s3 adapters served from local dirs, names with / : @": (
        with_changes(
            LLAMA_70B,
            {
                "model__credentialsSecret": "creds",
                "engine__maxLoras": 8,
                "engine__maxLoraRank": 320,
                "engine__loraAdapters": [
                    {"name": "acme/legal:v2@eu", "uri": "s3://adapters-bucket/legal"},
                    {"name": "support", "uri": "s3://adapters-bucket"},
                    {"name": "hr", "uri": "pvc://adapters/hr,v2"},  # a comma: vLLM's JSON form
                ],
            },
        ),
        {},
    ),
    "lora defaults: one adapter, one slot, rank 16": (
        with_changes(LLAMA_70B, {"engine__loraAdapters": [{"name": "sql", "uri": "hf://acme/sql-lora"}]}),
        {},
    ),
    "tuned engine flags": (
        with_changes(
            LLAMA_70B,
            {
                "engine__args": [
                    "--gpu-memory-utilization=0.95",
                    "--enable-prefix-caching",
                    "--max-num-seqs",
                    "256",
                    "--max-num-batched-tokens",
                    "8192",
                    "--kv-cache-dtype",
                    "fp8",
                    "--enable-chunked-prefill",
                ]
            },
        ),
        {},
    ),
    "digest image with its release stated": (
        with_changes(
            LLAMA_70B,
            {
                "engine__image": "vllm/vllm-openai@sha256:" + "0" * 64,
                "engine__version": format_version(NEWEST_KNOWN),
            },
        ),
        {},
    ),
    "speculative ngram with prompt lookup bounds": (
        with_changes(
            LLAMA_70B,
            {
                "engine__speculativeDecoding": {
                    "method": "ngram",
                    "numSpeculativeTokens": 4,
                    "promptLookupMin": 2,
                    "promptLookupMax": 5,
                }
            },
        ),
        {},
    ),
    "speculative draft model from a pvc": (
        with_changes(
            LLAMA_70B,
            {
                "engine__speculativeDecoding": {
                    "method": "draft_model",
                    "numSpeculativeTokens": 3,
                    "draftModel": {"uri": "pvc://weights/llama-3.2-1b-instruct"},
                }
            },
        ),
        {},
    ),
    "speculative eagle3 head from hf": (
        with_changes(
            LLAMA_70B,
            {
                "engine__speculativeDecoding": {
                    "method": "eagle3",
                    "numSpeculativeTokens": 3,
                    "draftModel": {"uri": "hf://yuhuili/EAGLE3-LLaMA3.3-Instruct-70B"},
                }
            },
        ),
        {},
    ),
    "speculative mtp of an s3 model": (
        with_changes(
            LLAMA_70B,
            {
                "model__uri": "s3://models-bucket/deepseek-v3",
                "engine__speculativeDecoding": {"method": "mtp", "numSpeculativeTokens": 1},
            },
        ),
        {},
    ),
    "no drain time: --shutdown-timeout 0 (abort)": (LLAMA_70B, {"drain_seconds": 0}),
    "long drain, other port": (LLAMA_70B, {"drain_seconds": 600, "prestop_delay_seconds": 30, "port": 9000}),
}


def command_line(name: str, spec: ModelDeploymentSpec, options: WorkloadOptions) -> list[str]:
    """What the vLLM container runs: command + args of the first Deployment."""
    owner = Owner(name=name, namespace="ml", uid="uid-1")
    workloads = desired_workloads(owner, spec, [PlacementGroup("us-east-1a", "on-demand", 1)], options)
    (container,) = workloads.deployments[0]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["vllm", "serve"]
    return [*container["command"], *container["args"]]


def sample_command_line(path: Path) -> list[str]:
    md = ModelDeployment.model_validate(yaml.safe_load(path.read_text()))
    return command_line(md.metadata.name or path.stem, md.spec, workload_options())


def edge_case_command_line(case: str) -> list[str]:
    spec, options = EDGE_CASES[case]
    return command_line("edge", ModelDeploymentSpec.model_validate(spec), workload_options(**options))


@functools.cache
def _parser_home() -> Path:
    return Path(run_installer(INSTALLER))


def parse(*argvs: list[str]) -> dict[str, Any]:
    """Every argv (after `vllm serve`) through vLLM's parser, in one run of it."""
    home = _parser_home()
    result = subprocess.run(
        [str(home / "venv" / "bin" / "python"), "-P", str(RUNNER)],
        input=json.dumps({"argvs": [list(argv) for argv in argvs]}),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "PYTHONPATH": str(home / "site")},
    )
    if result.returncode != 0:
        raise AssertionError(f"hack/vllm_parser.py failed ({result.returncode}):\n{result.stderr[-3000:]}")
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


@functools.cache
def _all_generated() -> tuple[dict[str, list[str]], dict[str, Any]]:
    lines = {f"sample {path.name}": sample_command_line(path) for path in SAMPLES}
    lines |= {f"edge case: {case}": edge_case_command_line(case) for case in EDGE_CASES}
    return lines, parse(*(line[2:] for line in lines.values()))


def test_parser_is_the_default_images_release() -> None:
    _, parsed = _all_generated()
    assert parsed["vllm"] == format_version(NEWEST_KNOWN)
    assert DEFAULT_IMAGE.endswith(f":v{parsed['vllm']}")


@pytest.mark.parametrize(
    "name", [f"sample {path.name}" for path in SAMPLES] + [f"edge case: {c}" for c in EDGE_CASES]
)
def test_vllm_parses_what_gpufleet_generates(name: str) -> None:
    lines, parsed = _all_generated()
    result = parsed["results"][list(lines).index(name)]
    line = " ".join(lines[name])
    assert result["ok"], f"vLLM {parsed['vllm']} refuses `{line}`: {result['error']}"
    assert result["inexact"] == [], f"abbreviated flags in `{line}`: {result['inexact']}"


def test_the_contract_covers_the_drain_flag() -> None:
    lines, _ = _all_generated()
    assert "--shutdown-timeout" in lines["sample llama-3-70b-a100-spot.yaml"]
    assert lines["edge case: no drain time: --shutdown-timeout 0 (abort)"][-2:] == ["--shutdown-timeout", "0"]


def test_a_misspelt_or_abbreviated_flag_is_caught() -> None:
    """The harness is not vacuous: the real parser refuses what vLLM does not know."""
    base = edge_case_command_line("minimal")[2:]
    misspelt = [arg.replace("--shutdown-timeout", "--shutdown-timout") for arg in base]
    abbreviated = [arg.replace("--shutdown-timeout", "--shutdown-time") for arg in base]
    bad_value = [*base, "--max-num-seqs", "many"]
    ok, wrong, short, value = parse(base, misspelt, abbreviated, bad_value)["results"]
    assert ok == {"ok": True, "error": "", "inexact": []}
    assert not wrong["ok"]
    assert "unrecognized arguments: --shutdown-timout" in wrong["error"]
    assert short["ok"]
    assert short["inexact"] == ["--shutdown-time"]
    assert not value["ok"]
    assert "many" in value["error"]


def test_speculative_config_names_fields_and_methods_vllm_has() -> None:
    """vLLM's parser only json.loads --speculative-config; SpeculativeConfig checks it at engine start,
    which needs the model. So the keys and methods gpufleet writes are checked against its source."""
    source = (_parser_home() / "site" / "vllm" / "config" / "speculative.py").read_text()
    body = source.split("class SpeculativeConfig:", 1)[1]
    fields = set(re.findall(r"^    ([a-z_]+): ", body, flags=re.MULTILINE))
    # The Literal types from MTPModelTypes to SpeculativeMethod: every built-in method name.
    literals = source.split("MTPModelTypes = Literal[", 1)[1].split("RejectionSampleMethod", 1)[0]
    methods = set(re.findall(r'"([a-z0-9_]+)"', literals))
    lines, _ = _all_generated()
    configs = [
        json.loads(line[line.index("--speculative-config") + 1])
        for line in lines.values()
        if "--speculative-config" in line
    ]
    assert len(configs) >= 4
    for config in configs:
        assert set(config) <= fields, set(config) - fields
        assert config["method"] in methods
    assert {"ngram", "draft_model", "eagle", "eagle3", "mtp"} <= methods


def test_the_contract_covers_lora_slots_rank_and_local_adapter_dirs() -> None:
    lines, _ = _all_generated()
    line = lines["edge case: lora slots and rank set; s3 adapters served from local dirs, names with / : @"]
    assert line[line.index("--max-loras") + 1] == "8"
    assert line[line.index("--max-lora-rank") + 1] == "320"
    modules = line[line.index("--lora-modules") + 1 : line.index("--max-loras")]
    assert [m.split("=", 1)[1].startswith("/mnt/lora-adapters/") for m in modules[:2]] == [True, True]
    assert json.loads(modules[2]) == {"name": "hr", "path": "/mnt/pvc/adapters/hr,v2"}
    bad_rank = [*edge_case_command_line("lora defaults: one adapter, one slot, rank 16")[2:]]
    bad_rank[bad_rank.index("--max-lora-rank") + 1] = "24"
    (refused,) = parse(bad_rank)["results"]
    assert not refused["ok"]  # vLLM's parser knows the allowed ranks, as the API's enum does
