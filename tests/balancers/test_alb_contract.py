"""The Balancer contract run against AlbBalancer on moto's ELBv2 (server mode, on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from autoscaler.balancers.alb import UNSUPPORTED_FIELDS, AlbBalancer
from autoscaler.domain import Backend
from autoscaler.policy.model import AlbBalancerConfig
from autoscaler.testing import moto_server as moto_fixtures
from autoscaler.testing.balancer_contract import BalancerContract
from autoscaler.testing.moto_server import Ec2Sandbox, RequestFaults, make_target_group, run_plain_instances

# The shared moto fixtures, bound to this module's names so pytest finds them.
moto_server = moto_fixtures.moto_server
moto = moto_fixtures.moto
ec2_sandbox = moto_fixtures.ec2_sandbox


class TestAlbBalancerContract(BalancerContract):
    """AlbBalancer on an instance target group; changes are the write requests it sends."""

    unsupported_fields = UNSUPPORTED_FIELDS

    @pytest.fixture
    def balancer(self, ec2_sandbox: Ec2Sandbox) -> AlbBalancer:
        """A balancer over a fresh target group in the sandbox VPC."""
        config = AlbBalancerConfig(kind="alb", target_group_arn=make_target_group(ec2_sandbox),
                                   region=ec2_sandbox.region, endpoint_url=ec2_sandbox.endpoint_url)
        return AlbBalancer(config)

    @pytest.fixture
    def contract_backends(self, ec2_sandbox: Ec2Sandbox) -> list[Backend]:
        """The suite's four backends (weights, max_fails, a backup) on real moto instances."""
        (a, ip_a), (b, ip_b), (c, ip_c), (d, ip_d) = run_plain_instances(ec2_sandbox, 4)
        return [
            Backend(address=ip_a, port=17861, instance_id=a, weight=3),
            Backend(address=ip_b, port=17862, instance_id=b, weight=1, max_fails=3),
            Backend(address=ip_c, port=17863, instance_id=c, weight=2, fail_timeout_s=10),
            Backend(address=ip_d, port=17864, instance_id=d, backup=True),
        ]

    @pytest.fixture
    def balancer_change_count(self, balancer: AlbBalancer) -> Iterator[Callable[[], int]]:
        """RegisterTargets/DeregisterTargets requests seen leaving the client."""
        observe: Callable[[int, object], None] = lambda n, _: None  # noqa: E731
        register = RequestFaults(balancer.elb_client, "RegisterTargets", observe)
        deregister = RequestFaults(balancer.elb_client, "DeregisterTargets", observe)
        with register, deregister:
            yield lambda: len(register.calls) + len(deregister.calls)
