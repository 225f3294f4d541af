"""The EC2 provider: launches and terminates a pool's GPU nodes through boto3.

What a launch does (``AwsProvider.launch``):

1. **Reconcile by tag.** Instances tagged ``autoscaler:launch-token=TOKEN`` (and the pool) that are
   not terminated count toward ``count``; only the difference is launched. This is what makes a
   retry or a controller restart safe even where EC2's own ``ClientToken`` cannot help (a new
   parameter set, or moto, which ignores client tokens).
2. **Resolve the image**: ``spec.image`` is an AMI id, or empty to use the newest available AMI
   owned by ``config.image_owner`` and tagged ``autoscaler:model-version=spec.model_version`` (the
   tag the Packer template in ``infra/image/`` writes).
3. **Launch in order of preference**: for each instance type of the spec, for each subnet of the
   config (one per zone), ``RunInstances`` with ``MinCount=1, MaxCount=missing`` so a partly
   stocked zone still gives what it has. Each request carries an EC2 ``ClientToken`` derived from
   the caller's token and the request's parameters (type, subnet, how many, how many existed), so
   botocore's own retry of a request whose reply was lost returns the first reservation instead
   of launching again.
4. **Errors**: no stock (``InsufficientInstanceCapacity``, ``Unsupported``, ...) moves on to the
   next subnet, then the next type; an unknown type skips that type; a quota error skips every
   type of the quota group it used up (``autoscaler.providers.quota_groups``: the On-Demand vCPU
   class for ``VcpuLimitExceeded``, the type for ``InstanceLimitExceeded``, the account for
   ``MaxSpotInstanceCountExceeded``) and the launch goes on with the types of other groups. With
   nothing launched these raise ``InsufficientCapacity`` / ``QuotaExceeded`` (quota only when no
   type was refused or skipped for stock); otherwise ``LaunchResult.shortfall`` says
   ``"capacity"`` or ``"quota"`` and ``notes`` name each refused or skipped group.
5. **Back off** (``autoscaler.providers.offers``): a (type, subnet) that answered no stock is not
   asked again until its pause ends (30 s, doubling per refusal in a row, at most 10 min), and a
   quota group that refused is paused the same way, so a shortage costs a few requests, not four
   per tick. A launch whose every offer is paused sends no ``RunInstances`` and raises
   ``InsufficientCapacity`` / ``QuotaExceeded`` saying when the next attempt is due.

Instances and their volumes are tagged (``TagSpecifications``) with the pool, the model version,
``managed-by``, the launch token, the serving port (``autoscaler:port``) and ``spec.tags``.
``terminate``, ``stop`` and ``start`` refuse instances that lack ``managed-by=gpu-autoscaler``, so
a bug upstream can never touch a machine this controller did not launch.

``stop`` (``StopInstances``) keeps the EBS root volume, so a ``start`` (``StartInstances``) boots
with the model already on disk: the warm pool's stopped state, billed for storage only. EC2 fails a
whole batch for one bad id or one type without stock, so a failed batch is settled id by id; a
start refused for stock (``InsufficientInstanceCapacity``) is ``StartOutcome.NO_CAPACITY``, or
``InsufficientCapacity`` when no id of the call could start.

Throttling and 5xx are retried by botocore (standard mode, ``config.max_attempts`` attempts per
request) inside a ``RetryBudget`` for the whole operation (see ``autoscaler.providers.retry``):
a hook on botocore's ``needs-retry`` event refuses a retry whose backoff would overrun the
deadline, and refuses to retry capacity and quota errors at all (EC2 sends
``InsufficientInstanceCapacity`` as HTTP 500, which botocore would otherwise retry for seconds
before we can try the next zone). Beyond the budget: ``TransientProviderError``.

Credentials come only from boto3's standard chain (environment, shared config/profile, instance
role); nothing here reads, stores or logs them. ``config.endpoint_url`` (else boto3's own
``AWS_ENDPOINT_URL``) points the client elsewhere, e.g. at moto on loopback in tests.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.retries.standard import RetryContext, ThrottledRetryableChecker, TransientRetryableChecker

from autoscaler.domain import (
    MANAGED_BY_VALUE,
    TAG_LAUNCH_TOKEN,
    TAG_MANAGED_BY,
    TAG_MODEL_VERSION,
    TAG_POOL,
    CloudState,
    Instance,
    LaunchResult,
    LaunchSpec,
    StartOutcome,
    StopOutcome,
    TerminateOutcome,
)
from autoscaler.errors import (
    InsufficientCapacity,
    PolicyError,
    ProviderError,
    QuotaExceeded,
    TransientProviderError,
)
from autoscaler.policy.model import AwsProviderConfig, PoolPolicy
from autoscaler.providers.offers import OfferBackoff
from autoscaler.providers.quota_groups import aws_quota_groups, aws_refused_group
from autoscaler.providers.retry import BudgetRun, RetryBudget, active_run

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_ec2.type_defs import (
        FilterTypeDef,
        InstanceTypeDef,
        RunInstancesRequestTypeDef,
        TagTypeDef,
    )
    from mypy_boto3_ec2.type_defs import ReservationResponseTypeDef as RunInstancesReplyTypeDef

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Tag holding the port the node serves on, so ``list_instances`` can report it after a restart.
TAG_PORT = "autoscaler:port"

#: Instance states that count as the pool's machines (``shutting-down`` is already on its way out).
LIVE_STATES = ("pending", "running", "stopping", "stopped")

_STATES: Mapping[str, CloudState] = {
    "pending": CloudState.PENDING,
    "running": CloudState.RUNNING,
    "stopping": CloudState.STOPPING,
    # A stopped instance serves nothing and is not capacity: a warm-pool member (or a leftover).
    "stopped": CloudState.STOPPED,
    "shutting-down": CloudState.STOPPING,
    "terminated": CloudState.TERMINATED,
}

#: No stock of this type in this zone/subnet right now: try the next subnet, then the next type.
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientFreeAddressesInSubnet",
    "Unsupported",
})
#: The type does not exist in this region (moto and EC2 spellings): skip the type, not just the zone.
UNKNOWN_TYPE_CODES = frozenset({"InvalidInstanceType", "InvalidInstanceType.NotFound"})
#: A quota: the types of the group it applies to (``quota_groups.aws_refused_group``) wait; others are tried.
QUOTA_CODES = frozenset({"InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded"})
#: The instance id is not (or no longer) known to EC2.
NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
#: Stop or start asked of an instance in a state that does not allow it (pending, stopping, ...).
INCORRECT_STATE_CODES = frozenset({"IncorrectInstanceState", "IncorrectState"})

# EC2 accepts at most 200 values per filter; terminate in batches of the same size.
_ID_BATCH = 200
# EC2 ClientToken: at most 64 ASCII characters.
_CLIENT_TOKEN_MAX = 64

_THROTTLED = ThrottledRetryableChecker()
_TRANSIENT = TransientRetryableChecker()


# ------------------------------------------------------------------------------------ botocore helpers
def error_code(exc: ClientError) -> str:
    """The AWS error code of a ``ClientError`` (``""`` when the reply had none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_transient_aws_error(exc: BaseException) -> bool:
    """True for throttling, 5xx and connection failures: worth another try after a pause.

    Uses botocore's own classification (the checkers of its standard retry mode), except that
    capacity and quota codes are never transient even though EC2 sends some of them as HTTP 500.
    """
    if isinstance(exc, ClientError):
        if error_code(exc) in CAPACITY_CODES | QUOTA_CODES:
            return False
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        context = RetryContext(attempt_number=1, parsed_response=dict(exc.response),
                               http_response=AWSResponse("", status, HTTPHeaders(), None))
    elif isinstance(exc, BotoCoreError):
        context = RetryContext(attempt_number=1, caught_exception=exc)
    else:
        return False
    return bool(_THROTTLED.is_retryable(context) or _TRANSIENT.is_retryable(context))


def _max_botocore_backoff(attempt: int) -> float:
    # botocore's standard mode waits rand(0,1) * min(scale * 2**(attempt-1), 20) s before the next
    # attempt, scale being 1 s for throttling (the larger case); this is that bound.
    return float(min(2 ** max(attempt - 1, 0), 20))


def install_budget_hooks(client: Any, no_retry_codes: Iterable[str] = ()) -> None:
    """Make ``client``'s retries respect the active ``BudgetRun`` and skip ``no_retry_codes``.

    Registers a handler on botocore's ``needs-retry.<service>`` event ahead of botocore's own retry
    handler. Returning ``False`` there vetoes a retry: it does so for an error code in
    ``no_retry_codes``, and when the longest backoff botocore could choose for this attempt would
    end after the active run's deadline. Without an active run, botocore decides alone.
    """
    codes = frozenset(no_retry_codes)
    service = client.meta.service_model.service_id.hyphenize()

    def guard(response: Any = None, attempts: int = 1, **_: Any) -> bool | None:
        parsed = response[1] if isinstance(response, tuple) and len(response) == 2 else None
        if isinstance(parsed, dict) and parsed.get("Error", {}).get("Code") in codes:
            return False
        run = active_run()
        if run is not None and not run.allows_wait(_max_botocore_backoff(attempts)):
            return False
        return None

    client.meta.events.register_first(f"needs-retry.{service}", guard, unique_id="autoscaler-budget-guard")


def make_client(
    session: boto3.Session,
    service: str,
    *,
    region: str,
    endpoint_url: str | None,
    max_attempts: int,
    no_retry_codes: Iterable[str] = (),
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 20.0,
) -> Any:
    """A boto3 client with standard-mode retries, bounded timeouts and the budget hooks installed.

    ``endpoint_url=None`` leaves the endpoint to boto3 (its ``AWS_ENDPOINT_URL`` settings, else
    AWS). Credentials are whatever ``session`` resolves through boto3's standard chain.
    """
    config = Config(
        region_name=region,
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        user_agent_extra="gpu-autoscaler",
    )
    client = session.client(service, region_name=region, endpoint_url=endpoint_url,  # type: ignore[call-overload]
                            config=config)
    install_budget_hooks(client, no_retry_codes)
    return client


def aws_call(run: BudgetRun, service: str, what: str, fn: Callable[[], T], *,
             passthrough: Iterable[str] = ()) -> T:
    """``fn()`` under ``run``'s budget, with boto errors mapped to the provider's error types.

    Throttling/5xx beyond the budget raise ``TransientProviderError``; a ``ClientError`` whose code
    is in ``passthrough`` is re-raised unchanged for the caller to handle; any other AWS or botocore
    error becomes ``ProviderError``. All are chained to the SDK error.
    """
    codes = frozenset(passthrough)
    try:
        return run.call(fn, is_transient=is_transient_aws_error, what=what)
    except TransientProviderError:
        raise
    except ClientError as exc:
        if error_code(exc) in codes:
            raise
        raise ProviderError(f"{service} {what} failed: {error_code(exc)}: {_message(exc)}") from exc
    except BotoCoreError as exc:
        raise ProviderError(f"{service} {what} failed: {exc}") from exc


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)


def attempt_client_token(client_token: str, instance_type: str, subnet: str, count: int,
                         existing: int) -> str:
    """The EC2 ``ClientToken`` of one ``RunInstances`` request of a launch.

    EC2 ties a client token to one parameter set (reusing it with other parameters is an
    ``IdempotentParameterMismatch``), so each (type, subnet, count, already-existing) combination
    gets its own token: a deterministic function of the caller's token, readable in the console.
    """
    digest = hashlib.sha256(
        f"{client_token}|{instance_type}|{subnet}|{count}|{existing}".encode()
    ).hexdigest()[:20]
    prefix = client_token[: _CLIENT_TOKEN_MAX - len(digest) - 1]
    return f"{prefix}-{digest}"


def _tag_list(tags: Mapping[str, str]) -> list[TagTypeDef]:
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


def _batches(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


@dataclass
class _Progress:
    """What one ``launch`` has done so far, across types and subnets."""

    count: int
    have: list[Instance]
    launched: list[Instance] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    quota: ClientError | None = None
    capacity: ClientError | None = None
    #: Offers skipped because they refused recently (``OfferBackoff``).
    paused: list[str] = field(default_factory=list)
    #: Types skipped because a quota group of theirs refused recently.
    quota_paused: list[str] = field(default_factory=list)
    capacity_type: str | None = None
    other: ClientError | None = None

    def missing(self) -> int:
        return self.count - len(self.have) - len(self.launched)


# --------------------------------------------------------------------------------------------- provider
class AwsProvider:
    """A ``Provider`` on EC2 (see the module docstring for launch, retry and error behaviour).

    ``session`` is the boto3 session to resolve credentials from (default: a new one, i.e. the
    standard chain); ``budget`` bounds each operation; ``offers`` remembers no-stock and quota
    refusals between launches (see the module docstring). The EC2 client is ``self.client``, so
    tests and tools can register botocore event handlers on it. Not meant for concurrent use from
    several threads of one controller (the controller runs one tick at a time).
    """

    name = "aws"

    def __init__(
        self,
        config: AwsProviderConfig,
        *,
        session: boto3.Session | None = None,
        budget: RetryBudget | None = None,
        offers: OfferBackoff | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 20.0,
    ) -> None:
        self.config = config
        self.budget = budget or RetryBudget()
        self.offers = offers or OfferBackoff()
        self._client: EC2Client = make_client(
            session or boto3.Session(), "ec2", region=config.region, endpoint_url=config.endpoint_url,
            max_attempts=config.max_attempts,
            no_retry_codes=CAPACITY_CODES | QUOTA_CODES | UNKNOWN_TYPE_CODES,
            connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s,
        )

    @classmethod
    def for_policy(cls, policy: PoolPolicy, **options: Any) -> AwsProvider:
        """The provider a pool policy with ``provider.kind: aws`` describes.

        Raises ``PolicyError`` when the policy names another provider kind. ``options`` go to the
        constructor (``session``, ``budget``, timeouts).
        """
        if not isinstance(policy.provider, AwsProviderConfig):
            raise PolicyError(f"pool {policy.pool} uses the {policy.provider.kind!r} provider, not 'aws'")
        return cls(policy.provider, **options)

    @property
    def client(self) -> EC2Client:
        """The boto3 EC2 client (retries, timeouts and budget hooks installed)."""
        return self._client

    # ----------------------------------------------------------------------------- Provider protocol
    def list_instances(self, pool: str) -> list[Instance]:
        """Every pending, running, stopping or stopped instance tagged with ``pool``, oldest first.

        All pages are read; a failure mid-way re-reads from the first page (never a partial list).
        """
        with self.budget.start("list_instances") as run:
            raw = self._describe(run, [{"Name": f"tag:{TAG_POOL}", "Values": [pool]},
                                       {"Name": "instance-state-name", "Values": list(LIVE_STATES)}])
        return sorted((self._to_instance(r) for r in raw), key=lambda i: (i.launched_at, i.id))

    def launch(self, spec: LaunchSpec, count: int, client_token: str) -> LaunchResult:
        """Make ``count`` live instances carry ``client_token``; return them and any shortfall."""
        if count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        if not client_token:
            raise ValueError("a launch needs a client token")
        with self.budget.start("launch") as run:
            existing = self._describe(run, [
                {"Name": f"tag:{TAG_LAUNCH_TOKEN}", "Values": [client_token]},
                {"Name": f"tag:{TAG_POOL}", "Values": [spec.pool]},
                {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
            ])
            have = [self._to_instance(r) for r in existing]
            if len(have) >= count:
                return LaunchResult(instances=tuple(have))
            blocked = [self._quota_skip(instance_type) for instance_type in spec.instance_types]
            if blocked and all(blocked):
                # Every listed type's quota group refused recently: not even the image is looked up.
                message = (f"EC2 quota refused every type of {spec.pool} recently; no RunInstances: "
                           + "; ".join(note for note in blocked if note))
                if not have:
                    raise QuotaExceeded(message)
                return LaunchResult(instances=tuple(have), shortfall="quota", notes=tuple(blocked))
            image = self._resolve_image(run, spec)
            return self._launch_missing(run, spec, image, count, client_token, have)

    def terminate(self, instance_ids: Sequence[str]) -> dict[str, TerminateOutcome]:
        """Start terminating each id; ids EC2 does not know or already terminating are ALREADY_GONE.

        Ids are looked up first (a filter, which ignores unknown ids, unlike ``TerminateInstances``
        where one unknown id fails the whole batch). Raises ``ProviderError`` without terminating
        anything when an id names an instance not tagged ``managed-by=gpu-autoscaler``.
        """
        ids = list(dict.fromkeys(instance_ids))
        if not ids:
            return {}
        outcome = dict.fromkeys(ids, TerminateOutcome.ALREADY_GONE)
        with self.budget.start("terminate") as run:
            found: dict[str, InstanceTypeDef] = {}
            for batch in _batches(ids, _ID_BATCH):
                for raw in self._describe(run, [{"Name": "instance-id", "Values": batch}]):
                    found[raw["InstanceId"]] = raw
            foreign = sorted(iid for iid, raw in found.items()
                             if self._tags(raw).get(TAG_MANAGED_BY) != MANAGED_BY_VALUE)
            if foreign:
                raise ProviderError(f"refusing to terminate instances not managed by {MANAGED_BY_VALUE}: "
                                    f"{', '.join(foreign)}")
            live = [iid for iid in ids
                    if iid in found and found[iid].get("State", {}).get("Name") in LIVE_STATES]
            for batch in _batches(live, _ID_BATCH):
                for iid in self._terminate_batch(run, batch):
                    outcome[iid] = TerminateOutcome.TERMINATING
        return outcome

    def stop(self, instance_ids: Sequence[str]) -> dict[str, StopOutcome]:
        """``StopInstances`` for each pending or running id (root volume kept); see the protocol."""
        found, ids = self._look_up(instance_ids, "stop")
        outcome: dict[str, StopOutcome] = {}
        to_stop: list[str] = []
        for iid in ids:
            state = found[iid].get("State", {}).get("Name") if iid in found else None
            if state in ("pending", "running"):
                to_stop.append(iid)
            elif state == "stopping":
                outcome[iid] = StopOutcome.STOPPING
            elif state == "stopped":
                outcome[iid] = StopOutcome.ALREADY_STOPPED
            else:
                outcome[iid] = StopOutcome.ALREADY_GONE
        with self.budget.start("stop") as run:
            for batch in _batches(to_stop, _ID_BATCH):
                outcome.update(self._power_batch(run, "stop", batch))
        return {iid: outcome[iid] for iid in ids}

    def start(self, instance_ids: Sequence[str]) -> dict[str, StartOutcome]:
        """``StartInstances`` for each stopped id; see the protocol (NO_CAPACITY, InsufficientCapacity)."""
        found, ids = self._look_up(instance_ids, "start")
        outcome: dict[str, StartOutcome] = {}
        to_start: list[str] = []
        for iid in ids:
            state = found[iid].get("State", {}).get("Name") if iid in found else None
            if state == "stopped":
                to_start.append(iid)
            elif state in ("pending", "running"):
                outcome[iid] = StartOutcome.ALREADY_RUNNING
            elif state == "stopping":
                raise ProviderError(f"EC2 instance {iid} is still stopping; start it once it has stopped")
            else:
                outcome[iid] = StartOutcome.ALREADY_GONE
        with self.budget.start("start") as run:
            for batch in _batches(to_start, _ID_BATCH):
                outcome.update(self._power_batch(run, "start", batch))
        no_stock = [iid for iid in to_start if outcome.get(iid) == StartOutcome.NO_CAPACITY]
        if no_stock and not any(outcome.get(iid) == StartOutcome.STARTING for iid in to_start):
            raise InsufficientCapacity(f"no EC2 capacity to start {', '.join(no_stock)}",
                                       instance_type=str(found[no_stock[0]].get("InstanceType", "")) or None)
        return {iid: outcome[iid] for iid in ids}

    def _look_up(self, instance_ids: Sequence[str],
                 what: str) -> tuple[dict[str, InstanceTypeDef], list[str]]:
        """Describe ``instance_ids`` (unknown ones are simply absent); refuse foreign instances."""
        ids = list(dict.fromkeys(instance_ids))
        found: dict[str, InstanceTypeDef] = {}
        if not ids:
            return found, ids
        with self.budget.start(f"{what} look-up") as run:
            for batch in _batches(ids, _ID_BATCH):
                for raw in self._describe(run, [{"Name": "instance-id", "Values": batch}]):
                    found[raw["InstanceId"]] = raw
        foreign = sorted(iid for iid, raw in found.items()
                         if self._tags(raw).get(TAG_MANAGED_BY) != MANAGED_BY_VALUE)
        if foreign:
            raise ProviderError(f"refusing to {what} instances not managed by {MANAGED_BY_VALUE}: "
                                f"{', '.join(foreign)}")
        return found, ids

    def _power_batch(self, run: BudgetRun, what: str, ids: list[str]) -> dict[str, Any]:
        """One ``StopInstances``/``StartInstances``; a failed batch is settled one id at a time."""
        call = self._client.stop_instances if what == "stop" else self._client.start_instances
        done = StopOutcome.STOPPING if what == "stop" else StartOutcome.STARTING
        try:
            aws_call(run, "EC2", f"{what.title()}Instances", lambda: call(InstanceIds=ids),
                     passthrough=NOT_FOUND_CODES | INCORRECT_STATE_CODES | CAPACITY_CODES)
        except ClientError as exc:
            if len(ids) > 1:
                return {iid: result for single in ids
                        for iid, result in self._power_batch(run, what, [single]).items()}
            code = error_code(exc)
            if code in NOT_FOUND_CODES:
                return {ids[0]: StopOutcome.ALREADY_GONE if what == "stop" else StartOutcome.ALREADY_GONE}
            if code in CAPACITY_CODES and what == "start":
                return {ids[0]: StartOutcome.NO_CAPACITY}
            raise ProviderError(f"EC2 {what.title()}Instances({ids[0]}) failed: {code}: "
                                f"{_message(exc)}") from exc
        return dict.fromkeys(ids, done)

    # ------------------------------------------------------------------------------------- launching
    def _launch_missing(self, run: BudgetRun, spec: LaunchSpec, image: str, count: int, client_token: str,
                        have: list[Instance]) -> LaunchResult:
        tags = {**spec.tags, TAG_POOL: spec.pool, TAG_MODEL_VERSION: spec.model_version,
                TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_LAUNCH_TOKEN: client_token, TAG_PORT: str(spec.port)}
        progress = _Progress(count=count, have=have)
        for instance_type in spec.instance_types:
            if progress.missing() <= 0:
                break
            # Checked per type, also after a refusal earlier in this launch: a VcpuLimitExceeded for
            # g5.xlarge skips g4dn.xlarge (same class) but not p4d.24xlarge.
            if skip := self._quota_skip(instance_type):
                progress.quota_paused.append(skip)
                continue
            for subnet in self.config.subnets:
                if progress.missing() <= 0:
                    break
                if (left := self.offers.paused_for(instance_type, subnet)) > 0:
                    why = self.offers.why(instance_type, subnet)
                    progress.paused.append(f"{instance_type} in {subnet}: skipped for {left:.0f} s more "
                                           f"after {why}")
                    continue
                if not self._fill(run, spec, image, instance_type, subnet, tags, client_token, progress):
                    break  # this type cannot be launched anywhere (unknown type, or its quota is used up)
        instances = tuple(have + progress.launched)
        notes = tuple(progress.notes + progress.quota_paused + progress.paused)
        if len(instances) >= count:
            return LaunchResult(instances=instances, notes=notes)
        tried = "; ".join(notes)
        quota_blocked = progress.quota is not None or bool(progress.quota_paused)
        if not instances:
            if quota_blocked and progress.capacity is None and not progress.paused:
                raise QuotaExceeded(f"EC2 quota blocks launching {spec.pool}: {tried}") from progress.quota
            if progress.capacity is not None or (progress.paused and progress.other is None):
                raise InsufficientCapacity(f"no EC2 capacity for {spec.pool} in any type/subnet: {tried}",
                                           instance_type=progress.capacity_type) from progress.capacity
            raise ProviderError(f"no instance type of {spec.pool} can be launched: {tried}") \
                from progress.other
        shortfall = "quota" if quota_blocked else "capacity"
        return LaunchResult(instances=instances, shortfall=shortfall, notes=notes)

    def _quota_skip(self, instance_type: str) -> str:
        """Why ``instance_type`` is not asked now (a quota group of it is paused), or ``""``."""
        groups = aws_quota_groups(instance_type)
        if (left := self.offers.quota_paused_for(groups)) <= 0:
            return ""
        return f"{instance_type}: skipped for {left:.0f} s more after {self.offers.quota_why(groups)}"

    def _fill(self, run: BudgetRun, spec: LaunchSpec, image: str, instance_type: str, subnet: str,
              tags: Mapping[str, str], client_token: str, progress: _Progress) -> bool:
        """Launch what ``subnet`` has of ``instance_type``, up to what is missing.

        Returns False when the next subnet need not be tried with this type (unknown type, quota).
        Each request asks for ``MinCount=1, MaxCount=missing``; a reply with fewer instances is
        followed by a request for the rest in the same subnet, which EC2 answers with
        ``InsufficientInstanceCapacity`` when the zone is out (moto launches ``MinCount`` only, so
        there this loop is what fills the count). Each round launches at least one instance, so
        the loop ends within ``missing`` requests.
        """
        while (missing := progress.missing()) > 0:
            existing = len(progress.have) + len(progress.launched)
            request = self._run_request(spec, image, instance_type, subnet, missing, tags,
                                        attempt_client_token(client_token, instance_type, subnet, missing,
                                                             existing))
            try:
                reply = self._run_instances(run, request)
            except ClientError as exc:
                code = error_code(exc)
                if code in QUOTA_CODES:
                    group = aws_refused_group(instance_type, code)
                    progress.notes.append(f"{instance_type} in {subnet}: {code} (quota group {group!r}): "
                                          f"{_message(exc)}")
                    progress.quota = exc
                    pause = self.offers.quota(group, f"{code} for {instance_type} in {subnet}")
                    logger.warning("EC2 quota group %r refused pool %s (%s for %s); its types are not asked "
                                   "for %.0f s, other groups are tried", group, spec.pool, code,
                                   instance_type, pause)
                    return False
                progress.notes.append(f"{instance_type} in {subnet}: {code}: {_message(exc)}")
                if code in CAPACITY_CODES:
                    progress.capacity, progress.capacity_type = exc, instance_type
                    pause = self.offers.no_stock(instance_type, subnet, code)
                    # Logged even when another subnet or type fills the launch: the tick's result
                    # then has no shortfall to report.
                    logger.warning("EC2 has no %s in %s for pool %s (%s); trying the next option, "
                                   "this one again in %.0f s", instance_type, subnet, spec.pool, code, pause)
                    return True
                progress.other = exc  # an unknown type: no other subnet has it either
                return False
            got = [self._to_instance(raw, fallback_tags=tags) for raw in reply.get("Instances", [])]
            if not got:
                progress.notes.append(f"{instance_type} in {subnet}: EC2 launched none of {missing}")
                return True
            progress.launched.extend(got)
            self.offers.served(instance_type, subnet, aws_quota_groups(instance_type))
        return True

    def _run_instances(self, run: BudgetRun, request: RunInstancesRequestTypeDef) -> RunInstancesReplyTypeDef:
        # Capacity, quota and unknown-type errors come back raw: the caller moves on from them.
        return aws_call(run, "EC2", f"RunInstances({request['InstanceType']} in {request.get('SubnetId')})",
                        lambda: self._client.run_instances(**request),
                        passthrough=CAPACITY_CODES | QUOTA_CODES | UNKNOWN_TYPE_CODES)

    def _run_request(self, spec: LaunchSpec, image: str, instance_type: str, subnet: str, count: int,
                     tags: Mapping[str, str], token: str) -> RunInstancesRequestTypeDef:
        request: RunInstancesRequestTypeDef = {
            "ImageId": image,
            "InstanceType": instance_type,  # type: ignore[typeddict-item]
            "MinCount": 1,
            "MaxCount": count,
            "SubnetId": subnet,
            "ClientToken": token,
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": _tag_list(tags)},
                {"ResourceType": "volume", "Tags": _tag_list(tags)},
            ],
        }
        if self.config.security_groups:
            request["SecurityGroupIds"] = list(self.config.security_groups)
        profile = self.config.instance_profile
        if profile:
            request["IamInstanceProfile"] = (
                {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
            )
        if self.config.key_name:
            request["KeyName"] = self.config.key_name
        if spec.user_data is not None:
            # boto3 base64-encodes RunInstances UserData itself.
            request["UserData"] = spec.user_data
        return request

    def _resolve_image(self, run: BudgetRun, spec: LaunchSpec) -> str:
        if spec.image:
            return spec.image
        owner = self.config.image_owner
        reply = aws_call(run, "EC2", "DescribeImages", lambda: self._client.describe_images(
            Owners=[owner],
            Filters=[{"Name": f"tag:{TAG_MODEL_VERSION}", "Values": [spec.model_version]},
                     {"Name": "state", "Values": ["available"]}],
        ))
        images = reply.get("Images", [])
        if not images:
            raise ProviderError(f"no available AMI owned by {owner!r} is tagged "
                                f"{TAG_MODEL_VERSION}={spec.model_version} (pool {spec.pool})")
        newest = max(images, key=lambda image: (image.get("CreationDate", ""), image.get("ImageId", "")))
        return newest["ImageId"]

    # ------------------------------------------------------------------------------------ inventory
    def _describe(self, run: BudgetRun, filters: list[FilterTypeDef]) -> list[InstanceTypeDef]:
        paginator = self._client.get_paginator("describe_instances")

        def every_page() -> list[InstanceTypeDef]:
            return [instance
                    for page in paginator.paginate(Filters=filters)
                    for reservation in page.get("Reservations", [])
                    for instance in reservation.get("Instances", [])]

        return aws_call(run, "EC2", "DescribeInstances", every_page)

    def _terminate_batch(self, run: BudgetRun, ids: list[str]) -> list[str]:
        try:
            reply = aws_call(run, "EC2", "TerminateInstances",
                             lambda: self._client.terminate_instances(InstanceIds=ids),
                             passthrough=NOT_FOUND_CODES)
        except ClientError:
            # One of them vanished between the look-up and this call: the batch failed whole, so
            # terminate the rest one by one (a single unknown id is simply already gone).
            if len(ids) == 1:
                return []
            return [iid for single in ids for iid in self._terminate_batch(run, [single])]
        return [t["InstanceId"] for t in reply.get("TerminatingInstances", []) if "InstanceId" in t]

    @staticmethod
    def _tags(raw: InstanceTypeDef) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in raw.get("Tags", []) if "Key" in t and "Value" in t}

    def _to_instance(self, raw: InstanceTypeDef, fallback_tags: Mapping[str, str] | None = None) -> Instance:
        # RunInstances replies may omit tags; the ones we asked for are then the truth.
        tags = {**(fallback_tags or {}), **self._tags(raw)}
        try:
            port = int(tags.get(TAG_PORT, "7860"))
        except ValueError:
            port = 7860
        launched = raw.get("LaunchTime") or datetime.now(UTC)
        launched = launched.replace(tzinfo=UTC) if launched.tzinfo is None else launched.astimezone(UTC)
        state = _STATES.get(str(raw.get("State", {}).get("Name", "pending")), CloudState.PENDING)
        return Instance(
            id=raw["InstanceId"],
            pool=tags.get(TAG_POOL, ""),
            instance_type=str(raw.get("InstanceType", "")),
            model_version=tags.get(TAG_MODEL_VERSION, ""),
            launch_token=tags.get(TAG_LAUNCH_TOKEN, ""),
            launched_at=launched,
            state=state,
            address=raw.get("PrivateIpAddress"),
            port=port,
            zone=raw.get("Placement", {}).get("AvailabilityZone"),
            image=raw.get("ImageId"),
            tags=tags,
        )
