"""A dry run: one demand, one or more policies replayed on it, the baselines, and their figures.

``dry_run`` builds the demand once, replays each policy (the scenario's, or the ``compare`` list)
through the decision engine, replays the HPA-like baseline the same way (tracking the scenario
policy's own target, see ``hpa_like_baseline``), and computes the static peak and the oracle.
``summarize`` turns a replay into the figures of ``summary.json``.

With ``warm_sizes`` (or a policy whose ``warm_pool.size`` is ``auto``) the scenario's policy is also
replayed with a warm pool of each size on the same demand: the frontier of cost (running plus
stopped) against waiting, and the recommended size (``recommend_warm_size``). The cold oracle stays
the reference figure; the warm oracle (stopped instances may be started in ``warm_start_s``) is
reported beside it as the lower bound for warm-pool fleets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from autoscaler.errors import ScenarioError
from autoscaler.policy.model import PoolPolicy, TargetTrackingCheck
from autoscaler.simulate.demand import Demand, build_demand
from autoscaler.simulate.fleet import FleetModel, Replay, fit_policy, replay, resolve_fleet, with_warm_pool
from autoscaler.simulate.oracle import Oracle, oracle
from autoscaler.simulate.scenario import Scenario, load_policy_for_scenario
from autoscaler.simulate.workload import ServiceLaw

#: ``progress(label, done, total)``: ticks replayed so far for the run called ``label``.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Run:
    """One replayed policy and its figures."""

    label: str
    source: Path | None
    replay: Replay
    summary: dict[str, Any]


@dataclass(frozen=True)
class DryRun:
    """Everything a report shows: the demand, the runs, the baselines and the oracle."""

    scenario: Scenario
    demand: Demand
    fleet: FleetModel
    runs: tuple[Run, ...]
    hpa_like: Run
    static_peak: dict[str, Any]
    oracle: dict[str, Any]
    required: NDArray[np.int64]
    min_nodes: int
    max_nodes: int
    oracle_warm: dict[str, Any] | None = None
    warm_frontier: tuple[Run, ...] = ()
    recommended_warm_size: int | None = None

    def summary(self, run: Run) -> dict[str, Any]:
        """``summary.json`` for ``run``: its figures, the baselines, the demand and the notes."""
        out = dict(run.summary)
        out["policy"] = run.label
        out["baselines"] = {
            "static_peak": self.static_peak,
            "hpa_like": self.hpa_like.summary,
            "oracle": self.oracle,
        }
        if self.oracle_warm is not None:
            out["baselines"]["oracle_warm"] = self.oracle_warm
        if self.warm_frontier:
            out["warm_pool_frontier"] = [
                {"size": size_of(r), **{k: r.summary[k] for k in FRONTIER_FIELDS}} for r in self.warm_frontier
            ]
            out["recommended_warm_pool_size"] = self.recommended_warm_size
        out["demand"] = demand_summary(self.demand, self.fleet.streams_per_node)
        out["scenario"] = {
            "name": self.scenario.name,
            "file": str(self.scenario.source),
            "seed": self.scenario.spec.seed,
        }
        out["notes"] = list(self.demand.notes) + list(run.replay.notes)
        return out


#: The figures of each warm pool size the frontier shows.
FRONTIER_FIELDS = ("cost", "running_cost", "stopped_cost", "node_hours", "stopped_hours", "violation_seconds",
                   "unmet_stream_seconds", "launches", "warm_starts", "failed_starts", "prepared")
#: A warm pool size is recommended when its violation seconds are within this share of the best size's.
RECOMMEND_TOLERANCE = 0.10


def size_of(run: Run) -> int:
    """The warm pool size a frontier run was replayed with."""
    warm = run.replay.policy.warm_pool
    return warm.size if warm is not None and isinstance(warm.size, int) else 0


def recommend_warm_size(frontier: Sequence[Run]) -> int | None:
    """The cheapest size whose violation seconds are within ``RECOMMEND_TOLERANCE`` of the fewest
    (at least one second of slack), the smaller size on a tie: past it, more warm instances buy
    almost no waiting and cost disk (and preparation) for nothing."""
    if not frontier:
        return None
    best = min(r.summary["violation_seconds"] for r in frontier)
    allowed = best * (1 + RECOMMEND_TOLERANCE) + 1
    good = [r for r in frontier if r.summary["violation_seconds"] <= allowed]
    return size_of(min(good, key=lambda r: (r.summary["cost"], size_of(r))))


def demand_summary(demand: Demand, streams_per_node: int) -> dict[str, Any]:
    """What the replayed demand was: its source, scale, clock and peak."""
    peak = int(demand.streams.max()) if demand.duration_s else 0
    return {
        "description": demand.description,
        "scale": demand.scale,
        "replay_at": demand.replay_at.isoformat(),
        "arrivals": demand.arrivals,
        "peak_streams": peak,
        "mean_streams": float(demand.streams.mean()),
        "peak_required_nodes": -(-peak // streams_per_node),
    }


def _figures(
    *,
    duration: int,
    tick_s: int,
    fleet: FleetModel,
    min_nodes: int,
    max_nodes: int,
    node_seconds: int,
    violation: int,
    unmet: int,
    peak: int,
    launches: int,
    terminations: int,
    oracle_seconds: int,
    stopped_seconds: int = 0,
) -> dict[str, Any]:
    running_cost = node_seconds / 3600.0 * fleet.price_per_hour
    stopped_cost = stopped_seconds / 3600.0 * fleet.stopped_price_per_hour
    cost = running_cost + stopped_cost
    return {
        "duration_s": duration,
        "tick_s": tick_s,
        "streams_per_node": fleet.streams_per_node,
        "boot_s": fleet.boot_s,
        "min_nodes": min_nodes,
        "max_nodes": max_nodes,
        "price_per_hour": fleet.price_per_hour,
        "node_seconds": node_seconds,
        "node_hours": round(node_seconds / 3600.0, 3),
        "cost": round(cost, 2),
        "running_cost": round(running_cost, 2),
        "stopped_cost": round(stopped_cost, 2),
        "stopped_seconds": stopped_seconds,
        "stopped_hours": round(stopped_seconds / 3600.0, 3),
        "stopped_price_per_hour": fleet.stopped_price_per_hour,
        "violation_seconds": violation,
        "unmet_stream_seconds": unmet,
        "peak_nodes": peak,
        "launches": launches,
        "terminations": terminations,
        "oracle_node_seconds": oracle_seconds,
        "cost_ratio": round(node_seconds / oracle_seconds, 4) if oracle_seconds else None,
    }


def _oracle_figures(
    best: Oracle, demand: Demand, fleet: FleetModel, min_nodes: int, reference_seconds: int
) -> dict[str, Any]:
    """The figures of an oracle schedule: never waits, bills ``best``'s running and stopped seconds."""
    return _figures(
        duration=demand.duration_s,
        tick_s=1,
        fleet=fleet,
        min_nodes=min_nodes,
        max_nodes=best.peak_nodes,
        node_seconds=best.node_seconds,
        violation=0,
        unmet=0,
        peak=best.peak_nodes,
        launches=best.launches,
        terminations=0,
        oracle_seconds=reference_seconds,
        stopped_seconds=best.stopped_seconds,
    )


def summarize(result: Replay, demand: Demand, oracle_seconds: int) -> dict[str, Any]:
    """The figures of one replay (the contract fields of ``summary.json``, and a few more)."""
    scaling = result.policy.scaling
    figures = _figures(
        duration=demand.duration_s,
        tick_s=result.tick_s,
        fleet=result.fleet,
        min_nodes=scaling.min_nodes,
        max_nodes=scaling.max_nodes,
        node_seconds=result.node_seconds,
        violation=result.violation_seconds,
        unmet=result.unmet_stream_seconds,
        peak=result.peak_nodes,
        launches=result.launches,
        terminations=result.terminations,
        oracle_seconds=oracle_seconds,
        stopped_seconds=result.stopped_seconds,
    )
    figures["warm_starts"] = result.warm_starts
    figures["failed_starts"] = result.failed_starts
    figures["prepared"] = result.prepared
    warm = result.policy.warm_pool
    figures["warm_pool_size"] = warm.size if warm is not None else None
    figures["warm_start_s"] = result.fleet.warm_start_s
    figures["max_unmet_streams"] = int(result.unmet.max()) if len(result.unmet) else 0
    figures["drain_cut_streams"] = result.cut_streams
    if scaling.forecast is not None:
        figures["forecast"] = {
            "mode": scaling.forecast.mode,
            "ticks_with_floor": int(np.count_nonzero(result.forecast_floor >= 0)),
            "ticks_floor_above_checks": result.forecast_above,
            "ticks_raised": result.forecast_raised,
        }
    return figures


def _tick_of(scenario: Scenario, policy: PoolPolicy) -> int:
    tick = scenario.spec.tick_seconds or policy.scaling.tick
    return max(1, round(tick.total_seconds()))


def dry_run(
    scenario: Scenario,
    compare: Sequence[Path] = (),
    progress: Progress | None = None,
    *,
    policies: Sequence[tuple[str, PoolPolicy]] = (),
    reuse: DryRun | None = None,
    warm_sizes: Sequence[int] = (),
) -> DryRun:
    """Replay the scenario's policy (or each policy of ``compare``) and the baselines on one demand.

    ``policies`` (label, policy) replays already-loaded policies instead (the sweep's variants).
    ``reuse``, an earlier dry run of the same scenario and seed, lends its demand and its HPA-like
    run instead of building and replaying them again (a sweep's workers replay many policies on one
    demand). ``warm_sizes`` replays the scenario's policy with each warm pool size too (the
    frontier); outside a sweep, a policy with ``warm_pool.size: auto`` gets sizes 0, 1, 2, 4 unless
    given, and its own run uses the recommended size. Raises ``ScenarioError`` for an unusable
    scenario, trace, window or policy.
    """
    fleet = resolve_fleet(scenario)
    pool = scenario.spec.pool
    base = fit_policy(scenario.policy, fleet, min_nodes=pool.min_nodes, max_nodes=pool.max_nodes)
    min_nodes, max_nodes = base.scaling.min_nodes, base.scaling.max_nodes
    demand = reuse.demand if reuse is not None else build_demand(scenario, fleet.streams_per_node)
    law = ServiceLaw(scenario.spec.workload)
    seed = scenario.spec.seed

    oracles: dict[int, Oracle] = {}

    def oracle_for(minimum: int) -> Oracle:
        if minimum not in oracles:
            oracles[minimum] = oracle(demand.required_nodes(fleet.streams_per_node, minimum), fleet.boot_s)
        return oracles[minimum]

    def run(label: str, source: Path | None, policy: PoolPolicy) -> Run:
        def report(done: int, total: int) -> None:
            if progress is not None:
                progress(label, done, total)

        result = replay(
            label, policy, demand, fleet, law, tick_s=_tick_of(scenario, policy), seed=seed, progress=report
        )
        figures = summarize(result, demand, oracle_for(policy.scaling.min_nodes).node_seconds)
        return Run(label=label, source=source, replay=result, summary=figures)

    auto = scenario.policy.warm_pool is not None and scenario.policy.warm_pool.size == "auto"
    sizes = sorted(set(warm_sizes)) or ([0, 1, 2, 4] if auto and not policies else [])
    frontier = tuple(run(f"warm-{size}", scenario.policy_path, with_warm_pool(base, size)) for size in sizes)
    recommended = recommend_warm_size(frontier)

    if policies:
        chosen: list[tuple[str, Path | None, PoolPolicy]] = [(lbl, None, p) for lbl, p in policies]
    else:
        if compare:
            loaded = [(path, load_policy_for_scenario(path, f"--compare {path}")) for path in compare]
        else:
            loaded = [(scenario.policy_path, scenario.policy)]
        labels = _labels([p for p, _ in loaded])
        chosen = [(lbl, path, p) for (path, p), lbl in zip(loaded, labels, strict=True)]
    runs = []
    for label, path, policy in chosen:
        fitted = fit_policy(policy, fleet, min_nodes=pool.min_nodes, max_nodes=pool.max_nodes)
        if fitted.warm_pool is not None and fitted.warm_pool.size == "auto":
            fitted = with_warm_pool(fitted, recommended or 0)
        # The same policy was already replayed for the frontier (same demand and seed): reuse it.
        same = next((r for r in frontier if r.replay.policy == fitted), None)
        runs.append(replace(same, label=label, source=path) if same is not None else run(label, path, fitted))

    hpa_path = scenario.hpa_policy_path()
    if not hpa_path.exists():
        raise ScenarioError(
            f"{scenario.source}: the HPA-like baseline policy {hpa_path} does not exist; "
            "set baselines.hpa_like to a policy file"
        )
    hpa_policy = fit_policy(
        hpa_like_baseline(load_policy_for_scenario(hpa_path, "baselines.hpa_like"), scenario.policy),
        fleet,
        min_nodes=min_nodes,
        max_nodes=max_nodes,
    )
    hpa = reuse.hpa_like if reuse is not None else run("hpa_like", hpa_path, hpa_policy)
    # Which target the baseline tracked, so summary.json says what it was compared at.
    tracked = {c.name: c.target for c in hpa_policy.scaling.checks if isinstance(c, TargetTrackingCheck)}
    hpa = replace(hpa, summary=hpa.summary | {"targets": tracked})

    base_oracle = oracle_for(min_nodes)
    required = demand.required_nodes(fleet.streams_per_node, min_nodes)
    peak = int(required.max())
    capacity = peak * fleet.streams_per_node
    over = np.maximum(demand.streams - capacity, 0)
    static = _figures(
        duration=demand.duration_s,
        tick_s=runs[0].replay.tick_s,
        fleet=fleet,
        min_nodes=peak,
        max_nodes=peak,
        node_seconds=peak * demand.duration_s,
        violation=int(np.count_nonzero(over)),
        unmet=int(over.sum()),
        peak=peak,
        launches=0,
        terminations=0,
        oracle_seconds=base_oracle.node_seconds,
    )
    oracle_figures = _oracle_figures(base_oracle, demand, fleet, min_nodes, base_oracle.node_seconds)
    oracle_figures["terminations"] = None  # the oracle's bill does not depend on them; not counted
    warm_oracle = oracle(required, fleet.boot_s, warm_start_s=fleet.warm_start_s,
                         stopped_ratio=fleet.stopped_price_per_hour / fleet.price_per_hour
                         if fleet.price_per_hour else 0.0)
    oracle_warm = _oracle_figures(warm_oracle, demand, fleet, min_nodes, base_oracle.node_seconds)
    oracle_warm["terminations"] = None
    oracle_warm["warm_starts"] = warm_oracle.warm_starts
    return DryRun(
        scenario=scenario,
        demand=demand,
        fleet=fleet,
        runs=tuple(runs),
        hpa_like=hpa,
        static_peak=static,
        oracle=oracle_figures,
        required=required,
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        oracle_warm=oracle_warm,
        warm_frontier=frontier,
        recommended_warm_size=recommended,
    )


def hpa_like_baseline(hpa: PoolPolicy, compared: PoolPolicy) -> PoolPolicy:
    """``hpa`` tracking the same per-node target as ``compared``: a like-for-like HPA baseline.

    An HPA that tracks a different utilization than the policy under test measures the target, not
    the policy's rules. So each target-tracking check of ``hpa`` takes the target of the first
    target-tracking check of ``compared`` with the same ``signal`` and ``per``; everything else (HPA's
    tolerance, windows and rate limits) stays as the baseline file says. A check with no counterpart
    keeps its own target. The scenario's policy is the reference, also under ``--compare``.
    """
    targets: dict[tuple[str | None, str], float] = {}
    for check in compared.scaling.checks:
        if isinstance(check, TargetTrackingCheck):
            targets.setdefault((check.signal, check.per), check.target)
    checks = [
        check.model_copy(update={"target": targets[(check.signal, check.per)]})
        if isinstance(check, TargetTrackingCheck) and (check.signal, check.per) in targets
        else check
        for check in hpa.scaling.checks
    ]
    return hpa.model_copy(update={"scaling": hpa.scaling.model_copy(update={"checks": checks})})


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short unique labels for policies: file stems, numbered when two share a stem."""
    labels: list[str] = []
    for path in paths:
        label = path.stem
        if label in labels:
            label = f"{label}-{len(labels) + 1}"
        labels.append(label)
    return labels
