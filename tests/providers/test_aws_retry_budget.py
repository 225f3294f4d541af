"""The shared retry budget (autoscaler.providers.retry) and the AWS error classification."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from autoscaler.errors import TransientProviderError
from autoscaler.providers.aws import is_transient_aws_error
from autoscaler.providers.retry import BudgetExhaustedError, RetryBudget, active_run


class FakeTime:
    """A clock that only moves when the code under test sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Flaky:
    """A callable failing with ``error`` for its first ``failures`` calls, then returning "ok"."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or ConnectionError("flaky")
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def transient(exc: BaseException) -> bool:
    """Treat ConnectionError as the transient kind."""
    return isinstance(exc, ConnectionError)


def client_error(code: str, status: int) -> ClientError:
    """A botocore ClientError as an AWS reply with ``code`` and HTTP ``status`` produces it."""
    reply: dict[str, Any] = {"Error": {"Code": code, "Message": "m"},
                             "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(reply, "RunInstances")  # type: ignore[arg-type]


def test_success_needs_no_wait() -> None:
    """A call that succeeds at once returns its value without sleeping."""
    fake = FakeTime()
    with RetryBudget().start("op", clock=fake.clock, sleep=fake.sleep) as run:
        assert run.call(Flaky(0), is_transient=transient, what="x") == "ok"
    assert fake.sleeps == []


def test_transient_failures_are_retried_with_capped_jittered_backoff() -> None:
    """Transient failures are retried; pause n is jitter × min(max_delay, base × 2^(n-1))."""
    fake = FakeTime()
    budget = RetryBudget(deadline_s=100, max_rounds=5, base_delay_s=1.0, max_delay_s=3.0)
    flaky = Flaky(3)
    with budget.start("op", clock=fake.clock, sleep=fake.sleep, jitter=lambda: 0.5) as run:
        assert run.call(flaky, is_transient=transient, what="x") == "ok"
    assert flaky.calls == 4
    assert fake.sleeps == [0.5, 1.0, 1.5]
    assert run.transient_failures == 3


def test_rounds_exhausted_raise_a_chained_transient_error() -> None:
    """After max_rounds transient failures, BudgetExhaustedError (transient) is raised from the last."""
    fake = FakeTime()
    error = ConnectionError("still down")
    flaky = Flaky(10, error)
    with RetryBudget(max_rounds=3).start("launch", clock=fake.clock, sleep=fake.sleep) as run, \
            pytest.raises(BudgetExhaustedError) as caught:
        run.call(flaky, is_transient=transient, what="RunInstances")
    assert isinstance(caught.value, TransientProviderError)
    assert caught.value.__cause__ is error
    assert flaky.calls == 3 and "RunInstances" in str(caught.value) and "launch" in str(caught.value)


def test_no_pause_runs_past_the_deadline() -> None:
    """When the next pause would end after the deadline, the run gives up instead of sleeping."""
    fake = FakeTime()
    budget = RetryBudget(deadline_s=2.0, max_rounds=50, base_delay_s=1.0, max_delay_s=10.0)
    with budget.start("op", clock=fake.clock, sleep=fake.sleep, jitter=lambda: 1.0) as run, \
            pytest.raises(BudgetExhaustedError):
        run.call(Flaky(50), is_transient=transient, what="x")
    assert fake.sleeps == [1.0]  # the second pause (2 s) would have reached the deadline
    assert fake.now - 100.0 <= 2.0


def test_non_transient_errors_pass_through_untouched() -> None:
    """An error is_transient rejects propagates as is, after one call."""
    fake = FakeTime()
    error = ValueError("bad request")
    flaky = Flaky(5, error)
    with RetryBudget().start("op", clock=fake.clock, sleep=fake.sleep) as run, \
            pytest.raises(ValueError) as caught:
        run.call(flaky, is_transient=transient, what="x")
    assert caught.value is error and flaky.calls == 1 and fake.sleeps == []


def test_calls_after_the_deadline_are_refused() -> None:
    """Once the deadline has passed, the next request is not even started."""
    fake = FakeTime()
    flaky = Flaky(0)
    with RetryBudget(deadline_s=5).start("op", clock=fake.clock, sleep=fake.sleep) as run:
        fake.now += 5.0
        assert not run.allows_wait(0.0)
        with pytest.raises(BudgetExhaustedError, match="deadline"):
            run.call(flaky, is_transient=transient, what="DescribeInstances")
    assert flaky.calls == 0


def test_active_run_is_scoped_to_the_block() -> None:
    """active_run() is the innermost running operation inside start(), and None outside."""
    assert active_run() is None
    with RetryBudget().start("outer") as outer:
        assert active_run() is outer
        with RetryBudget().start("inner") as inner:
            assert active_run() is inner
        assert active_run() is outer
    assert active_run() is None


@pytest.mark.parametrize("fields", [{"deadline_s": 0}, {"max_rounds": 0}, {"base_delay_s": -1}])
def test_invalid_budgets_are_rejected(fields: dict[str, float]) -> None:
    """A budget with no time, no round or a negative delay is a ValueError."""
    with pytest.raises(ValueError):
        RetryBudget(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("exc", "expected"), [
    (client_error("RequestLimitExceeded", 503), True),
    (client_error("Throttling", 400), True),
    (client_error("InternalError", 500), True),
    (client_error("Unavailable", 503), True),
    (client_error("InsufficientInstanceCapacity", 500), False),
    (client_error("InstanceLimitExceeded", 400), False),
    (client_error("InvalidParameterValue", 400), False),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
    (NoCredentialsError(), False),
    (ValueError("not an AWS error"), False),
])
def test_aws_error_classification(exc: BaseException, expected: bool) -> None:
    """Throttling, 5xx and connection errors are transient; capacity, quota and client errors are not."""
    assert is_transient_aws_error(exc) is expected
