"""Fixtures the AWS adapter tests share: a local moto server and boto3's default chain pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleetsim.cloud import MotoServer


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """The adapters read credentials from boto3's default chain only: give it dummy ones, nothing else."""
    with pytest.MonkeyPatch.context() as patch:
        for name in (
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ):
            patch.delenv(name, raising=False)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_SESSION_TOKEN", "testing")
        patch.setenv("AWS_CONFIG_FILE", "/dev/null")
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory, aws_env: None) -> Iterator[MotoServer]:
    """One moto server per test module (SQS and EC2 alike), on loopback."""
    with MotoServer(log=tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server
