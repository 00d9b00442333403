"""Generate the CustomResourceDefinition from the pydantic models.

Pydantic emits JSON Schema (draft 2020-12); the API server wants a structural
OpenAPI v3 schema: no $ref, no titles, `nullable` instead of `anyOf: [.., null]`,
boolean exclusive bounds, `type` on every node. This module converts one into
the other and adds what only a CRD has (printer columns, subresources).
"""

from __future__ import annotations

from typing import Any

import yaml

from gpufleet.api.v1alpha1 import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)

Schema = dict[str, Any]

# JSON-Schema keywords that have no place in a structural CRD schema.
_DROPPED_KEYS = frozenset({"title", "examples", "$schema"})

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.uri", "description": "Model source URI."},
    {
        "name": "GPU",
        "type": "string",
        "jsonPath": ".spec.accelerator.gpuProduct",
        "description": "GPU product (node label nvidia.com/gpu.product).",
    },
    {
        "name": "TP",
        "type": "integer",
        "jsonPath": ".spec.accelerator.tensorParallelSize",
        "description": "GPUs per replica.",
    },
    {
        "name": "MIG",
        "type": "string",
        "jsonPath": ".spec.accelerator.migProfile",
        "description": "MIG profile per replica.",
        "priority": 1,
    },
    {
        "name": "Spot%",
        "type": "integer",
        "jsonPath": ".spec.capacity.spotPercent",
        "description": "Share of replicas above the on-demand floor on spot.",
        "priority": 1,
    },
    {
        "name": "Ready",
        "type": "integer",
        "jsonPath": ".status.readyReplicas",
        "description": "Ready replicas.",
    },
    {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas", "description": "Desired replicas."},
    {
        "name": "Revision",
        "type": "integer",
        "jsonPath": ".status.revisions.current.revision",
        "description": "Revision of the serving template that spec asks for.",
    },
    {
        "name": "Stable",
        "type": "integer",
        "jsonPath": ".status.revisions.stable.revision",
        "description": "Last revision fully rolled out (differs from Revision during a rollout).",
        "priority": 1,
    },
    {
        "name": "Step",
        "type": "integer",
        "jsonPath": ".status.rollout.step",
        "description": "Canary rollout step under way (spec.rollout.steps); empty when none runs.",
    },
    {
        "name": "Weight",
        "type": "integer",
        "jsonPath": ".status.rollout.weight",
        "description": "Percent of ready replicas on the canary revision.",
        "priority": 1,
    },
    {
        "name": "Status",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Reason of the Ready condition.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _resolve_ref(ref: str, defs: dict[str, Schema]) -> Schema:
    prefix = "#/$defs/"
    if not ref.startswith(prefix):
        raise ValueError(f"unsupported $ref {ref!r}")
    return defs[ref[len(prefix) :]]


def _is_null(node: Schema) -> bool:
    return node.get("type") == "null"


def to_structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Convert one pydantic JSON-Schema node (and its children) to structural OpenAPI v3."""
    node = dict(node)
    if "$ref" in node:
        target = to_structural(_resolve_ref(node.pop("$ref"), defs), defs)
        # Field-level keys (description, default) win over the referenced model's.
        node = {**target, **{k: v for k, v in node.items() if k not in _DROPPED_KEYS}}
    variants = node.pop("anyOf", None)
    if variants is not None:
        non_null = [v for v in variants if not _is_null(v)]
        if len(non_null) != 1:
            raise ValueError(f"only Optional[X] unions are supported, got {variants}")
        inner = to_structural(non_null[0], defs)
        node = {**inner, **node}
        if len(non_null) < len(variants):
            node["nullable"] = True
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            out[key] = {name: to_structural(child, defs) for name, child in value.items()}
        elif key == "items":
            out[key] = to_structural(value, defs)
        elif key == "additionalProperties":
            out[key] = to_structural(value, defs) if isinstance(value, dict) else value
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    if isinstance(out.get("additionalProperties"), bool):
        # Structural schemas take no boolean here: unknown fields are pruned by the
        # API server (and reported by the webhook) or kept by preserve-unknown-fields.
        del out["additionalProperties"]
    if "enum" in out and "type" not in out:
        out["type"] = _json_type(out["enum"][0])
    if out.get("x-kubernetes-preserve-unknown-fields") and "type" not in out:
        out["type"] = "object"
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out.setdefault("x-kubernetes-preserve-unknown-fields", True)
    if "properties" in out:
        out["type"] = "object"
        if isinstance(out.get("default"), dict):
            # `default: {}` lets the API server fill each child's own default, so a
            # default lives in one place only (the child).
            out["default"] = {}
    return _ordered(out)


_LEADING_KEYS = ("type", "description")


def _ordered(node: Schema) -> Schema:
    """type and description first, the rest alphabetical: stable, readable diffs."""
    rest = sorted(k for k in node if k not in _LEADING_KEYS)
    return {k: node[k] for k in (*_LEADING_KEYS, *rest) if k in node}


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _model_schema(model: type[ModelDeploymentSpec] | type[ModelDeploymentStatus]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return to_structural(raw, defs)


def openapi_schema() -> Schema:
    """The `openAPIV3Schema` of the ModelDeployment CRD."""
    spec = _model_schema(ModelDeploymentSpec)
    status = _model_schema(ModelDeploymentStatus)
    return {
        "type": "object",
        "description": (
            "One served model: vLLM replicas across zones and capacity types, scaled on serving "
            "metrics and moved off spot nodes before they go."
        ),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "gpufleet.io/v1alpha1"},
            "kind": {"type": "string", "description": "ModelDeployment"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def custom_resource_definition() -> dict[str, Any]:
    """The whole CRD object (apiextensions.k8s.io/v1)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "gpufleet", "app.kubernetes.io/part-of": "gpufleet"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["gpufleet", "all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block style, long descriptions kept on one line each so diffs stay readable."""


def render_yaml(obj: Any) -> str:
    header = "# GENERATED by `gpufleet crds` from gpufleet.api: do not edit by hand.\n"
    return header + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=100_000, default_flow_style=False)
