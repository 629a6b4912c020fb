"""CIDR arithmetic on plain integers.

The compiler collapses and splits address sets of thousands of pods on every group
rebuild; the ipaddress module's objects are far too slow for that, so blocks here are
``(network, prefix_length)`` integer pairs of one family.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence

Block = tuple[int, int]  # (network address as int, prefix length)


def width(version: int) -> int:
    return 32 if version == 4 else 128


def collapse(addresses: Iterable[int], version: int) -> list[Block]:
    """The fewest blocks covering exactly the given host addresses, sorted."""
    bits = width(version)
    stack: list[Block] = []
    for address in sorted(set(addresses)):
        stack.append((address, bits))
        # Merge while the two newest blocks are the two halves of one parent block.
        while len(stack) >= 2:
            (first, first_len), (second, second_len) = stack[-2], stack[-1]
            if first_len != second_len or first_len == 0:
                break
            size = 1 << (bits - first_len)
            if first % (size * 2) != 0 or second != first + size:
                break
            stack[-2:] = [(first, first_len - 1)]
    return stack


def collapse_sorted(addresses: Sequence[int], version: int) -> list[tuple[int, int, int]]:
    """``collapse`` for sorted, distinct addresses (a tree leaf's): each block as
    ``(network, prefix length, index of its first address)``, without re-sorting."""
    bits = width(version)
    stack: list[tuple[int, int, int]] = []
    for index, address in enumerate(addresses):
        network, length, first_index = address, bits, index
        # Merge while the newest block is the left half of this one's parent.
        while stack:
            left, left_length, left_index = stack[-1]
            if left_length != length or length == 0:
                break
            size = 1 << (bits - length)
            if left % (size * 2) != 0 or network != left + size:
                break
            stack.pop()
            network, length, first_index = left, length - 1, left_index
        stack.append((network, length, first_index))
    return stack


def last_address(block: Block, version: int) -> int:
    network, length = block
    return network + (1 << (width(version) - length)) - 1


def common_block(blocks: Iterable[Block], version: int) -> Block:
    """The smallest block containing all of ``blocks``."""
    bits = width(version)
    items = list(blocks)
    low = min(network for network, _ in items)
    high = max(last_address(block, version) for block in items)
    length = bits - (low ^ high).bit_length()
    return ((low >> (bits - length)) << (bits - length) if length < bits else low, length)


def halves(block: Block, version: int) -> tuple[Block, Block]:
    network, length = block
    size = 1 << (width(version) - length - 1)
    return (network, length + 1), (network + size, length + 1)


# Texts of blocks, in two generations: when the newer one is full it becomes the older
# one, so what keeps being asked for stays and memory stays bounded as pods come and go.
_TEXT_LIMIT = 1 << 14
_TEXT: dict[tuple[int, int, int], str] = {}
_OLD_TEXT: dict[tuple[int, int, int], str] = {}


def _address_text(address: int, version: int) -> str:
    """What ``str(ipaddress.ip_address(address))`` gives, through libc's inet_ntop (a
    seventh of the cost): for IPv4 always, for IPv6 outside ::/96 and ::ffff:0:0/96,
    the only prefixes inet_ntop prints with a dotted quad (ipaddress never does)."""
    if version == 4:
        return socket.inet_ntoa(address.to_bytes(4, "big"))
    if address >> 32 in (0, 0xFFFF):
        return str(ipaddress.IPv6Address(address))
    return socket.inet_ntop(socket.AF_INET6, address.to_bytes(16, "big"))


def text(block: Block, version: int) -> str:
    """``a.b.c.d/len`` or ``x::y/len``, as iptables prints it."""
    global _TEXT, _OLD_TEXT
    key = (block[0], block[1], version)
    found = _TEXT.get(key)
    if found is None:
        found = _OLD_TEXT.get(key)
        if found is None:
            found = f"{_address_text(block[0], version)}/{block[1]}"
        if len(_TEXT) >= _TEXT_LIMIT:
            _OLD_TEXT, _TEXT = _TEXT, {}
        _TEXT[key] = found
    return found
