"""fleetsim.gateway without a cluster: rule matching, the weighted pick, what the gateway answers itself,
and the load generator routing through it to a tiny SSE server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes.client import V1ObjectMeta, V1Service, V1ServicePort, V1ServiceSpec
from kubernetes.client.exceptions import ApiException

from fleetsim.clock import SimClock
from fleetsim.gateway import HTTPRouteRouter, SmoothWeighted, choose_rule
from fleetsim.loadgen import ConstantTrace, LoadGenerator, LoadReport, Pick
from tests.fleetsim.test_loadgen import FakeCoreV1, Stub, pod, serve

# --- the weighted pick -------------------------------------------------------------------------------


def picks(weights: list[int], n: int) -> list[int | None]:
    weighted = SmoothWeighted(weights)
    return [weighted.pick() for _ in range(n)]


def test_a_tenth_of_the_weight_gets_one_pick_in_any_ten() -> None:
    chosen = picks([90, 10], 1000)
    assert chosen.count(1) == 100
    assert all(chosen[i : i + 10].count(1) == 1 for i in range(len(chosen) - 9))


def test_every_window_of_the_total_weight_holds_each_share_exactly() -> None:
    chosen = picks([1, 2, 1], 400)
    for i in range(len(chosen) - 3):
        window = chosen[i : i + 4]
        assert (window.count(0), window.count(1), window.count(2)) == (1, 2, 1)


def test_picks_are_spread_out_not_in_blocks() -> None:
    # a plain weighted round-robin would send a, a, a, a, a, b, c
    assert picks([5, 1, 1], 7) == [0, 0, 1, 0, 2, 0, 0]


def test_weight_zero_is_never_chosen_and_none_positive_chooses_nothing() -> None:
    assert set(picks([0, 5, 0], 50)) == {1}
    assert picks([0, 0], 3) == [None, None, None]
    assert picks([], 1) == [None]


# --- the rule ----------------------------------------------------------------------------------------


def prefix(value: str, **more: Any) -> dict[str, Any]:
    return {"path": {"type": "PathPrefix", "value": value}, **more}


def test_a_rule_without_matches_takes_every_request() -> None:
    assert choose_rule([{"backendRefs": []}]) == 0
    assert choose_rule([{"matches": [{}]}]) == 0  # a match of nothing: the default PathPrefix "/"


def test_path_prefixes_match_whole_path_elements() -> None:
    assert choose_rule([{"matches": [prefix("/v1")]}]) == 0
    assert choose_rule([{"matches": [prefix("/v1/")]}]) == 0
    assert choose_rule([{"matches": [prefix("/v1/completions")]}]) == 0
    assert choose_rule([{"matches": [prefix("/v1/comp")]}]) is None
    assert choose_rule([{"matches": [prefix("/v2")]}]) is None


def test_exact_paths() -> None:
    exact = {"path": {"type": "Exact", "value": "/v1/completions"}}
    assert choose_rule([{"matches": [exact]}]) == 0
    assert choose_rule([{"matches": [{"path": {"type": "Exact", "value": "/v1"}}]}]) is None


def test_precedence_exact_then_longest_prefix_then_method_then_first_rule() -> None:
    exact = {"path": {"type": "Exact", "value": "/v1/completions"}}
    assert choose_rule([{"matches": [prefix("/v1/completions")]}, {"matches": [exact]}]) == 1
    assert choose_rule([{"matches": [prefix("/")]}, {"matches": [prefix("/v1")]}]) == 1
    assert choose_rule([{"matches": [prefix("/v1")]}, {"matches": [prefix("/v1", method="POST")]}]) == 1
    assert choose_rule([{"matches": [prefix("/v1")]}, {"matches": [prefix("/v1")]}]) == 0
    # any one match of a rule is enough
    assert choose_rule([{"matches": [prefix("/v2"), prefix("/v1")]}]) == 0


def test_methods_headers_queries_and_regular_expressions_the_load_does_not_satisfy() -> None:
    assert choose_rule([{"matches": [prefix("/", method="GET")]}]) is None
    assert choose_rule([{"matches": [prefix("/", headers=[{"name": "x-canary", "value": "1"}])]}]) is None
    assert choose_rule([{"matches": [prefix("/", queryParams=[{"name": "v", "value": "2"}])]}]) is None
    assert choose_rule([{"matches": [{"path": {"type": "RegularExpression", "value": "/v1/.*"}}]}]) is None
    # ... while a later rule without them takes the request
    header_rule = {"matches": [prefix("/", headers=[{"name": "x-canary", "value": "1"}])]}
    assert choose_rule([header_rule, {"matches": [prefix("/")]}]) == 1


# --- the router over a route and Services -------------------------------------------------------------


class FakeCustom:
    """The one CustomObjectsApi call the router makes."""

    def __init__(self, routes: dict[str, dict[str, Any]]) -> None:
        self.routes = routes
        self.fail = False

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any]:
        assert (group, version, plural) == ("gateway.networking.k8s.io", "v1", "httproutes")
        if self.fail:
            raise ApiException(status=500, reason="Internal Server Error")
        if (namespace, name) not in {("llm", n) for n in self.routes}:
            raise ApiException(status=404, reason="Not Found")
        return self.routes[name]


def backend_service(name: str, target_port: int = 8000) -> V1Service:
    return V1Service(
        metadata=V1ObjectMeta(name=name, namespace="llm"),
        spec=V1ServiceSpec(
            selector={"app": "m", "slot": name[-1]},
            ports=[V1ServicePort(name="http", port=8000, target_port=target_port)],
        ),
    )


def ref(name: str, weight: int | None = None, **more: Any) -> dict[str, Any]:
    found = {"group": "", "kind": "Service", "name": name, "port": 8000, **more}
    return found if weight is None else {**found, "weight": weight}


def route(*refs: dict[str, Any], matches: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"backendRefs": list(refs)}
    if matches is not None:
        rule["matches"] = matches
    return {"spec": {"parentRefs": [{"name": "gw"}], "rules": [rule]}}


def router(routes: dict[str, dict[str, Any]], ready_a: int = 2, ready_b: int = 0) -> HTTPRouteRouter:
    pods = [pod(f"a{i}", ip=f"127.0.1.{i + 1}", labels={"slot": "a"}) for i in range(ready_a)]
    pods += [pod(f"b{i}", ip=f"127.0.2.{i + 1}", labels={"slot": "b"}) for i in range(ready_b)]
    pods.append(pod("b-starting", ip="127.0.2.99", labels={"slot": "b"}, ready=False))
    core = FakeCoreV1([backend_service("m-a"), backend_service("m-b")], pods)
    gateway = HTTPRouteRouter(FakeCustom(routes), core, "llm", "m")
    gateway.refresh()
    return gateway


def test_the_share_of_a_backend_without_endpoints_fails_as_a_gateway_503() -> None:
    gateway = router({"m": route(ref("m-a", 90), ref("m-b", 10))})
    chosen = [gateway.pick() for _ in range(100)]
    failed = [p for p in chosen if p.endpoint is None]
    assert failed == [Pick(None, "m-b", "no_endpoints")] * 10
    served = [p for p in chosen if p.endpoint is not None]
    assert {p.service for p in served} == {"m-a"}
    # round-robin over m-a's two ready pods
    urls = [p.endpoint for p in served]
    assert urls.count("http://127.0.1.1:8000") == urls.count("http://127.0.1.2:8000") == 45


def test_weights_default_to_one_and_zero_gets_nothing() -> None:
    gateway = router({"m": route(ref("m-a"), ref("m-b", 0))}, ready_b=1)
    assert [(b.service, b.weight) for b in gateway.table().backends] == [("m-a", 1), ("m-b", 0)]
    assert {gateway.pick().service for _ in range(20)} == {"m-a"}


def test_both_backends_with_endpoints_share_by_weight() -> None:
    gateway = router({"m": route(ref("m-a", 3), ref("m-b", 1))}, ready_b=1)
    chosen = [gateway.pick() for _ in range(40)]
    assert all(p.endpoint is not None for p in chosen)
    assert [p.service for p in chosen].count("m-b") == 10


def test_a_missing_route_or_no_matching_rule_is_a_404() -> None:
    assert router({}).pick() == Pick(None, error="no_route")
    unmatched = route(ref("m-a", 1), matches=[prefix("/v2")])
    assert router({"m": unmatched}).pick() == Pick(None, error="no_route")


def test_invalid_backends_get_the_specs_500_for_their_share() -> None:
    refs = [ref("m-a", 1), ref("m-gone", 1), ref("pool", 1, group="x.io", kind="Pool")]
    refs.append(ref("m-b", 1, namespace="other"))  # exists here, but the ref names another namespace
    gateway = router({"m": route(*refs)}, ready_b=1)
    chosen = [gateway.pick() for _ in range(40)]
    assert {p.endpoint is not None for p in chosen if p.service == "m-a"} == {True}
    for name in ("m-gone", "pool", "m-b"):
        assert [p for p in chosen if p.service == name] == [Pick(None, name, "invalid_backend")] * 10
    # a matching rule with nothing to send to
    assert router({"m": route(ref("m-a", 0))}).pick() == Pick(None, error="invalid_backend")
    assert router({"m": route()}).pick() == Pick(None, error="invalid_backend")


def test_refresh_keeps_the_round_robin_going_and_the_last_table_on_errors() -> None:
    routes = {"m": route(ref("m-a", 90), ref("m-b", 10))}
    gateway = router(routes)
    first = [gateway.pick().service for _ in range(5)]
    gateway.refresh()  # same weights: the sequence goes on, so 1 in 10 stays exact across refreshes
    rest = [gateway.pick().service for _ in range(5)]
    assert (first + rest).count("m-b") == 1
    custom = gateway.custom
    assert isinstance(custom, FakeCustom)
    custom.fail = True
    with pytest.raises(ApiException):
        gateway.refresh()
    assert [(b.service, b.weight) for b in gateway.table().backends] == [("m-a", 90), ("m-b", 10)]
    custom.fail = False
    routes["m"] = route(ref("m-a", 50), ref("m-b", 50))  # the operator's next step
    gateway.refresh()
    assert [gateway.pick().service for _ in range(10)].count("m-b") == 5


# --- the load generator through the gateway ---------------------------------------------------------


def run_routed(weights: tuple[int, int]) -> LoadReport:
    async def scenario() -> LoadReport:
        async with serve(Stub()) as url:
            port = int(url.rsplit(":", 1)[1])
            core = FakeCoreV1(
                [backend_service("m-a", target_port=port), backend_service("m-b", target_port=port)],
                [pod("a0", ip="127.0.0.1", labels={"slot": "a"})],
            )
            custom = FakeCustom({"m": route(ref("m-a", weights[0]), ref("m-b", weights[1]))})
            gateway = HTTPRouteRouter(custom, core, "llm", "m")
            generator = LoadGenerator(
                gateway, "m", ConstantTrace(rate=5), SimClock(100), max_tokens=4, refresh_s=2.0
            )
            return await generator.run(20.0)

    return asyncio.run(scenario())


def test_the_load_generator_counts_each_backends_share_and_the_failed_one() -> None:
    report = run_routed((3, 1))
    assert report.sent > 40
    assert sum(report.routed.values()) == report.sent
    assert abs(report.routed["m-a"] - 3 * report.routed["m-b"]) <= 3  # 3 of any 4 consecutive requests
    assert report.ok == report.routed["m-a"]
    assert report.errors == {"no_endpoints": report.routed["m-b"]}


def test_without_a_router_nothing_is_routed() -> None:
    async def scenario() -> LoadReport:
        async with serve(Stub()) as url:
            generator = LoadGenerator(lambda: [url], "m", ConstantTrace(rate=5), SimClock(100), max_tokens=4)
            return await generator.run(10.0)

    report = asyncio.run(scenario())
    assert report.ok == report.sent > 0
    assert report.routed == {}
