"""Memory sizing of a ModelDeployment: its problems (what vLLM would refuse) and warnings.

`Deployment` is what sizing needs from a spec (or from `gpufleet fit`'s
arguments); `fit_of` turns it into a `kv_fit.KvFit` when the model's
architecture and size are known. `problems` and `warnings` name the field and
the fix with numbers, trying the alternatives a platform engineer has: more
GPUs or a bigger MIG slice, a smaller weight format, an fp8 KV cache, a higher
--gpu-memory-utilization, a shorter maxModelLen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from gpufleet.api import catalog, kv_fit, model_catalog
from gpufleet.api.kv_fit import KvFit
from gpufleet.api.model_catalog import ModelArchitecture
from gpufleet.api.v1alpha1 import DEFAULT_MAX_LORAS_CAP, ModelDeploymentSpec

# The highest --gpu-memory-utilization a fix suggests: vLLM needs some memory outside its budget.
_SUGGESTED_UTILIZATION = 0.95


@dataclass(frozen=True)
class Deployment:
    """The inputs of the memory fit of one replica."""

    uri: str
    parameters: float | None
    architecture: ModelArchitecture | None
    dtype: str
    quantization: str
    gpu_product: str | None
    gpu_memory_gib: float | None
    tensor_parallel_size: int
    mig_profile: str | None
    gpu_memory_utilization: float
    kv_cache_dtype: str
    max_model_len: int | None
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    typical_sequence_length: int
    allow_long_max_model_len: bool = False
    # LoRA slots (--max-loras) of --max-lora-rank reserved on the GPUs; 0 without adapters.
    lora_slots: int = 0
    lora_rank: int = 0
    # The speculative drafter's weights and KV; draft_unsized names a draft_model not counted.
    draft: kv_fit.Draft | None = None
    draft_unsized: str | None = None
    # spec.model.parameterCount given: the author asked for a check, so an unknown GPU is an error. A
    # count found in the catalog alone must not refuse a spec that names no GPU product.
    parameters_stated: bool = False

    @property
    def draft_weight_bytes(self) -> float:
        return self.draft.weight_bytes if self.draft else 0.0

    @property
    def device_gib(self) -> float | None:
        return kv_fit.device_memory_gib(self.gpu_product, self.mig_profile, self.gpu_memory_gib)

    @property
    def shards(self) -> int:
        return 1 if self.mig_profile else self.tensor_parallel_size

    @property
    def effective_max_model_len(self) -> int | None:
        if self.max_model_len is not None:
            return self.max_model_len
        return self.architecture.max_position_embeddings if self.architecture else None


def effective_max_loras(spec: ModelDeploymentSpec) -> int:
    """vLLM --max-loras: spec.engine.maxLoras, else a slot per adapter up to DEFAULT_MAX_LORAS_CAP."""
    if spec.engine.max_loras is not None:
        return spec.engine.max_loras
    return max(1, min(len(spec.engine.lora_adapters), DEFAULT_MAX_LORAS_CAP))


def _float_flag(args: list[str], flag: str) -> float | None:
    value = kv_fit.engine_flag(args, flag)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _draft(
    spec: ModelDeploymentSpec, target: ModelArchitecture | None, target_parameters: float | None
) -> tuple[kv_fit.Draft | None, str | None]:
    """The speculative drafter's footprint, and the draft model's name when it cannot be sized."""
    speculative = spec.engine.speculative_decoding
    if speculative is None or target is None or not target_parameters:
        return None, None
    given = speculative.draft_model
    known = model_catalog.lookup(given.uri) if given else None
    draft_parameters = (given.parameter_count if given else None) or (known.parameters if known else None)
    draft_arch = known
    if given is not None and given.architecture is not None:
        numbers = given.architecture
        draft_arch = ModelArchitecture(
            name=model_catalog.model_basename(given.uri),
            parameters=draft_parameters or 0.0,
            layers=numbers.num_hidden_layers,
            kv_heads=numbers.num_key_value_heads,
            head_dim=numbers.head_dim,
            attention_heads=numbers.num_attention_heads,
            max_position_embeddings=numbers.max_position_embeddings,
            source="spec.engine.speculativeDecoding.draftModel.architecture",
        )
    if speculative.method in ("eagle", "eagle3") and known is not None:
        # A catalog name inside an EAGLE head's URI is the model it was trained for, not its size.
        draft_parameters = given.parameter_count if given else None
        draft_arch = None
    model = spec.model
    draft = kv_fit.speculative_draft(
        speculative.method,
        target,
        target_parameters,
        kv_fit.bytes_per_parameter(model.dtype, model.quantization),
        draft_parameters,
        draft_arch,
        dtype_bytes=kv_fit.bytes_per_parameter(model.dtype, "none"),
    )
    if speculative.method == "draft_model" and given is not None and (draft is None or draft_arch is None):
        return None, model_catalog.model_basename(given.uri)
    return draft, None


def deployment(spec: ModelDeploymentSpec) -> Deployment:
    """What sizing needs from a spec: the catalog's architecture unless the spec gives its own."""
    model, acc, args = spec.model, spec.accelerator, list(spec.engine.args)
    known = model_catalog.lookup(model.uri)
    parameters = model.parameter_count or (known.parameters if known else None)
    arch = known
    if model.architecture is not None:
        given = model.architecture
        arch = ModelArchitecture(
            name=model_catalog.model_basename(model.uri),
            parameters=parameters or 0.0,
            layers=given.num_hidden_layers,
            kv_heads=given.num_key_value_heads,
            head_dim=given.head_dim,
            attention_heads=given.num_attention_heads,
            max_position_embeddings=given.max_position_embeddings,
            source="spec.model.architecture",
        )
    seqs = _float_flag(args, "--max-num-seqs")
    batched = _float_flag(args, "--max-num-batched-tokens")
    draft, draft_unsized = _draft(spec, arch, parameters)
    return Deployment(
        draft=draft,
        draft_unsized=draft_unsized,
        parameters_stated=model.parameter_count is not None,
        lora_slots=effective_max_loras(spec) if spec.engine.lora_adapters else 0,
        lora_rank=spec.engine.max_lora_rank,
        uri=model.uri,
        parameters=parameters,
        architecture=arch,
        dtype=model.dtype,
        quantization=model.quantization,
        gpu_product=acc.gpu_product,
        gpu_memory_gib=acc.gpu_memory_gib,
        tensor_parallel_size=acc.tensor_parallel_size,
        mig_profile=acc.mig_profile,
        gpu_memory_utilization=_float_flag(args, "--gpu-memory-utilization")
        or catalog.VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
        kv_cache_dtype=kv_fit.engine_flag(args, "--kv-cache-dtype") or "auto",
        max_model_len=model.max_model_len,
        max_num_seqs=int(seqs) if seqs else None,
        max_num_batched_tokens=int(batched) if batched else None,
        typical_sequence_length=model.typical_sequence_length or kv_fit.TYPICAL_SEQUENCE_TOKENS,
        allow_long_max_model_len=any(
            var.name == "VLLM_ALLOW_LONG_MAX_MODEL_LEN" and var.value not in (None, "", "0")
            for var in spec.engine.env
        ),
    )


def fit_of(dep: Deployment) -> KvFit | None:
    """The fit of one replica, or None when the architecture, size, device or context is unknown."""
    device = dep.device_gib
    length = dep.effective_max_model_len
    if dep.architecture is None or not dep.parameters or device is None or length is None:
        return None
    default_batched, default_seqs = kv_fit.batch_defaults(device, dep.gpu_product)
    return KvFit(
        architecture=dep.architecture,
        parameters=dep.parameters,
        bytes_per_parameter=kv_fit.bytes_per_parameter(dep.dtype, dep.quantization),
        tensor_parallel_size=dep.shards,
        device_gib=device,
        gpu_memory_utilization=dep.gpu_memory_utilization,
        kv_dtype_bytes=kv_fit.KV_CACHE_DTYPE_BYTES.get(dep.kv_cache_dtype, 2),
        max_model_len=length,
        max_num_seqs=dep.max_num_seqs or default_seqs,
        max_num_batched_tokens=dep.max_num_batched_tokens or default_batched,
        draft=dep.draft,
        # LoRA weights are in the model's 16-bit dtype even for fp8/awq/gptq (lora_dtype auto).
        lora_bytes_per_gpu=kv_fit.lora_bytes_per_gpu(
            dep.architecture, dep.parameters, dep.lora_slots, dep.lora_rank, 2, dep.shards
        ),
    )


def starts(fit: KvFit, dep: Deployment) -> bool:
    """vLLM would start with this fit."""
    return kv_fit.vllm_refusal(fit, dep.allow_long_max_model_len) is None


def full_batch(fit: KvFit, dep: Deployment) -> bool:
    """vLLM starts and its KV cache holds --max-num-seqs typical requests at once."""
    return starts(fit, dep) and fit.sequences(dep.typical_sequence_length) >= fit.max_num_seqs


def _accelerator_path(dep: Deployment) -> str:
    return "spec.accelerator.migProfile" if dep.mig_profile else "spec.accelerator.tensorParallelSize"


def _precision(dep: Deployment) -> str:
    if dep.quantization != "none":
        return dep.quantization
    return "16-bit (dtype auto)" if dep.dtype == "auto" else dep.dtype


def _join_or(options: list[str]) -> str:
    """'use a, b, or c': the fixes as one sentence."""
    if not options:
        return ""
    options = ["use " + options[0], *options[1:]]
    if len(options) == 1:
        return options[0]
    return ", ".join(options[:-1]) + f", or {options[-1]}"


def _round_down(tokens: int) -> int:
    return tokens // 1000 * 1000 if tokens >= 2000 else max(kv_fit.BLOCK_TOKENS, tokens // 16 * 16)


def _variants(dep: Deployment) -> Iterator[list[tuple[str, Deployment]]]:
    """Alternatives by kind, each kind in the order to prefer: (fix, changed deployment)."""
    if dep.mig_profile:
        table = catalog.MIG_PROFILES.get(dep.gpu_product or "", {})
        current = catalog.mig_profile_memory_gib(dep.mig_profile)
        yield [
            (f"migProfile: {p}", replace(dep, mig_profile=p))
            for p in sorted(table, key=catalog.mig_profile_memory_gib)
            if catalog.mig_profile_memory_gib(p) > current
        ]
    else:
        yield [
            (f"tensorParallelSize: {tp}", replace(dep, tensor_parallel_size=tp))
            for tp in catalog.TENSOR_PARALLEL_SIZES
            if tp > dep.tensor_parallel_size
        ]
    per_param = kv_fit.bytes_per_parameter(dep.dtype, dep.quantization)
    yield [
        (f"quantization: {q}", replace(dep, quantization=q))
        for q in ("fp8", "awq")
        if catalog.BYTES_PER_PARAMETER_BY_QUANTIZATION[q] < per_param
    ]
    if kv_fit.KV_CACHE_DTYPE_BYTES.get(dep.kv_cache_dtype, 2) > 1:
        yield [("--kv-cache-dtype=fp8 in engine.args", replace(dep, kv_cache_dtype="fp8"))]
    if dep.gpu_memory_utilization < _SUGGESTED_UTILIZATION:
        yield [
            (
                f"--gpu-memory-utilization={_SUGGESTED_UTILIZATION} in engine.args",
                replace(dep, gpu_memory_utilization=_SUGGESTED_UTILIZATION),
            )
        ]


def fixes(dep: Deployment, good: Callable[[KvFit, Deployment], bool], enough: bool = True) -> list[str]:
    """One fix per kind: the first alternative that is good, else (enough) the first that starts."""
    found: list[str] = []
    for kind in _variants(dep):
        fits = [(label, variant, fit_of(variant)) for label, variant in kind]
        usable = [(label, v, f) for label, v, f in fits if f is not None]
        best = next((label for label, v, f in usable if good(f, v)), None)
        if best is None and enough:
            best = next((label for label, v, f in usable if starts(f, v)), None)
        if best is not None:
            found.append(best)
    if dep.mig_profile and not found:
        found.append("whole GPUs (remove migProfile)")
    return found


def problems(dep: Deployment) -> Iterator[tuple[str, str]]:
    """(field path, message) for each reason vLLM would refuse to start."""
    device = dep.device_gib
    if device is None:
        if dep.parameters_stated:
            yield (
                "spec.accelerator.gpuMemoryGiB",
                f"the memory of {dep.gpu_product or 'the GPU'} is not known; set gpuMemoryGiB "
                "(e.g. 80 for an A100 80GB) so the weights and KV cache can be checked against it",
            )
        return
    if not dep.parameters:
        return
    available = kv_fit.available_kv_bytes(
        dep.parameters,
        kv_fit.bytes_per_parameter(dep.dtype, dep.quantization),
        dep.shards,
        device,
        dep.gpu_memory_utilization,
        dep.draft_weight_bytes,
    )
    if available <= 0:
        yield _weights_problem(dep, device)
        return
    fit = fit_of(dep)
    if fit is None:
        return
    arch = fit.architecture
    if arch.attention_heads is not None and arch.attention_heads % fit.tensor_parallel_size:
        usable = [tp for tp in catalog.TENSOR_PARALLEL_SIZES if arch.attention_heads % tp == 0]
        yield (
            "spec.accelerator.tensorParallelSize",
            f"{arch.name} has {arch.attention_heads} attention heads, which vLLM cannot split over "
            f"{fit.tensor_parallel_size} GPUs; use tensorParallelSize: {' or '.join(map(str, usable))}",
        )
        return
    limit = arch.max_position_embeddings
    if limit is not None and fit.max_model_len > limit and not dep.allow_long_max_model_len:
        yield (
            "spec.model.maxModelLen",
            f"{fit.max_model_len} is longer than {arch.name}'s context ({limit} tokens, "
            "max_position_embeddings) and vLLM refuses it; set maxModelLen ≤ "
            f"{limit}, or set VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 in engine.env if the model really extends it",
        )
        return
    if not fit.holds_max_model_len:
        yield ("spec.model.maxModelLen", _kv_problem(dep, fit))


def _weights_problem(dep: Deployment, device: float) -> tuple[str, str]:
    assert dep.parameters is not None
    per_param = kv_fit.bytes_per_parameter(dep.dtype, dep.quantization)
    weights = (dep.parameters * per_param + dep.draft_weight_bytes) / dep.shards / catalog.GIB
    budget = device * dep.gpu_memory_utilization
    where = f"the {dep.mig_profile} MIG slice" if dep.mig_profile else f"each {device:g} GiB GPU"
    drafted = " (with the speculative draft's)" if dep.draft else ""
    summary = (
        f"{dep.parameters / 1e9:.1f}B parameters in {_precision(dep)} over {dep.shards} GPU(s) put "
        f"{weights:.1f} GiB of weights{drafted} on {where}, more than the {budget:.1f} GiB vLLM may use "
        f"(gpu-memory-utilization {dep.gpu_memory_utilization:g}) less {kv_fit.ACTIVATION_RESERVE_GIB:g} GiB "
        "for activations, leaving nothing for the KV cache"
    )
    # Without an architecture the fixes can only be judged on the weights.
    options = _weights_only_fixes(dep, device) if fit_of(dep) is None else fixes(dep, full_batch)
    return _accelerator_path(dep), f"{summary}; {_join_or(options) or 'use GPUs with more memory'}"


def _weights_only_fixes(dep: Deployment, device: float) -> list[str]:
    assert dep.parameters is not None
    found = []
    for kind in _variants(dep):
        for label, variant in kind:
            gib = variant.device_gib or device
            left = kv_fit.available_kv_bytes(
                dep.parameters,
                kv_fit.bytes_per_parameter(variant.dtype, variant.quantization),
                variant.shards,
                gib,
                variant.gpu_memory_utilization,
                dep.draft_weight_bytes,
            )
            if left > 0 and not label.startswith("--kv-cache-dtype"):
                found.append(label)
                break
    return found or (["whole GPUs (remove migProfile)"] if dep.mig_profile else [])


def _per_gpu_summary(fit: KvFit) -> str:
    per_token = kv_fit.kv_bytes_per_token(fit.architecture, fit.kv_dtype_bytes, fit.tensor_parallel_size)
    return (
        f"per GPU: {fit.weights_gib_per_gpu:.1f} GiB of weights and {fit.kv_cache_gib_per_gpu:.1f} GiB "
        f"of KV cache of the {fit.budget_gib_per_gpu:.1f} GiB vLLM may use, "
        f"at {per_token / 1024:g} KiB per token"
    )


def _kv_problem(dep: Deployment, fit: KvFit) -> str:
    tokens = fit.kv_tokens
    unset = "" if dep.max_model_len is not None else " (unset: the model's context)"
    options = fixes(dep, full_batch)
    if tokens >= kv_fit.BLOCK_TOKENS:
        options.append(f"maxModelLen ≤ {_round_down(tokens)}")
    return (
        f"KV cache holds {tokens:,} tokens per replica, maxModelLen is {fit.max_model_len}{unset}, so vLLM "
        f"would refuse to start: {_join_or(options) or 'use GPUs with more memory'} "
        f"({_per_gpu_summary(fit)})"
    )


def warnings(dep: Deployment) -> Iterator[tuple[str, str]]:
    """(field path, message) for what could not be checked, and for a KV cache too small to batch."""
    if dep.device_gib is None:
        if dep.parameters and not dep.parameters_stated:
            yield (
                "spec.accelerator.gpuProduct",
                f"the weights and KV cache of {dep.uri} were not checked: no GPU product or gpuMemoryGiB "
                "says how much memory a replica gets",
            )
        return
    if dep.draft_unsized:
        yield (
            "spec.engine.speculativeDecoding.draftModel",
            f"the draft model's memory is not fully counted: {dep.draft_unsized} is not in gpufleet's model "
            "catalog; set draftModel.parameterCount and draftModel.architecture to count its weights and KV",
        )
    name = model_catalog.model_basename(dep.uri)
    if not dep.parameters:
        yield (
            "spec.model.parameterCount",
            f"memory fit not checked: {name} is not in gpufleet's model catalog; set parameterCount "
            "and spec.model.architecture (from the model's config.json) to check it",
        )
        return
    if dep.architecture is None:
        yield (
            "spec.model.architecture",
            f"KV-cache capacity not checked (only the weights): {name} is not in gpufleet's model catalog; "
            "set spec.model.architecture from the model's config.json to check it",
        )
        return
    if dep.effective_max_model_len is None:
        yield (
            "spec.model.maxModelLen",
            "KV-cache capacity not checked: set maxModelLen, or architecture.maxPositionEmbeddings "
            "(vLLM's default for it)",
        )
        return
    fit = fit_of(dep)
    if fit is None or not starts(fit, dep):
        return
    typical = dep.typical_sequence_length
    held = fit.sequences(typical)
    if held >= fit.max_num_seqs:
        return
    options = fixes(dep, full_batch, enough=False)
    advice = f"; for a full batch per replica: {_join_or(options)}" if options else ""
    yield (
        _accelerator_path(dep),
        f"KV cache holds {fit.kv_tokens:,} tokens per replica: {held} requests of {typical:,} tokens "
        f"(spec.model.typicalSequenceLength) at once, fewer than --max-num-seqs {fit.max_num_seqs}; "
        f"more wait in the queue or are preempted{advice}",
    )
