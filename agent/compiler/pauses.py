"""No garbage-collector passes inside a compile.

A full compile allocates some hundred thousand objects (rules, chains, tuples) that all
survive it, so the collector keeps firing, and its older generations walk the whole
cluster state each time: at L that was about 40% of a full compile's CPU time. Nothing a
compile builds needs the collector (no cycles outlive it), so it is paused for the
compile and the objects are looked at afterwards, once. The pause is process-wide but
lasts one compile (well under a second at L); a compile that finds it paused already
leaves it paused.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def without_gc(function: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(function)
    def paused(*args: P.args, **kwargs: P.kwargs) -> R:
        if not gc.isenabled():
            return function(*args, **kwargs)
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            gc.enable()

    return paused
