"""``autoscaler dry-run --sweep`` end to end, as a subprocess: outputs, patches that reproduce, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import typer
from ruamel.yaml import YAML
from sim_helpers import BASE_SCENARIO, POLICIES, merged
from typer.testing import CliRunner

from autoscaler.policy.load import load_policy
from autoscaler.simulate.run import dry_run
from autoscaler.simulate.scenario import load_scenario
from autoscaler.simulate.sweep import patched_policy_text
from autoscaler.simulate.sweep_report import OBJECTIVES, RUN_FIELDS

#: Two hours of the twitter slice: a replay takes a fraction of a second.
SCENARIO = merged(BASE_SCENARIO, {"demand": {"duration": "2h"}})


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "slice.yaml"
    with path.open("w", encoding="utf-8") as handle:
        YAML(typ="safe", pure=True).dump(SCENARIO, handle)
    return path


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "autoscaler.cli", "dry-run", *map(str, args)]


def test_sweep_writes_results_frontier_and_patches_that_reproduce_the_figures(tmp_path: Path) -> None:
    """Each variant × seed has its figures and the baseline's; frontier patches replay to the same figures."""
    scenario = _scenario(tmp_path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"""scenarios: [{scenario.name}]
seeds: [3, 4]
parameters:
  target:
    path: scaling.checks[streams-per-node].target
    values: [6, 8]
  scale-in-cooldown:
    path: scaling.behavior.scale_in.cooldown
    values: [0s, 8m]
""",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    done = subprocess.run(
        _cli("--sweep", sweep, "--out", out, "--jobs", "2"),
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "5 variants × 1 scenario(s) × 2 seed(s) = 10 runs on 2 worker processes" in done.stderr
    assert "Pareto frontier" in done.stdout and "hpa_like" in done.stdout

    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and not results["interrupted"] and results["runs_done"] == 10
    assert [v["label"] for v in results["variants"]] == ["base", "v1", "v2", "v3", "v4"]
    runs = {(r["variant"], r["seed"]): r for r in results["runs"]}
    assert len(runs) == 10
    for row in runs.values():
        assert row.keys() >= {*RUN_FIELDS, "hpa_like", "vs_hpa_like", "oracle"}
        assert row["hpa_like"].keys() >= set(RUN_FIELDS)
        assert row["vs_hpa_like"]["cost"] == pytest.approx(row["cost"] / row["hpa_like"]["cost"])
    # The HPA-like baseline is the same yardstick for every variant of a seed (it tracks the base's 7).
    for seed in (3, 4):
        hpa = {json.dumps(runs[(v, seed)]["hpa_like"], sort_keys=True) for v in ("base", "v1", "v4")}
        assert len(hpa) == 1
        assert runs[("base", seed)]["hpa_like"]["targets"] == {"streams-per-node": 7.0}

    doc = json.loads((out / "frontier.json").read_text())
    front = doc["frontier"]
    assert front and doc["aggregate"] == "worst_ratio"
    everyone = {p["variant"]: p for p in doc["variants"]}
    assert len(everyone) == 5

    def objectives(point: dict[str, Any]) -> tuple[float, ...]:
        return tuple(point["objectives"][k] for k in ("cost", "waiting", "launches"))

    for point in front:
        worst = tuple(max(runs[(point["variant"], s)]["vs_hpa_like"][k] for s in (3, 4)) for k in OBJECTIVES)
        assert objectives(point) == pytest.approx(worst)
        mine = objectives(point)
        for other in everyone.values():
            theirs = objectives(other)
            assert not (all(a <= b for a, b in zip(theirs, mine, strict=True)) and theirs != mine)
    off_front = set(everyone) - {p["variant"] for p in front}
    for label in off_front:
        theirs = objectives(everyone[label])
        assert any(all(a <= b for a, b in zip(objectives(p), theirs, strict=True)) for p in front)

    # Each frontier patch, applied to the base policy, validates and replays to the same figures.
    yaml = YAML(typ="safe", pure=True)
    loaded = load_scenario(scenario)
    for point in front:
        label = point["variant"]
        patch_file = out / "frontier" / f"{label}.patch.yaml"
        assert patch_file.read_text() == point["patch"]
        patch = yaml.load(point["patch"]) or {}
        if label != "base":
            assert patch and set(patch) == {"scaling"}
        patched = tmp_path / f"{label}.yaml"
        patched.write_text(patched_policy_text(POLICIES / "asr-aws.yaml", patch), encoding="utf-8")
        assert load_policy(patched) == load_policy(out / "frontier" / f"{label}.yaml")
        seeded = replace(loaded, spec=loaded.spec.model_copy(update={"seed": 4}))
        replayed = dry_run(seeded, compare=[patched])
        figures = replayed.runs[0].summary
        assert {k: figures[k] for k in RUN_FIELDS} == {k: runs[(label, 4)][k] for k in RUN_FIELDS}
    html = (out / "report.html").read_text()
    assert "<svg" in html and "Pareto frontier" in html and "HPA-like" in html


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_ctrl_c_ends_the_workers_writes_what_finished_and_exits_130(tmp_path: Path) -> None:
    """SIGINT mid-sweep: exit 130, no traceback, partial results written, no worker left running."""
    scenario = _scenario(tmp_path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"""scenarios: [{scenario.name}]
parameters:
  target:
    path: scaling.checks[streams-per-node].target
    range: {{min: 5, max: 9, count: 25}}  # 7 is one of them: the base is variant v145
  window:
    path: scaling.behavior.scale_in.stabilization
    range: {{min: 0, max: 600, step: 60, unit: s}}
""",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _cli("--sweep", sweep, "--out", out, "--jobs", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        assert proc.stderr is not None
        for line in proc.stderr:  # progress lines: the first finished run is always reported
            seen.append(line)
            if "runs done" in line:
                break
        assert any("runs done" in line for line in seen), "".join(seen)
        workers = _children(proc.pid)
        assert len(workers) >= 2
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted:" in stderr
    results = json.loads((out / "results.json").read_text())
    assert results["interrupted"] and not results["complete"]
    assert 1 <= results["runs_done"] < results["runs_total"] == 275
    assert len(results["runs"]) == results["runs_done"]
    assert (out / "frontier.json").exists() and (out / "report.html").exists()
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if _running(pid)]


def test_bad_sweep_file_exits_2_with_file_line_errors(cli_app: typer.Typer, tmp_path: Path) -> None:
    """An unknown path is one error line with the sweep file's line, exit 2, and nothing is run."""
    scenario = _scenario(tmp_path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"scenarios: [{scenario.name}]\n"
        "parameters:\n  t:\n    path: scaling.chekcs[x].target\n    values: [1]\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli_app, ["dry-run", "--sweep", str(sweep), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"error: {sweep}:4:5: parameters.t" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
    mixed = CliRunner().invoke(
        cli_app, ["dry-run", "--sweep", str(sweep), "--scenario", str(scenario), "--out", str(tmp_path / "o")]
    )
    assert mixed.exit_code == 2 and "--sweep names its scenarios" in mixed.stderr
