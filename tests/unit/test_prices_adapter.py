"""gpufleet.adapters.prices: EC2 DescribeSpotPriceHistory → the newest price per (instance type, zone).

Two halves:
- a real local EC2 (moto server on loopback). moto 5 answers from its instance
  type offering catalog: one record per offered (type, zone), the constant
  price "0.00001", the fixed timestamp 2006-01-02T15:04:05Z, and it ignores
  StartTime, EndTime, ProductDescriptions and pagination. It checks the
  request, the filters and the response parsing end to end, but it cannot show
  the newest-record rule or paging;
- botocore's Stubber on a real EC2 client (request parameters validated
  against the service model, no network) for the history AWS really returns:
  several records per pair, over several pages.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from fleetsim.cloud import MotoServer, client
from gpufleet.adapters.prices import latest_spot_prices

REGION = "us-east-1"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
GPU_TYPES = ["p4d.24xlarge", "p5.48xlarge"]


def offered(moto: MotoServer, types: list[str]) -> set[tuple[str, str]]:
    """(type, zone) pairs moto's EC2 offers, asked through the ordinary offerings API."""
    answer = client("ec2", moto.endpoint_url, REGION).describe_instance_type_offerings(
        LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": types}]
    )
    return {(o["InstanceType"], o["Location"]) for o in answer["InstanceTypeOfferings"]}


# --- against moto ---------------------------------------------------------------------------------


def test_moto_prices_for_offered_pairs_only(moto: MotoServer) -> None:
    zones = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1z"]
    prices = latest_spot_prices(
        [*GPU_TYPES, "nope.large"], zones, region=REGION, endpoint_url=moto.endpoint_url, now=NOW
    )
    expected = {pair for pair in offered(moto, GPU_TYPES) if pair[1] in zones}
    assert expected  # moto offers p4d/p5 in some us-east-1 zones (1a, 1b in moto 5.2)
    assert set(prices) == expected
    assert all(isinstance(price, float) and price == pytest.approx(0.00001) for price in prices.values())


def test_moto_zone_filter(moto: MotoServer) -> None:
    prices = latest_spot_prices(
        GPU_TYPES, ["us-east-1a"], region=REGION, endpoint_url=moto.endpoint_url, now=NOW
    )
    assert set(prices) == {pair for pair in offered(moto, GPU_TYPES) if pair[1] == "us-east-1a"}


def test_moto_unknown_type_gives_nothing(moto: MotoServer) -> None:
    assert (
        latest_spot_prices(
            ["nope.large"], ["us-east-1a"], region=REGION, endpoint_url=moto.endpoint_url, now=NOW
        )
        == {}
    )


# --- the history AWS returns (Stubber) --------------------------------------------------------------


@pytest.fixture
def stubbed(aws_env: None) -> Iterator[tuple[Any, Stubber]]:
    ec2 = boto3.session.Session(region_name=REGION).client("ec2")
    with Stubber(ec2) as stubber:
        yield ec2, stubber
        stubber.assert_no_pending_responses()


def record(
    instance_type: str, zone: str, price: str, minutes_ago: int, product: str = "Linux/UNIX"
) -> dict[str, Any]:
    return {
        "AvailabilityZone": zone,
        "InstanceType": instance_type,
        "ProductDescription": product,
        "SpotPrice": price,
        "Timestamp": NOW - timedelta(minutes=minutes_ago),
    }


def expected_request(token: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "InstanceTypes": ["p4d.24xlarge", "p5.48xlarge"],
        "ProductDescriptions": ["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
        "Filters": [{"Name": "availability-zone", "Values": ["us-east-1a", "us-east-1b"]}],
        "StartTime": NOW - timedelta(hours=1),
        "EndTime": NOW,
        "MaxResults": 1000,
    }
    if token:
        request["NextToken"] = token
    return request


def test_newest_record_per_pair_across_pages(stubbed: tuple[Any, Stubber]) -> None:
    ec2, stubber = stubbed
    stubber.add_response(
        "describe_spot_price_history",
        {
            "SpotPriceHistory": [
                record("p4d.24xlarge", "us-east-1a", "12.50", minutes_ago=5),
                record("p4d.24xlarge", "us-east-1a", "11.00", minutes_ago=70),  # in effect at the start
                record("p5.48xlarge", "us-east-1b", "30.00", minutes_ago=40),
            ],
            "NextToken": "page-2",
        },
        expected_request(),
    )
    stubber.add_response(
        "describe_spot_price_history",
        {
            "SpotPriceHistory": [
                record("p5.48xlarge", "us-east-1b", "31.25", minutes_ago=2),  # newer, on a later page
                record("p4d.24xlarge", "us-east-1a", "13.00", minutes_ago=30),  # older than 12.50
                record(
                    "p4d.24xlarge", "us-east-1b", "9.75", minutes_ago=59, product="Linux/UNIX (Amazon VPC)"
                ),
            ],
            "NextToken": "",
        },
        expected_request("page-2"),
    )
    prices = latest_spot_prices(
        ["p5.48xlarge", "p4d.24xlarge", "p5.48xlarge"],
        ["us-east-1b", "us-east-1a"],
        region=REGION,
        client=ec2,
        now=NOW,
    )
    assert prices == {
        ("p4d.24xlarge", "us-east-1a"): 12.50,
        ("p5.48xlarge", "us-east-1b"): 31.25,
        ("p4d.24xlarge", "us-east-1b"): 9.75,
    }


def test_records_not_asked_for_or_unusable_are_skipped(stubbed: tuple[Any, Stubber]) -> None:
    ec2, stubber = stubbed
    stubber.add_response(
        "describe_spot_price_history",
        {
            "SpotPriceHistory": [
                record("p4d.24xlarge", "us-east-1c", "10.00", minutes_ago=1),  # zone not asked for
                record("g5.xlarge", "us-east-1a", "0.40", minutes_ago=1),  # type not asked for
                record("p4d.24xlarge", "us-east-1a", "0", minutes_ago=1),  # no price
                record("p4d.24xlarge", "us-east-1a", "n/a", minutes_ago=1),
                record("p4d.24xlarge", "us-east-1a", "NaN", minutes_ago=1),
                record("p4d.24xlarge", "us-east-1a", "11.00", minutes_ago=20),
                {
                    "AvailabilityZone": "us-east-1b",
                    "InstanceType": "p5.48xlarge",
                    "SpotPrice": "30.0",
                },  # no time
            ]
        },
        expected_request(),
    )
    prices = latest_spot_prices(GPU_TYPES, ["us-east-1a", "us-east-1b"], region=REGION, client=ec2, now=NOW)
    assert prices == {("p4d.24xlarge", "us-east-1a"): 11.00}


def test_now_in_another_offset_is_converted(stubbed: tuple[Any, Stubber]) -> None:
    ec2, stubber = stubbed
    stubber.add_response("describe_spot_price_history", {"SpotPriceHistory": []}, expected_request())
    local = NOW.astimezone(timezone(timedelta(hours=9)))
    assert (
        latest_spot_prices(GPU_TYPES, ["us-east-1a", "us-east-1b"], region=REGION, client=ec2, now=local)
        == {}
    )


def test_errors_propagate(stubbed: tuple[Any, Stubber]) -> None:
    ec2, stubber = stubbed
    stubber.add_client_error("describe_spot_price_history", "UnauthorizedOperation", http_status_code=403)
    with pytest.raises(ClientError, match="UnauthorizedOperation"):
        latest_spot_prices(GPU_TYPES, ["us-east-1a"], region=REGION, client=ec2, now=NOW)


class Untouchable:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"client.{name} used")


@pytest.mark.parametrize(("types", "zones"), [([], ["us-east-1a"]), (GPU_TYPES, []), ([], [])])
def test_nothing_asked_nothing_requested(types: list[str], zones: list[str]) -> None:
    assert latest_spot_prices(types, zones, region=REGION, client=Untouchable(), now=NOW) == {}


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        latest_spot_prices(
            GPU_TYPES, ["us-east-1a"], region=REGION, client=Untouchable(), now=NOW.replace(tzinfo=None)
        )


def test_own_client(aws_env: None, moto: MotoServer) -> None:
    # No client given: the adapter builds one for the region and endpoint (credentials from the environment).
    prices = latest_spot_prices(
        ["p5.48xlarge"], ["us-east-1a"], region=REGION, endpoint_url=moto.endpoint_url, now=NOW
    )
    assert set(prices) <= {("p5.48xlarge", "us-east-1a")}
    assert set(prices) == {p for p in offered(moto, ["p5.48xlarge"]) if p[1] == "us-east-1a"}
