"""The resilience parts on their own: circuit breaker, admission, deadline plans, request checks."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cascade.core.errors import InvalidArgumentError
from cascade.serving.admission import MethodExecutor, current_call_queued_at, current_call_refused
from cascade.serving.breaker import BreakerState, CircuitBreaker
from cascade.serving.deadline import Deadline
from cascade.serving.interceptors import ShedLog
from cascade.serving.pipeline import Plan, StageCosts
from cascade.serving.validation import (
    check_budget_ms,
    check_event_id,
    check_page_size,
    check_rating,
    check_request_time,
    check_surface,
    parse_genres,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_closes_after_a_good_trial():
    clock, changes = Clock(), []
    breaker = CircuitBreaker(
        "t", failure_threshold=3, reset_timeout_s=1.0, on_change=changes.append, clock=clock
    )
    for _ in range(2):
        assert breaker.allow()
        breaker.failed()
    breaker.succeeded()  # a success resets the count: failures must be consecutive
    for _ in range(3):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state is BreakerState.OPEN and changes == [BreakerState.OPEN]
    assert not breaker.allow() and breaker.retry_after_s() == pytest.approx(1.0)
    clock.now = 1.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the one trial
    assert not breaker.allow()  # nobody else while it runs
    breaker.failed()  # the trial failed: open for another reset timeout
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now = 2.5
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED and breaker.allow() and breaker.retry_after_s() == 0
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN, BreakerState.HALF_OPEN,
                       BreakerState.CLOSED]  # fmt: skip


def test_breaker_never_holds_its_lock_while_a_call_runs():
    breaker = CircuitBreaker("t")
    inside = threading.Barrier(4, timeout=5)

    def call() -> None:
        assert breaker.allow()
        inside.wait()  # all four are "calling" at once: a breaker serialising calls would deadlock here
        breaker.succeeded()

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not inside.broken


def test_a_method_executor_runs_workers_queues_a_few_and_hands_the_rest_to_refusal():
    refusals = ThreadPoolExecutor(1)
    executor = MethodExecutor("Recommend", workers=2, queue_size=1, max_wait_s=5.0, refusals=refusals)
    release = threading.Event()
    seen = []

    def call(name):
        seen.append(
            (
                name,
                current_call_refused(),
                current_call_queued_at() is not None,
                threading.current_thread().name,
            )
        )
        if not current_call_refused():
            release.wait(5)
        return name

    running = [executor.submit(call, f"worker-{i}") for i in range(2)]
    queued = executor.submit(call, "queued")
    time.sleep(0.1)
    assert executor.admitted == 3 and not queued.done()  # waits in the queue, not in a thread
    started = time.perf_counter()
    refused = executor.submit(call, "refused")
    assert refused.result(timeout=1) == "refused" and time.perf_counter() - started < 0.5
    release.set()
    assert [f.result(timeout=5) for f in (*running, queued)] == ["worker-0", "worker-1", "queued"]
    marks = {name: (is_refused, has_queue_time, thread) for name, is_refused, has_queue_time, thread in seen}
    assert marks["refused"][:2] == (True, False) and not marks["refused"][2].startswith("cascade-Recommend")
    assert all(
        marks[n][:2] == (False, True) and marks[n][2].startswith("cascade-Recommend")
        for n in ("worker-0", "queued")
    )
    deadline = time.monotonic() + 5
    while executor.admitted and time.monotonic() < deadline:  # released by the futures' callbacks
        time.sleep(0.01)
    assert executor.admitted == 0 and current_call_queued_at() is None and not current_call_refused()
    executor.shutdown()
    refusals.shutdown()


def test_shed_log_writes_one_line_per_interval_with_the_count(caplog):
    log = ShedLog(interval_s=0.2)
    with caplog.at_level("WARNING", logger="cascade.serving.interceptors"):
        for _ in range(50):
            log.shed("Recommend")
        log.shed("SimilarItems")
        time.sleep(0.25)
        log.shed("Recommend")
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].startswith("Recommend: shed 1 requests (")
    assert lines[1].startswith("SimilarItems: shed 1 requests (")
    assert lines[2].startswith("Recommend: shed 50 requests in the last 0.")  # 49 quiet ones, then this
    assert len(lines) == 3


def test_stage_costs_choose_the_biggest_plan_that_fits_twice_over():
    costs = StageCosts(safety=2.0)
    assert costs.plan(1.0) is Plan.FULL  # nothing measured yet
    costs.observe(recall_ms=2.0, rank_ms=4.0)
    assert costs.plan(float("inf")) is Plan.FULL
    assert costs.plan(12.0) is Plan.FULL  # 2 + 4 = 6 fits in 12 / 2
    assert costs.plan(6.0) is Plan.REDUCED  # 2 + 4 / 4 = 3 fits in 3
    assert costs.plan(4.0) is Plan.RECALL_ORDER  # 2 fits in 2
    assert costs.plan(3.0) is Plan.POPULAR
    costs.observe(recall_ms=4.0, rank_ms=4.0)  # averages move slowly
    assert costs.recall_ms == pytest.approx(2.0 + 0.05 * 2.0)


def test_deadline_is_the_nearer_of_the_call_deadline_and_the_budget():
    class Context:
        def __init__(self, remaining):
            self.remaining = remaining

        def time_remaining(self):
            return self.remaining

    assert Deadline.of_call(Context(None)).expires_at is None
    assert Deadline.of_call(None, budget_ms=0).remaining_s() == float("inf")
    assert 0.009 < Deadline.of_call(Context(None), budget_ms=10).remaining_s() <= 0.010
    assert 0.004 < Deadline.of_call(Context(0.005), budget_ms=10).remaining_s() <= 0.005
    assert Deadline.of_call(Context(0.0005), margin_s=0.001).expired


def test_request_checks_name_their_field():
    assert check_budget_ms(0) == 0 and check_budget_ms(250) == 250
    with pytest.raises(InvalidArgumentError, match="budget_ms"):
        check_budget_ms(-1)
    assert check_event_id("") == "" and check_event_id("order-17/line-2") == "order-17/line-2"
    with pytest.raises(InvalidArgumentError, match="event_id"):
        check_event_id("has space")
    with pytest.raises(InvalidArgumentError, match="event_id"):
        check_event_id("x" * 129)
    whole_stars, half_stars = (1.0, 5.0), (0.5, 5.0)
    assert check_rating(4.5, True, whole_stars) == 4.5
    assert check_rating(0.0, False, whole_stars) is None
    for bad in (0.0, 0.5, 5.5, float("nan")):
        with pytest.raises(InvalidArgumentError, match="rating"):
            check_rating(bad, True, whole_stars)
    # a data set rated in half stars accepts 0.5, as its own ratings have it
    assert check_rating(0.5, True, half_stars) == 0.5
    with pytest.raises(InvalidArgumentError, match=r"0\.5 to 5"):
        check_rating(0.25, True, half_stars)
    with pytest.raises(InvalidArgumentError, match="rating"):
        check_rating(3.0, False, whole_stars)


def test_request_context_checks_name_their_field():
    assert check_surface("item_page") == "item_page" and check_surface("") == ""
    for bad in ("home page", "x" * 65, "café"):
        with pytest.raises(InvalidArgumentError, match=r"^surface:"):
            check_surface(bad)
    now = 1_780_000_000
    assert check_request_time(0, now) is None and check_request_time(now - 3600, now) == now - 3600
    for bad in (now - 90_000, now + 90_000, 1):
        with pytest.raises(InvalidArgumentError, match=r"^timestamp:"):
            check_request_time(bad, now)
    assert parse_genres("include_genres", ["Drama", "Action"], ("Action", "Drama")) == (2, 1)
    with pytest.raises(InvalidArgumentError, match=r"^include_genres\[1\]: unknown genre 'drama'"):
        parse_genres("include_genres", ["Drama", "drama"], ("Action", "Drama"))
    assert check_page_size(0, 50) == 0 and check_page_size(50, 50) == 50
    for bad in (-1, 51):
        with pytest.raises(InvalidArgumentError, match=r"^page_size:"):
            check_page_size(bad, 50)
