"""Scenario files: a fleet, the manifests to apply, a load trace, faulty builds and a timeline of faults.

Times are simulated seconds; `timeScale` (simulated seconds per real second)
applies to every simulated delay alike, so a 30-minute story with scale 10
runs in 3 minutes with its proportions intact. Bad files fail with the path
of the field and what to write instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleetsim.builds import Build
from fleetsim.params import CloudParams, KubeletParams


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class LoadSpec(_Model):
    service: str = Field(
        description="Service whose ready pods receive the load (the ModelDeployment's name)."
    )
    model: str = Field(description="Model name sent in each request (the served name).")
    trace: dict[str, Any] = Field(description="Arrival rate over time: constant, step, burst or diurnal.")
    prompt_tokens: int = Field(512, gt=0, alias="promptTokens")
    max_tokens: int = Field(128, gt=0, alias="maxTokens")


class Interrupt(_Model):
    """A spot interruption of one node, picked by name or as the first node of a pool."""

    node: str | None = None
    pool: str | None = None
    rebalance_first_seconds: float | None = Field(
        None, ge=0, alias="rebalanceFirstSeconds", description="Send a rebalance recommendation this early."
    )
    notice_seconds: float | None = Field(
        None, ge=0, alias="noticeSeconds", description="Warning-to-reclaim time; default the fleet's (120 s)."
    )

    @model_validator(mode="after")
    def _one_target(self) -> Interrupt:
        if (self.node is None) == (self.pool is None):
            raise ValueError("set exactly one of node or pool")
        return self


class Scale(_Model):
    model_deployment: str = Field(alias="modelDeployment")
    replicas: int = Field(ge=0)


class SpotOutage(_Model):
    """A zone's spot capacity runs out for a while: the provisioner launches no spot node there.

    Nodes already running stay (an outage of capacity, not of the zone); interrupt them with
    `interrupt` events if the story needs it. On-demand capacity in the zone is untouched.
    """

    zone: str = Field(min_length=1)
    seconds: float = Field(gt=0, description="Simulated seconds until spot can be launched there again.")


class Patch(_Model):
    """A JSON merge patch (RFC 7386) of a ModelDeployment's spec, as `kubectl patch md/NAME --type merge`:
    objects merge, a null removes the field, anything else (lists too) replaces it. The API server
    validates the result as it would any change (the CRD's schema)."""

    model_deployment: str = Field(min_length=1, alias="modelDeployment")
    spec: dict[str, Any] = Field(min_length=1, description="Merged into the ModelDeployment's spec.")


EventKind = Literal["interrupt", "zoneOutage", "spotOutage", "deleteNode", "scale", "patch"]


class Event(_Model):
    at: float = Field(ge=0, description="Simulated seconds after the load starts.")
    interrupt: Interrupt | None = None
    zone_outage: str | None = Field(None, alias="zoneOutage")
    spot_outage: SpotOutage | None = Field(None, alias="spotOutage")
    delete_node: str | None = Field(None, alias="deleteNode")
    scale: Scale | None = None
    patch: Patch | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Event:
        actions = [
            a
            for a in (
                self.interrupt,
                self.zone_outage,
                self.spot_outage,
                self.delete_node,
                self.scale,
                self.patch,
            )
            if a is not None
        ]
        if len(actions) != 1:
            raise ValueError(
                "each event needs exactly one of interrupt, zoneOutage, spotOutage, deleteNode, scale, patch"
            )
        return self

    @property
    def kind(self) -> EventKind:
        if self.interrupt is not None:
            return "interrupt"
        if self.zone_outage is not None:
            return "zoneOutage"
        if self.spot_outage is not None:
            return "spotOutage"
        if self.delete_node is not None:
            return "deleteNode"
        if self.patch is not None:
            return "patch"
        return "scale"


class Params(_Model):
    kubelet: KubeletParams = KubeletParams()
    cloud: CloudParams = CloudParams()


class Scenario(_Model):
    name: str
    description: str = ""
    time_scale: float = Field(10.0, gt=0, alias="timeScale")
    duration: float = Field(gt=0, description="Simulated seconds of load after the model is Ready.")
    fleet: Path
    namespace: str = "default"
    apply: list[Path] = Field(min_length=1)
    ready_timeout: float = Field(
        1800.0, gt=0, alias="readyTimeout", description="Simulated seconds to wait for Ready."
    )
    load: LoadSpec | None = None
    events: list[Event] = []
    builds: dict[Annotated[str, Field(min_length=1)], Build] = Field(
        default_factory=dict,
        description="Faulty builds: a pod's vLLM container image, exactly -> its faults (fleetsim.builds).",
    )
    params: Params = Params()
    operator_env: dict[str, str] = Field(
        default_factory=dict,
        alias="operatorEnv",
        description="Extra GPUFLEET_* settings for the operator, e.g. a short unschedulable threshold.",
    )


def _path(loc: tuple[int | str, ...]) -> str:
    out = "scenario"
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":  # pydantic's mark of a mapping's key
            out += part
        elif previous in _MAPPINGS or not part.isidentifier():
            out += f"[{part!r}]"  # a mapping's key, e.g. builds['vllm/vllm-openai:v0.34.0-bad']
        else:
            out += f".{part}"
        previous = part
    return out


# Scenario fields whose keys are the user's (images, variable names), not field names.
_MAPPINGS = frozenset({"builds", "operatorEnv"})


def parse_scenario(data: Any, base: Path) -> Scenario:
    """Validate a loaded YAML document; relative paths are resolved against `base`."""
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as error:
        lines = [f"{_path(tuple(e['loc']))}: {e['msg']}" for e in error.errors(include_url=False)]
        raise ValueError("invalid scenario:\n  " + "\n  ".join(lines)) from None

    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    return scenario.model_copy(
        update={"fleet": resolve(scenario.fleet), "apply": [resolve(p) for p in scenario.apply]}
    )


def load_scenario(path: Path, root: Path | None = None) -> Scenario:
    """Read a scenario file; paths inside it are relative to `root` (default: the repository root)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read scenario: {error}") from None
    base = root or Path(__file__).resolve().parents[2]
    try:
        return parse_scenario(data, base)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
