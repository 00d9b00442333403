"""The operator on a simulated A100 fleet: real scheduler, real Prometheus, real HTTP to vLLM pods."""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_api_client import PrometheusConnect

from fleetsim.background import BackgroundSimulation
from fleetsim.cloud import client
from gpufleet.adapters.serving_metrics import ModelMetrics, PrometheusMetrics
from tests.conftest import OperatorProcess, wait_until
from tests.e2e.conftest import HERE, MODEL, NAMESPACE
from tests.e2e.pods import constant_load, model_deployment
from tests.e2e.scrape import metric

pytestmark = pytest.mark.e2e

MD_LABEL = "gpufleet.io/model-deployment"


def _pods(sim: BackgroundSimulation, name: str = MODEL) -> list[dict[str, Any]]:
    return [p for p in sim.simulation._pods() if p["metadata"]["labels"].get(MD_LABEL) == name]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _node_labels(sim: BackgroundSimulation, name: str) -> dict[str, str]:
    labels: dict[str, str] = sim.simulation.core.read_node(name).metadata.labels
    return labels


def wait_for_ready_pods(sim: BackgroundSimulation, count: int, timeout: float = 120) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        pods = [p for p in _pods(sim) if _ready(p)]
        return pods if len(pods) == count else None

    return wait_until(ready, timeout=timeout, interval=0.5, what=f"{count} ready pods of {MODEL}")


def test_the_sample_becomes_ready_pods_on_simulated_nodes_of_the_right_zones(
    sim: BackgroundSimulation,
) -> None:
    pods = wait_for_ready_pods(sim, 2)
    for pod in pods:
        node = _node_labels(sim, pod["spec"]["nodeName"])
        assert node["fleetsim.gpufleet.io/node"] == "true"
        assert node["topology.kubernetes.io/zone"] == pod["metadata"]["labels"]["gpufleet.io/zone"]
        assert node["karpenter.sh/capacity-type"] == pod["metadata"]["labels"]["gpufleet.io/capacity-type"]
        assert ipaddress.ip_address(pod["status"]["podIP"]).is_loopback
    assert {p["metadata"]["labels"]["gpufleet.io/zone"] for p in pods} == {"us-west-2a", "us-west-2b"}

    def md_ready() -> bool:
        status = model_deployment(sim, NAMESPACE, MODEL).get("status", {})
        return status.get("readyReplicas") == 2

    wait_until(md_ready, timeout=30, what="status.readyReplicas 2")

    def stable_revision() -> int | None:
        revisions = model_deployment(sim, NAMESPACE, MODEL).get("status", {}).get("revisions") or {}
        return (revisions.get("stable") or {}).get("revision")

    # Every group rolled out with ready pods: revision 1, the only one, is the stable one too.
    assert wait_until(stable_revision, timeout=30, what="a stable revision") == 1


def test_prometheus_returns_vllm_metrics_for_the_model(sim: BackgroundSimulation) -> None:
    ready = wait_for_ready_pods(sim, 2)
    prometheus = PrometheusConnect(url=sim.simulation.prometheus.url, disable_ssl=True)

    def series() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = prometheus.custom_query(
            f'vllm:num_requests_running{{model_name="{MODEL}"}}'
        )
        return found if len(found) == 2 else None

    found = wait_until(series, timeout=60, interval=1, what="two vllm:num_requests_running series")
    assert {s["metric"]["namespace"] for s in found} == {NAMESPACE}
    # Two replicas x tensor parallel 4, each GPU labelled with the pod that holds it. Only this model's
    # ready pods: a pod of an earlier test still terminating in the namespace holds its GPUs too.
    names = sorted(p["metadata"]["name"] for p in ready)
    gpu = prometheus.custom_query(f'DCGM_FI_DEV_GPU_UTIL{{namespace="{NAMESPACE}",pod=~"{"|".join(names)}"}}')
    by_pod: dict[str, set[str]] = {}
    for sample in gpu:
        by_pod.setdefault(sample["metric"]["pod"], set()).add(sample["metric"]["UUID"])
    assert {pod: len(uuids) for pod, uuids in by_pod.items()} == {name: 4 for name in names}
    assert len(gpu) == 8


def test_the_load_generator_gets_answers_from_the_served_model(sim: BackgroundSimulation) -> None:
    wait_for_ready_pods(sim, 2)
    load = constant_load(sim, NAMESPACE, MODEL)
    report = sim.call(load.run(30), timeout=120)
    assert report.sent > 20
    assert report.ok == report.sent
    assert dict(report.errors) == {}
    assert report.models == (MODEL,)
    assert report.tokens == 32 * report.ok


def test_a_lost_node_loses_its_pods_and_the_replacement_lands_elsewhere(sim: BackgroundSimulation) -> None:
    pods = wait_for_ready_pods(sim, 2)
    victim = next(p for p in pods if p["metadata"]["labels"]["gpufleet.io/capacity-type"] == "spot")
    lost = victim["spec"]["nodeName"]
    sim.call(sim.simulation.lose_node(lost, "deleted by the e2e test"))

    def replaced() -> list[dict[str, Any]] | None:
        current = [p for p in _pods(sim) if _ready(p)]
        names = {p["metadata"]["name"] for p in current}
        if len(current) == 2 and victim["metadata"]["name"] not in names:
            return current
        return None

    # A spot node lost puts spot in its zone (2b) in cooldown: the replacement goes to spot in the
    # model's other zone (2a), where it pulls the image and loads the weights.
    current = wait_until(replaced, timeout=120, interval=0.5, what="a ready replacement pod")
    replacement = next(p for p in current if p["metadata"]["labels"]["gpufleet.io/capacity-type"] == "spot")
    assert replacement["spec"]["nodeName"] != lost
    assert _node_labels(sim, replacement["spec"]["nodeName"])["topology.kubernetes.io/zone"] == "us-west-2a"
    degraded = _condition(_md(sim, MODEL), "ZoneDegraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "SpotCoolingDown")
    assert "spot in us-west-2b" in degraded["message"]


AUTOSCALED = "llama-3-8b-auto"


def _md(sim: BackgroundSimulation, name: str) -> dict[str, Any]:
    return model_deployment(sim, NAMESPACE, name)


def _condition(md: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in md.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def _ready_pods_of(sim: BackgroundSimulation, name: str) -> int:
    return sum(1 for p in _pods(sim, name) if _ready(p))


def test_autoscaling_follows_the_queue_and_scales_back_down(
    sim: BackgroundSimulation, operator: OperatorProcess
) -> None:
    operator.cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(HERE / "llama-3-8b-autoscaled.yaml"))
    wait_until(lambda: _ready_pods_of(sim, AUTOSCALED) == 1, timeout=60, what="the first replica ready")
    load = constant_load(sim, NAMESPACE, AUTOSCALED, prompt_tokens=128, max_tokens=64, max_in_flight=64)
    running = asyncio.run_coroutine_threadsafe(load.run(100_000), sim.loop)
    try:
        # One sequence per replica at ~85 tokens/s serves ~1.3 requests/s: 2/s queues, and the
        # queue outgrows capacity (panic), so the autoscaler goes to maxReplicas at once.
        wait_until(lambda: _md(sim, AUTOSCALED)["spec"]["replicas"] == 3, timeout=60, what="scale up to 3")
        wait_until(lambda: _ready_pods_of(sim, AUTOSCALED) == 3, timeout=60, what="three ready replicas")
        scaled = _md(sim, AUTOSCALED)["status"]["autoscaler"]
        assert scaled["active"] is True
        assert scaled["lastScaleTime"]
    finally:
        running.cancel()

    # Load gone: one replica at a time, back to minReplicas (metrics faults: test_metrics_faults.py).
    wait_until(lambda: _md(sim, AUTOSCALED)["spec"]["replicas"] == 1, timeout=150, what="scale down to 1")
    assert _condition(_md(sim, AUTOSCALED), "ScalingActive")["status"] == "True"
    reasons = operator.cluster.kubectl(
        "get",
        "events",
        "-n",
        NAMESPACE,
        "--field-selector",
        f"involvedObject.name={AUTOSCALED}",
        "-o",
        "jsonpath={.items[*].reason}",
    ).stdout.split()
    assert reasons.count("Autoscaled") >= 3  # 1 -> 3, 3 -> 2, 2 -> 1


def test_a_spot_interruption_reaches_the_operator_through_sqs_and_the_node_goes_after_the_notice(
    sim: BackgroundSimulation, operator: OperatorProcess
) -> None:
    simulation = sim.simulation
    cloud = simulation.cloud
    assert cloud is not None
    record = simulation.nodes["west-2c-od-1"]  # hosts none of the model's pods (zones 2a and 2b)
    labels = {"source": "sqs", "type": "interruption", "outcome": "handled"}
    before = metric(operator.metrics_port, "gpufleet_interruption_events_total", **labels)
    task = asyncio.run_coroutine_threadsafe(simulation.interrupt(record.name, None), sim.loop)

    def handled() -> bool:
        return metric(operator.metrics_port, "gpufleet_interruption_events_total", **labels) > before

    # The operator long-polls the queue, maps detail.instance-id to the node by its providerID,
    # and deletes the message.
    wait_until(handled, timeout=30, interval=0.2, what="the operator to handle the interruption warning")
    assert record.name in simulation.nodes  # five minutes of notice (6 s real at 50x) still running
    sqs = client("sqs", simulation.moto.endpoint_url, "us-west-2")
    attributes = sqs.get_queue_attributes(QueueUrl=cloud.queue_url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert metric(operator.metrics_port, "gpufleet_interruption_queue_up") == 1
    task.result(timeout=60)
    assert record.name not in simulation.nodes
    state = cloud.describe_instance(record.instance_id)["State"]["Name"]
    assert state in ("shutting-down", "terminated")

    def node_deleted() -> bool:
        names = [n.metadata.name for n in simulation.core.list_node().items]
        return record.name not in names

    wait_until(node_deleted, timeout=30, what="the Node object deleted")


def test_the_operator_metrics_adapter_reads_the_model_from_real_prometheus(sim: BackgroundSimulation) -> None:
    pods = wait_for_ready_pods(sim, 2)
    reader = PrometheusMetrics(sim.simulation.prometheus.url)
    names = [p["metadata"]["name"] for p in pods]

    def complete() -> ModelMetrics | None:
        found = reader.read(NAMESPACE, MODEL, names, mig=False, now=datetime.now(UTC))
        return found if found.gpu_utilization is not None and found.kv_cache_usage is not None else None

    metrics = wait_until(complete, timeout=60, interval=1, what="every signal from Prometheus")
    assert metrics.error is None
    assert metrics.waiting is not None
    assert metrics.running is not None
    assert 0 <= metrics.kv_cache_usage <= 1
    assert 0 <= metrics.gpu_utilization <= 1
