"""The node compiler: cluster state → chains, recomputing only what a change touches.

Layout (``P`` is the chain prefix)::

    FORWARD -> P-FORWARD  established/related RETURN, [IPv6: neighbour discovery RETURN],
                          node exemptions, clear mark, -j P-EGRESS, clear mark,
                          -j P-INGRESS, clear mark
    P-EGRESS / P-INGRESS  dispatch by the local pod's address  -> -g P-E-/P-I-<pod>
    P-E-/P-I-<pod>        self RETURN, then -g P-SE-/P-SI-<set of policies selecting it>
    P-SE-/P-SI-<set>      per policy: -j P-PE-/P-PI-<policy>,
                          mark? RETURN; then DROP (or REJECT)
    P-PE-/P-PI-<policy>   per rule: [port match] -j P-G-<peer> | [port] [-s cidr] set mark;
                          mark? RETURN between rules
    P-G-<group>           the addresses of a selector peer  -> set mark
    P-B-<block>           ipBlock with except: RETURN per except, then the cidr -> set mark
    P-T-<…>               subtrees of a long dispatch or group chain

Allow decisions travel as one mark bit (masked, configurable) because a peer group is a
shared chain that cannot RETURN through two levels. Policy chains are shared by every
pod a policy selects, verdict (set) chains by every pod the same policies select, and
peer groups by every rule naming the peer, so the rule count grows with pods plus
policies, not their product.

Long address lists (dispatch, peer groups) are split into a tree on address bits, four
ways per level, and each leaf's addresses are collapsed into CIDRs: a lookup costs
O(log n) rules without ipsets. Trees split on bits, never on list positions, so sibling subtrees cover disjoint
ranges and a ``-g`` into the wrong one cannot happen; for the same reason a leaf's
addresses are disjoint and its rules may set the mark and carry on. nf_tables refuses
chain graphs deeper than 16 jumps (EMLINK), so tree depth is capped: leaves grow instead.

``NodeCompiler`` keeps every chain it built, keyed by what it was built from, and on the
next ``compile`` diffs the new snapshot against the previous one (objects are shared
between snapshots, so an identity check finds what changed) and rebuilds only the peer
groups, policy chains and pod chains a change can affect. The result is always equal to
a compile from scratch; the tests check exactly that.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from agent.compiler import cidr
from agent.compiler.config import NEIGHBOUR_DISCOVERY_TYPES, CompilerConfig, NodeContext
from agent.compiler.ports import named_port_signature, resolve_rule_ports
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
from agent.rules import Chain, Family, Match, Rule, Ruleset

T = TypeVar("T")

# A tree node holds at most this many entries before it splits four ways on the next two
# address bits; a lookup walks at most four rules at the root, three per level below it
# (the last quarter needs no address match there), plus one leaf.
LEAF_SIZE = 16
# Depth budget under nf_tables' 16-level jump limit: FORWARD -> entry -> dispatch root
# (+ DISPATCH_DEPTH) -> pod -> policy -> group root (+ GROUP_DEPTH) stays at level 15 or less.
DISPATCH_DEPTH = 3
GROUP_DEPTH = 6


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


class _Subtree(NamedTuple):
    block: cidr.Block
    size: int
    chains: list[Chain]  # bottom-up: the subtree's own chain last


TreeMemo = dict[str, _Subtree]


@dataclass(slots=True)
class _GroupEntry:
    """A peer group: its members by address (kept up to date pod by pod) and its chains.

    ``subtrees`` remembers each tree chain with the entries it was built from, so a
    membership change rebuilds only the chains on the changed address's path.
    """

    spec: GroupSpec
    members: dict[int, set[str]]
    addresses: list[int] = field(default_factory=list)  # sorted keys of members
    unit: _Unit | None = None
    subtrees: TreeMemo = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _NamedScope:
    """Egress to a named port within one peer: how many destination pods serve the name
    on each number. Only a number appearing or vanishing changes the policy chain."""

    spec: GroupSpec
    port_name: str
    protocol: Protocol
    holders: dict[int, int]


@dataclass(frozen=True, slots=True)
class _PolicyEntry:
    policy: NetworkPolicy
    unit: _Unit | None  # None: the policy allows nothing for this target
    # Egress named ports: (destinations in scope, port name). Their numbers come from the
    # destination pods, so a pod change inside a scope can change this chain.
    named_scopes: tuple[_NamedScope, ...]
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
        self._allow_options = (("--set-xmark", self.config.mark_text),)
        self._names: dict[str, str] = {}
        self._previous: ClusterState | None = None
        self._groups: dict[str, _GroupEntry] = {}
        self._blocks: dict[str, _Unit] = {}
        self._policies: dict[str, _PolicyEntry] = {}
        self._pods: dict[tuple[str, Direction], _PodEntry] = {}
        self._selecting: dict[tuple[str, Direction], _SelectingEntry] = {}
        self._namespace_epoch: dict[str, int] = defaultdict(int)
        self._dispatch: dict[Direction, tuple[tuple[tuple[str, str], ...], _Unit]] = {}
        self._index: dict[str, _Unit] = {}  # every cached unit by its root chain
        self._local: dict[str, Pod] = {}  # selectable pods on this node, kept by deltas
        # Which pod chains may differ from the last compile: only a policy change or an
        # egress named-port rebuild (for the pods of its namespace) or a change to the
        # local pod itself can alter one. Peer-group rebuilds keep chain names, so other
        # changes skip the walk over the node's pods.
        self._dirty_namespaces: set[str] = set()
        self._dirty_pods: set[str] = set()
        self.rebuilt: dict[str, int] = defaultdict(int)  # what the last compile rebuilt
        self.isolated: dict[Direction, int] = {}  # local pods isolated, by direction

    # --- public ---------------------------------------------------------------------

    def compile(self, state: ClusterState, node_addresses: Sequence[IPAddress] = ()) -> Ruleset:
        self.rebuilt = defaultdict(int)
        if self._previous is not None:
            self._invalidate(self._previous, state)
        else:
            self._local = {pod.key: pod for pod in state.local_pods(self.node_name)}
        self._previous = state
        for direction in Direction:
            cached = self._dispatch.get(direction)
            if self._dirty_namespaces or self._dirty_pods or cached is None:
                self._register(self._dispatch_unit(state, direction))
            else:
                self._register(cached[1])
        self._dirty_namespaces.clear()
        self._dirty_pods.clear()
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

    @property
    def local_pod_count(self) -> int:
        return len(self._local)

    # --- invalidation ---------------------------------------------------------------

    def _invalidate(self, previous: ClusterState, state: ClusterState) -> None:
        """Rebuild, against ``state``, every cached chain whose inputs changed.

        Chain names never depend on content, so a cached unit that jumps to a rebuilt
        chain stays valid; rebuilt chains replace the old ones in the index. Pod changes
        are applied as deltas first; namespace relabels then rebuild what they touch from
        scratch (a delta on top of a fresh rebuild would count twice).
        """
        for old_policy, new_policy in _diff(previous.policies, state.policies):
            changed = new_policy or old_policy
            assert changed is not None
            self._namespace_epoch[changed.namespace] += 1  # selection there may change
            self._dirty_namespaces.add(changed.namespace)
        pod_changes = _diff(previous.pods, state.pods)
        if pod_changes:
            self._track_local_pods(pod_changes)
            self._update_groups(previous, state, pod_changes)

            def numbers_move(scope: _NamedScope) -> bool:
                """Count pod changes into the scope; True if a number appears or vanishes."""
                moved = False
                for old, new in pod_changes:
                    for pod, view, step in ((old, previous, -1), (new, state, +1)):
                        if pod is None or not scope.spec.matches(view, pod, self.version):
                            continue
                        number = pod.resolve_named_port(scope.port_name, scope.protocol)
                        if number is None:
                            continue
                        before = scope.holders.get(number, 0)
                        scope.holders[number] = before + step
                        if (before == 0) != (before + step == 0):
                            moved = True
                return moved

            self._rebuild_named_egress(state, numbers_move)
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

            for name, group in list(self._groups.items()):
                if scoped(group.spec):
                    self._build_group(state, group.spec, name)  # membership from scratch
            self._rebuild_named_egress(state, lambda scope: scoped(scope.spec))

    def _track_local_pods(self, pod_changes: Sequence[tuple[Pod | None, Pod | None]]) -> None:
        for old, new in pod_changes:
            if old is not None and self._local.pop(old.key, None) is not None:
                self._dirty_pods.add(old.key)
            if new is not None and new.node_name == self.node_name and new.is_selectable:
                self._local[new.key] = new
                self._dirty_pods.add(new.key)

    def _update_groups(
        self,
        previous: ClusterState,
        state: ClusterState,
        pod_changes: Sequence[tuple[Pod | None, Pod | None]],
    ) -> None:
        """Move changed pods in or out of every group, then re-render the groups that
        moved, along the changed addresses' paths only."""
        for name, group in self._groups.items():
            dirty: set[int] = set()
            for old, new in pod_changes:
                if old is not None and group.spec.matches(previous, old, self.version):
                    for ip in old.ips_of(self.version):
                        address = int(ip)
                        holders = group.members.get(address)
                        if holders is not None:
                            holders.discard(old.key)
                            if not holders:
                                del group.members[address]
                                del group.addresses[bisect.bisect_left(group.addresses, address)]
                        dirty.add(address)
                if new is not None and group.spec.matches(state, new, self.version):
                    for ip in new.ips_of(self.version):
                        address = int(ip)
                        if address not in group.members:
                            group.members[address] = set()
                            bisect.insort(group.addresses, address)
                        group.members[address].add(new.key)
                        dirty.add(address)
            if dirty:
                self._render_group(name, group, dirty)

    def _rebuild_named_egress(
        self, state: ClusterState, affected: Callable[[_NamedScope], bool]
    ) -> None:
        for name, entry in list(self._policies.items()):
            # Every scope must see the changes (they keep counts), so no short circuit.
            if [affected(scope) for scope in entry.named_scopes].count(True):
                del self._policies[name]
                self._index.pop(name, None)
                self._policy(state, entry.policy, Direction.EGRESS, entry.target)
                # The chain may have become empty or non-empty: verdict chains list
                # only policies that can allow something.
                self._dirty_namespaces.add(entry.policy.namespace)

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

    def _allow(self, comment: str, *, policy: str = "", pod: str = "") -> Rule:
        """Set the allow mark; the caller's next ``mark? RETURN`` acts on it."""
        return Rule("MARK", comment, target_options=self._allow_options, policy=policy, pod=pod)

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
        addresses: Sequence[int],
        leaf_rules: Callable[[Sequence[int]], list[Rule]],
        direction: Direction,
        comment: str,
        max_depth: int,
        memo: TreeMemo,
        dirty: Iterable[int] | None = None,
    ) -> list[Chain]:
        """The chains matching ``addresses`` (sorted host addresses), root first.

        The tree is a pure function of the address set: a node with more than LEAF_SIZE
        addresses splits four ways on the two address bits after its members' common
        prefix. ``memo`` holds the last build's subtrees; with ``dirty`` (the addresses
        added or removed since), only subtrees containing a dirty address are rebuilt,
        so one membership change costs O(log n) chains, not O(n).
        """
        version = self.version
        chains: list[Chain] = []
        fresh: TreeMemo = {}
        dirty_sorted = sorted(dirty) if dirty is not None else None

        def is_dirty(block: cidr.Block) -> bool:
            if dirty_sorted is None:
                return True
            position = bisect.bisect_left(dirty_sorted, block[0])
            return position < len(dirty_sorted) and dirty_sorted[position] <= cidr.last_address(
                block, version
            )

        def build(name: str, block: cidr.Block, low: int, high: int, depth: int) -> None:
            start, size = len(chains), high - low
            rules: list[Rule] = []
            if size <= LEAF_SIZE or depth >= max_depth:
                rules = leaf_rules(addresses[low:high])
            else:
                common = cidr.common_block(
                    (
                        (addresses[low], cidr.width(version)),
                        (addresses[high - 1], cidr.width(version)),
                    ),
                    version,
                )
                parts: list[tuple[cidr.Block, int, int]] = []
                for half in cidr.halves(common, version):
                    for quarter in cidr.halves(half, version):
                        end = bisect.bisect_right(
                            addresses, cidr.last_address(quarter, version), low, high
                        )
                        if end > low:
                            parts.append((quarter, low, end))
                        low = end
                for position, (quarter, first, end) in enumerate(parts):
                    if end - first == 1:
                        rules.extend(leaf_rules(addresses[first:end]))
                        continue
                    quarter_text = self._text(quarter)
                    sub = self._name("T", f"{root}|{quarter_text}")
                    known = memo.get(sub)
                    if (
                        known is not None
                        and known.block == quarter
                        and known.size == end - first
                        and not is_dirty(quarter)
                    ):
                        fresh[sub] = known
                        chains.extend(known.chains)
                    else:
                        build(sub, quarter, first, end, depth + 1)
                    jump = Rule(sub, f"{comment} {quarter_text}", goto=True)
                    if depth > 0 and position == len(parts) - 1:
                        # Below the root the packet is inside this node's block: when no
                        # earlier quarter took it, the last one must hold it.
                        rules.append(jump)
                    else:
                        rules.append(self._at(direction, quarter_text, jump))
            chains.append(Chain(name, tuple(rules)))
            fresh[name] = _Subtree(block, size, chains[start:])

        bits = cidr.width(version)
        root_block = (
            cidr.common_block(((addresses[0], bits), (addresses[-1], bits)), version)
            if addresses
            else (0, 0)
        )
        build(root, root_block, 0, len(addresses), 0)
        memo.clear()
        memo.update(fresh)
        root_chain = chains.pop()  # built bottom-up: the root came last
        return [root_chain, *chains]

    # --- peer groups ----------------------------------------------------------------

    def _group(self, state: ClusterState, spec: GroupSpec, key: str) -> str:
        name = self._name("G", f"{spec.direction.value}|{key}")
        if name not in self._groups:
            self._build_group(state, spec, name)
        return name

    def _build_group(self, state: ClusterState, spec: GroupSpec, name: str) -> None:
        members: dict[int, set[str]] = {}
        for pod in spec.members(state, self.version):
            for ip in pod.ips_of(self.version):
                members.setdefault(int(ip), set()).add(pod.key)
        previous = self._groups.get(name)
        group = _GroupEntry(
            spec, members, sorted(members), subtrees=previous.subtrees if previous else {}
        )
        self._groups[name] = group
        if previous is None or previous.unit is None:
            self._render_group(name, group)
            return
        # Rebuilt from scratch (a namespace relabel): re-render only where it moved.
        dirty = {
            address
            for address in previous.members.keys() | members.keys()
            if previous.members.get(address) != members.get(address)
        }
        if dirty:
            self._render_group(name, group, dirty)
        else:
            group.unit = previous.unit

    def _render_group(
        self, name: str, group: _GroupEntry, dirty: Iterable[int] | None = None
    ) -> None:
        self.rebuilt["groups"] += 1
        members = group.members
        version = self.version

        # The hottest loop of a full compile (one rule per peer address): rules are built
        # directly rather than through _allow and _at.
        at_source = group.spec.direction is Direction.INGRESS
        allow_options = self._allow_options

        def leaf_rules(addresses: Sequence[int]) -> list[Rule]:
            rules: list[Rule] = []
            position = 0
            for block in cidr.collapse(addresses, version):
                last = cidr.last_address(block, version)
                inside: list[str] = []
                while position < len(addresses) and addresses[position] <= last:
                    inside.extend(sorted(members[addresses[position]]))
                    position += 1
                pod = inside[0] if len(inside) == 1 else ""
                comment = f"peer pod {pod}" if pod else f"peer pods {inside[0]} +{len(inside) - 1}"
                address = self._text(block)
                rules.append(
                    Rule(
                        "MARK",
                        comment,
                        source=address if at_source else None,
                        destination=None if at_source else address,
                        target_options=allow_options,
                        pod=pod,
                    )
                )
            return rules

        chains = self._tree(
            name,
            group.addresses,
            leaf_rules,
            group.spec.direction,
            "peers",
            GROUP_DEPTH,
            group.subtrees,
            dirty,
        )
        group.unit = self._register(self._unit(chains))

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
        rules.append(self._at(direction, str(block.cidr), self._allow(description)))
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
        named_egress: list[_NamedScope] = []
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
            if i < len(blocks) - 1:
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
        named_egress: list[_NamedScope],
    ) -> list[Rule]:
        ports = resolve_rule_ports(rule.ports, named_target)
        if ports.is_empty:
            return []  # every port was a name this pod does not serve: allows nothing
        port_fields = [f for match in ports.matches for f in match.rule_fields()]
        out: list[Rule] = []

        def emit(address: str | None, group: str | None) -> None:
            """Jump to ``group`` (it sets the mark), or set the mark here."""
            for protocol, matches, _ in port_fields:
                action = (
                    self._allow(comment, policy=policy.key)
                    if group is None
                    else Rule(group, comment, policy=policy.key)
                )
                base = Rule(
                    action.target,
                    comment,
                    protocol=protocol,
                    matches=matches,
                    target_options=action.target_options,
                    policy=policy.key,
                )
                out.append(base if address is None else self._at(direction, address, base))

        if port_fields:
            if rule.peers is None:
                emit(None, None)
            else:
                for peer in rule.peers:
                    if isinstance(peer, IPBlock):
                        if peer.cidr.version != self.version:
                            continue
                        if peer.excepts:
                            emit(None, self._block(direction, peer))
                        else:
                            emit(str(peer.cidr), None)
                    else:
                        spec = GroupSpec(direction, policy.namespace, peer)
                        group = self._group(state, spec, self._selector_key(peer, policy.namespace))
                        emit(None, group)
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
        scopes_used: list[_NamedScope],
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
            holders: dict[int, int] = defaultdict(int)
            for pod in unfiltered.members(state, self.version):
                number = pod.resolve_named_port(port_name, protocol)
                if number is not None:
                    holders[number] += 1
            scopes_used.append(_NamedScope(unfiltered, port_name, protocol, dict(holders)))
            for number in sorted(holders):
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
            self._set_unit(policies, chain_names, direction)  # re-registers it if evicted
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
        policy_set = self._set_unit(policies, chain_names, direction)
        rules.append(Rule(policy_set.root, f"{pod.key}: its policies", goto=True, pod=pod.key))
        unit = self._register(self._unit([Chain(name, tuple(rules))]))
        self._pods[key] = _PodEntry(pod, inputs, unit)
        return unit

    def _set_unit(
        self,
        policies: Sequence[NetworkPolicy],
        chain_names: Sequence[str | None],
        direction: Direction,
    ) -> _Unit:
        """The verdict chain shared by every local pod that the same policies select
        (with the same named-port resolution): rules grow with pods plus policies."""
        live = [(p, c) for p, c in zip(policies, chain_names, strict=True) if c is not None]
        kind = "SI" if direction is Direction.INGRESS else "SE"
        keys = ",".join(p.key for p in policies)
        name = self._name(kind, f"{keys}|{','.join(c for _, c in live)}")
        known = self._index.get(name)
        if known is not None:
            return known
        rules: list[Rule] = []
        for policy, chain in live:
            rules.append(Rule(chain, f"policy {policy.key}", policy=policy.key))
            rules.append(self._if_allowed_return(f"allowed by {policy.key}", policy.key))
        isolating = ", ".join(p.key for p in policies)
        rules.append(
            self._deny(f"default deny {direction.short} (isolated by {isolating})"[:200], "")
        )
        return self._register(self._unit([Chain(name, tuple(rules))]))

    def _dispatch_unit(self, state: ClusterState, direction: Direction) -> _Unit:
        targets: dict[IPAddress, tuple[str, str]] = {}
        live = set()
        for _, pod in sorted(self._local.items()):
            addresses = pod.ips_of(self.version)
            if not addresses:
                continue
            known = self._pods.get((pod.key, direction))
            if (
                known is not None
                and known.pod is pod
                and pod.key not in self._dirty_pods
                and pod.namespace not in self._dirty_namespaces
            ):
                live.add((pod.key, direction))
                root = self._register(known.unit).root
                for ip in addresses:
                    targets.setdefault(ip, (root, pod.key))
                continue
            policies = self._policies_selecting(state, pod, direction)
            if not policies:
                continue
            live.add((pod.key, direction))
            unit = self._pod_unit(state, pod, direction, policies)
            for ip in addresses:
                targets.setdefault(ip, (unit.root, pod.key))
        self.isolated[direction] = len(live)
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
        by_address = {int(ip): target for ip, target in targets.items()}

        def leaf_rules(addresses: Sequence[int]) -> list[Rule]:
            return [
                self._at(
                    own_end,
                    self._text((address, cidr.width(self.version))),
                    Rule(
                        by_address[address][0],
                        f"{direction.short} of {by_address[address][1]}",
                        goto=True,
                        pod=by_address[address][1],
                    ),
                )
                for address in addresses
            ]

        chains = self._tree(
            name,
            sorted(by_address),
            leaf_rules,
            own_end,
            f"{direction.short} dispatch",
            DISPATCH_DEPTH,
            {},  # a full rebuild: dispatch has a node's pods at most
        )
        unit = self._unit(chains)
        self._dispatch[direction] = (signature, unit)
        return unit

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
