"""Which vLLM a ModelDeployment runs, and which `vllm serve` flags that version takes.

The version comes from `spec.engine.version` when set, else from the image tag
(`vllm/vllm-openai:v0.34.0`, as vLLM tags its images: a `v` and the PyPI
release). A tag that names no version (`latest`, `nightly`, a digest) is taken
as the newest release gpufleet knows, the default image's: such images are
usually newer than an old pin, and a spec can say otherwise with
`engine.version`.

Every flag that depends on the version is listed here with the release that
added it and the source; `tests/contract` parses the command line gpufleet
generates with the real parser of the default image's vLLM.
"""

from __future__ import annotations

import re
from typing import Final

from gpufleet.api.v1alpha1 import DEFAULT_IMAGE, Engine

VllmVersion = tuple[int, int, int]

# A release as vLLM tags and publishes it: 0.34.0, v0.10.1.1, v0.8.5.post1, v0.11 (patch 0), and the
# per-architecture tags v0.34.0-x86_64; what follows the patch number (a fourth number, a suffix such as
# -cu130 or -patched, rc1) does not change which flags the release takes.
_VERSION: Final = re.compile(
    r"^v?(?P<major>[0-9]+)\.(?P<minor>[0-9]+)(?:\.(?P<patch>[0-9]+))?(?=$|[^0-9A-Za-z]|rc|post|dev)"
)

# `vllm serve --shutdown-timeout=SECONDS`: on SIGTERM, refuse new requests and let in-flight ones finish for
# up to SECONDS (0, the default, aborts them). vllm-project/vllm PR #34730, reverted and re-landed as
# PR #36666; first released in v0.18.0 (vllm/engine/arg_utils.py has the flag at v0.18.0, not at v0.17.1).
SHUTDOWN_TIMEOUT_SINCE: Final[VllmVersion] = (0, 18, 0)


def parse_version(text: str) -> VllmVersion | None:
    """`0.34.0`, `v0.34.0`, `v0.11.0-patched` → (major, minor, patch); None if `text` names no release."""
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    return int(match["major"]), int(match["minor"]), int(match["patch"] or 0)


def image_tag(image: str) -> str | None:
    """The tag of an image reference (`registry:5000/vllm:v0.34.0@sha256:…` → `v0.34.0`), or None."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def image_version(image: str) -> VllmVersion | None:
    """The vLLM release an image's tag names, or None (no tag, or a tag such as `latest`)."""
    tag = image_tag(image)
    return parse_version(tag) if tag is not None else None


def _default_image_version() -> VllmVersion:
    version = image_version(DEFAULT_IMAGE)
    if version is None:  # pragma: no cover - a wrong constant, caught by the unit tests at import
        raise ValueError(f"DEFAULT_IMAGE {DEFAULT_IMAGE!r} must be tagged with its vLLM release")
    return version


# The newest vLLM release gpufleet knows: the default image's.
NEWEST_KNOWN: Final[VllmVersion] = _default_image_version()


def format_version(version: VllmVersion) -> str:
    return ".".join(str(part) for part in version)


def engine_version(engine: Engine) -> VllmVersion:
    """The vLLM release `engine` runs: engine.version, else the image tag's, else the newest known."""
    if engine.version is not None:
        stated = parse_version(engine.version)
        if stated is not None:
            return stated
    return image_version(engine.image) or NEWEST_KNOWN


def takes_shutdown_timeout(version: VllmVersion) -> bool:
    """Whether `vllm serve` of this release drains on SIGTERM with --shutdown-timeout."""
    return version >= SHUTDOWN_TIMEOUT_SINCE
