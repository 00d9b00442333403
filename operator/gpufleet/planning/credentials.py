"""spec.model.credentialsSecret: which of its keys the pods need, and whether the Secret has them.

The pods read the Secret through env secretKeyRefs. A Secret or key that is missing used to show only
as a replica crash-looping on a 401 from the Hub or S3; the reconcile looks the Secret up (its key
names only, never its values) and reports CredentialsReady, so the status says which Secret and key.

Which keys a Secret must hold follows from the sources (model and adapters):
- only hf:// sources: HF_TOKEN;
- only s3:// sources: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY;
- both: the complete keys of at least one of the two (the other is then anonymous, or the node's role);
- pvc:// only: the Secret is not referenced, so nothing is checked.
Keys of a scheme that are partly present must be complete (an access key id without its secret key).

Pure: the runtime passes what it read as a `SecretLookup`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CREDENTIALS_READY = "CredentialsReady"

HF_REQUIRED_KEYS = ("HF_TOKEN",)
S3_REQUIRED_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
_REQUIRED = {"hf": HF_REQUIRED_KEYS, "s3": S3_REQUIRED_KEYS}


@dataclass(frozen=True)
class SecretLookup:
    """What the runtime learnt of the credentials Secret: whether it exists and its key names."""

    name: str
    found: bool | None  # None: it could not be read (forbidden, API error); error says why
    keys: frozenset[str] = frozenset()
    error: str = ""


@dataclass(frozen=True)
class CredentialsVerdict:
    """The CredentialsReady condition: ok None is Unknown (the Secret could not be read)."""

    ok: bool | None
    reason: str
    message: str


def source_schemes(uris: Iterable[str]) -> frozenset[str]:
    """Schemes of the sources (model, adapters, drafter) that take credentials (hf, s3)."""
    return frozenset(uri.split("://", 1)[0] for uri in uris) & frozenset(_REQUIRED)


def always_required_keys(secret: str | None, uris: Sequence[str]) -> frozenset[str]:
    """Keys the pods cannot start without, whatever else the Secret holds: those of the only scheme used.

    The pod references them with optional: false, so a missing Secret or key keeps the container from
    starting (CreateContainerConfigError) instead of letting it crash-loop on a 401.
    """
    if secret is None:
        return frozenset()
    schemes = source_schemes(uris)
    return frozenset(_REQUIRED[next(iter(schemes))]) if len(schemes) == 1 else frozenset()


def _missing(schemes: Iterable[str], keys: frozenset[str]) -> list[str]:
    """Keys to add: those missing of the schemes whose keys are partly there, else every scheme's."""
    ordered = sorted(schemes)
    partial = [s for s in ordered if keys & set(_REQUIRED[s])]
    complete = [s for s in partial if set(_REQUIRED[s]) <= keys]
    if complete and len(complete) == len(partial):
        return []
    wanted = partial or ordered
    return [key for s in wanted for key in _REQUIRED[s] if key not in keys]


def credentials_condition(
    name: str | None, uris: Sequence[str], lookup: SecretLookup | None
) -> CredentialsVerdict | None:
    """CredentialsReady of Secret `name` for sources `uris`, or None when the pods reference no Secret
    (none set, or pvc:// sources only)."""
    schemes = source_schemes(uris)
    if name is None or not schemes:
        return None
    if lookup is None or lookup.name != name or lookup.found is None:
        why = lookup.error if lookup is not None and lookup.name == name and lookup.error else "not read"
        return CredentialsVerdict(None, "SecretNotChecked", f"Secret {name} could not be checked: {why}")
    if not lookup.found:
        return CredentialsVerdict(
            False,
            "SecretNotFound",
            f"Secret {name} does not exist in the namespace; vLLM pods cannot start until it does "
            f"(expected keys: {', '.join(k for s in sorted(schemes) for k in _REQUIRED[s])})",
        )
    missing = _missing(schemes, lookup.keys)
    if missing:
        return CredentialsVerdict(
            False,
            "SecretKeyMissing",
            f"Secret {name} has no key {', '.join(missing)}",
        )
    return CredentialsVerdict(True, "SecretFound", f"Secret {name} holds the keys the pods read")
