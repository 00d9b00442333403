"""Read what the simulated kubelet needs from a pod: model, engine shape, GPUs, shutdown timing.

Pure: takes the pod as the API returns it (a dict) and parameters, returns data.
The simulator learns everything from the pod spec the operator wrote, as a
real kubelet and vLLM would: `vllm serve` arguments, resource requests,
preStop and the grace period.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetsim.params import KubeletParams
from gpufleet.api.kv_fit import KV_CACHE_DTYPE_BYTES
from gpufleet.planning.workloads import PRESTOP_WAIT_IDLE_SCRIPT

GIB = 1024**3


@dataclass(frozen=True)
class PodPlan:
    model_id: str
    served_name: str
    tensor_parallel_size: int
    max_model_len: int | None
    dtype_bytes: float
    gpu_memory_utilization: float
    max_num_seqs: int | None
    gpu_resource: str  # "nvidia.com/gpu" or "nvidia.com/mig-<profile>"
    gpu_count: int
    lora_names: tuple[str, ...]
    source: str  # hf | s3 | pvc
    prestop_seconds: float
    grace_seconds: float
    port: int
    # vLLM --kv-cache-dtype in bytes per element (auto: the model's 2).
    kv_cache_dtype_bytes: float = 2
    # vLLM --speculative-config: the method, tokens proposed per step and the draft checkpoint.
    speculative_method: str | None = None
    num_speculative_tokens: int = 0
    draft_model_id: str | None = None
    # vLLM --shutdown-timeout (v0.18.0+): on SIGTERM refuse new requests and drain this long; 0 (vLLM's
    # default, and every older release) aborts in-flight requests at SIGTERM.
    shutdown_timeout_seconds: float = 0.0
    # gpufleet's preStop for older releases: after prestop_seconds, wait up to this long until the engine
    # has nothing running or waiting (0: a plain sleep).
    prestop_idle_wait_seconds: float = 0.0
    # s3:// adapters copied by init containers (gpufleet's fetch-adapter-N) before vLLM starts.
    adapter_fetches: int = 0
    # --max-loras / --max-lora-rank with --enable-lora (vLLM's defaults 1 and 16); 0 without LoRA.
    max_loras: int = 0
    max_lora_rank: int = 0
    # Where vLLM loads each adapter of lora_names from (--lora-modules name=path, in the same order).
    lora_paths: tuple[str, ...] = ()
    # The vLLM container's image, as written (a scenario's `builds` may name it as a faulty build).
    image: str = ""

    @property
    def mig_profile(self) -> str | None:
        prefix = "nvidia.com/mig-"
        return self.gpu_resource[len(prefix) :] if self.gpu_resource.startswith(prefix) else None


def _flag(args: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _lora_modules(args: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """(name, path) of each --lora-modules item, name=path or vLLM's JSON form."""
    modules: list[tuple[str, str]] = []
    if "--lora-modules" not in args:
        return ()
    for arg in args[args.index("--lora-modules") + 1 :]:
        if arg.startswith("-"):
            break
        if arg.startswith("{"):  # vLLM's JSON form, {"name": ..., "path": ...}
            try:
                parsed = json.loads(arg)
                modules.append((str(parsed["name"]), str(parsed["path"])))
            except (ValueError, KeyError, TypeError):
                continue
        else:
            name, _, path = arg.partition("=")
            modules.append((name, path))
    return tuple(modules)


def _source(model_id: str) -> str:
    if model_id.startswith("s3://"):
        return "s3"
    if model_id.startswith("/"):
        return "pvc"
    return "hf"


def _dtype_bytes(args: Sequence[str]) -> float:
    quantization = _flag(args, "--quantization")
    if quantization == "fp8":
        return 1.0
    if quantization in ("awq", "gptq"):
        return 0.5
    return 2.0


def _speculative(config: str | None) -> dict[str, Any]:
    """PodPlan fields from --speculative-config's JSON, as vLLM's parser reads it (json.loads)."""
    if config is None:
        return {}
    try:
        parsed = json.loads(config)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    parsed = {str(key).replace("-", "_"): value for key, value in parsed.items()}
    model = parsed.get("model")
    return {
        "speculative_method": parsed.get("method") or ("draft_model" if model else None),
        "num_speculative_tokens": int(parsed.get("num_speculative_tokens") or 0),
        "draft_model_id": model if isinstance(model, str) else None,
    }


def plan_pod(pod: Mapping[str, Any]) -> PodPlan | None:
    """The vLLM container's plan, or None for pods that are not vLLM (those just run)."""
    spec = pod.get("spec", {})
    containers = spec.get("containers", [])
    vllm = next((c for c in containers if c.get("command", [])[:2] == ["vllm", "serve"]), None)
    if vllm is None:
        return None
    args: list[str] = list(vllm.get("args", []))
    model_id = args[0] if args and not args[0].startswith("-") else "unknown"
    limits: Mapping[str, str] = vllm.get("resources", {}).get("limits", {})
    gpu_resource, gpu_count = "nvidia.com/gpu", 0
    for name, value in limits.items():
        if name == "nvidia.com/gpu" or name.startswith("nvidia.com/mig-"):
            gpu_resource, gpu_count = name, int(value)
    prestop, idle_wait = 0.0, 0.0
    command = vllm.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(command) == 2 and command[0] == "sleep":
        prestop = float(command[1])
    elif len(command) == 6 and command[:3] == ["python3", "-c", PRESTOP_WAIT_IDLE_SCRIPT]:
        # Only the script gpufleet writes is understood; any other hook runs as if instant.
        prestop, idle_wait = float(command[3]), float(command[4])
    max_len = _flag(args, "--max-model-len")
    loras = _lora_modules(args)
    return PodPlan(
        model_id=model_id,
        served_name=_flag(args, "--served-model-name") or model_id,
        tensor_parallel_size=int(_flag(args, "--tensor-parallel-size") or 1),
        max_model_len=int(max_len) if max_len else None,
        dtype_bytes=_dtype_bytes(args),
        gpu_memory_utilization=float(_flag(args, "--gpu-memory-utilization") or 0.9),
        max_num_seqs=int(seqs) if (seqs := _flag(args, "--max-num-seqs")) else None,
        gpu_resource=gpu_resource,
        gpu_count=gpu_count,
        lora_names=tuple(name for name, _ in loras),
        lora_paths=tuple(path for _, path in loras),
        source=_source(model_id),
        prestop_seconds=prestop,
        grace_seconds=float(spec.get("terminationGracePeriodSeconds", 30)),
        port=int(_flag(args, "--port") or 8000),
        kv_cache_dtype_bytes=KV_CACHE_DTYPE_BYTES.get(_flag(args, "--kv-cache-dtype") or "auto", 2),
        **_speculative(_flag(args, "--speculative-config")),
        shutdown_timeout_seconds=float(_flag(args, "--shutdown-timeout") or 0),
        prestop_idle_wait_seconds=idle_wait,
        max_loras=int(_flag(args, "--max-loras") or 1) if "--enable-lora" in args else 0,
        max_lora_rank=int(_flag(args, "--max-lora-rank") or 16) if "--enable-lora" in args else 0,
        adapter_fetches=sum(
            1 for c in spec.get("initContainers", []) if c.get("command", [])[:3] == ["aws", "s3", "sync"]
        ),
        image=str(vllm.get("image", "")),
    )


def load_seconds(weights_bytes: float, source: str, params: KubeletParams) -> float:
    """Simulated seconds to load the weights from their source, plus engine warm-up."""
    rate = {"s3": params.s3_gib_per_second, "pvc": params.pvc_gib_per_second}.get(
        source, params.hf_gib_per_second
    )
    return math.ceil(weights_bytes / GIB / rate) + params.engine_warmup_seconds
