"""Speculative decoding and an s3:// LoRA adapter end to end on the simulated fleet.

A ModelDeployment (Llama 3 8B, ngram speculation, one adapter in S3) goes through the real API server,
scheduler and controllers to the simulated kubelet, which runs the operator's init container: `aws s3
sync` against the simulation's moto S3 (the AWS keys and endpoint from the model's credentials Secret)
into the pod's emptyDir, where the simulated vLLM's start-up check finds the adapter. Requests then go
to the pod as the other e2e tests send them (ready endpoints of the model's Service), to the base model
and to the adapter by name. Then two broken adapters, each rolled out over the serving replica: one in a
bucket that does not exist (the fetch fails, the new pod never leaves Init) and one whose prefix holds no
files (the fetch succeeds, as `aws s3 sync` of nothing does, and vLLM refuses to start). Neither takes
the serving replica away. Time runs 50x (tests/e2e/conftest.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from fleetsim.background import BackgroundSimulation
from fleetsim.cloud import client
from fleetsim.containers import adapter_files
from fleetsim.loadgen import ready_endpoints
from fleetsim.prometheus import sum_samples
from tests.conftest import OperatorProcess, wait_until
from tests.e2e.conftest import HERE, NAMESPACE
from tests.e2e.pods import apply_sample, model_deployment, model_pods, serving

pytestmark = pytest.mark.e2e

MODEL = "llama-3-8b-lora"
ADAPTER = "support"
BUCKET = "gpufleet-e2e-adapters"  # in llama-3-8b-lora-spec.yaml
SECRET = "adapter-store"
REGION = "us-west-2"
# urllib without the environment's proxies: traffic here goes to loopback addresses only.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _pods(sim: BackgroundSimulation) -> list[dict[str, Any]]:
    return model_pods(sim, MODEL)


def _serving(sim: BackgroundSimulation) -> list[dict[str, Any]]:
    return [p for p in _pods(sim) if serving(p)]


def _condition(sim: BackgroundSimulation, kind: str) -> dict[str, Any]:
    conditions = model_deployment(sim, NAMESPACE, MODEL).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == kind), {})


def _wait(sim: BackgroundSimulation, probe: Any, timeout: float, what: str) -> Any:
    """wait_until, and on a timeout the model's pods' status, to tell why."""
    try:
        return wait_until(probe, timeout=timeout, interval=0.25, what=what)
    except AssertionError as error:
        states = [(p["metadata"]["name"], p.get("status", {})) for p in _pods(sim)]
        raise AssertionError(f"{error}\npods: {json.dumps(states, indent=1)[:6000]}") from None


def _call(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with _HTTP.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _complete(base: str, model: str) -> tuple[int, dict[str, Any]]:
    return _call(
        f"{base}/v1/completions", {"model": model, "prompt": "Reset my password. " * 8, "max_tokens": 32}
    )


def _endpoint(sim: BackgroundSimulation) -> str:
    """The one ready endpoint of the model's Service, as clients find it (tests/e2e/pods.py)."""
    urls = ready_endpoints(sim.simulation.core, NAMESPACE, MODEL)
    assert len(urls) == 1, urls
    return urls[0]


def _vllm_args(pod: dict[str, Any]) -> list[str]:
    return next(c["args"] for c in pod["spec"]["containers"] if c["name"] == "vllm")


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _set_adapters(operator: OperatorProcess, adapters: list[dict[str, str]]) -> None:
    patch = {"spec": {"engine": {"loraAdapters": adapters}}}
    operator.cluster.kubectl("patch", "md", MODEL, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(patch))


@pytest.fixture(scope="module")
def lora_model(sim: BackgroundSimulation, operator: OperatorProcess) -> Iterator[str]:
    """The adapter in the simulation's S3, the Secret with keys and endpoint, and the ModelDeployment."""
    moto = sim.simulation.moto
    s3 = client("s3", moto.endpoint_url, REGION)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    for name, body in adapter_files().items():
        s3.put_object(Bucket=BUCKET, Key=f"{ADAPTER}/{name}", Body=body)
    secret = operator.cluster.kubectl(
        "create",
        "secret",
        "generic",
        SECRET,
        "-n",
        NAMESPACE,
        "--from-literal=AWS_ACCESS_KEY_ID=testing",
        "--from-literal=AWS_SECRET_ACCESS_KEY=testing",
        f"--from-literal=AWS_REGION={REGION}",
        f"--from-literal=AWS_ENDPOINT_URL={moto.endpoint_url}",
        "--dry-run=client",
        "-o",
        "yaml",
    ).stdout
    operator.cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=secret)
    apply_sample(operator, HERE / "llama-3-8b-lora-spec.yaml", MODEL, NAMESPACE)
    yield MODEL
    operator.cluster.kubectl("delete", "md", MODEL, "-n", NAMESPACE, "--wait=true", check=False)
    # The garbage collector would delete the Deployments too, but it watches a custom resource's
    # dependents only from its next discovery sync (every 30 s), which a session that installed the CRD
    # moments ago has not had yet: deleting them here saves that half minute.
    selector = f"gpufleet.io/model-deployment={MODEL}"
    operator.cluster.kubectl(
        "delete", "deployment", "-n", NAMESPACE, "-l", selector, "--wait=false", check=False
    )
    wait_until(lambda: not _pods(sim), timeout=120, what="the model's pods gone")
    operator.cluster.kubectl("delete", "secret", SECRET, "-n", NAMESPACE, check=False)


def test_an_s3_adapter_is_fetched_before_vllm_and_served_by_name_with_speculation_on(
    sim: BackgroundSimulation, lora_model: str
) -> None:
    pod = _wait(sim, lambda: next(iter(_serving(sim)), None), 90, "a serving replica")
    status = pod["status"]
    fetch = status["initContainerStatuses"][0]
    assert fetch["name"] == "fetch-adapter-0"
    assert (fetch["state"]["terminated"]["exitCode"], fetch["state"]["terminated"]["reason"]) == (
        0,
        "Completed",
    )
    assert next(c for c in status["conditions"] if c["type"] == "Initialized")["status"] == "True"
    # The init container's command, and what it left in the pod's emptyDir for vLLM.
    init = pod["spec"]["initContainers"][0]
    args = _vllm_args(pod)
    path = _flag(args, "--lora-modules").removeprefix(f"{ADAPTER}=")
    assert init["command"] == ["aws", "s3", "sync", "--only-show-errors", f"s3://{BUCKET}/{ADAPTER}", path]
    volume = sim.simulation.workdir / "pods" / pod["metadata"]["uid"] / "volumes" / "lora-adapters"
    copied = volume / path.removeprefix("/mnt/lora-adapters/")
    assert sorted(f.name for f in copied.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads(_flag(args, "--speculative-config")) == {"method": "ngram", "num_speculative_tokens": 3}

    base = _endpoint(sim)
    code, models = _call(f"{base}/v1/models")
    assert code == 200
    assert [(m["id"], m["parent"]) for m in models["data"]] == [(MODEL, None), (ADAPTER, MODEL)]
    for model in (MODEL, ADAPTER):
        code, answer = _complete(base, model)
        assert code == 200, answer
        assert answer["model"] == model  # vLLM answers under the adapter's name
        assert answer["usage"]["completion_tokens"] == 32
    code, error = _complete(base, "legal")
    assert code == 404
    assert error["error"]["type"] == "NotFoundError"
    assert error["error"]["message"] == f"The model `legal` does not exist. Valid aliases: {MODEL}."

    # The engine speculated: vLLM's spec-decode counters, 3 proposals per draft, some accepted.
    with _HTTP.open(f"{base}/metrics", timeout=10) as response:
        exposition = response.read().decode()
    drafts = sum_samples(exposition, "vllm:spec_decode_num_drafts_total", model_name=MODEL)
    assert drafts > 0
    assert sum_samples(exposition, "vllm:spec_decode_num_draft_tokens_total", model_name=MODEL) == 3 * drafts
    accepted = sum_samples(exposition, "vllm:spec_decode_num_accepted_tokens_total", model_name=MODEL)
    # Two requests of 32 tokens, each one's first from its prefill: every draft step adds accepted + 1.
    assert accepted + drafts == 2 * 31
    assert accepted > 0

    _wait(sim, lambda: _condition(sim, "Ready").get("status") == "True", 30, "the model Ready")
    credentials = _condition(sim, "CredentialsReady")
    assert (credentials["status"], credentials["reason"]) == ("True", "SecretFound")


def test_an_adapter_in_a_missing_bucket_holds_the_new_replica_in_init_and_the_old_one_serves(
    sim: BackgroundSimulation, operator: OperatorProcess, lora_model: str
) -> None:
    old = _wait(sim, lambda: next(iter(_serving(sim)), None), 90, "a serving replica")
    old_uid = old["metadata"]["uid"]
    adapters = [
        {"name": ADAPTER, "uri": f"s3://{BUCKET}/{ADAPTER}"},
        {"name": "legal", "uri": "s3://gpufleet-e2e-no-such-bucket/legal"},
    ]
    _set_adapters(operator, adapters)

    def failing_again() -> dict[str, Any] | None:
        for pod in _pods(sim):
            inits = pod.get("status", {}).get("initContainerStatuses") or []
            if pod["metadata"]["uid"] != old_uid and len(inits) == 2 and inits[1]["restartCount"] >= 2:
                return pod
        return None

    # The kubelet restarts it after 10 s, then 20 s (simulated): two restarts, the back-off at work.
    new = _wait(sim, failing_again, 90, "the new replica's second init container failed and restarted twice")
    status = new["status"]
    assert status["phase"] == "Pending"
    fetched, failing = status["initContainerStatuses"]
    assert fetched["state"]["terminated"]["exitCode"] == 0  # in order: the first one did its part
    assert failing["lastState"]["terminated"]["exitCode"] == 1
    assert failing["lastState"]["terminated"]["reason"] == "Error"
    assert "(NoSuchBucket)" in failing["lastState"]["terminated"]["message"]  # FallbackToLogsOnError
    initialized = next(c for c in status["conditions"] if c["type"] == "Initialized")
    assert (initialized["status"], initialized["message"]) == (
        "False",
        "containers with incomplete status: [fetch-adapter-1]",
    )
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    logs = sim.simulation.kubelet.pods[new["metadata"]["uid"]].logs["fetch-adapter-1"]
    assert "fatal error: An error occurred (NoSuchBucket) when calling the ListObjectsV2 operation" in logs

    # The replica that serves stays, and keeps answering under the adapter's name.
    assert [p["metadata"]["uid"] for p in _serving(sim)] == [old_uid]
    code, answer = _complete(_endpoint(sim), ADAPTER)
    assert (code, answer["model"]) == (200, ADAPTER)
    md = model_deployment(sim, NAMESPACE, MODEL)
    assert md["spec"]["replicas"] == 1
    assert _condition(sim, "Ready")["status"] == "True"
    assert _condition(sim, "Progressing")["status"] == "True"

    # The model says why its new replica does not start, with aws's error; the serving one is kept.
    def failing_reported() -> dict[str, Any] | None:
        condition = _condition(sim, "Degraded")
        return condition if condition.get("reason") == "ReplicasFailing" else None

    degraded = _wait(sim, failing_reported, 60, "Degraded=True, ReplicasFailing")
    assert degraded["status"] == "True"
    # CrashLoopBackOff between attempts, "restarting" during one: either way the container and aws's error
    assert "init container fetch-adapter-1: " in degraded["message"]
    assert "(NoSuchBucket)" in degraded["message"]
    assert [p["metadata"]["uid"] for p in _serving(sim)] == [old_uid]
    assert operator.alive()


def test_an_adapter_prefix_with_no_files_is_fetched_as_nothing_and_vllm_refuses_to_start(
    sim: BackgroundSimulation, operator: OperatorProcess, lora_model: str
) -> None:
    old = _wait(sim, lambda: next(iter(_serving(sim)), None), 90, "a serving replica")
    old_uid = old["metadata"]["uid"]
    _set_adapters(
        operator,
        [
            {"name": ADAPTER, "uri": f"s3://{BUCKET}/{ADAPTER}"},
            {"name": "legal", "uri": f"s3://{BUCKET}/legal"},
        ],
    )

    def crash_looping() -> dict[str, Any] | None:
        for pod in _pods(sim):
            containers = pod.get("status", {}).get("containerStatuses") or []
            waiting = containers[0]["state"].get("waiting", {}) if containers else {}
            if pod["metadata"]["uid"] != old_uid and waiting.get("reason") == "CrashLoopBackOff":
                return pod
        return None

    new = _wait(sim, crash_looping, 90, "the new replica's vLLM crash-looping")
    status = new["status"]
    # `aws s3 sync` of a prefix with no objects copies nothing and exits 0, as the real CLI does.
    assert [s["state"]["terminated"]["exitCode"] for s in status["initContainerStatuses"]] == [0, 0]
    waiting = status["containerStatuses"][0]["state"]["waiting"]
    assert waiting["message"] == "Loading lora legal failed: No adapter found for <path>"
    assert [p["metadata"]["uid"] for p in _serving(sim)] == [old_uid]
    code, answer = _complete(_endpoint(sim), ADAPTER)
    assert (code, answer["model"]) == (200, ADAPTER)
    assert operator.alive()
