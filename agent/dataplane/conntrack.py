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
import socket
import time
from collections.abc import Sequence
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


def _tuple(family: int, nla: Any) -> Tuple:
    ip = nla.get_attr("CTA_TUPLE_IP")
    proto = nla.get_attr("CTA_TUPLE_PROTO")
    prefix = "CTA_IP_V4_" if family == socket.AF_INET else "CTA_IP_V6_"
    number = proto.get_attr("CTA_PROTO_NUM")
    source = ipaddress.ip_address(ip.get_attr(prefix + "SRC"))
    destination = ipaddress.ip_address(ip.get_attr(prefix + "DST"))
    if number in _ICMP_PROTOCOLS:
        icmp = "CTA_PROTO_ICMP_" if number == socket.IPPROTO_ICMP else "CTA_PROTO_ICMPV6_"
        return Tuple(
            source,
            destination,
            number,
            icmp_type=proto.get_attr(icmp + "TYPE"),
            icmp_code=proto.get_attr(icmp + "CODE"),
            icmp_id=proto.get_attr(icmp + "ID"),
        )
    return Tuple(
        source,
        destination,
        number,
        sport=proto.get_attr("CTA_PROTO_SRC_PORT"),
        dport=proto.get_attr("CTA_PROTO_DST_PORT"),
    )


class NetlinkConntrack:
    """The table of the network namespace the agent runs in."""

    def list(self, family: Family) -> ListedEntries:
        from pyroute2 import NFCTSocket

        started = time.monotonic()
        af = _AF[family]
        entries: list[ConntrackEntry] = []
        try:
            with NFCTSocket(nfgen_family=af) as sock:
                for message in sock.dump():
                    original = message.get_attr("CTA_TUPLE_ORIG")
                    reply = message.get_attr("CTA_TUPLE_REPLY")
                    if original is None or reply is None:
                        continue
                    entries.append(
                        ConntrackEntry(
                            family,
                            _tuple(af, original),
                            _tuple(af, reply),
                            message.get_attr("CTA_MARK") or 0,
                        )
                    )
        except OSError as error:
            raise ConntrackError(
                f"cannot list {family.value} conntrack entries: {error}"
            ) from error
        return ListedEntries(tuple(entries), time.monotonic() - started)

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
