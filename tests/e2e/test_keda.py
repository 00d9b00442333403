"""KEDA instead of gpufleet's autoscaler: a ScaledObject on the simulator's vLLM queue, the real HPA, /scale.

KEDA v2.21.0 (hack/install-keda.sh, `make keda`) runs beside the shared control plane (fleetsim.keda). Its
operator makes an HPA for the ScaledObject; the HPA in kube-controller-manager (syncing every second,
tests/conftest.py) reads the queue through KEDA's metrics server, which kube-apiserver's aggregation layer
serves as external.metrics.k8s.io (hack/cluster.sh), and writes spec.replicas of the ModelDeployment through
its scale subresource. The ModelDeployment's own autoscaling is off: the operator only turns the replicas
into placed Deployments, and the simulated kubelet makes their pods Ready.

The load is more than three replicas serve, so the queue stays long until the load stops: the HPA's rule
on a queue, ceil(waiting / threshold), would otherwise scale down as soon as new replicas drain it
(docs/autoscaling.md, "With KEDA instead").
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from string import Template
from typing import Any

import pytest
import yaml

from fleetsim.background import BackgroundSimulation
from fleetsim.keda import Keda
from fleetsim.keda import install as install_keda
from tests.conftest import Cluster, OperatorProcess, wait_until
from tests.e2e.conftest import HERE, NAMESPACE
from tests.e2e.pods import constant_load, model_deployment, model_pods, serving

pytestmark = pytest.mark.e2e

MODEL = "llama-3-8b-keda"
MANIFEST = HERE / "llama-3-8b-keda.yaml"
HPA = f"keda-hpa-{MODEL}"  # KEDA's name for the HPA of a ScaledObject
ZONES = {"us-west-2a", "us-west-2c"}


@pytest.fixture(scope="module")
def keda(operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keda]:
    try:
        build = install_keda()
    except RuntimeError as error:
        pytest.fail(f"{error}\n(`make keda` builds KEDA once, 10-15 minutes)", pytrace=False)
    with Keda(operator.cluster, build, tmp_path_factory.mktemp("keda")) as running:
        yield running


def _manifests(sim: BackgroundSimulation) -> tuple[dict[str, Any], dict[str, Any]]:
    text = Template(MANIFEST.read_text()).substitute(
        prometheus=sim.simulation.prometheus.url, namespace=NAMESPACE
    )
    model, scaled_object = yaml.safe_load_all(text)
    return model, scaled_object


def _md(sim: BackgroundSimulation) -> dict[str, Any]:
    return model_deployment(sim, NAMESPACE, MODEL)


def _serving(sim: BackgroundSimulation) -> list[dict[str, Any]]:
    return [pod for pod in model_pods(sim, MODEL) if serving(pod)]


def _serving_exactly(sim: BackgroundSimulation, count: int) -> list[dict[str, Any]] | None:
    pods = _serving(sim)
    return pods if len(pods) == count else None


def _hpa(cluster: Cluster) -> dict[str, Any] | None:
    found = cluster.kubectl("get", "hpa", HPA, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def _hpa_condition(cluster: Cluster, kind: str) -> str:
    hpa = _hpa(cluster) or {}
    conditions = hpa.get("status", {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == kind), "")


def _rescales(cluster: Cluster) -> list[str]:
    """The HPA's SuccessfulRescale messages ("New size: 3; reason: external metric ... above target")."""
    events = cluster.get_json(
        "events",
        "-n",
        NAMESPACE,
        "--field-selector",
        f"involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={HPA},reason=SuccessfulRescale",
    )["items"]
    return [event["message"] for event in events]


def _placed(cluster: Cluster) -> Counter[tuple[str, str]]:
    """The operator's Deployments of the model: replicas per (zone, capacity type)."""
    deployments = cluster.get_json(
        "deployments", "-n", NAMESPACE, "-l", f"gpufleet.io/model-deployment={MODEL}"
    )
    placed: Counter[tuple[str, str]] = Counter()
    for deployment in deployments["items"]:
        labels = deployment["metadata"]["labels"]
        replicas = deployment["spec"]["replicas"]
        if replicas:
            placed[(labels["gpufleet.io/zone"], labels["gpufleet.io/capacity-type"])] += replicas
    return placed


def test_keda_and_the_hpa_scale_a_model_deployment_through_scale_and_the_operator_places_the_replicas(
    sim: BackgroundSimulation, operator: OperatorProcess, keda: Keda
) -> None:
    cluster = operator.cluster
    if not operator.alive():  # test_helm_install stops it to run the chart's service account instead
        operator.start()
    model, scaled_object = _manifests(sim)
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump(model))
    try:
        wait_until(lambda: len(_serving(sim)) == 1, timeout=90, interval=0.5, what="the first replica ready")
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump(scaled_object))

        # KEDA's HPA targets the ModelDeployment itself and reads KEDA's metric through the aggregation layer.
        hpa = wait_until(lambda: _hpa(cluster), timeout=60, what=f"KEDA's HPA {HPA}")
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "ModelDeployment",
            "name": MODEL,
        }
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
        external = hpa["spec"]["metrics"][0]["external"]
        selector = ",".join(f"{k}={v}" for k, v in external["metric"]["selector"]["matchLabels"].items())
        path = (
            f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/{external['metric']['name']}"
            f"?labelSelector={urllib.parse.quote(selector)}"
        )
        answer = json.loads(cluster.kubectl("get", "--raw", path).stdout)
        assert [item["metricName"] for item in answer["items"]] == [external["metric"]["name"]]
        assert external["target"] == {"type": "AverageValue", "averageValue": "4"}
        wait_until(
            lambda: _hpa_condition(cluster, "ScalingActive") == "True",
            timeout=60,
            what="the HPA reading the metric (ScalingActive)",
        )
        assert _md(sim)["spec"]["replicas"] == 1  # an idle queue asks for minReplicaCount

        # ~6 requests per simulated second against ~1.3 a replica serves: the queue grows at any size.
        load = constant_load(
            sim, NAMESPACE, MODEL, rate=6, prompt_tokens=128, max_tokens=64, max_in_flight=64
        )
        running = asyncio.run_coroutine_threadsafe(load.run(100_000), sim.loop)
        try:
            wait_until(
                lambda: _md(sim)["spec"]["replicas"] == 3, timeout=60, what="the HPA scaling the model to 3"
            )
            pods = wait_until(
                lambda: _serving_exactly(sim, 3),
                timeout=120,
                interval=0.5,
                what="three ready replicas",
            )
        finally:
            running.cancel()
        assert any(message.startswith("New size: 3") for message in _rescales(cluster))
        # Placed by the operator: on-demand over the two zones, each pod on a node of its zone.
        assert _placed(cluster) == {("us-west-2a", "on-demand"): 2, ("us-west-2c", "on-demand"): 1}
        for pod in pods:
            node = sim.simulation.core.read_node(pod["spec"]["nodeName"]).metadata.labels
            assert node["topology.kubernetes.io/zone"] == pod["metadata"]["labels"]["gpufleet.io/zone"]
            assert node["topology.kubernetes.io/zone"] in ZONES
            assert node["karpenter.sh/capacity-type"] == "on-demand"
        wait_until(
            lambda: _md(sim).get("status", {}).get("readyReplicas") == 3, timeout=30, what="readyReplicas 3"
        )
        assert not _md(sim).get("status", {}).get("autoscaler", {}).get("active")  # KEDA drives, not gpufleet

        # Load gone: the queue drains, the HPA asks for minReplicaCount after its 5 s window.
        wait_until(
            lambda: _md(sim)["spec"]["replicas"] == 1, timeout=90, what="the HPA scaling the model to 1"
        )
        wait_until(lambda: len(_serving(sim)) == 1, timeout=90, interval=0.5, what="one replica left")
        assert any(message.startswith("New size: 1") for message in _rescales(cluster))
        assert _placed(cluster) == {("us-west-2a", "on-demand"): 1}
    finally:
        # KEDA deletes its HPA and takes its finalizer off while it runs; then the model goes.
        cluster.kubectl(
            "delete",
            "scaledobject",
            MODEL,
            "-n",
            NAMESPACE,
            "--ignore-not-found",
            "--timeout=60s",
            check=False,
        )
        cluster.kubectl("delete", "md", MODEL, "-n", NAMESPACE, "--ignore-not-found", check=False)
    # The HPA is owned by the ScaledObject: the garbage collector in kube-controller-manager deletes it
    # once KEDA has taken its finalizer off, which a loaded CI machine has taken more than 30 s to do.
    wait_until(lambda: _hpa(cluster) is None, timeout=120, what=f"{HPA} deleted with its ScaledObject")
    wait_until(lambda: not model_pods(sim, MODEL), timeout=120, what="the model's pods gone")
