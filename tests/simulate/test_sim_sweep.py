"""The sweep file, parameter paths into a policy, patches and the Pareto frontier (no replays here)."""

from __future__ import annotations

import copy
import functools
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from sim_helpers import BASE_SCENARIO, POLICIES

from autoscaler.errors import SweepError
from autoscaler.policy.load import load_policy, load_policy_data, parse_policy
from autoscaler.simulate.sweep import (
    Item,
    Key,
    PathError,
    RangeSpec,
    apply_patch,
    dump_yaml,
    get_value,
    load_sweep,
    parse_path,
    patched_policy_text,
    policy_patch,
    set_value,
)
from autoscaler.simulate.sweep_report import pareto_front

AWS = POLICIES / "asr-aws.yaml"


def _write(path: Path, data: Any) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        YAML(typ="safe", pure=True).dump(data, handle)
    return path


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    """A small scenario file (only loaded here, never replayed)."""
    return _write(tmp_path / "scenario.yaml", BASE_SCENARIO)


def _sweep(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- paths
def test_parse_path_reads_keys_names_and_indices() -> None:
    """Dotted keys, [name] items (dots allowed inside) and [N] indices parse into steps."""
    assert parse_path("scaling.checks[streams-per-node].target") == (
        Key("scaling"),
        Key("checks"),
        Item("streams-per-node"),
        Key("target"),
    )
    assert parse_path("launch.instance_types[g5.xlarge].streams") == (
        Key("launch"),
        Key("instance_types"),
        Item("g5.xlarge"),
        Key("streams"),
    )
    assert parse_path("scaling.checks[queued-streams].steps[0].change")[4:] == (Item(0), Key("change"))
    assert parse_path('scaling.checks["gpu-memory"].for_ticks')[2] == Item("gpu-memory")


@pytest.mark.parametrize(
    "bad", ["", "scaling..tick", ".scaling", "scaling.", "[0].x", "scaling.checks[]", "a b"]
)
def test_parse_path_rejects_malformed_paths(bad: str) -> None:
    """Empty paths, doubled or dangling dots, a leading selector, empty [] and spaces are errors."""
    with pytest.raises(PathError):
        parse_path(bad)


def test_set_and_get_address_list_items_by_name() -> None:
    """A [name] step finds the list item whose name is that, wherever it sits in the list."""
    _, data = load_policy_data(AWS)
    set_value(data, parse_path("scaling.checks[queued-streams].steps[0].change"), 3)
    set_value(data, parse_path("scaling.behavior.scale_in.stabilization"), "6m")
    assert data["scaling"]["checks"][2]["steps"][0]["change"] == 3
    assert get_value(data, parse_path("scaling.checks[queued-streams].steps[0].change")) == 3
    assert get_value(data, parse_path("scaling.behavior.scale_in.stabilization")) == "6m"
    assert load_policy(AWS).scaling.checks[2].name == "queued-streams"


def test_set_value_creates_missing_sections_for_the_validator_to_judge() -> None:
    """A key the file leaves out is created (its section too); the model then accepts or rejects it."""
    _, data = load_policy_data(POLICIES / "hpa-like.yaml")
    set_value(data, parse_path("scaling.behavior.scale_in.cooldown"), "2m")
    assert (
        parse_policy(dump_yaml(data).encode(), "x").scaling.behavior.scale_in.cooldown.total_seconds() == 120
    )


def test_unknown_list_item_and_stepping_into_a_value_are_path_errors() -> None:
    """A name no item has lists the names there are; a key under a plain value says what the value is."""
    _, data = load_policy_data(AWS)
    with pytest.raises(PathError, match=r"no item named 'nope'.*streams-per-node, gpu-memory"):
        set_value(data, parse_path("scaling.checks[nope].target"), 1)
    with pytest.raises(PathError, match=r"no item \[9\]"):
        set_value(data, parse_path("scaling.checks[9].target"), 1)
    with pytest.raises(PathError, match=r"scaling\.tick is the value '15s', not a mapping"):
        set_value(data, parse_path("scaling.tick.seconds"), 1)


# ----------------------------------------------------------------------------------------- patches
def test_patch_holds_only_the_changed_keys_in_the_policy_structure() -> None:
    """Named items become `- name:` entries with the changed key; index-addressed lists come whole."""
    _, base = load_policy_data(AWS)
    variant = copy.deepcopy(base)
    paths = [
        parse_path("scaling.checks[streams-per-node].target"),
        parse_path("scaling.behavior.scale_in.cooldown"),
        parse_path("scaling.behavior.scale_out.policies[1].nodes"),
    ]
    for path, value in zip(paths, [6, "3m", 6], strict=True):
        set_value(variant, path, value)
    patch = policy_patch(variant, paths)
    assert patch == {
        "scaling": {
            "checks": [{"name": "streams-per-node", "target": 6}],
            "behavior": {
                "scale_in": {"cooldown": "3m"},
                "scale_out": {"policies": [{"percent": 100, "period": "15s"}, {"nodes": 6, "period": "15s"}]},
            },
        }
    }
    merged = copy.deepcopy(base)
    apply_patch(merged, patch)
    assert merged == variant


@functools.cache
def _aws_data() -> dict[str, Any]:
    return load_policy_data(AWS)[1]


@settings(max_examples=10, deadline=None)
@given(
    target=st.sampled_from([5, 6.5, 8]),
    change=st.integers(min_value=1, max_value=4),
    window=st.sampled_from(["0s", "90s", "10m"]),
    ticks=st.integers(min_value=1, max_value=5),
)
def test_applying_a_patch_to_the_base_gives_the_variant(
    target: float, change: int, window: str, ticks: int
) -> None:
    """For any values, base + policy_patch(variant) == variant, on plain data and on the commented file."""
    base = _aws_data()
    paths = [
        parse_path("scaling.checks[streams-per-node].target"),
        parse_path("scaling.checks[queued-streams].steps[0].change"),
        parse_path("scaling.behavior.scale_in.stabilization"),
        parse_path("scaling.checks[gpu-memory].for_ticks"),
    ]
    variant = copy.deepcopy(base)
    for path, value in zip(paths, [target, change, window, ticks], strict=True):
        set_value(variant, path, value)
    patch = policy_patch(variant, paths)
    merged = copy.deepcopy(base)
    apply_patch(merged, patch)
    assert merged == variant
    text = patched_policy_text(AWS, patch)
    assert "# The reference deployment on AWS EC2" in text  # comments kept
    assert parse_policy(text.encode(), "patched") == parse_policy(dump_yaml(variant).encode(), "variant")


def test_range_grid_count_unit_and_random_draws() -> None:
    """A step grid includes both ends, count spaces evenly, unit writes durations, draws stay in range."""
    assert RangeSpec(min=60, max=300, step=120).grid() == [60, 180, 300]
    assert RangeSpec(min=0, max=600, step=300, unit="s").grid() == ["0s", "300s", "600s"]
    assert RangeSpec(min=6, max=7, count=3).grid() == [6.0, 6.5, 7.0]
    assert RangeSpec(min=0.1, max=0.3, step=0.1).grid() == [0.1, 0.2, 0.3]
    rng = np.random.default_rng(0)
    draws = [RangeSpec(min=1, max=4).sample(rng) for _ in range(50)]
    assert set(draws) <= {1, 2, 3, 4} and all(isinstance(d, int) for d in draws)


# -------------------------------------------------------------------------------------- sweep file
def test_load_sweep_builds_the_grid_and_recognises_the_base(tmp_path: Path, scenario: Path) -> None:
    """Grid = product of the values; a variant equal to the base (4m == 240s) is marked, not added again."""
    path = _sweep(
        tmp_path,
        f"""policy: {AWS}
scenarios: [{scenario.name}]
seeds: [1, 2]
parameters:
  target:
    path: scaling.checks[streams-per-node].target
    values: [6, 7]
  window:
    path: scaling.behavior.scale_in.stabilization
    range: {{min: 120, max: 240, step: 120, unit: s}}
""",
    )
    sweep = load_sweep(path)
    assert [v.assignment for v in sweep.variants] == [
        {"target": t, "window": w} for t, w in itertools.product([6, 7], ["120s", "240s"])
    ]
    assert [v.label for v in sweep.variants if v.is_base] == ["v4"]
    assert [s.spec.seed for s, _ in sweep.runs] == [1, 2]
    assert sweep.lines == {"target": 5, "window": 8}
    base = next(iter(sweep.bases.values()))
    assert sweep.patch(sweep.variants[3], base) == {}


def test_random_search_draws_distinct_variants_and_adds_the_base(tmp_path: Path, scenario: Path) -> None:
    """search: random draws up to `samples` distinct variants (seeded) and the base is replayed too."""
    text = f"""scenarios: [{scenario.name}]
search: random
samples: 12
sample_seed: 3
parameters:
  target:
    path: scaling.checks[streams-per-node].target
    range: {{min: 5.0, max: 9.0}}
  cooldown:
    path: scaling.behavior.scale_in.cooldown
    range: {{min: 0, max: 600, step: 60, unit: s}}
"""
    first = load_sweep(_sweep(tmp_path, text))
    again = load_sweep(_sweep(tmp_path, text))
    assert [v.assignment for v in first.variants] == [v.assignment for v in again.variants]
    assert first.variants[0].label == "base" and len(first.variants) == 13
    assert all(5.0 <= v.assignment["target"] <= 9.0 for v in first.variants[1:])


def _problems(path: Path) -> list[str]:
    with pytest.raises(SweepError) as caught:
        load_sweep(path)
    return caught.value.problems


def test_unknown_path_and_invalid_value_name_the_parameter_and_line(tmp_path: Path, scenario: Path) -> None:
    """A path the policy lacks, an item it lacks and a value the validator rejects: one line each."""
    path = _sweep(
        tmp_path,
        f"""scenarios: [{scenario.name}]
parameters:
  target:
    path: scaling.checks[streams-per-nod].target
    values: [6]
  window:
    path: scaling.behavior.scale_in.stabilisation
    values: [1m]
  zero:
    path: scaling.checks[streams-per-node].target
    values: [7, 0]
  floor:
    path: scaling.min_nodes
    values: [30]
""",
    )
    problems = _problems(path)
    assert len(problems) == 4
    assert problems[0].startswith(f"{path}:4:5: parameters.target.path: ")
    assert "no item named 'streams-per-nod'" in problems[0]
    assert problems[1].startswith(f"{path}:8:5: parameters.window: ")
    assert "unknown key 'stabilisation'; did you mean 'stabilization'?" in problems[1]
    assert problems[2].startswith(f"{path}:11:5: parameters.zero: ")
    assert "target = 0 is rejected" in problems[2] and "greater than 0" in problems[2]
    assert problems[3].startswith(f"{path}:14:5: parameters.floor: ")
    assert "min_nodes (30) is greater than max_nodes (20)" in problems[3]


def test_a_rejected_combination_names_its_parameters(tmp_path: Path, scenario: Path) -> None:
    """Values valid alone but not together (min above max) are reported with the parameters' lines."""
    path = _sweep(
        tmp_path,
        f"""scenarios: [{scenario.name}]
parameters:
  low:
    path: scaling.min_nodes
    values: [2, 18]
  high:
    path: scaling.max_nodes
    values: [15, 20]
""",
    )
    (problem,) = _problems(path)
    assert "low=18, high=15" in problem and "low (line 3), high (line 6)" in problem


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("parameters: {t: {path: scaling.tick, values: [1]}}\nbogus: 1\n", ":3:1: bogus: unknown key"),
        ("parameters: {t: {path: scaling.tick}}\n", "give values (a list) or range"),
        ("parameters: {t: {path: 'scaling..tick', values: [1]}}\n", "parameters.t.path: "),
        (
            "parameters: {t: {path: scaling.tick, range: {min: 1, max: 2}}}\n",
            "a grid range needs step or count",
        ),
        ("search: random\nparameters: {t: {path: scaling.tick, values: [1]}}\n", "needs samples"),
        ("seeds: [1, 1]\nparameters: {t: {path: scaling.tick, values: [1]}}\n", "a seed is listed twice"),
        (
            "parameters: {t: {path: scaling.tick, range: {min: 3, max: 1, step: 1}}}\n",
            "max (1) is below min (3)",
        ),
    ],
)
def test_malformed_sweep_files_are_reported_at_their_line(
    tmp_path: Path, scenario: Path, body: str, expected: str
) -> None:
    """Unknown keys and bad values of the sweep file itself are file:line errors, not tracebacks."""
    path = _sweep(tmp_path, f"scenarios: [{scenario.name}]\n{body}")
    problems = _problems(path)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith(f"{path}:") for p in problems)


def test_missing_scenario_and_base_policy_are_reported_at_their_line(tmp_path: Path, scenario: Path) -> None:
    """A scenario or policy that cannot be loaded is named with the sweep line that lists it."""
    path = _sweep(
        tmp_path,
        f"""policy: nowhere.yaml
scenarios:
  - {scenario.name}
  - missing.yaml
parameters: {{t: {{path: scaling.tick, values: [30s]}}}}
""",
    )
    problems = _problems(path)
    assert problems[0].startswith(f"{path}:1:1: policy: base policy: ")
    assert problems[1].startswith(f"{path}:4:5: scenarios[1]: ") and "no such scenario file" in problems[1]


def test_too_large_a_grid_is_refused_before_building_it(tmp_path: Path, scenario: Path) -> None:
    """More than 10,000 variants is an error that suggests random search."""
    path = _sweep(
        tmp_path,
        f"""scenarios: [{scenario.name}]
parameters:
  a:
    path: scaling.checks[streams-per-node].target
    range: {{min: 1, max: 200, step: 1}}
  b:
    path: scaling.behavior.scale_in.cooldown
    range: {{min: 0, max: 600, step: 1}}
""",
    )
    (problem,) = _problems(path)
    assert "120,200 variants" in problem and "search: random" in problem


# ------------------------------------------------------------------------------------------ pareto
def _dominates(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


points_strategy = st.lists(st.tuples(*[st.integers(min_value=0, max_value=6)] * 3), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(points=points_strategy, seed=st.integers(min_value=0, max_value=2**16))
def test_pareto_front_is_exactly_the_non_dominated_points(
    points: list[tuple[int, int, int]], seed: int
) -> None:
    """No frontier point is dominated, every other point is dominated by one, and order does not matter."""
    values = np.array(points, dtype=np.float64)
    mask = pareto_front(values)
    front = values[mask]
    assert mask.any()
    for p in front:
        assert not any(_dominates(q, p) for q in values)
    for p in values[~mask]:
        assert any(_dominates(q, p) for q in front)
    order = np.random.default_rng(seed).permutation(len(values))
    assert np.array_equal(pareto_front(values[order]), mask[order])


def test_pareto_front_keeps_ties_and_handles_infinity() -> None:
    """Equal points are all kept; an infinite ratio loses to any finite one on that axis."""
    values = np.array([[1, 1, 1], [1, 1, 1], [2, 0, np.inf], [2, 0, 5], [3, 3, 3]], dtype=np.float64)
    assert pareto_front(values).tolist() == [True, True, False, True, False]


def test_keys_of_new_check_types_and_sections_are_swept_without_code_changes(
    tmp_path: Path, scenario: Path
) -> None:
    """A queueing check's service level and the forecast section are addressed like any other key."""
    _, data = load_policy_data(AWS)
    data["scaling"]["checks"].append(
        {
            "name": "streams",
            "type": "queueing",
            "signal": "concurrent_streams",
            "query": "sum(asr_active_streams)",
            "service_level": {"wait_probability": 0.05},
        }
    )
    data["scaling"]["forecast"] = {"check": "streams"}
    policy = tmp_path / "queueing.yaml"
    policy.write_text(dump_yaml(data), encoding="utf-8")
    path = _sweep(
        tmp_path,
        f"""policy: {policy.name}
scenarios: [{scenario.name}]
include_base: false
parameters:
  wait-p:
    path: scaling.checks[streams].service_level.wait_probability
    values: [0.01, 0.1]
  forecast-mode:
    path: scaling.forecast.mode
    values: [forecast_only, forecast_and_scale]
""",
    )
    sweep = load_sweep(path)
    base = next(iter(sweep.bases.values()))
    assert len(sweep.variants) == 4
    assert sweep.patch(sweep.variants[-1], base) == {
        "scaling": {
            "checks": [{"name": "streams", "service_level": {"wait_probability": 0.1}}],
            "forecast": {"mode": "forecast_and_scale"},
        }
    }
    bad = _sweep(
        tmp_path,
        f"""policy: {policy.name}
scenarios: [{scenario.name}]
parameters:
  wait-p:
    path: scaling.checks[streams].service_level.wait_probability
    values: [1.5]
""",
    )
    (problem,) = _problems(bad)
    assert problem.startswith(f"{bad}:6:5: parameters.wait-p: ") and "wait_probability" in problem
