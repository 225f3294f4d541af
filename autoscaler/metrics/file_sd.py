"""The Prometheus ``file_sd_configs`` target file: which nodes to scrape, rewritten as they come and go.

Each instance with an address becomes one target group::

    [{"targets": ["10.0.0.5:7860"],
      "labels": {"pool": "asr", "instance_id": "i-0a1", "instance_type": "g5.xlarge",
                 "model_version": "fun-asr-nano-2512"}}]

so every series scraped from a node carries the labels the autoscaler's queries group by
(``max by (instance_id) (...)``). The file is replaced atomically: Prometheus watches it and must
never read half a file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autoscaler.domain import Instance
from autoscaler.files import atomic_write

#: Labels every target carries, taken from the instance.
TARGET_LABELS = ("pool", "instance_id", "instance_type", "model_version")


def target_groups(instances: Iterable[Instance], extra_labels: Mapping[str, str] | None = None) -> list[
    dict[str, Any]
]:
    """One target group per instance that has an address, sorted by instance id.

    ``extra_labels`` are added to every group (the instance's own labels win on a clash).
    """
    groups: list[dict[str, Any]] = []
    for inst in sorted(instances, key=lambda i: i.id):
        if inst.endpoint is None:
            continue
        labels = {
            **(extra_labels or {}),
            "pool": inst.pool,
            "instance_id": inst.id,
            "instance_type": inst.instance_type,
            "model_version": inst.model_version,
        }
        groups.append({"targets": [inst.endpoint], "labels": labels})
    return groups


def write_targets(
    path: str | Path, instances: Iterable[Instance], extra_labels: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Atomically replace the target file at ``path`` with ``instances``' groups; return the groups."""
    groups = target_groups(instances, extra_labels)
    write_target_groups(path, groups)
    return groups


def write_target_groups(path: str | Path, groups: Sequence[Mapping[str, Any]]) -> None:
    """Atomically replace the target file at ``path`` with ``groups`` (``targets`` and ``labels`` each).

    The folder is created when missing. The file keeps its permissions (0644 when new), so a
    Prometheus running as another user can read it. ``OSError`` propagates: a caller that cannot
    publish targets must know.
    """
    text = json.dumps([dict(g) for g in groups], indent=2, sort_keys=True) + "\n"
    atomic_write(Path(path), text)


def read_targets(path: str | Path) -> list[dict[str, Any]]:
    """The target groups in the file at ``path`` (an absent file holds none)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    if not isinstance(data, list):
        raise ValueError(f"{path} is not a file_sd target list")
    return data
