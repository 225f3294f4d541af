"""A ``Provider`` for Alibaba Cloud ECS, through the official SDK (``alibabacloud_ecs20140526``).

What it sends:

- ``list_instances``: ``DescribeInstances`` filtered by the pool and managed-by tags, reading
  every page (``MaxResults`` / ``NextToken``).
- ``launch``: first the same describe filtered by the launch-token tag, so instances a previous
  call (or a controller that has since restarted) made for the token count toward ``count``; then
  ``RunInstances`` for the difference, trying the pool's instance types in order and, for each,
  the configured vswitches (zones) in order. ``MinAmount=1`` lets a zone with some stock launch
  what it can, and the next zone is asked for the rest. Every instance carries the pool, model
  version, launch token, port and managed-by tags.
- ``terminate``: ``DescribeInstances`` by id (ids ECS no longer knows are ``ALREADY_GONE``), then
  ``DeleteInstances`` with ``Force=true`` in batches of 100.
- ``stop``: ``StopInstances`` with ``StoppedMode=StopCharging`` (economical mode: the stopped
  instance keeps its disks, billed, but gives its GPU back and bills no compute) and
  ``BatchOptimization=SuccessFirst`` (a result per id). ``start``: ``StartInstances`` the same way;
  a start refused with ``OperationDenied.NoStock`` (the GPU went to someone else meanwhile) is
  ``StartOutcome.NO_CAPACITY``, or ``InsufficientCapacity`` when no id of the call could start.

Idempotency: each ``RunInstances`` carries an ECS ``ClientToken`` derived from the caller's token,
the instance type, the vswitch, the amount and how many instances the token already had. A retry
of the same request (after a timeout, or by a restarted controller that could not see the
instances yet) therefore gets ECS's answer to the first one instead of new machines, while a
top-up, or a move to the next zone, is a distinct request.

Errors (see ``docs/alibaba.md``): throttling, 5xx and connection failures are retried with
exponential backoff and full jitter inside a ``RetryBudget`` (attempts from the config's
``max_attempts``, and a wall-clock deadline per operation), then raised as
``TransientProviderError``. Stock and zone errors move the launch to the next vswitch, then the
next type; a quota error (``QuotaExceed.*``) skips every type of the refused type's instance
family and the launch goes on with other families, while account errors (no balance, arrears,
``OperationDenied.QuotaExceed``) skip every type (``autoscaler.providers.quota_groups``). With
nothing launched that is ``QuotaExceeded`` (or ``InsufficientCapacity`` when stock refused too),
else a ``"quota"``/``"capacity"`` shortfall whose notes name the groups. Both are remembered
(``autoscaler.providers.offers``): a (type, vswitch) without stock is not asked again for 30 s,
doubling per refusal in a row up to 10 min, and a refused quota group is paused the same way, so
a shortage costs a few requests instead of one per offer per tick. Anything else is an
``EcsError`` (a ``ProviderError``).
Every raise is chained to the SDK's exception.

Credentials come only from the SDK's default credential chain (``alibabacloud_credentials``:
environment variables, profile files, the instance's RAM role); this module never reads, stores
or logs them, and the SDK's own retries are left off so the budget above is the only one.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_credentials.exceptions import CredentialException
from alibabacloud_ecs20140526 import models as ecs_models
from alibabacloud_ecs20140526.client import Client as EcsClient
from alibabacloud_tea_openapi import models as openapi_models
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException, ThrottlingException
from darabonba.exceptions import RetryError
from Tea.exceptions import TeaException, UnretryableException

from autoscaler.clock import SystemClock
from autoscaler.domain import (
    MANAGED_BY_VALUE,
    TAG_LAUNCH_TOKEN,
    TAG_MANAGED_BY,
    TAG_MODEL_VERSION,
    TAG_POOL,
    TAG_PORT,
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
from autoscaler.policy.model import AlibabaProviderConfig, PoolPolicy
from autoscaler.protocols import Clock
from autoscaler.providers.offers import OfferBackoff
from autoscaler.providers.quota_groups import alibaba_quota_groups, alibaba_refused_group
from autoscaler.providers.retry import BudgetRun, RetryBudget

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: ECS's caps: instances per ``RunInstances`` / ``DeleteInstances``, results per page, tags per resource.
MAX_BATCH = 100
MAX_PAGE_SIZE = 100
MAX_TAGS = 20
MAX_TAG_LENGTH = 128
#: ECS accepts at most 32 KiB of base64 ``UserData``.
MAX_USER_DATA = 32768
#: Pages ``DescribeInstances`` may take before the provider assumes the endpoint loops.
MAX_PAGES = 10_000
DEFAULT_PORT = 7860

#: ECS instance statuses and what they mean to the controller. ``Stopped`` is not terminated (the
#: machine and its disks still exist) but it serves nothing: a warm-pool member, or a leftover.
ECS_STATES: Mapping[str, CloudState] = {
    "Pending": CloudState.PENDING,
    "Starting": CloudState.PENDING,
    "Running": CloudState.RUNNING,
    "Stopping": CloudState.STOPPING,
    "Stopped": CloudState.STOPPED,
}
#: How ``stop`` stops: economical mode, so a warm-pool instance bills its disks only.
STOPPED_MODE = "StopCharging"

#: Error codes worth another attempt besides every ``Throttling*`` code and every 5xx answer.
TRANSIENT_CODES = frozenset({
    "ServiceUnavailable", "InternalError", "UnknownError", "LastTokenProcessing", "OperationConflict",
})
#: Codes that mean "this type is not available in this zone now": try the next vswitch, then type.
CAPACITY_CODES = frozenset({
    "OperationDenied.NoStock", "Zone.NotOnSale", "Zone.NotOpen", "InvalidResourceType.NotSupported",
    "InvalidVSwitchId.IpNotEnough",
})
CAPACITY_PREFIXES = ("InvalidInstanceType.",)
#: Codes that mean a quota is used up: the refused group's types wait (``quota_groups``), others are tried.
QUOTA_CODES = frozenset({
    "InvalidAccountStatus.NotEnoughBalance", "Account.Arrearage", "OperationDenied.QuotaExceed",
})
QUOTA_PREFIXES = ("QuotaExceed",)
#: Codes ``DeleteInstances`` answers for ids ECS does not know (any more).
NOT_FOUND_CODES = frozenset({"InvalidInstanceId.NotFound", "InvalidInstanceId.NotExist"})


class EcsError(ProviderError):
    """An ECS API error that is not retried: ``code``, HTTP ``status`` and ``request_id`` from ECS."""

    def __init__(self, message: str, *, code: str, status: int | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.request_id = request_id


def is_transient(exc: BaseException) -> bool:
    """True for errors another attempt may cure: throttling, 5xx, connection failures."""
    if isinstance(exc, AlibabaCloudException):
        code = str(exc.code or "")
        return (isinstance(exc, ThrottlingException) or code.startswith("Throttling")
                or code in TRANSIENT_CODES or (exc.status_code or 0) >= 500)
    if isinstance(exc, UnretryableException):
        # The SDK wraps connection errors and timeouts (``RetryError``) this way.
        return isinstance(exc.inner_exception, RetryError | OSError)
    return False


def is_capacity(code: str) -> bool:
    """True for codes that send a launch on to the next vswitch (zone) or instance type."""
    return code in CAPACITY_CODES or code.startswith(CAPACITY_PREFIXES)


def is_quota(code: str) -> bool:
    """True for codes that mean the account may launch nothing more now."""
    return code in QUOTA_CODES or code.startswith(QUOTA_PREFIXES)


def ecs_client_token(client_token: str, instance_type: str, vswitch: str, amount: int, have: int) -> str:
    """The ECS ``ClientToken`` of one ``RunInstances``: equal exactly when the request is a retry.

    64 hex characters (ECS's limit is 64 ASCII characters).
    """
    material = "\0".join([client_token, instance_type, vswitch, str(amount), str(have)])
    return hashlib.sha256(material.encode()).hexdigest()


def parse_creation_time(value: str | None) -> datetime | None:
    """ECS's ``CreationTime`` (``2024-05-01T08:30Z``, to the minute, UTC) as an aware datetime."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _split_endpoint(endpoint: str | None, protocol: str) -> tuple[str | None, str]:
    """``(host[:port], protocol)`` from the config: ``http://127.0.0.1:8080`` sets both."""
    if endpoint and "://" in endpoint:
        parts = urlsplit(endpoint)
        return parts.netloc, parts.scheme
    return endpoint, protocol


class AlibabaProvider:
    """Launches and terminates a pool's ECS instances; see the module docstring.

    ``budget`` bounds each operation's retries (default: ``config.max_attempts`` attempts per
    request, 30 s per operation); ``page_size`` is ``MaxResults`` of each describe;
    ``sleep`` and ``clock`` are injectable for tests; ``offers`` pauses a (type, vswitch) that had
    no stock, and the types of a quota group that refused (30 s doubling to 10 min by default).
    """

    name = "alibaba"

    def __init__(
        self,
        config: AlibabaProviderConfig,
        *,
        budget: RetryBudget | None = None,
        page_size: int = MAX_PAGE_SIZE,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 20.0,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
        offers: OfferBackoff | None = None,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        self.config = config
        #: No-stock and quota refusals remembered between launches (``autoscaler.providers.offers``).
        self.offers = offers or OfferBackoff()
        self._budget = budget or RetryBudget(deadline_s=30.0, max_rounds=config.max_attempts)
        self._page_size = page_size
        self._clock: Clock = clock or SystemClock()
        self._sleep = sleep
        endpoint, protocol = _split_endpoint(config.endpoint, config.protocol)
        self._endpoint = endpoint
        sdk_config = openapi_models.Config(
            region_id=config.region,
            endpoint=endpoint,
            protocol=protocol,
            # The default chain: env ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET, profiles, the RAM role.
            credential=CredentialClient(),
            connect_timeout=int(connect_timeout_s * 1000),
            read_timeout=int(read_timeout_s * 1000),
        )
        self._client = EcsClient(sdk_config)

    @classmethod
    def for_policy(cls, policy: PoolPolicy, **options: Any) -> AlibabaProvider:
        """The provider a pool policy with ``provider.kind: alibaba`` describes.

        Raises ``PolicyError`` when the policy names another provider kind. ``options`` go to the
        constructor (``budget``, ``page_size``, timeouts).
        """
        if not isinstance(policy.provider, AlibabaProviderConfig):
            raise PolicyError(f"pool {policy.pool} uses the {policy.provider.kind!r} provider, not 'alibaba'")
        return cls(policy.provider, **options)

    def __repr__(self) -> str:
        # Deliberately names no credential (the provider holds none; the SDK resolves them per call).
        return (f"AlibabaProvider(region={self.config.region!r}, endpoint={self._endpoint!r}, "
                f"vswitches={self.config.vswitches!r})")

    # ----------------------------------------------------------------------------- protocol
    def list_instances(self, pool: str) -> list[Instance]:
        """Every ECS instance tagged with ``pool`` and managed by the autoscaler (all pages), oldest first.

        A failure on any page raises (``TransientProviderError`` or ``EcsError``): never a partial list.
        """
        with self._budget.start("list_instances", sleep=self._sleep) as run:
            found = [self._to_instance(raw) for raw in self._describe(run, tags=self._pool_tags(pool))]
        return sorted(found, key=lambda i: (i.launched_at, i.id))

    def launch(self, spec: LaunchSpec, count: int, client_token: str) -> LaunchResult:
        """Make ``count`` instances tagged with ``client_token`` exist; return them and any shortfall.

        Raises ``InsufficientCapacity`` when no type has stock in any vswitch and ``QuotaExceeded``
        on a quota or account error, both only when no instance exists for the token;
        ``TransientProviderError`` when throttling or 5xx outlive the budget (instances launched
        before that are found by the next call with the same token); ``EcsError`` otherwise.
        """
        if count < 0:
            raise ValueError("count cannot be negative")
        if not spec.instance_types:
            raise ValueError("spec.instance_types is empty")
        tags = self._launch_tags(spec, client_token)
        user_data = self._user_data(spec)
        with self._budget.start("launch", sleep=self._sleep) as run:
            have = [i for i in (self._to_instance(raw) for raw in self._describe(
                run, tags={**self._pool_tags(spec.pool), TAG_LAUNCH_TOKEN: client_token}))
                if i.state in (CloudState.PENDING, CloudState.RUNNING, CloudState.STOPPED)]
            if len(have) >= count:
                return LaunchResult(instances=tuple(have))
            blocked = [self._quota_skip(instance_type) for instance_type in spec.instance_types]
            if all(blocked):
                # Every listed family's quota refused recently: not even the image is looked up.
                message = (f"ECS quota refused every type of {spec.pool} recently; no RunInstances: "
                           + "; ".join(blocked))
                if not have:
                    raise QuotaExceeded(message)
                return LaunchResult(instances=tuple(have), shortfall="quota", notes=tuple(blocked))
            image = spec.image or self.image_for_model_version(spec.model_version, run=run)
            launched: list[tuple[str, str]] = []  # (instance id, instance type)
            notes: list[str] = []
            quota_error: EcsError | None = None
            quota_skipped = False
            quota_noted: set[str] = set()
            capacity_error: EcsError | None = None
            offer_paused = False
            # Types in the pool's order of preference, and for each type the vswitches (zones) in order.
            for instance_type, vswitch in itertools.product(spec.instance_types, self.config.vswitches):
                if count - len(have) - len(launched) <= 0:
                    break
                # Checked per offer, also after a refusal earlier in this launch: a family whose
                # quota just refused is skipped in its other zones and types, other families are not.
                if skip := self._quota_skip(instance_type):
                    quota_skipped = True
                    if instance_type not in quota_noted:  # one note per type, none after its own refusal
                        quota_noted.add(instance_type)
                        notes.append(skip)
                    continue
                if (left := self.offers.paused_for(instance_type, vswitch)) > 0:
                    offer_paused = True
                    notes.append(f"{instance_type} in {vswitch}: skipped for {left:.0f} s more after "
                                 f"{self.offers.why(instance_type, vswitch)}")
                    continue
                while (need := count - len(have) - len(launched)) > 0:
                    amount = min(need, MAX_BATCH)
                    try:
                        ids = self._run_instances(run, spec, image, instance_type, vswitch, amount, tags,
                                                  user_data, client_token, have=len(have) + len(launched))
                    except EcsError as err:
                        if is_capacity(err.code):
                            notes.append(f"{instance_type} in {vswitch}: {err.code}")
                            capacity_error = err
                            self.offers.no_stock(instance_type, vswitch, err.code)
                            logger.warning("ECS has no %s in %s for pool %s (%s); trying the next option",
                                           instance_type, vswitch, spec.pool, err.code)
                            break
                        if is_quota(err.code):
                            group = alibaba_refused_group(instance_type, err.code)
                            notes.append(f"{instance_type} in {vswitch}: {err.code} (quota group {group!r})")
                            quota_error = err
                            quota_noted.add(instance_type)
                            pause = self.offers.quota(group, f"{err.code} for {instance_type} in {vswitch}")
                            logger.warning("ECS quota group %r refused pool %s (%s for %s); its types are "
                                           "not asked for %.0f s, other groups are tried", group, spec.pool,
                                           err.code, instance_type, pause)
                            break
                        raise
                    launched.extend((iid, instance_type) for iid in ids)
                    if ids:
                        self.offers.served(instance_type, vswitch, alibaba_quota_groups(instance_type))
                    if len(ids) < amount:
                        notes.append(f"{instance_type} in {vswitch}: {len(ids)} of {amount} in stock")
                        break
            new = self._launched_instances(run, launched, spec, image, client_token, tags)
        instances = tuple(have) + tuple(new)
        if len(instances) >= count:
            return LaunchResult(instances=instances, notes=tuple(notes))
        quota_blocked = quota_error is not None or quota_skipped
        if quota_blocked and capacity_error is None and not offer_paused:
            if not instances:
                raise QuotaExceeded(f"ECS quota blocks launching for pool {spec.pool}: {'; '.join(notes)}") \
                    from quota_error
            return LaunchResult(instances=instances, shortfall="quota", notes=tuple(notes))
        if not instances:
            raise InsufficientCapacity(
                f"no stock for pool {spec.pool} in any of {list(spec.instance_types)} × "
                f"{self.config.vswitches}: {'; '.join(notes)}",
                instance_type=spec.instance_types[-1],
            ) from capacity_error
        return LaunchResult(instances=instances, shortfall="quota" if quota_blocked else "capacity",
                            notes=tuple(notes))

    def _quota_skip(self, instance_type: str) -> str:
        """Why ``instance_type`` is not asked now (a quota group of it is paused), or ``""``."""
        groups = alibaba_quota_groups(instance_type)
        if (left := self.offers.quota_paused_for(groups)) <= 0:
            return ""
        return f"{instance_type}: skipped for {left:.0f} s more after {self.offers.quota_why(groups)}"

    def terminate(self, instance_ids: Sequence[str]) -> dict[str, TerminateOutcome]:
        """Release each instance (``Force=true``), reporting ids ECS no longer knows as ALREADY_GONE."""
        ids = list(dict.fromkeys(instance_ids))
        outcomes: dict[str, TerminateOutcome] = {}
        if not ids:
            return outcomes
        with self._budget.start("terminate", sleep=self._sleep) as run:
            for start in range(0, len(ids), MAX_BATCH):
                batch = ids[start:start + MAX_BATCH]
                present = {raw.instance_id for raw in self._describe(run, ids=batch)}
                for iid in batch:
                    if iid not in present:
                        outcomes[iid] = TerminateOutcome.ALREADY_GONE
                live = [iid for iid in batch if iid in present]
                if live:
                    self._delete(run, live, outcomes)
        logger.info("ECS terminate: %s", {iid: outcome.value for iid, outcome in outcomes.items()})
        return {iid: outcomes[iid] for iid in ids}

    def stop(self, instance_ids: Sequence[str]) -> dict[str, StopOutcome]:
        """``StopInstances`` in economical mode for each pending or running id; see the protocol."""
        statuses, ids = self._statuses(instance_ids, "stop")
        outcomes: dict[str, StopOutcome] = {}
        to_stop: list[str] = []
        for iid in ids:
            status = statuses.get(iid)
            if status in ("Pending", "Starting", "Running"):
                to_stop.append(iid)
            elif status == "Stopping":
                outcomes[iid] = StopOutcome.STOPPING
            elif status == "Stopped":
                outcomes[iid] = StopOutcome.ALREADY_STOPPED
            else:
                outcomes[iid] = StopOutcome.ALREADY_GONE
        with self._budget.start("stop", sleep=self._sleep) as run:
            for start in range(0, len(to_stop), MAX_BATCH):
                batch = to_stop[start:start + MAX_BATCH]
                request = ecs_models.StopInstancesRequest(
                    region_id=self.config.region, instance_id=batch, stopped_mode=STOPPED_MODE,
                    force_stop=False, batch_optimization="SuccessFirst",
                )
                stop = functools.partial(self._client.stop_instances, request)
                for iid, code, message in self._power_results(run, "StopInstances", batch, stop):
                    if code == "200":
                        outcomes[iid] = StopOutcome.STOPPING
                    elif code in NOT_FOUND_CODES:
                        outcomes[iid] = StopOutcome.ALREADY_GONE
                    else:
                        raise EcsError(f"ECS StopInstances({iid}) failed: {code}: {message}", code=code)
        logger.info("ECS stop: %s", {iid: o.value for iid, o in outcomes.items()})
        return {iid: outcomes[iid] for iid in ids}

    def start(self, instance_ids: Sequence[str]) -> dict[str, StartOutcome]:
        """``StartInstances`` for each stopped id; no stock is NO_CAPACITY (or ``InsufficientCapacity``)."""
        statuses, ids = self._statuses(instance_ids, "start")
        outcomes: dict[str, StartOutcome] = {}
        to_start: list[str] = []
        for iid in ids:
            status = statuses.get(iid)
            if status == "Stopped":
                to_start.append(iid)
            elif status in ("Pending", "Starting", "Running"):
                outcomes[iid] = StartOutcome.ALREADY_RUNNING
            elif status == "Stopping":
                raise ProviderError(f"ECS instance {iid} is still stopping; start it once it has stopped")
            else:
                outcomes[iid] = StartOutcome.ALREADY_GONE
        no_stock: list[str] = []
        with self._budget.start("start", sleep=self._sleep) as run:
            for start in range(0, len(to_start), MAX_BATCH):
                batch = to_start[start:start + MAX_BATCH]
                request = ecs_models.StartInstancesRequest(
                    region_id=self.config.region, instance_id=batch, batch_optimization="SuccessFirst",
                )
                start_call = functools.partial(self._client.start_instances, request)
                for iid, code, message in self._power_results(run, "StartInstances", batch, start_call):
                    if code == "200":
                        outcomes[iid] = StartOutcome.STARTING
                    elif code in NOT_FOUND_CODES:
                        outcomes[iid] = StartOutcome.ALREADY_GONE
                    elif is_capacity(code):
                        outcomes[iid] = StartOutcome.NO_CAPACITY
                        no_stock.append(f"{iid}: {code}")
                    else:
                        raise EcsError(f"ECS StartInstances({iid}) failed: {code}: {message}", code=code)
        if no_stock and not any(outcomes.get(iid) == StartOutcome.STARTING for iid in to_start):
            raise InsufficientCapacity(f"no ECS stock to start {'; '.join(no_stock)}")
        logger.info("ECS start: %s", {iid: o.value for iid, o in outcomes.items()})
        return {iid: outcomes[iid] for iid in ids}

    def _statuses(self, instance_ids: Sequence[str], what: str) -> tuple[dict[str, str], list[str]]:
        """The ECS status of each id that exists; refuses instances the autoscaler does not manage."""
        ids = list(dict.fromkeys(instance_ids))
        statuses: dict[str, str] = {}
        foreign: list[str] = []
        if not ids:
            return statuses, ids
        with self._budget.start(f"{what} look-up", sleep=self._sleep) as run:
            for start in range(0, len(ids), MAX_BATCH):
                for raw in self._describe(run, ids=ids[start:start + MAX_BATCH]):
                    instance = self._to_instance(raw)
                    statuses[instance.id] = str(raw.status)
                    if instance.tags.get(TAG_MANAGED_BY) != MANAGED_BY_VALUE:
                        foreign.append(instance.id)
        if foreign:
            raise ProviderError(f"refusing to {what} instances not managed by {MANAGED_BY_VALUE}: "
                                f"{', '.join(sorted(foreign))}")
        return statuses, ids

    def _power_results(self, run: BudgetRun, action: str, batch: list[str],
                       fn: Callable[[], Any]) -> list[tuple[str, str, str]]:
        """``(instance id, code, message)`` per id of a ``SuccessFirst`` stop or start."""
        body = self._call(run, action, fn).body
        answers = body.instance_responses.instance_response if body.instance_responses else None
        by_id = {str(a.instance_id): (str(a.code or ""), str(a.message or "")) for a in answers or []}
        # An id ECS left out of the answer was not acted on: report it as not found rather than guess.
        return [(iid, *by_id.get(iid, ("InvalidInstanceId.NotFound", "not in the answer"))) for iid in batch]

    # ----------------------------------------------------------------------------- images
    def image_for_model_version(self, model_version: str, *, run: BudgetRun | None = None) -> str:
        """The newest available custom image tagged ``autoscaler:model-version=<model_version>``.

        Used by ``launch`` when ``spec.image`` is empty (a policy's
        ``image.lookup_by_model_version``). Raises ``ProviderError`` when no image carries the tag.
        """
        if run is None:
            with self._budget.start("image lookup", sleep=self._sleep) as own:
                return self.image_for_model_version(model_version, run=own)
        request = ecs_models.DescribeImagesRequest(
            region_id=self.config.region, image_owner_alias="self", status="Available",
            page_size=MAX_PAGE_SIZE,
            tag=[ecs_models.DescribeImagesRequestTag(key=TAG_MODEL_VERSION, value=model_version)],
        )
        body = self._call(run, "DescribeImages", lambda: self._client.describe_images(request)).body
        images = list(body.images.image or []) if body.images else []
        if not images:
            raise ProviderError(f"no available ECS image tagged {TAG_MODEL_VERSION}={model_version} "
                                f"in {self.config.region}")
        oldest = datetime.min.replace(tzinfo=UTC)
        newest = max(images, key=lambda img: parse_creation_time(img.creation_time) or oldest)
        return str(newest.image_id)

    # ----------------------------------------------------------------------------- requests
    def _call(self, run: BudgetRun, action: str, fn: Callable[[], T]) -> T:
        """``fn()`` under the budget, with SDK errors turned into this package's errors."""
        try:
            return run.call(fn, is_transient=is_transient, what=action)
        except TransientProviderError:  # the budget ran out on a transient error: already typed
            raise
        except AlibabaCloudException as exc:
            code = str(exc.code or "Unknown")
            if code == "InvalidCredentials":
                raise ProviderError(_NO_CREDENTIALS) from exc
            raise EcsError(f"ECS {action} failed: {code} (HTTP {exc.status_code}): {exc.message}",
                           code=code, status=exc.status_code, request_id=exc.request_id) from exc
        except UnretryableException as exc:
            if isinstance(exc.inner_exception, CredentialException):
                raise ProviderError(_NO_CREDENTIALS) from exc
            raise ProviderError(f"ECS {action} failed: {exc}") from exc
        except (TeaException, CredentialException) as exc:
            raise ProviderError(f"ECS {action} failed: {exc}") from exc

    def _describe(self, run: BudgetRun, *, tags: Mapping[str, str] | None = None,
                  ids: Sequence[str] | None = None) -> Iterator[Any]:
        """Every ``DescribeInstances`` result matching ``tags`` (all of them) and ``ids``, page by page."""
        tag_filter = [ecs_models.DescribeInstancesRequestTag(key=k, value=v) for k, v in (tags or {}).items()]
        token: str | None = None
        seen_tokens: set[str] = set()
        for _ in range(MAX_PAGES):
            request = ecs_models.DescribeInstancesRequest(
                region_id=self.config.region, max_results=self._page_size, next_token=token,
                tag=tag_filter or None, instance_ids=json.dumps(list(ids)) if ids is not None else None,
            )
            describe = functools.partial(self._client.describe_instances, request)
            body = self._call(run, "DescribeInstances", describe).body
            if body.instances and body.instances.instance:
                yield from body.instances.instance
            token = body.next_token or None
            if token is None:
                return
            if token in seen_tokens:
                raise ProviderError(f"ECS DescribeInstances returned the page token {token!r} twice")
            seen_tokens.add(token)
        raise ProviderError(f"ECS DescribeInstances did not finish within {MAX_PAGES} pages")

    def _run_instances(self, run: BudgetRun, spec: LaunchSpec, image: str, instance_type: str,
                       vswitch: str, amount: int, tags: Mapping[str, str], user_data: str | None,
                       client_token: str, *, have: int) -> list[str]:
        """One ``RunInstances`` of up to ``amount`` (at most 100) instances; returns the ids ECS made."""
        request = ecs_models.RunInstancesRequest(
            region_id=self.config.region,
            image_id=image,
            instance_type=instance_type,
            v_switch_id=vswitch,
            security_group_id=self.config.security_group,
            amount=amount,
            # Whatever stock the zone has: the next vswitch is asked for the rest.
            min_amount=1,
            client_token=ecs_client_token(client_token, instance_type, vswitch, amount, have),
            instance_name=f"autoscaler-{spec.pool}",
            ram_role_name=self.config.ram_role,
            key_pair_name=self.config.key_pair,
            user_data=user_data,
            tag=[ecs_models.RunInstancesRequestTag(key=k, value=v) for k, v in tags.items()],
        )
        body = self._call(run, "RunInstances", lambda: self._client.run_instances(request)).body
        ids = [str(i) for i in (body.instance_id_sets.instance_id_set or [])] if body.instance_id_sets else []
        logger.info("ECS launched %d of %d %s in %s for pool %s", len(ids), amount, instance_type, vswitch,
                    spec.pool)
        return ids

    def _launched_instances(self, run: BudgetRun, launched: Sequence[tuple[str, str]], spec: LaunchSpec,
                            image: str, client_token: str, tags: Mapping[str, str]) -> list[Instance]:
        """The new instances as ECS describes them (PENDING placeholders for any not listed yet)."""
        if not launched:
            return []
        ids = [iid for iid, _ in launched]
        described: dict[str, Instance] = {}
        for start in range(0, len(ids), MAX_BATCH):
            for raw in self._describe(run, ids=ids[start:start + MAX_BATCH]):
                described[raw.instance_id] = self._to_instance(raw)
        now = self._clock.now()
        return [
            described.get(iid) or Instance(
                id=iid, pool=spec.pool, instance_type=itype, model_version=spec.model_version,
                launch_token=client_token, launched_at=now, state=CloudState.PENDING, port=spec.port,
                image=image, tags=dict(tags),
            )
            for iid, itype in launched
        ]

    def _delete(self, run: BudgetRun, ids: list[str], outcomes: dict[str, TerminateOutcome]) -> None:
        """``DeleteInstances`` (forced); an id gone since the describe is ALREADY_GONE."""
        request = ecs_models.DeleteInstancesRequest(region_id=self.config.region, instance_id=ids, force=True)
        try:
            self._call(run, "DeleteInstances", lambda: self._client.delete_instances(request))
        except EcsError as err:
            if err.code not in NOT_FOUND_CODES:
                raise
            # One unknown id fails the whole batch on ECS: settle each id on its own.
            if len(ids) == 1:
                outcomes[ids[0]] = TerminateOutcome.ALREADY_GONE
                return
            for iid in ids:
                self._delete(run, [iid], outcomes)
            return
        for iid in ids:
            outcomes[iid] = TerminateOutcome.TERMINATING

    # ----------------------------------------------------------------------------- mapping
    @staticmethod
    def _pool_tags(pool: str) -> dict[str, str]:
        return {TAG_POOL: pool, TAG_MANAGED_BY: MANAGED_BY_VALUE}

    @staticmethod
    def _launch_tags(spec: LaunchSpec, client_token: str) -> dict[str, str]:
        """The pool's own tags plus the autoscaler's (which win on a clash), checked against ECS's rules."""
        tags = {**spec.tags, TAG_POOL: spec.pool, TAG_MODEL_VERSION: spec.model_version,
                TAG_LAUNCH_TOKEN: client_token, TAG_PORT: str(spec.port), TAG_MANAGED_BY: MANAGED_BY_VALUE}
        if len(tags) > MAX_TAGS:
            raise ProviderError(
                f"ECS allows {MAX_TAGS} tags per instance; pool {spec.pool} would need {len(tags)}"
            )
        for key, value in tags.items():
            if not key or len(key) > MAX_TAG_LENGTH or len(value) > MAX_TAG_LENGTH:
                raise ProviderError(f"ECS tag {key!r}: keys need 1..128 characters and values at most 128")
            if key.startswith(("aliyun", "acs:")):
                raise ProviderError(f"ECS tag {key!r}: keys cannot start with 'aliyun' or 'acs:'")
        return tags

    @staticmethod
    def _user_data(spec: LaunchSpec) -> str | None:
        if spec.user_data is None:
            return None
        encoded = base64.b64encode(spec.user_data.encode()).decode()
        if len(encoded) > MAX_USER_DATA:
            raise ProviderError(f"user data of pool {spec.pool} is {len(encoded)} bytes in base64; "
                                f"ECS accepts at most {MAX_USER_DATA}")
        return encoded

    def _to_instance(self, raw: Any) -> Instance:
        """One ``DescribeInstances`` result as an ``Instance``."""
        tag_list = raw.tags.tag if raw.tags and raw.tags.tag else []
        tags = {str(t.tag_key): str(t.tag_value or "") for t in tag_list if t.tag_key}
        state = ECS_STATES.get(raw.status)
        if state is None:
            # Not capacity, but still listed: the list must never hide a machine silently.
            logger.warning("ECS instance %s has unknown status %r; treating it as stopping", raw.instance_id,
                           raw.status)
            state = CloudState.STOPPING
        addresses: list[str] = []
        vpc = raw.vpc_attributes
        if vpc and vpc.private_ip_address and vpc.private_ip_address.ip_address:
            addresses = list(vpc.private_ip_address.ip_address)
        try:
            port = int(tags.get(TAG_PORT, DEFAULT_PORT))
        except ValueError:
            port = DEFAULT_PORT
        return Instance(
            id=str(raw.instance_id),
            pool=tags.get(TAG_POOL, ""),
            instance_type=str(raw.instance_type),
            model_version=tags.get(TAG_MODEL_VERSION, ""),
            launch_token=tags.get(TAG_LAUNCH_TOKEN, ""),
            launched_at=parse_creation_time(raw.creation_time) or self._clock.now(),
            state=state,
            address=addresses[0] if addresses else None,
            port=port,
            zone=raw.zone_id or None,
            image=raw.image_id or None,
            tags=tags,
        )


_NO_CREDENTIALS = (
    "no Alibaba Cloud credentials: the SDK's default chain (ALIBABA_CLOUD_ACCESS_KEY_ID and "
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET, the credentials profile, the instance's RAM role) found none"
)
