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
    """One demand swing (14 streams until the pool is at 2 nodes, then 5 streams, still more than
    either node's share, until a node carrying streams was drained and terminated) through nginx:
    every transcription succeeds, none is cut."""
    require_binary("nginx")
    require_binary("prometheus")
    figures = run_drain_under_load(duration_s=60.0, cycles=1, low=5, high=14, audio_median_s=120.0,
                                   max_nodes=2, seed=3)
    check(figures, scale_outs=1, scale_ins=1)


@pytest.mark.long
def test_three_minutes_of_swinging_demand_fail_no_request() -> None:
    """Three minutes of swings every 24 s between 30 and 12 streams: several scale-outs and
    scale-ins with terminations, and zero failed requests and zero cut streams."""
    require_binary("nginx")
    require_binary("prometheus")
    figures = run_drain_under_load(duration_s=180.0, period_s=24.0, low=12, high=30, seed=4)
    check(figures, scale_outs=5, scale_ins=5)


@pytest.mark.long
def test_the_measurement_sees_cut_streams_when_drains_are_cut_short() -> None:
    """The control: with a 0.1 s drain timeout, nodes are terminated with streams in flight and the
    generator counts them as cut (HTTP 503 from a node shutting down under them)."""
    require_binary("nginx")
    require_binary("prometheus")
    figures = run_drain_under_load(duration_s=60.0, period_s=24.0, low=12, high=30, seed=4,
                                   drain_timeout_s=0.1)
    print("\n" + str(figures.to_dict()), file=sys.stderr)
    assert figures.terminated_in_flight > 0 and figures.cut_streams > 0, figures
