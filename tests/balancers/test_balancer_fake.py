"""FakeBalancer beyond the contract: recorded calls, injected errors and reset."""

from __future__ import annotations

import pytest

from autoscaler.balancers.fake import FakeBalancer
from autoscaler.domain import Backend
from autoscaler.errors import BalancerError

A = Backend(address="10.0.0.1", port=7860, instance_id="i-a")
B = Backend(address="10.0.0.2", port=7860, instance_id="i-b")


def test_apply_calls_are_recorded_including_rejected_ones() -> None:
    """Every apply is recorded in order, accepted or not."""
    fake = FakeBalancer()
    fake.apply([A])
    fake.next_apply_error = BalancerError("nginx -t failed")
    with pytest.raises(BalancerError):
        fake.apply([A, B])
    assert fake.apply_calls == [(A,), (A, B)]


def test_injected_apply_error_keeps_the_old_list_and_fires_once() -> None:
    """``next_apply_error`` fails one apply, leaves the list in force, then clears itself."""
    fake = FakeBalancer([A])
    fake.next_apply_error = BalancerError("reload failed")
    with pytest.raises(BalancerError, match="reload failed"):
        fake.apply([B])
    assert fake.current() == [A]
    assert fake.changes == 0
    fake.apply([B])
    assert fake.current() == [B]


def test_injected_current_error_fires_once() -> None:
    """``next_current_error`` fails one ``current`` call only."""
    fake = FakeBalancer([A])
    fake.next_current_error = BalancerError("unreadable")
    with pytest.raises(BalancerError):
        fake.current()
    assert fake.current() == [A]


def test_duplicate_instance_is_refused() -> None:
    """A list naming one instance twice is refused, as the real balancers refuse it."""
    with pytest.raises(BalancerError, match="twice"):
        FakeBalancer().apply([A, Backend(address="10.0.0.3", port=7860, instance_id="i-a")])


def test_reset_returns_to_the_initial_list() -> None:
    """``reset`` restores the initial list and forgets calls, changes and pending errors."""
    fake = FakeBalancer([A])
    fake.apply([B])
    fake.next_apply_error = BalancerError("x")
    fake.reset()
    assert (fake.current(), fake.apply_calls, fake.changes) == ([A], [], 0)
    assert fake.backend_ids == {"i-a"}
    fake.apply([B])  # the error set before reset is gone
    assert fake.current() == [B]
