"""Posting the Events a plan chose: best effort, since an Event lost is not worth failing the work.

Nor is it worth delaying the work: `QueuedEvents` wraps the KubeApi that reconciles and autoscaler
evaluations write through, and turns `create_event` into a put on a bounded in-memory queue that one
daemon thread posts from. A slow or refusing API server then costs a reconcile nothing for its Events
(each post was one round trip, up to the request timeout), and memory stays bounded whatever it does.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gpufleet.adapters.kube import KubeApi
from gpufleet.planning.report import EventView
from gpufleet.runtime.kube_passthrough import KubePassthrough

log = logging.getLogger("gpufleet.events")

# Events waiting at most; beyond it the oldest gives way. An Event is about 1 KiB here.
QUEUE_CAPACITY = 1000

# Reasons an Event is never posted (the label of gpufleet_events_dropped_total).
DROPPED_QUEUE_FULL = "queue_full"
DROPPED_POST_FAILED = "post_failed"
DROPPED_STOPPED = "stopped"


def post_event(kube: KubeApi, involved: Mapping[str, Any], event: EventView, now: datetime) -> None:
    """Post `event` about `involved`; a failure is logged, never raised."""
    try:
        kube.create_event(dict(involved), event.type, event.reason, event.message, now)
    except Exception:
        log.warning(
            "could not post event %s for %s", event.reason, involved["metadata"]["name"], exc_info=True
        )


@dataclass(frozen=True)
class _Waiting:
    involved: dict[str, Any]
    event_type: str
    reason: str
    message: str
    now: datetime

    @property
    def identity(self) -> tuple[str, ...]:
        meta = self.involved.get("metadata") or {}
        who = (str(meta.get("uid", "")), str(meta.get("namespace", "")), str(meta.get("name", "")))
        return (*who, self.event_type, self.reason, self.message)


def _reference(involved: Mapping[str, Any]) -> dict[str, Any]:
    """What an Event names of its object. A waiting Event keeps only this, not the whole body: a
    thousand full ModelDeployments would be megabytes, and the body may change before the post."""
    meta = involved.get("metadata") or {}
    return {
        "apiVersion": involved.get("apiVersion"),
        "kind": involved.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid") if k in meta},
    }


class QueuedEvents(KubePassthrough):
    """A KubeApi that posts Events from a bounded queue on its own thread; every other call goes
    straight to the wrapped API, unchanged.

    Wrap the fenced API (runtime.fencing) so the leadership check applies when an Event is posted,
    not when it was queued. `on_drop(reason)` and `on_depth(n)` report to the operator's metrics.
    """

    def __init__(
        self,
        kube: KubeApi,
        capacity: int = QUEUE_CAPACITY,
        on_drop: Callable[[str], object] | None = None,
        on_depth: Callable[[int], object] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"an event queue holds at least one event, not {capacity}")
        super().__init__(kube)
        self._capacity = capacity
        self._on_drop = on_drop
        self._on_depth = on_depth
        self._waiting: deque[_Waiting] = deque()
        self._identities: set[tuple[str, ...]] = set()  # of the events in _waiting, for coalescing
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = False
        self.posted = 0
        # Events ever queued, and ever done with (posted, refused or dropped): they leave in order, so
        # `flush` waits for the second to reach what the first was when it was called.
        self._queued = 0
        self._done = 0
        self.dropped: dict[str, int] = dict.fromkeys(
            (DROPPED_QUEUE_FULL, DROPPED_POST_FAILED, DROPPED_STOPPED), 0
        )

    # --- the queue -------------------------------------------------------------------------------

    def create_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str, now: datetime
    ) -> None:
        """Queue the Event and return at once; it is posted in order with the others waiting."""
        waiting = _Waiting(_reference(involved), event_type, reason, message, now)
        with self._changed:
            if self._stopped:
                self._drop(DROPPED_STOPPED)  # no worker will ever post it
                return
            if waiting.identity in self._identities:
                return  # the same Event still waits (a reconcile retried): one post says it
            if len(self._waiting) >= self._capacity:
                # The oldest gives way: the newest says more about the object as it is now.
                oldest = self._waiting.popleft()
                self._identities.discard(oldest.identity)
                self._drop(DROPPED_QUEUE_FULL)
                self._done += 1
            self._waiting.append(waiting)
            self._queued += 1
            self._identities.add(waiting.identity)
            self._depth()
            self._changed.notify()

    def flush_events(self, timeout: float) -> bool:
        """Wait until every Event queued before this call has been posted (or given up on); False after
        `timeout`. For Events whose loss a status write would hide (a reconcile records an interruption
        as handled): posted before that write, a kill between the two repeats them instead of losing
        them. Such Events are rare, so reconciles almost never wait here."""
        with self._changed:
            target = self._queued
            return self._changed.wait_for(lambda: self._done >= target or self._stopped, timeout)

    @property
    def depth(self) -> int:
        with self._changed:
            return len(self._waiting)

    def start(self) -> None:
        """Start the posting thread (once; a stopped queue stays stopped)."""
        with self._changed:
            if self._thread is not None or self._stopped:
                return
            self._thread = threading.Thread(target=self._run, name="event-poster", daemon=True)
            self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Post what waits for at most `timeout` seconds, then drop the rest; True when all was posted.

        Returns within the timeout even when a post hangs (the daemon thread is left to it). Events
        queued afterwards are dropped. Idempotent; safe when never started.
        """
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._changed:
            self._stopped = True
            left = len(self._waiting)
            for _ in range(left):
                self._drop(DROPPED_STOPPED)
            self._done += left
            self._waiting.clear()
            self._identities.clear()
            self._depth()
        if left:
            log.warning("%d event(s) not posted: stopped before they could be", left)
        return left == 0 and (thread is None or not thread.is_alive())

    def _drop(self, reason: str) -> None:
        # Called with the lock held.
        self.dropped[reason] += 1
        if self._on_drop is not None:
            self._on_drop(reason)

    def _depth(self) -> None:
        # Called with the lock held, so the gauge never shows an older depth after a newer one.
        if self._on_depth is not None:
            self._on_depth(len(self._waiting))

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._stopping:
                    self._changed.wait()
                if not self._waiting:
                    return  # stopping, and everything posted
                waiting = self._waiting.popleft()
                self._identities.discard(waiting.identity)
                self._depth()
            try:
                self._kube.create_event(
                    waiting.involved, waiting.event_type, waiting.reason, waiting.message, waiting.now
                )
            except Exception as error:
                # Not retried: an API server that refuses now would have the queue fill with retries,
                # and a standby's refusal (runtime.fencing) will not change.
                name = waiting.involved["metadata"].get("name")
                log.warning("could not post event %s for %s: %s", waiting.reason, name, error)
                with self._changed:
                    self._drop(DROPPED_POST_FAILED)
                    self._done += 1
                    self._changed.notify_all()
            else:
                with self._changed:
                    self.posted += 1
                    self._done += 1
                    self._changed.notify_all()
