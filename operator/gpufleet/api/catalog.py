"""Facts about GPUs and number formats that validation needs.

Kept as plain data so the admission webhook, `gpufleet validate` and the
operator share one table. Sources are in ../shared/REFERENCE.md and NVIDIA's
MIG user guide (supported profiles per product).
"""

from __future__ import annotations

from typing import Final

# Memory of the whole device in GiB, keyed by the value of the node label
# `nvidia.com/gpu.product` that gpu-feature-discovery sets.
GPU_MEMORY_GIB: Final[dict[str, float]] = {
    "NVIDIA-A100-SXM4-80GB": 80,
    "NVIDIA-A100-80GB-PCIe": 80,
    "NVIDIA-A100-SXM4-40GB": 40,
    "NVIDIA-A100-PCIE-40GB": 40,
    "NVIDIA-H100-80GB-HBM3": 80,
    "NVIDIA-H100-PCIe": 80,
    "NVIDIA-H100-NVL": 94,
    "NVIDIA-H200": 141,
    "NVIDIA-L40S": 48,
    "NVIDIA-L4": 24,
    "NVIDIA-A10G": 24,
}

# What CUDA reports as a GPU's total memory, which vLLM multiplies by --gpu-memory-utilization:
# 79.22 GiB on an A100 80GB (vLLM's profiler log, vllm PR #10511), 42,405,855,232 B = 39.49 GiB
# on an A100 40GB (deviceQuery); H100 80GB taken as 79.1 GiB. Other products: GPU_MEMORY_GIB.
CUDA_MEMORY_GIB: Final[dict[str, float]] = {
    "NVIDIA-A100-SXM4-80GB": 79.22,
    "NVIDIA-A100-SXM4-40GB": 39.49,
    "NVIDIA-H100-80GB-HBM3": 79.1,
}

# MIG profiles (instances per GPU) by device memory class. A100 80GB and
# H100 80GB share the profile set (REFERENCE.md: 1g.10gb x7 ... 7g.80gb x1).
_MIG_80GB: Final[dict[str, int]] = {
    "1g.10gb": 7,
    "1g.20gb": 4,
    "2g.20gb": 3,
    "3g.40gb": 2,
    "4g.40gb": 1,
    "7g.80gb": 1,
}
_MIG_40GB: Final[dict[str, int]] = {
    "1g.5gb": 7,
    "1g.10gb": 4,
    "2g.10gb": 3,
    "3g.20gb": 2,
    "4g.20gb": 1,
    "7g.40gb": 1,
}
_MIG_141GB: Final[dict[str, int]] = {
    "1g.18gb": 7,
    "1g.35gb": 4,
    "2g.35gb": 3,
    "3g.71gb": 2,
    "4g.71gb": 1,
    "7g.141gb": 1,
}
MIG_PROFILES: Final[dict[str, dict[str, int]]] = {
    "NVIDIA-A100-SXM4-80GB": _MIG_80GB,
    "NVIDIA-A100-80GB-PCIe": _MIG_80GB,
    "NVIDIA-H100-80GB-HBM3": _MIG_80GB,
    "NVIDIA-H100-PCIe": _MIG_80GB,
    "NVIDIA-A100-SXM4-40GB": _MIG_40GB,
    "NVIDIA-A100-PCIE-40GB": _MIG_40GB,
    "NVIDIA-H200": _MIG_141GB,
}
ALL_MIG_PROFILES: Final[frozenset[str]] = frozenset(
    profile for table in MIG_PROFILES.values() for profile in table
)

TENSOR_PARALLEL_SIZES: Final[tuple[int, ...]] = (1, 2, 4, 8)

# Bytes per weight. `auto` loads bf16/fp16 checkpoints at 2 bytes; 4-bit AWQ/GPTQ
# is counted at 0.5 bytes (weights only: a lower bound, scales are small).
BYTES_PER_PARAMETER_BY_DTYPE: Final[dict[str, float]] = {"auto": 2.0, "bfloat16": 2.0, "float16": 2.0}
BYTES_PER_PARAMETER_BY_QUANTIZATION: Final[dict[str, float]] = {"fp8": 1.0, "awq": 0.5, "gptq": 0.5}

# vLLM's default --gpu-memory-utilization: the share of device memory vLLM
# claims for weights, activations and KV cache.
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION: Final[float] = 0.90

GIB: Final[int] = 1024**3


def mig_profile_memory_gib(profile: str) -> float:
    """Memory of a MIG slice in GiB, read from the profile name (`3g.40gb` -> 40)."""
    return float(profile.split(".", 1)[1].removesuffix("gb"))
