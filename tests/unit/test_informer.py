"""The watch-fed cache: list once, watch from the list's version, list again only after a 410 or a
failure, and report what vanished meanwhile. The API server's side is scripted here; the real one is in
tests/integration/test_informer.py."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gpufleet.adapters.kube import KubeError, Listing
from gpufleet.runtime.cached_kube import CachedKube
from gpufleet.runtime.informer import Informer, matches
from tests.conftest import wait_until

LABEL = "gpufleet.io/model-deployment"


def pod(name: str, version: str, namespace: str = "ns", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": version,
            "labels": {"gpufleet.io/model-deployment": "m", **labels},
        }
    }


class ScriptedApi:
    """Lists from `listings` in turn; each watch plays the next script, then ends (the server's timeout).
    A script item that is an exception is raised; `None` blocks the watch until the test releases it."""

    def __init__(self, listings: list[Listing], watches: list[list[Any]]) -> None:
        self.listings = listings
        self.watches = watches
        self.calls: list[tuple[str, str]] = []
        self.release = threading.Event()

    def list_at(self, api_version: str, kind: str, namespace: str | None, label_selector: str) -> Listing:
        self.calls.append(("list", label_selector))
        if not self.listings:
            raise KubeError(0, "no more lists scripted")
        return self.listings.pop(0)

    def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str,
        resource_version: str,
        timeout_seconds: int,
    ) -> Iterator[dict[str, Any]]:
        self.calls.append(("watch", resource_version))
        script = self.watches.pop(0) if self.watches else [None]
        for item in script:
            if item is None:
                self.release.wait(5)
                return
            if isinstance(item, Exception):
                raise item
            yield item


def running(api: ScriptedApi, events: queue.Queue[tuple[str, str]] | None = None) -> Informer:
    def record(kind: str, obj: Any) -> None:
        if events is not None:
            events.put((kind, obj["metadata"]["name"]))

    informer = Informer(api, "v1", "Pod", None, LABEL, record, watch_seconds=(1, 1), min_watch_seconds=0)
    informer.start()
    return informer


def test_it_lists_once_then_watches_from_the_lists_version_and_follows_bookmarks() -> None:
    api = ScriptedApi(
        [Listing([pod("a", "10")], "100")],
        [
            [{"type": "ADDED", "object": pod("b", "101")}, {"type": "BOOKMARK", "object": pod("", "150")}],
            [{"type": "MODIFIED", "object": pod("a", "151")}],
        ],
    )
    informer = running(api)
    try:
        wait_until(lambda: len(api.calls) >= 4, timeout=5, what="three watches")
        assert api.calls[:4] == [
            ("list", "gpufleet.io/model-deployment"),
            ("watch", "100"),
            ("watch", "150"),  # the bookmark's version, not the list's
            ("watch", "151"),
        ]
        listed = informer.list("ns", "gpufleet.io/model-deployment=m")
        assert listed is not None
        assert sorted(o["metadata"]["resourceVersion"] for o in listed) == ["101", "151"]
        assert informer.lists == 1
    finally:
        informer.stop()
        api.release.set()


def test_a_410_lists_again_and_reports_what_was_deleted_while_away() -> None:
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    api = ScriptedApi(
        [Listing([pod("a", "10"), pod("b", "11")], "100"), Listing([pod("b", "12")], "200")],
        [[{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}]],
    )
    informer = running(api, events)
    try:
        wait_until(lambda: informer.lists == 2, timeout=5, what="a second list after the 410")
        seen = [events.get(timeout=5) for _ in range(4)]
        # First list: both new. Second: a is gone (its deletion was never watched), b changed.
        assert seen[:2] == [("MODIFIED", "a"), ("MODIFIED", "b")]
        assert set(seen[2:]) == {("DELETED", "a"), ("MODIFIED", "b")}
        assert [o["metadata"]["name"] for o in informer.list(None) or []] == ["b"]
    finally:
        informer.stop()
        api.release.set()


def test_a_failed_watch_keeps_the_cache_and_lists_again_after_a_backoff() -> None:
    api = ScriptedApi(
        [Listing([pod("a", "10")], "100"), Listing([pod("a", "10")], "300")],
        [[KubeError(0, "connection reset")]],
    )
    informer = running(api)
    try:
        wait_until(lambda: informer.lists == 2, timeout=5, what="a list again after the failure")
        assert informer.synced
        assert [o["metadata"]["name"] for o in informer.list("ns") or []] == ["a"]
    finally:
        informer.stop()
        api.release.set()


def test_deleted_objects_leave_the_cache() -> None:
    api = ScriptedApi([Listing([pod("a", "10")], "100")], [[{"type": "DELETED", "object": pod("a", "11")}]])
    informer = running(api)
    try:
        wait_until(lambda: len(informer) == 0, timeout=5, what="a deleted")
    finally:
        informer.stop()
        api.release.set()


def test_a_cache_not_yet_synced_sends_lists_to_the_api_server() -> None:
    class Api:
        def __init__(self) -> None:
            self.listed = 0

        def list(self, api_version: str, kind: str, namespace: str | None, selector: str) -> list[Any]:
            self.listed += 1
            return [pod("from-api", "1")]

    direct = Api()
    informer = Informer(ScriptedApi([], []), "v1", "Pod", "ns", "gpufleet.io/model-deployment")
    cached = CachedKube(direct, [informer])  # type: ignore[arg-type]
    assert [p["metadata"]["name"] for p in cached.list("v1", "Pod", "ns", "x=y")] == ["from-api"]
    # A namespace it does not watch, and a kind it does not cache, also go to the API server.
    assert cached.list("apps/v1", "Deployment", "ns", "x=y")
    assert direct.listed == 2


def test_a_synced_cache_answers_without_the_api_server() -> None:
    api = ScriptedApi([Listing([pod("a", "1", model="x"), pod("b", "2", model="y")], "9")], [])
    informer = running(api)
    try:
        assert informer.wait_synced(5)
        cached = CachedKube(None, [informer])  # type: ignore[arg-type]
        names = [p["metadata"]["name"] for p in cached.list("v1", "Pod", "ns", "model=x")]
        assert names == ["a"]
        assert cached.list("v1", "Pod", "other", "model=x") == []
    finally:
        informer.stop()
        api.release.set()


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("a=1", True),
        ("a==1", True),
        ("a=2", False),
        ("a!=2", True),
        ("a!=1", False),
        ("a", True),
        ("c", False),
        ("!c", True),
        ("!a", False),
        ("a=1,b=2", True),
        ("a=1,b=3", False),
        ("a in (1,2)", None),
    ],
)
def test_equality_selectors_match_as_the_api_server_does(selector: str, expected: bool | None) -> None:
    assert matches({"a": "1", "b": "2"}, selector) is expected


def test_the_index_answers_a_models_list_and_follows_additions_relabels_and_deletions() -> None:
    def labelled(name: str, version: str, model: str) -> dict[str, Any]:
        obj = pod(name, version)
        obj["metadata"]["labels"]["gpufleet.io/model-deployment"] = model
        return obj

    api = ScriptedApi(
        [Listing([labelled("a1", "1", "a"), labelled("b1", "2", "b")], "10")],
        [
            [
                {"type": "ADDED", "object": labelled("a2", "11", "a")},
                {"type": "MODIFIED", "object": labelled("a1", "12", "b")},  # relabelled: it moves
                {"type": "DELETED", "object": labelled("b1", "13", "b")},
                None,  # the watch stays open: the state below holds
            ]
        ],
    )
    informer = Informer(
        api,
        "v1",
        "Pod",
        None,
        "",
        watch_seconds=(1, 1),
        index_label="gpufleet.io/model-deployment",
        min_watch_seconds=0,
    )

    def names(model: str) -> list[str] | None:
        found = informer.list("ns", f"gpufleet.io/model-deployment={model}")
        return None if found is None else sorted(o["metadata"]["name"] for o in found)

    informer.start()
    try:
        wait_until(lambda: names("b") == ["a1"], timeout=5, what="a1 relabelled, b1 deleted")
        assert names("a") == ["a2"]
        assert names("c") == []
        assert ("ns", "b") in informer._index
        # Lists the index cannot answer still scan: all namespaces, a selector without the label.
        assert len(informer.list(None) or []) == 2
        assert len(informer.list("ns", "gpufleet.io/model-deployment!=a") or []) == 1
    finally:
        informer.stop()
        api.release.set()


def test_the_index_holds_no_entry_for_a_model_whose_objects_are_all_gone() -> None:
    api = ScriptedApi([Listing([pod("a", "1")], "10")], [[{"type": "DELETED", "object": pod("a", "2")}]])
    informer = Informer(
        api,
        "v1",
        "Pod",
        None,
        "",
        watch_seconds=(1, 1),
        index_label="gpufleet.io/model-deployment",
        min_watch_seconds=0,
    )
    informer.start()
    try:
        wait_until(lambda: len(informer) == 0, timeout=5, what="a deleted")
        assert informer._index == {}
    finally:
        informer.stop()
        api.release.set()


def test_the_cache_keeps_no_managed_fields_from_lists_or_watches() -> None:
    fields = [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {}}}]
    listed, watched = pod("a", "10"), pod("b", "101")
    listed["metadata"]["managedFields"] = fields
    watched["metadata"]["managedFields"] = fields
    api = ScriptedApi([Listing([listed], "100")], [[{"type": "ADDED", "object": watched}]])
    informer = running(api)
    try:
        wait_until(lambda: len(api.calls) >= 3, timeout=5, what="the watch played")
        cached = informer.list("ns", "gpufleet.io/model-deployment=m")
        assert cached is not None
        assert sorted(o["metadata"]["name"] for o in cached) == ["a", "b"]
        assert all("managedFields" not in o["metadata"] for o in cached)
        assert all(o["metadata"]["labels"] for o in cached)  # the rest of the metadata is kept
    finally:
        informer.stop()
        api.release.set()


def test_an_applied_object_is_read_back_before_its_watch_event_arrives() -> None:
    class Writes:
        def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
            return {**obj, "metadata": {**obj["metadata"], "resourceVersion": "150", "managedFields": []}}

    api = ScriptedApi([Listing([pod("a", "10")], "100")], [[None]])  # the watch delivers nothing yet
    informer = running(api)
    cached = CachedKube(Writes(), [informer])  # type: ignore[arg-type]
    try:
        wait_until(lambda: informer.synced, timeout=5, what="the first list")
        new = {"apiVersion": "v1", "kind": "Pod", **pod("b", "")}
        cached.apply(new)
        names = sorted(p["metadata"]["name"] for p in cached.list("v1", "Pod", "ns", LABEL))
        assert names == ["a", "b"]
        # Unlabelled, or older than what the list already showed: not held.
        assert not informer.observe_write(
            {"metadata": {"name": "c", "namespace": "ns", "resourceVersion": "160"}}
        )
        assert not informer.observe_write(pod("d", "90"))
        assert len(informer) == 2
    finally:
        informer.stop()
        api.release.set()


def test_a_write_the_watch_has_already_gone_past_leaves_no_ghost() -> None:
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    api = ScriptedApi(
        [Listing([], "100")],
        [
            [
                {"type": "ADDED", "object": pod("b", "150")},
                {"type": "DELETED", "object": pod("b", "160")},
                None,
            ]
        ],
    )
    informer = running(api, events)
    try:
        assert [events.get(timeout=5) for _ in range(2)] == [("ADDED", "b"), ("DELETED", "b")]
        # The apply that created b returns only now, after the watch showed its creation and deletion.
        assert not informer.observe_write(pod("b", "150"))
        assert informer.list("ns", LABEL) == []
    finally:
        informer.stop()
        api.release.set()
