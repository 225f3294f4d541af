"""Constants and helpers the dry-run tests share: fixture traces and the base scenario (promtool's
backfill is ``autoscaler.testing.embedded_fixtures.backfill``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
TWITTER = FIXTURES / "twitter-1.5d.tbz2"
SERVEGEN = FIXTURES / "servegen-m-large-1d.tar.gz"
AZURE = FIXTURES / "azure-conv-2000.csv.gz"

#: A scenario that replays six hours of the twitter slice on the AWS example pool, quickly.
BASE_SCENARIO: dict[str, Any] = {
    "policy": str(POLICIES / "asr-aws.yaml"),
    "demand": {"format": "twitter", "path": str(TWITTER), "start": "1h", "duration": "6h", "peak_nodes": 12},
    "workload": {
        "audio_seconds": {"distribution": "lognormal", "median": 60, "p95": 300},
        "real_time_factor": 1.0,
    },
    "fleet": {"streams_per_node": 10, "boot_seconds": 180, "price_per_hour": 1.006},
    "pool": {"min_nodes": 2, "max_nodes": 20},
    "tick_seconds": 15,
    "seed": 7,
}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in one level deep (a None value removes the key)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            for inner, item in value.items():
                if item is None:
                    out[key].pop(inner, None)
                else:
                    out[key][inner] = item
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out
