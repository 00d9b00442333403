"""The validating admission webhook: the same rules as `gpufleet validate`.

Imported (and so registered with kopf) only when GPUFLEET_WEBHOOK_ENABLED is
true: kopf refuses to start with admission handlers but no webhook server.
"""

from __future__ import annotations

from typing import Any

import kopf

from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION
from gpufleet.api.validation import admission_problems


@kopf.on.validate(GROUP, VERSION, PLURAL, id="validate", operations=["CREATE", "UPDATE"])
def validate(body: kopf.Body, **kwargs: Any) -> None:
    old = kwargs.get("old")  # kopf passes the stored object on UPDATE
    new = dict(body)
    previous = dict(old) if old else None
    problems = admission_problems(new, previous)
    if problems:
        raise kopf.AdmissionError("; ".join(str(p) for p in problems), code=422)
