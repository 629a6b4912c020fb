"""A fast, single-process connectivity prober for the lab.

All probes of a run are in flight at once: sockets are created in the source namespace (setns
on this thread), then driven with non-blocking connect / send and one ``epoll`` loop.

* TCP: allowed = the handshake completed; denied = no answer within the timeout.
* UDP: allowed = the echo came back (datagrams are resent a few times within the window).
* SCTP: a crafted INIT (raw IP socket, protocol 132) is sent; allowed = the INIT reached a raw
  receiver opened in the destination namespace for the duration of the run.
* ``connection refused`` and any other error are reported as such, never as "denied".

Every probe binds an explicit, never-reused source port (a per-source-namespace counter shared
by the whole process), so a conntrack entry left by an earlier probe can never carry a new one.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from tests.lab.nsutil import in_netns
from tests.lab.sctp import IPPROTO_SCTP, build_init, parse_raw
from tests.lab.topology import Endpoint

if TYPE_CHECKING:
    from tests.lab.topology import Lab

E2E_PORT_PROTOCOLS: tuple[tuple[int, str], ...] = (
    (80, "TCP"),
    (81, "TCP"),
    (80, "UDP"),
    (81, "UDP"),
)
ALL_PORT_PROTOCOLS: tuple[tuple[int, str], ...] = (
    *E2E_PORT_PROTOCOLS,
    (80, "SCTP"),
    (81, "SCTP"),
)


class Verdict(StrEnum):
    ALLOWED = "."
    DENIED = "X"
    REFUSED = "R"
    ERROR = "E"


@dataclass(frozen=True, order=True)
class Probe:
    src: str
    dst: str
    port: int
    protocol: str  # "TCP" | "UDP" | "SCTP"
    family: int = 4

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} {self.port}/{self.protocol} IPv{self.family}"


@dataclass(frozen=True)
class ProbeResult:
    verdict: Verdict
    detail: str = ""
    elapsed: float = 0.0
    sport: int = 0

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOWED


@dataclass(frozen=True)
class Mismatch:
    probe: Probe
    expected: Verdict
    actual: ProbeResult

    def __str__(self) -> str:
        detail = f" ({self.actual.detail})" if self.actual.detail else ""
        return (
            f"{self.probe}: expected {self.expected.name}, got {self.actual.verdict.name}"
            f"{detail} [sport {self.actual.sport}]"
        )


Expected = bool | Verdict | Mapping[Probe, bool | Verdict] | Callable[[Probe], bool | Verdict]


def _as_verdict(value: bool | Verdict) -> Verdict:
    if isinstance(value, Verdict):
        return value
    return Verdict.ALLOWED if value else Verdict.DENIED


# --------------------------------------------------------------------------------------------
# Matrix
# --------------------------------------------------------------------------------------------
@dataclass
class Matrix:
    """(src, dst, port, protocol, family) → result, with a truth-table printer and a diff."""

    results: dict[Probe, ProbeResult]
    elapsed: float = 0.0
    sources: list[str] = field(default_factory=list)
    destinations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sources:
            self.sources = list(dict.fromkeys(p.src for p in self.results))
        if not self.destinations:
            self.destinations = list(dict.fromkeys(p.dst for p in self.results))

    def __getitem__(self, probe: Probe) -> ProbeResult:
        return self.results[probe]

    def __iter__(self) -> Iterator[Probe]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def get(self, src: str, dst: str, port: int, protocol: str, family: int = 4) -> ProbeResult:
        return self.results[Probe(src, dst, port, protocol.upper(), family)]

    def allowed(self, src: str, dst: str, port: int, protocol: str, family: int = 4) -> bool:
        return self.get(src, dst, port, protocol, family).allowed

    def slices(self) -> list[tuple[int, str, int]]:
        """The (port, protocol, family) combinations present, in a stable order."""
        return sorted({(p.port, p.protocol, p.family) for p in self.results},
                      key=lambda t: (t[2], t[1] != "TCP", t[1], t[0]))  # fmt: skip

    def errors(self) -> dict[Probe, ProbeResult]:
        """Probes that neither connected nor timed out (refused, unreachable, …)."""
        return {
            p: r for p, r in self.results.items() if r.verdict in (Verdict.REFUSED, Verdict.ERROR)
        }

    def _grid(self, port: int, protocol: str, family: int,
              cell: Callable[[Probe], str]) -> str:  # fmt: skip
        width = max(len(n) for n in [*self.sources, *self.destinations, "from\\to"]) + 1
        lines = [f"{port}/{protocol} IPv{family}  (rows = from, cols = to)"]
        lines.append("from\\to".ljust(width) + " ".join(d.ljust(width) for d in self.destinations))
        for src in self.sources:
            row = [cell(Probe(src, dst, port, protocol, family)) for dst in self.destinations]
            lines.append(src.ljust(width) + " ".join(c.ljust(width) for c in row))
        return "\n".join(lines)

    def render(self, port: int | None = None, protocol: str | None = None,
               family: int | None = None) -> str:  # fmt: skip
        """Truth table per (port, protocol, family): ``.`` allowed, ``X`` denied,
        ``R`` refused, ``E`` error, ``-`` not probed."""

        def cell(p: Probe) -> str:
            r = self.results.get(p)
            return "-" if r is None else r.verdict.value

        out = []
        for prt, proto, fam in self.slices():
            if (port, protocol, family) != (None, None, None) and (
                (port is not None and prt != port)
                or (protocol is not None and proto != protocol.upper())
                or (family is not None and fam != family)
            ):
                continue
            out.append(self._grid(prt, proto, fam, cell))
        return "\n\n".join(out)

    def __str__(self) -> str:
        return self.render()

    def expected_verdicts(self, expected: Expected) -> dict[Probe, Verdict]:
        if isinstance(expected, bool | Verdict):
            return {p: _as_verdict(expected) for p in self.results}
        if isinstance(expected, Mapping):
            return {p: _as_verdict(expected[p]) for p in self.results if p in expected}
        return {p: _as_verdict(expected(p)) for p in self.results}

    def diff(self, expected: Expected) -> list[Mismatch]:
        """Probes whose result differs from ``expected`` (a bool/Verdict for all, a mapping,
        or a function of the probe).  A refused/error result never matches allowed/denied."""
        out = []
        for probe, want in sorted(self.expected_verdicts(expected).items()):
            got = self.results[probe]
            if got.verdict is not want:
                out.append(Mismatch(probe, want, got))
        return out

    def render_diff(self, expected: Expected) -> str:
        """Grids of the actual results where a mismatching cell is shown in lower case / as
        ``!`` markers: ``.``/``X`` match, ``a`` unexpectedly allowed, ``d`` unexpectedly
        denied, ``R``/``E`` refused/error."""
        want = self.expected_verdicts(expected)

        def cell(p: Probe) -> str:
            r = self.results.get(p)
            if r is None:
                return "-"
            w = want.get(p)
            if w is None or w is r.verdict:
                return r.verdict.value
            if r.verdict is Verdict.ALLOWED:
                return "a!"
            if r.verdict is Verdict.DENIED:
                return "d!"
            return r.verdict.value + "!"

        return "\n\n".join(self._grid(prt, pr, fam, cell) for prt, pr, fam in self.slices())

    def assert_matches(self, expected: Expected) -> None:
        mismatches = self.diff(expected)
        if mismatches:
            lines = [f"{len(mismatches)} of {len(self.results)} probes differ from expected:"]
            lines += [f"  {m}" for m in mismatches[:60]]
            if len(mismatches) > 60:
                lines.append(f"  … {len(mismatches) - 60} more")
            lines.append("")
            lines.append("legend: . allowed, X denied, a! unexpectedly allowed, "
                         "d! unexpectedly denied, R refused, E error")  # fmt: skip
            lines.append(self.render_diff(expected))
            raise AssertionError("\n".join(lines))


# --------------------------------------------------------------------------------------------
# source ports
# --------------------------------------------------------------------------------------------
SPORT_FIRST = 20000
SPORT_LAST = 64999
_sport_lock = threading.Lock()
_sport_counters: dict[str, Iterator[int]] = {}


def next_sport(netns: str) -> int:
    """The next never-used (within this process, per source namespace) source port."""
    with _sport_lock:
        counter = _sport_counters.get(netns)
        if counter is None:
            counter = itertools.cycle(range(SPORT_FIRST, SPORT_LAST + 1))
            _sport_counters[netns] = counter
        return next(counter)


def _bind_unique(sock: socket.socket, netns: str, family: int) -> int:
    host = "::" if family == 6 else "0.0.0.0"
    for _ in range(64):
        sport = next_sport(netns)
        try:
            sock.bind((host, sport))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        return sport
    raise OSError(errno.EADDRINUSE, f"no free source port in {netns}")


def _af(family: int) -> socket.AddressFamily:
    return socket.AF_INET6 if family == 6 else socket.AF_INET


_tag_lock = threading.Lock()
_tag_counter = itertools.count(random.randrange(1, 1 << 30))


def _next_tag() -> int:
    with _tag_lock:
        return (next(_tag_counter) % 0xFFFFFFFE) + 1


# --------------------------------------------------------------------------------------------
# Prober
# --------------------------------------------------------------------------------------------
@dataclass
class _Flight:
    probe: Probe
    sport: int = 0
    sock: socket.socket | None = None
    payload: bytes = b""
    dst: tuple[str, int] = ("", 0)
    tag: int = 0
    result: ProbeResult | None = None


class Prober:
    """Runs many probes concurrently between named endpoints."""

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        *,
        timeout: float = 1.0,
        sends: int = 3,
    ) -> None:
        self.endpoints = {e.name: e for e in endpoints}
        self.timeout = timeout
        self.sends = max(1, sends)

    def add(self, *endpoints: Endpoint) -> Prober:
        """Know more endpoints (e.g. a Service ClusterIP: an Endpoint whose ``netns`` is the
        backend pod's, so SCTP receivers are opened where the packet will arrive)."""
        for e in endpoints:
            self.endpoints[e.name] = e
        return self

    # -------------------------------------------------------------------------------- API
    def matrix(
        self,
        sources: Sequence[str] | None = None,
        destinations: Sequence[str] | None = None,
        port_protocols: Sequence[tuple[int, str]] = E2E_PORT_PROTOCOLS,
        families: Sequence[int] = (4,),
    ) -> Matrix:
        """All sources x destinations x (port, protocol) x families, concurrently."""
        default = [n for n, e in self.endpoints.items() if e.kind in ("pod", "external")]
        srcs = list(sources) if sources is not None else default
        dsts = list(destinations) if destinations is not None else default
        probes = [
            Probe(s, d, port, proto.upper(), fam)
            for fam in families
            for port, proto in port_protocols
            for s in srcs
            for d in dsts
        ]
        m = self.run(probes)
        m.sources, m.destinations = srcs, dsts
        return m

    def probe(self, src: str, dst: str, port: int, protocol: str, family: int = 4) -> ProbeResult:
        return self.run([Probe(src, dst, port, protocol.upper(), family)]).results[
            Probe(src, dst, port, protocol.upper(), family)
        ]

    def run(self, probes: Sequence[Probe]) -> Matrix:
        start = time.monotonic()
        flights = [_Flight(p) for p in dict.fromkeys(probes)]
        ep = select.epoll()
        by_fd: dict[int, _Flight] = {}
        raw_rx: dict[int, tuple[socket.socket, int]] = {}
        sctp_by_tag: dict[int, _Flight] = {}
        sctp_tx: dict[tuple[str, int], socket.socket] = {}
        try:
            self._open(flights, ep, by_fd, raw_rx, sctp_by_tag, sctp_tx)
            self._loop(flights, ep, by_fd, raw_rx, sctp_by_tag, sctp_tx, start)
        finally:
            for f in flights:
                if f.sock is not None:
                    _abort_close(f.sock)
                    f.sock = None
            for sock, _fam in raw_rx.values():
                sock.close()
            for sock in sctp_tx.values():
                sock.close()
            ep.close()
        results = {
            f.probe: f.result or ProbeResult(Verdict.DENIED, "timeout", self.timeout, f.sport)
            for f in flights
        }
        return Matrix(results, elapsed=time.monotonic() - start)

    # -------------------------------------------------------------------------------- guts
    def _open(
        self,
        flights: list[_Flight],
        ep: select.epoll,
        by_fd: dict[int, _Flight],
        raw_rx: dict[int, tuple[socket.socket, int]],
        sctp_by_tag: dict[int, _Flight],
        sctp_tx: dict[tuple[str, int], socket.socket],
    ) -> None:
        # SCTP receivers first (one per destination namespace and family)
        rx_keys = {
            (self.endpoints[f.probe.dst].netns, f.probe.family)
            for f in flights
            if f.probe.protocol == "SCTP"
        }
        for netns, fam in sorted(rx_keys):
            with in_netns(netns):
                rx = socket.socket(_af(fam), socket.SOCK_RAW, IPPROTO_SCTP)
            rx.setblocking(False)
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            raw_rx[rx.fileno()] = (rx, fam)
            ep.register(rx.fileno(), select.EPOLLIN)

        # group by source namespace: one setns per source
        by_src: dict[str, list[_Flight]] = {}
        for f in flights:
            by_src.setdefault(self.endpoints[f.probe.src].netns, []).append(f)
        for netns, group in by_src.items():
            with in_netns(netns):
                for f in group:
                    p = f.probe
                    try:
                        if p.protocol == "SCTP":
                            if (netns, p.family) not in sctp_tx:
                                sctp_tx[(netns, p.family)] = socket.socket(
                                    _af(p.family), socket.SOCK_RAW, IPPROTO_SCTP
                                )
                        elif p.protocol == "TCP":
                            f.sock = socket.socket(_af(p.family), socket.SOCK_STREAM)
                        elif p.protocol == "UDP":
                            f.sock = socket.socket(_af(p.family), socket.SOCK_DGRAM)
                        else:
                            raise ValueError(f"unknown protocol {p.protocol}")
                    except OSError as exc:
                        f.result = ProbeResult(Verdict.ERROR, f"socket: {exc}")
        # now fire everything (socket operations use the socket's own namespace)
        for f in flights:
            if f.result is not None:
                continue
            p = f.probe
            src_ns = self.endpoints[p.src].netns
            f.dst = (self.endpoints[p.dst].ip(p.family), p.port)
            try:
                if p.protocol == "SCTP":
                    f.sport = next_sport(src_ns)
                    f.tag = _next_tag()
                    f.payload = build_init(f.sport, p.port, f.tag)
                    sctp_by_tag[f.tag] = f
                    sctp_tx[(src_ns, p.family)].sendto(f.payload, (f.dst[0], 0))
                    continue
                assert f.sock is not None
                f.sock.setblocking(False)
                f.sport = _bind_unique(f.sock, src_ns, p.family)
                if p.protocol == "TCP":
                    rc = f.sock.connect_ex(f.dst)
                    if rc == 0:
                        f.result = ProbeResult(Verdict.ALLOWED, "", 0.0, f.sport)
                        continue
                    if rc not in (errno.EINPROGRESS, errno.EAGAIN):
                        f.result = _error_result(rc, f.sport)
                        continue
                    by_fd[f.sock.fileno()] = f
                    ep.register(f.sock.fileno(), select.EPOLLOUT)
                else:
                    f.sock.connect(f.dst)
                    f.payload = f"probe-{f.sport}-{random.getrandbits(32):08x}|".encode()
                    by_fd[f.sock.fileno()] = f
                    ep.register(f.sock.fileno(), select.EPOLLIN)
                    f.sock.send(f.payload)
            except OSError as exc:
                f.result = _error_result(exc.errno or 0, f.sport, str(exc))

    def _loop(
        self,
        flights: list[_Flight],
        ep: select.epoll,
        by_fd: dict[int, _Flight],
        raw_rx: dict[int, tuple[socket.socket, int]],
        sctp_by_tag: dict[int, _Flight],
        sctp_tx: dict[tuple[str, int], socket.socket],
        start: float,
    ) -> None:
        fire = time.monotonic()  # everything has been sent once
        deadline = fire + self.timeout
        resend_at = [fire + self.timeout * i / self.sends for i in range(1, self.sends)]
        pending = sum(1 for f in flights if f.result is None)
        while pending > 0:
            now = time.monotonic()
            if now >= deadline:
                break
            if resend_at and now >= resend_at[0]:
                resend_at.pop(0)
                self._resend(flights, sctp_tx)
            wait_until = min([deadline, *resend_at[:1]])
            for fd, events in ep.poll(max(0.0, wait_until - now)):
                elapsed = time.monotonic() - start
                if fd in raw_rx:
                    sock, fam = raw_rx[fd]
                    pending -= _drain_sctp(sock, fam, sctp_by_tag, elapsed)
                    continue
                f = by_fd.get(fd)
                if f is None or f.result is not None or f.sock is None:
                    continue
                if f.probe.protocol == "TCP":
                    err = f.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err == 0 and not events & (select.EPOLLERR | select.EPOLLHUP):
                        f.result = ProbeResult(Verdict.ALLOWED, "", elapsed, f.sport)
                    else:
                        f.result = _error_result(err or errno.ECONNRESET, f.sport, elapsed=elapsed)
                else:
                    try:
                        data = f.sock.recv(65535)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        f.result = _error_result(exc.errno or 0, f.sport, str(exc), elapsed)
                    else:
                        if data != f.payload:
                            continue  # not our echo; keep waiting
                        f.result = ProbeResult(Verdict.ALLOWED, "", elapsed, f.sport)
                if f.result is not None:
                    pending -= 1
                    ep.unregister(fd)

    def _resend(
        self, flights: list[_Flight], sctp_tx: dict[tuple[str, int], socket.socket]
    ) -> None:
        for f in flights:
            if f.result is not None:
                continue
            p = f.probe
            try:
                if p.protocol == "UDP" and f.sock is not None:
                    f.sock.send(f.payload)
                elif p.protocol == "SCTP":
                    tx = sctp_tx[(self.endpoints[p.src].netns, p.family)]
                    tx.sendto(f.payload, (f.dst[0], 0))
            except OSError as exc:
                f.result = _error_result(exc.errno or 0, f.sport, str(exc))


def _drain_sctp(
    sock: socket.socket, family: int, by_tag: dict[int, _Flight], elapsed: float
) -> int:
    done = 0
    while True:
        try:
            data, addr = sock.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return done
        init = parse_raw(data, _af(family), addr[0])
        if init is None:
            continue
        f = by_tag.get(init.init_tag)
        if f is None or f.result is not None or init.dport != f.probe.port:
            continue
        if not init.checksum_ok:
            f.result = ProbeResult(Verdict.ERROR, "bad SCTP checksum", elapsed, f.sport)
        else:
            f.result = ProbeResult(Verdict.ALLOWED, "", elapsed, f.sport)
        done += 1


def _error_result(err: int, sport: int, text: str = "", elapsed: float = 0.0) -> ProbeResult:
    name = errno.errorcode.get(err, str(err))
    detail = f"{name}: {text or os.strerror(err)}"
    if err == errno.ECONNREFUSED:
        return ProbeResult(Verdict.REFUSED, detail, elapsed, sport)
    return ProbeResult(Verdict.ERROR, detail, elapsed, sport)


def _abort_close(sock: socket.socket) -> None:
    try:
        if sock.type == socket.SOCK_STREAM:
            # RST instead of FIN: no TIME_WAIT, nothing lingers
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    except OSError:
        pass
    finally:
        sock.close()


def lab_prober(lab: Lab, *, timeout: float = 1.0) -> Prober:
    """A prober knowing every pod, node and the external host of ``lab``."""
    return Prober(lab.endpoints(external=True, nodes=True), timeout=timeout)


__all__ = [
    "ALL_PORT_PROTOCOLS",
    "E2E_PORT_PROTOCOLS",
    "Expected",
    "Matrix",
    "Mismatch",
    "Probe",
    "ProbeResult",
    "Prober",
    "Verdict",
    "lab_prober",
    "next_sport",
]
