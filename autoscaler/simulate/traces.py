"""Readers of the demand traces, each in its own format, into arrays a replay can sample from.

Every reader raises ``ScenarioError`` naming the file (and line or token) for anything malformed:
an unreadable archive, a missing member, a value that is not a number, a negative count.

- ``read_twitter``: bzip2 tar holding ``workload.txt``, space-separated arrivals per second.
- ``read_servegen``: ``data/<category>/<model>/chunk-<client>-trace.csv`` in a folder or ``.tar.gz``;
  headerless ``window_start_s,rate_req_per_s,cv,pattern,param1,param2``, one file per client.
- ``read_azure``: gzip (or plain) CSV ``TIMESTAMP,...``, one row per request.
- ``read_csv``: ``timestamp,value`` rows (optional header); timestamps in seconds or ISO 8601.
"""

from __future__ import annotations

import bz2
import csv
import fnmatch
import gzip
import io
import math
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from autoscaler.errors import ScenarioError

#: The longest span a trace may cover: one number per second of it is held in memory (~280 MB).
MAX_TRACE_SECONDS = 400 * 86_400

#: The twitter archive starts on 2021-08-01 00:00 UTC (the README's best reading of window 0).
TWITTER_EPOCH = datetime(2021, 8, 1, tzinfo=UTC)
#: Runs of zero arrivals at least this long are archive gaps, not idle time (twitter: ~28 min a day).
GAP_MIN_S = 60
#: Inter-arrival laws of ServeGen windows.
LAW_NONE, LAW_GAMMA, LAW_WEIBULL, LAW_EXPONENTIAL = 0, 1, 2, 3
_LAWS = {
    "": LAW_NONE,
    "gamma": LAW_GAMMA,
    "weibull": LAW_WEIBULL,
    "exponential": LAW_EXPONENTIAL,
    "poisson": LAW_EXPONENTIAL,
}
#: Unix timestamps from 2001 on are absolute; smaller numbers are seconds from the trace's start.
_UNIX_FROM = 1e9


def _open_error(path: Path, exc: Exception) -> ScenarioError:
    if isinstance(exc, FileNotFoundError):
        return ScenarioError(f"{path}: no such trace file")
    if isinstance(exc, IsADirectoryError):
        return ScenarioError(f"{path}: is a directory, not a trace file")
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return ScenarioError(f"{path}: cannot read the trace: {reason}")


# ------------------------------------------------------------------------------------------ twitter
@dataclass(frozen=True)
class CountsTrace:
    """Observed arrivals per second (twitter, azure, 1-second csv) from ``epoch`` (when known)."""

    counts: NDArray[np.int64]
    epoch: datetime | None
    notes: tuple[str, ...] = ()


def fill_zero_gaps(counts: NDArray[np.int64], min_run: int = GAP_MIN_S) -> tuple[NDArray[np.int64], int, int]:
    """Replace each run of at least ``min_run`` zero seconds by the same number of seconds before it.

    A gap at the very start takes the seconds after it instead. Returns the filled counts, the
    number of gaps and the seconds filled. Vectorised except for the loop over gaps (a few a day).
    """
    zero = counts == 0
    if not zero.any():
        return counts, 0, 0
    edges = np.diff(np.concatenate(([0], zero.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    long = (ends - starts) >= min_run
    out = counts.copy()
    filled = 0
    for start, end in zip(starts[long], ends[long], strict=True):
        length = end - start
        if start >= length:
            out[start:end] = out[start - length : start]
        elif end + length <= len(out):
            out[start:end] = out[end : end + length]
        else:
            continue  # a gap longer than the data around it: leave it
        filled += int(length)
    return out, int(long.sum()), filled


def read_twitter(path: Path, *, fill_gaps: bool = True) -> CountsTrace:
    """Arrivals per second from the twitter archive (``workload.txt`` in a bzip2 tar, or the bare text)."""
    try:
        if path.suffix in (".txt",):
            data = path.read_bytes()
        else:
            with tarfile.open(path, "r:*") as archive:
                member = next(
                    (m for m in archive.getmembers() if m.isfile() and Path(m.name).name == "workload.txt"),
                    None,
                )
                if member is None:
                    raise ScenarioError(f"{path}: no workload.txt inside the archive")
                handle = archive.extractfile(member)
                assert handle is not None  # a regular file member always has content
                data = handle.read()
    except ScenarioError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
            raise _open_error(path, exc) from exc
        raise ScenarioError(
            f"{path}: not a readable twitter trace (bzip2 tar with workload.txt): {exc or type(exc).__name__}"
        ) from exc
    tokens = data.split()
    if not tokens:
        raise ScenarioError(f"{path}: workload.txt is empty")
    try:
        counts = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError) as exc:
        bad = next(i for i, t in enumerate(tokens) if not t.isdigit())
        shown = tokens[bad][:20].decode("utf-8", "replace")
        raise ScenarioError(
            f"{path}: workload.txt value {bad + 1} (second {bad}) is {shown!r}, not a count of arrivals"
        ) from exc
    if (counts < 0).any():
        bad = int(np.flatnonzero(counts < 0)[0])
        raise ScenarioError(f"{path}: workload.txt value {bad + 1} (second {bad}) is negative")
    notes: tuple[str, ...] = ()
    if fill_gaps:
        counts, gaps, seconds = fill_zero_gaps(counts)
        if gaps:
            notes = (
                f"{gaps} gaps of zero arrivals ({seconds / 60:.0f} min in all, an artefact of the "
                "archive) were filled with the minutes before each gap",
            )
    return CountsTrace(counts=counts, epoch=TWITTER_EPOCH, notes=notes)


# ----------------------------------------------------------------------------------------- servegen
@dataclass(frozen=True)
class ServeGenTrace:
    """One row per (client, window): its start, rate, inter-arrival law and the law's shape."""

    window_s: int
    length_s: int
    starts: NDArray[np.int64]
    rates: NDArray[np.float64]
    laws: NDArray[np.int8]
    shapes: NDArray[np.float64]
    clients: int

    def total_rate(self) -> NDArray[np.float64]:
        """Requests per second of the model (summed over clients), per window."""
        windows = self.length_s // self.window_s
        out: NDArray[np.float64] = np.bincount(
            self.starts // self.window_s, weights=self.rates, minlength=windows
        ).astype(np.float64)
        return out


def _servegen_members(path: Path, model: str) -> Iterator[tuple[str, bytes]]:
    pattern = f"*/{model}/chunk-*-trace.csv"
    if path.is_dir():
        found = sorted(
            p
            for p in path.rglob("chunk-*-trace.csv")
            if fnmatch.fnmatch(p.as_posix(), pattern) or p.parent.name == model
        )
        for file in found:
            yield str(file), file.read_bytes()
        return
    # Read members in archive order (seeking back in a gzip stream decompresses it again), then
    # hand them out sorted by name so the result does not depend on the archive's order.
    found_members: list[tuple[str, bytes]] = []
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            if member.isfile() and fnmatch.fnmatch("/" + member.name, pattern):
                handle = archive.extractfile(member)
                assert handle is not None
                found_members.append((f"{path}:{member.name}", handle.read()))
    yield from sorted(found_members)


def _servegen_rows_slow(name: str, text: str) -> None:
    """Find the first bad row of a ServeGen file and raise ``ScenarioError`` naming it."""
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row:
            continue
        if len(row) != 6:
            raise ScenarioError(
                f"{name}:{line_no}: expected 6 columns "
                f"(window_start_s,rate,cv,pattern,param1,param2), found {len(row)}"
            )
        try:
            start, rate = float(row[0]), float(row[1])
            shape = float(row[4]) if row[4].strip() else 0.0
        except ValueError as exc:
            raise ScenarioError(f"{name}:{line_no}: not a number in {','.join(row)[:80]!r}") from exc
        law = _LAWS.get(row[3].strip().lower())
        if law is None:
            raise ScenarioError(
                f"{name}:{line_no}: unknown inter-arrival law {row[3]!r} "
                "(expected Gamma, Weibull or Exponential)"
            )
        if not (math.isfinite(start) and math.isfinite(rate)) or start < 0 or rate < 0:
            raise ScenarioError(f"{name}:{line_no}: window start and rate must be finite and >= 0")
        if rate > 0 and law in (LAW_GAMMA, LAW_WEIBULL) and not (math.isfinite(shape) and shape > 0):
            raise ScenarioError(f"{name}:{line_no}: the {row[3]} shape {row[4]!r} must be positive")
    raise ScenarioError(f"{name}: malformed rows")  # pragma: no cover - the fast path found a problem


def _servegen_rows(
    name: str, text: str
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.int8], NDArray[np.float64]]:
    """One client file's columns, parsed in bulk by numpy; a bad row is found and named by the slow path."""
    lines = [line for line in text.splitlines() if line.strip()]
    cells = np.array([c.strip() for line in lines for c in line.split(",")], dtype=object)
    if len(cells) != 6 * len(lines):
        _servegen_rows_slow(name, text)
    table = cells.reshape(len(lines), 6) if lines else cells.reshape(0, 6)
    try:
        starts = table[:, 0].astype(np.float64)
        rates = table[:, 1].astype(np.float64)
        shapes = np.where(table[:, 4] == "", "0", table[:, 4]).astype(np.float64)
    except ValueError:
        _servegen_rows_slow(name, text)
        raise  # pragma: no cover - the slow path always raises
    names = np.char.lower(table[:, 3].astype(str))
    laws = np.full(len(lines), -1, dtype=np.int8)
    for law_name, code in _LAWS.items():
        laws[names == law_name] = code
    bad = (laws < 0) | ~np.isfinite(starts) | ~np.isfinite(rates) | (starts < 0) | (rates < 0)
    shaped = (rates > 0) & ((laws == LAW_GAMMA) | (laws == LAW_WEIBULL))
    bad |= shaped & ~(np.isfinite(shapes) & (shapes > 0))
    if bad.any():
        _servegen_rows_slow(name, text)
    laws[rates == 0] = LAW_NONE
    return starts.astype(np.int64), rates, laws, shapes


def read_servegen(path: Path, model: str) -> ServeGenTrace:
    """Every client's windows of ``model`` from a ServeGen folder or archive."""
    columns: list[tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.int8], NDArray[np.float64]]] = []
    try:
        for name, data in _servegen_members(path, model):
            columns.append(_servegen_rows(name, data.decode("utf-8", "replace")))
    except ScenarioError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
            raise _open_error(path, exc) from exc
        raise ScenarioError(f"{path}: not a readable ServeGen archive: {exc or type(exc).__name__}") from exc
    if not columns:
        raise ScenarioError(f"{path}: no data/*/{model}/chunk-*-trace.csv files for model {model!r}")
    start_arr = np.concatenate([c[0] for c in columns])
    unique = np.unique(start_arr)
    steps = np.unique(np.diff(unique))
    if len(unique) < 2 or len(steps) != 1:
        raise ScenarioError(
            f"{path}: windows of model {model!r} are not evenly spaced (steps seen: {steps[:5].tolist()})"
        )
    window = int(steps[0])
    if int(unique[0]) % window:
        raise ScenarioError(f"{path}: windows of model {model!r} do not start at a multiple of {window} s")
    return ServeGenTrace(
        window_s=window,
        length_s=int(unique[-1]) + window,
        starts=start_arr,
        rates=np.concatenate([c[1] for c in columns]),
        laws=np.concatenate([c[2] for c in columns]),
        shapes=np.concatenate([c[3] for c in columns]),
        clients=len(columns),
    )


# -------------------------------------------------------------------------------------------- azure
def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        elif raw[:3] == b"BZh":
            raw = bz2.decompress(raw)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile):
            raise _open_error(path, exc) from exc
        raise ScenarioError(f"{path}: not a readable compressed file: {exc or type(exc).__name__}") from exc
    return raw.decode("utf-8", "replace")


def _instants(values: list[str], where: str, first_line: int) -> NDArray[np.float64]:
    """ISO 8601 strings (timezone-naive ones are UTC) as unix seconds."""
    try:
        stamps = np.array([v.strip().replace("Z", "") for v in values], dtype="datetime64[ns]")
    except ValueError as exc:
        for offset, value in enumerate(values):
            try:
                np.datetime64(value.strip().replace("Z", ""), "ns")
            except ValueError:
                raise ScenarioError(
                    f"{where}:{first_line + offset}: {value[:40]!r} is not a timestamp"
                ) from exc
        raise ScenarioError(f"{where}: timestamps could not be read") from exc
    if np.isnat(stamps).any():
        bad = int(np.flatnonzero(np.isnat(stamps))[0])
        raise ScenarioError(f"{where}:{first_line + bad}: empty timestamp")
    out: NDArray[np.float64] = stamps.astype("int64").astype(np.float64) / 1e9
    return out


def read_azure(path: Path) -> CountsTrace:
    """Arrivals per second from Azure's per-request trace (``TIMESTAMP,...``, one row per request)."""
    lines = _read_text(path).splitlines()
    if not lines:
        raise ScenarioError(f"{path}: empty trace")
    header = lines[0].split(",")[0].strip().upper()
    body = lines[1:] if header == "TIMESTAMP" else lines
    first_line = 2 if header == "TIMESTAMP" else 1
    rows = [line.split(",", 1)[0] for line in body if line.strip()]
    if not rows:
        raise ScenarioError(f"{path}: no requests in the trace")
    seconds = _instants(rows, str(path), first_line)
    if (np.diff(seconds) < 0).any():
        bad = int(np.flatnonzero(np.diff(seconds) < 0)[0])
        raise ScenarioError(f"{path}:{first_line + bad + 1}: timestamps go backwards")
    _check_span(path, float(seconds[-1] - seconds[0]))
    origin = math.floor(seconds[0])
    counts = np.bincount((seconds - origin).astype(np.int64)).astype(np.int64)
    return CountsTrace(counts=counts, epoch=datetime.fromtimestamp(origin, UTC))


def _check_span(path: Path, seconds: float) -> None:
    """Refuse a trace whose timestamps span more than ``MAX_TRACE_SECONDS`` before allocating one
    value per second of it (a typo'd year would otherwise ask for terabytes)."""
    if not math.isfinite(seconds) or seconds > MAX_TRACE_SECONDS:
        raise ScenarioError(
            f"{path}: timestamps span {seconds / 86_400:.3g} days; a trace may span at most "
            f"{MAX_TRACE_SECONDS // 86_400} days (one value per second is held in memory)"
        )


# ---------------------------------------------------------------------------------------------- csv
@dataclass(frozen=True)
class SeriesTrace:
    """A per-second series held from each row to the next (a rate in req/s, or concurrent streams)."""

    values: NDArray[np.float64]
    epoch: datetime | None
    whole_counts: bool
    notes: tuple[str, ...] = ()


def read_csv(path: Path) -> SeriesTrace:
    """``timestamp,value`` rows: each value holds from its timestamp until the next row's.

    Timestamps are seconds (unix time from 2001 on, else seconds from the trace's start) or ISO 8601;
    they must increase. The last row holds for the median step. ``whole_counts`` is true when every
    step is one second and every value a whole number (observed counts, thinned rather than redrawn).
    """
    lines = [line for line in _read_text(path).splitlines()]
    rows: list[tuple[int, str, str]] = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            raise ScenarioError(f"{path}:{line_no}: expected 2 columns timestamp,value, found {len(parts)}")
        rows.append((line_no, parts[0], parts[1]))
    if rows:
        try:
            float(rows[0][2])
        except ValueError:
            rows = rows[1:]  # a header row
    if not rows:
        raise ScenarioError(f"{path}: no rows of timestamp,value")
    values = np.empty(len(rows), dtype=np.float64)
    for i, (line_no, _, text) in enumerate(rows):
        try:
            values[i] = float(text)
        except ValueError as exc:
            raise ScenarioError(f"{path}:{line_no}: value {text[:40]!r} is not a number") from exc
        if not math.isfinite(values[i]) or values[i] < 0:
            raise ScenarioError(f"{path}:{line_no}: value {text[:40]!r} must be finite and >= 0")
    try:
        stamps = np.array([float(t) for _, t, _ in rows], dtype=np.float64)
        numeric = True
    except ValueError:
        stamps = _instants([t for _, t, _ in rows], str(path), rows[0][0])
        numeric = False
    if not np.isfinite(stamps).all():
        raise ScenarioError(f"{path}: timestamps must be finite")
    if len(stamps) > 1 and (np.diff(stamps) <= 0).any():
        bad = int(np.flatnonzero(np.diff(stamps) <= 0)[0]) + 1
        raise ScenarioError(f"{path}:{rows[bad][0]}: timestamps must increase")
    _check_span(path, float(stamps[-1] - stamps[0]))
    origin = math.floor(stamps[0])
    offsets = np.floor(stamps - origin).astype(np.int64)
    step = int(np.median(np.diff(offsets))) if len(offsets) > 1 else 1
    step = max(step, 1)
    _check_span(path, float(offsets[-1] + step))
    ends = np.append(offsets[1:], offsets[-1] + step)
    per_second = np.repeat(values, ends - offsets)
    absolute = (not numeric) or stamps[0] >= _UNIX_FROM
    epoch = datetime.fromtimestamp(origin, UTC) if absolute else None
    whole = bool(np.all(ends - offsets == 1) and np.all(values == np.floor(values)))
    return SeriesTrace(values=per_second, epoch=epoch, whole_counts=whole)
