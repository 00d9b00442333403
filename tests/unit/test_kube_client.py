"""The Kubernetes client the operator builds: credentials from a kubeconfig, a pool sized for its threads."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from gpufleet.adapters.kube import KubeError, RestKubeApi, load_api_client


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # Outside a pod: no in-cluster service environment, so the kubeconfig is read.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


def test_the_kubeconfig_gives_the_server_and_the_token(kubeconfig: str) -> None:
    api = load_api_client(kubeconfig)
    assert api.configuration.host == "https://127.0.0.1:6443"
    assert api.configuration.api_key["BearerToken"] == "Bearer t0ken"


def test_the_pool_holds_a_connection_for_every_thread_that_shares_the_client(kubeconfig: str) -> None:
    api = load_api_client(kubeconfig, connections=500)
    assert api.rest_client.pool_manager.connection_pool_kw["maxsize"] == 500


def test_a_smaller_request_never_shrinks_the_clients_default_pool(kubeconfig: str) -> None:
    default = load_api_client(kubeconfig).configuration.connection_pool_maxsize
    assert load_api_client(kubeconfig, connections=1).configuration.connection_pool_maxsize == default


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again once the with block ends


def test_no_answer_is_a_kube_error_whatever_urllib3_raises(tmp_path: Path) -> None:
    # A refused connection ends in urllib3's MaxRetryError, which is not an OSError; escaping as itself
    # it ended the leader election thread. Every caller handles KubeError.
    configuration = client.Configuration()
    configuration.host = f"https://127.0.0.1:{_closed_port()}"
    configuration.verify_ssl = False
    kube = RestKubeApi(client.ApiClient(configuration), timeout=2)
    with pytest.raises(KubeError) as failed:
        kube.get("coordination.k8s.io/v1", "Lease", "ns", "lease")
    assert failed.value.status == 0
    assert "MaxRetryError" in str(failed.value) or "Connection refused" in str(failed.value)


def test_a_429_carries_the_retry_after_the_server_sent() -> None:
    class Shedding(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"kind":"Status","code":429,"reason":"TooManyRequests"}'
            self.send_response(429)
            self.send_header("Retry-After", "3")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Shedding)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
        kube = RestKubeApi(client.ApiClient(configuration), timeout=5)
        with pytest.raises(KubeError) as shed:
            kube.get("coordination.k8s.io/v1", "Lease", "ns", "lease")
    finally:
        server.shutdown()
    assert (shed.value.status, shed.value.retry_after) == (429, 3.0)


def test_a_credentials_secret_is_read_by_name_in_its_namespace() -> None:
    from gpufleet.adapters.kube import _path

    assert _path("v1", "Secret", "ml", "hf-token") == "/api/v1/namespaces/ml/secrets/hf-token"
