"""Cloud faults on EC2 (moto in server mode, boto3's real retry path): throttling and 5xx on a seeded
third of calls, replies lost after the request ran, no stock and quota errors, with the controller
ticking a pool up and down."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from cloud_fault_support import CloudRig, make_policy

from autoscaler.domain import TAG_POOL, IntentKind
from autoscaler.policy.model import AwsProviderConfig
from autoscaler.providers.aws import AwsProvider
from autoscaler.providers.offers import OfferBackoff
from autoscaler.providers.retry import RetryBudget
from autoscaler.testing import moto_server as moto_fixtures
from autoscaler.testing.moto_server import (
    Ec2Sandbox,
    RequestFaults,
    SeededEc2Faults,
    aws_error_response,
    bake_model_image,
)

moto_server = moto_fixtures.moto_server
moto = moto_fixtures.moto
ec2_sandbox = moto_fixtures.ec2_sandbox

TYPES = ("g5.xlarge", "g4dn.xlarge")
#: Short SDK pauses: the same code path as production, a test-sized budget.
BUDGET = RetryBudget(deadline_s=20.0, max_rounds=4, base_delay_s=0.05, max_delay_s=0.2)


def aws_rig(sandbox: Ec2Sandbox, types: tuple[str, ...] = TYPES, **options: Any) -> CloudRig:
    """A controller on an ``AwsProvider`` in the sandbox (5 botocore attempts per request) for a
    pool listing ``types`` in that order."""
    image = bake_model_image(sandbox, "fun-asr-nano-2512")
    subnets = ", ".join(sandbox.subnets)
    provider_yaml = (f"{{kind: aws, region: {sandbox.region}, endpoint_url: '{sandbox.endpoint_url}', "
                     f"subnets: [{subnets}], security_groups: [{sandbox.security_group}], max_attempts: 5}}")
    listed = ", ".join(f"{{name: {t}, streams: 10, price_per_hour: 1.0}}" for t in types)
    policy_for = make_policy(provider_yaml, image, listed)
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


def converges_without_duplicates(ec2_sandbox: Ec2Sandbox, *, seed: int, cycles: int, top: int) -> None:
    """Cycle the pool under a seeded third of failing calls; assert the counts (see the tests)."""
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
    # Only the retry budget running out may surface: "... still failing after N round(s) ...".
    assert all("still failing" in e or "Transient" in e for e in errors), errors


def capacity_answer(no_stock: set[tuple[str, str]]) -> Any:
    """A ``RequestFaults`` answer: ``InsufficientInstanceCapacity`` (HTTP 500, as EC2 sends it) for
    RunInstances of the listed (type, subnet) offers; everything else reaches moto."""
    def answer(_: int, params: dict[str, str]) -> Any:
        if (params.get("InstanceType"), params.get("SubnetId")) in no_stock:
            return aws_error_response("InsufficientInstanceCapacity",
                                      "We currently do not have sufficient capacity.", status=500)
        return None
    return answer


def rig_with_movable_offers(sandbox: Ec2Sandbox, types: tuple[str, ...] = TYPES) -> CloudRig:
    """An AWS rig whose offer backoff runs on the rig's clock (ticks 15 s apart, no waiting)."""
    rig = aws_rig(sandbox, types)
    assert isinstance(rig.provider, AwsProvider)
    rig.provider.offers = OfferBackoff(clock=lambda: rig.clock.now().timestamp())
    return rig


def test_no_stock_for_one_type_and_zone_launches_elsewhere_and_stops_asking(
    ec2_sandbox: Ec2Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """No g5 stock in the first subnet: the launch takes g5 from the second subnet in the same tick
    (the refusal logged as a warning), and the empty offer is not asked again on the next launch
    while its pause lasts."""
    caplog.set_level(logging.WARNING, logger="autoscaler.providers.aws")
    rig = rig_with_movable_offers(ec2_sandbox)
    assert isinstance(rig.provider, AwsProvider)
    empty = (TYPES[0], ec2_sandbox.subnets[0])
    with RequestFaults(rig.provider.client, "RunInstances", capacity_answer({empty})) as faults:
        rig.min_nodes = 2
        rig.tick()
        rig.min_nodes = 4
        rig.tick()
    asked = [(c["InstanceType"], c["SubnetId"]) for c in faults.calls]
    print(f"\nRunInstances asked: {asked}")
    assert len(rig.outcomes[0].launched) == 2 and len(rig.outcomes[1].launched) == 2
    assert asked.count(empty) == 1, asked
    assert any("InsufficientInstanceCapacity" in r.getMessage() and empty[1] in r.getMessage()
               for r in caplog.records), caplog.records
    zones = {i["InstanceId"]: (i["InstanceType"], i["SubnetId"])
             for r in ec2_sandbox.client("ec2").describe_instances()["Reservations"] for i in r["Instances"]
             if i["State"]["Name"] != "terminated"}
    assert all(offer == (TYPES[0], ec2_sandbox.subnets[1]) for offer in zones.values() if offer[0] in TYPES)


@pytest.mark.long
@pytest.mark.parametrize("code", ["InsufficientInstanceCapacity", "VcpuLimitExceeded",
                                  "InstanceLimitExceeded"])
def test_an_hour_of_refusals_costs_a_handful_of_requests(ec2_sandbox: Ec2Sandbox, code: str) -> None:
    """240 ticks (an hour at 15 s) of refusals: every tick reports it and the controller keeps
    ticking, at most one round of requests per 10 minutes once the pause is at its ceiling, and the
    pool fills once stock is back. (The default suite runs the same loop for 20 ticks against the
    ECS endpoint: tests/hardening/test_cloud_faults_alibaba.py.)"""
    refusals_backed_off(ec2_sandbox, code, ticks=240)


def refusals_backed_off(ec2_sandbox: Ec2Sandbox, code: str, *, ticks: int) -> None:
    """Refuse every RunInstances with ``code`` for ``ticks`` ticks, then lift it; assert (see the tests)."""
    rig = rig_with_movable_offers(ec2_sandbox)
    assert isinstance(rig.provider, AwsProvider)
    status = 500 if code == "InsufficientInstanceCapacity" else 400

    def refuse(_: int, params: dict[str, str]) -> Any:
        return aws_error_response(code, f"injected {code}", status=status)

    rig.min_nodes = 2
    per_tick: list[int] = []
    with RequestFaults(rig.provider.client, "RunInstances", refuse) as faults:
        for _ in range(ticks):
            before = len(faults.calls)
            outcome = rig.tick()
            per_tick.append(len(faults.calls) - before)
            assert outcome.launched == [] and outcome.errors, outcome
            word = "quota" if code != "InsufficientInstanceCapacity" else "capacity"
            assert any(word in e.lower() for e in outcome.errors), outcome.errors
    offers = len(TYPES) * len(ec2_sandbox.subnets)
    rounds = sum(1 for n in per_tick if n)
    print(f"\n{code}: {ticks} ticks ({ticks // 4} min), RunInstances per tick {per_tick}; total "
          f"{sum(per_tick)} in {rounds} rounds (the first tick asked {per_tick[0]}, i.e. "
          f"{ticks * per_tick[0]} if every tick asked)")
    # No stock: every (type, subnet); InstanceLimitExceeded is per type: each type once; the G-class
    # vCPU quota covers both listed types (g5, g4dn): one request.
    first_round = {"InsufficientInstanceCapacity": offers, "InstanceLimitExceeded": len(TYPES)}
    assert per_tick[0] == first_round.get(code, 1)
    # Rounds at 0, 30, 90, 210, 450 s, then every 600 s (the pause doubles from 30 s up to 10 min).
    assert rounds <= 5 + max(0, (ticks * 15 - 450) // 600 + 1), per_tick
    assert all(n in (0, per_tick[0]) for n in per_tick), per_tick
    recovered = 0
    while len(rig.serving()) < 2:  # stock is back: within the current pause (at most 10 min = 40 ticks)
        recovered += 1
        assert recovered <= 42, rig.outcomes[-1].errors
        rig.tick()
    print(f"{code}: stock back, pool at 2 after {recovered} ticks")


def test_a_class_at_quota_launches_the_other_class_and_is_not_asked_until_its_pause_ends(
    ec2_sandbox: Ec2Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """A pool listing g5.xlarge then p4d.24xlarge with the G and VT vCPU quota used up: the same tick
    launches p4d after one refused g5 request (logged with the group); the next tick, inside the
    30 s pause, does not ask g5; with the P quota used up too, nothing is sent while both pauses
    last and every tick reports the quota, naming both classes."""
    caplog.set_level(logging.WARNING, logger="autoscaler.providers.aws")
    g5, p4d = "g5.xlarge", "p4d.24xlarge"
    rig = rig_with_movable_offers(ec2_sandbox, (g5, p4d))
    assert isinstance(rig.provider, AwsProvider)
    refused: set[str] = {g5}

    def quota(_: int, params: dict[str, str]) -> Any:
        if params.get("InstanceType") in refused:
            return aws_error_response("VcpuLimitExceeded", "You have requested more vCPU capacity than your "
                                      "current vCPU limit allows for the instance bucket.")
        return None

    with RequestFaults(rig.provider.client, "RunInstances", quota) as faults:
        def asked() -> list[str]:
            return [c["InstanceType"] for c in faults.calls]

        rig.min_nodes = 2
        first = rig.tick()
        # moto launches MinCount (1) per request, so p4d is asked once per instance.
        assert asked() == [g5, p4d, p4d] and len(first.launched) == 2 and not first.errors, first
        # The refusal travels with the launch's record: its intent's result names the refused group.
        [launch] = [i for i in rig.store.intents("faults", tick_id=first.tick_id)
                    if i.kind == IntentKind.LAUNCH]
        assert any("VcpuLimitExceeded" in n and "'On-Demand G and VT vCPUs'" in n
                   for n in launch.result["notes"]), launch.result
        rig.min_nodes = 3
        second = rig.tick()
        assert asked() == [g5, p4d, p4d, p4d] and len(second.launched) == 1, second
        refused.add(p4d)
        rig.min_nodes = 4
        per_tick: list[list[str]] = []
        errors: list[str] = []
        for _ in range(8):
            before = len(asked())
            outcome = rig.tick()
            per_tick.append(asked()[before:])
            assert outcome.launched == [] and outcome.errors, outcome
            errors.extend(outcome.errors)
            assert any("quota" in e for e in outcome.errors), outcome.errors
    print(f"\nRunInstances per tick once both classes are at quota: {per_tick}")
    assert any("On-Demand G and VT vCPUs" in r.getMessage() for r in caplog.records), caplog.records
    assert any("On-Demand G and VT vCPUs" in e and "On-Demand P vCPUs" in e for e in errors), errors
    # Ticks 15 s apart; each class is asked exactly when its own pause ends (G: +30, +90 s;
    # P: +30, +60, +120 s), never inside it.
    assert per_tick == [[g5, p4d], [], [p4d], [], [g5], [], [p4d], []], per_tick
    launched = {i["InstanceType"] for r in ec2_sandbox.client("ec2").describe_instances()["Reservations"]
                for i in r["Instances"]}
    assert g5 not in launched and p4d in launched
