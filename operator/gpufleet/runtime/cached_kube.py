"""A KubeApi whose lists of cached kinds come from informers (runtime.informer), the rest from the API.

Reconciles and autoscaler evaluations list a model's pods and Deployments every pass: thousands of LISTs
a minute in a large fleet, each a full read on the API server. Served from the watch caches they cost
nothing. A list the caches cannot answer (not synced yet, a namespace not watched, a set-based selector)
goes to the API server as before. Gets pass through unchanged; writes too, and what an apply returns
is held in the cache until the watch delivers it (Informer.observe_write), so a reconcile reads its
own writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gpufleet.adapters.kube import KubeApi
from gpufleet.runtime.informer import Informer
from gpufleet.runtime.kube_passthrough import KubePassthrough


class CachedKube(KubePassthrough):
    def __init__(self, kube: KubeApi, informers: Iterable[Informer]) -> None:
        super().__init__(kube)
        self._informers: dict[tuple[str, str], list[Informer]] = {}
        for informer in informers:
            self._informers.setdefault((informer.api_version, informer.kind), []).append(informer)

    def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str
    ) -> list[dict[str, Any]]:
        for informer in self._informers.get((api_version, kind), ()):
            cached = informer.list(namespace, label_selector)
            if cached is not None:
                # Planners only read; a shallow copy of the list keeps the cache's own list private.
                return [dict(obj) for obj in cached]
        return self._kube.list(api_version, kind, namespace, label_selector)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        result = self._kube.apply(obj)
        for informer in self._informers.get((str(obj.get("apiVersion")), str(obj.get("kind"))), ()):
            if informer.observe_write(result):
                break
        return result
