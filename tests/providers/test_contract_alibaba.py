"""AlibabaProvider (the real alibabacloud_ecs20140526 SDK against the local ECS endpoint) passes the
provider contract."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from autoscaler.domain import Instance, LaunchSpec
from autoscaler.policy.model import AlibabaProviderConfig
from autoscaler.protocols import Provider
from autoscaler.providers.alibaba import AlibabaProvider
from autoscaler.providers.retry import RetryBudget
from autoscaler.testing.ecs_endpoint import EcsEndpoint, dummy_credentials
from autoscaler.testing.provider_contract import ProviderContract


class TestAlibabaProviderContract(ProviderContract):
    """The contract, against ECS served locally: instances pend briefly, released ones linger as Stopping."""

    settle_timeout_s = 10.0
    poll_interval_s = 0.05
    unknown_instance_id = "i-0000000000deadbeef00"
    _endpoint: EcsEndpoint

    @pytest.fixture
    def ecs(self) -> Iterator[EcsEndpoint]:
        """A local ECS region (two zones) verifying signatures made with dummy env credentials.

        New instances are Pending for 0.2 s and deleted or stopped ones Stopping for 0.2 s, so the
        suite's polling sees real transitions rather than instant ones.
        """
        with dummy_credentials() as (key_id, secret), EcsEndpoint(
            vswitches={"vsw-h": "cn-hangzhou-h", "vsw-i": "cn-hangzhou-i"},
            credentials={key_id: secret}, pending_s=0.2, release_s=0.2, stop_s=0.2,
        ) as endpoint:
            yield endpoint

    @pytest.fixture
    def provider(self, ecs: EcsEndpoint) -> AlibabaProvider:
        """An AlibabaProvider for the endpoint, reading pages of 3 so multi-page listing is exercised."""
        config = AlibabaProviderConfig(kind="alibaba", region=ecs.region, endpoint=ecs.url,
                                       vswitches=["vsw-h", "vsw-i"], security_group="sg-contract")
        return AlibabaProvider(config, page_size=3,
                               budget=RetryBudget(deadline_s=10.0, max_rounds=3, base_delay_s=0.05))

    @pytest.fixture
    def launch_spec(self) -> LaunchSpec:
        """Two GPU types for a test pool, with one custom tag."""
        return LaunchSpec(pool="asr-ecs-contract", image="m-funasr-2512", model_version="fun-asr-nano-2512",
                          instance_types=("ecs.gn7i-c8g1.2xlarge", "ecs.gn6i-c4g1.xlarge"),
                          tags={"team": "speech"})

    @contextmanager
    def start_stock(self, provider: Provider, instances: list[Instance], available: int) -> Iterator[None]:
        """The zone has only ``available`` GPUs of the instances' type left: their economical-mode
        stop gave theirs back and someone else took them."""
        assert isinstance(provider, AlibabaProvider)
        endpoint = self._endpoint
        zone = instances[0].zone or ""
        endpoint.set_stock(instances[0].instance_type, zone, available)
        try:
            yield
        finally:
            endpoint.set_stock(instances[0].instance_type, zone, None)

    @pytest.fixture(autouse=True)
    def _remember_endpoint(self, ecs: EcsEndpoint) -> None:
        """Keep the test's endpoint on the instance for ``start_stock``."""
        self._endpoint = ecs
