"""What a ModelDeployment makes its pods read: Secrets, ConfigMaps and PersistentVolumeClaims by name.

A ModelDeployment is a pod template: the operator creates pods that mount its
claims and read its Secrets, with the operator's rights to create pods. So that
writing a ModelDeployment is never a way around RBAC, the admission webhook lets
a reference through only when its author may `get` that object themselves
(gpufleet.handlers.webhook, a SubjectAccessReview per new reference). These are
the references it checks; pure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gpufleet.api.v1alpha1 import ModelDeploymentSpec

Resource = Literal["secrets", "configmaps", "persistentvolumeclaims"]


@dataclass(frozen=True)
class Reference:
    path: str  # the spec field, for the error message
    resource: Resource
    name: str


def _claim(uri: str) -> str | None:
    return uri.removeprefix("pvc://").split("/", 1)[0] if uri.startswith("pvc://") else None


def references(spec: ModelDeploymentSpec) -> list[Reference]:
    return list(_references(spec))


def _references(spec: ModelDeploymentSpec) -> Iterator[Reference]:
    if spec.model.credentials_secret:
        yield Reference("spec.model.credentialsSecret", "secrets", spec.model.credentials_secret)
    claim = _claim(spec.model.uri)
    if claim:
        yield Reference("spec.model.uri", "persistentvolumeclaims", claim)
    for i, adapter in enumerate(spec.engine.lora_adapters):
        claim = _claim(adapter.uri)
        if claim:
            yield Reference(f"spec.engine.loraAdapters[{i}].uri", "persistentvolumeclaims", claim)
    for i, var in enumerate(spec.engine.env):
        source: Mapping[str, Any] = var.value_from or {}
        for key, resource in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
            ref = source.get(key)
            if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
                yield Reference(f"spec.engine.env[{i}].valueFrom.{key}", resource, ref["name"])  # type: ignore[arg-type]


def added_references(new: ModelDeploymentSpec, old: ModelDeploymentSpec | None) -> list[Reference]:
    """References of `new` that `old` did not make (by object, wherever in the spec): an update that
    keeps what the object already reads needs no new permission, so its author can still scale it."""
    before = {(r.resource, r.name) for r in references(old)} if old is not None else set()
    seen: set[tuple[str, str]] = set()
    added = []
    for ref in references(new):
        key = (ref.resource, ref.name)
        if key not in before and key not in seen:
            seen.add(key)
            added.append(ref)
    return added
