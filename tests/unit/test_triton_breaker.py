"""The circuit breaker and the retry budget, on a clock the tests move."""

from __future__ import annotations

from gateway.triton.breaker import Breaker, RetryBudget, State


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_consecutive_failures_open_the_circuit_and_a_trial_closes_it() -> None:
    clock, changes = Clock(), []
    breaker = Breaker(failures=3, open_s=2, now=clock, on_change=changes.append)
    for _ in range(2):
        breaker.failure()
    assert breaker.state is State.CLOSED and breaker.allows()
    breaker.failure()
    assert breaker.state is State.OPEN and not breaker.allows()
    assert breaker.retry_after_s() == 2
    clock.t += 2
    assert breaker.would_allow()
    assert breaker.allows()  # the one trial
    assert breaker.state is State.HALF_OPEN
    assert not breaker.allows()  # no second request while the trial runs
    breaker.success()
    assert breaker.state is State.CLOSED and breaker.allows()
    assert changes == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = Breaker(failures=2, now=Clock())
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert breaker.state is State.CLOSED


def test_a_failed_trial_reopens_for_twice_as_long_up_to_the_cap() -> None:
    clock = Clock()
    breaker = Breaker(failures=1, open_s=2, max_open_s=5, now=clock)
    breaker.failure()
    waits = []
    for _ in range(3):
        waits.append(breaker.retry_after_s())
        clock.t += waits[-1]
        assert breaker.allows()
        breaker.failure()
    assert waits == [2, 4, 5]


def test_the_error_ratio_opens_the_circuit_once_the_window_has_enough_requests() -> None:
    clock = Clock()
    breaker = Breaker(failures=100, error_ratio=0.5, min_requests=10, window_s=10, now=clock)
    for _ in range(4):
        breaker.success()
        breaker.failure()
    assert breaker.state is State.CLOSED  # 8 requests: below the minimum
    breaker.success()
    breaker.failure()
    assert breaker.state is State.OPEN  # 5 of 10 failed


def test_old_requests_leave_the_error_ratio_window() -> None:
    clock = Clock()
    breaker = Breaker(failures=100, error_ratio=0.5, min_requests=4, window_s=10, now=clock)
    for _ in range(3):
        breaker.failure()
        breaker.success()
    clock.t += 11
    breaker.success()
    breaker.success()
    breaker.success()
    breaker.failure()  # 1 of 4 in the window
    assert breaker.state is State.CLOSED


def test_an_abandoned_trial_frees_the_slot_and_recovery_skips_the_wait() -> None:
    clock = Clock()
    breaker = Breaker(failures=1, open_s=30, now=clock)
    breaker.failure()
    breaker.recovered()  # the health check sees it ready again
    assert breaker.state is State.HALF_OPEN and breaker.allows()
    breaker.abandon()
    assert breaker.allows()


def test_retries_stay_within_the_budget() -> None:
    clock = Clock()
    budget = RetryBudget(0.2, minimum=3, window_s=10, now=clock)
    for _ in range(50):
        budget.request()
    allowed = sum(budget.allows_retry() for _ in range(20))
    assert allowed == 10  # 20 % of 50
    clock.t += 11  # the window moved on: only the minimum until traffic returns
    assert sum(budget.allows_retry() for _ in range(10)) == 3
