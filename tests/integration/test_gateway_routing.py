"""HTTPRoutes on the real API server with the Gateway API's own CRDs (pinned,
hack/install-gateway-api-crds.sh), read back by fleetsim's gateway (fleetsim.gateway): the weights the
operator writes for a canary are kept as written, an impossible weight is refused, and the router routes by
what the API server stored.

No pods run here, so the backend Services have no ready endpoints: every request routed to one counts as a
failure ("no_endpoints", a real gateway's 503), which is what these tests count.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fleetsim.clock import SimClock
from fleetsim.gateway import GROUP, PLURAL, VERSION, HTTPRouteRouter
from fleetsim.loadgen import ConstantTrace, LoadGenerator, Pick
from tests.conftest import Cluster

pytestmark = pytest.mark.integration

MODEL = "llama"


def backend_ref(slot: str, weight: int) -> dict[str, Any]:
    # The shape the operator writes: every field explicit, so the stored object equals it.
    return {"group": "", "kind": "Service", "name": f"{MODEL}-{slot}", "port": 8000, "weight": weight}


def http_route(name: str, refs: list[dict[str, Any]], path: str = "/v1") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        # The Gateway need not exist: the API server does not resolve references, a gateway would.
        "spec": {
            "parentRefs": [{"name": "inference-gateway"}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}], "backendRefs": refs}],
        },
    }


@pytest.fixture
def apis(gateway_api_crds: Cluster, api: client.ApiClient, namespace: str) -> tuple[Any, Any]:
    """CustomObjectsApi and CoreV1Api, with the two slot Services of the model (selecting no pods)."""
    core = client.CoreV1Api(api)
    for slot in ("a", "b"):
        core.create_namespaced_service(
            namespace,
            {
                "metadata": {"name": f"{MODEL}-{slot}"},
                "spec": {
                    "selector": {"app": MODEL, "slot": slot},
                    "ports": [{"name": "http", "port": 8000, "targetPort": "http"}],
                },
            },
        )
    return client.CustomObjectsApi(api), core


def test_the_weights_are_stored_as_written_and_the_router_splits_by_them(
    apis: tuple[Any, Any], namespace: str
) -> None:
    custom, core = apis
    refs = [backend_ref("a", 90), backend_ref("b", 10)]
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, http_route("r", refs))
    # Kept exactly: an operator comparing what it wrote with what is stored sees no drift.
    assert created["spec"]["rules"][0]["backendRefs"] == refs

    router = HTTPRouteRouter(custom, core, namespace, "r")
    router.refresh()
    table = router.table()
    assert table.rule == 0
    assert [(b.service, b.weight, b.endpoints) for b in table.backends] == [
        ("llama-a", 90, ()),
        ("llama-b", 10, ()),
    ]
    chosen = [router.pick() for _ in range(100)]
    assert Counter(p.service for p in chosen) == {"llama-a": 90, "llama-b": 10}
    # No pods: each share fails as the gateway's 503, none is quietly sent elsewhere.
    assert {p.error for p in chosen} == {"no_endpoints"}
    assert all(p.endpoint is None for p in chosen)


def test_the_schema_refuses_weights_out_of_range(apis: tuple[Any, Any], namespace: str) -> None:
    custom, _ = apis
    for i, weight in enumerate((-1, 1_000_001)):
        route = http_route(f"bad-{i}", [backend_ref("a", 100), backend_ref("b", weight)])
        with pytest.raises(ApiException) as refused:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, route)
        assert refused.value.status == 422
        assert "spec.rules[0].backendRefs[1].weight" in str(refused.value.body)
    # ... while the bounds themselves are accepted: 0 (no traffic) and 1,000,000.
    edges = [backend_ref("a", 0), backend_ref("b", 1_000_000)]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, http_route("edges", edges))


def test_defaults_missing_routes_and_unmatched_rules(apis: tuple[Any, Any], namespace: str) -> None:
    custom, core = apis
    # A rule without matches and a backendRef without weight: the stored defaults, PathPrefix "/" and 1.
    bare = http_route("bare", [{"name": "llama-a", "port": 8000}, {"name": "llama-gone", "port": 8000}])
    del bare["spec"]["rules"][0]["matches"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, bare)
    router = HTTPRouteRouter(custom, core, namespace, "bare")
    router.refresh()
    assert [(b.service, b.weight) for b in router.table().backends] == [("llama-a", 1), ("llama-gone", 1)]
    # A Service that does not exist is an invalid backend: the spec's 500 for its half.
    assert Counter(router.pick() for _ in range(4)) == {
        Pick(None, "llama-a", "no_endpoints"): 2,
        Pick(None, "llama-gone", "invalid_backend"): 2,
    }

    elsewhere = http_route("elsewhere", [backend_ref("a", 1)], path="/v2")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, elsewhere)
    for name in ("elsewhere", "absent"):
        router = HTTPRouteRouter(custom, core, namespace, name)
        router.refresh()
        assert router.pick() == Pick(None, error="no_route")


def test_the_load_generator_counts_the_failed_shares_and_follows_a_new_step(
    apis: tuple[Any, Any], namespace: str
) -> None:
    custom, core = apis
    route = http_route("canary", [backend_ref("a", 90), backend_ref("b", 10)])
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, route)
    router = HTTPRouteRouter(custom, core, namespace, "canary")
    generator = LoadGenerator(router, MODEL, ConstantTrace(rate=20), SimClock(20), refresh_s=1.0)

    report = asyncio.run(generator.run(10.0))
    assert report.sent > 100
    assert sum(report.routed.values()) == report.sent
    assert abs(report.routed["llama-b"] - report.sent / 10) <= 1
    assert report.ok == 0
    assert report.errors == {"no_endpoints": report.sent}

    # The operator's next step rewrites the weights; the next refresh routes by them.
    step = copy.deepcopy(route)
    step["spec"]["rules"][0]["backendRefs"] = [backend_ref("a", 50), backend_ref("b", 50)]
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "canary", {"spec": step["spec"]})
    second = asyncio.run(generator.run(10.0))
    b_share = second.routed["llama-b"] - report.routed["llama-b"]
    a_share = second.routed["llama-a"] - report.routed["llama-a"]
    # The first refresh of the second run reads 50/50 before any request goes.
    assert abs(a_share - b_share) <= 1
