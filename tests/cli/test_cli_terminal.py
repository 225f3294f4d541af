"""The operator's terminal: --version, status, history --since/--json, read commands on a bad store."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from typer.testing import CliRunner

from autoscaler.cli import app
from autoscaler.domain import Lifecycle
from autoscaler.store import SqlStore
from autoscaler.store.sql import default_store_url
from autoscaler.terminal import print_table, version
from autoscaler.testing.postgres import fresh_schema

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _reason(message: str) -> list[dict[str, object]]:
    return [{"kind": "final", "name": "asr", "message": message, "detail": {}}]


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[str]:
    """A SQLite store with three ticks of pool `asr` (3 h, 1 h and 1 min ago), two nodes and one of `ocr`."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = SqlStore(url)
    now = datetime.now(UTC)
    for ago, desired in ((timedelta(hours=3), 1), (timedelta(hours=1), 2), (timedelta(minutes=1), 3)):
        store.record_tick(
            "asr",
            now - ago,
            {},
            {"direction": "out", "desired": desired, "summary": f"out to {desired}",
             "reasons": _reason(f"streams above target: {desired} nodes")},
            {},
        )
    store.record_tick("ocr", now, {}, {"direction": "hold", "desired": 1, "summary": "hold at 1"}, {})
    store.record_lifecycle("asr", "i-1", Lifecycle.SERVING, now)
    store.record_lifecycle("asr", "i-2", Lifecycle.BOOTING, now)
    store.record_lifecycle("asr", "i-0", Lifecycle.TERMINATED, now)
    store.close()
    yield url


def test_version_prints_the_package_version() -> None:
    """`autoscaler --version` prints the installed version and exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == f"autoscaler {version()}"


def test_history_since_json_newest_first(recorded: str) -> None:
    """`history --pool P --since 2h --json` lists only the ticks of the last two hours, newest first."""
    result = runner.invoke(app, ["history", "--pool", "asr", "--since", "2h", "--json", "--store", recorded])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["desired"] for r in rows] == [3, 2]
    assert rows[0]["reason"] == "streams above target: 3 nodes" and rows[0]["pool"] == "asr"


def test_history_bad_since_is_a_clear_error(recorded: str) -> None:
    """A --since that is not a duration is a one-line error, exit 2."""
    result = runner.invoke(app, ["history", "--pool", "asr", "--since", "yesterday", "--store", recorded])
    assert result.exit_code == 2 and "--since" in result.stderr and "Traceback" not in result.output


def test_status_json_shows_nodes_decision_reason(recorded: str) -> None:
    """`status --json` gives every recorded pool with live nodes by state and the last decision's reason."""
    result = runner.invoke(app, ["status", "--json", "--store", recorded])
    assert result.exit_code == 0, result.output
    by_pool = {row["pool"]: row for row in json.loads(result.stdout)}
    assert set(by_pool) == {"asr", "ocr"}
    asr = by_pool["asr"]
    assert asr["nodes"] == {"launching": 0, "booting": 1, "serving": 1, "draining": 0}
    assert asr["decision"] == "out to 3" and asr["reason"] == "streams above target: 3 nodes"
    assert asr["paused"] is False and asr["leader"] == "single controller"  # a SQLite store


def test_status_piped_is_plain_and_terminal_is_a_table(recorded: str) -> None:
    """Piped, `status` prints plain columns without box drawing; on a terminal, a rich table."""
    result = runner.invoke(app, ["status", "--store", recorded])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["pool", "nodes"] and len(lines) == 3
    assert "1 booting, 1 serving" in result.stdout
    assert "\u2503" not in result.stdout and "\x1b" not in result.stdout
    screen = io.StringIO()
    print_table(["pool", "nodes"], [["asr", "2"]], file=screen, terminal=True)
    assert "\u2503" in screen.getvalue() or "\u2502" in screen.getvalue()


def test_read_commands_never_create_a_store(tmp_path: Path) -> None:
    """`history` and `status` on a mistyped SQLite path fail clearly (exit 2) and create no file."""
    missing = tmp_path / "typo" / "autoscaler.db"
    for args in (["history", "--pool", "asr"], ["status"]):
        result = runner.invoke(app, [*args, "--store", f"sqlite:///{missing}"])
        assert result.exit_code == 2, result.output
        assert f"no store at {missing}" in result.stderr
    assert not missing.exists() and not missing.parent.exists()


def test_unreadable_store_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not a database is reported as such, without a traceback."""
    garbage = tmp_path / "notes.db"
    garbage.write_text("this is not sqlite\n" * 100)
    result = runner.invoke(app, ["status", "--store", f"sqlite:///{garbage}"])
    assert result.exit_code == 2 and "cannot open store" in result.stderr
    assert "not a database" in result.stderr and "Traceback" not in result.output


def test_empty_postgres_database_is_not_a_store_and_stays_empty() -> None:
    """`status` on a PostgreSQL schema without the store's tables says so and creates none."""
    with fresh_schema() as schema:
        result = runner.invoke(app, ["status", "--store", schema.url])
        assert result.exit_code == 2 and "is not an autoscaler store" in result.stderr
        assert sqlalchemy.inspect(schema.admin).get_table_names(schema=schema.name) == []


def test_default_store_location_ignores_the_current_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default store follows $STATE_DIRECTORY, then $XDG_STATE_HOME, then ~/.local/state."""
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/autoscaler")
    assert default_store_url() == "sqlite:////var/lib/autoscaler/autoscaler.db"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", "/home/op/.state")
    assert default_store_url() == "sqlite:////home/op/.state/autoscaler/autoscaler.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/op")
    assert default_store_url() == "sqlite:////home/op/.local/state/autoscaler/autoscaler.db"


def test_default_store_is_shared_across_directories(tmp_path: Path, recorded: str) -> None:
    """A status run from any directory reads the same default store (here under $XDG_STATE_HOME)."""
    state = tmp_path / "xdg"
    (state / "autoscaler").mkdir(parents=True)
    Path(recorded.removeprefix("sqlite:///")).rename(state / "autoscaler" / "autoscaler.db")
    env = {k: v for k, v in os.environ.items() if k not in ("AUTOSCALER_STORE", "STATE_DIRECTORY")}
    env["XDG_STATE_HOME"] = str(state)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", "status", "--json"],
        capture_output=True, text=True, cwd=elsewhere, env=env, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert {row["pool"] for row in json.loads(result.stdout)} == {"asr", "ocr"}
    assert list(elsewhere.iterdir()) == []
