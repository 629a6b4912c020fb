"""An NFLOG group over nfnetlink_log, encoded and decoded by hand (like ``conntrack.py``:
pyroute2 0.9.7 knows the subsystem's number and nothing of its messages), and the IP
headers of the packets it carries.

The agent binds one group in the node's network namespace, asks for the first bytes of
each packet and for per-group sequence numbers. The kernel numbers the packets it logs to
a group from 0, so a gap in ``seq`` is packets it logged that never reached us (the
socket's buffer was full). Nothing is decided here.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from agent.dataplane import netlink
from agent.model.objects import IPAddress
from agent.rules import Family

# NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_*
_MSG_PACKET = (4 << 8) | 0
_MSG_CONFIG = (4 << 8) | 1
_NFGEN = struct.Struct("=BBH")  # family, version, res_id (big-endian group)
# Configuration attributes and values.
_CFG_CMD, _CFG_MODE, _CFG_NLBUFSIZ, _CFG_TIMEOUT, _CFG_FLAGS = 1, 2, 3, 4, 6
_CMD_BIND, _CMD_UNBIND = 1, 2
_COPY_PACKET = 2
_FLAG_SEQ = 0x1
# Packet attributes.
_ATTR_PAYLOAD, _ATTR_PREFIX, _ATTR_SEQ = 9, 10, 12
_FAMILIES: dict[int, Family] = {int(socket.AF_INET): Family.IPV4, int(socket.AF_INET6): Family.IPV6}
RECEIVE_BUFFER = 1 << 20


class NflogError(RuntimeError):
    """The group could not be bound or read (no CAP_NET_ADMIN, bound by another...)."""


@dataclass(frozen=True, slots=True)
class LoggedPacket:
    """One packet as the kernel logged it: its rule's prefix and its first bytes."""

    family: Family
    prefix: str
    seq: int | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class PacketHeader:
    """The addresses and transport of an IP packet. ``sport``/``dport`` for TCP, UDP and
    SCTP; ICMP has its type (and, for echo, its identifier in ``sport``)."""

    source: IPAddress
    destination: IPAddress
    protocol: int
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    tcp_flags: int | None = None


# --- pure decoding ---------------------------------------------------------------------

_PORT_PROTOCOLS = (socket.IPPROTO_TCP, socket.IPPROTO_UDP, 132)  # 132: SCTP
_ICMP_ECHO = {socket.IPPROTO_ICMP: (8, 0), socket.IPPROTO_ICMPV6: (128, 129)}
# IPv6 extension headers walked over to the transport: hop-by-hop, routing, destination
# options (length in 8-byte units after the first 8), and fragment (8 bytes).
_IPV6_OPTIONS = (0, 43, 60)
_IPV6_FRAGMENT = 44


def decode_ip(payload: bytes, family: Family) -> PacketHeader:
    """The header of an IP packet's first bytes; ValueError if they are not one."""
    if family is Family.IPV4:
        if len(payload) < 20 or payload[0] >> 4 != 4:
            raise ValueError("not an IPv4 packet")
        header_length = (payload[0] & 0x0F) * 4
        protocol = payload[9]
        source = ipaddress.IPv4Address(payload[12:16])
        destination = ipaddress.IPv4Address(payload[16:20])
        fragment_offset = struct.unpack_from(">H", payload, 6)[0] & 0x1FFF
        if fragment_offset or header_length < 20:
            return PacketHeader(source, destination, protocol)  # no transport header here
        return _transport(source, destination, protocol, payload, header_length)
    if len(payload) < 40 or payload[0] >> 4 != 6:
        raise ValueError("not an IPv6 packet")
    source6 = ipaddress.IPv6Address(payload[8:24])
    destination6 = ipaddress.IPv6Address(payload[24:40])
    protocol, offset = payload[6], 40
    while protocol in (*_IPV6_OPTIONS, _IPV6_FRAGMENT):
        if offset + 8 > len(payload):
            return PacketHeader(source6, destination6, protocol)
        if protocol == _IPV6_FRAGMENT:
            if struct.unpack_from(">H", payload, offset + 2)[0] & 0xFFF8:
                return PacketHeader(source6, destination6, payload[offset])  # not the first
            protocol, offset = payload[offset], offset + 8
        else:
            protocol, offset = payload[offset], offset + 8 + payload[offset + 1] * 8
    return _transport(source6, destination6, protocol, payload, offset)


def _transport(
    source: IPAddress, destination: IPAddress, protocol: int, payload: bytes, offset: int
) -> PacketHeader:
    if protocol in _PORT_PROTOCOLS and offset + 4 <= len(payload):
        sport, dport = struct.unpack_from(">HH", payload, offset)
        flags = None
        if protocol == socket.IPPROTO_TCP and offset + 14 <= len(payload):
            flags = payload[offset + 13]
        return PacketHeader(source, destination, protocol, sport, dport, tcp_flags=flags)
    if protocol in _ICMP_ECHO and offset + 2 <= len(payload):
        kind = payload[offset]
        ident = None
        if kind in _ICMP_ECHO[protocol] and offset + 6 <= len(payload):
            ident = struct.unpack_from(">H", payload, offset + 4)[0]
        return PacketHeader(source, destination, protocol, ident, None, icmp_type=kind)
    return PacketHeader(source, destination, protocol)


def decode_messages(data: bytes) -> Iterator[LoggedPacket | int]:
    """The packets in one datagram from the socket; an error code (negative errno) for
    each error message."""
    offset = 0
    while offset + netlink.HEADER.size <= len(data):
        length, kind, _, _, _ = netlink.HEADER.unpack_from(data, offset)
        if length < netlink.HEADER.size or offset + length > len(data):
            return
        body = offset + netlink.HEADER.size
        if kind == netlink.NLMSG_ERROR:
            yield struct.unpack_from("=i", data, body)[0]
        elif kind == _MSG_PACKET and length >= netlink.HEADER.size + _NFGEN.size:
            family = _FAMILIES.get(data[body])
            attributes = netlink.attributes(data, body + _NFGEN.size, offset + length)
            payload = attributes.get(_ATTR_PAYLOAD)
            if family is not None and payload is not None:
                prefix = bytes(attributes.get(_ATTR_PREFIX, b"")).split(b"\0", 1)[0]
                raw_seq = attributes.get(_ATTR_SEQ)
                seq = struct.unpack(">I", raw_seq)[0] if raw_seq and len(raw_seq) == 4 else None
                yield LoggedPacket(family, prefix.decode("ascii", "replace"), seq, bytes(payload))
        offset += (length + 3) & ~3


def config_message(group: int, attributes: bytes, seq: int) -> bytes:
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(group)) + attributes
    flags = netlink.NLM_F_REQUEST | netlink.NLM_F_ACK
    return netlink.HEADER.pack(netlink.HEADER.size + len(body), _MSG_CONFIG, flags, seq, 0) + body


# --- the socket ------------------------------------------------------------------------


class NflogGroup:
    """One bound NFLOG group of the agent's network namespace. Closing the socket
    unbinds it (the kernel drops a closed socket's groups)."""

    def __init__(self, group: int, copy_bytes: int, *, receive_buffer: int = RECEIVE_BUFFER):
        self.group = group
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_NETFILTER)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            self._sock.bind((0, 0))
            mode = struct.pack(">IBB", copy_bytes, _COPY_PACKET, 0)
            self._configure(1, netlink.attribute(_CFG_CMD, bytes([_CMD_BIND])))
            self._configure(
                2,
                netlink.attribute(_CFG_MODE, mode)
                + netlink.attribute(_CFG_FLAGS, struct.pack(">H", _FLAG_SEQ))
                # Deliver at once: nothing waits in the kernel for more packets.
                + netlink.attribute(_CFG_TIMEOUT, struct.pack(">I", 0)),
            )
        except OSError as error:
            self._sock.close()
            raise NflogError(f"cannot bind NFLOG group {group}: {error}") from error

    def _configure(self, seq: int, attributes: bytes) -> None:
        self._sock.send(config_message(self.group, attributes, seq))
        self._sock.settimeout(5.0)
        while True:
            for item in decode_messages(self._sock.recv(1 << 16)):
                if isinstance(item, int):
                    if item:
                        raise OSError(-item, os.strerror(-item))
                    return

    def receive(self, timeout: float) -> tuple[list[LoggedPacket], bool]:
        """The packets of the next datagram (none after ``timeout`` seconds), and whether
        the socket overflowed since the last call (packets were lost)."""
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(1 << 16)
        except TimeoutError:
            return [], False
        except OSError as error:
            if error.errno == errno.ENOBUFS:
                return [], True
            raise NflogError(f"cannot read NFLOG group {self.group}: {error}") from error
        return [item for item in decode_messages(data) if isinstance(item, LoggedPacket)], False

    def close(self) -> None:
        self._sock.close()


__all__ = [
    "LoggedPacket",
    "NflogError",
    "NflogGroup",
    "PacketHeader",
    "decode_ip",
    "decode_messages",
]
