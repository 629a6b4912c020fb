"""Compiler settings and the node a ruleset is compiled for."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from agent.model.objects import Direction, IPAddress, IPNetwork
from agent.policy.view import PolicyView

DEFAULT_CHAIN_PREFIX = "NPA"
DEFAULT_MARK = 0x1000
# The conntrack mark bit (ctmark, not the packet mark) of flows revoked in strict mode.
DEFAULT_REVOKED_MARK = 0x2000
MAX_PREFIX = 8
# Neighbour discovery: router solicitation/advertisement, neighbour solicitation/
# advertisement, redirect. Bridged with br_netfilter, these cross FORWARD.
NEIGHBOUR_DISCOVERY_TYPES = (133, 134, 135, 136, 137)


@dataclass(frozen=True, slots=True)
class CompilerConfig:
    chain_prefix: str = DEFAULT_CHAIN_PREFIX
    allow_mark: int = DEFAULT_MARK
    reject: bool = False
    # Strict mode: a connmark bit set on established flows the rules now deny; the entry
    # chain drops their packets, both ways, before letting established traffic through.
    # 0: no such rule (keep mode).
    revoked_mark: int = 0
    # Drop traffic to and from addresses of the node's pod CIDRs that no local pod holds
    # yet (a pod the agent does not know of yet), after the node exemption.
    isolate_unknown_pod_ips: bool = False

    def __post_init__(self) -> None:
        if not self.chain_prefix or len(self.chain_prefix) > MAX_PREFIX:
            raise ValueError(f"chain prefix must be 1-{MAX_PREFIX} characters")
        if not self.chain_prefix.replace("-", "").replace("_", "").isalnum():
            raise ValueError("chain prefix may hold letters, digits, '-' and '_' only")
        if (
            self.allow_mark <= 0
            or self.allow_mark > 0xFFFFFFFF  # packet marks are 32 bits
            or self.allow_mark & (self.allow_mark - 1)
        ):
            raise ValueError("allow mark must be a single bit of the 32-bit packet mark")
        if self.allow_mark & 0xC000:
            raise ValueError("allow mark clashes with kube-proxy's 0x4000/0x8000")
        if self.revoked_mark and (
            self.revoked_mark > 0xFFFFFFFF or self.revoked_mark & (self.revoked_mark - 1)
        ):
            raise ValueError("revoked mark must be a single bit of the 32-bit conntrack mark")

    def name(self, suffix: str) -> str:
        return f"{self.chain_prefix}-{suffix}"

    def hashed_name(self, kind: str, key: str) -> str:
        length = min(16, 28 - len(self.chain_prefix) - len(kind) - 2)
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest().upper()
        return f"{self.chain_prefix}-{kind}-{digest[:length]}"

    @property
    def entry_chain(self) -> str:
        return self.name("FORWARD")

    def unknown_chain(self, direction: Direction) -> str:
        """Where the addresses of the node's pod CIDRs that no local pod holds are dropped:
        at the source (``EGRESS``) or at the destination (``INGRESS``)."""
        return self.name(f"UNKNOWN-{direction.name}")

    @property
    def mark_text(self) -> str:
        return f"{self.allow_mark:#x}/{self.allow_mark:#x}"

    @property
    def revoked_mark_text(self) -> str:
        return f"{self.revoked_mark:#x}/{self.revoked_mark:#x}"


@dataclass(frozen=True, slots=True)
class NodeContext:
    name: str
    addresses: tuple[IPAddress, ...] = ()
    # Where the node's pods get their addresses (``isolate_unknown_pod_ips``).
    pod_cidrs: tuple[IPNetwork, ...] = ()


def node_addresses(
    state: PolicyView, node_name: str, extra: Iterable[IPAddress] = ()
) -> tuple[IPAddress, ...]:
    """The node's own addresses: from its Node object plus those read from the kernel."""
    seen: list[IPAddress] = []
    for address in (*state.node_addresses(node_name), *extra):
        if address not in seen:
            seen.append(address)
    return tuple(seen)


def pod_cidrs(
    state: PolicyView, node_name: str, override: Iterable[IPNetwork] = ()
) -> tuple[IPNetwork, ...]:
    """The node's pod CIDRs: ``override`` (``--pod-cidr``) when given, else its Node's
    ``spec.podCIDRs``. An override replaces them: a CNI with its own IPAM does not use
    them, and another node's pods may then hold addresses in them."""
    given = tuple(dict.fromkeys(override))
    return given or state.node_pod_cidrs(node_name)
