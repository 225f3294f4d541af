"""Fuzzing the policy loader and validator with hypothesis: generated documents (deep nesting, huge
numbers, wrong types, unicode, truncated YAML, a valid policy with one value replaced) never crash,
never escape as anything but ``PolicyError``, and every rejection names a place in the file.

The default suite runs a few hundred documents per property; ``pytest -m long`` runs 10,000.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from autoscaler.errors import PolicyError
from autoscaler.policy.load import parse_policy
from autoscaler.policy.model import PoolPolicy

SOURCE = "fuzz.yaml"
PLACE = re.compile(rf"^{re.escape(SOURCE)}:\d+:\d+: \S")
POLICIES = Path(__file__).resolve().parents[2] / "policies"
VALID = (POLICIES / "asr-local.yaml").read_text(encoding="utf-8")
KEYS = ["pool", "provider", "kind", "launch", "balancer", "metrics", "health", "drain", "scaling", "checks",
        "min_nodes", "max_nodes", "tick", "target", "query", "name", "type", "steps", "above", "below",
        "instance_types", "streams", "price_per_hour", "model_version", "image", "id", "schedules",
        "behavior", "scale_in", "scale_out", "on_missing_data", "upstream_file", "nginx_binary", "host"]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),  # unicode, control characters, quotes...
    st.sampled_from(["local", "nginx", "none", "aws", "target_tracking", "step", "5s", "1e308", "-1",
                     "0x10", ".nan", "~", "yes", "2026-13-45", "\x00", "\u202e", "é", "🙂"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=40)


def _yaml_text(value: Any) -> str:
    """A YAML rendering of ``value`` (JSON is YAML; NaN and infinities spelled the YAML way)."""
    text = json.dumps(value, allow_nan=True)
    return text.replace("NaN", ".nan").replace("-Infinity", "-.inf").replace("Infinity", ".inf")


def assert_clean(data: bytes) -> None:
    """``parse_policy`` returns a policy or raises PolicyError whose every problem names file:line:column."""
    try:
        result = parse_policy(data, SOURCE)
    except PolicyError as exc:
        assert exc.problems, f"no problems listed for {data[:200]!r}: {exc}"
        for problem in exc.problems:
            assert PLACE.match(problem), problem
        return
    assert isinstance(result, PoolPolicy)


def _valid_tree() -> Any:
    return YAML(typ="safe").load(VALID)


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            out += _paths(value, (*prefix, index))
    return out


VALID_PATHS = _paths(_valid_tree())[1:]


def _replace(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    tree = copy.deepcopy(tree)
    node = tree
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return tree


def _fuzz_settings(examples: int) -> Any:
    return settings(max_examples=examples, deadline=None, derandomize=False, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _properties(counts: dict[str, int]) -> list[Any]:
    @_fuzz_settings(counts["random_documents"])
    @given(documents)
    def random_documents(document: Any) -> None:
        assert_clean(_yaml_text(document).encode())

    @_fuzz_settings(counts["one_value_replaced"])
    @given(st.sampled_from(VALID_PATHS), documents)
    def one_value_replaced(path: tuple[Any, ...], value: Any) -> None:
        assert_clean(_yaml_text(_replace(_valid_tree(), path, value)).encode())

    @_fuzz_settings(counts["truncated_or_garbled"])
    @given(st.integers(min_value=0, max_value=len(VALID.encode())), st.binary(max_size=8))
    def truncated_or_garbled(cut: int, tail: bytes) -> None:
        assert_clean(VALID.encode()[:cut] + tail)

    @_fuzz_settings(counts["deep_nesting"])
    @given(st.integers(min_value=1, max_value=5000), st.sampled_from(["[", "{a: ", "- "]))
    def deep_nesting(depth: int, opener: str) -> None:
        closer = {"[": "]", "{a: ": "}", "- ": ""}[opener]
        assert_clean((opener * depth + "1" + closer * depth).encode())

    return [random_documents, one_value_replaced, truncated_or_garbled, deep_nesting]


#: Documents per property. Parsing a whole policy with ruamel's round-trip loader takes ~0.1 s on
#: a loaded 2-core machine, so the long run leans on the cheaper properties.
SHORT = {"random_documents": 120, "one_value_replaced": 20, "truncated_or_garbled": 150, "deep_nesting": 10}
LONG = {"random_documents": 5000, "one_value_replaced": 1500, "truncated_or_garbled": 3300,
        "deep_nesting": 200}


def _run(counts: dict[str, int]) -> int:
    for prop in _properties(counts):
        prop()
    return sum(counts.values())


def test_policy_loader_fuzz_short() -> None:
    """Three hundred generated documents: no crash, every rejection names a place."""
    assert _run(SHORT) >= 300


@pytest.mark.long
@pytest.mark.timeout(1800)  # 691 s measured on a loaded 2-core machine
def test_policy_loader_fuzz_10k() -> None:
    """At least 10,000 generated documents: no crash, no traceback, every rejection names a place."""
    generated = _run(LONG)
    print(f"policy fuzz: {generated} documents")
    assert generated >= 10_000
