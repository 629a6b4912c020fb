"""The node compiler: cluster state → one node's chains for one family, recomputing only
what a change touches.

Layout (``P`` is the chain prefix)::

    FORWARD -> P-FORWARD  established/related RETURN, [IPv6: neighbour discovery RETURN],
                          node exemptions, clear mark, -j P-EGRESS, clear mark,
                          -j P-INGRESS, clear mark
    P-EGRESS / P-INGRESS  dispatch by the local pod's address  -> -g P-E-/P-I-<pod>
    P-E-/P-I-<pod>        self RETURN, then -g P-SE-/P-SI-<set of policies selecting it>
                          (with ClusterNetworkPolicies: -g P-XE-/P-XI-<admin tier>, or
                          -g P-NE-/P-NI-<after admin> when no Admin rule applies)
    P-XE-/P-XI-<rules>    per Admin rule in order: -j P-CE-/P-CI-<rule>, then on the mark
                          Accept RETURN | Deny DROP | Pass -g P-NE-/P-NI-; finally
                          -g P-NE-/P-NI- (or fall off: allowed)
    P-NE-/P-NI-<…>        clear mark; -g P-SE-/P-SI-<set> when a NetworkPolicy isolates
                          the pod, else per Baseline rule: -j P-CE-/P-CI-<rule>, then on
                          the mark Accept/Pass RETURN | Deny DROP; fall off: allowed
    P-CE-/P-CI-<rule>     one ClusterNetworkPolicy rule: [ports] -j P-G-<peer> |
                          [ports] [-s/-d cidr or node address] set mark
    P-SE-/P-SI-<set>      per policy: -j P-PE-/P-PI-<policy>,
                          mark? RETURN; then DROP (or REJECT)
    P-PE-/P-PI-<policy>   per rule: [port match] -j P-G-<peer> | [port] [-s cidr] set mark;
                          mark? RETURN between rules
    P-G-<group>           the addresses of a selector peer  -> set mark (peers.py)
    P-B-<block>           ipBlock with except: RETURN per except, then the cidr -> set mark
    P-T-<…>               subtrees of a long dispatch or group chain (addresses.py)

Policy chains are shared by every pod a policy selects, verdict (set) chains by every
pod the same policies select, and peer groups by every rule naming the peer.

``NodeCompiler`` only tracks what depends on what: it keeps every unit (a thing's
chains) keyed by what it was built from, and on the next ``compile`` rebuilds only the
peer groups, policy chains and pod chains a change can affect. Rendering is render.py's,
names are naming.py's. The result is always equal to a compile from scratch; the tests
check exactly that.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable, KeysView, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from agent.compiler import named_ports
from agent.compiler.addresses import DISPATCH_DEPTH, build_tree
from agent.compiler.config import CompilerConfig, NodeContext
from agent.compiler.named_ports import NamedScope
from agent.compiler.naming import ChainNames, block_key, selector_key
from agent.compiler.pauses import without_gc
from agent.compiler.peers import GroupSpec, InScope, Move, PeerGroups, PodChange
from agent.compiler.ports import named_port_signature, resolve_rule_ports
from agent.compiler.render import ClusterStep, Renderer, Unit
from agent.model.objects import (
    ClusterNetworkPolicy,
    ClusterRule,
    Direction,
    IPAddress,
    IPBlock,
    IPNetwork,
    NetworkPolicy,
    NodePeer,
    Peer,
    Pod,
    PolicyRule,
    Tier,
)
from agent.policy.index import ClusterIndex
from agent.policy.state import ClusterState
from agent.policy.view import (
    Before,
    Delta,
    Pair,
    PeerMatcher,
    PolicyView,
    is_local,
    quarantine_changed,
    quarantined,
    subject_selects,
)
from agent.rules import Chain, Family, Rule, Ruleset

# Leaf rules remembered between full walks (render.py) before they are turned over.
LEAF_MEMO_LIMIT = 100_000

# Each ClusterNetworkPolicy rule is compiled as a one-rule NetworkPolicy of this
# "namespace" (upper case: never a real namespace's name, so never a real policy's key):
# its peers always carry a namespace selector, so the namespace itself selects nothing.
CLUSTER_POLICY_SCOPE = "ClusterNetworkPolicy"


def _steps_key(steps: Sequence[ClusterStep]) -> str:
    """What a tier chain is built from: each step's chain, action and comment (the
    comment names the rule, whose name can change while its chain and action stay)."""
    return ",".join(f"{step.chain}:{step.action.value}:{step.comment}" for step in steps)


@dataclass(frozen=True, slots=True)
class _PolicyEntry:
    policy: NetworkPolicy
    unit: Unit | None  # None: the policy allows nothing for this target
    # Egress named ports: (destinations in scope, port name). Their numbers come from the
    # destination pods, so a pod change inside a scope can change this chain.
    named_scopes: tuple[NamedScope, ...]
    target: Pod


@dataclass(frozen=True, slots=True)
class _PodEntry:
    pod: Pod
    inputs: tuple[str | None, ...]
    unit: Unit


@dataclass(frozen=True, slots=True)
class _SelectingEntry:
    pod: Pod
    epoch: int
    policies: tuple[NetworkPolicy, ...]


class NodeCompiler:
    """Compiles one node's chains for one family, incrementally across calls."""

    def __init__(
        self, node_name: str, family: Family, config: CompilerConfig | None = None
    ) -> None:
        self.node_name = node_name
        self.family = family
        self.config = config or CompilerConfig()
        self.version = family.version
        self._render = Renderer(self.config, self.version)
        # --log-denied: the log chains, always programmed (fixed content): every drop
        # site jumps to one of them.
        self._log_units = (
            tuple(
                self._render.unit([self._render.denied_log_chain(direction)])
                for direction in Direction
            )
            if self.config.deny_log is not None
            else ()
        )
        self._generation = -1  # of the ClusterIndex last compiled
        self._reset()

    def _reset(self) -> None:
        """Forget everything: the next compile starts from scratch."""
        self._compiled = False
        self._names = ChainNames(self.config, self.family)
        self._groups = PeerGroups(self._render, self._names, self._register)
        self._previous: ClusterState | None = None
        self._blocks: dict[str, Unit] = {}
        self._policies: dict[str, _PolicyEntry] = {}
        self._pods: dict[tuple[str, Direction], _PodEntry] = {}
        self._selecting: dict[tuple[str, Direction], _SelectingEntry] = {}
        self._namespace_epoch: dict[str, int] = defaultdict(int)
        self._dispatch: dict[Direction, tuple[tuple[tuple[str, str], ...], Unit]] = {}
        self._unknown: dict[Direction, tuple[tuple[object, ...], Unit]] = {}
        self._index: dict[str, Unit] = {}  # every cached unit by its root chain
        # Units registered since the last compile, with what was there before (None: new).
        self._changed: dict[str, Unit | None] = {}
        # The last output: the units reachable from the entry chain, and their chains.
        self._reachable: dict[str, Unit] = {}
        self._chains: dict[str, Chain] = {}
        self._local: dict[str, Pod] = {}  # selectable pods on this node, kept by deltas
        # Which pod chains may differ from the last compile: only a policy change or an
        # egress named-port rebuild (for the pods of its namespace) or a change to the
        # local pod itself can alter one. Peer-group rebuilds keep chain names, so other
        # changes skip the walk over the node's pods.
        self._dirty_namespaces: set[str] = set()
        self._dirty_pods: set[str] = set()
        # A ClusterNetworkPolicy or a node changed: any local pod's tiers may differ
        # (cluster-wide and rare, so every pod chain is looked at again).
        self._dirty_all = False
        # Per ClusterNetworkPolicy (by identity): each rule as a one-rule NetworkPolicy.
        self._cluster_rules: dict[
            str, tuple[ClusterNetworkPolicy, dict[tuple[Direction, int], NetworkPolicy]]
        ] = {}
        # Rule chains that name node peers: rebuilt when a node changes.
        self._node_rule_chains: set[str] = set()
        self.isolated: dict[Direction, int] = {}  # local pods isolated, by direction
        for unit in self._log_units:
            self._register(unit)

    # --- public ---------------------------------------------------------------------

    def compile_index(
        self,
        index: ClusterIndex,
        node_addresses: Sequence[IPAddress] = (),
        pod_cidrs: Sequence[IPNetwork] = (),
    ) -> Ruleset:
        """Compile what ``index`` changed since this compiler last saw it (from scratch
        if it missed a generation)."""
        delta = index.delta_since(self._generation)
        self._generation = index.generation
        if delta is None:
            self._reset()
        return self.compile(index, node_addresses, delta, pod_cidrs)

    @without_gc
    def compile(
        self,
        state: PolicyView,
        node_addresses: Sequence[IPAddress] = (),
        delta: Delta | None = None,
        pod_cidrs: Sequence[IPNetwork] = (),
    ) -> Ruleset:
        """``delta``: what changed since the last compile. Without one, a snapshot is
        compared with the previous snapshot by identity; anything else starts over.
        ``pod_cidrs``: the node's, when ``isolate_unknown_pod_ips`` is set (any family)."""
        if self._compiled and delta is None:
            if self._previous is not None:
                delta = Delta.between(self._previous, state)
            else:
                self._reset()
        if self._compiled and delta is not None and quarantine_changed(delta):
            self._reset()  # every pod of a namespace at once: rare, so start over
        if self._compiled and delta is not None:
            self._invalidate(state, delta)
        else:
            self._local = {pod.key: pod for pod in state.local_pods(self.node_name)}
        self._compiled = True
        # An index changes in place: only a snapshot can be compared with later.
        self._previous = state if isinstance(state, ClusterState) else None
        for direction in Direction:
            cached = self._dispatch.get(direction)
            if self._dirty_namespaces or self._dirty_pods or self._dirty_all or cached is None:
                self._register(self._dispatch_unit(state, direction))
            else:
                self._register(cached[1])
        self._dirty_namespaces.clear()
        self._dirty_pods.clear()
        self._dirty_all = False
        cidrs = self._own_pod_cidrs(pod_cidrs)
        for direction in Direction if cidrs else ():
            self._register(self._unknown_unit(cidrs, direction))
        self._register(self._render.unit([self._render.entry_chain(node_addresses, cidrs)]))
        if self._same_graph():
            # Only contents changed: swap the changed units' chains.
            for root in self._changed:
                old, new = self._reachable[root], self._index[root]
                for chain in old.chains:
                    del self._chains[chain.name]
                for chain in new.chains:
                    self._chains[chain.name] = chain
                self._reachable[root] = new
            self._render.new_generation(unless_below=LEAF_MEMO_LIMIT)
        else:
            self._walk(state)
        self._changed.clear()
        return Ruleset(self.family, self.config.entry_chain, dict(self._chains))

    @property
    def local_pod_count(self) -> int:
        return len(self._local)

    @property
    def local_pods(self) -> Mapping[str, Pod]:
        """The selectable pods on this node, by ``namespace/name`` (read-only)."""
        return MappingProxyType(self._local)

    def cache_sizes(self) -> dict[str, int]:
        """Entries held between compiles, by cache: they follow the cluster as it is."""
        return {
            "names": len(self._names),
            "units": len(self._index),
            "groups": len(self._groups.groups),
            "blocks": len(self._blocks),
            "policies": len(self._policies),
            "pods": len(self._pods),
            "selecting": len(self._selecting),
            "cluster_rules": len(self._cluster_rules),
            "local": len(self._local),
        }

    # --- the chain graph ------------------------------------------------------------

    def _register(self, unit: Unit) -> Unit:
        old = self._index.get(unit.root)
        if old is not unit:
            self._changed.setdefault(unit.root, old)
            self._index[unit.root] = unit
        return unit

    def _same_graph(self) -> bool:
        """True if every unit changed since the last output replaces one that was in it
        and jumps to the same units: then the same units are reachable as before."""
        if not self._reachable:
            return False
        for root, old in self._changed.items():
            if old is None or self._reachable.get(root) is not old:
                return False
            if self._index[root].children != old.children:
                return False
        return True

    def _walk(self, state: PolicyView) -> None:
        """Everything reachable from the entry chain, and nothing else."""
        units: dict[str, Unit] = {}
        pending = [self._index[self.config.entry_chain], *self._log_units]
        while pending:
            unit = pending.pop()
            if unit.root in units:
                continue
            units[unit.root] = unit
            pending.extend(self._index[name] for name in unit.children if name not in units)
        self._reachable = units
        self._chains = {chain.name: chain for unit in units.values() for chain in unit.chains}
        self._render.new_generation()
        self._evict(state, units.keys())

    def _evict(self, state: PolicyView, reachable: KeysView[str]) -> None:
        """Forget everything the chains no longer reach, so memory follows the cluster
        as it is, not every object ever seen."""
        self._groups.keep_only(reachable)
        self._blocks = {k: v for k, v in self._blocks.items() if k in reachable}
        # A policy that allows nothing for a target has no chain but is remembered while
        # it lives, so the next pass need not build it again.
        self._policies = {
            k: v
            for k, v in self._policies.items()
            if k in reachable or (v.unit is None and self._lives(state, v.policy))
        }
        self._index = {k: v for k, v in self._index.items() if k in reachable}
        self._names.keep_only(reachable | self._policies.keys())
        self._cluster_rules = {
            name: entry
            for name, entry in self._cluster_rules.items()
            if state.cluster_policies.get(name) is entry[0]
        }

    def _lives(self, state: PolicyView, policy: NetworkPolicy) -> bool:
        """``policy`` is in ``state``; for a ClusterNetworkPolicy rule's one-rule policy,
        the ClusterNetworkPolicy it was made from is. (An egress rule by named port that
        matches nothing yet must be remembered with the destinations it watches: a pod
        that comes to serve the name then brings the rule in.)"""
        if policy.namespace != CLUSTER_POLICY_SCOPE:
            return state.policies.get(policy.key) is policy
        cached = self._cluster_rules.get(policy.name.rsplit(" ", 1)[0])
        return (
            cached is not None
            and state.cluster_policies.get(cached[0].key) is cached[0]
            and any(one is policy for one in cached[1].values())
        )

    # --- invalidation ---------------------------------------------------------------

    def _invalidate(self, state: PolicyView, delta: Delta) -> None:
        """Rebuild, against ``state``, every cached chain whose inputs ``delta`` changed.

        Chain names never depend on content, so a cached unit that jumps to a rebuilt
        chain stays valid; rebuilt chains replace the old ones in the index. A namespace
        relabel moves the pods of that namespace in or out of the peer groups whose
        namespace selector it concerns, as if each of those pods had changed.
        """
        for old_policy, new_policy in delta.policies:
            changed = new_policy or old_policy
            assert changed is not None
            self._namespace_epoch[changed.namespace] += 1  # selection there may change
            self._dirty_namespaces.add(changed.namespace)
        if delta.cluster_policies:
            # Only the tiers of the pods a changed policy applied to, or applies to now,
            # can change (a relabelled namespace's pods are rebuilt below).
            self._dirty_pods.update(self._subject_pods(state, delta.cluster_policies))
        if delta.nodes and self._node_rule_chains:
            for name in self._node_rule_chains:
                self._policies.pop(name, None)
            self._node_rule_chains.clear()
            self._dirty_all = True
        relabelled = delta.relabelled()
        if relabelled and (state.cluster_policies or delta.cluster_policies):
            # A subject's namespace selector may now take or leave that namespace's pods.
            self._dirty_namespaces.update(relabelled)
        before: PeerMatcher = Before(state, relabelled) if relabelled else state
        pod_changes = list(delta.pods)
        if pod_changes:
            self._track_local_pods(pod_changes)
            self._groups.apply_pod_changes(before, state, pod_changes)
        # Per relabelled namespace: its unchanged pods, and which way each spec's
        # namespace selector flips for it (only those specs can gain or lose them).
        moved: list[Move] = []
        if relabelled:
            changed_pods = {(new or old).key for old, new in pod_changes}  # type: ignore[union-attr]
            for namespace, (old_labels, new_labels) in relabelled.items():
                pods = [
                    pod
                    for pod in state.selectable_pods_in(namespace)
                    if pod.key not in changed_pods
                ]
                if not pods:
                    continue

                def flip(
                    spec: GroupSpec,
                    old: Mapping[str, str] = old_labels,
                    new: Mapping[str, str] = new_labels,
                ) -> int:
                    selector = spec.peer.namespace_selector if spec.peer is not None else None
                    if selector is None:
                        return 0
                    return int(selector.matches(new)) - int(selector.matches(old))

                in_scope = InScope(pods, self.version)
                moved.append((in_scope, flip))
                self._groups.move_namespace(in_scope, flip)
        if pod_changes or moved:
            self._rebuild_named_egress(
                state,
                lambda scope: scope.count_changes(before, state, pod_changes, self.version, moved),
            )

    def _subject_pods(
        self, state: PolicyView, changes: Sequence[Pair[ClusterNetworkPolicy]]
    ) -> set[str]:
        """The local pods that the old or the new version of a changed policy applies to
        (judged by today's labels: a pod or namespace relabelled in the same change is
        rebuilt anyway)."""
        changed = [policy for pair in changes for policy in pair if policy is not None]
        return {
            pod.key
            for pod in self._local.values()
            if any(
                subject_selects(policy, pod, state.namespace_labels, state.namespaces)
                for policy in changed
            )
        }

    def _track_local_pods(self, pod_changes: Sequence[PodChange]) -> None:
        for old, new in pod_changes:
            if old is not None and self._local.pop(old.key, None) is not None:
                self._dirty_pods.add(old.key)
                for direction in Direction:  # what was cached for it goes with it
                    self._selecting.pop((old.key, direction), None)
            if new is not None and is_local(new, self.node_name) and new.is_selectable:
                self._local[new.key] = new
                self._dirty_pods.add(new.key)

    def _rebuild_named_egress(
        self, state: PolicyView, affected: Callable[[NamedScope], bool]
    ) -> None:
        for name, entry in list(self._policies.items()):
            # Every scope must see the changes (they keep counts), so no short circuit.
            if [affected(scope) for scope in entry.named_scopes].count(True):
                del self._policies[name]
                self._index.pop(name, None)
                if entry.policy.namespace == CLUSTER_POLICY_SCOPE:
                    # Rebuilt as every pod's tiers are looked at again (tier chains list
                    # only rules that can match, and this one may have become empty).
                    self._dirty_all = True
                    continue
                self._policy(state, entry.policy, Direction.EGRESS, entry.target)
                # The chain may have become empty or non-empty: verdict chains list
                # only policies that can allow something.
                self._dirty_namespaces.add(entry.policy.namespace)

    # --- policies -------------------------------------------------------------------

    def _block(self, direction: Direction, block: IPBlock) -> str:
        name = self._names("B", f"{direction.value}|{block_key(block)}")
        if name not in self._blocks:
            chain = self._render.block_chain(name, direction, block)
            self._blocks[name] = self._register(self._render.unit([chain]))
        return name

    def _policy(
        self, state: PolicyView, policy: NetworkPolicy, direction: Direction, target: Pod
    ) -> str | None:
        signature = named_port_signature(policy, target) if direction is Direction.INGRESS else ""
        kind = "PI" if direction is Direction.INGRESS else "PE"
        name = self._names(kind, f"{policy.key}|{signature}")
        entry = self._policies.get(name)
        if entry is not None and entry.policy is policy:
            return entry.unit.root if entry.unit is not None else None
        blocks: list[list[Rule]] = []
        named_egress: list[NamedScope] = []
        for rule in policy.rules(direction):
            comment = f"{policy.key} {direction.short}[{rule.index}]"
            named_target = target if direction is Direction.INGRESS else None
            block = self._rule_block(
                state, policy, direction, rule, named_target, comment, named_egress
            )
            if block:
                blocks.append(block)
        chain = self._render.policy_chain(name, policy.key, direction, blocks)
        unit = self._register(self._render.unit([chain])) if chain is not None else None
        self._policies[name] = _PolicyEntry(policy, unit, tuple(named_egress), target)
        return name if unit is not None else None

    def _rule_block(
        self,
        state: PolicyView,
        policy: NetworkPolicy,
        direction: Direction,
        rule: PolicyRule,
        named_target: Pod | None,
        comment: str,
        named_egress: list[NamedScope],
    ) -> list[Rule]:
        ports = resolve_rule_ports(rule.ports, named_target)
        if ports.is_empty:
            return []  # every port was a name this pod does not serve: allows nothing
        port_fields = [f for match in ports.matches for f in match.rule_fields()]
        out: list[Rule] = []
        if port_fields:
            # Each peer: an address that sets the mark here, or a chain that sets it.
            peers: list[tuple[str | None, str | None]] = []
            if rule.peers is None:
                peers.append((None, None))
            else:
                for peer in rule.peers:
                    if isinstance(peer, IPBlock):
                        if peer.cidr.version != self.version:
                            continue
                        if peer.excepts:
                            peers.append((None, self._block(direction, peer)))
                        else:
                            peers.append((str(peer.cidr), None))
                    else:
                        spec = GroupSpec(direction, policy.namespace, peer)
                        key = selector_key(peer, policy.namespace)
                        peers.append((None, self._groups.group(state, spec, key)))
            out = self._render.rule_block(direction, policy.key, comment, port_fields, peers)
        for port in ports.named:
            out.extend(
                named_ports.egress_rules(
                    state,
                    self._groups,
                    self._render,
                    policy,
                    rule,
                    port.protocol,
                    port.name,
                    comment,
                    named_egress,
                )
            )
        return out

    # --- pods, dispatch -------------------------------------------------------------

    def _policies_selecting(
        self, state: PolicyView, pod: Pod, direction: Direction
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
        self,
        state: PolicyView,
        pod: Pod,
        direction: Direction,
        policies: Sequence[NetworkPolicy],
        admin: Sequence[ClusterNetworkPolicy] = (),
        baseline: Sequence[ClusterNetworkPolicy] = (),
    ) -> Unit | None:
        """The pod's chain: itself, then its tiers (None: nothing applies to it).

        NetworkPolicy alone: the verdict chain. With ClusterNetworkPolicies: the Admin
        tier's chain, which falls (or a Pass goes) to what follows it: the NetworkPolicy
        verdict chain when one isolates the pod, else the Baseline tier's chain."""
        network_policies: str | None = None
        if policies:
            chain_names = tuple(self._policy(state, policy, direction, pod) for policy in policies)
            network_policies = self._set_unit(policies, chain_names, direction).root
        admin_steps = self._cluster_steps(state, admin, direction, pod)
        baseline_steps = () if policies else self._cluster_steps(state, baseline, direction, pod)
        after: str | None = network_policies
        if baseline_steps or (admin_steps and network_policies is not None):
            after = self._after_admin_unit(direction, network_policies, baseline_steps).root
        target = self._admin_unit(direction, admin_steps, after).root if admin_steps else after
        if target is None:
            return None
        key = (pod.key, direction)
        entry = self._pods.get(key)
        if entry is not None and entry.pod is pod and entry.inputs == (target,):
            return self._register(entry.unit)
        kind = "I" if direction is Direction.INGRESS else "E"
        chain = self._render.pod_chain(
            self._names(kind, pod.key), direction, pod.key, pod.ips_of(self.version), target
        )
        unit = self._register(self._render.unit([chain]))
        self._pods[key] = _PodEntry(pod, (target,), unit)
        return unit

    # --- ClusterNetworkPolicy tiers -------------------------------------------------

    def _cluster_steps(
        self,
        state: PolicyView,
        policies: Sequence[ClusterNetworkPolicy],
        direction: Direction,
        target: Pod,
    ) -> tuple[ClusterStep, ...]:
        """The rules of ``policies`` in evaluation order, each with its rule chain; a
        rule that can match nothing here (another family's CIDRs, a named port the pod
        does not serve) is left out."""
        steps: list[ClusterStep] = []
        for policy in policies:
            for rule in policy.rules(direction):
                chain = self._cluster_rule(state, policy, rule, direction, target)
                if chain is None:
                    continue
                named = f" ({rule.name})" if rule.name else ""
                steps.append(
                    ClusterStep(
                        chain,
                        rule.action,
                        f"{policy.tier.value} {policy.name} {direction.short}[{rule.index}]{named}",
                        f"{CLUSTER_POLICY_SCOPE}/{policy.name}",
                    )
                )
        return tuple(steps)

    def _one_rule_policy(
        self, policy: ClusterNetworkPolicy, rule: ClusterRule, direction: Direction
    ) -> NetworkPolicy:
        cached = self._cluster_rules.get(policy.name)
        if cached is None or cached[0] is not policy:
            cached = (policy, {})
            self._cluster_rules[policy.name] = cached
        found = cached[1].get((direction, rule.index))
        if found is None:
            peers: tuple[Peer, ...] | None = None
            if rule.peers is not None:
                peers = tuple(p for p in rule.peers if not isinstance(p, NodePeer))
            one = PolicyRule(peers, rule.ports, rule.index)
            found = NetworkPolicy(
                namespace=CLUSTER_POLICY_SCOPE,
                name=f"{policy.name} {direction.short}[{rule.index}]",
                pod_selector=None,
                policy_types=frozenset({direction}),
                ingress=(one,) if direction is Direction.INGRESS else (),
                egress=(one,) if direction is Direction.EGRESS else (),
            )
            cached[1][direction, rule.index] = found
        return found

    def _cluster_rule(
        self,
        state: PolicyView,
        policy: ClusterNetworkPolicy,
        rule: ClusterRule,
        direction: Direction,
        target: Pod,
    ) -> str | None:
        """The chain that sets the mark when ``rule`` matches (shared by every pod with
        the same named-port resolution); None when it can match nothing here."""
        one = self._one_rule_policy(policy, rule, direction)
        signature = named_port_signature(one, target) if direction is Direction.INGRESS else ""
        kind = "CI" if direction is Direction.INGRESS else "CE"
        name = self._names(kind, f"{policy.name}|{rule.index}|{signature}")
        entry = self._policies.get(name)
        if entry is not None and entry.policy is one:
            return entry.unit.root if entry.unit is not None else None
        comment = f"{policy.tier.value} {policy.name} {direction.short}[{rule.index}]"
        named_target = target if direction is Direction.INGRESS else None
        named_egress: list[NamedScope] = []
        block = self._rule_block(
            state, one, direction, one.rules(direction)[0], named_target, comment, named_egress
        )
        node_peers = [p for p in rule.peers or () if isinstance(p, NodePeer)]
        if node_peers:
            self._node_rule_chains.add(name)
            addresses = sorted(
                {
                    address
                    for peer in node_peers
                    for address in state.node_peer_addresses(peer)
                    if address.version == self.version
                },
                key=int,
            )
            if addresses:
                ports = resolve_rule_ports(rule.ports, named_target)
                port_fields = [f for match in ports.matches for f in match.rule_fields()]
                nodes = self._node_addresses_unit(direction, addresses).root
                block.extend(
                    self._render.rule_block(
                        direction, one.key, f"{comment} nodes", port_fields, [(None, nodes)]
                    )
                )
        chain = self._render.policy_chain(name, one.key, direction, [block] if block else [])
        unit = self._register(self._render.unit([chain])) if chain is not None else None
        self._policies[name] = _PolicyEntry(one, unit, tuple(named_egress), target)
        return name if unit is not None else None

    def _node_addresses_unit(self, direction: Direction, addresses: Sequence[IPAddress]) -> Unit:
        """The addresses of a ``nodes`` peer, each setting the mark: one chain behind the
        rule's port match, so a packet on another port never walks them (shared by every
        rule naming the same nodes; its content follows from its name)."""
        key = ",".join(str(a) for a in addresses)
        allow = self._render.allow(f"nodes peer {direction.short}")
        return self._shared_unit(
            self._names("H", f"{direction.value}|{key}"),
            lambda name: Chain(
                name,
                tuple(
                    self._render.at(direction, self._render.host_text(int(a)), allow)
                    for a in addresses
                ),
            ),
        )

    def _shared_unit(self, name: str, build: Callable[[str], Chain]) -> Unit:
        """The one-chain unit called ``name``, built once: its name says all its content
        depends on, so a unit still in the index is the same."""
        known = self._index.get(name)
        if known is not None:
            return self._register(known)
        return self._register(self._render.unit([build(name)]))

    def _admin_unit(
        self, direction: Direction, steps: Sequence[ClusterStep], after: str | None
    ) -> Unit:
        kind = "XI" if direction is Direction.INGRESS else "XE"
        return self._shared_unit(
            self._names(kind, f"{_steps_key(steps)}|{after or ''}"),
            lambda name: self._render.admin_chain(name, direction, steps, after),
        )

    def _after_admin_unit(
        self, direction: Direction, network_policies: str | None, steps: Sequence[ClusterStep]
    ) -> Unit:
        kind = "NI" if direction is Direction.INGRESS else "NE"
        return self._shared_unit(
            self._names(kind, f"{network_policies or ''}|{_steps_key(steps)}"),
            lambda name: self._render.after_admin_chain(name, direction, network_policies, steps),
        )

    def _quarantine_unit(self, pod: Pod, direction: Direction) -> Unit:
        """A quarantined pod's chain: itself, then a deny shared by every such pod."""
        key = (pod.key, direction)
        entry = self._pods.get(key)
        if entry is not None and entry.pod is pod and entry.inputs == (None,):
            self._deny_unit(direction)  # re-registers it if evicted
            return self._register(entry.unit)
        deny = self._deny_unit(direction)
        kind = "I" if direction is Direction.INGRESS else "E"
        chain = self._render.pod_chain(
            self._names(kind, pod.key), direction, pod.key, pod.ips_of(self.version), deny.root
        )
        unit = self._register(self._render.unit([chain]))
        self._pods[key] = _PodEntry(pod, (None,), unit)
        return unit

    def _deny_unit(self, direction: Direction) -> Unit:
        # No policy key contains no "|": this name is no policy set's.
        kind = "SI" if direction is Direction.INGRESS else "SE"
        name = self._names(kind, "quarantine")
        known = self._index.get(name)
        if known is not None:
            return self._register(known)
        comment = f"quarantined: unreadable labels, spec or namespace; deny {direction.short}"
        chain = Chain(name, self._render.deny(comment, direction))
        return self._register(self._render.unit([chain]))

    def _set_unit(
        self,
        policies: Sequence[NetworkPolicy],
        chain_names: Sequence[str | None],
        direction: Direction,
    ) -> Unit:
        """The verdict chain shared by every local pod that the same policies select
        (with the same named-port resolution): rules grow with pods plus policies."""
        live = [(p.key, c) for p, c in zip(policies, chain_names, strict=True) if c is not None]
        kind = "SI" if direction is Direction.INGRESS else "SE"
        keys = ",".join(p.key for p in policies)
        name = self._names(kind, f"{keys}|{','.join(c for _, c in live)}")
        known = self._index.get(name)
        if known is not None:
            return known
        chain = self._render.verdict_chain(name, direction, [p.key for p in policies], live)
        return self._register(self._render.unit([chain]))

    def _dispatch_unit(self, state: PolicyView, direction: Direction) -> Unit:
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
                and not self._dirty_all
                and pod.key not in self._dirty_pods
                and pod.namespace not in self._dirty_namespaces
            ):
                live.add((pod.key, direction))
                root = self._register(known.unit).root
                for ip in addresses:
                    targets.setdefault(ip, (root, pod.key))
                continue
            if quarantined(state, pod):
                live.add((pod.key, direction))
                unit = self._quarantine_unit(pod, direction)
                for ip in addresses:
                    targets.setdefault(ip, (unit.root, pod.key))
                continue
            policies = self._policies_selecting(state, pod, direction)
            admin: tuple[ClusterNetworkPolicy, ...] = ()
            baseline: tuple[ClusterNetworkPolicy, ...] = ()
            if state.cluster_policies:
                admin = state.cluster_policies_selecting(pod, direction, Tier.ADMIN)
                if not policies:
                    baseline = state.cluster_policies_selecting(pod, direction, Tier.BASELINE)
            if not (policies or admin or baseline):
                continue
            pod_unit = self._pod_unit(state, pod, direction, policies, admin, baseline)
            if pod_unit is None:
                continue  # its cluster rules can match nothing in this family
            unit = pod_unit
            live.add((pod.key, direction))
            for ip in addresses:
                targets.setdefault(ip, (unit.root, pod.key))
        self.isolated[direction] = len(live)
        for key in [k for k in self._pods if k[1] is direction and k not in live]:
            del self._pods[key]
        signature = tuple((str(ip), chain) for ip, (chain, _) in sorted(targets.items()))
        cached = self._dispatch.get(direction)
        if cached is not None and cached[0] == signature:
            return cached[1]
        by_address = {int(ip): target for ip, target in targets.items()}
        own_end = Direction.EGRESS if direction is Direction.INGRESS else Direction.INGRESS

        def leaf_rules(addresses: Sequence[int]) -> list[Rule]:
            return self._render.dispatch_leaf(direction, by_address, addresses)

        chains: list[Chain] = build_tree(
            self._render,
            self._names,
            self.config.name(direction.name),
            sorted(by_address),
            leaf_rules,
            own_end,
            f"{direction.short} dispatch",
            DISPATCH_DEPTH,
            {},  # a full rebuild: dispatch has a node's pods at most
        )
        unit = self._render.unit(chains)
        self._dispatch[direction] = (signature, unit)
        return unit

    # --- addresses of the node's pod CIDRs that no local pod holds ------------------

    def _own_pod_cidrs(self, pod_cidrs: Sequence[IPNetwork]) -> tuple[IPNetwork, ...]:
        if not self.config.isolate_unknown_pod_ips:
            return ()
        mine = [c for c in pod_cidrs if c.version == self.version]
        return tuple(ipaddress.collapse_addresses(mine))  # type: ignore[type-var]

    def _unknown_unit(self, cidrs: Sequence[IPNetwork], direction: Direction) -> Unit:
        """``P-UNKNOWN-EGRESS`` (source) / ``P-UNKNOWN-INGRESS`` (destination), jumped to
        for an address in ``cidrs``: RETURN when a local pod holds it (an address tree,
        as dispatch), else drop. Every chain of the tree that can be left by falling
        off its end drops there, so an address no leaf holds never returns."""
        holders: dict[int, str] = {}
        for key, pod in sorted(self._local.items()):
            for ip in pod.ips_of(self.version):
                if any(ip in network for network in cidrs):
                    holders.setdefault(int(ip), key)
        signature = (tuple(cidrs), tuple(sorted(holders.items())))
        cached = self._unknown.get(direction)
        if cached is not None and cached[0] == signature:
            return cached[1]
        own_end = Direction.EGRESS if direction is Direction.INGRESS else Direction.INGRESS

        def leaf_rules(addresses: Sequence[int]) -> list[Rule]:
            return self._render.known_leaf(direction, holders, addresses)

        tree = build_tree(
            self._render,
            self._names,
            self.config.unknown_chain(direction),
            sorted(holders),
            leaf_rules,
            own_end,
            f"known {direction.short} pods",
            DISPATCH_DEPTH,
            {},
        )
        deny = self._render.unknown_deny(direction)
        chains = [
            chain
            if chain.rules and chain.rules[-1].goto and _unconditional(chain.rules[-1])
            else Chain(chain.name, (*chain.rules, *deny))
            for chain in tree
        ]
        unit = self._render.unit(chains)
        self._unknown[direction] = (signature, unit)
        return unit


def _unconditional(rule: Rule) -> bool:
    return rule.source is None and rule.destination is None and not rule.matches


def compile_node(
    state: PolicyView,
    node: NodeContext,
    family: Family,
    config: CompilerConfig | None = None,
) -> Ruleset:
    """All chains ``node`` needs for ``family``, compiled from scratch. Pure."""
    return NodeCompiler(node.name, family, config).compile(
        state, node.addresses, pod_cidrs=node.pod_cidrs
    )
