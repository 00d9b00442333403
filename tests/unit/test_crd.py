"""The generated CRD: committed copy up to date, structural, described, complete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet.api.crd import custom_resource_definition, openapi_schema, render_yaml, to_structural
from gpufleet.api.reference import render_api_reference
from gpufleet.api.v1alpha1 import DEFAULT_IMAGE

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / "gpufleet.io_modeldeployments.yaml"


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_committed_crd_matches_the_models() -> None:
    generated = render_yaml(custom_resource_definition())
    assert COMMITTED.read_text() == generated, "crds/ is stale: run `make crds` and commit the result"


def test_schema_is_structural() -> None:
    forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const", "uniqueItems"}
    for path, node in walk(openapi_schema()):
        assert not forbidden & node.keys(), f"{path} has {forbidden & node.keys()}"
        assert "type" in node, f"{path} has no type"
        assert not isinstance(node.get("additionalProperties"), bool), path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True, path
            assert "minimum" in node, path


def test_every_spec_and_status_field_has_a_description() -> None:
    schema = openapi_schema()["properties"]
    for root in ("spec", "status"):
        for path, node in walk(schema[root], root):
            if path.endswith("[]"):
                continue
            assert node.get("description"), f"{path} has no description (kubectl explain shows it)"


@pytest.mark.parametrize(
    ("path", "key", "value"),
    [
        ("spec.accelerator.tensorParallelSize", "enum", [1, 2, 4, 8]),
        ("spec.accelerator.tensorParallelSize", "default", 1),
        ("spec.capacity.spotPercent", "maximum", 100),
        ("spec.capacity.spotPercent", "minimum", 0),
        ("spec.capacity.zones", "x-kubernetes-list-type", "set"),
        ("spec.engine.image", "default", DEFAULT_IMAGE),
        ("spec.engine.version", "nullable", True),
        ("spec.accelerator", "default", {}),
        ("spec.accelerator.migProfile", "nullable", True),
        ("spec.autoscaling.targetKVCacheUsage", "maximum", 1),
        ("spec.model", "required", ["uri"]),
        ("status.conditions", "x-kubernetes-list-map-keys", ["type"]),
    ],
)
def test_schema_details(path: str, key: str, value: Any) -> None:
    nodes = dict(walk(openapi_schema()))
    assert nodes["." + path][key] == value


def test_scale_subresource_and_printer_columns() -> None:
    version = custom_resource_definition()["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    for expected in ("Model", "GPU", "TP", "Ready", "Desired", "Age"):
        assert expected in names


def test_optional_union_becomes_nullable_and_refs_are_inlined() -> None:
    defs = {
        "Inner": {"title": "Inner", "type": "object", "properties": {"a": {"type": "integer", "title": "A"}}}
    }
    node = {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}], "description": "outer", "default": None}
    assert to_structural(node, defs) == {
        "type": "object",
        "description": "outer",
        "nullable": True,
        "properties": {"a": {"type": "integer"}},
    }


def test_real_unions_are_refused() -> None:
    with pytest.raises(ValueError, match="Optional"):
        to_structural({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {})


def test_rendered_yaml_round_trips() -> None:
    assert yaml.safe_load(render_yaml(custom_resource_definition())) == custom_resource_definition()


def test_committed_api_reference_matches_the_models() -> None:
    committed = (ROOT / "docs" / "api-reference.md").read_text()
    assert committed == render_api_reference(), "docs/api-reference.md is stale: run `make crds` and commit"


def test_api_reference_covers_every_spec_field() -> None:
    text = render_api_reference()
    for path, _node in walk(openapi_schema()["properties"]["spec"], "spec"):
        if path == "spec" or path.endswith("[]"):
            continue
        parent, _, leaf = path.rpartition(".")
        assert f"## `{parent}`" in text, parent
        assert f"| `{leaf}`" in text, path
