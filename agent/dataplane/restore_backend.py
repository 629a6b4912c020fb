"""Backend that writes with ``iptables-restore --noflush`` and reads with ``iptables-save``.

The nft and legacy variants are named explicitly: the alternatives-selected
``iptables-restore`` may be the other one than the node's kubelet and kube-proxy use.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal

from agent.dataplane.backend import (
    ApplyResult,
    BackendError,
    cleanup_with,
    restore_error,
    run,
)
from agent.dataplane.plan import TablePlan
from agent.dataplane.restore import render_restore
from agent.dataplane.state import ProgrammedState, parse_filter_save
from agent.rules import Family

Mode = Literal["nft", "legacy"]


@dataclass(frozen=True, slots=True)
class Binaries:
    """Paths of the four binaries a backend uses; tests inject failing ones."""

    restore_v4: str
    restore_v6: str
    save_v4: str
    save_v6: str

    @classmethod
    def for_mode(cls, mode: Mode) -> Binaries:
        return cls(
            restore_v4=f"iptables-{mode}-restore",
            restore_v6=f"ip6tables-{mode}-restore",
            save_v4=f"iptables-{mode}-save",
            save_v6=f"ip6tables-{mode}-save",
        )

    def restore(self, family: Family) -> str:
        return self.restore_v4 if family is Family.IPV4 else self.restore_v6

    def save(self, family: Family) -> str:
        return self.save_v4 if family is Family.IPV4 else self.save_v6


def save_filter(binary: str, timeout: float) -> str:
    result = run([binary, "-t", "filter"], stdin=None, timeout=timeout)
    if result.returncode != 0:
        raise BackendError(f"{binary} -t filter failed (exit {result.returncode}): {result.stderr}")
    return result.stdout


class RestoreBackend:
    # Each call runs its own restore process: the families can be written concurrently.
    parallel_safe = True

    def __init__(
        self,
        mode: Mode,
        *,
        binaries: Binaries | None = None,
        lock_wait_seconds: int = 10,
        timeout_seconds: float = 120.0,
    ) -> None:
        if mode not in ("nft", "legacy"):
            raise ValueError(f"unknown iptables mode {mode!r}")
        self._mode: Mode = mode
        self._binaries = binaries or Binaries.for_mode(mode)
        self._lock_wait_seconds = lock_wait_seconds
        # The exec deadline covers the lock wait plus the write itself.
        self._timeout = lock_wait_seconds + timeout_seconds

    @property
    def name(self) -> str:
        return self._mode

    def read(self, family: Family, prefix: str) -> ProgrammedState:
        text = save_filter(self._binaries.save(family), self._timeout)
        try:
            return parse_filter_save(text, family, prefix)
        except ValueError as error:
            raise BackendError(str(error)) from error

    def apply(self, plan: TablePlan) -> ApplyResult:
        payload = render_restore(plan)
        if not payload:
            return ApplyResult.nothing(plan.family, self.name)
        binary = self._binaries.restore(plan.family)
        # --wait: legacy serializes writers on /run/xtables.lock; nft accepts and ignores
        # it. --wait-interval is not passed: iptables 1.8.9 restore ignores it as
        # deprecated (it now blocks on the lock instead of polling).
        argv = [binary, "--noflush", f"--wait={self._lock_wait_seconds}"]
        started = time.monotonic()
        result = run(argv, stdin=payload, timeout=self._timeout)
        seconds = time.monotonic() - started
        if result.returncode != 0:
            raise restore_error(binary, result.returncode, result.stderr, payload)
        return ApplyResult.of(plan, self.name, payload, seconds)

    def cleanup(self, family: Family, prefix: str) -> ApplyResult:
        return cleanup_with(self, family, prefix)


_COUNTERS = re.compile(r" -c (\d+) \d+")


def packet_counts(mode: Mode, family: Family, chain: str, timeout: float = 10.0) -> tuple[int, ...]:
    """The packet counter of each rule of ``chain`` (``iptables -S CHAIN -v``), in order.

    One small chain: nft reads only that chain; legacy reads the table's blob (as a save
    does) and prints one chain. BackendError if the binary fails (e.g. no such chain).
    """
    binary = f"{'iptables' if family is Family.IPV4 else 'ip6tables'}-{mode}"
    result = run([binary, "-w", "-t", "filter", "-S", chain, "-v"], stdin=None, timeout=timeout)
    if result.returncode != 0:
        raise BackendError(
            f"{binary} -S {chain} failed (exit {result.returncode}): {result.stderr}"
        )
    counts: list[int] = []
    for line in result.stdout.splitlines():
        if line.startswith("-A "):
            # The counters come after the matches (a comment could hold " -c "): the last.
            found = _COUNTERS.findall(line)
            if not found:
                raise BackendError(f"{binary} -S {chain} -v printed a rule without counters")
            counts.append(int(found[-1]))
    return tuple(counts)
