"""Forgets ModelDeployments deleted while the watch was away (planning.observe.missed_by_the_watch).

Every resync interval it lists the ModelDeployments (in each watched namespace, or all) and tells the
operator what the watch did not: deletions, and objects deleted and created again under the same name.
A list that fails changes nothing: an API error never makes the operator forget a model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gpufleet.adapters.kube import KubeApi
from gpufleet.api.v1alpha1 import API_VERSION, KIND
from gpufleet.planning.observe import Key, missed_by_the_watch
from gpufleet.runtime.work_queue import WorkQueue

log = logging.getLogger("gpufleet.watch")


class WatchGapCheck:
    def __init__(
        self,
        kube: KubeApi,
        namespaces: Sequence[str],
        queue: WorkQueue,
        changed: Callable[[Key, Mapping[str, Any] | None], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespaces = list(namespaces)
        self.queue = queue
        self.changed = changed  # the operator's model_deployment_changed
        self.clock = clock

    def _list(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = []
        scopes: list[str | None] = [*self.namespaces] or [None]
        for namespace in scopes:
            listed.extend(self.kube.list(API_VERSION, KIND, namespace, ""))
        return listed

    async def once(self) -> tuple[set[Key], set[Key]]:
        """One check, on the event loop that owns the queue; (forgotten, replaced) keys."""
        started = self.clock()
        try:
            listed = await asyncio.to_thread(self._list)
        except Exception:
            log.warning("could not list ModelDeployments; nothing is forgotten this time", exc_info=True)
            return set(), set()
        settled = [key for key, at in self.queue.received_at.items() if at < started]
        gone, replaced = missed_by_the_watch(dict(self.queue.bodies), listed, settled)
        for key in sorted(gone):
            log.warning("%s/%s is gone but its deletion was never watched; forgetting it", *key)
            self.changed(key, None)
        for key, body in sorted(replaced.items()):
            log.warning("%s/%s was deleted and created again while unwatched; taking the new one", *key)
            self.changed(key, body)
        return gone, set(replaced)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.once()
