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
    draft_weight_bytes: float = 0.0,
) -> float:
    """Bytes per GPU left for the KV cache; zero or less when the weights do not fit.

    `draft_weight_bytes` (all ranks) is a speculative drafter's, sharded like the model: vLLM
    defaults draft_tensor_parallel_size to the target's (vllm/config/speculative.py
    _verify_and_get_draft_tp)."""
    weights = (parameters * bytes_per_parameter + draft_weight_bytes) / tensor_parallel_size
    budget = device_gib * catalog.GIB * gpu_memory_utilization
    return budget - weights - ACTIVATION_RESERVE_GIB * catalog.GIB


@dataclass(frozen=True)
class Draft:
    """A speculative-decoding drafter's footprint: its weights and the layers it keeps KV for."""

    method: str
    weight_bytes: float
    # Its attention layers: vLLM puts the drafter's KV in the same cache as the model's
    # (SpeculativeConfig.uses_draft_kv_cache: EAGLE-style methods and draft_model). None: no KV.
    architecture: ModelArchitecture | None
    # True where the numbers are gpufleet's guess, not the checkpoint's.
    estimated: bool = False


# Methods that run a second network. ngram matches the prompt and has neither weights nor KV.
DRAFT_CHECKPOINT_METHODS: Final = ("draft_model", "eagle", "eagle3")


def speculative_draft(
    method: str,
    target: ModelArchitecture,
    target_parameters: float,
    bytes_per_parameter: float,
    draft_parameters: float | None = None,
    draft_architecture: ModelArchitecture | None = None,
    dtype_bytes: float | None = None,
) -> Draft | None:
    """The drafter of `method` for this target, or None when it takes no memory (ngram) or its
    size is unknown (a draft_model with no parameter count). `bytes_per_parameter` is the
    target's (with its quantization), `dtype_bytes` its unquantized dtype's.

    An EAGLE/EAGLE-3 head and MTP layers are one decoder layer working on the target's hidden
    states (EAGLE's configs have num_hidden_layers 1, vllm issue #11126); without a count they are
    estimated as one layer's share of the target's weights, with the target's KV geometry. An
    estimate: EAGLE-3 heads also carry their own reduced-vocabulary lm_head.
    """
    if method == "ngram":
        return None
    one_layer = ModelArchitecture(
        name=f"{target.name} {method} head",
        parameters=target_parameters / target.layers,
        layers=1,
        kv_heads=target.kv_heads,
        head_dim=target.head_dim,
        attention_heads=target.attention_heads,
        max_position_embeddings=target.max_position_embeddings,
        source="estimate: one decoder layer of the served model",
    )
    # A draft checkpoint loads in the target's dtype, unquantized unless speculative_config sets
    # a quantization (DraftModelSpeculatorConfig.configure); MTP layers take the target's
    # quantization (MTPSpeculatorConfig.default_model).
    per_parameter = bytes_per_parameter if method == "mtp" else (dtype_bytes or bytes_per_parameter)
    if method == "draft_model":
        if draft_parameters is None:
            return None
        return Draft(method, draft_parameters * per_parameter, draft_architecture)
    parameters = draft_parameters if draft_parameters is not None else one_layer.parameters
    return Draft(
        method,
        parameters * per_parameter,
        draft_architecture or one_layer,
        estimated=draft_parameters is None or draft_architecture is None,
    )


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
    # A speculative drafter sharing the GPUs (spec.engine.speculativeDecoding); None: none.
    draft: Draft | None = None
    # LoRA slots reserved beside the weights (lora_bytes_per_gpu); 0 without adapters.
    lora_bytes_per_gpu: float = 0.0

    @property
    def weights_gib_per_gpu(self) -> float:
        return self.parameters * self.bytes_per_parameter / self.tensor_parallel_size / catalog.GIB

    @property
    def draft_weights_gib_per_gpu(self) -> float:
        return self.draft.weight_bytes / self.tensor_parallel_size / catalog.GIB if self.draft else 0.0

    @property
    def budget_gib_per_gpu(self) -> float:
        return self.device_gib * self.gpu_memory_utilization

    @property
    def available_bytes_per_gpu(self) -> float:
        weights_left = available_kv_bytes(
            self.parameters,
            self.bytes_per_parameter,
            self.tensor_parallel_size,
            self.device_gib,
            self.gpu_memory_utilization,
            self.draft.weight_bytes if self.draft else 0.0,
        )
        return weights_left - self.lora_bytes_per_gpu

    @property
    def kv_cache_gib_per_gpu(self) -> float:
        return max(0.0, self.available_bytes_per_gpu / catalog.GIB)

    @property
    def weights_fit(self) -> bool:
        return self.available_bytes_per_gpu > 0

    def sequence_bytes(self, length: int) -> float:
        total = sequence_bytes(
            self.architecture,
            length,
            tensor_parallel_size=self.tensor_parallel_size,
            kv_dtype_bytes=self.kv_dtype_bytes,
            max_num_batched_tokens=self.max_num_batched_tokens,
        )
        if self.draft is not None and self.draft.architecture is not None:
            # Every token also has KV in the drafter's layers.
            total += sequence_bytes(
                self.draft.architecture,
                length,
                tensor_parallel_size=self.tensor_parallel_size,
                kv_dtype_bytes=self.kv_dtype_bytes,
                max_num_batched_tokens=self.max_num_batched_tokens,
            )
        return total

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
        draft = f" (+{fit.draft_weights_gib_per_gpu:.1f} GiB of draft)" if fit.draft else ""
        return (
            "No available memory for the cache blocks: "
            f"{fit.weights_gib_per_gpu:.1f} GiB of weights per GPU{draft}, {fit.budget_gib_per_gpu:.1f} GiB "
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


def lora_bytes_per_gpu(
    arch: ModelArchitecture,
    parameters: float,
    max_loras: int,
    max_lora_rank: int,
    dtype_bytes: float,
    tensor_parallel_size: int,
) -> float:
    """GPU memory per GPU vLLM reserves for LoRA adapters at start-up: an estimate.

    With --enable-lora vLLM wraps every attention and MLP projection and allocates, per projection,
    A of max_loras × max_lora_rank × input and B of max_loras × output × max_lora_rank in the LoRA dtype
    (the model's by default): vllm/lora/layers/base_linear.py create_lora_weights and
    vllm/config/lora.py at v0.34.0. Column-parallel projections (q, k, v, gate, up) keep A whole and
    shard B's output; row-parallel ones (o, down) shard A's input and keep B whole. So per GPU and
    layer, the ranks times 7 hidden (replicated) + (hidden + 2 KV widths + 3 intermediate) ÷ TP.

    Estimated: the hidden size is heads × head dim (or, without heads, from 12 × hidden² per layer), and
    the MLP width from what the parameters leave per layer after attention (embeddings counted in,
    which overstates it by a few per cent). The MoE experts' LoRA weights are not counted.
    """
    if max_loras <= 0 or max_lora_rank <= 0:
        return 0.0
    layers = arch.layers
    hidden = (
        arch.attention_heads * arch.head_dim
        if arch.attention_heads
        else math.sqrt(parameters / (12 * layers))
    )
    kv_width = arch.kv_heads * arch.head_dim
    attention = 2 * hidden * hidden + 2 * hidden * kv_width
    intermediate = max((parameters / layers - attention) / (3 * hidden), hidden)
    replicated = 7 * hidden
    sharded = (hidden + 2 * kv_width + 3 * intermediate) / tensor_parallel_size
    return max_loras * max_lora_rank * layers * (replicated + sharded) * dtype_bytes
