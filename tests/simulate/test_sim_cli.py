"""``autoscaler dry-run``: outputs, determinism, --compare, and clear errors instead of tracebacks."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from sim_helpers import POLICIES, TWITTER
from typer.testing import CliRunner

from autoscaler.errors import ScenarioError
from autoscaler.simulate.report import TIMELINE_COLUMNS
from autoscaler.simulate.scenario import load_scenario

SUMMARY_FIELDS = {
    "duration_s",
    "tick_s",
    "streams_per_node",
    "boot_s",
    "min_nodes",
    "max_nodes",
    "node_seconds",
    "cost",
    "violation_seconds",
    "unmet_stream_seconds",
    "peak_nodes",
    "launches",
    "terminations",
    "oracle_node_seconds",
    "cost_ratio",
}


def _invoke(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_dry_run_writes_report_summary_and_timeline(
    cli_app: typer.Typer, write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    """One run writes report.html, summary.json with the contract fields and baselines, and timeline.csv."""
    out = tmp_path / "out"
    code, stdout, stderr = _invoke(cli_app, "dry-run", "--scenario", str(write_scenario()), "--out", str(out))
    assert code == 0, stderr
    assert "asr-aws:" in stdout and "hpa_like:" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_FIELDS
    assert summary["baselines"]["static_peak"].keys() >= SUMMARY_FIELDS
    assert summary["baselines"]["hpa_like"].keys() >= SUMMARY_FIELDS
    assert summary["duration_s"] == 6 * 3600 and summary["tick_s"] == 15
    assert (summary["min_nodes"], summary["max_nodes"], summary["streams_per_node"], summary["boot_s"]) == (
        2,
        20,
        10,
        180,
    )
    assert summary["cost_ratio"] == pytest.approx(
        summary["node_seconds"] / summary["oracle_node_seconds"], abs=1e-4
    )
    assert summary["node_seconds"] >= summary["oracle_node_seconds"]
    assert summary["baselines"]["static_peak"]["violation_seconds"] == 0
    assert summary["baselines"]["static_peak"]["peak_nodes"] == summary["demand"]["peak_required_nodes"] == 12
    with (out / "timeline.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == TIMELINE_COLUMNS
    assert len(rows) - 1 == 6 * 3600 // 15
    assert rows[1][0] == "0" and rows[2][0] == "15"
    demand = [int(r[1]) for r in rows[1:]]
    assert max(demand) == summary["demand"]["peak_streams"]
    html = (out / "report.html").read_text()
    assert (
        html.count("<svg") >= 2
        and "<script" not in html
        and "http://" not in re.sub(r'"http://www\.w3\.org/(2000/svg|1999/xlink)"', "", html)
    )
    assert summary["risk"]["unmet_stream_seconds"] == summary["unmet_stream_seconds"]
    assert summary["risk"]["drain_cuts"] == summary["drain_cut_streams"]
    assert "oracle" in html and "Recommendations" in html
    # Six hours: the whole window (with nodes by state) and the worst hour; risk in users' terms.
    assert "What users would have seen" in html and "The worst hour" in html and "Per hour of day" in html


def test_same_scenario_and_seed_give_identical_outputs(
    cli_app: typer.Typer, write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    """Two runs of one scenario produce byte-identical files; another seed changes them."""
    scenario = write_scenario()
    outputs = []
    for name in ("a", "b"):
        # The risk options are replays with the same seeds; the figures and page are what this pins.
        code, _, stderr = _invoke(
            cli_app, "dry-run", "--scenario", str(scenario), "--out", str(tmp_path / name), "--no-options"
        )
        assert code == 0, stderr
        outputs.append(
            {f: (tmp_path / name / f).read_bytes() for f in ("summary.json", "timeline.csv", "report.html")}
        )
    assert outputs[0] == outputs[1]
    code, _, _ = _invoke(
        cli_app,
        "dry-run",
        "--scenario",
        str(write_scenario("seed.yaml", seed=99)),
        "--out",
        str(tmp_path / "c"),
        "--no-options",
    )
    assert code == 0
    assert (tmp_path / "c" / "timeline.csv").read_bytes() != outputs[0]["timeline.csv"]


def test_compare_puts_policies_side_by_side_on_one_demand(
    cli_app: typer.Typer, write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    """--compare replays each policy on the same demand; each gets a folder, the report shows them all."""
    out = tmp_path / "cmp"
    code, _stdout, stderr = _invoke(
        cli_app,
        "dry-run",
        "--scenario",
        str(write_scenario()),
        "--out",
        str(out),
        "--no-options",
        "--compare",
        str(POLICIES / "asr-aws.yaml"),
        str(POLICIES / "asr-local.yaml"),
    )
    assert code == 0, stderr
    combined = json.loads((out / "summary.json").read_text())
    assert list(combined["policies"]) == ["asr-aws", "asr-local"]
    for label in ("asr-aws", "asr-local"):
        own = json.loads((out / label / "summary.json").read_text())
        assert own["oracle_node_seconds"] == combined["baselines"]["oracle"]["node_seconds"]
        assert (out / label / "timeline.csv").exists()
    aws, local = combined["policies"]["asr-aws"], combined["policies"]["asr-local"]
    assert aws["node_seconds"] != local["node_seconds"]
    html = (out / "report.html").read_text()
    assert "asr-aws" in html and "asr-local" in html
    # The difference panel: each compared policy's capacity against the first's.
    assert "Ready capacity minus asr-aws" in html and "asr-local − asr-aws" in html


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"policy": "missing-policy.yaml"}, "missing-policy.yaml does not exist"),
        ({"demand": {"start": "1d", "duration": "1d"}}, "runs past the end of the trace"),
        ({"demand": {"format": "parquet"}}, "demand.format"),
        ({"demand": {"scale": 0.1}}, "give peak_nodes or scale, not both"),
        (
            {"workload": {"audio_seconds": {"distribution": "lognormal", "median": 60, "p95": 30}}},
            "p95 must be greater",
        ),
        ({"fleeet": {"streams_per_node": 10}}, "fleeet: unknown key"),
    ],
)
def test_bad_scenarios_exit_2_with_one_error_line(
    cli_app: typer.Typer,
    write_scenario: Callable[..., Path],
    tmp_path: Path,
    changes: dict[str, object],
    message: str,
) -> None:
    """A missing policy, a window outside the trace, or an invalid key prints error: ... and exits 2."""
    code, _, stderr = _invoke(
        cli_app, "dry-run", "--scenario", str(write_scenario(**changes)), "--out", str(tmp_path / "out")
    )
    assert code == 2
    assert stderr.startswith("error: ") and message in stderr
    assert "Traceback" not in stderr


def test_malformed_trace_exits_2_naming_the_value(
    cli_app: typer.Typer, write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    """A corrupted trace is reported as error: <file>: ... with exit status 2, not a traceback."""
    broken = tmp_path / "broken.tbz2"
    broken.write_bytes(TWITTER.read_bytes()[:20_000])
    code, _, stderr = _invoke(
        cli_app,
        "dry-run",
        "--scenario",
        str(write_scenario(demand={"path": str(broken)})),
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and stderr.startswith("error: ") and "broken.tbz2" in stderr
    assert "Traceback" not in stderr


def test_missing_scenario_and_invalid_yaml_exit_2(cli_app: typer.Typer, tmp_path: Path) -> None:
    """No scenario file, or one that is not YAML, is an error line and exit status 2."""
    code, _, stderr = _invoke(
        cli_app, "dry-run", "--scenario", str(tmp_path / "none.yaml"), "--out", str(tmp_path)
    )
    assert code == 2 and "no such scenario file" in stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: [unclosed\n")
    code, _, stderr = _invoke(cli_app, "dry-run", "--scenario", str(bad), "--out", str(tmp_path))
    assert code == 2 and "invalid YAML" in stderr


def test_policy_paths_resolve_against_the_scenario_folder(tmp_path: Path) -> None:
    """A relative policy path is read from the scenario's folder, not the working directory."""
    folder = tmp_path / "season"
    folder.mkdir()
    (folder / "pool.yaml").write_text((POLICIES / "hpa-like.yaml").read_text())
    scenario = folder / "s.yaml"
    scenario.write_text(
        f"policy: pool.yaml\ndemand: {{format: twitter, path: {TWITTER}, duration: 1h, scale: 0.01}}\n"
    )
    loaded = load_scenario(scenario)
    assert loaded.policy_path == (folder / "pool.yaml").resolve()
    assert loaded.policy.pool == "asr-hpa-like"


def test_invalid_policy_named_by_a_scenario_quotes_its_problems(tmp_path: Path) -> None:
    """A scenario naming an invalid policy is a ScenarioError carrying the policy's own problems."""
    policy = tmp_path / "bad-policy.yaml"
    policy.write_text(
        "pool: x\nlaunch: {model_version: v, instance_types: [{name: a, price_per_hour: 1}]}\n"
        "scaling: {min_nodes: 5, max_nodes: 2}\n"
    )
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        f"policy: bad-policy.yaml\ndemand: {{format: twitter, path: {TWITTER}, duration: 1h}}\n"
    )
    with pytest.raises(ScenarioError, match="is not a valid policy") as caught:
        load_scenario(scenario)
    assert "min_nodes (5) is greater than max_nodes (2)" in str(caught.value)


def test_warm_sizes_give_the_frontier_a_recommendation_and_the_warm_oracle(
    cli_app: typer.Typer, write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    """--warm-sizes replays the policy with each warm pool size: summary.json holds the frontier (cost
    running + stopped), the recommended size, and the warm oracle, a bound no dearer than the cold one."""
    out = tmp_path / "out"
    code, stdout, stderr = _invoke(cli_app, "dry-run", "--scenario", str(write_scenario()), "--out", str(out),
                                   "--warm-sizes", "0,2", "--no-options")
    assert code == 0, stderr
    assert "warm pool 0:" in stdout and "warm pool 2:" in stdout and "recommended warm pool size:" in stdout
    summary = json.loads((out / "summary.json").read_text())
    frontier = {row["size"]: row for row in summary["warm_pool_frontier"]}
    assert set(frontier) == {0, 2}
    assert frontier[0]["stopped_cost"] == 0 and frontier[0]["warm_starts"] == 0
    two = frontier[2]
    assert two["cost"] == pytest.approx(two["running_cost"] + two["stopped_cost"], abs=0.02)
    assert frontier[2]["violation_seconds"] <= frontier[0]["violation_seconds"]
    assert summary["recommended_warm_pool_size"] in (0, 2)
    baselines = summary["baselines"]
    assert baselines["oracle_warm"]["cost"] <= baselines["oracle"]["cost"]
    for row in frontier.values():
        assert row["cost"] >= baselines["oracle_warm"]["cost"]
    assert "warm pool 2" in (out / "report.html").read_text()


def test_bad_warm_sizes_are_a_clear_error(
    cli_app: typer.Typer, write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    """--warm-sizes with a word or a negative number exits 2 with a message, no traceback."""
    for bad in ("two", "-1"):
        code, _, stderr = _invoke(cli_app, "dry-run", "--scenario", str(write_scenario()), "--out",
                                  str(tmp_path / "o"), "--warm-sizes", bad)
        assert code == 2 and "--warm-sizes" in stderr and "Traceback" not in stderr


def test_the_policy_run_reuses_its_frontier_replay(write_scenario: Callable[..., Path]) -> None:
    """When the policy's own warm pool size is on the frontier, its run is that replay (not a second one)."""
    from autoscaler.simulate.run import dry_run

    scenario = load_scenario(write_scenario())
    size = scenario.policy.warm_pool.size if scenario.policy.warm_pool else 0
    assert isinstance(size, int)
    result = dry_run(scenario, warm_sizes=[0, size])
    (policy_run,) = result.runs
    assert any(policy_run.replay is r.replay for r in result.warm_frontier)
    assert policy_run.label == "asr-aws"
