"""What a run cost and delivered: replica-seconds per zone × capacity type, GPU-hours and money.

Pure: the simulator samples the fleet at intervals of simulated time and adds
each sample here; nothing reads a clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeSample:
    pool: str
    capacity_type: str
    gpus: int
    price_per_hour: float


@dataclass(frozen=True)
class ReplicaSample:
    zone: str
    capacity_type: str
    ready: bool


@dataclass
class Accounting:
    replica_seconds: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    ready_replica_seconds: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    gpu_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    cost: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    elapsed: float = 0.0

    def add(self, seconds: float, replicas: Iterable[ReplicaSample], nodes: Iterable[NodeSample]) -> None:
        """Account `seconds` of simulated time in which the fleet looked like this."""
        self.elapsed += seconds
        for replica in replicas:
            key = (replica.zone, replica.capacity_type)
            self.replica_seconds[key] += seconds
            if replica.ready:
                self.ready_replica_seconds[key] += seconds
        for node in nodes:
            self.gpu_seconds[node.capacity_type] += node.gpus * seconds
            self.cost[node.capacity_type] += node.price_per_hour * seconds / 3600

    @property
    def gpu_hours(self) -> float:
        return sum(self.gpu_seconds.values()) / 3600

    @property
    def total_cost(self) -> float:
        return sum(self.cost.values())

    def rows(self) -> list[tuple[str, str, float, float]]:
        """(zone, capacity type, replica-seconds, ready replica-seconds), sorted."""
        return [
            (
                zone,
                capacity,
                self.replica_seconds[(zone, capacity)],
                self.ready_replica_seconds[(zone, capacity)],
            )
            for zone, capacity in sorted(self.replica_seconds)
        ]
