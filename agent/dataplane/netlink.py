"""Netlink framing shared by the hand-written netfilter clients (``conntrack.py``,
``nflog.py``): message header, attributes (TLVs, 4-byte aligned) and their encoding.

Both protocols are nfnetlink subsystems on one socket family; only their messages and
attribute numbers differ, and those stay in their modules.
"""

from __future__ import annotations

import struct

NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_NLA = struct.Struct("=HH")  # nlattr: length, type
_NLA_TYPE, _NLA_F_NESTED = 0x3FFF, 0x8000


def attributes(data: bytes | memoryview, offset: int, end: int) -> dict[int, memoryview]:
    """The attributes between ``offset`` and ``end``, by type (their payloads; the nested
    and byte-order flags are masked off the type)."""
    view = memoryview(data)
    out: dict[int, memoryview] = {}
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(view, offset)
        if length < 4:
            break
        out[kind & _NLA_TYPE] = view[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def attribute(kind: int, payload: bytes, *, nested: bool = False) -> bytes:
    """One attribute, padded to 4 bytes."""
    header = _NLA.pack(4 + len(payload), kind | (_NLA_F_NESTED if nested else 0))
    return header + payload + b"\0" * (-len(payload) % 4)
