"""Secrets (cloud keys, database and Prometheus passwords) never appear in `--help`, logs, command
output or the store; the SQLite store is written owner-only."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from autoscaler.testing import wait_until

AUTOSCALER = str(Path(sys.executable).with_name("autoscaler"))
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "awsSECRETkey0001",
    "AWS_ACCESS_KEY_ID": "AKIASECRETID00001",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "aliSECRETkey0002",
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIsecretid0003",
}
DB_PASSWORD = "dbSECRETpw0004"
PROM_PASSWORD = "promSECRETpw0005"
ALL = [*SECRETS.values(), DB_PASSWORD, PROM_PASSWORD]

POLICY = f"""
pool: secrets
provider: {{kind: local, state_dir: fleet}}
launch:
  model_version: v1
  instance_types: [{{name: gpu, streams: 10, price_per_hour: 0.1}}]
balancer: {{kind: none}}
metrics: {{url: "http://scraper:{PROM_PASSWORD}@127.0.0.1:9/", timeout: 1s}}
scaling:
  min_nodes: 0
  max_nodes: 1
  checks:
    - {{name: streams, type: target_tracking, query: streams_per_node, target: 7}}
"""


def _ticks(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=1)) as conn:
            return int(conn.execute("SELECT count(*) FROM tick").fetchone()[0])
    except sqlite3.Error:
        return 0


def run(args: list[str], cwd: Path, store: str | None = None) -> str:
    """stdout + stderr of one `autoscaler` command with the secrets in its environment."""
    env = {**os.environ, **SECRETS}
    if store:
        env["AUTOSCALER_STORE"] = store
    done = subprocess.run([AUTOSCALER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    return done.stdout + done.stderr


def assert_no_secret(text: str, where: str) -> None:
    """None of the secrets appears in ``text``."""
    leaked = [s for s in ALL if s in text]
    assert not leaked, f"{where} shows {leaked}"


def test_help_never_shows_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--help` of every command, with the secrets in the environment (a store URL with a password
    in AUTOSCALER_STORE included), shows none of them."""
    from typer.testing import CliRunner

    from autoscaler.cli import app

    for name, value in {**SECRETS, "AUTOSCALER_STORE": f"postgresql+psycopg://ctl:{DB_PASSWORD}@h/db"}.items():
        monkeypatch.setenv(name, value)
    commands = [[], ["run"], ["once"], ["explain"], ["history"], ["demo"], ["dry-run"], ["policy"],
                ["policy", "validate"]]
    for command in commands:
        result = CliRunner().invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert_no_secret(result.output, f"`autoscaler {' '.join(command)} --help`")


def test_failing_commands_logs_and_store_hold_no_secret(tmp_path: Path) -> None:
    """A tick against an unreachable Prometheus whose URL holds a password, and a store URL with a
    password that cannot connect: output and logs name neither password; the SQLite store does not
    hold one either, and is owner-only."""
    (tmp_path / "p.yaml").write_text(POLICY)
    out = run(["once", "--policy", "p.yaml", "--store", f"sqlite:///{tmp_path}/s.db"], tmp_path)
    assert "streams" in out  # the tick ran and said which check had no data
    assert_no_secret(out, "`once` output")
    db = tmp_path / "s.db"
    assert_no_secret(db.read_bytes().decode("latin-1"), "the SQLite store")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    bad_store = f"postgresql+psycopg://ctl:{DB_PASSWORD}@127.0.0.1:1/db?connect_timeout=2"
    for command in (["once", "--policy", "p.yaml"], ["history", "--policy", "p.yaml"],
                    ["explain", "--policy", "p.yaml"]):
        out = run([*command, "--store", bad_store], tmp_path)
        assert out.strip(), command
        assert_no_secret(out, f"`autoscaler {' '.join(command)}` with an unreachable store")
    out = run(["once", "--policy", "p.yaml"], tmp_path, store=bad_store)
    assert_no_secret(out, "`autoscaler once` with AUTOSCALER_STORE")


@pytest.mark.parametrize("fmt", ["--log-json", None])
def test_run_logs_hold_no_secret(tmp_path: Path, fmt: str | None) -> None:
    """`autoscaler run` for a few ticks, console or JSON logs: no secret in what it prints."""
    (tmp_path / "p.yaml").write_text(POLICY.replace("min_nodes: 0", "min_nodes: 0\n  tick: 1s"))
    env = {**os.environ, **SECRETS}
    args = [AUTOSCALER, "run", "--policy", "p.yaml", "--store", f"sqlite:///{tmp_path}/s.db"]
    proc = subprocess.Popen([*args, *([fmt] if fmt else [])], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: _ticks(tmp_path / "s.db") >= 2, timeout_s=90, interval_s=0.5,
                   message="two ticks recorded")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "tick" in out
    assert_no_secret(out, "`autoscaler run` logs")
