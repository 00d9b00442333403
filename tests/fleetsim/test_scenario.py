"""Scenario files, pod plans, accounting and the simulated clock: pure and fast."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from fleetsim.accounting import Accounting, NodeSample, ReplicaSample
from fleetsim.builds import Build
from fleetsim.clock import SimClock
from fleetsim.params import KubeletParams
from fleetsim.podspec import load_seconds, plan_pod
from fleetsim.scenario import load_scenario, parse_scenario
from fleetsim.sim import Simulation, Snapshot
from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from gpufleet.config import Settings
from gpufleet.planning.placement import PlacementGroup
from gpufleet.planning.workloads import Owner, desired_workloads

ROOT = Path(__file__).resolve().parents[2]

MINIMAL: dict[str, Any] = {
    "name": "t",
    "duration": 60,
    "fleet": "hack/fleets/three-zone-a100.yaml",
    "apply": ["samples/llama-3-70b-a100-spot.yaml"],
}


def test_minimal_scenario_resolves_paths_against_the_root() -> None:
    scenario = parse_scenario(MINIMAL, ROOT)
    assert scenario.fleet == ROOT / "hack/fleets/three-zone-a100.yaml"
    assert scenario.apply == [ROOT / "samples/llama-3-70b-a100-spot.yaml"]
    assert scenario.time_scale == 10
    assert scenario.events == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"duration": -5}, "scenario.duration: Input should be greater than 0"),
        ({"timeScale": 0}, "scenario.timeScale: Input should be greater than 0"),
        ({"apply": []}, "scenario.apply: List should have at least 1 item"),
        ({"events": [{"at": 10}]}, "scenario.events[0]: Value error, each event needs exactly one of"),
        (
            {"events": [{"at": 10, "interrupt": {"node": "a", "pool": "b"}}]},
            "scenario.events[0].interrupt: Value error, set exactly one of node or pool",
        ),
        (
            {"events": [{"at": 10, "zoneOutage": "x", "scale": {"modelDeployment": "m", "replicas": 1}}]},
            "exactly one",
        ),
        ({"loda": {}}, "scenario.loda: Extra inputs are not permitted"),
        ({"load": {"service": "s", "model": "m"}}, "scenario.load.trace: Field required"),
        ({"params": {"kubelet": {"imagePullSeconds": -1}}}, "scenario.params.kubelet.imagePullSeconds"),
        (
            {"builds": {"vllm/vllm-openai:bad": {"errorShare": 1.5}}},
            "scenario.builds['vllm/vllm-openai:bad'].errorShare: Input should be less than or equal to 1",
        ),
        (
            {"builds": {"img": {"errorShare": -0.1}}},
            "scenario.builds['img'].errorShare: Input should be greater than or equal to 0",
        ),
        (
            {"builds": {"img": {"prefillSlowdown": 0}}},
            "scenario.builds['img'].prefillSlowdown: Input should be greater than 0",
        ),
        (
            {"builds": {"img": {"decodeSlowdown": -2}}},
            "scenario.builds['img'].decodeSlowdown: Input should be greater than 0",
        ),
        ({"builds": {"img": {"neverReady": "maybe"}}}, "scenario.builds['img'].neverReady: Input should be"),
        ({"builds": {"img": {"errorRate": 0.1}}}, "scenario.builds['img'].errorRate: Extra inputs are not"),
        ({"builds": {"": {}}}, "scenario.builds[''][key]: String should have at least 1 character"),
        (
            {"events": [{"at": 1, "patch": {"modelDeployment": "m", "spec": {}}}]},
            "scenario.events[0].patch.spec: Dictionary should have at least 1 item",
        ),
        (
            {"events": [{"at": 1, "patch": {"spec": {"replicas": 2}}}]},
            "scenario.events[0].patch.modelDeployment: Field required",
        ),
    ],
)
def test_bad_scenarios_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="invalid scenario") as error:
        parse_scenario({**MINIMAL, **change}, ROOT)
    assert message in str(error.value)


def test_unreadable_scenario_file(tmp_path: Path) -> None:
    broken = tmp_path / "s.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="cannot read scenario"):
        load_scenario(broken)


def test_event_kinds() -> None:
    scenario = parse_scenario(
        {
            **MINIMAL,
            "events": [
                {"at": 1, "interrupt": {"pool": "us-east-1b-spot", "rebalanceFirstSeconds": 30}},
                {"at": 2, "zoneOutage": "us-east-1c"},
                {"at": 3, "deleteNode": "n"},
                {"at": 4, "scale": {"modelDeployment": "m", "replicas": 3}},
                {
                    "at": 300,
                    "patch": {
                        "modelDeployment": "llama-3-8b",
                        "spec": {"engine": {"image": "vllm/vllm-openai:v0.34.0-bad"}},
                    },
                },
            ],
        },
        ROOT,
    )
    assert [e.kind for e in scenario.events] == ["interrupt", "zoneOutage", "deleteNode", "scale", "patch"]
    patch = scenario.events[-1].patch
    assert patch is not None
    assert patch.model_deployment == "llama-3-8b"
    assert patch.spec == {"engine": {"image": "vllm/vllm-openai:v0.34.0-bad"}}


def test_builds_name_faulty_images() -> None:
    scenario = parse_scenario(
        {
            **MINIMAL,
            "builds": {
                "vllm/vllm-openai:v0.34.0-bad": {
                    "errorShare": 0.2,
                    "prefillSlowdown": 2.0,
                    "decodeSlowdown": 1.0,
                    "neverReady": False,
                },
                "vllm/vllm-openai:v0.34.0-hung": {"neverReady": True},
            },
        },
        ROOT,
    )
    bad = scenario.builds["vllm/vllm-openai:v0.34.0-bad"]
    assert (bad.error_share, bad.prefill_slowdown, bad.decode_slowdown, bad.never_ready) == (0.2, 2, 1, False)
    hung = scenario.builds["vllm/vllm-openai:v0.34.0-hung"]
    assert hung == Build(never_ready=True)
    assert parse_scenario(MINIMAL, ROOT).builds == {}


def _pod_for(spec: dict[str, Any], group: PlacementGroup) -> dict[str, Any]:
    model = ModelDeploymentSpec.model_validate(spec)
    deployment = desired_workloads(
        Owner("m", "ns", "u"), model, [group], Settings.defaults().workload_options()
    ).deployments[0]
    return {"spec": deployment["spec"]["template"]["spec"]}


def test_pod_plan_reads_what_the_operator_wrote() -> None:
    spec = {
        "model": {
            "uri": "s3://models/meta-llama/Meta-Llama-3-70B-Instruct",
            "quantization": "fp8",
            "maxModelLen": 8192,
        },
        "accelerator": {"tensorParallelSize": 2},
        "engine": {"loraAdapters": [{"name": "sql", "uri": "hf://org/sql-lora"}]},
    }
    plan = plan_pod(_pod_for(spec, PlacementGroup("us-east-1a", "spot", 1)))
    assert plan is not None
    assert plan.model_id == "s3://models/meta-llama/Meta-Llama-3-70B-Instruct"
    assert (plan.served_name, plan.tensor_parallel_size, plan.max_model_len) == ("m", 2, 8192)
    assert (plan.gpu_resource, plan.gpu_count, plan.mig_profile) == ("nvidia.com/gpu", 2, None)
    assert (plan.source, plan.dtype_bytes, plan.lora_names) == ("s3", 1.0, ("sql",))
    assert (plan.prestop_seconds, plan.grace_seconds, plan.port) == (15.0, 135.0, 8000)


def test_pod_plan_for_mig_and_non_vllm_pods() -> None:
    spec = {
        "model": {"uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct"},
        "accelerator": {"migProfile": "2g.20gb"},
    }
    plan = plan_pod(_pod_for(spec, PlacementGroup("", "on-demand", 1)))
    assert plan is not None
    assert (plan.gpu_resource, plan.mig_profile, plan.source) == ("nvidia.com/mig-2g.20gb", "2g.20gb", "hf")
    assert plan_pod({"spec": {"containers": [{"name": "pause", "image": "pause"}]}}) is None


@pytest.mark.parametrize(("source", "seconds"), [("s3", 38 + 20), ("pvc", 132 + 20), ("hf", 264 + 20)])
def test_load_time_follows_the_reference_rates(source: str, seconds: float) -> None:
    # 70.6e9 bf16 parameters = 131.5 GiB (REFERENCE.md): S3 streamer ~37 s, gp3 ~128 s.
    assert load_seconds(70.6e9 * 2, source, KubeletParams()) == seconds


def test_accounting_sums_replica_seconds_gpu_hours_and_cost() -> None:
    book = Accounting()
    replicas = [
        ReplicaSample("a", "spot", True),
        ReplicaSample("a", "spot", False),
        ReplicaSample("b", "on-demand", True),
    ]
    nodes = [NodeSample("a-spot", "spot", 8, 10.0), NodeSample("b-od", "on-demand", 8, 30.0)]
    for _ in range(360):
        book.add(10.0, replicas, nodes)
    assert book.elapsed == 3600
    assert book.rows() == [("a", "spot", 7200.0, 3600.0), ("b", "on-demand", 3600.0, 3600.0)]
    assert book.gpu_hours == pytest.approx(16.0)
    assert book.total_cost == pytest.approx(40.0)


def test_clock_scales_every_delay_alike() -> None:
    clock = SimClock(scale=10)
    assert clock.real(120) == 12
    assert clock.simulated(3) == 30
    with pytest.raises(ValueError, match="time scale"):
        SimClock(scale=0)


class _CustomObjects:
    """The API server's custom objects, recorded; `refuse` answers every patch with that status."""

    def __init__(self, refuse: int | None = None) -> None:
        self.refuse = refuse
        self.calls: list[tuple[Any, ...]] = []

    def patch_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((*args, kwargs))
        if self.refuse is not None:
            raise ApiException(status=self.refuse, reason="Unprocessable Entity")


@pytest.mark.parametrize("refuse", [None, 422])
def test_the_patch_event_merges_into_the_model_deployments_spec(refuse: int | None) -> None:
    scenario = parse_scenario(
        {
            **MINIMAL,
            "namespace": "ml",
            "events": [
                {"at": 300, "patch": {"modelDeployment": "llama-3-8b", "spec": {"engine": {"image": "bad"}}}}
            ],
        },
        ROOT,
    )
    # Only what _run_event uses: no control plane, no cloud, nothing started.
    simulation = Simulation.__new__(Simulation)
    simulation.scenario = scenario
    simulation.snapshot = Snapshot()
    simulation.custom = _CustomObjects(refuse)  # type: ignore[assignment]
    asyncio.run(simulation._run_event(scenario.events[0]))
    body = {"spec": {"engine": {"image": "bad"}}}
    assert simulation.custom.calls == [  # type: ignore[attr-defined]
        (
            "gpufleet.io",
            "v1alpha1",
            "ml",
            "modeldeployments",
            "llama-3-8b",
            body,
            {"_content_type": "application/merge-patch+json"},
        )
    ]
    command = """kubectl patch md/llama-3-8b --type merge -p '{"spec":{"engine":{"image":"bad"}}}'"""
    [event] = simulation.snapshot.events
    assert event.endswith(command if refuse is None else f"{command}: refused (422 Unprocessable Entity)")
