"""Catalog of the model and GPU facts the simulated vLLM engine is derived from.

Two small tables with their sources, plus lookups that accept what the
operator actually writes into a pod: the `vllm serve` model argument (a
Hugging Face id, or an s3:// / pvc:// / local path whose last component
names the model) and the `nvidia.com/gpu.product` node label (optionally
with the single-strategy `-MIG-<profile>` suffix).

Nothing here does I/O; vllm_model.profile_for turns these facts into an
engine profile.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from gpufleet.api import catalog, kv_fit, model_catalog
from gpufleet.api.model_catalog import ModelArchitecture

GIB = 1 << 30


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts of a decoder-only transformer, enough for memory and speed estimates."""

    name: str
    params: float
    layers: int
    kv_heads: int
    head_dim: int
    # vLLM's default max_model_len is the model's max_position_embeddings.
    max_position_embeddings: int
    source: str
    # True when the geometry was guessed from "<N>B" in an unknown name (see model_spec).
    assumed: bool = False
    # gpufleet's catalog entry the facts come from (attention heads, sliding windows), if any.
    catalog_entry: ModelArchitecture | None = field(default=None, compare=False, repr=False)

    def kv_bytes_per_token(self, kv_dtype_bytes: float = 2) -> float:
        """K and V for every layer and KV head: 2 × layers × kv_heads × head_dim × bytes."""
        return kv_fit.kv_bytes_per_token(self.architecture(), kv_dtype_bytes)

    def architecture(self) -> ModelArchitecture:
        """These facts as gpufleet's sizing arithmetic (gpufleet.api.kv_fit) takes them."""
        if self.catalog_entry is not None:
            return self.catalog_entry
        return ModelArchitecture(
            name=self.name,
            parameters=self.params,
            layers=self.layers,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            attention_heads=None,
            max_position_embeddings=self.max_position_embeddings,
            source=self.source,
        )

    def weight_bytes(self, dtype_bytes: float = 2) -> float:
        return self.params * dtype_bytes


def _from_catalog(entry: ModelArchitecture) -> ModelSpec:
    """A gpufleet model catalog entry (config.json facts with their sources) as a ModelSpec."""
    return ModelSpec(
        name=entry.name,
        params=entry.parameters,
        layers=entry.layers,
        kv_heads=entry.kv_heads,
        head_dim=entry.head_dim,
        max_position_embeddings=entry.max_position_embeddings or _UNKNOWN_CONTEXT,
        source=entry.source,
        catalog_entry=entry,
    )


# vLLM falls back to this context when a config carries none; we use it for unknown names.
_UNKNOWN_CONTEXT = 8192
# Geometries a guessed model borrows from, nearest parameter count first.
_ANCHORS = tuple(
    _from_catalog(model_catalog.MODELS[key]) for key in ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b")
)

_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)b(?![a-z0-9])")


def model_basename(model_id: str) -> str:
    """The last path component of a model argument, lower case: 's3://b/m/Llama-3-8B/' → 'llama-3-8b'."""
    return model_id.rstrip("/").rsplit("/", 1)[-1].lower()


def parse_billions(model_id: str) -> float | None:
    """The "<N>B" parameter count in a model name, in billions, or None."""
    match = _SIZE.search(model_basename(model_id))
    return float(match.group(1)) if match else None


def model_spec(model_id: str) -> ModelSpec:
    """Facts for a model argument.

    Names in gpufleet's model catalog (gpufleet.api.model_catalog: Llama 3.x, Mistral,
    Mixtral, Qwen2.5, Qwen3, DeepSeek-R1 distills, Gemma) resolve to it. Any other name
    that carries "<N>B" is assumed Llama-like: N billion parameters with
    the layer/KV-head geometry of the nearest Llama 3.1 size and an 8K context.
    That is rough (a 32B Qwen gets Llama 70B's KV footprint) but keeps memory and
    speed in the right order of magnitude. A name without a size is an error,
    as a real pod could not load it either.
    """
    known = model_catalog.lookup(model_id)
    if known is not None:
        return _from_catalog(known)
    base = model_basename(model_id)
    billions = parse_billions(model_id)
    if billions is None:
        raise ValueError(f"cannot infer a parameter count from model {model_id!r} (expected '<N>B')")
    anchor = min(_ANCHORS, key=lambda spec: abs(math.log(spec.params / (billions * 1e9))))
    return ModelSpec(
        name=base,
        params=billions * 1e9,
        layers=anchor.layers,
        kv_heads=anchor.kv_heads,
        head_dim=anchor.head_dim,
        max_position_embeddings=_UNKNOWN_CONTEXT,
        source=f"assumed: {billions:g}B parameters with {anchor.name} geometry",
        assumed=True,
    )


def weight_dtype_bytes(model_id: str, quantization: str | None = None) -> float:
    """Bytes per weight from vLLM's --quantization flag or, failing that, hints in the model name.

    fp8 / int8 → 1 byte, 4-bit (awq, gptq, int4, bitsandbytes) → 0.5, otherwise bf16 → 2.
    Quantization scales (a few percent) are ignored.
    """
    hint = (quantization or model_basename(model_id)).lower()
    if any(tag in hint for tag in ("awq", "gptq", "int4", "w4a16", "4bit", "bitsandbytes", "marlin")):
        return 0.5
    if any(tag in hint for tag in ("fp8", "int8", "w8a8", "w8a16", "8bit")):
        return 1
    return 2


# MIG profiles → how many fit on one GPU. A100 80GB from REFERENCE.md; H100 80GB and
# A100 40GB from the NVIDIA MIG user guide ("Supported MIG Profiles"). The memory
# in a profile's name is its share of eight memory slices (1g.10gb = 1/8 of 80 GB).
_MIG_80GB = {"1g.10gb": 7, "1g.20gb": 4, "2g.20gb": 3, "3g.40gb": 2, "4g.40gb": 1, "7g.80gb": 1}
_MIG_40GB = {"1g.5gb": 7, "1g.10gb": 4, "2g.10gb": 3, "3g.20gb": 2, "4g.20gb": 1, "7g.40gb": 1}
_MIG_NAME = re.compile(r"^(\d)g\.(\d+)gb$")
_MIG_COMPUTE_SLICES = 7


@dataclass(frozen=True)
class GpuSpec:
    """A GPU, or a MIG slice of one, as the engine sees it."""

    product: str
    # What CUDA reports as total memory (vLLM multiplies this by gpu_memory_utilization).
    memory_gib: float
    hbm_bandwidth_bytes_per_s: float
    bf16_dense_flops: float
    nominal_memory_gb: int
    mig_profiles: dict[str, int] = field(default_factory=dict)
    mig_profile: str | None = None
    source: str = ""
    # The name nvidia-smi and dcgm-exporter's `modelName` label show; the product label is
    # this with spaces turned into hyphens by GPU feature discovery.
    model_name: str = ""


# Datasheet numbers (NVIDIA A100 datasheet r4, NVIDIA H100 datasheet): HBM bandwidth
# A100 40GB SXM 1.555 TB/s, A100 80GB SXM 2.039 TB/s, H100 SXM 3.35 TB/s; dense BF16
# tensor throughput A100 312 TFLOPS, H100 SXM 989 TFLOPS (the 1,979 figure is sparse).
# CUDA-visible memory comes from gpufleet's catalog (CUDA_MEMORY_GIB, with its sources), so the
# simulated vLLM and gpufleet's fit check size the same memory.
_CUDA = catalog.CUDA_MEMORY_GIB
# fmt: off
GPUS: dict[str, GpuSpec] = {
    spec.product: spec
    for spec in (
        GpuSpec(
            "NVIDIA-A100-SXM4-80GB", _CUDA["NVIDIA-A100-SXM4-80GB"], 2.039e12, 312e12, 80, _MIG_80GB,
            source="A100 datasheet", model_name="NVIDIA A100-SXM4-80GB",
        ),
        GpuSpec(
            "NVIDIA-A100-SXM4-40GB", _CUDA["NVIDIA-A100-SXM4-40GB"], 1.555e12, 312e12, 40, _MIG_40GB,
            source="A100 datasheet", model_name="NVIDIA A100-SXM4-40GB",
        ),
        GpuSpec(
            "NVIDIA-H100-80GB-HBM3", _CUDA["NVIDIA-H100-80GB-HBM3"], 3.35e12, 989e12, 80, _MIG_80GB,
            source="H100 datasheet", model_name="NVIDIA H100 80GB HBM3",
        ),
    )
}
# fmt: on


def gpu_spec(product: str, mig_profile: str | None = None) -> GpuSpec:
    """The GPU behind a `nvidia.com/gpu.product` label, or the MIG slice `mig_profile` of it.

    The single-strategy label form `NVIDIA-A100-SXM4-80GB-MIG-3g.40gb` is accepted too.
    A slice `<g>g.<m>gb` gets g/7 of the compute (SM slices) and m/nominal of the memory
    and of the bandwidth: bandwidth comes with the memory slices' controllers, so a
    3g.40gb slice has 3/7 of the SMs but half the HBM bandwidth.
    """
    if "-MIG-" in product:
        product, _, label_profile = product.partition("-MIG-")
        if mig_profile is not None and mig_profile != label_profile:
            raise ValueError(f"MIG profile {mig_profile!r} contradicts the product label's {label_profile!r}")
        mig_profile = label_profile
    try:
        whole = GPUS[product]
    except KeyError:
        raise ValueError(f"unknown GPU product {product!r}; known: {sorted(GPUS)}") from None
    if mig_profile is None:
        return whole
    profile = mig_profile.removeprefix("mig-")
    match = _MIG_NAME.match(profile)
    if match is None or profile not in whole.mig_profiles:
        raise ValueError(f"{product} has no MIG profile {mig_profile!r}; known: {sorted(whole.mig_profiles)}")
    compute = int(match.group(1)) / _MIG_COMPUTE_SLICES
    memory = int(match.group(2)) / whole.nominal_memory_gb
    return GpuSpec(
        product=f"{product}-MIG-{profile}",
        memory_gib=kv_fit.device_memory_gib(product, profile) or whole.memory_gib * memory,
        hbm_bandwidth_bytes_per_s=whole.hbm_bandwidth_bytes_per_s * memory,
        bf16_dense_flops=whole.bf16_dense_flops * compute,
        nominal_memory_gb=int(match.group(2)),
        mig_profile=profile,
        source=f"{whole.source}; MIG {profile}: {compute:.3f} of compute, {memory:.3f} of memory",
        model_name=whole.model_name,
    )


def gpu_model_name(product: str) -> str:
    """dcgm-exporter's `modelName` for a product label (a MIG slice reports its parent GPU)."""
    base = product.partition("-MIG-")[0]
    spec = GPUS.get(base)
    if spec is not None:
        return spec.model_name
    return base.replace("-", " ", 1)
