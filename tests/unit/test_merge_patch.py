"""Status writes are JSON merge patches (RFC 7386): what is stored after one, and deleting what went away."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gpufleet.planning.merge_patch import as_stored, with_deletions
from tests.unit.fake_kube import merge  # RFC 7386, section 2


def test_null_members_are_not_stored_at_any_depth() -> None:
    written = {"a": 1, "b": None, "c": {"d": None, "e": [{"f": None, "g": 2}]}}
    assert as_stored(written) == {"a": 1, "c": {"e": [{"g": 2}]}}


@pytest.mark.parametrize(
    ("new", "stored", "patch"),
    [
        ({"a": 1}, [{"a": 0, "b": 2}], {"a": 1, "b": None}),
        # nested objects merge, so a member gone from one is deleted there and nowhere else
        (
            {"spot": {"handled": 1}},
            [{"spot": {"handled": 1, "fallbackSince": "t"}}],
            {"spot": {"handled": 1, "fallbackSince": None}},
        ),
        # lists are replaced whole: nothing to delete inside them
        ({"l": [{"a": 1}]}, [{"l": [{"a": 1, "b": 2}]}], {"l": [{"a": 1}]}),
        # a member the new value sets to null already deletes
        ({"a": None}, [{"a": {"b": 1}}], {"a": None}),
        # an object replacing a scalar carries no deletions
        ({"a": {"b": 1}}, [{"a": 3}], {"a": {"b": 1}}),
        # every stored view counts; None is nothing stored
        ({"a": 1}, [{"b": 1}, None, {"c": {"d": 1}}], {"a": 1, "b": None, "c": None}),
        ({"a": 1}, [], {"a": 1}),
    ],
)
def test_members_the_stored_objects_have_and_the_new_lacks_are_deleted(
    new: dict[str, Any], stored: list[dict[str, Any] | None], patch: dict[str, Any]
) -> None:
    assert with_deletions(new, *stored) == patch


def test_merging_the_patch_over_what_is_stored_leaves_exactly_the_new_value() -> None:
    stored = {
        "spot": {"handled": 2, "fallbackSince": "t", "cooldowns": [1]},
        "cost": {"perHour": 3.0},
        "x": 1,
    }
    new = {"spot": {"handled": 3, "cooldowns": []}, "cost": {"message": "no price"}, "x": 1}
    before = copy.deepcopy(new)
    assert merge(stored, with_deletions(new, stored)) == new
    assert new == before  # the caller's value is left as it was
