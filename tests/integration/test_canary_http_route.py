"""A canary's exact weight through a Gateway API HTTPRoute, on the real API server with the real
Gateway API CRDs (hack/install-gateway-api-crds.sh, pinned): the backendRefs the operator writes pass
the CRD's schema and CEL rules, a route written by someone else in between is refused by the API
server (409) and written again, a GitOps sync that sets the route back is undone, and `gpufleet
rollback` takes the canary's weight away at once.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from kubernetes import client

from gpufleet.adapters.kube import KubeError, RestKubeApi
from tests.conftest import Cluster, OperatorProcess, wait_until
from tests.integration.test_canary import (
    NAME,
    NEW,
    OLD,
    apply,
    cli,
    model,
    settle_stable,
    settle_until,
    status,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fleet", "gateway_api_crds")]

ROUTE = "chat"
STEPS = [{"weight": 10, "pauseSeconds": 600}]


def user_route(namespace: str, name: str = ROUTE) -> dict[str, Any]:
    """The route as its owner writes it: the rule that serves the model points at its Service."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": "inference-gateway"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/docs"}}],
                    "backendRefs": [{"name": "docs", "port": 80}],
                },
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                    "backendRefs": [{"name": NAME, "port": 8000}],
                },
            ],
        },
    }


def routed_model(image: str, route_name: str = ROUTE) -> dict[str, Any]:
    doc = model(image, STEPS)
    doc["spec"]["rollout"]["httpRoute"] = {"name": route_name}
    return doc


def route(cluster: Cluster, namespace: str, name: str = ROUTE) -> dict[str, Any]:
    return cluster.get_json("httproute", name, "-n", namespace)


def weights(cluster: Cluster, namespace: str, name: str = ROUTE) -> dict[str, int]:
    rule = route(cluster, namespace, name)["spec"]["rules"][1]
    return {ref["name"]: ref.get("weight", 1) for ref in rule["backendRefs"]}


def canary_at_step_one(core: client.CoreV1Api, cluster: Cluster, namespace: str) -> None:
    """Release revision 2 and mark pods Ready until step 1's weight is reached (its pause running)."""
    apply(cluster, namespace, routed_model(NEW))
    settle_until(
        core,
        cluster,
        namespace,
        lambda s: (s.get("rollout") or {}).get("phase") == "Paused",
        "step 1 reached",
    )


def traffic_condition(cluster: Cluster, namespace: str) -> tuple[str, str]:
    found = {c["type"]: c for c in status(cluster, namespace).get("conditions") or []}
    condition = found.get("TrafficRouted") or {}
    return condition.get("status", ""), condition.get("reason", "")


def test_the_route_carries_the_canarys_exact_weight_and_survives_edits_and_rollback(
    operator: OperatorProcess, namespace: str, api: client.ApiClient
) -> None:
    cluster, core = operator.cluster, client.CoreV1Api(api)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(user_route(namespace)))
    apply(cluster, namespace, routed_model(OLD))
    settle_stable(core, cluster, namespace, 1)
    a, b = f"{NAME}-a", f"{NAME}-b"
    wait_until(lambda: weights(cluster, namespace) == {a: 100, b: 0}, timeout=30, what="the route at slot a")
    assert traffic_condition(cluster, namespace) == ("True", "BackendWeights")
    written = route(cluster, namespace)["spec"]["rules"]
    assert written[0]["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "docs", "port": 80, "weight": 1}
    ]
    assert written[1]["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    services = {s: cluster.get_json("service", s, "-n", namespace)["spec"]["selector"] for s in (a, b)}
    assert all(sel["gpufleet.io/model-deployment"] == NAME for sel in services.values())
    assert (
        services[a]["gpufleet.io/revision-hash"] == services[b]["gpufleet.io/revision-hash"]
    )  # one revision

    canary_at_step_one(core, cluster, namespace)
    # Two replicas: one canary beside one stable replica is 50 % by replica ratio, 10 % on the route.
    assert weights(cluster, namespace) == {a: 90, b: 10}
    rollout = status(cluster, namespace)["rollout"]
    assert (rollout["weight"], rollout["canaryReplicas"], rollout["stableReplicas"]) == (10, 1, 1)
    canary_selector = cluster.get_json("service", b, "-n", namespace)["spec"]["selector"]
    assert canary_selector["gpufleet.io/revision-hash"] != services[a]["gpufleet.io/revision-hash"]

    # Written with the version it read: a route changed since is refused by the API server.
    kube = RestKubeApi(api)
    stale = route(cluster, namespace)
    cluster.kubectl("annotate", "httproute", ROUTE, "-n", namespace, "touched=yes")
    rules = copy.deepcopy(stale["spec"]["rules"])
    with pytest.raises(KubeError) as refused:
        kube.patch(
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            namespace,
            ROUTE,
            {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]}, "spec": {"rules": rules}},
        )
    assert refused.value.status == 409

    # A GitOps sync puts the rule back at the model's Service: the operator writes the weights again.
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(user_route(namespace)))
    wait_until(
        lambda: weights(cluster, namespace) == {a: 90, b: 10}, timeout=45, what="the weights written again"
    )

    # The operator killed mid-rollout: the route stays as it is, and the next operator keeps it so.
    version = route(cluster, namespace)["metadata"]["resourceVersion"]
    operator.restart(kill=True)
    wait_until(lambda: traffic_condition(cluster, namespace)[0] == "True", timeout=30, what="TrafficRouted")
    assert route(cluster, namespace)["metadata"]["resourceVersion"] == version

    # Renamed in one edit mid-canary: the old route goes back to the model's Service, the new one
    # gets the weights, and never both at once.
    renamed = f"{ROUTE}-v2"
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(user_route(namespace, renamed)))
    apply(cluster, namespace, routed_model(NEW, renamed))
    wait_until(
        lambda: (
            weights(cluster, namespace, renamed) == {a: 90, b: 10}
            and status(cluster, namespace).get("httpRoute") == renamed
        ),
        timeout=30,
        what="the new route weighted",
    )
    assert weights(cluster, namespace) == {NAME: 1}

    code, out = cli(cluster, "rollback", NAME, "-n", namespace)
    assert code == 0, out
    wait_until(
        lambda: weights(cluster, namespace, renamed) == {a: 100, b: 0},
        timeout=30,
        what="the canary's weight gone",
    )


def test_a_route_that_does_not_exist_is_reported_and_the_rollout_goes_by_replica_ratio(
    operator: OperatorProcess, namespace: str, api: client.ApiClient
) -> None:
    cluster, core = operator.cluster, client.CoreV1Api(api)
    apply(cluster, namespace, routed_model(OLD))
    settle_stable(core, cluster, namespace, 1)
    wait_until(
        lambda: traffic_condition(cluster, namespace) == ("False", "HTTPRouteNotFound"),
        timeout=30,
        what="TrafficRouted=False HTTPRouteNotFound",
    )
    canary_at_step_one(core, cluster, namespace)
    assert status(cluster, namespace)["rollout"]["weight"] == 50  # 1 of 2 ready replicas
    events = cluster.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={NAME}")
    assert "HTTPRouteNotFound" in {e["reason"] for e in events["items"]}
