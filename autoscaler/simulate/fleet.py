"""The simulated fleet: each tick, the live controller's decision engine decides and the fleet obeys.

The model, in the order a tick applies it (tick ``k`` at ``t = k × tick_s`` seconds):

1. **Lifecycle.** A launched node boots for ``boot_s`` seconds (``BOOTING``), then serves
   (``SERVING``). A drained node (``DRAINING``) stops taking streams at once and leaves when its
   last stream ends or after the policy's drain timeout, whichever is first; a victim that is still
   booting is cancelled at once. Billing runs from launch to termination, boot included.
2. **Observe.** Demand is exogenous: ``demand(t)`` streams want service. Draining nodes keep the
   streams they had; serving nodes take the rest up to ``C`` each; the excess waits (queued).
   Each check's sample is computed from its ``signal``: ``streams_per_node`` = (served on serving
   nodes + queued) / serving nodes; ``active_streams`` = streams in service; ``queued_streams``;
   ``gpu_memory_utilization`` = (model + ceil(streams per serving node) × stream) / GPU memory,
   the busiest node under least_conn; ``p95_latency_seconds`` = the 95th percentile of service
   time plus the time the queue needs to drain through the serving slots
   (queued / (serving × C) × mean service). A check without a signal is ``Sample.missing``.
3. **Decide** with ``autoscaler.policy.engine.decide`` (the same function the controller calls),
   keeping ``EngineMemory`` between ticks. Nodes are passed as the controller would see them:
   serving nodes with their even share of streams (least_conn), booting and draining nodes.
4. **Act** on ``decision.launch`` (new booting nodes) and ``decision.victims`` (drain or cancel), never
   on ``desired − current``. A drained node holds ``floor(share)`` streams (the least-loaded one),
   whose remaining times are drawn as for streams found in progress (``ResidualSampler``).

Per-second ready capacity is rebuilt afterwards from the nodes' intervals (boots end between ticks),
so violations and unmet stream-seconds are exact to the second: capacity(s) = C × serving(s) +
streams still finishing on draining nodes.

**Warm pool** (``policy.warm_pool``): the window opens with the pool's warm instances prepared and
stopped. ``decision.start`` starts them: each serves ``warm_start_s`` later, except that a share
``start_failure_rate`` of starts fails (no stock after an economical-mode stop) and is replaced by a
cold launch in the same tick. ``decision.prepare`` launches instances that boot cold (billed as
running) and are then stopped (billed ``stopped_price_per_hour``); with ``state: running`` they stay
up, billed as running, and serve as soon as they are started. ``decision.discard`` terminates warm
ones. A scale-in victim is returned to the pool when its drain ends, if the policy reuses nodes and
the pool was below ``decision.warm_target`` when it was chosen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from autoscaler.domain import Lifecycle, Node, Reason, Sample
from autoscaler.policy.engine import EngineMemory, decide
from autoscaler.policy.forecast import Forecast, seasonal_forecast
from autoscaler.policy.model import LocalProviderConfig, PoolPolicy
from autoscaler.simulate.demand import Demand
from autoscaler.simulate.scenario import Scenario
from autoscaler.simulate.workload import ServiceLaw

#: The boot delay when neither the scenario nor the policy says (an AMI with the model baked in).
DEFAULT_BOOT_S = 180
#: A stopped instance's start to serving when the scenario does not say (model on its own disk).
DEFAULT_WARM_START_S = 30
#: What a stopped instance bills per hour when the scenario does not say: ~200 GB of block storage.
DEFAULT_STOPPED_PRICE = 0.02
#: Signals the simulator can compute.
SIMULATED_SIGNALS = frozenset(
    {"streams_per_node", "active_streams", "gpu_memory_utilization", "p95_latency_seconds", "queued_streams",
     "concurrent_streams"}
)
#: Ticks between progress callbacks.
_PROGRESS_EVERY = 2000


@dataclass(frozen=True)
class FleetModel:
    """What one simulated node is: its capacity, boot delay, price, drain limit and GPU memory."""

    instance_type: str
    streams_per_node: int
    boot_s: int
    price_per_hour: float
    drain_timeout_s: int | None
    gpu_memory_mib: int
    model_memory_mib: int
    stream_memory_mib: int
    warm_start_s: int = DEFAULT_WARM_START_S
    stopped_price_per_hour: float = DEFAULT_STOPPED_PRICE
    start_failure_rate: float = 0.0
    #: ISO 4217 code of the prices (the scenario policy's ``launch.currency``).
    currency: str = "USD"


def resolve_fleet(scenario: Scenario) -> FleetModel:
    """The scenario's fleet: its overrides, else the scenario policy's first instance type and provider.

    ``drain_timeout_s`` is None unless the scenario overrides it (each policy's own drain.timeout
    applies then).
    """
    fleet = scenario.spec.fleet
    policy = scenario.policy
    first = policy.launch.instance_types[0]
    local = policy.provider if isinstance(policy.provider, LocalProviderConfig) else LocalProviderConfig()
    return FleetModel(
        instance_type=first.name,
        streams_per_node=fleet.streams_per_node or first.streams,
        boot_s=round(fleet.boot_seconds) if fleet.boot_seconds is not None else DEFAULT_BOOT_S,
        price_per_hour=fleet.price_per_hour if fleet.price_per_hour is not None else first.price_per_hour,
        drain_timeout_s=round(fleet.drain_seconds) if fleet.drain_seconds is not None else None,
        gpu_memory_mib=fleet.gpu_memory_mib or local.gpu_memory_mib,
        model_memory_mib=fleet.model_memory_mib or local.model_memory_mib,
        stream_memory_mib=fleet.stream_memory_mib or local.stream_memory_mib,
        warm_start_s=round(fleet.warm_start_seconds)
        if fleet.warm_start_seconds is not None
        else DEFAULT_WARM_START_S,
        stopped_price_per_hour=fleet.stopped_price_per_hour
        if fleet.stopped_price_per_hour is not None
        else DEFAULT_STOPPED_PRICE,
        start_failure_rate=fleet.start_failure_rate,
        currency=policy.launch.currency,
    )


def with_warm_pool(policy: PoolPolicy, size: int | None) -> PoolPolicy:
    """``policy`` with a warm pool of ``size`` (its own settings kept), or none when ``size`` is None."""
    data = policy.model_dump()
    if size is None:
        data["warm_pool"] = None
    else:
        warm = dict(data.get("warm_pool") or {})
        warm["size"] = size
        if warm.get("max_prepared") is not None and warm["max_prepared"] < size:
            warm["max_prepared"] = None
        data["warm_pool"] = warm
    return PoolPolicy.model_validate(data)


def fit_policy(
    policy: PoolPolicy, fleet: FleetModel, *, min_nodes: int | None, max_nodes: int | None
) -> PoolPolicy:
    """``policy`` with the fleet's node (first instance type's streams and price) and the pool bounds.

    The simulated fleet launches only the first instance type; schedules whose floor or ceiling no
    longer fits the new bounds are clamped into them. Re-validated, so the result is a valid policy.
    """
    data = policy.model_dump()
    types = data["launch"]["instance_types"]
    types[0] = types[0] | {
        "name": fleet.instance_type,
        "streams": fleet.streams_per_node,
        "price_per_hour": fleet.price_per_hour,
    }
    data["launch"]["instance_types"] = types[:1]
    scaling = data["scaling"]
    if min_nodes is not None:
        scaling["min_nodes"] = min_nodes
    if max_nodes is not None:
        scaling["max_nodes"] = max_nodes
    scaling["min_nodes"] = min(scaling["min_nodes"], scaling["max_nodes"])
    for schedule in scaling["schedules"]:
        if schedule.get("min_nodes") is not None:
            schedule["min_nodes"] = min(schedule["min_nodes"], scaling["max_nodes"])
    return PoolPolicy.model_validate(data)


@dataclass
class _SimNode:
    """One simulated node's history (seconds from the window's start)."""

    id: str
    launched: int
    ready_at: int
    state: Lifecycle
    launched_at: datetime
    drained: int | None = None
    left: int | None = None
    stream_ends: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    view: Node | None = None
    #: Started from the warm pool (seen as STARTING while it boots).
    warm_start: bool = False
    #: Goes back into the warm pool (stopped) when its drain ends, instead of terminating.
    reuse: bool = False


@dataclass
class _Warm:
    """A warm-pool instance: preparing (running) until ``ready_at``, then stopped."""

    id: str
    ready_at: int
    launched_at: datetime
    prep_from: int | None = None
    #: The engine's view of it, kept while its lifecycle (preparing, then stopped) does not change.
    view: Node | None = None


@dataclass(frozen=True)
class Replay:
    """What one policy did on one demand: per-tick states, per-second capacity, and the totals."""

    label: str
    policy: PoolPolicy
    fleet: FleetModel
    tick_s: int
    tick_times: NDArray[np.int64]
    ready: NDArray[np.int64]
    booting: NDArray[np.int64]
    draining: NDArray[np.int64]
    desired: NDArray[np.int64]
    tick_capacity: NDArray[np.int64]
    forecast_floor: NDArray[np.int64]
    capacity: NDArray[np.int64]
    unmet: NDArray[np.int64]
    alive: NDArray[np.int64]
    node_seconds: int
    launches: int
    terminations: int
    cut_streams: int
    notes: tuple[str, ...]
    #: Streams cut at the drain timeout, per tick of the drain's start (sums to ``cut_streams``).
    tick_cuts: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: Ticks on which the forecast floor raised the count (``forecast_and_scale``), and on which its
    #: floor was above what the checks wanted (in either mode: what ``forecast_only`` would have done).
    forecast_raised: int = 0
    forecast_above: int = 0
    #: Billed stopped (warm-pool disk only) and warm-pool figures.
    stopped_seconds: int = 0
    warm_starts: int = 0
    failed_starts: int = 0
    prepared: int = 0

    @property
    def violation_seconds(self) -> int:
        """Seconds in which demand exceeded ready capacity."""
        return int(np.count_nonzero(self.unmet))

    @property
    def unmet_stream_seconds(self) -> int:
        """Stream-seconds of waiting: the sum over seconds of demand above capacity."""
        return int(self.unmet.sum())

    @property
    def peak_nodes(self) -> int:
        """Most nodes billed at once (serving, booting and draining)."""
        return int(self.alive.max()) if len(self.alive) else 0


def _coverage(starts: list[int], ends: list[int], length: int) -> NDArray[np.int64]:
    """How many ``[start, end)`` intervals cover each second of ``[0, length)``."""
    s = np.clip(np.array(starts, dtype=np.int64), 0, length)
    e = np.clip(np.array(ends, dtype=np.int64), 0, length)
    diff = (
        np.bincount(s, minlength=length + 1)[: length + 1]
        - np.bincount(e, minlength=length + 1)[: length + 1]
    )
    out: NDArray[np.int64] = np.cumsum(diff[:length])
    return out


def tick_max(values: NDArray[np.int64], tick_s: int) -> NDArray[np.int64]:
    """The largest value inside each tick (the last tick may be shorter)."""
    ticks = -(-len(values) // tick_s)
    padded = np.zeros(ticks * tick_s, dtype=np.int64)
    padded[: len(values)] = values
    out: NDArray[np.int64] = padded.reshape(ticks, tick_s).max(axis=1)
    return out


class _Forecaster:
    """The dry-run's stand-in for the live forecast refresh: history is only what was replayed so far.

    Each tick it records the forecast check's sample (what the live controller's Prometheus would
    hold); every ``forecast.refresh`` it fits ``seasonal_forecast`` on the samples taken *before*
    ``now``. It never sees the demand array, so it cannot read ahead.
    """

    def __init__(self, policy: PoolPolicy, ticks: int) -> None:
        self.config = policy.scaling.forecast
        size = ticks if self.config is not None else 0
        self.times = np.zeros(size, dtype=np.float64)
        self.values = np.zeros(size, dtype=np.float64)
        self.count = 0
        self.current: Forecast | None = None
        self.next_refresh: datetime | None = None

    def forecast(self, now: datetime, samples: dict[str, Sample]) -> Forecast | None:
        """The forecast in force at ``now`` (refreshed from the past only), then record ``now``'s sample."""
        config = self.config
        if config is None:
            return None
        if self.next_refresh is None or now >= self.next_refresh:
            n = self.count
            self.current = seasonal_forecast(self.times[:n], self.values[:n], now=now, step=config.step,
                                             horizon=config.horizon, history=config.history,
                                             min_history=config.min_history, aggregate=config.aggregate)
            self.next_refresh = now + config.refresh
        sample = samples.get(config.check)
        if sample is not None and sample.value is not None and math.isfinite(sample.value):
            self.times[self.count] = now.timestamp()
            self.values[self.count] = sample.value
            self.count += 1
        return self.current


def _forecast_effect(reasons: tuple[Reason, ...]) -> tuple[bool, bool]:
    """Whether a decision's forecast step raised the count, and whether its floor was above it."""
    for reason in reasons:
        if reason.kind == "forecast":
            detail = reason.detail
            before, after, floor = detail.get("before"), detail.get("after"), detail.get("floor")
            if isinstance(before, int) and isinstance(after, int) and isinstance(floor, int):
                return after > before, floor > before
    return False, False


def _forecast_floor(reasons: tuple[Reason, ...]) -> int:
    """The forecast floor a decision recorded (applied or not), or -1 when it had none."""
    for reason in reasons:
        if reason.kind == "forecast":
            floor = reason.detail.get("floor")
            return int(floor) if isinstance(floor, int) else -1
    return -1


# Lifecycle members as module constants for the replay's per-tick loops: reading a member through
# its enum class costs several times a plain global's lookup, a dozen times per node and tick.
_SERVING, _BOOTING, _STARTING = Lifecycle.SERVING, Lifecycle.BOOTING, Lifecycle.STARTING
_STOPPED, _PREPARING = Lifecycle.STOPPED, Lifecycle.PREPARING


def _serving_view(fields: dict[str, Any], node_id: str, launched_at: datetime) -> Node:
    """``Node(**fields, id=node_id, launched_at=launched_at)`` without the frozen dataclass's
    ``__init__`` (one ``object.__setattr__`` per field): the same object, built several times faster,
    for the replay's hottest loop. ``fields`` holds every other field of ``Node``."""
    node = object.__new__(Node)
    node.__dict__.update(fields)
    node.__dict__["id"] = node_id
    node.__dict__["launched_at"] = launched_at
    return node


def _sample(value: float, at: datetime) -> Sample:
    """``Sample(value, at)`` without the frozen dataclass's ``__init__``, as ``_serving_view``."""
    sample = object.__new__(Sample)
    sample.__dict__.update(value=value, observed_at=at, error=None)
    return sample


def replay(
    label: str,
    policy: PoolPolicy,
    demand: Demand,
    fleet: FleetModel,
    law: ServiceLaw,
    *,
    tick_s: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> Replay:
    """Replay ``demand`` against a fleet that ``policy`` scales through ``decide``; see the module docstring.

    Deterministic for a given ``seed``. ``progress(done, total)`` is called every few thousand ticks.
    """
    streams = demand.streams
    length = len(streams)
    ticks = -(-length // tick_s)
    cap_per_node = fleet.streams_per_node
    scaling = policy.scaling
    boot = fleet.boot_s
    drain_limit = fleet.drain_timeout_s
    if drain_limit is None:
        drain_limit = int(policy.drain.timeout.total_seconds())
    rng = np.random.default_rng([seed, 2])
    residuals = law.residual_sampler(rng)
    p95_service = law.quantile_s(0.95)
    mean_service = law.mean_s()
    gpu = fleet.gpu_memory_mib
    model_mib = fleet.model_memory_mib
    stream_mib = fleet.stream_memory_mib
    version = policy.launch.model_version
    image = policy.launch.image.id
    itype = fleet.instance_type

    checks: list[tuple[str, str | None]] = [(c.name, c.signal) for c in scaling.checks]
    notes = [
        f"check {name!r} has {'no signal' if sig is None else f'signal {sig!r}, which is not simulated'}:"
        " it reads as no data (so it votes hold and blocks scale-in)"
        for name, sig in checks
        if sig not in SIMULATED_SIGNALS
    ]
    not_simulated = Sample.missing("not simulated")
    no_serving = Sample.missing("no serving node")

    start = demand.replay_at
    initial = min(max(scaling.min_nodes, -(-int(streams[0]) // cap_per_node)), scaling.max_nodes)
    nodes: list[_SimNode] = []
    finished: list[_SimNode] = []
    counter = 0

    def new_node(t: int, warm: bool) -> _SimNode:
        nonlocal counter
        counter += 1
        launched = t - boot if warm else t
        state = Lifecycle.SERVING if warm or boot == 0 else Lifecycle.BOOTING
        return _SimNode(
            id=f"sim-{counter:05d}",
            launched=launched,
            ready_at=launched + boot,
            state=state,
            launched_at=start + timedelta(seconds=launched),
        )

    for _ in range(initial):
        nodes.append(new_node(0, warm=True))

    warm_cfg = policy.warm_pool
    # ``state: running`` keeps warm instances up: they bill as running and serve as soon as started.
    keep_running = warm_cfg is not None and warm_cfg.state == "running"
    warm_s = 0 if keep_running else fleet.warm_start_s
    pool: list[_Warm] = []
    # Preparation is billed as running; stopped spells at the stopped price.
    prep_from: list[int] = []
    prep_to: list[int] = []
    stopped_seconds = 0
    warm_starts = failed_starts = prepared = 0
    start_rng = np.random.default_rng([seed, 3])
    if warm_cfg is not None:
        for _ in range(warm_cfg.target(initial)):
            counter += 1
            pool.append(
                _Warm(id=f"sim-{counter:05d}", ready_at=0, launched_at=start - timedelta(seconds=boot))
            )

    def leave_pool(w: _Warm, t: int) -> None:
        nonlocal stopped_seconds
        if w.prep_from is not None:
            prep_from.append(w.prep_from)
            prep_to.append(min(t, w.ready_at))
        if t > w.ready_at:
            if keep_running:
                prep_from.append(max(w.ready_at, 0))
                prep_to.append(t)
            else:
                stopped_seconds += t - max(w.ready_at, 0)

    def retire(node: _SimNode, at: int) -> None:
        finished.append(node)
        if node.reuse:
            pool.append(_Warm(id=node.id, ready_at=at, launched_at=node.launched_at))

    # Every field of Node in its order (id and launched_at are set per node).
    serving_template: dict[str, Any] = {
        f.name: None if f.default is MISSING else f.default for f in dataclass_fields(Node)
    } | {
        "lifecycle": Lifecycle.SERVING,
        "instance_type": itype,
        "capacity_streams": cap_per_node,
        "model_version": version,
        "image": image,
    }
    ready_col = np.zeros(ticks, dtype=np.int64)
    booting_col = np.zeros(ticks, dtype=np.int64)
    draining_col = np.zeros(ticks, dtype=np.int64)
    desired_col = np.zeros(ticks, dtype=np.int64)
    capacity_col = np.zeros(ticks, dtype=np.int64)
    cut_col = np.zeros(ticks, dtype=np.int64)
    memory = EngineMemory()
    forecaster = _Forecaster(policy, ticks)
    forecast_col = np.full(ticks, -1, dtype=np.int64)
    forecast_raised = forecast_above = 0
    launches = terminations = cut = 0
    tick_times = np.arange(ticks, dtype=np.int64) * tick_s
    loads = streams[tick_times].tolist()
    one_tick = timedelta(seconds=tick_s)
    now = start

    for k in range(ticks):
        t = k * tick_s
        # 1. Lifecycle: boots that finished, drains that emptied.
        serving: list[_SimNode] = []
        booting: list[_SimNode] = []
        draining: list[_SimNode] = []
        drain_streams = 0
        for node in nodes:
            if node.state is _BOOTING and node.ready_at <= t:
                node.state = _SERVING
                node.view = None
            if node.state is _SERVING:
                serving.append(node)
            elif node.state is _BOOTING:
                booting.append(node)
            else:
                assert node.left is not None
                if node.left <= t:
                    retire(node, node.left)
                    continue
                draining.append(node)
                drain_streams += int(np.count_nonzero(node.stream_ends > t))
        if len(serving) + len(booting) + len(draining) != len(nodes):
            nodes = serving + booting + draining

        # 2. Observe.
        ready = len(serving)
        load = loads[k]
        capacity = ready * cap_per_node + drain_streams
        queued = max(0, load - capacity)
        on_serving = max(0, load - drain_streams) - queued
        samples: dict[str, Sample] = {}
        for name, signal in checks:
            if signal is None or signal not in SIMULATED_SIGNALS:
                samples[name] = not_simulated
            elif signal == "active_streams":
                samples[name] = _sample(float(load - queued), now)
            elif signal == "queued_streams":
                samples[name] = _sample(float(queued), now)
            elif signal == "concurrent_streams":
                samples[name] = _sample(float(load), now)
            elif ready == 0:
                samples[name] = no_serving
            elif signal == "streams_per_node":
                samples[name] = _sample((on_serving + queued) / ready, now)
            elif signal == "gpu_memory_utilization":
                busiest = min(cap_per_node, -(-on_serving // ready))
                samples[name] = _sample((model_mib + busiest * stream_mib) / gpu, now)
            else:  # p95_latency_seconds
                wait = queued / (ready * cap_per_node) * mean_service
                samples[name] = _sample(p95_service + wait, now)

        # 3. Decide, with the nodes as the controller would see them.
        share = on_serving / ready if ready else 0.0
        views: list[Node] = []
        # Serving nodes are seen with this tick's share of the load: a new view each tick, built
        # from the node's own fields (see _serving_view: the frozen dataclass's __init__ was a good
        # part of a replay's time).
        serving_fields = {**serving_template, "active_streams": share}
        for node in nodes:
            if node.state is _SERVING:
                views.append(_serving_view(serving_fields, node.id, node.launched_at))
            else:
                seen = (
                    _STARTING if node.warm_start and node.state is _BOOTING else node.state
                )
                if node.view is None or node.view.lifecycle is not seen:
                    node.view = Node(
                        id=node.id,
                        lifecycle=seen,
                        instance_type=itype,
                        capacity_streams=cap_per_node,
                        model_version=version,
                        launched_at=node.launched_at,
                        active_streams=None,
                        image=image,
                    )
                views.append(node.view)
        for w in pool:
            lifecycle = _STOPPED if w.ready_at <= t else _PREPARING
            if w.view is None or w.view.lifecycle is not lifecycle:
                w.view = Node(
                    id=w.id,
                    lifecycle=lifecycle,
                    instance_type=itype,
                    capacity_streams=cap_per_node,
                    model_version=version,
                    launched_at=w.launched_at,
                    image=image,
                )
            views.append(w.view)
        forecast = forecaster.forecast(now, samples)
        evaluation = decide(policy, samples, views, memory, now, forecast)
        memory = evaluation.memory
        decision = evaluation.decision
        if forecast is not None:
            forecast_col[k] = _forecast_floor(decision.reasons)
            raised, above = _forecast_effect(decision.reasons)
            forecast_raised += raised
            forecast_above += above

        # 4. Act on the moves: warm starts first, cold launches for the rest (and failed starts).
        cold = decision.launch
        if decision.discard:
            gone = set(decision.discard)
            for w in pool:
                if w.id in gone:
                    leave_pool(w, t)
            pool = [w for w in pool if w.id not in gone]
        if decision.start:
            wanted = set(decision.start)
            for w in [w for w in pool if w.id in wanted]:
                if fleet.start_failure_rate and start_rng.random() < fleet.start_failure_rate:
                    failed_starts += 1
                    cold += 1
                    continue
                pool.remove(w)
                leave_pool(w, t)
                nodes.append(
                    _SimNode(
                        id=w.id,
                        launched=t,
                        ready_at=t + warm_s,
                        state=Lifecycle.SERVING if warm_s == 0 else Lifecycle.BOOTING,
                        launched_at=start + timedelta(seconds=t),
                        warm_start=True,
                    )
                )
                warm_starts += 1
        for _ in range(cold):
            nodes.append(new_node(t, warm=False))
            launches += 1
        if decision.victims:
            victims = set(decision.victims)
            reusing = warm_cfg is not None and warm_cfg.reuse_on_scale_in
            pending = sum(1 for n in nodes if n.reuse and n.state is Lifecycle.DRAINING)
            slots = max(0, decision.warm_target - len(pool) - pending) if reusing else 0
            for node in nodes:
                if node.id not in victims:
                    continue
                terminations += 1
                if slots and (node.state is Lifecycle.SERVING or node.warm_start):
                    node.reuse = True
                    slots -= 1
                    terminations -= 1  # stopped into the pool, not terminated
                if node.state is Lifecycle.BOOTING:
                    node.left = t
                    node.state = Lifecycle.TERMINATED
                    retire(node, t)
                    continue
                held = math.floor(share + 1e-9)
                left = residuals.draw(held)
                lost = int(np.count_nonzero(left > drain_limit))
                cut += lost
                cut_col[k] += lost
                node.stream_ends = t + np.minimum(left, drain_limit)
                node.drained = t
                node.left = int(node.stream_ends.max()) if held else t
                node.state = Lifecycle.DRAINING
                node.view = None
            nodes = [n for n in nodes if n.state is not Lifecycle.TERMINATED]
            for node in nodes:
                if node.state is Lifecycle.DRAINING and node.left is not None and node.left <= t:
                    node.state = Lifecycle.TERMINATED
                    retire(node, node.left)
            nodes = [n for n in nodes if n.state is not Lifecycle.TERMINATED]
        for _ in range(decision.prepare):
            counter += 1
            pool.append(
                _Warm(
                    id=f"sim-{counter:05d}",
                    ready_at=t + boot,
                    launched_at=start + timedelta(seconds=t),
                    prep_from=t,
                )
            )
            prepared += 1

        n_ready = n_boot = n_drain = 0
        drain_now = 0
        for node in nodes:
            if node.state is _SERVING:
                n_ready += 1
            elif node.state is _BOOTING:
                n_boot += 1
            else:
                n_drain += 1
                drain_now += int(np.count_nonzero(node.stream_ends > t))
        ready_col[k] = n_ready
        booting_col[k] = n_boot
        draining_col[k] = n_drain
        desired_col[k] = decision.desired
        capacity_col[k] = n_ready * cap_per_node + drain_now
        now += one_tick
        if progress is not None and (k + 1) % _PROGRESS_EVERY == 0:
            progress(k + 1, ticks)
    if progress is not None:
        progress(ticks, ticks)

    for w in pool:
        leave_pool(w, length)
    everyone = finished + nodes
    alive_from = [max(n.launched, 0) for n in everyone] + prep_from
    alive_to = [n.left if n.left is not None else length for n in everyone] + prep_to
    ready_from = [max(n.ready_at, 0) for n in everyone]
    ready_to = [
        n.drained if n.drained is not None else (n.left if n.left is not None else length) for n in everyone
    ]
    ready_to = [max(a, b) for a, b in zip(ready_from, ready_to, strict=True)]
    stream_from: list[int] = []
    stream_to: list[int] = []
    for n in everyone:
        if n.drained is not None and n.stream_ends.size:
            stream_from.extend([n.drained] * int(n.stream_ends.size))
            stream_to.extend(n.stream_ends.tolist())
    alive = _coverage(alive_from, alive_to, length)
    capacity_s = _coverage(ready_from, ready_to, length) * cap_per_node + _coverage(
        stream_from, stream_to, length
    )
    unmet = np.maximum(streams - capacity_s, 0)
    node_seconds = int(sum(max(0, b - a) for a, b in zip(alive_from, alive_to, strict=True)))
    return Replay(
        label=label,
        policy=policy,
        fleet=fleet,
        tick_s=tick_s,
        tick_times=tick_times,
        ready=ready_col,
        booting=booting_col,
        draining=draining_col,
        desired=desired_col,
        tick_capacity=capacity_col,
        forecast_floor=forecast_col,
        capacity=capacity_s,
        unmet=unmet,
        alive=alive,
        node_seconds=node_seconds,
        launches=launches,
        terminations=terminations,
        cut_streams=cut,
        notes=tuple(notes),
        tick_cuts=cut_col,
        forecast_raised=forecast_raised,
        forecast_above=forecast_above,
        stopped_seconds=stopped_seconds,
        warm_starts=warm_starts,
        failed_starts=failed_starts,
        prepared=prepared,
    )
