"""Queue faults against real parts: a backlog of 10,000 messages in an SQS with the warnings at its end,
duplicates and events out of order, read by the operator's consumer, which records each warning on its Node
in the real API server before deleting the message.

The SQS is ElasticMQ (hack/install-elasticmq.sh), not moto: moto's SQS scans every queued message on every
call, so sending it 10,000 takes longer than CI has (2,000 took 130 s here), which would measure moto.

The deadline is the domain's, not a benchmark's: a warning recorded later than its deadline minus the drain
time leaves no time to move the replicas, which is the failure this test is about.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client

from fleetsim.cloud import CloudEvents, ElasticMQServer
from fleetsim.sqs_throttle import ThrottlingFront
from fleetsim.toxiproxy import ToxiproxyServer
from gpufleet.adapters.kube import RestKubeApi
from gpufleet.adapters.sqs import InterruptionQueue
from gpufleet.config import Settings
from gpufleet.planning.nodes import CAPACITY_SIGNAL_KEY, read_signal_record
from gpufleet.runtime import operator_metrics as metrics
from gpufleet.runtime.capacity_store import CapacityStore
from gpufleet.runtime.interruptions import InterruptionConsumer
from gpufleet.runtime.node_records import NodeRecorder
from tests.conftest import record_fault_figure, wait_until

pytestmark = pytest.mark.integration

REGION = "us-east-1"
BACKLOG = 10_000
WARNED = 10
SETTINGS = Settings.defaults()


@pytest.fixture
def our_nodes(api: client.ApiClient) -> Iterator[dict[str, str]]:
    """WARNED spot nodes of this cluster (none runs pods), by instance id."""
    core = client.CoreV1Api(api)
    run = uuid.uuid4().hex[:6]
    nodes = {f"i-{run}{i:011x}": f"backlog-{run}-{i}" for i in range(WARNED)}
    for instance, name in nodes.items():
        core.create_node(
            {
                "metadata": {
                    "name": name,
                    "labels": {
                        "topology.kubernetes.io/zone": "us-east-1a",
                        "karpenter.sh/capacity-type": "spot",
                        "node.kubernetes.io/instance-type": "p4de.24xlarge",
                    },
                },
                "spec": {"providerID": f"aws:///us-east-1a/{instance}"},
            }
        )
    yield nodes
    for name in nodes.values():
        core.delete_node(name)


def recorded(kube: RestKubeApi, name: str) -> dict[str, Any] | None:
    node = kube.get("v1", "Node", None, name)
    return node if node and CAPACITY_SIGNAL_KEY in (node["metadata"].get("annotations") or {}) else None


def outcome_counts() -> dict[str, float]:
    totals: dict[str, float] = {}
    for sample in metrics.INTERRUPTION_EVENTS.collect()[0].samples:
        if sample.name.endswith("_total"):
            key = sample.labels["outcome"]
            totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def consumer_of(kube: RestKubeApi, queue: InterruptionQueue) -> InterruptionConsumer:
    """The operator's consumer as the composition root wires it, recording on the real API server's Nodes."""
    options = SETTINGS.workload_options()
    store = CapacityStore(
        options.capacity_type_label,
        options.spot_value,
        timedelta(seconds=SETTINGS.spot_notice_seconds),
        timedelta(seconds=SETTINGS.zone_loss_window_seconds),
    )
    return InterruptionConsumer(
        queue,
        store,
        lambda key: None,
        lambda: datetime.now(UTC),
        wait_seconds=1,
        prepare=lambda: store.prime(
            kube.list("v1", "Node", None, ""), [], lambda pod: None, datetime.now(UTC)
        ),
        record=NodeRecorder(kube).record,
    )


def test_warnings_at_the_end_of_a_10000_message_backlog_are_recorded_before_their_deadline(
    api: client.ApiClient, elasticmq: ElasticMQServer, our_nodes: dict[str, str]
) -> None:
    # ElasticMQ's queue URLs carry the account 000000000000; the events must come from it to be ours.
    cloud = CloudEvents(
        elasticmq.endpoint_url, REGION, queue_name=f"backlog-{uuid.uuid4().hex[:8]}", account="000000000000"
    )
    start = datetime.now(UTC).replace(microsecond=0)
    # Noise first: warnings and rebalances for instances of other clusters.
    noise = [
        cloud.warning_event(f"i-f{i:016x}", "us-east-1b", start)
        if i % 2
        else cloud.rebalance_event(f"i-f{i:016x}", start)
        for i in range(BACKLOG - 3 * WARNED)
    ]
    # Then ours, each warning twice (SQS delivers at least once), and a rebalance of an earlier time
    # after it (EventBridge does not order events).
    ours = []
    for instance in our_nodes:
        warning = cloud.warning_event(instance, "us-east-1a", start)
        ours += [warning, warning, cloud.rebalance_event(instance, start - timedelta(seconds=30))]
    cloud.send_all(noise + ours)
    deadline = start + timedelta(seconds=SETTINGS.spot_notice_seconds)
    act_by = deadline - timedelta(seconds=SETTINGS.interruption_drain_seconds)

    kube = RestKubeApi(api)
    consumer = consumer_of(kube, InterruptionQueue(cloud.queue_url, REGION, elasticmq.endpoint_url))
    before = outcome_counts()
    pollers = [
        threading.Thread(target=consumer.run, daemon=True) for _ in range(SETTINGS.interruption_queue_pollers)
    ]
    began = time.monotonic()
    for poller in pollers:
        poller.start()
    try:
        recorded_at: dict[str, datetime] = {}

        def all_recorded() -> bool:
            for name in our_nodes.values():
                if name not in recorded_at and recorded(kube, name):
                    recorded_at[name] = datetime.now(UTC)
            return len(recorded_at) == WARNED

        wait_until(
            all_recorded, timeout=(act_by - datetime.now(UTC)).total_seconds(), interval=0.5, what="warnings"
        )
        took = time.monotonic() - began

        def drained() -> bool:
            attributes = cloud.sqs.get_queue_attributes(
                QueueUrl=cloud.queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            return all(int(v) == 0 for v in attributes.values())

        wait_until(drained, timeout=120, interval=1.0, what="the backlog deleted")
    finally:
        consumer.stopped.set()
        for poller in pollers:
            poller.join(timeout=30)
    record_fault_figure(
        "SQS backlog",
        f"{BACKLOG:,} messages (duplicates, out-of-order rebalances): {WARNED} warnings at the end "
        f"recorded on their nodes {took:.1f}s after the first read "
        f"(deadline {SETTINGS.spot_notice_seconds}s); 0 lost",
    )
    assert max(recorded_at.values()) < act_by
    for instance, name in our_nodes.items():
        node = recorded(kube, name)
        assert node is not None
        doom = read_signal_record(node)
        assert doom is not None
        assert (doom.kind, doom.deadline, doom.instance_id) == ("interruption", deadline, instance)
        assert {"key": CAPACITY_SIGNAL_KEY, "value": "interruption", "effect": "NoSchedule"} in node["spec"][
            "taints"
        ]
    after = outcome_counts()
    counted = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    # every message read was counted once; none failed to record
    assert counted.get("retried", 0.0) == 0
    assert counted.get("no-node", 0.0) >= BACKLOG - 3 * WARNED
    assert counted.get("handled", 0.0) >= 3 * WARNED


def queue_errors() -> float:
    return float(metrics.INTERRUPTION_QUEUE_ERRORS._value.get())


def test_warnings_sent_while_sqs_is_slow_resetting_or_unreachable_are_recorded_when_it_recovers(
    api: client.ApiClient, elasticmq: ElasticMQServer, toxiproxy: ToxiproxyServer, our_nodes: dict[str, str]
) -> None:
    """The consumer reads SQS through a TCP fault proxy and a throttling front; each warning is sent
    (straight to the queue) while a fault lasts, and must be on its Node once the fault ends (or, when
    throttled, in spite of it), with the consumer still running."""
    cloud = CloudEvents(
        elasticmq.endpoint_url, REGION, queue_name=f"faults-{uuid.uuid4().hex[:8]}", account="000000000000"
    )
    proxy = f"sqs-{uuid.uuid4().hex[:6]}"
    front = ThrottlingFront(elasticmq.endpoint_url, seed=20261203)
    listen = toxiproxy.proxy(proxy, front.address)
    kube = RestKubeApi(api)
    consumer = consumer_of(kube, InterruptionQueue(cloud.queue_url, REGION, f"http://127.0.0.1:{listen}"))
    pollers = [threading.Thread(target=consumer.run, daemon=True) for _ in range(2)]
    instances = iter(our_nodes.items())
    outcomes: list[str] = []

    def warn_and_wait(fault: str, until_failing: bool) -> None:
        instance, name = next(instances)
        errors = queue_errors()
        cloud.send_all(
            [cloud.warning_event(instance, "us-east-1a", datetime.now(UTC).replace(microsecond=0))]
        )
        if until_failing:  # the consumer's calls fail while the fault lasts
            wait_until(lambda: queue_errors() > errors, timeout=60, what=f"SQS calls failing ({fault})")
            assert recorded(kube, name) is None
        heal()
        wait_until(
            lambda: recorded(kube, name), timeout=60, interval=0.5, what=f"the warning recorded ({fault})"
        )
        assert all(poller.is_alive() for poller in pollers)
        outcomes.append(fault)

    def heal() -> None:
        for toxic in ("slow-down", "slow-up", "resets"):
            with contextlib.suppress(urllib.error.HTTPError):
                toxiproxy.remove(proxy, toxic)
        toxiproxy.enable(proxy, True)

    front.start()
    for poller in pollers:
        poller.start()
    try:
        # 1. Slow: 2 s each way, more than the long poll waits.
        toxiproxy.add(proxy, "slow-down", "latency", "downstream", latency=2000)
        toxiproxy.add(proxy, "slow-up", "latency", "upstream", latency=2000)
        instance, name = next(instances)
        cloud.send_all(
            [cloud.warning_event(instance, "us-east-1a", datetime.now(UTC).replace(microsecond=0))]
        )
        wait_until(
            lambda: recorded(kube, name), timeout=60, interval=0.5, what="the warning recorded (slow SQS)"
        )
        outcomes.append("slow")
        heal()
        # 2. Every connection reset as it opens.
        toxiproxy.add(proxy, "resets", "reset_peer", "downstream", timeout=0)
        warn_and_wait("connections reset", until_failing=True)
        # 3. Unreachable (connections refused).
        toxiproxy.enable(proxy, False)
        warn_and_wait("unreachable", until_failing=True)
        # 4. Throttled: calls refused with SQS's RequestThrottled (fleetsim.sqs_throttle).
        # Four calls in five refused, for as long as it takes to refuse ten (botocore retries a
        # throttled call itself, then the consumer backs off); the warning is recorded meanwhile.
        front.share = 0.8
        throttled_before = front.throttled
        instance, name = next(instances)
        cloud.send_all(
            [cloud.warning_event(instance, "us-east-1a", datetime.now(UTC).replace(microsecond=0))]
        )
        wait_until(
            lambda: recorded(kube, name) and front.throttled - throttled_before >= 10,
            timeout=90,
            interval=0.5,
            what="the warning recorded and ten calls throttled",
        )
        assert all(poller.is_alive() for poller in pollers)
        outcomes.append("throttled")
    finally:
        front.share = 0.0
        front.stop()
        heal()
        consumer.stopped.set()
        for poller in pollers:
            poller.join(timeout=30)
    record_fault_figure(
        "SQS faults",
        "slow (2 s each way), connections reset, unreachable (Toxiproxy between the consumer and the queue), "
        f"throttled (4 calls in 5, simulated: {front.throttled} refused): a warning sent during each, "
        f"recorded on its node: {len(outcomes)} of 4; 0 lost",
    )
    assert outcomes == ["slow", "connections reset", "unreachable", "throttled"]
