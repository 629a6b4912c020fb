"""Pytest fixtures for the network-namespace lab (loaded as a plugin by tests/conftest.py).

* ``lab`` (session): the default e2e topology (pods a/b/c in namespaces x/y/z on two nodes + external host),
  built once.  Skipped only when not root; any other failure to build it is an error.
* ``clean_lab`` (function): the same lab, with every ``<prefix>`` chain, every rule jumping to
  one (or tagged with the lab comment), and the nodes' conntrack tables flushed before AND
  after the test; labels reset to the spec.  Use it for every scenario that touches
  iptables.
* ``prober`` (session): a :class:`~tests.lab.prober.Prober` knowing all endpoints.

Cleanup is guaranteed three ways: the fixture finalizer, an ``atexit`` hook (both delete
everything named with the run prefix), and a sweep at the next start that removes labs whose
owning process is gone (``/run/netpol-lab/<prefix>.pid``).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests.lab.prober import Prober, lab_prober
from tests.lab.topology import Lab, remove_prefix

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
def _owner_marker(prefix: str) -> Iterator[None]:
    OWNER_DIR.mkdir(parents=True, exist_ok=True)
    marker = OWNER_DIR / f"{prefix}.pid"
    marker.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


@contextlib.contextmanager
def _sigterm_runs_finalizers() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt (only if nobody else handles it) so fixture
    finalizers, and therefore lab cleanup, still run when the test run is terminated."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the netns lab needs root (network namespaces, iptables, raw sockets)")
    sweep_stale_labs()
    the_lab = Lab()
    with _sigterm_runs_finalizers(), _owner_marker(the_lab.prefix):
        try:
            the_lab.start()
            yield the_lab
        finally:
            the_lab.close()


def _reset(lab: Lab) -> None:
    lab.reset_firewall()  # also flushes conntrack
    lab.pod_labels = {k: v.spec.effective_labels() for k, v in lab.pods.items()}
    lab.namespace_labels = {n.name: n.effective_labels() for n in lab.spec.namespaces}


@pytest.fixture
def clean_lab(lab: Lab) -> Iterator[Lab]:
    _reset(lab)
    try:
        yield lab
    finally:
        _reset(lab)


@pytest.fixture(scope="session")
def prober(lab: Lab) -> Prober:
    return lab_prober(lab)
