"""Current spot prices per (instance type, zone) from EC2 DescribeSpotPriceHistory (boto3).

The history holds one record per price change; the price now is each pair's
newest record. Asking from an hour back up to `now` returns, per pair, the
changes of that hour and the price in effect at its start, so every pair that
has a price has a record (as Karpenter's pricing provider, which asks from now:
aws/karpenter-provider-aws pkg/providers/pricing). Both Linux product
descriptions are asked for, as Karpenter does: accounts see "Linux/UNIX" or,
in old EC2-Classic-era accounts, "Linux/UNIX (Amazon VPC)".

Credentials come only from boto3's default chain; errors (botocore) propagate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import boto3
from botocore.config import Config

PRODUCT_DESCRIPTIONS: Final = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")
LOOKBACK: Final = timedelta(hours=1)
PAGE_SIZE: Final = 1000  # the API's maximum MaxResults
CLIENT_CONFIG: Final = Config(
    connect_timeout=5, read_timeout=30, retries={"total_max_attempts": 3, "mode": "standard"}
)


def latest_spot_prices(
    instance_types: Sequence[str],
    zones: Sequence[str],
    *,
    region: str,
    endpoint_url: str | None = None,
    client: Any = None,
    now: datetime,
) -> dict[tuple[str, str], float]:
    """(instance_type, zone) → USD per instance-hour, the newest record per pair.

    Pairs without a record are absent. Empty `instance_types` or `zones` → {} without a request
    (an unfiltered history is every instance type in every zone).
    """
    wanted_types, wanted_zones = set(instance_types), set(zones)
    if not wanted_types or not wanted_zones:
        return {}
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    ec2 = client or boto3.session.Session(region_name=region).client(
        "ec2", endpoint_url=endpoint_url, config=CLIENT_CONFIG
    )
    pages = ec2.get_paginator("describe_spot_price_history").paginate(
        InstanceTypes=sorted(wanted_types),
        ProductDescriptions=list(PRODUCT_DESCRIPTIONS),
        Filters=[{"Name": "availability-zone", "Values": sorted(wanted_zones)}],
        StartTime=(now - LOOKBACK).astimezone(UTC),
        EndTime=now.astimezone(UTC),
        PaginationConfig={"PageSize": PAGE_SIZE},
    )
    newest: dict[tuple[str, str], tuple[datetime, float]] = {}
    for page in pages:
        for record in page.get("SpotPriceHistory", []):
            key = (record.get("InstanceType"), record.get("AvailabilityZone"))
            # The filters are the server's; a pair not asked for is not ours to report.
            if key[0] not in wanted_types or key[1] not in wanted_zones:
                continue
            try:
                price = float(record["SpotPrice"])
            except (KeyError, TypeError, ValueError):
                continue
            stamp = record.get("Timestamp")
            if not math.isfinite(price) or price <= 0 or not isinstance(stamp, datetime):
                continue
            stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
            if key not in newest or stamp > newest[key][0]:
                newest[key] = (stamp, price)
    return {key: price for key, (_, price) in newest.items()}
