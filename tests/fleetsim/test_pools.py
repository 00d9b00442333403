"""fleetsim.pools: fleet files, GPU node manifests and the Karpenter-like provisioner (pure)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from fleetsim.pools import (
    INSTANCE_TYPES,
    SPOT_PRICE_FRACTION,
    Fleet,
    InFlight,
    NodeState,
    PendingPod,
    Pool,
    load_fleet,
    node_manifest,
    parse_fleet,
    plan_provisioning,
    pools_in_zone,
)

ROOT = Path(__file__).resolve().parents[2]
A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"


def pool(name: str, zone: str = "us-east-1a", capacity: str = "on-demand", **kw: Any) -> Pool:
    fields: dict[str, Any] = {"instance_type": "p4de.24xlarge", "count": 0, "max_count": 3, **kw}
    return Pool(name=name, zone=zone, capacity_type=capacity, **fields)


def gpu_pod(name: str, gpus: int = 4, resource: str = "nvidia.com/gpu", **affinity: list[str]) -> PendingPod:
    keys = {"zone": "topology.kubernetes.io/zone", "capacity": "karpenter.sh/capacity-type"}
    term = {keys.get(k, "nvidia.com/gpu.product"): set(v) for k, v in affinity.items()}
    return PendingPod("default", name, {resource: gpus}, (term,) if term else ())


# --- fleet files ----------------------------------------------------------------------------------


def test_demo_fleet_loads() -> None:
    fleet = load_fleet(ROOT / "hack" / "fleets" / "three-zone-a100.yaml")
    assert fleet.region == "us-east-1"
    assert {p.zone for p in fleet.pools} == {"us-east-1a", "us-east-1b", "us-east-1c"}
    spot = [p for p in fleet.pools if p.capacity_type == "spot"]
    assert [(p.count, p.max_count) for p in spot] == [(1, 4)] * 3
    (mig,) = [p for p in fleet.pools if p.mig_profile]
    assert (mig.zone, mig.capacity_type, mig.max_count, mig.capacity()) == (
        "us-east-1a",
        "on-demand",
        1,
        {"nvidia.com/mig-2g.20gb": 24},
    )
    assert fleet.node_ready_delay_s == 80


def test_defaults_and_prices() -> None:
    fleet = parse_fleet({"pools": [{"name": "p", "instance_type": "p5.48xlarge", "zone": "us-east-1a",
                                    "capacity_type": "spot", "count": 0, "max_count": 2}]})  # fmt: skip
    (p,) = fleet.pools
    assert fleet.provisioning_delay_s == 35
    assert fleet.gpu_boot_extra_s == 45
    assert p.hourly_price() == pytest.approx(
        INSTANCE_TYPES["p5.48xlarge"].on_demand_per_hour * SPOT_PRICE_FRACTION
    )
    assert pool("x", price_per_hour=3.5).hourly_price() == 3.5
    assert p.gpus_per_node == 8
    assert p.capacity() == {"nvidia.com/gpu": 8}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"instance_type": "g6e.48xlarge"}, "pools[1].instance_type", "p4de.24xlarge"),
        ({"mig_profile": "2g.10gb"}, "pools[1].mig_profile", "2g.20gb"),
        ({"count": 3, "max_count": 2}, "pools[1].max_count", ">= count"),
        ({"count": -1}, "pools[1].count", "greater than or equal"),
        ({"capacity_type": "reserved"}, "pools[1].capacity_type", "spot"),
        ({"zone": "east"}, "pools[1].zone", "us-east-1a"),
        ({"name": "Bad_Name"}, "pools[1].name", "DNS label"),
        ({"max_cout": 2}, "pools[1].max_cout", "Extra inputs"),
    ],
)
def test_invalid_pool_names_the_field(change: dict[str, Any], field: str, words: str) -> None:
    good = {"name": "a", "instance_type": "p4de.24xlarge", "zone": "us-east-1a", "capacity_type": "spot",
            "count": 1, "max_count": 2}  # fmt: skip
    with pytest.raises(ValueError, match="invalid fleet") as error:
        parse_fleet({"pools": [good, {**good, "name": "b", **change}]})
    assert f"{field}: " in str(error.value)
    assert words in str(error.value)


def test_mig_profile_checked_against_the_gpu() -> None:
    # 40 GB A100s have 3g.20gb, not 3g.40gb.
    assert pool("a", instance_type="p4d.24xlarge", mig_profile="3g.20gb").capacity() == {
        "nvidia.com/mig-3g.20gb": 16
    }
    with pytest.raises(ValueError, match="not a MIG profile of NVIDIA-A100-SXM4-40GB"):
        pool("a", instance_type="p4d.24xlarge", mig_profile="3g.40gb")


def test_fleet_wide_errors(tmp_path: Path) -> None:
    a = {"name": "a", "instance_type": "p4de.24xlarge", "zone": "us-west-2a", "capacity_type": "spot",
         "count": 0, "max_count": 0}  # fmt: skip
    with pytest.raises(ValueError, match="not in region 'us-east-1'"):
        parse_fleet({"pools": [a]})
    with pytest.raises(ValueError, match="used twice"):
        parse_fleet({"region": "us-west-2", "pools": [a, a]})
    bad = tmp_path / "fleet.yaml"
    bad.write_text("pools: [\n")
    with pytest.raises(ValueError, match=r"fleet\.yaml: cannot read fleet"):
        load_fleet(bad)
    bad.write_text("region: us-east-1\npools: []\n")
    with pytest.raises(ValueError, match=r"fleet\.yaml: invalid fleet:\n  pools: "):
        load_fleet(bad)


# --- node manifests -------------------------------------------------------------------------------


def test_node_manifest_looks_like_an_eks_gpu_node() -> None:
    node = node_manifest(pool("a100-1b-spot", "us-east-1b", "spot"), 3, "i-0123456789abcdef0", "127.1.0.9")
    labels = node["metadata"]["labels"]
    assert node["metadata"]["name"] == "a100-1b-spot-3"
    assert labels == {
        "topology.kubernetes.io/zone": "us-east-1b",
        "topology.kubernetes.io/region": "us-east-1",
        "node.kubernetes.io/instance-type": "p4de.24xlarge",
        "karpenter.sh/capacity-type": "spot",
        "karpenter.sh/nodepool": "a100-1b-spot",
        "nvidia.com/gpu.product": A100,
        "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.memory": "81920",
        "kubernetes.io/hostname": "a100-1b-spot-3",
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "fleetsim.gpufleet.io/node": "true",
        "fleetsim.gpufleet.io/pool": "a100-1b-spot",
    }
    assert node["spec"]["providerID"] == "aws:///us-east-1b/i-0123456789abcdef0"
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    status = node["status"]
    assert status["capacity"] == {"cpu": "96", "memory": "1152Gi", "pods": "110", "nvidia.com/gpu": "8"}
    assert status["allocatable"]["nvidia.com/gpu"] == "8"
    # Every quantity is a string: the kubernetes client rejects numbers.
    assert all(isinstance(v, str) for v in {**status["capacity"], **status["allocatable"]}.values())
    # A little below capacity (kube-reserved + eviction threshold), as on a real node.
    assert status["allocatable"]["cpu"] == "95690m"
    assert int(status["allocatable"]["memory"].removesuffix("Mi")) < 1152 * 1024
    assert status["addresses"] == [
        {"type": "InternalIP", "address": "127.1.0.9"},
        {"type": "Hostname", "address": "a100-1b-spot-3"},
    ]


def test_mig_node_advertises_slices_not_gpus() -> None:
    node = node_manifest(pool("mig", mig_profile="2g.20gb"), 1, "i-1", "127.1.0.2")
    for key in ("capacity", "allocatable"):
        assert node["status"][key]["nvidia.com/mig-2g.20gb"] == "24"
        assert "nvidia.com/gpu" not in node["status"][key]
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == A100


def test_h100_node() -> None:
    node = node_manifest(pool("h", instance_type="p5.48xlarge"), 1, "i-2", "127.1.0.3")
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
    assert node["status"]["capacity"]["cpu"] == "192"
    assert node["status"]["capacity"]["memory"] == "2048Gi"


def test_node_manifest_refuses_non_loopback_addresses() -> None:
    with pytest.raises(ValueError, match="loopback"):
        node_manifest(pool("a"), 1, "i-3", "10.0.0.5")


# --- provisioning ---------------------------------------------------------------------------------

FLEET = [
    pool("a-od", "us-east-1a", "on-demand"),
    pool("a-spot", "us-east-1a", "spot", max_count=4),
    pool("b-od", "us-east-1b", "on-demand"),
    pool("b-spot", "us-east-1b", "spot", max_count=4),
    pool("a-h100", "us-east-1a", "on-demand", instance_type="p5.48xlarge"),
    pool("a-mig", "us-east-1a", "on-demand", max_count=1, mig_profile="2g.20gb"),
]


def launched(plan: list[Any]) -> list[str]:
    return [launch.pool.name for launch in plan]


def test_launches_in_the_required_zone_capacity_and_product() -> None:
    pod = gpu_pod("p", 4, zone=["us-east-1b"], capacity=["on-demand"], product=[A100])
    plan = plan_provisioning([pod], [], FLEET, [], now=0)
    assert launched(plan) == ["b-od"]
    assert plan[0].pods == ("default/p",)
    assert "us-east-1b" in plan[0].reason
    h100 = gpu_pod("h", 8, zone=["us-east-1a"], product=[H100])
    assert launched(plan_provisioning([h100], [], FLEET, [], now=0)) == ["a-h100"]


def test_cheapest_pool_first() -> None:
    # Either capacity type allowed: spot (0.43 x on-demand) wins; A100 beats H100 on price.
    anywhere = gpu_pod("p", 8)
    assert launched(plan_provisioning([anywhere], [], FLEET, [], now=0)) == ["a-spot"]
    on_demand = gpu_pod("q", 8, capacity=["on-demand"], zone=["us-east-1a"])
    assert launched(plan_provisioning([on_demand], [], FLEET, [], now=0)) == ["a-od"]
    # A price in the file overrides the catalog.
    cheap_h100 = [
        *FLEET[:4],
        pool("a-h100", "us-east-1a", "on-demand", instance_type="p5.48xlarge", price_per_hour=1),
    ]
    assert launched(plan_provisioning([on_demand], [], cheap_h100, [], now=0)) == ["a-h100"]


def test_max_count_limits_and_no_spot_left() -> None:
    spot_b = gpu_pod("p", 8, zone=["us-east-1b"], capacity=["spot"])
    nodes = [NodeState(f"b-spot-{i}", "b-spot", free={"nvidia.com/gpu": 0}) for i in range(3)]
    # 3 registered + 1 in flight = max_count 4: nothing more, and the log says why.
    plan = plan_provisioning([spot_b], nodes, FLEET, [InFlight("b-spot", "b-spot-4")], now=0)
    assert launched(plan) == []  # the in-flight node would take it
    plan = plan_provisioning([spot_b, gpu_pod("p2", 8, zone=["us-east-1b"], capacity=["spot"])],
                             nodes, FLEET, [InFlight("b-spot", "b-spot-4")], now=0)  # fmt: skip
    assert launched(plan) == []
    assert [u.pod for u in plan.unplaced] == ["default/p2"]
    assert "b-spot: at max_count 4" in plan.unplaced[0].reason
    # max_count 0: no spot capacity left in that zone.
    dry = [p if p.name != "b-spot" else pool("b-spot", "us-east-1b", "spot", max_count=0) for p in FLEET]
    plan = plan_provisioning([spot_b], [], dry, [], now=0)
    assert launched(plan) == []
    assert "at max_count 0" in plan.reasons()[0]
    # Allowed on-demand too: falls back to it.
    either = gpu_pod("p", 8, zone=["us-east-1b"], capacity=["spot", "on-demand"])
    assert launched(plan_provisioning([either], [], dry, [], now=0)) == ["b-od"]


def test_bin_packs_into_in_flight_and_planned_nodes() -> None:
    pods = [gpu_pod(f"p{i}", 4, zone=["us-east-1a"], capacity=["spot"]) for i in range(3)]
    # Nothing launching: two 4-GPU pods share a node, the third needs a second node.
    plan = plan_provisioning(pods, [], FLEET, [], now=0)
    assert launched(plan) == ["a-spot", "a-spot"]
    assert sorted(len(launch.pods) for launch in plan) == [1, 2]
    # One node already launching takes two of them: one more launch, not three.
    plan = plan_provisioning(pods, [], FLEET, [InFlight("a-spot", "a-spot-1")], now=0)
    assert launched(plan) == ["a-spot"]
    assert list(plan.placements.values()).count("in-flight a-spot/a-spot-1") == 2


def test_free_gpus_on_a_schedulable_node_need_no_launch() -> None:
    pod = gpu_pod("p", 4, zone=["us-east-1a"], capacity=["on-demand"])
    free = NodeState("a-od-1", "a-od", free={"nvidia.com/gpu": 4})
    assert launched(plan_provisioning([pod], [free], FLEET, [], now=0)) == []
    # A node being drained after a spot interruption has free GPUs but takes no new pods.
    drained = NodeState("a-od-1", "a-od", free={"nvidia.com/gpu": 8}, schedulable=False)
    assert launched(plan_provisioning([pod], [drained], FLEET, [], now=0)) == ["a-od"]


def test_mig_requests_go_to_mig_pools_only() -> None:
    small = [PendingPod("default", f"m{i}", {"nvidia.com/mig-2g.20gb": 1}) for i in range(30)]
    plan = plan_provisioning(small, [], FLEET, [], now=0)
    # One MIG node (24 slices, max_count 1) takes 24 pods; 6 fit nowhere.
    assert launched(plan) == ["a-mig"]
    assert len(plan[0].pods) == 24
    assert len(plan.unplaced) == 6
    assert "a-od: node has nvidia.com/gpu=8" in plan.unplaced[0].reason
    whole = gpu_pod("w", 1, zone=["us-east-1a"], capacity=["on-demand"], product=[A100])
    assert launched(plan_provisioning([whole], [], FLEET, [], now=0)) == ["a-od"]


def test_unavailable_offerings_and_zone_outage() -> None:
    pod = gpu_pod("p", 8, capacity=["spot"])
    # Karpenter marks the interrupted offering unavailable for 3 minutes.
    plan = plan_provisioning([pod], [], FLEET, [], now=100, unavailable={"a-spot": 280})
    assert launched(plan) == ["b-spot"]
    assert launched(plan_provisioning([pod], [], FLEET, [], now=300, unavailable={"a-spot": 280})) == [
        "a-spot"
    ]
    lost = {p.name: math.inf for p in pools_in_zone(FLEET, "us-east-1a")}
    assert launched(plan_provisioning([gpu_pod("q", 8)], [], FLEET, [], now=0, unavailable=lost)) == [
        "b-spot"
    ]


def test_non_gpu_and_unmatched_pods() -> None:
    cpu_only = PendingPod("default", "web", {})
    nowhere = gpu_pod("p", 4, zone=["eu-west-1a"])
    too_big = gpu_pod("q", 16)
    plan = plan_provisioning([cpu_only, nowhere, too_big], [], FLEET, [], now=0)
    assert launched(plan) == []
    assert {u.pod for u in plan.unplaced} == {"default/p", "default/q"}
    assert all("no pool can take" in r for r in plan.reasons())


def test_pending_pod_from_manifest() -> None:
    expressions = [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": [A100]},
        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1b"]},
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]},
    ]
    required = {"nodeSelectorTerms": [{"matchExpressions": expressions}]}
    pod = {
        "metadata": {"namespace": "llm", "name": "llama-0"},
        "spec": {
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}},
            "containers": [
                {"name": "vllm", "resources": {"requests": {"cpu": "16", "nvidia.com/gpu": "4"}}},
                # Extended resources: a limit alone implies the same request.
                {"name": "side", "resources": {"limits": {"nvidia.com/gpu": 1}}},
            ],
        },
    }
    pending = PendingPod.from_manifest(pod)
    assert pending.key == "llm/llama-0"
    assert pending.gpu_requests == {"nvidia.com/gpu": 5}
    assert pending.affinity == (
        {
            "kubernetes.io/os": {"linux"},
            "nvidia.com/gpu.product": {A100},
            "topology.kubernetes.io/zone": {"us-east-1b"},
            "karpenter.sh/capacity-type": {"spot"},
        },
    )
    assert launched(plan_provisioning([pending], [], FLEET, [], now=0)) == ["b-spot"]
    expressions[0]["operator"] = "NotIn"
    with pytest.raises(ValueError, match=r"'NotIn' on 'nvidia\.com/gpu\.product' is not modelled"):
        PendingPod.from_manifest(pod)
    # A pod without GPUs is none of the provisioner's business, whatever its affinity says.
    pod["spec"]["containers"] = [{"name": "web"}]
    assert PendingPod.from_manifest(pod).gpu_requests == {}


def test_pool_is_hashable_and_frozen() -> None:
    p = FLEET[0]
    assert {p: 1}[p] == 1
    with pytest.raises(ValueError, match="frozen"):
        p.count = 2  # type: ignore[misc]
    assert isinstance(Fleet(pools=[p]).pool("a-od"), Pool)
