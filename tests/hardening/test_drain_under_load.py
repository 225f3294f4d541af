"""Drain under load: transcriptions through a real nginx while the controller (APScheduler, as
``autoscaler run``) scales a local fleet of simulated ASR nodes out and back in; no request may fail
and no stream may be cut."""

from __future__ import annotations

import sys

import pytest

from autoscaler.testing.drain_load import DrainFigures, run_drain_under_load
from autoscaler.testing.embedded_fixtures import require_binary


def check(figures: DrainFigures, *, scale_outs: int, scale_ins: int) -> None:
    """No failure, no cut, and the pool really moved both ways while the load ran."""
    print("\n" + str(figures.to_dict()), file=sys.stderr)
    assert figures.requests > 0 and figures.ok == figures.requests, figures.failures
    assert figures.failed == 0 and figures.cut_streams == 0, figures.failures
    assert figures.terminated_in_flight == 0
    assert figures.scale_out_ticks >= scale_outs and figures.scale_in_ticks >= scale_ins, figures
    assert figures.terminated >= scale_ins
    assert figures.tick_errors == []


def test_a_scale_out_and_in_under_load_fails_no_request() -> None:
    """One demand swing (21 streams until the pool is at 3 nodes, then 3 streams until a node was
    drained and terminated) through nginx: every transcription succeeds, none is cut."""
    require_binary("nginx")
    require_binary("prometheus")
    figures = run_drain_under_load(duration_s=60.0, cycles=1, low=3, high=21, audio_median_s=120.0,
                                   max_nodes=3, seed=3)
    check(figures, scale_outs=1, scale_ins=1)


@pytest.mark.long
def test_three_minutes_of_swinging_demand_fail_no_request() -> None:
    """Three minutes of swings every 30 s between 3 and 28 streams: several scale-outs and
    scale-ins with terminations, and zero failed requests and zero cut streams."""
    require_binary("nginx")
    require_binary("prometheus")
    figures = run_drain_under_load(duration_s=180.0, period_s=30.0, low=3, high=28, seed=4)
    check(figures, scale_outs=5, scale_ins=5)
