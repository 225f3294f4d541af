"""AlibabaProvider against the real alibabacloud_ecs20140526 SDK talking to the local ECS endpoint:
launch parameters and tags, idempotency across retries and restarts, paging, state mapping, retry
budget, capacity and quota fallbacks, terminate, and credential hygiene."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException

from autoscaler.domain import (
    MANAGED_BY_VALUE,
    TAG_LAUNCH_TOKEN,
    TAG_MANAGED_BY,
    TAG_MODEL_VERSION,
    TAG_POOL,
    TAG_PORT,
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
from autoscaler.policy.load import load_policy
from autoscaler.policy.model import AlibabaProviderConfig
from autoscaler.providers.alibaba import AlibabaProvider, EcsError, ecs_client_token
from autoscaler.providers.retry import RetryBudget
from autoscaler.testing.ecs_endpoint import EcsEndpoint, dummy_credentials

POOL = "asr-ecs"
GPU_A, GPU_B = "ecs.gn7i-c8g1.2xlarge", "ecs.gn6i-c4g1.xlarge"
VSWITCHES = {"vsw-h": "cn-hangzhou-h", "vsw-i": "cn-hangzhou-i"}
ZONE_H, ZONE_I = VSWITCHES["vsw-h"], VSWITCHES["vsw-i"]
EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "policies" / "asr-alibaba.yaml"
#: A budget that keeps retry tests fast: 4 attempts, tiny pauses, 5 s per operation.
FAST_BUDGET = RetryBudget(deadline_s=5.0, max_rounds=4, base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture
def credentials() -> Iterator[tuple[str, str]]:
    """Dummy access keys in the environment, the only place the provider's SDK may find them."""
    with dummy_credentials("LTAI-provider-test-id", "provider-test-secret-0123456789") as pair:
        yield pair


@pytest.fixture
def ecs(credentials: tuple[str, str]) -> Iterator[EcsEndpoint]:
    """A local ECS region with two vswitches in two zones that verifies every signature."""
    key_id, secret = credentials
    with EcsEndpoint(vswitches=VSWITCHES, credentials={key_id: secret}) as endpoint:
        yield endpoint


def make_config(ecs: EcsEndpoint, **overrides: Any) -> AlibabaProviderConfig:
    """A provider config for ``ecs`` (endpoint given as an http URL) with both vswitches in order."""
    fields: dict[str, Any] = {
        "kind": "alibaba", "region": ecs.region, "endpoint": ecs.url, "vswitches": list(VSWITCHES),
        "security_group": "sg-asr", "ram_role": "asr-node-role", "key_pair": "ops-key",
    }
    return AlibabaProviderConfig(**(fields | overrides))


@pytest.fixture
def sleeps() -> list[float]:
    """Every pause the provider's retry budget takes (the pauses still happen)."""
    return []


@pytest.fixture
def make_provider(ecs: EcsEndpoint, sleeps: list[float]) -> Callable[..., AlibabaProvider]:
    """Build providers for ``ecs`` (keywords as for AlibabaProvider; fast budget, recorded sleeps)."""
    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    def make(config: AlibabaProviderConfig | None = None, **options: Any) -> AlibabaProvider:
        defaults: dict[str, Any] = {"budget": FAST_BUDGET, "sleep": sleep}
        return AlibabaProvider(config or make_config(ecs), **(defaults | options))

    return make


@pytest.fixture
def provider(make_provider: Callable[..., AlibabaProvider]) -> AlibabaProvider:
    """A provider for the local endpoint."""
    return make_provider()


@pytest.fixture
def spec() -> LaunchSpec:
    """Two GPU types in order of preference, a boot script and a custom tag."""
    return LaunchSpec(pool=POOL, image="m-funasr-2512", model_version="fun-asr-nano-2512",
                      instance_types=(GPU_A, GPU_B), port=7861, user_data="#!/bin/sh\nsystemctl start asr\n",
                      tags={"team": "speech"})


def run_calls(ecs: EcsEndpoint) -> list[dict[str, str]]:
    """Parameters of every RunInstances the endpoint received."""
    return [dict(c.params) for c in ecs.calls("RunInstances")]


def delete_batches(ecs: EcsEndpoint) -> list[int]:
    """How many ids each DeleteInstances the endpoint received carried."""
    return [len([k for k in c.params if k.startswith("InstanceId.")]) for c in ecs.calls("DeleteInstances")]


def request_tags(params: dict[str, str]) -> dict[str, str]:
    """The Tag.N.Key/Value pairs of one request."""
    return {params[f"Tag.{n}.Key"]: params.get(f"Tag.{n}.Value", "")
            for n in range(1, 21) if f"Tag.{n}.Key" in params}


# ------------------------------------------------------------------------------------------ launch
def test_launch_sends_image_type_vswitch_tags_user_data_and_role(
    provider: AlibabaProvider, ecs: EcsEndpoint, spec: LaunchSpec
) -> None:
    """One RunInstances: Amount, ClientToken, image, first type/vswitch, group, role, tags, user data."""
    result = provider.launch(spec, 3, "tok-launch")
    assert result.shortfall is None
    assert len(result.instances) == 3
    [params] = run_calls(ecs)
    assert params["Amount"] == "3"
    assert params["ImageId"] == "m-funasr-2512"
    assert params["InstanceType"] == GPU_A
    assert params["VSwitchId"] == "vsw-h"
    assert params["SecurityGroupId"] == "sg-asr"
    assert params["RamRoleName"] == "asr-node-role"
    assert params["KeyPairName"] == "ops-key"
    assert len(params["ClientToken"]) <= 64
    assert base64.b64decode(params["UserData"]).decode() == spec.user_data
    assert request_tags(params) == {
        "team": "speech", TAG_POOL: POOL, TAG_MODEL_VERSION: "fun-asr-nano-2512",
        TAG_LAUNCH_TOKEN: "tok-launch", TAG_PORT: "7861", TAG_MANAGED_BY: MANAGED_BY_VALUE,
    }
    for inst in result.instances:
        assert (inst.pool, inst.model_version, inst.launch_token) == (POOL, spec.model_version, "tok-launch")
        assert (inst.instance_type, inst.zone, inst.image, inst.port) == (GPU_A, ZONE_H, spec.image, 7861)
        assert inst.state is CloudState.RUNNING
        assert inst.address == ecs.instances()[inst.id].private_ip
        assert inst.endpoint == f"{inst.address}:7861"
        assert inst.launched_at.tzinfo is not None


def test_same_token_twice_launches_nothing_new(provider: AlibabaProvider, ecs: EcsEndpoint,
                                               spec: LaunchSpec) -> None:
    """A second launch with the same token finds the token's instances by tag and sends no RunInstances."""
    first = provider.launch(spec, 2, "tok-twice")
    again = provider.launch(spec, 2, "tok-twice")
    assert {i.id for i in again.instances} == {i.id for i in first.instances}
    assert len(run_calls(ecs)) == 1
    assert len(ecs.instances()) == 2


def test_restart_with_same_token_launches_nothing_new(
    make_provider: Callable[..., AlibabaProvider], ecs: EcsEndpoint, spec: LaunchSpec
) -> None:
    """A new provider object (a restarted controller) with the same token launches nothing."""
    first = make_provider().launch(spec, 2, "tok-restart")
    again = make_provider().launch(spec, 2, "tok-restart")
    assert {i.id for i in again.instances} == {i.id for i in first.instances}
    assert len(ecs.instances()) == 2


def test_restart_before_instances_are_visible_is_idempotent_at_ecs(
    credentials: tuple[str, str], spec: LaunchSpec
) -> None:
    """If the tag lookup cannot see the first launch yet, the same ECS ClientToken returns its ids."""
    with EcsEndpoint(vswitches=VSWITCHES, visibility_delay_s=60.0) as ecs:
        first = AlibabaProvider(make_config(ecs), budget=FAST_BUDGET).launch(spec, 2, "tok-invisible")
        # Not described yet: the provider reports what it launched as pending placeholders.
        assert all(i.state is CloudState.PENDING for i in first.instances)
        again = AlibabaProvider(make_config(ecs), budget=FAST_BUDGET).launch(spec, 2, "tok-invisible")
        assert {i.id for i in again.instances} == {i.id for i in first.instances}
        assert len(ecs.instances()) == 2
        tokens = [c["ClientToken"] for c in run_calls(ecs)]
        assert len(tokens) == 2 and tokens[0] == tokens[1]


def test_different_token_launches_more(provider: AlibabaProvider, ecs: EcsEndpoint, spec: LaunchSpec) -> None:
    """A new token launches new instances beside the first token's."""
    first = {i.id for i in provider.launch(spec, 1, "tok-one").instances}
    second = {i.id for i in provider.launch(spec, 2, "tok-two").instances}
    assert len(second) == 2 and not first & second
    assert set(ecs.instances()) == first | second


def test_same_token_with_larger_count_launches_only_the_difference(
    provider: AlibabaProvider, ecs: EcsEndpoint, spec: LaunchSpec
) -> None:
    """Count 1 then 3 with one token: the second RunInstances asks for Amount 2 with a new ClientToken."""
    first = provider.launch(spec, 1, "tok-topup")
    more = provider.launch(spec, 3, "tok-topup")
    assert {i.id for i in first.instances} <= {i.id for i in more.instances}
    assert len(more.instances) == 3
    calls = run_calls(ecs)
    assert [c["Amount"] for c in calls] == ["1", "2"]
    assert calls[0]["ClientToken"] != calls[1]["ClientToken"]


def test_launch_of_zero_sends_nothing(provider: AlibabaProvider, ecs: EcsEndpoint, spec: LaunchSpec) -> None:
    """Launching 0 returns no instances and sends no RunInstances."""
    assert provider.launch(spec, 0, "tok-zero").instances == ()
    assert run_calls(ecs) == []


def test_more_than_one_hundred_are_launched_in_batches(
    make_provider: Callable[..., AlibabaProvider], ecs: EcsEndpoint, spec: LaunchSpec
) -> None:
    """120 instances in one vswitch take two RunInstances (ECS's Amount is at most 100) and all are listed."""
    provider = make_provider(make_config(ecs, vswitches=["vsw-h"]))
    result = provider.launch(spec, 120, "tok-many")
    assert len(result.instances) == 120 and result.shortfall is None
    assert [c["Amount"] for c in run_calls(ecs)] == ["100", "20"]
    assert len(provider.list_instances(POOL)) == 120
    outcomes = provider.terminate([i.id for i in result.instances])
    assert set(outcomes.values()) == {TerminateOutcome.TERMINATING}
    assert delete_batches(ecs) == [100, 20]


def test_empty_image_uses_the_newest_image_of_the_model_version(
    provider: AlibabaProvider, ecs: EcsEndpoint, spec: LaunchSpec
) -> None:
    """With no image id, the newest available image tagged with the model version is launched."""
    now = datetime.now(UTC)
    tags = {TAG_MODEL_VERSION: spec.model_version}
    ecs.add_image("m-older", tags=tags, created_at=now - timedelta(days=3))
    ecs.add_image("m-newest", tags=tags, created_at=now - timedelta(days=1))
    ecs.add_image("m-next-version", tags={TAG_MODEL_VERSION: "fun-asr-nano-2601"}, created_at=now)
    result = provider.launch(LaunchSpec(pool=POOL, image="", model_version=spec.model_version,
                                        instance_types=spec.instance_types), 1, "tok-image")
    assert result.instances[0].image == "m-newest"
    assert run_calls(ecs)[0]["ImageId"] == "m-newest"


def test_no_image_for_the_model_version_is_a_provider_error(provider: AlibabaProvider,
                                                            spec: LaunchSpec) -> None:
    """An image lookup that finds nothing raises ProviderError naming the model version."""
    with pytest.raises(ProviderError, match="fun-asr-nano-2512"):
        provider.launch(LaunchSpec(pool=POOL, image="", model_version=spec.model_version,
                                   instance_types=spec.instance_types), 1, "tok-noimage")


def test_too_many_tags_is_refused_before_any_call(provider: AlibabaProvider, ecs: EcsEndpoint) -> None:
    """A spec whose tags and the autoscaler's exceed ECS's 20 raises ProviderError and sends nothing."""
    crowded = LaunchSpec(pool=POOL, image="m-1", model_version="v1", instance_types=(GPU_A,),
                         tags={f"k{n}": "v" for n in range(16)})
    with pytest.raises(ProviderError, match="20 tags"):
        provider.launch(crowded, 1, "tok-tags")
    assert ecs.calls() == []


# ------------------------------------------------------------------------------------------ list
def test_list_reads_every_page(make_provider: Callable[..., AlibabaProvider], ecs: EcsEndpoint,
                               spec: LaunchSpec) -> None:
    """With a page size of 2, five instances take three DescribeInstances pages and all are listed."""
    provider = make_provider(page_size=2)
    launched = {i.id for i in provider.launch(spec, 5, "tok-pages").instances}
    ecs.reset_calls()
    assert {i.id for i in provider.list_instances(POOL)} == launched
    pages = ecs.calls("DescribeInstances")
    assert len(pages) == 3
    assert [c.params.get("NextToken", "") == "" for c in pages] == [True, False, False]
    assert all(c.params["MaxResults"] == "2" for c in pages)


def test_list_filters_by_pool_and_managed_by_tags(provider: AlibabaProvider, ecs: EcsEndpoint,
                                                  spec: LaunchSpec) -> None:
    """Listing asks ECS for the pool and managed-by tags and lists only that pool."""
    mine = {i.id for i in provider.launch(spec, 1, "tok-mine").instances}
    provider.launch(LaunchSpec(pool="other-pool", image="m-1", model_version="v1", instance_types=(GPU_A,)),
                    1, "tok-theirs")
    ecs.reset_calls()
    assert {i.id for i in provider.list_instances(POOL)} == mine
    assert request_tags(dict(ecs.calls("DescribeInstances")[0].params)) == {
        TAG_POOL: POOL, TAG_MANAGED_BY: MANAGED_BY_VALUE}


def test_list_maps_ecs_status_to_cloud_state(credentials: tuple[str, str], spec: LaunchSpec) -> None:
    """Pending→PENDING, Running→RUNNING, Stopped→STOPPED, Stopping→STOPPING; a released one is not listed."""
    with EcsEndpoint(vswitches=VSWITCHES, pending_s=60.0, release_s=60.0) as ecs:
        provider = AlibabaProvider(make_config(ecs), budget=FAST_BUDGET)
        a, b, c, d = (i.id for i in provider.launch(spec, 4, "tok-states").instances)
        ecs.set_status(b, "Running")
        ecs.set_status(c, "Stopped")
        provider.terminate([d])
        states = {i.id: i.state for i in provider.list_instances(POOL)}
        assert states == {a: CloudState.PENDING, b: CloudState.RUNNING, c: CloudState.STOPPED,
                          d: CloudState.STOPPING}
        ecs.remove(d)
        assert d not in {i.id for i in provider.list_instances(POOL)}


def test_list_reports_private_address_zone_and_tagged_port(provider: AlibabaProvider, ecs: EcsEndpoint,
                                                           spec: LaunchSpec) -> None:
    """A listed instance carries the VPC private IP as address, its zone, and the port from its tag."""
    [launched] = provider.launch(spec, 1, "tok-addr").instances
    [listed] = provider.list_instances(POOL)
    record = ecs.instances()[launched.id]
    assert (listed.address, listed.zone, listed.port) == (record.private_ip, ZONE_H, 7861)
    assert listed.tags[TAG_LAUNCH_TOKEN] == "tok-addr"


# ------------------------------------------------------------------------------------------ retries
def test_throttling_is_retried_then_succeeds(provider: AlibabaProvider, ecs: EcsEndpoint, spec: LaunchSpec,
                                             sleeps: list[float]) -> None:
    """Two Throttling.User answers are retried with the same ClientToken; the third attempt launches."""
    ecs.inject("RunInstances", code="Throttling.User", status=400, times=2)
    result = provider.launch(spec, 2, "tok-throttled")
    assert len(result.instances) == 2
    calls = ecs.calls("RunInstances")
    assert [c.status for c in calls] == [400, 400, 200]
    assert len({c.params["ClientToken"] for c in calls}) == 1
    assert len(sleeps) == 2
    assert sleeps[0] <= 0.01 and sleeps[1] <= 0.02  # full jitter under an exponential ceiling
    assert len(ecs.instances()) == 2


@pytest.mark.parametrize(("code", "status", "retry_after_ms"), [
    ("ServiceUnavailable", 503, None),
    ("InternalError", 500, None),
    ("Throttling.Api", 400, 20),
])
def test_server_errors_and_retry_after_are_retried(
    provider: AlibabaProvider, ecs: EcsEndpoint, code: str, status: int, retry_after_ms: int | None
) -> None:
    """5xx answers and throttling with x-acs-retry-after are transient: the list is retried and succeeds."""
    ecs.inject("DescribeInstances", code=code, status=status, times=1, retry_after_ms=retry_after_ms)
    assert provider.list_instances(POOL) == []
    assert [c.status for c in ecs.calls("DescribeInstances")] == [status, 200]


def test_throttling_forever_raises_transient_within_the_budget(
    make_provider: Callable[..., AlibabaProvider], ecs: EcsEndpoint, spec: LaunchSpec
) -> None:
    """Endless throttling ends in TransientProviderError after max_attempts tries, inside the deadline."""
    budget = RetryBudget(deadline_s=3.0, max_rounds=5, base_delay_s=0.02, max_delay_s=0.2)
    provider = make_provider(make_config(ecs, max_attempts=5), budget=budget)
    ecs.inject("DescribeInstances", code="Throttling.User", status=400, times=None)
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        provider.launch(spec, 1, "tok-forever")
    assert time.monotonic() - started < 3.0
    assert len(ecs.calls("DescribeInstances")) == 5
    assert ecs.calls("RunInstances") == []
    cause = caught.value.__cause__
    assert isinstance(cause, AlibabaCloudException) and cause.code == "Throttling.User"


def test_deadline_bounds_a_slow_retry_loop(make_provider: Callable[..., AlibabaProvider],
                                           ecs: EcsEndpoint) -> None:
    """With many rounds allowed, the wall-clock deadline still ends a throttled list at about its length."""
    budget = RetryBudget(deadline_s=0.5, max_rounds=1000, base_delay_s=0.05, max_delay_s=0.1)
    provider = make_provider(budget=budget)
    ecs.inject("DescribeInstances", code="Throttling", status=400, times=None)
    started = time.monotonic()
    with pytest.raises(TransientProviderError):
        provider.list_instances(POOL)
    assert time.monotonic() - started < 1.5
    assert 1 < len(ecs.calls("DescribeInstances")) < 1000


def test_unreachable_endpoint_is_transient(credentials: tuple[str, str]) -> None:
    """A connection refused on every attempt ends in TransientProviderError."""
    ecs = EcsEndpoint(vswitches=VSWITCHES).start()
    config = make_config(ecs)
    ecs.stop()
    provider = AlibabaProvider(config, budget=FAST_BUDGET, connect_timeout_s=1.0)
    with pytest.raises(TransientProviderError):
        provider.list_instances(POOL)


def test_other_errors_are_ecs_errors_without_retry(provider: AlibabaProvider, ecs: EcsEndpoint,
                                                   spec: LaunchSpec) -> None:
    """A non-retryable code (InvalidSecurityGroupId.NotFound) raises EcsError at once, chained."""
    ecs.inject("RunInstances", code="InvalidSecurityGroupId.NotFound", status=404, times=None)
    with pytest.raises(EcsError) as caught:
        provider.launch(spec, 1, "tok-badsg")
    assert (caught.value.code, caught.value.status) == ("InvalidSecurityGroupId.NotFound", 404)
    assert isinstance(caught.value.__cause__, AlibabaCloudException)
    assert len(ecs.calls("RunInstances")) == 1


# ------------------------------------------------------------------------------------------ capacity
def test_no_stock_of_the_first_type_moves_to_the_next_type(provider: AlibabaProvider, ecs: EcsEndpoint,
                                                           spec: LaunchSpec) -> None:
    """NoStock for the first type in every zone launches the second type, after trying each vswitch."""
    ecs.inject("RunInstances", code="OperationDenied.NoStock", status=403, times=None, instance_type=GPU_A)
    result = provider.launch(spec, 2, "tok-nostock")
    assert result.shortfall is None
    assert {i.instance_type for i in result.instances} == {GPU_B}
    assert [(c["InstanceType"], c["VSwitchId"]) for c in run_calls(ecs)] == [
        (GPU_A, "vsw-h"), (GPU_A, "vsw-i"), (GPU_B, "vsw-h")]
    assert any("OperationDenied.NoStock" in note for note in result.notes)


def test_no_stock_in_the_first_zone_moves_to_the_next_vswitch(provider: AlibabaProvider, ecs: EcsEndpoint,
                                                              spec: LaunchSpec) -> None:
    """A sold-out first zone launches the preferred type in the second vswitch's zone."""
    ecs.set_stock(GPU_A, ZONE_H, 0)
    result = provider.launch(spec, 2, "tok-zone")
    assert {(i.instance_type, i.zone) for i in result.instances} == {(GPU_A, ZONE_I)}


def test_partial_stock_is_topped_up_from_the_next_zone_and_type(provider: AlibabaProvider, ecs: EcsEndpoint,
                                                                spec: LaunchSpec) -> None:
    """Stock of 1 then 1 of the first type, then the second type fills the rest of 4."""
    ecs.set_stock(GPU_A, ZONE_H, 1)
    ecs.set_stock(GPU_A, ZONE_I, 1)
    result = provider.launch(spec, 4, "tok-partial")
    assert result.shortfall is None
    assert sorted((i.instance_type, i.zone) for i in result.instances) == sorted(
        [(GPU_A, ZONE_H), (GPU_A, ZONE_I), (GPU_B, ZONE_H), (GPU_B, ZONE_H)])
    assert [c["MinAmount"] for c in run_calls(ecs)] == ["1", "1", "1"]


@pytest.mark.parametrize("code", ["Zone.NotOnSale", "InvalidInstanceType.NotSupported",
                                  "InvalidResourceType.NotSupported", "InvalidVSwitchId.IpNotEnough"])
def test_zone_and_type_errors_move_on(provider: AlibabaProvider, ecs: EcsEndpoint, spec: LaunchSpec,
                                      code: str) -> None:
    """Zone and instance-type errors in the first vswitch move the launch to the next vswitch."""
    ecs.inject("RunInstances", code=code, status=403, times=None, vswitch="vsw-h")
    result = provider.launch(spec, 1, f"tok-{code}")
    assert [(i.instance_type, i.zone) for i in result.instances] == [(GPU_A, ZONE_I)]


def test_no_stock_anywhere_raises_insufficient_capacity(provider: AlibabaProvider, ecs: EcsEndpoint,
                                                        spec: LaunchSpec) -> None:
    """No stock of any type in any zone raises InsufficientCapacity, chained, after four tries."""
    ecs.inject("RunInstances", code="OperationDenied.NoStock", status=403, times=None)
    with pytest.raises(InsufficientCapacity) as caught:
        provider.launch(spec, 2, "tok-soldout")
    assert caught.value.instance_type == GPU_B
    assert isinstance(caught.value.__cause__, EcsError)
    assert len(run_calls(ecs)) == 4


def test_some_stock_then_none_is_a_capacity_shortfall(provider: AlibabaProvider, ecs: EcsEndpoint,
                                                      spec: LaunchSpec) -> None:
    """When every option is exhausted after launching some, the result has them and shortfall 'capacity'."""
    ecs.set_stock(GPU_A, ZONE_H, 1)
    for zone in (ZONE_I,):
        ecs.set_stock(GPU_A, zone, 0)
    for zone in (ZONE_H, ZONE_I):
        ecs.set_stock(GPU_B, zone, 0)
    result = provider.launch(spec, 3, "tok-short")
    assert len(result.instances) == 1
    assert result.shortfall == "capacity"
    assert result.notes


# ------------------------------------------------------------------------------------------ quota
def test_quota_with_nothing_launched_raises_quota_exceeded(credentials: tuple[str, str],
                                                           spec: LaunchSpec) -> None:
    """A quota error with no instance for the token raises QuotaExceeded; each family is asked once
    (no other zone of a refused family), since a quota refusal is kept to the refused family."""
    with EcsEndpoint(vswitches=VSWITCHES, max_instances=2) as ecs:
        provider = AlibabaProvider(make_config(ecs), budget=FAST_BUDGET)
        with pytest.raises(QuotaExceeded) as caught:
            provider.launch(spec, 3, "tok-quota")
        assert isinstance(caught.value.__cause__, EcsError)
        assert caught.value.__cause__.code == "QuotaExceed.ElasticQuota"
        assert [c.params["InstanceType"] for c in ecs.calls("RunInstances")] == [GPU_A, GPU_B]
        assert ecs.instances() == {}


def test_quota_after_some_launched_is_a_quota_shortfall(credentials: tuple[str, str],
                                                        spec: LaunchSpec) -> None:
    """One launched in the first zone, then the quota stops the second: shortfall 'quota', one instance."""
    with EcsEndpoint(vswitches=VSWITCHES, max_instances=2) as ecs:
        ecs.set_stock(GPU_A, ZONE_H, 1)
        provider = AlibabaProvider(make_config(ecs), budget=FAST_BUDGET)
        result = provider.launch(spec, 3, "tok-quota-some")
        assert len(result.instances) == 1
        assert result.shortfall == "quota"
        assert any("QuotaExceed.ElasticQuota" in note and "'family ecs.gn7i'" in note
                   for note in result.notes)
        # GPU_A in H (1 in stock), GPU_A in I (refused), then the other family once (refused too).
        assert len(ecs.calls("RunInstances")) == 3


@pytest.mark.parametrize(("code", "asked"), [("InvalidAccountStatus.NotEnoughBalance", 1),
                                             ("Account.Arrearage", 1), ("QuotaExceed.PostPaidInstance", 2)])
def test_account_errors_count_as_quota(provider: AlibabaProvider, ecs: EcsEndpoint, spec: LaunchSpec,
                                       code: str, asked: int) -> None:
    """Balance and arrears errors stop scale-out at once as QuotaExceeded (the whole account); a
    QuotaExceed.* code stops its family, so the other family is asked once before QuotaExceeded."""
    ecs.inject("RunInstances", code=code, status=403, times=None)
    with pytest.raises(QuotaExceeded):
        provider.launch(spec, 1, f"tok-{code}")
    assert len(ecs.calls("RunInstances")) == asked


def test_quota_with_existing_token_instances_is_a_shortfall(provider: AlibabaProvider, ecs: EcsEndpoint,
                                                            spec: LaunchSpec) -> None:
    """Topping a token up when the quota is reached returns the token's instances with shortfall 'quota'."""
    first = provider.launch(spec, 2, "tok-quota-topup")
    ecs.max_instances = 2
    result = provider.launch(spec, 4, "tok-quota-topup")
    assert {i.id for i in result.instances} == {i.id for i in first.instances}
    assert result.shortfall == "quota"


# ------------------------------------------------------------------------------------------ terminate
def test_terminate_forces_delete_and_reports_unknown_ids_as_gone(provider: AlibabaProvider, ecs: EcsEndpoint,
                                                                 spec: LaunchSpec) -> None:
    """Live ids are deleted with Force=true (TERMINATING); an unknown id is ALREADY_GONE and not sent."""
    a, b = (i.id for i in provider.launch(spec, 2, "tok-term").instances)
    outcomes = provider.terminate([a, "i-0000000000deadbeef", b])
    assert outcomes == {a: TerminateOutcome.TERMINATING, b: TerminateOutcome.TERMINATING,
                        "i-0000000000deadbeef": TerminateOutcome.ALREADY_GONE}
    [delete] = ecs.calls("DeleteInstances")
    assert delete.params["Force"].lower() == "true"
    assert {delete.params["InstanceId.1"], delete.params["InstanceId.2"]} == {a, b}
    assert ecs.instances() == {}


def test_terminate_twice_is_already_gone(provider: AlibabaProvider, ecs: EcsEndpoint,
                                         spec: LaunchSpec) -> None:
    """Terminating a released instance again is ALREADY_GONE and sends no DeleteInstances."""
    [inst] = provider.launch(spec, 1, "tok-twice-term").instances
    provider.terminate([inst.id])
    ecs.reset_calls()
    assert provider.terminate([inst.id]) == {inst.id: TerminateOutcome.ALREADY_GONE}
    assert ecs.calls("DeleteInstances") == []


def test_id_gone_between_describe_and_delete_does_not_fail_the_batch(
    provider: AlibabaProvider, ecs: EcsEndpoint, spec: LaunchSpec
) -> None:
    """A batch delete answering InvalidInstanceId.NotFound is settled id by id: the gone one ALREADY_GONE."""
    a, b = (i.id for i in provider.launch(spec, 2, "tok-race").instances)
    # The batch and the first single delete both find "a" gone, as if it was released in between.
    ecs.inject("DeleteInstances", code="InvalidInstanceId.NotFound", status=404, times=2)
    assert provider.terminate([a, b]) == {a: TerminateOutcome.ALREADY_GONE, b: TerminateOutcome.TERMINATING}
    assert delete_batches(ecs) == [2, 1, 1]
    assert b not in ecs.instances()


def test_terminate_throttled_forever_is_transient(provider: AlibabaProvider, ecs: EcsEndpoint,
                                                  spec: LaunchSpec) -> None:
    """A DeleteInstances throttled beyond the budget raises TransientProviderError."""
    [inst] = provider.launch(spec, 1, "tok-term-throttle").instances
    ecs.inject("DeleteInstances", code="Throttling.User", status=400, times=None)
    with pytest.raises(TransientProviderError):
        provider.terminate([inst.id])
    assert inst.id in ecs.instances()


def test_terminate_nothing_sends_nothing(provider: AlibabaProvider, ecs: EcsEndpoint) -> None:
    """An empty terminate returns {} without calling ECS."""
    assert provider.terminate([]) == {}
    assert ecs.calls() == []


# ------------------------------------------------------------------------------------------ credentials
def test_requests_are_signed_with_the_environment_credentials(spec: LaunchSpec) -> None:
    """The SDK signs with the keys from the environment: an endpoint expecting other keys rejects the call."""
    with dummy_credentials("LTAI-env-key", "env-secret"), \
            EcsEndpoint(vswitches=VSWITCHES, credentials={"LTAI-env-key": "another-secret"}) as ecs:
        with pytest.raises(EcsError) as caught:
            AlibabaProvider(make_config(ecs), budget=FAST_BUDGET).list_instances(POOL)
        assert caught.value.code == "SignatureDoesNotMatch"
    with dummy_credentials("LTAI-env-key", "env-secret"), \
            EcsEndpoint(vswitches=VSWITCHES, credentials={"LTAI-env-key": "env-secret"}) as ecs:
        assert AlibabaProvider(make_config(ecs), budget=FAST_BUDGET).list_instances(POOL) == []


def test_missing_credentials_is_a_provider_error_before_any_request() -> None:
    """With no credentials anywhere in the default chain, calls raise ProviderError and nothing is sent."""
    with dummy_credentials(None, None), EcsEndpoint(vswitches=VSWITCHES) as ecs:
        provider = AlibabaProvider(make_config(ecs), budget=FAST_BUDGET)
        with pytest.raises(ProviderError, match="no Alibaba Cloud credentials") as caught:
            provider.list_instances(POOL)
        assert not isinstance(caught.value, TransientProviderError)
        assert ecs.calls() == []


def test_credentials_never_appear_in_logs_reprs_or_errors(
    make_provider: Callable[..., AlibabaProvider], ecs: EcsEndpoint, spec: LaunchSpec,
    credentials: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Across launches, retries, fallbacks, errors and terminates, no key appears in a log, repr or error."""
    key_id, secret = credentials
    caplog.set_level(logging.DEBUG)
    provider = make_provider()
    texts = [repr(provider), repr(provider.config), str(provider.config.model_dump())]
    ecs.inject("RunInstances", code="Throttling.User", status=400, times=1)
    ecs.inject("RunInstances", code="OperationDenied.NoStock", status=403, times=1)
    launched = provider.launch(spec, 2, "tok-secret")
    texts.append(repr(launched))
    ecs.inject("DescribeInstances", code="Throttling.User", status=400, times=None)
    ecs.inject("RunInstances", code="InvalidParameter", status=400, times=None)
    errors: list[BaseException] = []
    with pytest.raises(TransientProviderError) as transient:
        provider.list_instances(POOL)
    errors.append(transient.value)
    ecs.clear_injections()
    ecs.inject("RunInstances", code="InvalidParameter", status=400, times=None)
    with pytest.raises(EcsError) as invalid:
        provider.launch(spec, 3, "tok-secret-2")
    errors.append(invalid.value)
    provider.terminate([i.id for i in launched.instances])
    for error in errors:
        link: BaseException | None = error
        while link is not None:
            texts += [str(link), repr(link)]
            link = link.__cause__ or link.__context__
    texts.append(caplog.text)
    assert "ECS launched" in caplog.text  # the provider did log
    for text in texts:
        assert secret not in text
        assert key_id not in text


# ------------------------------------------------------------------------------------------ helpers
def test_ecs_client_token_differs_exactly_when_the_request_differs() -> None:
    """The derived ClientToken is stable for a retry and changes with type, vswitch, amount or what exists."""
    base = ecs_client_token("tok", GPU_A, "vsw-h", 2, 0)
    assert base == ecs_client_token("tok", GPU_A, "vsw-h", 2, 0)
    assert len(base) <= 64
    variants = {ecs_client_token("tok2", GPU_A, "vsw-h", 2, 0), ecs_client_token("tok", GPU_B, "vsw-h", 2, 0),
                ecs_client_token("tok", GPU_A, "vsw-i", 2, 0), ecs_client_token("tok", GPU_A, "vsw-h", 3, 0),
                ecs_client_token("tok", GPU_A, "vsw-h", 2, 1)}
    assert base not in variants and len(variants) == 5


def test_endpoint_may_be_host_and_port_with_a_protocol(ecs: EcsEndpoint) -> None:
    """``endpoint: 127.0.0.1:PORT`` with ``protocol: http`` reaches the same endpoint as the URL form."""
    provider = AlibabaProvider(make_config(ecs, endpoint=ecs.endpoint, protocol="http"), budget=FAST_BUDGET)
    assert provider.list_instances(POOL) == []
    assert len(ecs.calls("DescribeInstances")) == 1


def test_for_policy_builds_from_the_example_policy(ecs: EcsEndpoint) -> None:
    """The shipped asr-alibaba policy, pointed at the local endpoint, builds a working provider."""
    policy = load_policy(EXAMPLE_POLICY)
    assert isinstance(policy.provider, AlibabaProviderConfig)
    local = policy.model_copy(update={"provider": policy.provider.model_copy(
        update={"endpoint": ecs.url, "region": ecs.region})})
    provider = AlibabaProvider.for_policy(local, budget=FAST_BUDGET)
    assert provider.list_instances(policy.pool) == []
    assert request_tags(dict(ecs.calls("DescribeInstances")[0].params))[TAG_POOL] == policy.pool


def test_for_policy_refuses_another_provider_kind() -> None:
    """A policy for the local provider is a PolicyError, not an Alibaba provider."""
    policy = load_policy(EXAMPLE_POLICY.with_name("asr-local.yaml"))
    with pytest.raises(PolicyError, match="alibaba"):
        AlibabaProvider.for_policy(policy)


def test_page_size_out_of_range_is_refused(ecs: EcsEndpoint) -> None:
    """A page size outside ECS's 1..100 is a ValueError at construction."""
    with pytest.raises(ValueError, match="page_size"):
        AlibabaProvider(make_config(ecs), page_size=101)
