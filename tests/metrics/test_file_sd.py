"""The file_sd target file: one labelled group per addressed instance, replaced atomically."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from autoscaler.domain import CloudState, Instance
from autoscaler.metrics.file_sd import read_targets, target_groups, write_targets


def instance(iid: str, address: str | None, port: int = 7860) -> Instance:
    """A running instance of pool asr."""
    return Instance(id=iid, pool="asr", instance_type="g5.xlarge", model_version="fun-asr-nano-2512",
                    launch_token="t", launched_at=datetime(2026, 1, 1, tzinfo=UTC), state=CloudState.RUNNING,
                    address=address, port=port)


def test_groups_carry_the_node_labels_and_skip_unaddressed_instances() -> None:
    """Each addressed instance is one target with pool, id, type and model labels; others are left out."""
    groups = target_groups([instance("i-b", "10.0.0.2"), instance("i-a", "10.0.0.1", 9000),
                            instance("i-c", None)])
    assert groups == [
        {"targets": ["10.0.0.1:9000"], "labels": {"pool": "asr", "instance_id": "i-a",
                                                  "instance_type": "g5.xlarge",
                                                  "model_version": "fun-asr-nano-2512"}},
        {"targets": ["10.0.0.2:7860"], "labels": {"pool": "asr", "instance_id": "i-b",
                                                  "instance_type": "g5.xlarge",
                                                  "model_version": "fun-asr-nano-2512"}},
    ]


def test_extra_labels_never_override_the_instance_labels() -> None:
    """Extra labels are added to every group, but the instance's own labels win."""
    [group] = target_groups([instance("i-a", "10.0.0.1")], {"env": "prod", "pool": "wrong"})
    assert group["labels"]["env"] == "prod"
    assert group["labels"]["pool"] == "asr"


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    """Writing twice leaves exactly the second list, as JSON, and no temporary file beside it."""
    path = tmp_path / "sd" / "targets.json"
    write_targets(path, [instance("i-a", "10.0.0.1"), instance("i-b", "10.0.0.2")])
    write_targets(path, [instance("i-b", "10.0.0.2")])
    assert [g["labels"]["instance_id"] for g in json.loads(path.read_text())] == ["i-b"]
    assert read_targets(path) == target_groups([instance("i-b", "10.0.0.2")])
    assert [p.name for p in path.parent.iterdir()] == ["targets.json"]


def test_written_file_is_readable_by_other_users_and_keeps_its_mode(tmp_path: Path) -> None:
    """A new target file is 0644 (Prometheus may run as another user); a rewrite keeps a chosen mode."""
    path = tmp_path / "targets.json"
    write_targets(path, [])
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o640)
    write_targets(path, [instance("i-a", "10.0.0.1")])
    assert path.stat().st_mode & 0o777 == 0o640


def test_missing_file_reads_as_no_targets(tmp_path: Path) -> None:
    """A target file that does not exist holds no targets."""
    assert read_targets(tmp_path / "absent.json") == []
