"""Which keys of spec.model.credentialsSecret the pods need; CredentialsReady from what the Secret holds."""

from __future__ import annotations

import pytest

from gpufleet.planning.credentials import SecretLookup, always_required_keys, credentials_condition

HF = "hf://meta-llama/Meta-Llama-3-8B"
S3 = "s3://models/llama"
PVC = "pvc://weights/llama"
AWS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})


@pytest.mark.parametrize(
    ("uris", "keys", "reason", "missing"),
    [
        ([HF], {"HF_TOKEN"}, "SecretFound", ""),
        ([HF], {"token"}, "SecretKeyMissing", "HF_TOKEN"),
        ([S3], {"AWS_ACCESS_KEY_ID"}, "SecretKeyMissing", "AWS_SECRET_ACCESS_KEY"),
        ([S3], AWS | {"AWS_REGION"}, "SecretFound", ""),
        # Both schemes: one complete set is enough (the other is anonymous or the node's role) ...
        ([HF, S3], AWS, "SecretFound", ""),
        ([HF, S3], {"HF_TOKEN"}, "SecretFound", ""),
        # ... but a half-written set is reported, and an empty Secret names the keys to add.
        ([HF, S3], {"HF_TOKEN", "AWS_ACCESS_KEY_ID"}, "SecretKeyMissing", "AWS_SECRET_ACCESS_KEY"),
        ([HF, S3], set(), "SecretKeyMissing", "HF_TOKEN, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_keys_the_secret_must_hold(uris: list[str], keys: set[str], reason: str, missing: str) -> None:
    verdict = credentials_condition("creds", uris, SecretLookup("creds", True, frozenset(keys)))
    assert verdict is not None
    assert (verdict.ok, verdict.reason) == (reason == "SecretFound", reason)
    if missing:
        assert verdict.message == f"Secret creds has no key {missing}"


def test_missing_secret_unread_secret_and_no_secret() -> None:
    gone = credentials_condition("creds", [HF], SecretLookup("creds", False))
    assert gone is not None
    assert (gone.ok, gone.reason) == (False, "SecretNotFound")
    unread = credentials_condition("creds", [HF], SecretLookup("creds", None, error="forbidden"))
    assert unread is not None
    assert (unread.ok, unread.reason) == (None, "SecretNotChecked")
    assert credentials_condition(None, [HF], None) is None
    assert credentials_condition("creds", [PVC], SecretLookup("creds", False)) is None  # not referenced


@pytest.mark.parametrize(
    ("uris", "required"),
    [([HF], {"HF_TOKEN"}), ([S3, S3], set(AWS)), ([HF, S3], set()), ([PVC], set())],
)
def test_keys_the_pods_require(uris: list[str], required: set[str]) -> None:
    assert always_required_keys("creds", uris) == required
    assert always_required_keys(None, uris) == frozenset()
