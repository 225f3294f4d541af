"""The policy loader and validator: golden messages, example policies, odd inputs, CLI, schema, watcher."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import jsonschema
import pytest
import typer
from ruamel.yaml import YAML
from typer.testing import CliRunner

from autoscaler.errors import PolicyError
from autoscaler.policy.commands import register
from autoscaler.policy.load import PolicyWatcher, load_policy, parse_policy, validate_paths
from autoscaler.policy.model import PoolPolicy
from autoscaler.policy.schema import policy_schema, policy_schema_text

HERE = Path(__file__).resolve().parent
BROKEN = HERE / "broken"
POLICIES = HERE.parents[1] / "policies"
BROKEN_FILES = sorted(BROKEN.glob("*.yaml"))
EXAMPLES = sorted(POLICIES.glob("*.yaml"))
#: ``UPDATE_GOLDEN=1 pytest tests/policy`` rewrites the .expected files (review the diff!).
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test entry point standing in for autoscaler.cli."""

    register(app)
    return app


# ---------------------------------------------------------------------------------------------- golden
def test_enough_broken_files() -> None:
    """The golden folder covers at least eight kinds of broken policy."""
    assert len(BROKEN_FILES) >= 8


@pytest.mark.parametrize("path", BROKEN_FILES, ids=lambda p: p.stem)
def test_validator_golden_messages(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every broken file produces exactly its expected file:line:column: field.path: message lines."""
    monkeypatch.chdir(HERE)
    relative = Path("broken") / path.name
    problems = validate_paths([relative])[relative]
    expected_file = path.with_suffix(".expected")
    if UPDATE:
        expected_file.write_text("\n".join(problems) + "\n", encoding="utf-8")
    expected = expected_file.read_text(encoding="utf-8").splitlines()
    assert problems == expected
    assert problems, "a broken file must produce at least one problem"
    for line in problems:
        assert line.startswith(f"{relative}:")
        _, row, column, rest = line.split(":", 3)
        assert int(row) >= 1 and int(column) >= 1 and rest.startswith(" ")


def test_cli_validate_prints_all_errors_and_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """`policy validate` prints every problem of every file and exits 1 when any file is invalid."""
    monkeypatch.chdir(HERE)
    result = CliRunner().invoke(_app(), ["policy", "validate", "broken"])
    assert result.exit_code == 1, result.output
    expected = [line for p in BROKEN_FILES for line in p.with_suffix(".expected").read_text().splitlines()]
    assert result.stdout.splitlines() == expected
    assert "Traceback" not in result.output
    assert f"{len(BROKEN_FILES)} of {len(BROKEN_FILES)} policy file(s) invalid" in result.stderr


def test_cli_validate_examples_exit_0() -> None:
    """`policy validate policies/` exits 0 and prints no problem when every file is valid."""
    result = CliRunner().invoke(_app(), ["policy", "validate", str(POLICIES)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"{len(EXAMPLES)} policy file(s) valid" in result.stderr


def test_cli_validate_mixed_exit_1() -> None:
    """One invalid file among valid ones makes the exit status 1."""
    result = CliRunner().invoke(_app(), ["policy", "validate", str(EXAMPLES[0]), str(BROKEN / "empty.yaml")])
    assert result.exit_code == 1
    assert "empty.yaml:1:1:" in result.stdout


# -------------------------------------------------------------------------------------------- examples
def test_examples_exist() -> None:
    """The four example pools ship in policies/."""
    names = {p.name for p in EXAMPLES}
    assert names >= {"asr-local.yaml", "asr-aws.yaml", "asr-alibaba.yaml", "hpa-like.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_policy_validates(path: Path) -> None:
    """Every policy shipped in policies/ is valid and names a signal on each check."""
    pol = load_policy(path)
    assert pol.scaling.checks
    assert all(c.signal is not None for c in pol.scaling.checks)


@pytest.mark.parametrize("name", ["asr-local.yaml", "asr-aws.yaml", "asr-alibaba.yaml"])
def test_asr_examples_carry_the_reference_rules(name: str) -> None:
    """The ASR examples have the GPU-memory > 90 % rule, streams-per-node tracking and a p95 guard."""
    pol = load_policy(POLICIES / name)
    signals = {c.signal: c for c in pol.scaling.checks}
    gpu = signals["gpu_memory_utilization"]
    assert gpu.type == "step" and gpu.steps[0].above == 0.9 and gpu.steps[0].change == 2
    assert signals["streams_per_node"].type == "target_tracking"
    assert "p95_latency_seconds" in signals


def test_aws_example_reference_bounds() -> None:
    """The AWS example is the reference deployment: min 5, max 20, a weight-3 type."""
    pol = load_policy(POLICIES / "asr-aws.yaml")
    assert (pol.scaling.min_nodes, pol.scaling.max_nodes) == (5, 20)
    assert any(t.weight == 3 for t in pol.launch.instance_types)


def test_hpa_like_is_target_tracking_only() -> None:
    """The HPA-like baseline: one target-tracking check, tolerance 0.1, 300 s scale-in window."""
    pol = load_policy(POLICIES / "hpa-like.yaml")
    assert [c.type for c in pol.scaling.checks] == ["target_tracking"]
    assert pol.scaling.checks[0].tolerance == 0.1  # type: ignore[union-attr]
    assert pol.scaling.behavior.scale_in.stabilization.total_seconds() == 300
    assert not pol.scaling.schedules


# ---------------------------------------------------------------------------------------------- schema
def test_shipped_schema_is_up_to_date() -> None:
    """policies/policy.schema.json equals the schema generated from the model (run `policy schema -o`)."""
    assert (POLICIES / "policy.schema.json").read_text(encoding="utf-8") == policy_schema_text()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_validate_against_json_schema(path: Path) -> None:
    """Editors validating with the JSON Schema accept every example policy."""
    data = json.loads(json.dumps(YAML(typ="safe", pure=True).load(path.read_text()), default=str))
    jsonschema.validate(data, policy_schema())


def test_json_schema_rejects_unknown_key() -> None:
    """The schema, like the model, rejects unknown keys (editors flag typos while typing)."""
    data = YAML(typ="safe", pure=True).load((POLICIES / "asr-local.yaml").read_text())
    data["scaling"]["checks"][0]["targt"] = 7
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(json.dumps(data, default=str)), policy_schema())


def test_cli_schema_prints_and_writes(tmp_path: Path) -> None:
    """`policy schema` prints the schema, and -o writes the same text to a file."""
    runner = CliRunner()
    printed = runner.invoke(_app(), ["policy", "schema"])
    assert printed.exit_code == 0
    assert json.loads(printed.stdout)["title"] == "GPU autoscaler pool policy"
    target = tmp_path / "schema.json"
    written = runner.invoke(_app(), ["policy", "schema", "-o", str(target)])
    assert written.exit_code == 0
    assert target.read_text() == printed.stdout


# ------------------------------------------------------------------------------------------ odd inputs
@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"   \n# only a comment\n", id="comment-only"),
        pytest.param(b"\xff\xfe\x00garbage", id="binary"),
        pytest.param(b"pool: a\x00b\n", id="nul"),
        pytest.param(b"[1, 2]\n", id="list"),
        pytest.param(b"42\n", id="scalar"),
        pytest.param(b"pool: [\n", id="unclosed"),
        pytest.param(b"a: &a [*a]\n", id="recursive-alias"),
        pytest.param(b"a: !!python/object:os.system ls\n", id="python-tag"),
        pytest.param(b"---\npool: a\n---\npool: b\n", id="two-documents"),
        pytest.param(b"[" * 5000 + b"]" * 5000, id="deep-nesting"),
        pytest.param(b'x: "\\x07"\nlaunch: \x07\n', id="control-char"),
        pytest.param(b"pool: a\nlaunch: {model_version: v, instance_types: [{name: x, "
                     b"price_per_hour: 1e999}]}\nscaling: {min_nodes: 1, max_nodes: 2, tick: 1e999}\n",
                     id="huge-numbers"),
        pytest.param(b"? [a, b]\n: 1\n1: 2\nnull: 3\n", id="odd-keys"),
        pytest.param(b"a: &x [1, 2]\nb: [*x, *x]\n", id="aliases"),
        pytest.param(b"pool: asr\nscaling: {min_nodes: 1, <<: {max_nodes: 2}}\n", id="merge-key"),
    ],
)
def test_any_input_gives_policy_error_not_traceback(content: bytes) -> None:
    """Whatever the bytes, parsing raises PolicyError with file:line:column problems, nothing else."""
    with pytest.raises(PolicyError) as info:
        parse_policy(content, "f.yaml")
    assert info.value.problems
    for problem in info.value.problems:
        assert problem.startswith("f.yaml:") and "\n" not in problem


def test_alias_bomb_is_refused() -> None:
    """A billion-laughs document is refused instead of expanded."""
    lines = ["a0: [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    anchored = "\n".join(line.replace(f"a{i}: [", f"a{i}: &a{i} [", 1) for i, line in enumerate(lines))
    with pytest.raises(PolicyError) as info:
        parse_policy(anchored.encode(), "bomb.yaml")
    assert "expands to more than" in info.value.problems[0]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    """A missing file and a directory are reported as problems, not exceptions."""
    results = validate_paths([tmp_path / "nope.yaml"])
    assert results[tmp_path / "nope.yaml"] == [f"{tmp_path / 'nope.yaml'}:1:1: <file>: no such file"]
    with pytest.raises(PolicyError, match="directory"):
        load_policy(tmp_path)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    assert validate_paths([empty_dir])[empty_dir][0].endswith("is a directory, not a policy file")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    """A file without read permission is a problem line, not a traceback."""
    path = tmp_path / "secret.yaml"
    path.write_text("pool: a\n")
    path.chmod(0)
    try:
        problems = validate_paths([path])[path]
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert "cannot read" in problems[0]


def test_unopenable_path(tmp_path: Path) -> None:
    """A path that cannot be opened (a symlink loop: ELOOP, even for root) is a problem line."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.symlink_to(b)
    b.symlink_to(a)
    problems = validate_paths([a])[a]
    assert problems[0].startswith(f"{a}:1:1: <file>: cannot read: ")


def test_directory_argument_expands_to_yaml_files() -> None:
    """A directory argument validates each *.yaml file in it, in name order."""
    assert list(validate_paths([POLICIES])) == EXAMPLES


def test_problem_positions_point_at_keys_and_values() -> None:
    """Values are reported at the value, unknown keys at the key, missing keys at the parent key."""
    text = (b"pool: asr\nlaunch:\n  instance_types: [{name: x, price_per_hour: 1}]\nscaling:\n"
            b"  min_nodes: -1\n  max_nodes: 2\n  bogus: 1\n")
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    assert info.value.problems == [
        "p.yaml:2:1: launch.model_version: required key is missing",
        "p.yaml:5:14: scaling.min_nodes: Input should be greater than or equal to 0",
        "p.yaml:7:3: scaling.bogus: unknown key 'bogus'; allowed keys: behavior, boot_lead, checks, "
        "forecast, look_ahead, max_nodes, min_nodes, on_missing_data, schedules, tick",
    ]


def test_dates_parse_from_yaml() -> None:
    """YAML dates become calendar dates (the loader keeps them as text for pydantic to parse)."""
    pol = load_policy(POLICIES / "asr-alibaba.yaml")
    term = next(s for s in pol.scaling.schedules if s.name == "term-start")
    assert term.dates[0].start.isoformat() == "2025-09-01"


# --------------------------------------------------------------------------------------------- watcher
def _write(path: Path, text: str, bump: int) -> None:
    path.write_text(text, encoding="utf-8")
    # Filesystems with coarse timestamps would hide a quick rewrite; set a distinct mtime.
    os.utime(path, ns=(1_700_000_000_000_000_000 + bump, 1_700_000_000_000_000_000 + bump))


def _error(watcher: PolicyWatcher) -> PolicyError | None:
    # A call, so the type checker does not carry a narrowed ``last_error`` across ``current()``.
    return watcher.last_error


def test_watcher_keeps_last_valid_policy(tmp_path: Path) -> None:
    """A changed invalid file keeps the last valid policy and exposes the error until it is fixed."""
    good = (POLICIES / "asr-local.yaml").read_text(encoding="utf-8")
    path = tmp_path / "pool.yaml"
    _write(path, good, 1)
    watcher = PolicyWatcher(path)
    first = watcher.current()
    assert (watcher.generation, _error(watcher)) == (1, None)

    _write(path, good.replace("max_nodes: 6", "max_nodes: 0"), 2)
    assert watcher.current() is first
    error = _error(watcher)
    assert error is not None
    assert "scaling.max_nodes" in error.problems[0]
    assert watcher.failures == 1

    _write(path, good.replace("max_nodes: 6", "max_nodes: 0"), 3)  # same bad content, touched
    assert watcher.current() is first
    assert watcher.failures == 1  # reported once per bad version

    path.unlink()
    assert watcher.current() is first
    assert watcher.failures == 2
    error = _error(watcher)
    assert error is not None
    assert "no such file" in error.problems[0]

    _write(path, good.replace("max_nodes: 6", "max_nodes: 8"), 4)
    new = watcher.current()
    assert new.scaling.max_nodes == 8
    assert (watcher.generation, _error(watcher)) == (2, None)


def test_watcher_ignores_touch_without_change(tmp_path: Path) -> None:
    """Rewriting the same content is not a new policy."""
    path = tmp_path / "pool.yaml"
    text = (POLICIES / "hpa-like.yaml").read_text(encoding="utf-8")
    _write(path, text, 1)
    watcher = PolicyWatcher(path)
    _write(path, text, 2)
    watcher.current()
    assert watcher.generation == 1


def test_watcher_refuses_to_start_on_invalid_file(tmp_path: Path) -> None:
    """A controller does not start on an invalid policy: the constructor raises PolicyError."""
    path = tmp_path / "pool.yaml"
    path.write_text("pool: [\n")
    with pytest.raises(PolicyError):
        PolicyWatcher(path)


def test_policy_model_is_frozen() -> None:
    """A loaded policy cannot be mutated by the code that uses it."""
    pol: PoolPolicy = load_policy(POLICIES / "asr-local.yaml")
    with pytest.raises(ValueError, match="frozen"):
        pol.scaling.min_nodes = 3
