"""AlbBalancer against moto's ELBv2 and EC2 in server mode on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from autoscaler.balancers.alb import DEFAULT_DEREGISTRATION_DELAY_S, AlbBalancer
from autoscaler.domain import Backend
from autoscaler.errors import BalancerError
from autoscaler.policy.model import AlbBalancerConfig
from autoscaler.providers.retry import RetryBudget
from autoscaler.testing import moto_server as moto_fixtures
from autoscaler.testing.moto_server import (
    Ec2Sandbox,
    RequestFaults,
    aws_error_response,
    make_target_group,
    run_plain_instances,
)

# The shared moto fixtures, bound to this module's names so pytest finds them.
moto_server = moto_fixtures.moto_server
moto = moto_fixtures.moto
ec2_sandbox = moto_fixtures.ec2_sandbox

ELB_EVENTS = "elastic-load-balancing-v2"


@pytest.fixture
def target_group(ec2_sandbox: Ec2Sandbox) -> str:
    """An instance target group in the sandbox VPC."""
    return make_target_group(ec2_sandbox)


@pytest.fixture
def nodes(ec2_sandbox: Ec2Sandbox) -> list[Backend]:
    """Three backends on real (moto) instances, at their private IPs, port 7860."""
    started = run_plain_instances(ec2_sandbox, 3)
    return [Backend(address=ip, port=7860, instance_id=iid) for iid, ip in started]


@pytest.fixture
def make_balancer(ec2_sandbox: Ec2Sandbox, target_group: str) -> Callable[..., AlbBalancer]:
    """Build AlbBalancers on the target group (keywords go to the constructor)."""
    def make(arn: str | None = None, **options: Any) -> AlbBalancer:
        config = AlbBalancerConfig(kind="alb", target_group_arn=arn or target_group,
                                   region=ec2_sandbox.region, endpoint_url=ec2_sandbox.endpoint_url)
        return AlbBalancer(config, **options)

    return make


@pytest.fixture
def balancer(make_balancer: Callable[..., AlbBalancer]) -> AlbBalancer:
    """A balancer with the default budget."""
    return make_balancer()


def registered(sandbox: Ec2Sandbox, arn: str) -> set[tuple[str, int]]:
    """The (id, port) pairs ELBv2 itself reports for the group."""
    reply = sandbox.client("elbv2").describe_target_health(TargetGroupArn=arn)
    return {(d["Target"]["Id"], d["Target"]["Port"]) for d in reply["TargetHealthDescriptions"]}


def writes(balancer: AlbBalancer) -> tuple[RequestFaults, RequestFaults]:
    """Observers of the RegisterTargets and DeregisterTargets requests the balancer sends."""
    observe: Callable[[int, Any], None] = lambda n, _: None  # noqa: E731
    return (RequestFaults(balancer.elb_client, "RegisterTargets", observe),
            RequestFaults(balancer.elb_client, "DeregisterTargets", observe))


def test_apply_registers_instance_targets_and_current_reads_them_back(
    balancer: AlbBalancer, nodes: list[Backend], ec2_sandbox: Ec2Sandbox, target_group: str
) -> None:
    """apply registers (instance id, port) targets; current returns them with their private IPs."""
    wanted = [nodes[0], Backend(address=nodes[1].address, port=7861, instance_id=nodes[1].instance_id)]
    balancer.apply(wanted)
    assert registered(ec2_sandbox, target_group) == {(b.instance_id, b.port) for b in wanted}
    assert balancer.current() == sorted(wanted, key=lambda b: (b.instance_id, b.port))


def test_a_fresh_balancer_sees_the_list_in_force(
    make_balancer: Callable[..., AlbBalancer], nodes: list[Backend]
) -> None:
    """current() reads ELBv2 and EC2, not memory: a new object (a restart) reports the same list."""
    make_balancer().apply(nodes)
    assert {b.endpoint for b in make_balancer().current()} == {b.endpoint for b in nodes}


def test_same_list_sends_no_write(balancer: AlbBalancer, nodes: list[Backend]) -> None:
    """Applying the list in force (in any order) sends no RegisterTargets/DeregisterTargets request."""
    balancer.apply(nodes)
    register, deregister = writes(balancer)
    with register, deregister:
        balancer.apply(list(reversed(nodes)))
    assert register.calls == [] and deregister.calls == []
    assert balancer.changes == 1


def test_change_registers_new_before_deregistering_old(
    balancer: AlbBalancer, nodes: list[Backend], ec2_sandbox: Ec2Sandbox, target_group: str
) -> None:
    """Swapping one target registers the newcomer first, then deregisters the leaver."""
    balancer.apply(nodes[:2])
    order: list[str] = []
    client = balancer.elb_client
    register = RequestFaults(client, "RegisterTargets", lambda n, p: order.append("register"))
    deregister = RequestFaults(client, "DeregisterTargets", lambda n, p: order.append("deregister"))
    with register, deregister:
        balancer.apply([nodes[0], nodes[2]])
    assert order == ["register", "deregister"]
    assert register.calls[0]["Targets.member.1.Id"] == nodes[2].instance_id
    assert deregister.calls[0]["Targets.member.1.Id"] == nodes[1].instance_id
    assert registered(ec2_sandbox, target_group) == {(nodes[0].instance_id, 7860),
                                                     (nodes[2].instance_id, 7860)}


def test_draining_targets_are_not_current_and_are_not_deregistered_again(
    balancer: AlbBalancer, nodes: list[Backend]
) -> None:
    """A target ELBv2 reports as draining is left out of current() and of the deregistration list."""
    balancer.apply(nodes)
    draining = nodes[1].instance_id

    def mark_draining(parsed: dict[str, Any], **_: Any) -> None:
        for description in parsed.get("TargetHealthDescriptions", []):
            if description["Target"]["Id"] == draining:
                description["TargetHealth"] = {"State": "draining",
                                               "Reason": "Target.DeregistrationInProgress"}

    balancer.elb_client.meta.events.register(f"after-call.{ELB_EVENTS}.DescribeTargetHealth", mark_draining)
    assert {b.instance_id for b in balancer.current()} == {nodes[0].instance_id, nodes[2].instance_id}
    register, deregister = writes(balancer)
    with register, deregister:
        balancer.apply([nodes[0], nodes[2]])
    assert register.calls == [] and deregister.calls == []
    with RequestFaults(balancer.elb_client, "RegisterTargets", lambda n, _: None) as again:
        balancer.apply(nodes)  # listing the draining node again registers it again
    assert [c["Targets.member.1.Id"] for c in again.calls] == [draining]


def test_targets_of_unknown_instances_are_not_reported_and_get_removed(
    balancer: AlbBalancer, nodes: list[Backend], ec2_sandbox: Ec2Sandbox, target_group: str
) -> None:
    """A target whose instance EC2 does not know is not current; the next apply deregisters it."""
    ec2_sandbox.client("elbv2").register_targets(TargetGroupArn=target_group,
                                                 Targets=[{"Id": "i-0000000000deadbeef", "Port": 7860}])
    balancer.apply(nodes[:1])
    assert balancer.current() == nodes[:1]
    assert registered(ec2_sandbox, target_group) == {(nodes[0].instance_id, 7860)}


def test_empty_list_deregisters_everything(
    balancer: AlbBalancer, nodes: list[Backend], ec2_sandbox: Ec2Sandbox, target_group: str
) -> None:
    """apply([]) leaves the group with no target."""
    balancer.apply(nodes)
    balancer.apply([])
    assert balancer.current() == [] and registered(ec2_sandbox, target_group) == set()


def test_drain_seconds_is_the_deregistration_delay(
    balancer: AlbBalancer, ec2_sandbox: Ec2Sandbox, target_group: str
) -> None:
    """drain_seconds() is the group's deregistration_delay.timeout_seconds (AWS's 300 until changed)."""
    assert balancer.drain_seconds() == DEFAULT_DEREGISTRATION_DELAY_S
    ec2_sandbox.client("elbv2").modify_target_group_attributes(
        TargetGroupArn=target_group,
        Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "45"}])
    assert balancer.drain_seconds() == 45


def test_unknown_target_group_is_a_balancer_error(
    make_balancer: Callable[..., AlbBalancer], target_group: str, nodes: list[Backend]
) -> None:
    """Every call on a target group that does not exist raises BalancerError chained to ELBv2's error."""
    missing = make_balancer(target_group.replace("asr-nodes", "no-such-group"))
    for call in (missing.current, lambda: missing.apply(nodes), missing.drain_seconds):
        with pytest.raises(BalancerError) as caught:
            call()
        assert isinstance(caught.value.__cause__, ClientError)


def test_ip_target_groups_are_refused(
    make_balancer: Callable[..., AlbBalancer], ec2_sandbox: Ec2Sandbox, nodes: list[Backend]
) -> None:
    """A target group of type 'ip' is refused with BalancerError before anything is registered."""
    arn = make_target_group(ec2_sandbox, "asr-ip", target_type="ip")
    with pytest.raises(BalancerError, match="instance"):
        make_balancer(arn).apply(nodes)
    assert registered(ec2_sandbox, arn) == set()


def test_rejected_registration_keeps_the_old_list(
    balancer: AlbBalancer, nodes: list[Backend], ec2_sandbox: Ec2Sandbox, target_group: str
) -> None:
    """When RegisterTargets fails, nothing is deregistered: the previous list keeps serving."""
    balancer.apply(nodes[:2])
    answer = lambda n, _: aws_error_response("InvalidTarget", "not in the VPC", protocol="query")  # noqa: E731
    with RequestFaults(balancer.elb_client, "RegisterTargets", answer), pytest.raises(BalancerError):
        balancer.apply([nodes[2]])
    assert registered(ec2_sandbox, target_group) == {(b.instance_id, 7860) for b in nodes[:2]}


def test_throttling_is_retried_and_then_bounded(
    make_balancer: Callable[..., AlbBalancer], nodes: list[Backend]
) -> None:
    """A throttled RegisterTargets is retried; throttling without end becomes BalancerError in time."""
    budget = RetryBudget(deadline_s=1.5, max_rounds=5, base_delay_s=0.05)
    balancer = make_balancer(budget=budget, max_attempts=10)

    def throttle(first_only: bool) -> Callable[[int, Any], Any]:
        def answer(n: int, _: Any) -> Any:
            if first_only and n > 1:
                return None
            return aws_error_response("Throttling", "Rate exceeded", status=400, protocol="query")
        return answer

    with RequestFaults(balancer.elb_client, "RegisterTargets", throttle(first_only=True)) as faults:
        balancer.apply(nodes[:1])
    assert len(faults.calls) == 2 and balancer.current() == nodes[:1]
    started = time.monotonic()
    with RequestFaults(balancer.elb_client, "RegisterTargets", throttle(first_only=False)), \
            pytest.raises(BalancerError) as caught:
        balancer.apply(nodes)
    assert time.monotonic() - started < 1.5 + 1.5  # the deadline plus request latency
    assert caught.value.__cause__ is not None


def test_malformed_backend_is_refused(balancer: AlbBalancer, nodes: list[Backend]) -> None:
    """A backend without an instance id or with port 0 is refused before any request."""
    with pytest.raises(BalancerError):
        balancer.apply([Backend(address="10.0.0.1", port=0, instance_id=nodes[0].instance_id)])
    with pytest.raises(BalancerError):
        balancer.apply([Backend(address="10.0.0.1", port=7860, instance_id="")])
    assert balancer.changes == 0
