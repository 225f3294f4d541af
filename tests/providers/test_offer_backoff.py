"""OfferBackoff: pauses after no-stock and quota refusals, doubling to a ceiling, cleared by success."""

from __future__ import annotations

import pytest

from autoscaler.providers.offers import OfferBackoff


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_refused_offer_pauses_doubling_up_to_the_ceiling() -> None:
    """Refusals in a row pause the offer 30, 60, 120 ... s, never more than the ceiling."""
    clock = Clock()
    offers = OfferBackoff(base_s=30, max_s=100, clock=clock)
    assert [offers.no_stock("g5", "a", "ICE") for _ in range(4)] == [30, 60, 100, 100]
    assert offers.paused_for("g5", "a") == 100 and offers.why("g5", "a") == "ICE"
    assert offers.paused_for("g5", "b") == 0 and offers.paused_for("g4", "a") == 0
    clock.now += 100
    assert offers.paused_for("g5", "a") == 0


def test_serving_an_offer_clears_its_pause_and_its_quota_groups() -> None:
    """An instance from an offer forgets its refusals (the next one pauses 30 s again) and the quota
    pauses of the groups it was served under, not those of other groups."""
    clock = Clock()
    offers = OfferBackoff(clock=clock)
    offers.no_stock("g5", "a", "ICE")
    offers.no_stock("g5", "a", "ICE")
    offers.quota("G", "VcpuLimitExceeded")
    offers.quota("P", "VcpuLimitExceeded for p4d")
    assert offers.quota_paused_for(["type g5", "G"]) == 30
    assert offers.quota_why(["type g5", "G"]) == "quota group 'G': VcpuLimitExceeded"
    offers.served("g5", "a", ["type g5", "G"])
    assert offers.paused_for("g5", "a") == 0 and offers.quota_paused_for(["G"]) == 0
    assert offers.quota_paused_for(["P"]) == 30
    assert offers.no_stock("g5", "a", "ICE") == 30


def test_a_quota_pause_blocks_only_types_of_its_group_and_doubles() -> None:
    """A refused group pauses 30, 60 s ... for types counting against it; a type of another group
    is not paused; once the pause ends the group may be asked again and quota_why is empty."""
    clock = Clock()
    offers = OfferBackoff(base_s=30, max_s=600, clock=clock)
    assert offers.quota("G", "VcpuLimitExceeded") == 30
    assert offers.quota_paused_for(["type g5", "G", "account"]) == 30
    assert offers.quota_paused_for(["type p4d", "P", "account"]) == 0
    assert offers.quota_paused_for([]) == 0
    clock.now += 30
    assert offers.quota_paused_for(["G"]) == 0 and offers.quota_why(["G"]) == ""
    assert offers.quota("G", "VcpuLimitExceeded") == 60


@pytest.mark.parametrize(("base", "ceiling"), [(0, 10), (-1, 10), (20, 10)])
def test_invalid_schedules_are_rejected(base: float, ceiling: float) -> None:
    """A zero or negative first pause, or a ceiling below it, is a ValueError."""
    with pytest.raises(ValueError):
        OfferBackoff(base_s=base, max_s=ceiling)
