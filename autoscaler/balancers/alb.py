"""The AWS ALB balancer: the pool's nodes are the targets of one target group (boto3 ``elbv2``).

``apply`` makes the target group's registered targets exactly the backends' ``(instance id,
port)`` pairs: it reads the targets in force (``DescribeTargetHealth``), registers the missing ones
first and then deregisters the ones no longer wanted, so capacity never dips while a list changes.
Nothing is written when the list in force is already the wanted one.

Draining is the target group's own: a deregistered target stays ``draining`` for the group's
``deregistration_delay.timeout_seconds`` (``drain_seconds()``), during which the ALB sends it no
new request and lets requests in flight finish. Draining targets are not ``current``; listing one
again in ``apply`` registers it again.

What a target group cannot express (``UNSUPPORTED_FIELDS``): per-target weights, ``max_fails`` /
``fail_timeout`` (health checks are configured on the group), and ``backup`` (there is no standby
target; a backup backend is registered as an ordinary target and takes traffic like the
others). The contract suite is told so through ``UNSUPPORTED_FIELDS``.

Only target groups of type ``instance`` are supported (targets named by instance id). ``current``
reports each target's address as its instance's private IP, read from EC2; a target whose instance
EC2 no longer knows (terminated long ago) receives no traffic and is not reported.

Every API error, and throttling beyond the retry budget, raises ``BalancerError`` chained to the
botocore error. Credentials come from boto3's standard chain, as for the EC2 provider.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from autoscaler.domain import Backend
from autoscaler.errors import BalancerError, TransientProviderError
from autoscaler.policy.model import AlbBalancerConfig
from autoscaler.providers.aws import is_transient_aws_error, make_client
from autoscaler.providers.retry import BudgetRun, RetryBudget

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_elbv2.client import ElasticLoadBalancingv2Client
    from mypy_boto3_elbv2.type_defs import TargetDescriptionTypeDef

T = TypeVar("T")

#: ``Backend`` fields a target group does not keep (see the module docstring).
UNSUPPORTED_FIELDS = frozenset({"weight", "max_fails", "fail_timeout_s", "backup"})

#: Target states that are not in force: the ALB sends them no new requests.
DRAINING_STATES = frozenset({"draining", "unhealthy.draining"})

#: AWS's default deregistration delay, used when the group does not report the attribute.
DEFAULT_DEREGISTRATION_DELAY_S = 300

_DELAY_ATTRIBUTE = "deregistration_delay.timeout_seconds"
_ID_BATCH = 200  # values per EC2 filter

Target = tuple[str, int]


class AlbBalancer:
    """A ``Balancer`` over one ALB target group (see the module docstring).

    ``session`` is the boto3 session for credentials (default: the standard chain); ``budget``
    bounds each call of ``apply``/``current``/``drain_seconds``; ``max_attempts`` is botocore's
    per-request attempt count. ``changes`` counts the register/deregister requests this object
    has made. ``apply`` is serialised within the process.
    """

    name = "alb"

    def __init__(
        self,
        config: AlbBalancerConfig,
        *,
        session: boto3.Session | None = None,
        budget: RetryBudget | None = None,
        max_attempts: int = 5,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 20.0,
    ) -> None:
        self.config = config
        self.budget = budget or RetryBudget()
        session = session or boto3.Session()
        self._elb: ElasticLoadBalancingv2Client = make_client(
            session, "elbv2", region=config.region, endpoint_url=config.endpoint_url,
            max_attempts=max_attempts, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)
        self._ec2: EC2Client = make_client(
            session, "ec2", region=config.region, endpoint_url=config.endpoint_url,
            max_attempts=max_attempts, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)
        self._lock = threading.Lock()
        self._checked_type = False
        #: Register/deregister requests made so far.
        self.changes = 0

    @property
    def elb_client(self) -> ElasticLoadBalancingv2Client:
        """The boto3 ELBv2 client (for event hooks in tests and tools)."""
        return self._elb

    @property
    def ec2_client(self) -> EC2Client:
        """The boto3 EC2 client used to resolve instance addresses."""
        return self._ec2

    # ----------------------------------------------------------------------------- Balancer protocol
    def current(self) -> list[Backend]:
        """The registered, non-draining targets, with their instances' private IPs, sorted."""
        with self.budget.start("alb.current") as run:
            targets = self._targets(run)
            addresses = self._addresses(run, sorted({iid for iid, _ in targets}))
        return [Backend(address=addresses[iid], port=port, instance_id=iid)
                for iid, port in sorted(targets) if iid in addresses]

    def apply(self, backends: Sequence[Backend]) -> None:
        """Make the target group's targets exactly ``backends``' (instance id, port) pairs."""
        wanted: set[Target] = set()
        for backend in backends:
            if not backend.instance_id or not 0 < backend.port < 65536:
                raise BalancerError(f"target group {self.config.target_group_arn} cannot take backend "
                                    f"{backend.instance_id!r} on port {backend.port}")
            wanted.add((backend.instance_id, backend.port))
        with self._lock, self.budget.start("alb.apply") as run:
            in_force = self._targets(run)
            to_add = sorted(wanted - in_force)
            to_remove = sorted(in_force - wanted)
            arn = self.config.target_group_arn
            # Register first: while the list changes, the old targets keep serving.
            if to_add:
                self._call(run, "RegisterTargets",
                           lambda: self._elb.register_targets(TargetGroupArn=arn, Targets=_described(to_add)))
                self.changes += 1
            if to_remove:
                self._call(run, "DeregisterTargets", lambda: self._elb.deregister_targets(
                    TargetGroupArn=arn, Targets=_described(to_remove)))
                self.changes += 1

    # ------------------------------------------------------------------------------------- draining
    def drain_seconds(self) -> int:
        """The group's deregistration delay: how long a removed target may finish its requests."""
        arn = self.config.target_group_arn
        with self.budget.start("alb.drain_seconds") as run:
            reply = self._call(run, "DescribeTargetGroupAttributes",
                               lambda: self._elb.describe_target_group_attributes(TargetGroupArn=arn))
        for attribute in reply.get("Attributes", []):
            if attribute.get("Key") == _DELAY_ATTRIBUTE:
                try:
                    return int(attribute.get("Value", ""))
                except ValueError as exc:
                    raise BalancerError(f"{arn}: unreadable {_DELAY_ATTRIBUTE} "
                                        f"{attribute.get('Value')!r}") from exc
        return DEFAULT_DEREGISTRATION_DELAY_S

    # -------------------------------------------------------------------------------------- helpers
    def _call(self, run: BudgetRun, what: str, fn: Callable[[], T]) -> T:
        try:
            return run.call(fn, is_transient=is_transient_aws_error, what=what)
        except (ClientError, BotoCoreError, TransientProviderError) as exc:
            raise BalancerError(f"ELBv2 {what} failed for {self.config.target_group_arn}: {exc}") from exc

    def _targets(self, run: BudgetRun) -> set[Target]:
        self._check_type(run)
        arn = self.config.target_group_arn
        reply = self._call(run, "DescribeTargetHealth",
                           lambda: self._elb.describe_target_health(TargetGroupArn=arn))
        targets: set[Target] = set()
        for description in reply.get("TargetHealthDescriptions", []):
            target = description.get("Target", {})
            state = description.get("TargetHealth", {}).get("State", "")
            if "Id" in target and state not in DRAINING_STATES:
                targets.add((target["Id"], int(target.get("Port", 0))))
        return targets

    def _check_type(self, run: BudgetRun) -> None:
        if self._checked_type:
            return
        arn = self.config.target_group_arn
        reply = self._call(run, "DescribeTargetGroups",
                           lambda: self._elb.describe_target_groups(TargetGroupArns=[arn]))
        kinds = {group.get("TargetType", "instance") for group in reply.get("TargetGroups", [])}
        if kinds != {"instance"}:
            raise BalancerError(f"target group {arn} has target type {sorted(kinds)}; only 'instance' "
                                "target groups are supported")
        self._checked_type = True

    def _addresses(self, run: BudgetRun, instance_ids: list[str]) -> dict[str, str]:
        addresses: dict[str, str] = {}
        paginator = self._ec2.get_paginator("describe_instances")
        for start in range(0, len(instance_ids), _ID_BATCH):
            batch = instance_ids[start:start + _ID_BATCH]

            def pages(batch: list[str] = batch) -> dict[str, str]:
                found: dict[str, str] = {}
                for page in paginator.paginate(Filters=[{"Name": "instance-id", "Values": batch}]):
                    for reservation in page.get("Reservations", []):
                        for instance in reservation.get("Instances", []):
                            if instance.get("PrivateIpAddress"):
                                found[instance["InstanceId"]] = instance["PrivateIpAddress"]
                return found

            addresses.update(self._call(run, "EC2 DescribeInstances", pages))
        return addresses


def _described(targets: Sequence[Target]) -> list[TargetDescriptionTypeDef]:
    return [{"Id": iid, "Port": port} for iid, port in targets]
