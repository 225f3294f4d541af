"""The policy file: one pool per YAML file, validated into these pydantic models once at load.

Durations are written ``90s``, ``5m``, ``2h``, ``1d`` or a number of seconds and become
``timedelta``. Every model forbids unknown keys, so a typo is an error, not a silent default.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Turn ``"90s"``, ``"5m"``, ``"2h"``, ``"1d"`` or a number of seconds into a ``timedelta``."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '90s', '5m', '2h'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration; write e.g. '90s', '5m', '2h', '1d'")
        return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    raise ValueError("a duration is a number of seconds or a string like '90s', '5m', '2h'")


def _format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(_format_duration, return_type=str, when_used="json"),
    Field(json_schema_extra={"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)?$"}),
]


class StrictModel(BaseModel):
    """Base of every policy model: unknown keys are errors, values are immutable after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------- provider
class LocalProviderConfig(StrictModel):
    """Instances are processes on 127.0.0.1 running the simulated ASR node (``autoscaler.node``)."""

    kind: Literal["local"] = "local"
    state_dir: str = Field(".autoscaler/local", description="Where the local fleet keeps its instance records.")
    host: str = "127.0.0.1"
    load_delay: Duration = Field(timedelta(seconds=5), description="How long a node's model takes to load.")
    gpu_memory_mib: int = Field(24576, gt=0, description="Simulated GPU memory per node.")
    model_memory_mib: int = Field(3400, gt=0, description="GPU memory the model weights take.")
    stream_memory_mib: int = Field(1900, gt=0, description="GPU memory each active stream takes.")
    real_time_factor: float = Field(1.0, gt=0, description="Processing seconds per second of audio.")


class AwsProviderConfig(StrictModel):
    """EC2 through boto3. Credentials come only from boto3's standard chain, never from this file."""

    kind: Literal["aws"]
    region: str
    endpoint_url: str | None = Field(None, description="Override (tests point it at moto); else AWS_ENDPOINT_URL.")
    subnets: list[str] = Field(min_length=1, description="Subnet ids, across zones, in order of preference.")
    security_groups: list[str] = Field(default_factory=list)
    instance_profile: str | None = Field(None, description="IAM instance profile name or ARN.")
    key_name: str | None = None
    image_owner: str = Field("self", description="Owner filter when looking the AMI up by model-version tag.")
    max_attempts: int = Field(5, ge=1, le=20, description="botocore standard-mode retry attempts per call.")


class AlibabaProviderConfig(StrictModel):
    """ECS through alibabacloud-ecs20140526. Credentials come only from the SDK's default chain."""

    kind: Literal["alibaba"]
    region: str
    endpoint: str | None = Field(None, description="Override (tests point it at a local endpoint).")
    protocol: Literal["https", "http"] = "https"
    vswitches: list[str] = Field(min_length=1, description="VSwitch ids, across zones, in order of preference.")
    security_group: str
    ram_role: str | None = None
    key_pair: str | None = None
    max_attempts: int = Field(5, ge=1, le=20)


ProviderConfig = Annotated[
    LocalProviderConfig | AwsProviderConfig | AlibabaProviderConfig, Field(discriminator="kind")
]


# ----------------------------------------------------------------------------------------------- launch
class InstanceTypeSpec(StrictModel):
    """One instance type the pool may launch, in order of preference."""

    name: str = Field(min_length=1)
    streams: int = Field(10, gt=0, description="Concurrent streams one node of this type serves.")
    price_per_hour: float = Field(ge=0, description="On-demand price, for cost figures.")
    weight: int = Field(1, ge=1, le=100, description="Balancer weight (the reference deployment's weight=3).")


class ImageSpec(StrictModel):
    """The model-baked image: an explicit id, or the newest image tagged with the model version."""

    id: str | None = None
    lookup_by_model_version: bool = False

    @model_validator(mode="after")
    def _one_way(self) -> ImageSpec:
        if not self.id and not self.lookup_by_model_version:
            raise ValueError("give image.id, or set image.lookup_by_model_version: true")
        return self


class LaunchConfig(StrictModel):
    """What every node of the pool is launched from."""

    model_version: str = Field(min_length=1, description="Every node must serve this version.")
    image: ImageSpec = Field(default_factory=lambda: ImageSpec(id="local"))
    instance_types: list[InstanceTypeSpec] = Field(min_length=1)
    port: int = Field(7860, gt=0, lt=65536)
    user_data: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------- balancer
class NginxBalancerConfig(StrictModel):
    """An nginx upstream rewritten as a file included by the operator's nginx.conf."""

    kind: Literal["nginx"] = "nginx"
    upstream: str = Field("fun_asr_backend", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    upstream_file: str = Field(".autoscaler/nginx/upstream.conf", description="The file nginx includes.")
    nginx_conf: str | None = Field(None, description="Main config for `nginx -t -c`; default: nginx's own.")
    nginx_prefix: str | None = Field(None, description="`-p` prefix when nginx runs from a private folder.")
    nginx_binary: str = "nginx"
    zone_size: str = Field("64k", pattern=r"^\d+[kKmM]?$")
    max_fails: int = Field(2, ge=0)
    fail_timeout: Duration = timedelta(seconds=30)
    backup_nodes: int = Field(0, ge=0, description="How many nodes stand as `backup`.")


class AlbBalancerConfig(StrictModel):
    """An AWS ALB target group; deregistration delay is the drain."""

    kind: Literal["alb"]
    target_group_arn: str
    region: str
    endpoint_url: str | None = None


class NoBalancerConfig(StrictModel):
    """No balancer (the HPA-like baseline, or clients that discover nodes themselves)."""

    kind: Literal["none"]


BalancerConfig = Annotated[
    NginxBalancerConfig | AlbBalancerConfig | NoBalancerConfig, Field(discriminator="kind")
]


# ---------------------------------------------------------------------------------------------- metrics
class PrometheusConfig(StrictModel):
    """Where signals come from."""

    url: str = "http://127.0.0.1:9090"
    timeout: Duration = timedelta(seconds=3)
    staleness: Duration = Field(timedelta(seconds=60), description="A sample older than this is no data.")
    file_sd_path: str | None = Field(None, description="Where to write the file_sd target list of nodes.")


class HealthConfig(StrictModel):
    """How a node proves it can serve before it joins the balancer."""

    path: str = "/healthz"
    timeout: Duration = timedelta(seconds=2)
    boot_timeout: Duration = Field(timedelta(minutes=10), description="Not healthy by then: replaced.")


class DrainConfig(StrictModel):
    """How long in-flight streams may take to finish before the node is terminated anyway."""

    timeout: Duration = timedelta(seconds=300)


# ---------------------------------------------------------------------------------------------- scaling
Signal = Literal[
    "streams_per_node", "active_streams", "gpu_memory_utilization", "p95_latency_seconds", "queued_streams"
]


class _CheckBase(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    query: str = Field(min_length=1, description="PromQL returning one number.")
    signal: Signal | None = Field(
        None, description="What the query measures, so the dry-run simulator can stand in for Prometheus."
    )

    @model_validator(mode="after")
    def _query_not_blank(self) -> _CheckBase:
        if not self.query.strip():
            raise ValueError("query is empty")
        return self


class TargetTrackingCheck(_CheckBase):
    """desired = ceil(ready × value / target), outside a tolerance band (Kubernetes HPA's rule)."""

    type: Literal["target_tracking"]
    target: float = Field(gt=0)
    tolerance: float = Field(0.1, ge=0, lt=1)
    per: Literal["node", "pool"] = Field(
        "node", description="node: value is per ready node (HPA); pool: value is a pool total."
    )


class Step(StrictModel):
    """One band of a step rule: when the value is above/below the bound, change by nodes or percent."""

    above: float | None = None
    below: float | None = None
    change: int | None = Field(None, description="+N or -N nodes.")
    change_percent: float | None = Field(None, description="+P or -P percent of current nodes.")

    @model_validator(mode="after")
    def _well_formed(self) -> Step:
        if (self.above is None) == (self.below is None):
            raise ValueError("a step needs exactly one of 'above' or 'below'")
        if (self.change is None) == (self.change_percent is None):
            raise ValueError("a step needs exactly one of 'change' or 'change_percent'")
        if (self.change or 0) == 0 and (self.change_percent or 0) == 0:
            raise ValueError("a step's change cannot be zero")
        return self


class StepCheck(_CheckBase):
    """Bands of a metric mapped to +N/-N nodes or a percentage, after N consecutive ticks."""

    type: Literal["step"]
    steps: list[Step] = Field(min_length=1)
    for_ticks: int = Field(1, ge=1, description="Consecutive ticks in a band before it votes.")


Check = Annotated[TargetTrackingCheck | StepCheck, Field(discriminator="type")]


class DateRange(StrictModel):
    """Inclusive calendar dates (in the schedule's time zone)."""

    start: date
    end: date

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.end < self.start:
            raise ValueError("end is before start")
        return self


class ScheduledCapacity(StrictModel):
    """A floor and/or ceiling over a recurring window, optionally only within date ranges."""

    name: str = Field(min_length=1)
    timezone: str = Field("UTC", description="IANA time zone, e.g. Asia/Shanghai.")
    cron: str | None = Field(None, description="When each window opens (5-field cron).")
    duration: Duration | None = Field(None, description="How long each cron window lasts.")
    dates: list[DateRange] = Field(default_factory=list, description="Only within these dates.")
    min_nodes: int | None = Field(None, ge=0)
    max_nodes: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _complete(self) -> ScheduledCapacity:
        if self.min_nodes is None and self.max_nodes is None:
            raise ValueError("a schedule needs min_nodes or max_nodes")
        if (self.cron is None) != (self.duration is None):
            raise ValueError("cron and duration go together")
        if self.cron is None and not self.dates:
            raise ValueError("a schedule needs a cron window, dates, or both")
        if self.min_nodes is not None and self.max_nodes is not None and self.min_nodes > self.max_nodes:
            raise ValueError("min_nodes is greater than max_nodes")
        return self


class RatePolicy(StrictModel):
    """At most ``nodes`` or ``percent`` of current nodes changed per ``period``."""

    nodes: int | None = Field(None, ge=1)
    percent: float | None = Field(None, gt=0)
    period: Duration

    @model_validator(mode="after")
    def _one(self) -> RatePolicy:
        if (self.nodes is None) == (self.percent is None):
            raise ValueError("a rate policy needs exactly one of 'nodes' or 'percent'")
        return self


class DirectionBehavior(StrictModel):
    """HPA-style behaviour for one direction."""

    stabilization: Duration = Field(
        timedelta(0), description="Scale-in uses the highest recommendation over this window (HPA)."
    )
    policies: list[RatePolicy] = Field(default_factory=list)
    select: Literal["max", "min"] = Field("max", description="Which rate policy wins when several apply.")
    cooldown: Duration = Field(timedelta(0), description="No move in this direction this soon after one.")


def _scale_in_default() -> DirectionBehavior:
    return DirectionBehavior(stabilization=timedelta(seconds=300))


class Behavior(StrictModel):
    """Anti-flap and safety limits."""

    scale_out: DirectionBehavior = Field(default_factory=DirectionBehavior)
    scale_in: DirectionBehavior = Field(default_factory=_scale_in_default)
    max_launching: int | None = Field(None, ge=1, description="Most nodes booting at once.")
    min_node_lifetime: Duration = Field(timedelta(0), description="Billing granularity: keep nodes this long.")


class MissingData(StrictModel):
    """What to do after ``after_ticks`` consecutive ticks in which some check had no data."""

    after_ticks: int = Field(3, ge=1)
    action: Literal["hold", "keep_at_least", "fixed"] = "hold"
    nodes: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _nodes_when_needed(self) -> MissingData:
        if self.action != "hold" and self.nodes is None:
            raise ValueError(f"action {self.action!r} needs 'nodes'")
        return self


class Scaling(StrictModel):
    """The rules the engine evaluates each tick."""

    min_nodes: int = Field(ge=0)
    max_nodes: int = Field(ge=1)
    tick: Duration = timedelta(seconds=15)
    checks: list[Check] = Field(default_factory=list)
    schedules: list[ScheduledCapacity] = Field(default_factory=list)
    behavior: Behavior = Field(default_factory=Behavior)
    on_missing_data: MissingData = Field(default_factory=MissingData)

    @model_validator(mode="after")
    def _bounds(self) -> Scaling:
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) is greater than max_nodes ({self.max_nodes})")
        names = [c.name for c in self.checks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"check names must be unique; repeated: {', '.join(duplicates)}")
        return self


# ------------------------------------------------------------------------------------------------- pool
class PoolPolicy(StrictModel):
    """One pool: where its nodes come from, how traffic reaches them, and when to scale."""

    pool: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$", description="Pool name, used in tags.")
    description: str | None = None
    provider: ProviderConfig = Field(default_factory=LocalProviderConfig)
    launch: LaunchConfig
    balancer: BalancerConfig = Field(default_factory=NginxBalancerConfig)
    metrics: PrometheusConfig = Field(default_factory=PrometheusConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    drain: DrainConfig = Field(default_factory=DrainConfig)
    scaling: Scaling

    def instance_type(self, name: str) -> InstanceTypeSpec | None:
        """The launch spec entry of ``name``, or None for a type the policy no longer lists."""
        return next((t for t in self.launch.instance_types if t.name == name), None)

    def streams_of(self, instance_type: str) -> int:
        """Concurrent streams a node of ``instance_type`` serves (the first type's when unknown)."""
        spec = self.instance_type(instance_type)
        return (spec or self.launch.instance_types[0]).streams
