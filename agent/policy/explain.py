"""Decide one connection straight from the NetworkPolicy semantics.

This evaluates the API's meaning directly, pair by pair, without the compiler's
grouping and chain layout, so it is both a user feature (``netpol-agent explain``) and
the oracle the lab's property tests compare real traffic against.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from agent.model.objects import (
    ClusterNetworkPolicy,
    ClusterPeer,
    ClusterRule,
    Direction,
    IPAddress,
    IPBlock,
    NetworkPolicy,
    NodePeer,
    Pod,
    PolicyPort,
    PolicyRule,
    Protocol,
    RuleAction,
    SelectorPeer,
    Tier,
)
from agent.policy.state import ClusterState
from agent.policy.view import quarantined


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One end of a connection: a pod, or a bare address outside the pod network."""

    address: IPAddress
    pod: Pod | None = None

    def describe(self) -> str:
        return f"{self.pod.key} ({self.address})" if self.pod else str(self.address)


@dataclass(frozen=True, slots=True)
class ClusterRuleRef:
    """The ClusterNetworkPolicy rule that decided (or passed) a direction."""

    tier: Tier
    policy: str
    priority: int
    index: int  # of the rule in its direction's list
    name: str  # the rule's own name, "" when it has none
    action: RuleAction

    def describe(self, direction: Direction) -> str:
        named = f" ({self.name})" if self.name else ""
        return (
            f"{self.tier.value} tier: ClusterNetworkPolicy {self.policy} priority "
            f"{self.priority} {direction.short}[{self.index}]{named} {self.action.value}"
        )


# Which tier decided a direction: "Admin" or "Baseline" (a ClusterNetworkPolicy rule),
# "NetworkPolicy" (the pod is isolated by one), or "" (nothing decided: allowed by
# default, or by an exemption that comes before every tier).
NETWORK_POLICY_TIER = "NetworkPolicy"


@dataclass(frozen=True, slots=True)
class DirectionVerdict:
    direction: Direction
    pod: str
    isolated: bool  # by a NetworkPolicy (or quarantine)
    allowed: bool
    reason: str
    selecting: tuple[str, ...] = ()
    allowed_by: tuple[str, ...] = ()
    tier: str = ""
    decided_by: ClusterRuleRef | None = None
    # Admin rules whose Pass sent this direction on to NetworkPolicy (at most one), then
    # Baseline rules whose Pass sent it on to the default.
    passed_by: tuple[ClusterRuleRef, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    source: Endpoint
    destination: Endpoint
    protocol: Protocol
    port: int
    egress: DirectionVerdict | None
    ingress: DirectionVerdict | None

    @property
    def allowed(self) -> bool:
        return all(v.allowed for v in (self.egress, self.ingress) if v is not None)


class EndpointError(ValueError):
    pass


def resolve_endpoint(state: ClusterState, text: str, version: int) -> Endpoint:
    """``ns/pod`` or an IP address; a pod's address is taken from the given family."""
    if "/" in text and not _looks_like_ip(text):
        pod = state.pods.get(text)
        if pod is None:
            raise EndpointError(f"no pod {text}")
        if not pod.is_selectable:
            raise EndpointError(
                f"pod {text} takes no part in policy (hostNetwork, no IP, or finished)"
            )
        addresses = pod.ips_of(version)
        if not addresses:
            raise EndpointError(f"pod {text} has no IPv{version} address")
        return Endpoint(addresses[0], pod)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise EndpointError(f"{text!r} is neither ns/pod nor an IP address") from None
    return Endpoint(address, state.pod_by_ip.get(address))


def _looks_like_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def port_allows(
    entry: PolicyPort, protocol: Protocol | None, port: int | None, destination: Pod | None
) -> bool:
    """``protocol`` None: a packet without ports (ICMP...), which no port entry matches."""
    if protocol is None or port is None or entry.protocol is not protocol:
        return False
    if entry.port is None:
        return True
    if isinstance(entry.port, str):
        # Named ports resolve against the destination pod only; a bare address has none.
        if destination is None:
            return False
        return destination.resolve_named_port(entry.port, protocol) == port
    last = entry.end_port if entry.end_port is not None else entry.port
    return entry.port <= port <= last


def peer_allows(
    state: ClusterState, peer: SelectorPeer | IPBlock, policy_namespace: str, other: Endpoint
) -> bool:
    if isinstance(peer, IPBlock):
        return peer.contains(other.address)
    return other.pod is not None and state.peer_matches_pod(peer, policy_namespace, other.pod)


def cluster_peer_matches(state: ClusterState, peer: ClusterPeer, other: Endpoint) -> bool:
    if isinstance(peer, IPBlock):
        return peer.contains(other.address)
    if isinstance(peer, NodePeer):
        return other.address in state.node_peer_addresses(peer)
    # A cluster peer's namespace selector is never None, so no namespace is implied.
    return other.pod is not None and state.peer_matches_pod(peer, "", other.pod)


def cluster_rule_matches(
    state: ClusterState,
    rule: ClusterRule,
    other: Endpoint,
    protocol: Protocol | None,
    port: int | None,
    destination: Endpoint,
) -> bool:
    return _peers_and_ports_match(
        rule.peers is None or any(cluster_peer_matches(state, peer, other) for peer in rule.peers),
        rule.ports,
        protocol,
        port,
        destination,
    )


def _tier_decision(
    state: ClusterState,
    tier: Tier,
    direction: Direction,
    pod: Pod,
    other: Endpoint,
    protocol: Protocol | None,
    port: int | None,
    destination: Endpoint,
) -> ClusterRuleRef | None:
    """The first rule of ``tier`` that matches, in evaluation order (Accept, Deny or
    Pass); None when none does."""
    policies: tuple[ClusterNetworkPolicy, ...] = state.cluster_policies_selecting(
        pod, direction, tier
    )
    for policy in policies:
        for rule in policy.rules(direction):
            if cluster_rule_matches(state, rule, other, protocol, port, destination):
                return ClusterRuleRef(
                    tier, policy.name, policy.priority, rule.index, rule.name, rule.action
                )
    return None


def rule_allows(
    state: ClusterState,
    policy: NetworkPolicy,
    rule: PolicyRule,
    other: Endpoint,
    protocol: Protocol | None,
    port: int | None,
    destination: Endpoint,
) -> bool:
    return _peers_and_ports_match(
        rule.peers is None
        or any(peer_allows(state, peer, policy.namespace, other) for peer in rule.peers),
        rule.ports,
        protocol,
        port,
        destination,
    )


def _peers_and_ports_match(
    peer_matches: bool,
    ports: tuple[PolicyPort, ...] | None,
    protocol: Protocol | None,
    port: int | None,
    destination: Endpoint,
) -> bool:
    """A rule of either kind matches: a peer matched (or it names none), and a port
    entry does (or it names none)."""
    if not peer_matches:
        return False
    if ports is None:
        return True
    return any(port_allows(entry, protocol, port, destination.pod) for entry in ports)


def decide(
    state: ClusterState,
    direction: Direction,
    pod: Pod,
    other: Endpoint,
    protocol: Protocol | None,
    port: int | None,
    destination: Endpoint,
) -> DirectionVerdict:
    """The verdict of ``pod``'s side (``direction``) on a new connection with ``other``;
    ``protocol`` and ``port`` None for a packet without ports."""
    selecting = state.policies_selecting(pod, direction)
    names = tuple(policy.key for policy in selecting)
    is_quarantined = quarantined(state, pod)
    node_addresses = state.node_addresses(pod.node_name) if pod.node_name else ()
    if not selecting and not is_quarantined and not _in_a_tier(state, pod, direction):
        return DirectionVerdict(
            direction, pod.key, False, True, f"not isolated for {direction.short}"
        )
    # Exemptions come before every tier: they are decided before any policy is asked.
    if other.address in node_addresses:
        reason = "from the pod's own node" if direction is Direction.INGRESS else "to own node"
        return DirectionVerdict(
            direction,
            pod.key,
            bool(selecting) or is_quarantined,
            True,
            f"always allowed: {reason}",
            names,
        )
    if other.pod is not None and other.pod.key == pod.key:
        return DirectionVerdict(
            direction,
            pod.key,
            bool(selecting) or is_quarantined,
            True,
            "a pod always reaches itself",
            names,
        )
    if is_quarantined:
        return DirectionVerdict(
            direction,
            pod.key,
            True,
            False,
            "quarantined: its labels, spec or namespace labels cannot be read",
            names,
        )
    passed: list[ClusterRuleRef] = []
    admin = _tier_decision(state, Tier.ADMIN, direction, pod, other, protocol, port, destination)
    if admin is not None and admin.action is not RuleAction.PASS:
        return _cluster_verdict(direction, pod, admin, bool(selecting), names, ())
    if admin is not None:
        passed.append(admin)
    if selecting:
        allowed_by = tuple(
            f"{policy.key} {direction.short}[{rule.index}]"
            for policy in selecting
            for rule in policy.rules(direction)
            if rule_allows(state, policy, rule, other, protocol, port, destination)
        )
        if allowed_by:
            return DirectionVerdict(
                direction,
                pod.key,
                True,
                True,
                "allowed by a rule",
                names,
                allowed_by,
                NETWORK_POLICY_TIER,
                None,
                tuple(passed),
            )
        return DirectionVerdict(
            direction,
            pod.key,
            True,
            False,
            "isolated and no rule allows it",
            names,
            (),
            NETWORK_POLICY_TIER,
            None,
            tuple(passed),
        )
    baseline = _tier_decision(
        state, Tier.BASELINE, direction, pod, other, protocol, port, destination
    )
    if baseline is not None and baseline.action is not RuleAction.PASS:
        return _cluster_verdict(direction, pod, baseline, False, names, tuple(passed))
    if baseline is not None:
        passed.append(baseline)
    reason = f"not isolated for {direction.short}"
    if passed:
        reason += ": passed on by " + "; then ".join(p.describe(direction) for p in passed)
    return DirectionVerdict(
        direction, pod.key, False, True, reason, (), (), "", None, tuple(passed)
    )


def _in_a_tier(state: ClusterState, pod: Pod, direction: Direction) -> bool:
    return any(state.cluster_policies_selecting(pod, direction, tier) for tier in Tier)


def _cluster_verdict(
    direction: Direction,
    pod: Pod,
    decision: ClusterRuleRef,
    isolated: bool,
    names: tuple[str, ...],
    passed: tuple[ClusterRuleRef, ...],
) -> DirectionVerdict:
    allowed = decision.action is RuleAction.ACCEPT
    verb = "accepted" if allowed else "denied"
    return DirectionVerdict(
        direction,
        pod.key,
        isolated,
        allowed,
        f"{verb} by {decision.describe(direction)}",
        names,
        (),
        decision.tier.value,
        decision,
        passed,
    )


def explain(
    state: ClusterState,
    source: Endpoint,
    destination: Endpoint,
    protocol: Protocol,
    port: int,
) -> Verdict:
    """The verdict for a new connection from ``source`` to ``destination``."""
    egress = (
        decide(state, Direction.EGRESS, source.pod, destination, protocol, port, destination)
        if source.pod is not None
        else None
    )
    ingress = (
        decide(state, Direction.INGRESS, destination.pod, source, protocol, port, destination)
        if destination.pod is not None
        else None
    )
    return Verdict(source, destination, protocol, port, egress, ingress)
