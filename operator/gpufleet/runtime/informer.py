"""Watch-fed caches of the objects gpufleet owns, filtered by label on the API server.

One Informer per kind and namespace scope: LIST once, then WATCH from the list's resourceVersion, as
client-go's reflector does. The API server ends a watch every minute or two and the informer watches
again from the last version it saw (bookmarks keep that version fresh), so a steady state costs one
WATCH per minute and no LIST. It lists again only when the version is too old (410 Gone) or the
connection failed; objects that vanished while it was away are reported as deleted then.

Reconciles and the autoscaler read these caches instead of listing (runtime.cached_kube). Until the
first list has arrived, they are told the cache is not synced and read from the API server instead:
an empty cache read as "no pods" would plan a fleet from nothing.
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from gpufleet.adapters.kube import KubeError, Listing
from gpufleet.runtime.work_queue import jittered_backoff

log = logging.getLogger("gpufleet.informer")

# The API server is asked to end each watch after a random time in this range (client-go: 5-10 min;
# shorter here so a watch the server forgot is noticed sooner, at the cost of a WATCH a minute).
WATCH_SECONDS = (60, 120)
# A watch that ends sooner than this is followed by a pause of as long before the next.
MIN_WATCH_SECONDS = 1.0
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0

ObjectKey = tuple[str, str]  # (namespace, name)
# (event type ADDED/MODIFIED/DELETED, the object): called from the informer's thread.
Handler = Callable[[str, Mapping[str, Any]], None]


class WatchApi(Protocol):
    def list_at(self, api_version: str, kind: str, namespace: str | None, label_selector: str) -> Listing: ...

    def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str,
        resource_version: str,
        timeout_seconds: int,
    ) -> Iterator[dict[str, Any]]: ...


class GoneError(Exception):
    """The watch's resourceVersion is older than the API server keeps: list again."""


def matches(labels: Mapping[str, str], selector: str) -> bool | None:
    """Whether labels match an equality-based selector ("a=b,c!=d,e,!f"); None for a selector this
    cannot judge (set-based), so the caller asks the API server instead."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if " in " in term or " notin " in term or "(" in term:
            return None
        if "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (part.strip() for part in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _version(obj: Mapping[str, Any] | None) -> str | None:
    return None if obj is None else (obj.get("metadata") or {}).get("resourceVersion")


def _number(version: str | None) -> int | None:
    """A resourceVersion as etcd's revision; None when it is not one (then nothing is compared)."""
    try:
        return int(version) if version else None
    except ValueError:
        return None


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without its managedFields: nothing of ours reads them, and they are a large share of a
    pod's or Deployment's size in memory (client-go's informers drop them for the same reason)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


def _key(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


class Informer:
    """The objects of one kind, in one namespace (None: all), that match `label_selector`."""

    def __init__(
        self,
        api: WatchApi,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str,
        on_change: Handler | None = None,
        watch_seconds: tuple[int, int] = WATCH_SECONDS,
        index_label: str | None = None,
        min_watch_seconds: float = MIN_WATCH_SECONDS,
    ) -> None:
        self.api = api
        self.api_version = api_version
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.on_change = on_change
        self.watch_seconds = watch_seconds
        self.min_watch_seconds = min_watch_seconds
        self._objects: dict[ObjectKey, Mapping[str, Any]] = {}
        # (namespace, value of index_label) → the objects with it: a reconcile lists one model's pods,
        # and scanning every cached pod of every model for it would make N reconciles cost N².
        self.index_label = index_label
        self._index: dict[tuple[str, str], dict[ObjectKey, Mapping[str, Any]]] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.lists = 0  # how often it had to list (a steady state adds none)
        self._seen_version = 0  # the highest resourceVersion the list and watch have delivered

    # --- reading -----------------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def covers(self, namespace: str | None) -> bool:
        return self.namespace is None or self.namespace == namespace

    def list(self, namespace: str | None, selector: str = "") -> list[Mapping[str, Any]] | None:
        """The cached objects in `namespace` (None: all) matching `selector`; None when this cache
        cannot answer (not synced, another namespace, a set-based selector)."""
        if not self.synced or not self.covers(namespace):
            return None
        indexed = self._indexed_value(selector)
        with self._lock:
            if namespace is not None and indexed is not None:
                candidates = list(self._index.get((namespace, indexed), {}).values())
            else:
                candidates = [
                    o for (ns, _), o in self._objects.items() if namespace is None or ns == namespace
                ]
        found = []
        for obj in candidates:
            verdict = matches((obj.get("metadata") or {}).get("labels") or {}, selector)
            if verdict is None:
                return None
            if verdict:
                found.append(obj)
        return found

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    def observe_write(self, obj: Mapping[str, Any]) -> bool:
        """Hold the object one of our writes returned until the watch delivers it (client-go's mutation
        cache). Without this, the next reconcile reads the cache from before its own write, finds no
        Deployment it has just created, and writes it again. Kept only while the watch has not gone past
        the write's version: past it, the cache already says what became of the object (a deletion, a
        newer version), and the written copy would be a ghost. Whether it was held."""
        version = _number(_version(obj))
        meta = obj.get("metadata") or {}
        if version is None or not self.synced or not self.covers(meta.get("namespace")):
            return False
        if matches(meta.get("labels") or {}, self.label_selector) is not True:
            return False
        key = _key(obj)
        with self._lock:
            cached = _number(_version(self._objects.get(key)))
            if version <= self._seen_version or (cached is not None and cached >= version):
                return False
            held = _slim(copy.deepcopy(dict(obj)))
            held.setdefault("apiVersion", self.api_version)
            held.setdefault("kind", self.kind)
            self._drop_from_index(key, self._objects.get(key))
            self._objects[key] = held
            self._add_to_index(key, held)
        return True

    # --- running -----------------------------------------------------------------------------------

    def start(self) -> None:
        scope = self.namespace or "all namespaces"
        self._thread = threading.Thread(target=self.run, name=f"informer-{self.kind}-{scope}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        """List, then watch, until stopped; list again after a 410 or a failure, backing off."""
        failures = 0
        while not self._stopped.is_set():
            try:
                version = self._relist()
                failures = 0
                while not self._stopped.is_set():
                    started = time.monotonic()
                    version = self._watch_once(version)
                    if time.monotonic() - started < self.min_watch_seconds:
                        # Ended at once (a proxy's idle cut, an API server going down): do not spin.
                        self._stopped.wait(self.min_watch_seconds)
            except GoneError:
                log.info("%s watch: resourceVersion too old, listing again", self.kind)
            except KubeError as error:
                failures += 1
                delay = self._backoff(failures)
                log.warning("%s watch failed (%s); again in %.1fs", self.kind, error, delay)
                self._stopped.wait(delay)
            except Exception:
                # A bug here must not end the thread: the cache would freeze, silently.
                failures += 1
                log.exception("%s informer failed; listing again", self.kind)
                self._stopped.wait(self._backoff(failures))

    @staticmethod
    def _backoff(failures: int) -> float:
        return jittered_backoff(failures, FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS, random.random())

    def _relist(self) -> str:
        listing = self.api.list_at(self.api_version, self.kind, self.namespace, self.label_selector)
        self.lists += 1
        fresh: dict[ObjectKey, Mapping[str, Any]] = {_key(obj): _slim(obj) for obj in listing.items}
        with self._lock:
            self._seen_version = _number(listing.resource_version) or self._seen_version
            gone = [obj for key, obj in self._objects.items() if key not in fresh]
            changed = [obj for key, obj in fresh.items() if _version(self._objects.get(key)) != _version(obj)]
            self._objects = fresh
            self._index = {}
            for key, obj in fresh.items():
                self._add_to_index(key, obj)
        self._synced.set()
        # Deleted while the watch was away: nobody else will say so.
        for obj in gone:
            self._notify("DELETED", obj)
        for obj in changed:
            self._notify("MODIFIED", obj)
        return listing.resource_version

    def _watch_once(self, version: str) -> str:
        """One watch until the API server ends it; the last version seen."""
        timeout = random.randint(*self.watch_seconds)
        events = self.api.watch(
            self.api_version, self.kind, self.namespace, self.label_selector, version, timeout
        )
        for event in events:
            if self._stopped.is_set():
                break
            kind, obj = event.get("type"), _slim(event.get("object") or {})
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise GoneError()
                raise KubeError(int(obj.get("code") or 0), f"{self.kind} watch: {obj.get('message')}")
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind == "BOOKMARK":
                with self._lock:
                    self._seen_version = max(self._seen_version, _number(version) or 0)
                continue
            obj.setdefault("apiVersion", self.api_version)
            obj.setdefault("kind", self.kind)
            with self._lock:
                self._seen_version = max(self._seen_version, _number(version) or 0)
                key = _key(obj)
                self._drop_from_index(key, self._objects.pop(key, None))
                if kind != "DELETED":
                    self._objects[key] = obj
                    self._add_to_index(key, obj)
            self._notify(str(kind), obj)
        return version

    def _indexed_value(self, selector: str) -> str | None:
        """The value the selector requires of index_label ("label=value"), if it requires one."""
        if self.index_label is None:
            return None
        for term in selector.split(","):
            key, equals, value = term.replace("==", "=").partition("=")
            if equals and not key.endswith("!") and key.strip() == self.index_label:
                return value.strip()
        return None

    def _index_key(self, key: ObjectKey, obj: Mapping[str, Any]) -> tuple[str, str] | None:
        if self.index_label is None:
            return None
        value = ((obj.get("metadata") or {}).get("labels") or {}).get(self.index_label)
        return None if value is None else (key[0], value)

    def _add_to_index(self, key: ObjectKey, obj: Mapping[str, Any]) -> None:
        slot = self._index_key(key, obj)
        if slot is not None:
            self._index.setdefault(slot, {})[key] = obj

    def _drop_from_index(self, key: ObjectKey, obj: Mapping[str, Any] | None) -> None:
        slot = None if obj is None else self._index_key(key, obj)
        if slot is None:
            return
        members = self._index.get(slot, {})
        members.pop(key, None)
        if not members:
            self._index.pop(slot, None)  # an empty entry per model ever seen would only grow

    def _notify(self, kind: str, obj: Mapping[str, Any]) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(kind, obj)
        except Exception:
            log.exception("%s handler failed for %s", self.kind, _key(obj))
