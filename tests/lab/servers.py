"""One in-process server thread for every lab endpoint.

Listening sockets are created on the *caller's* thread while it is switched into the endpoint's
namespace (see :func:`tests.lab.nsutil.in_netns`); the sockets stay in that namespace, and a
single thread serves all of them with ``selectors``:

* TCP: accept and close (the prober only needs the handshake).
* UDP: echo each datagram back to its sender.

Every socket is a dual-stack IPv6 socket bound to ``::`` (IPV6_V6ONLY=0), so one socket serves
IPv4 and IPv6.  UDP datagrams are counted per *tag* (the payload up to the first ``|``) so a
background prober can tell how many of its datagrams reached the destination.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import selectors
import socket
import threading
from dataclasses import dataclass

from tests.lab.nsutil import in_netns

PROTOCOLS = ("TCP", "UDP")
_CMSG_SPACE = socket.CMSG_SPACE(20)  # struct in6_pktinfo


@dataclass(frozen=True)
class Listener:
    endpoint: str
    netns: str
    port: int
    protocol: str


class ServerThread:
    """Serves TCP accept-and-close and UDP echo for many namespaces from one thread."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._pending: queue.SimpleQueue[tuple[socket.socket, Listener]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._udp_tags: collections.Counter[bytes] = collections.Counter()
        self._udp_counts: collections.Counter[Listener] = collections.Counter()
        self._tcp_counts: collections.Counter[Listener] = collections.Counter()
        self._listeners: dict[Listener, socket.socket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lab-servers", daemon=True)
        self._thread.start()

    # -- setup ------------------------------------------------------------------------------
    def listen(self, endpoint: str, netns: str, port: int, protocol: str) -> Listener:
        """Open a listening socket in ``netns`` (on this thread) and hand it to the server."""
        protocol = protocol.upper()
        if protocol not in PROTOCOLS:
            raise ValueError(f"servers handle TCP and UDP only, not {protocol}")
        key = Listener(endpoint, netns, port, protocol)
        with self._lock:
            if key in self._listeners:
                return key
        kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
        with in_netns(netns):
            sock = socket.socket(socket.AF_INET6, kind)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::", port))
            if protocol == "TCP":
                sock.listen(4096)
            else:
                # learn each datagram's destination address so the echo leaves from it
                # (a multi-homed node would otherwise answer from another address)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self._listeners[key] = sock
        self._pending.put((sock, key))
        os.write(self._wake_w, b"x")
        return key

    # -- counters ---------------------------------------------------------------------------
    def udp_tag_count(self, tag: bytes) -> int:
        with self._lock:
            return self._udp_tags[tag]

    def udp_count(self, listener: Listener) -> int:
        with self._lock:
            return self._udp_counts[listener]

    def tcp_accepts(self, listener: Listener) -> int:
        with self._lock:
            return self._tcp_counts[listener]

    # -- loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _mask in self._sel.select(timeout=0.5):
                if key.data is None:
                    self._drain_wake()
                    continue
                sock, listener = key.data
                if listener.protocol == "TCP":
                    self._accept(sock, listener)
                else:
                    self._echo(sock, listener)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        while True:
            try:
                sock, listener = self._pending.get_nowait()
            except queue.Empty:
                return
            self._sel.register(sock, selectors.EVENT_READ, (sock, listener))

    def _accept(self, sock: socket.socket, listener: Listener) -> None:
        for _ in range(256):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.close()
            with self._lock:
                self._tcp_counts[listener] += 1

    def _echo(self, sock: socket.socket, listener: Listener) -> None:
        for _ in range(256):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(65535, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # e.g. an ICMP error queued on the socket; keep serving
                continue
            tag = data.split(b"|", 1)[0][:64]
            with self._lock:
                self._udp_counts[listener] += 1
                self._udp_tags[tag] += 1
            reply_anc = [
                (level, ctype, cdata[:16] + b"\0\0\0\0")  # our address, any interface
                for level, ctype, cdata in ancdata
                if level == socket.IPPROTO_IPV6 and ctype == socket.IPV6_PKTINFO
            ]
            with contextlib.suppress(OSError):
                sock.sendmsg([data], reply_anc, 0, addr)

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        with self._lock:
            socks = list(self._listeners.values())
            self._listeners.clear()
        for sock in socks:
            sock.close()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
