"""Revisions of the serving template (planning.revisions), table-driven: what is a new revision, how the
history is numbered and pruned, what status says about it, and when a rollout counts as finished."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from gpufleet.planning.revisions import (
    CHANGES_MAX_CHARS,
    LABEL_REVISION_HASH,
    ObservedRevision,
    describe_changes,
    observe_revisions,
    plan_revisions,
    pod_label_hash,
    revision_hash,
    rolled_out,
    serving_template,
    summary_of,
)
from gpufleet.planning.workloads import ANNOTATION_TEMPLATE_HASH, LABEL_MODEL_DEPLOYMENT, Owner
from tests.unit.helpers import sample

OWNER = Owner("llama", "ml", "uid-1")


def template_of(**engine: Any) -> dict[str, Any]:
    body = sample()
    body["spec"]["engine"].update(engine)
    return serving_template(ModelDeploymentSpec.model_validate(body["spec"]))


A = template_of(image="vllm/vllm-openai:v0.33.0")
B = template_of(image="vllm/vllm-openai:v0.34.0")
C = template_of(image="vllm/vllm-openai:v0.34.0", args=["--max-num-seqs=64"])


def rev(template: dict[str, Any], number: int, name: str | None = None) -> ObservedRevision:
    return ObservedRevision(name or f"llama-{revision_hash(template)}", number, template)


def test_only_the_serving_template_makes_a_revision() -> None:
    base = sample()
    same = copy.deepcopy(base)
    same["spec"].update(replicas=9, minReplicas=0, maxReplicas=12)
    same["spec"]["capacity"] = {"zones": ["us-east-1c"], "spotPercent": 0}
    same["spec"]["autoscaling"] = {"enabled": True}
    same["spec"]["revisionHistoryLimit"] = 2
    spelled_out = copy.deepcopy(base)
    spelled_out["spec"]["accelerator"]["migProfile"] = None  # the default, written out
    quantized = copy.deepcopy(base)
    quantized["spec"]["model"]["quantization"] = "awq"
    hashes = {
        key: revision_hash(serving_template(ModelDeploymentSpec.model_validate(body["spec"])))
        for key, body in {"base": base, "same": same, "spelled": spelled_out, "awq": quantized}.items()
    }
    assert hashes["base"] == hashes["same"] == hashes["spelled"]
    assert hashes["awq"] != hashes["base"]


@pytest.mark.parametrize(
    ("template", "history", "limit", "keep", "current", "written", "pruned"),
    [
        pytest.param(A, [], 10, [], 1, [("A", 1, True)], [], id="first template is revision 1"),
        pytest.param(A, [rev(A, 1)], 10, [], 1, [], [], id="unchanged: nothing written"),
        pytest.param(B, [rev(A, 1)], 10, [], 2, [("B", 2, True)], [], id="new template: highest + 1"),
        pytest.param(
            A,
            [rev(A, 1), rev(B, 2)],
            10,
            [],
            3,
            [("A", 3, False)],
            [],
            id="back to an older template: renumbered, not copied",
        ),
        pytest.param(
            C,
            [rev(A, 1), rev(B, 2)],
            1,
            [],
            3,
            [("C", 3, True)],
            ["A"],
            id="history limit: oldest pruned first",
        ),
        pytest.param(
            C, [rev(A, 1), rev(B, 2)], 0, ["A"], 3, [("C", 3, True)], ["B"], id="the stable one is kept"
        ),
        pytest.param(B, [rev(A, 1), rev(B, 2)], 0, [], 2, [], ["A"], id="limit 0 keeps the current only"),
    ],
)
def test_numbering_and_pruning(
    template: dict[str, Any],
    history: list[ObservedRevision],
    limit: int,
    keep: list[str],
    current: int,
    written: list[tuple[str, int, bool]],
    pruned: list[str],
) -> None:
    letters = {revision_hash(t): letter for letter, t in (("A", A), ("B", B), ("C", C))}

    def letter(name: str) -> str:
        return letters[name.removeprefix("llama-")]

    names = {"A": rev(A, 0).name, "B": rev(B, 0).name, "C": rev(C, 0).name}
    plan = plan_revisions(OWNER, template, history, limit, keep=[names[k] for k in keep])
    assert plan.current.revision == current
    assert plan.current.template == template
    assert [
        (letter(w.manifest["metadata"]["name"]), w.manifest["revision"], w.new) for w in plan.writes
    ] == written
    assert sorted(letter(n) for n in plan.deletions) == pruned
    assert plan.current in plan.history
    assert not {r.name for r in plan.history} & set(plan.deletions)


def test_a_new_revision_is_an_owned_controller_revision_holding_the_template() -> None:
    (write,) = plan_revisions(OWNER, A, [], 10).writes
    manifest = write.manifest
    assert manifest["apiVersion"] == "apps/v1"
    assert manifest["kind"] == "ControllerRevision"
    assert manifest["data"] == {"spec": A}
    assert manifest["metadata"]["labels"] == {
        LABEL_MODEL_DEPLOYMENT: "llama",
        LABEL_REVISION_HASH: revision_hash(A),
    }
    (ref,) = manifest["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("ModelDeployment", "uid-1", True)


def test_a_name_taken_by_other_content_or_by_someone_else_is_never_written_over() -> None:
    edited = rev({"model": {"uri": "hf://edited/by-hand"}}, 1, name=rev(A, 0).name)
    assert plan_revisions(OWNER, A, [edited], 10).current.name == f"{edited.name}-2"
    assert plan_revisions(OWNER, A, [], 10, taken=[edited.name]).current.name == f"{edited.name}-2"


def test_only_owned_controller_revisions_are_history() -> None:
    def obj(name: str, uid: str, number: int) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "ownerReferences": [{"uid": uid, "controller": True}]},
            "data": {"spec": A},
            "revision": number,
        }

    found = observe_revisions([obj("b", "uid-1", 2), obj("x", "uid-9", 1), obj("a", "uid-1", 1)], "uid-1")
    assert [(r.name, r.revision) for r in found] == [("a", 1), ("b", 2)]


def test_changes_say_what_differs_from_the_revision_before() -> None:
    history = [rev(A, 1), rev(C, 2)]
    first, second = summary_of(history[0], history), summary_of(history[1], history)
    assert first.changes == ""
    assert second.changes == (
        'engine.args: ["--enable-prefix-caching"] → ["--max-num-seqs=64"]; '
        "engine.image: vllm/vllm-openai:v0.33.0 → vllm/vllm-openai:v0.34.0"
    )
    assert (second.revision, second.image) == (2, "vllm/vllm-openai:v0.34.0")
    assert second.model_uri == A["model"]["uri"]


def test_changes_stay_one_readable_line() -> None:
    before = {
        "engine": {"args": [f"--a{i}" for i in range(3)]},
        "model": {f"k{i}": "x" * 50 for i in range(20)},
    }
    after = {"engine": {"args": ["--b"]}, "model": {f"k{i}": "y" * 50 for i in range(20)}}
    text = describe_changes(before, after)
    assert len(text) <= CHANGES_MAX_CHARS + 20
    assert text.endswith("more)")


def deployment(name: str, digest: str, replicas: int, **status: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": 2, "annotations": {ANNOTATION_TEMPLATE_HASH: digest}},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": 2, **status},
    }


DONE = {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}


@pytest.mark.parametrize(
    ("live_hash", "status", "expected"),
    [
        pytest.param("h1", DONE, True, id="every pod updated and ready"),
        pytest.param("h0", DONE, False, id="the live Deployment has another template"),
        pytest.param("h1", {**DONE, "updatedReplicas": 1}, False, id="an old pod remains"),
        pytest.param("h1", {**DONE, "replicas": 3}, False, id="surge pod still there"),
        pytest.param("h1", {**DONE, "readyReplicas": 1}, False, id="a new pod is not ready"),
        pytest.param("h1", {**DONE, "observedGeneration": 1}, False, id="controller has not seen the change"),
    ],
)
def test_a_rollout_is_finished_when_every_group_runs_the_new_template(
    live_hash: str, status: dict[str, int], expected: bool
) -> None:
    desired = deployment("g", "h1", 2)
    live = deployment("g", live_hash, 2)
    live["status"] = {"observedGeneration": 2, **status}
    assert rolled_out([desired], {"g": live}) is expected
    assert rolled_out([desired, deployment("missing", "h1", 1)], {"g": live}) is False


def test_the_pods_revision_label_is_the_same_from_the_spec_and_back_from_the_api_server() -> None:
    # The API server returns 7.06e10 as 70600000000: equal, but not the same JSON, so not the same hash.
    sent = {"model": {"uri": "hf://meta-llama/Meta-Llama-3-70B-Instruct", "parameterCount": 7.06e10}}
    returned = {"model": {"uri": "hf://meta-llama/Meta-Llama-3-70B-Instruct", "parameterCount": 70600000000}}
    assert revision_hash(sent) != revision_hash(returned)
    assert pod_label_hash(sent) == pod_label_hash(returned) == revision_hash(sent)
    # A template that no longer parses still gets a label.
    assert pod_label_hash({"model": {"uri": 5}}) == revision_hash({"model": {"uri": 5}})
