"""The watch-gap check (runtime.watch_gaps): a fresh list forgets what the watch never said was deleted."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpufleet.adapters.kube import KubeError
from gpufleet.planning.observe import Key
from gpufleet.runtime.watch_gaps import WatchGapCheck
from gpufleet.runtime.work_queue import WorkQueue
from tests.unit.fake_kube import FakeKube


def md(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"namespace": "ml", "name": name, "uid": uid},
    }


@dataclass
class Checked:
    gone: set[Key]
    replaced: set[Key]
    changes: list[tuple[Key, str | None]]  # what the operator was told: key, new uid or None (deleted)
    known_after: set[Key]


def run_check(kube: FakeKube, known: list[dict[str, Any]], namespaces: list[str]) -> Checked:
    """One check on an event loop, with a work queue that knows `known`."""
    changes: list[tuple[Key, str | None]] = []

    async def scenario() -> Checked:
        queue = WorkQueue(lambda key, body: None, workers=1, resync=600)

        def changed(key: Key, body: Mapping[str, Any] | None) -> None:
            changes.append((key, None if body is None else body["metadata"]["uid"]))
            queue.set_body(key, body)

        for body in known:
            queue.set_body(("ml", body["metadata"]["name"]), body)
        gone, replaced = await WatchGapCheck(kube, namespaces, queue, changed).once()
        return Checked(gone, replaced, changes, set(queue.bodies))

    return asyncio.run(scenario())


def test_a_deletion_the_watch_missed_is_forgotten_and_a_recreation_taken() -> None:
    kube = FakeKube()
    for body in (md("kept", "1"), md("again", "9")):
        kube.objects[("ModelDeployment", "ml", body["metadata"]["name"])] = body
    checked = run_check(kube, [md("kept", "1"), md("gone", "2"), md("again", "3")], [])
    assert checked.gone == {("ml", "gone")}
    assert checked.replaced == {("ml", "again")}
    assert sorted(checked.changes) == [(("ml", "again"), "9"), (("ml", "gone"), None)]
    assert checked.known_after == {("ml", "kept"), ("ml", "again")}


def test_watched_namespaces_are_listed_one_by_one() -> None:
    kube = FakeKube()
    kube.objects[("ModelDeployment", "ml", "kept")] = md("kept", "1")
    kube.objects[("ModelDeployment", "other", "x")] = {
        **md("x", "5"),
        "metadata": {"namespace": "other", "name": "x", "uid": "5"},
    }
    assert run_check(kube, [md("kept", "1")], ["ml"]).gone == set()


def test_a_list_that_fails_forgets_nothing() -> None:
    kube = FakeKube()

    def refuse(*_: object) -> list[dict[str, Any]]:
        raise KubeError(503, "the API server is restarting")

    kube.list = refuse  # type: ignore[method-assign,assignment]
    checked = run_check(kube, [md("kept", "1")], [])
    assert (checked.gone, checked.replaced, checked.changes) == (set(), set(), [])
    assert checked.known_after == {("ml", "kept")}
