"""The Secrets, ConfigMaps and claims a ModelDeployment makes its pods read, and which ones an update adds."""

from __future__ import annotations

from typing import Any

from gpufleet.api.references import Reference, added_references, references
from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from tests.unit.helpers import sample


def spec(**changes: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(sample(**changes)["spec"])


def test_every_kind_of_reference_is_found_with_its_field() -> None:
    model = {**sample()["spec"]["model"], "uri": "pvc://weights/llama", "credentialsSecret": "hf-token"}
    engine = {
        **sample()["spec"]["engine"],
        "env": [
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "db-password", "key": "p"}}},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "tuning", "key": "k"}}},
            {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "D", "value": "plain"},
        ],
        "loraAdapters": [{"name": "sql", "uri": "pvc://adapters/sql"}],
    }
    found = references(spec(model=model, engine=engine))
    assert found == [
        Reference("spec.model.credentialsSecret", "secrets", "hf-token"),
        Reference("spec.model.uri", "persistentvolumeclaims", "weights"),
        Reference("spec.engine.loraAdapters[0].uri", "persistentvolumeclaims", "adapters"),
        Reference("spec.engine.env[0].valueFrom.secretKeyRef", "secrets", "db-password"),
        Reference("spec.engine.env[1].valueFrom.configMapKeyRef", "configmaps", "tuning"),
    ]


def test_an_update_adds_only_what_the_stored_object_did_not_read() -> None:
    stored = spec()
    assert [r.name for r in added_references(stored, None)] == ["hf-token"]
    scaled = spec(replicas=4)
    assert added_references(scaled, stored) == []  # scaling needs no new permission
    engine = {
        **sample()["spec"]["engine"],
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}}],
    }
    assert added_references(spec(engine=engine), stored) == []  # the same Secret, read another way
    engine["env"].append({"name": "P", "valueFrom": {"secretKeyRef": {"name": "prod-db", "key": "p"}}})
    assert added_references(spec(engine=engine), stored) == [
        Reference("spec.engine.env[1].valueFrom.secretKeyRef", "secrets", "prod-db")
    ]
