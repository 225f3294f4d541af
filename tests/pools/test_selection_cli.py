"""The same pool selection on every command: --policies DIR, repeated --policy, --pool to narrow;
and who leads each pool in `status`."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from autoscaler.cli import app
from autoscaler.leader import PostgresLeaderLock
from autoscaler.store import SqlStore
from autoscaler.testing.postgres import fresh_schema

#: A local pool at min 0 whose Prometheus is not there: a tick observes, records and holds.
QUIET_POOL = """
pool: {pool}
provider: {{kind: local, state_dir: "{fleet}"}}
launch:
  model_version: v1
  instance_types: [{{name: local-gpu, streams: 10, price_per_hour: 0.5}}]
balancer: {{kind: none}}
metrics: {{url: "http://127.0.0.1:1", timeout: 1s}}
scaling:
  min_nodes: 0
  max_nodes: 2
  checks:
    - {{name: streams, type: target_tracking, query: "sum(asr_active_streams)", target: 7}}
"""

runner = CliRunner()


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A directory with pools a and b, a broken file, and a second file for pool a."""
    directory = tmp_path / "policies"
    directory.mkdir()
    for name in ("a", "b"):
        (directory / f"{name}.yaml").write_text(QUIET_POOL.format(pool=name, fleet=tmp_path / "fleet"))
    (directory / "broken.yml").write_text("pool: c\nscaling: {min_nodes: 5, max_nodes: 2}\n")
    (directory / "z-copy-of-a.yaml").write_text(QUIET_POOL.format(pool="a", fleet=tmp_path / "other"))
    (directory / "notes.txt").write_text("not a policy")
    return directory


def test_once_ticks_every_selected_pool_and_fails_on_any_problem(policies: Path, tmp_path: Path) -> None:
    """`once --policies DIR` ticks a and b, prints each outcome, names the broken file and the
    duplicate, and exits 1; narrowed with --pool to good pools it exits 0; history and status take
    the same selection."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    result = runner.invoke(app, ["once", "--policies", str(policies), "--store", store])
    assert result.exit_code == 1
    assert "pool a at " in result.stdout and "pool b at " in result.stdout
    assert "broken.yml" in result.stderr and "max_nodes" in result.stderr
    assert "z-copy-of-a.yaml: pool 'a' is already defined by" in result.stderr

    narrowed = runner.invoke(
        app, ["once", "--policies", str(policies), "--pool", "b", "--store", store, "--json"]
    )
    assert narrowed.exit_code == 0, narrowed.output
    assert [o["pool"] for o in json.loads(narrowed.stdout)] == ["b"]
    two_files = runner.invoke(
        app, ["once", "--policy", str(policies / "a.yaml"), "--policy", str(policies / "b.yaml"),
              "--store", store, "--json"],
    )
    assert two_files.exit_code == 0 and {o["pool"] for o in json.loads(two_files.stdout)} == {"a", "b"}

    (policies / "z-copy-of-a.yaml").unlink()
    history = runner.invoke(
        app,
        ["history", "--policies", str(policies), "--pool", "a", "--pool", "b", "--json", "--store", store],
    )
    assert history.exit_code == 0, history.output
    ticks = json.loads(history.stdout)  # newest first, both pools
    assert sorted(t["pool"] for t in ticks) == ["a", "a", "b", "b", "b"]
    status = runner.invoke(app, ["status", "--policies", str(policies), "--store", store, "--json"])
    assert status.exit_code == 1 and "broken.yml" in status.stderr  # reported, the others shown
    assert [(r["pool"], r["leader"]) for r in json.loads(status.stdout)] == [
        ("a", "single controller"), ("b", "single controller")
    ]


def test_explain_and_once_with_nothing_runnable_exit_2(policies: Path, tmp_path: Path) -> None:
    """`explain` shows each selected pool's trail under its name; a selection where no file loads
    (only the broken one) exits 2 with its file:line:column problem, a --pool no file defines too."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    (policies / "z-copy-of-a.yaml").unlink()
    both = runner.invoke(app, ["explain", "--policies", str(policies), "--pool", "a", "--pool", "b",
                               "--store", store])
    assert both.exit_code == 0, both.output
    assert "== pool a ==" in both.stdout and "== pool b ==" in both.stdout and "no data" in both.stdout
    broken = runner.invoke(app, ["once", "--policy", str(policies / "broken.yml"), "--store", store])
    assert broken.exit_code == 2 and "broken.yml:2:" in broken.stderr
    unknown = runner.invoke(app, ["once", "--policies", str(policies), "--pool", "nope", "--store", store])
    assert unknown.exit_code == 2 and "--pool nope" in unknown.stderr
    missing = runner.invoke(app, ["run", "--policies", str(tmp_path / "typo"), "--store", store])
    assert missing.exit_code == 2 and "not a directory" in missing.stderr


@pytest.fixture
def pg_store() -> Iterator[str]:
    """A store on a fresh schema of the local PostgreSQL (dropped afterwards)."""
    with fresh_schema() as schema:
        SqlStore(schema.url).close()  # the tables exist: `status` only reads
        yield schema.url


def test_status_says_which_controller_leads_each_pool(pg_store: str, tmp_path: Path) -> None:
    """With PostgreSQL, `status` shows the host and pid holding each pool's advisory lock and `none`
    for a pool nobody leads; after the leader lets go, `none` too."""
    led, unled = f"led-{uuid.uuid4().hex[:8]}", f"unled-{uuid.uuid4().hex[:8]}"
    lock = PostgresLeaderLock(pg_store, led)
    try:
        with capture_logs():  # an earlier CliRunner's stderr may be what structlog was set up with
            lock.may_act()
            assert lock.still_leader()
        result = runner.invoke(app, ["status", "--pool", led, "--pool", unled, "--store", pg_store, "--json"])
        assert result.exit_code == 0, result.output
        leaders = {r["pool"]: r["leader"] for r in json.loads(result.stdout)}
        assert leaders[led].startswith(f"{socket.gethostname()} pid {os.getpid()}")
        assert leaders[unled] == "none"
        table = runner.invoke(app, ["status", "--pool", led, "--store", pg_store])
        assert f"pid {os.getpid()}" in table.stdout.splitlines()[1]
    finally:
        with capture_logs():
            lock.close()
    after = runner.invoke(app, ["status", "--pool", led, "--store", pg_store, "--json"])
    assert json.loads(after.stdout)[0]["leader"] == "none"
