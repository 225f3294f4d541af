"""Many pools in one controller: which policy files are selected, and the set of pools they run.

A selection is any number of directories (every ``*.yaml`` / ``*.yml`` directly inside, hidden files
left out) and policy files, optionally narrowed to some pool names. ``load_selection`` reads it once
(``once``, ``explain``, ``history``, ``status``); ``PoolSet`` keeps it live for ``autoscaler run``:
``scan`` is called every few seconds, compares the files now selected with the pools it runs, and
says which pools to start and which to retire.

Rules, the same everywhere:

- each valid file is one pool; a broken file is reported (its pool's ``autoscaler_policy_valid`` is
  0, under the ``pool:`` the file names when that much can be read, else the file's stem) and the
  other pools run;
- two files naming the same pool: the first (in path order at start, or the one already running)
  keeps the pool, the second is an error (``DuplicatePoolError``) until it is renamed or removed,
  or until the first is removed (then the second takes the pool over at the next scan);
- a file that disappears retires its pool: the pool is no longer ticked and its adapters are closed.
  Its nodes are left exactly as they are (running, stopped and in the balancer): retiring a pool
  changes nothing in the world;
- a running pool's changed file is the ``PolicyWatcher``'s business (reload, or keep the last valid
  policy on a broken edit); a broken file is retried whenever its modification time or size changes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import yaml

from autoscaler.errors import AutoscalerError, DuplicatePoolError, PolicyError, PoolSelectionError
from autoscaler.policy.load import load_policy
from autoscaler.policy.model import PoolPolicy

if TYPE_CHECKING:
    from autoscaler.telemetry import ControllerMetrics
    from autoscaler.wiring import Runtime

log = structlog.get_logger("autoscaler.pools")

#: The suffixes of policy files in a ``--policies`` directory.
POLICY_SUFFIXES = (".yaml", ".yml")


def policy_files(directories: Iterable[Path], files: Iterable[Path]) -> list[Path]:
    """The policy files selected now: every ``*.yaml``/``*.yml`` directly in each directory (sorted),
    then each named file that exists, without repeats.

    Raises ``PoolSelectionError`` for a directory that does not exist or is not a directory (a
    mistyped ``--policies`` should stop ``run`` at start, not run an empty controller).
    """
    found: list[Path] = []
    for directory in directories:
        if not directory.is_dir():
            raise PoolSelectionError(f"--policies {directory}: not a directory")
        try:
            entries = sorted(directory.iterdir())
        except OSError as exc:
            raise PoolSelectionError(f"--policies {directory}: cannot list it: {exc}") from exc
        found.extend(
            p for p in entries if p.suffix in POLICY_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
    found.extend(f for f in files if f.exists())
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def declared_pool(path: Path) -> str:
    """The pool a (possibly broken) file is about: its ``pool:`` when the YAML says that much, else
    the file's stem. Only for reporting a file that does not load."""
    with contextlib.suppress(Exception):  # anything unreadable falls back to the file name
        data = yaml.safe_load(path.read_bytes()[:1_000_000])
        if isinstance(data, dict) and isinstance(data.get("pool"), str) and data["pool"]:
            return str(data["pool"])
    return path.stem


def _problem(error: AutoscalerError) -> str:
    problems = getattr(error, "problems", None)
    return "; ".join(problems) if problems else str(error)


@dataclass(frozen=True)
class FileProblem:
    """A selected file that is not running: why (invalid, or a second file for a pool)."""

    path: Path
    pool: str
    error: str
    #: A valid file for a pool another file already defines (it may start once that one is gone).
    duplicate: bool = False

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"file": str(self.path), "pool": self.pool, "error": self.error}


@dataclass
class Selection:
    """The pools a one-shot command is about: ``policies`` by pool name, and the files that failed."""

    policies: dict[str, tuple[Path, PoolPolicy]] = field(default_factory=dict)
    problems: list[FileProblem] = field(default_factory=list)


def load_selection(
    directories: Sequence[Path], files: Sequence[Path], only: Sequence[str] = ()
) -> Selection:
    """Load every selected file once, with the rules above; ``only`` narrows to those pool names.

    A named ``--policy`` file that does not exist is a problem (not silently skipped); a named pool
    that no selected file defines is a problem too.
    """
    selection = Selection()
    missing = [f for f in files if not f.exists()]
    for path in missing:
        selection.problems.append(FileProblem(path, path.stem, f"{path}: no such file"))
    for path in policy_files(directories, files):
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            pool = declared_pool(path)
            if not only or pool in only:
                selection.problems.append(FileProblem(path, pool, _problem(exc)))
            continue
        if only and policy.pool not in only:
            continue
        if policy.pool in selection.policies:
            first = selection.policies[policy.pool][0]
            error = DuplicatePoolError(f"{path}: pool {policy.pool!r} is already defined by {first}")
            selection.problems.append(FileProblem(path, policy.pool, str(error), duplicate=True))
            continue
        selection.policies[policy.pool] = (path, policy)
    named = {p.pool for p in selection.problems}
    for pool in only:
        if pool not in selection.policies and pool not in named:
            selection.problems.append(
                FileProblem(Path("-"), pool, f"--pool {pool}: no selected policy file defines it")
            )
    return selection


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


@dataclass
class PoolEntry:
    """One running pool: its file, name and runtime.

    ``lock`` is held for the whole of each tick and while retiring, so a pool is closed only
    between ticks and never ticked after it is closed.
    """

    path: Path
    pool: str
    runtime: Runtime
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    def renamed(self) -> bool:
        """The file's policy in force names another pool than the one this entry runs."""
        return self.runtime.watcher.current().pool != self.pool

    def retire(self) -> None:
        """Close the pool's adapters after its current tick (if one runs). Changes no node."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.runtime.close()


@dataclass
class ScanResult:
    """What a scan changed: pools to start, pools to retire, files newly found broken."""

    added: list[PoolEntry] = field(default_factory=list)
    removed: list[PoolEntry] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)


class PoolSet:
    """The pools ``autoscaler run`` manages, following the selected files.

    ``build`` makes a pool's runtime from its file (``wiring.build_runtime`` with the run's store,
    telemetry and mode already bound). ``scan`` never raises for one file's problem: a file that
    cannot be loaded or built is reported and skipped, the other pools are unaffected. Not
    thread-safe: one scanner at a time (the service's scan job, ``max_instances=1``).
    """

    def __init__(
        self,
        directories: Sequence[Path],
        files: Sequence[Path],
        build: Callable[[Path], Runtime],
        *,
        telemetry: ControllerMetrics | None = None,
        only: Sequence[str] = (),
    ) -> None:
        self.directories = list(directories)
        self.files = list(files)
        self.only = set(only)
        self._build = build
        self._telemetry = telemetry
        #: Running pools by file.
        self.entries: dict[Path, PoolEntry] = {}
        #: Files that are selected but not running, with the stamp they were last tried at.
        self.problems: dict[Path, tuple[tuple[int, int] | None, FileProblem]] = {}
        # Fail at start on a mistyped directory, like any bad command-line argument.
        policy_files(self.directories, self.files)

    def by_pool(self) -> dict[str, PoolEntry]:
        """Running pools by name."""
        return {e.pool: e for e in self.entries.values()}

    def scan(self) -> ScanResult:
        """Compare the selected files with the running pools: start new ones, retire gone ones."""
        result = ScanResult()
        try:
            present = policy_files(self.directories, self.files)
        except PoolSelectionError as exc:
            # The directory went away (unmounted, renamed): keep every pool running rather than
            # reading "no files" as "remove every pool"; say so at each scan until it is back.
            log.error("policy_directory_unreadable", error=str(exc))
            return result
        keys = {p.resolve(): p for p in present}
        for key in list(self.entries):
            entry = self.entries[key]
            if key not in keys:
                del self.entries[key]
                log.info("pool_removed", pool=entry.pool, file=str(entry.path),
                         nodes="left as they are (not stopped, drained or terminated)")
                result.removed.append(entry)
            elif entry.renamed():
                # The file now names another pool: the old pool is retired (its lock released) and
                # the file starts afresh below under the new name, with the duplicate check.
                del self.entries[key]
                log.info("pool_removed", pool=entry.pool, file=str(entry.path), reason="renamed in its file",
                         nodes="left as they are (not stopped, drained or terminated)")
                result.removed.append(entry)
        for key in list(self.problems):
            if key not in keys:
                _stamp_was, problem = self.problems.pop(key)
                log.info("policy_file_removed", pool=problem.pool, file=str(problem.path))
                if self._telemetry is not None and problem.pool not in self.by_pool():
                    self._telemetry.forget_policy(problem.pool)
        running = self.by_pool()
        for key, path in keys.items():
            if key in self.entries:
                continue
            stamp = _stamp(path)
            if key in self.problems and self.problems[key][0] == stamp:
                tried = self.problems[key][1]
                if not (tried.duplicate and tried.pool not in running):
                    continue  # the same broken version, or the pool still run from another file

            entry_or_problem = self._start(path, running)
            if isinstance(entry_or_problem, FileProblem):
                wanted = not self.only or entry_or_problem.pool in self.only
                if wanted and (key not in self.problems or self.problems[key][1] != entry_or_problem):
                    result.problems.append(entry_or_problem)
                self.problems[key] = (stamp, entry_or_problem)
                continue
            self.problems.pop(key, None)
            self.entries[key] = entry_or_problem
            running[entry_or_problem.pool] = entry_or_problem
            result.added.append(entry_or_problem)
        return result

    def _start(self, path: Path, running: dict[str, PoolEntry]) -> PoolEntry | FileProblem:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            problem = FileProblem(path, declared_pool(path), _problem(exc))
            if self.only and problem.pool not in self.only:
                return problem
            log.error("policy_invalid_pool_not_started", pool=problem.pool, file=str(path),
                      error=problem.error)
            if self._telemetry is not None and problem.pool not in running:
                self._telemetry.policy_valid(problem.pool, False)
            return problem
        if self.only and policy.pool not in self.only:
            return FileProblem(path, policy.pool, f"pool {policy.pool!r} is not selected by --pool")
        if policy.pool in running:
            error = DuplicatePoolError(
                f"{path}: pool {policy.pool!r} is already managed from {running[policy.pool].path}; "
                "this file is ignored until it names another pool or is removed"
            )
            log.error("pool_duplicate", pool=policy.pool, file=str(path), error=str(error))
            return FileProblem(path, policy.pool, str(error), duplicate=True)
        try:
            runtime = self._build(path)
        except AutoscalerError as exc:
            log.error("pool_not_started", pool=policy.pool, file=str(path), error=_problem(exc))
            return FileProblem(path, policy.pool, _problem(exc))
        except Exception as exc:  # one pool's adapters failing to build must not stop the scan
            log.exception("pool_not_started", pool=policy.pool, file=str(path))
            return FileProblem(path, policy.pool, f"unexpected {type(exc).__name__}: {exc}")
        log.info("pool_added", pool=policy.pool, file=str(path))
        return PoolEntry(path=path, pool=policy.pool, runtime=runtime)

    def close(self) -> None:
        """Retire every pool (after its current tick). Changes no node."""
        entries, self.entries = list(self.entries.values()), {}
        for entry in entries:
            entry.retire()

