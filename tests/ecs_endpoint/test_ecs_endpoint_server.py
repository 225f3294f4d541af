"""The local ECS endpoint, driven by the real alibabacloud_ecs20140526 SDK (and raw HTTP where the SDK
cannot send what a test needs): request shape, signatures, idempotency, paging, errors, capacity."""

from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from alibabacloud_ecs20140526 import models as m
from alibabacloud_ecs20140526.client import Client as EcsClient
from alibabacloud_tea_openapi.exceptions import ClientException, ServerException, ThrottlingException

from autoscaler.testing import wait_until
from autoscaler.testing.ecs_endpoint import API_VERSION, EcsEndpoint


def run(client: EcsClient, ecs: EcsEndpoint, *, amount: int = 1, token: str | None = None,
        instance_type: str = "ecs.gn7i-c8g1.2xlarge", vswitch: str = "vsw-a", min_amount: int | None = None,
        tags: dict[str, str] | None = None, image: str = "m-asr-1") -> list[str]:
    """RunInstances through the SDK; the ids ECS answers with."""
    request = m.RunInstancesRequest(
        region_id=ecs.region, image_id=image, instance_type=instance_type, v_switch_id=vswitch,
        security_group_id="sg-1", amount=amount, min_amount=min_amount, client_token=token,
        tag=[m.RunInstancesRequestTag(key=k, value=v) for k, v in (tags or {"pool": "asr"}).items()],
    )
    return list(client.run_instances(request).body.instance_id_sets.instance_id_set)


def describe(client: EcsClient, ecs: EcsEndpoint, **fields: object) -> m.DescribeInstancesResponseBody:
    """DescribeInstances through the SDK with the given request fields."""
    return client.describe_instances(m.DescribeInstancesRequest(region_id=ecs.region, **fields)).body


def statuses(client: EcsClient, ecs: EcsEndpoint, ids: list[str]) -> dict[str, str]:
    """Status of each listed id, described by id."""
    body = describe(client, ecs, instance_ids=json.dumps(ids), page_size=100)
    return {i.instance_id: i.status for i in body.instances.instance}


def test_sdk_request_reaches_the_endpoint_with_flattened_query(client: EcsClient, ecs: EcsEndpoint) -> None:
    """The SDK's signed POST is served: action from x-acs-action, list parameters as Tag.N.Key/Value."""
    ids = run(client, ecs, amount=2, token="t-1", tags={"pool": "asr", "team": "speech"})
    assert len(ids) == 2
    call = ecs.calls("RunInstances")[0]
    assert call.status == 200
    assert call.params["Amount"] == "2"
    assert call.params["ClientToken"] == "t-1"
    assert {call.params["Tag.1.Key"]: call.params["Tag.1.Value"],
            call.params["Tag.2.Key"]: call.params["Tag.2.Value"]} == {"pool": "asr", "team": "speech"}
    inst = ecs.instances()[ids[0]]
    assert (inst.instance_type, inst.zone, inst.image, inst.security_group) == (
        "ecs.gn7i-c8g1.2xlarge", "cn-hangzhou-h", "m-asr-1", "sg-1")


def test_describe_answer_parses_into_sdk_models(client: EcsClient, ecs: EcsEndpoint) -> None:
    """DescribeInstances fills the SDK model: id, type, status, zone, image, created, private IP, tags."""
    [iid] = run(client, ecs, tags={"pool": "asr"})
    [inst] = describe(client, ecs, page_size=10).instances.instance
    assert inst.instance_id == iid
    assert inst.instance_type == "ecs.gn7i-c8g1.2xlarge"
    assert inst.status == "Running"
    assert inst.zone_id == "cn-hangzhou-h"
    assert inst.image_id == "m-asr-1"
    created = datetime.fromisoformat(inst.creation_time)
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=2)
    [address] = inst.vpc_attributes.private_ip_address.ip_address
    assert address.startswith("127.100.")
    assert [(t.tag_key, t.tag_value) for t in inst.tags.tag] == [("pool", "asr")]


def test_unsigned_request_is_rejected_in_alibaba_error_shape(ecs: EcsEndpoint) -> None:
    """An unsigned request gets 400 IncompleteSignature with Code, Message, RequestId and HostId."""
    reply = httpx.post(f"{ecs.url}/?RegionId={ecs.region}", timeout=5.0,
                       headers={"x-acs-action": "DescribeInstances", "x-acs-version": API_VERSION})
    assert reply.status_code == 400
    body = reply.json()
    assert body["Code"] == "IncompleteSignature"
    assert body["Message"] and body["RequestId"] and body["HostId"]
    assert ecs.calls()[0].status == 400


def test_signature_made_with_another_secret_is_rejected(credentials: tuple[str, str]) -> None:
    """The endpoint recomputes the ACS3-HMAC-SHA256 signature: a different secret is SignatureDoesNotMatch."""
    key_id, _ = credentials
    with EcsEndpoint(credentials={key_id: "not-the-secret-in-the-environment"}) as ecs, \
            pytest.raises(ClientException) as caught:
            describe(ecs.sdk_client(), ecs)
    assert caught.value.code == "SignatureDoesNotMatch"
    assert caught.value.status_code == 400


def test_unknown_access_key_is_rejected(credentials: tuple[str, str]) -> None:
    """An access key id the endpoint does not know is InvalidAccessKeyId.NotFound (404)."""
    with EcsEndpoint(credentials={"LTAI-someone-else": "x"}) as ecs, pytest.raises(ClientException) as caught:
            describe(ecs.sdk_client(), ecs)
    assert (caught.value.code, caught.value.status_code) == ("InvalidAccessKeyId.NotFound", 404)


def test_same_client_token_returns_the_same_instances(client: EcsClient, ecs: EcsEndpoint) -> None:
    """RunInstances repeated with the same ClientToken and parameters answers the same ids and makes none."""
    first = run(client, ecs, amount=2, token="tok-same")
    again = run(client, ecs, amount=2, token="tok-same")
    assert again == first
    assert set(ecs.instances()) == set(first)


def test_same_client_token_with_other_parameters_is_a_mismatch(client: EcsClient, ecs: EcsEndpoint) -> None:
    """A ClientToken reused with different parameters fails with IdempotentParameterMismatch."""
    run(client, ecs, amount=1, token="tok-reused")
    with pytest.raises(ClientException) as caught:
        run(client, ecs, amount=2, token="tok-reused")
    assert caught.value.code == "IdempotentParameterMismatch"
    assert len(ecs.instances()) == 1


def test_page_number_paging(client: EcsClient, ecs: EcsEndpoint) -> None:
    """PageNumber/PageSize pages through every instance with the total count."""
    ids = run(client, ecs, amount=5)
    pages = [describe(client, ecs, page_number=n, page_size=2) for n in (1, 2, 3, 4)]
    assert [len(p.instances.instance) for p in pages] == [2, 2, 1, 0]
    assert all(p.total_count == 5 for p in pages)
    assert [i.instance_id for p in pages for i in p.instances.instance] == ids


def test_next_token_paging_survives_launches_between_pages(client: EcsClient, ecs: EcsEndpoint) -> None:
    """NextToken/MaxResults paging reads every instance once, even when one is added mid-way."""
    ids = run(client, ecs, amount=5)
    first = describe(client, ecs, max_results=2)
    assert first.next_token
    added = run(client, ecs, amount=1)
    seen = [i.instance_id for i in first.instances.instance]
    token = first.next_token
    for _ in range(10):
        page = describe(client, ecs, max_results=2, next_token=token)
        seen += [i.instance_id for i in page.instances.instance]
        token = page.next_token
        if not token:
            break
    assert seen == ids + added


def test_tag_filters_match_all_given_tags(client: EcsClient, ecs: EcsEndpoint) -> None:
    """Tag.N filters are ANDed: only instances carrying every tag are described."""
    mine = run(client, ecs, tags={"pool": "asr", "token": "a"})
    run(client, ecs, tags={"pool": "asr", "token": "b"})
    run(client, ecs, tags={"pool": "other", "token": "a"})
    body = describe(client, ecs, tag=[m.DescribeInstancesRequestTag(key="pool", value="asr"),
                                      m.DescribeInstancesRequestTag(key="token", value="a")])
    assert [i.instance_id for i in body.instances.instance] == mine


def test_delete_with_an_unknown_id_fails_the_whole_batch(client: EcsClient, ecs: EcsEndpoint) -> None:
    """DeleteInstances with one unknown id answers InvalidInstanceId.NotFound (404) and deletes nothing."""
    ids = run(client, ecs, amount=2)
    with pytest.raises(ClientException) as caught:
        client.delete_instances(m.DeleteInstancesRequest(region_id=ecs.region, force=True,
                                                         instance_id=[*ids, "i-0000000000deadbeef"]))
    assert (caught.value.code, caught.value.status_code) == ("InvalidInstanceId.NotFound", 404)
    assert set(ecs.instances()) == set(ids)


def test_delete_of_a_running_instance_needs_force(client: EcsClient, ecs: EcsEndpoint) -> None:
    """Without Force a running instance is IncorrectInstanceStatus; with Force it is released."""
    ids = run(client, ecs)
    with pytest.raises(ClientException) as caught:
        client.delete_instances(m.DeleteInstancesRequest(region_id=ecs.region, instance_id=ids))
    assert caught.value.code == "IncorrectInstanceStatus"
    client.delete_instances(m.DeleteInstancesRequest(region_id=ecs.region, instance_id=ids, force=True))
    assert ecs.instances() == {}


def test_status_goes_pending_running_stopping_gone(credentials: tuple[str, str]) -> None:
    """An instance is Pending for pending_s, then Running; once deleted, Stopping for release_s, then gone."""
    with EcsEndpoint(pending_s=0.3, release_s=0.3) as ecs:
        client = ecs.sdk_client()
        ids = run(client, ecs)
        assert statuses(client, ecs, ids) == {ids[0]: "Pending"}
        wait_until(lambda: statuses(client, ecs, ids) == {ids[0]: "Running"}, timeout_s=5.0,
                   message="instance running")
        client.delete_instances(m.DeleteInstancesRequest(region_id=ecs.region, instance_id=ids, force=True))
        assert statuses(client, ecs, ids) == {ids[0]: "Stopping"}
        wait_until(lambda: statuses(client, ecs, ids) == {}, timeout_s=5.0, message="instance released")


def test_visibility_delay_hides_new_instances(credentials: tuple[str, str]) -> None:
    """With visibility_delay_s, a new instance exists but DescribeInstances does not show it yet."""
    with EcsEndpoint(visibility_delay_s=0.3) as ecs:
        client = ecs.sdk_client()
        ids = run(client, ecs)
        assert set(ecs.instances()) == set(ids)
        assert statuses(client, ecs, ids) == {}
        wait_until(lambda: statuses(client, ecs, ids) == {ids[0]: "Running"}, timeout_s=5.0,
                   message="instance visible")


def test_injected_error_is_raised_by_the_sdk_then_clears(client: EcsClient, ecs: EcsEndpoint) -> None:
    """An injected Throttling.User (400) surfaces as the SDK's ClientException, `times` times only."""
    ecs.inject("DescribeInstances", code="Throttling.User", status=400, times=1)
    with pytest.raises(ClientException) as caught:
        describe(client, ecs)
    assert (caught.value.code, caught.value.status_code) == ("Throttling.User", 400)
    assert describe(client, ecs).total_count == 0


def test_retry_after_header_makes_a_throttling_exception(client: EcsClient, ecs: EcsEndpoint) -> None:
    """An error injected with retry_after_ms carries x-acs-retry-after: the SDK raises ThrottlingException."""
    ecs.inject("DescribeInstances", code="Throttling.Api", status=400, retry_after_ms=1500)
    with pytest.raises(ThrottlingException) as caught:
        describe(client, ecs)
    assert caught.value.code == "Throttling.Api"
    assert caught.value.retry_after == 1500


def test_injected_5xx_is_a_server_exception(client: EcsClient, ecs: EcsEndpoint) -> None:
    """An injected 503 ServiceUnavailable surfaces as the SDK's ServerException."""
    ecs.inject("RunInstances", code="ServiceUnavailable", status=503)
    with pytest.raises(ServerException) as caught:
        run(client, ecs)
    assert (caught.value.code, caught.value.status_code) == ("ServiceUnavailable", 503)
    assert ecs.instances() == {}


def test_injection_can_target_one_instance_type(client: EcsClient, ecs: EcsEndpoint) -> None:
    """An injection narrowed to an instance type fails that type only, every time when times=None."""
    ecs.inject("RunInstances", code="OperationDenied.NoStock", status=403, times=None,
               instance_type="ecs.gn7i-c8g1.2xlarge")
    for _ in range(2):
        with pytest.raises(ClientException):
            run(client, ecs, instance_type="ecs.gn7i-c8g1.2xlarge")
    assert len(run(client, ecs, instance_type="ecs.gn6i-c4g1.xlarge")) == 1


def test_stock_limits_a_zone_and_min_amount_takes_what_is_left(client: EcsClient, ecs: EcsEndpoint) -> None:
    """With stock 2, Amount 3 MinAmount 1 makes 2; then the zone answers OperationDenied.NoStock (403)."""
    ecs.set_stock("ecs.gn7i-c8g1.2xlarge", "cn-hangzhou-h", 2)
    assert len(run(client, ecs, amount=3, min_amount=1)) == 2
    with pytest.raises(ClientException) as caught:
        run(client, ecs, amount=1)
    assert (caught.value.code, caught.value.status_code) == ("OperationDenied.NoStock", 403)
    assert len(run(client, ecs, amount=1, vswitch="vsw-b")) == 1


def test_quota_rejects_a_launch_beyond_max_instances(credentials: tuple[str, str]) -> None:
    """With max_instances 2, a launch that would make a third fails whole with QuotaExceed.ElasticQuota."""
    with EcsEndpoint(max_instances=2) as ecs:
        client = ecs.sdk_client()
        run(client, ecs, amount=1)
        with pytest.raises(ClientException) as caught:
            run(client, ecs, amount=2)
        assert (caught.value.code, caught.value.status_code) == ("QuotaExceed.ElasticQuota", 403)
        assert len(ecs.instances()) == 1


def test_a_family_quota_rejects_only_launches_of_that_family(credentials: tuple[str, str]) -> None:
    """With ecs.gn7i limited to 1, a second gn7i (any size, any zone) fails with QuotaExceed.ElasticQuota
    naming the family, while ecs.gn6i still launches."""
    with EcsEndpoint() as ecs:
        ecs.set_family_quota("ecs.gn7i", 1)
        client = ecs.sdk_client()
        run(client, ecs, amount=1)
        with pytest.raises(ClientException) as caught:
            run(client, ecs, amount=1, instance_type="ecs.gn7i-c16g1.4xlarge", vswitch="vsw-b")
        assert (caught.value.code, caught.value.status_code) == ("QuotaExceed.ElasticQuota", 403)
        assert "ecs.gn7i" in str(caught.value.message)
        assert len(run(client, ecs, amount=2, instance_type="ecs.gn6i-c4g1.xlarge")) == 2
        ecs.set_family_quota("ecs.gn7i", None)
        assert len(run(client, ecs, amount=1)) == 1


def test_unknown_vswitch_and_image_are_not_found(client: EcsClient, ecs: EcsEndpoint) -> None:
    """A vswitch the region lacks is InvalidVSwitchId.NotFound; once images exist, an unknown one is too."""
    with pytest.raises(ClientException) as caught:
        run(client, ecs, vswitch="vsw-nowhere")
    assert caught.value.code == "InvalidVSwitchId.NotFound"
    ecs.add_image("m-known")
    with pytest.raises(ClientException) as caught:
        run(client, ecs, image="m-unknown")
    assert caught.value.code == "InvalidImageId.NotFound"
    assert len(run(client, ecs, image="m-known")) == 1


def test_describe_images_filters_by_tag_newest_first(client: EcsClient, ecs: EcsEndpoint) -> None:
    """DescribeImages returns the images carrying the tag, newest first."""
    now = datetime.now(UTC)
    ecs.add_image("m-old", tags={"v": "1"}, created_at=now - timedelta(days=2))
    ecs.add_image("m-new", tags={"v": "1"}, created_at=now - timedelta(days=1))
    ecs.add_image("m-other", tags={"v": "2"}, created_at=now)
    body = client.describe_images(m.DescribeImagesRequest(
        region_id=ecs.region, image_owner_alias="self",
        tag=[m.DescribeImagesRequestTag(key="v", value="1")])).body
    assert [i.image_id for i in body.images.image] == ["m-new", "m-old"]


def test_wrong_region_and_unknown_action_are_errors(client: EcsClient, ecs: EcsEndpoint) -> None:
    """Another region is InvalidRegionId.NotFound; an action the endpoint lacks is InvalidAction.NotFound."""
    with pytest.raises(ClientException) as caught:
        client.describe_instances(m.DescribeInstancesRequest(region_id="eu-central-1"))
    assert caught.value.code == "InvalidRegionId.NotFound"
    with pytest.raises(ClientException) as caught:
        client.describe_regions(m.DescribeRegionsRequest())
    assert (caught.value.code, caught.value.status_code) == ("InvalidAction.NotFound", 404)


def test_stop_releases_the_port_and_connection_threads(credentials: tuple[str, str]) -> None:
    """After stop() nothing listens on the port and no thread serving a kept-alive connection is left."""
    before = set(threading.enumerate())
    ecs = EcsEndpoint().start()
    port = ecs.port
    describe(ecs.sdk_client(), ecs)  # the SDK keeps its connection open
    ecs.stop()
    with socket.socket() as sock, pytest.raises(OSError):
        sock.settimeout(1.0)
        sock.connect(("127.0.0.1", port))
    wait_until(lambda: not [t for t in set(threading.enumerate()) - before if t.is_alive()], timeout_s=5.0,
               message="endpoint threads ended")


# ------------------------------------------------------------------------------------- stop and start
def test_economical_stop_gives_the_gpu_back_so_a_start_can_find_no_stock(client: EcsClient,
                                                                        ecs: EcsEndpoint) -> None:
    """StopInstances(StopCharging) returns the GPU to the zone; once someone takes it, StartInstances
    fails with OperationDenied.NoStock (HTTP 403); with stock back the instance starts and runs."""
    [iid] = run(client, ecs)
    zone = ecs.instances()[iid].zone
    ecs.set_stock(ecs.instances()[iid].instance_type, zone, 0)
    client.stop_instances(m.StopInstancesRequest(region_id=ecs.region, instance_id=[iid],
                                                 stopped_mode="StopCharging"))
    assert statuses(client, ecs, [iid]) == {iid: "Stopped"}
    assert describe(client, ecs).instances.instance[0].stopped_mode == "StopCharging"
    assert ecs.stock(ecs.instances()[iid].instance_type, zone) == 1  # given back
    ecs.set_stock(ecs.instances()[iid].instance_type, zone, 0)        # and taken by someone else
    with pytest.raises(ClientException) as raised:
        client.start_instances(m.StartInstancesRequest(region_id=ecs.region, instance_id=[iid]))
    assert raised.value.code == "OperationDenied.NoStock" and raised.value.status_code == 403
    assert statuses(client, ecs, [iid]) == {iid: "Stopped"}
    ecs.set_stock(ecs.instances()[iid].instance_type, zone, 1)
    client.start_instances(m.StartInstancesRequest(region_id=ecs.region, instance_id=[iid]))
    assert statuses(client, ecs, [iid]) == {iid: "Running"}
    assert ecs.stock(ecs.instances()[iid].instance_type, zone) == 0


def test_success_first_batch_answers_a_result_per_instance(client: EcsClient, ecs: EcsEndpoint) -> None:
    """With BatchOptimization=SuccessFirst one bad id does not fail the call: each id gets its code."""
    [iid] = run(client, ecs)
    body = client.stop_instances(m.StopInstancesRequest(
        region_id=ecs.region, instance_id=[iid, "i-unknown"], batch_optimization="SuccessFirst")).body
    codes = {r.instance_id: r.code for r in body.instance_responses.instance_response}
    assert codes == {iid: "200", "i-unknown": "InvalidInstanceId.NotFound"}
    with pytest.raises(ClientException) as raised:  # AllTogether: the stopped one cannot stop again
        client.stop_instances(m.StopInstancesRequest(region_id=ecs.region, instance_id=[iid]))
    assert raised.value.code == "IncorrectInstanceStatus"
