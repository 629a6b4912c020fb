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
DEFAULT_DENY_LOG_GROUP = 100
DEFAULT_DENY_LOG_RATE = 10  # packets a second, per node and family
DEFAULT_DENY_LOG_BURST = 20
MAX_DENY_LOG_RATE = 10_000
# Bytes of each denied packet copied to the agent: an IPv6 header with a few extension
# headers and the transport header's ports and flags fit.
DENY_LOG_COPY_BYTES = 128
DENY_LOG_PREFIX = "npa:"


@dataclass(frozen=True, slots=True)
class DenyLogRules:
    """``--log-denied``: before each drop of a new connection, jump to a log chain of the
    drop's direction, where a kernel rate limit shared by every drop site of the family
    (one hashlimit table, one bucket) lets packets through to an NFLOG group."""

    group: int = DEFAULT_DENY_LOG_GROUP
    rate: int = DEFAULT_DENY_LOG_RATE
    burst: int = DEFAULT_DENY_LOG_BURST

    def __post_init__(self) -> None:
        if not 0 <= self.group <= 0xFFFF:
            raise ValueError(f"the deny log's NFLOG group must be 0-65535, not {self.group}")
        if not 1 <= self.rate <= MAX_DENY_LOG_RATE:
            raise ValueError(
                f"the deny log's rate must be 1-{MAX_DENY_LOG_RATE} a second, not {self.rate}"
            )
        if not 1 <= self.burst <= MAX_DENY_LOG_RATE:
            raise ValueError(
                f"the deny log's burst must be 1-{MAX_DENY_LOG_RATE}, not {self.burst}"
            )

    def hashlimit_name(self, chain_prefix: str) -> str:
        """The kernel's hashlimit table (at most 15 characters). It carries the rate and
        burst: a table is found by name, and a rule written while an older rule still
        holds the name would take the older table with its old rate."""
        key = f"{chain_prefix}|{self.rate}|{self.burst}"
        return "npad" + hashlib.sha256(key.encode()).hexdigest()[:11]

    @staticmethod
    def nflog_prefix(direction: Direction) -> str:
        return DENY_LOG_PREFIX + direction.short


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
    # --log-denied: the log chains and the jumps to them before each drop (None: none).
    deny_log: DenyLogRules | None = None

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

    def denied_chain(self, direction: Direction) -> str:
        """The deny log's chain for drops in ``direction`` (``--log-denied``)."""
        return self.name(f"DENIED-{direction.name}")

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
