"""How a multi-series answer becomes per-node numbers (shared by the real source and its fake)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Protocol


class LabelledValue(Protocol):
    """One series of an instant answer: its labels and its value."""

    @property
    def labels(self) -> Mapping[str, str]:
        """The series' labels."""
        ...

    @property
    def value(self) -> float:
        """The series' value."""
        ...


def max_by_label(series: Iterable[LabelledValue], label: str) -> dict[str, float]:
    """Each ``label`` value's largest series value; series without the label are left out."""
    by_label: dict[str, float] = {}
    for s in series:
        key = s.labels.get(label)
        if key is not None:
            by_label[key] = max(s.value, by_label.get(key, -math.inf))
    return by_label
