"""Cloud faults on EC2 (moto in server mode, boto3's real retry path): throttling and 5xx on a seeded
third of calls, replies lost after the request ran, no stock and quota errors, with the controller
ticking a pool up and down."""

from __future__ import annotations

from typing import Any

import pytest
from cloud_fault_support import CloudRig, make_policy

from autoscaler.domain import TAG_POOL
from autoscaler.policy.model import AwsProviderConfig
from autoscaler.providers.aws import AwsProvider
from autoscaler.providers.retry import RetryBudget
from autoscaler.testing import moto_server as moto_fixtures
from autoscaler.testing.moto_server import (
    Ec2Sandbox,
    SeededEc2Faults,
    bake_model_image,
)

moto_server = moto_fixtures.moto_server
moto = moto_fixtures.moto
ec2_sandbox = moto_fixtures.ec2_sandbox

TYPES = ("g5.xlarge", "g4dn.xlarge")
#: Short SDK pauses: the same code path as production, a test-sized budget.
BUDGET = RetryBudget(deadline_s=20.0, max_rounds=4, base_delay_s=0.05, max_delay_s=0.2)


def aws_rig(sandbox: Ec2Sandbox, **options: Any) -> CloudRig:
    """A controller on an ``AwsProvider`` in the sandbox (5 botocore attempts per request)."""
    image = bake_model_image(sandbox, "fun-asr-nano-2512")
    subnets = ", ".join(sandbox.subnets)
    provider_yaml = (f"{{kind: aws, region: {sandbox.region}, endpoint_url: '{sandbox.endpoint_url}', "
                     f"subnets: [{subnets}], security_groups: [{sandbox.security_group}], max_attempts: 5}}")
    types = ", ".join(f"{{name: {t}, streams: 10, price_per_hour: 1.0}}" for t in TYPES)
    policy_for = make_policy(provider_yaml, image, types)
    config = policy_for(0, 6).provider
    assert isinstance(config, AwsProviderConfig)
    return CloudRig(provider=AwsProvider(config, budget=BUDGET), policy_for=policy_for, **options)


def ever_launched(sandbox: Ec2Sandbox) -> dict[str, str]:
    """Every instance of the pool EC2 ever created (terminated ones included): id -> state."""
    pool_filter = [{"Name": f"tag:{TAG_POOL}", "Values": ["faults"]}]
    reply = sandbox.client("ec2").describe_instances(Filters=pool_filter)
    return {i["InstanceId"]: i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]}


def cycle_pool(rig: CloudRig, sandbox: Ec2Sandbox, cycles: int, top: int) -> tuple[list[int], list[int]]:
    """Take the pool 0 → top → 1, then 1 → top → 1 until ``cycles`` are done; return the ticks each
    leg took. Fails when a leg needs more than 8 ticks up or 10 down."""
    ups: list[int] = []
    downs: list[int] = []
    for cycle in range(cycles):
        rig.min_nodes = top
        ticks = 0
        while len(rig.serving()) < top:
            ticks += 1
            assert ticks <= 8, f"cycle {cycle}: no convergence to {top} in 8 ticks: {rig.outcomes[-1].errors}"
            rig.tick()
        ups.append(ticks)
        rig.min_nodes = 1  # the engine never drains the last serving node
        ticks = 0
        terminated = (top - 1) * (cycle + 1)
        while sorted(ever_launched(sandbox).values()).count("terminated") < terminated:
            ticks += 1
            assert ticks <= 10, f"cycle {cycle}: no convergence to 1 in 10 ticks: {rig.outcomes[-1].errors}"
            rig.tick(streams_per_node=0.0)
        downs.append(ticks)
    return ups, downs


def test_a_third_of_calls_failing_still_converges_without_duplicates(ec2_sandbox: Ec2Sandbox) -> None:
    """With throttling/5xx on a seeded third of EC2 calls (some answered after the request ran), the
    pool goes 0 → 3 → 1 within a bounded number of ticks per leg and EC2 created exactly 3 instances."""
    converges_without_duplicates(ec2_sandbox, seed=11, cycles=1, top=3)


@pytest.mark.long
@pytest.mark.parametrize("seed", range(21, 31))
def test_many_cycles_under_faults_never_launch_twice(ec2_sandbox: Ec2Sandbox, seed: int) -> None:
    """Ten seeds, three 0/1 → 5 → 1 cycles each under the same faults: bounded ticks, no duplicate."""
    converges_without_duplicates(ec2_sandbox, seed=seed, cycles=3, top=5)


def converges_without_duplicates(sandbox: Ec2Sandbox, *, seed: int, cycles: int, top: int) -> None:
    """Cycle the pool under a seeded third of failing calls; assert the counts (see the tests)."""
    ec2_sandbox = sandbox
    rig = aws_rig(ec2_sandbox)
    assert isinstance(rig.provider, AwsProvider)
    with SeededEc2Faults(rig.provider.client, rate=1 / 3, seed=seed, lost_reply_share=0.5) as faults:
        ups, downs = cycle_pool(rig, ec2_sandbox, cycles, top)
    launched = ever_launched(ec2_sandbox)
    errors = [e for o in rig.outcomes for e in o.errors]
    tally = faults.tally
    print(f"\nseed {seed}, {cycles} cycle(s): ticks up {ups}, down {downs}; EC2 requests {tally.requests}; "
          f"answered with a fault {tally.faults}; run but reply lost {tally.lost_replies}; "
          f"token replays {tally.replayed}; "
          f"instances created {len(launched)}; ticks with errors {sum(1 for o in rig.outcomes if o.errors)} "
          f"of {len(rig.outcomes)}")
    expected = top + (top - 1) * (cycles - 1)
    assert len(launched) == expected, launched
    assert sorted(launched.values()).count("running") == 1 and len(rig.serving()) == 1
    faulted = tally.total(tally.faults) + tally.total(tally.lost_replies)
    assert faulted >= 3 * cycles, "the injection must really have hit calls"
    if cycles > 1:
        assert tally.total(tally.lost_replies) >= 1, "a change whose reply was lost must be in the run"
    assert all("Transient" in e or "Budget" in e for e in errors), errors
