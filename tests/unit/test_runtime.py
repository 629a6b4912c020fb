"""The one backoff and the one bounded-frequency runner, on a fake clock: no real sleeps."""

from __future__ import annotations

import random
import threading

import pytest

from agent.runtime.backoff import Backoff
from agent.runtime.runner import BoundedFrequencyRunner, Reason


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


class Fn:
    """Records (time, reason); fails the first ``failures`` calls."""

    def __init__(self, clock: FakeClock, failures: int = 0, duration: float = 0.0) -> None:
        self.clock = clock
        self.failures = failures
        self.duration = duration
        self.calls: list[tuple[float, Reason]] = []

    def __call__(self, reason: Reason) -> bool:
        self.calls.append((self.clock.now, reason))
        self.clock.now += self.duration
        if self.failures:
            self.failures -= 1
            return False
        return True


def make(
    clock: FakeClock,
    fn: Fn,
    *,
    min_interval: float = 1.0,
    resync: float = 60.0,
    backoff: Backoff | None = None,
    ready: list[bool] | None = None,
    ticks: list[float] | None = None,
) -> BoundedFrequencyRunner:
    gate = ready if ready is not None else [True]
    return BoundedFrequencyRunner(
        "test",
        fn,
        min_interval=min_interval,
        resync_period=resync,
        backoff=backoff or Backoff(1.0, 8.0, jitter=0.0),
        clock=clock,
        wait=clock.wait,
        ready=lambda: gate[0],
        on_tick=(lambda: ticks.append(clock.now)) if ticks is not None else None,
    )


def drive(runner: BoundedFrequencyRunner, clock: FakeClock, until: float) -> None:
    """Run the loop on the fake clock until ``until`` (absolute fake time)."""
    while clock.now < until:
        delay = runner.step()
        if delay > 0:
            clock.wait(min(delay, until - clock.now, 1.0))


# --- backoff ------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.attempts == 6
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_jitter_stays_within_its_band() -> None:
    backoff = Backoff(1.0, 30.0, jitter=0.5, rng=random.Random(7))
    for attempt in range(12):
        ceiling = min(30.0, 2.0**attempt)
        assert ceiling / 2 <= backoff.next_delay() <= ceiling
    full = Backoff(1.0, 1.0, jitter=1.0, rng=random.Random(1))
    delays = [full.next_delay() for _ in range(200)]
    assert min(delays) < 0.1 and max(delays) <= 1.0


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(1.0, 2.0, jitter=1.5)


# --- runner -------------------------------------------------------------------------------


def test_first_run_happens_at_once_then_nothing_until_requested_or_resync() -> None:
    clock = FakeClock()
    fn = Fn(clock)
    runner = make(clock, fn, resync=60.0)
    drive(runner, clock, 1000.0 + 59.0)
    assert fn.calls == [(1000.0, Reason.FIRST)]
    drive(runner, clock, 1000.0 + 61.0)
    assert fn.calls[1] == (1060.0, Reason.RESYNC)


def test_requests_are_coalesced_and_spaced_by_the_minimum_interval() -> None:
    clock = FakeClock()
    fn = Fn(clock)
    runner = make(clock, fn, min_interval=2.0)
    runner.step()  # FIRST at 1000
    for _ in range(5):
        runner.request()
    assert runner.step() == pytest.approx(2.0)  # too soon: wait out the minimum interval
    drive(runner, clock, 1010.0)
    assert fn.calls == [(1000.0, Reason.FIRST), (1002.0, Reason.REQUEST)]  # five became one


def test_a_request_during_a_run_asks_for_another_run() -> None:
    clock = FakeClock()
    runner: BoundedFrequencyRunner

    class Requesting(Fn):
        def __call__(self, reason: Reason) -> bool:
            if len(self.calls) == 1:
                runner.request()  # arrives while the second run is under way
            return super().__call__(reason)

    fn = Requesting(clock)
    runner = make(clock, fn, min_interval=0.5)
    runner.step()
    runner.request()
    drive(runner, clock, 1005.0)
    assert [reason for _, reason in fn.calls] == [Reason.FIRST, Reason.REQUEST, Reason.REQUEST]
    assert fn.calls[2][0] - fn.calls[1][0] == pytest.approx(0.5)


def test_the_minimum_interval_counts_from_the_end_of_a_run() -> None:
    clock = FakeClock()
    fn = Fn(clock, duration=3.0)
    runner = make(clock, fn, min_interval=1.0)
    runner.step()  # 1000 -> 1003
    runner.request()
    drive(runner, clock, 1010.0)
    assert fn.calls[1] == (1004.0, Reason.REQUEST)


def test_a_failure_retries_with_growing_backoff_and_a_success_resets_it() -> None:
    clock = FakeClock()
    fn = Fn(clock, failures=3)
    runner = make(clock, fn, min_interval=0.0, backoff=Backoff(1.0, 8.0, jitter=0.0))
    drive(runner, clock, 1020.0)
    times = [t for t, _ in fn.calls]
    reasons = [r for _, r in fn.calls]
    assert reasons == [Reason.FIRST, Reason.RETRY, Reason.RETRY, Reason.RETRY]
    assert times == [1000.0, 1001.0, 1003.0, 1007.0]
    assert runner.failures_in_a_row == 0 and not runner.retry_pending
    fn.failures = 1
    runner.request()
    drive(runner, clock, 1030.0)
    assert fn.calls[-1] == (1021.0, Reason.RETRY)  # backoff back at 1 s


def test_requests_wait_for_a_pending_retry() -> None:
    clock = FakeClock()
    fn = Fn(clock, failures=1)
    runner = make(clock, fn, min_interval=0.0, backoff=Backoff(5.0, 5.0, jitter=0.0))
    runner.step()
    runner.request()
    assert runner.due() == (None, 5.0)
    drive(runner, clock, 1010.0)
    assert [r for _, r in fn.calls] == [Reason.FIRST, Reason.RETRY]  # the request rode along


def test_an_exception_counts_as_a_failure() -> None:
    clock = FakeClock()

    def boom(reason: Reason) -> bool:
        raise RuntimeError("bug")

    runner = make(clock, Fn(clock), backoff=Backoff(2.0, 2.0, jitter=0.0))
    runner._fn = boom
    assert runner.step() == 0.0
    assert runner.retry_pending and runner.failures_in_a_row == 1
    assert runner.due() == (None, 2.0)


def test_nothing_runs_until_ready() -> None:
    clock = FakeClock()
    fn = Fn(clock)
    ready = [False]
    runner = make(clock, fn, ready=ready)
    assert runner.step() == pytest.approx(0.05)  # polls the gate
    drive(runner, clock, 1010.0)
    assert fn.calls == []
    ready[0] = True
    drive(runner, clock, 1011.0)
    assert fn.calls == [(1010.0, Reason.FIRST)]


def test_resync_counts_from_the_last_full_run_not_requests() -> None:
    clock = FakeClock()
    fn = Fn(clock)
    runner = make(clock, fn, min_interval=0.0, resync=10.0)
    runner.step()
    for at in (1003.0, 1006.0, 1009.0):
        clock.now = at
        runner.request()
        runner.step()
    drive(runner, clock, 1011.0)
    assert fn.calls[-1] == (1010.0, Reason.RESYNC)


def test_record_accounts_for_a_run_made_outside_the_loop() -> None:
    clock = FakeClock()
    fn = Fn(clock)
    runner = make(clock, fn, resync=60.0)
    runner.record(Reason.FIRST, True)
    assert runner.due() == (None, 60.0)


def test_the_loop_ticks_while_idle_and_stops_on_the_event() -> None:
    clock = FakeClock()
    stop = threading.Event()
    ticks: list[float] = []
    fn = Fn(clock)
    runner = make(clock, fn, resync=3600.0, ticks=ticks)

    def wait(seconds: float) -> None:
        clock.wait(seconds)
        if clock.now >= 1010.0:
            stop.set()

    runner._wait = wait
    runner.run(stop)
    assert fn.calls == [(1000.0, Reason.FIRST)]
    assert max(seconds for seconds in clock.waits) <= 1.0  # never idle longer than max_idle
    assert len(ticks) >= 10


def test_bad_intervals_are_refused() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError):
        make(clock, Fn(clock), min_interval=-1.0)
    with pytest.raises(ValueError):
        make(clock, Fn(clock), resync=0.0)


def test_a_delay_drawn_to_log_it_is_the_one_waited() -> None:
    clock = FakeClock()
    fn = Fn(clock)
    runner = make(clock, fn, min_interval=0.0, backoff=Backoff(3.0, 3.0, jitter=0.5))
    delay = runner.draw_retry_delay()
    assert runner.draw_retry_delay() == delay  # drawn once
    runner.record(Reason.FIRST, False)
    reason, wait = runner.due()
    assert reason is None and wait == pytest.approx(delay)
