"""TCP SYNs from a raw socket, each from its own source port: a flood of new connection
attempts that costs the sender no sockets and no handshakes (the lab's deny-log tests and
``python -m bench.denylog``)."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

from tests.lab.nsutil import in_netns


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_segment(source: str, destination: str, sport: int, dport: int) -> bytes:
    """A bare SYN (TCP header only, checksum over the pseudo-header)."""
    header = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, 0x02, 64240, 0, 0)
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
    else:
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(header), socket.IPPROTO_TCP)
    checksum = _checksum(pseudo + header)
    return header[:16] + struct.pack("!H", checksum) + header[18:]


class SynFlood:
    """Sends SYNs from ``source`` (an address of the netns) to ``destination``:``dport``,
    cycling through ``ports`` source ports."""

    def __init__(
        self, netns: str, source: str, destination: str, dport: int, ports: int = 20000
    ) -> None:
        if not 0 < ports <= 45000:
            raise ValueError("source ports 20000 and up: at most 45,000")
        family = ipaddress.ip_address(source).version
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        with in_netns(netns):
            self._sock = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_TCP)
        self._sock.bind((source, 0))
        self._destination = (destination, 0)
        self._segments = [syn_segment(source, destination, 20000 + i, dport) for i in range(ports)]
        self._next = 0

    def send(self, count: int, rate: float | None = None) -> int:
        """Send ``count`` SYNs, at ``rate`` a second if given; how many were sent."""
        sock, segments, destination = self._sock, self._segments, self._destination
        started = time.monotonic()
        sent = 0
        batch = 100
        while sent < count:
            for _ in range(min(batch, count - sent)):
                try:
                    sock.sendto(segments[self._next], destination)
                except OSError:
                    continue  # a full queue: the sender's problem, not the agent's
                finally:
                    self._next = (self._next + 1) % len(segments)
                sent += 1
            if rate is not None:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        return sent

    def close(self) -> None:
        self._sock.close()
