"""The deny log (``--log-denied``) with running agents and real traffic, nft and legacy,
IPv4 and IPv6: a denied connection gives exactly one attributed line on the node that
dropped it, an allowed one none, its replies none; the rate limit holds under a flood of
SYNs and what it dropped is counted; rotation keeps its cap; without the flag there is
no NFLOG rule.

Topology (e2e model): x/a x/b y/a y/c z/b on node-1; x/c y/b z/a z/c on node-2.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.nsutil import in_netns, run
from tests.lab.scenarios_support import netpol, ns_sel, pod_sel
from tests.lab.synflood import SynFlood
from tests.lab.test_established_flows import RunningAgents, running_agents
from tests.lab.topology import Backend, Lab

pytestmark = pytest.mark.lab

BOTH = pytest.mark.parametrize("backend", ["nft", "legacy"])


def policies() -> list[dict[str, Any]]:
    return [
        # y/b (node-2) takes connections from x/c only.
        netpol("y", "b-from-x-c", {
            "podSelector": pod_sel("b"),
            "ingress": [{"from": [{"namespaceSelector": ns_sel("x"), "podSelector": pod_sel("c")}]}],
        }),
        # Every pod of x is isolated for ingress: x/c's replies from y/b must pass unlogged.
        netpol("x", "deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]}),
        # z/a (node-2) may open nothing.
        netpol("z", "a-no-egress", {"podSelector": pod_sel("a"), "policyTypes": ["Egress"]}),
    ]  # fmt: skip


def deny_logs(lab: Lab) -> dict[str, Path]:
    assert lab.workdir is not None
    stamp = time.monotonic_ns()
    return {node: lab.workdir / f"{node}-denied-{stamp}.log" for node in lab.nodes}


@contextlib.contextmanager
def agents_with_deny_log(
    lab: Lab, backend: Backend, *args: str
) -> Iterator[tuple[RunningAgents, dict[str, Path]]]:
    paths = deny_logs(lab)
    node_args = {node: ["--log-denied-file", str(path)] for node, path in paths.items()}
    with running_agents(
        lab, backend, [*lab.objects(), *policies()], "--log-denied", *args, node_args=node_args
    ) as agents:
        yield agents, paths


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_lines(path: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = lines(path)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    return lines(path)


def tcp_connect(lab: Lab, src: str, dst: str, port: int, family: int, timeout: float) -> bool:
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    with in_netns(lab.endpoint(src).netns):
        sock = socket.socket(af, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((lab.endpoint(dst).ip(family), port))
        except OSError:
            return False
        return True


def udp_send(lab: Lab, src: str, dst: str, port: int, family: int) -> None:
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    with in_netns(lab.endpoint(src).netns):
        sock = socket.socket(af, socket.SOCK_DGRAM)
    with sock:
        sock.sendto(b"denied?", (lab.endpoint(dst).ip(family), port))


@BOTH
def test_a_denied_connection_gives_one_attributed_line_allowed_and_replies_none(
    clean_lab: Lab, backend: Backend
) -> None:
    lab = clean_lab
    with agents_with_deny_log(lab, backend) as (_, paths):
        expected: list[dict[str, Any]] = []
        for family in (4, 6):
            fam = f"ipv{family}"
            # Allowed: x/c -> y/b. y/b's SYN-ACK reaches x/c, isolated for ingress, as a
            # reply: no line on either node.
            assert tcp_connect(lab, "x/c", "y/b", 80, family, 3.0)
            # Denied by y/b's ingress, on node-2. The client retries its SYN after 1 s:
            # still one connection, one line.
            assert not tcp_connect(lab, "x/a", "y/b", 80, family, 1.6)
            expected.append({
                "family": fam, "direction": "ingress", "pod": "y/b", "source": "x/a",
                "source_ip": lab.pod("x/a").ip(family), "destination": "y/b",
                "destination_ip": lab.pod("y/b").ip(family), "protocol": "TCP", "port": 80,
                "policies": ["y/b-from-x-c"], "reason": "isolated and no rule allows it",
            })  # fmt: skip
            # Denied by z/a's egress, on node-2 (x/a's ingress would deny it too, on
            # node-1, but the packet never gets there).
            assert not tcp_connect(lab, "z/a", "x/a", 81, family, 0.5)
            expected.append({
                "family": fam, "direction": "egress", "pod": "z/a", "source": "z/a",
                "destination": "x/a", "protocol": "TCP", "port": 81,
                "policies": ["z/a-no-egress"],
            })  # fmt: skip
            udp_send(lab, "x/a", "y/b", 80, family)
            expected.append({
                "family": fam, "direction": "ingress", "pod": "y/b", "source": "x/a",
                "protocol": "UDP", "port": 80, "policies": ["y/b-from-x-c"],
            })  # fmt: skip
        found = wait_lines(paths["node-2"], len(expected))
        time.sleep(2.5)  # anything more (a retransmission, a reply) would be here by now
        found = lines(paths["node-2"])
        assert len(found) == len(expected), json.dumps(found, indent=1)
        for line, want in zip(found, expected, strict=True):
            assert {k: line[k] for k in want} == want, line
            assert line["source_port"] is not None and line["ts"].endswith("Z")
        assert lines(paths["node-1"]) == []


def packet_counts(lab: Lab, backend: Backend, family: int) -> list[int]:
    """The packet counters of y/b's node's ingress log chain, rule by rule."""
    tool = f"{'ip6tables' if family == 6 else 'iptables'}-{backend}"
    chain = f"{lab.prefix}-DENIED-INGRESS"
    out = run([tool, "-w", "-S", chain, "-v"], netns=lab.nodes["node-2"].netns).stdout
    return [
        int(line.split(" -c ")[-1].split()[0]) for line in out.splitlines() if line.startswith("-A")
    ]


def save(lab: Lab, node: str, backend: Backend, family: int) -> str:
    tool = f"{'ip6tables' if family == 6 else 'iptables'}-{backend}-save"
    return run([tool, "-t", "filter"], netns=lab.nodes[node].netns).stdout


@BOTH
def test_without_the_flag_no_nflog_rule_exists_and_with_it_every_drop_is_preceded(
    clean_lab: Lab, backend: Backend
) -> None:
    lab = clean_lab
    lab.apply(policies(), backend)
    for family in (4, 6):
        assert "NFLOG" not in save(lab, "node-2", backend, family)
    lab.apply(policies(), backend, extra_args=["--log-denied"])
    for family in (4, 6):
        dump = save(lab, "node-2", backend, family)
        assert dump.count("-j NFLOG") == 2, dump  # one per direction's log chain
        rules = [line for line in dump.splitlines() if line.startswith(f"-A {lab.prefix}-")]
        for before, drop in itertools.pairwise(rules):
            if drop.endswith("-j DROP") and "revoked" not in drop:
                assert f"-j {lab.prefix}-DENIED-" in before, (before, drop)


@BOTH
def test_rotation_keeps_its_cap(clean_lab: Lab, backend: Backend) -> None:
    lab = clean_lab
    cap = 4096
    args = ("--log-denied-max-bytes", str(cap), "--log-denied-backups", "1",
            "--log-denied-rate", "1000", "--log-denied-burst", "1000")  # fmt: skip
    with agents_with_deny_log(lab, backend, *args) as (_, paths):
        flood = SynFlood(lab.pod("x/a").netns, lab.pod("x/a").ipv4, lab.pod("y/b").ipv4, 80)
        flood.send(60)  # 60 connections (source ports), about 20 KB of lines
        path = paths["node-2"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rotated = path.with_name(path.name + ".1")
            if rotated.exists() and len(lines(path)) + len(lines(rotated)) > 0:
                total = sum(1 for _ in lines(path)) + len(lines(rotated))
                if total >= 10:
                    break
            time.sleep(0.1)
        time.sleep(1.0)
        rotated = path.with_name(path.name + ".1")
        assert rotated.exists()
        assert not path.with_name(path.name + ".2").exists()
        assert path.stat().st_size <= cap and rotated.stat().st_size <= cap
        assert all(line["pod"] == "y/b" for line in lines(path) + lines(rotated))


@BOTH
@pytest.mark.parametrize("family", [4, 6])
def test_the_rate_limit_holds_under_a_flood_and_what_it_dropped_is_counted(
    clean_lab: Lab, backend: Backend, family: int
) -> None:
    """3,000 SYNs (distinct source ports: 3,000 connections) in about a second at y/b:
    the log gets at most the burst plus the rate for the time it took, and the agent
    counts the rest from the log chain's counters."""
    lab = clean_lab
    rate, burst = 10, 20
    args = ("--log-denied-rate", str(rate), "--log-denied-burst", str(burst))
    with agents_with_deny_log(lab, backend, *args) as (agents, paths):
        mark = agents.mark("node-2")
        src, dst = lab.pod("x/a"), lab.pod("y/b")
        flood = SynFlood(src.netns, src.ip(family), dst.ip(family), 80, ports=3000)
        started = time.monotonic()
        sent = flood.send(3000, rate=3000).sent
        seconds = time.monotonic() - started
        line = agents.wait_for("node-2", "deny log rate limit reached", mark, timeout=15)
        logged = lines(paths["node-2"])
        assert len(logged) <= burst + rate * (seconds + 1), (len(logged), seconds)
        assert len(logged) >= burst // 2
        assert all(entry["pod"] == "y/b" and entry["source"] == "x/a" for entry in logged)
        dropped = int(line.split("dropped=")[1].split()[0])
        # Every SYN either made a line or was counted (the first read may miss the tail).
        time.sleep(6)
        total = sum(
            int(text.split("dropped=")[1].split()[0])
            for _, text in agents.lines["node-2"][mark:]
            if "deny log rate limit reached" in text
        )
        assert dropped > 0
        # The kernel's own count: the log chain's NFLOG rule and its last rule.
        counts = packet_counts(lab, backend, family)
        reached, nflogged = counts[-1], counts[-2]
        assert nflogged == len(logged), (counts, len(logged))
        assert total == reached - nflogged, (total, counts)
        assert 0.9 * sent <= reached <= sent, (counts, sent)  # a SYN may be lost on the way


@BOTH
def test_an_address_no_known_pod_holds_is_logged_without_a_pod(
    clean_lab: Lab, backend: Backend
) -> None:
    """--isolate-unknown-pod-ips drops a pod the agent does not know yet: its lines name
    the address, no pod and no policy, on its node, both ways."""
    from tests.lab.test_unknown_pod_ips import new_pod

    lab = clean_lab
    with (
        new_pod(lab, 150) as pod,
        agents_with_deny_log(lab, backend, "--isolate-unknown-pod-ips") as (_, paths),
    ):
        with in_netns(pod.netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(0.5)
            with contextlib.suppress(OSError):
                sock.connect((lab.pod("y/b").ipv4, 80))
        assert not tcp_connect_to(lab, "x/b", pod.ipv6, 80, 6)
        found = wait_lines(paths["node-1"], 2)
        time.sleep(1.5)
        found = lines(paths["node-1"])
        assert [(e["direction"], e["pod"], e["source"], e["destination"]) for e in found] == [
            ("egress", None, pod.ipv4, "y/b"),
            ("ingress", None, "x/b", pod.ipv6),
        ], found
        assert all(e["policies"] == [] and "no known pod holds" in e["reason"] for e in found)
        assert lines(paths["node-2"]) == []


def tcp_connect_to(lab: Lab, src: str, address: str, port: int, family: int) -> bool:
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    with in_netns(lab.endpoint(src).netns):
        sock = socket.socket(af, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(0.5)
        try:
            sock.connect((address, port))
        except OSError:
            return False
        return True
