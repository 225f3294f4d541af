"""SIGKILL ``autoscaler run`` under load, many times, across every step of scale-out and scale-in.

    .venv/bin/python benchmarks/crash_kill.py [--kills 50] [--seed 11] [--store URL] [--json]

Real nginx and Prometheus (private processes on loopback), the local provider's simulated ASR
nodes, a SQLite store (or ``--store postgresql+psycopg://...``), ``autoscaler run`` with a 1 s tick
restarted after each kill, and a load generator through nginx swinging between 2 and 32
concurrent transcriptions every 30 s. See ``autoscaler/testing/crash.py`` for how kills are aimed
and what each figure counts. Prints progress, then the table (or JSON with ``--json``); exits 1
when anything was leaked, launched twice, terminated while nginx served it, out of bounds,
mismatched, or a request failed (other than an idle keep-alive connection nginx closed at a reload,
which is counted and printed apart).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from autoscaler.testing.crash import CrashConfig, run_crash


def main() -> int:
    """Parse the flags, run the kills, print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--store", default=None, help="store URL (default: a SQLite file in the workdir)")
    parser.add_argument("--workdir", type=Path, default=None, help="kept afterwards when given")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crash-kill-"))
    try:
        figures = run_crash(CrashConfig(workdir=workdir, kills=args.kills, seed=args.seed,
                                        store_url=args.store), progress=sys.stderr)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(figures.to_json() if args.json else figures.table())
    for failure in figures.failures:
        print(f"failed request: {failure}", file=sys.stderr)
    for note in figures.notes:
        print(f"note: {note}", file=sys.stderr)
    lost = (figures.leaked + figures.duplicate_launches + figures.terminated_in_upstream + figures.above_max
            + figures.below_min + figures.nginx_mismatch + figures.failed_requests - figures.closed_at_reload)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
