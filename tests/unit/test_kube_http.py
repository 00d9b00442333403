"""Credentials for adapters.kube_http: a pod's service account and the kubeconfigs it can read alone."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet.adapters.kube_http import TokenFile, credentials_from_environment, from_kubeconfig, in_cluster


def kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "here",
                "contexts": [{"name": "here", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    return path


def test_a_pods_service_account_with_an_ipv6_service_address(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0\n")
    found = in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path)
    assert found is not None
    assert (found.server, found.ca_file) == ("https://[fd00::1]:443", str(tmp_path / "ca.crt"))
    assert found.token is not None
    assert found.token() == "t0"
    assert in_cluster({}, tmp_path) is None  # not in a pod


def test_a_rotated_token_is_read_again_a_minute_later(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first")
    now = [0.0]
    token = TokenFile(path, clock=lambda: now[0])
    assert token() == "first"
    path.write_text("second")
    now[0] = 59.0
    assert token() == "first"
    now[0] = 60.0
    assert token() == "second"


def test_relative_paths_and_a_token_file_are_read_from_the_kubeconfigs_folder(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("abc")
    path = kubeconfig(
        tmp_path / "config",
        {"server": "https://127.0.0.1:6443/", "certificate-authority": "ca.crt"},
        {"tokenFile": "token", "client-certificate": "c.crt", "client-key": "c.key"},
    )
    found = from_kubeconfig(path, tmp_path / "scratch")
    assert found is not None
    assert found.server == "https://127.0.0.1:6443"
    assert (found.ca_file, found.cert_file, found.key_file) == (
        str(tmp_path / "ca.crt"),
        str(tmp_path / "c.crt"),
        str(tmp_path / "c.key"),
    )
    assert found.token is not None
    assert found.token() == "abc"
    assert found.verify


def test_inline_certificates_are_written_to_private_files(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    data = {name: base64.b64encode(f"PEM {name}".encode()).decode() for name in ("ca", "cert", "key")}
    path = kubeconfig(
        tmp_path / "config",
        {"server": "https://k", "certificate-authority-data": data["ca"], "insecure-skip-tls-verify": False},
        {"client-certificate-data": data["cert"], "client-key-data": data["key"]},
    )
    found = from_kubeconfig(path, scratch)
    assert found is not None
    assert found.cert_file
    assert found.key_file
    assert found.ca_file
    assert Path(found.key_file).read_text() == "PEM key"
    assert Path(found.ca_file).read_text() == "PEM ca"
    assert Path(found.key_file).stat().st_mode & 0o777 == 0o600
    assert found.token is None


@pytest.mark.parametrize(
    "user",
    [
        {
            "exec": {
                "command": "aws",
                "args": ["eks", "get-token"],
                "apiVersion": "client.authentication.k8s.io/v1",
            }
        },
        {"auth-provider": {"name": "oidc"}},
        {"username": "admin", "password": "secret"},
        {"token": "t", "as": "someone-else"},
    ],
)
def test_what_only_the_kubernetes_client_does_is_left_to_it(tmp_path: Path, user: dict[str, Any]) -> None:
    path = kubeconfig(tmp_path / "config", {"server": "https://k"}, user)
    assert from_kubeconfig(path, tmp_path) is None


def test_a_proxy_or_several_kubeconfig_files_are_left_to_the_kubernetes_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    proxied = kubeconfig(
        tmp_path / "a", {"server": "https://k", "proxy-url": "http://proxy:3128"}, {"token": "t"}
    )
    assert credentials_from_environment(str(proxied)) is None
    plain = kubeconfig(tmp_path / "b", {"server": "https://k"}, {"token": "t"})
    assert credentials_from_environment(str(plain)) is not None
    monkeypatch.setenv("KUBECONFIG", f"{plain}:{proxied}")
    assert credentials_from_environment() is None
