"""The LocalProvider (real node processes on 127.0.0.1) passes the provider contract."""

from __future__ import annotations

import pytest

from autoscaler.domain import LaunchSpec
from autoscaler.providers.local import LocalProvider
from autoscaler.testing.provider_contract import ProviderContract


class TestLocalProviderContract(ProviderContract):
    """The contract, against LocalProvider in a temporary state dir."""

    settle_timeout_s = 15.0
    poll_interval_s = 0.05
    unknown_instance_id = "local-000000000000"

    @pytest.fixture
    def provider(self, local_provider: LocalProvider) -> LocalProvider:
        """The conftest's local provider (its finalizer stops every node)."""
        return local_provider

    @pytest.fixture
    def launch_spec(self, local_launch_spec: LaunchSpec) -> LaunchSpec:
        """The conftest's local launch spec."""
        return local_launch_spec
