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
``launch_spec.instance_types[0]`` and no quota lower than four instances. Lists are polled up
to ``settle_timeout_s`` wherever a cloud may be eventually consistent. Every instance the suite
launches is terminated after each test (best effort, through the provider itself).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
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
    TerminateOutcome,
)
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
