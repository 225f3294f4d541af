"""The simulated fleet: the engine's decisions applied to booting, serving and draining nodes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sim_helpers import POLICIES

import autoscaler.simulate.fleet as fleet_module
from autoscaler.policy.engine import decide
from autoscaler.policy.load import load_policy
from autoscaler.policy.model import PoolPolicy
from autoscaler.simulate.demand import Demand
from autoscaler.simulate.fleet import FleetModel, Replay, fit_policy, replay, with_warm_pool
from autoscaler.simulate.scenario import Workload
from autoscaler.simulate.workload import ServiceLaw

FLEET = FleetModel(
    instance_type="sim",
    streams_per_node=10,
    boot_s=60,
    price_per_hour=1.0,
    drain_timeout_s=None,
    gpu_memory_mib=24576,
    model_memory_mib=3400,
    stream_memory_mib=1900,
)
LAW = ServiceLaw(Workload.model_validate({"audio_seconds": {"distribution": "fixed", "mean": 30}}))


def _demand(streams: list[int] | np.ndarray[Any, Any]) -> Demand:
    return Demand(
        streams=np.asarray(streams, dtype=np.int64),
        scale=1.0,
        replay_at=datetime(2025, 1, 6, tzinfo=UTC),
        arrivals=None,
        description="test",
    )


def _policy(
    name: str = "hpa-like.yaml",
    *,
    min_nodes: int = 1,
    max_nodes: int = 10,
    changes: dict[str, Any] | None = None,
) -> PoolPolicy:
    policy = fit_policy(load_policy(POLICIES / name), FLEET, min_nodes=min_nodes, max_nodes=max_nodes)
    if changes:
        data = policy.model_dump()
        for key, value in changes.items():
            data["scaling"][key] = value
        policy = PoolPolicy.model_validate(data)
    return policy


def _run(policy: PoolPolicy, streams: list[int] | np.ndarray[Any, Any], fleet: FleetModel = FLEET) -> Replay:
    return replay("test", policy, _demand(streams), fleet, LAW, tick_s=15, seed=1)


def test_every_tick_is_decided_by_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay calls policy.engine.decide once per tick (no second implementation of the policy)."""
    calls: list[datetime] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[4])
        return decide(*args, **kwargs)

    monkeypatch.setattr(fleet_module, "decide", spy)
    result = _run(_policy(), [20] * 3000)
    assert len(calls) == len(result.tick_times) == 200
    assert calls[1] - calls[0] == (calls[2] - calls[1])
    assert (calls[1] - calls[0]).total_seconds() == 15


def test_steady_demand_settles_at_the_target_and_never_waits() -> None:
    """Constant 36 streams with target 6 per node settles at 6 nodes; capacity covers demand throughout."""
    result = _run(_policy(), [36] * 6000)
    assert result.ready[-1] == 6
    assert result.violation_seconds == 0
    # The warm start serves ceil(36 / 10) = 4 nodes; the first tick launches the 2 the target asks for.
    assert result.launches == 2
    assert result.node_seconds == int(result.alive.sum()) == 6 * 6000


def test_a_step_up_waits_for_the_boot_delay() -> None:
    """Demand jumping past capacity waits until launched nodes finish booting (60 s plus up to a tick)."""
    streams = [10] * 600 + [80] * 1800
    result = _run(_policy(), streams)
    assert result.launches > 0
    waited = np.flatnonzero(result.unmet)
    assert waited.min() == 600
    assert 60 <= result.violation_seconds <= 60 + 15
    assert result.capacity[600 + 60 + 15] >= 80


def test_drained_nodes_leave_after_their_streams_and_are_billed_until_then() -> None:
    """After a drop, victims drain (their streams finish within the 30 s service) and billing stops."""
    result = _run(_policy(), [60] * 1200 + [25] * 2400)
    assert result.terminations > 0
    assert result.draining.max() >= 1
    assert result.draining[-1] == 0
    assert result.ready[-1] == 4  # ceil(25 / 7): hpa-like.yaml tracks 7 streams a node
    assert result.node_seconds == int(result.alive.sum())
    assert result.alive[-1] == 4
    assert result.violation_seconds == 0  # draining nodes keep serving the streams they hold


def test_booting_victims_are_cancelled_at_once() -> None:
    """A burst shorter than the boot is answered by launches that a quick scale-in cancels while booting."""
    fast_in = {"behavior": {"scale_in": {"stabilization": "0s"}, "scale_out": {}}}
    slow_boot = FleetModel(**{**FLEET.__dict__, "boot_s": 600})
    result = _run(_policy(changes=fast_in), [10] * 300 + [80] * 30 + [10] * 1500, fleet=slow_boot)
    assert result.launches >= 7 and result.terminations >= result.launches - 1
    # The cancelled nodes never served nor drained: billed only from launch to cancellation.
    assert result.ready.max() <= 2
    assert result.draining.max() == 0


def test_bounds_of_the_policy_cap_the_fleet() -> None:
    """max_nodes caps the fleet even when demand needs more; the excess waits."""
    result = _run(_policy(max_nodes=3), [100] * 3000)
    assert result.ready.max() == 3
    assert result.violation_seconds == 3000


def test_check_without_signal_reads_as_no_data_and_blocks_scale_in() -> None:
    """A check with no signal is missing data: noted in the replay, and the pool never scales in."""
    data = _policy().model_dump()
    data["scaling"]["checks"][0]["signal"] = None
    policy = PoolPolicy.model_validate(data)
    result = _run(policy, [60] * 600 + [5] * 3000)
    assert result.terminations == 0
    assert any("no signal" in note for note in result.notes)


def test_gpu_memory_signal_follows_the_busiest_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU memory utilisation is (model + ceil(streams per node) × stream) / total, per the fleet's MiB."""
    seen: list[float] = []

    def spy(policy: PoolPolicy, samples: Any, *rest: Any) -> Any:
        value = samples["gpu-memory"].value
        if value is not None:
            seen.append(value)
        return decide(policy, samples, *rest)

    monkeypatch.setattr(fleet_module, "decide", spy)
    policy = _policy("asr-aws.yaml", min_nodes=4, max_nodes=4)
    _run(policy, [30] * 300)
    assert seen and seen[0] == pytest.approx(
        (3400 + 8 * 1900) / 24576
    )  # 30 streams on 4 nodes: 8 on the busiest


def test_replay_is_deterministic_for_a_seed() -> None:
    """The same demand and seed give the same replay."""
    streams = np.random.default_rng(2).integers(0, 90, 4000)
    first, second = _run(_policy(), streams), _run(_policy(), streams)
    assert np.array_equal(first.capacity, second.capacity)
    assert first.node_seconds == second.node_seconds


def test_fit_policy_overrides_the_node_and_bounds(tmp_path: Path) -> None:
    """The fleet's streams and price replace the first instance type's; min/max override the pool."""
    fitted = fit_policy(load_policy(POLICIES / "asr-aws.yaml"), FLEET, min_nodes=2, max_nodes=9)
    assert [(t.name, t.streams, t.price_per_hour) for t in fitted.launch.instance_types] == [("sim", 10, 1.0)]
    assert (fitted.scaling.min_nodes, fitted.scaling.max_nodes) == (2, 9)
    assert max(s.min_nodes or 0 for s in fitted.scaling.schedules) <= 9


# ------------------------------------------------------------------------------------------- warm pool
WARM_FLEET = FleetModel(
    instance_type="sim", streams_per_node=10, boot_s=180, price_per_hour=1.0, drain_timeout_s=None,
    gpu_memory_mib=24576, model_memory_mib=3400, stream_memory_mib=1900,
    warm_start_s=20, stopped_price_per_hour=0.02,
)


def _warm(size: int) -> PoolPolicy:
    return with_warm_pool(_policy(), size)


def test_a_step_up_served_by_warm_starts_waits_only_the_warm_start() -> None:
    """With two warm instances, a jump needing two more nodes waits ~20 s (warm start), not 180 s."""
    streams = [10] * 1200 + [30] * 1800
    cold = _run(_policy(), streams, WARM_FLEET)
    warm = _run(_warm(2), streams, WARM_FLEET)
    assert 180 <= cold.violation_seconds <= 180 + 15
    assert 20 <= warm.violation_seconds <= 20 + 15
    assert warm.warm_starts >= 2 and warm.failed_starts == 0
    assert warm.stopped_seconds > 0


def test_failed_warm_starts_fall_back_to_cold_launches() -> None:
    """With every start failing, each becomes a cold launch in the same tick: the wait is the cold boot."""
    streams = [10] * 1200 + [30] * 1800
    failing = FleetModel(**{**WARM_FLEET.__dict__, "start_failure_rate": 1.0})
    result = _run(_warm(2), streams, failing)
    assert result.warm_starts == 0 and result.failed_starts >= 2
    assert result.launches >= 2
    assert 180 <= result.violation_seconds <= 180 + 15


def test_warm_pool_is_prepared_and_billed_stopped() -> None:
    """The pool opens full (prepared before the window): flat demand bills the serving nodes plus the
    warm pool's stopped hours, and nothing is prepared during the window."""
    result = _run(_warm(3), [12] * 3600, WARM_FLEET)  # 2 nodes at the target of 6: no move
    assert result.prepared == 0
    assert result.stopped_seconds == 3 * 3600
    assert result.node_seconds == int(result.alive.sum())


def test_a_running_warm_pool_serves_at_once_and_bills_as_running() -> None:
    """state: running: a started warm instance serves within the tick and the pool bills as running."""
    streams = [10] * 1200 + [30] * 1800
    data = _warm(2).model_dump()
    data["warm_pool"]["state"] = "running"
    result = _run(PoolPolicy.model_validate(data), streams, WARM_FLEET)
    assert result.violation_seconds <= 15
    assert result.stopped_seconds == 0
    assert result.node_seconds > int(result.ready.sum()) * 0  # running warm time is in the node-seconds
    stopped = _run(_warm(2), streams, WARM_FLEET)
    assert result.node_seconds > stopped.node_seconds
