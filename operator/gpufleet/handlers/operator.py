"""kopf registrations: startup builds the operator (gpufleet.runtime.composition_root); watches feed it.

kopf watches ModelDeployments. Nodes and the objects gpufleet owns (pods, Deployments, Services, PDBs)
are watched by the operator's own informers (gpufleet.runtime.informer): the owned kinds with a label
selector on the API server, which kopf cannot give, and all of them with deletions missed while a
watch was away reported on the next list.

Importing this module registers the handlers with kopf's default registry.
Nothing here decides or does anything but translate kopf's calls: decisions
are in gpufleet.planning, the work in gpufleet.runtime.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from gpufleet.adapters.certs import ensure_self_signed
from gpufleet.adapters.kube_http import credentials_from_environment
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION
from gpufleet.config import Settings
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


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's watches use the same credentials as the operator's own requests (adapters.kube_http): a
    kubeconfig's relative paths and token files work, and a rotated service account token is read again
    when kopf logs in anew after a 401. A kubeconfig that needs the kubernetes client goes to it."""
    found = credentials_from_environment()
    if found is None:
        return kopf.login_via_client(**kwargs)
    return kopf.ConnectionInfo(
        server=found.server,
        ca_path=found.ca_file,
        insecure=not found.verify,
        token=found.token() if found.token is not None else None,
        certificate_path=found.cert_file,
        private_key_path=found.key_file,
    )


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
