"""Policy sweeps: the sweep file, parameter paths into a policy, and the variants they make.

A sweep file names a base policy (or takes each scenario's own), scenarios, seeds, and named
parameters, each a path into the policy YAML with the values to try::

    policy: ../policies/asr-aws.yaml          # optional: default each scenario's policy
    scenarios: [twitter-7d.yaml, servegen-14d.yaml]
    seeds: [1, 2, 3]                          # optional: default each scenario's seed
    search: grid                              # or random (with samples and sample_seed)
    parameters:
      target:
        path: scaling.checks[streams-per-node].target
        values: [6, 6.5, 7]
      scale-in-window:
        path: scaling.behavior.scale_in.stabilization
        range: {min: 120, max: 480, step: 120, unit: s}

A path is dotted mapping keys with ``[name]`` for the item of a list whose ``name`` is that
(``scaling.checks[queued-streams].steps[0].change``) or ``[N]`` for the N-th item (from 0). Paths
are not checked against a list of known keys: the policy's own validator judges every variant, so
any key the policy model has (today's or one added later) can be swept. ``load_sweep`` reports
every problem (a malformed file, a path the policy does not have, a value the validator rejects) as
``file:line:column: where: message`` in a ``SweepError``, before anything is replayed.

``policy_patch`` turns a variant into the change it makes: only the swept keys whose value differs
from the base, in the policy's own structure (named list items as ``- name: ...`` entries, merged
by name by ``apply_patch``; a list addressed by index is given whole).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import re
from collections.abc import Mapping, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from io import StringIO
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from autoscaler.errors import PolicyError, ScenarioError, SweepError
from autoscaler.policy.load import load_policy_data, parse_policy
from autoscaler.policy.model import PoolPolicy, StrictModel
from autoscaler.simulate.scenario import Scenario, load_scenario

#: A sweep file is a few hundred bytes.
_MAX_BYTES = 1024 * 1024
#: More variants than this is a mistake (or a job for ``search: random``).
MAX_VARIANTS = 10_000
#: At most this many variant problems are listed; the rest are counted.
_MAX_LISTED = 20

Loc = tuple[str | int, ...]


# ------------------------------------------------------------------------------------------- paths
@dataclass(frozen=True)
class Key:
    """A mapping key in a parameter path."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Item:
    """A list item in a parameter path: by position (``int``) or by its ``name`` (``str``)."""

    selector: int | str

    def __str__(self) -> str:
        return f"[{self.selector}]"


Step = Key | Item
PolicyPath = tuple[Step, ...]

_TOKEN = re.compile(r"\[\s*(?P<sel>[^\]]*?)\s*\]|(?P<key>[^.\[\]\s]+)|(?P<dot>\.)")


class PathError(ValueError):
    """A parameter path is malformed or does not lead anywhere in the policy."""


def parse_path(text: str) -> PolicyPath:
    """``scaling.checks[streams-per-node].target`` → (Key, Key, Item, Key); ``PathError`` if malformed."""
    steps: list[Step] = []
    pos = 0
    expect_key = True  # at the start and after a dot a key must follow
    text = text.strip()
    if not text:
        raise PathError("the path is empty")
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise PathError(f"unexpected {text[pos]!r} at character {pos + 1} of {text!r}")
        pos = match.end()
        if match.group("dot") is not None:
            if expect_key:
                raise PathError(f"a key is missing before the dot at character {pos} of {text!r}")
            expect_key = True
        elif match.group("key") is not None:
            if not expect_key:
                raise PathError(f"a dot is missing before {match.group('key')!r} in {text!r}")
            steps.append(Key(match.group("key")))
            expect_key = False
        else:
            if expect_key:
                raise PathError(f"a list selector must follow a key, in {text!r}")
            selector = match.group("sel").strip("'\"")
            if not selector:
                raise PathError(f"empty [] in {text!r}; write [name] or [index]")
            steps.append(Item(int(selector) if selector.isdigit() else selector))
    if expect_key:
        raise PathError(f"{text!r} ends with a dot")
    return tuple(steps)


def format_path(path: PolicyPath) -> str:
    """The text of a parsed path."""
    out = ""
    for step in path:
        out += str(step) if isinstance(step, Item) or not out else f".{step}"
    return out


def _names(items: Sequence[Any]) -> list[str]:
    return [str(i["name"]) for i in items if isinstance(i, Mapping) and "name" in i]


def _find_item(items: Sequence[Any], selector: int | str, where: str) -> int:
    """The position of the item ``selector`` picks in ``items``; ``PathError`` if there is none."""
    if isinstance(selector, int):
        if selector >= len(items):
            raise PathError(f"{where} has {len(items)} item(s); there is no item [{selector}]")
        return selector
    for index, item in enumerate(items):
        if isinstance(item, Mapping) and str(item.get("name")) == selector:
            return index
    names = _names(items)
    have = f"its names: {', '.join(names)}" if names else "its items have no names; use [index]"
    raise PathError(f"{where} has no item named {selector!r} ({have})")


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"the value {value!r}"


def get_value(data: Any, path: PolicyPath) -> Any:
    """The value at ``path`` in plain policy data; ``PathError`` if the path leads nowhere.

    A mapping key the file leaves out reads as ``None`` (the model's default applies).
    """
    node = data
    for depth, step in enumerate(path):
        where = format_path(path[:depth]) or "the policy"
        if isinstance(step, Key):
            if node is None:
                return None
            if not isinstance(node, Mapping):
                raise PathError(f"{where} is {_describe(node)}, not a mapping with key {step.name!r}")
            node = node.get(step.name)
        else:
            if not isinstance(node, list):
                what = _describe(node) if node is not None else "not set"
                raise PathError(f"{where} is {what}, not a list")
            node = node[_find_item(node, step.selector, where)]
    return node


def set_value(data: MutableMapping[str, Any], path: PolicyPath, value: Any) -> None:
    """Set ``path`` in plain policy data to ``value`` (mutates ``data``).

    Missing mapping keys on the way are created (the validator then judges them); a list item that
    is not there, or a step into a plain value, is a ``PathError``.
    """
    node: Any = data
    for depth, step in enumerate(path):
        last = depth == len(path) - 1
        where = format_path(path[:depth]) or "the policy"
        if isinstance(step, Key):
            if not isinstance(node, MutableMapping):
                raise PathError(f"{where} is {_describe(node)}, not a mapping with key {step.name!r}")
            if last:
                node[step.name] = copy.deepcopy(value)
                return
            if node.get(step.name) is None:
                following = path[depth + 1]
                if isinstance(following, Item):
                    raise PathError(
                        f"{format_path(path[: depth + 1])} is not set: no list to pick {following} from"
                    )
                node[step.name] = {}
            node = node[step.name]
        else:
            if not isinstance(node, MutableSequence):
                raise PathError(f"{where} is {_describe(node)}, not a list")
            index = _find_item(node, step.selector, where)
            if last:
                node[index] = copy.deepcopy(value)
                return
            node = node[index]


# ------------------------------------------------------------------------------------------ patches
def _named_list(value: Any) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(i, Mapping) and "name" in i for i in value)
    )


def policy_patch(variant: Mapping[str, Any], paths: Sequence[PolicyPath]) -> dict[str, Any]:
    """The keys at ``paths`` of the variant's data, in the policy's structure (see the module doc)."""
    patch: dict[str, Any] = {}
    for path in paths:
        node: dict[str, Any] = patch
        source: Any = variant
        depth = 0
        while depth < len(path):
            step = path[depth]
            assert isinstance(step, Key)  # a path starts with a key; items are consumed with theirs
            value = source[step.name]
            following = path[depth + 1] if depth + 1 < len(path) else None
            if following is None or not isinstance(value, Mapping | list):
                node[step.name] = copy.deepcopy(value)
                break
            if isinstance(following, Key):
                child = node.get(step.name)
                if not isinstance(child, dict):
                    child = node[step.name] = {}
                node, source, depth = child, value, depth + 1
                continue
            # A list item: by name, a ``- name: ...`` entry merged by name; by index, the whole list.
            if not isinstance(value, list):
                node[step.name] = copy.deepcopy(value)
                break
            index = _find_item(value, following.selector, step.name)
            item = value[index]
            last_item = depth + 2 >= len(path) or not isinstance(path[depth + 2], Key)
            if isinstance(following.selector, int) or not isinstance(item, Mapping) or last_item:
                if isinstance(following.selector, str) and isinstance(item, Mapping) and last_item:
                    entries = node.setdefault(step.name, [])
                    entries[:] = [e for e in entries if e.get("name") != item.get("name")]
                    entries.append(copy.deepcopy(dict(item)))
                else:
                    node[step.name] = copy.deepcopy(value)
                break
            entries = node.get(step.name)
            if not isinstance(entries, list):
                entries = node[step.name] = []
            entry = next((e for e in entries if isinstance(e, dict) and e.get("name") == item["name"]), None)
            if entry is None:
                entry = {"name": item["name"]}
                entries.append(entry)
            node, source, depth = entry, item, depth + 2
    return patch


def apply_patch(target: MutableMapping[str, Any], patch: Mapping[str, Any]) -> None:
    """Merge ``patch`` into policy data ``target`` (plain or ruamel round-trip; mutated in place).

    Mappings merge key by key; a list of named mappings merges into a list of named mappings by
    ``name`` (a name the target lacks is a ``PathError``); anything else replaces the target's value.
    """
    for key, value in patch.items():
        current = target.get(key)
        if isinstance(value, Mapping) and isinstance(current, MutableMapping):
            apply_patch(current, value)
        elif _named_list(value) and isinstance(current, MutableSequence) and _named_list(list(current)):
            for item in value:
                index = _find_item(current, str(item["name"]), str(key))
                apply_patch(current[index], item)
        else:
            target[key] = copy.deepcopy(value)


def dump_yaml(data: Any) -> str:
    """Block-style YAML of plain data (keys in insertion order)."""
    yaml = YAML(typ="rt", pure=True)
    yaml.default_flow_style = False
    yaml.indent(mapping=2, sequence=4, offset=2)
    stream = StringIO()
    yaml.dump(data, stream)
    return stream.getvalue()


def patched_policy_text(policy_file: Path, patch: Mapping[str, Any]) -> str:
    """The policy file with ``patch`` applied, its comments and layout kept (ruamel round trip)."""
    yaml = YAML(typ="rt", pure=True)
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    tree = yaml.load(policy_file.read_text(encoding="utf-8"))
    apply_patch(tree, patch)
    stream = StringIO()
    yaml.dump(tree, stream)
    return stream.getvalue()


# -------------------------------------------------------------------------------------- sweep file
Unit = Literal["ms", "s", "m", "h", "d"]


def _tidy(value: float) -> float:
    """Round away float noise (0.1 + 0.2) to 10 significant digits."""
    return float(f"{value:.10g}")


class RangeSpec(StrictModel):
    """Numbers from ``min`` to ``max``: every ``step``, or ``count`` evenly spaced (a grid); uniform
    draws (snapped to ``step`` if given) for ``search: random``. ``unit`` writes them as durations."""

    min: int | float
    max: int | float
    step: int | float | None = Field(default=None, gt=0)
    count: int | None = Field(default=None, ge=2)
    unit: Unit | None = Field(default=None, description="Write each value as a duration: 240 → '240s'.")

    @model_validator(mode="after")
    def _consistent(self) -> RangeSpec:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        if self.step is not None and self.count is not None:
            raise ValueError("give step or count, not both")
        return self

    @property
    def integral(self) -> bool:
        """Whether every value is a whole number (min, max and step are)."""
        return all(isinstance(v, int) for v in (self.min, self.max, self.step if self.step else 0)) and (
            self.count is None
        )

    def _out(self, value: float) -> Any:
        number: int | float = round(value) if self.integral else _tidy(value)
        if isinstance(number, float) and number.is_integer() and self.unit is not None:
            number = int(number)
        return f"{number}{self.unit}" if self.unit else number

    def grid(self) -> list[Any]:
        """The grid's values (``step`` or ``count`` must be given)."""
        if self.count is not None:
            return [self._out(v) for v in np.linspace(self.min, self.max, self.count)]
        assert self.step is not None
        n = math.floor((self.max - self.min) / self.step + 1e-9)
        return [self._out(self.min + i * self.step) for i in range(n + 1)]

    def sample(self, rng: np.random.Generator) -> Any:
        """One uniform draw."""
        if self.step is not None:
            n = math.floor((self.max - self.min) / self.step + 1e-9)
            return self._out(self.min + int(rng.integers(0, n + 1)) * self.step)
        if self.count is not None:
            return self.grid()[int(rng.integers(0, self.count))]
        if self.integral:
            return self._out(float(rng.integers(int(self.min), int(self.max) + 1)))
        return self._out(float(rng.uniform(self.min, self.max)))

    def ends(self) -> list[Any]:
        """The two ends, each of which must make a valid policy."""
        return [self._out(self.min), self._out(self.max)]


class ParameterSpec(StrictModel):
    """One swept policy key: its path and the values to try (a list, or a range)."""

    path: str = Field(min_length=1, description="e.g. scaling.checks[streams-per-node].target")
    values: list[Any] | None = Field(default=None, min_length=1)
    range: RangeSpec | None = None

    @field_validator("path")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_path(value)  # PathError is a ValueError: pydantic reports it at the key
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ParameterSpec:
        if (self.values is None) == (self.range is None):
            raise ValueError("give values (a list) or range (min, max, step or count), one of them")
        return self

    @property
    def parsed(self) -> PolicyPath:
        """The parsed path."""
        return parse_path(self.path)


Aggregate = Literal["worst_ratio", "sum"]


class SweepSpec(StrictModel):
    """The sweep file as written."""

    name: str | None = None
    description: str | None = None
    policy: str | None = Field(default=None, description="Base policy; default each scenario's own.")
    scenarios: list[str] = Field(min_length=1)
    seeds: list[int] | None = Field(default=None, min_length=1, description="Default: each scenario's.")
    parameters: dict[str, ParameterSpec] = Field(min_length=1)
    search: Literal["grid", "random"] = "grid"
    samples: int | None = Field(default=None, ge=1, description="search: random: how many variants.")
    sample_seed: int = Field(default=0, ge=0, description="search: random: the draws' seed.")
    include_base: bool = Field(default=True, description="Replay the base policy too, as variant 'base'.")
    aggregate: Aggregate = Field(
        default="worst_ratio",
        description="How runs combine for the frontier: the worst ratio to the HPA-like baseline over "
        "scenarios and seeds, or sums.",
    )

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if any(s < 0 for s in value):
                raise ValueError("seeds are whole numbers from 0")
            if len(set(value)) != len(value):
                raise ValueError("a seed is listed twice")
        return value

    @field_validator("parameters")
    @classmethod
    def _names(cls, value: dict[str, ParameterSpec]) -> dict[str, ParameterSpec]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
                raise ValueError(f"parameter name {name!r}: use letters, digits, '_', '-', '.'")
        return value

    @model_validator(mode="after")
    def _search(self) -> SweepSpec:
        if self.search == "random" and self.samples is None:
            raise ValueError("search: random needs samples (how many variants to draw)")
        if self.search == "grid":
            if self.samples is not None:
                raise ValueError("samples applies to search: random only")
            for name, param in self.parameters.items():
                if param.range is not None and param.range.step is None and param.range.count is None:
                    raise ValueError(f"parameter {name!r}: a grid range needs step or count")
        return self


# ------------------------------------------------------------------------------------------ loading
@dataclass(frozen=True)
class Base:
    """A base policy: its file, model and plain data."""

    path: Path
    policy: PoolPolicy
    data: dict[str, Any]


@dataclass(frozen=True)
class Variant:
    """One point of the sweep: the swept values and, for each base policy file, the policy they make."""

    label: str
    assignment: dict[str, Any]
    policies: dict[Path, PoolPolicy] = field(repr=False)
    is_base: bool = False


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its scenarios (one per scenario × seed, base policy in place) and variants."""

    spec: SweepSpec
    source: Path
    lines: dict[str, int]  # parameter name → line of its key in the sweep file
    runs: tuple[tuple[Scenario, Base], ...]  # (scenario with its seed and base policy, base)
    bases: dict[Path, Base]
    variants: tuple[Variant, ...]

    @property
    def name(self) -> str:
        """The sweep's name (its file name when the file gives none)."""
        return self.spec.name or self.source.stem

    def paths(self) -> dict[str, PolicyPath]:
        """Each parameter's parsed path."""
        return {name: p.parsed for name, p in self.spec.parameters.items()}

    def variant_data(self, variant: Variant, base: Base) -> dict[str, Any]:
        """The plain policy data of ``variant`` on ``base``."""
        data = copy.deepcopy(base.data)
        for name, path in self.paths().items():
            if name in variant.assignment:
                set_value(data, path, variant.assignment[name])
        return data

    def patch(self, variant: Variant, base: Base) -> dict[str, Any]:
        """What ``variant`` changes in ``base``: the swept keys whose value differs, in its structure."""
        data = self.variant_data(variant, base)
        paths = self.paths()
        policy = variant.policies[base.path].model_dump()
        reference = base.policy.model_dump()
        changed = [
            paths[name]
            for name in variant.assignment
            # Compared as the model reads them, so 4m and 240s are the same value.
            if get_value(policy, paths[name]) != get_value(reference, paths[name])
        ]
        return policy_patch(data, changed)


def _has(data: Any, path: PolicyPath) -> bool:
    """Whether the file itself has the key at ``path`` (not only the model's default)."""
    node = data
    for step in path:
        if isinstance(step, Key):
            if not isinstance(node, Mapping) or step.name not in node:
                return False
            node = node[step.name]
        else:
            if not isinstance(node, list):
                return False
            try:
                node = node[_find_item(node, step.selector, "")]
            except PathError:
                return False
    return True


def _positions(node: Any, loc: Loc, out: dict[Loc, tuple[int, int]]) -> Any:
    """Plain data from ruamel's round-trip tree, recording each key's (line, column), 1-based."""
    if isinstance(node, CommentedMap):
        plain: dict[Any, Any] = {}
        for key in node:
            line, column = node.lc.key(key)
            out[(*loc, str(key))] = (line + 1, column + 1)
            plain[key] = _positions(node[key], (*loc, str(key)), out)
        return plain
    if isinstance(node, CommentedSeq):
        items = []
        for index, item in enumerate(node):
            line, column = node.lc.item(index)
            out[(*loc, index)] = (line + 1, column + 1)
            items.append(_positions(item, (*loc, index), out))
        return items
    if isinstance(node, bool | type(None)):
        return node
    for base in (int, float, str):
        if isinstance(node, base):
            return base(node)
    return node


def _where(positions: Mapping[Loc, tuple[int, int]], loc: Loc) -> tuple[int, int]:
    probe = loc
    while probe:
        if probe in positions:
            return positions[probe]
        probe = probe[:-1]
    return (1, 1)


def _loc_text(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<document>"


def _problem(source: Path, where: tuple[int, int], loc: str, message: str) -> str:
    return f"{source}:{where[0]}:{where[1]}: {loc}: {' '.join(message.split())}"


def _read_spec(source: Path) -> tuple[SweepSpec, dict[Loc, tuple[int, int]]]:
    try:
        with source.open("rb") as handle:
            raw = handle.read(_MAX_BYTES + 1)
    except FileNotFoundError as exc:
        raise SweepError(f"{source}: no such sweep file", [f"{source}:1:1: <file>: no such file"]) from exc
    except IsADirectoryError as exc:
        raise SweepError(f"{source}: is a directory", [f"{source}:1:1: <file>: is a directory"]) from exc
    except OSError as exc:
        problem = f"{source}:1:1: <file>: cannot read: {exc.strerror or exc}"
        raise SweepError(f"{source}: unreadable", [problem]) from exc
    if len(raw) > _MAX_BYTES:
        raise SweepError(f"{source}: too large", [f"{source}:1:1: <file>: larger than 1 MiB"])
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    try:
        tree = yaml.load(raw.decode("utf-8"))
    except (YAMLError, UnicodeDecodeError, ValueError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SweepError(f"{source}: invalid YAML", [_problem(source, where, "<yaml>", first)]) from exc
    if not isinstance(tree, CommentedMap):
        what = "empty" if tree is None else "not a mapping"
        problem = _problem(
            source, (1, 1), "<document>", f"the sweep file is {what}; it needs scenarios and parameters"
        )
        raise SweepError(f"{source}: not a sweep", [problem])
    positions: dict[Loc, tuple[int, int]] = {}
    data = _positions(tree, (), positions)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            elif error["type"] == "missing":
                message = "required key is missing"
                loc = loc[:-1] if len(loc) > 1 else loc
            problems.append(_problem(source, _where(positions, loc), _loc_text(error["loc"]), message))
        raise SweepError(f"{source}: {len(problems)} problem(s)", sorted(problems, key=_line_order)) from exc
    return spec, positions


def _line_order(problem: str) -> tuple[int, int]:
    match = re.search(r":(\d+):(\d+): ", problem)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _resolve(source: Path, path: str) -> Path:
    expanded = Path(os.path.expanduser(path))
    return expanded if expanded.is_absolute() else (source.resolve().parent / expanded).resolve()


def _policy_problems(data: Mapping[str, Any], base: Base) -> list[str]:
    """The validator's findings on variant data, as ``field.path: message`` (no positions)."""
    try:
        PoolPolicy.model_validate(data)
    except ValidationError:
        pass
    else:
        return []
    try:
        parse_policy(dump_yaml(dict(data)).encode("utf-8"), "variant")
    except PolicyError as exc:
        return [re.sub(r"^variant:\d+:\d+: ", "", p) for p in exc.problems] or [str(exc)]
    return [f"rejected by the policy model (from {base.path})"]  # pragma: no cover - model and parser agree


def _candidates(param: ParameterSpec) -> list[Any]:
    if param.values is not None:
        return list(param.values)
    assert param.range is not None
    return param.range.grid() if (param.range.step or param.range.count) else param.range.ends()


def _assignments(spec: SweepSpec) -> list[dict[str, Any]]:
    names = list(spec.parameters)
    if spec.search == "grid":
        grids = [_candidates(spec.parameters[n]) for n in names]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grids)]
    rng = np.random.default_rng(spec.sample_seed)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    assert spec.samples is not None
    for _ in range(spec.samples):
        assignment: dict[str, Any] = {}
        for name in names:
            param = spec.parameters[name]
            if param.values is not None:
                assignment[name] = param.values[int(rng.integers(0, len(param.values)))]
            else:
                assert param.range is not None
                assignment[name] = param.range.sample(rng)
        key = repr(sorted(assignment.items()))
        if key not in seen:  # a small space gives repeats; each variant is replayed once
            seen.add(key)
            out.append(assignment)
    return out


def grid_size(spec: SweepSpec) -> int:
    """How many variants the search makes (before the base is added)."""
    if spec.search == "random":
        return spec.samples or 0
    return math.prod(len(_candidates(p)) for p in spec.parameters.values())


def load_sweep(path: str | os.PathLike[str]) -> Sweep:
    """Read a sweep file, load its scenarios and base policies, and build and validate every variant.

    Raises ``SweepError`` listing every problem with the sweep file's line (a scenario or base
    policy that cannot be loaded, a path the policy does not have, a value or a combination the
    policy's validator rejects); nothing is replayed before this succeeds.
    """
    source = Path(path)
    spec, positions = _read_spec(source)
    problems: list[str] = []

    def at(loc: Loc) -> tuple[int, int]:
        return _where(positions, loc)

    bases: dict[Path, Base] = {}

    def base_of(policy_path: Path, loc: Loc) -> Base | None:
        if policy_path not in bases:
            try:
                policy, data = load_policy_data(policy_path)
            except PolicyError as exc:
                details = "; ".join(exc.problems) if exc.problems else str(exc)
                problems.append(_problem(source, at(loc), _loc_text(loc), f"base policy: {details}"))
                return None
            bases[policy_path] = Base(policy_path, policy, data)
        return bases[policy_path]

    shared: Base | None = None
    if spec.policy is not None:
        shared = base_of(_resolve(source, spec.policy), ("policy",))
    runs: list[tuple[Scenario, Base]] = []
    for index, text in enumerate(spec.scenarios):
        loc: Loc = ("scenarios", index)
        try:
            scenario = load_scenario(_resolve(source, text))
        except ScenarioError as exc:
            problems.append(_problem(source, at(loc), _loc_text(loc), str(exc)))
            continue
        base = shared if spec.policy is not None else base_of(scenario.policy_path, loc)
        if base is None:
            continue
        scenario = dc_replace(scenario, policy=base.policy, policy_path=base.path)
        for seed in spec.seeds or [scenario.spec.seed]:
            runs.append((dc_replace(scenario, spec=scenario.spec.model_copy(update={"seed": seed})), base))
    if problems:
        raise SweepError(f"{source}: {len(problems)} problem(s)", problems)

    size = grid_size(spec)
    if size > MAX_VARIANTS:
        problems.append(
            _problem(
                source,
                at(("parameters",)),
                "parameters",
                f"the grid has {size:,} variants, more than {MAX_VARIANTS:,}; use fewer values "
                "or search: random with samples",
            )
        )
        raise SweepError(f"{source}: too many variants", problems)

    lines = {name: at(("parameters", name))[0] for name in spec.parameters}
    paths = {name: p.parsed for name, p in spec.parameters.items()}
    # Each value of each parameter, alone on each base: names the parameter whose path or value is bad.
    for name, param in spec.parameters.items():
        loc = ("parameters", name)
        for base in bases.values():
            for value in _candidates(param):
                data = copy.deepcopy(base.data)
                try:
                    set_value(data, paths[name], value)
                except PathError as exc:
                    where = at((*loc, "path"))
                    problems.append(_problem(source, where, f"parameters.{name}.path", f"{base.path}: {exc}"))
                    break
                found = _policy_problems(data, base)
                if found:
                    problems.append(
                        _problem(
                            source,
                            at((*loc, "values" if param.values is not None else "range")),
                            f"parameters.{name}",
                            f"{param.path} = {value!r} is rejected by the policy validator "
                            f"({base.path.name}): {'; '.join(found)}",
                        )
                    )
                    break
    if problems:
        raise SweepError(f"{source}: {len(problems)} problem(s)", problems)

    variants: list[Variant] = []
    assignments = _assignments(spec)
    width = len(str(len(assignments)))
    rejected = 0
    base_dumps = {p: b.policy.model_dump() for p, b in bases.items()}
    for number, assignment in enumerate(assignments, start=1):
        policies: dict[Path, PoolPolicy] = {}
        for base in bases.values():
            data = copy.deepcopy(base.data)
            for name, value in assignment.items():
                set_value(data, paths[name], value)
            try:
                policies[base.path] = PoolPolicy.model_validate(data)
            except ValidationError:
                rejected += 1
                if rejected <= _MAX_LISTED:
                    findings = "; ".join(_policy_problems(data, base))
                    named = ", ".join(f"{n} (line {lines[n]})" for n in assignment)
                    values = ", ".join(f"{n}={v!r}" for n, v in assignment.items())
                    problems.append(
                        _problem(
                            source,
                            at(("parameters",)),
                            "parameters",
                            f"the combination {values} is rejected by the policy validator "
                            f"({base.path.name}): {findings}; parameters: {named}",
                        )
                    )
                break
        else:
            is_base = all(policies[p].model_dump() == base_dumps[p] for p in bases)
            variants.append(Variant(f"v{number:0{width}d}", assignment, policies, is_base=is_base))
    if rejected > _MAX_LISTED:
        problems.append(f"{source}: ... and {rejected - _MAX_LISTED} more rejected combinations")
    if problems:
        raise SweepError(f"{source}: {len(problems)} problem(s)", problems)
    if spec.include_base and not any(v.is_base for v in variants):
        base_variant = Variant("base", {}, {p: b.policy for p, b in bases.items()}, is_base=True)
        variants.insert(0, base_variant)
    return Sweep(
        spec=spec,
        source=source.resolve(),
        lines=lines,
        runs=tuple(runs),
        bases=bases,
        variants=tuple(variants),
    )
