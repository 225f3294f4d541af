"""Drain under load: failed requests and cut streams while the pool scales in and out under a load
generator through a real nginx (see ``autoscaler.testing.drain_load``).

    .venv/bin/python benchmarks/drain_under_load.py --duration 180 --seed 3
    .venv/bin/python benchmarks/drain_under_load.py --duration 60 --drain-timeout 0.1   # control: cuts

prints one line per controller tick, then the figures as JSON. Exit status 1 when any request
failed or any stream was cut.
"""

from __future__ import annotations

import argparse
import json
import sys

from autoscaler.logs import configure_logging
from autoscaler.testing.drain_load import run_drain_under_load


def main() -> int:
    """Run once with the command line's settings and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    parser.add_argument("--period", type=float, default=24.0, help="seconds per high+low demand swing")
    parser.add_argument("--low", type=int, default=12, help="concurrent streams in the low half")
    parser.add_argument("--high", type=int, default=30, help="concurrent streams in the high half")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="the policy's drain timeout (0.1 shows what cut streams look like)")
    parser.add_argument("--quiet", action="store_true", help="no per-tick lines")
    args = parser.parse_args()
    configure_logging(level="error")  # the per-tick lines below say what the controller did
    figures = run_drain_under_load(duration_s=args.duration, period_s=args.period, low=args.low,
                                   high=args.high, seed=args.seed, drain_timeout_s=args.drain_timeout,
                                   progress=None if args.quiet else sys.stderr)
    print(json.dumps(figures.to_dict(), indent=2))
    return 1 if figures.failed or figures.cut_streams else 0


if __name__ == "__main__":
    sys.exit(main())
