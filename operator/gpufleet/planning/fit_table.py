"""`gpufleet fit`: the sizing options for one model on one GPU type, side by side.

For each tensor-parallel degree and MIG profile of the GPU, and each weight
format (bf16, fp8, 4-bit awq/gptq), the same arithmetic validation uses
(gpufleet.api.kv_fit): weights and KV cache per GPU, the KV cache in tokens
and in sequences of maxModelLen and of the typical length, whether vLLM
starts, and what a replica costs per hour at the configured prices.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gpufleet.api import catalog, kv_fit
from gpufleet.api.sizing import Deployment, fit_of, full_batch
from gpufleet.planning.cost import ProductPrices

# (label, dtype, quantization): awq and gptq weigh the same, so they share a row.
_PRECISIONS: tuple[tuple[str, str, str], ...] = (
    ("bf16", "bfloat16", "none"),
    ("fp8", "bfloat16", "fp8"),
    ("awq/gptq", "bfloat16", "awq"),
)


@dataclass(frozen=True)
class FitRow:
    option: str
    precision: str
    gpus_per_replica: float
    weights_gib: float
    kv_cache_gib: float
    kv_tokens: int
    full_length_sequences: int
    typical_sequences: int
    verdict: str
    on_demand_per_hour: float | None
    spot_per_hour: float | None
    chosen: bool


def _precision_label(dep: Deployment) -> str:
    if dep.quantization in ("awq", "gptq"):
        return "awq/gptq"
    return "fp8" if dep.quantization == "fp8" else "bf16"


def _variants(dep: Deployment) -> list[tuple[str, float, Deployment]]:
    out: list[tuple[str, float, Deployment]] = []
    for tp in catalog.TENSOR_PARALLEL_SIZES:
        out.append((f"TP {tp}", float(tp), replace(dep, tensor_parallel_size=tp, mig_profile=None)))
    table = catalog.MIG_PROFILES.get(dep.gpu_product or "", {})
    for profile, per_gpu in sorted(table.items(), key=lambda item: catalog.mig_profile_memory_gib(item[0])):
        out.append((f"MIG {profile}", 1 / per_gpu, replace(dep, tensor_parallel_size=1, mig_profile=profile)))
    return out


def _verdict(dep: Deployment) -> str:
    fit = fit_of(dep)
    if fit is None:
        return "unknown"
    arch = fit.architecture
    if arch.attention_heads is not None and arch.attention_heads % fit.tensor_parallel_size:
        return f"refused: {arch.attention_heads} heads"
    if (
        arch.max_position_embeddings is not None
        and fit.max_model_len > arch.max_position_embeddings
        and not dep.allow_long_max_model_len
    ):
        return "refused: context"
    if not fit.weights_fit:
        return "weights do not fit"
    if not fit.holds_max_model_len:
        return "refused: KV < maxModelLen"
    if not full_batch(fit, dep):
        return f"batch ≤ {fit.sequences(dep.typical_sequence_length)}"
    return "ok"


def fit_rows(dep: Deployment, prices: ProductPrices | None) -> list[FitRow]:
    """Every option for the deployment's model and GPU; the deployment's own marked `chosen`."""
    rows = []
    own = (dep.mig_profile, 1 if dep.mig_profile else dep.tensor_parallel_size, _precision_label(dep))
    for option, gpus, shape in _variants(dep):
        for label, dtype, quantization in _PRECISIONS:
            variant = replace(shape, dtype=dtype, quantization=quantization)
            fit = fit_of(variant)
            if fit is None:
                continue
            on_demand = spot = None
            if prices is not None:
                on_demand = prices.per_gpu("on-demand", "") * gpus
                if prices.spot:
                    spot = sum(prices.spot_per_gpu_by_zone().values()) / len(prices.spot) * gpus
            rows.append(
                FitRow(
                    option=option,
                    precision=label,
                    gpus_per_replica=gpus,
                    weights_gib=fit.weights_gib_per_gpu,
                    kv_cache_gib=fit.kv_cache_gib_per_gpu,
                    kv_tokens=fit.kv_tokens,
                    full_length_sequences=fit.sequences(fit.max_model_len),
                    typical_sequences=fit.sequences(dep.typical_sequence_length),
                    verdict=_verdict(variant),
                    on_demand_per_hour=on_demand,
                    spot_per_hour=spot,
                    chosen=(variant.mig_profile, variant.shards, label) == own,
                )
            )
    return rows


def _gpus(value: float) -> str:
    return f"{value:g}" if value >= 1 else f"1/{round(1 / value)}"


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(dep: Deployment, rows: list[FitRow], prices: ProductPrices | None, mark_choice: bool) -> str:
    """The table as text, with a header that says what it assumed."""
    fit = fit_of(dep)
    assert fit is not None
    arch = fit.architecture
    device = kv_fit.device_memory_gib(dep.gpu_product, None, dep.gpu_memory_gib)
    lines = [
        f"{arch.name}: {fit.parameters / 1e9:.1f}B parameters, {arch.layers} layers, "
        f"{arch.kv_heads} KV heads x {arch.head_dim} ({arch.source})",
        f"{dep.gpu_product or 'GPU'}: {device:g} GiB; "
        f"gpu-memory-utilization {dep.gpu_memory_utilization:g}, kv-cache-dtype {dep.kv_cache_dtype} "
        f"({kv_fit.kv_bytes_per_token(arch, fit.kv_dtype_bytes) / 1024:g} KiB per token per replica), "
        f"maxModelLen {fit.max_model_len}, max-num-seqs {fit.max_num_seqs}, "
        f"typical request {dep.typical_sequence_length} tokens, "
        f"{kv_fit.ACTIVATION_RESERVE_GIB:g} GiB per GPU kept for activations",
    ]
    if prices is None:
        lines.append("prices: none configured (set GPUFLEET_PRICES or --prices for the cost columns)")
    else:
        where = f" ({prices.instance_type})" if prices.instance_type else ""
        lines.append(
            f"prices: {prices.on_demand:g} {prices.currency}/h on-demand per {prices.gpus_per_instance}-GPU "
            f"instance{where}; cost columns per replica-hour"
        )
    lines.append("")
    header = (
        "  OPTION       WEIGHTS  GPUS  WEIGHTS/GPU  KV/GPU     KV TOKENS  @MAXLEN  @TYPICAL  "
        "$/H OD  $/H SPOT  VERDICT"
    )
    lines.append(header)
    hidden = []
    for row in rows:
        if row.verdict == "weights do not fit" and not (row.chosen and mark_choice):
            hidden.append(f"{row.option} {row.precision}")
            continue
        mark = "*" if row.chosen and mark_choice else " "
        lines.append(
            f"{mark} {row.option:<12} {row.precision:<8} {_gpus(row.gpus_per_replica):>4}  "
            f"{row.weights_gib:>8.1f} GiB  {row.kv_cache_gib:>5.1f} GiB  {row.kv_tokens:>9,}  "
            f"{row.full_length_sequences:>7,}  {row.typical_sequences:>8,}  "
            f"{_money(row.on_demand_per_hour):>6}  {_money(row.spot_per_hour):>8}  {row.verdict}"
        )
    if hidden:
        lines.append("")
        lines.append("weights do not fit: " + ", ".join(hidden))
    lines.append("")
    lines.append(
        "@MAXLEN / @TYPICAL: sequences of maxModelLen / of the typical length the KV cache holds at once. "
        "'batch ≤ N': vLLM starts but fewer than max-num-seqs typical requests fit."
    )
    if mark_choice:
        lines.append("*: the manifest's choice")
    return "\n".join(lines) + "\n"
