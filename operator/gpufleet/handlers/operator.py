"""kopf registration: watches feed the work queue; the webhook shares the CLI's validation.

Importing this module registers the handlers with kopf's default registry.
Nothing here decides anything: decisions are in gpufleet.planning, the
reconcile sequence is in gpufleet.handlers.reconcile.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from gpufleet.adapters.certs import ensure_self_signed
from gpufleet.adapters.kube import RestKubeApi, load_api_client
from gpufleet.adapters.metrics import PrometheusMetrics
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION
from gpufleet.config import Settings
from gpufleet.handlers import metrics
from gpufleet.handlers.autoscale import Autoscaler, evaluate_all
from gpufleet.handlers.capacity import CapacityStore
from gpufleet.handlers.interruptions import InterruptionConsumer
from gpufleet.handlers.leader import LeaderElector
from gpufleet.handlers.prices import SpotPriceRefresher
from gpufleet.handlers.queue import Key, WorkQueue
from gpufleet.handlers.reconcile import FailoverOptions, Outcome, Reconciler, version_of
from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT

log = logging.getLogger("gpufleet")

WEBHOOK_CONFIGURATION = "gpufleet.io"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _configure_webhook(settings: kopf.OperatorSettings, config: Settings) -> None:
    host = config.webhook_host or "127.0.0.1"
    cert_dir = config.webhook_cert_dir
    if cert_dir is None:
        raise kopf.PermanentError("GPUFLEET_WEBHOOK_CERT_DIR must be set when the webhook is enabled")
    certfile, pkeyfile = ensure_self_signed(cert_dir, [host])
    cafile = cert_dir / "ca.crt"
    settings.admission.server = kopf.WebhookServer(
        addr=config.webhook_listen_address,
        port=config.webhook_port,
        host=host,
        certfile=str(certfile),
        pkeyfile=str(pkeyfile),
        cafile=str(cafile if cafile.exists() else certfile),
    )
    settings.admission.managed = WEBHOOK_CONFIGURATION if config.webhook_managed else None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = Settings()
    # kopf's own events are for its handler failures; ours carry the decisions.
    settings.posting.level = logging.WARNING
    # kopf logs every handled watch event at INFO ("Handler ... succeeded"): thousands of
    # lines a minute at scale that say nothing. `gpufleet run --verbose` brings them back.
    if not config.verbose_watch_log:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    if config.webhook_enabled:
        _configure_webhook(settings, config)
    # Reconcile workers, autoscaler evaluations and the few background loops share one client.
    connections = config.workers + config.autoscale_concurrency + 4
    kube = RestKubeApi(load_api_client(connections=connections), on_request=metrics.KUBE_REQUESTS.inc)
    options = config.workload_options()
    store = CapacityStore(
        options.capacity_type_label,
        options.spot_value,
        notice=timedelta(seconds=config.spot_notice_seconds),
        zone_loss_window=timedelta(seconds=config.zone_loss_window_seconds),
    )
    reconciler = Reconciler(
        kube,
        options,
        clock=_utcnow,
        unschedulable_after=timedelta(seconds=config.unschedulable_after_seconds),
        capacity=store if config.spot_failover else None,
        failover=FailoverOptions(
            max_surge=config.max_surge_replicas,
            drain=timedelta(seconds=config.interruption_drain_seconds),
            unavailable_after=timedelta(seconds=config.spot_fallback_after_seconds),
            return_after=timedelta(seconds=config.spot_return_after_seconds),
            rebalance=config.rebalance_starts_replacements,
        ),
        prices=config.price_books(),
    )

    leading = _start_leader_election(config, kube, lambda: queue)

    def work(_key: Key, body: Any) -> Outcome:
        if not leading.is_set():
            return Outcome()  # a standby keeps its caches warm and acts once it leads
        with metrics.RECONCILE_SECONDS.time():
            try:
                outcome = reconciler.reconcile(body)
            except Exception:
                metrics.RECONCILES.labels(result="error").inc()
                raise
        metrics.RECONCILES.labels(result="ok" if outcome.valid else "invalid").inc()
        for applied in outcome.applied:
            metrics.WRITES.labels(kind=applied.split("/", 1)[0], action="apply").inc()
        for _deleted in outcome.deleted:
            metrics.WRITES.labels(kind="Deployment", action="delete").inc()
        for _pod, why in outcome.drained:
            metrics.REPLACEMENTS.labels(namespace=_key[0], name=_key[1], reason=why).inc()
        metrics.export_status(_key, outcome.status, outcome.unschedulable)
        metrics.MANAGED.set(len(queue.bodies))
        metrics.QUEUE_DEPTH.set(queue.depth)
        if outcome.requeue_after is not None:
            queue.enqueue_after(_key, outcome.requeue_after)
        return outcome

    queue = WorkQueue(work, config.workers, config.resync_seconds)
    queue.start()
    reader = (
        PrometheusMetrics(
            config.prometheus_url, config.metric_queries(), connections=config.autoscale_concurrency
        )
        if config.prometheus_url
        else None
    )
    autoscaler = Autoscaler(kube, reader, clock=_utcnow, timings=config.scaling_timings())
    memo.autoscale_task = asyncio.get_running_loop().create_task(
        _autoscale_loop(
            queue, autoscaler, config.autoscale_interval_seconds, config.autoscale_concurrency, leading
        )
    )
    if config.interruption_queue_url and config.spot_failover:
        memo.consumer = _start_consumer(config, store, queue, leading)
    if config.spot_price_refresh_seconds and config.prices:
        memo.refresher = _start_price_refresh(config, reconciler, store, leading)
    metrics.serve(config.metrics_port)
    memo.queue = queue
    memo.reconciler = reconciler
    memo.kube = kube
    memo.capacity = store
    log.info("gpufleet started: %d workers, resync every %.0fs", config.workers, config.resync_seconds)


def _start_leader_election(
    config: Settings, kube: RestKubeApi, queue: Callable[[], WorkQueue]
) -> threading.Event:
    """The Event set while this replica leads: always, without leader election."""
    metrics.LEADER.set(0 if config.leader_election else 1)
    if not config.leader_election:
        leading = threading.Event()
        leading.set()
        return leading
    loop = asyncio.get_running_loop()

    def resync() -> None:
        # Whatever the watches saw while standing by is reconciled once this replica leads.
        work = queue()
        for key in list(work.bodies):
            loop.call_soon_threadsafe(work.enqueue, key)

    identity = config.pod_name or socket.gethostname()
    elector = LeaderElector(
        kube,
        config.leader_election_namespace,
        config.leader_election_name,
        identity,
        _utcnow,
        on_started_leading=resync,
    )
    threading.Thread(target=elector.run, name="leader-election", daemon=True).start()
    _ELECTORS.append(elector)
    return elector.leading


_ELECTORS: list[LeaderElector] = []


def _start_price_refresh(
    config: Settings, reconciler: Reconciler, store: CapacityStore, leading: threading.Event
) -> SpotPriceRefresher:
    from gpufleet.adapters.prices import latest_spot_prices
    from gpufleet.adapters.sqs import resolve_region

    # The queue's region is the cluster's: EventBridge delivers a region's EC2 events in that region.
    region = resolve_region(config.aws_region, config.interruption_queue_url)
    if region is None:
        # Refused at start, like a queue without a region: a refresher that can never succeed would
        # only log, and the prices would silently stay the configured ones.
        raise ValueError(
            "spot price refresh is on (GPUFLEET_SPOT_PRICE_REFRESH_SECONDS="
            f"{config.spot_price_refresh_seconds}) but no AWS region is known: set GPUFLEET_AWS_REGION "
            "(chart value spot.awsRegion) or AWS_REGION, or set spot.priceRefreshSeconds to 0"
        )

    def fetch(instance_types: list[str], zones: list[str], now: datetime) -> dict[tuple[str, str], float]:
        return latest_spot_prices(
            instance_types, zones, region=region, endpoint_url=config.aws_endpoint_url, now=now
        )

    refresher = SpotPriceRefresher(
        reconciler, store.zones, fetch, _utcnow, config.spot_price_refresh_seconds, leading
    )
    threading.Thread(target=refresher.run, name="spot-prices", daemon=True).start()
    return refresher


async def _autoscale_loop(
    queue: WorkQueue, autoscaler: Autoscaler, interval: float, concurrency: int, leading: threading.Event
) -> None:
    """Evaluate every known ModelDeployment with autoscaling on, every `interval` seconds.

    Sweeps start on a fixed grid, so a slow sweep does not push every later one back; one that takes
    longer than the interval is followed by the next at once (and shows in the sweep histogram).
    """
    # When each model last had every signal; a model never seen with them counts from the first look.
    last_complete: dict[Key, datetime] = {}
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="autoscaler")
    next_sweep = loop.time() + interval
    try:
        while True:
            await asyncio.sleep(max(0.0, next_sweep - loop.time()))
            started = loop.time()
            next_sweep = max(next_sweep + interval, started)
            if not leading.is_set():
                continue
            results = await evaluate_all(dict(queue.bodies), autoscaler.evaluate, executor)
            metrics.AUTOSCALER_SWEEP_SECONDS.observe(loop.time() - started)
            for key, decision in results.items():
                if isinstance(decision, Exception):
                    log.error("autoscaling %s/%s failed; replicas left as they are", *key, exc_info=decision)
                    continue
                if decision is None:
                    continue
                metrics.SCALE_DECISIONS.labels(reason=decision.reason).inc()
                now = _utcnow()
                if decision.active or key not in last_complete:
                    last_complete[key] = now
                age = (now - last_complete[key]).total_seconds()
                metrics.SIGNAL_AGE.labels(namespace=key[0], name=key[1]).set(age)
            for gone in set(last_complete) - set(queue.bodies):
                del last_complete[gone]
    finally:
        # Evaluations under way finish; none start after the loop is cancelled.
        executor.shutdown(wait=False, cancel_futures=True)


def _start_consumer(
    config: Settings, store: CapacityStore, queue: WorkQueue, leading: threading.Event
) -> InterruptionConsumer:
    # boto3 is imported only when a queue is configured: clusters without AWS never load it.
    from gpufleet.adapters.sqs import InterruptionQueue

    sqs = InterruptionQueue(config.interruption_queue_url or "", config.aws_region, config.aws_endpoint_url)
    loop = asyncio.get_running_loop()

    def enqueue(key: Key) -> None:
        loop.call_soon_threadsafe(queue.enqueue, key)

    consumer = InterruptionConsumer(
        sqs,
        store,
        enqueue,
        _utcnow,
        config.interruption_queue_max_backoff_seconds,
        leading,
        wait_seconds=config.interruption_queue_wait_seconds,
        visibility_seconds=config.interruption_queue_visibility_seconds,
    )
    threading.Thread(target=consumer.run, name="interruption-queue", daemon=True).start()
    log.info("reading capacity signals from %s (%s)", sqs.queue_url, sqs.region)
    return consumer


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    consumer: InterruptionConsumer | None = getattr(memo, "consumer", None)
    if consumer is not None:
        consumer.stopped.set()
    refresher: SpotPriceRefresher | None = getattr(memo, "refresher", None)
    if refresher is not None:
        refresher.stopped.set()
    for elector in _ELECTORS:
        await asyncio.to_thread(elector.release)
    task: asyncio.Task[None] | None = getattr(memo, "autoscale_task", None)
    if task is not None:
        task.cancel()
    queue: WorkQueue | None = getattr(memo, "queue", None)
    if queue is not None:
        await queue.stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
def model_deployment_event(
    event: kopf.RawEvent, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    if namespace is None:
        return
    key: Key = (namespace, name)
    if event.get("type") == "DELETED":
        memo.queue.set_body(key, None)
        memo.reconciler.forget(key)
        metrics.forget_model_deployment(namespace, name)
        return
    memo.queue.set_body(key, event["object"])


def _owner_key(namespace: str | None, labels: kopf.Labels) -> Key | None:
    owner = labels.get(LABEL_MODEL_DEPLOYMENT)
    return (namespace, owner) if namespace and owner else None


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MODEL_DEPLOYMENT: kopf.PRESENT})
def owned_deployment_event(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    key = _owner_key(namespace, labels)
    if key:
        memo.queue.enqueue(key)


@kopf.on.event("", "v1", "pods", labels={LABEL_MODEL_DEPLOYMENT: kopf.PRESENT})
def owned_pod_event(
    event: kopf.RawEvent, namespace: str | None, name: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    key = _owner_key(namespace, labels)
    if key:
        pod_id = f"{namespace}/{name}"
        if event.get("type") == "DELETED":
            memo.capacity.delete_pod(pod_id)
        else:
            memo.capacity.update_pod(
                key, pod_id, ((event.get("object") or {}).get("spec") or {}).get("nodeName")
            )
        memo.queue.enqueue(key)


@kopf.on.event("", "v1", "nodes")
def node_event(event: kopf.RawEvent, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Node taints, readiness and deletion are capacity signals that need no cloud access."""
    store: CapacityStore = memo.capacity
    now = _utcnow()
    if event.get("type") == "DELETED":
        store.delete_node(name, now)
        # Signals of nodes long gone have been persisted by the models they hit; drop them here.
        store.forget_cloud(now - timedelta(hours=1))
        changed = True
    else:
        changed = store.update_node(event.get("object") or {}, now)
    if changed:
        for key in store.models_on(name):
            memo.queue.enqueue(key)


@kopf.on.event("", "v1", "services", labels={LABEL_MODEL_DEPLOYMENT: kopf.PRESENT})
def owned_service_event(
    event: kopf.RawEvent, namespace: str | None, name: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    key = _owner_key(namespace, labels)
    if key and _changed_by_someone_else(event, memo, key, "Service", name):
        memo.reconciler.invalidate(key, "Service", name)
        memo.queue.enqueue(key)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels={LABEL_MODEL_DEPLOYMENT: kopf.PRESENT})
def owned_pdb_event(
    event: kopf.RawEvent, namespace: str | None, name: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    key = _owner_key(namespace, labels)
    if key and _changed_by_someone_else(event, memo, key, "PodDisruptionBudget", name):
        memo.reconciler.invalidate(key, "PodDisruptionBudget", name)
        memo.queue.enqueue(key)


def _changed_by_someone_else(event: kopf.RawEvent, memo: kopf.Memo, key: Key, kind: str, name: str) -> bool:
    """True unless the event is the echo of gpufleet's own last write.

    The version compared is the generation where the kind has one (a PDB's
    status is rewritten by the disruption controller on every pod change,
    which must not count) and the resourceVersion otherwise (Services).
    """
    if event.get("type") == "DELETED":
        return True
    remembered = memo.reconciler.cache.of(key).get((kind, name))
    return remembered is None or remembered[1] != version_of(event.get("object") or {})
