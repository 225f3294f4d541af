"""The decision engine: a pure function of (policy, samples, nodes, memory, now).

It does no I/O and reads no clock. The live controller and the dry-run simulator both call
``decide``; the only state it keeps between ticks is the ``EngineMemory`` it returns, which the
caller stores and hands back next tick.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.domain import Decision, Node, Sample
from autoscaler.policy.model import PoolPolicy


class EngineMemory(BaseModel):
    """What the engine remembers between ticks (JSON-serialisable; the store keeps it per pool)."""

    model_config = ConfigDict(extra="ignore")

    recommendations: list[tuple[datetime, int]] = Field(
        default_factory=list, description="(time, recommended count) for stabilization windows."
    )
    scale_events: list[tuple[datetime, int]] = Field(
        default_factory=list, description="(time, signed node delta) for rate-limit periods."
    )
    last_scale_out: datetime | None = None
    last_scale_in: datetime | None = None
    streaks: dict[str, int] = Field(default_factory=dict, description="Consecutive ticks per step band.")
    missing_ticks: int = Field(0, description="Consecutive ticks in which some check had no data.")


@dataclass(frozen=True)
class Evaluation:
    """The engine's answer: the decision, and the memory to pass to the next tick."""

    decision: Decision
    memory: EngineMemory


def decide(
    policy: PoolPolicy,
    samples: Mapping[str, Sample],
    nodes: Sequence[Node],
    memory: EngineMemory,
    now: datetime,
) -> Evaluation:
    """Decide the pool's node count at ``now``.

    ``samples`` maps each check name to its reading (a missing key is no data). ``nodes`` are the
    pool's booting, serving and draining nodes. Returns a ``Decision`` whose ``launch`` and
    ``victims`` say what to do, with the full reason trail, and the next memory.
    """
    raise NotImplementedError  # implemented by the engine work (issue 4)
