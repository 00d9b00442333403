"""The composition root: settings → every part of one operator process, wired together, started, stopped.

The only module that knows every part. The kopf layer (gpufleet.handlers)
builds an `Operator` at startup and forwards watch events to it; everything
else receives what it needs from here. Threads and tasks it starts:

- the work queue's workers on the event loop (each reconcile in a thread),
- the autoscale sweep on the event loop (evaluations on a thread pool),
- leader election, the interruption queue consumer and the spot price
  refresh, each a daemon thread that acts only while this replica leads,
- one informer thread per owned kind (pods, Deployments, Services, PDBs, ControllerRevisions) and
  namespace scope: watches with a label selector on the API server, whose
  caches reconciles and evaluations read instead of listing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from gpufleet.adapters.kube import KubeError, RestKubeApi, load_http
from gpufleet.adapters.serving_metrics import MetricsReader, PrometheusMetrics, SweepReader
from gpufleet.config import Settings
from gpufleet.planning.observe import Key, owner_key, owner_key_of, version_of
from gpufleet.planning.scaling import Decision
from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT
from gpufleet.runtime import operator_metrics as metrics
from gpufleet.runtime.analysis import CanaryAnalyst, prometheus_reader
from gpufleet.runtime.autoscaler import Autoscaler, evaluate_all
from gpufleet.runtime.cached_kube import CachedKube
from gpufleet.runtime.capacity_store import CapacityStore
from gpufleet.runtime.events import QueuedEvents
from gpufleet.runtime.fencing import FencedKube
from gpufleet.runtime.informer import Handler, Informer
from gpufleet.runtime.interruptions import InterruptionConsumer
from gpufleet.runtime.leader import LeaderElector
from gpufleet.runtime.node_records import NodeRecorder
from gpufleet.runtime.prices import SpotPriceRefresher
from gpufleet.runtime.reconciler import Reconciler
from gpufleet.runtime.token_cost import TokenCoster
from gpufleet.runtime.watch_gaps import WatchGapCheck
from gpufleet.runtime.work_queue import URGENT, WorkQueue

log = logging.getLogger("gpufleet")

# Longest wait at shutdown for reconciles and evaluations under way, inside the operator pod's default
# 30 s termination grace period (the Lease is still renewed meanwhile, then released).
STOP_WORK_TIMEOUT = 20.0
# Then at most this long to post the Events still queued.
EVENT_FLUSH_SECONDS = 5.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class Operator:
    """One operator process: built by `build`, started once the event loop runs."""

    def __init__(self, settings: Settings, kube: RestKubeApi) -> None:
        self.settings = settings
        self.kube = kube
        self.leading = threading.Event()
        # The workers' writes, each refused unless this replica leads at that moment (runtime.fencing).
        # A lambda, not the bound method: election replaces self.leading with its Leadership later.
        fenced = FencedKube(kube, lambda: self.leading.is_set())  # noqa: PLW0108
        options = settings.workload_options()
        self.capacity = CapacityStore(
            options.capacity_type_label,
            options.spot_value,
            notice=timedelta(seconds=settings.spot_notice_seconds),
            zone_loss_window=timedelta(seconds=settings.zone_loss_window_seconds),
        )
        self.informers = [
            *owned_object_informers(kube, settings.namespaces, self._owned_object_event),
            Informer(kube, "v1", "Node", None, "", self._node_event),
        ]
        # Events are posted by a thread of their own (a slow API server never holds a reconcile), still
        # through the fence: a replica that lost the Lease posts nothing.
        self.events = QueuedEvents(
            fenced, on_drop=metrics.event_dropped, on_depth=metrics.EVENT_QUEUE_DEPTH.set
        )
        cached = CachedKube(self.events, self.informers)
        self.cached = cached
        self.reconciler = Reconciler(
            cached,
            settings.reconcile_policy(),
            clock=utcnow,
            capacity=self.capacity if settings.spot_failover else None,
            prices=settings.price_books(),
        )
        reader = (
            PrometheusMetrics(
                settings.prometheus_url, settings.metric_queries(), connections=settings.autoscale_concurrency
            )
            if settings.prometheus_url
            else None
        )
        self.autoscaler = Autoscaler(cached, reader, clock=utcnow, timings=settings.scaling_timings())
        self.analyst = CanaryAnalyst(cached, prometheus_reader(reader), clock=utcnow)
        self.token_coster = TokenCoster(
            cached,
            lambda: self.reconciler.prices,
            clock=utcnow,
            refresh_seconds=settings.token_cost_refresh_seconds,
        )
        self.queue = WorkQueue(self._work, settings.workers, settings.resync_seconds)
        self._fenced = fenced
        self._elector: LeaderElector | None = None
        self._stoppables: list[threading.Event] = []
        self._autoscale_task: asyncio.Task[None] | None = None
        self._watch_gap_task: asyncio.Task[None] | None = None
        self.watch_gaps = WatchGapCheck(kube, settings.namespaces, self.queue, self.model_deployment_changed)
        # Reconciles and evaluations running in threads; stop() waits for them before it steps down.
        self._stopping = False
        self._in_flight = 0
        self._idle = threading.Condition()

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        self._start_leader_election(loop)
        for informer in self.informers:
            informer.start()
        self.events.start()
        self.queue.start()
        self._autoscale_task = loop.create_task(self._autoscale_sweeps())
        self._watch_gap_task = loop.create_task(self.watch_gaps.run(settings.resync_seconds))
        if settings.interruption_queue_url and settings.spot_failover:
            self._start_consumer(loop)
        if settings.spot_price_refresh_seconds and settings.prices:
            self._start_price_refresh()
        metrics.serve(settings.metrics_port)
        log.info(
            "gpufleet started: %d workers, resync every %.0fs", settings.workers, settings.resync_seconds
        )

    async def stop(self, work_timeout: float = STOP_WORK_TIMEOUT) -> None:
        """Stop acting, let the work under way finish, then hand the Lease over.

        In that order: a Lease released first would let a standby act while this replica's last
        reconciles still write, two leaders for as long as those take.
        """
        self._stopping = True
        for stopped in self._stoppables:
            stopped.set()
        for informer in self.informers:
            informer.stop()
        for task in (self._autoscale_task, self._watch_gap_task):
            if task is not None:
                task.cancel()
        await self.queue.stop()
        if not await asyncio.to_thread(self._wait_idle, work_timeout):
            log.warning("work still running after %.0fs; stepping down anyway", work_timeout)
        # Still leading: the last events pass the fence. Inside the pod's 30 s grace with the wait above.
        await asyncio.to_thread(self.events.stop, EVENT_FLUSH_SECONDS)
        if self._elector is not None:
            await asyncio.to_thread(self._elector.release)

    @contextmanager
    def _working(self) -> Iterator[bool]:
        """Counts the work in a thread; yields whether it may act (False once stopping)."""
        with self._idle:
            self._in_flight += 1
        try:
            yield not self._stopping and self.leading.is_set()
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    # --- watch events (from the kopf layer) ------------------------------------------------------

    def model_deployment_changed(self, key: Key, body: Mapping[str, Any] | None) -> None:
        """The latest body of a ModelDeployment; None once it is deleted."""
        self.queue.set_body(key, body)
        if body is None:
            self._forget(key)

    def _forget(self, key: Key) -> None:
        self.reconciler.forget(key)
        self.capacity.forget_model(key)
        metrics.forget_model_deployment(*key)

    def owned_deployment_changed(self, key: Key) -> None:
        self.queue.enqueue(key)

    def owned_pod_changed(self, key: Key, pod_id: str, node: str | None, deleted: bool) -> None:
        if deleted:
            self.capacity.delete_pod(pod_id)
        else:
            self.capacity.update_pod(key, pod_id, node)
        self.queue.enqueue(key)

    def _node_event(self, event: str, node: Mapping[str, Any]) -> None:
        name = str((node.get("metadata") or {}).get("name"))
        self.node_changed(name, None if event == "DELETED" else node)

    def node_changed(self, name: str, node: Mapping[str, Any] | None) -> None:
        """Node taints, readiness and deletion are capacity signals that need no cloud access."""
        now = utcnow()
        if node is None:
            # The store drops signals of nodes long gone itself (the models they hit have persisted them).
            self.capacity.delete_node(name, now)
            changed = True
        else:
            changed = self.capacity.update_node(node, now)
        if changed:
            for key in self.capacity.models_on(name):
                self.queue.enqueue(key, URGENT)  # a node going: ahead of resyncs

    def owned_object_changed(self, key: Key, kind: str, name: str, obj: Mapping[str, Any] | None) -> None:
        """A Service or PDB event: reconcile unless it is the echo of gpufleet's own last write."""
        if obj is not None and self.reconciler.applied_version(key, kind, name) == version_of(obj):
            return
        self.reconciler.invalidate(key, kind, name)
        self.queue.enqueue(key)

    def _owned_object_event(self, event: str, obj: Mapping[str, Any]) -> None:
        """An informer's event about an object labelled with its model (pod, Deployment, Service, ...)."""
        meta = obj.get("metadata") or {}
        key = owner_key_of(meta.get("namespace"), meta.get("labels") or {})
        if not key:
            return
        deleted = event == "DELETED"
        kind = obj.get("kind")
        if kind == "Pod":
            node = (obj.get("spec") or {}).get("nodeName")
            self.owned_pod_changed(key, f"{meta.get('namespace')}/{meta.get('name')}", node, deleted)
        elif kind == "Deployment":
            self.owned_deployment_changed(key)
        else:
            self.owned_object_changed(key, str(kind), str(meta.get("name")), None if deleted else obj)

    def prime_capacity(self) -> None:
        """List the nodes and the models' pods into the capacity store (the consumer's first step).

        From the watch caches once they are synced: a LIST of every pod would hold a second full copy
        of them in memory while it is parsed. From the API server before."""
        scopes: list[str | None] = [*self.settings.namespaces] or [None]
        pods = [p for ns in scopes for p in self.cached.list("v1", "Pod", ns, LABEL_MODEL_DEPLOYMENT)]
        self.capacity.prime(self.cached.list("v1", "Node", None, ""), pods, owner_key, utcnow())

    # --- the work --------------------------------------------------------------------------------

    def _work(self, key: Key, body: Mapping[str, Any]) -> None:
        with self._working() as may_act:
            if not may_act:
                return  # a standby keeps its caches warm and acts once it leads; a stopping one no more
            self._reconcile(key, body)
            if key not in self.queue.bodies:
                # Deleted while this reconcile ran: what it remembered and reported would outlive it.
                self._forget(key)

    def _reconcile(self, key: Key, body: Mapping[str, Any]) -> None:
        with metrics.RECONCILE_SECONDS.time():
            try:
                plan = self.reconciler.reconcile(body)
            except KubeError as error:
                if not error.namespace_terminating:  # not an error of the reconcile (work_queue drops it)
                    metrics.RECONCILES.labels(result="error").inc()
                raise
            except Exception:
                metrics.RECONCILES.labels(result="error").inc()
                raise
        metrics.record_reconcile(key, plan)
        metrics.MANAGED.set(len(self.queue.bodies))
        metrics.QUEUE_DEPTH.set(self.queue.depth)
        if plan.requeue_after is not None:
            self.queue.enqueue_after(key, plan.requeue_after)

    def _evaluate(self, body: Mapping[str, Any], metrics: MetricsReader | None = None) -> Decision | None:
        with self._working() as may_act:
            if not may_act:
                return None
            meta = body.get("metadata", {})
            key = (meta.get("namespace"), meta.get("name"))
            try:
                self.analyst.evaluate(body)  # a canary judged, when one is due
            except Exception:
                log.exception("judging the canary of %s/%s failed; its step holds", *key)
            try:
                self.token_coster.evaluate(body, metrics if isinstance(metrics, SweepReader) else None)
            except Exception:
                log.exception("reading the cost per token of %s/%s failed; status.tokenCost is left", *key)
            return self.autoscaler.evaluate(body, metrics)

    async def _autoscale_sweeps(self) -> None:
        """Evaluate every known ModelDeployment with autoscaling on, every interval.

        Sweeps start on a fixed grid, so a slow sweep does not push every later one back; one that takes
        longer than the interval is followed by the next at once (and shows in the sweep histogram).
        """
        interval = self.settings.autoscale_interval_seconds
        # When each model last had every signal; a model never seen with them counts from the first look.
        last_complete: dict[Key, datetime] = {}
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(
            max_workers=self.settings.autoscale_concurrency, thread_name_prefix="autoscaler"
        )
        next_sweep = loop.time() + interval
        try:
            while True:
                await asyncio.sleep(max(0.0, next_sweep - loop.time()))
                started = loop.time()
                next_sweep = max(next_sweep + interval, started)
                if not self.leading.is_set():
                    continue
                reader = self.autoscaler.sweep_reader()  # one query per signal for the whole sweep
                results = await evaluate_all(
                    dict(self.queue.bodies), functools.partial(self._evaluate, metrics=reader), executor
                )
                metrics.AUTOSCALER_SWEEP_SECONDS.observe(loop.time() - started)
                for key, decision in results.items():
                    if isinstance(decision, Exception):
                        log.error(
                            "autoscaling %s/%s failed; replicas left as they are", *key, exc_info=decision
                        )
                        continue
                    if decision is None:
                        continue
                    metrics.SCALE_DECISIONS.labels(reason=decision.reason).inc()
                    now = utcnow()
                    if decision.active or key not in last_complete:
                        last_complete[key] = now
                    age = (now - last_complete[key]).total_seconds()
                    if key in self.queue.bodies:  # deleted mid-sweep: its series is gone, keep it so
                        metrics.SIGNAL_AGE.labels(namespace=key[0], name=key[1]).set(age)
                for gone in set(last_complete) - set(self.queue.bodies):
                    del last_complete[gone]
        finally:
            # Evaluations under way finish; none start after the loop is cancelled.
            executor.shutdown(wait=False, cancel_futures=True)

    # --- background threads ----------------------------------------------------------------------

    def _start_leader_election(self, loop: asyncio.AbstractEventLoop) -> None:
        settings = self.settings
        metrics.LEADER.set(0 if settings.leader_election else 1)
        if not settings.leader_election:
            self.leading.set()
            return

        def resync() -> None:
            # Whatever the watches saw while standing by is reconciled once this replica leads.
            for key in list(self.queue.bodies):
                loop.call_soon_threadsafe(self.queue.enqueue, key)

        self._elector = LeaderElector(
            self.kube,
            settings.leader_election_namespace,
            settings.leader_election_name,
            settings.pod_name or socket.gethostname(),
            utcnow,
            on_started_leading=resync,
        )
        self.leading = self._elector.leading
        threading.Thread(target=self._elector.run, name="leader-election", daemon=True).start()

    def _start_price_refresh(self) -> None:
        refresher = price_refresher(self.settings, self.reconciler, self.capacity, self.leading)
        self._stoppables.append(refresher.stopped)
        threading.Thread(target=refresher.run, name="spot-prices", daemon=True).start()

    def _start_consumer(self, loop: asyncio.AbstractEventLoop) -> None:
        # boto3 is imported only when a queue is configured: clusters without AWS never load it.
        from gpufleet.adapters.sqs import InterruptionQueue

        settings = self.settings
        sqs = InterruptionQueue(
            settings.interruption_queue_url or "", settings.aws_region, settings.aws_endpoint_url
        )

        def enqueue(key: Key) -> None:
            loop.call_soon_threadsafe(self.queue.enqueue, key, URGENT)  # a warning has a deadline

        consumer = InterruptionConsumer(
            sqs,
            self.capacity,
            enqueue,
            utcnow,
            settings.interruption_queue_max_backoff_seconds,
            self.leading,
            wait_seconds=settings.interruption_queue_wait_seconds,
            visibility_seconds=settings.interruption_queue_visibility_seconds,
            prepare=self.prime_capacity,
            record=NodeRecorder(self._fenced).record,
        )
        self._stoppables.append(consumer.stopped)
        # Parallel long polls: a backlog of thousands is read in seconds, not one batch of ten at a time.
        for index in range(settings.interruption_queue_pollers):
            threading.Thread(target=consumer.run, name=f"interruption-queue-{index}", daemon=True).start()
        log.info("reading capacity signals from %s (%s)", sqs.queue_url, sqs.region)


def price_refresher(
    settings: Settings, reconciler: Reconciler, capacity: CapacityStore, leading: threading.Event
) -> SpotPriceRefresher:
    """The spot price refresh, in the queue's region; refused at start when no region is known."""
    from gpufleet.adapters.prices import latest_spot_prices
    from gpufleet.adapters.sqs import resolve_region

    # The queue's region is the cluster's: EventBridge delivers a region's EC2 events in that region.
    region = resolve_region(settings.aws_region, settings.interruption_queue_url)
    if region is None:
        # Refused at start, like a queue without a region: a refresher that can never succeed would
        # only log, and the prices would silently stay the configured ones.
        raise ValueError(
            "spot price refresh is on (GPUFLEET_SPOT_PRICE_REFRESH_SECONDS="
            f"{settings.spot_price_refresh_seconds}) but no AWS region is known: set GPUFLEET_AWS_REGION "
            "(chart value spot.awsRegion) or AWS_REGION, or set spot.priceRefreshSeconds to 0"
        )

    def fetch(instance_types: list[str], zones: list[str], now: datetime) -> dict[tuple[str, str], float]:
        return latest_spot_prices(
            instance_types, zones, region=region, endpoint_url=settings.aws_endpoint_url, now=now
        )

    return SpotPriceRefresher(
        reconciler, capacity.zones, fetch, utcnow, settings.spot_price_refresh_seconds, leading
    )


# The kinds gpufleet creates, all labelled with their ModelDeployment: watched with that label as the
# API server's selector, so a cluster's other pods and Deployments never reach this process.
OWNED_KINDS = (
    ("v1", "Pod"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("apps/v1", "ControllerRevision"),
)


def owned_object_informers(
    kube: RestKubeApi, namespaces: Sequence[str], on_change: Handler
) -> list[Informer]:
    scopes: list[str | None] = [*namespaces] or [None]
    label = LABEL_MODEL_DEPLOYMENT
    return [
        Informer(kube, api_version, kind, scope, label, on_change, index_label=label)
        for api_version, kind in OWNED_KINDS
        for scope in scopes
    ]


def build(settings: Settings) -> Operator:
    """The operator for these settings, with one Kubernetes client shared by everything in it."""
    # Reconcile workers, autoscaler evaluations and the few background loops share one client.
    watches = len(OWNED_KINDS) * max(1, len(settings.namespaces))
    connections = (
        settings.workers + settings.autoscale_concurrency + settings.interruption_queue_pollers + watches + 4
    )
    kube = RestKubeApi(load_http(connections=connections), on_request=metrics.kube_request)
    return Operator(settings, kube)
