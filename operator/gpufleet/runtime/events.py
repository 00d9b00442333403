"""Posting the Events a plan chose: best effort, since an Event lost is not worth failing the work."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gpufleet.adapters.kube import KubeApi
from gpufleet.planning.report import EventView

log = logging.getLogger("gpufleet.events")


def post_event(kube: KubeApi, involved: Mapping[str, Any], event: EventView, now: datetime) -> None:
    """Post `event` about `involved`; a failure is logged, never raised."""
    try:
        kube.create_event(dict(involved), event.type, event.reason, event.message, now)
    except Exception:
        log.warning(
            "could not post event %s for %s", event.reason, involved["metadata"]["name"], exc_info=True
        )
