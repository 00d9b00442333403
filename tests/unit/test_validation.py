"""Validation rules, table-driven: each invalid case names its field and its fix."""

from __future__ import annotations

from typing import Any

import pytest

from gpufleet.api import validate_manifest
from gpufleet.api.validation import admission_problems, gpu_memory_utilization
from tests.unit.dotted import with_changes

BASE: dict[str, Any] = {
    "apiVersion": "gpufleet.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "llama-3-70b"},
    "spec": {
        "model": {
            "uri": "hf://meta-llama/Meta-Llama-3-70B-Instruct",
            "parameterCount": 70.6e9,
            "dtype": "bfloat16",
        },
        "accelerator": {"gpuProduct": "NVIDIA-A100-SXM4-80GB", "tensorParallelSize": 4},
        "replicas": 2,
        "minReplicas": 1,
        "maxReplicas": 12,
        "capacity": {"zones": ["us-east-1a", "us-east-1b"], "onDemandReplicas": 1, "spotPercent": 70},
    },
}


def manifest(**changes: Any) -> dict[str, Any]:
    """BASE with dotted-path changes; a value of None removes the key."""
    return with_changes(BASE, changes)


def test_base_manifest_is_valid() -> None:
    assert validate_manifest(BASE) == []


VALID_CASES = {
    "70b fp8 tp2": {"spec__model__quantization": "fp8", "spec__accelerator__tensorParallelSize": 2},
    "70b awq tp1": {"spec__model__quantization": "awq", "spec__accelerator__tensorParallelSize": 1},
    "8b on 2g.20gb at 0.95": {
        "spec__model__uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct",
        "spec__model__parameterCount": 8.03e9,
        "spec__engine": {"args": ["--gpu-memory-utilization=0.95"]},
        "spec__accelerator__migProfile": "2g.20gb",
        "spec__accelerator__tensorParallelSize": 1,
    },
    # vLLM starts it (27K tokens of KV cache hold three 8K sequences): a warning, not a refusal
    "70b bf16 tp2 on 80GB": {"spec__accelerator__tensorParallelSize": 2},
    "unknown model without parameter count skips fit": {
        "spec__model__uri": "hf://acme/mystery-model",
        "spec__model__parameterCount": None,
        "spec__accelerator__tensorParallelSize": 1,
    },
    "unknown gpu with memory": {
        "spec__accelerator__gpuProduct": "NVIDIA-B200",
        "spec__accelerator__gpuMemoryGiB": 180,
        "spec__accelerator__tensorParallelSize": 1,
    },
    "s3 source": {"spec__model__uri": "s3://models/llama/70b"},
    "pvc source at claim root": {"spec__model__uri": "pvc://model-cache"},
    "pvc source with path": {"spec__model__uri": "pvc://model-cache/llama-3-70b"},
    "no max replicas without autoscaling": {"spec__maxReplicas": None, "spec__replicas": 40},
    "scale to zero": {
        "spec__minReplicas": 0,
        "spec__autoscaling": {"enabled": True, "scaleToZeroAfterSeconds": 600},
    },
    "extra args not managed": {
        "spec__engine": {"args": ["--enable-prefix-caching", "--gpu-memory-utilization=0.95"]}
    },
    "env with secret ref": {
        "spec__engine": {
            "env": [
                {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"},
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ]
        }
    },
    "status is ignored": {"status": {"replicas": "garbage"}},
    "hugging face served name": {"spec__model__servedName": "meta-llama/Meta-Llama-3-70B-Instruct@v1.0+fp8"},
    "canary steps with a pause without end": {
        "spec__rollout": {
            "steps": [
                {"weight": 10, "pauseSeconds": 600},
                {"weight": 50},
                {"weight": 100, "pauseSeconds": 0},
            ],
            "maxSurgeGPUs": 4,
            "paused": True,
        }
    },
}


@pytest.mark.parametrize("changes", VALID_CASES.values(), ids=VALID_CASES.keys())
def test_valid_manifests(changes: dict[str, Any]) -> None:
    assert validate_manifest(manifest(**changes)) == []


# (changes, field path, words the message must contain)
INVALID_CASES: dict[str, tuple[dict[str, Any], str, tuple[str, ...]]] = {
    # pasted into the autoscaler's PromQL, it would read another namespace's metrics into this status
    "served name that leaves its PromQL string": (
        {"spec__model__servedName": 'x"}) + sum(foo{namespace="other"}) #'},
        "spec.model.servedName",
        ("not a served model name", "letters, digits"),
    ),
    "served name with a space": (
        {"spec__model__servedName": "llama 3"},
        "spec.model.servedName",
        ("not a served model name",),
    ),
    "tp 3": (
        {"spec__accelerator__tensorParallelSize": 3},
        "spec.accelerator.tensorParallelSize",
        ("1, 2, 4 or 8",),
    ),
    "70b 3.1 bf16 tp2 at 32K": (
        {
            "spec__model__uri": "hf://meta-llama/Llama-3.1-70B-Instruct",
            "spec__model__maxModelLen": 32768,
            "spec__accelerator__tensorParallelSize": 2,
        },
        "spec.model.maxModelLen",
        (
            "KV cache holds 23,232 tokens per replica, maxModelLen is 32768",
            "use tensorParallelSize: 4",
            "quantization: awq",
            "maxModelLen ≤ 23000",
            "65.8 GiB of weights",
        ),
    ),
    "70b bf16 tp1 on 80GB": (
        {"spec__accelerator__tensorParallelSize": 1},
        "spec.accelerator.tensorParallelSize",
        ("131.5 GiB", "use tensorParallelSize: 4", "quantization: fp8"),
    ),
    "70b on 3g.40gb": (
        {"spec__accelerator__tensorParallelSize": 1, "spec__accelerator__migProfile": "3g.40gb"},
        "spec.accelerator.migProfile",
        ("3g.40gb", "whole GPUs (remove migProfile)"),
    ),
    "8b bf16 on 1g.10gb suggests bigger slice": (
        {
            "spec__model__uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct",
            "spec__model__parameterCount": None,
            "spec__accelerator__tensorParallelSize": 1,
            "spec__accelerator__migProfile": "1g.10gb",
        },
        "spec.accelerator.migProfile",
        ("use migProfile: 7g.80gb",),
    ),
    # the MIG sample at vLLM's default 0.9: what the simulated vLLM refused while validate accepted it
    "8b bf16 on 2g.20gb at 0.9": (
        {
            "spec__model__uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct",
            "spec__model__parameterCount": None,
            "spec__model__maxModelLen": 8192,
            "spec__accelerator__tensorParallelSize": 1,
            "spec__accelerator__migProfile": "2g.20gb",
        },
        "spec.model.maxModelLen",
        ("KV cache holds 7,104 tokens", "--gpu-memory-utilization=0.95", "maxModelLen ≤ 7000"),
    ),
    "max model len past the model's context": (
        {"spec__model__maxModelLen": 16384},
        "spec.model.maxModelLen",
        ("8192 tokens, max_position_embeddings", "VLLM_ALLOW_LONG_MAX_MODEL_LEN"),
    ),
    "heads that do not split over tp": (
        {
            "spec__model__uri": "hf://Qwen/Qwen2.5-7B-Instruct",
            "spec__model__parameterCount": None,
            "spec__accelerator__tensorParallelSize": 8,
        },
        "spec.accelerator.tensorParallelSize",
        ("28 attention heads", "tensorParallelSize: 1 or 2 or 4"),
    ),
    "mig with tp": (
        {"spec__accelerator__migProfile": "7g.80gb", "spec__model__parameterCount": None},
        "spec.accelerator.migProfile",
        ("tensorParallelSize: 1",),
    ),
    "mig profile of another gpu": (
        {
            "spec__accelerator__migProfile": "3g.20gb",
            "spec__accelerator__tensorParallelSize": 1,
            "spec__model__parameterCount": None,
        },
        "spec.accelerator.migProfile",
        ("not a MIG profile of NVIDIA-A100-SXM4-80GB", "3g.40gb"),
    ),
    "mig profile that does not exist": (
        {
            "spec__accelerator__gpuProduct": None,
            "spec__accelerator__migProfile": "5g.50gb",
            "spec__accelerator__tensorParallelSize": 1,
            "spec__model__parameterCount": None,
        },
        "spec.accelerator.migProfile",
        ("not a MIG profile of any",),
    ),
    "mig profile bad shape": (
        {"spec__accelerator__migProfile": "half", "spec__accelerator__tensorParallelSize": 1},
        "spec.accelerator.migProfile",
        ("pattern",),
    ),
    "unknown gpu without memory": (
        {"spec__accelerator__gpuProduct": "NVIDIA-B200"},
        "spec.accelerator.gpuMemoryGiB",
        ("set gpuMemoryGiB",),
    ),
    "replicas above max": ({"spec__replicas": 20}, "spec.replicas", ("above maxReplicas (12)", "at most 12")),
    "replicas below min": ({"spec__replicas": 0}, "spec.replicas", ("below minReplicas (1)",)),
    "min above max": ({"spec__minReplicas": 13}, "spec.minReplicas", ("above maxReplicas",)),
    "negative replicas": ({"spec__replicas": -1}, "spec.replicas", ("at least 0",)),
    "spot percent 150": ({"spec__capacity__spotPercent": 150}, "spec.capacity.spotPercent", ("at most 100",)),
    "duplicate zone": (
        {"spec__capacity__zones": ["us-east-1a", "us-east-1a"]},
        "spec.capacity.zones[1]",
        ("listed twice",),
    ),
    "on-demand floor above max": (
        {"spec__capacity__onDemandReplicas": 13},
        "spec.capacity.onDemandReplicas",
        ("above maxReplicas",),
    ),
    "gs uri": ({"spec__model__uri": "gs://bucket/model"}, "spec.model.uri", ("hf://<org>/<name>",)),
    "hf uri without org": ({"spec__model__uri": "hf://llama"}, "spec.model.uri", ("hf://<org>/<name>",)),
    "s3 bad bucket": ({"spec__model__uri": "s3://A_B/x"}, "spec.model.uri", ("valid bucket name",)),
    "pvc bad claim": ({"spec__model__uri": "pvc://Bad_Claim/x"}, "spec.model.uri", ("PVC name",)),
    "lora bad uri": (
        {"spec__engine": {"loraAdapters": [{"name": "sql", "uri": "hf://only"}]}},
        "spec.engine.loraAdapters[0].uri",
        ("hf://<org>/<name>",),
    ),
    "managed flag in args": (
        {"spec__engine": {"args": ["--tensor-parallel-size", "8"]}},
        "spec.engine.args[0]",
        ("spec.accelerator.tensorParallelSize",),
    ),
    "port in args": ({"spec__engine": {"args": ["--port=9000"]}}, "spec.engine.args[0]", ("port 8000",)),
    "shutdown timeout in args": (
        {"spec__engine": {"args": ["--shutdown_timeout", "600"]}},
        "spec.engine.args[0]",
        ("grace period minus its preStop delay", "GPUFLEET_DRAIN_SECONDS"),
    ),
    "stated vLLM version that is not a release": (
        {"spec__engine": {"version": "latest"}},
        "spec.engine.version",
        ("should match pattern",),
    ),
    # vLLM's parser reads underscores as dashes and takes unambiguous prefixes: these set the same flag.
    "managed flag with underscores": (
        {"spec__engine": {"args": ["--tensor_parallel_size=8"]}},
        "spec.engine.args[0]",
        ("spec.accelerator.tensorParallelSize",),
    ),
    "managed flag abbreviated": (
        {"spec__engine": {"args": ["--enable-prefix-caching", "--tensor-parallel", "8"]}},
        "spec.engine.args[1]",
        ("spec.accelerator.tensorParallelSize",),
    ),
    "short managed flag with its value attached": (
        {"spec__engine": {"args": ["-tp8"]}},
        "spec.engine.args[0]",
        ("spec.accelerator.tensorParallelSize",),
    ),
    "served name with underscores": (
        {"spec__engine": {"args": ["--served_model_name", "x"]}},
        "spec.engine.args[0]",
        ("spec.model.servedName",),
    ),
    "config file": (
        {"spec__engine": {"args": ["--config", "/etc/vllm.yaml"]}},
        "spec.engine.args[0]",
        ("--config reads engine flags from a file",),
    ),
    "duplicate env": (
        {"spec__engine": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}},
        "spec.engine.env[1].name",
        ("set twice",),
    ),
    "env value and valueFrom": (
        {"spec__engine": {"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {}}}]}},
        "spec.engine.env[0]",
        ("not both",),
    ),
    "autoscaling without max": (
        {"spec__maxReplicas": None, "spec__autoscaling": {"enabled": True}},
        "spec.maxReplicas",
        ("required when autoscaling",),
    ),
    "scale to zero with min 1": (
        {"spec__autoscaling": {"scaleToZeroAfterSeconds": 60}},
        "spec.autoscaling.scaleToZeroAfterSeconds",
        ("minReplicas: 0",),
    ),
    "kv target above 1": (
        {"spec__autoscaling": {"targetKVCacheUsage": 1.5}},
        "spec.autoscaling.targetKVCacheUsage",
        ("at most 1",),
    ),
    "schedule with an unknown time zone": (
        {
            "spec__autoscaling": {
                "schedules": [
                    {
                        "name": "peak",
                        "start": "08:00",
                        "end": "18:00",
                        "timeZone": "Mars/Olympus",
                        "minReplicas": 4,
                    }
                ]
            }
        },
        "spec.autoscaling.schedules[0].timeZone",
        ("Mars/Olympus", "IANA"),
    ),
    "schedule floor above max": (
        {
            "spec__autoscaling": {
                "schedules": [{"name": "peak", "start": "08:00", "end": "18:00", "minReplicas": 20}]
            }
        },
        "spec.autoscaling.schedules[0].minReplicas",
        ("above maxReplicas (12)",),
    ),
    "schedule time not HH:MM": (
        {
            "spec__autoscaling": {
                "schedules": [{"name": "peak", "start": "8am", "end": "18:00", "minReplicas": 2}]
            }
        },
        "spec.autoscaling.schedules[0].start",
        ("pattern",),
    ),
    "schedule on a day that does not exist": (
        {
            "spec__autoscaling": {
                "schedules": [
                    {"name": "p", "days": ["Funday"], "start": "08:00", "end": "18:00", "minReplicas": 2}
                ]
            }
        },
        "spec.autoscaling.schedules[0].days[0]",
        ("'Mon'",),
    ),
    "misspelled field": (
        {"spec__accelerator__tensorParallel": 4},
        "spec.accelerator.tensorParallel",
        ("unknown field", "modeldeployment.spec.accelerator"),
    ),
    "negative revision history": (
        {"spec__revisionHistoryLimit": -1},
        "spec.revisionHistoryLimit",
        ("must be at least 0, got -1",),
    ),
    "revision history past the bound": (
        {"spec__revisionHistoryLimit": 101},
        "spec.revisionHistoryLimit",
        ("must be at most 100, got 101",),
    ),
    "canary steps out of order": (
        {"spec__rollout": {"steps": [{"weight": 50}, {"weight": 10}]}},
        "spec.rollout.steps[1].weight",
        ("10 does not rise above the step before it (50)", "increasing weight"),
    ),
    "canary weight above 100": (
        {"spec__rollout": {"steps": [{"weight": 120}]}},
        "spec.rollout.steps[0].weight",
        ("must be at most 100, got 120",),
    ),
    "canary weight of zero": (
        {"spec__rollout": {"steps": [{"weight": 0}]}},
        "spec.rollout.steps[0].weight",
        ("must be at least 1, got 0",),
    ),
    "negative canary pause": (
        {"spec__rollout": {"steps": [{"weight": 10, "pauseSeconds": -5}]}},
        "spec.rollout.steps[0].pauseSeconds",
        ("must be at least 0, got -5",),
    ),
    "warm standby without canary steps": (
        {"spec__rollout": {"keepPrevious": {"replicas": 1, "seconds": 600}}},
        "spec.rollout.keepPrevious",
        ("there is no canary without spec.rollout.steps", "one step of weight 100 is enough"),
    ),
    "traffic route without canary steps": (
        {"spec__rollout": {"httpRoute": {"name": "chat"}}},
        "spec.rollout.httpRoute",
        ("there is no canary without spec.rollout.steps", "or remove httpRoute"),
    ),
    "route name that is no object name": (
        {"spec__rollout": {"steps": [{"weight": 10}], "httpRoute": {"name": "Chat Route"}}},
        "spec.rollout.httpRoute.name",
        ("should match pattern",),
    ),
    "a TTFT objective of zero": (
        {"spec__slo": {"ttftP95Seconds": 0}},
        "spec.slo.ttftP95Seconds",
        ("greater than 0",),
    ),
    "surge budget below one replica": (
        {"spec__rollout": {"steps": [{"weight": 10}], "maxSurgeGPUs": 2}},
        "spec.rollout.maxSurgeGPUs",
        ("below one replica's GPUs (4", "set it to 4 or more"),
    ),
    "missing model": ({"spec__model": None}, "spec.model", ("is required",)),
    "bad dtype": ({"spec__model__dtype": "fp32"}, "spec.model.dtype", ("'auto', 'bfloat16' or 'float16'",)),
    "wrong kind": ({"kind": "Deployment"}, "kind", ("ModelDeployment",)),
    "wrong api version": ({"apiVersion": "gpufleet.io/v1"}, "apiVersion", ("gpufleet.io/v1alpha1",)),
    "missing name": ({"metadata": {}}, "metadata.name", ("required",)),
    "name with capitals": ({"metadata": {"name": "Llama"}}, "metadata.name", ("lower-case",)),
    "name too long": ({"metadata": {"name": "a" * 41}}, "metadata.name", ("at most 40",)),
}


@pytest.mark.parametrize(("changes", "path", "words"), INVALID_CASES.values(), ids=INVALID_CASES.keys())
def test_invalid_manifests(changes: dict[str, Any], path: str, words: tuple[str, ...]) -> None:
    problems = validate_manifest(manifest(**changes))
    matching = [p for p in problems if p.path == path]
    assert matching, f"expected a problem at {path}, got {problems}"
    for word in words:
        assert any(word in p.message for p in matching), f"{word!r} not in {matching}"


def test_every_problem_is_reported_not_just_the_first() -> None:
    problems = validate_manifest(
        manifest(
            spec__replicas=20, spec__engine={"args": ["--port=1"]}, spec__accelerator__tensorParallelSize=1
        )
    )
    assert {p.path for p in problems} == {
        "spec.replicas",
        "spec.engine.args[0]",
        "spec.accelerator.tensorParallelSize",
    }


def test_not_a_mapping() -> None:
    assert [str(p) for p in validate_manifest(["x"])] == ["(object): a ModelDeployment must be a mapping"]


def test_gpu_memory_utilization_is_read_as_vllm_reads_it() -> None:
    assert gpu_memory_utilization(["--gpu_memory_utilization=0.95"]) == 0.95
    assert gpu_memory_utilization(["--gpu-memory-utilization", "0.8"]) == 0.8


def test_gpu_memory_utilization_from_args_changes_the_fit() -> None:
    tight = manifest(spec__accelerator__tensorParallelSize=2, spec__model__quantization="fp8")
    assert validate_manifest(tight) == []
    tight["spec"]["engine"] = {"args": ["--gpu-memory-utilization", "0.45"]}
    problems = validate_manifest(tight)
    assert [p.path for p in problems] == ["spec.model.maxModelLen"]
    assert "of the 35.6 GiB vLLM may use" in problems[0].message
    assert "--gpu-memory-utilization=0.95 in engine.args" in problems[0].message


def test_admission_denies_replicas_out_of_range_on_create_and_when_changed() -> None:
    too_many = manifest(spec__replicas=20)
    assert [p.path for p in admission_problems(too_many)] == ["spec.replicas"]
    assert [p.path for p in admission_problems(too_many, old=manifest(spec__replicas=2))] == ["spec.replicas"]


def test_admission_allows_edits_after_a_scale_past_max() -> None:
    scaled = manifest(spec__replicas=20)
    edited = manifest(spec__replicas=20, spec__engine={"image": "vllm/vllm-openai:v0.11.1"})
    assert admission_problems(edited, old=scaled) == []
    broken = manifest(spec__replicas=20, spec__accelerator__tensorParallelSize=1)
    assert [p.path for p in admission_problems(broken, old=scaled)] == ["spec.accelerator.tensorParallelSize"]


SPECULATIVE = "spec__engine__speculativeDecoding"
_EAGLE3 = {
    "method": "eagle3",
    "numSpeculativeTokens": 3,
    "draftModel": {"uri": "hf://acme/EAGLE3-LLaMA3-70B"},
}

VALID_SPECULATIVE = {
    "ngram": {"method": "ngram", "numSpeculativeTokens": 4, "promptLookupMin": 2, "promptLookupMax": 4},
    "draft model from the catalog": {
        "method": "draft_model",
        "numSpeculativeTokens": 3,
        "draftModel": {"uri": "hf://meta-llama/Llama-3.2-1B-Instruct"},
    },
    "eagle3 head": _EAGLE3,
}


@pytest.mark.parametrize("speculative", VALID_SPECULATIVE.values(), ids=VALID_SPECULATIVE.keys())
def test_valid_speculative_decoding(speculative: dict[str, Any]) -> None:
    assert validate_manifest(manifest(**{SPECULATIVE: speculative})) == []


INVALID_SPECULATIVE: dict[str, tuple[dict[str, Any], str, str]] = {
    "draft_model without a draft": (
        {"method": "draft_model", "numSpeculativeTokens": 3},
        "spec.engine.speculativeDecoding.draftModel",
        "needs a draft checkpoint",
    ),
    "eagle without a head": (
        {"method": "eagle", "numSpeculativeTokens": 3},
        "spec.engine.speculativeDecoding.draftModel",
        "draftModel.uri",
    ),
    "ngram with a draft": (
        {"method": "ngram", "numSpeculativeTokens": 3, "draftModel": {"uri": "hf://a/b"}},
        "spec.engine.speculativeDecoding.draftModel",
        "remove draftModel",
    ),
    "lookup bounds for eagle3": (
        {**_EAGLE3, "promptLookupMax": 4},
        "spec.engine.speculativeDecoding.promptLookupMin",
        "only apply to method ngram",
    ),
    "lookup min above max": (
        {"method": "ngram", "numSpeculativeTokens": 3, "promptLookupMin": 5, "promptLookupMax": 2},
        "spec.engine.speculativeDecoding.promptLookupMin",
        "above promptLookupMax",
    ),
    "mtp on a model without mtp layers": (
        {"method": "mtp", "numSpeculativeTokens": 1},
        "spec.engine.speculativeDecoding.method",
        "no multi-token-prediction layers",
    ),
    "s3 draft for an hf model": (
        {**_EAGLE3, "draftModel": {"uri": "s3://heads-bucket/eagle3"}},
        "spec.engine.speculativeDecoding.draftModel.uri",
        "s3://",
    ),
    "draft uri not a hub repo": (
        {**_EAGLE3, "draftModel": {"uri": "hf://just-a-name"}},
        "spec.engine.speculativeDecoding.draftModel.uri",
        "hf://<org>/<name>",
    ),
    "unknown method": (
        {"method": "medusa", "numSpeculativeTokens": 3},
        "spec.engine.speculativeDecoding.method",
        "must be one of",
    ),
    "zero tokens": (
        {"method": "ngram", "numSpeculativeTokens": 0},
        "spec.engine.speculativeDecoding.numSpeculativeTokens",
        "at least 1",
    ),
}


@pytest.mark.parametrize(
    ("speculative", "path", "words"), INVALID_SPECULATIVE.values(), ids=INVALID_SPECULATIVE.keys()
)
def test_invalid_speculative_decoding(speculative: dict[str, Any], path: str, words: str) -> None:
    problems = validate_manifest(manifest(**{SPECULATIVE: speculative}))
    assert any(p.path == path and words in p.message for p in problems), problems


@pytest.mark.parametrize(
    "args",
    [
        ["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}'],
        ["--speculative_config={}"],
        ['-sc{"method": "ngram"}'],
        ["--spec-method", "ngram"],
        ["--spec-tokens=3"],
    ],
)
def test_speculative_flags_in_engine_args_point_at_the_field(args: list[str]) -> None:
    problems = validate_manifest(manifest(spec__engine={"args": args}))
    assert any("spec.engine.speculativeDecoding" in p.message for p in problems), problems
