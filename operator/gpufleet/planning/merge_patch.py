"""JSON merge patches (RFC 7386) of status blocks: what the API server keeps, and how to delete members.

Status is written with merge patches. A merge patch merges objects, so a member
that went away (an ended fallback's start time, an ended panic's timer) would
stay stored for ever unless the patch names it with null; and a null member is
a deletion, so what is stored never holds one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def as_stored(value: Any) -> Any:
    """`value` as the API server keeps it after a merge patch: null members are deletions."""
    if isinstance(value, Mapping):
        return {key: as_stored(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [as_stored(item) for item in value]
    return value


def with_deletions(new: Mapping[str, Any], *stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """`new` as a merge patch that leaves exactly `new` behind: members the stored objects have and `new`
    lacks, at any depth of nested objects, become null."""
    patch = dict(new)
    for old in stored:
        for key, value in (old or {}).items():
            if key not in patch:
                patch[key] = None
            elif isinstance(value, Mapping) and isinstance(patch[key], Mapping):
                patch[key] = with_deletions(patch[key], value)
    return patch
