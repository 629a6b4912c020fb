"""The conntrack dump is decoded by hand: a message built byte by byte, as the kernel
sends it (nested, padded attributes), decodes to the entry it describes."""

from __future__ import annotations

import ipaddress
import socket
import struct

from agent.dataplane.conntrack import _decode_tuple
from agent.dataplane.netlink import attributes

NESTED = 0x8000


def nla(kind: int, payload: bytes, *, nested: bool = False) -> bytes:
    header = struct.pack("=HH", 4 + len(payload), kind | (NESTED if nested else 0))
    return header + payload + b"\0" * (-len(payload) % 4)


def ported_tuple(src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    kinds = (1, 2) if s.version == 4 else (3, 4)
    ip = nla(kinds[0], s.packed) + nla(kinds[1], d.packed)
    ports = nla(1, bytes([proto])) + nla(2, struct.pack(">H", sport))
    ports += nla(3, struct.pack(">H", dport))
    return nla(1, ip, nested=True) + nla(2, ports, nested=True)


def test_a_tcp_tuple_with_its_ports_decodes() -> None:
    raw = ported_tuple("10.244.1.10", "10.96.0.1", socket.IPPROTO_TCP, 40000, 8080)
    decoded = _decode_tuple(memoryview(raw))
    assert (str(decoded.source), str(decoded.destination)) == ("10.244.1.10", "10.96.0.1")
    assert (decoded.protocol, decoded.sport, decoded.dport) == (6, 40000, 8080)


def test_an_ipv6_sctp_tuple_decodes_its_ports_too() -> None:
    raw = ported_tuple("fd00::1", "fd00::2", 132, 5, 80)
    decoded = _decode_tuple(memoryview(raw))
    assert (str(decoded.source), decoded.protocol, decoded.sport, decoded.dport) == (
        "fd00::1", 132, 5, 80,
    )  # fmt: skip


def test_an_icmp_echo_tuple_decodes_type_code_and_id() -> None:
    ip = nla(1, bytes([10, 0, 0, 1])) + nla(2, bytes([10, 0, 0, 2]))
    proto = nla(1, bytes([1])) + nla(4, struct.pack(">H", 77)) + nla(5, bytes([8]))
    proto += nla(6, bytes([0]))
    decoded = _decode_tuple(memoryview(nla(1, ip, nested=True) + nla(2, proto, nested=True)))
    assert (decoded.icmp_type, decoded.icmp_code, decoded.icmp_id) == (8, 0, 77)
    assert decoded.sport is None and decoded.dport is None


def test_attributes_skip_padding_and_unknown_ones() -> None:
    raw = nla(9, b"\1\2\3") + nla(8, struct.pack(">I", 0x2005)) + nla(30, b"")
    attrs = attributes(raw, 0, len(raw))
    assert sorted(attrs) == [8, 9, 30]
    assert struct.unpack(">I", attrs[8])[0] == 0x2005
    assert bytes(attrs[9]) == b"\1\2\3"
