"""TCP SYNs from a raw socket, each from its own source port: a flood of new connection
attempts that costs the sender no sockets and no handshakes (the lab's deny-log tests and
``python -m bench.denylog``).

The sender is tests/lab/flood/synflood.c (sendmmsg batches, paced), built once per
source version by tests/lab/flood/build.sh into the cache, and run inside the source
pod's network namespace."""

from __future__ import annotations

import functools
import ipaddress
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.lab.nsutil import run

BUILD_SCRIPT = Path(__file__).resolve().parent / "flood" / "build.sh"
MAX_PORTS = 45000


@functools.cache
def binary() -> str:
    """The sender's path, built on first use (gcc; a second run only hashes the source)."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                          check=False, timeout=120)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"tests/lab/flood/build.sh failed:\n{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1]


@dataclass(frozen=True, slots=True)
class Sent:
    """One run of the sender: SYNs sent and refused, its wall time and its own CPU."""

    sent: int
    failed: int
    seconds: float
    cpu_user: float
    cpu_system: float

    @property
    def per_second(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class SynFlood:
    """Sends SYNs from ``source`` (an address of ``netns``) to ``destination``:``dport``,
    cycling through ``ports`` source ports from 20000; successive sends go on where the
    last one stopped."""

    def __init__(
        self, netns: str, source: str, destination: str, dport: int, ports: int = 20000
    ) -> None:
        if not 0 < ports <= MAX_PORTS:
            raise ValueError("source ports 20000 and up: at most 45,000")
        if ipaddress.ip_address(source).version != ipaddress.ip_address(destination).version:
            raise ValueError("source and destination of different families")
        self._netns = netns
        self._args = [source, destination, str(dport)]
        self._ports = ports
        self._next = 0

    def send(self, count: int, rate: float | None = None) -> Sent:
        """Send ``count`` SYNs, at ``rate`` a second if given (else as fast as it can)."""
        pace = max(1, round(rate)) if rate else 0
        argv = [binary(), *self._args, str(count), str(pace), str(self._ports), str(self._next)]
        timeout = 30.0 + (count / pace if pace else count / 10000)
        out = json.loads(run(argv, netns=self._netns, timeout=timeout).stdout)
        self._next = int(out["next"])
        return Sent(sent=int(out["sent"]), failed=int(out["failed"]), seconds=float(out["seconds"]),
                    cpu_user=float(out["cpu_user"]), cpu_system=float(out["cpu_system"]))  # fmt: skip
