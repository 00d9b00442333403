"""kopf registrations: startup builds the operator (gpufleet.runtime.composition_root); watches feed it.

Importing this module registers the handlers with kopf's default registry.
Nothing here decides or does anything but translate kopf's calls: decisions
are in gpufleet.planning, the work in gpufleet.runtime.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from gpufleet.adapters.certs import ensure_self_signed
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION
from gpufleet.config import Settings
from gpufleet.planning.observe import owner_key_of
from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT
from gpufleet.runtime.composition_root import Operator, build

WEBHOOK_CONFIGURATION = "gpufleet.io"


def _configure_kopf(settings: kopf.OperatorSettings, config: Settings) -> None:
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
    _configure_kopf(settings, config)
    memo.operator = build(config)
    await memo.operator.start()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    operator: Operator | None = getattr(memo, "operator", None)
    if operator is not None:
        await operator.stop()


def _deleted(event: kopf.RawEvent) -> bool:
    return event.get("type") == "DELETED"


@kopf.on.event(GROUP, VERSION, PLURAL)
def model_deployment_event(
    event: kopf.RawEvent, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    if namespace is not None:
        memo.operator.model_deployment_changed(
            (namespace, name), None if _deleted(event) else event["object"]
        )


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MODEL_DEPLOYMENT: kopf.PRESENT})
def owned_deployment_event(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    key = owner_key_of(namespace, labels)
    if key:
        memo.operator.owned_deployment_changed(key)


@kopf.on.event("", "v1", "pods", labels={LABEL_MODEL_DEPLOYMENT: kopf.PRESENT})
def owned_pod_event(
    event: kopf.RawEvent, namespace: str | None, name: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    key = owner_key_of(namespace, labels)
    if key:
        node = ((event.get("object") or {}).get("spec") or {}).get("nodeName")
        memo.operator.owned_pod_changed(key, f"{namespace}/{name}", node, _deleted(event))


@kopf.on.event("", "v1", "nodes")
def node_event(event: kopf.RawEvent, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.operator.node_changed(name, None if _deleted(event) else (event.get("object") or {}))


@kopf.on.event("", "v1", "services", labels={LABEL_MODEL_DEPLOYMENT: kopf.PRESENT})
def owned_service_event(**kwargs: Any) -> None:
    _owned_object_event("Service", **kwargs)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels={LABEL_MODEL_DEPLOYMENT: kopf.PRESENT})
def owned_pdb_event(**kwargs: Any) -> None:
    _owned_object_event("PodDisruptionBudget", **kwargs)


def _owned_object_event(
    kind: str,
    event: kopf.RawEvent,
    namespace: str | None,
    name: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    key = owner_key_of(namespace, labels)
    if key:
        memo.operator.owned_object_changed(key, kind, name, None if _deleted(event) else event.get("object"))
