"""The cost estimate: each replica's share of its instance at the configured prices."""

from __future__ import annotations

import pytest

from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from gpufleet.planning.cost import (
    ProductPrices,
    estimate,
    estimate_for,
    gpus_per_replica,
    product_for,
    with_spot_prices,
)

A100 = ProductPrices(on_demand=27.45, gpus_per_instance=8, spot={"a": 11.8, "b": 12.6}, instance_type="p4de")


def test_cost_counts_each_replicas_share_of_its_instance() -> None:
    found = estimate([("a", "on-demand"), ("a", "spot"), ("c", "spot")], 4, "A100", A100)
    # 4 GPUs = half an instance: 13.725 on-demand, 5.9 spot in a, the spot mean 6.1 in c (no price)
    assert found.per_hour == pytest.approx(13.725 + 5.9 + 6.1)
    assert found.on_demand_equivalent_per_hour == pytest.approx(3 * 13.725)
    assert "below all on-demand" in found.message
    assert found.to_status().per_hour == round(13.725 + 5.9 + 6.1, 2)


def test_cost_without_prices_says_what_to_set() -> None:
    assert product_for(None, {"A100": A100, "H100": A100}) == (None, None)
    assert product_for(None, {"A100": A100}) == ("A100", A100)
    found = estimate([("a", "spot")], 1, "H100", None)
    assert found.per_hour is None
    assert "GPUFLEET_PRICES" in found.message


def spec(**accelerator: object) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {"model": {"uri": "hf://org/model"}, "accelerator": accelerator}
    )


@pytest.mark.parametrize(
    ("accelerator", "product", "gpus"),
    [
        ({"tensorParallelSize": 4}, "NVIDIA-A100-SXM4-80GB", 4.0),
        ({"gpuProduct": "NVIDIA-A100-SXM4-80GB", "migProfile": "1g.10gb"}, "NVIDIA-A100-SXM4-80GB", 1 / 7),
        ({"gpuProduct": "NVIDIA-A100-SXM4-80GB", "migProfile": "3g.40gb"}, "NVIDIA-A100-SXM4-80GB", 1 / 2),
        # a slice of a product we do not know: priced as a whole GPU, never cheaper than it may be
        ({"gpuProduct": "NVIDIA-A100-SXM4-80GB", "migProfile": "1g.10gb"}, None, 1.0),
    ],
)
def test_a_replica_pays_for_its_gpus_or_its_mig_slices_share(
    accelerator: dict[str, object], product: str | None, gpus: float
) -> None:
    assert gpus_per_replica(spec(**accelerator), product) == pytest.approx(gpus)


def test_the_estimate_for_a_spec_uses_its_products_prices() -> None:
    mig = spec(gpuProduct="NVIDIA-A100-SXM4-80GB", migProfile="1g.10gb")
    found = estimate_for(mig, [("a", "on-demand")], {"NVIDIA-A100-SXM4-80GB": A100})
    assert found.per_hour == pytest.approx(27.45 / 8 / 7)


BOOK = ProductPrices(on_demand=27.45, gpus_per_instance=8, spot={"a": 11.8}, instance_type="p4de.24xlarge")


def test_fresh_spot_prices_replace_configured_ones_per_zone() -> None:
    latest = {("p4de.24xlarge", "a"): 9.0, ("p4de.24xlarge", "b"): 10.0, ("p5.48xlarge", "a"): 30.0}
    books = with_spot_prices({"A100": BOOK}, latest)
    assert books["A100"].spot == {"a": 9.0, "b": 10.0}
    assert with_spot_prices({"A100": BOOK}, {}) == {"A100": BOOK}
