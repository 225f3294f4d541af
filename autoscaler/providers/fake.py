"""An in-memory ``Provider`` that records every call, for controller and executor tests.

Shaped after Karpenter's fake cloud provider: calls are recorded (``launch_calls``,
``terminate_calls``, ``stop_calls``, ``start_calls``, ``list_calls``), the next call of a kind can
be made to fail (``next_launch_error`` and friends, one-shot), and ``reset()`` forgets everything.
Tests drive the instances' lifecycle by hand with ``set_state`` and ``set_address``; stock and
quota limits (``unavailable_types``, ``quota``) exercise the launch fallbacks and shortfalls, and
a stopped instance of an unavailable type cannot be started (``StartOutcome.NO_CAPACITY``), as
after an economical-mode stop on ECS.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

from autoscaler.clock import SystemClock
from autoscaler.domain import (
    MANAGED_BY_VALUE,
    TAG_LAUNCH_TOKEN,
    TAG_MANAGED_BY,
    TAG_MODEL_VERSION,
    TAG_POOL,
    CloudState,
    Instance,
    LaunchResult,
    LaunchSpec,
    StartOutcome,
    StopOutcome,
    TerminateOutcome,
)
from autoscaler.errors import InstanceNotFound, InsufficientCapacity, ProviderError, QuotaExceeded
from autoscaler.protocols import Clock


@dataclass(frozen=True)
class LaunchCall:
    """The arguments of one ``launch`` call."""

    spec: LaunchSpec
    count: int
    client_token: str


class FakeProvider:
    """A ``Provider`` whose machines live in a dict.

    ``launch_state`` is the state new instances start in (PENDING, as on a cloud); ``terminate``
    moves instances to ``terminate_state`` (TERMINATED: gone from the list at once; STOPPING to
    keep them listed until a test calls ``set_state(id, CloudState.TERMINATED)``). ``stop`` moves
    instances to ``stop_state`` (STOPPED at once; STOPPING to let a test finish it by hand) and
    ``start`` moves stopped ones back to ``launch_state``.
    """

    name = "fake"

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        launch_state: CloudState = CloudState.PENDING,
        terminate_state: CloudState = CloudState.TERMINATED,
        stop_state: CloudState = CloudState.STOPPED,
        quota: int | None = None,
        unavailable_types: Sequence[str] = (),
        zone: str = "fake-zone-a",
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self.launch_state = launch_state
        self.terminate_state = terminate_state
        self.stop_state = stop_state
        #: Most non-terminated instances across all pools; None means no limit.
        self.quota = quota
        #: Instance types with no stock: ``launch`` skips them as a cloud's InsufficientCapacity would.
        self.unavailable_types: set[str] = set(unavailable_types)
        #: How many more stopped instances ``start`` can bring back (None: no limit), as the stock an
        #: economical-mode stop gave back may be taken by someone else meanwhile.
        self.start_stock: int | None = None
        self.zone = zone
        self.reset()

    def reset(self) -> None:
        """Forget every instance, recorded call and pending injected error."""
        with self._lock:
            self._instances: dict[str, Instance] = {}
            #: Ids ``terminate`` was called for: neither stopped nor started again, like a shutting-down VM.
            self._terminating: set[str] = set()
            self._serial = 0
            self.launch_calls: list[LaunchCall] = []
            self.terminate_calls: list[tuple[str, ...]] = []
            self.stop_calls: list[tuple[str, ...]] = []
            self.start_calls: list[tuple[str, ...]] = []
            self.list_calls: list[str] = []
            self.next_launch_error: Exception | None = None
            self.next_terminate_error: Exception | None = None
            self.next_stop_error: Exception | None = None
            self.next_start_error: Exception | None = None
            self.next_list_error: Exception | None = None

    # ----------------------------------------------------------------------------- Provider protocol
    def list_instances(self, pool: str) -> list[Instance]:
        """Non-terminated instances of ``pool``, in launch order."""
        with self._lock:
            self.list_calls.append(pool)
            self._raise_injected("next_list_error")
            return [i for i in self._instances.values()
                    if i.pool == pool and i.state != CloudState.TERMINATED]

    def launch(self, spec: LaunchSpec, count: int, client_token: str) -> LaunchResult:
        """Top the instances of ``client_token`` up to ``count``, honouring stock and quota."""
        if count < 0:
            raise ValueError("count cannot be negative")
        if not spec.instance_types:
            raise ValueError("spec.instance_types is empty")
        with self._lock:
            self.launch_calls.append(LaunchCall(spec=spec, count=count, client_token=client_token))
            self._raise_injected("next_launch_error")
            # Terminated instances do not count: like the local provider, a token's crashed
            # instance is replaced on retry rather than reported as a live one.
            have = [i for i in self._instances.values() if i.pool == spec.pool
                    and i.launch_token == client_token and i.state != CloudState.TERMINATED]
            available = [t for t in spec.instance_types if t not in self.unavailable_types]
            notes = [f"{t}: no capacity in {self.zone}" for t in spec.instance_types if t not in available]
            shortfall: str | None = None
            while len(have) < count:
                if not available:
                    shortfall = "capacity"
                    break
                if self.quota is not None and self._live_count() >= self.quota:
                    shortfall = "quota"
                    notes.append(f"quota of {self.quota} instances reached")
                    break
                have.append(self._create(spec, available[0], client_token))
            if not have and shortfall == "capacity":
                raise InsufficientCapacity(
                    "; ".join(notes), instance_type=spec.instance_types[-1], zone=self.zone
                )
            if not have and shortfall == "quota":
                raise QuotaExceeded(notes[-1])
            return LaunchResult(instances=tuple(have), shortfall=shortfall, notes=tuple(notes))

    def terminate(self, instance_ids: Sequence[str]) -> dict[str, TerminateOutcome]:
        """Move each live id to ``terminate_state``; unknown or terminated ids are ALREADY_GONE."""
        with self._lock:
            self.terminate_calls.append(tuple(instance_ids))
            self._raise_injected("next_terminate_error")
            outcomes: dict[str, TerminateOutcome] = {}
            for iid in instance_ids:
                inst = self._instances.get(iid)
                if inst is None or inst.state == CloudState.TERMINATED:
                    outcomes[iid] = TerminateOutcome.ALREADY_GONE
                else:
                    self._instances[iid] = replace(inst, state=self.terminate_state)
                    self._terminating.add(iid)
                    outcomes[iid] = TerminateOutcome.TERMINATING
            return outcomes

    def stop(self, instance_ids: Sequence[str]) -> dict[str, StopOutcome]:
        """Move pending or running ids to ``stop_state``; stopped ones are ALREADY_STOPPED, gone ones
        ALREADY_GONE."""
        with self._lock:
            self.stop_calls.append(tuple(instance_ids))
            self._raise_injected("next_stop_error")
            outcomes: dict[str, StopOutcome] = {}
            for iid in instance_ids:
                inst = self._instances.get(iid)
                if inst is None or inst.state == CloudState.TERMINATED or iid in self._terminating:
                    outcomes[iid] = StopOutcome.ALREADY_GONE
                elif inst.state == CloudState.STOPPED:
                    outcomes[iid] = StopOutcome.ALREADY_STOPPED
                else:
                    if inst.state != CloudState.STOPPING:
                        self._instances[iid] = replace(inst, state=self.stop_state)
                    outcomes[iid] = StopOutcome.STOPPING
            return outcomes

    def start(self, instance_ids: Sequence[str]) -> dict[str, StartOutcome]:
        """Move stopped ids back to ``launch_state`` unless their type is in ``unavailable_types``
        or ``start_stock`` is used up.

        Pending or running ids are ALREADY_RUNNING, gone ones ALREADY_GONE; a STOPPING one raises
        ``ProviderError`` (not stopped yet). No stock for every id to start raises ``InsufficientCapacity``.
        """
        with self._lock:
            self.start_calls.append(tuple(instance_ids))
            self._raise_injected("next_start_error")
            outcomes: dict[str, StartOutcome] = {}
            for iid in instance_ids:
                inst = self._instances.get(iid)
                if inst is None or inst.state == CloudState.TERMINATED or iid in self._terminating:
                    outcomes[iid] = StartOutcome.ALREADY_GONE
                elif inst.state in (CloudState.PENDING, CloudState.RUNNING):
                    outcomes[iid] = StartOutcome.ALREADY_RUNNING
                elif inst.state == CloudState.STOPPING:
                    raise ProviderError(f"fake instance {iid} is still stopping; start it once stopped")
                elif inst.instance_type in self.unavailable_types or self.start_stock == 0:
                    outcomes[iid] = StartOutcome.NO_CAPACITY
                else:
                    self._instances[iid] = replace(inst, state=self.launch_state)
                    outcomes[iid] = StartOutcome.STARTING
                    if self.start_stock is not None:
                        self.start_stock -= 1
            no_stock = [i for i, o in outcomes.items() if o == StartOutcome.NO_CAPACITY]
            if no_stock and not any(o == StartOutcome.STARTING for o in outcomes.values()):
                raise InsufficientCapacity(f"no stock to start {', '.join(no_stock)} in {self.zone}",
                                           instance_type=self._instances[no_stock[0]].instance_type,
                                           zone=self.zone)
            return outcomes

    # ------------------------------------------------------------------------------ test controls
    @property
    def instances(self) -> list[Instance]:
        """Every instance ever launched or added, terminated ones included."""
        with self._lock:
            return list(self._instances.values())

    def get(self, instance_id: str) -> Instance:
        """One instance by id; ``InstanceNotFound`` if it never existed."""
        with self._lock:
            return self._get(instance_id)

    def set_state(self, instance_id: str, state: CloudState) -> Instance:
        """Move an instance to ``state`` (e.g. PENDING → RUNNING, or a crash to TERMINATED)."""
        with self._lock:
            inst = replace(self._get(instance_id), state=state)
            self._instances[instance_id] = inst
            return inst

    def set_address(self, instance_id: str, address: str | None, port: int | None = None) -> Instance:
        """Point an instance at ``address[:port]`` (e.g. a real node started by the test)."""
        with self._lock:
            inst = self._get(instance_id)
            inst = replace(inst, address=address, port=inst.port if port is None else port)
            self._instances[instance_id] = inst
            return inst

    def add_instance(self, instance: Instance) -> None:
        """Put an existing instance in the fleet (one launched before a restart, or by hand)."""
        with self._lock:
            self._instances[instance.id] = instance

    def forget_terminated(self) -> int:
        """Drop terminated instances from the fleet, as a cloud stops listing them after a while
        (EC2: about an hour); return how many. Long runs call it so the fake does not grow forever."""
        with self._lock:
            gone = [iid for iid, inst in self._instances.items() if inst.state == CloudState.TERMINATED]
            for iid in gone:
                del self._instances[iid]
                self._terminating.discard(iid)
            return len(gone)

    # ---------------------------------------------------------------------------------- internals
    def _raise_injected(self, attribute: str) -> None:
        error: Exception | None = getattr(self, attribute)
        if error is not None:
            setattr(self, attribute, None)  # one-shot, like Karpenter's NextCreateErr
            raise error

    def _get(self, instance_id: str) -> Instance:
        try:
            return self._instances[instance_id]
        except KeyError:
            raise InstanceNotFound(f"no fake instance {instance_id!r}") from None

    def _live_count(self) -> int:
        return sum(1 for i in self._instances.values() if i.state != CloudState.TERMINATED)

    def _create(self, spec: LaunchSpec, instance_type: str, client_token: str) -> Instance:
        self._serial += 1
        serial = self._serial
        tags = {
            **spec.tags,
            TAG_POOL: spec.pool,
            TAG_MODEL_VERSION: spec.model_version,
            TAG_LAUNCH_TOKEN: client_token,
            TAG_MANAGED_BY: MANAGED_BY_VALUE,
        }
        inst = Instance(
            id=f"fake-{serial:05d}",
            pool=spec.pool,
            instance_type=instance_type,
            model_version=spec.model_version,
            launch_token=client_token,
            launched_at=self._clock.now(),
            state=self.launch_state,
            address=f"10.0.{serial // 250}.{serial % 250 + 1}",
            port=spec.port,
            zone=self.zone,
            image=spec.image,
            tags=tags,
        )
        self._instances[inst.id] = inst
        return inst
