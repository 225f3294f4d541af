"""``PrometheusSource``: the pool's signals read from a Prometheus server with prometheus-api-client.

How a query becomes a ``Sample``:

1. The PromQL is evaluated at the caller's ``now`` (``/api/v1/query?time=...``), with the
   config's timeout both on the HTTP request and as Prometheus's own evaluation timeout.
   ``PrometheusConnect`` retries three times with a one-second backoff by default; this source
   mounts a zero-retry policy instead, so a down or slow server costs one timeout, not a storm.
2. An instant vector is then checked for freshness with ``timestamp(<promql>)`` at the same
   instant, within what is left of the timeout. For a plain selector (``fun_asr_active_streams``)
   that is the time the sample was scraped, so a series whose newest sample is older than
   ``config.staleness`` is dropped; for a computed expression (``sum(...)``, ``rate(...)``) it is
   the evaluation time, and Prometheus's own lookback and staleness markers bound the age. If only
   this second query fails, the values are kept (step 1 succeeded; freshness is then unknown, not bad).
3. Series whose value is NaN or ±Inf are dropped; ``query`` returns the maximum of what remains.

Any failure along the way (connection refused, timeout, HTTP or PromQL error, malformed answer,
empty result, nothing finite, nothing fresh) returns ``Sample.missing(reason)``: *no data*, never
zero, never an exception.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from autoscaler.domain import Sample
from autoscaler.errors import MetricsUnavailable
from autoscaler.metrics.reduce import max_by_label
from autoscaler.policy.model import PrometheusConfig

#: Errors of one HTTP exchange with Prometheus: transport (refused, timeout, retry exhausted),
#: a non-200 answer, or a body that is not the API's JSON (``requests.JSONDecodeError`` is a
#: ``ValueError``; missing keys and wrong shapes raise ``KeyError``/``TypeError``/``IndexError``).
_QUERY_ERRORS = (requests.RequestException, PrometheusApiClientException, ValueError, KeyError, TypeError,
                 IndexError)
#: Longest reason text kept from an error (Prometheus echoes long queries back).
_MAX_REASON = 300
#: Least time the freshness query is given, even when the first query used up the budget.
_MIN_FOLLOW_UP_S = 0.1



def safe_url(url: str) -> str:
    """``url`` without its user and password (``http://user:pw@host`` → ``http://***@host``), for
    messages, logs and reports."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))

class _QueryFailedError(Exception):
    """Internal: one query could not produce series; ``str()`` is the reason."""


@dataclass(frozen=True)
class _Series:
    labels: Mapping[str, str]
    value: float
    at: float  # the sample's time as far as known: scrape time for a plain selector, else eval time

    @property
    def key(self) -> frozenset[tuple[str, str]]:
        # timestamp() drops the metric name, so series are matched on the other labels.
        return frozenset((k, v) for k, v in self.labels.items() if k != "__name__")


def _prom_duration(seconds: float) -> str:
    # Prometheus durations take integer units only ("1500ms", not "1.5s").
    return f"{max(1, round(seconds * 1000))}ms"


def _utc_seconds(when: datetime) -> float:
    if when.tzinfo is None:
        raise ValueError("PrometheusSource needs timezone-aware datetimes (UTC)")
    return when.timestamp()


def _describe(exc: BaseException, timeout_s: float) -> str:
    """What went wrong, in words an operator reads (not urllib3's message with the whole URL)."""
    # With retries off, urllib3 wraps a read timeout in MaxRetryError and requests turns that into
    # a ConnectionError, so the message is the only reliable sign of a timeout.
    if isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower():
        return f"timed out: no answer within {timeout_s:g}s"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect (is Prometheus running at that address?)"
    return _shorten(str(exc) or type(exc).__name__)


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


class PrometheusSource:
    """A ``MetricsSource`` backed by one Prometheus server; see the module docstring for the rules.

    ``config.url`` is the server, ``config.timeout`` bounds every call (one attempt, no retries),
    ``config.staleness`` is the oldest sample of a plain selector that still counts as data.
    Also offers ``query_range`` for the dry-run's replay of recorded demand.
    """

    def __init__(self, config: PrometheusConfig) -> None:
        self.config = config
        self._timeout_s = config.timeout.total_seconds()
        self._client = PrometheusConnect(
            url=config.url.rstrip("/"),
            retry=Retry(total=0, connect=0, read=0, redirect=0, status=0, raise_on_status=False),
            # The client is annotated `int` but hands the value to requests, which takes float seconds.
            timeout=self._timeout_s,  # type: ignore[arg-type]
        )

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()

    # ------------------------------------------------------------------------------------ protocol
    def query(self, promql: str, *, now: datetime) -> Sample:
        """The maximum over the fresh, finite series of ``promql`` at ``now``, or a missing sample.

        Never raises for a data or backend problem; a naive ``now`` is a ``ValueError`` (a bug).
        """
        try:
            series = self._fresh_series(promql, now)
        except _QueryFailedError as exc:
            return Sample.missing(str(exc))
        best = max(series, key=lambda s: s.value)
        return Sample(value=best.value, observed_at=datetime.fromtimestamp(best.at, UTC))

    def query_by_instance(
        self, promql: str, *, now: datetime, label: str = "instance_id"
    ) -> Mapping[str, float]:
        """``label`` value → number for each fresh, finite series of ``promql`` at ``now``.

        Series without ``label`` are left out; when several series share a value, the largest
        wins. Any failure returns an empty mapping.
        """
        try:
            series = self._fresh_series(promql, now)
        except _QueryFailedError:
            return {}
        return max_by_label(series, label)

    # ------------------------------------------------------------------------------------ range
    def query_range(
        self, promql: str, start: datetime, end: datetime, step: timedelta
    ) -> list[tuple[float, float]]:
        """``(unix seconds, value)`` points of ``promql`` from ``start`` to ``end`` every ``step``.

        Several series are reduced to their maximum at each instant; NaN and ±Inf points are left
        out. An empty list means Prometheus had no data in the window. Raises
        ``MetricsUnavailable`` (chained to the cause) when the query cannot be answered, including
        Prometheus's limit of 11,000 points per series (split longer windows).
        """
        if step.total_seconds() <= 0:
            raise ValueError("step must be positive")
        if end < start:
            raise ValueError("end is before start")
        try:
            result = self._client.custom_query_range(
                promql, start_time=start, end_time=end, step=f"{step.total_seconds():g}",
                # The client rounds start and end to whole seconds; these keep their milliseconds.
                params={"timeout": _prom_duration(self._timeout_s), "start": f"{start.timestamp():.3f}",
                        "end": f"{end.timestamp():.3f}"},
            )
            best: dict[float, float] = {}
            for item in result:
                for stamp, text in item["values"]:
                    value = float(text)
                    if math.isfinite(value):
                        at = float(stamp)
                        best[at] = max(value, best.get(at, -math.inf))
        except _QUERY_ERRORS as exc:
            reason = _describe(exc, self._timeout_s)
            raise MetricsUnavailable(
                f"range query {promql!r} failed at {safe_url(self.config.url)}: {reason}"
            ) from exc
        return sorted(best.items())

    # ------------------------------------------------------------------------------------ internals
    def _fresh_series(self, promql: str, now: datetime) -> list[_Series]:
        """The finite, fresh series of ``promql`` at ``now``; ``_QueryFailedError`` says why none."""
        at = _utc_seconds(now)
        started = time.monotonic()
        result_type, series = self._instant(promql, at, self._timeout_s)
        if not series:
            raise _QueryFailedError(f"no data: {promql!r} returned an empty result")
        finite = [s for s in series if math.isfinite(s.value)]
        if not finite:
            raise _QueryFailedError(f"no data: {promql!r} returned only NaN/Inf ({series[0].value})")
        if result_type != "vector":
            return finite

        left = max(_MIN_FOLLOW_UP_S, self._timeout_s - (time.monotonic() - started))
        try:
            _, stamps = self._instant(f"timestamp(\n{promql}\n)", at, left)
        except _QueryFailedError:
            return finite  # freshness unknown; Prometheus's own lookback still bounds the age
        scraped_at = {s.key: s.value for s in stamps}
        limit = self.config.staleness.total_seconds()
        dated = [_Series(s.labels, s.value, scraped_at.get(s.key, s.at)) for s in finite]
        fresh = [s for s in dated if at - s.at <= limit]
        if not fresh:
            oldest_age = at - min(s.at for s in dated)
            raise _QueryFailedError(
                f"stale: every series of {promql!r} is older than {limit:g}s (newest is "
                f"{at - max(s.at for s in dated):.0f}s old, oldest {oldest_age:.0f}s)"
            )
        return fresh

    def _instant(self, promql: str, at: float, timeout_s: float) -> tuple[str, list[_Series]]:
        """One instant query: its result type and series (a scalar is one unlabelled series)."""
        try:
            result: Any = self._client.custom_query(
                promql, params={"time": f"{at:.3f}", "timeout": _prom_duration(timeout_s)},
                timeout=timeout_s,  # type: ignore[arg-type]  # float seconds, as in __init__
            )
            return _parse_instant(result)
        except _QUERY_ERRORS as exc:
            reason = _describe(exc, timeout_s)
            raise _QueryFailedError(f"query failed at {safe_url(self.config.url)}: {reason}") from exc


def _parse_instant(result: Any) -> tuple[str, list[_Series]]:
    """Read the ``data.result`` of an instant query (the client drops ``resultType``, so go by shape).

    A scalar or string result is ``[time, "value"]``; a vector is a list of ``{metric, value}``; a
    matrix (a range selector evaluated on its own) is a list of ``{metric, values}`` and is refused.
    """
    if not isinstance(result, list):
        raise TypeError(f"unexpected result {result!r}")
    if len(result) == 2 and not isinstance(result[0], dict):
        return "scalar", [_Series({}, float(result[1]), float(result[0]))]
    series: list[_Series] = []
    for item in result:
        if "value" not in item:
            raise _QueryFailedError(
                "the query returns a range vector; wrap it in a function such as max_over_time()"
            )
        stamp, text = item["value"]
        series.append(_Series(dict(item["metric"]), float(text), float(stamp)))
    return "vector", series
