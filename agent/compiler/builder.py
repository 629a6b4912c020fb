"""The node compiler: cluster state → chains, recomputing only what a change touches.

Layout (``P`` is the chain prefix)::

    FORWARD -> P-FORWARD  established/related RETURN, [IPv6: -p ipv6-icmp -> P-ND],
                          node exemptions, clear mark, -j P-EGRESS, clear mark,
                          -j P-INGRESS, clear mark
    P-EGRESS / P-INGRESS  dispatch by the local pod's address  -> -g P-E-/P-I-<pod>
    P-E-/P-I-<pod>        self RETURN; per selecting policy: -j P-PE-/P-PI-<policy>,
                          mark? RETURN; then DROP (or REJECT)
    P-PE-/P-PI-<policy>   per rule: [port match] -j P-G-<peer> | [port] [-s cidr] -g P-ALLOW;
                          mark? RETURN between rules
    P-G-<group>           the addresses of a selector peer  -> -g P-ALLOW
    P-B-<block>           ipBlock with except: RETURN per except, then the cidr -> -g P-ALLOW
    P-T-<…>               subtrees of a long dispatch or group chain
    P-ALLOW               sets the allow mark bit

Allow decisions travel as one mark bit (masked, configurable) because a peer group is a
shared chain that cannot RETURN through two levels. Policy chains are shared by every
pod a policy selects and peer groups by every rule naming the peer, so the rule count
grows with pods plus policies, not their product.

Long address lists (dispatch, peer groups) are collapsed into minimal CIDRs and split
into a binary tree on address bits: each level costs a new connection at most two rules,
so lookups are O(log n) without ipsets. Trees split on bits, never on list positions, so
sibling subtrees cover disjoint ranges and a ``-g`` into the wrong one cannot happen.

``NodeCompiler`` keeps every chain it built, keyed by what it was built from, and on the
next ``compile`` diffs the new snapshot against the previous one (objects are shared
between snapshots, so an identity check finds what changed) and rebuilds only the peer
groups, policy chains and pod chains a change can affect. The result is always equal to
a compile from scratch; the tests check exactly that.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from agent.compiler import cidr
from agent.compiler.compile import (
    NEIGHBOUR_DISCOVERY_TYPES,
    CompilerConfig,
    NodeContext,
    named_port_signature,
    resolve_rule_ports,
)
from agent.compiler.ruleset import Chain, Family, Match, Rule, Ruleset
from agent.model.objects import (
    Direction,
    IPAddress,
    IPBlock,
    NetworkPolicy,
    Pod,
    PolicyRule,
    Protocol,
    SelectorPeer,
)
from agent.policy.state import ClusterState

T = TypeVar("T")

# A tree node holds at most this many entries before it splits; a lookup walks at most
# two rules per level plus one leaf.
LEAF_SIZE = 16


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """What decides a peer group's members. All None: every pod."""

    direction: Direction
    policy_namespace: str
    peer: SelectorPeer | None
    block: IPBlock | None = None
    named: tuple[Protocol, str, int] | None = None

    def matches(self, state: ClusterState, pod: Pod, version: int) -> bool:
        if not pod.is_selectable or not pod.ips_of(version):
            return False
        if self.peer is not None and not state.peer_matches_pod(
            self.peer, self.policy_namespace, pod
        ):
            return False
        if self.block is not None and not any(
            self.block.contains(ip) for ip in pod.ips_of(version)
        ):
            return False
        if self.named is not None:
            protocol, name, number = self.named
            if pod.resolve_named_port(name, protocol) != number:
                return False
        return True

    def members(self, state: ClusterState, version: int) -> list[Pod]:
        if self.peer is None:
            return [pod for pod in state.selectable_pods if self.matches(state, pod, version)]
        # peer_pods already applied the selectors; only the narrower filters are left.
        narrowed = GroupSpec(self.direction, self.policy_namespace, None, self.block, self.named)
        return [
            pod
            for pod in state.peer_pods(self.peer, self.policy_namespace)
            if narrowed.matches(state, pod, version)
        ]


@dataclass(frozen=True, slots=True)
class _Unit:
    """The chains built for one thing (a group, a policy, a pod…): root first."""

    chains: tuple[Chain, ...]
    children: tuple[str, ...]  # root names of other units this one jumps to

    @property
    def root(self) -> str:
        return self.chains[0].name


@dataclass(frozen=True, slots=True)
class _PolicyEntry:
    policy: NetworkPolicy
    unit: _Unit | None  # None: the policy allows nothing for this target
    # Egress named ports: (destinations in scope, port name). Their numbers come from the
    # destination pods, so a pod change inside a scope can change this chain.
    named_scopes: tuple[tuple[GroupSpec, str], ...]
    target: Pod


@dataclass(frozen=True, slots=True)
class _PodEntry:
    pod: Pod
    inputs: tuple[str | None, ...]
    unit: _Unit


@dataclass(frozen=True, slots=True)
class _SelectingEntry:
    pod: Pod
    epoch: int
    policies: tuple[NetworkPolicy, ...]


def _host(address: IPAddress) -> cidr.Block:
    return (int(address), cidr.width(address.version))


def _diff(previous: Mapping[str, T], current: Mapping[str, T]) -> list[tuple[T | None, T | None]]:
    """(old, new) for every key whose object is not the very same one in both."""
    if previous is current:
        return []
    changed: list[tuple[T | None, T | None]] = [
        (previous.get(key), value)
        for key, value in current.items()
        if previous.get(key) is not value
    ]
    changed.extend((value, None) for key, value in previous.items() if key not in current)
    return changed


class NodeCompiler:
    """Compiles one node's chains for one family, incrementally across calls."""

    def __init__(
        self, node_name: str, family: Family, config: CompilerConfig | None = None
    ) -> None:
        self.node_name = node_name
        self.family = family
        self.config = config or CompilerConfig()
        self.version = family.version
        self._owned = self.config.chain_prefix + "-"
        self._names: dict[str, str] = {}
        self._previous: ClusterState | None = None
        self._groups: dict[str, tuple[GroupSpec, _Unit]] = {}
        self._blocks: dict[str, _Unit] = {}
        self._policies: dict[str, _PolicyEntry] = {}
        self._pods: dict[tuple[str, Direction], _PodEntry] = {}
        self._selecting: dict[tuple[str, Direction], _SelectingEntry] = {}
        self._namespace_epoch: dict[str, int] = defaultdict(int)
        self._dispatch: dict[Direction, tuple[tuple[tuple[str, str], ...], _Unit]] = {}
        self._index: dict[str, _Unit] = {}  # every cached unit by its root chain
        self.rebuilt: dict[str, int] = defaultdict(int)  # what the last compile rebuilt

    # --- public ---------------------------------------------------------------------

    def compile(self, state: ClusterState, node_addresses: Sequence[IPAddress] = ()) -> Ruleset:
        self.rebuilt = defaultdict(int)
        if self._previous is not None:
            self._invalidate(self._previous, state)
        self._previous = state
        self._register(self._allow_unit())
        for direction in Direction:
            self._register(self._dispatch_unit(state, direction))
        entry = self._entry_unit(node_addresses)
        # Everything reachable from the entry chain, and nothing else.
        units: dict[str, _Unit] = {}
        pending = [entry]
        while pending:
            unit = pending.pop()
            if unit.root in units:
                continue
            units[unit.root] = unit
            pending.extend(self._index[name] for name in unit.children if name not in units)
        self._evict(set(units))
        chains = [chain for unit in units.values() for chain in unit.chains]
        return Ruleset.of(self.family, self.config.entry_chain, chains)

    # --- invalidation ---------------------------------------------------------------

    def _invalidate(self, previous: ClusterState, state: ClusterState) -> None:
        """Rebuild, against ``state``, every cached chain whose inputs changed.

        Chain names never depend on content, so a cached unit that jumps to a rebuilt
        chain stays valid; rebuilt chains replace the old ones in the index.
        """
        for old_policy, new_policy in _diff(previous.policies, state.policies):
            changed = new_policy or old_policy
            assert changed is not None
            self._namespace_epoch[changed.namespace] += 1  # selection there may change
        relabelled = [
            (previous.namespace_labels(name), state.namespace_labels(name))
            for name in {
                (new or old).name  # type: ignore[union-attr]
                for old, new in _diff(previous.namespaces, state.namespaces)
            }
        ]
        relabelled = [(old, new) for old, new in relabelled if old != new]
        if relabelled:

            def scoped(spec: GroupSpec) -> bool:
                selector = spec.peer.namespace_selector if spec.peer is not None else None
                return selector is not None and any(
                    selector.matches(old) or selector.matches(new) for old, new in relabelled
                )

            self._rebuild_groups(state, scoped)
            self._rebuild_named_egress(state, lambda spec, _: scoped(spec))
        pod_changes = _diff(previous.pods, state.pods)
        if not pod_changes:
            return

        def touched(spec: GroupSpec) -> bool:
            return any(
                (old is not None and spec.matches(previous, old, self.version))
                or (new is not None and spec.matches(state, new, self.version))
                for old, new in pod_changes
            )

        def serves(pod: Pod | None, port_name: str) -> bool:
            return pod is not None and any(port.name == port_name for port in pod.ports)

        self._rebuild_groups(state, touched)
        self._rebuild_named_egress(
            state,
            lambda spec, port_name: (
                any(serves(old, port_name) or serves(new, port_name) for old, new in pod_changes)
                and touched(spec)
            ),
        )

    def _rebuild_groups(self, state: ClusterState, affected: Callable[[GroupSpec], bool]) -> None:
        for name, (spec, _) in list(self._groups.items()):
            if affected(spec):
                del self._groups[name]
                self._build_group(state, spec, name)

    def _rebuild_named_egress(
        self, state: ClusterState, affected: Callable[[GroupSpec, str], bool]
    ) -> None:
        for name, entry in list(self._policies.items()):
            if any(affected(spec, port_name) for spec, port_name in entry.named_scopes):
                del self._policies[name]
                self._index.pop(name, None)
                self._policy(state, entry.policy, Direction.EGRESS, entry.target)

    def _evict(self, reachable: set[str]) -> None:
        self._groups = {k: v for k, v in self._groups.items() if k in reachable}
        self._blocks = {k: v for k, v in self._blocks.items() if k in reachable}
        self._policies = {
            k: v for k, v in self._policies.items() if v.unit is None or k in reachable
        }
        self._index = {k: v for k, v in self._index.items() if k in reachable}

    def _register(self, unit: _Unit) -> _Unit:
        self._index[unit.root] = unit
        return unit

    # --- naming and small rules -----------------------------------------------------

    def _name(self, kind: str, key: str) -> str:
        cache_key = f"{kind}|{key}"
        name = self._names.get(cache_key)
        if name is None:
            name = self.config.hashed_name(kind, f"{self.family.value}|{key}")
            self._names[cache_key] = name
        return name

    @property
    def _allow_chain(self) -> str:
        return self.config.name("ALLOW")

    def _unit(self, chains: Sequence[Chain]) -> _Unit:
        own = {chain.name for chain in chains}
        children = sorted(
            {
                rule.target
                for chain in chains
                for rule in chain.rules
                if rule.target.startswith(self._owned) and rule.target not in own
            }
        )
        return _Unit(tuple(chains), tuple(children))

    def _mark_rule(self, clear: bool, comment: str) -> Rule:
        value = "0x0" if clear else f"{self.config.allow_mark:#x}"
        return Rule(
            "MARK",
            comment,
            target_options=(("--set-xmark", f"{value}/{self.config.allow_mark:#x}"),),
        )

    def _if_allowed_return(self, comment: str, policy: str = "", pod: str = "") -> Rule:
        return Rule(
            "RETURN",
            comment,
            matches=(Match("mark", (("--mark", self.config.mark_text),)),),
            policy=policy,
            pod=pod,
        )

    def _deny(self, comment: str, pod: str) -> Rule:
        if not self.config.reject:
            return Rule("DROP", comment, pod=pod)
        reject_with = "icmp-port-unreachable" if self.version == 4 else "icmp6-port-unreachable"
        return Rule("REJECT", comment, target_options=(("--reject-with", reject_with),), pod=pod)

    @staticmethod
    def _at(direction: Direction, address: str, rule: Rule) -> Rule:
        """``rule`` matching ``address`` at the peer's end: source for ingress."""
        source, destination = (address, None) if direction is Direction.INGRESS else (None, address)
        return Rule(
            rule.target,
            rule.comment,
            source=source,
            destination=destination,
            protocol=rule.protocol,
            matches=rule.matches,
            target_options=rule.target_options,
            goto=rule.goto,
            policy=rule.policy,
            pod=rule.pod,
        )

    def _text(self, block: cidr.Block) -> str:
        return cidr.text(block, self.version)

    # --- address trees --------------------------------------------------------------

    def _tree(
        self,
        root: str,
        entries: list[tuple[cidr.Block, Rule]],
        direction: Direction,
        comment: str,
    ) -> list[Chain]:
        """The root chain (named ``root``) and subtree chains matching ``entries``.

        ``entries`` are sorted by address; each entry's rule gets its block at the peer
        end (``direction``).
        """
        chains: list[Chain] = []
        version = self.version

        def build(name: str, members: list[tuple[cidr.Block, Rule]]) -> None:
            rules: list[Rule] = []
            if len(members) <= LEAF_SIZE:
                rules = [self._at(direction, self._text(block), rule) for block, rule in members]
            else:
                common = cidr.common_block((block for block, _ in members), version)
                low, high = cidr.halves(common, version)
                # Sorted members: those in the low half come first.
                split = next(
                    (i for i, (block, _) in enumerate(members) if block[0] >= high[0]),
                    len(members),
                )
                for half, inside in ((low, members[:split]), (high, members[split:])):
                    if len(inside) == 1:
                        block, rule = inside[0]
                        rules.append(self._at(direction, self._text(block), rule))
                    elif inside:
                        half_text = self._text(half)
                        sub = self._name("T", f"{root}|{half_text}")
                        jump = Rule(sub, f"{comment} {half_text}", goto=True)
                        rules.append(self._at(direction, half_text, jump))
                        build(sub, inside)
            chains.append(Chain(name, tuple(rules)))

        build(root, entries)
        chains.reverse()  # built bottom-up: the root was appended last
        return chains

    # --- peer groups ----------------------------------------------------------------

    def _group(self, state: ClusterState, spec: GroupSpec, key: str) -> str:
        name = self._name("G", f"{spec.direction.value}|{key}")
        if name not in self._groups:
            self._build_group(state, spec, name)
        return name

    def _build_group(self, state: ClusterState, spec: GroupSpec, name: str) -> None:
        self.rebuilt["groups"] += 1
        members = sorted(
            (_host(ip), pod.key)
            for pod in spec.members(state, self.version)
            for ip in pod.ips_of(self.version)
        )
        entries: list[tuple[cidr.Block, Rule]] = []
        position = 0
        # Both lists are sorted by address: one sweep assigns members to their block.
        for block in cidr.collapse((address for (address, _), _ in members), self.version):
            last = cidr.last_address(block, self.version)
            inside: list[str] = []
            while position < len(members) and members[position][0][0] <= last:
                inside.append(members[position][1])
                position += 1
            if len(inside) == 1:
                label, pod_key = f"peer pod {inside[0]}", inside[0]
            else:
                label, pod_key = f"peer pods {inside[0]} +{len(inside) - 1}", ""
            entries.append((block, Rule(self._allow_chain, label, goto=True, pod=pod_key)))
        unit = self._unit(self._tree(name, entries, spec.direction, "peers"))
        self._groups[name] = (spec, self._register(unit))

    def _block(self, direction: Direction, block: IPBlock) -> str:
        key = f"{block.cidr}-{','.join(map(str, block.excepts))}"
        name = self._name("B", f"{direction.value}|{key}")
        if name in self._blocks:
            return name
        description = f"ipBlock {block.cidr} except {','.join(map(str, block.excepts))}"
        rules = [
            self._at(direction, str(excluded), Rule("RETURN", description))
            for excluded in block.excepts
        ]
        rules.append(
            self._at(direction, str(block.cidr), Rule(self._allow_chain, description, goto=True))
        )
        self._blocks[name] = self._register(self._unit([Chain(name, tuple(rules))]))
        return name

    @staticmethod
    def _selector_key(peer: SelectorPeer, policy_namespace: str) -> str:
        scope = (
            f"ns={policy_namespace}"
            if peer.namespace_selector is None
            else f"nssel={peer.namespace_selector.canonical()}"
        )
        pods = "*" if peer.pod_selector is None else peer.pod_selector.canonical()
        return f"{scope} pods={pods}"

    # --- policies -------------------------------------------------------------------

    def _policy(
        self, state: ClusterState, policy: NetworkPolicy, direction: Direction, target: Pod
    ) -> str | None:
        signature = named_port_signature(policy, target) if direction is Direction.INGRESS else ""
        kind = "PI" if direction is Direction.INGRESS else "PE"
        name = self._name(kind, f"{policy.key}|{signature}")
        entry = self._policies.get(name)
        if entry is not None and entry.policy is policy:
            return entry.unit.root if entry.unit is not None else None
        self.rebuilt["policies"] += 1
        blocks: list[list[Rule]] = []
        named_egress: list[tuple[GroupSpec, str]] = []
        for rule in policy.rules(direction):
            comment = f"{policy.key} {direction.short}[{rule.index}]"
            named_target = target if direction is Direction.INGRESS else None
            block = self._rule_block(
                state, policy, direction, rule, named_target, comment, named_egress
            )
            if block:
                blocks.append(block)
        rules: list[Rule] = []
        for i, block in enumerate(blocks):
            rules.extend(block)
            if any(not r.goto for r in block) and i < len(blocks) - 1:
                rules.append(
                    self._if_allowed_return(
                        f"{policy.key} {direction.short}: allowed", policy=policy.key
                    )
                )
        unit = self._register(self._unit([Chain(name, tuple(rules))])) if rules else None
        self._policies[name] = _PolicyEntry(policy, unit, tuple(named_egress), target)
        return name if unit is not None else None

    def _rule_block(
        self,
        state: ClusterState,
        policy: NetworkPolicy,
        direction: Direction,
        rule: PolicyRule,
        named_target: Pod | None,
        comment: str,
        named_egress: list[tuple[GroupSpec, str]],
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
                out.append(base if address is None else self._at(direction, address, base))

        if port_fields:
            if rule.peers is None:
                emit(None, self._allow_chain, goto=True)
            else:
                for peer in rule.peers:
                    if isinstance(peer, IPBlock):
                        if peer.cidr.version != self.version:
                            continue
                        if peer.excepts:
                            emit(None, self._block(direction, peer), goto=False)
                        else:
                            emit(str(peer.cidr), self._allow_chain, goto=True)
                    else:
                        spec = GroupSpec(direction, policy.namespace, peer)
                        group = self._group(state, spec, self._selector_key(peer, policy.namespace))
                        emit(None, group, goto=False)
        for port in ports.named:
            out.extend(
                self._named_egress(
                    state, policy, rule, port.protocol, port.name, comment, named_egress
                )
            )
        return out

    def _named_egress(
        self,
        state: ClusterState,
        policy: NetworkPolicy,
        rule: PolicyRule,
        protocol: Protocol,
        port_name: str,
        comment: str,
        scopes_used: list[tuple[GroupSpec, str]],
    ) -> list[Rule]:
        """Egress to a named port: every destination pod resolves the name itself, so
        destinations are grouped by the number they serve it on."""
        scopes: list[tuple[str, SelectorPeer | None, IPBlock | None]] = []
        if rule.peers is None:
            scopes.append(("all-pods", None, None))
        else:
            for peer in rule.peers:
                if isinstance(peer, IPBlock):
                    if peer.cidr.version == self.version:
                        # Only pods inside the block serve named ports; bare addresses never do.
                        scopes.append(
                            (f"block={peer.cidr}-{','.join(map(str, peer.excepts))}", None, peer)
                        )
                else:
                    scopes.append((self._selector_key(peer, policy.namespace), peer, None))
        out: list[Rule] = []
        for key, scope_peer, block in scopes:
            unfiltered = GroupSpec(Direction.EGRESS, policy.namespace, scope_peer, block)
            scopes_used.append((unfiltered, port_name))
            numbers = sorted(
                {
                    number
                    for pod in unfiltered.members(state, self.version)
                    if (number := pod.resolve_named_port(port_name, protocol)) is not None
                }
            )
            for number in numbers:
                spec = dataclasses.replace(unfiltered, named=(protocol, port_name, number))
                group = self._group(
                    state, spec, f"{key} port={protocol.value}:{port_name}={number}"
                )
                out.append(
                    Rule(
                        group,
                        f"{comment} port {port_name}={number}/{protocol.value}",
                        protocol=protocol.iptables_name,
                        matches=(Match(protocol.iptables_name, (("--dport", str(number)),)),),
                        policy=policy.key,
                    )
                )
        return out

    # --- pods, dispatch, entry --------------------------------------------------------

    def _policies_selecting(
        self, state: ClusterState, pod: Pod, direction: Direction
    ) -> tuple[NetworkPolicy, ...]:
        key = (pod.key, direction)
        epoch = self._namespace_epoch[pod.namespace]
        entry = self._selecting.get(key)
        if entry is not None and entry.pod is pod and entry.epoch == epoch:
            return entry.policies
        policies = state.policies_selecting(pod, direction)
        self._selecting[key] = _SelectingEntry(pod, epoch, policies)
        return policies

    def _pod_unit(
        self, state: ClusterState, pod: Pod, direction: Direction, policies: Sequence[NetworkPolicy]
    ) -> _Unit:
        chain_names = tuple(self._policy(state, policy, direction, pod) for policy in policies)
        inputs = (*(p.key for p in policies), *chain_names)
        key = (pod.key, direction)
        entry = self._pods.get(key)
        if entry is not None and entry.pod is pod and entry.inputs == inputs:
            return self._register(entry.unit)
        self.rebuilt["pods"] += 1
        kind = "I" if direction is Direction.INGRESS else "E"
        name = self._name(kind, pod.key)
        rules: list[Rule] = [
            # Hairpin through a Service back to itself: a pod is never cut off from itself.
            self._at(
                direction, self._text(_host(ip)), Rule("RETURN", f"{pod.key}: itself", pod=pod.key)
            )
            for ip in pod.ips_of(self.version)
        ]
        for policy, chain in zip(policies, chain_names, strict=True):
            if chain is None:
                continue  # it isolates the pod and allows nothing
            rules.append(
                Rule(chain, f"{pod.key}: policy {policy.key}", policy=policy.key, pod=pod.key)
            )
            rules.append(
                self._if_allowed_return(f"{pod.key}: allowed by {policy.key}", policy.key, pod.key)
            )
        rules.append(self._deny(f"{pod.key}: default deny {direction.short}", pod.key))
        unit = self._register(self._unit([Chain(name, tuple(rules))]))
        self._pods[key] = _PodEntry(pod, inputs, unit)
        return unit

    def _dispatch_unit(self, state: ClusterState, direction: Direction) -> _Unit:
        targets: dict[IPAddress, tuple[str, str]] = {}
        local = state.local_pods(self.node_name)
        live = set()
        for pod in local:
            addresses = pod.ips_of(self.version)
            if not addresses:
                continue
            policies = self._policies_selecting(state, pod, direction)
            if not policies:
                continue
            live.add((pod.key, direction))
            unit = self._pod_unit(state, pod, direction, policies)
            for ip in addresses:
                targets.setdefault(ip, (unit.root, pod.key))
        for key in [k for k in self._pods if k[1] is direction and k not in live]:
            del self._pods[key]
        signature = tuple((str(ip), chain) for ip, (chain, _) in sorted(targets.items()))
        cached = self._dispatch.get(direction)
        if cached is not None and cached[0] == signature:
            return cached[1]
        self.rebuilt["dispatch"] += 1
        name = self.config.name(direction.name)
        # Dispatch looks at the local pod's own end: the opposite of where peers are.
        own_end = Direction.EGRESS if direction is Direction.INGRESS else Direction.INGRESS
        entries = [
            (_host(ip), Rule(chain, f"{direction.short} of {pod_key}", goto=True, pod=pod_key))
            for ip, (chain, pod_key) in sorted(targets.items())
        ]
        unit = self._unit(self._tree(name, entries, own_end, f"{direction.short} dispatch"))
        self._dispatch[direction] = (signature, unit)
        return unit

    def _allow_unit(self) -> _Unit:
        return _Unit(
            (Chain(self._allow_chain, (self._mark_rule(False, "netpol-agent: allowed"),)),), ()
        )

    def _entry_unit(self, node_addresses: Sequence[IPAddress]) -> _Unit:
        rules: list[Rule] = [
            Rule(
                "RETURN",
                "netpol-agent: replies and established flows",
                matches=(Match("conntrack", (("--ctstate", "RELATED,ESTABLISHED"),)),),
            )
        ]
        if self.version == 6:
            rules.extend(
                Rule(
                    "RETURN",
                    "netpol-agent: IPv6 neighbour discovery",
                    protocol="ipv6-icmp",
                    matches=(Match("icmp6", (("--icmpv6-type", str(t)),)),),
                )
                for t in NEIGHBOUR_DISCOVERY_TYPES
            )
        rules.append(
            Rule(
                "RETURN",
                "netpol-agent: from this node",
                matches=(Match("addrtype", (("--src-type", "LOCAL"),)),),
            )
        )
        for address in sorted({a for a in node_addresses if a.version == self.version}, key=int):
            rules.append(
                Rule("RETURN", "netpol-agent: from this node", source=self._text(_host(address)))
            )
        rules += [
            self._mark_rule(True, "netpol-agent: start with a clear allow mark"),
            Rule(self.config.name(Direction.EGRESS.name), "netpol-agent: egress of local pods"),
            self._mark_rule(True, "netpol-agent: egress allowed, clear for ingress"),
            Rule(self.config.name(Direction.INGRESS.name), "netpol-agent: ingress of local pods"),
            self._mark_rule(True, "netpol-agent: allowed, leave no mark behind"),
        ]
        return self._unit([Chain(self.config.entry_chain, tuple(rules))])


def compile_node(
    state: ClusterState,
    node: NodeContext,
    family: Family,
    config: CompilerConfig | None = None,
) -> Ruleset:
    """All chains ``node`` needs for ``family``, compiled from scratch. Pure."""
    return NodeCompiler(node.name, family, config).compile(state, node.addresses)
