"""The behaviour every ``Balancer`` implementation must show, as a pytest suite to subclass.

Usage, in a test module::

    class TestMyBalancerContract(BalancerContract):
        unsupported_fields = frozenset({"max_fails", "fail_timeout_s"})   # what it cannot store

        @pytest.fixture
        def balancer(self) -> Iterator[MyBalancer]: ...

        # optional: how many times the balancer really changed (reloads, API writes)
        @pytest.fixture
        def balancer_change_count(self, ...) -> Callable[[], int]: ...

        # optional: backends the implementation can register (default: 127.0.0.1 ports)
        @pytest.fixture
        def contract_backends(self) -> list[Backend]: ...

The suite uses only the ``Balancer`` protocol. Backends are compared as sets (order never
matters); fields named in ``unsupported_fields`` are compared at their ``Backend`` defaults on
both sides. ``current`` is polled up to ``settle_timeout_s`` where a backend may be eventually
consistent. The suite never sends traffic: the backends need not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields, replace
from typing import Any, ClassVar

import pytest

from autoscaler.domain import Backend
from autoscaler.protocols import Balancer
from autoscaler.testing import wait_until

#: Backend fields an implementation may be unable to store (address, port and id always are).
OPTIONAL_FIELDS = frozenset({"weight", "max_fails", "fail_timeout_s", "backup"})
_DEFAULTS = {f.name: f.default for f in fields(Backend) if f.name in OPTIONAL_FIELDS}


class BalancerContract:
    """Subclass with a ``balancer`` fixture; see the module docstring."""

    #: Fields of ``Backend`` the implementation does not keep (subset of ``OPTIONAL_FIELDS``).
    unsupported_fields: ClassVar[frozenset[str]] = frozenset()
    #: Longest time ``current`` may take to show an applied list.
    settle_timeout_s: ClassVar[float] = 0.0
    #: Pause between polls of ``current`` while waiting.
    poll_interval_s: ClassVar[float] = 0.1

    # --------------------------------------------------------------------------------- fixtures
    @pytest.fixture
    def contract_backends(self) -> list[Backend]:
        """Four backends: three primaries of different weights and one backup."""
        return [
            Backend(address="127.0.0.1", port=17861, instance_id="i-contract-a", weight=3),
            Backend(address="127.0.0.1", port=17862, instance_id="i-contract-b", weight=1, max_fails=3),
            Backend(address="127.0.0.1", port=17863, instance_id="i-contract-c", weight=2, fail_timeout_s=10),
            Backend(address="127.0.0.1", port=17864, instance_id="i-contract-d", backup=True),
        ]

    @pytest.fixture
    def balancer_change_count(self) -> Callable[[], int] | None:
        """How many changes the balancer made so far (reloads, API writes); None if unobservable."""
        return None

    # ---------------------------------------------------------------------------------- helpers
    def normalized(self, backends: Iterable[Backend]) -> set[Backend]:
        """``backends`` as a set, unsupported fields reset to their defaults."""
        reset: dict[str, Any] = {name: _DEFAULTS[name] for name in self.unsupported_fields}
        return {replace(b, **reset) for b in backends}

    def assert_current(self, balancer: Balancer, expected: Sequence[Backend]) -> None:
        """``current()`` equals ``expected`` as a set, within ``settle_timeout_s``."""
        want = self.normalized(expected)
        if self.settle_timeout_s <= 0:
            assert self.normalized(balancer.current()) == want
            return
        wait_until(lambda: self.normalized(balancer.current()) == want, timeout_s=self.settle_timeout_s,
                   interval_s=self.poll_interval_s,
                   message=f"balancer shows {sorted(b.instance_id for b in want)}")

    # ------------------------------------------------------------------------------------ tests
    def test_implements_the_balancer_protocol(self, balancer: Balancer) -> None:
        """The implementation is a ``Balancer`` with a non-empty name."""
        assert isinstance(balancer, Balancer)
        assert isinstance(balancer.name, str) and balancer.name

    def test_apply_then_current_round_trips(
        self, balancer: Balancer, contract_backends: list[Backend]
    ) -> None:
        """``current`` returns exactly the applied backends, with every supported field kept."""
        balancer.apply(contract_backends)
        self.assert_current(balancer, contract_backends)

    def test_order_does_not_matter(self, balancer: Balancer, contract_backends: list[Backend]) -> None:
        """The same backends applied in another order are the same list (and no change)."""
        balancer.apply(contract_backends)
        self.assert_current(balancer, contract_backends)
        balancer.apply(list(reversed(contract_backends)))
        self.assert_current(balancer, contract_backends)

    def test_applying_the_list_in_force_is_a_noop(
        self,
        balancer: Balancer,
        contract_backends: list[Backend],
        balancer_change_count: Callable[[], int] | None,
    ) -> None:
        """Applying the list already in force changes nothing (no reload, no API write)."""
        balancer.apply(contract_backends)
        self.assert_current(balancer, contract_backends)
        before = balancer_change_count() if balancer_change_count else None
        balancer.apply(contract_backends)
        balancer.apply(list(reversed(contract_backends)))
        self.assert_current(balancer, contract_backends)
        if balancer_change_count is not None:
            assert balancer_change_count() == before

    def test_a_change_is_a_change(
        self,
        balancer: Balancer,
        contract_backends: list[Backend],
        balancer_change_count: Callable[[], int] | None,
    ) -> None:
        """Applying a different list does change the balancer (the change counter moves)."""
        balancer.apply(contract_backends)
        self.assert_current(balancer, contract_backends)
        before = balancer_change_count() if balancer_change_count else None
        balancer.apply(contract_backends[:1])
        self.assert_current(balancer, contract_backends[:1])
        if balancer_change_count is not None and before is not None:
            assert balancer_change_count() > before

    def test_empty_list_can_be_applied(self, balancer: Balancer, contract_backends: list[Backend]) -> None:
        """Applying an empty list leaves no backend in force, and backends can be added again after."""
        balancer.apply(contract_backends)
        balancer.apply([])
        self.assert_current(balancer, [])
        balancer.apply(contract_backends[:2])
        self.assert_current(balancer, contract_backends[:2])

    def test_removed_backend_disappears(self, balancer: Balancer, contract_backends: list[Backend]) -> None:
        """A backend left out of the next list is no longer in force; the others stay."""
        balancer.apply(contract_backends)
        kept = [b for b in contract_backends if b.instance_id != contract_backends[1].instance_id]
        balancer.apply(kept)
        self.assert_current(balancer, kept)
        assert contract_backends[1].instance_id not in {b.instance_id for b in balancer.current()}

    def test_added_backend_appears(self, balancer: Balancer, contract_backends: list[Backend]) -> None:
        """A backend added to the list is in force next to the existing ones."""
        balancer.apply(contract_backends[:2])
        self.assert_current(balancer, contract_backends[:2])
        balancer.apply(contract_backends[:3])
        self.assert_current(balancer, contract_backends[:3])

    def test_changed_weight_is_applied(self, balancer: Balancer, contract_backends: list[Backend]) -> None:
        """Changing only a backend's weight puts the new weight in force (when weights are supported)."""
        if "weight" in self.unsupported_fields:
            pytest.skip("this balancer does not keep weights")
        balancer.apply(contract_backends)
        first = contract_backends[0]
        changed = [replace(first, weight=first.weight + 4), *contract_backends[1:]]
        balancer.apply(changed)
        self.assert_current(balancer, changed)
