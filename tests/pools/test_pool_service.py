"""Many pools in one controller on the fakes: own jobs and threads, hot add/remove, duplicates."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from autoscaler.pools import PoolSet
from autoscaler.service import PoolService
from autoscaler.telemetry import ControllerMetrics, Health
from autoscaler.testing import wait_until
from autoscaler.testing.pool_rig import FakePools, pool_policy

#: Ticks are compressed for the test: every pool ticks every 0.2 s (policies say 15 s).
INTERVAL_S = 0.2

StartService = Callable[[Path], PoolService]


def _gauge(metrics: ControllerMetrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


@pytest.fixture
def fakes() -> FakePools:
    """Fake fleets for every pool, one telemetry whose /healthz fails after 3 missed periods."""
    return FakePools(ControllerMetrics(CollectorRegistry(), Health(unhealthy_after=3)))


@pytest.fixture
def service_for(fakes: FakePools) -> Iterator[StartService]:
    """Start a background ``PoolService`` on a directory; stopped after the test."""
    started: list[PoolService] = []

    def start(directory: Path) -> PoolService:
        pools = PoolSet([directory], [], fakes.build, telemetry=fakes.telemetry)
        service = PoolService(pools, blocking=False, on_tick=fakes.settle_after(),
                              interval_s=INTERVAL_S, rescan_s=0.1)
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        for fleet in fakes.fleets.values():
            fleet.provider.gate.set()
        service.stop()


def test_a_hung_cloud_holds_only_its_own_pool(
    tmp_path: Path, fakes: FakePools, service_for: StartService
) -> None:
    """Pools a and c hang in their provider for many tick periods (more hung pools than the
    scheduler's default threads): pool b keeps ticking on time meanwhile, /healthz names a and c
    (and only them) as failing, and they resume once their clouds answer."""
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.yaml").write_text(pool_policy(name))
    fakes.fleet("a").provider.gate.clear()
    fakes.fleet("c").provider.gate.clear()
    service = service_for(tmp_path)
    wait_until(lambda: fakes.fleet("a").provider.waiting == 1 and fakes.fleet("c").provider.waiting == 1,
               timeout_s=5, message="a's and c's ticks hang")
    b_before = service.ticks_of("b")
    wait_until(lambda: service.ticks_of("b") >= b_before + 8, timeout_s=10, message="b keeps ticking")
    assert service.ticks_of("a") == 0  # still inside its first tick; never overlapped
    healthy, report = fakes.telemetry.health.report()
    assert not healthy and report["failing"] == ["a", "c"]
    assert report["pools"]["b"]["healthy"] is True
    fakes.fleet("a").provider.gate.set()
    fakes.fleet("c").provider.gate.set()
    wait_until(lambda: service.ticks_of("a") >= 2, timeout_s=5, message="a ticks again")
    wait_until(lambda: fakes.telemetry.health.report()[0], timeout_s=5, message="healthy again")


def test_files_added_changed_removed_without_restart(
    tmp_path: Path, fakes: FakePools, service_for: StartService
) -> None:
    """A new file starts its pool; a removed file stops the pool's ticks and closes its adapters,
    and its nodes stay running and in its balancer; each change is logged at info with the file."""
    (tmp_path / "a.yaml").write_text(pool_policy("a"))
    with capture_logs() as logs:
        service = service_for(tmp_path)
        (tmp_path / "b.yaml").write_text(pool_policy("b", min_nodes=2))
        wait_until(lambda: len(fakes.fleet("b").balancer.current()) == 2, timeout_s=10, message="b serves 2")
        nodes = {i.id: i.state for i in fakes.fleet("b").provider.instances}
        (tmp_path / "b.yaml").unlink()
        wait_until(lambda: fakes.fleet("b").closed == 1, timeout_s=5, message="b's adapters closed")
        ticks_then, a_then = service.ticks_of("b"), service.ticks_of("a")
        wait_until(lambda: service.ticks_of("a") >= a_then + 5, timeout_s=5, message="a goes on")
    b = fakes.fleet("b")
    assert service.running_pools() == ["a"] and ticks_then == 0  # the job is gone
    assert {i.id: i.state for i in b.provider.instances} == nodes  # nothing stopped or terminated
    assert b.provider.terminate_calls == [] and b.provider.stop_calls == []
    assert {x.instance_id for x in b.balancer.current()} == set(nodes)  # still behind the balancer
    changes = [(e["event"], e.get("pool"), e.get("file")) for e in logs if e["log_level"] == "info"]
    assert ("pool_added", "b", str(tmp_path / "b.yaml")) in changes
    assert ("pool_removed", "b", str(tmp_path / "b.yaml")) in changes
    assert _gauge(fakes.telemetry, "autoscaler_desired_nodes", pool="b") is None  # no stale series


def test_duplicate_and_broken_files_never_stop_the_others(
    tmp_path: Path, fakes: FakePools, service_for: StartService
) -> None:
    """A second file for a running pool is an error and the first keeps running (the second takes
    over once the first is removed); a broken file is reported (policy_valid 0 under its pool) and
    starts once it is fixed; a broken edit of a running pool keeps its last valid policy."""
    (tmp_path / "a.yaml").write_text(pool_policy("a"))
    (tmp_path / "d.yaml").write_text(pool_policy("d").replace("max_nodes: 20", "max_nodes: -1"))
    with capture_logs() as logs:
        service = service_for(tmp_path)
        (tmp_path / "z-copy.yaml").write_text(pool_policy("a", min_nodes=3))
        wait_until(lambda: any(e["event"] == "pool_duplicate" for e in logs), timeout_s=5, message="dup")
    duplicate = next(e for e in logs if e["event"] == "pool_duplicate")
    assert "z-copy.yaml" in duplicate["error"] and "a.yaml" in duplicate["error"]
    assert service.running_pools() == ["a"]
    assert _gauge(fakes.telemetry, "autoscaler_policy_valid", pool="d") == 0.0
    a_then = service.ticks_of("a")
    wait_until(lambda: service.ticks_of("a") >= a_then + 3, timeout_s=5, message="a goes on")
    assert len(fakes.fleet("a").provider.instances) == 1  # the copy's min_nodes 3 never applied
    # The first file removed: the second takes pool a over (its nodes, now its min_nodes 3).
    (tmp_path / "a.yaml").unlink()
    wait_until(lambda: len(fakes.fleet("a").provider.instances) == 3, timeout_s=5, message="copy takes a")
    # Fixed: the broken pool starts. Broken again while running: it keeps its last valid policy.
    (tmp_path / "d.yaml").write_text(pool_policy("d"))
    wait_until(lambda: service.ticks_of("d") >= 1, timeout_s=5, message="d starts once fixed")
    assert _gauge(fakes.telemetry, "autoscaler_policy_valid", pool="d") == 1.0
    (tmp_path / "d.yaml").write_text(pool_policy("d").replace("max_nodes: 20", "max_nodes: -1") + "\n")
    wait_until(lambda: _gauge(fakes.telemetry, "autoscaler_policy_valid", pool="d") == 0.0, timeout_s=5,
               message="d's broken edit reported")
    d_then = service.ticks_of("d")
    wait_until(lambda: service.ticks_of("d") >= d_then + 2, timeout_s=5, message="d keeps ticking")
    assert service.running_pools() == ["a", "d"]


def test_a_file_renamed_to_another_pool_retires_the_old_one(
    tmp_path: Path, fakes: FakePools, service_for: StartService
) -> None:
    """Editing a running file's `pool:` never ticks the new name under the old pool's runtime: the
    old pool is retired (adapters closed, nodes left) and the new one starts from the file."""
    path = tmp_path / "a.yaml"
    path.write_text(pool_policy("a", min_nodes=2))
    service = service_for(tmp_path)
    wait_until(lambda: len(fakes.fleet("a").balancer.current()) == 2, timeout_s=10, message="a serves 2")
    path.write_text(pool_policy("renamed"))
    wait_until(lambda: service.running_pools() == ["renamed"] and service.ticks_of("renamed") >= 1,
               timeout_s=5, message="renamed runs")
    wait_until(lambda: fakes.fleet("a").closed == 1, timeout_s=5, message="a closed")
    assert fakes.fleet("a").provider.terminate_calls == [] and len(fakes.fleet("a").balancer.current()) == 2
    assert len(fakes.fleet("renamed").provider.instances) == 1  # its own fleet, its own min_nodes
