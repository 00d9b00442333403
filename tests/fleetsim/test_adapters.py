"""The simulated kubelet reads gpufleet's LoRA pod shape: s3:// adapters fetched by init containers first,
then served by vLLM from local directories under the adapters' own names (the fetch itself:
test_init_containers.py)."""

from __future__ import annotations

from fleetsim.podspec import plan_pod
from fleetsim.vllm_model import profile_for
from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from gpufleet.config import Settings
from gpufleet.planning.placement import PlacementGroup
from gpufleet.planning.workloads import Owner, desired_workloads


def pod_of(spec: ModelDeploymentSpec) -> dict[str, object]:
    workloads = desired_workloads(
        Owner("m", "ns", "u"),
        spec,
        [PlacementGroup("", "on-demand", 1)],
        Settings.defaults().workload_options(),
    )
    return {"spec": workloads.deployments[0]["spec"]["template"]["spec"]}


def test_s3_adapters_are_fetched_by_init_containers_and_served_by_name_from_their_directory() -> None:
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct", "credentialsSecret": "creds"},
            "engine": {
                "loraAdapters": [
                    {"name": "sql", "uri": "hf://acme/sql-lora"},
                    {"name": "acme/legal:v2", "uri": "s3://adapters/legal"},
                    {"name": "support", "uri": "s3://adapters/support"},
                    {"name": "hr", "uri": "pvc://adapters/hr,v2"},
                ]
            },
        }
    )
    plan = plan_pod(pod_of(spec))
    assert plan is not None
    # The engine answers requests naming an adapter, whatever directory vLLM loaded it from.
    assert plan.lora_names == ("sql", "acme/legal:v2", "support", "hr")
    assert plan.adapter_fetches == 2
    assert (plan.max_loras, plan.max_lora_rank) == (4, 16)
    # Where vLLM loads each from: the Hub repo id, the init containers' directories, the claim.
    assert plan.lora_paths[0] == "acme/sql-lora"
    assert plan.lora_paths[1].startswith("/mnt/lora-adapters/")
    assert plan.lora_paths[2].startswith("/mnt/lora-adapters/")
    assert plan.lora_paths[3] == "/mnt/pvc/adapters/hr,v2"


def test_no_fetch_without_s3_adapters() -> None:
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct"},
            "engine": {"loraAdapters": [{"name": "sql", "uri": "pvc://adapters/sql"}]},
        }
    )
    plan = plan_pod(pod_of(spec))
    assert plan is not None
    assert (plan.lora_names, plan.lora_paths, plan.adapter_fetches) == (
        ("sql",),
        ("/mnt/pvc/adapters/sql",),
        0,
    )


def test_the_simulated_engine_reserves_lora_slots_out_of_its_kv_cache() -> None:
    model, gpu = "meta-llama/Meta-Llama-3-8B-Instruct", "NVIDIA-A100-SXM4-80GB"
    plain = profile_for(model, 1, gpu)
    lora = profile_for(model, 1, gpu, max_loras=4, max_lora_rank=64)
    assert lora.kv_cache_tokens < plain.kv_cache_tokens
