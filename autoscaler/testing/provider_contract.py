"""The behaviour every ``Provider`` implementation must show, as a pytest suite to subclass.

Usage, in a test module::

    class TestMyProviderContract(ProviderContract):
        settle_timeout_s = 30.0            # how long the backend may take to show a change

        @pytest.fixture
        def provider(self) -> Iterator[MyProvider]: ...

        @pytest.fixture
        def launch_spec(self) -> LaunchSpec: ...

The suite only uses the ``Provider`` protocol, so it runs unchanged against the local provider,
the fake, moto's EC2 and a local ECS endpoint. It assumes the backend has stock of
``launch_spec.instance_types[0]`` and no quota lower than four instances. The stop/start tests
that need the backend to run out of stock call ``start_stock`` (a context manager the subclass
overrides; by default those tests are skipped, for backends that never run out). Lists are polled up
to ``settle_timeout_s`` wherever a cloud may be eventually consistent. Every instance the suite
launches is terminated after each test (best effort, through the provider itself).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import ClassVar

import pytest

from autoscaler.domain import (
    MANAGED_BY_VALUE,
    TAG_LAUNCH_TOKEN,
    TAG_MANAGED_BY,
    TAG_MODEL_VERSION,
    TAG_POOL,
    CloudState,
    Instance,
    LaunchSpec,
    StartOutcome,
    StopOutcome,
    TerminateOutcome,
)
from autoscaler.errors import InsufficientCapacity
from autoscaler.protocols import Provider
from autoscaler.testing import wait_until


def new_token() -> str:
    """A fresh client token, as the controller makes one per scale-out decision."""
    return f"contract-{uuid.uuid4().hex[:16]}"


class ProviderContract:
    """Subclass with ``provider`` and ``launch_spec`` fixtures; see the module docstring."""

    #: Longest time a launch or terminate may take to show in ``list_instances``.
    settle_timeout_s: ClassVar[float] = 10.0
    #: Pause between polls of ``list_instances`` while waiting.
    poll_interval_s: ClassVar[float] = 0.1
    #: A well-formed id the backend has never issued (clouds reject malformed ids differently).
    unknown_instance_id: ClassVar[str] = "i-0000000000deadbeef"
    #: Appended to ``launch_spec.pool`` to make a second pool for isolation tests.
    other_pool_suffix: ClassVar[str] = "-other"

    # ----------------------------------------------------------------------------------- helpers
    def other_spec(self, launch_spec: LaunchSpec) -> LaunchSpec:
        """The same spec for a second pool."""
        return replace(launch_spec, pool=launch_spec.pool + self.other_pool_suffix)

    def listed_ids(self, provider: Provider, pool: str) -> set[str]:
        """Ids ``list_instances(pool)`` reports now."""
        return {i.id for i in provider.list_instances(pool)}

    def wait_listed(self, provider: Provider, pool: str, ids: set[str]) -> set[str]:
        """Wait until every id in ``ids`` is listed for ``pool``; return the full listed set."""
        def all_listed() -> set[str]:
            now = self.listed_ids(provider, pool)
            return now if ids <= now else set()

        return wait_until(all_listed, timeout_s=self.settle_timeout_s, interval_s=self.poll_interval_s,
                          message=f"instances {sorted(ids)} listed in pool {pool}")

    def wait_unlisted(self, provider: Provider, pool: str, ids: set[str]) -> None:
        """Wait until no id in ``ids`` is listed for ``pool``."""
        wait_until(lambda: not (ids & self.listed_ids(provider, pool)), timeout_s=self.settle_timeout_s,
                   interval_s=self.poll_interval_s, message=f"instances {sorted(ids)} gone from pool {pool}")

    def wait_state(self, provider: Provider, pool: str, iid: str, *states: CloudState) -> Instance:
        """Wait until ``iid`` is listed in one of ``states``; return it."""
        def in_state() -> Instance | None:
            found = {i.id: i for i in provider.list_instances(pool)}.get(iid)
            return found if found is not None and found.state in states else None

        found = wait_until(in_state, timeout_s=self.settle_timeout_s, interval_s=self.poll_interval_s,
                           message=f"instance {iid} in {[s.value for s in states]}")
        assert found is not None
        return found

    def stopped_instance(self, provider: Provider, spec: LaunchSpec) -> Instance:
        """Launch one instance, wait until it runs, stop it and wait until it is STOPPED."""
        iid = provider.launch(spec, 1, new_token()).instances[0].id
        self.wait_state(provider, spec.pool, iid, CloudState.RUNNING)
        assert provider.stop([iid]) == {iid: StopOutcome.STOPPING}
        return self.wait_state(provider, spec.pool, iid, CloudState.STOPPED)

    def start_stock(self, provider: Provider, instances: list[Instance],
                    available: int) -> AbstractContextManager[None]:
        """While entered, at most ``available`` of the stopped ``instances`` (launched alike, one
        after the other) can start; the others fail for lack of stock. Override; default skips."""
        pytest.skip(f"{type(provider).__name__} never runs out of stock")

    @pytest.fixture(autouse=True)
    def _terminate_leftovers(self, provider: Provider, launch_spec: LaunchSpec) -> Iterator[None]:
        """After each test, terminate whatever the test left in either pool."""
        yield
        for pool in (launch_spec.pool, self.other_spec(launch_spec).pool):
            ids = [i.id for i in provider.list_instances(pool)]
            if ids:
                provider.terminate(ids)

    # ------------------------------------------------------------------------------------- tests
    def test_implements_the_provider_protocol(self, provider: Provider) -> None:
        """The implementation is a ``Provider`` with a non-empty name."""
        assert isinstance(provider, Provider)
        assert isinstance(provider.name, str) and provider.name

    def test_empty_pool_lists_nothing(self, provider: Provider, launch_spec: LaunchSpec) -> None:
        """A pool nothing was launched into lists no instances."""
        assert provider.list_instances(launch_spec.pool) == []

    def test_launch_returns_count_tagged_instances(self, provider: Provider, launch_spec: LaunchSpec) -> None:
        """Launching N returns N distinct live instances of the first type, tagged with pool and token."""
        token = new_token()
        result = provider.launch(launch_spec, 2, token)
        assert result.shortfall is None
        assert len(result.instances) == 2
        assert len({i.id for i in result.instances}) == 2
        for inst in result.instances:
            self.assert_launched_from(inst, launch_spec, token)

    def assert_launched_from(self, inst: Instance, spec: LaunchSpec, token: str) -> None:
        """``inst`` carries everything ``spec`` and ``token`` say it should."""
        assert inst.pool == spec.pool
        assert inst.model_version == spec.model_version
        assert inst.launch_token == token
        assert inst.instance_type == spec.instance_types[0]
        assert inst.state in (CloudState.PENDING, CloudState.RUNNING)
        assert inst.launched_at.tzinfo is not None
        assert inst.tags[TAG_POOL] == spec.pool
        assert inst.tags[TAG_MODEL_VERSION] == spec.model_version
        assert inst.tags[TAG_LAUNCH_TOKEN] == token
        assert inst.tags[TAG_MANAGED_BY] == MANAGED_BY_VALUE
        for key, value in spec.tags.items():
            assert inst.tags[key] == value

    def test_launched_instances_are_listed(self, provider: Provider, launch_spec: LaunchSpec) -> None:
        """Launched instances appear in the pool's list with the same pool, token and type."""
        token = new_token()
        launched = provider.launch(launch_spec, 2, token).instances
        ids = {i.id for i in launched}
        self.wait_listed(provider, launch_spec.pool, ids)
        listed = {i.id: i for i in provider.list_instances(launch_spec.pool)}
        for iid in ids:
            self.assert_launched_from(listed[iid], launch_spec, token)

    def test_same_token_launches_nothing_new(self, provider: Provider, launch_spec: LaunchSpec) -> None:
        """A retry with the same client token returns the same instances and launches none."""
        token = new_token()
        first = {i.id for i in provider.launch(launch_spec, 2, token).instances}
        self.wait_listed(provider, launch_spec.pool, first)
        again = provider.launch(launch_spec, 2, token)
        assert {i.id for i in again.instances} == first
        assert again.shortfall is None
        assert self.listed_ids(provider, launch_spec.pool) == first

    def test_same_token_tops_up_to_count(self, provider: Provider, launch_spec: LaunchSpec) -> None:
        """Instances of a token count toward a larger count: only the difference is launched."""
        token = new_token()
        first = {i.id for i in provider.launch(launch_spec, 1, token).instances}
        self.wait_listed(provider, launch_spec.pool, first)
        more = {i.id for i in provider.launch(launch_spec, 3, token).instances}
        assert len(more) == 3
        assert first <= more
        assert self.wait_listed(provider, launch_spec.pool, more) == more

    def test_different_token_launches_more(self, provider: Provider, launch_spec: LaunchSpec) -> None:
        """A new client token launches new instances beside the existing ones."""
        first = {i.id for i in provider.launch(launch_spec, 1, new_token()).instances}
        second = {i.id for i in provider.launch(launch_spec, 2, new_token()).instances}
        assert len(second) == 2
        assert not first & second
        assert self.wait_listed(provider, launch_spec.pool, first | second) == first | second

    def test_list_is_scoped_to_the_pool(self, provider: Provider, launch_spec: LaunchSpec) -> None:
        """Each pool lists only its own instances."""
        other = self.other_spec(launch_spec)
        mine = {i.id for i in provider.launch(launch_spec, 1, new_token()).instances}
        theirs = {i.id for i in provider.launch(other, 1, new_token()).instances}
        assert self.wait_listed(provider, launch_spec.pool, mine) == mine
        assert self.wait_listed(provider, other.pool, theirs) == theirs

    def test_terminate_then_instance_leaves_list(self, provider: Provider, launch_spec: LaunchSpec) -> None:
        """Terminate reports TERMINATING; the instance then leaves the list and its sibling stays."""
        launched = provider.launch(launch_spec, 2, new_token()).instances
        victim, survivor = launched[0].id, launched[1].id
        self.wait_listed(provider, launch_spec.pool, {victim, survivor})
        assert provider.terminate([victim]) == {victim: TerminateOutcome.TERMINATING}
        self.wait_unlisted(provider, launch_spec.pool, {victim})
        assert survivor in self.listed_ids(provider, launch_spec.pool)

    def test_terminate_unknown_id_is_already_gone(self, provider: Provider) -> None:
        """An id the provider never issued is ALREADY_GONE, not an error."""
        assert provider.terminate([self.unknown_instance_id]) == {
            self.unknown_instance_id: TerminateOutcome.ALREADY_GONE
        }

    def test_second_terminate_is_already_gone(self, provider: Provider, launch_spec: LaunchSpec) -> None:
        """Terminating an instance that is already gone returns ALREADY_GONE without raising."""
        iid = provider.launch(launch_spec, 1, new_token()).instances[0].id
        self.wait_listed(provider, launch_spec.pool, {iid})
        assert provider.terminate([iid]) == {iid: TerminateOutcome.TERMINATING}
        self.wait_unlisted(provider, launch_spec.pool, {iid})
        assert provider.terminate([iid]) == {iid: TerminateOutcome.ALREADY_GONE}

    def test_terminate_mixed_ids_reports_each(self, provider: Provider, launch_spec: LaunchSpec) -> None:
        """One call with a live and an unknown id reports TERMINATING and ALREADY_GONE respectively."""
        iid = provider.launch(launch_spec, 1, new_token()).instances[0].id
        self.wait_listed(provider, launch_spec.pool, {iid})
        assert provider.terminate([iid, self.unknown_instance_id]) == {
            iid: TerminateOutcome.TERMINATING,
            self.unknown_instance_id: TerminateOutcome.ALREADY_GONE,
        }

    def test_terminate_nothing_returns_empty(self, provider: Provider) -> None:
        """Terminating an empty list does nothing and returns an empty mapping."""
        assert provider.terminate([]) == {}

    # ------------------------------------------------------------------------------ stop and start
    def test_stop_keeps_the_instance_listed_as_stopped(self, provider: Provider,
                                                       launch_spec: LaunchSpec) -> None:
        """A stopped instance stays listed as STOPPED with its pool, model version and token tags."""
        token = new_token()
        iid = provider.launch(launch_spec, 1, token).instances[0].id
        self.wait_state(provider, launch_spec.pool, iid, CloudState.RUNNING)
        assert provider.stop([iid]) == {iid: StopOutcome.STOPPING}
        stopped = self.wait_state(provider, launch_spec.pool, iid, CloudState.STOPPED)
        self.assert_launched_from(replace(stopped, state=CloudState.RUNNING), launch_spec, token)

    def test_stop_of_a_stopped_instance_is_already_stopped(self, provider: Provider,
                                                           launch_spec: LaunchSpec) -> None:
        """Stopping an instance that is stopped already reports ALREADY_STOPPED, without raising."""
        iid = self.stopped_instance(provider, launch_spec).id
        assert provider.stop([iid]) == {iid: StopOutcome.ALREADY_STOPPED}
        assert self.wait_state(provider, launch_spec.pool, iid, CloudState.STOPPED).id == iid

    def test_stop_and_start_of_unknown_ids_are_already_gone(self, provider: Provider) -> None:
        """An id the provider never issued is ALREADY_GONE for stop and start, never an exception."""
        unknown = self.unknown_instance_id
        assert provider.stop([unknown]) == {unknown: StopOutcome.ALREADY_GONE}
        assert provider.start([unknown]) == {unknown: StartOutcome.ALREADY_GONE}

    def test_stop_and_start_of_nothing_return_empty(self, provider: Provider) -> None:
        """Stopping or starting an empty list does nothing and returns an empty mapping."""
        assert provider.stop([]) == {}
        assert provider.start([]) == {}

    def test_stop_mixed_ids_reports_each(self, provider: Provider, launch_spec: LaunchSpec) -> None:
        """One stop call with a running and an unknown id reports STOPPING and ALREADY_GONE."""
        iid = provider.launch(launch_spec, 1, new_token()).instances[0].id
        self.wait_state(provider, launch_spec.pool, iid, CloudState.RUNNING)
        assert provider.stop([iid, self.unknown_instance_id]) == {
            iid: StopOutcome.STOPPING, self.unknown_instance_id: StopOutcome.ALREADY_GONE,
        }

    def test_start_brings_a_stopped_instance_back_with_its_id(self, provider: Provider,
                                                               launch_spec: LaunchSpec) -> None:
        """Starting a stopped instance reports STARTING; the same id runs again, tags intact."""
        stopped = self.stopped_instance(provider, launch_spec)
        assert provider.start([stopped.id]) == {stopped.id: StartOutcome.STARTING}
        running = self.wait_state(provider, launch_spec.pool, stopped.id, CloudState.RUNNING)
        assert running.launch_token == stopped.launch_token
        assert running.model_version == launch_spec.model_version

    def test_start_of_a_running_instance_is_already_running(self, provider: Provider,
                                                            launch_spec: LaunchSpec) -> None:
        """Starting an instance that runs (or was just started) is ALREADY_RUNNING, not an error."""
        iid = provider.launch(launch_spec, 1, new_token()).instances[0].id
        self.wait_state(provider, launch_spec.pool, iid, CloudState.RUNNING)
        assert provider.start([iid]) == {iid: StartOutcome.ALREADY_RUNNING}
        stopped = self.stopped_instance(provider, launch_spec)
        assert provider.start([stopped.id]) == {stopped.id: StartOutcome.STARTING}
        self.wait_state(provider, launch_spec.pool, stopped.id, CloudState.PENDING, CloudState.RUNNING)
        assert provider.start([stopped.id]) == {stopped.id: StartOutcome.ALREADY_RUNNING}

    def test_stop_and_start_after_terminate_are_already_gone(self, provider: Provider,
                                                             launch_spec: LaunchSpec) -> None:
        """A terminated instance can be neither stopped nor started: both report ALREADY_GONE."""
        iid = provider.launch(launch_spec, 1, new_token()).instances[0].id
        self.wait_listed(provider, launch_spec.pool, {iid})
        provider.terminate([iid])
        self.wait_unlisted(provider, launch_spec.pool, {iid})
        assert provider.stop([iid]) == {iid: StopOutcome.ALREADY_GONE}
        assert provider.start([iid]) == {iid: StartOutcome.ALREADY_GONE}

    def test_a_stopped_instance_can_be_terminated(self, provider: Provider, launch_spec: LaunchSpec) -> None:
        """Terminating a stopped instance reports TERMINATING and it leaves the list."""
        iid = self.stopped_instance(provider, launch_spec).id
        assert provider.terminate([iid]) == {iid: TerminateOutcome.TERMINATING}
        self.wait_unlisted(provider, launch_spec.pool, {iid})

    def test_a_stopped_instance_still_counts_toward_its_token(self, provider: Provider,
                                                              launch_spec: LaunchSpec) -> None:
        """A launch retried with the token of a now-stopped instance launches nothing new."""
        stopped = self.stopped_instance(provider, launch_spec)
        again = provider.launch(launch_spec, 1, stopped.launch_token)
        assert [i.id for i in again.instances] == [stopped.id]
        assert self.listed_ids(provider, launch_spec.pool) == {stopped.id}

    def test_start_without_stock_raises_insufficient_capacity(self, provider: Provider,
                                                              launch_spec: LaunchSpec) -> None:
        """A start refused for lack of stock raises InsufficientCapacity; the instance stays STOPPED
        and starts once stock is back."""
        stopped = self.stopped_instance(provider, launch_spec)
        with self.start_stock(provider, [stopped], 0), pytest.raises(InsufficientCapacity):
            provider.start([stopped.id])
        assert self.wait_state(provider, launch_spec.pool, stopped.id, CloudState.STOPPED).id == stopped.id
        assert provider.start([stopped.id]) == {stopped.id: StartOutcome.STARTING}

    def test_start_without_stock_for_one_id_reports_no_capacity(self, provider: Provider,
                                                                launch_spec: LaunchSpec) -> None:
        """With stock for one of two stopped instances, one starts and the other is NO_CAPACITY."""
        first = self.stopped_instance(provider, launch_spec)
        second = self.stopped_instance(provider, launch_spec)
        with self.start_stock(provider, [first, second], 1):
            outcomes = provider.start([first.id, second.id])
        assert sorted(outcomes.values()) == sorted([StartOutcome.STARTING, StartOutcome.NO_CAPACITY])
