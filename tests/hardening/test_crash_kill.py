"""SIGKILL `autoscaler run` under load through a real nginx, with local nodes and a SQLite store:
nothing leaked, launched twice, terminated while served, out of bounds, or failed because of a kill."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from autoscaler.testing.crash import CrashConfig, CrashFigures, node_processes, run_crash


def assert_nothing_lost(figures: CrashFigures, state_dir: Path) -> None:
    """Every loss figure of a kill run is zero, and the run stopped every node it started."""
    print(figures.table(), *figures.failures, *figures.notes, sep="\n", file=sys.stderr)
    assert figures.leaked == 0, figures.leaked_ids
    assert figures.duplicate_launches == 0
    assert figures.terminated_in_upstream == 0, figures.terminated_in_upstream_ids
    assert figures.above_max == 0 and figures.below_min == 0
    assert figures.nginx_mismatch == 0, figures.notes
    # The one failure allowed is nginx closing an idle keep-alive connection at a reload (reported
    # in the figures); a 5xx, a reset mid-response or a refused connection is not.
    assert figures.failed_requests == figures.closed_at_reload, figures.failures
    assert figures.requests > 0 and figures.restarts_checked == figures.kills
    assert node_processes(state_dir) == {}


@pytest.fixture
def require_nginx_and_prometheus() -> None:
    """Skip (outside CI) when nginx or Prometheus is not installed."""
    for binary in ("nginx", "prometheus"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed")


@pytest.mark.integration
@pytest.mark.usefixtures("require_nginx_and_prometheus")
def test_five_kills_under_load_lose_nothing(tmp_path: Path) -> None:
    """Five SIGKILLs of the controller while the load swings: each restart finds every node, nginx
    serves the recorded list, and no transcription through nginx fails because of a kill."""
    # Small swings (1 to 2-3 nodes): every node and every restart costs a Python start-up of CPU.
    cfg = CrashConfig(workdir=tmp_path, kills=5, seed=5, wait_s=1.5, min_uptime_s=0.5, period_s=12.0,
                      low_streams=1, peak_streams=14, ticks_after_restart=1, settle_s=2.0,
                      orphan_grace_s=3.0)
    figures = run_crash(cfg)
    assert figures.kills == 5
    assert_nothing_lost(figures, tmp_path / "fleet")


@pytest.mark.long
@pytest.mark.integration
@pytest.mark.timeout(1800)  # 9-16 minutes on the loaded 2-core build machine
@pytest.mark.usefixtures("require_nginx_and_prometheus")
def test_fifty_kills_across_every_step_lose_nothing(tmp_path: Path) -> None:
    """Fifty SIGKILLs aimed at launch, join, drain, terminate and random moments, under load, with
    the pool scaling out and in: nothing leaked, doubled, cut off or out of bounds."""
    figures = run_crash(CrashConfig(workdir=tmp_path, kills=50, seed=11))
    assert figures.kills == 50
    assert all(figures.kills_by_phase.get(p, 0) > 0 for p in ("launch", "join", "drain", "terminate"))
    assert figures.scale_out_ticks > 5 and figures.scale_in_ticks > 5
    assert_nothing_lost(figures, tmp_path / "fleet")
