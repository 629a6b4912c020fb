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
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.dataplane import netlink
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

    def list(self, family: Family, addresses: Collection[IPAddress] | None = None) -> ListedEntries:
        """The entries of ``family``; with ``addresses``, at least those with one of them
        as the original source or the reply source (the destination after DNAT)."""
        ...

    def delete(self, entries: Sequence[ConntrackEntry]) -> int:
        """Delete ``entries``; how many were deleted (the rest were already gone)."""
        ...

    def set_mark(self, entries: Sequence[ConntrackEntry], value: int, mask: int) -> int:
        """Set the bits ``mask`` of each entry's mark to ``value``; how many were found."""
        ...


# --- the dump, decoded by hand --------------------------------------------------------

# NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_*
_CT_NEW = (1 << 8) | 0  # an update (without NLM_F_CREATE); also what a dump answers with
_CT_GET = (1 << 8) | 1
_CT_DELETE = (1 << 8) | 2
_CTA_TUPLE_ORIG, _CTA_TUPLE_REPLY, _CTA_MARK, _CTA_MARK_MASK = 1, 2, 8, 21
_CTA_FILTER, _CTA_FILTER_FLAG_IP_SRC = 25, 1 << 0
_BATCH = 256  # requests per send; their acknowledgements fit one receive buffer
_CTA_TUPLE_IP, _CTA_TUPLE_PROTO = 1, 2
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")


def _address(payload: memoryview) -> IPAddress:
    raw = bytes(payload)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw)
    return ipaddress.IPv6Address(raw)


def _decode_tuple(payload: memoryview) -> Tuple:
    parts = netlink.attributes(payload, 0, len(payload))
    ip = netlink.attributes(parts[_CTA_TUPLE_IP], 0, len(parts[_CTA_TUPLE_IP]))
    proto = netlink.attributes(parts[_CTA_TUPLE_PROTO], 0, len(parts[_CTA_TUPLE_PROTO]))
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


def _dump(
    family: Family, direction: int | None = None, source: IPAddress | None = None
) -> Iterator[ConntrackEntry]:
    """Every entry of ``family``; or only those whose ``direction`` tuple (original or
    reply) has ``source`` as its source, filtered by the kernel (CTA_FILTER, Linux 5.8)."""
    request = struct.pack("=BBH", _AF[family], 0, 0)
    if direction is not None and source is not None:
        attribute = 1 if source.version == 4 else 3  # CTA_IP_V4_SRC / CTA_IP_V6_SRC
        ip = netlink.attribute(
            _CTA_TUPLE_IP, netlink.attribute(attribute, source.packed), nested=True
        )
        # CTA_FILTER_ORIG_FLAGS / _REPLY_FLAGS have the numbers of the tuples they filter.
        what = netlink.attribute(direction, struct.pack("=I", _CTA_FILTER_FLAG_IP_SRC))
        request += netlink.attribute(direction, ip, nested=True) + netlink.attribute(
            _CTA_FILTER, what, nested=True
        )
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_NETFILTER) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        flags = netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP
        sock.send(
            netlink.HEADER.pack(netlink.HEADER.size + len(request), _CT_GET, flags, 1, 0) + request
        )
        while True:
            data = sock.recv(1 << 20)
            offset = 0
            while offset + netlink.HEADER.size <= len(data):
                length, kind, _, _, _ = netlink.HEADER.unpack_from(data, offset)
                if length < netlink.HEADER.size:
                    return
                if kind == netlink.NLMSG_DONE:
                    return
                if kind == netlink.NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + netlink.HEADER.size)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return
                if kind == _CT_NEW:
                    body = offset + netlink.HEADER.size + 4  # after the nfgenmsg
                    attrs = netlink.attributes(data, body, offset + length)
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

    Plain conntrack netlink, encoded and decoded here: pyroute2 builds an object per
    attribute and costs ~0.4 ms per entry listed and ~0.5 ms per entry changed, and a
    busy node holds tens of thousands.
    """

    def list(self, family: Family, addresses: Collection[IPAddress] | None = None) -> ListedEntries:
        started = time.monotonic()
        try:
            if addresses is None:
                entries = tuple(_dump(family))
            else:
                wanted = frozenset(addresses)
                if family is Family.IPV4:
                    found: dict[Tuple, ConntrackEntry] = {}
                    for address in wanted:
                        for direction in (_CTA_TUPLE_ORIG, _CTA_TUPLE_REPLY):
                            for entry in _dump(family, direction, address):
                                found.setdefault(entry.original, entry)
                    candidates: Iterable[ConntrackEntry] = found.values()
                else:
                    # The kernel's IPv6 source filter is not to be trusted (on 6.18 it
                    # returns the entries that do NOT match): dump everything.
                    candidates = _dump(family)
                # The kernel's filter only narrows (a kernel before 5.8 ignores it).
                entries = tuple(
                    entry
                    for entry in candidates
                    if entry.original.source in wanted or entry.reply.source in wanted
                )
        except OSError as error:
            raise ConntrackError(
                f"cannot list {family.value} conntrack entries: {error}"
            ) from error
        return ListedEntries(entries, time.monotonic() - started)

    def delete(self, entries: Sequence[ConntrackEntry]) -> int:
        return self._each(_CT_DELETE, entries, b"")

    def set_mark(self, entries: Sequence[ConntrackEntry], value: int, mask: int) -> int:
        extra = netlink.attribute(_CTA_MARK, _BE32.pack(value)) + netlink.attribute(
            _CTA_MARK_MASK, _BE32.pack(mask)
        )
        return self._each(_CT_NEW, entries, extra)

    @staticmethod
    def _each(kind: int, entries: Sequence[ConntrackEntry], extra: bytes) -> int:
        """One request per entry (by its original tuple), sent in batches over one
        socket, each acknowledged; an entry already gone (ENOENT) is skipped."""
        done = 0
        verb = "delete" if kind == _CT_DELETE else "update"
        try:
            with socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_NETFILTER
            ) as sock:
                sock.bind((0, 0))
                for start in range(0, len(entries), _BATCH):
                    batch = entries[start : start + _BATCH]
                    messages = []
                    for seq, entry in enumerate(batch, start=1):
                        body = struct.pack("=BBH", _AF[entry.family], 0, 0)
                        body += netlink.attribute(
                            _CTA_TUPLE_ORIG, _encode_tuple(entry.original), nested=True
                        )
                        body += extra
                        header = netlink.HEADER.pack(
                            netlink.HEADER.size + len(body),
                            kind,
                            netlink.NLM_F_REQUEST | netlink.NLM_F_ACK,
                            seq,
                            0,
                        )
                        messages.append(header + body)
                    sock.send(b"".join(messages))
                    for code in _acks(sock, len(batch)):
                        if code == 0:
                            done += 1
                        elif code != -errno.ENOENT:  # gone already: that is fine
                            raise OSError(-code, os.strerror(-code))
        except OSError as error:
            raise ConntrackError(f"cannot {verb} a conntrack entry: {error}") from error
        return done


def _encode_tuple(t: Tuple) -> bytes:
    """An entry's tuple as ctnetlink takes it to find the entry."""
    v4 = t.source.version == 4
    ip = netlink.attribute(1 if v4 else 3, t.source.packed) + netlink.attribute(
        2 if v4 else 4, t.destination.packed
    )
    proto = netlink.attribute(1, bytes([t.protocol]))
    if t.protocol in _ICMP_PROTOCOLS:
        base = 4 if t.protocol == socket.IPPROTO_ICMP else 7  # ID, TYPE, CODE
        if t.icmp_id is not None:
            proto += netlink.attribute(base, _BE16.pack(t.icmp_id))
        if t.icmp_type is not None:
            proto += netlink.attribute(base + 1, bytes([t.icmp_type]))
        if t.icmp_code is not None:
            proto += netlink.attribute(base + 2, bytes([t.icmp_code]))
    else:
        if t.sport is not None:
            proto += netlink.attribute(2, _BE16.pack(t.sport))
        if t.dport is not None:
            proto += netlink.attribute(3, _BE16.pack(t.dport))
    return netlink.attribute(_CTA_TUPLE_IP, ip, nested=True) + netlink.attribute(
        _CTA_TUPLE_PROTO, proto, nested=True
    )


def _acks(sock: socket.socket, expected: int) -> Iterator[int]:
    """The error codes (0: done) of ``expected`` acknowledged requests."""
    seen = 0
    while seen < expected:
        data = sock.recv(1 << 16)
        offset = 0
        while offset + netlink.HEADER.size <= len(data):
            length, kind, _, _, _ = netlink.HEADER.unpack_from(data, offset)
            if length < netlink.HEADER.size:
                break
            if kind == netlink.NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + netlink.HEADER.size)
                seen += 1
                yield code
            offset += (length + 3) & ~3


__all__ = [
    "ConntrackEntry",
    "ConntrackError",
    "ConntrackTable",
    "ListedEntries",
    "NetlinkConntrack",
    "Tuple",
]
