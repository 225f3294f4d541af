"""LocalProvider behaviour beyond the contract: real processes, restarts, kills, limits, bad state."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from autoscaler.domain import (
    TAG_LAUNCH_TOKEN,
    CloudState,
    Instance,
    LaunchSpec,
    StartOutcome,
    TerminateOutcome,
)
from autoscaler.errors import PolicyError, ProviderError, QuotaExceeded
from autoscaler.policy.model import AwsProviderConfig, LocalProviderConfig, PoolPolicy
from autoscaler.providers.local import STATE_FILE, LocalProvider, process_alive
from autoscaler.testing import read_metric, wait_until

LOCAL_POOL = "asr-local-test"  # the pool of the conftest's local_launch_spec
MakeProvider = Callable[..., LocalProvider]


def healthy(instance: Instance) -> bool:
    """True when the node answers /healthz with 200."""
    try:
        return httpx.get(f"http://{instance.endpoint}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def recorded_pid(config: LocalProviderConfig, instance_id: str) -> int:
    """The pid the state file records for ``instance_id``."""
    records = json.loads((Path(config.state_dir) / STATE_FILE).read_text())["instances"]
    pid: int = records[instance_id]["pid"]
    return pid


def test_launched_node_is_a_real_serving_process(
    local_provider: LocalProvider, local_launch_spec: LaunchSpec
) -> None:
    """A launched instance is a node on its port that turns healthy and reports its own identity."""
    [inst] = local_provider.launch(local_launch_spec, 1, "tok-serve").instances
    assert inst.address == "127.0.0.1" and inst.state == CloudState.RUNNING
    assert inst.id.startswith("local-")
    wait_until(lambda: healthy(inst), timeout_s=20, message=f"{inst.id} healthy")
    url = f"http://{inst.endpoint}"
    assert read_metric(url, "asr_model_info", instance_id=inst.id, pool=LOCAL_POOL,
                       model_version=local_launch_spec.model_version) == 1
    assert read_metric(url, "asr_stream_capacity") == 4  # streams_by_type of the first type
    response = httpx.post(f"{url}/api/predict/", json={"data": [0.1, [], "zh", True]}, timeout=10)
    assert response.status_code == 200
    assert local_launch_spec.model_version in response.json()["data"][0]
    assert local_provider.log_path(inst.id).is_file()


def test_records_survive_a_new_provider_object(
    local_provider: LocalProvider, make_local_provider: MakeProvider, local_launch_spec: LaunchSpec
) -> None:
    """A new LocalProvider on the same state dir sees the same instances and honours their token."""
    launched = local_provider.launch(local_launch_spec, 2, "tok-restart").instances
    restarted = make_local_provider()
    listed = restarted.list_instances(LOCAL_POOL)
    def seen(instances: Sequence[Instance]) -> set[tuple[str, int, str]]:
        return {(i.id, i.port, i.launch_token) for i in instances}

    assert seen(listed) == seen(launched)
    again = restarted.launch(local_launch_spec, 2, "tok-restart")
    assert {i.id for i in again.instances} == {i.id for i in launched}


def test_nodes_outlive_the_controller_process_that_launched_them(
    local_provider: LocalProvider, local_config: LocalProviderConfig
) -> None:
    """Nodes launched by a Python process that has exited keep running and are listed and stoppable."""
    script = textwrap.dedent(f"""
        from datetime import timedelta
        from autoscaler.domain import LaunchSpec
        from autoscaler.policy.model import AwsProviderConfig, LocalProviderConfig, PoolPolicy
        from autoscaler.providers.local import LocalProvider
        config = LocalProviderConfig(state_dir={local_config.state_dir!r}, load_delay=timedelta(seconds=0.3))
        spec = LaunchSpec(pool={LOCAL_POOL!r}, image="local", model_version="v1", instance_types=("t",))
        print(LocalProvider(config, {LOCAL_POOL!r}).launch(spec, 1, "tok-exited").instances[0].id)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          check=True)
    launched_id = done.stdout.strip()
    [inst] = local_provider.list_instances(LOCAL_POOL)
    assert inst.id == launched_id and inst.state == CloudState.RUNNING
    wait_until(lambda: healthy(inst), timeout_s=20, message="orphaned node healthy")
    assert local_provider.stop_all(LOCAL_POOL) == [launched_id]
    assert not process_alive(recorded_pid_or_zero(local_config, launched_id), launched_id)


def recorded_pid_or_zero(config: LocalProviderConfig, instance_id: str) -> int:
    """The recorded pid, or 0 once the record is gone (0 is never a node's pid)."""
    try:
        return recorded_pid(config, instance_id)
    except KeyError:
        return 0


def test_terminate_really_stops_the_process(
    local_provider: LocalProvider, local_config: LocalProviderConfig, local_launch_spec: LaunchSpec
) -> None:
    """After terminate the node's process exits cleanly, its port closes and it leaves the list."""
    [inst] = local_provider.launch(local_launch_spec, 1, "tok-kill").instances
    wait_until(lambda: healthy(inst), timeout_s=20, message="node healthy")
    pid = recorded_pid(local_config, inst.id)
    assert local_provider.terminate([inst.id]) == {inst.id: TerminateOutcome.TERMINATING}
    wait_until(lambda: not process_alive(pid, inst.id), timeout_s=10, message="node process gone")
    assert not healthy(inst)
    assert local_provider.list_instances(LOCAL_POOL) == []
    assert f"stopping node {inst.id}" in local_provider.log_path(inst.id).read_text()


def test_terminate_lists_the_node_as_stopping_until_it_exits(
    make_local_provider: MakeProvider, local_launch_spec: LaunchSpec, tmp_path: Path
) -> None:
    """A node ignoring SIGTERM is STOPPING, reported TERMINATING again, and SIGKILLed after the grace."""
    # A wrapper that ignores SIGTERM around the real node: the shell and its sleep outlive the node.
    wrapper = tmp_path / "stubborn-python"
    wrapper.write_text(f"#!/bin/sh\ntrap '' TERM\n{sys.executable} \"$@\"\nsleep 30\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    provider = make_local_provider(python=str(wrapper))
    [inst] = provider.launch(local_launch_spec, 1, "tok-stubborn").instances
    wait_until(lambda: healthy(inst), timeout_s=20, message="node healthy")
    sent = time.monotonic()
    assert provider.terminate([inst.id]) == {inst.id: TerminateOutcome.TERMINATING}
    [stopping] = provider.list_instances(LOCAL_POOL)
    assert stopping.state == CloudState.STOPPING
    assert provider.terminate([inst.id]) == {inst.id: TerminateOutcome.TERMINATING}
    wait_until(lambda: not provider.list_instances(LOCAL_POOL), timeout_s=10, message="stubborn node gone")
    assert time.monotonic() - sent >= 1.0  # it took the SIGKILL, not the SIGTERM
    assert provider.terminate([inst.id]) == {inst.id: TerminateOutcome.ALREADY_GONE}


def test_a_crashed_node_counts_as_terminated(
    local_provider: LocalProvider, local_config: LocalProviderConfig, local_launch_spec: LaunchSpec
) -> None:
    """A node killed behind the provider's back leaves the list and is ALREADY_GONE on terminate."""
    [inst] = local_provider.launch(local_launch_spec, 1, "tok-crash").instances
    os.killpg(recorded_pid(local_config, inst.id), signal.SIGKILL)
    wait_until(lambda: not local_provider.list_instances(LOCAL_POOL), timeout_s=10, message="crash noticed")
    assert local_provider.terminate([inst.id]) == {inst.id: TerminateOutcome.ALREADY_GONE}
    assert inst.id not in json.loads((Path(local_config.state_dir) / STATE_FILE).read_text())["instances"]


def test_concurrent_launches_with_one_token_start_count_nodes_in_total(
    local_provider: LocalProvider, make_local_provider: MakeProvider, local_launch_spec: LaunchSpec
) -> None:
    """Two providers launching 2 for the same token at once start 2 nodes, not 4 (the file lock)."""
    other = make_local_provider()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda p: p.launch(local_launch_spec, 2, "tok-race"),
                                [local_provider, other]))
    assert {i.id for i in results[0].instances} == {i.id for i in results[1].instances}
    assert len(local_provider.list_instances(LOCAL_POOL)) == 2


def test_fleet_limit_gives_a_shortfall_then_quota_exceeded(
    make_local_provider: MakeProvider, local_launch_spec: LaunchSpec
) -> None:
    """With max_instances=2, asking for 3 launches 2 with a quota shortfall; a new token raises."""
    provider = make_local_provider(max_instances=2)
    result = provider.launch(local_launch_spec, 3, "tok-limit")
    assert len(result.instances) == 2
    assert result.shortfall == "quota" and result.notes
    with pytest.raises(QuotaExceeded):
        provider.launch(local_launch_spec, 1, "tok-limit-2")


def test_unstartable_node_raises_provider_error(
    make_local_provider: MakeProvider, local_launch_spec: LaunchSpec, tmp_path: Path
) -> None:
    """A node that cannot be spawned raises ProviderError chained to the OS error, recording nothing."""
    provider = make_local_provider(python=str(tmp_path / "no-such-python"))
    with pytest.raises(ProviderError) as caught:
        provider.launch(local_launch_spec, 1, "tok-broken")
    assert isinstance(caught.value.__cause__, OSError)
    assert provider.list_instances(LOCAL_POOL) == []


def test_corrupt_state_file_raises_provider_error(
    local_provider: LocalProvider, local_config: LocalProviderConfig
) -> None:
    """An unreadable state file is a ProviderError, never an empty fleet."""
    state = Path(local_config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    (state / STATE_FILE).write_text("{not json")
    with pytest.raises(ProviderError) as caught:
        local_provider.list_instances(LOCAL_POOL)
    assert caught.value.__cause__ is not None
    (state / STATE_FILE).unlink()  # let the fixture's cleanup read the state again


def test_instances_carry_type_tags_and_spec_tags(
    local_provider: LocalProvider, local_launch_spec: LaunchSpec
) -> None:
    """The first instance type is used, the spec's tags are kept and the token tag is written."""
    [inst] = local_provider.launch(local_launch_spec, 1, "tok-tags").instances
    assert inst.instance_type == local_launch_spec.instance_types[0]
    assert inst.tags["team"] == "asr" and inst.tags[TAG_LAUNCH_TOKEN] == "tok-tags"
    assert inst.image == local_launch_spec.image and inst.zone == "local"


def test_provider_built_from_a_policy_uses_its_streams(tmp_path: Path, local_launch_spec: LaunchSpec) -> None:
    """for_policy takes the state dir and streams per type from the policy; other kinds are refused."""
    policy = PoolPolicy.model_validate({
        "pool": LOCAL_POOL,
        "provider": {"kind": "local", "state_dir": str(tmp_path / "fleet"), "load_delay": "0.2s"},
        "launch": {"model_version": "v1", "instance_types": [{"name": "local-gpu", "streams": 3,
                                                                "price_per_hour": 1.0}]},
        "scaling": {"min_nodes": 0, "max_nodes": 2},
    })
    provider = LocalProvider.for_policy(policy, kill_grace_s=1.0)
    try:
        [inst] = provider.launch(local_launch_spec, 1, "tok-policy").instances
        wait_until(lambda: healthy(inst), timeout_s=20, message="node healthy")
        assert read_metric(f"http://{inst.endpoint}", "asr_stream_capacity") == 3
    finally:
        provider.stop_all(LOCAL_POOL)
    aws = policy.model_copy(update={"provider": AwsProviderConfig(kind="aws", region="us-east-1",
                                                                   subnets=["subnet-1"])})
    with pytest.raises(PolicyError):
        LocalProvider.for_policy(aws)


# ------------------------------------------------------------------------------------- stop and start
def test_stopped_node_starts_from_its_disk_in_a_fraction_of_the_cold_load(
    make_local_provider: MakeProvider, local_launch_spec: LaunchSpec
) -> None:
    """A cold node loads in load_delay and writes its model cache; stopped and started, the same id
    loads from that disk in cached_load_fraction of it; terminating it deletes the disk."""
    provider = make_local_provider()
    [inst] = provider.launch(local_launch_spec, 1, "tok-warm").instances
    wait_until(lambda: healthy(inst), timeout_s=20, message=f"{inst.id} healthy")
    cold_url = f"http://{inst.endpoint}"
    assert read_metric(cold_url, "asr_model_from_cache") == 0
    assert read_metric(cold_url, "asr_model_load_seconds") == pytest.approx(0.3)
    cache = provider.disk_path(inst.id) / "model.cache"
    assert cache.read_text().strip() == local_launch_spec.model_version

    provider.stop([inst.id])
    stopped = wait_until(lambda: next((i for i in provider.list_instances(LOCAL_POOL)
                                       if i.state == CloudState.STOPPED), None),
                         timeout_s=20, message="node stopped")
    assert stopped.id == inst.id and not healthy(inst)
    provider.start([inst.id])
    [warm] = provider.list_instances(LOCAL_POOL)
    assert warm.id == inst.id and warm.state == CloudState.RUNNING
    wait_until(lambda: healthy(warm), timeout_s=20, message=f"{warm.id} healthy after start")
    warm_url = f"http://{warm.endpoint}"
    assert read_metric(warm_url, "asr_model_from_cache") == 1
    assert read_metric(warm_url, "asr_model_load_seconds") == pytest.approx(0.03)

    provider.stop_all(LOCAL_POOL)
    assert not provider.disk_path(inst.id).exists()


def test_starting_a_node_still_stopping_is_an_error_and_changes_nothing(
    make_local_provider: MakeProvider, local_launch_spec: LaunchSpec
) -> None:
    """A start while the node's process is still shutting down raises ProviderError; the node then
    settles STOPPED and starts normally."""
    provider = make_local_provider(kill_grace_s=5.0)
    [inst] = provider.launch(local_launch_spec, 1, "tok-stopping").instances
    wait_until(lambda: healthy(inst), timeout_s=20, message=f"{inst.id} healthy")
    pid = recorded_pid(provider.config, inst.id)
    os.kill(pid, signal.SIGSTOP)  # a node that cannot act on SIGTERM yet: its stop takes a while
    try:
        provider.stop([inst.id])
        with pytest.raises(ProviderError, match="still stopping"):
            provider.start([inst.id])
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: [i.state for i in provider.list_instances(LOCAL_POOL)] == [CloudState.STOPPED],
               timeout_s=20, message="node stopped")
    assert provider.start([inst.id]) == {inst.id: StartOutcome.STARTING}


def test_a_node_spawned_but_never_recorded_is_still_listed(
    local_provider: LocalProvider, make_local_provider: MakeProvider, local_config: LocalProviderConfig,
    local_launch_spec: LaunchSpec,
) -> None:
    """With its record file gone, a live node is found by its process tags: listed with its id, port
    and token, honoured by a launch with that token, and terminated for real."""
    [inst] = local_provider.launch(local_launch_spec, 1, "tok-orphan").instances
    pid = recorded_pid(local_config, inst.id)
    (Path(local_config.state_dir) / STATE_FILE).unlink()  # the crash lost the record
    restarted = make_local_provider()
    [found] = restarted.list_instances(LOCAL_POOL)
    assert (found.id, found.port, found.launch_token, found.state) == (
        inst.id, inst.port, "tok-orphan", CloudState.RUNNING)
    assert found.tags[TAG_LAUNCH_TOKEN] == "tok-orphan"
    assert recorded_pid(local_config, inst.id) == pid  # adopted into the record file
    again = restarted.launch(local_launch_spec, 1, "tok-orphan")
    assert [i.id for i in again.instances] == [inst.id]
    assert restarted.terminate([inst.id]) == {inst.id: TerminateOutcome.TERMINATING}
    wait_until(lambda: not process_alive(pid, inst.id), timeout_s=10, message="orphan terminated")
    assert restarted.list_instances(LOCAL_POOL) == []


def test_nodes_of_a_launch_killed_midway_are_all_listed_and_not_launched_twice(
    make_local_provider: MakeProvider, local_config: LocalProviderConfig,
) -> None:
    """A controller SIGKILLed while launching 3 nodes: every node process it spawned is listed, and
    a launch with the same token afterwards tops up to 3 instead of starting 3 more."""
    script = textwrap.dedent(f"""
        import os, signal
        from datetime import timedelta
        from autoscaler.domain import LaunchSpec
        from autoscaler.policy.model import LocalProviderConfig
        from autoscaler.providers import local
        config = LocalProviderConfig(state_dir={local_config.state_dir!r}, load_delay=timedelta(seconds=0.3))
        spec = LaunchSpec(pool={LOCAL_POOL!r}, image="local", model_version="v1", instance_types=("t",))
        real_write = local.LocalProvider._write
        writes = []
        def counted_write(self, state):
            real_write(self, state)
            writes.append(1)
        local.LocalProvider._write = counted_write
        real_start = local.LocalProvider._start
        def start_then_die(self, *args, **kwargs):
            record = real_start(self, *args, **kwargs)
            if len(writes) == 1:  # the second node runs, but its record never reaches the file
                os.kill(os.getpid(), signal.SIGKILL)
            return record
        local.LocalProvider._start = start_then_die
        local.LocalProvider(config, {LOCAL_POOL!r}).launch(spec, 3, "tok-killed")
    """)
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    on_file = json.loads((Path(local_config.state_dir) / STATE_FILE).read_text())["instances"]
    assert len(on_file) == 1  # only the first node was recorded before the kill
    provider = make_local_provider()
    listed = provider.list_instances(LOCAL_POOL)
    assert len(listed) == 2 and {i.launch_token for i in listed} == {"tok-killed"}
    spec = LaunchSpec(pool=LOCAL_POOL, image="local", model_version="v1", instance_types=("t",))
    again = provider.launch(spec, 3, "tok-killed")
    assert len(again.instances) == 3 and {i.id for i in listed} < {i.id for i in again.instances}
    assert len(provider.list_instances(LOCAL_POOL)) == 3
