"""Crafted SCTP INIT packets (the lab kernel has no SCTP sockets, but netfilter knows SCTP).

An INIT is sent through a raw IP socket for protocol 132 (the kernel adds the IP header);
the receiver is a raw socket for protocol 132 in the destination namespace.  The checksum is
CRC32c (RFC 4960 appendix B), which netfilter's SCTP conntrack verifies: a bad checksum makes
the packet INVALID and would test nothing.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

IPPROTO_SCTP = 132
CHUNK_INIT = 1

_CRC32C_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _make_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32c (Castagnoli); ``crc32c(b"123456789") == 0xE3069283``."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def build_init(sport: int, dport: int, init_tag: int) -> bytes:
    """An SCTP packet holding one INIT chunk (verification tag 0, as RFC 4960 requires)."""
    if init_tag == 0:
        raise ValueError("the INIT initiate tag must not be 0")
    chunk = struct.pack(
        "!BBHIIHHI",
        CHUNK_INIT,
        0,
        20,  # chunk length: 4 header + 16 value
        init_tag,
        65535,  # a_rwnd
        1,  # outbound streams
        1,  # inbound streams
        init_tag,  # initial TSN (any value)
    )
    header = struct.pack("!HHII", sport, dport, 0, 0)
    csum = crc32c(header + chunk)
    # The checksum travels in little-endian byte order (what Linux' sctp_compute_cksum does).
    return struct.pack("!HHI", sport, dport, 0) + struct.pack("<I", csum) + chunk


@dataclass(frozen=True)
class SctpInit:
    src: str
    sport: int
    dport: int
    init_tag: int
    checksum_ok: bool


def parse_sctp(payload: bytes, src: str) -> SctpInit | None:
    """Parse an SCTP packet (without IP header); return it if it is an INIT."""
    if len(payload) < 12 + 20:
        return None
    sport, dport, _vtag = struct.unpack_from("!HHI", payload, 0)
    (csum,) = struct.unpack_from("<I", payload, 8)
    ctype, _flags, _clen, init_tag = struct.unpack_from("!BBHI", payload, 12)
    if ctype != CHUNK_INIT:
        return None
    zeroed = payload[:8] + b"\0\0\0\0" + payload[12:]
    return SctpInit(src, sport, dport, init_tag, crc32c(zeroed) == csum)


def parse_raw(data: bytes, family: int, addr: str) -> SctpInit | None:
    """Parse what a raw protocol-132 socket returned (IPv4 raw sockets include the IP header)."""
    if family == socket.AF_INET:
        if len(data) < 20:
            return None
        ihl = (data[0] & 0x0F) * 4
        src = socket.inet_ntop(socket.AF_INET, data[12:16])
        return parse_sctp(data[ihl:], src)
    return parse_sctp(data, addr)
