"""The dry-run scenario file: which policy, which demand, which workload and fleet, which seed.

A scenario is one YAML mapping (see ``docs/dry-run.md`` and ``scenarios/``)::

    policy: ../policies/asr-aws.yaml      # relative to the scenario file, or absolute
    demand:
      format: twitter                     # twitter | servegen | azure | csv | prometheus
      path: ../../shared/traces/twitter-2021-08-per-second.tbz2
      start: 0s                           # offset into the trace
      duration: 7d
      peak_nodes: 18                      # or scale: 0.05
    workload:
      audio_seconds: {distribution: lognormal, median: 60, p95: 300}
      real_time_factor: 1.0
    fleet: {streams_per_node: 10, boot_seconds: 180, price_per_hour: 1.006}
    pool: {min_nodes: 5, max_nodes: 20}   # optional: override the policy's bounds
    tick_seconds: 15
    seed: 7

Unknown keys are errors, as in policy files. ``load_scenario`` resolves every path against the
scenario's folder and raises ``ScenarioError`` (never a traceback) for anything unusable.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from autoscaler.errors import PolicyError, ScenarioError
from autoscaler.policy.load import load_policy
from autoscaler.policy.model import Duration, PoolPolicy, StrictModel, parse_duration

#: A scenario file is a few hundred bytes; anything this big is not one.
_MAX_BYTES = 1024 * 1024
#: z of the 95th percentile of a standard normal, for the lognormal's sigma from (median, p95).
_Z95 = NormalDist().inv_cdf(0.95)

Format = Literal["twitter", "servegen", "azure", "csv", "prometheus"]


def _offset_or_instant(value: Any) -> Any:
    """``start``: a duration (offset into a trace) or an ISO 8601 instant (Prometheus history)."""
    if isinstance(value, datetime | timedelta):
        return value
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"{value!r} is neither a duration (0s, 3d) nor an ISO 8601 time") from exc
    return parse_duration(value)


OffsetOrInstant = Annotated[timedelta | datetime, BeforeValidator(_offset_or_instant)]


# ---------------------------------------------------------------------------------------- workload
class LognormalAudio(StrictModel):
    """Audio lengths (seconds) drawn from a lognormal with this median and 95th percentile."""

    distribution: Literal["lognormal"]
    median: float = Field(gt=0)
    p95: float = Field(gt=0)
    max: float | None = Field(default=None, gt=0, description="Longer draws are cut to this length.")

    @model_validator(mode="after")
    def _ordered(self) -> LognormalAudio:
        if self.p95 <= self.median:
            raise ValueError("p95 must be greater than the median")
        return self

    @property
    def mu(self) -> float:
        """Mean of the underlying normal (log of the median)."""
        return math.log(self.median)

    @property
    def sigma(self) -> float:
        """Standard deviation of the underlying normal, from the median and p95."""
        return (math.log(self.p95) - self.mu) / _Z95


class FixedAudio(StrictModel):
    """Every request carries the same audio length."""

    distribution: Literal["fixed"]
    mean: float = Field(gt=0)


class ExponentialAudio(StrictModel):
    """Audio lengths drawn from an exponential law with this mean."""

    distribution: Literal["exponential"]
    mean: float = Field(gt=0)
    max: float | None = Field(default=None, gt=0, description="Longer draws are cut to this length.")


AudioSeconds = Annotated[LognormalAudio | FixedAudio | ExponentialAudio, Field(discriminator="distribution")]


def _default_audio() -> LognormalAudio:
    return LognormalAudio(distribution="lognormal", median=60, p95=300)


class Workload(StrictModel):
    """How arrivals become concurrent streams: each holds a stream for audio length × real-time factor."""

    audio_seconds: AudioSeconds = Field(default_factory=_default_audio)
    real_time_factor: float = Field(default=1.0, gt=0, description="Processing seconds per audio second.")


# ------------------------------------------------------------------------------------------- demand
class DemandSpec(StrictModel):
    """Where demand comes from and which part of it is replayed, at what scale."""

    format: Format
    path: str | None = Field(default=None, description="Trace file, folder or archive (not prometheus).")
    model: str | None = Field(default=None, description="servegen: the model folder, e.g. m-large.")
    start: OffsetOrInstant = Field(
        default=timedelta(0), description="Offset into the trace, or an ISO time (prometheus)."
    )
    duration: Duration
    peak_nodes: int | None = Field(default=None, ge=1, description="Scale so the peak needs this many nodes.")
    scale: float | None = Field(default=None, gt=0, description="Multiply the demand by this factor.")
    fill_gaps: bool | None = Field(
        default=None,
        description="Replace runs of at least a minute with zero arrivals (archive gaps) by the minutes "
        "before them. Default: on for twitter, off otherwise.",
    )
    kind: Literal["arrivals", "streams"] | None = Field(
        default=None,
        description="csv/prometheus: values are arrivals per second (csv default) or concurrent "
        "streams (prometheus default).",
    )
    url: str | None = Field(default=None, description="prometheus: the server's URL.")
    query: str | None = Field(default=None, description="prometheus: PromQL for the demand.")
    step: Duration = Field(default=timedelta(seconds=15), description="prometheus: range-query step.")
    timeout: Duration = Field(default=timedelta(seconds=30), description="prometheus: per-query timeout.")
    replay_at: datetime | None = Field(
        default=None,
        description="The wall-clock time the window's first second is replayed as (policy schedules "
        "see this clock). Default: the trace's own time where known.",
    )

    @field_validator("replay_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DemandSpec:
        if self.peak_nodes is not None and self.scale is not None:
            raise ValueError("give peak_nodes or scale, not both")
        if self.duration <= timedelta(0):
            raise ValueError("duration must be positive")
        if self.format == "prometheus":
            if not self.url or not self.query:
                raise ValueError("format prometheus needs url and query")
            if not isinstance(self.start, datetime):
                raise ValueError(
                    "format prometheus needs start as an ISO 8601 time, e.g. 2025-09-01T00:00:00Z"
                )
            if self.step <= timedelta(0):
                raise ValueError("step must be positive")
        else:
            if not self.path:
                raise ValueError(f"format {self.format} needs path")
            if isinstance(self.start, datetime):
                raise ValueError("start is an offset into the trace here (e.g. 0s, 2d), not a time")
        if self.format == "servegen" and not self.model:
            raise ValueError("format servegen needs model (e.g. m-large)")
        if self.kind is not None and self.format not in ("csv", "prometheus"):
            raise ValueError("kind applies to csv and prometheus only")
        return self

    @property
    def value_kind(self) -> Literal["arrivals", "streams"]:
        """What the values measure: arrivals per second, or concurrent streams."""
        if self.kind is not None:
            return self.kind
        return "streams" if self.format == "prometheus" else "arrivals"

    @property
    def offset_s(self) -> int:
        """The window's offset into a trace file, in whole seconds."""
        assert isinstance(self.start, timedelta)
        return int(self.start.total_seconds())

    @property
    def duration_s(self) -> int:
        """The window's length in whole seconds (at least one)."""
        return max(1, int(self.duration.total_seconds()))


# -------------------------------------------------------------------------------------------- fleet
class FleetOverrides(StrictModel):
    """The simulated fleet; each key left out comes from the policy (or the local provider's defaults)."""

    streams_per_node: int | None = Field(default=None, gt=0)
    boot_seconds: float | None = Field(default=None, ge=0, description="Launch to serving. Default 180.")
    price_per_hour: float | None = Field(default=None, ge=0)
    drain_seconds: float | None = Field(
        default=None,
        ge=0,
        description="Longest drain before termination. Default: the policy's drain.timeout.",
    )
    gpu_memory_mib: int | None = Field(default=None, gt=0)
    model_memory_mib: int | None = Field(default=None, gt=0)
    stream_memory_mib: int | None = Field(default=None, gt=0)
    warm_start_seconds: float | None = Field(
        default=None, ge=0,
        description="Start of a stopped warm-pool instance to serving (model on its disk). Default 30.",
    )
    stopped_price_per_hour: float | None = Field(
        default=None, ge=0,
        description="What a stopped warm instance bills per hour (its disk only). Default 0.02.",
    )
    start_failure_rate: float = Field(
        default=0.0, ge=0, le=1,
        description="Share of warm starts that fail (no stock after an economical-mode stop); each falls "
        "back to a cold launch in the same tick.",
    )


class PoolOverrides(StrictModel):
    """Replace the policy's ``min_nodes``/``max_nodes`` (for every policy of a comparison)."""

    min_nodes: int | None = Field(default=None, ge=0)
    max_nodes: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> PoolOverrides:
        if self.min_nodes is not None and self.max_nodes is not None and self.min_nodes > self.max_nodes:
            raise ValueError("min_nodes is greater than max_nodes")
        return self


class Baselines(StrictModel):
    """Which policy file stands for the HPA-like baseline (default: the repository's hpa-like.yaml)."""

    hpa_like: str | None = None


class ScenarioSpec(StrictModel):
    """The scenario file as written."""

    name: str | None = None
    description: str | None = None
    policy: str = Field(min_length=1)
    demand: DemandSpec
    workload: Workload = Field(default_factory=Workload)
    fleet: FleetOverrides = Field(default_factory=FleetOverrides)
    pool: PoolOverrides = Field(default_factory=PoolOverrides)
    tick_seconds: Duration | None = Field(default=None, description="Default: the policy's scaling.tick.")
    seed: int = Field(default=0, ge=0)
    baselines: Baselines = Field(default_factory=Baselines)

    @field_validator("tick_seconds")
    @classmethod
    def _positive_tick(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value.total_seconds() < 1:
            raise ValueError("tick_seconds must be at least 1 second")
        return value


# ------------------------------------------------------------------------------------------ loading
#: Where the repository keeps its example policies (a source checkout or an editable install).
REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"


@dataclass(frozen=True)
class Scenario:
    """A validated scenario with its paths resolved and its policy loaded."""

    spec: ScenarioSpec
    source: Path
    policy_path: Path
    policy: PoolPolicy

    @property
    def name(self) -> str:
        """The scenario's name (its file name when the file gives none)."""
        return self.spec.name or self.source.stem

    def resolve(self, path: str) -> Path:
        """``path`` as written in the scenario, relative to the scenario's folder unless absolute."""
        expanded = Path(os.path.expanduser(path))
        return expanded if expanded.is_absolute() else (self.source.parent / expanded).resolve()

    def demand_path(self) -> Path:
        """The trace file, folder or archive of a file-based demand source."""
        assert self.spec.demand.path is not None
        return self.resolve(self.spec.demand.path)

    def hpa_policy_path(self) -> Path:
        """The HPA-like baseline's policy file."""
        if self.spec.baselines.hpa_like:
            return self.resolve(self.spec.baselines.hpa_like)
        return REPO_POLICIES / "hpa-like.yaml"


def _loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("lognormal", "fixed", "exponential") and text.endswith("audio_seconds"):
            continue  # pydantic's union tag: the file has no such level
        else:
            text += f".{part}" if text else str(part)
    return text or "<document>"


def parse_scenario(data: Any, source: str) -> ScenarioSpec:
    """Validate a loaded YAML document; ``ScenarioError`` lists every problem as ``source: key: message``."""
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise ScenarioError(f"{source}: the scenario is {what}; it needs policy, demand and friends")
    try:
        return ScenarioSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            elif error["type"] == "missing":
                message = "required key is missing"
            problems.append(f"{source}: {_loc(tuple(error['loc']))}: {message}")
        raise ScenarioError("\n".join(problems)) from exc


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read a scenario file, validate it and load the policy it names.

    Raises ``ScenarioError`` for a missing or unreadable file, invalid YAML, unknown or invalid keys,
    and a policy that is missing or invalid (the policy's own problems are quoted).
    """
    source = Path(path)
    try:
        with source.open("rb") as handle:
            raw = handle.read(_MAX_BYTES + 1)
    except FileNotFoundError as exc:
        raise ScenarioError(f"{source}: no such scenario file") from exc
    except IsADirectoryError as exc:
        raise ScenarioError(f"{source}: is a directory, not a scenario file") from exc
    except OSError as exc:
        raise ScenarioError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > _MAX_BYTES:
        raise ScenarioError(f"{source}: larger than 1 MiB; not a scenario file")
    try:
        data = YAML(typ="safe", pure=True).load(raw.decode("utf-8"))
    except (YAMLError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScenarioError(f"{source}: invalid YAML: {first}") from exc
    spec = parse_scenario(data, str(source))
    scenario_dir = source.resolve().parent
    expanded = Path(os.path.expanduser(spec.policy))
    policy_path = expanded if expanded.is_absolute() else (scenario_dir / expanded).resolve()
    policy = load_policy_for_scenario(policy_path, f"{source}: policy")
    return Scenario(spec=spec, source=source.resolve(), policy_path=policy_path, policy=policy)


def load_policy_for_scenario(path: Path, what: str) -> PoolPolicy:
    """Load a policy a scenario names; a missing or invalid one is a ``ScenarioError`` saying which."""
    try:
        return load_policy(path)
    except PolicyError as exc:
        if not path.exists():
            raise ScenarioError(f"{what}: {path} does not exist") from exc
        details = "\n  ".join(exc.problems) if exc.problems else str(exc)
        raise ScenarioError(f"{what}: {path} is not a valid policy:\n  {details}") from exc
