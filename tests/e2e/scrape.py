"""Read the operator's own /metrics, as Prometheus would."""

from __future__ import annotations

import urllib.request

from fleetsim.prometheus import sum_samples


def metric(port: int, name: str, /, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return sum_samples(response.read().decode(), name, **labels)
