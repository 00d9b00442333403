"""Speculative decoding in the memory fit: a drafter's weights and KV share the GPUs (gpufleet.api.kv_fit)."""

from __future__ import annotations

from typing import Any

import pytest

from gpufleet.api import kv_fit, sizing, validate_manifest
from gpufleet.api.v1alpha1 import ModelDeployment
from gpufleet.api.validation import manifest_warnings
from tests.unit.dotted import with_changes

A100 = "NVIDIA-A100-SXM4-80GB"
LLAMA_8B = "hf://meta-llama/Meta-Llama-3-8B-Instruct"


def manifest(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m"},
        "spec": {"model": {"uri": LLAMA_8B, "maxModelLen": 8192}, "accelerator": {"gpuProduct": A100}},
    }
    return with_changes(base, changes)


def speculative(**fields: Any) -> dict[str, Any]:
    return manifest(spec__engine={"speculativeDecoding": fields})


def fit(obj: dict[str, Any]) -> kv_fit.KvFit:
    result = sizing.fit_of(sizing.deployment(ModelDeployment.model_validate(obj).spec))
    assert result is not None
    return result


def test_a_draft_model_counts_its_weights_and_kv_and_ngram_nothing() -> None:
    plain = fit(manifest())
    ngram = fit(speculative(method="ngram", numSpeculativeTokens=3))
    draft = fit(
        speculative(
            method="draft_model",
            numSpeculativeTokens=3,
            draftModel={"uri": "hf://meta-llama/Llama-3.2-1B-Instruct"},
        )
    )
    assert ngram.kv_tokens == plain.kv_tokens
    assert ngram.draft is None
    assert draft.draft is not None
    assert not draft.draft.estimated
    # Llama 3.2 1B: 1.24e9 weights in bf16, and 16 layers × 8 KV heads × 64 per token beside the 8B's.
    assert draft.draft_weights_gib_per_gpu == pytest.approx(1.24e9 * 2 / 2**30)
    per_token = 2 * (32 * 8 * 128 + 16 * 8 * 64) * 2
    assert draft.sequence_bytes(16) == 16 * per_token
    assert draft.kv_tokens == int(draft.available_bytes_per_gpu // (16 * per_token)) * 16
    assert draft.kv_tokens < plain.kv_tokens


def test_an_eagle_head_is_estimated_as_one_layer_of_the_model() -> None:
    result = fit(
        speculative(method="eagle", numSpeculativeTokens=3, draftModel={"uri": "hf://acme/eagle-head"})
    )
    assert result.draft is not None
    assert result.draft.estimated
    assert result.draft.weight_bytes == pytest.approx(8.03e9 / 32 * 2)
    assert result.sequence_bytes(16) == 16 * 2 * 33 * 8 * 128 * 2


def test_a_given_parameter_count_and_architecture_replace_the_estimate() -> None:
    head = {
        "uri": "hf://acme/eagle-head",
        "parameterCount": 1e9,
        "architecture": {"numHiddenLayers": 1, "numKeyValueHeads": 8, "headDim": 128},
    }
    result = fit(speculative(method="eagle3", numSpeculativeTokens=3, draftModel=head))
    assert result.draft is not None
    assert not result.draft.estimated
    assert result.draft.weight_bytes == pytest.approx(2e9)


def test_an_unknown_draft_model_is_a_warning() -> None:
    unknown = speculative(method="draft_model", numSpeculativeTokens=3, draftModel={"uri": "hf://acme/tiny"})
    assert validate_manifest(unknown) == []
    assert any("not fully counted" in str(w) for w in manifest_warnings(unknown))


def test_a_draft_can_break_a_fit_that_holds_without_it() -> None:
    alone = manifest(
        spec__model__maxModelLen=4096,
        spec__model__quantization="awq",
        spec__accelerator__migProfile="1g.10gb",
    )
    assert validate_manifest(alone) == []
    draft = {
        "method": "draft_model",
        "numSpeculativeTokens": 3,
        "draftModel": {"uri": "hf://meta-llama/Meta-Llama-3-8B"},
    }
    problems = validate_manifest(with_changes(alone, {"spec__engine": {"speculativeDecoding": draft}}))
    assert any("with the speculative draft" in p.message for p in problems), problems
