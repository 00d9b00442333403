"""The admission webhook's reference check fails closed: refused while it cannot ask the API server."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from gpufleet.adapters.kube import KubeError
from gpufleet.handlers.webhook import validate
from tests.unit.helpers import sample


class Refusing:
    def may(self, *args: Any) -> bool:
        raise KubeError(503, "apiserver unavailable")


class Operator:
    kube = Refusing()


def memo(operator: Any = None) -> kopf.Memo:
    found = kopf.Memo()
    if operator is not None:
        found.operator = operator
    return found


def test_a_reference_is_refused_while_the_operator_is_starting() -> None:
    body = sample()  # spec.model.credentialsSecret: hf-token
    with pytest.raises(kopf.AdmissionError) as refused:
        validate(body=kopf.Body(body), memo=memo(), userinfo={"username": "alice"})
    assert refused.value.code == 503
    assert "spec.model.credentialsSecret" in str(refused.value)


def test_a_reference_is_refused_when_access_cannot_be_checked() -> None:
    with pytest.raises(kopf.AdmissionError) as refused:
        validate(body=kopf.Body(sample()), memo=memo(Operator()), userinfo={"username": "alice"})
    assert refused.value.code == 503
    assert "retry" in str(refused.value)


def test_a_spec_without_references_needs_no_check() -> None:
    body = sample()
    del body["spec"]["model"]["credentialsSecret"]
    validate(body=kopf.Body(body), memo=memo(), userinfo={"username": "alice"})
