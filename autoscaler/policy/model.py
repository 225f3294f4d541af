"""The policy file: one pool per YAML file, validated into these pydantic models once at load.

Durations are written ``90s``, ``5m``, ``2h``, ``1d`` or a number of seconds and become
``timedelta``. Every model forbids unknown keys, so a typo is an error, not a silent default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from autoscaler.policy import safety

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
        return _seconds_to_timedelta(float(value))
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match and value.strip().startswith("-"):
            raise ValueError("a duration cannot be negative")
        if not match:
            raise ValueError(f"{value!r} is not a duration; write e.g. '90s', '5m', '2h', '1d'")
        return _seconds_to_timedelta(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    raise ValueError("a duration is a number of seconds or a string like '90s', '5m', '2h'")


def _seconds_to_timedelta(seconds: float) -> timedelta:
    # timedelta raises OverflowError (which pydantic does not turn into a validation error) for
    # infinity or beyond ~2.7 million years; report both as an ordinary invalid value.
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number of seconds")
    try:
        return timedelta(seconds=seconds)
    except OverflowError as exc:
        raise ValueError("the duration is too long") from exc


def _format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(_format_duration, return_type=str, when_used="json"),
    # What a policy author may write: seconds as a number, or a number with a unit.
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"},
            ],
            "description": "A duration: seconds, or a number with a unit (ms, s, m, h, d), e.g. 90s, 5m.",
        }
    ),
]


class StrictModel(BaseModel):
    """Base of every policy model: unknown keys are errors, values are immutable after load."""

    # NaN or infinity in a policy number (``.nan`` in YAML) is always a mistake: a band ``above: .nan``
    # would silently never fire.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------------- provider
class LocalProviderConfig(StrictModel):
    """Instances are processes on 127.0.0.1 running a node (``autoscaler.node``): the node agent in
    front of the simulated ASR server, or of the real one ``server_command`` names."""

    kind: Literal["local"] = "local"
    state_dir: str = Field(
        default=".autoscaler/local", description="Where the local fleet keeps its instance records."
    )
    host: str = "127.0.0.1"
    load_delay: Duration = Field(
        default=timedelta(seconds=5), description="How long a node's model takes to load."
    )
    cached_load_fraction: float = Field(
        default=0.1, ge=0, le=1,
        description="Share of load_delay a node takes when started after a stop (model on its own disk).",
    )
    gpu_memory_mib: int = Field(default=24576, gt=0, description="Simulated GPU memory per node.")
    model_memory_mib: int = Field(default=3400, gt=0, description="GPU memory the model weights take.")
    stream_memory_mib: int = Field(default=1900, gt=0, description="GPU memory each active stream takes.")
    real_time_factor: float = Field(default=1.0, gt=0, description="Processing seconds per second of audio.")
    server_command: list[str] | None = Field(
        default=None, min_length=1,
        description="A real ASR server each node runs behind its node agent instead of the simulated "
        "one: the command's words, with '{port}' (its internal port) and '{streams}' filled in.",
    )
    server_probe_path: str = Field(
        default="/healthz", pattern=r"^/",
        description="Readiness path the node agent asks that server (200 = model loaded).",
    )

    @field_validator("host")
    @classmethod
    def _host_is_an_address(cls, value: str) -> str:
        return safety.check_bind_host(value)

    @field_validator("state_dir")
    @classmethod
    def _state_dir_plain(cls, value: str) -> str:
        return safety.check_no_control(value)


class AwsProviderConfig(StrictModel):
    """EC2 through boto3. Credentials come only from boto3's standard chain, never from this file."""

    kind: Literal["aws"]
    region: str
    endpoint_url: str | None = Field(
        default=None, description="Override (tests point it at moto); else AWS_ENDPOINT_URL."
    )
    subnets: list[str] = Field(min_length=1, description="Subnet ids, across zones, in order of preference.")
    security_groups: list[str] = Field(default_factory=list)
    instance_profile: str | None = Field(default=None, description="IAM instance profile name or ARN.")
    key_name: str | None = None
    image_owner: str = Field(
        default="self", description="Owner filter when looking the AMI up by model-version tag."
    )
    max_attempts: int = Field(
        default=5, ge=1, le=20, description="botocore standard-mode retry attempts per call."
    )


class AlibabaProviderConfig(StrictModel):
    """ECS through alibabacloud-ecs20140526. Credentials come only from the SDK's default chain."""

    kind: Literal["alibaba"]
    region: str
    endpoint: str | None = Field(default=None, description="Override (tests point it at a local endpoint).")
    protocol: Literal["https", "http"] = "https"
    vswitches: list[str] = Field(
        min_length=1, description="VSwitch ids, across zones, in order of preference."
    )
    security_group: str
    ram_role: str | None = None
    key_pair: str | None = None
    max_attempts: int = Field(default=5, ge=1, le=20)


ProviderConfig = Annotated[
    LocalProviderConfig | AwsProviderConfig | AlibabaProviderConfig, Field(discriminator="kind")
]


# ----------------------------------------------------------------------------------------------- launch
class InstanceTypeSpec(StrictModel):
    """One instance type the pool may launch, in order of preference."""

    name: str = Field(min_length=1)
    streams: int = Field(default=10, gt=0, description="Concurrent streams one node of this type serves.")
    price_per_hour: float = Field(ge=0, description="On-demand price, for cost figures.")
    weight: int = Field(
        default=1, ge=1, le=100, description="Balancer weight (the reference deployment's weight=3)."
    )


class ImageSpec(StrictModel):
    """The model-baked image: an explicit id, or the newest image tagged with the model version."""

    id: str | None = None
    lookup_by_model_version: bool = False

    @model_validator(mode="after")
    def _one_way(self) -> ImageSpec:
        if not self.id and not self.lookup_by_model_version:
            raise ValueError("give image.id, or set image.lookup_by_model_version: true")
        return self


class RolloutConfig(StrictModel):
    """How nodes of an outdated model version or image are replaced: a disruption budget.

    New nodes are launched first (at most ``budget`` above the desired count) and an outdated node
    is drained only when a replacement is serving, with at most ``budget`` nodes draining at once.
    """

    max_draining: int = Field(default=1, ge=1, description="At most this many nodes draining at once.")
    max_draining_percent: float | None = Field(
        default=None, gt=0, le=100, description="Or at most this percent of the pool (at least one node)."
    )

    def budget(self, nodes: int) -> int:
        """Nodes that may be draining (and surging) at once in a pool of ``nodes``."""
        if self.max_draining_percent is not None:
            return max(1, int(nodes * self.max_draining_percent / 100))
        return self.max_draining


class LaunchConfig(StrictModel):
    """What every node of the pool is launched from."""

    model_version: str = Field(min_length=1, description="Every node must serve this version.")
    image: ImageSpec = Field(default_factory=lambda: ImageSpec(id="local"))
    instance_types: list[InstanceTypeSpec] = Field(min_length=1)
    currency: str = Field(
        default="USD",
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code of every price_per_hour (and so of every cost the dry run reports).",
    )
    port: int = Field(default=7860, gt=0, lt=65536)
    user_data: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig,
                                   description="Replacing nodes when the model version or image changes.")


# --------------------------------------------------------------------------------------------- balancer
class NginxBalancerConfig(StrictModel):
    """An nginx upstream rewritten as a file included by the operator's nginx.conf."""

    kind: Literal["nginx"] = "nginx"
    upstream: str = Field(default="fun_asr_backend", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    upstream_file: str = Field(
        default=".autoscaler/nginx/upstream.conf", description="The file nginx includes."
    )
    nginx_conf: str | None = Field(
        default=None, description="Main config for `nginx -t -c`; default: nginx's own."
    )
    nginx_prefix: str | None = Field(
        default=None, description="`-p` prefix when nginx runs from a private folder."
    )
    nginx_binary: str = "nginx"
    zone_size: str = Field(default="64k", pattern=r"^\d+[kKmM]?$")
    max_fails: int = Field(default=2, ge=0)
    fail_timeout: Duration = timedelta(seconds=30)
    backup_nodes: int = Field(default=0, ge=0, description="How many nodes stand as `backup`.")

    @field_validator("nginx_binary")
    @classmethod
    def _really_nginx(cls, value: str) -> str:
        return safety.check_nginx_binary(value)

    @field_validator("upstream_file")
    @classmethod
    def _writable_managed_file(cls, value: str) -> str:
        return safety.check_written_file(value, managed_marker=safety.MANAGED_MARKER)

    @field_validator("nginx_conf", "nginx_prefix")
    @classmethod
    def _plain_path(cls, value: str | None) -> str | None:
        return None if value is None else safety.check_no_control(value)


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
    staleness: Duration = Field(
        default=timedelta(seconds=60), description="A sample older than this is no data."
    )
    file_sd_path: str | None = Field(
        default=None, description="Where to write the file_sd target list of nodes."
    )

    @field_validator("file_sd_path")
    @classmethod
    def _writable_target_file(cls, value: str | None) -> str | None:
        return None if value is None else safety.check_written_file(value, json_list=True)


class HealthConfig(StrictModel):
    """How a node proves it can serve before it joins the balancer."""

    path: str = "/healthz"
    timeout: Duration = timedelta(seconds=2)
    boot_timeout: Duration = Field(
        default=timedelta(minutes=10), description="Not healthy by then: replaced."
    )
    unhealthy_after: int = Field(
        default=2, ge=1, le=100,
        description="Failed health checks in a row before a serving node leaves the balancer (a grace "
        "count, as nginx's max_fails): one lost probe does not throw a flapping node out.",
    )


class DrainConfig(StrictModel):
    """How long in-flight streams may take to finish before the node is terminated anyway."""

    timeout: Duration = timedelta(seconds=300)


# ---------------------------------------------------------------------------------------------- scaling
Signal = Literal[
    "streams_per_node", "active_streams", "gpu_memory_utilization", "p95_latency_seconds", "queued_streams",
    "concurrent_streams",
]


class _CheckBase(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    query: str = Field(min_length=1, description="PromQL returning one number.")
    signal: Signal | None = Field(
        default=None,
        description="What the query measures, so the dry-run simulator can stand in for Prometheus.",
    )
    valid_min: float | None = Field(
        default=None,
        description="A reading below this is no data (implausible), not a signal; default 0.",
    )
    valid_max: float | None = Field(
        default=None,
        description="A reading above this is no data (implausible); default 100 for "
        "gpu_memory_utilization, 86400 for p95_latency_seconds, else 1e6.",
    )

    # A field validator (not a model validator) so a blank query is reported together with the
    # check's other errors: pydantic skips model validators once any field has failed.
    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank (only spaces)")
        return value

    @field_validator("valid_max")
    @classmethod
    def _range_ordered(cls, value: float | None, info: ValidationInfo) -> float | None:
        low = info.data.get("valid_min")
        if value is not None and low is not None and value <= low:
            raise ValueError(f"must be greater than valid_min ({low:g})")
        return value


class TargetTrackingCheck(_CheckBase):
    """desired = ceil(ready × value / target), outside a tolerance band (Kubernetes HPA's rule)."""

    type: Literal["target_tracking"]
    target: float = Field(gt=0)
    tolerance: float = Field(default=0.1, ge=0, lt=1)
    per: Literal["node", "pool"] = Field(
        default="node", description="node: value is per ready node (HPA); pool: value is a pool total."
    )


class Step(StrictModel):
    """One band of a step rule: when the value is above/below the bound, change by nodes or percent."""

    above: float | None = None
    below: float | None = None
    change: int | None = Field(default=None, description="+N or -N nodes.")
    change_percent: float | None = Field(default=None, description="+P or -P percent of current nodes.")

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
    for_ticks: int = Field(default=1, ge=1, description="Consecutive ticks in a band before it votes.")


class ServiceLevel(StrictModel):
    """What a new stream is promised, in the operator's terms: one of the two forms.

    ``wait_probability: 0.05``: a new stream finds every slot busy (and waits) at most 5 % of the time.
    ``wait: 30s`` with ``quantile: 0.95``: 95 % of new streams wait at most 30 seconds.
    """

    wait_probability: float | None = Field(default=None, gt=0, lt=1)
    wait: Duration | None = Field(default=None, description="Wait bound for the `quantile` of streams.")
    quantile: float = Field(default=0.95, gt=0, lt=1, description="Share of streams the `wait` bound covers.")

    @model_validator(mode="after")
    def _one_form(self) -> ServiceLevel:
        if (self.wait_probability is None) == (self.wait is None):
            raise ValueError("a service level needs exactly one of 'wait_probability' or 'wait'")
        return self


class QueueingCheck(_CheckBase):
    """Stream-aware sizing: enough stream slots for the stated service level (Erlang C, see docs).

    The query returns the pool's concurrent streams, queued included (the offered load in Erlangs);
    the check recommends the fewest nodes whose slots (each node's instance-type ``streams``) meet
    ``service_level``.
    """

    type: Literal["queueing"]
    service_level: ServiceLevel
    stream_seconds: Duration = Field(
        default=timedelta(seconds=60),
        description="Mean wall time of one stream; a `wait` level needs it (the wait tail scales with it).",
    )

    @field_validator("stream_seconds")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than zero")
        return value


Check = Annotated[TargetTrackingCheck | StepCheck | QueueingCheck, Field(discriminator="type")]


class LookAhead(StrictModel):
    """Size for the demand expected when a node launched now would serve (boot-aware look-ahead).

    The trend of ``check``'s value over ``window`` (Theil-Sen: the median of pairwise slopes, so one
    spiking tick does not move it) is projected ``horizon`` ahead; when the projection needs more
    nodes than the checks, the count rises by at most ``max_nodes_per_tick``. It never lowers a count.
    """

    check: str = Field(min_length=1, description="A queueing check, or a target-tracking check per pool.")
    horizon: Duration | None = Field(
        default=None, description="How far ahead; default scaling.boot_lead, else health.boot_timeout."
    )
    window: Duration = Field(default=timedelta(minutes=5), description="Recent values the trend is fit on.")
    max_nodes_per_tick: int = Field(default=2, ge=1, description="Most nodes the look-ahead adds per tick.")


class ForecastConfig(StrictModel):
    """A predictive floor from the pool's own demand history (time of day and day of week).

    ``forecast_only`` records and shows the forecast (explain, metrics, reports) without acting on it,
    so operators can trust it first (AWS predictive scaling's ForecastOnly); ``forecast_and_scale``
    raises the count to the forecast's need ``lead`` ahead. A forecast never scales in by itself.
    """

    mode: Literal["forecast_only", "forecast_and_scale"] = "forecast_only"
    check: str = Field(min_length=1, description="The check whose demand is learned and sizes the floor.")
    query: str | None = Field(
        default=None, description="PromQL of the demand history; default: the check's own query."
    )
    history: Duration = Field(default=timedelta(days=14), description="At most 14 days of history are read.")
    min_history: Duration = Field(default=timedelta(days=1), description="Less history than this: no action.")
    step: Duration = Field(default=timedelta(minutes=5), description="Resolution of history and forecast.")
    aggregate: Literal["max", "mean"] = Field(
        default="max", description="What a step of history keeps: its peak, or its mean (offered load)."
    )
    refresh: Duration = Field(default=timedelta(minutes=30), description="How often history is re-read.")
    horizon: Duration = Field(default=timedelta(hours=6), description="How far ahead it forecasts.")
    lead: Duration | None = Field(
        default=None, description="How early the floor applies; default scaling.boot_lead, else boot_timeout."
    )

    @field_validator("history")
    @classmethod
    def _at_most_two_weeks(cls, value: timedelta) -> timedelta:
        if value > timedelta(days=14):
            raise ValueError("at most 14d of history is read")
        if value < timedelta(days=1):
            raise ValueError("at least 1d: the forecast learns the shape of a day")
        return value

    @field_validator("step")
    @classmethod
    def _step_divides_a_day(cls, value: timedelta) -> timedelta:
        seconds = value.total_seconds()
        if seconds < 60 or 86400 % seconds:
            raise ValueError("a step of at least 60s that divides a day evenly (e.g. 1m, 5m, 15m, 1h)")
        return value


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
    timezone: str = Field(default="UTC", description="IANA time zone, e.g. Asia/Shanghai.")
    cron: str | None = Field(default=None, description="When each window opens (5-field cron).")
    duration: Duration | None = Field(default=None, description="How long each cron window lasts.")
    dates: list[DateRange] = Field(default_factory=list, description="Only within these dates.")
    min_nodes: int | None = Field(default=None, ge=0)
    max_nodes: int | None = Field(default=None, ge=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        # zoneinfo is the IANA database itself (system or the tzdata package): no hand-kept list.
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}; use an IANA name like 'Asia/Shanghai'") from exc
        return value

    @field_validator("cron")
    @classmethod
    def _fires(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a 5-field cron expression (minute hour day month weekday)")
        # A syntactically valid expression can still never match a date (``0 0 31 2 *``); croniter
        # gives up after searching decades, which is the check we want.
        try:
            croniter(value, datetime(2000, 1, 1)).get_next(datetime)
        except CroniterBadDateError as exc:
            raise ValueError(f"cron {value!r} never fires") from exc
        return value

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

    nodes: int | None = Field(default=None, ge=1)
    percent: float | None = Field(default=None, gt=0)
    period: Duration

    @model_validator(mode="after")
    def _one(self) -> RatePolicy:
        if (self.nodes is None) == (self.percent is None):
            raise ValueError("a rate policy needs exactly one of 'nodes' or 'percent'")
        return self


class DirectionBehavior(StrictModel):
    """HPA-style behaviour for one direction."""

    stabilization: Duration = Field(
        default=timedelta(0), description="Scale-in uses the highest recommendation over this window (HPA)."
    )
    policies: list[RatePolicy] = Field(default_factory=list)
    select: Literal["max", "min"] = Field(
        default="max", description="Which rate policy wins when several apply."
    )
    cooldown: Duration = Field(
        default=timedelta(0), description="No move in this direction this soon after one."
    )
    tolerance: float | None = Field(
        default=None, ge=0, lt=1,
        description="Target tracking's tolerance in this direction (Kubernetes 1.33); default: the check's.",
    )


def _scale_in_default() -> DirectionBehavior:
    return DirectionBehavior(stabilization=timedelta(seconds=300))


class Behavior(StrictModel):
    """Anti-flap and safety limits."""

    scale_out: DirectionBehavior = Field(default_factory=DirectionBehavior)
    scale_in: DirectionBehavior = Field(default_factory=_scale_in_default)
    max_launching: int | None = Field(default=None, ge=1, description="Most nodes booting at once.")
    min_node_lifetime: Duration = Field(
        default=timedelta(0), description="Billing granularity: keep nodes this long."
    )
    max_node_lifetime: Duration | None = Field(
        default=None,
        description="Replace nodes older than this (Karpenter's expireAfter), launching first and "
        "draining within launch.rollout's disruption budget; protected nodes are left alone.",
    )


class MissingData(StrictModel):
    """What to do after ``after_ticks`` consecutive ticks in which some check had no data."""

    after_ticks: int = Field(default=3, ge=1)
    action: Literal["hold", "keep_at_least", "fixed"] = "hold"
    nodes: int | None = Field(default=None, ge=0)

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
    boot_lead: Duration | None = Field(
        default=None,
        description="How far ahead of its window a scheduled floor applies, so nodes are ready when it "
        "opens; default: health.boot_timeout.",
    )
    checks: list[Check] = Field(default_factory=list)
    schedules: list[ScheduledCapacity] = Field(default_factory=list)
    look_ahead: LookAhead | None = None
    forecast: ForecastConfig | None = None
    behavior: Behavior = Field(default_factory=Behavior)
    on_missing_data: MissingData = Field(default_factory=MissingData)

    # Field validators that read earlier fields (``info.data``) rather than one model validator, so
    # each finding is reported at its own key and alongside the other errors of the file.
    @field_validator("max_nodes")
    @classmethod
    def _bounds(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_nodes")
        if low is not None and low > value:
            raise ValueError(f"min_nodes ({low}) is greater than max_nodes ({value})")
        return value

    @field_validator("checks")
    @classmethod
    def _unique_names(cls, value: list[Check]) -> list[Check]:
        names = [c.name for c in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"check names must be unique; repeated: {', '.join(duplicates)}")
        return value

    @field_validator("look_ahead", "forecast")
    @classmethod
    def _sizing_check(
        cls, value: LookAhead | ForecastConfig | None, info: ValidationInfo
    ) -> LookAhead | ForecastConfig | None:
        if value is None or "checks" not in info.data:
            return value  # the checks failed validation themselves; that error is the one to read
        checks = {c.name: c for c in info.data["checks"]}
        check = checks.get(value.check)
        if check is None:
            known = ", ".join(sorted(checks)) or "none"
            raise ValueError(f"check {value.check!r} is not one of the pool's checks ({known})")
        if not (isinstance(check, QueueingCheck)
                or (isinstance(check, TargetTrackingCheck) and check.per == "pool")):
            raise ValueError(f"check {value.check!r} cannot size a pool from a demand value: use a "
                             "queueing check or a target_tracking check with per: pool")
        return value

    @field_validator("schedules")
    @classmethod
    def _floors_reachable(
        cls, value: list[ScheduledCapacity], info: ValidationInfo
    ) -> list[ScheduledCapacity]:
        high = info.data.get("max_nodes")
        for schedule in value:
            if high is not None and schedule.min_nodes is not None and schedule.min_nodes > high:
                raise ValueError(
                    f"schedule {schedule.name!r} has min_nodes {schedule.min_nodes} above max_nodes {high}"
                )
        return value


# -------------------------------------------------------------------------------------------- warm pool
class WarmPoolConfig(StrictModel):
    """Pre-initialised capacity: instances that booted once, loaded the model, and wait stopped (or
    running) to serve in seconds. Shaped after AWS Auto Scaling warm pools."""

    size: int | Literal["auto"] = Field(
        default=0,
        description="Warm instances to keep ready, or 'auto': the size `autoscaler dry-run` recommends "
        "(live, 'auto' keeps max_prepared minus the nodes in service, as AWS does without a size).",
    )
    max_prepared: int | None = Field(
        default=None, ge=1,
        description="Most instances warm plus in service (AWS MaxGroupPreparedCapacity); the warm pool "
        "shrinks as the pool grows toward it.",
    )
    state: Literal["stopped", "running"] = Field(
        default="stopped",
        description="'stopped' bills the disk only and starts in tens of seconds; 'running' serves at once "
        "but bills like a serving node.",
    )
    reuse_on_scale_in: bool = Field(
        default=True,
        description="A drained scale-in victim returns to the warm pool (when below size) instead of being "
        "terminated (AWS InstanceReusePolicy).",
    )
    start_timeout: Duration = Field(
        default=timedelta(seconds=120),
        description="A started warm instance must pass its health check within this; else it is replaced.",
    )

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("size is a number of instances or 'auto'")
        if isinstance(value, int) and value < 0:
            raise ValueError(f"size cannot be negative ({value})")
        if isinstance(value, str) and value != "auto":
            raise ValueError(f"size is a number of instances or 'auto', not {value!r}")
        return value

    @field_validator("max_prepared")
    @classmethod
    def _prepared(cls, value: int | None, info: ValidationInfo) -> int | None:
        size = info.data.get("size")
        if value is not None and isinstance(size, int) and size > value:
            raise ValueError(f"the warm pool size ({size}) is larger than max_prepared ({value})")
        return value

    def target(self, in_service: int, recommended: int | None = None) -> int:
        """How many warm instances to keep when ``in_service`` nodes serve or boot.

        ``auto`` takes ``recommended`` (the dry-run's figure) when given, else what ``max_prepared``
        leaves (0 without it); ``max_prepared`` always caps warm plus in service.
        """
        if self.size == "auto":
            size = recommended if recommended is not None else (
                self.max_prepared - in_service if self.max_prepared is not None else 0)
        else:
            size = self.size
        if self.max_prepared is not None:
            size = min(size, self.max_prepared - in_service)
        return max(size, 0)


#: Instance types by name per ``launch.instance_types`` list, keyed by the list's identity (the list
#: is kept beside its index, so an id is never mistaken for a later list's). A controller asks for
#: every node several times a tick; a model is frozen, so a list never changes once indexed.
_TYPE_INDEX: dict[int, tuple[Sequence[InstanceTypeSpec], dict[str, InstanceTypeSpec]]] = {}
_TYPE_INDEX_MAX = 256


def _types_by_name(types: Sequence[InstanceTypeSpec]) -> dict[str, InstanceTypeSpec]:
    entry = _TYPE_INDEX.get(id(types))
    if entry is None or entry[0] is not types:
        if len(_TYPE_INDEX) >= _TYPE_INDEX_MAX:
            _TYPE_INDEX.clear()  # policies reloaded many times: start over rather than grow
        index: dict[str, InstanceTypeSpec] = {}
        for spec in types:
            index.setdefault(spec.name, spec)  # the first entry of a name wins, as a scan would find
        entry = _TYPE_INDEX[id(types)] = (types, index)
    return entry[1]


# ------------------------------------------------------------------------------------------------ store
class StoreConfig(StrictModel):
    """How long the controller keeps this pool's records in the store."""

    retention: Duration | None = Field(
        default=timedelta(days=30),
        description="Ticks older than this (and instances terminated before it) are pruned about once "
        "an hour by `autoscaler run`; null keeps everything. 30 days of 15 s ticks is ~173,000 rows.",
    )

    @field_validator("retention")
    @classmethod
    def _at_least_an_hour(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(hours=1):
            raise ValueError("retention shorter than 1h would prune the ticks the engine looks back on")
        return value


# ---------------------------------------------------------------------------------------- notifications
NotificationEvent = Literal["scale_out", "scale_in", "failure", "recovered", "fallback"]
ALL_NOTIFICATION_EVENTS: tuple[NotificationEvent, ...] = (
    "scale_out", "scale_in", "failure", "recovered", "fallback"
)


class WebhookConfig(StrictModel):
    """A webhook that receives a JSON POST when the pool scales or something goes wrong.

    Sent from a background queue: a slow or hanging receiver never delays a tick.
    """

    url: str | None = Field(default=None, pattern=r"^https?://", description="Where to POST.")
    url_env: str | None = Field(
        default=None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Read the URL from this environment variable instead (chat webhooks hold a secret).",
    )
    events: list[NotificationEvent] = Field(
        default_factory=lambda: list(ALL_NOTIFICATION_EVENTS),
        min_length=1,
        description="Which events to send. failure/fallback are sent when they start, recovered when "
        "a tick succeeds again.",
    )
    timeout: Duration = Field(default=timedelta(seconds=5), description="Per attempt.")
    retries: int = Field(default=3, ge=0, le=10, description="Further attempts after a failed one.")

    @model_validator(mode="after")
    def _one_url(self) -> WebhookConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of 'url' or 'url_env'")
        return self


class NotificationsConfig(StrictModel):
    """Where the controller tells people what it did."""

    webhook: WebhookConfig | None = None


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
    warm_pool: WarmPoolConfig | None = Field(
        default=None, description="Model-loaded instances kept stopped (or running) for fast scale-out."
    )
    paused: bool = Field(
        default=False,
        description="Observe, decide and record every tick, act on nothing: nodes stay as they are "
        "(KEDA's paused). `autoscaler pause --pool` does the same without editing the file.",
    )
    store: StoreConfig = Field(default_factory=StoreConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)

    @field_validator("warm_pool")
    @classmethod
    def _warm_pool_fits(cls, value: WarmPoolConfig | None, info: ValidationInfo) -> WarmPoolConfig | None:
        scaling = info.data.get("scaling")
        if value is None or scaling is None or value.max_prepared is None:
            return value
        if value.max_prepared < scaling.min_nodes:
            raise ValueError(f"max_prepared ({value.max_prepared}) is below scaling.min_nodes "
                             f"({scaling.min_nodes}): the pool could never be prepared")
        return value

    def instance_type(self, name: str) -> InstanceTypeSpec | None:
        """The launch spec entry of ``name``, or None for a type the policy no longer lists."""
        return _types_by_name(self.launch.instance_types).get(name)

    def streams_of(self, instance_type: str) -> int:
        """Concurrent streams a node of ``instance_type`` serves (the first type's when unknown)."""
        spec = self.instance_type(instance_type)
        return (spec or self.launch.instance_types[0]).streams
