"""Decide one connection straight from the NetworkPolicy semantics.

This evaluates the API's meaning directly, pair by pair, without the compiler's
grouping and chain layout, so it is both a user feature (``netpol-agent explain``) and
the oracle the lab's property tests compare real traffic against.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from agent.model.objects import (
    Direction,
    IPAddress,
    IPBlock,
    NetworkPolicy,
    Pod,
    PolicyPort,
    PolicyRule,
    Protocol,
    SelectorPeer,
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
class DirectionVerdict:
    direction: Direction
    pod: str
    isolated: bool
    allowed: bool
    reason: str
    selecting: tuple[str, ...] = ()
    allowed_by: tuple[str, ...] = ()


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


def port_allows(entry: PolicyPort, protocol: Protocol, port: int, destination: Pod | None) -> bool:
    if entry.protocol is not protocol:
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


def rule_allows(
    state: ClusterState,
    policy: NetworkPolicy,
    rule: PolicyRule,
    other: Endpoint,
    protocol: Protocol,
    port: int,
    destination: Endpoint,
) -> bool:
    if rule.peers is not None and not any(
        peer_allows(state, peer, policy.namespace, other) for peer in rule.peers
    ):
        return False
    if rule.ports is None:
        return True
    return any(port_allows(entry, protocol, port, destination.pod) for entry in rule.ports)


def _decide(
    state: ClusterState,
    direction: Direction,
    pod: Pod,
    other: Endpoint,
    protocol: Protocol,
    port: int,
    destination: Endpoint,
) -> DirectionVerdict:
    selecting = state.policies_selecting(pod, direction)
    names = tuple(policy.key for policy in selecting)
    is_quarantined = quarantined(state, pod)
    if not selecting and not is_quarantined:
        return DirectionVerdict(
            direction, pod.key, False, True, f"not isolated for {direction.short}"
        )
    node_addresses = state.node_addresses(pod.node_name) if pod.node_name else ()
    if other.address in node_addresses:
        reason = "from the pod's own node" if direction is Direction.INGRESS else "to own node"
        return DirectionVerdict(direction, pod.key, True, True, f"always allowed: {reason}", names)
    if other.pod is not None and other.pod.key == pod.key:
        return DirectionVerdict(
            direction, pod.key, True, True, "a pod always reaches itself", names
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
    allowed_by = tuple(
        f"{policy.key} {direction.short}[{rule.index}]"
        for policy in selecting
        for rule in policy.rules(direction)
        if rule_allows(state, policy, rule, other, protocol, port, destination)
    )
    if allowed_by:
        return DirectionVerdict(
            direction, pod.key, True, True, "allowed by a rule", names, allowed_by
        )
    return DirectionVerdict(
        direction, pod.key, True, False, "isolated and no rule allows it", names
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
        _decide(state, Direction.EGRESS, source.pod, destination, protocol, port, destination)
        if source.pod is not None
        else None
    )
    ingress = (
        _decide(state, Direction.INGRESS, destination.pod, source, protocol, port, destination)
        if destination.pod is not None
        else None
    )
    return Verdict(source, destination, protocol, port, egress, ingress)
