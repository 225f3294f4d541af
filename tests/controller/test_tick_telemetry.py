"""What a tick tells the operator: its log level, and the metrics it exports (cost, reasons, bounds)."""

from __future__ import annotations

from collections.abc import Callable

from structlog.testing import capture_logs

from autoscaler.errors import BalancerError
from autoscaler.testing.controller_rig import STREAMS_QUERY, Rig


def test_balancer_rejection_logs_the_tick_at_error_level(
    rig: Rig, serving_pool: Callable[[int], list[str]]
) -> None:
    """A tick whose balancer reload failed logs `tick` at error level; a clean tick at info."""
    serving_pool(1)
    rig.clock.advance(15)
    with capture_logs() as clean:
        rig.controller.tick()
    assert [e["log_level"] for e in clean if e["event"] == "tick"] == ["info"]
    rig.balancer.next_apply_error = BalancerError("nginx -t failed")
    rig.clock.advance(15)
    with capture_logs() as failed:
        outcome = rig.controller.tick()
    assert any("balancer rejected" in e for e in outcome.errors)
    ticks = [e for e in failed if e["event"] == "tick"]
    assert [e["log_level"] for e in ticks] == ["error"]
    assert "nginx -t failed" in str(ticks[0]["errors"])


def test_cost_per_hour_and_decision_reasons_are_exported(rig: Rig) -> None:
    """A scale-out tick exports the fleet's cost per hour at policy prices and the reasons that moved it."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    outcome = rig.controller.tick()  # launches min_nodes (1) at price 1.0/h
    assert outcome.cost_per_hour == 1.0
    registry = rig.controller.telemetry.registry
    assert registry.get_sample_value("autoscaler_cost_per_hour", {"pool": "unit"}) == 1.0
    reasons = {
        (s.labels["direction"], s.labels["kind"], s.labels["name"])
        for family in registry.collect()
        if family.name == "autoscaler_decision_reasons"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert ("out", "bound", "min_nodes") in reasons
    assert registry.get_sample_value("autoscaler_max_nodes", {"pool": "unit"}) == 5.0
