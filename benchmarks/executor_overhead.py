"""What the executor's intent log and fence cost per world change, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/executor_overhead.py [--changes N] [--postgres URL]

For each store: N terminate calls through ``WorldExecutor`` on the recording fake provider (whose
call costs microseconds), so the time is the intent written before the call and completed after it.
With PostgreSQL it also times ``still_leader()`` on a real advisory lock (the fence before each call)
and a whole fenced change. Prints the median and p99 in ms; exits 1 when a fenced PostgreSQL change
takes more than 50 ms at the median (a tick of a handful of changes must stay well inside a 15 s tick).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy

from autoscaler.balancers.fake import FakeBalancer
from autoscaler.executor import WorldExecutor
from autoscaler.leader import Leadership, PostgresLeaderLock, SingleController
from autoscaler.providers.fake import FakeProvider
from autoscaler.store import SqlStore

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class _Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def _figures(name: str, samples: list[float]) -> float:
    samples.sort()
    median = statistics.median(samples)
    p99 = samples[max(0, int(len(samples) * 0.99) - 1)]
    print(f"{name:<48} median {median:7.3f} ms   p99 {p99:7.3f} ms   ({len(samples)} calls)")
    return median


def _time(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def _changes(store: SqlStore, leadership: Leadership, n: int) -> list[float]:
    executor = WorldExecutor(FakeProvider(), FakeBalancer(), store, _Clock(), leadership)
    return _time(lambda: executor.terminate("bench", ["i-gone"], tick_id=None, reason="benchmark"), n)


def main() -> int:
    """Run and print; exit status 1 over the budget."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--postgres", default=POSTGRES_URL)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        sqlite = SqlStore(f"sqlite:///{folder}/bench.db")
        single = _changes(sqlite, SingleController(), args.changes)
        _figures("SQLite: intent + terminate (single controller)", single)
        sqlite.close()
    admin = sqlalchemy.create_engine(args.postgres)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    lock = PostgresLeaderLock(args.postgres, f"bench-{schema}")
    try:
        store = SqlStore(f"{args.postgres}?options=-csearch_path%3D{schema}")
        unfenced = _changes(store, SingleController(), args.changes)
        _figures("PostgreSQL: intent + terminate, no fence", unfenced)
        lock.may_act()
        _figures("PostgreSQL: still_leader() (the fence)", _time(lock.still_leader, args.changes))
        fenced = _figures("PostgreSQL: fence + intent + terminate", _changes(store, lock, args.changes))
        store.close()
    finally:
        lock.close()
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    return 0 if fenced <= 50.0 else 1


if __name__ == "__main__":
    sys.exit(main())
