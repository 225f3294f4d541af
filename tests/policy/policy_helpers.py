"""Builders shared by the policy tests: policies from small dicts, nodes, samples, a fixed clock."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from autoscaler.domain import Lifecycle, Node, Sample
from autoscaler.policy.engine import EngineMemory, Evaluation, decide
from autoscaler.policy.model import PoolPolicy

#: A Monday, 10:00 UTC: the injected "now" of the table tests.
NOW = datetime(2025, 3, 3, 10, 0, tzinfo=UTC)

BASE: dict[str, Any] = {
    "pool": "asr",
    "launch": {"model_version": "v2", "image": {"id": "img-2"},
               "instance_types": [{"name": "gpu", "streams": 10, "price_per_hour": 1.0}]},
    "balancer": {"kind": "none"},
    "scaling": {
        "min_nodes": 0,
        "max_nodes": 50,
        # Tests opt into windows explicitly: the default 300 s scale-in window would mask other rules.
        "behavior": {"scale_in": {"stabilization": 0}},
    },
}

STREAMS = {"name": "streams", "type": "target_tracking", "query": "avg(asr_active_streams)", "target": 7}


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def policy(**scaling: Any) -> PoolPolicy:
    """A valid policy whose ``scaling`` section is BASE's merged with ``scaling``."""
    return PoolPolicy.model_validate(_merge(BASE, {"scaling": scaling}))


def nodes(serving: int = 0, booting: int = 0, draining: int = 0, *, streams: float | None = 5.0,
          version: str = "v2", age: timedelta = timedelta(hours=2), now: datetime = NOW) -> list[Node]:
    """``serving`` + ``booting`` + ``draining`` nodes; serving ones carry ``streams`` active streams."""
    out: list[Node] = []
    for i in range(serving):
        out.append(Node(f"s{i}", Lifecycle.SERVING, "gpu", 10, version, now - age - timedelta(minutes=i),
                        active_streams=streams, image="img-2"))
    for i in range(booting):
        out.append(Node(f"b{i}", Lifecycle.BOOTING, "gpu", 10, version, now - timedelta(minutes=1),
                        image="img-2"))
    for i in range(draining):
        out.append(Node(f"d{i}", Lifecycle.DRAINING, "gpu", 10, version, now - age, active_streams=1.0,
                        image="img-2"))
    return out


def samples(**values: float | None) -> dict[str, Sample]:
    """Samples by check name; ``None`` is a missing reading."""
    return {name: Sample.missing("no series") if v is None else Sample(v) for name, v in values.items()}


def run(pol: PoolPolicy, values: Mapping[str, Sample], fleet: Sequence[Node],
        memory: EngineMemory | None = None, now: datetime = NOW) -> Evaluation:
    """One ``decide`` call with an empty memory unless one is given."""
    return decide(pol, values, fleet, memory or EngineMemory(), now)


def kinds(evaluation: Evaluation) -> list[str]:
    """The reason kinds of a decision, in order."""
    return [r.kind for r in evaluation.decision.reasons]


def reason(evaluation: Evaluation, kind: str, name: str | None = None) -> Any:
    """The first reason of ``kind`` (and ``name``); fails the test when absent."""
    for r in evaluation.decision.reasons:
        if r.kind == kind and (name is None or r.name == name):
            return r
    trail = [(r.kind, r.name) for r in evaluation.decision.reasons]
    raise AssertionError(f"no {kind}/{name} reason in {trail}")
