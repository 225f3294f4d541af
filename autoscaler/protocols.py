"""The adapter families the controller depends on, each a small Protocol with its contract.

Every family has a recording fake beside its real implementations (``metrics/fake.py``,
``providers/fake.py``, ``balancers/fake.py``, ``store/memory.py``) and one contract test suite in
``autoscaler/testing/`` that every implementation passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from autoscaler.domain import (
    Backend,
    Instance,
    Intent,
    IntentKind,
    IntentStatus,
    LaunchResult,
    LaunchSpec,
    Lifecycle,
    PruneResult,
    Sample,
    StartOutcome,
    StopOutcome,
    TerminateOutcome,
)


@runtime_checkable
class Clock(Protocol):
    """Where "now" comes from; tests and the simulator inject their own."""

    def now(self) -> datetime:
        """The current instant, timezone-aware (UTC)."""
        ...


@runtime_checkable
class MetricsSource(Protocol):
    """Reads the pool's signals.

    Contract:
    - ``query`` never raises for a data problem. An unreachable backend, a timeout, an HTTP or
      PromQL error, an empty result, a NaN/Inf, or a sample older than the source's staleness
      bound all return ``Sample.missing(reason)``: *no data*, never zero.
    - Calls fail fast (a bounded timeout, at most one attempt per tick): the controller would
      rather hold for a tick than pile retries onto a struggling backend.
    - A multi-series result is reduced to its maximum for ``query`` (write ``sum()``/``avg()`` in
      the query to say otherwise).
    """

    def query(self, promql: str, *, now: datetime) -> Sample:
        """Evaluate ``promql`` at ``now`` and return one scalar reading or a missing one."""
        ...

    def query_by_instance(
        self, promql: str, *, now: datetime, label: str = "instance_id"
    ) -> Mapping[str, float]:
        """Evaluate ``promql`` and map each series' ``label`` value to its number.

        Series without the label, or with a non-finite value, are left out; any failure returns an
        empty mapping (callers treat a missing node as *unknown*, not zero).
        """
        ...


@runtime_checkable
class HistorySource(Protocol):
    """Reads a signal's past, for the seasonal forecast (``metrics/history.py``).

    Contract:
    - ``query_range`` returns ``(unix seconds, value)`` points of ``promql`` evaluated every ``step``
      from ``start`` to ``end``, sorted by time; several series are reduced to their maximum at each
      instant; NaN and ±Inf points are left out (a gap, never zero). No data in the window is ``[]``.
    - Any failure (unreachable, timeout, HTTP or PromQL error, too many points) raises
      ``MetricsUnavailable`` chained to its cause, after one attempt bounded by the source's timeout.

    ``PrometheusSource`` implements it; ``FakeMetricsSource`` (``set_range``) is its recording fake.
    """

    def query_range(
        self, promql: str, start: datetime, end: datetime, step: timedelta
    ) -> list[tuple[float, float]]:
        """The points of ``promql`` between ``start`` and ``end`` every ``step``."""
        ...


@runtime_checkable
class Provider(Protocol):
    """Launches, stops, starts and terminates the pool's machines.

    Contract:
    - ``list_instances`` returns every instance tagged with the pool that is not terminated
      (pending, running, stopping, stopped), reading all pages. It raises ``TransientProviderError`` when
      throttled or 5xx beyond the retry budget, ``ProviderError`` otherwise; it never returns a
      partial list silently.
    - ``launch`` is idempotent on ``client_token``: instances tagged with that launch token count
      toward ``count``, so a retry or a controller restart with the same token never launches
      more than ``count`` in total. It tries ``spec.instance_types`` in order (and zones in the
      provider's order); ``InsufficientCapacity`` on one moves to the next. It raises
      ``InsufficientCapacity`` or ``QuotaExceeded`` only when nothing exists for the token;
      when some were launched, ``LaunchResult.shortfall`` says what stopped it.
    - ``terminate`` is idempotent: an id that is already gone (terminated, or unknown to the
      provider) returns ``TerminateOutcome.ALREADY_GONE`` and never raises ``InstanceNotFound``.
      It does not wait for the machine to stop.
    - ``stop`` powers instances off *keeping their disk* (a warm pool's model-loaded instances):
      they stay listed as ``STOPPING`` then ``STOPPED``. It is idempotent: an instance already
      stopping or stopped is ``ALREADY_STOPPED`` or ``STOPPING``, never an error; an id that is gone
      (unknown, terminated, shutting down) is ``StopOutcome.ALREADY_GONE``, never ``InstanceNotFound``.
      It does not wait for the machine to stop. It refuses machines the autoscaler did not launch.
    - ``start`` powers stopped instances back on with the disk they had: they go ``PENDING`` then
      ``RUNNING`` and keep their id. It is idempotent: an instance pending or running is
      ``ALREADY_RUNNING``; a gone id is ``StartOutcome.ALREADY_GONE``. An instance that cannot be
      started for lack of stock (an economical-mode stop gave its GPU back) is
      ``StartOutcome.NO_CAPACITY`` when others of the call started; when stock stopped every id
      that needed a start, ``InsufficientCapacity`` is raised instead. An instance still
      ``STOPPING`` is started once it has stopped: it is reported ``STARTING`` only when the start
      was accepted, else ``ProviderError`` (retry next tick). It does not wait for the node to serve.
    - All four raise ``TransientProviderError`` when throttling or 5xx outlive the retry budget.
    """

    name: str

    def list_instances(self, pool: str) -> list[Instance]:
        """Every non-terminated instance of ``pool``."""
        ...

    def launch(self, spec: LaunchSpec, count: int, client_token: str) -> LaunchResult:
        """Make ``count`` instances exist for ``client_token``; return them (and any shortfall)."""
        ...

    def terminate(self, instance_ids: Sequence[str]) -> dict[str, TerminateOutcome]:
        """Start terminating each id; report per id what happened."""
        ...

    def stop(self, instance_ids: Sequence[str]) -> dict[str, StopOutcome]:
        """Start stopping each id (disk kept); report per id what happened."""
        ...

    def start(self, instance_ids: Sequence[str]) -> dict[str, StartOutcome]:
        """Start each stopped id again; report per id what happened."""
        ...


@runtime_checkable
class Balancer(Protocol):
    """Owns the list of backends traffic is sent to.

    Contract:
    - ``apply`` replaces the whole backend list atomically. It is idempotent: applying the list
      that is already in force changes nothing (no reload). When the new list is rejected
      (config check fails, reload fails, API error), the previous list keeps serving and
      ``BalancerError`` is raised, chained to the cause.
    - ``current`` returns the list in force; ``BalancerError`` if it cannot be read.
    - Removing a backend stops *new* work for it; work already in flight is allowed to finish
      (nginx graceful reload, a target group's deregistration delay). Draining is observed by the
      controller, not awaited here.
    """

    name: str

    def current(self) -> list[Backend]:
        """The backends in force now."""
        ...

    def apply(self, backends: Sequence[Backend]) -> None:
        """Put exactly ``backends`` in force, or raise ``BalancerError`` leaving the old list."""
        ...


@runtime_checkable
class ReloadingBalancer(Protocol):
    """A balancer whose first ``apply`` in a process puts even an unchanged list in force (nginx
    reloads: its file may hold a list a killed predecessor wrote but never had nginx load).

    Contract: after ``assume_in_force``, an ``apply`` of the list already on file is a no-op, as
    any later unchanged apply is. Called only when the store proves the file's list was put in
    force: the last apply's intent completed and none is open since.
    """

    def assume_in_force(self) -> None:
        """The list on file is in force (a recorded, completed apply put it there)."""
        ...


@runtime_checkable
class NodeProbe(Protocol):
    """Asks a node itself whether it can serve and how busy it is.

    Contract: never raises and answers within its own short timeout. ``healthy`` is True only on a
    timely 200 from the node's health path; ``active_streams`` is None whenever the node cannot say
    (unreachable, no such metric): unknown, never zero, so a drain never ends on a guess.
    """

    def healthy(self, instance: Instance) -> bool:
        """True only on a timely 200; any error or timeout is False."""
        ...

    def active_streams(self, instance: Instance) -> float | None:
        """Streams in progress on the node, or None when unknown."""
        ...


@runtime_checkable
class Store(Protocol):
    """Keeps every tick's inputs, decision and reasons, every instance's lifecycle, and the
    engine's memory between ticks.

    Contract: writes of one tick (``record_tick``) are one transaction; a failure raises
    ``StoreError`` and writes nothing. Reads of a pool with no history return empty values.
    """

    def record_tick(self, pool: str, at: datetime, inputs: Mapping[str, Any], decision: Mapping[str, Any],
                    memory: Mapping[str, Any], error: str | None = None) -> int:
        """Persist one tick and the engine memory after it; return the tick's id."""
        ...

    def update_tick(self, tick_id: int, *, outcome: Mapping[str, Any], error: str | None = None) -> None:
        """Attach what the executor did (and any error) to a recorded tick; ``StoreError`` if unknown."""
        ...

    def load_memory(self, pool: str) -> dict[str, Any] | None:
        """The engine memory saved by the last tick of ``pool``, or None."""
        ...

    def record_lifecycle(self, pool: str, instance_id: str, state: Lifecycle, at: datetime,
                         detail: Mapping[str, Any] | None = None) -> None:
        """Append a lifecycle transition of one instance (only when it changes)."""
        ...

    def lifecycles(self, pool: str) -> dict[str, tuple[Lifecycle, datetime]]:
        """Latest lifecycle of each instance of ``pool`` and when it was entered."""
        ...

    def recent_ticks(
        self, pool: str, limit: int | None = 20, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The newest ticks of ``pool``, newest first, as JSON-ready dicts; ``limit=None`` for all,
        ``since`` for only those recorded at or after it."""
        ...

    def pools(self) -> list[str]:
        """Every pool with a recorded tick or instance, sorted."""
        ...

    def set_paused(self, pool: str, paused: bool, at: datetime, reason: str | None = None) -> None:
        """Pause (or resume) ``pool`` from the command line: observed and recorded, not acted on."""
        ...

    def pause_state(self, pool: str) -> dict[str, Any] | None:
        """``{"paused": bool, "reason": str | None, "at": iso time}`` as last set, or None if never."""
        ...

    def prune(self, before: datetime, pool: str | None = None) -> PruneResult:
        """Delete ticks recorded before ``before`` (of ``pool`` or all pools) and the records of
        instances terminated before it; keep the engine memory and live instances' records."""
        ...

    # Intents (``autoscaler.executor``): written before each world-changing call, completed after it.
    # ``open_intent`` is durable when it returns (a crash after it leaves the intent open for the
    # next start's reconcile); ``StoreError`` means nothing was written and the call must not be made.
    def open_intent(self, pool: str, kind: IntentKind, at: datetime, *, tick_id: int | None = None,
                    instance_ids: tuple[str, ...] = (), token: str | None = None, count: int = 0,
                    detail: Mapping[str, Any] | None = None,
                    status: IntentStatus = IntentStatus.OPEN) -> int:
        """Record an intent (``OPEN``, or ``SHADOW`` for a change a shadow controller did not make);
        return its id."""
        ...

    def close_intent(self, intent_id: int, status: IntentStatus, at: datetime, *,
                     result: Mapping[str, Any] | None = None, error: str | None = None) -> None:
        """Complete an intent with what happened; ``StoreError`` if it does not exist."""
        ...

    def intents(self, pool: str, *, open_only: bool = False, tick_id: int | None = None,
                limit: int | None = None) -> list[Intent]:
        """Intents of ``pool``, oldest first (the newest ``limit`` of them): only open ones, or only
        one tick's, when asked."""
        ...
