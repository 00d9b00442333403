"""Test documents with changes given as keyword arguments: `spec__model__uri="..."`."""

from __future__ import annotations

import copy
from typing import Any


def with_changes(doc: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `doc` with each `a__b__c=value` set; a value of None removes the key."""
    result = copy.deepcopy(doc)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = result
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return result
