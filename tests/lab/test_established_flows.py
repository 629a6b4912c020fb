"""Established flows after a policy change, with real TCP and UDP streams in the lab.

Strict mode (the default): once the agent has applied a policy that denies a running
stream, the stream's next packet is dropped, in both directions; streams the policy still
allows run on. Keep mode leaves established streams alone. In both modes, the flows of a
deleted pod's addresses are deleted, so a new pod that gets the address inherits none.

Topology (e2e model): x/a x/b y/a y/c z/b on node-1; x/c y/b z/a z/c on node-2.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import yaml

from tests.lab.background import ContinuousProber
from tests.lab.nsutil import in_netns, run
from tests.lab.scenarios_support import (
    Scenario,
    Service,
    TcpClient,
    TcpEcho,
    netpol,
    ns_sel,
    pod_sel,
)
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

    def __init__(
        self, lab: Lab, src: str, dst: str, port: int, family: int = 4, *, via: str = ""
    ) -> None:
        """``via``: connect to this address instead (a ClusterIP in front of ``dst``)."""
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        with in_netns(lab.endpoint(dst).netns):
            self._listener = socket.socket(af, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((lab.endpoint(dst).ip(family), port))
        self._listener.listen(1)
        with in_netns(lab.endpoint(src).netns):
            self._client = socket.socket(af, socket.SOCK_STREAM)
        self._client.settimeout(3)
        self._client.connect((via or lab.endpoint(dst).ip(family), port))
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


@BOTH
def test_strict_a_stream_through_a_service_is_judged_by_its_backend(sc: Scenario) -> None:
    """x/a streams to a ClusterIP that node-1 DNATs to y/b. x/a's new egress allows the
    Service range but not y/b: node-1's entry names the ClusterIP as its original
    destination, and the flow is judged by the backend it really goes to, so it stops."""
    sc.add_service(Service("svc", "y/b", "10.96.0.81", "fd00:10:96::51", {(8111, "TCP"): 8111}))
    sc.apply([])
    stream = TcpStream(sc.lab, "x/a", "y/b", 8111, via="10.96.0.81")
    try:
        assert flowing(stream.received, 0.5) == (True, True)
        sc.apply([netpol("x", "a-to-services-only", {
            "podSelector": pod_sel("a"), "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.96.0.0/16"}}]}],
        })])  # fmt: skip
        assert flowing(stream.received) == (False, False)
    finally:
        stream.close()


@BOTH
def test_strict_a_revoked_stream_resumes_when_a_later_change_allows_it_again(
    sc: Scenario,
) -> None:
    """The revoked mark comes off when the rules allow the flow again: TCP retransmits
    and the same connection carries data both ways again."""
    sc.apply([allow_all_to_y_b()])
    stream = TcpStream(sc.lab, "x/a", "y/b", 8110)
    try:
        sc.apply([y_b_only_from_x_c()])
        assert flowing(stream.received) == (False, False)
        sc.apply([allow_all_to_y_b()])
        assert flowing(stream.received, 3.0) == (True, True)  # after a retransmit timeout
    finally:
        stream.close()


@BOTH
def test_strict_with_another_revoked_mark_the_stream_stops_and_that_bit_is_used(
    sc: Scenario,
) -> None:
    """--revoked-mark moves the connmark bit (for nodes where something else owns 0x2000):
    the revoked stream stops all the same, and the entry chain matches the new bit."""
    apply_with(sc, [allow_all_to_y_b()], "--revoked-mark=0x200000")
    stream = TcpStream(sc.lab, "x/a", "y/b", 8120)
    try:
        assert flowing(stream.received, 0.5) == (True, True)
        apply_with(sc, [y_b_only_from_x_c()], "--revoked-mark=0x200000")
        assert flowing(stream.received) == (False, False)
    finally:
        stream.close()
    saved = sc.lab.iptables("node-2", "-S", flavor=sc.backend).stdout
    assert "--mark 0x200000/0x200000" in saved and "0x2000/0x2000" not in saved, saved


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


# ------------------------------------------------------------------------ deleting is not enough
@BOTH
def test_deleting_the_entry_alone_does_not_stop_tcp_the_accepting_side_picks_it_up_reversed(
    sc: Scenario,
) -> None:
    """Why strict mode marks instead of deleting. Keep mode, then y/b admits only x/c and
    the x/a -> y/b entry is deleted by hand on node-2: y/b's next segment is tracked as a
    NEW flow y/b -> x/a (nf_conntrack_tcp_loose picks up mid-stream), which nothing
    isolates, so x/a's segments pass again as its replies and the stream runs on."""
    sc.apply([allow_all_to_y_b()])
    stream = TcpStream(sc.lab, "x/a", "y/b", 8107)
    node2 = sc.lab.node("node-2").netns
    try:
        apply_with(sc, [y_b_only_from_x_c()], "--established-flows=keep")
        run(["conntrack", "-D", "-p", "tcp", "--orig-port-dst", "8107"], netns=node2)
        assert flowing(stream.received) == (True, True)
        listed = run(["conntrack", "-L", "-p", "tcp", "--orig-port-src", "8107"], netns=node2)
        x_a, y_b = sc.lab.pod("x/a").ipv4, sc.lab.pod("y/b").ipv4
        assert f"src={y_b} dst={x_a} sport=8107" in listed.stdout, listed.stdout
    finally:
        stream.close()


# ------------------------------------------------------------------------ running agents
class RunningAgents:
    """``netpol-agent run`` (not --once) on every node, following a state file."""

    def __init__(self, lab: Lab, backend: Backend, objects: Sequence[dict[str, Any]],
                 *args: str, node_args: Mapping[str, Sequence[str]] | None = None,
                 ) -> None:  # fmt: skip
        assert lab.workdir is not None
        self.lab = lab
        self.path = lab.workdir / f"live-{time.monotonic_ns()}.yaml"
        self.rule_logs = {n: lab.workdir / f"{n}-{time.monotonic_ns()}.log" for n in lab.nodes}
        self.lines: dict[str, list[tuple[float, str]]] = {n: [] for n in lab.nodes}
        self.write(objects)
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self._readers: list[threading.Thread] = []
        for node in lab.nodes:
            argv = [a for a in lab.agent_argv(node, self.path, backend=backend) if a != "--once"]
            argv += ["--metrics-address", "", "--rule-log", str(self.rule_logs[node]),
                     "--min-sync-interval", "0", *args,
                     *(node_args or {}).get(node, ())]  # fmt: skip
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)  # fmt: skip
            self.procs[node] = proc
            reader = threading.Thread(target=self._read, args=(node, proc), daemon=True)
            reader.start()
            self._readers.append(reader)
        for node in lab.nodes:
            self.wait_for(node, "msg=synced", 0)

    def _read(self, node: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines[node].append((time.monotonic(), line.rstrip()))

    def write(self, objects: Sequence[dict[str, Any]]) -> float:
        """Replace the state file (atomically, with a new mtime); when it was written."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump_all(list(objects), sort_keys=False))
        os.replace(tmp, self.path)
        stamp = time.time_ns()
        os.utime(self.path, ns=(stamp, stamp))
        return time.monotonic()

    def mark(self, node: str) -> int:
        return len(self.lines[node])

    def wait_for(self, node: str, text: str, after: int, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, line in self.lines[node][after:]:
                if text in line:
                    return line
            time.sleep(0.02)
        log = "\n".join(line for _, line in self.lines[node])
        raise AssertionError(f"{node}: no {text!r} within {timeout}s:\n{log}")

    def rule_log(self, node: str) -> list[dict[str, Any]]:
        path = self.rule_logs[node]
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()  # our own children, by PID
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def running_agents(lab: Lab, backend: Backend, objects: Sequence[dict[str, Any]],
                   *args: str, node_args: Mapping[str, Sequence[str]] | None = None,
                   ) -> Iterator[RunningAgents]:  # fmt: skip
    agents = RunningAgents(lab, backend, objects, *args, node_args=node_args)
    try:
        yield agents
    finally:
        agents.stop()


def stopped_at(reads: Sequence[Any], since: float, timeout: float = 10.0) -> list[float]:
    """For each counter: seconds from ``since`` until it last grew, once all have been
    silent for QUIET seconds."""
    values = [read() for read in reads]
    changed = [time.monotonic()] * len(reads)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.005)
        now = time.monotonic()
        for i, read in enumerate(reads):
            value = read()
            if value != values[i]:
                values[i], changed[i] = value, now
        if all(now - t >= QUIET for t in changed):
            return [max(0.0, t - since) for t in changed]
    raise AssertionError(f"still flowing {timeout}s after the change")


@BOTH
def test_strict_time_from_a_policy_change_until_denied_tcp_and_udp_streams_stop(
    sc: Scenario,
) -> None:
    """A running agent (file source, polled every 0.5 s): from writing the state with the
    new policy until the last byte of the denied x/a -> y/b streams arrives at y/b. Printed
    for the record; bounded by the file poll plus one sync."""
    objects = [*sc.lab.objects(), allow_all_to_y_b()]
    with running_agents(sc.lab, sc.backend, objects) as agents:
        tcp = TcpStream(sc.lab, "x/a", "y/b", 8108)
        udp = udp_stream(sc.lab, "x/a", "y/b")
        try:
            assert flowing(tcp.received, 0.5) == (True, True)
            before = agents.mark("node-2")
            since = agents.write([*sc.lab.objects(), y_b_only_from_x_c()])
            since_wall = time.time() - (time.monotonic() - since)
            tcp_stop, udp_stop = stopped_at(
                [lambda: tcp.received()[0], lambda: udp.snapshot().received], since
            )
            revoked = agents.wait_for("node-2", 'msg="flows revoked"', before)
            synced = agents.wait_for("node-2", "msg=synced", before)
            # The pass's log line: when the rules were in and the flows revoked.
            done = datetime.datetime.strptime(revoked.split()[0][3:], "%Y-%m-%dT%H:%M:%S.%fZ")
            pass_end = done.replace(tzinfo=datetime.UTC).timestamp() - since_wall
            print(f"\n[{sc.backend}] state written -> last byte at y/b: TCP "
                  f"{tcp_stop * 1000:.0f} ms, UDP {udp_stop * 1000:.0f} ms; -> flows revoked "
                  f"(file poll + pass) {pass_end * 1000:.0f} ms\n  {synced}\n  {revoked}")  # fmt: skip
            assert tcp_stop < 3.0 and udp_stop < 3.0
            log = [e for e in agents.rule_log("node-2") if e["action"] == "flow_revoked"]
            assert {e["pod"] for e in log} == {"y/b"}
            # the pass also deleted b-from-anyone: "(+1 more changes)"
            assert all(e["reason"].startswith("policy created y/b-from-x-c") for e in log)
            assert {e["rule"].split()[0] for e in log} == {"tcp", "udp"}
        finally:
            tcp.close()
            udp.stop()


# ------------------------------------------------------------------------ reused addresses
@BOTH
def test_a_new_pod_that_reuses_a_deleted_pods_address_inherits_none_of_its_flows(
    sc: Scenario,
) -> None:
    """x/a has a connection open to y/b. y/b is deleted and y/new gets its addresses,
    under a policy that admits nothing: the old connection's next packets do not get
    through. Keep mode, so only the cleanup of the released address can stop it."""
    lab = sc.lab
    echo = TcpEcho(lab, "y/b", 8109)
    old = None
    try:
        with running_agents(lab, sc.backend, lab.objects(), "--established-flows=keep") as agents:
            old = TcpClient(lab, "x/a", "y/b", 8109)
            assert old.round_trip(b"to the old pod")
            yb = lab.pod("y/b")
            reused = sc.extra_pod("y", "new", node=yb.spec.node, ips=[yb.ipv4, yb.ipv6],
                                  pod_labels={"pod": "new"})  # fmt: skip
            without_y_b = [o for o in lab.objects()
                           if not (o["kind"] == "Pod" and o["metadata"]["name"] == "b"
                                   and o["metadata"]["namespace"] == "y")]  # fmt: skip
            before = agents.mark("node-2")
            agents.write([*without_y_b, reused,
                          netpol("y", "new-deny-all", {"podSelector": pod_sel("new")})])  # fmt: skip
            removed = agents.wait_for("node-2", 'msg="flows revoked"', before)
            assert "pod_deleted=" in removed, removed
            old.sock.settimeout(1.0)
            assert not old.round_trip(b"to whoever has the address now")
            log = [e for e in agents.rule_log("node-2") if e["action"] == "flow_removed"]
            assert log and {e["pod"] for e in log} == {"y/b"}
            assert {e["reason"] for e in log} == {"pod deleted y/b"}
    finally:
        if old is not None:
            old.close()
        echo.close()
