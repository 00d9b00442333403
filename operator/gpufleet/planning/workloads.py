"""ModelDeployment spec + placement groups → the Kubernetes objects to apply.

One Deployment per (zone, capacity type) group, so each group's pods can be
pinned to its zone and capacity type by node affinity and scaled on its own;
one Service and one PodDisruptionBudget select every pod of the model, so
clients and drains see a single fleet.

Objects are plain dicts in the Kubernetes API's own shape (camelCase keys,
quantities as strings), ready for server-side apply. Each Deployment carries a
hash of its content so the operator can skip writes when nothing changed.

Pure: no I/O, no clock, no cluster clients. Numbers come from
/work/shared/REFERENCE.md ("REFERENCE.md" below).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gpufleet.api.sizing import effective_max_loras
from gpufleet.api.v1alpha1 import (
    LoraAdapter,
    ModelDeploymentSpec,
    Slot,
    SpeculativeDecoding,
)
from gpufleet.api.validation import bytes_per_parameter
from gpufleet.api.vllm_versions import engine_version, takes_shutdown_timeout
from gpufleet.planning.credentials import always_required_keys
from gpufleet.planning.placement import PlacementGroup

LABEL_MODEL_DEPLOYMENT = "gpufleet.io/model-deployment"
LABEL_ZONE = "gpufleet.io/zone"
LABEL_CAPACITY_TYPE = "gpufleet.io/capacity-type"
# Only on slot b's pods (a canary, or what a canary promoted): slot a's pods carry none, so the
# Deployments every model already has keep their pod template and selector.
LABEL_SLOT = "gpufleet.io/slot"
# The revision a pod runs (planning.revisions' hash of its serving template), on canary pods and on
# pods of a slot that was a canary: the rollout counts only the canary revision's own pods, and the
# analysis reads their metrics. Never in a selector, and never added to a running Deployment's pods.
LABEL_REVISION_HASH = "gpufleet.io/revision-hash"
ANNOTATION_TEMPLATE_HASH = "gpufleet.io/template-hash"

# Node labels set by gpu-feature-discovery and the cloud (REFERENCE.md "GPUs, MIG, Llama 3 70B").
NODE_LABEL_GPU_PRODUCT = "nvidia.com/gpu.product"
NODE_LABEL_ZONE = "topology.kubernetes.io/zone"
GPU_RESOURCE = "nvidia.com/gpu"

CONTAINER_NAME = "vllm"
PORT_NAME = "http"
HEALTH_PATH = "/health"
HF_CACHE_PATH = "/root/.cache/huggingface"
PVC_MOUNT_ROOT = "/mnt/pvc"
# s3:// adapters: vLLM loads a LoRA adapter only from a local directory or a Hub repo id
# (vllm/lora/utils.py get_adapter_absolute_path at v0.34.0), so init containers copy them here first.
ADAPTER_VOLUME = "lora-adapters"
ADAPTER_ROOT = "/mnt/lora-adapters"
ADAPTER_FETCH_PREFIX = "fetch-adapter-"

# Startup budget. Weight-load rates per GiB, from REFERENCE.md "Cold start and capacity timing":
# - s3: Run:ai Model Streamer measured 3.51 GiB/s (Llama-3-8B in 4.24 s); 1 s/GiB leaves ~3.5x headroom
#   for slower buckets and cross-zone traffic.
# - pvc: gp3 loads 70B in ~128 s (derived) ≈ 1 s/GiB; 2 s/GiB covers cold EBS blocks.
# - hf: a hub download at ~100 MB/s is ~10 s/GiB, which matches users' 10+ minute 70B loads (vllm #10702).
SECONDS_PER_GIB: Mapping[str, float] = {"s3": 1.0, "pvc": 2.0, "hf": 10.0}
# Without a parameter count the size is unknown: 30 min sits inside KServe users' 15-20 min for 70B
# (kserve #3869) with margin.
UNKNOWN_SIZE_STARTUP_SECONDS = 1800
MIN_STARTUP_SECONDS = 300
MAX_STARTUP_SECONDS = 3600
# A rollout that has not progressed this long after the startup budget is reported as failed.
PROGRESS_DEADLINE_MARGIN_SECONDS = 300

# Variables read from the model's credentialsSecret, by source scheme. All optional: a Secret may
# hold only some (AWS_SESSION_TOKEN and AWS_ENDPOINT_URL are for temporary keys and non-AWS S3).
_HF_SECRET_KEYS = ("HF_TOKEN",)
_S3_SECRET_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
)

_MAX_DNS_LABEL = 63
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")

# GKE Spot and AKS Spot node pools taint their nodes; EKS (Karpenter or managed node groups) does not.
_DEFAULT_SPOT_TOLERATIONS: tuple[Mapping[str, str], ...] = (
    {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
    {
        "key": "kubernetes.azure.com/scalesetpriority",
        "operator": "Equal",
        "value": "spot",
        "effect": "NoSchedule",
    },
)


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment that owns the objects: deleting it deletes them."""

    name: str
    namespace: str
    uid: str
    api_version: str = "gpufleet.io/v1alpha1"
    kind: str = "ModelDeployment"


@dataclass(frozen=True)
class WorkloadOptions:
    """Operator-wide settings of the pod template (gpufleet.config builds this; the defaults are there)."""

    # Karpenter's label by default; EKS managed node groups use eks.amazonaws.com/capacityType
    # with SPOT / ON_DEMAND (REFERENCE.md "GPUs, MIG, Llama 3 70B", common node labels).
    capacity_type_label: str
    spot_value: str
    on_demand_value: str
    # Per GPU, or per MIG slice for MIG replicas, so host resources grow with the replica's size.
    cpu_per_gpu: str
    memory_per_gpu: str
    # Endpoints controllers need a few seconds to drop a terminating pod from the Service; until
    # then new requests still arrive, so vLLM must keep accepting them (REFERENCE.md: in-flight
    # requests aborted after SIGTERM, dynamo #13559; use a preStop delay).
    prestop_delay_seconds: int
    drain_seconds: int
    # Image pull (12-29 GB images, REFERENCE.md) and engine init, before weights load.
    startup_base_seconds: int
    spot_tolerations: tuple[Mapping[str, str], ...] = _DEFAULT_SPOT_TOLERATIONS
    port: int = 8000


@dataclass(frozen=True)
class DesiredWorkloads:
    """Everything the operator applies for one ModelDeployment."""

    deployments: tuple[dict[str, Any], ...]
    service: dict[str, Any]
    pod_disruption_budget: dict[str, Any]


def _dns_label(text: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-")


def deployment_name(md_name: str, zone: str, capacity_type: str, slot: Slot = "a") -> str:
    """`<md>-<zone>-<capacity>`, or `<md>-<capacity>` without a zone; the zone made a DNS label.
    Slot b (a canary beside the stable revision) appends `-b`, which no slot-a name ends with."""
    zone_part = _dns_label(zone)
    name = f"{md_name}-{zone_part}-{capacity_type}" if zone_part else f"{md_name}-{capacity_type}"
    return f"{name}-b" if slot == "b" else name


def selector_labels(md_name: str) -> dict[str, str]:
    """Labels that select every pod of the ModelDeployment, whatever its group."""
    return {LABEL_MODEL_DEPLOYMENT: md_name}


def selector_string(md_name: str) -> str:
    """`selector_labels` as a label selector string (status.selector for the scale subresource)."""
    return ",".join(f"{key}={value}" for key, value in selector_labels(md_name).items())


def template_hash(obj: Mapping[str, Any]) -> str:
    """Short content hash: equal for equal objects whatever the key order."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0]


def _sources(spec: ModelDeploymentSpec) -> list[str]:
    speculative = spec.engine.speculative_decoding
    # A draft checkpoint needs the same volumes and credentials as the model.
    draft = [speculative.draft_model.uri] if speculative and speculative.draft_model else []
    return [spec.model.uri, *(adapter.uri for adapter in spec.engine.lora_adapters), *draft]


def source_uris(spec: ModelDeploymentSpec) -> list[str]:
    """Every source the pods read (model, adapters, drafter): what the credentials Secret is for."""
    return _sources(spec)


def _s3_adapters(spec: ModelDeploymentSpec) -> list[LoraAdapter]:
    return [adapter for adapter in spec.engine.lora_adapters if _scheme(adapter.uri) == "s3"]


def _pvc_claim_and_path(uri: str) -> tuple[str, str]:
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    return claim, path.strip("/")


def _model_path(uri: str) -> str:
    """What vLLM loads: a hub repo id, the s3 URI (for the streamer) or the mounted path."""
    scheme = _scheme(uri)
    if scheme == "hf":
        return uri.removeprefix("hf://").strip("/")
    if scheme == "pvc":
        claim, path = _pvc_claim_and_path(uri)
        return f"{PVC_MOUNT_ROOT}/{claim}/{path}" if path else f"{PVC_MOUNT_ROOT}/{claim}"
    return uri


def adapter_path(adapter: LoraAdapter) -> str:
    """Where vLLM loads an adapter from: s3:// ones from the directory their init container fills."""
    if _scheme(adapter.uri) != "s3":
        return _model_path(adapter.uri)
    # Adapter names may hold / : @ (served names do): a DNS-ish label plus a hash keeps dirs distinct.
    digest = hashlib.sha256(adapter.name.encode()).hexdigest()[:8]
    return f"{ADAPTER_ROOT}/{_dns_label(adapter.name)[:40]}-{digest}"


def _lora_module(adapter: LoraAdapter) -> str:
    """A --lora-modules item: name=path, or vLLM's JSON form when the path has a comma, which the
    name=path form cannot carry (LoRAParserAction in vllm/entrypoints/common/cli_args.py, v0.34.0)."""
    path = adapter_path(adapter)
    if "," in path:
        return json.dumps({"name": adapter.name, "path": path}, separators=(",", ":"))
    return f"{adapter.name}={path}"


def _gpu_count(spec: ModelDeploymentSpec) -> int:
    # A MIG replica runs on one slice; validation rejects MIG with tensorParallelSize > 1.
    return 1 if spec.accelerator.mig_profile else spec.accelerator.tensor_parallel_size


def startup_budget_seconds(spec: ModelDeploymentSpec, options: WorkloadOptions) -> int:
    """Seconds a replica may take from container start to healthy: base + weight-load time."""
    model = spec.model
    if model.parameter_count is None:
        # A base raised above the default (slow registry) must still apply.
        budget = max(UNKNOWN_SIZE_STARTUP_SECONDS, options.startup_base_seconds)
    else:
        weights_gib = model.parameter_count * bytes_per_parameter(model.dtype, model.quantization) / 2**30
        budget = math.ceil(options.startup_base_seconds + weights_gib * SECONDS_PER_GIB[_scheme(model.uri)])
    # Floor: even a tiny model needs the image pull. Ceiling: past an hour a hung start is more
    # likely than a slow one, and the startup probe should restart it.
    return min(max(budget, MIN_STARTUP_SECONDS), MAX_STARTUP_SECONDS)


def termination_grace_seconds(options: WorkloadOptions) -> int:
    """The pod's terminationGracePeriodSeconds: the preStop delay, then the drain."""
    return options.prestop_delay_seconds + options.drain_seconds


def shutdown_timeout_seconds(options: WorkloadOptions) -> int:
    """vLLM --shutdown-timeout: what the grace period leaves after the preStop delay.

    SIGTERM comes when preStop ends, and the kubelet kills at the end of the grace period, so
    grace >= preStop + shutdown-timeout (the drain section proposed for vLLM's Kubernetes guide,
    vllm PR #43208, still open and not in the v0.34.0 docs; KServe sets grace - preStop,
    kserve/kserve PR #5496). Requests still running then are lost either way.
    """
    return max(termination_grace_seconds(options) - options.prestop_delay_seconds, 0)


# preStop for releases without --shutdown-timeout (before v0.18.0): SIGTERM aborts whatever is in
# flight (vllm/entrypoints/launcher.py cancels the server task), so after the endpoints delay this waits,
# bounded by the drain time, until the engine has nothing running or waiting, then SIGTERM cuts nothing.
# It reads the engine's own gauges on /metrics (vllm:num_requests_running / _waiting: V0's
# vllm/engine/metrics.py, V1's vllm/v1/metrics/loggers.py) with the image's Python (vLLM is a Python
# package on python3 in its image, docker/Dockerfile). An unreachable or odd /metrics ends the wait;
# the grace period (delay + drain) bounds the hook anyway. Arguments: delay seconds, drain seconds, port.
PRESTOP_WAIT_IDLE_SCRIPT = """\
import sys, time, urllib.request
delay, drain, port = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
time.sleep(delay)
end = time.monotonic() + drain
names = ("vllm:num_requests_running", "vllm:num_requests_waiting")
while time.monotonic() < end:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        lines = [line for line in text.splitlines() if line.split("{")[0].split(" ")[0] in names]
        busy = sum(float(line.split()[-1]) for line in lines)
    except Exception:
        break
    if busy == 0:
        break
    time.sleep(1)
"""


def prestop_command(spec: ModelDeploymentSpec, options: WorkloadOptions) -> list[str]:
    """The preStop hook: the endpoints delay, then for releases that cannot drain, the bounded wait."""
    if takes_shutdown_timeout(engine_version(spec.engine)) or options.drain_seconds == 0:
        return ["sleep", str(options.prestop_delay_seconds)]
    delay, drain = str(options.prestop_delay_seconds), str(options.drain_seconds)
    return ["python3", "-c", PRESTOP_WAIT_IDLE_SCRIPT, delay, drain, str(options.port)]


def speculative_config(spec: SpeculativeDecoding) -> str:
    """vLLM --speculative-config: a JSON object of SpeculativeConfig fields (vllm/engine/arg_utils.py
    parses it with json.loads; vllm/config/speculative.py names the fields)."""
    config: dict[str, Any] = {"method": spec.method, "num_speculative_tokens": spec.num_speculative_tokens}
    if spec.draft_model is not None:
        config["model"] = _model_path(spec.draft_model.uri)
    if spec.prompt_lookup_min is not None:
        config["prompt_lookup_min"] = spec.prompt_lookup_min
    if spec.prompt_lookup_max is not None:
        config["prompt_lookup_max"] = spec.prompt_lookup_max
    # Compact and ordered, so the pod template (and its hash) is stable.
    return json.dumps(config, separators=(",", ":"), sort_keys=True)


def vllm_args(md_name: str, spec: ModelDeploymentSpec, options: WorkloadOptions) -> list[str]:
    """Arguments after `vllm serve`: the model, the flags the spec owns, then engine.args."""
    model = spec.model
    args = [
        _model_path(model.uri),
        "--served-model-name",
        model.served_name or md_name,
        "--port",
        str(options.port),
        "--tensor-parallel-size",
        str(_gpu_count(spec)),
    ]
    if model.dtype != "auto":
        args += ["--dtype", model.dtype]
    if model.quantization != "none":
        args += ["--quantization", model.quantization]
    if model.max_model_len is not None:
        args += ["--max-model-len", str(model.max_model_len)]
    if _scheme(model.uri) == "s3":
        # Streams safetensors from S3 straight to the GPUs (3.51 GiB/s measured, REFERENCE.md).
        args += ["--load-format", "runai_streamer"]
    adapters = spec.engine.lora_adapters
    if adapters:
        args += ["--enable-lora", "--lora-modules"]
        args += [_lora_module(adapter) for adapter in adapters]
        # Slots and rank size the GPU memory vLLM reserves for adapters (counted in the fit, kv_fit).
        args += ["--max-loras", str(effective_max_loras(spec))]
        args += ["--max-lora-rank", str(spec.engine.max_lora_rank)]
    if spec.engine.speculative_decoding is not None:
        args += ["--speculative-config", speculative_config(spec.engine.speculative_decoding)]
    if takes_shutdown_timeout(engine_version(spec.engine)):
        # Without it vLLM aborts in-flight requests on SIGTERM; with it, it refuses new ones and lets
        # running ones finish for up to this long (REFERENCE.md "vLLM shutdown and versions").
        args += ["--shutdown-timeout", str(shutdown_timeout_seconds(options))]
    # Last, so a flag the spec does not own can still be tuned (validation rejects owned ones).
    args += spec.engine.args
    return args


def _owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _common_labels(md_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": md_name,
        "app.kubernetes.io/managed-by": "gpufleet",
        LABEL_MODEL_DEPLOYMENT: md_name,
    }


def owned_metadata(owner: Owner, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": dict(labels),
        "ownerReferences": [_owner_reference(owner)],
    }


def _scale_quantity(quantity: str, factor: int) -> str:
    """`quantity` × `factor` as a Kubernetes quantity string, keeping its suffix ("32Gi" × 4 = "128Gi")."""
    match = _QUANTITY.match(quantity)
    if match is None:
        raise ValueError(f"{quantity!r} is not a plain Kubernetes quantity such as '4', '500m' or '32Gi'")
    number, suffix = match.group(1), match.group(2) or ""
    # Decimal keeps "0.5" × 3 exact; normalize() drops trailing zeros and "f" keeps it out of
    # exponent form ("1E+2" would read as an exa suffix).
    scaled = (Decimal(number) * factor).normalize()
    return f"{scaled:f}{suffix}"


def _resources(spec: ModelDeploymentSpec, options: WorkloadOptions) -> dict[str, Any]:
    acc = spec.accelerator
    # Mixed-strategy device plugin names each MIG slice type as its own resource
    # (REFERENCE.md: nvidia.com/mig-3g.40gb); whole GPUs are nvidia.com/gpu.
    if acc.mig_profile:
        accelerator = {f"nvidia.com/mig-{acc.mig_profile}": "1"}
    else:
        accelerator = {GPU_RESOURCE: str(acc.tensor_parallel_size)}
    gpus = _gpu_count(spec)
    return {
        "requests": {
            **accelerator,
            "cpu": _scale_quantity(options.cpu_per_gpu, gpus),
            "memory": _scale_quantity(options.memory_per_gpu, gpus),
        },
        # Extended resources need limits equal to requests; CPU and memory are left unlimited so
        # tokenizer bursts are not throttled and the node's allocatable bounds memory.
        "limits": dict(accelerator),
    }


def _pvc_volume_name(claim: str) -> str:
    name = f"pvc-{claim}"
    if len(name) <= _MAX_DNS_LABEL:
        return name
    # Volume names are DNS labels (<= 63); a hash keeps long claim names distinct.
    digest = hashlib.sha256(claim.encode()).hexdigest()[:8]
    return f"pvc-{claim[: _MAX_DNS_LABEL - 13].rstrip('-')}-{digest}"


def _volumes(spec: ModelDeploymentSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if _gpu_count(spec) > 1:
        # NCCL exchanges tensors between GPUs through /dev/shm; the container default is 64 MiB.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    sources = _sources(spec)
    if any(_scheme(uri) == "hf" for uri in sources):
        # Hub downloads (model and adapters) land on the pod's disk, not the container's writable layer.
        volumes.append({"name": "model-cache", "emptyDir": {}})
        mounts.append({"name": "model-cache", "mountPath": HF_CACHE_PATH})
    claims = dict.fromkeys(_pvc_claim_and_path(uri)[0] for uri in sources if _scheme(uri) == "pvc")
    for claim in claims:
        name = _pvc_volume_name(claim)
        # Read-only: replicas share the claim and must never change the weights.
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": name, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True})
    if _s3_adapters(spec):
        # Pod disk shared with the fetch init containers; vLLM only reads it.
        volumes.append({"name": ADAPTER_VOLUME, "emptyDir": {}})
        mounts.append({"name": ADAPTER_VOLUME, "mountPath": ADAPTER_ROOT, "readOnly": True})
    return volumes, mounts


def _secret_env(spec: ModelDeploymentSpec, secret: str, keys: Sequence[str]) -> list[dict[str, Any]]:
    # Keys the Secret must hold (credentials.always_required_keys) are not optional: a missing Secret or
    # key then stops the container before it starts (CreateContainerConfigError) rather than letting it
    # crash-loop on a 401. The others may be absent (a session token, a custom endpoint).
    required = always_required_keys(secret, _sources(spec))
    return [
        {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": key not in required}},
        }
        for key in keys
    ]


def _env(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    secret = spec.model.credentials_secret
    ours: list[dict[str, Any]] = []
    if secret:
        # Without a Secret, hf:// is anonymous and s3:// uses the node role or IRSA. s3:// adapters are
        # fetched by the init containers, so vLLM itself gets no AWS keys for them.
        s3_adapters = {adapter.uri for adapter in _s3_adapters(spec)}
        schemes = {_scheme(uri) for uri in _sources(spec) if uri not in s3_adapters}
        if "hf" in schemes:
            ours += _secret_env(spec, secret, _HF_SECRET_KEYS)
        if "s3" in schemes:
            ours += _secret_env(spec, secret, _S3_SECRET_KEYS)
    users: list[dict[str, Any]] = []
    for var in spec.engine.env:
        entry: dict[str, Any] = {"name": var.name}
        if var.value_from is not None:
            entry["valueFrom"] = copy.deepcopy(var.value_from)
        elif var.value is not None:
            entry["value"] = var.value
        users.append(entry)
    # The user's variable wins: Kubernetes would keep the last duplicate anyway, but duplicate
    # names break server-side apply's merge key. Ours stay first so $(VAR) in user values resolves.
    user_names = {entry["name"] for entry in users}
    return [entry for entry in ours if entry["name"] not in user_names] + users


def _adapter_fetchers(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """One init container per s3:// adapter: `aws s3 sync` of its prefix into the shared volume."""
    secret = spec.model.credentials_secret
    env = _secret_env(spec, secret, _S3_SECRET_KEYS) if secret else []
    return [
        {
            "name": f"{ADAPTER_FETCH_PREFIX}{index}",
            "image": spec.engine.adapter_fetch_image,
            "command": ["aws", "s3", "sync", "--only-show-errors", adapter.uri, adapter_path(adapter)],
            "env": env,
            # Adapters are tens to hundreds of MiB; the copy needs little.
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "volumeMounts": [{"name": ADAPTER_VOLUME, "mountPath": ADAPTER_ROOT}],
            # A failed fetch's last log lines (aws's "NoSuchBucket", "Unable to locate credentials") become
            # its termination message, shown by `kubectl describe pod` without reading logs.
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        for index, adapter in enumerate(_s3_adapters(spec))
    ]


def _http_probe(period: int, failure_threshold: int, timeout: int | None = None) -> dict[str, Any]:
    probe: dict[str, Any] = {
        "httpGet": {"path": HEALTH_PATH, "port": PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failure_threshold,
    }
    if timeout is not None:
        probe["timeoutSeconds"] = timeout
    return probe


def _node_affinity(
    spec: ModelDeploymentSpec, group: PlacementGroup, options: WorkloadOptions
) -> dict[str, Any]:
    expressions: list[dict[str, Any]] = []
    if spec.accelerator.gpu_product:
        expressions.append(
            {"key": NODE_LABEL_GPU_PRODUCT, "operator": "In", "values": [spec.accelerator.gpu_product]}
        )
    if group.zone:
        expressions.append({"key": NODE_LABEL_ZONE, "operator": "In", "values": [group.zone]})
    capacity_value = options.spot_value if group.capacity_type == "spot" else options.on_demand_value
    expressions.append({"key": options.capacity_type_label, "operator": "In", "values": [capacity_value]})
    # One term: its expressions are ANDed (several terms would be ORed).
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


def _tolerations(group: PlacementGroup, options: WorkloadOptions) -> list[dict[str, str]]:
    # GPU node pools are commonly tainted so only GPU workloads land there.
    tolerations = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if group.capacity_type == "spot":
        tolerations += [dict(toleration) for toleration in options.spot_tolerations]
    return tolerations


def _deployment(
    owner: Owner,
    spec: ModelDeploymentSpec,
    group: PlacementGroup,
    options: WorkloadOptions,
    slot: Slot,
    revision_label: str | None = None,
) -> dict[str, Any]:
    md = owner.name
    group_labels = {LABEL_MODEL_DEPLOYMENT: md, LABEL_CAPACITY_TYPE: group.capacity_type}
    if group.zone:
        group_labels[LABEL_ZONE] = group.zone
    if slot == "b":
        group_labels[LABEL_SLOT] = slot
    labels = {**_common_labels(md), **group_labels}
    pod_labels = {**labels, LABEL_REVISION_HASH: revision_label} if revision_label else labels
    budget = startup_budget_seconds(spec, options)
    volumes, mounts = _volumes(spec)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.engine.image,
        "command": ["vllm", "serve"],
        "args": vllm_args(md, spec, options),
        "ports": [{"name": PORT_NAME, "containerPort": options.port}],
        "env": _env(spec),
        "resources": _resources(spec, options),
        # Startup covers weight loading; liveness only starts after it, so a slow load is not killed.
        "startupProbe": _http_probe(period=10, failure_threshold=math.ceil(budget / 10)),
        "readinessProbe": _http_probe(period=5, failure_threshold=3),
        # ~1 min of failed checks: a busy engine answers /health late, a hung one never does.
        "livenessProbe": _http_probe(period=10, failure_threshold=6, timeout=5),
        "lifecycle": {"preStop": {"exec": {"command": prestop_command(spec, options)}}},
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        # Service env vars are useless to vLLM, and one named VLLM_PORT (a Service called "vllm")
        # would be read by vLLM as its own setting.
        "enableServiceLinks": False,
        # vLLM never calls the Kubernetes API: no token in the pod for a compromised server to use.
        "automountServiceAccountToken": False,
        # preStop delay + drain. On spot the node goes after 2 min (AWS notice, REFERENCE.md)
        # whatever this says; it matters for scale-down and rollouts.
        "terminationGracePeriodSeconds": termination_grace_seconds(options),
        "tolerations": _tolerations(group, options),
        "affinity": _node_affinity(spec, group, options),
        "containers": [container],
        "volumes": volumes,
    }
    fetchers = _adapter_fetchers(spec)
    if fetchers:
        pod_spec["initContainers"] = fetchers
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owned_metadata(owner, deployment_name(md, group.zone, group.capacity_type, slot), labels),
        "spec": {
            "replicas": group.replicas,
            "selector": {"matchLabels": dict(group_labels)},
            # Surge one new replica and wait for it to be ready before removing an old one: a GPU
            # replica takes minutes to start, so dropping one first would cut capacity that long.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": budget + PROGRESS_DEADLINE_MARGIN_SECONDS,
            "template": {
                "metadata": {
                    "labels": dict(pod_labels),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(options.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }
    # Hash the whole object (not only spec) so a label or owner change is also written.
    deployment["metadata"]["annotations"] = {ANNOTATION_TEMPLATE_HASH: template_hash(deployment)}
    return deployment


def _service(owner: Owner, options: WorkloadOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(owner, owner.name, _common_labels(owner.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name),
            "ports": [{"name": PORT_NAME, "port": options.port, "targetPort": PORT_NAME}],
        },
    }


def pod_disruption_budget(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": owned_metadata(owner, owner.name, _common_labels(owner.name)),
        "spec": {
            "selector": {"matchLabels": selector_labels(owner.name)},
            # Drains (Karpenter consolidation, interruption handling) evict one replica at a time.
            "maxUnavailable": 1,
            # A pod still loading weights serves nothing; without this it would block every drain
            # while one replica is starting.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


@dataclass(frozen=True)
class SlotWorkload:
    """Groups of one slot and the spec their pods run (the stable revision's, or spec's own)."""

    spec: ModelDeploymentSpec
    groups: Sequence[PlacementGroup]
    slot: Slot = "a"
    revision_label: str | None = None  # LABEL_REVISION_HASH on the pods, when they carry it


def desired_workloads(
    owner: Owner,
    spec: ModelDeploymentSpec,
    groups: Sequence[PlacementGroup],
    options: WorkloadOptions,
    slots: Sequence[SlotWorkload] | None = None,
) -> DesiredWorkloads:
    """The Deployments (one per non-empty group and slot, in order), Service and PDB of one
    ModelDeployment. Without `slots`: spec's groups in slot a."""
    workloads = [SlotWorkload(spec, groups)] if slots is None else slots
    return DesiredWorkloads(
        deployments=tuple(
            _deployment(owner, workload.spec, group, options, workload.slot, workload.revision_label)
            for workload in workloads
            for group in workload.groups
            if group.replicas > 0
        ),
        service=_service(owner, options),
        pod_disruption_budget=pod_disruption_budget(owner),
    )
