"""Simulated time: one scale applied to every simulated delay.

`scale` is simulated seconds per real second: with scale 10 a 120 s spot
notice lasts 12 real seconds, a 37 s model load 3.7 s, and so does every
other delay the simulator models, so a 30-minute story runs in 3 minutes
with its proportions intact. Metrics report simulated seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class SimClock:
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ValueError(f"time scale must be > 0, got {self.scale}")

    def real(self, simulated_seconds: float) -> float:
        """Real seconds that `simulated_seconds` take."""
        return simulated_seconds / self.scale

    def simulated(self, real_seconds: float) -> float:
        return real_seconds * self.scale

    async def sleep(self, simulated_seconds: float) -> None:
        await asyncio.sleep(self.real(simulated_seconds))

    def now(self) -> float:
        """Monotonic simulated seconds."""
        return time.monotonic() * self.scale
