"""One actor per pool among several controllers: a PostgreSQL advisory lock per pool.

Any number of ``autoscaler run`` processes may share a PostgreSQL store; each holds a dedicated
connection (outside the store's pool) and tries ``pg_try_advisory_lock`` on a key derived from the
pool's name. The holder is the leader and acts; the others are followers: they observe and decide
(telemetry, ``status``, ``explain`` keep working) but record and change nothing.

How the lock moves, and why two never act at once:

- PostgreSQL releases a session's advisory locks when the session ends: a leader that is killed
  (its socket closes) or whose database restarts loses the lock at once. The session asks the
  server for TCP keepalives every few seconds, so a leader cut off by the network loses it too
  within about ``KEEPALIVE_S``.
- A leader checks that its connection is alive and still holds the lock at the start of every
  tick and again right before acting; a failed check means it is a follower from then on.
- A follower that acquires the lock waits one tick before acting (``Leadership.may_act``), so a
  previous leader that lost its connection mid-tick has had a tick to notice and stop. Killing
  the leader therefore hands over within two ticks.

SQLite has no such lock: a SQLite store means a single controller (``SingleController``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import threading
from typing import Any, Protocol

import structlog

log = structlog.get_logger("autoscaler.leader")

#: Seconds after which the server drops the session of a leader it cannot reach (keepalive idle +
#: interval × count), releasing its lock.
KEEPALIVE_S = 5 + 2 * 3
_CONNECT_TIMEOUT_S = 3


class Leadership(Protocol):
    """Whether this controller may act on the pool now. Contract: ``may_act`` never raises; it
    returns False whenever leadership cannot be proven (no connection, lock held elsewhere, the
    first tick after acquiring)."""

    def may_act(self) -> bool:
        """True while this process holds the pool's lock and has held it since the previous tick."""
        ...

    def still_leader(self) -> bool:
        """Re-check right before acting: the lock is still held on a live connection."""
        ...

    def close(self) -> None:
        """Release the lock and the connection."""
        ...


class SingleController:
    """The SQLite default: one controller per store, always the actor (documented, not enforced)."""

    def may_act(self) -> bool:
        """Always True."""
        return True

    def still_leader(self) -> bool:
        """Always True."""
        return True

    def close(self) -> None:
        """Nothing to release."""


def lock_key(pool: str) -> int:
    """The signed 64-bit advisory-lock key of ``pool`` (stable across processes and versions)."""
    digest = hashlib.sha256(f"gpu-autoscaler:pool:{pool}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def conninfo(url: str, application_name: str) -> dict[str, Any]:
    """psycopg connection arguments for a dedicated session to the store at ``url``: short connect
    timeout, and TCP keepalives so a vanished peer is noticed within ``KEEPALIVE_S``."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return {
        "host": parsed.host or "127.0.0.1", "port": parsed.port or 5432, "dbname": parsed.database,
        "user": parsed.username, "password": parsed.password, "connect_timeout": _CONNECT_TIMEOUT_S,
        # PostgreSQL keeps 63 bytes of it.
        "application_name": application_name.encode()[:63].decode(errors="ignore"),
        "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
        "tcp_user_timeout": KEEPALIVE_S * 1000,
    }


class PostgresLeaderLock:
    """``Leadership`` through ``pg_try_advisory_lock`` on a dedicated connection to ``url``."""

    def __init__(self, url: str, pool: str) -> None:
        # The name says which controller holds the lock, for `autoscaler status` on any host.
        name = f"gpu-autoscaler {socket.gethostname()} pid {os.getpid()} leader {pool}"
        self._conninfo = conninfo(url, name)
        self.pool = pool
        self.key = lock_key(pool)
        self._conn: Any = None
        self._held = False
        self._ticks_held = 0
        self._lock = threading.Lock()

    def may_act(self) -> bool:
        """Acquire or confirm the lock; True from the second consecutive tick it is held."""
        with self._lock:
            held = self._check_or_acquire()
            self._ticks_held = self._ticks_held + 1 if held else 0
            return self._ticks_held >= 2

    def still_leader(self) -> bool:
        """The lock is still held on a live connection."""
        with self._lock:
            return self._held and self._confirm()

    def close(self) -> None:
        """Release the lock (closing the session releases it) and the connection."""
        with self._lock:
            self._drop()

    # ------------------------------------------------------------------------------------ helpers
    def _check_or_acquire(self) -> bool:
        if self._held:
            return self._confirm()
        try:
            if self._conn is None or self._conn.closed:
                import psycopg

                self._conn = psycopg.connect(autocommit=True, **{k: v for k, v in self._conninfo.items()
                                                                  if v is not None})
                # Ask the server to notice a vanished leader quickly and release its lock.
                for name, value in (("tcp_keepalives_idle", 5), ("tcp_keepalives_interval", 2),
                                    ("tcp_keepalives_count", 3)):
                    self._conn.execute(f"SET {name} = {value}")
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        except Exception as exc:
            log.error("leader_lock_unavailable", pool=self.pool, error=type(exc).__name__)
            self._drop()
            return False
        self._held = bool(row and row[0])
        if self._held:
            log.info("leader_acquired", pool=self.pool, pid=os.getpid())
        return self._held

    def _confirm(self) -> bool:
        try:
            row = self._conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND objid = (%s::bigint & 4294967295)::oid",
                (self.key,),
            ).fetchone()
            ok = bool(row and row[0])
        except Exception as exc:
            log.error("leader_lock_lost", pool=self.pool, error=type(exc).__name__)
            ok = False
        if not ok:
            log.error("leader_lost", pool=self.pool, pid=os.getpid())
            self._drop()
        return ok

    def _drop(self) -> None:
        self._held = False
        self._ticks_held = 0
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                self._conn.close()
            self._conn = None


def leadership_for(store_url: str | None, pool: str) -> Leadership:
    """A PostgreSQL lock for a PostgreSQL store; the single-controller default otherwise."""
    if store_url and store_url.startswith("postgresql"):
        return PostgresLeaderLock(store_url, pool)
    return SingleController()


#: What ``status`` says of a pool on a store without leader locks (SQLite, memory).
SINGLE_CONTROLLER = "single controller"
_HOLDER = re.compile(r"^gpu-autoscaler (?P<host>\S+) pid (?P<pid>\d+) leader ")

_LOCKS_SQL = """
SELECT l.classid::bigint, l.objid::bigint, a.application_name, host(a.client_addr), l.pid
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def _holder(application_name: str | None, client: str | None, backend_pid: int) -> str:
    match = _HOLDER.match(application_name or "")
    where = f" from {client}" if client else ""
    if match:
        return f"{match['host']} pid {match['pid']}{where}"
    return f"held by PostgreSQL backend {backend_pid}{where} (controller not recorded)"


def leaders(store_url: str | None, pools: list[str]) -> dict[str, str]:
    """Who leads each pool, for ``status``; never raises.

    PostgreSQL store: the controller (host and pid, from its session's ``application_name``) holding
    the pool's advisory lock (``lock_key``) in ``pg_locks``, or ``none`` when no controller holds it.
    SQLite or memory: ``single controller``.
    """
    if not (store_url and store_url.startswith("postgresql")):
        return dict.fromkeys(pools, SINGLE_CONTROLLER)
    keys = {((lock_key(p) >> 32) & 0xFFFFFFFF, lock_key(p) & 0xFFFFFFFF): p for p in pools}
    try:
        import psycopg

        args = {k: v for k, v in conninfo(store_url, "gpu-autoscaler status").items() if v is not None}
        with psycopg.connect(autocommit=True, **args) as conn:
            rows = conn.execute(_LOCKS_SQL).fetchall()
    except Exception as exc:  # status reports what it cannot see; it never fails on it
        return dict.fromkeys(pools, f"unknown (cannot read locks: {type(exc).__name__})")
    found = dict.fromkeys(pools, "none")
    for classid, objid, application_name, client, backend_pid in rows:
        pool = keys.get((classid, objid))
        if pool is not None:
            found[pool] = _holder(application_name, client, backend_pid)
    return found
