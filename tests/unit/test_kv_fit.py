"""KV-cache sizing, table-driven: one case per model family in the catalog and for the spec's own fields."""

from __future__ import annotations

from typing import Any

import pytest

from gpufleet.api import kv_fit, model_catalog, sizing, validate_manifest
from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from gpufleet.api.validation import manifest_warnings
from tests.unit.dotted import with_changes

A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"


def manifest(uri: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m"},
        "spec": {"model": {"uri": uri}, "accelerator": {"gpuProduct": A100}},
    }
    return with_changes(base, changes)


@pytest.mark.parametrize("key", sorted(model_catalog.MODELS))
def test_every_catalog_entry_is_found_by_its_hugging_face_name(key: str) -> None:
    entry = model_catalog.MODELS[key]
    repo = entry.source.removeprefix("https://huggingface.co/").removesuffix("/blob/main/config.json")
    assert model_catalog.lookup(f"hf://{repo}") is entry
    assert entry.source.startswith("https://huggingface.co/")
    if entry.attention_heads is not None:
        assert entry.attention_heads % entry.kv_heads == 0  # grouped-query attention


@pytest.mark.parametrize(
    ("uri", "key"),
    [
        ("s3://models/meta-llama/Meta-Llama-3-70B-Instruct/", "llama-3-70b"),
        ("hf://neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8", "llama-3.1-70b"),
        ("hf://casperhansen/llama-3-70b-instruct-awq", "llama-3-70b"),
        ("pvc://cache/llama3-8b-instruct", "llama-3-8b"),
        ("hf://Qwen/Qwen2.5-72B-Instruct-AWQ", "qwen2.5-72b"),
        ("hf://Qwen/Qwen3-30B-A3B", "qwen3-30b-a3b"),
    ],
)
def test_fine_tunes_and_quantized_uploads_keep_their_base_architecture(uri: str, key: str) -> None:
    assert model_catalog.lookup(uri) is model_catalog.MODELS[key]


def test_unknown_models_are_not_guessed() -> None:
    assert model_catalog.lookup("hf://acme/mystery-70b") is None
    assert model_catalog.lookup("hf://nvidia/Llama-3.1-Nemotron-70B-Instruct-HF") is None


def test_kv_bytes_per_token_follows_the_formula_and_replicates_heads_past_tp() -> None:
    llama70 = model_catalog.MODELS["llama-3-70b"]
    assert kv_fit.kv_bytes_per_token(llama70, 2) == 320 * 1024  # REFERENCE.md
    assert kv_fit.kv_bytes_per_token(llama70, 2, 4) == 80 * 1024
    assert kv_fit.kv_bytes_per_token(llama70, 1, 4) == 40 * 1024  # --kv-cache-dtype fp8
    qwen7 = model_catalog.MODELS["qwen2.5-7b"]  # 4 KV heads: at TP 8 each GPU keeps one
    assert kv_fit.kv_bytes_per_token(qwen7, 2, 8) == kv_fit.kv_bytes_per_token(qwen7, 2, 4)


# (model, changes, accepted, words in the problem or warning)
FAMILY_CASES: dict[str, tuple[str, dict[str, Any], bool, tuple[str, ...]]] = {
    "llama 3 8b on 2g.20gb at 0.9": (
        "hf://meta-llama/Meta-Llama-3-8B-Instruct",
        {"spec__accelerator__migProfile": "2g.20gb"},
        False,
        ("KV cache holds 7,104 tokens per replica, maxModelLen is 8192",),
    ),
    "llama 3 8b on 2g.20gb with an fp8 kv cache": (
        "hf://meta-llama/Meta-Llama-3-8B-Instruct",
        {"spec__accelerator__migProfile": "2g.20gb", "spec__engine": {"args": ["--kv-cache-dtype", "fp8"]}},
        True,
        ("14,208 tokens",),
    ),
    "llama 3.1 8b on 3g.40gb at its full 128K context": (
        "hf://meta-llama/Llama-3.1-8B-Instruct",
        {"spec__accelerator__migProfile": "3g.40gb"},
        True,
        ("153,",),
    ),
    "llama 3.1 8b on 2g.20gb, maxModelLen unset": (
        "hf://meta-llama/Llama-3.1-8B-Instruct",
        {"spec__accelerator__migProfile": "2g.20gb"},
        False,
        ("maxModelLen is 131072 (unset: the model's context)",),
    ),
    "llama 3.2 3b on 1g.10gb": (
        "hf://meta-llama/Llama-3.2-3B-Instruct",
        {"spec__accelerator__migProfile": "1g.10gb", "spec__model__maxModelLen": 8192},
        True,
        ("requests of 1,024 tokens",),
    ),
    "llama 3.3 70b tp4 at 128K": (
        "hf://meta-llama/Llama-3.3-70B-Instruct",
        {"spec__accelerator__tensorParallelSize": 4},
        True,
        (),
    ),
    "llama 3.1 405b fp8 tp8 at 128K": (
        "hf://meta-llama/Llama-3.1-405B-Instruct",
        {"spec__accelerator__tensorParallelSize": 8, "spec__model__quantization": "fp8"},
        True,
        (),
    ),
    "llama 3.1 405b bf16 tp8 does not fit": (
        "hf://meta-llama/Llama-3.1-405B-Instruct",
        {"spec__accelerator__tensorParallelSize": 8},
        False,
        ("94.5 GiB of weights", "quantization: fp8"),
    ),
    "mistral 7b at 32K on 3g.40gb": (
        "hf://mistralai/Mistral-7B-Instruct-v0.3",
        {"spec__accelerator__migProfile": "3g.40gb"},
        True,
        (),
    ),
    "mixtral 8x7b bf16 tp2": (
        "hf://mistralai/Mixtral-8x7B-Instruct-v0.1",
        {"spec__accelerator__tensorParallelSize": 2},
        True,
        (),
    ),
    "mixtral 8x22b bf16 tp2 does not fit": (
        "hf://mistralai/Mixtral-8x22B-Instruct-v0.1",
        {"spec__accelerator__tensorParallelSize": 2},
        False,
        ("130.9 GiB of weights", "use tensorParallelSize: 8"),
    ),
    "qwen2.5 72b awq tp1 on H100": (
        "hf://Qwen/Qwen2.5-72B-Instruct-AWQ",
        {"spec__model__quantization": "awq", "spec__accelerator__gpuProduct": H100},
        True,
        ("fewer than --max-num-seqs 1024",),
    ),
    "qwen2.5 7b tp8: 28 heads": (
        "hf://Qwen/Qwen2.5-7B-Instruct",
        {"spec__accelerator__tensorParallelSize": 8},
        False,
        ("28 attention heads",),
    ),
    "qwen3 32b tp2": ("hf://Qwen/Qwen3-32B", {"spec__accelerator__tensorParallelSize": 2}, True, ()),
    "qwen3 235b-a22b fp8 tp2 does not fit": (
        "hf://Qwen/Qwen3-235B-A22B",
        {"spec__accelerator__tensorParallelSize": 2, "spec__model__quantization": "fp8"},
        False,
        ("use tensorParallelSize: 4",),
    ),
    "deepseek r1 distill qwen 32b tp1 at 128K": (
        "hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        {},
        False,
        ("maxModelLen is 131072", "maxModelLen ≤"),
    ),
    "deepseek r1 distill llama 70b tp4 at 128K": (
        "hf://deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
        {"spec__accelerator__tensorParallelSize": 4},
        True,
        (),
    ),
    # 62 layers counted in full would need 62 GiB for one 128K sequence; the 52 local layers hold
    # 1024 - 1 + 2048 tokens each, so vLLM (and gpufleet) fit it in ~11 GiB.
    "gemma 3 27b fp8 tp1 at 128K: sliding windows": (
        "hf://google/gemma-3-27b-it",
        {"spec__model__quantization": "fp8"},
        True,
        (),
    ),
    "gemma 2 9b on 2g.20gb": (
        "hf://google/gemma-2-9b-it",
        {"spec__accelerator__migProfile": "2g.20gb"},
        False,
        ("GiB of weights",),
    ),
    "spec architecture for a model not in the catalog": (
        "hf://acme/mystery-model",
        {
            "spec__model__parameterCount": 8e9,
            "spec__model__maxModelLen": 65536,
            "spec__model__architecture": {"numHiddenLayers": 32, "numKeyValueHeads": 8, "headDim": 128},
            "spec__accelerator__migProfile": "3g.40gb",
        },
        True,
        ("requests of 1,024 tokens",),
    ),
    "spec architecture past its own context": (
        "hf://acme/mystery-model",
        {
            "spec__model__parameterCount": 8e9,
            "spec__model__maxModelLen": 65536,
            "spec__model__architecture": {
                "numHiddenLayers": 32,
                "numKeyValueHeads": 8,
                "headDim": 128,
                "maxPositionEmbeddings": 32768,
            },
        },
        False,
        ("longer than mystery-model's context (32768 tokens",),
    ),
    "spec architecture overrides the catalog": (
        "hf://meta-llama/Meta-Llama-3-8B-Instruct",
        {
            "spec__model__architecture": {"numHiddenLayers": 320, "numKeyValueHeads": 8, "headDim": 128},
            "spec__accelerator__migProfile": "3g.40gb",
            "spec__model__maxModelLen": 32768,
        },
        False,
        ("KV cache holds 15,",),
    ),
}


@pytest.mark.parametrize(
    ("uri", "changes", "accepted", "words"), FAMILY_CASES.values(), ids=FAMILY_CASES.keys()
)
def test_fit_per_model_family(
    uri: str, changes: dict[str, Any], accepted: bool, words: tuple[str, ...]
) -> None:
    doc = manifest(uri, **changes)
    problems = validate_manifest(doc)
    assert (not problems) is accepted, problems
    said = " ".join(p.message for p in problems + manifest_warnings(doc))
    for word in words:
        assert word in said, said


def test_without_catalog_entry_or_fields_the_check_says_what_it_did_not_verify() -> None:
    no_size = manifest("hf://acme/mystery-model")
    assert validate_manifest(no_size) == []
    assert [p.path for p in manifest_warnings(no_size)] == ["spec.model.parameterCount"]
    weights_only = manifest("hf://acme/mystery-model", spec__model__parameterCount=8e9)
    assert validate_manifest(weights_only) == []
    (warning,) = manifest_warnings(weights_only)
    assert warning.path == "spec.model.architecture"
    assert "not checked" in warning.message


def test_max_model_len_past_the_context_is_allowed_with_vllms_override() -> None:
    longer = manifest("hf://meta-llama/Meta-Llama-3-8B-Instruct", spec__model__maxModelLen=16384)
    assert [p.path for p in validate_manifest(longer)] == ["spec.model.maxModelLen"]
    longer["spec"]["engine"] = {"env": [{"name": "VLLM_ALLOW_LONG_MAX_MODEL_LEN", "value": "1"}]}
    assert validate_manifest(longer) == []


def test_typical_length_and_max_num_seqs_drive_the_warning() -> None:
    fp8 = manifest(
        "hf://meta-llama/Meta-Llama-3-70B-Instruct",
        spec__model__quantization="fp8",
        spec__accelerator__tensorParallelSize=2,
    )
    (warning,) = manifest_warnings(fp8)
    assert "233 requests of 1,024 tokens" in warning.message
    assert "use tensorParallelSize: 4" in warning.message
    fp8["spec"]["model"]["typicalSequenceLength"] = 512
    assert manifest_warnings(fp8) == []
    fp8["spec"]["model"]["typicalSequenceLength"] = 2048
    fp8["spec"]["engine"] = {"args": ["--max-num-seqs=64"]}
    assert manifest_warnings(fp8) == []


def test_sliding_window_sequence_bytes_match_vllms_admission_bound() -> None:
    gemma = model_catalog.MODELS["gemma-3-27b"]
    one = kv_fit.sequence_bytes(
        gemma, 131072, tensor_parallel_size=1, kv_dtype_bytes=2, max_num_batched_tokens=2048
    )
    page = kv_fit.BLOCK_TOKENS * 2 * 16 * 128 * 2
    # full layers: every block of the sequence; local layers: cdiv(1023 + 2048, 16) + 1 blocks
    assert one == (10 * 131072 // 16 + 52 * (192 + 1)) * page


def test_lora_slots_follow_vllms_stacked_a_and_b_per_projection() -> None:
    """Llama 3 8B (hidden 4096, 8 KV heads of 128, MLP 14336, 32 layers): per slot of rank 16 in bf16,
    q/k/v/gate/up keep A (rank × 4096) whole, o/down keep B (4096 × rank) whole, the rest is sharded:
    16 × 32 × (7 × 4096 + (4096 + 2 × 1024 + 3 × 14336) ÷ TP) × 2 bytes = 76 MiB at TP 1. The MLP width
    is estimated from the parameter count (embeddings included), so the estimate is a little over."""
    arch = model_catalog.lookup("hf://meta-llama/Meta-Llama-3-8B-Instruct")
    assert arch is not None
    exact = 16 * 32 * (7 * 4096 + (4096 + 2 * 1024 + 3 * 14336)) * 2
    estimate = kv_fit.lora_bytes_per_gpu(arch, arch.parameters, 1, 16, 2, 1)
    assert exact <= estimate <= exact * 1.15
    assert kv_fit.lora_bytes_per_gpu(arch, arch.parameters, 4, 64, 2, 1) == pytest.approx(16 * estimate)
    # TP 4 shards only the part that is not replicated: a bit over half.
    assert estimate * 0.45 < kv_fit.lora_bytes_per_gpu(arch, arch.parameters, 1, 16, 2, 4) < estimate * 0.6
    assert kv_fit.lora_bytes_per_gpu(arch, arch.parameters, 0, 16, 2, 1) == 0


def test_lora_slots_come_out_of_the_kv_cache_and_can_stop_a_fit() -> None:
    def fit(**changes: Any) -> kv_fit.KvFit:
        body = manifest(
            "hf://meta-llama/Meta-Llama-3-70B-Instruct",
            spec__model__maxModelLen=8192,
            spec__accelerator__tensorParallelSize=4,
            **changes,
        )
        found = sizing.fit_of(sizing.deployment(ModelDeploymentSpec.model_validate(body["spec"])))
        assert found is not None
        return found

    adapters = [{"name": f"a{i}", "uri": f"hf://acme/a{i}"} for i in range(4)]
    plain = fit()
    four = fit(spec__engine__loraAdapters=adapters, spec__engine__maxLoraRank=64)
    assert plain.lora_bytes_per_gpu == 0
    # 4 slots of rank 64 on a 70B at TP 4: ~3 GiB per GPU, about 10K fewer tokens of KV cache.
    assert 2.5 < four.lora_bytes_per_gpu / 2**30 < 3.5
    assert plain.kv_tokens - four.kv_tokens > 9000
    huge = fit(spec__engine__loraAdapters=adapters, spec__engine__maxLoras=64, spec__engine__maxLoraRank=512)
    assert kv_fit.vllm_refusal(huge) is not None


def test_a_spec_naming_no_gpu_is_not_refused_for_a_catalog_size_but_told_what_was_not_checked() -> None:
    """The server fills in defaults for a minimal spec ({model: {uri}}); the catalog knows the model's
    size, but nothing says how much memory a replica gets: a warning, not a refusal. A parameterCount
    the author wrote asks for the check, and then an unknown GPU is an error, as before."""
    minimal = {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "minimal"},
        "spec": {"model": {"uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct"}},
    }
    assert validate_manifest(minimal) == []
    (warning,) = manifest_warnings(minimal)
    assert warning.path == "spec.accelerator.gpuProduct"
    assert "not checked" in warning.message
    stated = {**minimal, "spec": {"model": {**minimal["spec"]["model"], "parameterCount": 8e9}}}
    assert [p.path for p in validate_manifest(stated)] == ["spec.accelerator.gpuMemoryGiB"]
