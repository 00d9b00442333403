"""Canary rollouts on the simulated fleet, with real Prometheus: the stories a platform engineer runs.

Each test brings up its own Llama 3 8B ModelDeployment (four on-demand replicas, analysis every 5 s
after 30 requests per revision) under constant load, changes its image, and watches. The bad builds
are fleetsim's (tests/e2e/conftest.py `builds`): `-errors` answers 20 % of completions with HTTP 500,
`-slow` prefills 3x slower, `-stuck` never gets healthy. What they depend on: the simulator's vLLM
exports http_requests_total and the TTFT/ITL histograms as vLLM 0.34.0 does (fleetsim.vllm_server).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from fleetsim.background import BackgroundSimulation
from fleetsim.loadgen import LoadGenerator, LoadReport
from gpufleet.cli import main
from tests.conftest import Cluster, OperatorProcess, wait_until
from tests.e2e.conftest import HERE, NAMESPACE
from tests.e2e.pods import constant_load, model_deployment, model_pods, routed_load, serving

pytestmark = pytest.mark.e2e

SAMPLE = HERE / "llama-3-8b-canary.yaml"
GOOD, ERRORS, SLOW, STUCK = (
    "vllm/vllm-openai:v0.34.1",
    "vllm/vllm-openai:v0.34.0-errors",
    "vllm/vllm-openai:v0.34.0-slow",
    "vllm/vllm-openai:v0.34.0-stuck",
)
ERROR_SHARE = 0.2  # of ERRORS, as conftest declares it
RATE = 0.5  # requests per simulated second: 25 a second real at the e2e time scale


@dataclass
class Story:
    operator: OperatorProcess
    sim: BackgroundSimulation
    name: str
    load: LoadGenerator
    running: concurrent.futures.Future[LoadReport]

    def md(self) -> dict[str, Any]:
        return model_deployment(self.sim, NAMESPACE, self.name)

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = self.md().get("status") or {}
        return found

    def set_image(self, image: str) -> None:
        patch = yaml.safe_dump({"spec": {"engine": {"image": image}}})
        self.operator.cluster.kubectl(
            "patch", "md", self.name, "-n", NAMESPACE, "--type", "merge", "-p", patch
        )

    def wait(self, check: Callable[[dict[str, Any]], Any], what: str, timeout: float = 90) -> Any:
        return wait_until(lambda: check(self.status()), timeout=timeout, interval=0.5, what=what)

    def ready(self) -> list[dict[str, Any]]:
        return [p for p in model_pods(self.sim, self.name) if serving(p)]

    def events(self, reason: str) -> list[str]:
        items = self.operator.cluster.get_json(
            "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={self.name},reason={reason}"
        )["items"]
        return [e["message"] for e in items]


def revision(status: dict[str, Any], which: str) -> int | None:
    return ((status.get("revisions") or {}).get(which) or {}).get("revision")


def start(operator: OperatorProcess, sim: BackgroundSimulation, name: str) -> Story:
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["metadata"]["name"] = name
    operator.cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump(doc))
    load = constant_load(sim, NAMESPACE, name, rate=RATE, max_tokens=16)
    story = Story(operator, sim, name, load, concurrent.futures.Future())
    story.wait(lambda s: revision(s, "stable") == 1 and s.get("readyReplicas") == 4, "revision 1 serving")
    story.running = asyncio.run_coroutine_threadsafe(load.run(100_000), sim.loop)
    wait_until(lambda: load.report().ok >= 50, timeout=30, what="the load flowing")
    return story


@pytest.fixture
def story(
    operator: OperatorProcess, sim: BackgroundSimulation, request: pytest.FixtureRequest
) -> Iterator[Story]:
    name = f"canary-{request.node.name.split('_')[-1]}"  # each test's last word: request, interval, ...
    found = start(operator, sim, name)
    try:
        yield found
    finally:
        found.running.cancel()
        operator.cluster.kubectl("delete", "md", name, "-n", NAMESPACE, "--wait=false", check=False)


def cli(operator: OperatorProcess, *args: str) -> str:
    """The command line, run again as a user would when it says the model changed under it."""

    def once() -> tuple[int, str] | None:
        out = io.StringIO()
        code = main([*args, "-n", NAMESPACE, "--kubeconfig", str(operator.cluster.kubeconfig)], out)
        return None if "run the command again" in out.getvalue() else (code, out.getvalue())

    code, text = wait_until(once, timeout=30, what=f"gpufleet {args[0]} without a concurrent change")
    assert code == 0, text
    return text


def test_good_promoted_then_rolled_back_from_the_warm_standby_with_no_failed_request(story: Story) -> None:
    story.set_image(GOOD)
    weights = set()

    def promoted(status: dict[str, Any]) -> bool:
        rollout = status.get("rollout") or {}
        if rollout.get("weight"):
            weights.add((rollout["step"], rollout["weight"]))
        analysis = status.get("analysis") or {}
        if analysis.get("verdict") == "Passed":
            judged.append(analysis)
        return revision(status, "stable") == 2

    judged: list[dict[str, Any]] = []
    story.wait(promoted, "revision 2 promoted", timeout=120)
    # 25 % of 4 replicas is one, 50 % two: both steps were held at their weight.
    assert {(1, 25), (2, 50)} <= weights
    assert judged, "a step ended on a Passed judgement"
    both = judged[-1]
    assert both["canary"]["requests"] >= 30
    assert both["stable"]["requests"] >= 30
    assert both["canary"]["ttftP95Seconds"] > 0
    status = story.status()
    assert status["revisions"]["standby"]["revision"] == 1
    assert status["revisions"]["standby"]["replicas"] == 1

    out = cli(story.operator, "rollback", story.name)
    assert "rolled back to revision 1" in out
    story.wait(
        lambda s: revision(s, "stable") == 3 and s.get("readyReplicas", 0) >= 4 and "rollout" not in s,
        "the warm revision restored",
    )
    assert story.events("RestoringFromStandby")
    report = story.load.report()
    print(f"good revision, promotion and rollback: {report.sent} requests, errors {dict(report.errors)}")
    assert report.error_count == 0


def test_a_revision_answering_errors_is_rolled_back_within_an_interval(story: Story) -> None:
    before = story.load.report()
    story.set_image(ERRORS)
    window: dict[str, int] = {}

    def rolled_back(status: dict[str, Any]) -> dict[str, Any] | None:
        rollout = status.get("rollout") or {}
        if rollout.get("canaryReplicas") and "serving" not in window:
            window["serving"] = story.load.report().sent
        if rollout.get("phase") != "Aborted":
            return None
        window["rolled back"] = story.load.report().sent
        return status

    status = story.wait(rolled_back, "the canary rolled back")
    analysis = status["analysis"]
    assert analysis["verdict"] == "Failed"
    assert "error rate" in analysis["message"]
    (warning,) = story.events("CanaryFailed")
    assert "limit 1.0 %" in warning
    progressing = {c["type"]: c for c in status["conditions"]}["Progressing"]
    assert progressing["reason"] == "CanaryFailed"
    story.wait(lambda s: s.get("readyReplicas") == 4, "the stable revision on every replica")
    wait_until(lambda: len(story.ready()) == 4, timeout=30, what="no canary pod serving")
    after = story.load.report()
    failed = after.error_count - before.error_count
    # The canary served one replica of four (25 %) from its first ready pod to the rollback; 20 % of
    # its requests fail. The whole story's failures against that product (the expectation, so a
    # margin for the draw: the simulator picks failing requests at random).
    served = window["rolled back"] - window.get("serving", window["rolled back"])
    bound = 0.25 * ERROR_SHARE * served
    print(f"errors revision: {failed} failed requests in the story; 25 % x 20 % x {served} = {bound:.1f}")
    assert failed <= bound * 1.5 + 3
    assert set(after.errors) <= {"500"}


def test_a_revision_with_slow_first_tokens_is_rolled_back_on_the_relative_limit(story: Story) -> None:
    story.set_image(SLOW)
    rolled_back = story.wait(
        lambda s: (s.get("rollout") or {}).get("phase") == "Aborted" and s, "the canary rolled back"
    )
    analysis = rolled_back["analysis"]
    assert "TTFT p95" in analysis["message"]
    assert "the stable revision's" in analysis["message"]
    canary, stable = analysis["canary"]["ttftP95Seconds"], analysis["stable"]["ttftP95Seconds"]
    print(f"slow revision: TTFT p95 {canary:.3f} s against {stable:.3f} s ({canary / stable:.2f}x)")
    assert canary > 1.5 * stable
    assert story.load.report().error_count == 0


def test_a_revision_that_never_gets_ready_is_reported_and_the_stable_one_keeps_serving(story: Story) -> None:
    before = story.load.report()
    story.set_image(STUCK)
    stuck = story.wait(
        lambda s: (s.get("rollout") or {}).get("phase") == "Progressing" and s, "the canary starting"
    )
    assert stuck["rollout"]["message"] == "0 of 1 canary replicas ready"
    # Long past its start-up: still no canary replica, and all four stable replicas serving.
    wait_until(
        lambda: any(not serving(p) for p in model_pods(story.sim, story.name)),
        timeout=30,
        what="the stuck canary pod",
    )
    for _ in range(3):
        status = story.wait(lambda s: s, "status")
        assert status["readyReplicas"] >= 4
        assert len(story.ready()) == 4
        assert status["rollout"]["phase"] == "Progressing"
    progressing = {c["type"]: c for c in status["conditions"]}["Progressing"]
    assert progressing["reason"] == "CanaryRollout"
    after = story.load.report()
    assert after.error_count == before.error_count


ROUTE = "canary-gateway"


@pytest.fixture
def routed(
    operator: OperatorProcess, sim: BackgroundSimulation, gateway_api_crds: Cluster
) -> Iterator[Story]:
    """A canary model behind an HTTPRoute (spec.rollout.httpRoute), its load sent through a gateway
    that routes by that route (fleetsim.gateway); one step of 10 %."""
    name = "canary-route"
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE, "namespace": NAMESPACE},
        "spec": {
            "parentRefs": [{"name": "inference-gateway"}],
            "rules": [{"backendRefs": [{"name": name, "port": 8000}]}],
        },
    }
    operator.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(route))
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["rollout"] = {
        "steps": [{"weight": 10, "pauseSeconds": 20}],
        "analysis": doc["spec"]["rollout"]["analysis"],
        "httpRoute": {"name": ROUTE},
    }
    operator.cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump(doc))
    load = routed_load(sim, NAMESPACE, name, ROUTE, rate=RATE, max_tokens=16)
    story = Story(operator, sim, name, load, concurrent.futures.Future())
    try:
        story.wait(
            lambda s: (
                revision(s, "stable") == 1
                and s.get("readyReplicas") == 4
                and traffic(s) == ("True", "BackendWeights")
            ),
            "revision 1 serving through the route",
        )
        story.running = asyncio.run_coroutine_threadsafe(load.run(100_000), sim.loop)
        wait_until(lambda: load.report().ok >= 50, timeout=30, what="the load flowing through the route")
        yield story
    finally:
        story.running.cancel()
        operator.cluster.kubectl("delete", "md", name, "-n", NAMESPACE, "--wait=false", check=False)
        operator.cluster.kubectl("delete", "httproute", ROUTE, "-n", NAMESPACE, check=False)


def traffic(status: dict[str, Any]) -> tuple[str, str]:
    found = {c["type"]: c for c in status.get("conditions") or []}.get("TrafficRouted") or {}
    return found.get("status", ""), found.get("reason", "")


def test_a_canary_behind_an_httproute_gets_exactly_its_steps_share_of_the_requests(routed: Story) -> None:
    story, canary_service = routed, f"{routed.name}-b"
    story.set_image(GOOD)
    story.wait(
        lambda s: (s.get("rollout") or {}).get("weight") == 10 and s["rollout"]["canaryReplicas"] == 1,
        "step 1's canary replica serving at 10 %",
    )
    before = story.load.report()
    wait_until(lambda: story.load.report().sent - before.sent >= 200, timeout=30, what="200 more requests")
    after = story.load.report()
    rollout = story.status()["rollout"]
    assert (rollout["step"], rollout["weight"]) == (1, 10), "the window stayed inside step 1"
    sent = sum(after.routed.values()) - sum(before.routed.values())
    to_canary = after.routed.get(canary_service, 0) - before.routed.get(canary_service, 0)
    print(
        f"through the route: the canary's Service got {to_canary} of {sent} requests "
        f"({100 * to_canary / sent:.1f} %) at step weight 10 %; by replica ratio 1 of 4 replicas is 25 %"
    )
    assert 0.08 <= to_canary / sent <= 0.12

    story.wait(lambda s: revision(s, "stable") == 2, "revision 2 promoted", timeout=120)
    route = story.operator.cluster.get_json("httproute", ROUTE, "-n", NAMESPACE)
    weights = {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}
    assert weights == {f"{story.name}-a": 0, canary_service: 100}
    wait_until(
        lambda: story.load.report().routed.get(canary_service, 0) > after.routed.get(canary_service, 0) + 50,
        timeout=30,
        what="the promoted slot taking the requests",
    )
    report = story.load.report()
    print(f"route story: {report.sent} requests, errors {dict(report.errors)}, routed {dict(report.routed)}")
    assert report.error_count == 0


def test_a_prometheus_outage_holds_the_canary_and_its_judgement_resumes_after(story: Story) -> None:
    """A failing canary whose metrics cannot be read is neither promoted nor rolled back (NoData holds
    the step, however long its pause has run); once Prometheus is back the 5xx share fails it."""
    prometheus = story.sim.simulation.prometheus
    prometheus.stop()
    try:
        story.set_image(ERRORS)
        story.wait(
            lambda s: (
                (s.get("rollout") or {}).get("canaryReplicas") == 1
                and (s.get("analysis") or {}).get("verdict") == "NoData"
                and "Prometheus" in s["analysis"]["message"]
            ),
            "a NoData judgement of the serving canary",
        )
        # Three analysis intervals and twice the step's 10 s pause, held at step 1.
        for _ in range(4):
            time.sleep(5)  # the length of the outage, not a wait for a condition
            held = story.status()
            assert held["rollout"]["step"] == 1, held["rollout"]
            assert held["rollout"]["phase"] in ("Paused", "Held"), held["rollout"]
            assert held["analysis"]["verdict"] == "NoData"
        # The pause is over and the step still holds, for the missing judgement.
        assert held["rollout"]["phase"] == "Held", held["rollout"]
        assert "NoData" in held["rollout"]["message"], held["rollout"]
    finally:
        prometheus.start()
    failed = story.wait(
        lambda s: (s.get("rollout") or {}).get("phase") == "Aborted" and s,
        "the canary rolled back",
        timeout=120,
    )
    assert "error rate" in failed["analysis"]["message"]
    print(f"Prometheus outage mid-canary: held at step 1 through it, then {failed['analysis']['message']}")
