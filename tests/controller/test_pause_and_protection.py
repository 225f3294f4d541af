"""The controller with pause (from the store, as `autoscaler pause` sets it, and from the policy) and
nodes protected by the `autoscaler:do-not-disrupt` tag."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from autoscaler.cli import app
from autoscaler.domain import DO_NOT_DISRUPT_TAG
from autoscaler.store import SqlStore
from autoscaler.testing.controller_rig import STREAMS_QUERY, Rig


def test_paused_pool_is_observed_and_recorded_but_not_acted_on(
    rig: Rig, serving_pool: Callable[[int], list[str]]
) -> None:
    """Paused from the store: high load launches nothing, the tick is still recorded with what it would
    have done, and the paused gauge is 1; after resume the same load scales out."""
    serving_pool(2)
    rig.store.set_paused("unit", True, rig.clock.now(), "peak freeze")
    rig.metrics.set(STREAMS_QUERY, 20.0)
    rig.clock.advance(15)
    ticks_before = len(rig.store.ticks)
    outcome = rig.controller.tick()
    assert outcome.launched == [] and outcome.drained == [] and outcome.terminated == {}
    assert any("paused (autoscaler pause" in note and "peak freeze" in note for note in outcome.notes)
    assert len(rig.store.ticks) == ticks_before + 1
    reasons = rig.store.ticks[-1]["decision"]["reasons"]
    assert any(r["kind"] == "pause" and r["detail"]["would_launch"] > 0 for r in reasons)
    registry = rig.controller.telemetry.registry
    assert registry.get_sample_value("autoscaler_paused", {"pool": "unit"}) == 1.0
    rig.store.set_paused("unit", False, rig.clock.now())
    rig.clock.advance(15)
    assert rig.controller.tick().launched
    assert registry.get_sample_value("autoscaler_paused", {"pool": "unit"}) == 0.0


def test_paused_pool_keeps_even_a_node_that_failed_to_boot(rig: Rig) -> None:
    """Paused: a node past its boot timeout is not replaced (nodes stay as they are)."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    (node,) = rig.controller.tick().launched
    rig.store.set_paused("unit", True, rig.clock.now())
    rig.clock.advance(120)  # past the 60 s boot timeout, never healthy
    outcome = rig.controller.tick()
    assert outcome.terminated == {} and node in outcome.nodes


def test_protected_node_is_not_drained_on_scale_in(
    rig: Rig, serving_pool: Callable[[int], list[str]]
) -> None:
    """A serving node tagged autoscaler:do-not-disrupt=true is never the scale-in victim."""
    ids = serving_pool(3)
    idle = ids[0]
    rig.provider.add_instance(
        replace(rig.provider.get(idle), tags={**rig.provider.get(idle).tags, DO_NOT_DISRUPT_TAG: "true"})
    )
    rig.probe.streams.update({idle: 0, ids[1]: 5, ids[2]: 5})
    rig.metrics.set(STREAMS_QUERY, 1.0)
    drained: list[str] = []
    for _ in range(4):
        rig.clock.advance(15)
        drained += rig.controller.tick().drained
    assert drained and idle not in drained


def test_pause_and_resume_commands_and_status(tmp_path: Path) -> None:
    """`autoscaler pause --pool` records the pause (status shows it); `resume` clears it; pausing in a
    store that does not exist is an error and creates nothing."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = SqlStore(url)
    store.record_tick("asr", rig_time(), {}, {"summary": "hold at 2"}, {})
    store.close()
    runner = CliRunner()
    paused = runner.invoke(app, ["pause", "--pool", "asr", "--reason", "freeze", "--store", url])
    assert paused.exit_code == 0 and "paused" in paused.stdout
    status = runner.invoke(app, ["status", "--json", "--store", url])
    assert status.exit_code == 0 and '"paused": true' in status.stdout
    assert runner.invoke(app, ["resume", "--pool", "asr", "--store", url]).exit_code == 0
    assert '"paused": false' in runner.invoke(app, ["status", "--json", "--store", url]).stdout
    missing = tmp_path / "nope.db"
    result = runner.invoke(app, ["pause", "--pool", "asr", "--store", f"sqlite:///{missing}"])
    assert result.exit_code == 2 and not missing.exists()


def rig_time() -> datetime:
    """Any recorded time."""
    return datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
