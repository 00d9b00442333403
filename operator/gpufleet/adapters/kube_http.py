"""HTTP to the API server over urllib3, with the credentials of a pod or of a kubeconfig.

The kubernetes client package costs about 55 MiB of resident memory once imported (its ~860 modules
of generated models), which the operator never uses: it sends JSON and reads JSON. This transport
covers what an operator pod has (the service account's token, re-read as the kubelet rotates it, and
the cluster's CA) and the kubeconfigs of development clusters (a token or token file, client
certificates, a CA, as files or inline data). Anything else in a kubeconfig (exec plugins such as
`aws eks get-token`, auth providers, basic auth, impersonation, proxies, several files in KUBECONFIG)
is left to the kubernetes client: `from_environment` returns None and the caller uses that instead.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3
import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# A projected token is rotated by the kubelet well before it expires; client-go re-reads it each minute.
TOKEN_REREAD_SECONDS = 60.0
# kubeconfig members this transport understands; any other in the user or cluster: the kubernetes client.
_USER_KEYS = {
    "token",
    "tokenFile",
    "client-certificate",
    "client-certificate-data",
    "client-key",
    "client-key-data",
}
_CLUSTER_KEYS = {
    "server",
    "certificate-authority",
    "certificate-authority-data",
    "insecure-skip-tls-verify",
    "extensions",
}


class HttpError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, body: str, headers: Mapping[str, str]) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason, self.body, self.headers = status, reason, body, headers


class TokenFile:
    """A bearer token read from a file, and read again a minute later (the kubelet rotates it)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self._clock = path, clock
        self._token, self._read_at = "", -TOKEN_REREAD_SECONDS
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._clock() - self._read_at >= TOKEN_REREAD_SECONDS:
                self._token, self._read_at = self.path.read_text().strip(), self._clock()
            return self._token


@dataclass(frozen=True)
class Credentials:
    server: str  # https://host:port, no trailing slash
    ca_file: str | None = None
    verify: bool = True
    token: Callable[[], str] | None = None
    cert_file: str | None = None
    key_file: str | None = None


class KubeHttp:
    """Requests to one API server through a pool of keep-alive connections shared by threads."""

    def __init__(self, credentials: Credentials, connections: int = 10) -> None:
        self.credentials = credentials
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=connections,
            cert_reqs="CERT_REQUIRED" if credentials.verify else "CERT_NONE",
            ca_certs=credentials.ca_file,
            cert_file=credentials.cert_file,
            key_file=credentials.key_file,
        )

    def request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        timeout: float | tuple[float, float] = 30.0,
    ) -> urllib3.BaseHTTPResponse:
        """The response, unread (read `.data`, or `.stream()` for a watch, then `release_conn()`);
        HttpError for a status of 400 or more; urllib3's errors when there is no answer."""
        sent = dict(headers or {})
        if self.credentials.token is not None:
            sent["Authorization"] = f"Bearer {self.credentials.token()}"
        url = self.credentials.server + path
        if query:
            url += "?" + urlencode(query)
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        response = self._pool.request(
            method,
            url,
            body=None if body is None else json.dumps(body).encode(),
            headers=sent,
            timeout=urllib3.Timeout(connect=connect, read=read),
            preload_content=False,
        )
        if response.status >= 400:
            data = response.data.decode("utf-8", errors="replace")
            response.release_conn()
            raise HttpError(response.status, response.reason or "", data, dict(response.headers))
        return response


def in_cluster(
    environ: Mapping[str, str] = os.environ, account: Path = SERVICE_ACCOUNT
) -> Credentials | None:
    """The pod's own credentials, as client-go's in-cluster config finds them; None outside a pod."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token = account / "token"
    if not host or not port or not token.exists():
        return None
    host = f"[{host}]" if ":" in host else host  # an IPv6 service address
    return Credentials(f"https://{host}:{port}", ca_file=str(account / "ca.crt"), token=TokenFile(token))


def from_kubeconfig(path: Path, scratch: Path) -> Credentials | None:
    """The current context's credentials; None when it needs what only the kubernetes client does.
    Inline certificates and keys are written to files under `scratch` (readable by the owner only)."""
    config = yaml.safe_load(path.read_text()) or {}
    contexts = {c["name"]: c.get("context") or {} for c in config.get("contexts") or []}
    context = contexts.get(config.get("current-context", ""))
    if context is None:
        return None
    clusters = {c["name"]: c.get("cluster") or {} for c in config.get("clusters") or []}
    users = {u["name"]: u.get("user") or {} for u in config.get("users") or []}
    cluster, user = clusters.get(context.get("cluster", "")), users.get(context.get("user", ""), {})
    if not cluster or set(cluster) - _CLUSTER_KEYS or set(user) - _USER_KEYS or "server" not in cluster:
        return None
    base = path.parent

    def file_of(name: str) -> str | None:
        source = cluster if name == "certificate-authority" else user
        if f"{name}-data" in source:
            target = scratch / name
            target.write_bytes(base64.b64decode(source[f"{name}-data"]))
            target.chmod(0o600)
            return str(target)
        return str(base / source[name]) if name in source else None

    token: Callable[[], str] | None = None
    if "token" in user:
        fixed = str(user["token"])
        token = lambda: fixed  # noqa: E731
    elif "tokenFile" in user:
        token = TokenFile(base / user["tokenFile"])
    return Credentials(
        server=str(cluster["server"]).rstrip("/"),
        ca_file=file_of("certificate-authority"),
        verify=not cluster.get("insecure-skip-tls-verify", False),
        token=token,
        cert_file=file_of("client-certificate"),
        key_file=file_of("client-key"),
    )


@functools.cache
def _scratch_dir() -> Path:
    """One private folder per process for a kubeconfig's inline certificates (read more than once)."""
    return Path(tempfile.mkdtemp(prefix="gpufleet-kube-"))


def credentials_from_environment(kubeconfig: str | None = None) -> Credentials | None:
    """In a pod, its service account; else the kubeconfig (the argument, KUBECONFIG, ~/.kube/config);
    None when that kubeconfig needs the kubernetes client."""
    credentials = in_cluster()
    if credentials is not None:
        return credentials
    named = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if os.pathsep in named:
        return None  # several files merged: the kubernetes client's rules
    path = Path(named).expanduser()
    if not path.exists():
        return None
    return from_kubeconfig(path, _scratch_dir())


def from_environment(kubeconfig: str | None = None, connections: int = 10) -> KubeHttp | None:
    """KubeHttp with credentials_from_environment's credentials; None when only the kubernetes client
    can read them."""
    credentials = credentials_from_environment(kubeconfig)
    return None if credentials is None else KubeHttp(credentials, connections)
