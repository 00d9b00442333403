"""Which vLLM release an engine runs: the stated version, else the image tag, else the newest known."""

from __future__ import annotations

import pytest

from gpufleet.api.v1alpha1 import DEFAULT_IMAGE, Engine
from gpufleet.api.vllm_versions import (
    NEWEST_KNOWN,
    SHUTDOWN_TIMEOUT_SINCE,
    engine_version,
    image_tag,
    image_version,
    parse_version,
    takes_shutdown_timeout,
)


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("0.34.0", (0, 34, 0)),
        ("v0.34.0", (0, 34, 0)),
        ("v0.11", (0, 11, 0)),
        ("v0.10.1.1", (0, 10, 1)),
        ("v0.8.5.post1", (0, 8, 5)),
        ("v0.11.0-patched", (0, 11, 0)),
        ("v0.34.0-x86_64-cu130", (0, 34, 0)),
        ("v1.2.3rc1", (1, 2, 3)),
        ("latest", None),
        ("nightly-4f1c2e9", None),
        ("v1", None),
        ("0.3x.0", None),
        ("", None),
    ],
)
def test_parse_version(text: str, version: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == version


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("vllm/vllm-openai:v0.34.0", "v0.34.0"),
        ("registry.example.com:5000/ml/vllm-openai:v0.17.1", "v0.17.1"),
        ("registry.example.com:5000/ml/vllm-openai", None),
        ("vllm/vllm-openai@sha256:" + "a" * 64, None),
        ("vllm/vllm-openai:v0.18.0@sha256:" + "a" * 64, "v0.18.0"),
        ("vllm-openai", None),
    ],
)
def test_image_tag(image: str, tag: str | None) -> None:
    assert image_tag(image) == tag


def test_the_newest_known_release_is_the_default_images() -> None:
    assert image_version(DEFAULT_IMAGE) == NEWEST_KNOWN
    assert engine_version(Engine()) == NEWEST_KNOWN
    assert takes_shutdown_timeout(NEWEST_KNOWN)


@pytest.mark.parametrize(
    ("engine", "version"),
    [
        ({"image": "vllm/vllm-openai:v0.17.1"}, (0, 17, 1)),
        ({"image": "vllm/vllm-openai:latest"}, NEWEST_KNOWN),
        ({"image": "vllm/vllm-openai@sha256:" + "b" * 64}, NEWEST_KNOWN),
        ({"image": "registry.example.com/vllm:nightly"}, NEWEST_KNOWN),
        # A stated version wins over the tag (a private build tagged with something else).
        ({"image": "registry.example.com/vllm:prod", "version": "0.11.0"}, (0, 11, 0)),
        ({"image": "vllm/vllm-openai:v0.34.0", "version": "v0.17.1"}, (0, 17, 1)),
    ],
)
def test_engine_version(engine: dict[str, str], version: tuple[int, int, int]) -> None:
    assert engine_version(Engine.model_validate(engine)) == version


def test_shutdown_timeout_arrived_in_0_18_0() -> None:
    assert SHUTDOWN_TIMEOUT_SINCE == (0, 18, 0)
    assert not takes_shutdown_timeout((0, 17, 1))
    assert takes_shutdown_timeout((0, 18, 0))
    assert takes_shutdown_timeout((1, 0, 0))


@pytest.mark.parametrize("bad", ["latest", "0.34.0-patched", "v1", "0.34.0.1", " 0.34.0"])
def test_a_stated_version_must_be_a_release(bad: str) -> None:
    with pytest.raises(ValueError, match="version"):
        Engine.model_validate({"version": bad})
