"""Bad dry-run inputs end in one clear error line, before any large allocation: absurd scales,
traces that are truncated, have wrong columns, NaN/negative/enormous values or span centuries."""

from __future__ import annotations

import gzip
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.simulate.sim_helpers import AZURE

#: No bad input may make the dry-run allocate more than this before refusing it.
ALLOCATION_BUDGET = 200 * 1024 * 1024


def dry_run(app: typer.Typer, scenario: Path, out: Path) -> tuple[int, str, int]:
    """Exit code, stderr and peak traced allocation (bytes) of `dry-run` on ``scenario``."""
    tracemalloc.start()
    try:
        result = CliRunner().invoke(app, ["dry-run", "--scenario", str(scenario), "--out", str(out)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result.exit_code, result.stderr, peak


@pytest.mark.parametrize("demand", [
    {"peak_nodes": None, "scale": 1e9},
    {"peak_nodes": None, "scale": 1e300},
    {"peak_nodes": 10**12},
])
def test_a_scale_needing_terabytes_is_refused_before_allocating(
    write_scenario: Callable[..., Path], cli_app: typer.Typer, tmp_path: Path, demand: dict[str, object],
) -> None:
    """A scale (or peak) that would need terabytes exits 2 with one `error: demand: ...` line."""
    code, stderr, peak = dry_run(cli_app, write_scenario(demand=demand), tmp_path / "out")
    assert code == 2, stderr
    assert stderr.startswith("error: demand") and "Traceback" not in stderr, stderr
    assert peak < ALLOCATION_BUDGET, f"allocated {peak / 2**20:.0f} MiB before refusing"


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


BAD_CSV = {
    "wrong columns": ("0,1,2\n1,2,3\n", "expected 2 columns"),
    "nan": ("0,1\n1,nan\n", "finite"),
    "negative": ("0,1\n1,-5\n", "finite and >= 0"),
    "not a number": ("0,1\n1,lots\n", "not a number"),
    "centuries": ("0,1\n32000000000,1\n", "span"),
    "enormous": ("0,1\n1,1e300\n2,1\n", "concurrent streams"),
    "truncated": ("0,1\n1,", "not a number"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_csv_traces_fail_with_one_clear_line(
    write_scenario: Callable[..., Path], cli_app: typer.Typer, tmp_path: Path, case: str,
) -> None:
    """Each malformed csv trace exits 2 naming the problem, without a traceback or a big allocation."""
    text, message = BAD_CSV[case]
    demand = {"format": "csv", "path": str(_csv(tmp_path, text)), "kind": "streams", "start": "0s",
              "duration": "2s", "peak_nodes": None, "scale": 1.0}
    code, stderr, peak = dry_run(cli_app, write_scenario(demand=demand), tmp_path / "out")
    assert code == 2 and message in stderr and "Traceback" not in stderr, (case, stderr)
    assert peak < ALLOCATION_BUDGET


def test_truncated_compressed_trace_and_centuries_long_azure_trace(
    write_scenario: Callable[..., Path], cli_app: typer.Typer, tmp_path: Path,
) -> None:
    """A gzip cut in half, and an Azure trace whose last timestamp is in the year 2200, are refused."""
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(AZURE.read_bytes()[: AZURE.stat().st_size // 2])
    far = tmp_path / "far.csv.gz"
    far.write_bytes(gzip.compress(b"TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.6805900,1\n"
                                  b"2200-01-01 00:00:00.0000000,1\n"))
    for path, message in ((cut, "compressed"), (far, "span")):
        demand = {"format": "azure", "path": str(path), "start": "0s", "duration": "1m",
                  "peak_nodes": None, "scale": 1.0}
        code, stderr, peak = dry_run(cli_app, write_scenario(demand=demand), tmp_path / "out")
        assert code == 2 and message in stderr and "Traceback" not in stderr, (path.name, stderr)
        assert peak < ALLOCATION_BUDGET
