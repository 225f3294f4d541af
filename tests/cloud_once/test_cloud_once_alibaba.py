"""Issue 5 on Alibaba Cloud: ``autoscaler once --policy <copy of policies/asr-alibaba.yaml>`` against
the local ECS endpoint.

The CLI runs in a subprocess with dummy access keys in the environment (the SDK's default chain;
metadata and CLI-profile look-ups off), talking to an ``EcsEndpoint`` on 127.0.0.1 that verifies
every request's ACS3 signature against those keys. The endpoint hands out private addresses from
127.65.0.0/16, so the nodes the test starts on them stay on this machine. The copy of the shipped
example is loaded and edited programmatically; only environment-specific values change:

- ``provider.endpoint`` / ``protocol``: the local endpoint over http;
- ``provider.vswitches`` / ``security_group``: ids that exist on the endpoint (one vswitch per
  example vswitch, each in its own zone of the example's region);
- ``balancer``: the nginx file locations of an embedded nginx (upstream name and settings kept);
- ``metrics.url``: an embedded Prometheus scraping an exporter of light load;
- ``scaling.behavior.scale_in``: stabilization 0s and no rate limit, because the test's ticks are
  seconds apart, not minutes;
- ``scaling.schedules``: removed, because a floor that happens to be open when the test runs (the
  weekday-morning window, a term week) would change the count it launches.

The region, image, RAM role, instance types, health, drain and checks are the example's own; the
example's image is registered on the endpoint (so an unknown image id would be refused), beside a
newer image of another model version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
from autoscaler.policy.model import AlibabaProviderConfig, NginxBalancerConfig
from autoscaler.testing.ecs_endpoint import EcsEndpoint

EXAMPLE = POLICIES / "asr-alibaba.yaml"
#: Where the endpoint hands out private addresses: loopback, and apart from other tests' ranges.
ADDRESS_NETWORK = "127.65.0.0/16"
#: Dummy access keys; the endpoint verifies each request's signature with them.
ACCESS_KEY_ID = "LTAI-cloud-once-test"
ACCESS_KEY_SECRET = "cloud-once-secret-do-not-log"
SECURITY_GROUP = "sg-cloud-once-nodes"
#: The image used when the example looks its image up by model version instead of naming one.
LOOKUP_IMAGE = "m-cloud-once-model"


@dataclass(frozen=True)
class AlibabaCloud:
    """The endpoint, its vswitch ids (in the example's order) and the image the launch should use."""

    ecs: EcsEndpoint
    vswitches: tuple[str, ...]
    image: str

    def endpoints(self, instance_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
        """Private address and ``autoscaler:port`` tag of each instance."""
        instances = self.ecs.instances()
        return {iid: (instances[iid].private_ip, int(instances[iid].tags[TAG_PORT])) for iid in instance_ids}

    def live(self, instance_ids: Iterable[str]) -> set[str]:
        """The ids ECS reports Pending or Running (a released instance is gone)."""
        return {iid for iid in instance_ids if self.ecs.status_of(iid) in ("Pending", "Running")}


@pytest.fixture
def alibaba_cloud() -> Iterator[AlibabaCloud]:
    """A started local ECS endpoint with the example's zones and image; stopped after the test."""
    example = load_policy(EXAMPLE)
    assert isinstance(example.provider, AlibabaProviderConfig), "the Alibaba example must use alibaba"
    region = example.provider.region
    vswitches = {f"vsw-cloud-once-{n}": f"{region}-{chr(ord('h') + n)}"
                 for n in range(len(example.provider.vswitches))}
    with EcsEndpoint(region=region, vswitches=vswitches, credentials={ACCESS_KEY_ID: ACCESS_KEY_SECRET},
                     address_network=ADDRESS_NETWORK) as ecs:
        image = example.launch.image.id or LOOKUP_IMAGE
        now = datetime.now(UTC)
        ecs.add_image(image, name="asr-node", tags={TAG_MODEL_VERSION: example.launch.model_version},
                      created_at=now - timedelta(days=1))
        ecs.add_image("m-cloud-once-other", name="asr-node-other", created_at=now,
                      tags={TAG_MODEL_VERSION: f"{example.launch.model_version}-other"})
        yield AlibabaCloud(ecs=ecs, vswitches=tuple(vswitches), image=image)


def test_once_on_local_ecs_launches_example_count_then_holds_then_drains_before_terminating(
    alibaba_cloud: AlibabaCloud,
    low_load_prometheus: Callable[[str], EmbeddedPrometheus],
    start_nginx: Callable[[str], EmbeddedNginx],
    node_fleet: NodeFleet,
    tmp_path: Path,
) -> None:
    """`once` with the Alibaba example launches min_nodes right, then nothing, and drains before deleting."""
    copy = PolicyCopy(EXAMPLE, tmp_path / "asr-alibaba.yaml")
    example = copy.original
    assert isinstance(example.balancer, NginxBalancerConfig)
    ecs = alibaba_cloud.ecs
    nginx = start_nginx(example.balancer.upstream)
    prometheus = low_load_prometheus(example.pool)

    provider = copy.section("provider")
    provider["endpoint"] = ecs.endpoint
    provider["protocol"] = "http"
    provider["vswitches"] = list(alibaba_cloud.vswitches)
    provider["security_group"] = SECURITY_GROUP
    copy.point_balancer_at(nginx)
    copy.point_metrics_at(prometheus.url, tmp_path / "file_sd" / f"{example.pool}.json")
    copy.make_scale_in_immediate()
    copy.drop_schedules()
    copy.drop_warm_pool()
    policy = copy.write()
    assert isinstance(policy.provider, AlibabaProviderConfig)
    wait_for_checks(prometheus.url, policy)

    env = cli_env({
        "ALIBABA_CLOUD_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ACCESS_KEY_SECRET,
        # The chain must find the keys above and look nowhere else (the metadata address is not local).
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
        "ALIBABA_CLOUD_CLI_PROFILE_DISABLED": "true",
    })
    store_url = f"sqlite:///{tmp_path / 'store.db'}"

    # 1. The first run launches the example's count, as the example describes it.
    first = run_once(copy.path, store_url, env=env, cwd=tmp_path)
    count = policy.scaling.min_nodes
    assert len(first["launched"]) == count
    assert first["decision"]["desired"] == count
    instances = ecs.instances()
    assert sorted(instances) == sorted(first["launched"])
    assert_loopback(i.private_ip for i in instances.values())
    for instance in instances.values():
        assert instance.image == alibaba_cloud.image
        assert instance.instance_type == policy.launch.instance_types[0].name
        assert instance.vswitch == alibaba_cloud.vswitches[0]  # the first vswitch in order of preference
        assert instance.security_group == SECURITY_GROUP
        assert instance.ram_role == policy.provider.ram_role
        assert instance.tags[TAG_POOL] == policy.pool
        assert instance.tags[TAG_MODEL_VERSION] == policy.launch.model_version
        assert instance.tags[TAG_MANAGED_BY] == MANAGED_BY_VALUE
        assert instance.tags[TAG_LAUNCH_TOKEN] == f"{policy.pool}-tick-{first['tick_id']}"
        assert instance.tags[TAG_PORT] == str(policy.launch.port)
        assert policy.launch.tags.items() <= instance.tags.items()

    scenario = OnceScenario(copy=copy, policy=policy, store_url=store_url, env=env, cwd=tmp_path,
                            nginx=nginx, fleet=node_fleet, cloud=alibaba_cloud, launched=first["launched"],
                            ticks=1)
    # 2. A second run launches nothing (the nodes are booting), 3. and nothing once they serve.
    scenario.second_run_launches_nothing()
    scenario.nodes_join()
    # 4. A lower count drains the victims first, then deletes them once their streams end.
    victims = scenario.lower_count_drains_then_terminates(lower_count(count))
    deleted = [i for call in ecs.calls("DeleteInstances") for k, i in call.params.items()
               if k.startswith("InstanceId.")]
    assert sorted(deleted) == victims
    assert all(ecs.status_of(v) is None for v in victims)
    scenario.check_store(victims)
