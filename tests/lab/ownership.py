"""Who owns a lab: a pid marker per run, a sweep for runs that died, and signals that
unwind like Ctrl-C so cleanup runs when a run is terminated."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from tests.lab.topology import remove_prefix

OWNER_DIR = Path("/run/netpol-lab")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_labs() -> list[str]:
    """Remove labs left behind by processes that no longer exist (e.g. SIGKILLed runs)."""
    removed: list[str] = []
    if not OWNER_DIR.is_dir():
        return removed
    for marker in OWNER_DIR.glob("*.pid"):
        try:
            pid = int(marker.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        removed += remove_prefix(marker.stem)
        marker.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def owner_marker(prefix: str) -> Iterator[None]:
    """Mark ``prefix`` as this process's, so a later sweep removes it if we die."""
    OWNER_DIR.mkdir(parents=True, exist_ok=True)
    marker = OWNER_DIR / f"{prefix}.pid"
    marker.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


@contextlib.contextmanager
def signals_as_interrupt(
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM,),
) -> Iterator[None]:
    """Turn ``signals`` into KeyboardInterrupt while inside, so ``finally`` clauses and
    fixture finalizers clean up. Only in the main thread, and only for signals nobody
    else handles; previous handlers come back afterwards."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        s: signal.signal(s, handler) for s in signals if signal.getsignal(s) is signal.SIG_DFL
    }
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
