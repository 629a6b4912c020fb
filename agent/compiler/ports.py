"""Port matching: a rule's ``ports`` turned into iptables port matches."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.model.objects import NetworkPolicy, Pod, PolicyPort, Protocol
from agent.rules import Match

MULTIPORT_LIMIT = 15


@dataclass(frozen=True, slots=True)
class PortMatch:
    """``protocol`` None: any protocol. ``ranges`` None: every port of the protocol."""

    protocol: Protocol | None
    ranges: tuple[tuple[int, int], ...] | None = None

    def rule_fields(self) -> list[tuple[str | None, tuple[Match, ...], str]]:
        """(protocol, matches, description) per rule this match needs (multiport chunks)."""
        if self.protocol is None:
            return [(None, (), "all ports")]
        name = self.protocol.iptables_name
        if self.ranges is None:
            return [(name, (), f"all {self.protocol.value}")]
        result: list[tuple[str | None, tuple[Match, ...], str]] = []
        for chunk in _multiport_chunks(self.ranges):
            text = ",".join(_range_text(r) for r in chunk)
            if len(chunk) == 1:
                match = Match(name, (("--dport", text),))
            else:
                match = Match("multiport", (("--dports", text),))
            result.append((name, (match,), f"{text}/{self.protocol.value}"))
        return result


def _range_text(port_range: tuple[int, int]) -> str:
    first, last = port_range
    return str(first) if first == last else f"{first}:{last}"


def _multiport_chunks(
    ranges: Sequence[tuple[int, int]],
) -> list[list[tuple[int, int]]]:
    chunks: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    weight = 0
    for port_range in ranges:
        cost = 1 if port_range[0] == port_range[1] else 2
        if weight + cost > MULTIPORT_LIMIT:
            chunks.append(current)
            current, weight = [], 0
        current.append(port_range)
        weight += cost
    if current:
        chunks.append(current)
    return chunks


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)


@dataclass(frozen=True, slots=True)
class NamedPort:
    protocol: Protocol
    name: str


@dataclass(frozen=True, slots=True)
class RulePorts:
    """A rule's ports split into what renders directly and egress named ports."""

    matches: tuple[PortMatch, ...]
    named: tuple[NamedPort, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.matches and not self.named


def resolve_rule_ports(ports: tuple[PolicyPort, ...] | None, named_target: Pod | None) -> RulePorts:
    """Turn a rule's ``ports`` into port matches.

    Named ports resolve against ``named_target`` (the destination pod, for ingress);
    with ``named_target`` None (egress) they are returned unresolved, since each
    destination pod may map the name to a different number.
    """
    if ports is None:
        return RulePorts((PortMatch(None),))
    whole: set[Protocol] = set()
    ranges: dict[Protocol, list[tuple[int, int]]] = defaultdict(list)
    named: list[NamedPort] = []
    for entry in ports:
        if entry.port is None:
            whole.add(entry.protocol)
        elif isinstance(entry.port, str):
            if named_target is None:
                named.append(NamedPort(entry.protocol, entry.port))
                continue
            number = named_target.resolve_named_port(entry.port, entry.protocol)
            if number is not None:
                ranges[entry.protocol].append((number, number))
        else:
            last = entry.end_port if entry.end_port is not None else entry.port
            ranges[entry.protocol].append((entry.port, last))
    matches: list[PortMatch] = []
    for protocol in Protocol:
        if protocol in whole:
            matches.append(PortMatch(protocol))
        elif ranges[protocol]:
            matches.append(PortMatch(protocol, merge_ranges(ranges[protocol])))
    # A named port adds nothing to a protocol that is already open on every port.
    remaining = tuple(
        sorted(
            {n for n in named if n.protocol not in whole},
            key=lambda n: (n.protocol.value, n.name),
        )
    )
    return RulePorts(tuple(matches), remaining)


def named_port_signature(policy: NetworkPolicy, pod: Pod) -> str:
    """What a policy's ingress named ports resolve to on ``pod``.

    Pods with the same signature can share the policy's ingress chain.
    """
    parts = []
    for rule in policy.ingress:
        for entry in rule.ports or ():
            if isinstance(entry.port, str):
                number = pod.resolve_named_port(entry.port, entry.protocol)
                parts.append(f"{entry.protocol.value}:{entry.port}={number}")
    return ",".join(sorted(set(parts)))
