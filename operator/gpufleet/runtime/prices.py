"""Keeps the reconciler's spot prices current from the EC2 spot price history (a background thread)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime

from gpufleet.planning.cost import with_spot_prices
from gpufleet.runtime.reconciler import Reconciler

log = logging.getLogger("gpufleet.prices")


class SpotPriceRefresher:
    def __init__(
        self,
        reconciler: Reconciler,
        zones: Callable[[], Iterable[str]],
        fetch: Callable[..., dict[tuple[str, str], float]],
        clock: Callable[[], datetime],
        interval: float,
        leading: threading.Event | None = None,
    ) -> None:
        self.leading = leading
        self.reconciler = reconciler
        self.zones = zones
        self.fetch = fetch
        self.clock = clock
        self.interval = interval
        self.stopped = threading.Event()

    def refresh(self) -> int:
        """One refresh; the number of (instance type, zone) prices read."""
        books = self.reconciler.prices
        instance_types = sorted({b.instance_type for b in books.values() if b.instance_type})
        zones = sorted(set(self.zones()))
        latest = self.fetch(instance_types, zones, now=self.clock())
        # Replacing the mapping (not mutating it) keeps a reconcile in flight on a consistent view.
        self.reconciler.prices = with_spot_prices(books, latest)
        return len(latest)

    def run(self) -> None:
        while not self.stopped.is_set():
            if self.leading is not None and not self.leading.wait(1.0):
                continue
            try:
                count = self.refresh()
                log.info("spot prices refreshed: %d instance type × zone prices", count)
            except Exception:  # prices only tune placement and the estimate; keep the last ones
                log.warning("could not refresh spot prices; keeping the last known", exc_info=True)
            self.stopped.wait(self.interval)
