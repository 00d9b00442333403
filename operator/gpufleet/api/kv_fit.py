"""KV-cache-aware memory fit: vLLM's start-up memory profile as plain arithmetic.

One code path for `gpufleet validate`, the admission webhook, `gpufleet fit`
and the fleet simulator's engine (hack/fleetsim/vllm_model.py), so what
gpufleet accepts is what the simulated vLLM starts.

Per GPU (or MIG slice) of a replica, as vLLM's V1 worker does it
(vllm/v1/worker/gpu_worker.py determine_available_memory: requested memory =
total × gpu_memory_utilization, KV cache = requested − weights − peak
activations − non-torch memory):

    weights     = parameters × bytes per parameter ÷ TP
    KV memory   = device memory × gpu_memory_utilization − weights − ACTIVATION_RESERVE_GIB
    KV per token = 2 (K and V) × layers × KV heads per GPU × head dim × KV dtype bytes,
                   KV heads per GPU = max(1, KV heads ÷ TP) (vLLM replicates heads past TP = heads)
    KV tokens   = whole blocks of BLOCK_TOKENS that fit, × BLOCK_TOKENS

vLLM then refuses to start when one max_model_len sequence does not fit
(vllm/v1/core/kv_cache_utils.py check_enough_kv_cache_memory: "To serve at
least one request with the models's max seq len (...)"). Sliding-window layers
(Gemma) hold at most sliding_window − 1 + max_num_batched_tokens tokens of a
sequence, plus a block (SlidingWindowSpec.max_memory_usage_bytes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gpufleet.api import catalog
from gpufleet.api.model_catalog import ModelArchitecture

# vLLM's --block-size default on CUDA: the KV cache is allocated in blocks of this many tokens.
BLOCK_TOKENS: Final = 16
# Kept per GPU beside weights and KV cache: activation peak of the profile run and non-torch
# memory (CUDA context, NCCL buffers, CUDA graphs). vLLM's logs show 0.6 GiB (vllm PR #14447,
# 0.8.x) to 3.05 GiB (Llama 3 8B on A100, PR #10511); 2 GiB sits between and puts Llama 3 70B
# TP4 on A100 80GB near REFERENCE.md's 450K tokens. An estimate: vLLM measures it at start-up.
ACTIVATION_RESERVE_GIB: Final = 2.0
# Bytes per KV element by --kv-cache-dtype (vllm/config/cache.py CacheDType); auto is the
# model's dtype, 2 bytes for the bf16/fp16 models served here.
KV_CACHE_DTYPE_BYTES: Final[dict[str, float]] = {
    "auto": 2,
    "bfloat16": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "fp8_inc": 1,
}
# Prompt + output tokens of a "typical" request when the spec gives none: vLLM's own serving
# benchmark (`vllm bench serve --dataset-name random`) defaults to 1,024-token prompts.
TYPICAL_SEQUENCE_TOKENS: Final = 1024
# Longest sequence the capacity search considers (sliding-window models can plateau).
_MAX_SEARCH_TOKENS: Final = 1 << 24


def batch_defaults(device_gib: float, gpu_product: str | None) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) as vLLM's EngineArgs.get_batch_defaults picks them
    for `vllm serve`: 8192 / 1024 on devices with >= 70 GiB that are not A100, else 2048 / 256."""
    if device_gib >= 70 and "A100" not in (gpu_product or ""):
        return 8192, 1024
    return 2048, 256


def device_memory_gib(
    gpu_product: str | None, mig_profile: str | None = None, gpu_memory_gib: float | None = None
) -> float | None:
    """Memory CUDA reports for one device of a replica (a GPU, or a MIG slice of one), or None.

    gpuMemoryGiB, when set, is taken as the whole GPU's. A slice `<g>g.<m>gb` gets m / the GPU's
    nominal size of the whole (its share of the memory slices).
    """
    product = gpu_product or ""
    whole = gpu_memory_gib
    if whole is None:
        whole = catalog.CUDA_MEMORY_GIB.get(product, catalog.GPU_MEMORY_GIB.get(product))
    if mig_profile is None:
        return whole
    nominal = catalog.GPU_MEMORY_GIB.get(product)
    slice_gib = catalog.mig_profile_memory_gib(mig_profile)
    if whole is None or nominal is None:
        return slice_gib
    return whole * slice_gib / nominal


def engine_flag(args: Sequence[str], flag: str) -> str | None:
    """The last value of a `vllm serve` flag in args (`--flag v` or `--flag=v`; `_` read as `-`)."""
    value: str | None = None
    for i, arg in enumerate(args):
        name, equals, attached = arg.partition("=")
        if name.startswith("--") and "--" + name[2:].replace("_", "-") == flag:
            if equals:
                value = attached
            elif i + 1 < len(args):
                value = args[i + 1]
    return value


def bytes_per_parameter(dtype: str, quantization: str) -> float:
    """Bytes per weight for spec.model.dtype and spec.model.quantization."""
    if quantization != "none":
        return catalog.BYTES_PER_PARAMETER_BY_QUANTIZATION[quantization]
    return catalog.BYTES_PER_PARAMETER_BY_DTYPE[dtype]


def kv_heads_per_gpu(arch: ModelArchitecture, tensor_parallel_size: int) -> int:
    return max(1, arch.kv_heads // tensor_parallel_size)


def kv_bytes_per_token(
    arch: ModelArchitecture, kv_dtype_bytes: float, tensor_parallel_size: int = 1
) -> float:
    """KV bytes one token takes on one GPU in every layer: 2 × layers × KV heads/GPU × head dim × bytes."""
    heads = kv_heads_per_gpu(arch, tensor_parallel_size)
    return 2 * arch.layers * heads * arch.head_dim * kv_dtype_bytes


def sequence_bytes(
    arch: ModelArchitecture,
    length: int,
    *,
    tensor_parallel_size: int,
    kv_dtype_bytes: float,
    max_num_batched_tokens: int,
) -> float:
    """KV bytes per GPU vLLM reserves for one sequence of `length` tokens (whole blocks)."""
    page = BLOCK_TOKENS * 2 * kv_heads_per_gpu(arch, tensor_parallel_size) * arch.head_dim * kv_dtype_bytes
    blocks = arch.full_attention_layers * math.ceil(length / BLOCK_TOKENS)
    if arch.sliding_window_layers and arch.sliding_window:
        held = min(arch.sliding_window - 1 + max_num_batched_tokens, length)
        blocks += arch.sliding_window_layers * (math.ceil(held / BLOCK_TOKENS) + 1)
    return blocks * page


def available_kv_bytes(
    parameters: float,
    bytes_per_parameter: float,
    tensor_parallel_size: int,
    device_gib: float,
    gpu_memory_utilization: float,
) -> float:
    """Bytes per GPU left for the KV cache; zero or less when the weights do not fit."""
    weights = parameters * bytes_per_parameter / tensor_parallel_size
    budget = device_gib * catalog.GIB * gpu_memory_utilization
    return budget - weights - ACTIVATION_RESERVE_GIB * catalog.GIB


@dataclass(frozen=True)
class KvFit:
    """How one replica's weights and KV cache sit in its devices."""

    architecture: ModelArchitecture
    parameters: float
    bytes_per_parameter: float
    tensor_parallel_size: int
    device_gib: float
    gpu_memory_utilization: float
    kv_dtype_bytes: float
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int

    @property
    def weights_gib_per_gpu(self) -> float:
        return self.parameters * self.bytes_per_parameter / self.tensor_parallel_size / catalog.GIB

    @property
    def budget_gib_per_gpu(self) -> float:
        return self.device_gib * self.gpu_memory_utilization

    @property
    def available_bytes_per_gpu(self) -> float:
        return available_kv_bytes(
            self.parameters,
            self.bytes_per_parameter,
            self.tensor_parallel_size,
            self.device_gib,
            self.gpu_memory_utilization,
        )

    @property
    def kv_cache_gib_per_gpu(self) -> float:
        return max(0.0, self.available_bytes_per_gpu / catalog.GIB)

    @property
    def weights_fit(self) -> bool:
        return self.available_bytes_per_gpu > 0

    def sequence_bytes(self, length: int) -> float:
        return sequence_bytes(
            self.architecture,
            length,
            tensor_parallel_size=self.tensor_parallel_size,
            kv_dtype_bytes=self.kv_dtype_bytes,
            max_num_batched_tokens=self.max_num_batched_tokens,
        )

    @property
    def kv_tokens(self) -> int:
        """Longest sequence the KV cache holds (for full attention: all its tokens), in whole blocks."""
        available = self.available_bytes_per_gpu
        if available <= 0:
            return 0
        arch = self.architecture
        if not arch.sliding_window_layers:
            per_block = self.sequence_bytes(BLOCK_TOKENS)
            return int(available // per_block) * BLOCK_TOKENS
        low, high = 0, _MAX_SEARCH_TOKENS
        while low < high:  # the largest length whose blocks fit
            mid = (low + high + 1) // 2
            if self.sequence_bytes(mid) <= available:
                low = mid
            else:
                high = mid - 1
        return low // BLOCK_TOKENS * BLOCK_TOKENS

    @property
    def holds_max_model_len(self) -> bool:
        return self.weights_fit and self.sequence_bytes(self.max_model_len) <= self.available_bytes_per_gpu

    def sequences(self, length: int) -> int:
        """Sequences of `length` tokens the KV cache holds at once."""
        available = self.available_bytes_per_gpu
        return int(available // self.sequence_bytes(length)) if available > 0 and length > 0 else 0


def vllm_refusal(fit: KvFit, allow_long_max_model_len: bool = False) -> str | None:
    """Why vLLM would refuse to start with this fit, in vLLM's words, or None."""
    arch = fit.architecture
    heads = arch.attention_heads
    if heads is not None and heads % fit.tensor_parallel_size:
        # vllm/config/model.py verify_with_parallel_config
        return (
            f"Total number of attention heads ({heads}) must be divisible by tensor parallel size "
            f"({fit.tensor_parallel_size})."
        )
    limit = arch.max_position_embeddings
    if limit is not None and fit.max_model_len > limit and not allow_long_max_model_len:
        # vllm/config/model.py _get_and_verify_max_len
        return (
            f"User-specified max_model_len ({fit.max_model_len}) is greater than the derived "
            f"max_model_len (max_position_embeddings={limit}). To allow overriding this maximum, "
            "set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1."
        )
    if not fit.weights_fit:
        return (
            "No available memory for the cache blocks: "
            f"{fit.weights_gib_per_gpu:.1f} GiB of weights per GPU, {fit.budget_gib_per_gpu:.1f} GiB "
            f"allowed at gpu_memory_utilization={fit.gpu_memory_utilization}. "
            "Try increasing `gpu_memory_utilization` when initializing the engine."
        )
    if not fit.holds_max_model_len:
        return (
            f"To serve at least one request with the models's max seq len ({fit.max_model_len}), "
            f"({fit.sequence_bytes(fit.max_model_len) / catalog.GIB:.2f} GiB KV cache is needed, which is "
            "larger than the available KV cache memory "
            f"({fit.available_bytes_per_gpu / catalog.GIB:.2f} GiB). Based on the available memory, the "
            f"estimated maximum model length is {fit.kv_tokens}. Try increasing `gpu_memory_utilization` "
            "or decreasing `max_model_len` when initializing the engine."
        )
    return None
