"""The one retry delay: capped exponential backoff with jitter.

``Backoff(initial=0.5, cap=30)``: the n-th ``next_delay()`` (from 0) is drawn uniformly
from ``[ceiling * (1 - jitter), ceiling]`` with ``ceiling = min(cap, initial * 2**n)``.
``jitter=1.0`` is "full jitter" (AWS style: spreads a fleet of reconnecting clients the
most); ``jitter=0.5`` keeps at least half the delay. ``reset()`` after a success.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial: float = 0.5
    cap: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap < self.initial:
            raise ValueError("backoff needs 0 < initial <= cap")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("backoff jitter must be within [0, 1]")


class Backoff:
    """Not thread-safe: one per retrying loop."""

    def __init__(
        self,
        initial: float = 0.5,
        cap: float = 30.0,
        *,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = BackoffPolicy(initial, cap, jitter)
        self._rng = rng or random.Random()
        self._attempts = 0

    @property
    def attempts(self) -> int:
        """Delays handed out since the last reset (failures in a row)."""
        return self._attempts

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.policy.cap, self.policy.initial * 2.0 ** min(self._attempts, 60))

    def next_delay(self) -> float:
        ceiling = self.ceiling()
        self._attempts += 1
        return self._rng.uniform(ceiling * (1.0 - self.policy.jitter), ceiling)

    def reset(self) -> None:
        self._attempts = 0
