"""The controller's packaging: the systemd unit and the Containerfile (no container engine here, so
the image is checked by parsing it, verifying what it references, and building its wheel step)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from typer.testing import CliRunner

from autoscaler.cli import app

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "infra" / "controller" / "autoscaler.service"
CONTAINERFILE = REPO / "infra" / "controller" / "Containerfile"


def _options_of(command: str) -> set[str]:
    """The --options `autoscaler <command> --help` lists."""
    result = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return set(re.findall(r"--[a-z][a-z-]+", result.output))


def _assert_real_run_command(argv: list[str]) -> None:
    run = argv.index("run")
    used = {a for a in argv[run + 1:] if a.startswith("--")}
    assert used, argv
    assert used <= _options_of("run"), f"unknown options {used - _options_of('run')}"


def test_systemd_unit_verifies_and_runs_a_real_command(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit with no warning, and ExecStart uses real `run` options
    on a policy directory (one process for every pool)."""
    text = UNIT.read_text()
    exec_start = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart="))
    _assert_real_run_command(shlex.split(exec_start))
    assert "StateDirectory=autoscaler" in text and "KillSignal=SIGTERM" in text
    assert "--policies" in shlex.split(exec_start)
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    executable = shutil.which("autoscaler") or str(Path(sys.executable).parent / "autoscaler")
    (tmp_path / "autoscaler.service").write_text(text.replace("/opt/autoscaler/bin/autoscaler", executable))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "autoscaler.service")],
        capture_output=True, text=True, check=False,
    )
    output = verify.stdout + verify.stderr
    assert verify.returncode == 0, output
    assert "Unknown" not in output and "ignoring" not in output, output


def test_containerfile_references_files_that_exist_and_a_real_command() -> None:
    """Every COPY source exists in the build context (the repo), the command's options are real, and
    the health check probes the port the command serves /healthz on."""
    parser = DockerfileParser(fileobj=CONTAINERFILE.open("rb"))
    instructions = parser.structure
    copies = [i["value"] for i in instructions if i["instruction"] == "COPY"]
    for value in copies:
        args = shlex.split(value)
        if any(a.startswith("--from") for a in args):
            continue
        for source in args[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: not in the build context"
    assert all(":" in image and not image.endswith(":latest") for image in parser.parent_images)
    entrypoint = [i["value"] for i in instructions if i["instruction"] == "ENTRYPOINT"][-1]
    cmd = [i["value"] for i in instructions if i["instruction"] == "CMD"][-1]
    argv = json.loads(entrypoint) + json.loads(cmd)
    assert argv[0] == "autoscaler"
    _assert_real_run_command(argv)
    port = argv[argv.index("--metrics-port") + 1]
    healthcheck = next(i["value"] for i in instructions if i["instruction"] == "HEALTHCHECK")
    assert f"127.0.0.1:{port}/healthz" in healthcheck
    assert any(i["instruction"] == "EXPOSE" and i["value"].split()[0] == port for i in instructions)
    assert parser.envs.get("STATE_DIRECTORY") in {
        i["value"] for i in instructions if i["instruction"] == "VOLUME"
    }
    (REPO / ".containerignore").read_text()  # keeps .venv and .git out of the context


def test_image_build_step_makes_a_wheel_from_only_the_copied_files(tmp_path: Path) -> None:
    """The build stage's `pip install .` works from exactly the files the Containerfile copies, and the
    result ships the store's migrations."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    shutil.copytree(REPO / "autoscaler", context / "autoscaler", ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(context), "-w", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "out").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "autoscaler/store/migrations/script.py.mako" in names
    assert "autoscaler/store/migrations/versions/0002_tick_pool_at.py" in names
    assert "autoscaler/py.typed" in names
