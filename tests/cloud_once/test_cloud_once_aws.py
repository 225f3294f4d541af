"""Issue 5 on AWS: ``autoscaler once --policy <copy of policies/asr-aws.yaml>`` against a moto server.

The CLI runs in a subprocess with dummy credentials and ``AWS_ENDPOINT_URL`` pointing at a moto
server on 127.0.0.1 (AMI and instance-type validation on). The copy of the shipped example is
loaded and edited programmatically; only environment-specific values change:

- ``provider.subnets`` / ``security_groups`` / ``instance_profile``: resources created on moto (the
  VPC is 127.64.0.0/16, so every instance's private address is a loopback address the CLI can
  probe without leaving this machine; the test checks that before any probe happens);
- ``balancer``: the nginx file locations of an embedded nginx (upstream name and settings kept);
- ``metrics.url`` / ``file_sd_path``: an embedded Prometheus scraping an exporter of light load,
  and a target file in the test's folder;
- ``scaling.behavior.scale_in``: stabilization 0s and no rate limit, because the test's ticks are
  seconds apart, not minutes;
- ``scaling.schedules``: removed, because a floor that happens to be open when the test runs (a
  date window, a weekday morning) would change the count it launches.

The region, the image look-up by model-version tag, the instance types, tags, health, drain and
checks are the example's own. The AMI is registered on moto with the example's model-version tag,
next to a newer AMI of another model version that the look-up must not pick.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cloud_once_support import (
    POLICIES,
    NodeFleet,
    OnceScenario,
    PolicyCopy,
    assert_loopback,
    cli_env,
    lower_count,
    run_once,
    wait_for_checks,
)

from autoscaler.domain import (
    MANAGED_BY_VALUE,
    TAG_LAUNCH_TOKEN,
    TAG_MANAGED_BY,
    TAG_MODEL_VERSION,
    TAG_POOL,
    TAG_PORT,
)
from autoscaler.embedded import EmbeddedNginx, EmbeddedPrometheus
from autoscaler.policy.load import load_policy
from autoscaler.policy.model import AwsProviderConfig, NginxBalancerConfig
from autoscaler.testing.moto_server import (
    DUMMY_AWS_ENV,
    Ec2Sandbox,
    MotoServer,
    bake_model_image,
    running_moto_server,
)

EXAMPLE = POLICIES / "asr-aws.yaml"
#: The sandbox VPC: inside 127.0.0.0/8, so instance addresses are loopback addresses.
VPC_CIDR = ipaddress.IPv4Network("127.64.0.0/16")
SUBNET_PREFIX = 20
INSTANCE_PROFILE = "asr-node-cloud-once"


@dataclass(frozen=True)
class AwsCloud:
    """The moto server, the sandbox the copy launches into and the AMI the look-up should find."""

    moto: MotoServer
    sandbox: Ec2Sandbox
    image: str
    other_image: str

    def describe(self, instance_ids: Iterable[str]) -> dict[str, Any]:
        """``DescribeInstances`` of the ids, by id."""
        reply = self.sandbox.client("ec2").describe_instances(InstanceIds=list(instance_ids))
        return {i["InstanceId"]: i for r in reply["Reservations"] for i in r["Instances"]}

    def endpoints(self, instance_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
        """Private address and ``autoscaler:port`` tag of each instance."""
        found = self.describe(instance_ids)
        return {iid: (raw["PrivateIpAddress"], int(_tags(raw)[TAG_PORT])) for iid, raw in found.items()}

    def live(self, instance_ids: Iterable[str]) -> set[str]:
        """The ids EC2 reports pending or running."""
        return {iid for iid, raw in self.describe(instance_ids).items()
                if raw["State"]["Name"] in ("pending", "running")}


def _tags(raw: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in raw.get("Tags", [])}


def make_loopback_sandbox(moto: MotoServer, *, region: str, subnets: int) -> Ec2Sandbox:
    """A VPC in ``VPC_CIDR`` with ``subnets`` /20 subnets across the region's zones, a security
    group, an instance profile and a base AMI, created on moto."""
    import boto3

    ec2 = boto3.client("ec2", region_name=region, endpoint_url=moto.endpoint_url)
    iam = boto3.client("iam", region_name=region, endpoint_url=moto.endpoint_url)
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
    vpc = ec2.create_vpc(CidrBlock=str(VPC_CIDR))["Vpc"]["VpcId"]
    blocks = list(VPC_CIDR.subnets(new_prefix=SUBNET_PREFIX))[:subnets]
    subnet_ids = tuple(
        ec2.create_subnet(VpcId=vpc, CidrBlock=str(block), AvailabilityZone=zones[n % len(zones)])
        ["Subnet"]["SubnetId"]
        for n, block in enumerate(blocks)
    )
    group = ec2.create_security_group(GroupName="asr-nodes", Description="ASR nodes", VpcId=vpc)["GroupId"]
    role = f"{INSTANCE_PROFILE}-role"
    iam.create_role(RoleName=role, AssumeRolePolicyDocument='{"Version":"2012-10-17"}')
    iam.create_instance_profile(InstanceProfileName=INSTANCE_PROFILE)
    iam.add_role_to_instance_profile(InstanceProfileName=INSTANCE_PROFILE, RoleName=role)
    base = ec2.register_image(
        Name="base-linux", Architecture="x86_64", VirtualizationType="hvm", RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 20}}],
    )["ImageId"]
    return Ec2Sandbox(endpoint_url=moto.endpoint_url, region=region, vpc_id=vpc,
                      zones=tuple(zones[: len(subnet_ids)]), subnets=subnet_ids, security_group=group,
                      instance_profile=INSTANCE_PROFILE, base_image=base)


@pytest.fixture
def aws_cloud() -> Iterator[AwsCloud]:
    """A validating moto server with the loopback sandbox and the example's model image; stopped after."""
    example = load_policy(EXAMPLE)
    assert isinstance(example.provider, AwsProviderConfig), "the AWS example must use the aws provider"
    with running_moto_server() as moto:
        sandbox = make_loopback_sandbox(moto, region=example.provider.region,
                                        subnets=len(example.provider.subnets))
        subnet_blocks = [s["CidrBlock"] for s in sandbox.client("ec2").describe_subnets(
            SubnetIds=list(sandbox.subnets))["Subnets"]]
        assert all(ipaddress.IPv4Network(b).subnet_of(VPC_CIDR) for b in subnet_blocks), subnet_blocks
        image = bake_model_image(sandbox, example.launch.model_version)
        # Newer and of another model: the look-up by tag must still pick ``image``.
        other = bake_model_image(sandbox, f"{example.launch.model_version}-other")
        yield AwsCloud(moto=moto, sandbox=sandbox, image=image, other_image=other)


def test_once_on_moto_launches_example_count_then_holds_then_drains_before_terminating(
    aws_cloud: AwsCloud,
    low_load_prometheus: Callable[[str], EmbeddedPrometheus],
    start_nginx: Callable[[str], EmbeddedNginx],
    node_fleet: NodeFleet,
    tmp_path: Path,
) -> None:
    """`once` with the AWS example launches min_nodes right, then nothing, and drains before terminating."""
    copy = PolicyCopy(EXAMPLE, tmp_path / "asr-aws.yaml")
    example = copy.original
    assert isinstance(example.balancer, NginxBalancerConfig)
    sandbox = aws_cloud.sandbox
    nginx = start_nginx(example.balancer.upstream)
    prometheus = low_load_prometheus(example.pool)

    provider = copy.section("provider")
    provider["subnets"] = list(sandbox.subnets)
    provider["security_groups"] = [sandbox.security_group]
    provider["instance_profile"] = sandbox.instance_profile
    copy.point_balancer_at(nginx)
    copy.point_metrics_at(prometheus.url, tmp_path / "file_sd" / f"{example.pool}.json")
    copy.make_scale_in_immediate()
    copy.drop_schedules()
    copy.drop_warm_pool()
    policy = copy.write()
    assert isinstance(policy.provider, AwsProviderConfig) and isinstance(example.provider, AwsProviderConfig)
    assert policy.provider.region == example.provider.region  # the example's region, served by moto
    wait_for_checks(prometheus.url, policy)

    env = cli_env({**DUMMY_AWS_ENV, "AWS_ENDPOINT_URL": aws_cloud.moto.endpoint_url})
    store_url = f"sqlite:///{tmp_path / 'store.db'}"

    # 1. The first run launches the example's count, as the example describes it.
    first = run_once(copy.path, store_url, env=env, cwd=tmp_path)
    count = policy.scaling.min_nodes
    assert len(first["launched"]) == count
    assert first["decision"]["desired"] == count
    found = aws_cloud.describe(first["launched"])
    assert sorted(found) == sorted(first["launched"])
    assert_loopback(raw.get("PrivateIpAddress") for raw in found.values())
    for raw in found.values():
        assert raw["ImageId"] == aws_cloud.image
        assert raw["InstanceType"] == policy.launch.instance_types[0].name
        assert raw["SubnetId"] == sandbox.subnets[0]  # the first subnet in order of preference
        assert [g["GroupId"] for g in raw["SecurityGroups"]] == [sandbox.security_group]
        assert raw["IamInstanceProfile"]["Arn"].endswith(f"/{INSTANCE_PROFILE}")
        tags = _tags(raw)
        assert tags[TAG_POOL] == policy.pool
        assert tags[TAG_MODEL_VERSION] == policy.launch.model_version
        assert tags[TAG_MANAGED_BY] == MANAGED_BY_VALUE
        assert tags[TAG_LAUNCH_TOKEN] == f"{policy.pool}-tick-{first['tick_id']}"
        assert tags[TAG_PORT] == str(policy.launch.port)
        assert policy.launch.tags.items() <= tags.items()
    assert policy.metrics.file_sd_path is not None
    assert Path(policy.metrics.file_sd_path).read_text(encoding="utf-8").count('"instance_id"') == count

    scenario = OnceScenario(copy=copy, policy=policy, store_url=store_url, env=env, cwd=tmp_path,
                            nginx=nginx, fleet=node_fleet, cloud=aws_cloud, launched=first["launched"],
                            ticks=1)
    # 2. A second run launches nothing (the nodes are booting), 3. and nothing once they serve.
    scenario.second_run_launches_nothing()
    scenario.nodes_join()
    # 4. A lower count drains the victims first, then terminates them once their streams end.
    victims = scenario.lower_count_drains_then_terminates(lower_count(count))
    assert {raw["State"]["Name"] for raw in aws_cloud.describe(victims).values()} <= {
        "shutting-down", "terminated"}
    scenario.check_store(victims)

