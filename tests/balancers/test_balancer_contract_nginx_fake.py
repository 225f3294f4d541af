"""The Balancer contract run against the real nginx balancer and the fake."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from autoscaler.balancers.fake import FakeBalancer
from autoscaler.balancers.nginx import NginxBalancer
from autoscaler.embedded import EmbeddedNginx
from autoscaler.testing.balancer_contract import BalancerContract


@pytest.mark.integration
class TestNginxBalancerContract(BalancerContract):
    """NginxBalancer on a real nginx; changes are counted from the reloads nginx logs."""

    @pytest.fixture
    def balancer(self, nginx_balancer: NginxBalancer) -> NginxBalancer:
        """The balancer of the test's embedded nginx."""
        return nginx_balancer

    @pytest.fixture
    def balancer_change_count(self, embedded_nginx: EmbeddedNginx) -> Callable[[], int]:
        """Reloads the nginx master has logged (once settled)."""
        return embedded_nginx.settled_reload_count


class TestFakeBalancerContract(BalancerContract):
    """FakeBalancer; changes are its own change counter."""

    @pytest.fixture
    def balancer(self) -> FakeBalancer:
        """A fresh fake."""
        return FakeBalancer()

    @pytest.fixture
    def balancer_change_count(self, balancer: FakeBalancer) -> Callable[[], int]:
        """Applies that changed the fake's list."""
        return lambda: balancer.changes
