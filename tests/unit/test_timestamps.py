"""Kubernetes timestamps as gpufleet writes and reads them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gpufleet.api.timestamps import kube_micro_time, kube_time, parse_kube_time

MOMENT = datetime(2026, 11, 22, 12, 0, 5, 123456, tzinfo=UTC)


def test_time_is_utc_whole_seconds_with_z() -> None:
    assert kube_time(MOMENT) == "2026-11-22T12:00:05Z"
    eastern = MOMENT.astimezone(timezone(timedelta(hours=-5)))
    assert kube_time(eastern) == "2026-11-22T12:00:05Z"


def test_micro_time_keeps_microseconds() -> None:
    assert kube_micro_time(MOMENT) == "2026-11-22T12:00:05.123456Z"
    assert kube_micro_time(MOMENT.replace(microsecond=0)) == "2026-11-22T12:00:05.000000Z"


@pytest.mark.parametrize(
    "text",
    ["2026-11-22T12:00:05Z", "2026-11-22T12:00:05+00:00", "2026-11-22T07:00:05-05:00"],
)
def test_parse_reads_any_zone_as_the_same_instant(text: str) -> None:
    assert parse_kube_time(text) == MOMENT.replace(microsecond=0)


def test_parse_round_trips_both_formats() -> None:
    assert parse_kube_time(kube_time(MOMENT)) == MOMENT.replace(microsecond=0)
    assert parse_kube_time(kube_micro_time(MOMENT)) == MOMENT


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("2026-11-22T12:00:05", "without a time zone"),
        (None, "not a timestamp"),
        (1732276805, "not a timestamp"),
        ("yesterday", "Invalid isoformat"),
    ],
)
def test_parse_refuses_what_gpufleet_did_not_write(value: object, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_kube_time(value)
