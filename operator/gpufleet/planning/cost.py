"""Prices → the estimated hourly cost of a model's replicas and its all-on-demand equivalent.

Prices are per instance-hour, as AWS publishes them (on-demand list prices and
the spot price history), and configured per GPU product (the node label
nvidia.com/gpu.product): a replica pays for its share of the instance, its
GPUs / gpusPerInstance, or 1 / slices-per-GPU of one GPU for a MIG slice.
A spot replica in a zone without a known spot price is estimated at the mean
of the known spot prices, and at on-demand when none is known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from gpufleet.api.catalog import MIG_PROFILES
from gpufleet.api.v1alpha1 import CostStatus, ModelDeploymentSpec
from gpufleet.planning.placement import CapacityType


@dataclass(frozen=True)
class ProductPrices:
    on_demand: float  # per instance-hour
    gpus_per_instance: int
    spot: Mapping[str, float] = field(default_factory=dict)  # zone → per instance-hour
    instance_type: str = ""  # for the spot price refresh
    currency: str = "USD"

    def per_gpu(self, capacity_type: CapacityType, zone: str) -> float:
        if capacity_type == "on-demand":
            return self.on_demand / self.gpus_per_instance
        if zone in self.spot:
            return self.spot[zone] / self.gpus_per_instance
        if self.spot:
            return sum(self.spot.values()) / len(self.spot) / self.gpus_per_instance
        return self.on_demand / self.gpus_per_instance

    def spot_per_gpu_by_zone(self) -> dict[str, float]:
        return {zone: price / self.gpus_per_instance for zone, price in self.spot.items()}


@dataclass(frozen=True)
class CostEstimate:
    per_hour: float | None
    on_demand_equivalent_per_hour: float | None
    currency: str
    message: str

    def to_status(self) -> CostStatus:
        return CostStatus(
            currency=self.currency,
            message=self.message,
            per_hour=None if self.per_hour is None else round(self.per_hour, 2),
            on_demand_equivalent_per_hour=None
            if self.on_demand_equivalent_per_hour is None
            else round(self.on_demand_equivalent_per_hour, 2),
        )


def product_for(
    requested: str | None, prices: Mapping[str, ProductPrices]
) -> tuple[str | None, ProductPrices | None]:
    """The spec's GPU product, or the only one priced; None when it cannot be told."""
    if requested:
        return requested, prices.get(requested)
    if len(prices) == 1:
        ((name, book),) = prices.items()
        return name, book
    return None, None


def estimate(
    replicas: Sequence[tuple[str, CapacityType]],
    gpus_per_replica: float,
    product: str | None,
    prices: ProductPrices | None,
) -> CostEstimate:
    """Cost of the replicas (zone, capacity type) that exist; unknown prices say what to set."""
    if prices is None:
        what = f"no price for {product}" if product else "accelerator.gpuProduct is not set"
        return CostEstimate(None, None, "USD", f"{what}: set GPUFLEET_PRICES to estimate cost")
    per_hour = sum(prices.per_gpu(kind, zone) * gpus_per_replica for zone, kind in replicas)
    on_demand = len(replicas) * prices.per_gpu("on-demand", "") * gpus_per_replica
    spot = sum(1 for _, kind in replicas if kind == "spot")
    message = (
        f"{len(replicas)} replica(s) ({spot} spot) × {gpus_per_replica:g} {product} GPU(s) "
        f"at {prices.on_demand:g}/h on-demand per {prices.gpus_per_instance}-GPU instance"
    )
    if on_demand > 0:
        message += f"; {100 * (1 - per_hour / on_demand):.0f}% below all on-demand"
    return CostEstimate(per_hour, on_demand, prices.currency, message)


def with_spot_prices(
    books: Mapping[str, ProductPrices], latest: Mapping[tuple[str, str], float]
) -> dict[str, ProductPrices]:
    """The books with spot prices from the price history; configured prices stay where none is known."""
    updated = {}
    for product, book in books.items():
        fresh = {zone: price for (kind, zone), price in latest.items() if kind == book.instance_type}
        updated[product] = replace(book, spot={**book.spot, **fresh}) if fresh else book
    return updated


def gpus_per_replica(spec: ModelDeploymentSpec, product: str | None) -> float:
    """GPUs one replica pays for: its tensor-parallel degree, or its MIG slice's share of one GPU.

    A MIG profile that the product does not have (or an unknown product) is priced as a whole GPU:
    never cheaper than what it may really take.
    """
    profile = spec.accelerator.mig_profile
    if not profile:
        return float(spec.accelerator.tensor_parallel_size)
    slices = MIG_PROFILES.get(product or "", {}).get(profile)
    return 1 / slices if slices else 1.0


def estimate_for(
    spec: ModelDeploymentSpec,
    replicas: Sequence[tuple[str, CapacityType]],
    prices: Mapping[str, ProductPrices],
) -> CostEstimate:
    """The estimate for a model's live replicas (zone, capacity type) at the operator's prices."""
    product, book = product_for(spec.accelerator.gpu_product, prices)
    return estimate(replicas, gpus_per_replica(spec, product), product, book)
