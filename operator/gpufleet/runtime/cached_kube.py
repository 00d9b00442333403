"""A KubeApi whose lists of cached kinds come from informers (runtime.informer), the rest from the API.

Reconciles and autoscaler evaluations list a model's pods and Deployments every pass: thousands of LISTs
a minute in a large fleet, each a full read on the API server. Served from the watch caches they cost
nothing. A list the caches cannot answer (not synced yet, a namespace not watched, a set-based selector)
goes to the API server as before. Writes and gets pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from gpufleet.adapters.kube import KubeApi
from gpufleet.runtime.informer import Informer


class CachedKube:
    def __init__(self, kube: KubeApi, informers: Iterable[Informer]) -> None:
        self._kube = kube
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

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._kube.get(api_version, kind, namespace, name)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._kube.apply(obj)

    def patch(
        self, api_version: str, kind: str, namespace: str | None, name: str, merge_patch: dict[str, Any]
    ) -> dict[str, Any]:
        return self._kube.patch(api_version, kind, namespace, name, merge_patch)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self._kube.delete(api_version, kind, namespace, name)

    def evict(self, namespace: str, pod: str) -> bool:
        return self._kube.evict(namespace, pod)

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        self._kube.patch_status(api_version, kind, namespace, name, status)

    def create_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str, now: datetime
    ) -> None:
        self._kube.create_event(involved, event_type, reason, message, now)

    def patch_scale(self, api_version: str, kind: str, namespace: str, name: str, replicas: int) -> None:
        self._kube.patch_scale(api_version, kind, namespace, name, replicas)

    def flush_events(self, timeout: float) -> bool:
        return self._kube.flush_events(timeout)
