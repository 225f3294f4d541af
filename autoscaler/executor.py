"""The one place that changes the world: launch, stop, start, terminate, and the balancer's list.

The controller observes, decides and plans; an ``Executor`` carries the plan out. ``WorldExecutor``
writes an *intent* to the store before each provider or balancer call and completes it after (ok,
or failed with the error), so a controller killed between a call and its record leaves an open
intent that the next start settles against the provider's real inventory (``reconcile``). It is
also the fence: before each call it asks the pool's ``Leadership`` whether this process still holds
the leader lock, and stops the tick with ``LeadershipLost`` when it does not.

``ShadowExecutor`` is the same interface, not called on the world: it records every change it is
handed as a ``shadow`` intent and changes nothing (``autoscaler run --shadow``). Which one a
controller gets is decided once, in ``autoscaler.wiring``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import structlog

from autoscaler.domain import (
    Backend,
    CloudState,
    Instance,
    Intent,
    IntentKind,
    IntentStatus,
    LaunchResult,
    LaunchSpec,
    Lifecycle,
    StartOutcome,
    StopOutcome,
    TerminateOutcome,
)
from autoscaler.errors import BalancerError, LeadershipLost, ProviderError
from autoscaler.leader import Leadership, SingleController
from autoscaler.protocols import Balancer, Clock, Provider, ReloadingBalancer, Store

log = structlog.get_logger("autoscaler.executor")

#: Launch tokens of instances launched to be prepared for the warm pool end with this.
WARM_TOKEN_SUFFIX = "-warm"

T = TypeVar("T")


@dataclass(frozen=True)
class Settled:
    """How ``reconcile`` settled one open intent, and what the controller should record about it."""

    intent: Intent
    reason: str
    #: Instances the settlement found or changed, with the lifecycle the controller records for them.
    lifecycles: Mapping[str, Lifecycle] = field(default_factory=dict)
    #: A launch found short of its count: its token, re-used by this tick's launch of the same kind
    #: so the provider's idempotency (EC2/ECS client token) also covers a launch still in flight.
    carry_token: str | None = None
    #: How many instances already exist under ``carry_token`` (added to the count re-launched with it).
    carried: int = 0


class Executor(Protocol):
    """Carries out the controller's world changes for one or more pools.

    Contract:
    - ``acts`` is True when the calls change the world, False for a shadow executor (which records
      what it is handed and returns results that say nothing happened: no instances, empty maps).
    - Each world-changing method records an intent in the store *before* its call and completes it
      *after*: ``ok`` with what the provider or balancer returned, ``failed`` with the error (which
      is then re-raised unchanged: ``ProviderError`` and its kinds, ``BalancerError``). A store that
      cannot record the intent raises ``StoreError`` and the call is not made.
    - Before each call, a leader check: ``LeadershipLost`` is raised, and nothing is called or
      recorded, when this process no longer holds the pool's leader lock.
    - ``reconcile`` settles the pool's open intents (left by a crash) against ``instances``, the
      provider's inventory, re-issuing idempotent calls where the world is not yet as intended; it
      returns one ``Settled`` per intent it closed. A re-issue the provider refuses closes its
      intent as failed (the tick's own level-triggered checks finish the move); ``LeadershipLost``
      and ``StoreError`` propagate. Balancer intents are closed by the next
      successful ``apply_balancer`` (which puts the whole list in force), not by ``reconcile``.
    """

    acts: bool

    def launch(
        self, pool: str, spec: LaunchSpec, count: int, token: str, *, tick_id: int | None
    ) -> LaunchResult:
        """``Provider.launch`` (idempotent on ``token``), announced by an intent."""
        ...

    def terminate(
        self, pool: str, ids: Sequence[str], *, tick_id: int | None, reason: str
    ) -> dict[str, TerminateOutcome]:
        """``Provider.terminate``, announced by an intent."""
        ...

    def stop(
        self, pool: str, ids: Sequence[str], *, tick_id: int | None, reason: str
    ) -> dict[str, StopOutcome]:
        """``Provider.stop`` (disk kept), announced by an intent."""
        ...

    def start(
        self, pool: str, ids: Sequence[str], *, tick_id: int | None, reason: str
    ) -> dict[str, StartOutcome]:
        """``Provider.start``, announced by an intent."""
        ...

    def apply_balancer(
        self, pool: str, backends: Sequence[Backend], *, tick_id: int | None, changed: bool
    ) -> bool:
        """``Balancer.apply``; an intent is recorded when ``changed`` (joins or leaves) or on the first
        apply of this executor (a restart's first apply puts the recorded list in force).

        Returns True when this apply settled an earlier apply that was never confirmed (a
        predecessor killed between writing the list and putting it in force): what the balancer
        served until now is unknown, so nodes draining since then may have had traffic until now."""
        ...

    def reconcile(self, pool: str, instances: Callable[[], Sequence[Instance]]) -> list[Settled]:
        """Settle the open intents of ``pool``; ``instances`` lists the provider's inventory (called
        only when some intent needs it)."""
        ...


def _launch_summary(result: LaunchResult) -> dict[str, Any]:
    return {
        "instances": [i.id for i in result.instances],
        "shortfall": result.shortfall,
        "notes": list(result.notes),
    }


def _outcomes(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: str(v) for k, v in result.items()}


class WorldExecutor:
    """``Executor`` on a real provider and balancer, with an intent log in ``store`` and a fence."""

    acts = True

    def __init__(
        self,
        provider: Provider,
        balancer: Balancer,
        store: Store,
        clock: Clock,
        leadership: Leadership | None = None,
    ) -> None:
        self.provider = provider
        self.balancer = balancer
        self.store = store
        self.clock = clock
        self.leadership: Leadership = leadership or SingleController()
        #: Pools this executor has applied a balancer list for (the first apply is always an intent).
        self._applied: set[str] = set()
        #: Seconds spent in leader checks (the fence's cost, for telemetry and the benchmark).
        self.fence_seconds = 0.0
        self.fence_checks = 0

    # ------------------------------------------------------------------------------------ fence
    def _fence(self, pool: str, kind: IntentKind) -> None:
        started = time.perf_counter()
        still = self.leadership.still_leader()
        self.fence_seconds += time.perf_counter() - started
        self.fence_checks += 1
        if not still:
            log.error("fenced", pool=pool, kind=kind.value)
            raise LeadershipLost(
                f"lost the pool's leader lock before a {kind.value}: not done, the tick stops here"
            )

    def _do(
        self,
        pool: str,
        kind: IntentKind,
        call: Callable[[], T],
        summarize: Callable[[T], dict[str, Any]],
        *,
        tick_id: int | None,
        ids: Sequence[str] = (),
        token: str | None = None,
        count: int = 0,
        detail: Mapping[str, Any] | None = None,
    ) -> T:
        """Fence, record the intent, call, complete the intent."""
        self._fence(pool, kind)
        intent_id = self.store.open_intent(
            pool,
            kind,
            self.clock.now(),
            tick_id=tick_id,
            instance_ids=tuple(ids),
            token=token,
            count=count,
            detail=detail,
        )
        try:
            result = call()
        except (ProviderError, BalancerError) as exc:
            self.store.close_intent(
                intent_id, IntentStatus.FAILED, self.clock.now(), error=f"{type(exc).__name__}: {exc}"
            )
            raise
        self.store.close_intent(intent_id, IntentStatus.OK, self.clock.now(), result=summarize(result))
        return result

    # ---------------------------------------------------------------------------- world changes
    def launch(
        self, pool: str, spec: LaunchSpec, count: int, token: str, *, tick_id: int | None
    ) -> LaunchResult:
        """Launch ``count`` for ``token``, announced by an intent."""
        return self._do(
            pool,
            IntentKind.LAUNCH,
            lambda: self.provider.launch(spec, count, token),
            _launch_summary,
            tick_id=tick_id,
            token=token,
            count=count,
            detail={"types": list(spec.instance_types)},
        )

    def terminate(
        self, pool: str, ids: Sequence[str], *, tick_id: int | None, reason: str
    ) -> dict[str, TerminateOutcome]:
        """Terminate ``ids``, announced by an intent."""
        return self._do(
            pool,
            IntentKind.TERMINATE,
            lambda: self.provider.terminate(list(ids)),
            _outcomes,
            tick_id=tick_id,
            ids=ids,
            detail={"reason": reason},
        )

    def stop(
        self, pool: str, ids: Sequence[str], *, tick_id: int | None, reason: str
    ) -> dict[str, StopOutcome]:
        """Stop ``ids`` into the warm pool, announced by an intent."""
        return self._do(
            pool,
            IntentKind.STOP,
            lambda: self.provider.stop(list(ids)),
            _outcomes,
            tick_id=tick_id,
            ids=ids,
            detail={"reason": reason},
        )

    def start(
        self, pool: str, ids: Sequence[str], *, tick_id: int | None, reason: str
    ) -> dict[str, StartOutcome]:
        """Start warm ``ids``, announced by an intent."""
        return self._do(
            pool,
            IntentKind.START,
            lambda: self.provider.start(list(ids)),
            _outcomes,
            tick_id=tick_id,
            ids=ids,
            detail={"reason": reason},
        )

    def apply_balancer(
        self, pool: str, backends: Sequence[Backend], *, tick_id: int | None, changed: bool
    ) -> bool:
        """Put ``backends`` in force; an intent when the list changes or on this run's first apply."""
        if not changed and pool in self._applied:
            # The list in force already: an idempotent no-op by the Balancer contract, no intent.
            self._fence(pool, IntentKind.BALANCER)
            self.balancer.apply(backends)
            return False
        earlier = [i for i in self.store.intents(pool, open_only=True) if i.kind == IntentKind.BALANCER]
        if (
            pool not in self._applied
            and not earlier
            and isinstance(self.balancer, ReloadingBalancer)
            and self._last_apply_completed(pool)
        ):
            # The file's list is the one the last, completed apply put in force: a restart need not
            # reload an unchanged list (a reload closes nginx's idle keep-alive connections).
            self.balancer.assume_in_force()
        self._do(
            pool,
            IntentKind.BALANCER,
            lambda: self.balancer.apply(backends),
            lambda _: {},
            tick_id=tick_id,
            ids=[b.instance_id for b in backends],
            detail={"backends": [b.endpoint for b in backends], "first_apply": pool not in self._applied},
        )
        self._applied.add(pool)
        for intent in earlier:
            reason = "settled: the whole backend list was put in force by a later apply"
            self.store.close_intent(
                intent.id, IntentStatus.RECONCILED, self.clock.now(), result={"reason": reason}
            )
            log.info("intent_settled", pool=pool, intent=intent.id, kind=intent.kind.value, reason=reason)
        return bool(earlier)

    def _last_apply_completed(self, pool: str) -> bool:
        """True when the newest balancer intent of ``pool`` completed ``ok`` (no crash mid-apply)."""
        applies = [i for i in self.store.intents(pool) if i.kind == IntentKind.BALANCER]
        return bool(applies) and applies[-1].status == IntentStatus.OK

    # -------------------------------------------------------------------------------- reconcile
    def reconcile(self, pool: str, instances: Callable[[], Sequence[Instance]]) -> list[Settled]:
        """Settle each open launch, terminate, stop and start of ``pool`` against the inventory."""
        pending = [i for i in self.store.intents(pool, open_only=True) if i.kind != IntentKind.BALANCER]
        if not pending:
            return []
        live = {i.id: i for i in instances() if i.state != CloudState.TERMINATED}
        settled: list[Settled] = []
        for intent in pending:
            try:
                done = self._settle(pool, intent, live)
            except ProviderError as exc:
                # A re-issue that fails must not block every later tick: the intent is closed as
                # failed and the level-triggered tick (a draining node, a recorded start or stop)
                # finishes the move on its own.
                failure = f"{type(exc).__name__}: {exc}"
                reason = f"{intent.kind.value}: re-issue failed ({failure}); left to the tick"
                self.store.close_intent(intent.id, IntentStatus.FAILED, self.clock.now(), error=reason)
                log.error("intent_settle_failed", pool=pool, intent=intent.id, reason=reason)
                settled.append(Settled(intent, reason))
                continue
            self.store.close_intent(
                intent.id,
                IntentStatus.RECONCILED,
                self.clock.now(),
                result={"reason": done.reason, "instances": sorted(done.lifecycles)},
            )
            log.warning(
                "intent_settled", pool=pool, intent=intent.id, kind=intent.kind.value, reason=done.reason
            )
            settled.append(done)
        return settled

    def _settle(self, pool: str, intent: Intent, live: Mapping[str, Instance]) -> Settled:
        if intent.kind == IntentKind.LAUNCH:
            found = sorted(i.id for i in live.values() if i.launch_token == intent.token)
            warm = bool(intent.token and intent.token.endswith(WARM_TOKEN_SUFFIX))
            state = Lifecycle.PREPARING if warm else Lifecycle.LAUNCHING
            reason = f"launch {intent.token}: {len(found)} of {intent.count} found by their launch token"
            short = len(found) < intent.count
            if short:
                reason += "; the next launch re-uses this token so the provider's idempotency covers the rest"
            return Settled(
                intent,
                reason,
                dict.fromkeys(found, state),
                carry_token=intent.token if short else None,
                carried=len(found),
            )
        ids = [i for i in intent.instance_ids if i in live]
        gone = [i for i in intent.instance_ids if i not in live]
        lifecycles: dict[str, Lifecycle] = {}
        words: list[str] = []
        if gone:
            words.append(f"{', '.join(gone)} already gone")
            lifecycles.update(dict.fromkeys(gone, Lifecycle.TERMINATED))
        why = f"re-issued after a restart (intent {intent.id})"
        if intent.kind == IntentKind.TERMINATE and ids:
            self.terminate(pool, ids, tick_id=intent.tick_id, reason=why)
            words.append(f"terminate of {', '.join(ids)} re-issued")
            lifecycles.update(dict.fromkeys(ids, Lifecycle.TERMINATED))
        elif intent.kind == IntentKind.STOP:
            running = [i for i in ids if live[i].state in (CloudState.PENDING, CloudState.RUNNING)]
            if running:
                self.stop(pool, running, tick_id=intent.tick_id, reason=why)
                words.append(f"stop of {', '.join(running)} re-issued")
            if set(ids) - set(running):
                words.append(f"{', '.join(sorted(set(ids) - set(running)))} already stopping or stopped")
        elif intent.kind == IntentKind.START:
            stopped = [i for i in ids if live[i].state == CloudState.STOPPED]
            if stopped:
                self.start(pool, stopped, tick_id=intent.tick_id, reason=why)
                words.append(f"start of {', '.join(stopped)} re-issued")
            if set(ids) - set(stopped):
                words.append(f"{', '.join(sorted(set(ids) - set(stopped)))} already starting or running")
        return Settled(
            intent, f"{intent.kind.value}: " + ("; ".join(words) or "nothing left to do"), lifecycles
        )


class ShadowExecutor:
    """``Executor`` that acts on nothing: each change it is handed becomes a ``shadow`` intent.

    Its results say nothing happened (no instance launched, no outcome per id), so a controller can
    never record a lifecycle that pretends the plan was carried out.
    """

    acts = False

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def _record(
        self,
        pool: str,
        kind: IntentKind,
        *,
        tick_id: int | None,
        ids: Sequence[str] = (),
        token: str | None = None,
        count: int = 0,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        self.store.open_intent(
            pool,
            kind,
            self.clock.now(),
            tick_id=tick_id,
            instance_ids=tuple(ids),
            token=token,
            count=count,
            detail=detail,
            status=IntentStatus.SHADOW,
        )

    def launch(
        self, pool: str, spec: LaunchSpec, count: int, token: str, *, tick_id: int | None
    ) -> LaunchResult:
        """Record the launch; launch nothing."""
        self._record(
            pool,
            IntentKind.LAUNCH,
            tick_id=tick_id,
            token=token,
            count=count,
            detail={"types": list(spec.instance_types)},
        )
        return LaunchResult(instances=(), shortfall="shadow", notes=("shadow mode: not launched",))

    def terminate(
        self, pool: str, ids: Sequence[str], *, tick_id: int | None, reason: str
    ) -> dict[str, TerminateOutcome]:
        """Record the terminate; terminate nothing."""
        self._record(pool, IntentKind.TERMINATE, tick_id=tick_id, ids=ids, detail={"reason": reason})
        return {}

    def stop(
        self, pool: str, ids: Sequence[str], *, tick_id: int | None, reason: str
    ) -> dict[str, StopOutcome]:
        """Record the stop; stop nothing."""
        self._record(pool, IntentKind.STOP, tick_id=tick_id, ids=ids, detail={"reason": reason})
        return {}

    def start(
        self, pool: str, ids: Sequence[str], *, tick_id: int | None, reason: str
    ) -> dict[str, StartOutcome]:
        """Record the start; start nothing."""
        self._record(pool, IntentKind.START, tick_id=tick_id, ids=ids, detail={"reason": reason})
        return {}

    def apply_balancer(
        self, pool: str, backends: Sequence[Backend], *, tick_id: int | None, changed: bool
    ) -> bool:
        """Record a changed backend list; apply nothing (and so never settle an earlier apply)."""
        if changed:
            self._record(
                pool,
                IntentKind.BALANCER,
                tick_id=tick_id,
                ids=[b.instance_id for b in backends],
                detail={"backends": [b.endpoint for b in backends]},
            )
        return False

    def reconcile(self, pool: str, instances: Callable[[], Sequence[Instance]]) -> list[Settled]:
        """Nothing to settle: a shadow executor never leaves an intent open."""
        return []
