"""Revisions of a ModelDeployment's serving template, kept as ControllerRevisions (as StatefulSets do).

The serving template is what decides what a replica runs: spec.model, spec.engine and spec.accelerator.
Replica counts, autoscaling and the capacity mix are not part of it, so scaling or moving replicas makes
no revision. Each distinct template is one ControllerRevision owned by the ModelDeployment (the garbage
collector deletes them with it), named `<model>-<hash>`, holding the template in `data.spec`.

Numbering follows StatefulSet history: a new template gets the highest number + 1, and going back to a
template already in the history (a rollback) renumbers that revision to the highest + 1 rather than
copying it, so the numbers say in which order templates were asked for. Old revisions beyond
spec.revisionHistoryLimit are deleted, oldest first; the current revision and the stable one (still
serving while a rollout runs) are never deleted.

Pure: the runtime passes the ControllerRevisions its watch cache holds and applies what comes back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gpufleet.api.v1alpha1 import ModelDeploymentSpec, RevisionSummary
from gpufleet.planning.observe import owned_by
from gpufleet.planning.workloads import (
    ANNOTATION_TEMPLATE_HASH,
    LABEL_MODEL_DEPLOYMENT,
    LABEL_REVISION_HASH,
    Owner,
    owned_metadata,
    template_hash,
)

SERVING_FIELDS = ("model", "engine", "accelerator")
HASH_LENGTH = 10
# status.revisions.*.changes stays a line a person reads in `kubectl describe`.
CHANGES_MAX_CHARS = 300
_VALUE_MAX_CHARS = 60


def serving_template(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The serving part of the spec, without defaults: an operator upgrade that adds a field with a
    default, or a user spelling out a default, is the same template and makes no revision."""
    return spec.model_dump(mode="json", by_alias=True, exclude_defaults=True, include=set(SERVING_FIELDS))


def revision_hash(template: Mapping[str, Any]) -> str:
    return template_hash(template)[:HASH_LENGTH]


def pod_label_hash(template: Mapping[str, Any]) -> str:
    """The hash a revision's pods carry (LABEL_REVISION_HASH), the same whether the template comes from
    the spec or back from a ControllerRevision: the API server returns 7.06e10 as 70600000000, which
    compares equal but hashes differently, so the template is read through the model first."""
    try:
        return revision_hash(serving_template(ModelDeploymentSpec.model_validate(template)))
    except ValidationError:
        return revision_hash(template)


@dataclass(frozen=True)
class ObservedRevision:
    name: str
    revision: int
    template: Mapping[str, Any]


def observe_revisions(objects: Iterable[Mapping[str, Any]], uid: str) -> list[ObservedRevision]:
    """The ModelDeployment's own ControllerRevisions, lowest number first; a foreign one (same label,
    another owner) is not history of this model."""
    found = []
    for obj in objects:
        if not owned_by(obj, uid):
            continue
        data = obj.get("data") or {}
        template = data.get("spec") if isinstance(data, Mapping) else None
        found.append(
            ObservedRevision(
                obj["metadata"]["name"],
                int(obj.get("revision", 0)),
                template if isinstance(template, Mapping) else {},
            )
        )
    return sorted(found, key=lambda r: (r.revision, r.name))


@dataclass(frozen=True)
class RevisionWrite:
    manifest: dict[str, Any]  # the ControllerRevision to apply
    new: bool  # a template not in the history; else an older one renumbered


@dataclass(frozen=True)
class RevisionPlan:
    current: ObservedRevision  # as it will be once `writes` are applied
    writes: tuple[RevisionWrite, ...]
    deletions: tuple[str, ...]  # ControllerRevision names beyond the history limit
    history: tuple[ObservedRevision, ...]  # every revision kept, lowest number first, current included


def controller_revision(owner: Owner, name: str, number: int, template: Mapping[str, Any]) -> dict[str, Any]:
    labels = {LABEL_MODEL_DEPLOYMENT: owner.name, LABEL_REVISION_HASH: revision_hash(template)}
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": owned_metadata(owner, name, labels),
        "data": {"spec": dict(template)},
        "revision": number,
    }


def plan_revisions(
    owner: Owner,
    template: Mapping[str, Any],
    observed: Sequence[ObservedRevision],
    history_limit: int,
    keep: Iterable[str] = (),
    taken: Iterable[str] = (),
) -> RevisionPlan:
    """The revision `template` is, what to write so the history says so, and what to prune.

    `keep`: names never pruned (the stable revision). `taken`: names of ControllerRevisions that belong
    to someone else, never written over."""
    top = max((r.revision for r in observed), default=0)
    digest = revision_hash(template)
    preferred = f"{owner.name}-{digest}"
    same = sorted(
        (r for r in observed if r.template == template), key=lambda r: (r.name != preferred, -r.revision)
    )
    writes: list[RevisionWrite] = []
    if same:
        current = same[0]
        if current.revision < top:
            # Back to an older template: it becomes the newest revision, as `kubectl rollout undo` does.
            current = ObservedRevision(current.name, top + 1, current.template)
            writes.append(
                RevisionWrite(controller_revision(owner, current.name, current.revision, template), False)
            )
    else:
        taken = {r.name for r in observed} | set(taken)
        name, suffix = preferred, 1
        while name in taken:  # a hash collision, or a revision edited by hand: never overwrite it
            suffix += 1
            name = f"{preferred}-{suffix}"
        current = ObservedRevision(name, top + 1, dict(template))
        writes.append(RevisionWrite(controller_revision(owner, name, current.revision, template), True))
    kept_anyway = {current.name, *keep}
    others = sorted(
        (r for r in observed if r.name not in kept_anyway), key=lambda r: (r.revision, r.name), reverse=True
    )
    pruned = others[history_limit:]
    pruned_names = {r.name for r in pruned}
    history = [r for r in observed if r.name != current.name and r.name not in pruned_names] + [current]
    return RevisionPlan(
        current,
        tuple(writes),
        tuple(sorted(pruned_names)),
        tuple(sorted(history, key=lambda r: (r.revision, r.name))),
    )


def _with_defaults(template: Mapping[str, Any]) -> Mapping[str, Any]:
    """The template with its defaults filled in, so a change to or from a default shows its value; as
    stored when it does not parse (a ControllerRevision edited by hand)."""
    try:
        spec = ModelDeploymentSpec.model_validate(template)
    except ValidationError:
        return template
    return spec.model_dump(mode="json", by_alias=True, include=set(SERVING_FIELDS))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _shown(value: Any) -> str:
    if value is None:
        return "(unset)"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= _VALUE_MAX_CHARS else text[: _VALUE_MAX_CHARS - 1] + "…"


def describe_changes(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> str:
    """`engine.image: vllm/vllm-openai:v0.33.0 → vllm/vllm-openai:v0.34.0; …`, short enough for a status line,
    with defaults spelled out."""
    if before is None:
        return ""
    old, new = _flatten(_with_defaults(before)), _flatten(_with_defaults(after))
    parts = [
        f"{path}: {_shown(old.get(path))} → {_shown(new.get(path))}"
        for path in sorted(old.keys() | new.keys())
        if old.get(path) != new.get(path)
    ]
    text = ""
    for index, part in enumerate(parts):
        candidate = f"{text}; {part}" if text else part
        if len(candidate) > CHANGES_MAX_CHARS:
            return f"{text}; … ({len(parts) - index} more)" if text else part[:CHANGES_MAX_CHARS]
        text = candidate
    return text


def summary_of(revision: ObservedRevision, history: Sequence[ObservedRevision]) -> RevisionSummary:
    """The revision for status: what it runs and what differs from the revision numbered just before it."""
    earlier = [r for r in history if r.revision < revision.revision]
    before = max(earlier, key=lambda r: r.revision).template if earlier else None
    template = revision.template
    engine, model = template.get("engine") or {}, template.get("model") or {}
    return RevisionSummary(
        revision=revision.revision,
        name=revision.name,
        hash=pod_label_hash(template),
        image=str(engine.get("image") or ModelDeploymentSpec.model_fields["engine"].default.image),
        model_uri=str(model.get("uri") or ""),
        quantization=str(model.get("quantization") or ""),
        changes=describe_changes(before, template),
    )


def rolled_out(desired: Iterable[Mapping[str, Any]], live_by_name: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether every desired Deployment is live with the template gpufleet applied (the hash annotation
    the reconcile sets), and its controller has replaced every old pod with a ready new one."""
    for obj in desired:
        meta = obj["metadata"]
        live = live_by_name.get(meta["name"])
        if live is None:
            return False
        live_meta, status = live.get("metadata") or {}, live.get("status") or {}
        wanted_hash = (meta.get("annotations") or {}).get(ANNOTATION_TEMPLATE_HASH)
        if (live_meta.get("annotations") or {}).get(ANNOTATION_TEMPLATE_HASH) != wanted_hash:
            return False
        if int(status.get("observedGeneration", 0)) < int(live_meta.get("generation", 0)):
            return False
        replicas = int(obj["spec"].get("replicas", 0))
        counts = (status.get(field, 0) for field in ("replicas", "updatedReplicas", "readyReplicas"))
        if any(int(count or 0) != replicas for count in counts):
            return False
    return True


def spec_of_revision(spec: ModelDeploymentSpec, revision: ObservedRevision) -> ModelDeploymentSpec | None:
    """`spec` running `revision`'s serving template, or None when the stored template no longer parses
    (edited by hand, or from a gpufleet whose fields this one does not know)."""
    others = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True, exclude=set(SERVING_FIELDS))
    try:
        return ModelDeploymentSpec.model_validate({**others, **revision.template})
    except ValidationError:
        return None
