"""Load through a gateway that routes by an HTTPRoute, on the simulated fleet (fleetsim.gateway).

The route splits 3:1 between the model's Service, whose pods serve, and a Service with no pods: the
model's share is answered, the other share fails as a real gateway's 503 ("no_endpoints") and is not
quietly sent to the pods that could have served it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleetsim.background import BackgroundSimulation
from fleetsim.gateway import GROUP, PLURAL, VERSION
from tests.conftest import Cluster, wait_until
from tests.e2e.conftest import MODEL, NAMESPACE
from tests.e2e.pods import model_pods, routed_load, serving

pytestmark = pytest.mark.e2e

ROUTE = f"{MODEL}-gateway-test"
EMPTY = f"{MODEL}-no-pods"


@pytest.fixture
def route(sim: BackgroundSimulation, gateway_api_crds: Cluster) -> Iterator[str]:
    core, custom = sim.simulation.core, sim.simulation.custom
    core.create_namespaced_service(
        NAMESPACE,
        {
            "metadata": {"name": EMPTY},
            "spec": {"selector": {"app": EMPTY}, "ports": [{"name": "http", "port": 8000}]},
        },
    )
    refs = [
        {"group": "", "kind": "Service", "name": MODEL, "port": 8000, "weight": 3},
        {"group": "", "kind": "Service", "name": EMPTY, "port": 8000, "weight": 1},
    ]
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE},
        "spec": {"parentRefs": [{"name": "inference-gateway"}], "rules": [{"backendRefs": refs}]},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    try:
        yield ROUTE
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, ROUTE)
        core.delete_namespaced_service(EMPTY, NAMESPACE)


def test_each_backend_gets_its_weight_and_the_one_without_pods_fails(
    sim: BackgroundSimulation, route: str
) -> None:
    wait_until(
        lambda: sum(serving(p) for p in model_pods(sim, MODEL)) >= 1, timeout=120, what="a serving pod"
    )
    load = routed_load(sim, NAMESPACE, MODEL, route)
    report = sim.call(load.run(30), timeout=120)
    print(f"routed: {dict(report.routed)}, errors: {dict(report.errors)}")
    assert report.sent > 20
    assert sum(report.routed.values()) == report.sent
    assert abs(report.routed[MODEL] - 3 * report.routed[EMPTY]) <= 3  # 3 of any 4 consecutive requests
    assert report.ok == report.routed[MODEL]
    assert dict(report.errors) == {"no_endpoints": report.routed[EMPTY]}
