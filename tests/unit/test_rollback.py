"""`gpufleet rollback`'s plan (planning.rollback): which revision, and the JSON patch that writes it."""

from __future__ import annotations

from typing import Any

import pytest

from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from gpufleet.planning.revisions import ObservedRevision, serving_template
from gpufleet.planning.rollback import RollbackError, plan_rollback
from tests.unit.helpers import sample


def body_with(image: str, **engine: Any) -> dict[str, Any]:
    body = sample()
    body["metadata"]["resourceVersion"] = "42"
    body["spec"]["engine"].update(image=image, **engine)
    return body


def template(body: dict[str, Any]) -> dict[str, Any]:
    return serving_template(ModelDeploymentSpec.model_validate(body["spec"]))


V33, V34, V35 = (body_with(f"vllm/vllm-openai:v0.{n}.0") for n in (33, 34, 35))
HISTORY = [
    ObservedRevision("m-a", 1, template(V33)),
    ObservedRevision("m-b", 2, template(V35)),
    ObservedRevision("m-c", 3, template(V34)),
]


@pytest.mark.parametrize(
    ("body", "to", "target"),
    [
        pytest.param(V34, None, 2, id="default: the newest revision that is not the current"),
        pytest.param(V34, 1, 1, id="a revision by number"),
        # After a rollback to 2 the spec is V35 while 3 is still numbered highest until the operator
        # renumbers: the default then goes to 3, the one being left.
        pytest.param(V35, None, 3, id="before the operator renumbered: back to the one left"),
    ],
)
def test_which_revision(body: dict[str, Any], to: int | None, target: int) -> None:
    assert plan_rollback(body, HISTORY, to).target.revision == target


def test_the_patch_tests_the_version_read_and_writes_only_the_serving_fields() -> None:
    rollback = plan_rollback(V34, HISTORY, 1)
    assert rollback.operations[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "42"}
    paths = [op["path"] for op in rollback.operations[1:]]
    assert paths == ["/spec/model", "/spec/engine", "/spec/accelerator"]
    assert rollback.operations[2]["value"]["image"] == "vllm/vllm-openai:v0.33.0"
    assert rollback.changes == "engine.image: vllm/vllm-openai:v0.34.0 → vllm/vllm-openai:v0.33.0"


def test_a_field_at_its_default_in_the_target_is_removed_from_the_spec() -> None:
    target = body_with("vllm/vllm-openai:v0.33.0")
    del target["spec"]["engine"]  # every engine field at its default
    current = body_with("vllm/vllm-openai:v0.33.0")
    history = [ObservedRevision("m-a", 1, template(target)), ObservedRevision("m-b", 2, template(current))]
    operations = plan_rollback(current, history, 1).operations
    assert {"op": "remove", "path": "/spec/engine"} in operations


def test_an_invalid_spec_can_be_rolled_back() -> None:
    broken = body_with("vllm/vllm-openai:v0.34.0")
    broken["spec"]["accelerator"]["tensorParallelSize"] = "four"
    rollback = plan_rollback(broken, HISTORY, None)
    assert rollback.target.revision == 3
    assert rollback.changes == "the spec did not validate"


@pytest.mark.parametrize(
    ("history", "to", "message"),
    [
        pytest.param([], None, "no earlier revision to roll back to (revisions kept: none)", id="no history"),
        pytest.param(
            HISTORY[2:],
            None,
            "no earlier revision to roll back to (revisions kept: 3)",
            id="only the current",
        ),
        pytest.param(HISTORY, 9, "has no revision 9 (revisions kept: 1, 2, 3)", id="unknown number"),
        pytest.param(HISTORY, 3, "revision 3 is already what", id="the current one"),
    ],
)
def test_nothing_to_roll_back_to_says_what_there_is(
    history: list[ObservedRevision], to: int | None, message: str
) -> None:
    with pytest.raises(RollbackError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_rollback(V34, history, to)
