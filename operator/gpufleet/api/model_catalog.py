"""Architecture facts of common open models, for KV-cache sizing.

Each entry is read from the model's config.json on Hugging Face (the URL is
in `source`): num_hidden_layers, num_key_value_heads, head_dim (or
hidden_size / num_attention_heads where the config has no head_dim),
num_attention_heads, max_position_embeddings and, for Gemma, sliding_window.
Parameter counts are the safetensors totals the Hub shows on the model page.
Fine-tunes and quantized re-uploads keep their base model's architecture, so
a lookup matches the base name anywhere in the last path component of the
model URI (`hf://neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8` is Llama 3.1 70B).

A model missing here is sized from spec.model.architecture; without either,
validation says what it could not check rather than guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class ModelArchitecture:
    """What the KV cache and the weights of a decoder-only transformer take."""

    name: str
    parameters: float
    layers: int
    kv_heads: int
    head_dim: int
    attention_heads: int | None
    # vLLM's default --max-model-len (the model's context) when the spec sets none.
    max_position_embeddings: int | None
    source: str
    # Layers that keep only the last `sliding_window` tokens (Gemma's local attention).
    sliding_window: int | None = None
    sliding_window_layers: int = 0

    @property
    def full_attention_layers(self) -> int:
        return self.layers - self.sliding_window_layers


_HF = "https://huggingface.co/{}/blob/main/config.json"


_R1 = "deepseek-ai/DeepSeek-R1-Distill-"


def _entry(
    repo: str,
    parameters: float,
    layers: int,
    kv_heads: int,
    head_dim: int,
    attention_heads: int,
    max_position_embeddings: int,
    sliding_window: int | None = None,
    sliding_window_layers: int = 0,
) -> ModelArchitecture:
    return ModelArchitecture(
        name=repo.rsplit("/", 1)[1],
        parameters=parameters,
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        attention_heads=attention_heads,
        max_position_embeddings=max_position_embeddings,
        source=_HF.format(repo),
        sliding_window=sliding_window,
        sliding_window_layers=sliding_window_layers,
    )


# Keyed by the lower-case base name a model URI's last component starts with (after an
# optional "meta-"); longer keys are tried first, so "llama-3.1-8b" is not "llama-3-8b".
# fmt: off
MODELS: Final[dict[str, ModelArchitecture]] = {
    # Llama 3 (8K context), 3.1 / 3.3 (128K), 3.2 (small, 128K).
    "llama-3-8b": _entry("meta-llama/Meta-Llama-3-8B", 8.03e9, 32, 8, 128, 32, 8192),
    "llama-3-70b": _entry("meta-llama/Meta-Llama-3-70B", 70.6e9, 80, 8, 128, 64, 8192),
    "llama-3.1-8b": _entry("meta-llama/Llama-3.1-8B", 8.03e9, 32, 8, 128, 32, 131072),
    "llama-3.1-70b": _entry("meta-llama/Llama-3.1-70B", 70.6e9, 80, 8, 128, 64, 131072),
    "llama-3.1-405b": _entry("meta-llama/Llama-3.1-405B", 405.9e9, 126, 8, 128, 128, 131072),
    "llama-3.2-1b": _entry("meta-llama/Llama-3.2-1B", 1.24e9, 16, 8, 64, 32, 131072),
    "llama-3.2-3b": _entry("meta-llama/Llama-3.2-3B", 3.21e9, 28, 8, 128, 24, 131072),
    "llama-3.3-70b": _entry("meta-llama/Llama-3.3-70B-Instruct", 70.6e9, 80, 8, 128, 64, 131072),
    # Mistral 7B v0.2/v0.3 (v0.1's 4096-token sliding window is counted as full attention:
    # an over-estimate of its KV cache), Mixtral.
    "mistral-7b": _entry("mistralai/Mistral-7B-Instruct-v0.3", 7.25e9, 32, 8, 128, 32, 32768),
    "mixtral-8x7b": _entry("mistralai/Mixtral-8x7B-Instruct-v0.1", 46.7e9, 32, 8, 128, 32, 32768),
    "mixtral-8x22b": _entry("mistralai/Mixtral-8x22B-Instruct-v0.1", 140.6e9, 56, 8, 128, 48, 65536),
    # Qwen2.5 (Instruct configs: 32K context; use_sliding_window is false).
    "qwen2.5-0.5b": _entry("Qwen/Qwen2.5-0.5B-Instruct", 0.494e9, 24, 2, 64, 14, 32768),
    "qwen2.5-1.5b": _entry("Qwen/Qwen2.5-1.5B-Instruct", 1.54e9, 28, 2, 128, 12, 32768),
    "qwen2.5-3b": _entry("Qwen/Qwen2.5-3B-Instruct", 3.09e9, 36, 2, 128, 16, 32768),
    "qwen2.5-7b": _entry("Qwen/Qwen2.5-7B-Instruct", 7.62e9, 28, 4, 128, 28, 32768),
    "qwen2.5-14b": _entry("Qwen/Qwen2.5-14B-Instruct", 14.8e9, 48, 8, 128, 40, 32768),
    "qwen2.5-32b": _entry("Qwen/Qwen2.5-32B-Instruct", 32.8e9, 64, 8, 128, 40, 32768),
    "qwen2.5-72b": _entry("Qwen/Qwen2.5-72B-Instruct", 72.7e9, 80, 8, 128, 64, 32768),
    # Qwen3 (40K context), dense and mixture-of-experts.
    "qwen3-4b": _entry("Qwen/Qwen3-4B", 4.02e9, 36, 8, 128, 32, 40960),
    "qwen3-8b": _entry("Qwen/Qwen3-8B", 8.19e9, 36, 8, 128, 32, 40960),
    "qwen3-14b": _entry("Qwen/Qwen3-14B", 14.8e9, 40, 8, 128, 40, 40960),
    "qwen3-32b": _entry("Qwen/Qwen3-32B", 32.8e9, 64, 8, 128, 64, 40960),
    "qwen3-30b-a3b": _entry("Qwen/Qwen3-30B-A3B", 30.5e9, 48, 4, 128, 32, 40960),
    "qwen3-235b-a22b": _entry("Qwen/Qwen3-235B-A22B", 235.1e9, 94, 4, 128, 64, 40960),
    # DeepSeek-R1 distills: Qwen2.5 (Math for 1.5B/7B) and Llama 3.1/3.3 bases, 128K context.
    "deepseek-r1-distill-qwen-1.5b": _entry(_R1 + "Qwen-1.5B", 1.78e9, 28, 2, 128, 12, 131072),
    "deepseek-r1-distill-qwen-7b": _entry(_R1 + "Qwen-7B", 7.62e9, 28, 4, 128, 28, 131072),
    "deepseek-r1-distill-qwen-14b": _entry(_R1 + "Qwen-14B", 14.8e9, 48, 8, 128, 40, 131072),
    "deepseek-r1-distill-qwen-32b": _entry(_R1 + "Qwen-32B", 32.8e9, 64, 8, 128, 40, 131072),
    "deepseek-r1-distill-llama-8b": _entry(_R1 + "Llama-8B", 8.03e9, 32, 8, 128, 32, 131072),
    "deepseek-r1-distill-llama-70b": _entry(_R1 + "Llama-70B", 70.6e9, 80, 8, 128, 64, 131072),
    # Gemma 2: every other layer is local (4096-token window). Gemma 3: five local layers
    # (1024-token window) to one global.
    "gemma-2-2b": _entry("google/gemma-2-2b-it", 2.61e9, 26, 4, 256, 8, 8192, 4096, 13),
    "gemma-2-9b": _entry("google/gemma-2-9b-it", 9.24e9, 42, 8, 256, 16, 8192, 4096, 21),
    "gemma-2-27b": _entry("google/gemma-2-27b-it", 27.2e9, 46, 16, 128, 32, 8192, 4096, 23),
    "gemma-3-12b": _entry("google/gemma-3-12b-it", 12.2e9, 48, 8, 256, 16, 131072, 1024, 40),
    "gemma-3-27b": _entry("google/gemma-3-27b-it", 27.4e9, 62, 16, 128, 32, 131072, 1024, 52),
}
# fmt: on

_KEYS_LONGEST_FIRST: Final = sorted(MODELS, key=len, reverse=True)
_NAME_END = re.compile(r"$|[-_.]")


def model_basename(uri: str) -> str:
    """The last path component of a model URI, lower case: 's3://b/m/Llama-3-8B/' -> 'llama-3-8b'."""
    return uri.rstrip("/").rsplit("/", 1)[-1].lower()


def lookup(uri: str) -> ModelArchitecture | None:
    """The catalog entry a model URI names, or None."""
    # "llama3-8b" is how some re-uploads spell Llama 3.
    base = re.sub(r"^llama(?=\d)", "llama-", model_basename(uri).removeprefix("meta-"))
    for key in _KEYS_LONGEST_FIRST:
        if base.startswith(key) and _NAME_END.match(base, len(key)):
            return MODELS[key]
    return None
