"""Test helpers shipped with the package: contract suites every adapter implementation passes
(``provider_contract.ProviderContract``, ...) and small utilities they share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T], *, timeout_s: float, interval_s: float = 0.05, message: str = "condition"
) -> T:
    """Call ``probe`` until it returns a truthy value and return that value.

    For eventually consistent systems (a cloud's list after a terminate, a node's health after
    boot). Raises ``AssertionError`` naming ``message`` and the last value after ``timeout_s``, so
    a test fails with a reason instead of hanging.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message}: not true after {timeout_s:.1f} s (last value: {value!r})")
        time.sleep(interval_s)


def _samples(url: str, name: str, labels: dict[str, str]) -> list[float]:
    """One scrape of ``url``/metrics: the values of the samples ``name`` whose labels include ``labels``."""
    text = httpx.get(f"{url.rstrip('/')}/metrics", timeout=5.0).text
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]


def read_metric(url: str, name: str, /, **labels: str) -> float:
    """Scrape ``url``/metrics and return the value of the one sample ``name`` whose labels include ``labels``.

    Raises ``AssertionError`` when no sample or several samples match (and ``httpx.HTTPError`` when
    the scrape itself fails, within a 5 s timeout).
    """
    values = _samples(url, name, labels)
    if len(values) != 1:
        raise AssertionError(f"expected one sample of {name}{labels or ''} at {url}, found {values}")
    return values[0]


def read_counter(url: str, name: str, /, **labels: str) -> float:
    """Like ``read_metric`` for a labelled counter, but 0 while no sample matches yet.

    A ``prometheus_client`` counter child appears only at its first increment: before a node served
    its first request, "no sample" means zero, not a broken exporter. Several matches still raise.
    """
    values = _samples(url, name, labels)
    if len(values) > 1:
        raise AssertionError(f"expected at most one sample of {name}{labels} at {url}, found {values}")
    return values[0] if values else 0.0
