"""The AwsProvider passes the provider contract against moto's EC2 (server mode, on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

from autoscaler.domain import Instance, LaunchSpec
from autoscaler.policy.model import AwsProviderConfig
from autoscaler.protocols import Provider
from autoscaler.providers.aws import AwsProvider
from autoscaler.testing import moto_server as moto_fixtures
from autoscaler.testing.moto_server import Ec2Sandbox, RequestFaults, aws_error_response, bake_model_image
from autoscaler.testing.provider_contract import ProviderContract

# The shared moto fixtures, bound to this module's names so pytest finds them.
moto_server = moto_fixtures.moto_server
moto = moto_fixtures.moto
ec2_sandbox = moto_fixtures.ec2_sandbox

MODEL = "fun-asr-nano-2512"


class TestAwsProviderContract(ProviderContract):
    """The contract, against AwsProvider on a fresh moto EC2 account per test."""

    settle_timeout_s = 10.0
    poll_interval_s = 0.05

    @pytest.fixture
    def provider(self, ec2_sandbox: Ec2Sandbox) -> AwsProvider:
        """An AwsProvider launching into the sandbox's two zonal subnets."""
        config = AwsProviderConfig(
            kind="aws", region=ec2_sandbox.region, endpoint_url=ec2_sandbox.endpoint_url,
            subnets=list(ec2_sandbox.subnets), security_groups=[ec2_sandbox.security_group],
            instance_profile=ec2_sandbox.instance_profile,
        )
        return AwsProvider(config)

    @pytest.fixture
    def launch_spec(self, ec2_sandbox: Ec2Sandbox) -> LaunchSpec:
        """A GPU pool whose AMI is looked up by its model-version tag."""
        bake_model_image(ec2_sandbox, MODEL)
        return LaunchSpec(pool="asr-contract", image="", model_version=MODEL,
                          instance_types=("g5.xlarge", "g4dn.xlarge"), tags={"team": "asr"})

    @contextmanager
    def start_stock(self, provider: Provider, instances: list[Instance], available: int) -> Iterator[None]:
        """EC2 answers StartInstances with InsufficientInstanceCapacity (HTTP 500, as EC2 does) once
        ``available`` instances have started: moto itself never runs out."""
        assert isinstance(provider, AwsProvider)
        left = [available]

        def answer(_: int, params: Mapping[str, str]) -> Any:
            ids = [v for k, v in params.items() if k.startswith("InstanceId.")]
            if len(ids) <= left[0]:
                left[0] -= len(ids)
                return None
            return aws_error_response("InsufficientInstanceCapacity",
                                      "We currently do not have sufficient g5.xlarge capacity.", status=500)

        with RequestFaults(provider.client, "StartInstances", answer):
            yield
