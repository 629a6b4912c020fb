"""Judge established flows against compiled rules: which tracked connections would the
rules now refuse if they started again?

Pure: a :class:`Flow` is what conntrack knows about a connection, reduced to what the
filter table saw of its first packet; :class:`FlowJudge` walks that packet through the
compiled :class:`Ruleset` with the same walker the property tests trust
(``agent.compiler.walk``), from ``FORWARD``'s jump with ctstate NEW. The agent's chains
decide ingress of the destination (when it is a local pod), egress of the source (when it
is a local pod), the node's own traffic and IPv6 neighbour discovery, exactly as for a new
connection. Replies are never judged on their own: a flow is judged by its first packet.

Which flows are ours to judge: only those whose source or (post-DNAT) destination is an
address of a pod on this node. A flow between two addresses that are not local pods is
never touched, whatever the rules say about it.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from agent.compiler.walk import Packet, walk
from agent.model.objects import IPAddress
from agent.rules import Ruleset

# IP protocol numbers conntrack reports, by the name iptables rules use.
PROTOCOL_NAMES: Mapping[int, str] = {
    1: "icmp",
    6: "tcp",
    17: "udp",
    58: "ipv6-icmp",
    132: "sctp",
}
_PORTED = frozenset(("tcp", "udp", "sctp"))
_ICMP = frozenset(("icmp", "ipv6-icmp"))


@dataclass(frozen=True, slots=True)
class Flow:
    """One tracked connection, as the filter table saw its first packet.

    ``source`` and ``destination`` are the addresses FORWARD judged: the original
    source (SNAT happens after the filter table) and the destination after DNAT (a
    Service's backend), i.e. the source of conntrack's reply tuple. ``dport`` is the
    destination port after DNAT likewise. ``icmp_type`` is set for ICMP flows.
    """

    source: IPAddress
    destination: IPAddress
    protocol: int
    dport: int | None = None
    icmp_type: int | None = None

    @property
    def protocol_name(self) -> str:
        return PROTOCOL_NAMES.get(self.protocol, str(self.protocol))

    def packet(self) -> Packet:
        """The flow's first packet, as a new connection."""
        name = self.protocol_name
        return Packet(
            self.source,
            self.destination,
            name,
            dport=self.dport if name in _PORTED else None,
            icmp_type=self.icmp_type if name in _ICMP else None,
            ctstate="NEW",
        )

    def describe(self) -> str:
        """``tcp 10.0.0.1 -> 10.0.0.2:80`` (IPv6 addresses in brackets)."""

        def host(address: IPAddress) -> str:
            return f"[{address}]" if address.version == 6 else str(address)

        port = f":{self.dport}" if self.dport is not None else ""
        return f"{self.protocol_name} {host(self.source)} -> {host(self.destination)}{port}"


class Verdict(enum.Enum):
    ALLOWED = "allowed"  # the rules would admit it as a new connection: keep it
    DENIED = "denied"  # the rules would drop it now: revoke it
    NOT_OURS = "not ours"  # neither end is a local pod: never touched


def flow_key(flow: Flow) -> tuple[IPAddress, IPAddress, int, int | None, int | None]:
    """What the rules can tell apart: the source port never matters to them."""
    return (flow.source, flow.destination, flow.protocol, flow.dport, flow.icmp_type)


class FlowJudge:
    """Judges flows of one family against that family's compiled ruleset.

    ``local_pods`` are the addresses of the pods this node enforces for (or the part of
    them whose flows are to be judged: only flows with one of them at an end are); ``node_addresses``
    are the node's own (what ``addrtype LOCAL`` matches). Verdicts are memoised by what
    the rules can distinguish (source, destination, protocol, port), so a table of many
    flows between the same pods costs one walk per distinct pair and port.
    """

    def __init__(
        self,
        ruleset: Ruleset,
        local_pods: Iterable[IPAddress],
        node_addresses: Iterable[IPAddress] = (),
    ) -> None:
        self.ruleset = ruleset
        version = ruleset.family.version
        self.local_pods = frozenset(a for a in local_pods if a.version == version)
        self.node_addresses = frozenset(a for a in node_addresses if a.version == version)
        self._memo: dict[tuple[IPAddress, IPAddress, int, int | None, int | None], Verdict] = {}
        self.walks = 0  # distinct packets walked (the rest came from the memo)

    def ours(self, flow: Flow) -> bool:
        return flow.source in self.local_pods or flow.destination in self.local_pods

    def judge(self, flow: Flow) -> Verdict:
        if flow.source.version != self.ruleset.family.version or not self.ours(flow):
            return Verdict.NOT_OURS
        key = flow_key(flow)
        verdict = self._memo.get(key)
        if verdict is None:
            self.walks += 1
            outcome = walk(self.ruleset, flow.packet(), self.node_addresses)
            verdict = Verdict.ALLOWED if outcome.accepted else Verdict.DENIED
            self._memo[key] = verdict
        return verdict


def affected_addresses(ruleset: Ruleset, changed: Collection[str]) -> frozenset[IPAddress] | None:
    """The local pod addresses whose verdicts a change of the chains ``changed`` (created
    or rewritten in ``ruleset``) can alter; None when it can be any (the entry chain).

    A pod's verdicts come from its pod chain and everything that chain reaches, so a pod
    is affected when its chain reaches a changed chain, or when the dispatch chain that
    sends its address to its chain was rewritten. A pod that left a dispatch tree is no
    longer isolated that way: nothing of it can be newly denied there.
    """
    chains = ruleset.chains
    if ruleset.entry_chain in changed:
        return None
    prefix = ruleset.entry_chain.removesuffix("FORWARD")
    parents: dict[str, list[str]] = {}
    for chain in chains.values():
        for target in chain.targets:
            parents.setdefault(target, []).append(chain.name)
    tainted: set[str] = set()
    stack = [name for name in changed if name in chains]
    while stack:
        name = stack.pop()
        if name not in tainted:
            tainted.add(name)
            stack.extend(parents.get(name, ()))
    pod_chains = (prefix + "I-", prefix + "E-")
    affected: set[IPAddress] = set()
    for root, ingress in ((prefix + "INGRESS", True), (prefix + "EGRESS", False)):
        if root not in tainted:
            continue  # nothing below this dispatch tree changed
        todo, seen = [root], set()
        while todo:
            name = todo.pop()
            if name in seen or name not in tainted:
                continue
            seen.add(name)
            for rule in chains[name].rules:
                target = rule.target
                if target.startswith(pod_chains):
                    if target in tainted or name in changed:
                        own_end = rule.destination if ingress else rule.source
                        if own_end is not None:
                            affected.update(_hosts(own_end))
                elif target in chains:
                    todo.append(target)
    affected.update(_known_addresses_changed(ruleset, changed, prefix))
    return frozenset(affected)


def _known_addresses_changed(
    ruleset: Ruleset, changed: Collection[str], prefix: str
) -> set[IPAddress]:
    """The addresses of rewritten chains of the unknown-address trees: a pod that became
    known there may hold flows a pass revoked while its address was unknown, and only its
    own chains may be unchanged (no policy selects it)."""
    chains = ruleset.chains
    roots = [prefix + "UNKNOWN-EGRESS", prefix + "UNKNOWN-INGRESS"]
    todo, seen = [name for name in roots if name in chains], set()
    found: set[IPAddress] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for rule in chains[name].rules:
            if rule.goto and rule.target in chains:
                todo.append(rule.target)
            elif rule.target == "RETURN" and name in changed:
                own_end = rule.source or rule.destination  # the one the tree matches
                if own_end is not None:
                    found.update(_hosts(own_end))
    return found


def _hosts(text: str) -> tuple[IPAddress, ...]:
    network = ipaddress.ip_network(text, strict=False)
    if network.num_addresses == 1:
        return (network.network_address,)
    return tuple(network)  # a dispatch leaf holds one pod address; never large


__all__ = ["PROTOCOL_NAMES", "Flow", "FlowJudge", "Verdict", "affected_addresses", "flow_key"]
