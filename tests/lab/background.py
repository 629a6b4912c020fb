"""A continuous prober for one (src, dst, port, protocol, family) pair, running in a thread.

Meant for tests like "SIGKILL the agent while probing; not one packet of a denied pair gets
through": start() before the disruptive action, stop() after, then look at the counts.

* UDP: each datagram (by default from a fresh source port, i.e. a NEW conntrack flow every
  time) carries a run-unique tag; ``received`` is what the destination's echo server counted
  for that tag (one-way, so a leak is seen even when the echo is dropped), ``answered`` the
  echoes that came back.
* TCP: a stream of connection attempts (fresh source port each); ``answered`` = handshakes
  completed (``received`` is the same number: the prober cannot see half-open arrivals).
* SCTP: crafted INITs; ``received`` = INITs seen by a raw receiver in the destination netns.
"""

from __future__ import annotations

import errno
import random
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.lab.nsutil import in_netns
from tests.lab.prober import next_sport
from tests.lab.sctp import IPPROTO_SCTP, build_init, parse_raw
from tests.lab.topology import Endpoint

if TYPE_CHECKING:
    from tests.lab.servers import ServerThread
    from tests.lab.topology import Lab


@dataclass(frozen=True)
class ContinuousCounts:
    sent: int  # datagrams / connection attempts / INITs sent
    answered: int  # echoes received / handshakes completed (SCTP: 0, nothing answers)
    received: int  # arrived at the destination (see module docstring)
    refused: int  # ECONNREFUSED seen by the sender
    errors: int  # any other error
    duration: float


class ContinuousProber:
    def __init__(
        self,
        src: Endpoint,
        dst: Endpoint,
        port: int,
        protocol: str = "UDP",
        family: int = 4,
        *,
        servers: ServerThread | None = None,
        interval: float = 0.002,
        new_flow_each: bool = True,
        answer_window: float = 0.5,
    ) -> None:
        self.src, self.dst, self.port = src, dst, port
        self.protocol = protocol.upper()
        if self.protocol not in ("UDP", "TCP", "SCTP"):
            raise ValueError(self.protocol)
        if self.protocol == "UDP" and servers is None:
            raise ValueError("UDP needs the lab's ServerThread to count arrivals")
        self.family = family
        self.servers = servers
        self.interval = interval
        self.new_flow_each = new_flow_each
        self.answer_window = answer_window
        self.tag = f"cp{random.getrandbits(40):010x}".encode()
        self._sctp_tag_base = random.randrange(1 << 20, 1 << 31)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._sent = self._answered = self._sctp_rx = self._refused = self._errors = 0
        self._t0 = 0.0
        self._t1 = 0.0
        self._exc: BaseException | None = None
        self._rx: socket.socket | None = None

    @classmethod
    def for_lab(
        cls, lab: Lab, src: str, dst: str, port: int, protocol: str = "UDP", family: int = 4,
        **kwargs: float | bool,
    ) -> ContinuousProber:  # fmt: skip
        return cls(
            lab.endpoint(src), lab.endpoint(dst), port, protocol, family,
            servers=lab.servers, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip

    # ------------------------------------------------------------------------------- API
    def start(self) -> ContinuousProber:
        if self.protocol == "SCTP":
            with in_netns(self.dst.netns):
                self._rx = socket.socket(self._af, socket.SOCK_RAW, IPPROTO_SCTP)
            self._rx.setblocking(False)
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="lab-continuous", daemon=True)
        self._thread.start()
        return self

    def snapshot(self) -> ContinuousCounts:
        with self._lock:
            received = self._received()
            return ContinuousCounts(
                self._sent, self._answered, received, self._refused, self._errors,
                (self._t1 or time.monotonic()) - self._t0,
            )  # fmt: skip

    def stop(self) -> ContinuousCounts:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10 + self.answer_window)
        self._t1 = time.monotonic()
        if self.protocol == "SCTP":
            self._drain_sctp()
        counts = self.snapshot()
        if self._rx is not None:
            self._rx.close()
            self._rx = None
        if self._exc is not None:
            raise RuntimeError("continuous prober failed") from self._exc
        return counts

    def __enter__(self) -> ContinuousProber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self._stop.is_set():
            self.stop()

    # ------------------------------------------------------------------------------- guts
    @property
    def _af(self) -> socket.AddressFamily:
        return socket.AF_INET6 if self.family == 6 else socket.AF_INET

    def _received(self) -> int:
        if self.protocol == "UDP":
            assert self.servers is not None
            return self.servers.udp_tag_count(self.tag)
        if self.protocol == "SCTP":
            return self._sctp_rx
        return self._answered

    def _drain_sctp(self) -> None:
        if self._rx is None:
            return
        while True:
            try:
                data, addr = self._rx.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            init = parse_raw(data, self._af, addr[0])
            if (
                init is not None
                and init.dport == self.port
                and 0 <= init.init_tag - self._sctp_tag_base < (1 << 30)
            ):
                with self._lock:
                    self._sctp_rx += 1

    def _run(self) -> None:
        try:
            with in_netns(self.src.netns):
                self._loop()
        except BaseException as exc:  # surfaced by stop()
            self._exc = exc

    def _new_socket(self) -> tuple[socket.socket, int]:
        kind = socket.SOCK_STREAM if self.protocol == "TCP" else socket.SOCK_DGRAM
        sock = socket.socket(self._af, kind)
        sock.setblocking(False)
        host = "::" if self.family == 6 else "0.0.0.0"
        for _ in range(64):
            sport = next_sport(self.src.netns)
            try:
                sock.bind((host, sport))
                return sock, sport
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    sock.close()
                    raise
        sock.close()
        raise OSError(errno.EADDRINUSE, "no free source port")

    def _loop(self) -> None:
        dst = (self.dst.ip(self.family), self.port)
        ep = select.epoll()
        live: deque[tuple[float, socket.socket]] = deque()
        by_fd: dict[int, socket.socket] = {}
        sctp_tx = (
            socket.socket(self._af, socket.SOCK_RAW, IPPROTO_SCTP)
            if self.protocol == "SCTP"
            else None
        )
        persistent: socket.socket | None = None
        if self.protocol == "UDP" and not self.new_flow_each:
            persistent, _ = self._new_socket()
            persistent.connect(dst)
            by_fd[persistent.fileno()] = persistent
            ep.register(persistent.fileno(), select.EPOLLIN)
        seq = 0
        try:
            stop_at: float | None = None
            while True:
                now = time.monotonic()
                if self._stop.is_set() and stop_at is None:
                    stop_at = now + self.answer_window
                if stop_at is not None and (now >= stop_at or (not live and persistent is None)):
                    break
                if stop_at is None:
                    seq += 1
                    self._send_one(seq, dst, ep, live, by_fd, sctp_tx, persistent)
                for fd, events in ep.poll(self.interval):
                    self._on_event(ep, by_fd, fd, events)
                # forget attempts older than the answer window
                cutoff = time.monotonic() - self.answer_window
                while live and live[0][0] < cutoff:
                    _, sock = live.popleft()
                    if by_fd.pop(sock.fileno(), None) is not None:
                        ep.unregister(sock.fileno())
                    _close(sock)
                if self.protocol == "SCTP":
                    self._drain_sctp()
        finally:
            for _, sock in live:
                _close(sock)
            if persistent is not None:
                persistent.close()
            if sctp_tx is not None:
                sctp_tx.close()
            ep.close()

    def _send_one(
        self, seq: int, dst: tuple[str, int], ep: select.epoll,
        live: deque[tuple[float, socket.socket]], by_fd: dict[int, socket.socket],
        sctp_tx: socket.socket | None, reuse: socket.socket | None,
    ) -> None:  # fmt: skip
        try:
            if self.protocol == "SCTP":
                assert sctp_tx is not None
                sport = next_sport(self.src.netns)
                sctp_tx.sendto(build_init(sport, self.port, self._sctp_tag_base + seq), (dst[0], 0))
            elif self.protocol == "UDP":
                if reuse is not None:
                    reuse.send(self.tag + b"|%d" % seq)
                else:
                    sock, _ = self._new_socket()
                    sock.connect(dst)
                    live.append((time.monotonic(), sock))
                    by_fd[sock.fileno()] = sock
                    ep.register(sock.fileno(), select.EPOLLIN)
                    sock.send(self.tag + b"|%d" % seq)
            else:
                sock, _ = self._new_socket()
                live.append((time.monotonic(), sock))
                rc = sock.connect_ex(dst)
                if rc in (0, errno.EINPROGRESS):
                    by_fd[sock.fileno()] = sock
                    ep.register(sock.fileno(), select.EPOLLOUT)
                else:
                    self._count_error(rc)
        except OSError as exc:
            self._count_error(exc.errno or 0)
        with self._lock:
            self._sent += 1

    def _on_event(
        self, ep: select.epoll, by_fd: dict[int, socket.socket], fd: int, events: int
    ) -> None:
        sock = by_fd.get(fd)
        if sock is None:
            return
        if self.protocol == "TCP":
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            ep.unregister(fd)
            del by_fd[fd]
            if err == 0:
                with self._lock:
                    self._answered += 1
            else:
                self._count_error(err)
            return
        while True:
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._count_error(exc.errno or 0)
                return
            if data.startswith(self.tag + b"|"):
                with self._lock:
                    self._answered += 1

    def _count_error(self, err: int) -> None:
        with self._lock:
            if err == errno.ECONNREFUSED:
                self._refused += 1
            else:
                self._errors += 1


def _close(sock: socket.socket) -> None:
    try:
        if sock.type == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    except OSError:
        pass
    sock.close()


__all__ = ["ContinuousCounts", "ContinuousProber"]
