"""Init containers in the simulated kubelet: run in order before vLLM, restarted with back-off when they fail,
and the AWS CLI's `aws s3 sync` really copying LoRA adapters from a local moto S3 into the pod's emptyDir,
where vLLM's start-up check looks for them. No API server: the kubelet's status writes are recorded."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fleetsim.clock import SimClock
from fleetsim.cloud import MotoServer
from fleetsim.cloud import client as aws_client
from fleetsim.containers import (
    ContainerConfigError,
    PodVolumes,
    adapter_files,
    lora_load_error,
    resolve_env,
    run_aws_cli,
)
from fleetsim.kubelet import SimKubelet, SimNode, SimPod, termination_message_from_log
from fleetsim.params import KubeletParams
from fleetsim.podspec import plan_pod
from fleetsim.vllm_model import EngineProfile
from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from gpufleet.config import Settings
from gpufleet.planning.placement import PlacementGroup
from gpufleet.planning.workloads import Owner, desired_workloads

REGION = "us-west-2"
SECRET = "adapter-store"
MOUNTS = [{"name": "lora-adapters", "mountPath": "/mnt/lora-adapters"}]


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(log=tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(scope="module")
def bucket(moto: MotoServer) -> str:
    """A bucket holding one adapter under support/ (and support-v2/, which sync must not take)."""
    name = f"adapters-{uuid.uuid4().hex[:8]}"
    s3 = aws_client("s3", moto.endpoint_url, REGION)
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    for file, body in adapter_files().items():
        s3.put_object(Bucket=name, Key=f"support/{file}", Body=body)
    s3.put_object(Bucket=name, Key="support-v2/other.json", Body=b"{}")
    return name


def _env(moto: MotoServer) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": moto.endpoint_url,
    }


def _volumes(tmp_path: Path) -> PodVolumes:
    return PodVolumes.of(tmp_path / "pod", {"volumes": [{"name": "lora-adapters", "emptyDir": {}}]})


def _sync(source: str, dest: str = "/mnt/lora-adapters/support-1") -> list[str]:
    return ["aws", "s3", "sync", "--only-show-errors", source, dest]


# --- aws s3 sync, as aws-cli v2 does it --------------------------------------------------------------


def test_sync_copies_the_prefix_into_the_emptydir_and_vllm_can_load_it(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    volumes = _volumes(tmp_path)
    outcome = run_aws_cli(_sync(f"s3://{bucket}/support"), _env(moto), volumes, MOUNTS, tmp_path / "scratch")
    assert (outcome.exit_code, outcome.log) == (0, "")  # --only-show-errors
    copied = tmp_path / "pod" / "volumes" / "lora-adapters" / "support-1"
    assert sorted(p.name for p in copied.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert outcome.bytes_copied == sum(len(b) for b in adapter_files().values())
    assert lora_load_error("support", "/mnt/lora-adapters/support-1", volumes, MOUNTS, 16) is None
    # A second run finds the files there (same size) and copies nothing.
    again = run_aws_cli(_sync(f"s3://{bucket}/support"), _env(moto), volumes, MOUNTS, tmp_path / "scratch")
    assert (again.exit_code, again.bytes_copied) == (0, 0)


def test_a_missing_bucket_is_a_fatal_error_and_exit_code_1(moto: MotoServer, tmp_path: Path) -> None:
    outcome = run_aws_cli(
        _sync("s3://no-such-bucket-here/support"), _env(moto), _volumes(tmp_path), MOUNTS, tmp_path
    )
    assert outcome.exit_code == 1
    assert outcome.log == (
        "fatal error: An error occurred (NoSuchBucket) when calling the ListObjectsV2 operation: "
        "The specified bucket does not exist\n"
    )


def test_an_empty_prefix_copies_nothing_and_succeeds_then_vllm_finds_no_adapter(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    volumes = _volumes(tmp_path)
    outcome = run_aws_cli(_sync(f"s3://{bucket}/legal"), _env(moto), volumes, MOUNTS, tmp_path / "scratch")
    assert (outcome.exit_code, outcome.bytes_copied) == (0, 0)  # as aws-cli: ListObjectsV2 finds nothing
    assert (tmp_path / "pod" / "volumes" / "lora-adapters" / "support-1").is_dir()  # created, empty
    error = lora_load_error("legal", "/mnt/lora-adapters/support-1", volumes, MOUNTS, 16)
    assert error == "Loading lora legal failed: No adapter found for <path>"


@pytest.mark.parametrize(
    ("env_change", "argv_change", "code", "message"),
    [
        ({"AWS_ACCESS_KEY_ID": None}, None, 1, "fatal error: Unable to locate credentials\n"),
        ({"AWS_ENDPOINT_URL": None}, None, 1, "fatal error: Could not connect to the endpoint URL: "),
        ({}, ["aws", "s3", "ls", "s3://x"], 2, "fleetsim: 'aws s3 ls s3://x' is not simulated"),
        ({}, ["aws", "s3", "sync", "--delete", "s3://x/y", "/tmp/y"], 2, "fleetsim: aws option --delete"),
    ],
)
def test_what_cannot_succeed_fails_as_the_cli_would(
    moto: MotoServer,
    bucket: str,
    tmp_path: Path,
    env_change: dict[str, str | None],
    argv_change: list[str] | None,
    code: int,
    message: str,
) -> None:
    env = {k: v for k, v in {**_env(moto), **env_change}.items() if v is not None}
    argv = argv_change or _sync(f"s3://{bucket}/support")
    outcome = run_aws_cli(argv, env, _volumes(tmp_path), MOUNTS, tmp_path / "scratch")
    assert outcome.exit_code == code
    assert outcome.log.startswith(message)


def test_a_read_only_destination_cannot_be_written(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    mounts = [{**MOUNTS[0], "readOnly": True}]
    outcome = run_aws_cli(_sync(f"s3://{bucket}/support"), _env(moto), _volumes(tmp_path), mounts, tmp_path)
    assert outcome.exit_code == 255
    assert "Read-only file system" in outcome.log


# --- vLLM's start-up check of --lora-modules ----------------------------------------------------------


def test_vllm_refuses_an_adapter_it_cannot_load(tmp_path: Path) -> None:
    volumes = _volumes(tmp_path)
    directory = tmp_path / "pod" / "volumes" / "lora-adapters" / "a"
    directory.mkdir()
    files = adapter_files(rank=32)
    (directory / "adapter_config.json").write_bytes(files["adapter_config.json"])
    path = "/mnt/lora-adapters/a"
    assert lora_load_error("a", path, volumes, MOUNTS, 16) == "LoRA rank 32 is greater than max_lora_rank 16."
    assert lora_load_error("a", path, volumes, MOUNTS, 32) == "<path> doesn't contain tensors"
    (directory / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert (
        lora_load_error("a", path, volumes, MOUNTS, 32)
        == "Error while deserializing header: InvalidHeaderLength"
    )
    (directory / "adapter_model.safetensors").write_bytes(files["adapter_model.safetensors"])
    assert lora_load_error("a", path, volumes, MOUNTS, 32) is None
    (directory / "adapter_config.json").write_text(json.dumps({"r": 8}))
    missing = str(lora_load_error("a", path, volumes, MOUNTS, 32))  # a set, as vLLM prints it
    assert missing.startswith("Missing required configuration fields: {")
    assert "'lora_alpha'" in missing
    assert "'target_modules'" in missing
    # Hub repo ids and other volumes' contents are not simulated; a path in no volume is in the image.
    assert lora_load_error("a", "acme/sql-lora", volumes, MOUNTS, 16) is None
    assert lora_load_error("a", "/adapters/a", volumes, MOUNTS, 16) is not None


# --- the environment, as the kubelet resolves it -------------------------------------------------------


def test_env_from_secrets_as_the_kubelet_resolves_it() -> None:
    data = {"store": {"AWS_ACCESS_KEY_ID": "k"}}

    def lookup(kind: str, name: str) -> dict[str, str] | None:
        return data.get(name) if kind == "secret" else None

    def ref(name: str, key: str, optional: bool) -> dict[str, Any]:
        return {"name": key, "valueFrom": {"secretKeyRef": {"name": name, "key": key, "optional": optional}}}

    container = {
        "env": [
            {"name": "A", "value": "1"},
            ref("store", "AWS_ACCESS_KEY_ID", False),
            ref("store", "X", True),
        ]
    }
    assert resolve_env(container, "ns", lookup) == {"A": "1", "AWS_ACCESS_KEY_ID": "k"}
    with pytest.raises(ContainerConfigError, match="couldn't find key X in Secret ns/store"):
        resolve_env({"env": [ref("store", "X", False)]}, "ns", lookup)
    with pytest.raises(ContainerConfigError, match='secret "gone" not found'):
        resolve_env({"env": [ref("gone", "X", False)]}, "ns", lookup)
    assert resolve_env({"env": [ref("gone", "X", True)]}, "ns", lookup) == {}


# --- the kubelet: init containers first, then vLLM -----------------------------------------------------


class _Api:
    """The API calls the kubelet makes for a pod, recorded; Secrets from a dict."""

    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        self.secrets = secrets
        self.statuses: list[dict[str, Any]] = []

    def patch_namespaced_pod_status(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self.statuses.append(copy.deepcopy(body["status"]))

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        if name not in self.secrets:
            raise ApiException(status=404)
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in self.secrets[name].items()}
        return SimpleNamespace(data=encoded)

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        raise ApiException(status=404)

    def delete_namespaced_pod(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Server:
    draining = False
    refuse_scrapes = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def start_draining(self) -> None:
        self.draining = True

    def gpu_utilization(self) -> float:
        return 0.0

    def in_flight(self) -> int:
        return 0


def _pod(adapter_uri: str) -> dict[str, Any]:
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct", "credentialsSecret": SECRET},
            "engine": {
                "loraAdapters": [{"name": "support", "uri": adapter_uri}],
                "speculativeDecoding": {"method": "ngram", "numSpeculativeTokens": 3},
            },
        }
    )
    groups = [PlacementGroup("", "on-demand", 1)]
    workloads = desired_workloads(Owner("m", "ns", "u"), spec, groups, Settings.defaults().workload_options())
    template = workloads.deployments[0]["spec"]["template"]
    return {"metadata": {"name": "m-0", "namespace": "ns", "uid": "uid-0"}, "spec": template["spec"]}


async def _run(
    tmp_path: Path, raw: dict[str, Any], secrets: dict[str, dict[str, str]], until: Callable[[_Api], bool]
) -> tuple[_Api, list[Sequence[str]], SimPod]:
    started: list[Sequence[str]] = []

    def factory(
        host: str, port: int, name: str, profile: EngineProfile, clock: SimClock, loras: Sequence[str]
    ) -> _Server:
        started.append(loras)
        return _Server()

    api = _Api(secrets)
    kubelet = SimKubelet(
        client.ApiClient(),
        SimClock(scale=2000.0),
        KubeletParams(),
        server_factory=factory,
        volumes_root=tmp_path,
    )
    kubelet.core = api
    kubelet.nodes["n"] = SimNode("n", "127.1.0.2", "NVIDIA-A100-SXM4-80GB", [], 81920, image_cached=True)
    pod = SimPod("uid-0", "ns", "m-0", "n", "127.2.250.9", plan_pod(raw))
    task = asyncio.create_task(kubelet._run_pod(pod, raw))
    for _ in range(2000):
        if until(api) or task.done():
            break
        await asyncio.sleep(0.005)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return api, started, pod


def _ready(api: _Api) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for s in api.statuses for c in s.get("conditions", [])
    )


def _inits(api: _Api) -> list[dict[str, Any]]:
    return [s["initContainerStatuses"][0] for s in api.statuses if "initContainerStatuses" in s]


def test_the_init_container_fetches_the_adapter_before_vllm_starts_and_the_pod_becomes_ready(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    raw = _pod(f"s3://{bucket}/support")
    api, started, pod = asyncio.run(_run(tmp_path, raw, {SECRET: _env(moto)}, _ready))
    assert _ready(api)
    first = api.statuses[0]
    assert first["phase"] == "Pending"
    initialized = next(c for c in first["conditions"] if c["type"] == "Initialized")
    assert (initialized["status"], initialized["reason"]) == ("False", "ContainersNotInitialized")
    assert initialized["message"] == "containers with incomplete status: [fetch-adapter-0]"
    assert first["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    done = _inits(api)[-1]
    assert done["state"]["terminated"]["exitCode"] == 0
    assert done["state"]["terminated"]["reason"] == "Completed"
    running = next(s for s in api.statuses if s.get("phase") == "Running")
    assert running["initContainerStatuses"][0]["ready"] is True
    assert started == [("support",)]
    assert pod.logs == {"fetch-adapter-0": ""}


def test_a_failing_init_container_is_restarted_with_back_off_and_vllm_never_starts(
    moto: MotoServer, tmp_path: Path
) -> None:
    raw = _pod("s3://no-such-bucket-here/support")

    def restarted_twice(api: _Api) -> bool:
        return any(s["restartCount"] >= 2 and "waiting" in s["state"] for s in _inits(api))

    api, started, pod = asyncio.run(_run(tmp_path, raw, {SECRET: _env(moto)}, restarted_twice))
    assert started == []
    assert all(s["phase"] == "Pending" for s in api.statuses)
    assert not _ready(api)
    inits = _inits(api)
    failed = next(s for s in inits if "terminated" in s["state"])
    assert failed["state"]["terminated"]["exitCode"] == 1
    assert failed["state"]["terminated"]["reason"] == "Error"
    waits = [s for s in inits if s["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"]
    assert [w["state"]["waiting"]["message"].split(" restarting")[0] for w in waits[:3]] == [
        "back-off 10s",
        "back-off 20s",
        "back-off 40s",
    ]
    assert waits[0]["state"]["waiting"]["message"].endswith("container=fetch-adapter-0 pod=m-0_ns(uid-0)")
    assert waits[0]["lastState"]["terminated"]["exitCode"] == 1
    assert "(NoSuchBucket)" in pod.logs["fetch-adapter-0"]
    # The operator asks for FallbackToLogsOnError: the log's tail is the message kubectl describe shows.
    assert "(NoSuchBucket)" in waits[0]["lastState"]["terminated"]["message"]


def test_an_adapter_missing_from_its_prefix_leaves_vllm_crash_looping(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    raw = _pod(f"s3://{bucket}/legal")

    def crash_looping(api: _Api) -> bool:
        return any(
            c["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
            for s in api.statuses
            for c in s.get("containerStatuses", [])
        )

    api, started, _ = asyncio.run(_run(tmp_path, raw, {SECRET: _env(moto)}, crash_looping))
    assert started == []
    assert _inits(api)[-1]["state"]["terminated"]["exitCode"] == 0  # aws s3 sync of nothing succeeds
    waiting = api.statuses[-1]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["message"] == "Loading lora support failed: No adapter found for <path>"


def test_a_missing_secret_key_is_create_container_config_error(moto: MotoServer, tmp_path: Path) -> None:
    raw = _pod("s3://anything/support")
    for env in raw["spec"]["initContainers"][0]["env"]:
        env["valueFrom"]["secretKeyRef"]["optional"] = False  # as when every source is on S3

    def config_error(api: _Api) -> bool:
        return any(
            s["state"].get("waiting", {}).get("reason") == "CreateContainerConfigError" for s in _inits(api)
        )

    api, started, _ = asyncio.run(_run(tmp_path, raw, {}, config_error))
    waiting = _inits(api)[-1]["state"]["waiting"]
    assert waiting["message"] == f'secret "{SECRET}" not found'
    assert started == []


def test_a_termination_message_from_the_log_is_its_last_80_lines_and_2_kib() -> None:
    log = "\n".join(f"line {i}" for i in range(200))
    message = termination_message_from_log(log)
    assert message.splitlines()[0] == "line 120"
    assert message.endswith("line 199")
    assert len(termination_message_from_log("x" * 5000).encode()) == 2048
