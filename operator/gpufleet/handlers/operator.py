"""kopf registration: watches feed the work queue; the webhook shares the CLI's validation.

Importing this module registers the handlers with kopf's default registry.
Nothing here decides anything: decisions are in gpufleet.planning, the
reconcile sequence is in gpufleet.handlers.reconcile.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from gpufleet.adapters.certs import ensure_self_signed
from gpufleet.adapters.kube import RestKubeApi, load_api_client
from gpufleet.adapters.metrics import PrometheusMetrics
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION
from gpufleet.config import Settings
from gpufleet.handlers import metrics
from gpufleet.handlers.autoscale import Autoscaler
from gpufleet.handlers.queue import Key, WorkQueue
from gpufleet.handlers.reconcile import Outcome, Reconciler, version_of
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
    kube = RestKubeApi(load_api_client(), on_request=metrics.KUBE_REQUESTS.inc)
    reconciler = Reconciler(
        kube,
        config.workload_options(),
        clock=_utcnow,
        unschedulable_after=timedelta(seconds=config.unschedulable_after_seconds),
    )

    def work(_key: Key, body: Any) -> Outcome:
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
        metrics.MANAGED.set(len(queue.bodies))
        metrics.QUEUE_DEPTH.set(queue.depth)
        return outcome

    queue = WorkQueue(work, config.workers, config.resync_seconds)
    queue.start()
    reader = (
        PrometheusMetrics(config.prometheus_url, config.metric_queries()) if config.prometheus_url else None
    )
    autoscaler = Autoscaler(kube, reader, clock=_utcnow, timings=config.scaling_timings())
    memo.autoscale_task = asyncio.get_running_loop().create_task(
        _autoscale_loop(queue, autoscaler, config.autoscale_interval_seconds)
    )
    metrics.serve(config.metrics_port)
    memo.queue = queue
    memo.reconciler = reconciler
    memo.kube = kube
    log.info("gpufleet started: %d workers, resync every %.0fs", config.workers, config.resync_seconds)


async def _autoscale_loop(queue: WorkQueue, autoscaler: Autoscaler, interval: float) -> None:
    """Evaluate every known ModelDeployment with autoscaling on, every `interval` seconds."""
    while True:
        await asyncio.sleep(interval)
        for key, body in list(queue.bodies.items()):
            try:
                decision = await asyncio.to_thread(autoscaler.evaluate, body)
            except Exception:
                log.exception("autoscaling %s/%s failed; replicas left as they are", *key)
                continue
            if decision is not None:
                metrics.SCALE_DECISIONS.labels(reason=decision.reason).inc()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
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
def owned_pod_event(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    key = _owner_key(namespace, labels)
    if key:
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
