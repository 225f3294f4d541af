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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

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
    )


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
    #: Ticks on which the forecast floor raised the count (``forecast_and_scale``), and on which its
    #: floor was above what the checks wanted (in either mode: what ``forecast_only`` would have done).
    forecast_raised: int = 0
    forecast_above: int = 0

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

    ready_col = np.zeros(ticks, dtype=np.int64)
    booting_col = np.zeros(ticks, dtype=np.int64)
    draining_col = np.zeros(ticks, dtype=np.int64)
    desired_col = np.zeros(ticks, dtype=np.int64)
    capacity_col = np.zeros(ticks, dtype=np.int64)
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
            if node.state is Lifecycle.BOOTING and node.ready_at <= t:
                node.state = Lifecycle.SERVING
                node.view = None
            if node.state is Lifecycle.SERVING:
                serving.append(node)
            elif node.state is Lifecycle.BOOTING:
                booting.append(node)
            else:
                assert node.left is not None
                if node.left <= t:
                    finished.append(node)
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
                samples[name] = Sample(float(load - queued), now)
            elif signal == "queued_streams":
                samples[name] = Sample(float(queued), now)
            elif signal == "concurrent_streams":
                samples[name] = Sample(float(load), now)
            elif ready == 0:
                samples[name] = no_serving
            elif signal == "streams_per_node":
                samples[name] = Sample((on_serving + queued) / ready, now)
            elif signal == "gpu_memory_utilization":
                busiest = min(cap_per_node, -(-on_serving // ready))
                samples[name] = Sample((model_mib + busiest * stream_mib) / gpu, now)
            else:  # p95_latency_seconds
                wait = queued / (ready * cap_per_node) * mean_service
                samples[name] = Sample(p95_service + wait, now)

        # 3. Decide, with the nodes as the controller would see them.
        share = on_serving / ready if ready else 0.0
        views: list[Node] = []
        for node in nodes:
            if node.state is Lifecycle.SERVING:
                views.append(
                    Node(
                        id=node.id,
                        lifecycle=Lifecycle.SERVING,
                        instance_type=itype,
                        capacity_streams=cap_per_node,
                        model_version=version,
                        launched_at=node.launched_at,
                        active_streams=share,
                        image=image,
                    )
                )
            else:
                if node.view is None or node.view.lifecycle is not node.state:
                    node.view = Node(
                        id=node.id,
                        lifecycle=node.state,
                        instance_type=itype,
                        capacity_streams=cap_per_node,
                        model_version=version,
                        launched_at=node.launched_at,
                        active_streams=None,
                        image=image,
                    )
                views.append(node.view)
        forecast = forecaster.forecast(now, samples)
        evaluation = decide(policy, samples, views, memory, now, forecast)
        memory = evaluation.memory
        decision = evaluation.decision
        if forecast is not None:
            forecast_col[k] = _forecast_floor(decision.reasons)
            raised, above = _forecast_effect(decision.reasons)
            forecast_raised += raised
            forecast_above += above

        # 4. Act on the moves.
        for _ in range(decision.launch):
            nodes.append(new_node(t, warm=False))
            launches += 1
        if decision.victims:
            victims = set(decision.victims)
            for node in nodes:
                if node.id not in victims:
                    continue
                terminations += 1
                if node.state is Lifecycle.BOOTING:
                    node.left = t
                    node.state = Lifecycle.TERMINATED
                    finished.append(node)
                    continue
                held = math.floor(share + 1e-9)
                left = residuals.draw(held)
                cut += int(np.count_nonzero(left > drain_limit))
                node.stream_ends = t + np.minimum(left, drain_limit)
                node.drained = t
                node.left = int(node.stream_ends.max()) if held else t
                node.state = Lifecycle.DRAINING
                node.view = None
            nodes = [n for n in nodes if n.state is not Lifecycle.TERMINATED]
            for node in nodes:
                if node.state is Lifecycle.DRAINING and node.left is not None and node.left <= t:
                    node.state = Lifecycle.TERMINATED
                    finished.append(node)
            nodes = [n for n in nodes if n.state is not Lifecycle.TERMINATED]

        n_ready = n_boot = n_drain = 0
        drain_now = 0
        for node in nodes:
            if node.state is Lifecycle.SERVING:
                n_ready += 1
            elif node.state is Lifecycle.BOOTING:
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

    everyone = finished + nodes
    alive_from = [max(n.launched, 0) for n in everyone]
    alive_to = [n.left if n.left is not None else length for n in everyone]
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
        forecast_raised=forecast_raised,
        forecast_above=forecast_above,
    )
