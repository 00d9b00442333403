"""A gateway in front of the fleet: the load generator's requests routed by an HTTPRoute's weights.

With a canary behind Gateway API traffic splitting, clients reach the model
through a gateway that reads an HTTPRoute (gateway.networking.k8s.io/v1) and
sends each request to one of the matching rule's backendRefs in proportion to
their weights. `HTTPRouteRouter` does that for `LoadGenerator` (a `Router`):

- The rule: the one whose match wins for the load generator's request
  (`POST /v1/completions`, no query string), by the spec's precedence: an
  Exact path before a PathPrefix, a longer prefix before a shorter one, a
  method match before none; the first such rule on ties. A rule without
  matches matches everything (the API server stores the default, PathPrefix
  "/"). PathPrefix matches whole path elements ("/v1" matches
  "/v1/completions", "/v1/comp" does not). A match with header or query
  parameter conditions never matches: the generator sends no such headers or
  parameters, so a gateway would not match them either; RegularExpression
  paths (implementation-specific) are not matched. Hostnames and parentRefs
  are not checked: this gateway takes every route it is pointed at.
- The backend: smooth weighted round-robin over the rule's backendRefs with a
  positive weight (default 1; 0 is never chosen), so a weight of 10 in 100
  gets exactly one request in any ten consecutive ones; then round-robin over
  that backend Service's ready endpoints (`ready_endpoints`).

Requests the gateway answers itself are failures, counted by kind in the load
report as a client would count the gateway's status:
- "no_endpoints": the chosen Service has no ready endpoint. Envoy answers 503
  ("no healthy upstream") for exactly that share; the spec says a gateway
  SHOULD. It is not routed elsewhere, and the name is the one the load
  generator uses for a Service without ready pods, so the figures compare.
- "invalid_backend": the chosen backendRef is not a core Service, is in
  another namespace (ReferenceGrants are not read), the Service does not
  exist, or the rule has no backendRef with a positive weight: the spec's 500
  for the share of an invalid backend.
- "no_route": the HTTPRoute does not exist or no rule matches: a gateway's 404.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from fleetsim.loadgen import Pick, ready_endpoints

GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
PATH, METHOD = "/v1/completions", "POST"


@dataclass(frozen=True)
class Backend:
    """One backendRef of the chosen rule. `endpoints` is None when the ref is invalid (not a core
    Service, or no such Service): the gateway answers 500 for its share."""

    service: str
    weight: int
    endpoints: tuple[str, ...] | None


@dataclass(frozen=True)
class RouteTable:
    """What the gateway knows after a read: the chosen rule's backends; `rule` is None without a route
    or without a matching rule (every request gets a 404)."""

    rule: int | None
    backends: tuple[Backend, ...] = ()


def _path_rank(path: Mapping[str, Any], request_path: str) -> tuple[int, int] | None:
    """(exact, prefix length) of a path match that matches `request_path`, else None."""
    kind = path.get("type", "PathPrefix")
    value = str(path.get("value", "/"))
    if kind == "Exact":
        return (1, len(value)) if request_path == value else None
    if kind == "PathPrefix":
        prefix = value.rstrip("/")  # "/v1/" and "/v1" are the same prefix
        if prefix in ("", request_path) or request_path.startswith(prefix + "/"):
            return (0, len(value))
    return None


def match_rank(match: Mapping[str, Any], request_path: str, method: str) -> tuple[int, int, int] | None:
    """The precedence of one HTTPRouteMatch for the request (higher wins), or None if it does not match."""
    if match.get("headers") or match.get("queryParams"):
        return None
    wanted = match.get("method")
    if wanted is not None and wanted != method:
        return None
    path = _path_rank(match.get("path") or {}, request_path)
    if path is None:
        return None
    return (*path, 1 if wanted is not None else 0)


def choose_rule(
    rules: Sequence[Mapping[str, Any]], request_path: str = PATH, method: str = METHOD
) -> int | None:
    """The index of the rule that takes the request, or None (a 404)."""
    best: tuple[tuple[int, int, int], int] | None = None
    for index, rule in enumerate(rules):
        matches = rule.get("matches") or [{}]  # none: PathPrefix "/", every request
        ranks = [r for m in matches if (r := match_rank(m, request_path, method)) is not None]
        if ranks and (best is None or max(ranks) > best[0]):  # strictly higher: the first rule wins ties
            best = (max(ranks), index)
    return None if best is None else best[1]


class SmoothWeighted:
    """Smooth weighted round-robin (as nginx's upstream): deterministic, and spread out, so a backend with
    weight w of W total gets w picks in any W consecutive ones, never in bursts."""

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = tuple(weights)
        self._total = sum(w for w in self.weights if w > 0)
        self._current = [0] * len(self.weights)

    def pick(self) -> int | None:
        """The index of the next backend, or None when no weight is positive."""
        if self._total == 0:
            return None
        best = None
        for i, weight in enumerate(self.weights):
            if weight <= 0:
                continue
            self._current[i] += weight
            if best is None or self._current[i] > self._current[best]:
                best = i
        assert best is not None
        self._current[best] -= self._total
        return best


class HTTPRouteRouter:
    """The load generator's gateway for HTTPRoute `route` in `namespace` (a fleetsim.loadgen.Router).

    `custom` is a kubernetes CustomObjectsApi, `core` a CoreV1Api. `refresh` reads the route and the
    ready endpoints of its backend Services (blocking; LoadGenerator calls it in a thread); `pick`
    chooses from what the last refresh read."""

    def __init__(
        self, custom: Any, core: Any, namespace: str, route: str, path: str = PATH, method: str = METHOD
    ) -> None:
        self.custom, self.core = custom, core
        self.namespace, self.route = namespace, route
        self.path, self.method = path, method
        self._lock = threading.Lock()  # refresh swaps the table from a thread while pick reads it
        self._table = RouteTable(None)
        self._weighted = SmoothWeighted(())
        self._next: dict[str, int] = {}

    def read(self) -> RouteTable:
        """The route as the gateway would use it now."""
        try:
            route = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.route
            )
        except ApiException as error:
            if error.status == 404:
                return RouteTable(None)
            raise
        rules = route.get("spec", {}).get("rules") or []
        index = choose_rule(rules, self.path, self.method)
        if index is None:
            return RouteTable(None)
        backends = []
        for ref in rules[index].get("backendRefs") or []:
            weight = int(ref.get("weight", 1))
            service = str(ref["name"])
            is_service = ref.get("group", "") == "" and ref.get("kind", "Service") == "Service"
            # Another namespace needs a ReferenceGrant, which this gateway does not read: refused.
            here = ref.get("namespace", self.namespace) == self.namespace
            endpoints = self._endpoints(service) if is_service and here and weight > 0 else None
            backends.append(Backend(service, weight, endpoints))
        return RouteTable(index, tuple(backends))

    def _endpoints(self, service: str) -> tuple[str, ...] | None:
        try:
            return tuple(ready_endpoints(self.core, self.namespace, service))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def table(self) -> RouteTable:
        with self._lock:
            return self._table

    def refresh(self) -> None:
        table = self.read()
        with self._lock:
            weights = [b.weight for b in table.backends]
            # Same backends and weights: the round-robin goes on where it was, so shares stay exact.
            if [(b.service, b.weight) for b in table.backends] != [
                (b.service, b.weight) for b in self._table.backends
            ]:
                self._weighted = SmoothWeighted(weights)
            self._table = table

    def pick(self) -> Pick:
        with self._lock:
            table, weighted = self._table, self._weighted
            if table.rule is None:
                return Pick(None, error="no_route")
            chosen = weighted.pick()
            if chosen is None:
                return Pick(None, error="invalid_backend")
            backend = table.backends[chosen]
            if backend.endpoints is None:
                return Pick(None, backend.service, "invalid_backend")
            if not backend.endpoints:
                return Pick(None, backend.service, "no_endpoints")
            turn = self._next.get(backend.service, 0)
            self._next[backend.service] = turn + 1
            return Pick(backend.endpoints[turn % len(backend.endpoints)], backend.service)
