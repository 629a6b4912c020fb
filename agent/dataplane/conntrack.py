"""The node's connection-tracking table, over conntrack netlink (pyroute2): list the
entries of one family, delete one entry. Nothing is decided here.

An entry carries both tuples. The original tuple is the connection's first packet as it
arrived (before DNAT); the reply tuple is what the other end answers from, so its source
is the real destination after DNAT (a Service's backend) and its source port the real
destination port.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.model.objects import IPAddress
from agent.rules import Family

_AF = {Family.IPV4: socket.AF_INET, Family.IPV6: socket.AF_INET6}
_ICMP_PROTOCOLS = (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6)


class ConntrackError(RuntimeError):
    """The table could not be read or written (no CAP_NET_ADMIN, no nf_conntrack...)."""


@dataclass(frozen=True, slots=True)
class Tuple:
    """One direction of an entry."""

    source: IPAddress
    destination: IPAddress
    protocol: int
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    family: Family
    original: Tuple
    reply: Tuple
    mark: int = 0


@dataclass(frozen=True, slots=True)
class ListedEntries:
    entries: tuple[ConntrackEntry, ...]
    seconds: float  # the dump and its decoding


class ConntrackTable(Protocol):
    """What the reconciler needs of the kernel's table (tests pass a fake)."""

    def list(self, family: Family) -> ListedEntries: ...

    def delete(self, entries: Sequence[ConntrackEntry]) -> int:
        """Delete ``entries``; how many were deleted (the rest were already gone)."""
        ...

    def set_mark(self, entries: Sequence[ConntrackEntry], value: int, mask: int) -> int:
        """Set the bits ``mask`` of each entry's mark to ``value``; how many were found."""
        ...


# --- the dump, decoded by hand --------------------------------------------------------

NETLINK_NETFILTER = 12
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_MULTI, _NLM_F_DUMP = 0x1, 0x2, 0x300
_CT_GET = (1 << 8) | 1  # NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET
_CT_NEW = (1 << 8) | 0  # what the kernel answers a dump with
_NLA_TYPE = 0x3FFF
_CTA_TUPLE_ORIG, _CTA_TUPLE_REPLY, _CTA_MARK = 1, 2, 8
_CTA_TUPLE_IP, _CTA_TUPLE_PROTO = 1, 2
_HEADER = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")


def _attributes(data: bytes | memoryview, offset: int, end: int) -> dict[int, memoryview]:
    """Netlink attributes between ``offset`` and ``end``, by type (payloads)."""
    view = memoryview(data)
    out: dict[int, memoryview] = {}
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(view, offset)
        if length < 4:
            break
        out[kind & _NLA_TYPE] = view[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def _address(payload: memoryview) -> IPAddress:
    raw = bytes(payload)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw)
    return ipaddress.IPv6Address(raw)


def _decode_tuple(payload: memoryview) -> Tuple:
    parts = _attributes(payload, 0, len(payload))
    ip = _attributes(parts[_CTA_TUPLE_IP], 0, len(parts[_CTA_TUPLE_IP]))
    proto = _attributes(parts[_CTA_TUPLE_PROTO], 0, len(parts[_CTA_TUPLE_PROTO]))
    # CTA_IP_V4_SRC/DST are 1/2, CTA_IP_V6_SRC/DST 3/4.
    source = _address(ip[1] if 1 in ip else ip[3])
    destination = _address(ip[2] if 2 in ip else ip[4])
    number = proto[1][0]
    if number in _ICMP_PROTOCOLS:
        base = 4 if number == socket.IPPROTO_ICMP else 7  # CTA_PROTO_ICMP(V6)_ID, TYPE, CODE
        return Tuple(
            source,
            destination,
            number,
            icmp_id=_BE16.unpack(proto[base])[0] if base in proto else None,
            icmp_type=proto[base + 1][0] if base + 1 in proto else None,
            icmp_code=proto[base + 2][0] if base + 2 in proto else None,
        )
    sport = _BE16.unpack(proto[2])[0] if 2 in proto else None
    dport = _BE16.unpack(proto[3])[0] if 3 in proto else None
    return Tuple(source, destination, number, sport, dport)


def _dump(family: Family) -> Iterator[ConntrackEntry]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        request = _HEADER.pack(_HEADER.size + 4, _CT_GET, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
        sock.send(request + struct.pack("=BBH", _AF[family], 0, 0))
        while True:
            data = sock.recv(1 << 20)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    return
                if kind == _NLMSG_DONE:
                    return
                if kind == _NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return
                if kind == _CT_NEW:
                    body = offset + _HEADER.size + 4  # after the nfgenmsg
                    attrs = _attributes(data, body, offset + length)
                    if _CTA_TUPLE_ORIG in attrs and _CTA_TUPLE_REPLY in attrs:
                        mark = attrs.get(_CTA_MARK)
                        yield ConntrackEntry(
                            family,
                            _decode_tuple(attrs[_CTA_TUPLE_ORIG]),
                            _decode_tuple(attrs[_CTA_TUPLE_REPLY]),
                            _BE32.unpack(mark)[0] if mark is not None else 0,
                        )
                offset += (length + 3) & ~3


class NetlinkConntrack:
    """The table of the network namespace the agent runs in.

    Listing is a conntrack netlink dump decoded here (pyroute2 decodes each attribute
    as an object and costs ~0.4 ms per entry; a busy node holds tens of thousands).
    Deleting and marking, a few entries at a time, go through pyroute2.
    """

    def list(self, family: Family) -> ListedEntries:
        started = time.monotonic()
        try:
            entries = tuple(_dump(family))
        except OSError as error:
            raise ConntrackError(
                f"cannot list {family.value} conntrack entries: {error}"
            ) from error
        return ListedEntries(entries, time.monotonic() - started)

    def delete(self, entries: Sequence[ConntrackEntry]) -> int:
        return self._each("del", entries)

    def set_mark(self, entries: Sequence[ConntrackEntry], value: int, mask: int) -> int:
        return self._each("set", entries, mark=value, mark_mask=mask)

    @staticmethod
    def _each(command: str, entries: Sequence[ConntrackEntry], **attributes: int) -> int:
        """One request per entry over one socket per family; an entry already gone
        (ENOENT) is skipped."""
        from pyroute2 import NFCTSocket
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        done = 0
        sockets: dict[Family, Any] = {}
        try:
            for entry in entries:
                sock = sockets.get(entry.family)
                if sock is None:
                    sock = sockets[entry.family] = NFCTSocket(nfgen_family=_AF[entry.family])
                t = entry.original
                key = NFCTAttrTuple(
                    family=_AF[entry.family],
                    saddr=str(t.source),
                    daddr=str(t.destination),
                    proto=t.protocol,
                    sport=t.sport,
                    dport=t.dport,
                    icmp_id=t.icmp_id,
                    icmp_type=t.icmp_type,
                    icmp_code=t.icmp_code,
                )
                try:
                    sock.entry(command, tuple_orig=key, **attributes)
                except NetlinkError as error:
                    if error.code != errno.ENOENT:  # gone already: that is fine
                        raise ConntrackError(
                            f"cannot {command} a conntrack entry: {error}"
                        ) from error
                    continue
                done += 1
        except OSError as error:
            raise ConntrackError(f"cannot {command} a conntrack entry: {error}") from error
        finally:
            for sock in sockets.values():
                sock.close()
        return done


__all__ = [
    "ConntrackEntry",
    "ConntrackError",
    "ConntrackTable",
    "ListedEntries",
    "NetlinkConntrack",
    "Tuple",
]
