"""Typed, frozen views of the Kubernetes objects the agent needs, and nothing more.

Each object keeps only the fields the policy layer reads, so a cluster of thousands of
pods costs little memory. Parsing and validation live in :mod:`agent.model.parse`.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.model.selectors import LabelSelector

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


class Protocol(enum.Enum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    @property
    def iptables_name(self) -> str:
        return self.value.lower()


class Direction(enum.Enum):
    INGRESS = "Ingress"
    EGRESS = "Egress"

    @property
    def short(self) -> str:
        return "ingress" if self is Direction.INGRESS else "egress"


class PodPhase(enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Mapping[str, str]
    # Its labels could not be read: no selector may match its pods (not even ``{}``),
    # and its pods are quarantined (see ``Pod.quarantined``).
    quarantined: bool = False
    problems: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ContainerPort:
    number: int
    protocol: Protocol
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    labels: Mapping[str, str]
    node_name: str | None
    host_network: bool
    phase: PodPhase
    ips: tuple[IPAddress, ...]
    ports: tuple[ContainerPort, ...] = ()
    uid: str = ""
    # Part of what decides selection (labels, spec) could not be read: the pod is never a
    # peer of any pod or namespace selector, and where it runs it is isolated in both
    # directions with nothing allowed. ipBlock peers still match its address. Without a
    # readable node it is enforced on every node.
    quarantined: bool = False
    # What parsing had to leave out (bad addresses, ports...), "Pod ns/name: ..." each.
    problems: tuple[str, ...] = field(default=(), compare=False, repr=False)
    # Derived once: the compiler asks for these hundreds of thousands of times.
    key: str = field(init=False, repr=False, compare=False)
    ipv4: tuple[IPAddress, ...] = field(init=False, repr=False, compare=False)
    ipv6: tuple[IPAddress, ...] = field(init=False, repr=False, compare=False)
    is_selectable: bool = field(init=False, repr=False, compare=False)
    is_peer: bool = field(init=False, repr=False, compare=False)  # selectors may match it

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")
        object.__setattr__(self, "ipv4", tuple(ip for ip in self.ips if ip.version == 4))
        object.__setattr__(self, "ipv6", tuple(ip for ip in self.ips if ip.version == 6))
        # A finished pod keeps its IP in status while the IP may already belong to a new
        # pod, so its labels must never apply to that address.
        object.__setattr__(
            self,
            "is_selectable",
            not self.host_network
            and bool(self.ips)
            and self.phase not in (PodPhase.SUCCEEDED, PodPhase.FAILED),
        )
        object.__setattr__(self, "is_peer", self.is_selectable and not self.quarantined)

    def ips_of(self, version: int) -> tuple[IPAddress, ...]:
        return self.ipv4 if version == 4 else self.ipv6

    def resolve_named_port(self, name: str, protocol: Protocol) -> int | None:
        """The number this pod serves under ``name`` for ``protocol``, if any."""
        for port in self.ports:
            if port.name == name and port.protocol is protocol:
                return port.number
        return None


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[IPAddress, ...]
    # spec.podCIDRs (spec.podCIDR when there is no list): where this node's pods get
    # their addresses.
    pod_cidrs: tuple[IPNetwork, ...] = ()
    problems: tuple[str, ...] = field(default=(), compare=False, repr=False)
    # What ClusterNetworkPolicy ``nodes`` peers select on. None: unreadable, so no
    # selector matches the node (an Accept to it opens nothing; a Deny to "every node"
    # with an empty selector still matches it: see ``NodePeer``).
    labels: Mapping[str, str] | None = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, address: IPAddress) -> bool:
        if address.version != self.cidr.version or address not in self.cidr:
            return False
        return not any(address in excluded for excluded in self.excepts)


@dataclass(frozen=True, slots=True)
class SelectorPeer:
    """A peer given by selectors.

    ``namespace_selector`` None means "the policy's own namespace"; ``pod_selector``
    None means "every pod" of the selected namespaces.
    """

    namespace_selector: LabelSelector | None
    pod_selector: LabelSelector | None


Peer = SelectorPeer | IPBlock


@dataclass(frozen=True, slots=True)
class PolicyPort:
    """One entry of a rule's ``ports``.

    ``port`` None means every port of ``protocol``; a str is a named port.
    """

    protocol: Protocol
    port: int | str | None = None
    end_port: int | None = None

    @property
    def is_named(self) -> bool:
        return isinstance(self.port, str)


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One ingress or egress rule. ``peers``/``ports`` None means "all"."""

    peers: tuple[Peer, ...] | None
    ports: tuple[PolicyPort, ...] | None
    index: int = 0


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    namespace: str
    name: str
    # None when the selector was invalid: the policy then isolates every pod of its
    # namespace (fail closed) and allows nothing through its broken parts.
    pod_selector: LabelSelector | None
    policy_types: frozenset[Direction]
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()
    problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: Direction) -> tuple[PolicyRule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress

    def selects(self, pod: Pod) -> bool:
        if pod.namespace != self.namespace:
            return False
        return self.pod_selector is None or self.pod_selector.matches(pod.labels)


# --- ClusterNetworkPolicy (policy.networking.k8s.io) ---------------------------------


class Tier(enum.Enum):
    """Admin rules come before NetworkPolicy, Baseline rules after it."""

    ADMIN = "Admin"
    BASELINE = "Baseline"


class RuleAction(enum.Enum):
    ACCEPT = "Accept"  # decides: allowed in this direction, later tiers not consulted
    DENY = "Deny"  # decides: dropped
    PASS = "Pass"  # skips the rest of this tier: on to the next one


@dataclass(frozen=True, slots=True)
class NodePeer:
    """An egress ``nodes`` peer: the addresses (``status.addresses``) of every node whose
    labels ``selector`` matches (an empty selector: every node). A node with unreadable
    labels matches only the empty selector."""

    selector: LabelSelector

    def matches(self, node: Node) -> bool:
        if node.labels is None:
            return not self.selector.requirements
        return self.selector.matches(node.labels)


# ``namespaces`` peer: SelectorPeer(namespace selector, None); ``pods`` peer:
# SelectorPeer(namespace selector, pod selector); ``networks``: one IPBlock per CIDR
# (no excepts); ``nodes``: NodePeer. A cluster peer's namespace selector is never None.
ClusterPeer = SelectorPeer | IPBlock | NodePeer


@dataclass(frozen=True, slots=True)
class ClusterRule:
    """One ingress or egress rule of a ClusterNetworkPolicy, in written order.

    ``peers`` None: every peer; ``ports`` None: all traffic (ICMP too). A
    ``destinationNamedPort`` is one named ``PolicyPort`` per protocol (a pod serves a
    name under one protocol only). A rule the parser could not read whole becomes a Deny
    of everything (``peers`` and ``ports`` None) at its place, with a problem listed.
    """

    action: RuleAction
    peers: tuple[ClusterPeer, ...] | None
    ports: tuple[PolicyPort, ...] | None
    index: int = 0
    name: str = ""


@dataclass(frozen=True, slots=True)
class ClusterNetworkPolicy:
    name: str
    tier: Tier
    priority: int  # 0-1000, lower first; ties are broken by name
    # The pods it applies to (a SelectorPeer whose namespace selector is never None).
    # None: the subject could not be read, so it applies to every pod (fail closed).
    subject: SelectorPeer | None
    ingress: tuple[ClusterRule, ...] = ()
    egress: tuple[ClusterRule, ...] = ()
    problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def key(self) -> str:
        """Its name: cluster-scoped, so never mistaken for a ``namespace/name``."""
        return self.name

    @property
    def order(self) -> tuple[int, str]:
        """Where it stands in its tier."""
        return (self.priority, self.name)

    def rules(self, direction: Direction) -> tuple[ClusterRule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress
