"""Cloud faults on Alibaba ECS (the real ``alibabacloud_ecs20140526`` SDK against the local ECS
endpoint): throttling and 5xx on a seeded third of requests, changes whose reply was lost, no stock
and quota errors, with the controller ticking a pool up and down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cloud_fault_support import CloudRig, make_policy

from autoscaler.domain import IntentKind
from autoscaler.policy.model import AlibabaProviderConfig
from autoscaler.providers.alibaba import AlibabaProvider
from autoscaler.providers.offers import OfferBackoff
from autoscaler.providers.retry import RetryBudget
from autoscaler.testing.ecs_endpoint import EcsEndpoint, dummy_credentials

GPU_A, GPU_B = "ecs.gn7i-c8g1.2xlarge", "ecs.gn6i-c4g1.xlarge"
VSWITCHES = {"vsw-h": "cn-hangzhou-h", "vsw-i": "cn-hangzhou-i"}
#: The provider's own backoff code path, with test-sized pauses (5 rounds per request).
BUDGET = RetryBudget(deadline_s=20.0, max_rounds=5, base_delay_s=0.05, max_delay_s=0.2)


@pytest.fixture
def ecs() -> Iterator[EcsEndpoint]:
    """A local ECS region with two vswitches in two zones that verifies every signature."""
    with dummy_credentials("LTAI-faults-test-id", "faults-test-secret-0123456789") as (key_id, secret), \
            EcsEndpoint(vswitches=VSWITCHES, credentials={key_id: secret}) as endpoint:
        yield endpoint


def ecs_rig(ecs: EcsEndpoint) -> CloudRig:
    """A controller on an ``AlibabaProvider`` of the endpoint; its offer backoff runs on the rig's clock."""
    provider_yaml = (f"{{kind: alibaba, region: {ecs.region}, endpoint: '{ecs.url}', "
                     f"vswitches: [{', '.join(VSWITCHES)}], security_group: sg-asr}}")
    types = ", ".join(f"{{name: {t}, streams: 10, price_per_hour: 1.0}}" for t in (GPU_A, GPU_B))
    policy_for = make_policy(provider_yaml, "m-asr", types)
    config = policy_for(0, 6).provider
    assert isinstance(config, AlibabaProviderConfig)
    provider = AlibabaProvider(config, budget=BUDGET)
    rig = CloudRig(provider=provider, policy_for=policy_for)
    provider.offers = OfferBackoff(clock=lambda: rig.clock.now().timestamp())
    return rig


def live(ecs: EcsEndpoint) -> int:
    """Instances of the region not being released."""
    return sum(1 for i in ecs.instances().values() if ecs.status_of(i.id) not in (None, "Stopping"))


def cycle(rig: CloudRig, ecs: EcsEndpoint, cycles: int, top: int) -> tuple[list[int], list[int]]:
    """0 → top → 1, then 1 → top → 1 for ``cycles``; the ticks each leg took (at most 8 up, 10 down)."""
    ups: list[int] = []
    downs: list[int] = []
    for n in range(cycles):
        rig.min_nodes, ticks = top, 0
        while len(rig.serving()) < top:
            ticks += 1
            assert ticks <= 8, f"cycle {n}: not at {top} after 8 ticks: {rig.outcomes[-1].errors}"
            rig.tick()
        ups.append(ticks)
        rig.min_nodes, ticks = 1, 0  # the engine never drains the last serving node
        while live(ecs) > 1:
            ticks += 1
            assert ticks <= 10, f"cycle {n}: not at 1 after 10 ticks: {rig.outcomes[-1].errors}"
            rig.tick(streams_per_node=0.0)
        downs.append(ticks)
    return ups, downs


def converges(ecs: EcsEndpoint, *, seed: int, cycles: int, top: int) -> None:
    """Cycle the pool with a seeded third of requests failing; no duplicate launch (see the tests)."""
    rig = ecs_rig(ecs)
    tally = ecs.inject_fraction(1 / 3, seed=seed, lost_reply_share=0.5)
    ups, downs = cycle(rig, ecs, cycles, top)
    ecs.clear_injections()
    print(f"\nseed {seed}, {cycles} cycle(s): ticks up {ups}, down {downs}; ECS requests {tally.requests}; "
          f"answered with a fault {tally.faults}; run but reply lost {tally.lost_replies}; instances created "
          f"{ecs.created_count()}; ticks with errors {sum(1 for o in rig.outcomes if o.errors)} of "
          f"{len(rig.outcomes)}: {[e for o in rig.outcomes for e in o.errors]}")
    assert ecs.created_count() == top + (top - 1) * (cycles - 1)
    assert live(ecs) == 1 and len(rig.serving()) == 1
    assert sum(tally.faults.values()) + sum(tally.lost_replies.values()) >= 3 * cycles
    for error in (e for o in rig.outcomes for e in o.errors):
        # Only the retry budget running out may surface: "... still failing after N round(s) ...".
        assert "still failing" in error or "Transient" in error, error


def test_a_third_of_requests_failing_still_converges_without_duplicates(ecs: EcsEndpoint) -> None:
    """Throttling.User/Throttling/503/500 on a seeded third of ECS requests (some after the change
    ran): 0 → 3 → 1 within bounded ticks, and ECS created exactly 3 instances."""
    converges(ecs, seed=5, cycles=1, top=3)


@pytest.mark.long
@pytest.mark.parametrize("seed", range(31, 41))
def test_many_cycles_under_ecs_faults_never_launch_twice(ecs: EcsEndpoint, seed: int) -> None:
    """Ten seeds, three cycles to 5 nodes each under the same faults: bounded ticks, no duplicate."""
    converges(ecs, seed=seed, cycles=3, top=5)


def test_no_stock_for_one_type_and_zone_launches_elsewhere_and_stops_asking(ecs: EcsEndpoint) -> None:
    """No GPU_A stock in the first zone: the launch takes GPU_A from the second zone in the same tick,
    and the sold-out offer is not asked again on the next launch while its pause lasts."""
    rig = ecs_rig(ecs)
    ecs.set_stock(GPU_A, VSWITCHES["vsw-h"], 0)
    rig.min_nodes = 2
    rig.tick()
    rig.min_nodes = 4
    rig.tick()
    asked = [(c.params["InstanceType"], c.params["VSwitchId"]) for c in ecs.calls("RunInstances")]
    print(f"\nRunInstances asked: {asked}")
    assert len(rig.outcomes[0].launched) == 2 and len(rig.outcomes[1].launched) == 2
    assert asked.count((GPU_A, "vsw-h")) == 1, asked
    assert {(i.instance_type, i.vswitch) for i in ecs.instances().values()} == {(GPU_A, "vsw-i")}


@pytest.mark.parametrize("fault", ["no-stock", "quota"])
def test_no_stock_or_quota_anywhere_is_reported_and_backed_off(ecs: EcsEndpoint, fault: str) -> None:
    """Every offer sold out (``OperationDenied.NoStock``) or the region's instance quota at 0
    (``QuotaExceed.ElasticQuota``, refused for each family) for 20 ticks: each tick reports it and
    the controller keeps ticking, requests fall to a doubling pause, and once stock is back the pool
    fills."""
    rig = ecs_rig(ecs)
    if fault == "no-stock":
        for itype in (GPU_A, GPU_B):
            for zone in VSWITCHES.values():
                ecs.set_stock(itype, zone, 0)
    else:
        ecs.max_instances = 0
    rig.min_nodes = 2
    per_tick: list[int] = []
    for _ in range(20):
        before = len(ecs.calls("RunInstances"))
        outcome = rig.tick()
        per_tick.append(len(ecs.calls("RunInstances")) - before)
        assert outcome.launched == [] and outcome.errors, outcome
        word = "quota" if fault == "quota" else "stock"
        assert any(word in e.lower() for e in outcome.errors), outcome.errors
    rounds = sum(1 for n in per_tick if n)
    print(f"\n{fault}: 20 ticks (5 min), RunInstances per tick {per_tick}; total {sum(per_tick)} in {rounds} "
          f"rounds (the first tick asked {per_tick[0]})")
    # No stock: each (type, zone) once; the region's instance quota: each family once (the refusal
    # names no family, so it is kept to the refused one; the other family is asked in turn).
    assert per_tick[0] == (4 if fault == "no-stock" else 2)
    assert rounds <= 5 and all(n in (0, per_tick[0]) for n in per_tick), per_tick
    for itype in (GPU_A, GPU_B):
        for zone in VSWITCHES.values():
            ecs.set_stock(itype, zone, None)
    ecs.max_instances = None
    recovered = 0
    while len(rig.serving()) < 2:
        recovered += 1
        assert recovered <= 42, rig.outcomes[-1].errors
        rig.tick()
    print(f"{fault}: stock back, pool at 2 after {recovered} ticks")


def test_a_family_at_quota_launches_the_other_family_and_is_not_asked_until_its_pause_ends(
    ecs: EcsEndpoint
) -> None:
    """GPU_A's family (ecs.gn7i) at its quota: the same tick launches GPU_B (ecs.gn6i) after one
    refused request; the next tick (15 s later, inside the 30 s pause) does not ask ecs.gn7i at all;
    after the pause it is asked once more; with both families at quota nothing is sent while both
    pauses last and every tick reports the quota with both groups named."""
    rig = ecs_rig(ecs)
    ecs.set_family_quota("ecs.gn7i", 0)

    def asked() -> list[str]:
        return [c.params["InstanceType"] for c in ecs.calls("RunInstances")]

    rig.min_nodes = 2
    first = rig.tick()
    assert asked() == [GPU_A, GPU_B] and len(first.launched) == 2 and not first.errors, first
    # The refusal travels with the launch's record: its intent's result names the refused family.
    [launch] = [i for i in rig.store.intents("faults", tick_id=first.tick_id) if i.kind == IntentKind.LAUNCH]
    assert any("QuotaExceed.ElasticQuota" in n and "'family ecs.gn7i'" in n
               for n in launch.result["notes"]), launch.result
    rig.min_nodes = 3
    second = rig.tick()
    assert asked() == [GPU_A, GPU_B, GPU_B] and len(second.launched) == 1, second
    ecs.set_family_quota("ecs.gn6i", 3)  # the second family is full too from now on
    rig.min_nodes = 4
    per_tick: list[list[str]] = []
    for _ in range(8):
        before = len(asked())
        outcome = rig.tick()
        per_tick.append(asked()[before:])
        assert outcome.launched == [] and outcome.errors, outcome
        assert any("quota" in e and "ecs.gn7i" in e for e in outcome.errors), outcome.errors
    print(f"\nRunInstances per tick once both families are at quota: {per_tick}")
    # Ticks are 15 s apart. At +30 s ecs.gn7i's first pause has ended: asked, refused again (60 s,
    # until +90 s); ecs.gn6i refuses for the first time (30 s, until +60 s, then 60 s until +120 s).
    # Each family is asked exactly when its own pause ends, never inside it.
    assert per_tick == [[GPU_A, GPU_B], [], [GPU_B], [], [GPU_A], [], [GPU_B], []], per_tick
    assert {i.instance_type for i in ecs.instances().values()} == {GPU_B}
