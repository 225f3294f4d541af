"""How a tick is logged: a tick with errors is an error, not an info line."""

from __future__ import annotations

from collections.abc import Callable

from structlog.testing import capture_logs

from autoscaler.errors import BalancerError
from autoscaler.testing.controller_rig import Rig


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
