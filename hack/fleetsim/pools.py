"""The simulated cloud's capacity: fleet files, GPU node manifests and Karpenter-like provisioning.

Pure: no I/O except `load_fleet` reading one file. The simulator's main loop
creates the Node objects and launches instances (fleetsim.cloud); this module
only describes what a node of a pool looks like and decides which pools to
grow for pending GPU pods.

Sources are in ../shared/REFERENCE.md unless a comment names another one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from gpufleet.api.catalog import MIG_PROFILES

GPU_RESOURCE: Final = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX: Final = "nvidia.com/mig-"
GPU_TAINT: Final[dict[str, str]] = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}

# Node labels (REFERENCE.md "GPUs, MIG, Llama 3 70B": common node labels, GPU product label).
LABEL_ZONE: Final = "topology.kubernetes.io/zone"
LABEL_REGION: Final = "topology.kubernetes.io/region"
LABEL_INSTANCE_TYPE: Final = "node.kubernetes.io/instance-type"
LABEL_CAPACITY_TYPE: Final = "karpenter.sh/capacity-type"
LABEL_NODEPOOL: Final = "karpenter.sh/nodepool"
LABEL_GPU_PRODUCT: Final = "nvidia.com/gpu.product"
LABEL_GPU_COUNT: Final = "nvidia.com/gpu.count"
LABEL_GPU_MEMORY: Final = "nvidia.com/gpu.memory"
LABEL_SIM_NODE: Final = "fleetsim.gpufleet.io/node"
LABEL_SIM_POOL: Final = "fleetsim.gpufleet.io/pool"

# Spot price as a share of the on-demand list price when a pool sets no price. One observed GPU
# data point: dstack's offer table (dstackai/dstack PR #4110, Aug 2026) lists p5en.48xlarge in
# us-east-1 at $27.20/h spot vs $63.30/h on demand, i.e. 0.43. It is consistent with SkyServe's
# -43% average (REFERENCE.md, arXiv 2411.01438): that saving is for a spot fleet with on-demand
# fallback, so the spot price itself must sit below 0.57 of on-demand. Real spot prices move
# per zone and over time; set `price_per_hour` in the fleet file to model a particular market.
SPOT_PRICE_FRACTION: Final = 0.43

# Kubelet defaults on EKS AMIs (also Karpenter's): max pods 110, kube-reserved memory
# 11 MiB x maxPods + 255 MiB, CPU 6% of the first core, 1% of the second, 0.5% of the next two,
# 0.25% of the rest; hard eviction at memory.available < 100Mi. This is why allocatable is a
# little below capacity on a real node.
MAX_PODS: Final = 110
_EVICTION_HARD_MIB: Final = 100

# MIG profiles and instances per GPU are NVIDIA's facts, kept once in gpufleet's catalog
# (REFERENCE.md for A100 80GB; NVIDIA's MIG user guide for H100 80GB and A100 40GB).
_MIG_80GB: Final[Mapping[str, int]] = MIG_PROFILES["NVIDIA-A100-SXM4-80GB"]
_MIG_40GB: Final[Mapping[str, int]] = MIG_PROFILES["NVIDIA-A100-SXM4-40GB"]


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpu_product: str  # value of nvidia.com/gpu.product as gpu-feature-discovery sets it
    gpu_count: int
    gpu_memory_mib: int  # per GPU, as nvidia.com/gpu.memory (what nvidia-smi reports)
    vcpu: int
    memory_gib: int
    on_demand_per_hour: float  # USD, Linux, us-east-1
    mig_profiles: Mapping[str, int] = field(default_factory=dict)


# On-demand prices: AWS us-east-1 Linux list prices after AWS's June 2025 P4/P5 price cut, as
# recorded from the AWS price list by datareceipts/data-receipts (109-gpu-pricing/hyperscalers.json,
# retrieved 2026-11-09) and matching other published tables of the same period.
# Shapes: EC2 accelerated-computing instance specs (also in AWS's Capacity Blocks price table).
INSTANCE_TYPES: Final[Mapping[str, InstanceType]] = {
    t.name: t
    for t in (
        InstanceType("p4d.24xlarge", "NVIDIA-A100-SXM4-40GB", 8, 40960, 96, 1152, 21.957642, _MIG_40GB),
        InstanceType("p4de.24xlarge", "NVIDIA-A100-SXM4-80GB", 8, 81920, 96, 1152, 27.44705, _MIG_80GB),
        InstanceType("p5.48xlarge", "NVIDIA-H100-80GB-HBM3", 8, 81559, 192, 2048, 55.04, _MIG_80GB),
    )
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pool(_Model):
    """A group of identical nodes in one zone and capacity type (a Karpenter NodePool offering)."""

    name: str = Field(description="Node pool name; nodes are named <name>-<index>.")
    instance_type: str
    zone: str = Field(description="Availability zone, e.g. us-east-1a.")
    capacity_type: Literal["spot", "on-demand"]
    count: int = Field(ge=0, description="Nodes at start.")
    max_count: int = Field(
        ge=0, description="Most nodes the provisioner may run; 0 means no capacity left in that zone."
    )
    mig_profile: str | None = Field(
        None, description="MIG mixed strategy: every GPU of the pool's nodes split into this profile."
    )
    price_per_hour: float | None = Field(None, ge=0, description="USD per node-hour; default from catalog.")

    @field_validator("name")
    @classmethod
    def _name_is_dns_label(cls, name: str) -> str:
        # The node name is <name>-<index> and the name is a label value: keep both valid.
        if not _DNS_LABEL.match(name) or len(name) > 50:
            raise ValueError(f"{name!r} must be a lowercase DNS label (a-z, 0-9, '-'), at most 50 characters")
        return name

    @field_validator("zone")
    @classmethod
    def _zone_name(cls, zone: str) -> str:
        region_of(zone)
        return zone

    @field_validator("instance_type")
    @classmethod
    def _known_instance_type(cls, name: str) -> str:
        if name not in INSTANCE_TYPES:
            raise ValueError(f"unknown instance type {name!r}; the catalog has {', '.join(INSTANCE_TYPES)}")
        return name

    @field_validator("max_count")
    @classmethod
    def _max_at_least_count(cls, max_count: int, info: ValidationInfo) -> int:
        count = info.data.get("count")
        if count is not None and max_count < count:
            raise ValueError(f"max_count ({max_count}) must be >= count ({count})")
        return max_count

    @field_validator("mig_profile")
    @classmethod
    def _possible_mig_profile(cls, profile: str | None, info: ValidationInfo) -> str | None:
        itype = INSTANCE_TYPES.get(info.data.get("instance_type", ""))
        if profile is None or itype is None:  # an unknown instance type is reported on its own field
            return profile
        if profile not in itype.mig_profiles:
            raise ValueError(
                f"{profile!r} is not a MIG profile of {itype.gpu_product} ({itype.name}); "
                f"use one of {', '.join(itype.mig_profiles)}"
            )
        return profile

    @property
    def instance(self) -> InstanceType:
        return INSTANCE_TYPES[self.instance_type]

    @property
    def region(self) -> str:
        return region_of(self.zone)

    @property
    def gpus_per_node(self) -> int:
        """Physical GPUs per node (also for MIG pools, whose GPUs are split into slices)."""
        return self.instance.gpu_count

    def hourly_price(self) -> float:
        """USD per node-hour: the file's price, else the catalog's (spot: SPOT_PRICE_FRACTION of it)."""
        if self.price_per_hour is not None:
            return self.price_per_hour
        base = self.instance.on_demand_per_hour
        return base * SPOT_PRICE_FRACTION if self.capacity_type == "spot" else base

    @property
    def gpu_resource(self) -> str:
        """The extended resource the device plugin advertises on this pool's nodes."""
        return f"{MIG_RESOURCE_PREFIX}{self.mig_profile}" if self.mig_profile else GPU_RESOURCE

    @property
    def gpu_resource_count(self) -> int:
        per_gpu = self.instance.mig_profiles[self.mig_profile] if self.mig_profile else 1
        return self.instance.gpu_count * per_gpu

    def capacity(self) -> dict[str, int]:
        """GPU resources of one node (the only resources the provisioner packs)."""
        return {self.gpu_resource: self.gpu_resource_count}

    def labels(self) -> dict[str, str]:
        """Labels every node of the pool carries, except its hostname."""
        itype = self.instance
        labels = {
            LABEL_ZONE: self.zone,
            LABEL_REGION: self.region,
            LABEL_INSTANCE_TYPE: itype.name,
            LABEL_CAPACITY_TYPE: self.capacity_type,
            LABEL_NODEPOOL: self.name,
            # gpu-feature-discovery keeps the full-GPU product name under the mixed MIG strategy.
            LABEL_GPU_PRODUCT: itype.gpu_product,
            LABEL_GPU_COUNT: str(itype.gpu_count),
            LABEL_GPU_MEMORY: str(itype.gpu_memory_mib),
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            LABEL_SIM_NODE: "true",
            LABEL_SIM_POOL: self.name,
        }
        if self.mig_profile:
            labels["nvidia.com/mig.strategy"] = "mixed"
        return labels


# What plays vLLM in the fleet's pods: fleetsim's own engine (vllm_server.py), or llm-d-inference-sim, one
# process per pod (llmd_sim.py). hack/bench passes `engine:` through to here.
ENGINES: Final = ("fleetsim", "llm-d-inference-sim")
EngineName = Literal["fleetsim", "llm-d-inference-sim"]


class Fleet(_Model):
    region: str = "us-east-1"
    engine: EngineName = "fleetsim"
    pools: list[Pool] = Field(min_length=1)
    # REFERENCE.md "Cold start and capacity timing": Karpenter nodes are Ready in 30-40 s typical.
    provisioning_delay_s: float = Field(35.0, ge=0)
    # REFERENCE.md: "GPU AMIs boot slower" (driver, fabric manager, device plugin before the GPUs
    # are allocatable). 35 + 45 = 80 s lands inside the 70-100 s users report.
    gpu_boot_extra_s: float = Field(45.0, ge=0)

    @field_validator("pools")
    @classmethod
    def _pools_consistent(cls, pools: list[Pool], info: ValidationInfo) -> list[Pool]:
        region = info.data.get("region")
        seen: set[str] = set()
        for pool in pools:
            if pool.name in seen:
                raise ValueError(f"pool name {pool.name!r} is used twice; node names must be unique")
            seen.add(pool.name)
            if region is not None and pool.region != region:
                raise ValueError(
                    f"pool {pool.name!r}: zone {pool.zone!r} is not in region {region!r} "
                    f"(write {region}a, {region}b, ...)"
                )
        return pools

    @property
    def node_ready_delay_s(self) -> float:
        """Simulated seconds from launch to a Ready GPU node."""
        return self.provisioning_delay_s + self.gpu_boot_extra_s

    def pool(self, name: str) -> Pool:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(f"no pool named {name!r}; the fleet has {', '.join(p.name for p in self.pools)}")


def region_of(zone: str) -> str:
    """us-east-1a -> us-east-1 (AWS zone names are the region plus one letter)."""
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+[a-z]", zone):
        raise ValueError(f"{zone!r} is not an availability zone name like us-east-1a")
    return zone[:-1]


def _field_path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "fleet"


def parse_fleet(data: Any) -> Fleet:
    """Validate a loaded fleet document; errors name the field, e.g. `pools[2].mig_profile: ...`."""
    try:
        return Fleet.model_validate(data)
    except ValidationError as error:
        lines = [f"{_field_path(e['loc'])}: {e['msg']}" for e in error.errors(include_url=False)]
        raise ValueError("invalid fleet:\n  " + "\n  ".join(lines)) from None


def load_fleet(path: str | Path) -> Fleet:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read fleet: {error}") from None
    try:
        return parse_fleet(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def node_name(pool: Pool, index: int) -> str:
    return f"{pool.name}-{index}"


def _kube_reserved_cpu_millis(vcpu: int) -> int:
    # See MAX_PODS above for the source of this step function.
    steps = ((1, 0.06), (1, 0.01), (2, 0.005), (math.inf, 0.0025))
    left, reserved = float(vcpu), 0.0
    for cores, share in steps:
        take = min(left, cores)
        reserved += take * 1000 * share
        left -= take
    return round(reserved)


def node_manifest(pool: Pool, index: int, instance_id: str, internal_ip: str) -> dict[str, Any]:
    """A Node as Karpenter and the NVIDIA device plugin leave a GPU node on EKS.

    `internal_ip` is a 127.x address the caller allocates (nothing else may be addressed here).
    The Ready condition is the simulated kubelet's job, not part of this manifest.
    """
    if not internal_ip.startswith("127."):
        raise ValueError(f"internal_ip must be a loopback 127.x address, got {internal_ip!r}")
    name = node_name(pool, index)
    itype = pool.instance
    memory_mib = itype.memory_gib * 1024
    reserved_mib = 11 * MAX_PODS + 255 + _EVICTION_HARD_MIB
    gpus = {pool.gpu_resource: str(pool.gpu_resource_count)}
    capacity = {"cpu": str(itype.vcpu), "memory": f"{itype.memory_gib}Gi", "pods": str(MAX_PODS), **gpus}
    allocatable = {
        "cpu": f"{itype.vcpu * 1000 - _kube_reserved_cpu_millis(itype.vcpu)}m",
        "memory": f"{memory_mib - reserved_mib}Mi",
        "pods": str(MAX_PODS),
        **gpus,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {**pool.labels(), "kubernetes.io/hostname": name}},
        "spec": {
            # Karpenter's interruption controller maps an instance id to its node through this.
            "providerID": f"aws:///{pool.zone}/{instance_id}",
            "taints": [dict(GPU_TAINT)],
        },
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name},
            ],
        },
    }


# ---------------------------------------------------------------------------------------------
# Provisioning


@dataclass(frozen=True)
class PendingPod:
    """An unschedulable pod as the provisioner sees it.

    `requests`: GPU resources only (nvidia.com/gpu, nvidia.com/mig-*); other resources are not
    packed because a GPU node's 96-192 vCPU and 1-2 TiB hold any vLLM pod's CPU and memory.
    `affinity`: required node-affinity terms, ORed; each maps a label key to its allowed values
    (ANDed across keys). Empty: any node. A nodeSelector is folded into every term.
    """

    namespace: str
    name: str
    requests: Mapping[str, int]
    affinity: tuple[Mapping[str, Collection[str]], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def gpu_requests(self) -> dict[str, int]:
        return {r: n for r, n in self.requests.items() if is_gpu_resource(r) and n > 0}

    def allows(self, labels: Mapping[str, str]) -> bool:
        if not self.affinity:
            return True
        return any(all(labels.get(key) in allowed for key, allowed in term.items()) for term in self.affinity)

    @classmethod
    def from_manifest(cls, pod: Mapping[str, Any]) -> PendingPod:
        """Read a pod as the API returns it (camelCase JSON; for the kubernetes client's objects use
        `ApiClient().sanitize_for_serialization(pod)`).

        Only the `In` operator is understood (it is what gpufleet writes); for a GPU pod any other
        operator raises ValueError naming it rather than guessing. Pods without GPU requests come
        back with no requirements: the provisioner ignores them.
        """
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        requests = _pod_gpu_requests(spec)
        if not requests:
            return cls(namespace=meta.get("namespace", "default"), name=meta.get("name", ""), requests={})
        selector: dict[str, Collection[str]] = {k: {v} for k, v in (spec.get("nodeSelector") or {}).items()}
        required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        ) or {}
        terms: list[Mapping[str, Collection[str]]] = []
        for term in required.get("nodeSelectorTerms") or []:
            allowed: dict[str, Collection[str]] = dict(selector)
            for expression in term.get("matchExpressions") or []:
                if expression.get("operator") != "In":
                    raise ValueError(
                        f"pod {meta.get('namespace')}/{meta.get('name')}: node affinity operator "
                        f"{expression.get('operator')!r} on {expression.get('key')!r} is not modelled "
                        "(only In)"
                    )
                values = set(expression.get("values") or [])
                key = expression["key"]
                allowed[key] = values & set(allowed[key]) if key in allowed else values
            terms.append(allowed)
        if not terms and selector:
            terms.append(selector)
        return cls(
            namespace=meta.get("namespace", "default"),
            name=meta.get("name", ""),
            requests=requests,
            affinity=tuple(terms),
        )


def is_gpu_resource(resource: str) -> bool:
    return resource == GPU_RESOURCE or resource.startswith(MIG_RESOURCE_PREFIX)


def _container_gpus(container: Mapping[str, Any]) -> dict[str, int]:
    resources = container.get("resources") or {}
    # Extended resources cannot be overcommitted: a limit alone implies an equal request.
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {r: int(str(q)) for r, q in merged.items() if is_gpu_resource(r)}


def _pod_gpu_requests(spec: Mapping[str, Any]) -> dict[str, int]:
    # Effective request: the sum over containers, or the largest init container if larger.
    total: dict[str, int] = {}
    for container in spec.get("containers") or []:
        for r, n in _container_gpus(container).items():
            total[r] = total.get(r, 0) + n
    for container in spec.get("initContainers") or []:
        for r, n in _container_gpus(container).items():
            total[r] = max(total.get(r, 0), n)
    return {r: n for r, n in total.items() if n > 0}


@dataclass(frozen=True)
class NodeState:
    """A registered node: its pool, GPU resources not yet requested by bound pods, and whether new
    pods may land there (False when cordoned or tainted for disruption, e.g. during a spot
    interruption: its pods need a replacement node even though its GPUs are free)."""

    name: str
    pool: str
    free: Mapping[str, int] = field(default_factory=dict)
    schedulable: bool = True


@dataclass(frozen=True)
class InFlight:
    """A launched instance whose Node has not registered yet. Its GPUs are all free."""

    pool: str
    name: str = ""


@dataclass(frozen=True)
class Launch:
    pool: Pool
    reason: str
    pods: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unplaced:
    pod: str
    reason: str


class ProvisioningPlan(list[Launch]):
    """The launches (it is a list of them) plus, for logs, where each pod went and why some fit nowhere."""

    def __init__(
        self,
        launches: Iterable[Launch] = (),
        unplaced: Iterable[Unplaced] = (),
        placements: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(launches)
        self.unplaced: list[Unplaced] = list(unplaced)
        # pod key -> "node <name>" | "in-flight <pool>/<name>" | "launch #<n> <pool>"
        self.placements: dict[str, str] = dict(placements or {})

    def reasons(self) -> list[str]:
        return [launch.reason for launch in self] + [f"{u.pod}: {u.reason}" for u in self.unplaced]


@dataclass
class _Bin:
    pool: Pool
    free: dict[str, int]
    label: str
    pods: list[str] = field(default_factory=list)

    def fits(self, requests: Mapping[str, int]) -> bool:
        return all(self.free.get(r, 0) >= n for r, n in requests.items())

    def take(self, pod: PendingPod, requests: Mapping[str, int]) -> None:
        for r, n in requests.items():
            self.free[r] -= n
        self.pods.append(pod.key)

    def slack_after(self, requests: Mapping[str, int]) -> int:
        return sum(self.free.values()) - sum(requests.values())


def plan_provisioning(
    pending: Sequence[PendingPod],
    nodes: Sequence[NodeState],
    pools: Sequence[Pool],
    in_flight: Sequence[InFlight],
    now: float,
    unavailable: Mapping[str, float] | None = None,
) -> ProvisioningPlan:
    """Decide which pools to grow, as Karpenter's provisioner does for unschedulable pods.

    Stateless: call it every tick with the current pending pods. Pods are packed, largest GPU
    request first, into (1) free GPUs of schedulable existing nodes (the scheduler will bind
    them; no launch), (2) nodes already launching, best fit first, then (3) new nodes, cheapest
    matching pool first; a new node takes further pods before another is launched. A pool must
    satisfy one of the pod's affinity terms, advertise the pod's GPU resource in sufficient
    number, and have room: registered + in-flight + planned nodes < max_count (max_count 0 = no
    capacity, e.g. no spot left in that zone).

    `unavailable`: pool name -> simulated time until which the pool cannot launch (Karpenter
    marks an offering unavailable for 3 minutes after a spot interruption, REFERENCE.md; use
    math.inf for a zone outage). `now` is compared against it.
    """
    by_name = {pool.name: pool for pool in pools}
    blocked = {name for name, until in (unavailable or {}).items() if until > now}
    used: dict[str, int] = {pool.name: 0 for pool in pools}
    for node in nodes:
        used[node.pool] = used.get(node.pool, 0) + 1
    for flight in in_flight:
        used[flight.pool] = used.get(flight.pool, 0) + 1

    existing = [
        _Bin(by_name[n.pool], dict(n.free), f"node {n.name}")
        for n in nodes
        if n.schedulable and n.pool in by_name
    ]
    launching = [
        _Bin(by_name[f.pool], by_name[f.pool].capacity(), f"in-flight {f.pool}/{f.name or '?'}")
        for f in in_flight
        if f.pool in by_name
    ]
    planned: list[_Bin] = []
    unplaced: list[Unplaced] = []
    placements: dict[str, str] = {}

    def size(pod: PendingPod) -> tuple[int, str]:
        return (-sum(pod.gpu_requests.values()), pod.key)

    for pod in sorted(pending, key=size):
        requests = pod.gpu_requests
        if not requests:
            continue  # not a GPU pod: not this provisioner's business
        target = next((b for b in existing if pod.allows(b.pool.labels()) and b.fits(requests)), None)
        if target is None:
            fitting = [b for b in launching + planned if pod.allows(b.pool.labels()) and b.fits(requests)]
            if fitting:
                target = min(fitting, key=lambda b: (b.slack_after(requests), b.pool.hourly_price(), b.label))
        if target is None:
            pool, why_not = _cheapest_pool(pod, requests, pools, used, blocked)
            if pool is None:
                unplaced.append(Unplaced(pod.key, why_not))
                continue
            used[pool.name] += 1
            target = _Bin(pool, pool.capacity(), f"launch #{len(planned) + 1} {pool.name}")
            planned.append(target)
        target.take(pod, requests)
        placements[pod.key] = target.label

    launches = [
        Launch(
            pool=b.pool,
            reason=(
                f"{len(b.pods)} pending pod(s) need {b.pool.gpu_resource} in {b.pool.zone} "
                f"({b.pool.capacity_type}, ${b.pool.hourly_price():.2f}/h): {', '.join(b.pods)}"
            ),
            pods=tuple(b.pods),
        )
        for b in planned
    ]
    return ProvisioningPlan(launches, unplaced, placements)


def _cheapest_pool(
    pod: PendingPod,
    requests: Mapping[str, int],
    pools: Sequence[Pool],
    used: Mapping[str, int],
    blocked: Collection[str],
) -> tuple[Pool | None, str]:
    rejected: list[str] = []
    candidates: list[Pool] = []
    for pool in pools:
        capacity = pool.capacity()
        if not pod.allows(pool.labels()):
            rejected.append(f"{pool.name}: labels do not match")
        elif any(capacity.get(r, 0) < n for r, n in requests.items()):
            have = ", ".join(f"{r}={n}" for r, n in capacity.items())
            rejected.append(f"{pool.name}: node has {have}")
        elif pool.name in blocked:
            rejected.append(f"{pool.name}: offering unavailable")
        elif used.get(pool.name, 0) >= pool.max_count:
            rejected.append(f"{pool.name}: at max_count {pool.max_count}")
        else:
            candidates.append(pool)
    if candidates:
        return min(candidates, key=lambda p: (p.hourly_price(), p.name)), ""
    wanted = ", ".join(f"{r}={n}" for r, n in requests.items())
    return None, f"no pool can take {wanted}: " + ("; ".join(rejected) or "the fleet has no pools")


def pools_in_zone(pools: Iterable[Pool], zone: str, capacity_type: str | None = None) -> list[Pool]:
    """The pools a zone outage (or a zone running out of spot) takes away."""
    return [p for p in pools if p.zone == zone and capacity_type in (None, p.capacity_type)]


def operator_prices(pools: Iterable[Pool]) -> dict[str, dict[str, object]]:
    """The fleet's prices as gpufleet reads them (GPUFLEET_PRICES): per GPU product, per instance-hour.

    Spot prices are per zone; a product priced differently by two on-demand pools keeps the first.
    """
    prices: dict[str, dict[str, object]] = {}
    for pool in pools:
        if pool.mig_profile:
            continue  # a MIG pool is the same instance type; its price is the whole instance's
        entry = prices.setdefault(
            pool.instance.gpu_product,
            {
                "instanceType": pool.instance_type,
                "gpusPerInstance": pool.instance.gpu_count,
                "onDemand": pool.instance.on_demand_per_hour,
                "spot": {},
            },
        )
        if pool.capacity_type == "spot":
            spot = entry["spot"]
            assert isinstance(spot, dict)
            spot.setdefault(pool.zone, round(pool.hourly_price(), 4))
        elif pool.price_per_hour is not None:
            entry["onDemand"] = pool.price_per_hour
    return prices
