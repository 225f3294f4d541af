"""A time and attempt budget for one provider operation, shared by the cloud providers.

Cloud SDKs retry throttling and 5xx on their own (botocore's standard mode, the Alibaba SDK's
runtime options), but each SDK counts attempts *per request*: an operation that makes several
requests (list, look up an image, launch in three zones) could spin for minutes while the
controller's tick waits. A ``BudgetRun`` caps the whole operation instead:

- ``deadline_s``: wall-clock time the operation may take, whatever the SDK does inside;
- ``max_rounds``: how many times one request is re-issued after the SDK itself gave up on a
  transient error (the SDK's own retries happen inside each round);
- exponential backoff with full jitter between rounds, never sleeping past the deadline.

When the budget runs out on a transient error, ``BudgetExhaustedError`` (a ``TransientProviderError``)
is raised, chained to the last SDK error: the next tick may succeed. Non-transient errors pass
through untouched for the provider to map.

Usage::

    budget = RetryBudget(deadline_s=30)
    with budget.start("launch") as run:
        reply = run.call(lambda: client.run_instances(...), is_transient=my_sdk_is_transient,
                         what="RunInstances")

SDK hooks (botocore's ``needs-retry`` event, for example) read the operation in progress with
``active_run()`` and ask ``run.allows_wait(seconds)`` before the SDK sleeps for a retry, so even
the SDK's own backoff stays inside the deadline. Nothing here imports a cloud SDK.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

from autoscaler.errors import TransientProviderError

T = TypeVar("T")

_ACTIVE: ContextVar[BudgetRun | None] = ContextVar("autoscaler_provider_budget_run", default=None)


class BudgetExhaustedError(TransientProviderError):
    """A transient failure outlived the operation's time or attempt budget."""


@dataclass(frozen=True)
class RetryBudget:
    """Limits for one provider operation (``launch``, ``list_instances``, ``terminate``, ...).

    ``deadline_s`` bounds the operation's wall-clock time; ``max_rounds`` bounds how often one
    request is re-issued after a transient failure; the pause before round *n* is a random
    duration in ``[0, min(max_delay_s, base_delay_s * 2**(n-1))]`` (full jitter, so many
    controllers throttled together do not retry in step).
    """

    deadline_s: float = 30.0
    max_rounds: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 5.0

    def __post_init__(self) -> None:
        if self.deadline_s <= 0 or self.max_rounds < 1 or self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError(f"invalid retry budget {self!r}")

    @contextmanager
    def start(
        self,
        operation: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> Iterator[BudgetRun]:
        """Run ``operation`` under this budget: the ``BudgetRun`` is ``active_run()`` inside the block.

        ``clock``, ``sleep`` and ``jitter`` are injectable so tests need not wait.
        """
        run = BudgetRun(self, operation, clock=clock, sleep=sleep, jitter=jitter)
        token = _ACTIVE.set(run)
        try:
            yield run
        finally:
            _ACTIVE.reset(token)


class BudgetRun:
    """One operation's spending of a ``RetryBudget``; made by ``RetryBudget.start``."""

    def __init__(
        self,
        budget: RetryBudget,
        operation: str,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        jitter: Callable[[], float],
    ) -> None:
        self.budget = budget
        self.operation = operation
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self.started = clock()
        self.deadline = self.started + budget.deadline_s
        #: Transient failures this run has absorbed (for logs and tests).
        self.transient_failures = 0

    def elapsed(self) -> float:
        """Seconds since the operation started."""
        return self._clock() - self.started

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - self._clock())

    def allows_wait(self, seconds: float) -> bool:
        """True when pausing ``seconds`` and then sending one more request still fits the deadline."""
        return seconds < self.remaining()

    def check(self, what: str) -> None:
        """Raise ``BudgetExhaustedError`` when the deadline has passed (call before starting a request)."""
        if self.remaining() <= 0:
            raise BudgetExhaustedError(
                f"{self.operation}: deadline of {self.budget.deadline_s:g} s reached before {what}"
            )

    def call(self, fn: Callable[[], T], *, is_transient: Callable[[BaseException], bool], what: str) -> T:
        """Return ``fn()``, re-issuing it after transient failures while the budget allows.

        ``is_transient`` decides which exceptions are worth another round (throttling, 5xx,
        connection errors); any other exception propagates unchanged. When the rounds or the
        time run out, ``BudgetExhaustedError`` is raised from the last transient error.
        """
        rounds = 0
        while True:
            self.check(what)
            rounds += 1
            try:
                return fn()
            except BudgetExhaustedError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.transient_failures += 1
                ceiling = min(self.budget.max_delay_s, self.budget.base_delay_s * 2 ** (rounds - 1))
                delay = self._jitter() * ceiling
                if rounds >= self.budget.max_rounds or not self.allows_wait(delay):
                    raise BudgetExhaustedError(
                        f"{self.operation}: {what} still failing after {rounds} round(s) in "
                        f"{self.elapsed():.1f} s (budget {self.budget.deadline_s:g} s, "
                        f"{self.budget.max_rounds} rounds): {exc}"
                    ) from exc
                self._sleep(delay)


def active_run() -> BudgetRun | None:
    """The ``BudgetRun`` of the operation in progress in this context, if any (for SDK hooks)."""
    return _ACTIVE.get()
