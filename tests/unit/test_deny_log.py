"""The deny log's pure parts: decoding what nfnetlink_log delivers, attributing a denied
packet, one line per connection, the counters, and the rules ``--log-denied`` adds."""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.compiler.config import CompilerConfig, DenyLogRules, NodeContext
from agent.compiler.node import compile_node
from agent.compiler.walk import Packet, validate, walk
from agent.dataplane.backend import BackendError
from agent.dataplane.nflog import LoggedPacket, PacketHeader, decode_ip, decode_messages
from agent.model.objects import Direction
from agent.observability.denylog import DenyLog, RecentFlows, attribute
from agent.rules import Family
from tests.unit import builders as b
from tests.unit.builders import labels


def tcp_v4(src: str, dst: str, sport: int, dport: int, flags: int = 0x02) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0,
                     ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)  # fmt: skip
    return ip + struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 1000, 0, 0)


def udp_v6_after_hop_by_hop(src: str, dst: str, sport: int, dport: int) -> bytes:
    ip = struct.pack("!IHBB", 6 << 28, 16, 0, 64)  # next header 0: hop-by-hop options
    ip += ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
    hop_by_hop = bytes([17, 0]) + b"\1\4\0\0\0\0"  # next: UDP; 8 bytes (PadN)
    return ip + hop_by_hop + struct.pack("!HHHH", sport, dport, 8, 0)


def test_decode_ipv4_tcp() -> None:
    header = decode_ip(tcp_v4("10.0.1.2", "10.0.2.2", 40000, 80), Family.IPV4)
    assert header == PacketHeader(
        ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2"), 6, 40000, 80,
        tcp_flags=0x02,
    )  # fmt: skip


def test_decode_ipv6_walks_extension_headers_to_the_ports() -> None:
    header = decode_ip(udp_v6_after_hop_by_hop("fd00::1:2", "fd00::2:2", 5353, 53), Family.IPV6)
    assert (header.protocol, header.sport, header.dport) == (17, 5353, 53)


def test_decode_icmp_echo_keeps_its_identifier() -> None:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 1, 0,
                     bytes([10, 0, 1, 2]), bytes([10, 0, 2, 2]))  # fmt: skip
    header = decode_ip(ip + struct.pack("!BBHHH", 8, 0, 0, 77, 1), Family.IPV4)
    assert (header.protocol, header.icmp_type, header.sport, header.dport) == (1, 8, 77, None)


def test_a_later_fragment_has_no_ports_and_garbage_is_refused() -> None:
    packet = bytearray(tcp_v4("10.0.1.2", "10.0.2.2", 1, 2))
    packet[6:8] = struct.pack("!H", 100)  # fragment offset 100
    assert decode_ip(bytes(packet), Family.IPV4).sport is None
    with pytest.raises(ValueError):
        decode_ip(b"\x45" + b"\0" * 10, Family.IPV4)
    with pytest.raises(ValueError):
        decode_ip(tcp_v4("10.0.1.2", "10.0.2.2", 1, 2), Family.IPV6)


def nla(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def packet_message(family: int, prefix: bytes, seq: int, payload: bytes) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(100))
    body += nla(1, struct.pack("!HBB", 0x0800, 3, 0))  # NFULA_PACKET_HDR
    body += nla(10, prefix + b"\0") + nla(12, struct.pack("!I", seq)) + nla(9, payload)
    return struct.pack("=IHHII", 16 + len(body), 4 << 8, 0, 0, 0) + body


def test_decode_messages_reads_packets_prefix_and_sequence() -> None:
    payload = tcp_v4("10.0.1.2", "10.0.2.2", 40000, 80)
    data = packet_message(socket.AF_INET, b"npa:ingress", 7, payload)
    data += packet_message(socket.AF_INET6, b"npa:egress", 8, b"x" * 41)
    error = struct.pack("=IHHII", 20, 2, 0, 0, 0) + struct.pack("=i", -1)
    found = list(decode_messages(data + error))
    assert found == [
        LoggedPacket(Family.IPV4, "npa:ingress", 7, payload),
        LoggedPacket(Family.IPV6, "npa:egress", 8, b"x" * 41),
        -1,
    ]


# --- attribution -----------------------------------------------------------------------


def cluster(*objects: Any) -> Any:
    return b.state_of(
        b.namespace("x"),
        b.namespace("y"),
        b.node("node1", "172.18.0.1", "fc00::1"),
        b.pod("x/a", "10.0.1.1", "fd00::1:1", labels={"pod": "a"}),
        b.pod("y/b", "10.0.2.2", "fd00::2:2", labels={"pod": "b"}),
        *objects,
    )


def header(src: str, dst: str, protocol: int = 6, dport: int | None = 80) -> PacketHeader:
    return PacketHeader(ipaddress.ip_address(src), ipaddress.ip_address(dst), protocol, 1234, dport)


def test_attribute_names_the_pod_direction_and_isolating_policies() -> None:
    state = cluster(
        b.policy("y/only-from-c", podSelector=labels(pod="b"),
                 ingress=[{"from": [{"podSelector": labels(pod="c")}]}]),
        b.policy("y/deny-all"),
    )  # fmt: skip
    line = attribute(state, Direction.INGRESS, Family.IPV4, header("10.0.1.1", "10.0.2.2"), "T")
    assert json.loads(line.to_json()) == {
        "ts": "T", "family": "ipv4", "direction": "ingress", "pod": "y/b",
        "source": "x/a", "source_ip": "10.0.1.1", "source_port": 1234,
        "destination": "y/b", "destination_ip": "10.0.2.2", "protocol": "TCP", "port": 80,
        "policies": ["y/deny-all", "y/only-from-c"], "reason": "isolated and no rule allows it",
    }  # fmt: skip
    assert line.namespace == "y"


def test_attribute_egress_and_an_address_outside_the_cluster() -> None:
    state = cluster(b.policy("x/no-egress", policyTypes=["Egress"]))
    line = attribute(state, Direction.EGRESS, Family.IPV6, header("fd00::1:1", "2001:db8::9"), "T")
    assert (line.direction, line.pod, line.destination) == ("egress", "x/a", "2001:db8::9")
    assert line.policies == ("x/no-egress",)


def test_attribute_an_address_no_known_pod_holds() -> None:
    line = attribute(cluster(), Direction.INGRESS, Family.IPV4, header("10.0.1.1", "10.0.9.9"), "T")
    assert line.pod is None and line.namespace == ""
    assert line.reason.startswith("no known pod holds 10.0.9.9")


def test_attribute_icmp_has_no_port_and_still_names_the_policies() -> None:
    state = cluster(b.policy("y/deny-all"))
    icmp = PacketHeader(ipaddress.ip_address("10.0.1.1"), ipaddress.ip_address("10.0.2.2"), 1,
                        5, None, icmp_type=8)  # fmt: skip
    line = attribute(state, Direction.INGRESS, Family.IPV4, icmp, "T")
    assert (line.protocol, line.port, line.source_port) == ("ICMP", None, None)
    assert line.policies == ("y/deny-all",)


def test_attribute_says_when_the_state_now_allows_what_the_kernel_denied() -> None:
    line = attribute(cluster(), Direction.INGRESS, Family.IPV4, header("10.0.1.1", "10.0.2.2"), "T")
    assert line.policies == () and line.reason.startswith("denied by the rules then in the kernel")


# --- one line per connection ---------------------------------------------------------------


def key(n: int) -> Any:
    return ("ingress", ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2"), 6, n,
            80, None)  # fmt: skip


def test_recent_flows_forget_after_the_window_and_beyond_the_cap() -> None:
    recent = RecentFlows(seconds=10, entries=3)
    assert recent.first_time(key(1), 0.0)
    assert not recent.first_time(key(1), 9.0)  # a retransmission
    assert not recent.first_time(key(1), 18.0)  # remembered from its last sight
    assert recent.first_time(key(1), 28.5)
    for n in (2, 3, 4):
        assert recent.first_time(key(n), 29.0)
    assert recent.first_time(key(1), 29.0)  # pushed out by the cap


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def deny_log(tmp_path: Path, reader: Any = None) -> tuple[DenyLog, list[Any], list[Any]]:
    denied: list[Any] = []
    dropped: list[Any] = []
    chains = {Family.IPV4: {Direction.INGRESS: "NPA-DENIED-INGRESS"}}
    log = DenyLog(
        str(tmp_path / "denied.log"), DenyLogRules(), chains, read_counters=reader,
        on_denied=denied.append, on_dropped=lambda r, n: dropped.append((r, n)), clock=Clock(),
    )  # fmt: skip
    return log, denied, dropped


def logged(payload: bytes, seq: int, prefix: str = "npa:ingress") -> LoggedPacket:
    return LoggedPacket(Family.IPV4, prefix, seq, payload)


def test_handle_writes_one_line_per_connection_and_counts_sequence_gaps(tmp_path: Path) -> None:
    log, denied, dropped = deny_log(tmp_path)
    syn = tcp_v4("10.0.1.1", "10.0.2.2", 40000, 80)
    assert log.handle([logged(syn, 0)]) == []  # before the first pass: nothing to judge by
    log.update_state(cluster(b.policy("y/deny-all")))
    first = log.handle([logged(syn, 1), logged(syn, 2)])  # the SYN and its retry
    assert [line.pod for line in first] == ["y/b"]
    other = tcp_v4("10.0.1.1", "10.0.2.2", 40001, 80)
    assert len(log.handle([logged(other, 5), logged(other, 6, prefix="someone-else")])) == 1
    lines = (tmp_path / "denied.log").read_text().splitlines()
    assert [json.loads(line)["source_port"] for line in lines] == [40000, 40001]
    assert [(line.direction, line.namespace) for line in denied] == [("ingress", "y")] * 2
    assert dropped == [("overflow", 2)]  # 3 and 4 never arrived
    assert (log.counts.lines, log.counts.overflowed) == (2, 2)


def test_rate_limited_is_the_difference_of_the_two_counters_from_a_baseline(
    tmp_path: Path,
) -> None:
    readings: list[Sequence[int] | None] = [[0, 0, 5, 9], [0, 0, 8, 40], [0, 0, 1, 3], None]

    def reader(family: Family, chain: str) -> Sequence[int]:
        value = readings.pop(0)
        if value is None:
            raise BackendError("no such chain")
        return value

    log, _, dropped = deny_log(tmp_path, reader)
    log.take_baseline()  # a previous process's 4
    assert log.read_rate_limited() == 28  # 32 - 4
    assert log.read_rate_limited() == 2  # the chain was rewritten: counting from 0
    assert log.read_rate_limited() == 0  # unreadable: nothing made up
    assert dropped == [("rate_limit", 28), ("rate_limit", 2)]


# --- the rules ---------------------------------------------------------------------------


def rulesets(deny: DenyLogRules | None) -> Any:
    state = cluster(b.policy("y/deny-all"), b.policy("x/no-egress", policyTypes=["Egress"]))
    return compile_node(state, NodeContext("node1"), Family.IPV4, CompilerConfig(deny_log=deny))


def test_without_the_flag_no_log_rule_or_chain() -> None:
    ruleset = rulesets(None)
    assert not any("DENIED" in name for name in ruleset.chains)
    assert not any(rule.target == "NFLOG" for c in ruleset.chains.values() for rule in c.rules)


def test_every_drop_is_preceded_by_a_jump_to_its_directions_log_chain() -> None:
    ruleset = rulesets(DenyLogRules(group=7, rate=50, burst=100))
    validate(ruleset)
    drops = 0
    for chain in ruleset.chains.values():
        for before, rule in zip(chain.rules, chain.rules[1:], strict=False):
            if rule.target == "DROP":
                drops += 1
                assert before.target in ("NPA-DENIED-EGRESS", "NPA-DENIED-INGRESS")
    assert drops == 2
    log_chain = ruleset.chains["NPA-DENIED-INGRESS"]
    nflog = log_chain.rules[2]
    assert dict(nflog.target_options) == {
        "--nflog-group": "7", "--nflog-prefix": "npa:ingress", "--nflog-size": "128"
    }  # fmt: skip
    limit = dict(nflog.matches[0].options)
    assert (limit["--hashlimit-upto"], limit["--hashlimit-burst"]) == ("50/sec", "100")
    assert len(limit["--hashlimit-name"]) <= 15
    # Another rate is another kernel table: a table is found by its name.
    assert limit["--hashlimit-name"] != DenyLogRules(rate=51).hashlimit_name("NPA")


def test_logging_changes_no_verdict() -> None:
    cases = (("10.0.1.1", "10.0.2.2", "DROP"), ("10.0.2.2", "10.0.1.1", "ACCEPT"))
    for source, destination, verdict in cases:
        packet = Packet(ipaddress.ip_address(source), ipaddress.ip_address(destination), "tcp", 80)
        with_log = walk(rulesets(DenyLogRules()), packet).verdict
        assert with_log == walk(rulesets(None), packet).verdict == verdict


def test_rules_refuse_bad_settings() -> None:
    for bad in ({"group": 70000}, {"rate": 0}, {"burst": 0}, {"rate": 10_001}):
        with pytest.raises(ValueError):
            DenyLogRules(**bad)


def test_the_flag_needs_a_restore_backend() -> None:
    from agent.cli import _parser, agent_config

    def config(*extra: str) -> Any:
        args = _parser().parse_args(["run", "--node", "n1", "--log-denied", *extra])
        return agent_config(args)

    made = config("--log-denied-rate", "50", "--log-denied-file", "/tmp/d.log")
    assert made.compiler.deny_log == DenyLogRules(rate=50)
    assert made.deny_log is not None and made.deny_log.path == "/tmp/d.log"
    with pytest.raises(SystemExit):
        config("--backend", "iptc")
    with pytest.raises(SystemExit):
        config("--log-denied-group", "70000")
