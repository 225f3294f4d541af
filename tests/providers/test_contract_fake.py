"""The in-memory FakeProvider passes the provider contract, and its test controls work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from autoscaler.domain import CloudState, Instance, LaunchSpec, TerminateOutcome
from autoscaler.errors import (
    InstanceNotFound,
    InsufficientCapacity,
    ProviderError,
    QuotaExceeded,
    TransientProviderError,
)
from autoscaler.protocols import Provider
from autoscaler.providers.fake import FakeProvider, LaunchCall
from autoscaler.testing.provider_contract import ProviderContract


class TestFakeProviderContract(ProviderContract):
    """The contract, against FakeProvider with default settings."""

    settle_timeout_s = 1.0
    poll_interval_s = 0.01

    @pytest.fixture
    def provider(self) -> FakeProvider:
        """A fresh fake fleet."""
        return FakeProvider(launch_state=CloudState.RUNNING)

    @pytest.fixture
    def launch_spec(self) -> LaunchSpec:
        """A spec with two instance types and a custom tag."""
        return LaunchSpec(pool="asr-fake", image="img-1", model_version="v1",
                          instance_types=("gpu.large", "gpu.xlarge"), tags={"team": "asr"})

    @contextmanager
    def start_stock(self, provider: Provider, instances: list[Instance], available: int) -> Iterator[None]:
        """The fake's ``start_stock`` allows ``available`` more starts."""
        assert isinstance(provider, FakeProvider)
        provider.start_stock = available
        try:
            yield
        finally:
            provider.start_stock = None


SPEC = LaunchSpec(pool="asr-fake", image="img-1", model_version="v1",
                  instance_types=("gpu.large", "gpu.xlarge"))


def test_fake_records_every_call() -> None:
    """launch, list and terminate calls are recorded with their arguments, in order."""
    fake = FakeProvider()
    [inst] = fake.launch(SPEC, 1, "tok").instances
    fake.list_instances("asr-fake")
    fake.terminate([inst.id, "ghost"])
    assert fake.launch_calls == [LaunchCall(spec=SPEC, count=1, client_token="tok")]
    assert fake.list_calls == ["asr-fake"]
    assert fake.terminate_calls == [(inst.id, "ghost")]


def test_injected_errors_fire_once_and_are_recorded() -> None:
    """next_*_error is raised by the next call of its kind only; the failed call is still recorded."""
    fake = FakeProvider()
    fake.next_launch_error = TransientProviderError("throttled")
    fake.next_list_error = ProviderError("boom")
    fake.next_terminate_error = ProviderError("nope")
    with pytest.raises(TransientProviderError):
        fake.launch(SPEC, 1, "tok")
    with pytest.raises(ProviderError):
        fake.list_instances("asr-fake")
    with pytest.raises(ProviderError):
        fake.terminate(["x"])
    assert len(fake.launch(SPEC, 1, "tok").instances) == 1
    assert len(fake.list_instances("asr-fake")) == 1
    assert fake.terminate(["x"]) == {"x": TerminateOutcome.ALREADY_GONE}
    assert len(fake.launch_calls) == 2 and len(fake.list_calls) == 2 and len(fake.terminate_calls) == 2


def test_reset_forgets_instances_calls_and_errors() -> None:
    """reset() empties the fleet, the call records and any pending injected error."""
    fake = FakeProvider()
    fake.launch(SPEC, 2, "tok")
    fake.next_launch_error = ProviderError("pending")
    fake.reset()
    assert fake.instances == [] and fake.launch_calls == [] and fake.next_launch_error is None
    assert len(fake.launch(SPEC, 1, "tok").instances) == 1


def test_states_and_addresses_are_driven_by_the_test() -> None:
    """New instances are PENDING with an address; set_state and set_address change what list reports."""
    fake = FakeProvider()
    [inst] = fake.launch(SPEC, 1, "tok").instances
    assert inst.state == CloudState.PENDING and inst.address and inst.port == SPEC.port
    fake.set_state(inst.id, CloudState.RUNNING)
    fake.set_address(inst.id, "127.0.0.1", 18000)
    [listed] = fake.list_instances("asr-fake")
    assert (listed.state, listed.endpoint) == (CloudState.RUNNING, "127.0.0.1:18000")
    fake.set_state(inst.id, CloudState.TERMINATED)  # a crash
    assert fake.list_instances("asr-fake") == []
    with pytest.raises(InstanceNotFound):
        fake.set_state("ghost", CloudState.RUNNING)


def test_terminate_state_stopping_keeps_the_instance_listed() -> None:
    """With terminate_state=STOPPING the instance stays listed until the test terminates it."""
    fake = FakeProvider(terminate_state=CloudState.STOPPING)
    [inst] = fake.launch(SPEC, 1, "tok").instances
    assert fake.terminate([inst.id]) == {inst.id: TerminateOutcome.TERMINATING}
    assert [i.state for i in fake.list_instances("asr-fake")] == [CloudState.STOPPING]
    fake.set_state(inst.id, CloudState.TERMINATED)
    assert fake.terminate([inst.id]) == {inst.id: TerminateOutcome.ALREADY_GONE}


def test_unavailable_type_falls_back_to_the_next() -> None:
    """A type without stock is skipped for the next one, and the skip is noted."""
    fake = FakeProvider(unavailable_types=["gpu.large"])
    result = fake.launch(SPEC, 2, "tok")
    assert [i.instance_type for i in result.instances] == ["gpu.xlarge", "gpu.xlarge"]
    assert result.shortfall is None and any("gpu.large" in n for n in result.notes)


def test_no_stock_at_all_raises_insufficient_capacity() -> None:
    """When no listed type has stock and nothing exists for the token, InsufficientCapacity is raised."""
    fake = FakeProvider(unavailable_types=SPEC.instance_types)
    with pytest.raises(InsufficientCapacity):
        fake.launch(SPEC, 1, "tok")


def test_quota_gives_a_shortfall_then_quota_exceeded() -> None:
    """A quota of 2 launches 2 of 3 with shortfall 'quota'; a new token then raises QuotaExceeded."""
    fake = FakeProvider(quota=2)
    result = fake.launch(SPEC, 3, "tok")
    assert len(result.instances) == 2 and result.shortfall == "quota"
    with pytest.raises(QuotaExceeded):
        fake.launch(SPEC, 1, "tok-2")


def test_launched_at_comes_from_the_injected_clock() -> None:
    """Instances are stamped with the injected clock's time."""
    at = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    fake = FakeProvider(clock=FixedClock(at))
    assert fake.launch(SPEC, 1, "tok").instances[0].launched_at == at


class FixedClock:
    """A clock stopped at one instant."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        """The fixed instant."""
        return self.at
