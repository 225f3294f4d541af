"""AwsProvider against moto in server mode on 127.0.0.1 (AMI and instance-type validation on).

Faults moto cannot produce (throttling, no stock, quotas) are injected with botocore's
``before-send`` hook on the provider's own client, so the provider's real retry and fallback
paths run.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from autoscaler.domain import (
    MANAGED_BY_VALUE,
    TAG_LAUNCH_TOKEN,
    TAG_MANAGED_BY,
    TAG_MODEL_VERSION,
    TAG_POOL,
    CloudState,
    LaunchSpec,
    TerminateOutcome,
)
from autoscaler.errors import (
    InsufficientCapacity,
    PolicyError,
    ProviderError,
    QuotaExceeded,
    TransientProviderError,
)
from autoscaler.policy.model import AwsProviderConfig, PoolPolicy
from autoscaler.providers.aws import TAG_PORT, AwsProvider, attempt_client_token
from autoscaler.providers.retry import RetryBudget
from autoscaler.testing import moto_server as moto_fixtures
from autoscaler.testing.moto_server import Ec2Sandbox, RequestFaults, aws_error_response, bake_model_image

# The shared moto fixtures, bound to this module's names so pytest finds them.
moto_server = moto_fixtures.moto_server
moto = moto_fixtures.moto
ec2_sandbox = moto_fixtures.ec2_sandbox

POOL = "asr-aws"
MODEL = "fun-asr-nano-2512"
TYPES = ("g5.xlarge", "g4dn.xlarge")
USER_DATA = "#!/bin/bash\necho 'ASR_HISTORY_DSN from secret' > /etc/asr/env\n"


def config_for(sandbox: Ec2Sandbox, **overrides: Any) -> AwsProviderConfig:
    """An AwsProviderConfig launching into the sandbox's subnets, group and instance profile."""
    fields: dict[str, Any] = {
        "kind": "aws", "region": sandbox.region, "endpoint_url": sandbox.endpoint_url,
        "subnets": list(sandbox.subnets), "security_groups": [sandbox.security_group],
        "instance_profile": sandbox.instance_profile,
    }
    return AwsProviderConfig(**(fields | overrides))


@pytest.fixture
def model_image(ec2_sandbox: Ec2Sandbox) -> str:
    """An AMI tagged with the pool's model version."""
    return bake_model_image(ec2_sandbox, MODEL)


@pytest.fixture
def spec(model_image: str) -> LaunchSpec:
    """A spec that looks the AMI up by model version, with user data and one custom tag."""
    return LaunchSpec(pool=POOL, image="", model_version=MODEL, instance_types=TYPES, port=7860,
                      user_data=USER_DATA, tags={"team": "asr"})


@pytest.fixture
def make_provider(ec2_sandbox: Ec2Sandbox) -> Callable[..., AwsProvider]:
    """Build AwsProviders on the sandbox: ``budget=`` for the provider, other keywords for the config."""
    def make(budget: RetryBudget | None = None, **overrides: Any) -> AwsProvider:
        return AwsProvider(config_for(ec2_sandbox, **overrides), budget=budget)

    return make


@pytest.fixture
def provider(make_provider: Callable[..., AwsProvider]) -> AwsProvider:
    """A provider with the default budget."""
    return make_provider()


def describe(sandbox: Ec2Sandbox, instance_id: str) -> dict[str, Any]:
    """EC2's own view of one instance."""
    reply = sandbox.client("ec2").describe_instances(InstanceIds=[instance_id])
    return dict(reply["Reservations"][0]["Instances"][0])


def pool_ids(sandbox: Ec2Sandbox, pool: str = POOL) -> set[str]:
    """Ids of every non-terminated instance tagged with ``pool``, read straight from EC2."""
    reply = sandbox.client("ec2").describe_instances(Filters=[
        {"Name": f"tag:{TAG_POOL}", "Values": [pool]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
    ])
    return {i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"]}


def throttled(code: str = "RequestLimitExceeded") -> Any:
    """EC2's throttling reply: HTTP 503 with ``RequestLimitExceeded``."""
    return aws_error_response(code, "Request limit exceeded.", status=503)


# ----------------------------------------------------------------------------------------------- launch
def test_launch_sets_image_network_profile_user_data_and_tags(
    provider: AwsProvider, spec: LaunchSpec, ec2_sandbox: Ec2Sandbox, model_image: str
) -> None:
    """A launch uses the model's AMI, the first subnet, the group, the profile, the user data, and tags
    instance and volumes with pool, model version, managed-by, token, port and the spec's tags."""
    result = provider.launch(spec, 2, "tok-launch")
    assert result.shortfall is None and len(result.instances) == 2
    want = {TAG_POOL: POOL, TAG_MODEL_VERSION: MODEL, TAG_MANAGED_BY: MANAGED_BY_VALUE,
            TAG_LAUNCH_TOKEN: "tok-launch", TAG_PORT: "7860", "team": "asr"}
    ec2 = ec2_sandbox.client("ec2")
    for inst in result.instances:
        raw = describe(ec2_sandbox, inst.id)
        assert raw["ImageId"] == model_image == inst.image
        assert raw["InstanceType"] == TYPES[0] == inst.instance_type
        assert raw["SubnetId"] == ec2_sandbox.subnets[0], result.notes
        assert inst.zone == ec2_sandbox.zones[0]
        assert [g["GroupId"] for g in raw["SecurityGroups"]] == [ec2_sandbox.security_group]
        assert raw["IamInstanceProfile"]["Arn"].endswith(f"instance-profile/{ec2_sandbox.instance_profile}")
        assert {t["Key"]: t["Value"] for t in raw["Tags"]} == want
        assert inst.address == raw["PrivateIpAddress"] and inst.port == 7860
        assert inst.endpoint == f"{raw['PrivateIpAddress']}:7860"
        user_data = ec2.describe_instance_attribute(InstanceId=inst.id, Attribute="userData")["UserData"]
        assert base64.b64decode(user_data["Value"]).decode() == USER_DATA
        volumes = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [inst.id]}])
        assert volumes["Volumes"]
        for volume in volumes["Volumes"]:
            assert {t["Key"]: t["Value"] for t in volume["Tags"]} == want


def test_image_lookup_takes_newest_ami_of_the_model_version(
    provider: AwsProvider, spec: LaunchSpec, ec2_sandbox: Ec2Sandbox, model_image: str
) -> None:
    """With no AMI id, the newest AMI tagged with the spec's model version is used, not another version's."""
    bake_model_image(ec2_sandbox, "fun-asr-nano-2601")
    time.sleep(1.1)  # moto's CreationDate has one-second resolution
    newer = bake_model_image(ec2_sandbox, MODEL, name="asr-node-rebuilt")
    [inst] = provider.launch(spec, 1, "tok-newest").instances
    assert inst.image == newer != model_image


def test_explicit_ami_id_is_launched_as_given(
    provider: AwsProvider, spec: LaunchSpec, ec2_sandbox: Ec2Sandbox
) -> None:
    """An AMI id in the spec is launched without any look-up."""
    other = bake_model_image(ec2_sandbox, "pinned-build")
    [inst] = provider.launch(spec.__class__(**{**spec.__dict__, "image": other}), 1, "tok-pinned").instances
    assert describe(ec2_sandbox, inst.id)["ImageId"] == other


def test_no_ami_for_the_model_version_is_a_provider_error(provider: AwsProvider, spec: LaunchSpec) -> None:
    """Looking up a model version no AMI is tagged with fails with ProviderError and launches nothing."""
    missing = LaunchSpec(pool=POOL, image="", model_version="never-baked", instance_types=TYPES)
    with pytest.raises(ProviderError, match="never-baked"):
        provider.launch(missing, 1, "tok-no-ami")
    assert provider.list_instances(POOL) == []


def test_unknown_ami_id_is_rejected_by_validation(provider: AwsProvider, spec: LaunchSpec) -> None:
    """An AMI id EC2 does not know is a ProviderError chained to EC2's error (moto validates AMIs)."""
    bogus = LaunchSpec(pool=POOL, image="ami-0123456789abcdef0", model_version=MODEL, instance_types=TYPES)
    with pytest.raises(ProviderError) as caught:
        provider.launch(bogus, 1, "tok-bad-ami")
    assert isinstance(caught.value.__cause__, ClientError)
    assert "InvalidAMIID" in str(caught.value)


def test_unknown_instance_type_is_skipped_for_the_next(provider: AwsProvider, spec: LaunchSpec) -> None:
    """A type the region does not offer (moto's type validation) is skipped; the next type launches."""
    odd = LaunchSpec(pool=POOL, image="", model_version=MODEL, instance_types=("g5.imaginary", TYPES[0]))
    result = provider.launch(odd, 1, "tok-odd-type")
    assert [i.instance_type for i in result.instances] == [TYPES[0]]
    assert any("g5.imaginary" in note for note in result.notes)


def test_only_unknown_types_is_a_provider_error(provider: AwsProvider, spec: LaunchSpec) -> None:
    """When no listed type exists, launch raises ProviderError (neither capacity nor quota)."""
    odd = LaunchSpec(pool=POOL, image="", model_version=MODEL, instance_types=("g5.imaginary",))
    with pytest.raises(ProviderError) as caught:
        provider.launch(odd, 1, "tok-only-odd")
    assert not isinstance(caught.value, InsufficientCapacity | QuotaExceeded)


def test_zero_count_launches_nothing(
    provider: AwsProvider, spec: LaunchSpec, ec2_sandbox: Ec2Sandbox
) -> None:
    """count=0 with a fresh token returns no instance and launches none."""
    assert provider.launch(spec, 0, "tok-zero").instances == ()
    assert pool_ids(ec2_sandbox) == set()


# ------------------------------------------------------------------------------------------ idempotency
def test_restart_with_same_token_launches_nothing_new(
    make_provider: Callable[..., AwsProvider], spec: LaunchSpec, ec2_sandbox: Ec2Sandbox
) -> None:
    """A new provider object (a controller restart) given the same token finds the instances by tag."""
    first = make_provider().launch(spec, 2, "tok-restart")
    again = make_provider().launch(spec, 2, "tok-restart")
    assert {i.id for i in again.instances} == {i.id for i in first.instances}
    assert pool_ids(ec2_sandbox) == {i.id for i in first.instances}


def test_each_request_carries_a_derived_client_token(
    provider: AwsProvider, spec: LaunchSpec, ec2_sandbox: Ec2Sandbox
) -> None:
    """RunInstances gets a ClientToken derived from the caller's token and that request's parameters."""
    with RequestFaults(provider.client, "RunInstances", lambda n, params: None) as seen:
        [inst] = provider.launch(spec, 1, "tok-client-token").instances
    [params] = seen.calls
    expected = attempt_client_token("tok-client-token", TYPES[0], ec2_sandbox.subnets[0], 1, 0)
    assert params["ClientToken"] == expected
    assert describe(ec2_sandbox, inst.id)["ClientToken"] == expected


def test_attempt_client_token_is_deterministic_bounded_and_distinct() -> None:
    """Derived tokens repeat for the same request, differ across type/subnet/count, and fit EC2's 64."""
    token = "decision-" + "x" * 80
    base = attempt_client_token(token, "g5.xlarge", "subnet-1", 2, 0)
    assert base == attempt_client_token(token, "g5.xlarge", "subnet-1", 2, 0)
    assert len(base) <= 64 and base.isascii()
    variants = {attempt_client_token(token, "g4dn.xlarge", "subnet-1", 2, 0),
                attempt_client_token(token, "g5.xlarge", "subnet-2", 2, 0),
                attempt_client_token(token, "g5.xlarge", "subnet-1", 1, 1)}
    assert base not in variants and len(variants) == 3


# -------------------------------------------------------------------------------- throttling and 5xx
def test_throttled_launch_is_retried_then_succeeds(
    provider: AwsProvider, spec: LaunchSpec, ec2_sandbox: Ec2Sandbox
) -> None:
    """Two throttled RunInstances replies are retried by botocore with the same ClientToken; one launch."""
    answer = lambda n, _: throttled() if n <= 2 else None  # noqa: E731
    with RequestFaults(provider.client, "RunInstances", answer) as faults:
        result = provider.launch(spec, 1, "tok-throttled")
    assert len(faults.calls) == 3
    assert len({c["ClientToken"] for c in faults.calls}) == 1
    assert result.shortfall is None and len(result.instances) == 1
    assert pool_ids(ec2_sandbox) == {i.id for i in result.instances}


def test_endless_throttling_raises_transient_error_within_the_budget(
    make_provider: Callable[..., AwsProvider], spec: LaunchSpec, ec2_sandbox: Ec2Sandbox
) -> None:
    """Throttling on every request ends in TransientProviderError, chained, inside the 2 s deadline."""
    budget = RetryBudget(deadline_s=2.0, max_rounds=10, base_delay_s=0.1, max_delay_s=0.3)
    provider = make_provider(budget=budget, max_attempts=10)
    with RequestFaults(provider.client, "RunInstances", lambda n, _: throttled()) as faults:
        started = time.monotonic()
        with pytest.raises(TransientProviderError) as caught:
            provider.launch(spec, 1, "tok-throttled-forever")
        elapsed = time.monotonic() - started
    assert elapsed < 2.0 + 1.5  # the deadline plus request latency: no backoff sleeps past it
    assert len(faults.calls) >= 2
    cause = caught.value.__cause__
    assert isinstance(cause, ClientError) and cause.response["Error"]["Code"] == "RequestLimitExceeded"
    assert pool_ids(ec2_sandbox) == set()


def test_server_errors_on_describe_are_retried(provider: AwsProvider, spec: LaunchSpec) -> None:
    """A 500 InternalError on DescribeInstances is retried and the list is complete."""
    launched = {i.id for i in provider.launch(spec, 2, "tok-5xx").instances}
    answer = lambda n, _: aws_error_response("InternalError", status=500) if n == 1 else None  # noqa: E731
    with RequestFaults(provider.client, "DescribeInstances", answer) as faults:
        listed = {i.id for i in provider.list_instances(POOL)}
    assert listed == launched
    assert len(faults.calls) == 2


def test_persistent_server_errors_on_list_raise_transient_error(
    make_provider: Callable[..., AwsProvider]
) -> None:
    """list_instances never returns a partial or empty list on failure: it raises TransientProviderError."""
    budget = RetryBudget(deadline_s=1.0, max_rounds=2, base_delay_s=0.05)
    provider = make_provider(budget=budget, max_attempts=2)
    answer = lambda n, _: aws_error_response("Unavailable", status=503)  # noqa: E731
    with RequestFaults(provider.client, "DescribeInstances", answer), pytest.raises(TransientProviderError):
        provider.list_instances(POOL)


# ---------------------------------------------------------------------------------- capacity and quota
def capacity_for(instance_type: str, subnet: str | None = None) -> Callable[[int, Any], Any]:
    """Answer RunInstances with InsufficientInstanceCapacity (HTTP 500, as EC2 does) for one type
    (in one subnet, or in all)."""
    def answer(_: int, params: Any) -> Any:
        if params.get("InstanceType") == instance_type and subnet in (None, params.get("SubnetId")):
            message = f"We currently do not have sufficient {instance_type} capacity."
            return aws_error_response("InsufficientInstanceCapacity", message, status=500)
        return None

    return answer


def test_no_stock_of_first_type_falls_back_to_second(
    provider: AwsProvider, spec: LaunchSpec, ec2_sandbox: Ec2Sandbox
) -> None:
    """No stock of the first type in any subnet: each subnet is tried once (no SDK retry), then type two."""
    with RequestFaults(provider.client, "RunInstances", capacity_for(TYPES[0])) as faults:
        result = provider.launch(spec, 2, "tok-capacity")
    tried = [(c["InstanceType"], c["SubnetId"]) for c in faults.calls]
    assert tried[:2] == [(TYPES[0], ec2_sandbox.subnets[0]), (TYPES[0], ec2_sandbox.subnets[1])]
    assert set(tried[2:]) == {(TYPES[1], ec2_sandbox.subnets[0])}
    assert result.shortfall is None
    assert {i.instance_type for i in result.instances} == {TYPES[1]}
    assert len(result.notes) == 2 and all("InsufficientInstanceCapacity" in n for n in result.notes)


def test_no_stock_in_first_zone_uses_the_next_zone(
    provider: AwsProvider, spec: LaunchSpec, ec2_sandbox: Ec2Sandbox
) -> None:
    """No stock of the first type in the first subnet only: the first type launches in the second zone."""
    with RequestFaults(provider.client, "RunInstances", capacity_for(TYPES[0], ec2_sandbox.subnets[0])):
        result = provider.launch(spec, 1, "tok-zone")
    [inst] = result.instances
    assert inst.instance_type == TYPES[0] and inst.zone == ec2_sandbox.zones[1]


def test_no_stock_anywhere_raises_insufficient_capacity(provider: AwsProvider, spec: LaunchSpec) -> None:
    """No stock of any type in any subnet raises InsufficientCapacity chained to EC2's error."""
    def answer(_: int, params: Any) -> Any:
        return aws_error_response("InsufficientInstanceCapacity", status=500)

    with RequestFaults(provider.client, "RunInstances", answer) as faults, \
            pytest.raises(InsufficientCapacity) as caught:
        provider.launch(spec, 1, "tok-no-stock")
    assert len(faults.calls) == len(TYPES) * 2
    assert caught.value.instance_type == TYPES[-1]
    assert isinstance(caught.value.__cause__, ClientError)


@pytest.mark.parametrize(
    ("code", "asked"), [("InstanceLimitExceeded", list(TYPES)), ("VcpuLimitExceeded", [TYPES[0]]),
                        ("MaxSpotInstanceCountExceeded", [TYPES[0]])]
)
def test_quota_with_nothing_launched_raises_quota_exceeded(
    provider: AwsProvider, spec: LaunchSpec, code: str, asked: list[str]
) -> None:
    """A quota error skips the refused group's other zones and types and raises QuotaExceeded: the
    per-type InstanceLimitExceeded still lets g4dn be asked once, the G-class VcpuLimitExceeded and
    the account-wide Spot count do not."""
    answer = lambda n, _: aws_error_response(code, "You have requested more instances.")  # noqa: E731
    with RequestFaults(provider.client, "RunInstances", answer) as faults, \
            pytest.raises(QuotaExceeded) as caught:
        provider.launch(spec, 2, f"tok-{code}")
    assert [c["InstanceType"] for c in faults.calls] == asked
    assert isinstance(caught.value.__cause__, ClientError)
    assert "quota group" in str(caught.value)


def test_quota_in_one_class_and_no_stock_in_the_other_sends_nothing_until_a_pause_ends(
    provider: AwsProvider, spec: LaunchSpec, ec2_sandbox: Ec2Sandbox
) -> None:
    """G and VT at its vCPU quota and no p4d stock in either subnet: the first launch asks g5 once and
    p4d in each subnet, then raises InsufficientCapacity naming both; a second launch sends no
    RunInstances at all and says which group and offers are paused."""
    mixed = replace(spec, instance_types=("g5.xlarge", "p4d.24xlarge"))

    def answer(_: int, params: Any) -> Any:
        if params.get("InstanceType") == "g5.xlarge":
            return aws_error_response("VcpuLimitExceeded", "vCPU limit of the G and VT bucket")
        return aws_error_response("InsufficientInstanceCapacity", status=500)

    with RequestFaults(provider.client, "RunInstances", answer) as faults:
        with pytest.raises(InsufficientCapacity) as first:
            provider.launch(mixed, 2, "tok-mixed-1")
        assert [(c["InstanceType"], c["SubnetId"]) for c in faults.calls] == [
            ("g5.xlarge", ec2_sandbox.subnets[0]), ("p4d.24xlarge", ec2_sandbox.subnets[0]),
            ("p4d.24xlarge", ec2_sandbox.subnets[1])]
        assert "'On-Demand G and VT vCPUs'" in str(first.value)
        assert "InsufficientInstanceCapacity" in str(first.value)
        with pytest.raises(InsufficientCapacity) as second:
            provider.launch(mixed, 2, "tok-mixed-2")
        assert len(faults.calls) == 3
    assert "g5.xlarge: skipped" in str(second.value) and "'On-Demand G and VT vCPUs'" in str(second.value)
    assert "p4d.24xlarge in" in str(second.value) and "skipped" in str(second.value)


def test_quota_after_some_launched_reports_a_quota_shortfall(
    provider: AwsProvider, spec: LaunchSpec
) -> None:
    """When the token already has instances and the quota blocks the rest, the result says 'quota'."""
    [first] = provider.launch(spec, 1, "tok-partial").instances
    with RequestFaults(provider.client, "RunInstances",
                       lambda n, _: aws_error_response("InstanceLimitExceeded")) as faults:
        result = provider.launch(spec, 3, "tok-partial")
    assert [i.id for i in result.instances] == [first.id]
    assert result.shortfall == "quota"
    assert len(faults.calls) == len(TYPES)  # one per type: InstanceLimitExceeded is a per-type limit
    assert "InstanceLimitExceeded" in result.notes[0] and "quota group 'type g5.xlarge'" in result.notes[0]


def test_capacity_after_some_launched_reports_a_capacity_shortfall(
    provider: AwsProvider, spec: LaunchSpec
) -> None:
    """Instances already there for the token plus no stock anywhere: the result says 'capacity'."""
    provider.launch(spec, 1, "tok-partial-capacity")
    with RequestFaults(provider.client, "RunInstances",
                       lambda n, _: aws_error_response("InsufficientInstanceCapacity", status=500)):
        result = provider.launch(spec, 2, "tok-partial-capacity")
    assert len(result.instances) == 1 and result.shortfall == "capacity"


# --------------------------------------------------------------------------------- inventory, terminate
def test_list_maps_states_and_skips_other_pools_and_terminated(
    provider: AwsProvider, spec: LaunchSpec, ec2_sandbox: Ec2Sandbox
) -> None:
    """The list holds the pool's live instances (a stopped one as STOPPING or STOPPED), nothing terminated."""
    a, b, c = provider.launch(spec, 3, "tok-list").instances
    provider.launch(LaunchSpec(pool="other-pool", image="", model_version=MODEL, instance_types=TYPES),
                    1, "tok-other")
    ec2 = ec2_sandbox.client("ec2")
    ec2.stop_instances(InstanceIds=[b.id])
    ec2.terminate_instances(InstanceIds=[c.id])
    listed = {i.id: i for i in provider.list_instances(POOL)}
    assert set(listed) == {a.id, b.id}
    assert listed[a.id].state in (CloudState.PENDING, CloudState.RUNNING)
    assert listed[b.id].state in (CloudState.STOPPING, CloudState.STOPPED)
    assert listed[a.id].launched_at.tzinfo is not None
    assert listed[a.id].launch_token == "tok-list" and listed[a.id].model_version == MODEL


def test_list_reads_every_page(provider: AwsProvider, spec: LaunchSpec) -> None:
    """Inventory follows pagination: with pages of 5 (EC2's smallest), all 7 instances are listed."""
    launched = {i.id for i in provider.launch(spec, 7, "tok-pages").instances}

    def small_pages(params: dict[str, Any], **_: Any) -> None:
        params["MaxResults"] = 5
    provider.client.meta.events.register("provide-client-params.ec2.DescribeInstances", small_pages)
    with RequestFaults(provider.client, "DescribeInstances", lambda n, _: None) as pages:
        listed = {i.id for i in provider.list_instances(POOL)}
    assert listed == launched
    assert len(pages.calls) == 2 and "NextToken" in pages.calls[1]


def test_port_comes_back_from_its_tag(make_provider: Callable[..., AwsProvider], spec: LaunchSpec) -> None:
    """The spec's port is stored in a tag, so a fresh provider lists it."""
    custom = LaunchSpec(pool=POOL, image="", model_version=MODEL, instance_types=TYPES, port=9000)
    make_provider().launch(custom, 1, "tok-port")
    [inst] = make_provider().list_instances(POOL)
    assert inst.port == 9000 and inst.tags[TAG_PORT] == "9000"


def test_terminate_reports_each_id_and_skips_unknown_ones(provider: AwsProvider, spec: LaunchSpec) -> None:
    """Live ids are TERMINATING, unknown and malformed ids ALREADY_GONE, in one call without raising."""
    a, b = provider.launch(spec, 2, "tok-term").instances
    outcome = provider.terminate([a.id, "i-0000000000deadbeef", "not-an-id", b.id, a.id])
    assert outcome == {a.id: TerminateOutcome.TERMINATING, b.id: TerminateOutcome.TERMINATING,
                       "i-0000000000deadbeef": TerminateOutcome.ALREADY_GONE,
                       "not-an-id": TerminateOutcome.ALREADY_GONE}
    assert provider.terminate([a.id]) == {a.id: TerminateOutcome.ALREADY_GONE}


def test_terminate_survives_an_instance_vanishing_mid_call(provider: AwsProvider, spec: LaunchSpec) -> None:
    """If the batch fails with NotFound (an id vanished after the look-up), the ids are terminated singly."""
    a, b = provider.launch(spec, 2, "tok-vanish").instances
    answer = lambda n, _: aws_error_response("InvalidInstanceID.NotFound") if n == 1 else None  # noqa: E731
    with RequestFaults(provider.client, "TerminateInstances", answer) as faults:
        outcome = provider.terminate([a.id, b.id])
    assert outcome == {a.id: TerminateOutcome.TERMINATING, b.id: TerminateOutcome.TERMINATING}
    assert [c.get("InstanceId.1") for c in faults.calls[1:]] == [a.id, b.id]
    assert provider.list_instances(POOL) == []


def test_terminate_refuses_instances_not_managed_by_the_autoscaler(
    provider: AwsProvider, spec: LaunchSpec, ec2_sandbox: Ec2Sandbox
) -> None:
    """An id of an instance without the managed-by tag fails the call and nothing is terminated."""
    [ours] = provider.launch(spec, 1, "tok-foreign").instances
    foreign = ec2_sandbox.client("ec2").run_instances(
        ImageId=ec2_sandbox.base_image, InstanceType="t3.micro", MinCount=1, MaxCount=1,
        SubnetId=ec2_sandbox.subnets[0])["Instances"][0]["InstanceId"]
    with pytest.raises(ProviderError, match=foreign):
        provider.terminate([ours.id, foreign])
    assert describe(ec2_sandbox, foreign)["State"]["Name"] in ("pending", "running")
    assert [i.id for i in provider.list_instances(POOL)] == [ours.id]


def test_terminate_nothing_makes_no_request(provider: AwsProvider) -> None:
    """An empty id list returns {} without calling EC2."""
    with RequestFaults(provider.client, "DescribeInstances", lambda n, _: None) as seen:
        assert provider.terminate([]) == {}
    assert seen.calls == []


# ------------------------------------------------------------------------------- credentials, policy
def test_missing_credentials_is_a_provider_error(
    ec2_sandbox: Ec2Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """With no credentials in boto3's chain, calls fail with ProviderError (no secret in the message)."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    provider = AwsProvider(config_for(ec2_sandbox), session=boto3.Session())
    with pytest.raises(ProviderError, match="credentials") as caught:
        provider.list_instances(POOL)
    assert caught.value.__cause__ is not None
    assert "testing" not in str(caught.value)


def test_for_policy_builds_from_an_aws_policy_only(ec2_sandbox: Ec2Sandbox) -> None:
    """for_policy takes the policy's aws provider section (endpoint included) and rejects other kinds."""
    document = {
        "pool": POOL,
        "provider": config_for(ec2_sandbox).model_dump(),
        "launch": {"model_version": MODEL, "image": {"lookup_by_model_version": True},
                   "instance_types": [{"name": TYPES[0], "price_per_hour": 1.0}]},
        "balancer": {"kind": "none"},
        "scaling": {"min_nodes": 0, "max_nodes": 2},
    }
    policy = PoolPolicy.model_validate(document)
    provider = AwsProvider.for_policy(policy)
    assert provider.client.meta.endpoint_url == ec2_sandbox.endpoint_url
    assert provider.list_instances(POOL) == []
    local = PoolPolicy.model_validate({**document, "provider": {"kind": "local"}})
    with pytest.raises(PolicyError):
        AwsProvider.for_policy(local)
