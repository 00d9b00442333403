"""The validating admission webhook: the same rules as `gpufleet validate`, and no reference its author
may not read.

Imported (and so registered with kopf) only when GPUFLEET_WEBHOOK_ENABLED is
true: kopf refuses to start with admission handlers but no webhook server.

A ModelDeployment makes the operator create pods that read Secrets, ConfigMaps
and PersistentVolumeClaims by name (gpufleet.api.references). Every reference a
CREATE or UPDATE adds is checked with a SubjectAccessReview for the requesting
user: without `get` on the object, the request is refused with the field and the
fix. A reference already in the stored object is not checked again, so whoever
may edit it can still scale or tune it. When the check itself cannot be made
(the API server refusing), the request is refused as retryable: the webhook
fails closed, as its failurePolicy does.
"""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from gpufleet.adapters.kube import KubeError
from gpufleet.api.references import added_references
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION, ModelDeploymentSpec
from gpufleet.api.validation import admission_problems, manifest_warnings


@kopf.on.validate(GROUP, VERSION, PLURAL, id="validate", operations=["CREATE", "UPDATE"])
def validate(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    old = kwargs.get("old")  # kopf passes the stored object on UPDATE
    new = dict(body)
    previous = dict(old) if old else None
    problems = admission_problems(new, previous)
    if problems:
        raise kopf.AdmissionError("; ".join(str(p) for p in problems), code=422)
    _check_references(new, previous, kwargs.get("userinfo") or {}, memo)
    # Shown by kubectl as "Warning: ..." (AdmissionResponse.warnings); the object is admitted.
    warnings = kwargs.get("warnings")
    if isinstance(warnings, list):
        warnings.extend(str(w) for w in manifest_warnings(new))


def _spec(obj: dict[str, Any] | None) -> ModelDeploymentSpec | None:
    try:
        return ModelDeploymentSpec.model_validate(obj["spec"]) if obj else None
    except (ValidationError, KeyError):
        return None  # an old object that no longer validates: every reference counts as new


def _check_references(
    new: dict[str, Any], previous: dict[str, Any] | None, user: dict[str, Any], memo: kopf.Memo
) -> None:
    spec = _spec(new)
    if spec is None:
        return
    added = added_references(spec, _spec(previous))
    if not added:
        return
    operator = getattr(memo, "operator", None)
    if operator is None:
        # Serving before the operator is built: fail closed, as when the check cannot be made.
        raise kopf.AdmissionError(f"{added[0].path}: the operator is starting; retry", code=503)
    namespace = new["metadata"].get("namespace", "")
    who = user.get("username") or "the requesting user"
    refused = []
    for ref in added:
        try:
            allowed = operator.kube.may(user, "get", ref.resource, namespace, ref.name)
        except KubeError as error:
            raise kopf.AdmissionError(
                f"{ref.path}: could not check that {who} may read {ref.resource} {ref.name!r} "
                f"({error}); retry",
                code=503,
            ) from error
        if not allowed:
            refused.append(
                f"{ref.path}: {who} may not get {ref.resource} {ref.name!r} in namespace {namespace}; "
                f"a ModelDeployment may only use what its author may read: ask for get on it, or "
                f"remove the reference"
            )
    if refused:
        raise kopf.AdmissionError("; ".join(refused), code=403)
