"""Kubernetes objects derived from a ModelDeployment: names, placement, resources, sources, probes, hash."""

from __future__ import annotations

import copy
import hashlib
import http.server
import json
import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from gpufleet.planning.placement import PlacementGroup
from gpufleet.planning.workloads import (
    ANNOTATION_TEMPLATE_HASH,
    LABEL_CAPACITY_TYPE,
    LABEL_MODEL_DEPLOYMENT,
    LABEL_ZONE,
    PRESTOP_WAIT_IDLE_SCRIPT,
    DesiredWorkloads,
    Owner,
    WorkloadOptions,
    deployment_name,
    desired_workloads,
    selector_labels,
    selector_string,
    startup_budget_seconds,
    template_hash,
    vllm_args,
)
from tests.unit.dotted import with_changes
from tests.unit.helpers import workload_options

MD = "llama-3-70b"
OWNER = Owner(name=MD, namespace="inference", uid="0b8e6f1c-1111-2222-3333-444455556666")
LLAMA_70B: dict[str, Any] = {
    "model": {
        "uri": "hf://meta-llama/Meta-Llama-3-70B-Instruct",
        "parameterCount": 70.6e9,
        "dtype": "bfloat16",
    },
    "accelerator": {"gpuProduct": "NVIDIA-A100-SXM4-80GB", "tensorParallelSize": 4},
}
ZONE_GROUPS = [
    PlacementGroup("us-east-1a", "on-demand", 1),
    PlacementGroup("us-east-1a", "spot", 2),
    PlacementGroup("us-east-1b", "spot", 3),
]
COMMON_LABELS = {
    "app.kubernetes.io/name": "vllm",
    "app.kubernetes.io/instance": MD,
    "app.kubernetes.io/managed-by": "gpufleet",
    LABEL_MODEL_DEPLOYMENT: MD,
}


def make_spec(**changes: Any) -> ModelDeploymentSpec:
    """LLAMA_70B with dotted-path changes (model__uri=...); a value of None removes the key."""
    return ModelDeploymentSpec.model_validate(with_changes(LLAMA_70B, changes))


def render(
    spec: ModelDeploymentSpec | None = None,
    groups: list[PlacementGroup] | None = None,
    options: WorkloadOptions | None = None,
) -> DesiredWorkloads:
    return desired_workloads(
        OWNER,
        spec or make_spec(),
        ZONE_GROUPS if groups is None else groups,
        options or workload_options(),
    )


def only_deployment(spec: ModelDeploymentSpec, group: PlacementGroup | None = None) -> dict[str, Any]:
    (deployment,) = render(spec, [group or PlacementGroup("", "on-demand", 1)]).deployments
    return deployment


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (vllm,) = pod_spec(deployment)["containers"]
    assert vllm["name"] == "vllm"
    return dict(vllm)


def env_by_name(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    env = container(deployment)["env"]
    names = [var["name"] for var in env]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {var["name"]: var for var in env}


def match_expressions(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    affinity = pod_spec(deployment)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    (term,) = affinity["nodeSelectorTerms"]
    return list(term["matchExpressions"])


# --- names and selectors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "capacity_type", "expected"),
    [
        ("us-east-1a", "spot", "llama-3-70b-us-east-1a-spot"),
        ("us-east-1a", "on-demand", "llama-3-70b-us-east-1a-on-demand"),
        ("", "spot", "llama-3-70b-spot"),
        ("", "on-demand", "llama-3-70b-on-demand"),
        ("US-EAST-1A", "spot", "llama-3-70b-us-east-1a-spot"),
        ("europe_west4.a", "spot", "llama-3-70b-europe-west4-a-spot"),
        ("eastus 2", "on-demand", "llama-3-70b-eastus-2-on-demand"),
    ],
)
def test_deployment_name_sanitises_the_zone(zone: str, capacity_type: str, expected: str) -> None:
    assert deployment_name(MD, zone, capacity_type) == expected


def test_selector_labels_and_string() -> None:
    assert selector_labels(MD) == {"gpufleet.io/model-deployment": "llama-3-70b"}
    assert selector_string(MD) == "gpufleet.io/model-deployment=llama-3-70b"


# --- one Deployment per group ------------------------------------------------------------------------------


def test_one_deployment_per_non_empty_group_in_order() -> None:
    groups = [*ZONE_GROUPS, PlacementGroup("us-east-1b", "on-demand", 0)]
    deployments = render(groups=groups).deployments
    assert [(d["metadata"]["name"], d["spec"]["replicas"]) for d in deployments] == [
        ("llama-3-70b-us-east-1a-on-demand", 1),
        ("llama-3-70b-us-east-1a-spot", 2),
        ("llama-3-70b-us-east-1b-spot", 3),
    ]
    for deployment in deployments:
        assert deployment["apiVersion"] == "apps/v1"
        assert deployment["kind"] == "Deployment"
        assert deployment["metadata"]["namespace"] == "inference"


def test_no_groups_still_yields_service_and_pdb() -> None:
    workloads = render(groups=[])
    assert workloads.deployments == ()
    assert workloads.service["metadata"]["name"] == MD
    assert workloads.pod_disruption_budget["metadata"]["name"] == MD


def test_zoned_group_labels_selector_and_template() -> None:
    deployment = only_deployment(make_spec(), PlacementGroup("us-east-1b", "spot", 3))
    expected_labels = {**COMMON_LABELS, LABEL_CAPACITY_TYPE: "spot", LABEL_ZONE: "us-east-1b"}
    assert deployment["metadata"]["labels"] == expected_labels
    assert deployment["spec"]["template"]["metadata"]["labels"] == expected_labels
    assert deployment["spec"]["selector"] == {
        "matchLabels": {LABEL_MODEL_DEPLOYMENT: MD, LABEL_CAPACITY_TYPE: "spot", LABEL_ZONE: "us-east-1b"}
    }


def test_zoneless_group_has_no_zone_label_or_affinity() -> None:
    deployment = only_deployment(make_spec(), PlacementGroup("", "on-demand", 2))
    assert LABEL_ZONE not in deployment["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == {
        LABEL_MODEL_DEPLOYMENT: MD,
        LABEL_CAPACITY_TYPE: "on-demand",
    }
    keys = [expr["key"] for expr in match_expressions(deployment)]
    assert keys == ["nvidia.com/gpu.product", "karpenter.sh/capacity-type"]


def test_rollout_strategy_history_and_deadline() -> None:
    spec = make_spec()
    deployment_spec = only_deployment(spec)["spec"]
    assert deployment_spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert deployment_spec["revisionHistoryLimit"] == 3
    assert deployment_spec["progressDeadlineSeconds"] == 1916 + 300


@pytest.mark.parametrize(
    ("group", "options", "expected"),
    [
        (
            PlacementGroup("us-east-1a", "spot", 1),
            workload_options(),
            [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]},
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1a"]},
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]},
            ],
        ),
        (
            PlacementGroup("us-east-1b", "on-demand", 1),
            workload_options(),
            [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]},
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1b"]},
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
            ],
        ),
        (
            PlacementGroup("us-east-1a", "spot", 1),
            workload_options(
                capacity_type_label="eks.amazonaws.com/capacityType",
                spot_value="SPOT",
                on_demand_value="ON_DEMAND",
            ),
            [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]},
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1a"]},
                {"key": "eks.amazonaws.com/capacityType", "operator": "In", "values": ["SPOT"]},
            ],
        ),
        (
            PlacementGroup("", "on-demand", 1),
            workload_options(
                capacity_type_label="eks.amazonaws.com/capacityType",
                spot_value="SPOT",
                on_demand_value="ON_DEMAND",
            ),
            [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]},
                {"key": "eks.amazonaws.com/capacityType", "operator": "In", "values": ["ON_DEMAND"]},
            ],
        ),
    ],
)
def test_node_affinity(group: PlacementGroup, options: WorkloadOptions, expected: list[Any]) -> None:
    (deployment,) = render(make_spec(), [group], options).deployments
    assert match_expressions(deployment) == expected


def test_node_affinity_without_gpu_product() -> None:
    spec = make_spec(accelerator__gpuProduct=None, accelerator__gpuMemoryGiB=80)
    deployment = only_deployment(spec, PlacementGroup("us-east-1a", "spot", 1))
    assert [expr["key"] for expr in match_expressions(deployment)] == [
        "topology.kubernetes.io/zone",
        "karpenter.sh/capacity-type",
    ]


def test_spot_tolerations_only_on_spot_groups() -> None:
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    gke = {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    aks = {
        "key": "kubernetes.azure.com/scalesetpriority",
        "operator": "Equal",
        "value": "spot",
        "effect": "NoSchedule",
    }
    on_demand, spot, _ = render().deployments
    assert pod_spec(on_demand)["tolerations"] == [gpu]
    assert pod_spec(spot)["tolerations"] == [gpu, gke, aks]


def test_custom_spot_tolerations() -> None:
    custom = {"key": "example.com/spot", "operator": "Exists", "effect": "NoSchedule"}
    options = workload_options(spot_tolerations=(custom,))
    (deployment,) = render(make_spec(), [PlacementGroup("", "spot", 1)], options).deployments
    assert pod_spec(deployment)["tolerations"][1:] == [custom]


# --- resources and volumes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accelerator", "requests", "limits"),
    [
        (
            {"tensorParallelSize": 1},
            {"nvidia.com/gpu": "1", "cpu": "4", "memory": "32Gi"},
            {"nvidia.com/gpu": "1"},
        ),
        (
            {"tensorParallelSize": 2},
            {"nvidia.com/gpu": "2", "cpu": "8", "memory": "64Gi"},
            {"nvidia.com/gpu": "2"},
        ),
        (
            {"tensorParallelSize": 4},
            {"nvidia.com/gpu": "4", "cpu": "16", "memory": "128Gi"},
            {"nvidia.com/gpu": "4"},
        ),
        (
            {"tensorParallelSize": 8},
            {"nvidia.com/gpu": "8", "cpu": "32", "memory": "256Gi"},
            {"nvidia.com/gpu": "8"},
        ),
        (
            {"migProfile": "3g.40gb"},
            {"nvidia.com/mig-3g.40gb": "1", "cpu": "4", "memory": "32Gi"},
            {"nvidia.com/mig-3g.40gb": "1"},
        ),
    ],
)
def test_resources_scale_with_gpus(
    accelerator: dict[str, Any], requests: dict[str, str], limits: dict[str, str]
) -> None:
    spec = make_spec(
        model__uri="hf://meta-llama/Meta-Llama-3-8B-Instruct",
        model__parameterCount=8.03e9,
        accelerator={"gpuProduct": "NVIDIA-A100-SXM4-80GB", **accelerator},
    )
    assert container(only_deployment(spec))["resources"] == {"requests": requests, "limits": limits}


@pytest.mark.parametrize(
    ("cpu", "memory", "expected_cpu", "expected_memory"),
    [
        ("500m", "16Gi", "2000m", "64Gi"),
        ("0.5", "1.5Gi", "2", "6Gi"),
        ("6", "48G", "24", "192G"),
    ],
)
def test_host_resources_are_kubernetes_quantities(
    cpu: str, memory: str, expected_cpu: str, expected_memory: str
) -> None:
    options = workload_options(cpu_per_gpu=cpu, memory_per_gpu=memory)
    (deployment,) = render(make_spec(), [PlacementGroup("", "spot", 1)], options).deployments
    requests = container(deployment)["resources"]["requests"]
    assert (requests["cpu"], requests["memory"]) == (expected_cpu, expected_memory)


def test_invalid_quantity_option_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a plain Kubernetes quantity"):
        render(options=workload_options(memory_per_gpu="32 GiB"))


@pytest.mark.parametrize(("tensor_parallel_size", "has_dshm"), [(1, False), (2, True), (4, True)])
def test_shared_memory_only_for_tensor_parallel(tensor_parallel_size: int, has_dshm: bool) -> None:
    spec = make_spec(accelerator__tensorParallelSize=tensor_parallel_size, model__quantization="awq")
    deployment = only_deployment(spec)
    volumes = {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}
    mounts = {mount["name"]: mount for mount in container(deployment)["volumeMounts"]}
    assert ("dshm" in volumes) is has_dshm
    assert ("dshm" in mounts) is has_dshm
    if has_dshm:
        assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
        assert mounts["dshm"]["mountPath"] == "/dev/shm"


def test_mig_replica_has_no_shared_memory_volume() -> None:
    spec = make_spec(
        model__uri="hf://meta-llama/Meta-Llama-3-8B-Instruct",
        model__parameterCount=8.03e9,
        accelerator={"gpuProduct": "NVIDIA-A100-SXM4-80GB", "migProfile": "2g.20gb"},
    )
    names = [volume["name"] for volume in pod_spec(only_deployment(spec))["volumes"]]
    assert names == ["model-cache"]


# --- model sources: args, env, volumes ---------------------------------------------------------------------


def test_hf_source() -> None:
    spec = make_spec(model__credentialsSecret="hf-token")
    deployment = only_deployment(spec)
    assert container(deployment)["args"][0] == "meta-llama/Meta-Llama-3-70B-Instruct"
    assert "--load-format" not in container(deployment)["args"]
    assert env_by_name(deployment) == {
        "HF_TOKEN": {
            "name": "HF_TOKEN",
            # The only hf:// credential: required, so a missing Secret or key stops the container from
            # starting (CreateContainerConfigError) instead of crash-looping on a 401.
            "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN", "optional": False}},
        }
    }
    assert {"name": "model-cache", "emptyDir": {}} in pod_spec(deployment)["volumes"]
    assert {"name": "model-cache", "mountPath": "/root/.cache/huggingface"} in container(deployment)[
        "volumeMounts"
    ]


def test_hf_source_without_secret_has_no_env() -> None:
    assert container(only_deployment(make_spec()))["env"] == []


def test_s3_source_with_secret() -> None:
    spec = make_spec(model__uri="s3://models-bucket/llama-3-70b", model__credentialsSecret="s3-creds")
    deployment = only_deployment(spec)
    args = container(deployment)["args"]
    assert args[0] == "s3://models-bucket/llama-3-70b"
    assert args[args.index("--load-format") + 1] == "runai_streamer"
    env = env_by_name(deployment)
    assert list(env) == [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
    ]
    assert env["AWS_REGION"]["valueFrom"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_REGION", "optional": True}
    }
    volume_names = [volume["name"] for volume in pod_spec(deployment)["volumes"]]
    assert volume_names == ["dshm"]


def test_s3_source_without_secret_relies_on_node_identity() -> None:
    spec = make_spec(model__uri="s3://models-bucket/llama-3-70b")
    assert container(only_deployment(spec))["env"] == []


@pytest.mark.parametrize(
    ("uri", "model_path"),
    [
        ("pvc://model-weights/llama-3-70b", "/mnt/pvc/model-weights/llama-3-70b"),
        ("pvc://model-weights", "/mnt/pvc/model-weights"),
        ("pvc://model-weights/", "/mnt/pvc/model-weights"),
    ],
)
def test_pvc_source(uri: str, model_path: str) -> None:
    deployment = only_deployment(make_spec(model__uri=uri))
    assert container(deployment)["args"][0] == model_path
    assert "--load-format" not in container(deployment)["args"]
    assert pod_spec(deployment)["volumes"] == [
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {
            "name": "pvc-model-weights",
            "persistentVolumeClaim": {"claimName": "model-weights", "readOnly": True},
        },
    ]
    assert container(deployment)["volumeMounts"][1] == {
        "name": "pvc-model-weights",
        "mountPath": "/mnt/pvc/model-weights",
        "readOnly": True,
    }


def test_pvc_claims_are_mounted_once_each() -> None:
    spec = make_spec(
        model__uri="pvc://model-weights/llama-3-70b",
        engine__loraAdapters=[
            {"name": "sql", "uri": "pvc://model-weights/adapters/sql"},
            {"name": "chat", "uri": "pvc://adapters/chat"},
        ],
    )
    deployment = only_deployment(spec)
    claims = [
        volume["persistentVolumeClaim"]["claimName"]
        for volume in pod_spec(deployment)["volumes"]
        if "persistentVolumeClaim" in volume
    ]
    assert claims == ["model-weights", "adapters"]
    mounts = [mount["mountPath"] for mount in container(deployment)["volumeMounts"] if mount.get("readOnly")]
    assert mounts == ["/mnt/pvc/model-weights", "/mnt/pvc/adapters"]


def test_long_claim_name_gives_a_valid_volume_name() -> None:
    claim = "a" * 60
    deployment = only_deployment(make_spec(model__uri=f"pvc://{claim}"))
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if "persistentVolumeClaim" in v]
    assert len(volume["name"]) <= 63
    assert volume["name"].startswith("pvc-aaaa")
    assert volume["persistentVolumeClaim"]["claimName"] == claim


def test_hf_adapter_on_s3_model_gets_cache_and_token() -> None:
    spec = make_spec(
        model__uri="s3://models-bucket/llama-3-70b",
        model__credentialsSecret="creds",
        engine__loraAdapters=[{"name": "sql", "uri": "hf://acme/llama-3-70b-sql-lora"}],
    )
    deployment = only_deployment(spec)
    assert list(env_by_name(deployment)) == [
        "HF_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
    ]
    assert "model-cache" in [volume["name"] for volume in pod_spec(deployment)["volumes"]]


# --- vLLM arguments ----------------------------------------------------------------------------------------


def test_vllm_args_full() -> None:
    spec = make_spec(
        model__servedName="llama-3-70b-instruct",
        model__dtype="float16",
        model__quantization="fp8",
        model__maxModelLen=8192,
        engine__args=["--gpu-memory-utilization", "0.92", "--enable-prefix-caching"],
        engine__loraAdapters=[
            {"name": "sql", "uri": "hf://acme/llama-3-70b-sql-lora"},
            {"name": "chat", "uri": "pvc://adapters/chat"},
            {"name": "legal", "uri": "s3://adapters-bucket/legal"},
        ],
    )
    assert vllm_args(MD, spec, workload_options(port=9000)) == [
        "meta-llama/Meta-Llama-3-70B-Instruct",
        "--served-model-name",
        "llama-3-70b-instruct",
        "--port",
        "9000",
        "--tensor-parallel-size",
        "4",
        "--dtype",
        "float16",
        "--quantization",
        "fp8",
        "--max-model-len",
        "8192",
        "--enable-lora",
        "--lora-modules",
        "sql=acme/llama-3-70b-sql-lora",
        "chat=/mnt/pvc/adapters/chat",
        # vLLM cannot load s3:// adapters: an init container copies them to a local directory first.
        f"legal={LEGAL_ADAPTER_DIR}",
        "--max-loras",
        "3",
        "--max-lora-rank",
        "16",
        "--shutdown-timeout",
        "120",
        "--gpu-memory-utilization",
        "0.92",
        "--enable-prefix-caching",
    ]


LEGAL_ADAPTER_DIR = "/mnt/lora-adapters/legal-" + hashlib.sha256(b"legal").hexdigest()[:8]
ADAPTERS = [
    {"name": "sql", "uri": "hf://acme/llama-3-70b-sql-lora"},
    {"name": "legal", "uri": "s3://adapters-bucket/legal"},
]


def test_s3_adapters_are_fetched_by_an_init_container_into_a_volume_vllm_reads() -> None:
    deployment = only_deployment(make_spec(model__credentialsSecret="creds", engine__loraAdapters=ADAPTERS))
    spec = pod_spec(deployment)
    (fetch,) = spec["initContainers"]
    assert fetch["name"] == "fetch-adapter-0"
    assert fetch["image"] == "amazon/aws-cli:2.22.0"
    assert fetch["command"] == [
        "aws",
        "s3",
        "sync",
        "--only-show-errors",
        "s3://adapters-bucket/legal",
        LEGAL_ADAPTER_DIR,
    ]
    assert fetch["volumeMounts"] == [{"name": "lora-adapters", "mountPath": "/mnt/lora-adapters"}]
    assert fetch["terminationMessagePolicy"] == "FallbackToLogsOnError"  # aws's error in kubectl describe
    # The same Secret's AWS keys; optional, as hf:// could be what the Secret is for.
    fetch_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in fetch["env"]}
    assert fetch_env["AWS_ACCESS_KEY_ID"] == {"name": "creds", "key": "AWS_ACCESS_KEY_ID", "optional": True}
    assert {"name": "lora-adapters", "emptyDir": {}} in spec["volumes"]
    assert {"name": "lora-adapters", "mountPath": "/mnt/lora-adapters", "readOnly": True} in container(
        deployment
    )["volumeMounts"]
    # vLLM reads the Hub only: no AWS keys in its container.
    assert list(env_by_name(deployment)) == ["HF_TOKEN"]


def test_s3_only_sources_require_the_aws_keys_and_the_fetch_image_is_configurable() -> None:
    spec = make_spec(
        model__uri="s3://models/llama-3-70b",
        model__credentialsSecret="creds",
        engine__loraAdapters=ADAPTERS[1:],
        engine__adapterFetchImage="registry.internal/aws-cli:2",
    )
    (fetch,) = pod_spec(only_deployment(spec))["initContainers"]
    assert fetch["image"] == "registry.internal/aws-cli:2"
    optional = {e["name"]: e["valueFrom"]["secretKeyRef"]["optional"] for e in fetch["env"]}
    assert optional == {
        "AWS_ACCESS_KEY_ID": False,
        "AWS_SECRET_ACCESS_KEY": False,
        "AWS_SESSION_TOKEN": True,
        "AWS_REGION": True,
        "AWS_ENDPOINT_URL": True,
    }


def test_no_init_container_without_s3_adapters_and_no_service_account_token() -> None:
    spec = pod_spec(only_deployment(make_spec(engine__loraAdapters=ADAPTERS[:1])))
    assert "initContainers" not in spec
    assert [v["name"] for v in spec["volumes"]] == ["dshm", "model-cache"]
    # vLLM never calls the Kubernetes API.
    assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize(
    ("adapters", "changes", "expected"),
    [
        (1, {}, ["--max-loras", "1", "--max-lora-rank", "16"]),
        (6, {}, ["--max-loras", "4", "--max-lora-rank", "16"]),  # default slots capped: each costs memory
        (
            2,
            {"engine__maxLoras": 8, "engine__maxLoraRank": 64},
            ["--max-loras", "8", "--max-lora-rank", "64"],
        ),
        (0, {"engine__maxLoras": 8}, []),  # no adapters: no LoRA flags at all
    ],
)
def test_lora_slots_and_rank(adapters: int, changes: dict[str, Any], expected: list[str]) -> None:
    listed = [{"name": f"a{i}", "uri": f"hf://acme/a{i}"} for i in range(adapters)]
    args = vllm_args(MD, make_spec(engine__loraAdapters=listed, **changes), workload_options())
    flags = [a for a in args if a in ("--max-loras", "--max-lora-rank")]
    assert [args[args.index(f) + i] for f in flags for i in (0, 1)] == expected


def test_vllm_args_minimal_omits_defaults() -> None:
    spec = ModelDeploymentSpec.model_validate({"model": {"uri": "hf://meta-llama/Meta-Llama-3-8B"}})
    assert vllm_args("llama-3-8b", spec, workload_options()) == [
        "meta-llama/Meta-Llama-3-8B",
        "--served-model-name",
        "llama-3-8b",
        "--port",
        "8000",
        "--tensor-parallel-size",
        "1",
        "--shutdown-timeout",
        "120",
    ]


def test_vllm_args_mig_is_tensor_parallel_one() -> None:
    spec = make_spec(accelerator={"gpuProduct": "NVIDIA-A100-SXM4-80GB", "migProfile": "7g.80gb"})
    args = vllm_args(MD, spec, workload_options())
    assert args[args.index("--tensor-parallel-size") + 1] == "1"


def test_user_args_come_last_even_after_s3_streamer() -> None:
    spec = make_spec(model__uri="s3://models-bucket/llama-3-70b", engine__args=["--max-num-seqs=128"])
    args = container(only_deployment(spec))["args"]
    assert args[-5:-3] == ["--load-format", "runai_streamer"]
    assert args[-3:] == ["--shutdown-timeout", "120", "--max-num-seqs=128"]


def test_container_command_image_and_port() -> None:
    spec = make_spec(engine__image="registry.example.com/vllm-openai:v0.11.0-patched")
    options = workload_options(port=9000)
    (deployment,) = render(spec, [PlacementGroup("", "on-demand", 1)], options).deployments
    vllm = container(deployment)
    assert vllm["image"] == "registry.example.com/vllm-openai:v0.11.0-patched"
    assert vllm["command"] == ["vllm", "serve"]
    assert vllm["ports"] == [{"name": "http", "containerPort": 9000}]
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9000",
        "prometheus.io/path": "/metrics",
    }


# --- env ---------------------------------------------------------------------------------------------------


def test_user_env_is_converted_and_replaces_ours() -> None:
    spec = make_spec(
        model__credentialsSecret="hf-token",
        engine__env=[
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "other", "key": "token"}}},
            {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"},
            {"name": "EMPTY"},
        ],
    )
    assert container(only_deployment(spec))["env"] == [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "other", "key": "token"}}},
        {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"},
        {"name": "EMPTY"},
    ]


def test_user_env_replaces_one_aws_variable_and_keeps_the_rest() -> None:
    spec = make_spec(
        model__uri="s3://models-bucket/llama-3-70b",
        model__credentialsSecret="s3-creds",
        engine__env=[{"name": "AWS_REGION", "value": "eu-west-1"}],
    )
    env = env_by_name(only_deployment(spec))
    assert env["AWS_REGION"] == {"name": "AWS_REGION", "value": "eu-west-1"}
    assert len(env) == 5


# --- pod lifecycle and probes ------------------------------------------------------------------------------


def test_pod_lifecycle() -> None:
    options = workload_options(prestop_delay_seconds=20, drain_seconds=90)
    (deployment,) = render(make_spec(), [PlacementGroup("", "spot", 1)], options).deployments
    assert pod_spec(deployment)["enableServiceLinks"] is False
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] == 110
    assert container(deployment)["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "20"]}}}


def _shutdown_timeout(args: list[str]) -> str | None:
    return args[args.index("--shutdown-timeout") + 1] if "--shutdown-timeout" in args else None


@pytest.mark.parametrize(("prestop", "drain"), [(20, 90), (15, 120), (0, 30), (15, 0)])
def test_vllm_drains_for_what_the_grace_period_leaves_after_prestop(prestop: int, drain: int) -> None:
    options = workload_options(prestop_delay_seconds=prestop, drain_seconds=drain)
    (deployment,) = render(make_spec(), [PlacementGroup("", "spot", 1)], options).deployments
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    timeout = _shutdown_timeout(container(deployment)["args"])
    # vLLM's rule: grace >= preStop sleep + --shutdown-timeout; 0 (no drain time) is vLLM's abort.
    assert timeout == str(grace - prestop) == str(drain)


@pytest.mark.parametrize(
    ("engine", "drains"),
    [
        ({}, True),  # the default image, the newest release gpufleet knows
        ({"image": "vllm/vllm-openai:v0.18.0"}, True),
        ({"image": "vllm/vllm-openai:v0.17.1"}, False),  # before vllm PR #36666: the flag would be refused
        ({"image": "vllm/vllm-openai:v0.11.0"}, False),
        ({"image": "vllm/vllm-openai:latest"}, True),  # an unknown tag is taken as current
        ({"image": "registry.example.com/vllm@sha256:" + "c" * 64}, True),
        ({"image": "registry.example.com/vllm:prod", "version": "0.17.1"}, False),  # stated version wins
        ({"image": "vllm/vllm-openai:v0.17.1", "version": "0.34.0"}, True),
    ],
)
def test_shutdown_timeout_only_for_releases_that_take_it(engine: dict[str, str], drains: bool) -> None:
    args = vllm_args(MD, make_spec(engine=engine), workload_options())
    assert (_shutdown_timeout(args) is not None) is drains


@pytest.mark.parametrize(
    ("engine", "drain", "prestop"),
    [
        ({}, 120, ["sleep", "15"]),  # --shutdown-timeout drains after SIGTERM
        ({"image": "vllm/vllm-openai:v0.18.0"}, 120, ["sleep", "15"]),
        # Before v0.18.0 SIGTERM aborts in-flight requests: the hook waits, bounded, until none are left.
        (
            {"image": "vllm/vllm-openai:v0.17.1"},
            120,
            ["python3", "-c", PRESTOP_WAIT_IDLE_SCRIPT, "15", "120", "8000"],
        ),
        (
            {"image": "vllm/vllm-openai:v0.11.0"},
            30,
            ["python3", "-c", PRESTOP_WAIT_IDLE_SCRIPT, "15", "30", "8000"],
        ),
        ({"image": "vllm/vllm-openai:v0.11.0"}, 0, ["sleep", "15"]),  # no drain time: nothing to wait for
    ],
)
def test_prestop_waits_for_idle_only_where_vllm_cannot_drain(
    engine: dict[str, str], drain: int, prestop: list[str]
) -> None:
    options = workload_options(prestop_delay_seconds=15, drain_seconds=drain)
    (deployment,) = render(make_spec(engine=engine), [PlacementGroup("", "spot", 1)], options).deployments
    assert container(deployment)["lifecycle"] == {"preStop": {"exec": {"command": prestop}}}
    # The hook and whatever drain follows fit in the grace period.
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] == 15 + drain


class _Metrics(http.server.BaseHTTPRequestHandler):
    """vLLM's /metrics with running/waiting gauges taken from `busy` in turn (the last one repeats)."""

    busy: ClassVar[list[tuple[int, int]]] = []
    scrapes: ClassVar[int] = 0

    def do_GET(self) -> None:
        cls = type(self)
        running, waiting = cls.busy[min(cls.scrapes, len(cls.busy) - 1)]
        cls.scrapes += 1
        body = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{engine="0",model_name="m"}} {running}.0\n'
            f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}.0\n'
            'vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 7.0\n'
        ).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def metrics_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def _run_prestop(drain: float, port: int) -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", PRESTOP_WAIT_IDLE_SCRIPT, "0", str(drain), str(port)], check=True, timeout=30
    )
    return time.monotonic() - started


def test_prestop_script_waits_until_nothing_runs_or_waits(metrics_port: int) -> None:
    _Metrics.busy, _Metrics.scrapes = [(2, 1), (1, 0), (0, 0)], 0
    _run_prestop(drain=20, port=metrics_port)
    assert _Metrics.scrapes == 3  # one scrape a second until both gauges read 0 (other series ignored)


def test_prestop_script_is_bounded_by_the_drain(metrics_port: int) -> None:
    _Metrics.busy, _Metrics.scrapes = [(1, 0)], 0
    assert _run_prestop(drain=1.5, port=metrics_port) < 10
    assert _Metrics.scrapes == 2


def test_prestop_script_ends_when_metrics_cannot_be_read(metrics_port: int) -> None:
    _Metrics.busy, _Metrics.scrapes = [(1, 0)], 0
    assert _run_prestop(drain=60, port=1) < 10  # nothing listens on port 1: the hook ends, SIGTERM follows


@pytest.mark.parametrize(
    ("model", "budget"),
    [
        # 70.6e9 × 2 B = 131.5 GiB; hf 10 s/GiB: 600 + 1315.04 → 1916.
        ({"uri": "hf://meta-llama/Meta-Llama-3-70B-Instruct", "parameterCount": 70.6e9}, 1916),
        # s3 1 s/GiB: 600 + 131.50 → 732.
        ({"uri": "s3://models-bucket/llama-3-70b", "parameterCount": 70.6e9}, 732),
        # pvc 2 s/GiB: 600 + 263.01 → 864.
        ({"uri": "pvc://model-weights/llama-3-70b", "parameterCount": 70.6e9}, 864),
        # fp8 halves the bytes: 600 + 657.52 → 1258.
        ({"uri": "hf://meta-llama/Meta-Llama-3-70B", "parameterCount": 70.6e9, "quantization": "fp8"}, 1258),
        # Unknown size.
        ({"uri": "hf://meta-llama/Meta-Llama-3-70B"}, 1800),
        # 405B bf16 from the hub would be ~8150 s: clamped to the hour.
        ({"uri": "hf://meta-llama/Llama-3.1-405B", "parameterCount": 405e9}, 3600),
    ],
)
def test_startup_budget(model: dict[str, Any], budget: int) -> None:
    spec = make_spec(model=model)
    assert startup_budget_seconds(spec, workload_options()) == budget
    startup = container(only_deployment(spec))["startupProbe"]
    assert startup == {
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": 10,
        "failureThreshold": math.ceil(budget / 10),
    }


def test_startup_budget_floor() -> None:
    spec = make_spec(model={"uri": "s3://models-bucket/tiny", "parameterCount": 1e8})
    assert startup_budget_seconds(spec, workload_options(startup_base_seconds=60)) == 300


def test_startup_budget_unknown_size_respects_a_larger_base() -> None:
    spec = make_spec(model={"uri": "hf://meta-llama/Meta-Llama-3-70B"})
    assert startup_budget_seconds(spec, workload_options(startup_base_seconds=2400)) == 2400


def test_hf_70b_waits_longer_than_s3_70b() -> None:
    hf = container(only_deployment(make_spec()))["startupProbe"]["failureThreshold"]
    s3 = container(only_deployment(make_spec(model__uri="s3://models-bucket/llama-3-70b")))
    assert (hf, s3["startupProbe"]["failureThreshold"]) == (192, 74)


def test_readiness_and_liveness_probes() -> None:
    vllm = container(only_deployment(make_spec()))
    assert vllm["readinessProbe"] == {
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": 5,
        "failureThreshold": 3,
    }
    assert vllm["livenessProbe"] == {
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": 10,
        "failureThreshold": 6,
        "timeoutSeconds": 5,
    }


# --- template hash -----------------------------------------------------------------------------------------


def strip_hash(deployment: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(deployment)
    del stripped["metadata"]["annotations"]
    return stripped


def test_template_hash_function() -> None:
    first = template_hash({"a": 1, "b": {"c": [1, 2]}})
    assert first == template_hash({"b": {"c": [1, 2]}, "a": 1})
    assert first != template_hash({"a": 1, "b": {"c": [2, 1]}})
    assert re.fullmatch(r"[0-9a-f]{16}", first)


def test_deployment_hash_is_of_the_object_without_it() -> None:
    deployment = only_deployment(make_spec())
    assert deployment["metadata"]["annotations"] == {
        ANNOTATION_TEMPLATE_HASH: template_hash(strip_hash(deployment))
    }


def test_deployment_hash_stable_for_equal_input() -> None:
    first = render().deployments
    second = render(make_spec(), list(ZONE_GROUPS)).deployments
    assert [d["metadata"]["annotations"] for d in first] == [d["metadata"]["annotations"] for d in second]


@pytest.mark.parametrize(
    ("spec", "group"),
    [
        (make_spec(engine__image="vllm/vllm-openai:v0.11.1"), PlacementGroup("us-east-1a", "spot", 2)),
        (make_spec(), PlacementGroup("us-east-1a", "spot", 3)),
        (make_spec(engine__args=["--enable-prefix-caching"]), PlacementGroup("us-east-1a", "spot", 2)),
        (make_spec(engine__env=[{"name": "X", "value": "1"}]), PlacementGroup("us-east-1a", "spot", 2)),
    ],
    ids=["image", "replicas", "args", "env"],
)
def test_deployment_hash_changes_with_content(spec: ModelDeploymentSpec, group: PlacementGroup) -> None:
    baseline = only_deployment(make_spec(), PlacementGroup("us-east-1a", "spot", 2))
    changed = only_deployment(spec, group)
    assert (
        changed["metadata"]["annotations"][ANNOTATION_TEMPLATE_HASH]
        != baseline["metadata"]["annotations"][ANNOTATION_TEMPLATE_HASH]
    )


# --- ownership, Service, PDB -------------------------------------------------------------------------------


def test_every_object_is_owned_and_labelled() -> None:
    workloads = render()
    expected_owner = [
        {
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "ModelDeployment",
            "name": MD,
            "uid": "0b8e6f1c-1111-2222-3333-444455556666",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    for obj in (*workloads.deployments, workloads.service, workloads.pod_disruption_budget):
        assert obj["metadata"]["ownerReferences"] == expected_owner
        assert obj["metadata"]["namespace"] == "inference"
        assert COMMON_LABELS.items() <= obj["metadata"]["labels"].items()


def test_service() -> None:
    service = render(options=workload_options(port=9000)).service
    assert service["apiVersion"] == "v1"
    assert service["kind"] == "Service"
    assert service["metadata"]["name"] == MD
    assert service["metadata"]["labels"] == COMMON_LABELS
    assert service["spec"] == {
        "type": "ClusterIP",
        "selector": {LABEL_MODEL_DEPLOYMENT: MD},
        "ports": [{"name": "http", "port": 9000, "targetPort": "http"}],
    }


def test_service_selects_the_pods_of_every_group() -> None:
    workloads = render()
    selector = workloads.service["spec"]["selector"].items()
    for deployment in workloads.deployments:
        assert selector <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_pod_disruption_budget() -> None:
    pdb = render().pod_disruption_budget
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["kind"] == "PodDisruptionBudget"
    assert pdb["metadata"]["name"] == MD
    assert pdb["spec"] == {
        "selector": {"matchLabels": {LABEL_MODEL_DEPLOYMENT: MD}},
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }


def test_speculative_decoding_is_rendered_as_vllms_json_config() -> None:
    spec = make_spec(
        engine={
            "speculativeDecoding": {
                "method": "draft_model",
                "numSpeculativeTokens": 3,
                "draftModel": {"uri": "pvc://weights/llama-3.2-1b"},
            }
        }
    )
    args = vllm_args(MD, spec, workload_options())
    config = args[args.index("--speculative-config") + 1]
    assert (
        config
        == '{"method":"draft_model","model":"/mnt/pvc/weights/llama-3.2-1b","num_speculative_tokens":3}'
    )
    # The draft's claim is mounted like the model's.
    deployment = desired_workloads(OWNER, spec, ZONE_GROUPS[:1], workload_options()).deployments[0]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "weights" for v in volumes)


def test_ngram_speculation_passes_its_lookup_bounds_and_no_model() -> None:
    spec = make_spec(
        engine={
            "speculativeDecoding": {
                "method": "ngram",
                "numSpeculativeTokens": 4,
                "promptLookupMin": 2,
                "promptLookupMax": 5,
            }
        }
    )
    args = vllm_args(MD, spec, workload_options())
    assert json.loads(args[args.index("--speculative-config") + 1]) == {
        "method": "ngram",
        "num_speculative_tokens": 4,
        "prompt_lookup_min": 2,
        "prompt_lookup_max": 5,
    }
    assert "--speculative-config" not in vllm_args(MD, make_spec(), workload_options())
