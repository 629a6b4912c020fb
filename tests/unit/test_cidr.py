"""CIDR arithmetic the trees rely on, checked against the ipaddress module."""

from __future__ import annotations

import ipaddress
import random

from agent.compiler import cidr


def _random_ipv6(rng: random.Random) -> int:
    value = 0
    for _ in range(8):  # zero runs of every length, mapped and compatible prefixes
        value = (value << 16) | rng.choice([0, 0, 1, 0xFFFF, rng.getrandbits(16)])
    return value


def test_block_text_is_what_ipaddress_prints() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        v4, v6 = rng.getrandbits(32), _random_ipv6(rng)
        assert cidr.text((v4, 32), 4) == f"{ipaddress.IPv4Address(v4)}/32"
        assert cidr.text((v6, 128), 6) == f"{ipaddress.IPv6Address(v6)}/128"
    for special in (0, 1, 0xFFFF_0A00_0001, 0x0A00_0001, (0xFFFF << 32) - 1):
        assert cidr.text((special, 128), 6) == f"{ipaddress.IPv6Address(special)}/128"


def test_collapse_sorted_agrees_with_collapse() -> None:
    rng = random.Random(11)
    for version, bits in ((4, 32), (6, 128)):
        for _ in range(2_000):
            base = rng.getrandbits(bits - 8) << 8
            addresses = sorted({base + rng.randrange(64) for _ in range(rng.randrange(20))})
            blocks = cidr.collapse_sorted(addresses, version)
            assert [(network, length) for network, length, _ in blocks] == cidr.collapse(
                addresses, version
            )
            for network, length, first in blocks:
                assert addresses[first] == network
                assert length <= bits
