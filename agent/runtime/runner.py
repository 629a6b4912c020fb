"""One bounded-frequency runner (after kube-proxy's ``BoundedFrequencyRunner``).

It runs one function, ``fn(reason) -> bool`` (True: it worked), from one loop:

- **coalescing**: ``request()`` marks a run as wanted and wakes the loop; any number of
  requests before the run starts become one run;
- **minimum interval**: two runs are at least ``min_interval`` apart (end to start);
- **periodic resync**: a ``RESYNC`` run every ``resync_period`` after the last full run
  (``FIRST``, ``RESYNC`` or ``RETRY``), even when nothing was requested;
- **retry**: after a failed run (False or an exception) the next run is a ``RETRY`` after
  the backoff's delay, whatever was requested meanwhile; a success resets the backoff;
- **gate**: nothing runs while ``ready()`` is False (e.g. the source has not listed
  everything yet); it is polled every ``ready_poll`` seconds;
- **liveness**: ``on_tick()`` is called at least every ``max_idle`` seconds, idle or not.

Time comes from ``clock`` and waiting goes through ``wait(seconds)`` (default: the wake
event), so tests drive it with a fake clock and no real sleeps. ``step()`` is one loop
iteration: it runs ``fn`` if something is due and returns how long to wait before the
next iteration.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

from agent.runtime.backoff import Backoff

log = logging.getLogger(__name__)


class Reason(enum.Enum):
    FIRST = "first run"
    REQUEST = "requested"
    RESYNC = "periodic resync"
    RETRY = "retry after failure"

    @property
    def full(self) -> bool:
        return self is not Reason.REQUEST


Clock = Callable[[], float]


class BoundedFrequencyRunner:
    def __init__(
        self,
        name: str,
        fn: Callable[[Reason], bool],
        *,
        min_interval: float,
        resync_period: float,
        backoff: Backoff,
        clock: Clock = time.monotonic,
        wait: Callable[[float], None] | None = None,
        ready: Callable[[], bool] = lambda: True,
        on_tick: Callable[[], None] | None = None,
        max_idle: float = 1.0,
        ready_poll: float = 0.05,
    ) -> None:
        if min_interval < 0 or resync_period <= 0 or max_idle <= 0 or ready_poll <= 0:
            raise ValueError(f"{name}: intervals must be >= 0 (min) and > 0 (the rest)")
        self.name = name
        self._fn = fn
        self.min_interval = min_interval
        self.resync_period = resync_period
        self._backoff = backoff
        self._clock = clock
        self._wait = wait if wait is not None else self._wait_for_wake
        self._ready = ready
        self._on_tick = on_tick
        self._max_idle = max_idle
        self._ready_poll = ready_poll
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._requested = False
        self._succeeded_once = False
        self._last_run: float | None = None  # end of the last run
        self._last_full: float | None = None
        self._retry_at: float | None = None
        self._drawn: float | None = None  # a retry delay drawn before record()
        self.failures_in_a_row = 0

    # --- input ------------------------------------------------------------------------

    def request(self) -> None:
        """Ask for a run; coalesced with every other request until it starts."""
        with self._lock:
            self._requested = True
        self._wake.set()

    def interrupt(self) -> None:
        """Wake the loop now (e.g. to notice a stop event without waiting out max_idle)."""
        self._wake.set()

    # --- what is due --------------------------------------------------------------------

    @property
    def retry_pending(self) -> bool:
        return self._retry_at is not None

    def due(self, now: float | None = None) -> tuple[Reason | None, float]:
        """The reason a run is due now, or None and the seconds until one may be."""
        now = self._clock() if now is None else now
        if self._retry_at is not None:
            if now < self._retry_at:
                return None, self._retry_at - now  # a failure waits out its backoff
            reason = Reason.RETRY
        elif not self._succeeded_once:
            reason = Reason.FIRST
        elif self._last_full is None or now >= self._last_full + self.resync_period:
            reason = Reason.RESYNC
        else:
            with self._lock:
                requested = self._requested
            if not requested:
                # Compared as deadlines, so a wait is never rounded down to zero (which
                # would spin): for floats, a > b implies a - b > 0.
                return None, self._last_full + self.resync_period - now
            reason = Reason.REQUEST
        if self._last_run is not None and now < self._last_run + self.min_interval:
            return None, self._last_run + self.min_interval - now
        return reason, 0.0

    # --- the loop ---------------------------------------------------------------------

    def step(self) -> float:
        """One iteration: run if due; the seconds to wait before the next iteration."""
        reason, delay = self.due()
        if reason is None:
            return delay
        if not self._ready():
            return self._ready_poll
        with self._lock:
            self._requested = False  # requests from now on ask for another run
        try:
            ok = self._fn(reason)
        except Exception:
            log.exception("%s: unexpected failure", self.name)
            ok = False
        self.record(reason, ok)
        return 0.0

    def record(self, reason: Reason, ok: bool) -> None:
        """Account for a run of ``fn`` (also one made outside the loop, e.g. ``--once``)."""
        end = self._clock()
        self._last_run = end
        if reason.full:
            self._last_full = end
        if ok:
            self._succeeded_once = True
            self._retry_at = None
            self._drawn = None
            self._backoff.reset()
            self.failures_in_a_row = 0
        else:
            self.failures_in_a_row += 1
            delay, self._drawn = self._drawn, None
            self._retry_at = end + (delay if delay is not None else self._backoff.next_delay())

    def draw_retry_delay(self) -> float:
        """The delay the retry after the failing run will wait (to log it with the error)."""
        if self._drawn is None:
            self._drawn = self._backoff.next_delay()
        return self._drawn

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set (checked at least every ``max_idle`` seconds)."""
        while not stop.is_set():
            self._tick()
            delay = self.step()
            if stop.is_set():
                break
            if delay > 0:
                self._wait(min(delay, self._max_idle))

    def _tick(self) -> None:
        if self._on_tick is not None:
            self._on_tick()

    def _wait_for_wake(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()
