"""One tick of one pool: observe → decide → plan → execute → record the outcome.

The controller depends only on the protocols in ``autoscaler.protocols``; which implementations
it gets is ``autoscaler.wiring``'s business. The decision itself is the pure engine's
(``autoscaler.policy.engine.decide``); every world change goes through the ``Executor``
(``autoscaler.executor``), which records an intent before each call and its result after, and
checks before each call that this controller still leads the pool. Everything here is about
turning the world into the engine's inputs and the engine's answer into a plan the executor
carries out, safely:

- no data never removes capacity (the engine's rule, and the controller adds none of its own);
- a node joins the balancer only after its own ``/healthz`` answers 200, and only when it runs the
  pool's model version;
- scale-in is drain-first: the victim leaves the balancer, its in-flight streams finish (or the
  drain timeout passes), and only then is it terminated, on a later tick than the one that removed
  it from the balancer;
- when the balancer rejects a change, nothing is terminated that tick;
- a warm pool (``policy.warm_pool``) is kept level-triggered from the provider's inventory and the
  store: an instance launched to be warm (``PREPARING``, launch token ending ``-warm``) is stopped
  once its health check passes and never joins the balancer; a scale-out starts warm (``STOPPED``)
  instances first (``STARTING``, within ``warm_pool.start_timeout``) and a start that fails (no
  stock, capacity, throttling beyond the budget, an instance that vanished) is replaced by a cold
  launch in the same tick. Each lifecycle is recorded *before* the provider call it announces and
  every call is idempotent, so a controller killed between a stop or start and its record finds
  the instance on its next tick and finishes the move instead of repeating or leaking it;
- the first tick a controller acts (and the first after it becomes leader) settles the intents a
  crash left open (``Executor.reconcile``): a launch is matched by its token, and a launch found
  short re-uses that token, so the provider's idempotency also covers a call still in flight;
- with a ``ShadowExecutor`` (``autoscaler run --shadow``) the tick observes, decides and records
  its plan as shadow intents beside the real fleet's node count, and writes no lifecycle: the
  fleet belongs to whatever autoscaler runs it today.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from autoscaler.domain import (
    DO_NOT_DISRUPT_TAG,
    Backend,
    CloudState,
    Decision,
    Instance,
    IntentKind,
    LaunchSpec,
    Lifecycle,
    Node,
    Reason,
    Sample,
    StartOutcome,
    StopOutcome,
    TerminateOutcome,
    backend_problem,
)
from autoscaler.errors import (
    AutoscalerError,
    BalancerError,
    InsufficientCapacity,
    ProviderError,
    QuotaExceeded,
    StoreError,
)
from autoscaler.executor import WARM_TOKEN_SUFFIX, Executor, Settled, WorldExecutor
from autoscaler.leader import Leadership, SingleController
from autoscaler.metrics.history import ForecastCache, ForecastState
from autoscaler.metrics.plausible import bounds_for, plausible, plausible_streams
from autoscaler.policy.engine import EngineMemory, Evaluation, decide
from autoscaler.policy.model import PoolPolicy
from autoscaler.protocols import Balancer, Clock, HistorySource, MetricsSource, NodeProbe, Provider, Store
from autoscaler.telemetry import ControllerMetrics

log = structlog.get_logger("autoscaler.controller")

#: How a node that never answered its health check is recorded when it is replaced.
BOOT_TIMEOUT_REASON = "not healthy within the boot timeout"
#: How a warm instance that did not serve in time after its start is recorded when it is replaced.
START_TIMEOUT_REASON = "not healthy within the warm start timeout"
#: Lifecycles of warm-pool members: not capacity, never in the balancer or the scrape targets.
WARM_LIFECYCLES = (Lifecycle.PREPARING, Lifecycle.STOPPED)
#: Launches pause after this many consecutive boot failures, doubling per further failure...
BOOT_FAILURES_BEFORE_BACKOFF = 2
#: ...up to this long, so a broken image is not relaunched (and billed) every tick.
MAX_BOOT_BACKOFF = timedelta(minutes=30)
#: How many recent ticks the boot-failure streak looks back on.
BOOT_STREAK_TICKS = 100

#: One recorded tick as the boot-failure streak sees it: did a node join, how many nodes were
#: replaced for not booting, and when.
BootTick = tuple[bool, int, datetime]


@dataclass(frozen=True)
class Adapters:
    """The implementations one controller works with."""

    provider: Provider
    balancer: Balancer
    metrics: MetricsSource
    store: Store
    probe: NodeProbe
    clock: Clock
    write_targets: Callable[[list[Instance]], None] | None = None
    #: Where the forecast's demand history comes from (one range query per refresh); None: no forecast.
    history: HistorySource | None = None


@dataclass
class NodeState:
    """An instance with the lifecycle the controller derived for it this tick."""

    instance: Instance
    lifecycle: Lifecycle
    since: datetime
    healthy: bool = False
    active_streams: float | None = None
    #: What the engine is told when it differs (a warm instance still stopping is not startable yet).
    engine_lifecycle: Lifecycle | None = None
    #: False for a healthy node the balancer has not accepted yet: it is not serving capacity.
    joined: bool = True


def _sample_record(sample: Sample) -> dict[str, Any]:
    return {
        "value": sample.value if sample.has_data else None,
        "error": sample.error,
        "observed_at": sample.observed_at.isoformat() if sample.observed_at else None,
    }


@dataclass
class Observation:
    """What one tick saw: node states, check samples, and housekeeping it found necessary."""

    states: dict[str, NodeState] = field(default_factory=dict)
    samples: dict[str, Sample] = field(default_factory=dict)
    transitions: list[tuple[str, Lifecycle, dict[str, Any]]] = field(default_factory=list)
    #: When a transition's state was really entered, where that is not this tick: a boot begins at
    #: the launch, so a node's boot timeout runs from its launch, not from the tick that saw it booting.
    entered_at: dict[str, datetime] = field(default_factory=dict)
    replace: list[tuple[Instance, str]] = field(default_factory=list)
    #: Warm-pool work found: prepared instances to stop now, stops and starts to (re)issue.
    prepared: list[Instance] = field(default_factory=list)
    restop: list[Instance] = field(default_factory=list)
    restart: list[Instance] = field(default_factory=list)
    #: Nodes that cannot be a balancer backend (a hostile address, port or id), and why.
    refused: dict[str, str] = field(default_factory=dict)
    forecast: ForecastState | None = None
    #: Every instance the provider listed for the pool this tick.
    listed: list[Instance] = field(default_factory=list)

    def real_nodes(self) -> int:
        """Nodes the provider runs for the pool (pending or running: billed, whoever launched them)."""
        return sum(1 for i in self.listed if i.state in (CloudState.PENDING, CloudState.RUNNING))

    def inputs(self) -> dict[str, Any]:
        """JSON-ready record of the inputs the engine decided on."""
        return {
            **({"forecast": self.forecast.record()} if self.forecast is not None else {}),
            "samples": {name: _sample_record(s) for name, s in self.samples.items()},
            "nodes": {
                s.instance.id: {
                    "lifecycle": s.lifecycle.value,
                    "healthy": s.healthy,
                    "active_streams": s.active_streams,
                    "type": s.instance.instance_type,
                    "model_version": s.instance.model_version,
                }
                for s in self.states.values()
            },
            "replaced": {i.id: reason for i, reason in self.replace},
            "prepared": [i.id for i in self.prepared],
            "refused": dict(self.refused),
        }


@dataclass(frozen=True)
class PlannedChange:
    """One world change of a tick's plan: what the executor is asked to do, and why."""

    kind: IntentKind
    ids: tuple[str, ...] = ()
    count: int = 0
    #: Launches only; ``{tick}`` stands for the tick id the plan is recorded under.
    token: str | None = None
    reason: str = ""
    #: Balancer steps only: the nodes the new list leaves out to drain (a scale-in's change).
    leaving: tuple[str, ...] = ()

    def describe(self) -> str:
        """``launch 2``, ``terminate i-1 (drained)``: one clause of a shadow tick's note."""
        what = f"{self.count}" if self.kind == IntentKind.LAUNCH else ", ".join(self.ids) or "none"
        if self.kind == IntentKind.BALANCER:
            return f"balancer list {what} ({self.reason})"
        return f"{self.kind.value} {what} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (kept with the tick's decision)."""
        return {"kind": self.kind.value, "ids": list(self.ids), "count": self.count, "token": self.token,
                "reason": self.reason, "leaving": list(self.leaving)}

    def send(self, executor: Executor, policy: PoolPolicy, tick_id: int) -> None:
        """Hand this change to ``executor`` (a shadow executor records it; results are not used)."""
        pool = policy.pool
        if self.kind == IntentKind.LAUNCH:
            executor.launch(pool, launch_spec(policy), self.count, (self.token or "").format(tick=tick_id),
                            tick_id=tick_id)
        elif self.kind == IntentKind.TERMINATE:
            executor.terminate(pool, self.ids, tick_id=tick_id, reason=self.reason)
        elif self.kind == IntentKind.STOP:
            executor.stop(pool, self.ids, tick_id=tick_id, reason=self.reason)
        elif self.kind == IntentKind.START:
            executor.start(pool, self.ids, tick_id=tick_id, reason=self.reason)
        else:
            # The list in force is the operator's: only a leave (a scale-in) is a change.
            executor.apply_balancer(pool, [], tick_id=tick_id, changed=bool(self.leaving))


def launch_spec(policy: PoolPolicy) -> LaunchSpec:
    """What the provider is asked to launch for ``policy``."""
    launch = policy.launch
    return LaunchSpec(
        pool=policy.pool,
        image=launch.image.id or "",
        model_version=launch.model_version,
        instance_types=tuple(t.name for t in launch.instance_types),
        port=launch.port,
        user_data=launch.user_data,
        tags=dict(launch.tags),
    )


@dataclass
class TickOutcome:
    """What one tick saw, decided and did; rendered by ``once``, ``demo`` and the logs."""

    pool: str
    at: datetime
    decision: Decision | None = None
    tick_id: int | None = None
    launched: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    stopped: dict[str, str] = field(default_factory=dict)
    prepared: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    terminated: dict[str, str] = field(default_factory=dict)
    joined: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)
    #: What the pool's live nodes cost per hour at the policy's prices (None before they are known).
    cost_per_hour: float | None = None

    @property
    def ok(self) -> bool:
        """True when the tick ran without any error."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the store keeps it as the tick's outcome)."""
        return {
            "launched": self.launched,
            "started": self.started,
            "stopped": self.stopped,
            "prepared": self.prepared,
            "drained": self.drained,
            "terminated": self.terminated,
            "joined": self.joined,
            "backends": self.backends,
            "errors": self.errors,
            "notes": self.notes,
            "nodes": self.nodes,
        }


def decision_record(decision: Decision) -> dict[str, Any]:
    """The decision as the store keeps it: counts, actions and the whole reason trail."""
    return {
        "direction": decision.direction.value,
        "desired": decision.desired,
        "current": decision.current,
        "ready": decision.ready,
        "booting": decision.booting,
        "draining": decision.draining,
        "launch": decision.launch,
        "start": list(decision.start),
        "prepare": decision.prepare,
        "discard": list(decision.discard),
        "warm": decision.warm,
        "warm_target": decision.warm_target,
        "victims": list(decision.victims),
        "summary": decision.summary(),
        "reasons": [r.to_dict() for r in decision.reasons],
    }


def _boot_tick(outcome: Mapping[str, Any], at: datetime) -> BootTick:
    failed = sum(1 for r in outcome.get("terminated", {}).values() if r.startswith(BOOT_TIMEOUT_REASON))
    return bool(outcome.get("joined")), failed, at


def _streak(window: Sequence[BootTick]) -> tuple[int, datetime | None]:
    """Boot failures since a node last joined (newest tick last in ``window``), and the last one's time."""
    failures, last = 0, None
    for joined, failed, at in reversed(window):
        if joined:
            break  # a node booted fine since: the image works
        if failed:
            failures += failed
            last = last or at
    return failures, last


class Controller:
    """Runs ticks for one pool. ``policy`` is called each tick (a ``PolicyWatcher.current``)."""

    def __init__(
        self,
        policy: Callable[[], PoolPolicy],
        adapters: Adapters,
        telemetry: ControllerMetrics | None = None,
        policy_error: Callable[[], str | None] | None = None,
        leadership: Leadership | None = None,
        executor: Executor | None = None,
    ) -> None:
        self._policy = policy
        #: Whether this controller is the pool's one actor (a PostgreSQL lock; always with SQLite).
        self.leadership: Leadership = leadership or SingleController()
        #: The one thing that changes the world (and fences it by ``leadership``), or a shadow of it.
        self.executor: Executor = executor or WorldExecutor(
            adapters.provider, adapters.balancer, adapters.store, adapters.clock, self.leadership
        )
        #: False until this controller, as the actor, has settled the intents a crash left open.
        self._reconciled = False
        #: Launch tokens a reconcile found short, per kind (warm or not), with how many exist under each.
        self._carried: dict[bool, tuple[str, int]] = {}
        self._policy_error = policy_error or (lambda: None)
        self.adapters = adapters
        self.telemetry = telemetry or ControllerMetrics()
        #: When an apply settled a predecessor's unconfirmed balancer change: drains are counted
        #: from then at the earliest (see ``_apply_balancer``).
        self._in_force_since: datetime | None = None
        #: Failed health checks in a row per serving node (the grace count of ``health.unhealthy_after``).
        self._failed_probes: dict[str, int] = {}
        #: ``backend_problem`` per live instance id, with the endpoint it was checked for.
        self._backend_problems: dict[str, tuple[tuple[str, int], str | None]] = {}
        #: The pool's seasonal forecast, re-read from history at most every ``forecast.refresh``.
        self.forecasts = ForecastCache(adapters.history)
        #: Per pool, the last ``BOOT_STREAK_TICKS`` recorded ticks as the boot-failure back-off reads
        #: them: loaded from the store once, then kept from this controller's own ticks, so a tick
        #: does not re-read (and parse) a hundred full tick records of a big pool. Dropped when the
        #: controller follows (another one records ticks meanwhile).
        self._boot_ticks: dict[str, deque[BootTick]] = {}

    # ------------------------------------------------------------------------------------- tick
    def tick(self) -> TickOutcome:
        """One full tick. Never raises: every failure ends up in ``TickOutcome.errors``, logged."""
        started = time.monotonic()
        policy = self._policy()
        now = self.adapters.clock.now()
        outcome = TickOutcome(pool=policy.pool, at=now)
        policy = self._with_pause(policy, outcome.notes)
        reload_error = self._policy_error()
        self.telemetry.policy_valid(policy.pool, reload_error is None)
        self.telemetry.bounds(policy.pool, policy.scaling.min_nodes, policy.scaling.max_nodes)
        if reload_error:
            outcome.notes.append(f"policy file is invalid, keeping the last valid policy: {reload_error}")
            log.warning("policy_invalid_kept_last_valid", pool=policy.pool, error=reload_error)
        try:
            leader = self.leadership.may_act()
            self.telemetry.leader(policy.pool, leader)
            if leader:
                self._tick(policy, now, outcome)
            else:
                self._reconciled = False  # a future leadership starts by settling open intents again
                self._follow(policy, now, outcome)
        except StoreError as exc:
            # Nothing is done that the store could not record: the tick stops where the store failed.
            # An intent it could not complete stays open: settle it again once the store is back.
            self._reconciled = False
            outcome.errors.append(f"StoreError: {exc}")
            self.telemetry.store_error(policy.pool)
            log.error("store_fault", pool=policy.pool, error=str(exc))
        except AutoscalerError as exc:
            outcome.errors.append(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # the tick boundary: the service stays up whatever happened
            log.exception("tick_crashed", pool=policy.pool)
            outcome.errors.append(f"unexpected {type(exc).__name__}: {exc}")
        self.telemetry.tick_done(policy.pool, outcome, time.monotonic() - started)
        # A tick with errors (a balancer that rejected its reload, a failed launch) is an error in
        # the logs, so log-based alerting and `journalctl -p err` see it.
        emit = log.error if outcome.errors else log.info
        emit(
            "tick",
            pool=policy.pool,
            summary=outcome.decision.summary() if outcome.decision else None,
            launched=outcome.launched,
            started=outcome.started or None,
            stopped=outcome.stopped or None,
            drained=outcome.drained,
            terminated=outcome.terminated,
            joined=outcome.joined,
            errors=outcome.errors or None,
        )
        return outcome

    def _tick(self, policy: PoolPolicy, now: datetime, outcome: TickOutcome) -> None:
        store = self.adapters.store
        if not self._reconciled:
            self._reconcile(policy, now, outcome)
        observation = self.observe(policy, now)
        if not self.executor.acts:
            self._shadow_tick(policy, observation, now, outcome)
            return
        states = observation.states
        # Lifecycle changes the observation found (writes only: a store that cannot take them stops
        # the tick here, before anything in the world changed).
        for instance_id, lifecycle, detail in observation.transitions:
            at = observation.entered_at.get(instance_id, now)
            store.record_lifecycle(policy.pool, instance_id, lifecycle, at, detail)
        for instance_id, problem in observation.refused.items():
            outcome.errors.append(f"node {instance_id!r} left out of the balancer: {problem}")
        if policy.paused:  # nodes stay as they are: one that would be replaced counts as booting
            for instance, reason in observation.replace:
                states[instance.id] = NodeState(instance, Lifecycle.BOOTING, now)
                outcome.notes.append(f"paused: {instance.id} not replaced ({reason})")
        for name, sample in observation.samples.items():
            self.telemetry.check_sample(policy.pool, name, sample)
            if not sample.has_data:
                log.warning("check_no_data", pool=policy.pool, check=name, reason=sample.error)
        boot_failed = [] if policy.paused else [
            r for _, r in observation.replace if r.startswith(BOOT_TIMEOUT_REASON)
        ]
        evaluation = self.evaluate(policy, observation, now)
        decision = self._hold_launches_after_boot_failures(
            policy, evaluation.decision, now, outcome, boot_failed
        )
        outcome.decision = decision
        forecast = observation.forecast.forecast if observation.forecast is not None else None
        self.telemetry.forecast(policy, forecast, decision)
        if not self.leadership.still_leader():
            outcome.errors.append("lost the pool's leader lock before acting: nothing recorded or done")
            log.error("leadership_lost_before_acting", pool=policy.pool)
            return
        # ---- plan, and record the decision with its plan before any world change: a store that
        # cannot record it acts on nothing. The launch's client token names this record.
        tick_id = store.record_tick(
            policy.pool,
            now,
            observation.inputs(),
            decision_record(decision) | self._plan_record(policy, decision, observation, now),
            evaluation.memory.model_dump(mode="json"),
        )
        outcome.tick_id = tick_id
        # ---- execute (a paused pool is observed and recorded; nothing is acted on, nodes stay as they are)
        try:
            # Nodes that failed to boot (or run another model version) are replaced, unless paused.
            for instance, reason in [] if policy.paused else observation.replace:
                self._terminate(policy, instance, now, outcome, reason)
                if reason.startswith(BOOT_TIMEOUT_REASON):
                    self.telemetry.boot_failure(policy.pool)
            if not policy.paused:
                self._act(policy, decision, observation, now, tick_id, outcome)
        finally:
            self._carried.clear()  # a token carried over from a crash serves the first acting tick only
            outcome.nodes = {i: s.lifecycle.value for i, s in states.items()}
            outcome.cost_per_hour = sum(
                spec.price_per_hour
                for spec in (
                    policy.instance_type(s.instance.instance_type)
                    for s in states.values()
                    # A stopped warm instance bills its disk only, not the node's price.
                    if not (s.lifecycle == Lifecycle.STOPPED and s.instance.state == CloudState.STOPPED)
                )
                if spec is not None
            )
            try:
                store.update_tick(tick_id, outcome=outcome.to_dict(), error="; ".join(outcome.errors) or None)
            except StoreError as exc:
                outcome.errors.append(f"could not record the outcome: {exc}")
                self._boot_ticks.pop(policy.pool, None)  # unsure what the store kept: re-read it
            else:
                self._remember_boot_tick(policy.pool, outcome.to_dict(), now)

    # ------------------------------------------------------------------------ intents and plans
    def _reconcile(self, policy: PoolPolicy, now: datetime, outcome: TickOutcome) -> None:
        """Settle the intents a crash (or a previous leader) left open, before observing."""
        settled: list[Settled] = self.executor.reconcile(
            policy.pool, lambda: self.adapters.provider.list_instances(policy.pool)
        )
        recorded = self.adapters.store.lifecycles(policy.pool)
        for done in settled:
            for instance_id, lifecycle in done.lifecycles.items():
                if lifecycle == Lifecycle.TERMINATED or instance_id not in recorded:
                    self.adapters.store.record_lifecycle(
                        policy.pool, instance_id, lifecycle, now,
                        {"reason": f"reconciled: {done.reason}", "token": done.intent.token},
                    )
            if done.carry_token is not None:
                self._carried[done.carry_token.endswith(WARM_TOKEN_SUFFIX)] = (done.carry_token, done.carried)
            outcome.notes.append(f"reconciled intent {done.intent.id}: {done.reason}")
        self._reconciled = True

    def _launch_token(self, policy: PoolPolicy, tick_id: int, *, warm: bool) -> tuple[str, int]:
        """This tick's launch token, or the one of a launch a crash left short (re-used so the
        provider's idempotency covers it), with how many instances already exist under it."""
        carried = self._carried.pop(warm, None)
        if carried is not None:
            return carried
        return f"{policy.pool}-tick-{tick_id}{WARM_TOKEN_SUFFIX if warm else ''}", 0

    def plan(
        self, policy: PoolPolicy, decision: Decision, observation: Observation, now: datetime
    ) -> list[PlannedChange]:
        """The world changes this tick's decision asks for, in the order the executor makes them.

        Pure (no I/O): what a shadow controller records, and what an acting one records beside its
        decision. An acting tick may add to it from results (a failed warm start is replaced by a
        cold launch in the same tick; a balancer that rejects its list holds the drains).
        """
        if policy.paused:
            return []
        states = observation.states
        steps = [PlannedChange(IntentKind.TERMINATE, (i.id,), reason=why) for i, why in observation.replace]
        keep_running = policy.warm_pool is not None and policy.warm_pool.state == "running"
        stops = [] if keep_running else [i.id for i in observation.prepared + observation.restop]
        if stops:
            steps.append(PlannedChange(IntentKind.STOP, tuple(stops), reason="into the warm pool"))
        if observation.restart:
            steps.append(PlannedChange(IntentKind.START, tuple(i.id for i in observation.restart),
                                       reason="re-issued: recorded starting, still stopped"))
        steps.extend(
            PlannedChange(IntentKind.TERMINATE, (i,), reason="warm pool: beyond its size")
            for i in decision.discard if i in states
        )
        if decision.start:
            steps.append(
                PlannedChange(IntentKind.START, tuple(decision.start), reason="scale-out: warm start")
            )
        for count, warm in ((decision.launch, False), (decision.prepare, True)):
            if count > 0:
                token = f"{policy.pool}-tick-{{tick}}{WARM_TOKEN_SUFFIX if warm else ''}"
                steps.append(PlannedChange(IntentKind.LAUNCH, count=count, token=token,
                                           reason="prepare for the warm pool" if warm else "scale-out"))
        leaving: list[str] = []
        for victim in decision.victims:
            state = states.get(victim)
            if state is None:
                continue
            if state.lifecycle == Lifecycle.STARTING and self._reusable(policy, state.instance):
                if not keep_running:
                    steps.append(
                        PlannedChange(IntentKind.STOP, (victim,), reason="scale-in: cancelled while starting")
                    )
            elif state.lifecycle in (Lifecycle.BOOTING, Lifecycle.STARTING):
                steps.append(
                    PlannedChange(IntentKind.TERMINATE, (victim,), reason="scale-in: cancelled while booting")
                )
            else:
                leaving.append(victim)
        backends = [b.instance_id for b in self.backends_for(policy, states) if b.instance_id not in leaving]
        steps.append(PlannedChange(
            IntentKind.BALANCER, tuple(backends), leaving=tuple(leaving),
            reason=f"scale-in: {', '.join(leaving)} leave{'s' if len(leaving) == 1 else ''} to drain"
            if leaving else "the serving, healthy nodes",
        ))
        # Drains that end this tick (when the balancer takes the list): into the warm pool while it
        # is short of its target, terminated otherwise, as ``_finish_drains`` does.
        warm_now = sum(1 for s in states.values() if s.lifecycle in WARM_LIFECYCLES)
        for instance_id, state in states.items():
            if state.lifecycle == Lifecycle.DRAINING and state.since < now and (
                (state.active_streams is not None and state.active_streams <= 0)
                or now - state.since >= policy.drain.timeout
            ):
                if warm_now < decision.warm_target and self._reusable(policy, state.instance):
                    warm_now += 1
                    if not keep_running:  # a running warm pool keeps it up: no world change
                        why = "drained: into the warm pool"
                        steps.append(PlannedChange(IntentKind.STOP, (instance_id,), reason=why))
                else:
                    steps.append(PlannedChange(IntentKind.TERMINATE, (instance_id,), reason="drained"))
        return steps

    def _plan_record(
        self, policy: PoolPolicy, decision: Decision, observation: Observation, now: datetime
    ) -> dict[str, Any]:
        """What the tick record keeps beside the decision: the plan and the real fleet's size."""
        return {
            "plan": [step.to_dict() for step in self.plan(policy, decision, observation, now)],
            "fleet": {"real_nodes": observation.real_nodes()},
        }

    def _shadow_tick(
        self, policy: PoolPolicy, observation: Observation, now: datetime, outcome: TickOutcome
    ) -> None:
        """Shadow mode: decide on the real fleet, record the decision and its plan, act on nothing.

        No lifecycle is written (the fleet belongs to the autoscaler running it), so a healthy node
        counts as serving: the operator's balancer is assumed to send it traffic.
        """
        store = self.adapters.store
        for state in observation.states.values():
            if state.lifecycle == Lifecycle.SERVING:
                state.joined = True
        for name, sample in observation.samples.items():
            self.telemetry.check_sample(policy.pool, name, sample)
        evaluation = self.evaluate(policy, observation, now)
        decision = outcome.decision = evaluation.decision
        steps = self.plan(policy, decision, observation, now)
        record = decision_record(decision) | self._plan_record(policy, decision, observation, now)
        tick_id = store.record_tick(
            policy.pool, now, observation.inputs(), record | {"mode": "shadow"},
            evaluation.memory.model_dump(mode="json"),
        )
        outcome.tick_id = tick_id
        for step in steps:
            step.send(self.executor, policy, tick_id)
        outcome.nodes = {i: s.lifecycle.value for i, s in observation.states.items()}
        changes = [s.describe() for s in steps if s.kind != IntentKind.BALANCER or s.leaving]
        outcome.notes.append(
            f"shadow: would {'; '.join(changes) or 'change nothing'}"
            f" (real fleet: {observation.real_nodes()} nodes, shadow wants {decision.desired})"
        )
        store.update_tick(tick_id, outcome=outcome.to_dict())

    def _follow(self, policy: PoolPolicy, now: datetime, outcome: TickOutcome) -> None:
        """A follower's tick: observe and decide (telemetry, logs), record and change nothing."""
        self._boot_ticks.pop(policy.pool, None)  # the leader records ticks this controller does not see
        observation = self.observe(policy, now)
        for name, sample in observation.samples.items():
            self.telemetry.check_sample(policy.pool, name, sample)
        outcome.decision = self.evaluate(policy, observation, now).decision
        outcome.nodes = {i: s.lifecycle.value for i, s in observation.states.items()}
        outcome.notes.append("follower: another controller holds the pool's leader lock; observing only")

    def boot_failures(self, pool: str) -> tuple[int, datetime | None]:
        """Nodes replaced for failing to boot since a node last joined, and when the last one was
        (read from the store's last ``BOOT_STREAK_TICKS`` ticks)."""
        return _streak(self._read_boot_ticks(pool))

    def _read_boot_ticks(self, pool: str) -> deque[BootTick]:
        ticks = self.adapters.store.recent_ticks(pool, limit=BOOT_STREAK_TICKS)
        return deque(
            (
                _boot_tick(tick.get("decision", {}).get("outcome", {}), datetime.fromisoformat(tick["at"]))
                for tick in reversed(ticks)
            ),
            maxlen=BOOT_STREAK_TICKS,
        )

    def _remember_boot_tick(self, pool: str, outcome: Mapping[str, Any], at: datetime) -> None:
        """Add a tick this controller just recorded (with its outcome) to the kept streak window."""
        window = self._boot_ticks.get(pool)
        if window is not None:
            window.append(_boot_tick(outcome, at))

    def _hold_launches_after_boot_failures(
        self,
        policy: PoolPolicy,
        decision: Decision,
        now: datetime,
        outcome: TickOutcome,
        boot_failed: Sequence[str] = (),
    ) -> Decision:
        """Back off launching when new nodes keep failing to boot (a broken image, a bad zone).

        ``boot_failed`` are the reasons of the nodes this tick replaces for not booting.
        """
        window = self._boot_ticks.get(policy.pool)
        if window is None:
            window = self._boot_ticks[policy.pool] = self._read_boot_ticks(policy.pool)
        failures, last = _streak(window)
        failures += len(boot_failed)
        if boot_failed:
            last = now
        self.telemetry.boot_failures_in_a_row(policy.pool, failures)
        if decision.launch + decision.prepare == 0 or failures < BOOT_FAILURES_BEFORE_BACKOFF or last is None:
            return decision
        backoff = min(policy.scaling.tick * 2 ** (failures - 1), MAX_BOOT_BACKOFF)
        if now >= last + backoff:
            return decision
        held = f"launch of {decision.launch}" + (
            f" and preparation of {decision.prepare}" if decision.prepare else ""
        )
        message = (
            f"{held} held back: {failures} nodes in a row failed to boot, "
            f"the last at {last.isoformat(timespec='seconds')}; next try after "
            f"{(last + backoff).isoformat(timespec='seconds')}"
        )
        outcome.notes.append(message)
        log.warning(
            "boot_failure_backoff", pool=policy.pool, failures=failures, backoff_s=backoff.total_seconds()
        )
        reasons = (
            *decision.reasons[:-1],
            Reason(
                "fallback",
                "boot-backoff",
                message,
                {
                    "failures": failures,
                    "backoff_s": backoff.total_seconds(),
                    "held": decision.launch,
                    "held_prepare": decision.prepare,
                },
            ),
            Reason(
                "final",
                policy.pool,
                (f"start {len(decision.start)} warm; " if decision.start else f"hold at {decision.current}: ")
                + message,
                {**decision.reasons[-1].detail, "launch": 0, "prepare": 0},
            ),
        )
        return replace(decision, launch=0, prepare=0, reasons=reasons)

    def evaluate(self, policy: PoolPolicy, observation: Observation, now: datetime) -> Evaluation:
        """The engine's decision on an observation, with the memory the store kept."""
        saved = self.adapters.store.load_memory(policy.pool)
        memory = EngineMemory.model_validate(saved) if saved else EngineMemory()
        nodes = [self._as_engine_node(policy, s) for s in observation.states.values()]
        forecast = observation.forecast.forecast if observation.forecast is not None else None
        return decide(policy, observation.samples, nodes, memory, now, forecast)

    def _with_pause(self, policy: PoolPolicy, notes: list[str]) -> PoolPolicy:
        """``policy``, paused when the file says so or ``autoscaler pause`` does."""
        paused_by = "policy file" if policy.paused else None
        if paused_by is None:
            try:
                state = self.adapters.store.pause_state(policy.pool)
            except StoreError as exc:
                # Unknown pause state: the tick's own store calls will fail and act on nothing anyway.
                log.warning("pause_state_unreadable", pool=policy.pool, error=str(exc))
                state = None
            if state is not None and state["paused"]:
                why = f": {state['reason']}" if state["reason"] else ""
                paused_by = f"autoscaler pause at {state['at']}{why}"
                policy = policy.model_copy(update={"paused": True})
        self.telemetry.mode(policy.pool, paused=policy.paused, shadow=not self.executor.acts)
        if paused_by is not None:
            notes.append(f"paused ({paused_by}): observed and recorded, nothing acted on")
        return policy

    def explain(self) -> tuple[PoolPolicy, Observation, Decision]:
        """Observe and decide as a tick would, changing nothing anywhere (``autoscaler explain``)."""
        policy = self._with_pause(self._policy(), [])
        now = self.adapters.clock.now()
        observation = self.observe(policy, now)
        return policy, observation, self.evaluate(policy, observation, now).decision

    # ---------------------------------------------------------------------------------- observe
    def observe(self, policy: PoolPolicy, now: datetime) -> Observation:
        """Read the provider, the store, the nodes, the metrics and (when due) the forecast's history;
        change nothing.

        Each instance gets a lifecycle from the store's record, its cloud state and its own health
        check; what should change (a record, a node to replace, a warm-pool stop or start to issue)
        is returned, not done.
        """
        store = self.adapters.store
        instances = self.adapters.provider.list_instances(policy.pool)
        recorded = store.lifecycles(policy.pool)
        observation = Observation(listed=list(instances))
        listed = {i.id for i in instances}
        for instance_id, (lifecycle, _since) in recorded.items():
            if instance_id not in listed and lifecycle != Lifecycle.TERMINATED:
                reason = "gone"
                if lifecycle in WARM_LIFECYCLES:
                    reason = "gone from the warm pool (vanished); replaced"
                observation.transitions.append((instance_id, Lifecycle.TERMINATED, {"reason": reason}))
        for instance in instances:
            if instance.state == CloudState.TERMINATED:
                continue
            default = (
                Lifecycle.PREPARING
                if instance.launch_token.endswith(WARM_TOKEN_SUFFIX)
                else Lifecycle.LAUNCHING
            )
            lifecycle, since = recorded.get(instance.id, (default, instance.launched_at))
            if lifecycle == Lifecycle.TERMINATED:
                continue  # terminate was requested; the provider has not caught up yet
            if instance.state in (CloudState.STOPPING, CloudState.STOPPED):
                self._observe_powered_off(
                    policy, instance, lifecycle, since, now, observation, recorded=instance.id in recorded
                )
            else:
                self._observe_running(policy, instance, lifecycle, since, now, observation)
        live = {i.id for i in instances if i.state not in (CloudState.TERMINATED, CloudState.STOPPING)}
        for gone in set(self._failed_probes) - live:
            del self._failed_probes[gone]
        for gone in set(self._backend_problems) - live:
            del self._backend_problems[gone]
        for check in policy.scaling.checks:
            raw = self.adapters.metrics.query(check.query, now=now)
            low, high = bounds_for(check.signal, check.valid_min, check.valid_max)
            observation.samples[check.name] = plausible(raw, low, high)
        observation.forecast = self.forecasts.current(policy, now)
        return observation

    def _streams(self, policy: PoolPolicy, instance: Instance) -> float | None:
        """The node's own stream count, or unknown when it is one no node can have (negative, NaN,
        absurdly large): a drain never ends early on an impossible zero-or-less."""
        return plausible_streams(
            self.adapters.probe.active_streams(instance), policy.streams_of(instance.instance_type)
        )

    def _backend_problem(self, instance: Instance) -> str | None:
        if not instance.address:
            return None  # no address yet: still booting
        # Remembered per instance while its address holds: a tick asks twice for every node, and
        # parsing each address every time was a good part of a big pool's tick.
        endpoint = (instance.address, instance.port)
        known = self._backend_problems.get(instance.id)
        if known is None or known[0] != endpoint:
            backend = Backend(address=instance.address, port=instance.port, instance_id=instance.id)
            known = (endpoint, backend_problem(backend))
            self._backend_problems[instance.id] = known
        return known[1]

    def _observe_powered_off(
        self,
        policy: PoolPolicy,
        instance: Instance,
        lifecycle: Lifecycle,
        since: datetime,
        now: datetime,
        observation: Observation,
        *,
        recorded: bool,
    ) -> None:
        """A stopping or stopped instance: a warm-pool member, a start to re-issue, or a leftover."""
        stopped = instance.state == CloudState.STOPPED
        warm = policy.warm_pool
        if lifecycle == Lifecycle.STARTING:
            # A start was announced (recorded) but the instance is still down: the controller died
            # between the record and the call, or the call was lost. Starting is idempotent: again.
            timeout = warm.start_timeout if warm else policy.health.boot_timeout
            if now - since > timeout:
                observation.replace.append(
                    (instance, f"{START_TIMEOUT_REASON} ({timeout.total_seconds():.0f}s): never came up")
                )
                return
            if stopped:
                observation.restart.append(instance)
            observation.states[instance.id] = NodeState(instance, Lifecycle.STARTING, since)
            return
        if lifecycle in (Lifecycle.LAUNCHING, Lifecycle.BOOTING) and recorded:
            observation.replace.append((instance, "stopped before it ever passed its health check"))
            return
        # Stopped after it served, drained or was prepared (or found stopped with no record): warm.
        if lifecycle != Lifecycle.STOPPED:
            observation.transitions.append(
                (
                    instance.id,
                    Lifecycle.STOPPED,
                    {"reason": f"found {instance.state.value} (was {lifecycle.value})"},
                )
            )
            since = now
        observation.states[instance.id] = NodeState(
            instance,
            Lifecycle.STOPPED,
            since,
            # Still stopping: counts toward the warm pool but cannot be started yet.
            engine_lifecycle=Lifecycle.STOPPED if stopped else Lifecycle.PREPARING,
        )

    def _observe_running(
        self,
        policy: PoolPolicy,
        instance: Instance,
        lifecycle: Lifecycle,
        since: datetime,
        now: datetime,
        observation: Observation,
    ) -> None:
        """A pending or running instance: booting, starting, serving, draining, or warm."""
        probe = self.adapters.probe
        warm = policy.warm_pool
        keep_running = warm is not None and warm.state == "running"
        if lifecycle == Lifecycle.DRAINING:
            observation.states[instance.id] = NodeState(
                instance, Lifecycle.DRAINING, since, active_streams=self._streams(policy, instance)
            )
            return
        if lifecycle == Lifecycle.STOPPED:
            if not keep_running:
                # Recorded as stopped but still up: the stop is in flight, or the controller died
                # between recording it and calling it. Stopping is idempotent: ask again.
                observation.restop.append(instance)
            observation.states[instance.id] = NodeState(
                instance,
                Lifecycle.STOPPED,
                since,
                engine_lifecycle=Lifecycle.STOPPED if keep_running else Lifecycle.PREPARING,
            )
            return
        problem = self._backend_problem(instance)
        if problem:
            # Its inventory says something no balancer may be given: never probed, never joined,
            # replaced like a node that does not boot.
            observation.refused[instance.id] = problem
            log.error("node_refused_as_backend", pool=policy.pool, instance=instance.id, reason=problem)
        healthy = problem is None and instance.state == CloudState.RUNNING and probe.healthy(instance)
        if lifecycle == Lifecycle.SERVING and problem is None and instance.state == CloudState.RUNNING:
            failed = 0 if healthy else self._failed_probes.get(instance.id, 0) + 1
            self._failed_probes[instance.id] = failed
            if 0 < failed < policy.health.unhealthy_after:
                # Within the grace count: it stays in the balancer (nginx's own max_fails keeps
                # requests off it meanwhile).
                log.warning("health_check_failed", pool=policy.pool, instance=instance.id,
                            in_a_row=failed, grace=policy.health.unhealthy_after)
                healthy = True
        if lifecycle == Lifecycle.PREPARING:
            if healthy:
                # Model loaded: into the warm pool (stopped this tick), never into the balancer.
                observation.prepared.append(instance)
                observation.states[instance.id] = NodeState(
                    instance,
                    Lifecycle.STOPPED,
                    now,
                    healthy=True,
                    engine_lifecycle=Lifecycle.STOPPED if keep_running else Lifecycle.PREPARING,
                )
                return
            boot_timeout = policy.health.boot_timeout
            if now - since > boot_timeout:
                observation.replace.append(
                    (instance, f"{BOOT_TIMEOUT_REASON} ({boot_timeout.total_seconds():.0f}s) while preparing")
                )
                return
            observation.states[instance.id] = NodeState(instance, Lifecycle.PREPARING, since)
            return
        if (
            healthy
            and instance.model_version != policy.launch.model_version
            and lifecycle != Lifecycle.SERVING
        ):
            # Never let a node of another model version join: the same audio would give other text.
            observation.replace.append(
                (
                    instance,
                    f"model version {instance.model_version} is not the pool's {policy.launch.model_version}",
                )
            )
            return
        if healthy:
            observation.states[instance.id] = NodeState(
                instance,
                Lifecycle.SERVING,
                since if lifecycle == Lifecycle.SERVING else now,
                healthy=True,
                active_streams=self._streams(policy, instance),
                joined=lifecycle == Lifecycle.SERVING,
            )
            return
        if lifecycle == Lifecycle.STARTING:
            timeout = warm.start_timeout if warm else policy.health.boot_timeout
            if now - since > timeout:
                observation.replace.append(
                    (instance, f"{START_TIMEOUT_REASON} ({timeout.total_seconds():.0f}s)")
                )
                return
            observation.states[instance.id] = NodeState(instance, Lifecycle.STARTING, since)
            return
        # Booting, or a serving node that stopped answering: not capacity now. It gets the boot
        # timeout, from launch or from when it stopped answering, to come (back) up.
        if lifecycle == Lifecycle.SERVING:
            observation.transitions.append(
                (instance.id, Lifecycle.BOOTING, {"reason": "health check failing"})
            )
            since = now
        elif lifecycle == Lifecycle.LAUNCHING:
            observation.transitions.append((instance.id, Lifecycle.BOOTING, {}))
            since = min(instance.launched_at, now)
            observation.entered_at[instance.id] = since
        boot_timeout = policy.health.boot_timeout
        if now - since > boot_timeout:
            observation.replace.append(
                (instance, f"{BOOT_TIMEOUT_REASON} ({boot_timeout.total_seconds():.0f}s)")
            )
            return
        observation.states[instance.id] = NodeState(instance, Lifecycle.BOOTING, since)

    def _as_engine_node(self, policy: PoolPolicy, state: NodeState) -> Node:
        instance = state.instance
        lifecycle = state.engine_lifecycle or state.lifecycle
        if lifecycle == Lifecycle.SERVING and not state.joined:
            lifecycle = Lifecycle.BOOTING  # healthy but not in the balancer: no traffic reaches it
        return Node(
            id=instance.id,
            lifecycle=lifecycle,
            instance_type=instance.instance_type,
            capacity_streams=policy.streams_of(instance.instance_type),
            model_version=instance.model_version,
            launched_at=instance.launched_at,
            active_streams=state.active_streams,
            image=instance.image,
            protected=instance.tags.get(DO_NOT_DISRUPT_TAG, "").strip().lower() in {"true", "1", "yes"},
        )

    # -------------------------------------------------------------------------------------- act
    def _act(
        self,
        policy: PoolPolicy,
        decision: Decision,
        observation: Observation,
        now: datetime,
        tick_id: int,
        outcome: TickOutcome,
    ) -> None:
        store = self.adapters.store
        states = observation.states
        self._keep_warm_pool(policy, observation, now, outcome)
        for instance_id in decision.discard:
            state = states.pop(instance_id, None)
            if state is not None:
                why = next(
                    (r.message for r in decision.reasons if r.kind == "warm" and r.name == instance_id),
                    "beyond the warm pool's size",
                )
                self._terminate(policy, state.instance, now, outcome, f"warm pool: {why}")
        fallback, kept = (
            self._start_warm(policy, decision.start, states, now, outcome) if decision.start else (0, 0)
        )
        if decision.launch + fallback > 0:
            token, existing = self._launch_token(policy, tick_id, warm=False)
            self._launch(policy, decision.launch + fallback + existing, token, states, now, outcome)
        # A warm instance that failed to start is still in the pool: it needs no replacement.
        prepare = max(0, decision.prepare - kept)
        if prepare > 0:
            token, existing = self._launch_token(policy, tick_id, warm=True)
            self._launch(
                policy, prepare + existing, token, states, now, outcome, lifecycle=Lifecycle.PREPARING
            )
        for victim in decision.victims:
            state = states.get(victim)
            if state is None:
                continue
            if state.lifecycle == Lifecycle.STARTING and self._reusable(policy, state.instance):
                # Started from the warm pool and not serving yet: back into the pool, no drain needed.
                self._stop_into_pool(policy, state, now, outcome, "scale-in: cancelled while starting")
                continue
            if state.lifecycle in (Lifecycle.BOOTING, Lifecycle.STARTING):
                # A booting node serves nobody: cancelling it needs no drain.
                self._terminate(policy, state.instance, now, outcome, "scale-in: cancelled while booting")
                del states[victim]
                continue
            store.record_lifecycle(
                policy.pool,
                victim,
                Lifecycle.DRAINING,
                now,
                {"reason": "scale-in victim", "active_streams": state.active_streams},
            )
            state.lifecycle, state.since = Lifecycle.DRAINING, now
            outcome.drained.append(victim)
        if self.adapters.write_targets is not None:
            try:
                # Warm-pool members are not scraped: an idle preparing node would drag averages down.
                self.adapters.write_targets(
                    [s.instance for s in states.values() if s.lifecycle not in WARM_LIFECYCLES]
                )
            except OSError as exc:
                outcome.errors.append(f"could not write the Prometheus target file: {exc}")
        balancer_ok = self._apply_balancer(policy, states, now, outcome)
        if balancer_ok:
            self._finish_drains(policy, decision, states, now, outcome)
        else:
            outcome.notes.append("balancer not updated: no draining node is terminated this tick")

    # ------------------------------------------------------------------------------- warm pool
    def _reusable(self, policy: PoolPolicy, instance: Instance) -> bool:
        """True when ``instance`` may go (back) into the warm pool: there is one, and it is up to date."""
        warm = policy.warm_pool
        if warm is None or not warm.reuse_on_scale_in:
            return False
        image = policy.launch.image.id
        return instance.model_version == policy.launch.model_version and not (
            image and instance.image is not None and instance.image != image
        )

    def _stop_into_pool(
        self, policy: PoolPolicy, state: NodeState, now: datetime, outcome: TickOutcome, reason: str
    ) -> None:
        """Record the node as warm, then stop it (unless the pool is kept running)."""
        instance = state.instance
        self.adapters.store.record_lifecycle(
            policy.pool, instance.id, Lifecycle.STOPPED, now, {"reason": reason}
        )
        state.lifecycle, state.since, state.healthy = Lifecycle.STOPPED, now, False
        outcome.stopped[instance.id] = reason
        if policy.warm_pool is not None and policy.warm_pool.state == "running":
            return
        self._stop(policy, [instance], now, outcome)

    def _stop(
        self, policy: PoolPolicy, instances: list[Instance], now: datetime, outcome: TickOutcome
    ) -> None:
        """``provider.stop``; an instance already gone is recorded terminated. Failures are retried
        next tick (the record says STOPPED while the cloud says running)."""
        if not instances:
            return
        try:
            results = self.executor.stop(
                policy.pool, [i.id for i in instances], tick_id=outcome.tick_id, reason="into the warm pool"
            )
        except ProviderError as exc:
            outcome.errors.append(f"stop of {', '.join(i.id for i in instances)} failed: {exc}")
            return
        for instance in instances:
            if results.get(instance.id) == StopOutcome.ALREADY_GONE:
                self.adapters.store.record_lifecycle(
                    policy.pool,
                    instance.id,
                    Lifecycle.TERMINATED,
                    now,
                    {"reason": "gone while being stopped into the warm pool"},
                )

    def _keep_warm_pool(
        self, policy: PoolPolicy, observation: Observation, now: datetime, outcome: TickOutcome
    ) -> None:
        """Stop what finished preparing; re-issue stops and starts a crash or a lost call left undone."""
        store = self.adapters.store
        keep_running = policy.warm_pool is not None and policy.warm_pool.state == "running"
        for instance in observation.prepared:
            store.record_lifecycle(
                policy.pool,
                instance.id,
                Lifecycle.STOPPED,
                now,
                {"reason": "prepared: healthy with its model loaded"},
            )
            outcome.stopped[instance.id] = "prepared: healthy with its model loaded"
        if not keep_running:
            self._stop(policy, observation.prepared + observation.restop, now, outcome)
        if observation.restart:
            ids = [i.id for i in observation.restart]
            try:
                results = self.executor.start(
                    policy.pool, ids, tick_id=outcome.tick_id,
                    reason="re-issued: recorded starting, still stopped",
                )
            except ProviderError as exc:
                outcome.errors.append(f"re-issued start of {', '.join(ids)} failed: {exc}")
                return
            for iid, result in results.items():
                if result == StartOutcome.ALREADY_GONE:
                    store.record_lifecycle(
                        policy.pool, iid, Lifecycle.TERMINATED, now, {"reason": "vanished from the warm pool"}
                    )
                    observation.states.pop(iid, None)
                elif result == StartOutcome.NO_CAPACITY:
                    store.record_lifecycle(
                        policy.pool, iid, Lifecycle.STOPPED, now, {"reason": "re-issued start found no stock"}
                    )
                    observation.states.pop(iid, None)

    def _start_warm(
        self,
        policy: PoolPolicy,
        ids: tuple[str, ...],
        states: dict[str, NodeState],
        now: datetime,
        outcome: TickOutcome,
    ) -> tuple[int, int]:
        """Start warm instances (recorded STARTING first). Return how many must launch cold instead,
        and how many of those stay in the warm pool (not started, but not gone either)."""
        store = self.adapters.store
        for iid in ids:
            store.record_lifecycle(
                policy.pool, iid, Lifecycle.STARTING, now, {"reason": "scale-out: warm start"}
            )
        why = ""
        results: dict[str, StartOutcome] = {}
        try:
            results = self.executor.start(
                policy.pool, ids, tick_id=outcome.tick_id, reason="scale-out: warm start"
            )
        except InsufficientCapacity as exc:
            why = f"no stock: {exc}"
            results = dict.fromkeys(ids, StartOutcome.NO_CAPACITY)
        except ProviderError as exc:
            why = f"{type(exc).__name__}: {exc}"
        failed: list[str] = []
        kept = 0
        for iid in ids:
            result = results.get(iid)
            state = states.get(iid)
            if result in (StartOutcome.STARTING, StartOutcome.ALREADY_RUNNING) and state is not None:
                state.lifecycle, state.since, state.engine_lifecycle = Lifecycle.STARTING, now, None
                outcome.started.append(iid)
                self.telemetry.warm_start(policy.pool, "started")
                continue
            failed.append(iid)
            if result == StartOutcome.ALREADY_GONE:
                store.record_lifecycle(
                    policy.pool, iid, Lifecycle.TERMINATED, now, {"reason": "vanished from the warm pool"}
                )
                states.pop(iid, None)
                self.telemetry.warm_start(policy.pool, "gone")
            else:
                reason = (why or "no stock") if result == StartOutcome.NO_CAPACITY else (why or "not started")
                store.record_lifecycle(
                    policy.pool, iid, Lifecycle.STOPPED, now, {"reason": f"warm start failed: {reason}"}
                )
                self.telemetry.warm_start(policy.pool, "no-capacity" if result else "error")
                kept += 1
        if failed:
            outcome.notes.append(
                f"warm start of {', '.join(failed)} failed ({why or 'no stock / vanished'}): "
                f"launching {len(failed)} cold instead, this tick"
            )
            log.warning("warm_start_fallback", pool=policy.pool, failed=failed, reason=why)
        return len(failed), kept

    def _launch(
        self,
        policy: PoolPolicy,
        count: int,
        token: str,
        states: dict[str, NodeState],
        now: datetime,
        outcome: TickOutcome,
        lifecycle: Lifecycle = Lifecycle.LAUNCHING,
    ) -> None:
        spec = launch_spec(policy)
        what = "preparation launch" if lifecycle == Lifecycle.PREPARING else "launch"
        try:
            result = self.executor.launch(policy.pool, spec, count, token, tick_id=outcome.tick_id)
        except QuotaExceeded as exc:
            outcome.errors.append(f"{what} blocked by quota, no further scale-out this tick: {exc}")
            return
        except ProviderError as exc:
            outcome.errors.append(f"{what} of {count} failed: {type(exc).__name__}: {exc}")
            return
        added = outcome.prepared if lifecycle == Lifecycle.PREPARING else outcome.launched
        before = len(added)
        for instance in result.instances:
            if instance.id in states:
                continue
            self.adapters.store.record_lifecycle(
                policy.pool,
                instance.id,
                lifecycle,
                now,
                {"token": token, "type": instance.instance_type},
            )
            states[instance.id] = NodeState(
                instance, Lifecycle.PREPARING if lifecycle == Lifecycle.PREPARING else Lifecycle.BOOTING, now
            )
            added.append(instance.id)
        self.telemetry.launched(policy.pool, len(added) - before)
        if result.shortfall:
            outcome.notes.append(
                f"{what}: {len(result.instances)} of {count}: {result.shortfall} ({'; '.join(result.notes)})"
            )

    def backends_for(self, policy: PoolPolicy, states: Mapping[str, NodeState]) -> list[Backend]:
        """Serving, healthy nodes of the pool's model version, with weights and backups."""
        serving = sorted(
            (
                s.instance
                for s in states.values()
                if s.lifecycle == Lifecycle.SERVING
                and s.healthy
                and s.instance.address
                and not self._backend_problem(s.instance)  # reported by observe
            ),
            key=lambda i: (i.launched_at, i.id),
        )
        balancer = policy.balancer
        max_fails = getattr(balancer, "max_fails", 2)
        fail_timeout = int(getattr(balancer, "fail_timeout", timedelta(seconds=30)).total_seconds())
        backups = getattr(balancer, "backup_nodes", 0)
        # The newest nodes stand as backups, and only while at least one primary remains.
        n_backup = min(backups, max(len(serving) - 1, 0))
        backends = []
        for index, instance in enumerate(serving):
            spec = policy.instance_type(instance.instance_type)
            backends.append(
                Backend(
                    address=instance.address or "",
                    port=instance.port,
                    instance_id=instance.id,
                    weight=spec.weight if spec else 1,
                    max_fails=max_fails,
                    fail_timeout_s=fail_timeout,
                    backup=index >= len(serving) - n_backup,
                )
            )
        return backends

    def _apply_balancer(
        self, policy: PoolPolicy, states: dict[str, NodeState], now: datetime, outcome: TickOutcome
    ) -> bool:
        backends = self.backends_for(policy, states)
        try:
            before: set[str] | None = {b.instance_id for b in self.adapters.balancer.current()}
        except BalancerError as exc:
            # Changed by hand, unreadable: the list this controller decided is written over it.
            outcome.notes.append(f"the balancer's current list is unreadable and is rewritten: {exc}")
            log.error("balancer_list_unreadable", pool=policy.pool, error=str(exc))
            before = None
        try:
            changed = before is None or {b.instance_id for b in backends} != before
            unconfirmed = self.executor.apply_balancer(
                policy.pool, backends, tick_id=outcome.tick_id, changed=changed
            )
        except BalancerError as exc:
            outcome.errors.append(f"balancer rejected the change, previous backends still serve: {exc}")
            self.telemetry.balancer_error(policy.pool)
            log.error("balancer_error", pool=policy.pool, error=str(exc))
            return False
        outcome.backends = [b.endpoint for b in backends]
        if unconfirmed:
            # A predecessor was killed between writing the list and putting it in force (its
            # balancer intent stayed open): its draining nodes may have taken traffic until this
            # apply, so their drain is counted from now. A predecessor whose apply completed (a
            # cron-driven `once`, a clean restart) changes nothing here.
            self._in_force_since = now
            restarted = sorted(i for i, s in states.items() if s.lifecycle == Lifecycle.DRAINING)
            if restarted:
                outcome.notes.append(f"drain of {', '.join(restarted)} counted from this apply: the "
                                     "previous balancer change was never confirmed")
        if self._in_force_since is not None:
            for draining in states.values():
                if draining.lifecycle == Lifecycle.DRAINING:
                    draining.since = max(draining.since, self._in_force_since)
        for backend in backends:
            state = states.get(backend.instance_id)
            new = backend.instance_id not in before if before is not None else not (state and state.joined)
            if new:
                outcome.joined.append(backend.instance_id)
            if state is not None and state.joined:
                continue  # recorded serving already (that is what joined means): no store call per node
            self.adapters.store.record_lifecycle(policy.pool, backend.instance_id, Lifecycle.SERVING, now)
        return True

    def _finish_drains(
        self,
        policy: PoolPolicy,
        decision: Decision,
        states: dict[str, NodeState],
        now: datetime,
        outcome: TickOutcome,
    ) -> None:
        timeout = policy.drain.timeout
        # Counted once, then kept as drained nodes go into the pool (not recounted per drained node).
        warm_now = sum(1 for s in states.values() if s.lifecycle in WARM_LIFECYCLES)
        for instance_id, state in list(states.items()):
            if state.lifecycle != Lifecycle.DRAINING or state.since >= now:
                continue  # left the balancer this tick: give in-flight proxying a tick to settle
            active = state.active_streams
            if active is not None and active <= 0:
                reason = "drained: no stream in flight"
            elif now - state.since >= timeout:
                reason = (
                    f"drain timeout ({timeout.total_seconds():.0f}s) reached with "
                    f"{'unknown' if active is None else int(active)} streams in flight"
                )
            else:
                continue
            if warm_now < decision.warm_target and self._reusable(policy, state.instance):
                self._stop_into_pool(
                    policy,
                    state,
                    now,
                    outcome,
                    f"{reason}; into the warm pool ({warm_now} of {decision.warm_target})",
                )
                warm_now += 1  # it is STOPPED now
                continue
            self._terminate(policy, state.instance, now, outcome, reason)
            del states[instance_id]

    def _terminate(
        self, policy: PoolPolicy, instance: Instance, now: datetime, outcome: TickOutcome, reason: str
    ) -> None:
        try:
            result = self.executor.terminate(
                policy.pool, [instance.id], tick_id=outcome.tick_id, reason=reason
            )
        except ProviderError as exc:
            outcome.errors.append(f"terminate {instance.id} failed ({reason}): {exc}")
            return
        gone = result.get(instance.id, TerminateOutcome.ALREADY_GONE)
        self.adapters.store.record_lifecycle(
            policy.pool, instance.id, Lifecycle.TERMINATED, now, {"reason": reason, "outcome": gone.value}
        )
        outcome.terminated[instance.id] = reason
        self.telemetry.terminated(policy.pool, reason)
