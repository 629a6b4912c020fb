"""Compile cluster state into the filter-table chains for one node and one IP family.

Layout (``P`` is the configurable chain prefix)::

    FORWARD -> P-FORWARD   established/related RETURN, IPv6 ND RETURN, node exemptions,
                           clear mark, -j P-EGRESS, clear mark, -j P-INGRESS, clear mark
    P-EGRESS   dispatch by source address      -> -g P-E-<pod>   (egress-isolated local pods)
    P-INGRESS  dispatch by destination address -> -g P-I-<pod>   (ingress-isolated local pods)
    P-E-/P-I-<pod>   self RETURN; per selecting policy: -j P-PE/PI-<policy>, mark? RETURN;
                     DROP
    P-PI/PE-<policy> one block of rules per policy rule: [port match] -j <peer group> or
                     [port match] [-s cidr] -g P-ALLOW; mark? RETURN between rules
    P-G-<group>  pod addresses of a selector peer   -> -g P-ALLOW
    P-B-<block>  ipBlock with except: RETURN per except, then the cidr -> -g P-ALLOW
    P-ALLOW      sets the allow mark bit

Allow decisions travel as one mark bit (masked, configurable) because a peer group is a
shared chain that cannot RETURN through two levels. Policy chains are shared by every pod
the policy selects and peer groups by every rule naming the same peer, so the rule count
grows with pods plus policies, not with their product. Everything is sorted: the same
state always gives the same chains, byte for byte.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agent.compiler.ruleset import Chain, Family, Match, Rule, Ruleset
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

DEFAULT_CHAIN_PREFIX = "NPA"
DEFAULT_MARK = 0x1000
MAX_PREFIX = 8
MULTIPORT_LIMIT = 15
# Neighbour discovery: router solicitation/advertisement, neighbour solicitation/
# advertisement, redirect. Bridged with br_netfilter, these cross FORWARD.
NEIGHBOUR_DISCOVERY_TYPES = (133, 134, 135, 136, 137)


@dataclass(frozen=True, slots=True)
class CompilerConfig:
    chain_prefix: str = DEFAULT_CHAIN_PREFIX
    allow_mark: int = DEFAULT_MARK
    reject: bool = False

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

    def name(self, suffix: str) -> str:
        return f"{self.chain_prefix}-{suffix}"

    def hashed_name(self, kind: str, key: str) -> str:
        length = min(16, 28 - len(self.chain_prefix) - len(kind) - 2)
        digest = base64.b32encode(hashlib.sha256(key.encode()).digest()).decode()
        return f"{self.chain_prefix}-{kind}-{digest[:length]}"

    @property
    def entry_chain(self) -> str:
        return self.name("FORWARD")

    @property
    def mark_text(self) -> str:
        return f"{self.allow_mark:#x}/{self.allow_mark:#x}"


@dataclass(frozen=True, slots=True)
class NodeContext:
    name: str
    addresses: tuple[IPAddress, ...] = ()


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


def _host(address: IPAddress) -> str:
    return f"{address}/{32 if address.version == 4 else 128}"


@dataclass
class _Builder:
    """Accumulates chains for one node and family; memoizes shared chains."""

    state: ClusterState
    node: NodeContext
    family: Family
    config: CompilerConfig
    chains: dict[str, Chain] = field(default_factory=dict)
    empty_policy_chains: set[str] = field(default_factory=set)

    @property
    def version(self) -> int:
        return self.family.version

    def add(self, name: str, rules: Iterable[Rule]) -> str:
        if name not in self.chains:
            self.chains[name] = Chain(name, tuple(rules))
        return name

    # --- verdict helpers ---------------------------------------------------------

    @property
    def allow_chain(self) -> str:
        return self.config.name("ALLOW")

    def _clear_mark(self, comment: str) -> Rule:
        return Rule(
            "MARK",
            comment,
            target_options=(("--set-xmark", f"0x0/{self.config.allow_mark:#x}"),),
        )

    def _if_allowed_return(self, comment: str) -> Rule:
        return Rule(
            "RETURN", comment, matches=(Match("mark", (("--mark", self.config.mark_text),)),)
        )

    def _deny(self, comment: str) -> Rule:
        if not self.config.reject:
            return Rule("DROP", comment)
        reject_with = "icmp-port-unreachable" if self.version == 4 else "icmp6-port-unreachable"
        return Rule("REJECT", comment, target_options=(("--reject-with", reject_with),))

    # --- peer groups -----------------------------------------------------------------

    def _match_address(self, direction: Direction, address: str, rule: Rule) -> Rule:
        # Peers are judged by where a packet comes from (ingress) or goes to (egress).
        if direction is Direction.INGRESS:
            return dataclasses.replace(rule, source=address)
        return dataclasses.replace(rule, destination=address)

    def pod_group(self, direction: Direction, key: str, pods: Iterable[Pod]) -> str:
        name = self.config.hashed_name("G", f"{self.family.value}|{direction.value}|{key}")
        if name in self.chains:
            return name
        rules = [
            self._match_address(
                direction,
                _host(ip),
                Rule(self.allow_chain, f"peer pod {pod.key}", goto=True, pod=pod.key),
            )
            for pod in pods
            for ip in pod.ips_of(self.version)
        ]
        return self.add(name, rules)

    def block_group(self, direction: Direction, block: IPBlock) -> str:
        key = f"{block.cidr}-{','.join(map(str, block.excepts))}"
        name = self.config.hashed_name("B", f"{self.family.value}|{direction.value}|{key}")
        if name in self.chains:
            return name
        description = f"ipBlock {block.cidr} except {','.join(map(str, block.excepts))}"
        rules = [
            self._match_address(direction, str(excluded), Rule("RETURN", description))
            for excluded in block.excepts
        ]
        rules.append(
            self._match_address(
                direction, str(block.cidr), Rule(self.allow_chain, description, goto=True)
            )
        )
        return self.add(name, rules)

    def selector_key(self, peer: SelectorPeer, policy_namespace: str) -> str:
        scope = (
            f"ns={policy_namespace}"
            if peer.namespace_selector is None
            else f"nssel={peer.namespace_selector.canonical()}"
        )
        pods = "*" if peer.pod_selector is None else peer.pod_selector.canonical()
        return f"{scope} pods={pods}"

    # --- policies --------------------------------------------------------------------

    def policy_chain(self, policy: NetworkPolicy, direction: Direction, target: Pod) -> str | None:
        """The policy's chain for ``target``, or None when it allows nothing there."""
        signature = named_port_signature(policy, target) if direction is Direction.INGRESS else ""
        kind = "PI" if direction is Direction.INGRESS else "PE"
        name = self.config.hashed_name(kind, f"{self.family.value}|{policy.key}|{signature}")
        if name in self.chains:
            return name
        if name in self.empty_policy_chains:
            return None
        blocks: list[list[Rule]] = []
        for rule in policy.rules(direction):
            comment = f"{policy.key} {direction.short}[{rule.index}]"
            named_target = target if direction is Direction.INGRESS else None
            blocks.append(self._rule_block(policy, direction, rule, named_target, comment))
        blocks = [block for block in blocks if block]
        rules: list[Rule] = []
        for i, block in enumerate(blocks):
            rules.extend(block)
            jumps_to_groups = any(not r.goto for r in block)
            if jumps_to_groups and i < len(blocks) - 1:
                rules.append(
                    dataclasses.replace(
                        self._if_allowed_return(f"{policy.key} {direction.short}: allowed"),
                        policy=policy.key,
                    )
                )
        if not rules:
            self.empty_policy_chains.add(name)
            return None
        return self.add(name, rules)

    def _rule_block(
        self,
        policy: NetworkPolicy,
        direction: Direction,
        rule: PolicyRule,
        named_target: Pod | None,
        comment: str,
    ) -> list[Rule]:
        ports = resolve_rule_ports(rule.ports, named_target)
        if ports.is_empty:
            return []  # every port was a name this pod does not serve: allows nothing
        port_fields = [f for match in ports.matches for f in match.rule_fields()]
        out: list[Rule] = []

        def emit(address: str | None, target: str, goto: bool) -> None:
            for protocol, matches, _ in port_fields:
                base = Rule(
                    target,
                    comment,
                    protocol=protocol,
                    matches=matches,
                    goto=goto,
                    policy=policy.key,
                )
                out.append(
                    base if address is None else self._match_address(direction, address, base)
                )

        if not port_fields:
            pass  # only egress named ports: handled per destination pod below
        elif rule.peers is None:
            emit(None, self.allow_chain, goto=True)
        else:
            for peer in rule.peers:
                if isinstance(peer, IPBlock):
                    if peer.cidr.version != self.version:
                        continue
                    if peer.excepts:
                        emit(None, self.block_group(direction, peer), goto=False)
                    else:
                        emit(str(peer.cidr), self.allow_chain, goto=True)
                else:
                    key = self.selector_key(peer, policy.namespace)
                    members = self.state.peer_pods(peer, policy.namespace)
                    emit(None, self.pod_group(direction, key, members), goto=False)
        out.extend(self._named_egress(policy, rule, ports.named, comment))
        return out

    def _named_egress(
        self,
        policy: NetworkPolicy,
        rule: PolicyRule,
        named: tuple[NamedPort, ...],
        comment: str,
    ) -> list[Rule]:
        """Egress to named ports: each destination pod resolves the name itself."""
        if not named:
            return []
        candidates: list[tuple[str, tuple[Pod, ...]]] = []
        if rule.peers is None:
            candidates.append(("all-pods", self.state.selectable_pods))
        else:
            for peer in rule.peers:
                if isinstance(peer, IPBlock):
                    if peer.cidr.version != self.version:
                        continue
                    # Only pods inside the block have named ports; other addresses
                    # never match one.
                    inside = tuple(
                        pod
                        for pod in self.state.selectable_pods
                        if any(peer.contains(ip) for ip in pod.ips_of(self.version))
                    )
                    key = f"block={peer.cidr}-{','.join(map(str, peer.excepts))}"
                    candidates.append((key, inside))
                else:
                    key = self.selector_key(peer, policy.namespace)
                    candidates.append((key, self.state.peer_pods(peer, policy.namespace)))
        out: list[Rule] = []
        for port in named:
            for key, pods in candidates:
                by_number: dict[int, list[Pod]] = defaultdict(list)
                for pod in pods:
                    number = pod.resolve_named_port(port.name, port.protocol)
                    if number is not None and pod.ips_of(self.version):
                        by_number[number].append(pod)
                for number in sorted(by_number):
                    group = self.pod_group(
                        Direction.EGRESS,
                        f"{key} port={port.protocol.value}:{port.name}={number}",
                        by_number[number],
                    )
                    out.append(
                        Rule(
                            group,
                            f"{comment} port {port.name}={number}/{port.protocol.value}",
                            protocol=port.protocol.iptables_name,
                            matches=(
                                Match(port.protocol.iptables_name, (("--dport", str(number)),)),
                            ),
                            policy=policy.key,
                        )
                    )
        return out

    # --- pods and dispatch -------------------------------------------------------------

    def pod_chain(self, pod: Pod, direction: Direction, policies: Sequence[NetworkPolicy]) -> str:
        kind = "I" if direction is Direction.INGRESS else "E"
        name = self.config.hashed_name(kind, f"{self.family.value}|{pod.key}")
        rules: list[Rule] = []
        for ip in pod.ips_of(self.version):
            # Hairpin through a Service back to itself: a pod is never cut off from itself.
            rules.append(
                self._match_address(
                    direction, _host(ip), Rule("RETURN", f"{pod.key}: itself", pod=pod.key)
                )
            )
        for policy in policies:
            policy_chain = self.policy_chain(policy, direction, pod)
            if policy_chain is None:
                continue  # it isolates the pod and allows nothing
            rules.append(
                Rule(
                    policy_chain,
                    f"{pod.key}: policy {policy.key}",
                    policy=policy.key,
                    pod=pod.key,
                )
            )
            rules.append(
                dataclasses.replace(
                    self._if_allowed_return(f"{pod.key}: allowed by {policy.key}"),
                    policy=policy.key,
                    pod=pod.key,
                )
            )
        rules.append(
            dataclasses.replace(
                self._deny(f"{pod.key}: default deny {direction.short}"), pod=pod.key
            )
        )
        return self.add(name, rules)

    def build(self) -> Ruleset:
        config = self.config
        self.add(
            self.allow_chain,
            [
                Rule(
                    "MARK",
                    "netpol-agent: allowed",
                    target_options=(("--set-xmark", config.mark_text),),
                )
            ],
        )
        dispatch: dict[Direction, list[Rule]] = {Direction.INGRESS: [], Direction.EGRESS: []}
        for pod in self.state.local_pods(self.node.name):
            addresses = pod.ips_of(self.version)
            if not addresses:
                continue
            for direction in (Direction.EGRESS, Direction.INGRESS):
                policies = self.state.policies_selecting(pod, direction)
                if not policies:
                    continue
                chain = self.pod_chain(pod, direction, policies)
                # Dispatch looks at the local pod's own end: the opposite of peers.
                other = Direction.EGRESS if direction is Direction.INGRESS else Direction.INGRESS
                for ip in addresses:
                    jump = Rule(chain, f"{direction.short} of {pod.key}", goto=True, pod=pod.key)
                    dispatch[direction].append(self._match_address(other, _host(ip), jump))
        egress_chain = self.add(config.name("EGRESS"), dispatch[Direction.EGRESS])
        ingress_chain = self.add(config.name("INGRESS"), dispatch[Direction.INGRESS])

        entry: list[Rule] = [
            Rule(
                "RETURN",
                "netpol-agent: replies and established flows",
                matches=(Match("conntrack", (("--ctstate", "RELATED,ESTABLISHED"),)),),
            )
        ]
        if self.version == 6:
            entry.extend(
                Rule(
                    "RETURN",
                    "netpol-agent: IPv6 neighbour discovery",
                    protocol="ipv6-icmp",
                    matches=(Match("icmp6", (("--icmpv6-type", str(t)),)),),
                )
                for t in NEIGHBOUR_DISCOVERY_TYPES
            )
        entry.append(
            Rule(
                "RETURN",
                "netpol-agent: from this node",
                matches=(Match("addrtype", (("--src-type", "LOCAL"),)),),
            )
        )
        for address in sorted({a for a in self.node.addresses if a.version == self.version}):
            entry.append(Rule("RETURN", "netpol-agent: from this node", source=_host(address)))
            entry.append(Rule("RETURN", "netpol-agent: to this node", destination=_host(address)))
        entry.append(self._clear_mark("netpol-agent: start with a clear allow mark"))
        entry.append(Rule(egress_chain, "netpol-agent: egress of local pods"))
        entry.append(self._clear_mark("netpol-agent: egress allowed, clear for ingress"))
        entry.append(Rule(ingress_chain, "netpol-agent: ingress of local pods"))
        entry.append(self._clear_mark("netpol-agent: allowed, leave no mark behind"))
        self.add(config.entry_chain, entry)
        return Ruleset.of(self.family, config.entry_chain, self.chains.values())


def compile_node(
    state: ClusterState,
    node: NodeContext,
    family: Family,
    config: CompilerConfig | None = None,
) -> Ruleset:
    """All chains ``node`` needs for ``family``. Pure: touches nothing."""
    return _Builder(state, node, family, config or CompilerConfig()).build()


def node_addresses(
    state: ClusterState, node_name: str, extra: Iterable[IPAddress] = ()
) -> tuple[IPAddress, ...]:
    """The node's own addresses: from its Node object plus those read from the kernel."""
    seen: list[IPAddress] = []
    for address in (*state.node_addresses(node_name), *extra):
        if address not in seen:
            seen.append(address)
    return tuple(seen)
