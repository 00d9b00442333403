"""Run a Simulation on an event loop in a background thread, for tests and tools that are synchronous."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from fleetsim.sim import Simulation

T = TypeVar("T")


class BackgroundSimulation:
    def __init__(self, simulation: Simulation) -> None:
        self.simulation = simulation
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fleetsim", daemon=True)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 300.0) -> T:
        """Run `coroutine` on the simulation's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self, timeout: float = 300.0) -> None:
        self._thread.start()
        self.call(self.simulation.start(), timeout)

    def stop(self, timeout: float = 120.0) -> None:
        if self._thread.is_alive():
            try:
                self.call(self.simulation.stop(), timeout)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(timeout=30)
