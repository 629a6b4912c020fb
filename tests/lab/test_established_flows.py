"""Established flows after a policy change, with real TCP and UDP streams in the lab.

Strict mode (the default): once the agent has applied a policy that denies a running
stream, the stream's next packet is dropped, in both directions; streams the policy still
allows run on. Keep mode leaves established streams alone. In both modes, the flows of a
deleted pod's addresses are deleted, so a new pod that gets the address inherits none.

Topology (e2e model): x/a x/b y/a y/c z/b on node-1; x/c y/b z/a z/c on node-2.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tests.lab.background import ContinuousProber
from tests.lab.nsutil import in_netns
from tests.lab.scenarios_support import Scenario, netpol, ns_sel, pod_sel
from tests.lab.topology import Backend, Lab

pytestmark = pytest.mark.lab

BOTH = pytest.mark.parametrize("backend", ["nft", "legacy"])
QUIET = 1.0  # seconds a stopped stream must stay silent
CHUNK = b"s" * 512


@pytest.fixture
def sc(clean_lab: Lab, backend: Backend) -> Iterator[Scenario]:
    yield Scenario(clean_lab, backend)


# ------------------------------------------------------------------------ TCP streams
class _Counter:
    def __init__(self) -> None:
        self.bytes = 0
        self.last = 0.0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.bytes += n
            self.last = time.monotonic()

    def value(self) -> int:
        with self.lock:
            return self.bytes


def _pump(sock: socket.socket, sent: _Counter, got: _Counter, stop: threading.Event) -> None:
    """Send a chunk every 5 ms and read whatever arrives, until ``stop``."""
    sock.setblocking(False)
    while not stop.is_set():
        with contextlib.suppress(BlockingIOError, InterruptedError):
            sent.add(sock.send(CHUNK))
        try:
            data = sock.recv(65536)
            if not data:
                return
            got.add(len(data))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return
        stop.wait(0.005)


class TcpStream:
    """One TCP connection from ``src`` to ``dst``:``port`` carrying data both ways all
    the time: the client pushes to the server and the server pushes to the client."""

    def __init__(self, lab: Lab, src: str, dst: str, port: int, family: int = 4) -> None:
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        with in_netns(lab.endpoint(dst).netns):
            self._listener = socket.socket(af, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((lab.endpoint(dst).ip(family), port))
        self._listener.listen(1)
        with in_netns(lab.endpoint(src).netns):
            self._client = socket.socket(af, socket.SOCK_STREAM)
        self._client.settimeout(3)
        self._client.connect((lab.endpoint(dst).ip(family), port))
        self._listener.settimeout(3)
        self._server, _ = self._listener.accept()
        self.to_server, self.at_server = _Counter(), _Counter()  # client -> server
        self.to_client, self.at_client = _Counter(), _Counter()  # server -> client
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=_pump, args=(self._client, self.to_server, self.at_client, self._stop),
                daemon=True,
            ),
            threading.Thread(
                target=_pump, args=(self._server, self.to_client, self.at_server, self._stop),
                daemon=True,
            ),
        ]  # fmt: skip
        for thread in self._threads:
            thread.start()

    def received(self) -> tuple[int, int]:
        """Bytes that arrived (at the server, at the client)."""
        return self.at_server.value(), self.at_client.value()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        for sock in (self._client, self._server, self._listener):
            sock.close()


def flowing(read: Any, seconds: float = QUIET) -> tuple[bool, ...]:
    """For each counter ``read()`` returns: did it grow over ``seconds``?"""
    before = read()
    time.sleep(seconds)
    after = read()
    return tuple(b > a for a, b in zip(before, after, strict=True))


def udp_stream(lab: Lab, src: str, dst: str, port: int = 80, family: int = 4) -> ContinuousProber:
    """One UDP flow (one source port) to the lab's echo server, a datagram every 5 ms."""
    return ContinuousProber.for_lab(
        lab, src, dst, port, "UDP", family, new_flow_each=False, interval=0.005
    ).start()


def udp_flowing(stream: ContinuousProber, seconds: float = QUIET) -> tuple[bool, bool]:
    """(datagrams arrive at the destination, echoes arrive back) over ``seconds``."""
    return flowing(lambda: (stream.snapshot().received, stream.snapshot().answered), seconds)


# ------------------------------------------------------------------------ policies
def y_b_only_from_x_c() -> dict[str, Any]:
    """y/b (node-2) accepts TCP and UDP from x/c only."""
    return netpol("y", "b-from-x-c", {
        "podSelector": pod_sel("b"),
        "ingress": [{"from": [{"namespaceSelector": ns_sel("x"), "podSelector": pod_sel("c")}]}],
    })  # fmt: skip


def allow_all_to_y_b() -> dict[str, Any]:
    return netpol("y", "b-from-anyone", {"podSelector": pod_sel("b"), "ingress": [{}]})


# ------------------------------------------------------------------------ strict mode
@BOTH
def test_strict_a_newly_denied_tcp_stream_stops_in_both_directions_after_one_sync(
    sc: Scenario,
) -> None:
    """x/a (node-1) -> y/b (node-2) carries data both ways; once the agent applies a policy
    that admits only x/c to y/b, not one more byte arrives at either end. x/c's stream to
    y/b, still allowed, runs on."""
    sc.apply([allow_all_to_y_b()])
    denied = TcpStream(sc.lab, "x/a", "y/b", 8101)
    allowed = TcpStream(sc.lab, "x/c", "y/b", 8102)
    try:
        assert flowing(denied.received, 0.5) == (True, True)
        sc.apply([y_b_only_from_x_c()])
        assert flowing(denied.received) == (False, False)
        assert flowing(allowed.received) == (True, True)
    finally:
        denied.close()
        allowed.close()


@BOTH
def test_strict_a_newly_denied_tcp_stream_between_pods_of_one_node_stops(sc: Scenario) -> None:
    """x/a -> x/b on node-1 (bridged, both pods local); x/b then admits nothing."""
    sc.apply([])
    stream = TcpStream(sc.lab, "x/a", "x/b", 8103, family=6)
    try:
        assert flowing(stream.received, 0.5) == (True, True)
        sc.apply([netpol("x", "b-deny-all", {"podSelector": pod_sel("b")})])
        assert flowing(stream.received) == (False, False)
    finally:
        stream.close()


@BOTH
def test_strict_a_newly_denied_udp_stream_stops_and_an_allowed_one_runs_on(sc: Scenario) -> None:
    """One UDP flow each from x/a (now denied) and x/c (still allowed) to y/b:80."""
    sc.apply([allow_all_to_y_b()])
    denied = udp_stream(sc.lab, "x/a", "y/b")
    allowed = udp_stream(sc.lab, "x/c", "y/b")
    try:
        assert udp_flowing(denied, 0.5) == (True, True)
        sc.apply([y_b_only_from_x_c()])
        assert udp_flowing(denied) == (False, False)
        assert udp_flowing(allowed) == (True, True)
    finally:
        denied.stop()
        allowed.stop()


@BOTH
def test_strict_a_newly_denied_egress_stream_stops_on_the_source_node(sc: Scenario) -> None:
    """x/a may no longer send to y/b (its egress, judged on node-1)."""
    sc.apply([])
    stream = TcpStream(sc.lab, "x/a", "y/b", 8104)
    try:
        assert flowing(stream.received, 0.5) == (True, True)
        sc.apply([netpol("x", "a-no-egress", {"podSelector": pod_sel("a"),
                                              "policyTypes": ["Egress"]})])  # fmt: skip
        assert flowing(stream.received) == (False, False)
    finally:
        stream.close()


# ------------------------------------------------------------------------ keep mode
@BOTH
def test_keep_a_newly_denied_established_stream_runs_on_and_new_ones_are_denied(
    sc: Scenario,
) -> None:
    sc.apply([allow_all_to_y_b()])
    stream = TcpStream(sc.lab, "x/a", "y/b", 8105)
    try:
        apply_with(sc, [y_b_only_from_x_c()], "--established-flows=keep")
        assert flowing(stream.received) == (True, True)
        with pytest.raises(OSError):
            TcpStream(sc.lab, "x/a", "y/b", 8106)
    finally:
        stream.close()


def apply_with(sc: Scenario, policies: Sequence[dict[str, Any]], *args: str) -> None:
    """Like ``Scenario.apply``, with extra agent flags."""
    assert sc.lab.workdir is not None
    sc.lab.apply(policies, sc.backend, extra_args=args)
