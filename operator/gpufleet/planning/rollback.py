"""`gpufleet rollback`: which revision to go back to, and the one JSON patch that does it.

A rollback writes an older serving template (spec.model, spec.engine, spec.accelerator, as its
ControllerRevision holds it) back into the spec, as `kubectl rollout undo` does for a Deployment; the
operator then sees a template that is in the history, renumbers that revision and rolls the groups to it.
Replicas, autoscaling and the capacity mix are left as they are. The patch starts with a `test` of the
resourceVersion that was read, so a change made in between refuses the whole patch instead of being
overwritten.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from gpufleet.planning.revisions import SERVING_FIELDS, ObservedRevision, describe_changes, serving_template


class RollbackError(Exception):
    """Nothing to roll back to, or not the revision asked for: the message says what there is."""


@dataclass(frozen=True)
class Rollback:
    target: ObservedRevision
    operations: list[dict[str, Any]]  # RFC 6902
    changes: str  # what the spec changes, field by field


def current_template(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The serving template of a spec; None when it does not validate (a rollback is how to fix it)."""
    try:
        return serving_template(ModelDeploymentSpec.model_validate(spec))
    except ValidationError:
        return None


def plan_rollback(
    body: Mapping[str, Any], history: Sequence[ObservedRevision], to_revision: int | None
) -> Rollback:
    meta, spec = body["metadata"], body.get("spec") or {}
    current = current_template(spec)
    numbers = ", ".join(str(r.revision) for r in history) or "none"
    if to_revision is None:
        # The newest revision that is not what the spec asks for now: the one before the current.
        older = [r for r in history if r.template != current]
        if not older:
            raise RollbackError(
                f"{meta['name']} has no earlier revision to roll back to (revisions kept: {numbers}); "
                "spec.revisionHistoryLimit sets how many are kept"
            )
        target = max(older, key=lambda r: r.revision)
    else:
        found = [r for r in history if r.revision == to_revision]
        if not found:
            raise RollbackError(
                f"{meta['name']} has no revision {to_revision} (revisions kept: {numbers}); "
                "see `gpufleet history`"
            )
        target = found[0]
        if target.template == current:
            raise RollbackError(
                f"revision {to_revision} is already what {meta['name']} serves; nothing to do"
            )
    operations: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
    ]
    for field in SERVING_FIELDS:
        if field in target.template:
            operations.append({"op": "add", "path": f"/spec/{field}", "value": target.template[field]})
        elif field in spec:
            operations.append({"op": "remove", "path": f"/spec/{field}"})
    changes = (
        describe_changes(current, target.template) if current is not None else "the spec did not validate"
    )
    return Rollback(target, operations, changes)
