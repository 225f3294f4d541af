"""Reading policy files: YAML with the position of every key, validated into ``PoolPolicy``.

Every problem is reported as ``file:line:column: field.path: message`` (lines and columns from 1),
all problems of a file at once, and no input produces anything but a ``PolicyError``: not binary
garbage, an empty file, a list at the top level, a directory, a missing or unreadable file.

``PolicyWatcher`` is what a long-running controller holds: it reloads a changed file and, when the
new version is invalid, keeps serving the last valid one and says why in ``last_error``.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError

from autoscaler.errors import PolicyError
from autoscaler.policy.model import PoolPolicy

#: Path elements: mapping keys and sequence indices, as in pydantic's ``loc``.
Loc = tuple[str | int, ...]

#: Guards against alias bombs ("billion laughs"): a policy file is a few hundred values.
_MAX_VALUES = 100_000
#: A policy file is a few kilobytes; anything this big is not one.
_MAX_BYTES = 4 * 1024 * 1024

_DOC = "<document>"
_FILE = "<file>"


@dataclass(frozen=True)
class Position:
    """A 1-based line and column in the source file."""

    line: int
    column: int


@dataclass
class _Positions:
    """Where each mapping key and each value of the document sits, by path."""

    keys: dict[Loc, Position] = field(default_factory=dict)
    values: dict[Loc, Position] = field(default_factory=dict)


class _TooLargeError(Exception):
    """The document expands to more values than any policy has (an alias bomb, usually)."""


def _mark(node: CommentedMap | CommentedSeq, what: str, key: Any) -> Position:
    """1-based position of a key, value or item; keys merged in with ``<<`` have none of their own,
    so they are reported at the mapping that merges them."""
    try:
        line, column = getattr(node.lc, what)(key)
    except (KeyError, IndexError, TypeError):
        line, column = node.lc.line or 0, node.lc.col or 0
    return Position(line + 1, column + 1)


def _plain(node: Any, loc: Loc, pos: _Positions, budget: list[int]) -> Any:
    """Copy ruamel's round-trip tree into plain dicts/lists/scalars, recording positions on the way."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLargeError
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key in node:
            child: Loc = (*loc, key if isinstance(key, str | int) else str(key))
            pos.keys[child] = _mark(node, "key", key)
            pos.values[child] = _mark(node, "value", key)
            out[key] = _plain(node[key], child, pos, budget)
        return out
    if isinstance(node, CommentedSeq):
        items: list[Any] = []
        for index, item in enumerate(node):
            child = (*loc, index)
            pos.values[child] = _mark(node, "item", index)
            items.append(_plain(item, child, pos, budget))
        return items
    if isinstance(node, bool | type(None)):
        return node
    # ruamel's scalar subclasses (ScalarFloat, ScalarInt, TimeStamp...) become their plain bases.
    for base in (int, float, str):
        if isinstance(node, base):
            return base(node)
    return node


def _loc_text(loc: Iterable[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        name = str(part)
        if not name or not name.isprintable() or any(c in name for c in " .[]:"):
            name = repr(name)  # a key with a newline, a CR or nothing in it stays visible, on one line
        text += f".{name}" if text else name
    return text or _DOC


def _line_column(data: bytes, offset: int) -> Position:
    before = data[:offset]
    line = before.count(b"\n") + 1
    return Position(line, offset - (before.rfind(b"\n") + 1) + 1)


def _problem(source: str, where: Position, loc: str, message: str) -> str:
    # One problem, one line: tools (editors, CI annotations) parse these.
    flat = " ".join(message.split())
    return f"{source}:{where.line}:{where.column}: {loc}: {flat}"


# ------------------------------------------------------------------------ mapping pydantic errors to YAML
def _strip_optional(annotation: Any) -> list[Any]:
    """The alternatives of a union (``X | None``, ``Annotated[A | B, ...]``), else the annotation itself."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _strip_optional(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_strip_optional(arg))
        return out
    return [annotation]


def _models_at(loc: Loc) -> tuple[list[type[BaseModel]], Loc]:
    """The model classes the value at ``loc`` may be, and ``loc`` without union tags.

    Pydantic puts a discriminated union's tag (``aws``, ``step``) into ``loc``; the YAML has no such
    level, so it is dropped from the path that is looked up and shown.
    """
    candidates: list[Any] = [PoolPolicy]
    clean: list[str | int] = []
    for part in loc:
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        tagged = [m for m in models if _tag_of(m) == part]
        if isinstance(part, str) and tagged and not any(part in m.model_fields for m in models):
            candidates = tagged
            continue
        clean.append(part)
        nxt: list[Any] = []
        for candidate in candidates:
            if isinstance(part, int):
                if typing.get_origin(candidate) in (list, tuple):
                    for arg in typing.get_args(candidate):
                        nxt.extend(_strip_optional(arg))
            elif isinstance(candidate, type) and issubclass(candidate, BaseModel):
                info = candidate.model_fields.get(part)
                if info is not None:
                    nxt.extend(_strip_optional(info.annotation))
        candidates = [alt for c in nxt for alt in _strip_optional(c)]
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return models, tuple(clean)


def _tag_of(model: type[BaseModel]) -> str | None:
    for name in ("kind", "type"):
        info = model.model_fields.get(name)
        if info is not None and typing.get_origin(info.annotation) is Literal:
            args = typing.get_args(info.annotation)
            if len(args) == 1 and isinstance(args[0], str):
                return args[0]
    return None


def _nearest(loc: Loc, pos: _Positions, *, prefer_key: bool) -> Position:
    """The position of ``loc`` or, when it is absent from the file, of its closest ancestor."""
    probe = loc
    while probe:
        table = (pos.keys, pos.values) if prefer_key else (pos.values, pos.keys)
        for positions in table:
            if probe in positions:
                return positions[probe]
        probe = probe[:-1]
    return Position(1, 1)


def _message(error: Mapping[str, Any], loc: Loc) -> str:
    """Pydantic's message in the operator's terms; ``loc`` is pydantic's (with union tags)."""
    kind = error["type"]
    message = str(error["msg"])
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        parents, _ = _models_at(tuple(loc[:-1]))
        allowed = sorted({name for m in parents for name in m.model_fields})
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {', '.join(allowed)}"
        return f"unknown key {loc[-1]!r}{hint}" if allowed else "unknown key"
    if kind == "string_too_short" and (error.get("ctx") or {}).get("min_length") == 1:
        return "must not be empty"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = error.get("ctx") or {}
        return f"must be one of {ctx.get('expected_tags', '?')}" + (
            f", not {ctx['tag']!r}" if "tag" in ctx else ""
        )
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _validation_problems(source: str, exc: ValidationError, pos: _Positions, data: Any) -> list[str]:
    problems: list[tuple[int, int, str]] = []
    for error in exc.errors(include_url=False):
        _, loc = _models_at(tuple(error["loc"]))
        kind = error["type"]
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            # Point at the discriminator key itself (``kind:``, ``type:``) when the file has it.
            ctx = error.get("ctx") or {}
            discriminator = str(ctx.get("discriminator", "")).strip("'")
            if discriminator:
                loc = (*loc, discriminator)
        if kind == "missing":
            # The key is absent: point at the mapping that should hold it.
            where = _nearest(loc[:-1], pos, prefer_key=True) if loc[:-1] else Position(1, 1)
        elif kind == "extra_forbidden":
            where = _nearest(loc, pos, prefer_key=True)
        else:
            target = _value_at(data, loc)
            # A mapping or list is reported at its key; a scalar at the value itself.
            where = _nearest(loc, pos, prefer_key=isinstance(target, dict | list))
        problems.append((where.line, where.column, _problem(source, where, _loc_text(loc),
                                                             _message(error, tuple(error["loc"])))))
    # In file order, as an editor or a reviewer reads them.
    return [text for _, _, text in sorted(problems, key=lambda p: (p[0], p[1]))]


def _value_at(data: Any, loc: Loc) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
            continue
        if isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
            continue
        return None
    return data


# ------------------------------------------------------------------------------------------- loading
class _Constructor(RoundTripConstructor):
    """Round-trip constructor that leaves timestamps as text.

    Dates are then parsed by pydantic, so ``2025-13-45`` is reported at its line and key like any
    other bad value instead of failing inside the YAML library without a position.
    """


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _Constructor.construct_yaml_str)


def _yaml() -> YAML:
    yaml = YAML(typ="rt", pure=True)
    yaml.Constructor = _Constructor
    yaml.allow_duplicate_keys = False
    return yaml


def parse_policy(text: bytes, source: str) -> PoolPolicy:
    """Validate the bytes of a policy file; ``source`` names it in messages.

    Raises ``PolicyError`` listing every problem as ``source:line:column: field.path: message``.
    """
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = _line_column(text, exc.start)
        problem = _problem(source, where, _FILE, f"not UTF-8 text (byte 0x{text[exc.start]:02x})")
        raise PolicyError(f"{source}: not a text file", [problem]) from exc
    if "\x00" in decoded:
        where = _line_column(text, text.index(b"\x00"))
        problem = _problem(source, where, _FILE, "not a text file (contains a NUL byte)")
        raise PolicyError(f"{source}: not a text file", [problem])
    try:
        tree = _yaml().load(decoded)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Position(mark.line + 1, mark.column + 1) if mark is not None else Position(1, 1)
        what = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        opened = exc.context_mark
        if opened is not None and mark is not None and opened.line != mark.line:
            # The parser notices late (an unclosed bracket at the end of the file); say where it began.
            what += f" (the construct began at line {opened.line + 1}, column {opened.column + 1})"
        problem = _problem(source, where, "<yaml>", f"invalid YAML: {what}")
        raise PolicyError(f"{source}: invalid YAML", [problem]) from exc
    except RecursionError as exc:
        problem = _problem(source, Position(1, 1), "<yaml>", "invalid YAML: nested too deeply")
        raise PolicyError(f"{source}: invalid YAML", [problem]) from exc
    except Exception as exc:
        # ruamel raises assorted non-YAML errors for odd scalars (``2025-13-45`` is a bad date:
        # ValueError from datetime; reader errors for control characters). Whatever the input, the
        # operator gets one line, not a traceback.
        offset = getattr(exc, "position", None)  # reader errors carry a character offset
        where = (_line_column(decoded[:offset].encode(), len(decoded[:offset].encode()))
                 if isinstance(offset, int) else Position(1, 1))
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        problem = _problem(source, where, "<yaml>", f"invalid YAML: {first_line}")
        raise PolicyError(f"{source}: invalid YAML", [problem]) from exc
    if tree is None:
        problem = _problem(source, Position(1, 1), _DOC,
                           "the file is empty; a policy is a mapping with keys pool, launch and scaling")
        raise PolicyError(f"{source}: empty policy", [problem])
    if not isinstance(tree, CommentedMap):
        what = "a list" if isinstance(tree, CommentedSeq) else f"a {type(tree).__name__} value"
        problem = _problem(source, Position(1, 1), _DOC,
                           f"the top level must be a mapping (pool, launch, scaling...), not {what}")
        raise PolicyError(f"{source}: not a policy mapping", [problem])
    positions = _Positions()
    try:
        data = _plain(tree, (), positions, [_MAX_VALUES])
    except _TooLargeError as exc:
        problem = _problem(source, Position(1, 1), _DOC,
                           f"the document expands to more than {_MAX_VALUES} values (aliases?)")
        raise PolicyError(f"{source}: too large", [problem]) from exc
    try:
        return PoolPolicy.model_validate(data)
    except ValidationError as exc:
        problems = _validation_problems(source, exc, positions, data)
        raise PolicyError(f"{source}: {len(problems)} problem(s)", problems) from exc


def load_policy(path: str | os.PathLike[str]) -> PoolPolicy:
    """Read and validate one policy file.

    Raises ``PolicyError`` (with ``problems``) for a missing, unreadable, oversized or invalid file.
    """
    policy, _ = _load_with_digest(Path(path))
    return policy


def load_policy_data(path: str | os.PathLike[str]) -> tuple[PoolPolicy, dict[str, Any]]:
    """Read and validate one policy file; return the policy and the plain data it was validated from.

    The data is the file's mapping as plain dicts, lists and scalars (dates left as text), the
    structure a tool edits to derive variants of the policy (``autoscaler dry-run --sweep``).
    Raises ``PolicyError`` like ``load_policy``.
    """
    source = Path(path)
    text = _read(source)
    policy = parse_policy(text, str(source))
    data = _plain(_yaml().load(text.decode("utf-8")), (), _Positions(), [_MAX_VALUES])
    return policy, data


def _read(path: Path) -> bytes:
    source = str(path)
    try:
        if path.is_dir():
            raise PolicyError(f"{source}: is a directory",
                              [_problem(source, Position(1, 1), _FILE, "is a directory, not a policy file")])
        with path.open("rb") as handle:
            data = handle.read(_MAX_BYTES + 1)
    except FileNotFoundError as exc:
        raise PolicyError(f"{source}: no such file",
                          [_problem(source, Position(1, 1), _FILE, "no such file")]) from exc
    except OSError as exc:
        raise PolicyError(f"{source}: unreadable",
                          [_problem(source, Position(1, 1), _FILE,
                                    f"cannot read: {exc.strerror or exc}")]) from exc
    if len(data) > _MAX_BYTES:
        raise PolicyError(f"{source}: too large",
                          [_problem(source, Position(1, 1), _FILE,
                                    f"larger than {_MAX_BYTES // (1024 * 1024)} MiB; not a policy file")])
    return data


def _load_with_digest(path: Path) -> tuple[PoolPolicy, str]:
    data = _read(path)
    return parse_policy(data, str(path)), hashlib.sha256(data).hexdigest()


def policy_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Expand arguments: a directory stands for its ``*.yaml``/``*.yml`` files (sorted), a file for itself."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            yield from found if found else [path]
        else:
            yield path


def validate_paths(paths: Iterable[str | os.PathLike[str]]) -> dict[Path, list[str]]:
    """Validate every file named (directories expanded); map each file to its problems (empty: valid)."""
    results: dict[Path, list[str]] = {}
    for path in policy_files(paths):
        try:
            load_policy(path)
        except PolicyError as exc:
            results[path] = exc.problems or [f"{path}:1:1: {_FILE}: {exc}"]
        else:
            results[path] = []
    return results


# ------------------------------------------------------------------------------------------- watching
class PolicyWatcher:
    """The policy a long-running controller uses, reloaded when its file changes.

    Contract:
    - The constructor loads the file and raises ``PolicyError`` if it is invalid: a controller does
      not start on a bad policy.
    - ``current()`` checks the file's modification time and size (cheap) and, when they changed,
      its content hash; a changed valid file becomes the new policy (``generation`` increases). A
      changed invalid or unreadable file leaves the last valid policy in force and sets
      ``last_error`` (and increments ``failures``) until a valid version appears, which clears it.
    - It never raises after construction.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp = self._stat()
        policy, digest = _load_with_digest(self.path)
        self._policy = policy
        self._digest = digest
        self._failed_digest: str | None = None
        self.generation = 1
        self.failures = 0
        self.last_error: PolicyError | None = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    @property
    def digest(self) -> str:
        """SHA-256 of the file content the current policy was loaded from."""
        return self._digest

    def current(self) -> PoolPolicy:
        """The last valid policy, after reloading the file if it changed."""
        stamp = self._stat()
        if stamp == self._stamp:
            return self._policy
        self._stamp = stamp
        try:
            data = _read(self.path)
        except PolicyError as exc:
            self._fail(exc, None)
            return self._policy
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            # Touched or rewritten with the same content: nothing changed, and any error is over.
            self.last_error = None
            return self._policy
        if digest == self._failed_digest:
            return self._policy  # the same bad version again: already reported once
        try:
            policy = parse_policy(data, str(self.path))
        except PolicyError as exc:
            self._fail(exc, digest)
            return self._policy
        self._policy, self._digest = policy, digest
        self._failed_digest = None
        self.last_error = None
        self.generation += 1
        return policy

    def _fail(self, error: PolicyError, digest: str | None) -> None:
        self.last_error = error
        self._failed_digest = digest
        self.failures += 1
