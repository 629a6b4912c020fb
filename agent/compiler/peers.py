"""Peer groups: the addresses a selector peer stands for, as a shared chain (a tree on
address bits) that sets the allow mark. Every rule naming the same peer jumps to the same
group, so rules grow with pods plus policies, not their product.

A group keeps its members by address and is updated pod by pod; a membership change
re-renders only the tree chains on the changed addresses' paths.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence, Set
from dataclasses import dataclass, field

from agent.compiler.addresses import GROUP_DEPTH, TreeMemo, build_tree
from agent.compiler.render import Renderer, Unit
from agent.model.objects import Direction, IPBlock, Pod, Protocol, SelectorPeer
from agent.policy.view import PeerMatcher, PolicyView
from agent.rules import Rule

PodChange = tuple[Pod | None, Pod | None]


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """What decides a peer group's members. All None: every pod."""

    direction: Direction
    policy_namespace: str
    peer: SelectorPeer | None
    block: IPBlock | None = None
    named: tuple[Protocol, str, int] | None = None

    def matches(self, state: PeerMatcher, pod: Pod, version: int) -> bool:
        if not pod.is_selectable or not pod.ips_of(version):
            return False
        if self.peer is not None and not state.peer_matches_pod(
            self.peer, self.policy_namespace, pod
        ):
            return False
        return self.narrower(pod, version)

    def matches_in_scope(self, pod: Pod, version: int) -> bool:
        """``matches`` for a pod whose namespace the namespace selector admits."""
        if not pod.is_selectable or not pod.ips_of(version):
            return False
        selector = self.peer.pod_selector if self.peer is not None else None
        if selector is not None and not selector.matches(pod.labels):
            return False
        return self.narrower(pod, version)

    def narrower(self, pod: Pod, version: int) -> bool:
        if self.block is not None and not any(
            self.block.contains(ip) for ip in pod.ips_of(version)
        ):
            return False
        if self.named is not None:
            protocol, name, number = self.named
            if pod.resolve_named_port(name, protocol) != number:
                return False
        return True

    def members(self, state: PolicyView, version: int) -> list[Pod]:
        if self.peer is None:
            pods = state.all_selectable_pods()
            return [pod for pod in pods if self.matches(state, pod, version)]
        # peer_pods already applied the selectors; only the narrower filters are left.
        narrowed = GroupSpec(self.direction, self.policy_namespace, None, self.block, self.named)
        return [
            pod
            for pod in state.peer_pods(self.peer, self.policy_namespace)
            if narrowed.matches(state, pod, version)
        ]


@dataclass(slots=True)
class GroupEntry:
    """A peer group: its members by address (kept up to date pod by pod) and its chains.

    ``subtrees`` remembers each tree chain with the entries it was built from, so a
    membership change rebuilds only the chains on the changed address's path.
    """

    spec: GroupSpec
    members: dict[int, set[str]]
    addresses: list[int] = field(default_factory=list)  # sorted keys of members
    unit: Unit | None = None
    subtrees: TreeMemo = field(default_factory=dict)


class InScope:
    """The pods of one relabelled namespace that each spec would match once its
    namespace selector admits them (``GroupSpec.matches_in_scope``), memoized by what
    decides it: many groups share a pod selector."""

    def __init__(self, pods: Sequence[Pod], version: int) -> None:
        self.pods = pods
        self._version = version
        self._memo: dict[object, list[Pod]] = {}

    def __call__(self, spec: GroupSpec) -> list[Pod]:
        selector = spec.peer.pod_selector if spec.peer is not None else None
        key = (selector, spec.block, spec.named)
        found = self._memo.get(key)
        if found is None:
            base = self._memo.get((selector, None, None))
            if base is None:
                version = self._version
                base = [
                    pod
                    for pod in self.pods
                    if pod.is_selectable
                    and pod.ips_of(version)
                    and (selector is None or selector.matches(pod.labels))
                ]
                self._memo[(selector, None, None)] = base
            if spec.block is None and spec.named is None:
                found = base
            else:
                found = [pod for pod in base if spec.narrower(pod, self._version)]
            self._memo[key] = found
        return found


Move = tuple[InScope, Callable[[GroupSpec], int]]


class PeerGroups:
    """Every peer group a cached policy chain jumps to, by chain name."""

    def __init__(
        self,
        render: Renderer,
        name_of: Callable[[str, str], str],
        register: Callable[[Unit], Unit],
    ) -> None:
        self._render = render
        self._name_of = name_of
        self._register = register
        self.version = render.version
        self.groups: dict[str, GroupEntry] = {}

    def group(self, state: PolicyView, spec: GroupSpec, key: str) -> str:
        """The group chain for ``spec`` (``key`` names it), built on first use."""
        name = self._name_of("G", f"{spec.direction.value}|{key}")
        if name not in self.groups:
            self.build(state, spec, name)
        return name

    def build(self, state: PolicyView, spec: GroupSpec, name: str) -> None:
        """(Re)compute a group's membership from scratch; re-render where it moved."""
        members: dict[int, set[str]] = {}
        for pod in spec.members(state, self.version):
            for ip in pod.ips_of(self.version):
                members.setdefault(int(ip), set()).add(pod.key)
        previous = self.groups.get(name)
        group = GroupEntry(
            spec, members, sorted(members), subtrees=previous.subtrees if previous else {}
        )
        self.groups[name] = group
        if previous is None or previous.unit is None:
            self._render_group(name, group)
            return
        dirty = {
            address
            for address in previous.members.keys() | members.keys()
            if previous.members.get(address) != members.get(address)
        }
        if dirty:
            self._render_group(name, group, dirty)
        else:
            group.unit = previous.unit

    def apply_pod_changes(
        self,
        previous: PeerMatcher,
        state: PeerMatcher,
        pod_changes: Sequence[PodChange],
        only: Callable[[GroupSpec], bool] | None = None,
    ) -> None:
        """Move changed pods in or out of every group, then re-render the groups that
        moved, along the changed addresses' paths only."""
        version = self.version
        for name, group in self.groups.items():
            if only is not None and not only(group.spec):
                continue
            dirty: set[int] = set()
            for old, new in pod_changes:
                if old is not None and group.spec.matches(previous, old, version):
                    for ip in old.ips_of(version):
                        address = int(ip)
                        holders = group.members.get(address)
                        if holders is not None:
                            holders.discard(old.key)
                            if not holders:
                                del group.members[address]
                                del group.addresses[bisect.bisect_left(group.addresses, address)]
                        dirty.add(address)
                if new is not None and group.spec.matches(state, new, version):
                    for ip in new.ips_of(version):
                        address = int(ip)
                        if address not in group.members:
                            group.members[address] = set()
                            bisect.insort(group.addresses, address)
                        group.members[address].add(new.key)
                        dirty.add(address)
            if dirty:
                self._render_group(name, group, dirty)

    def move_namespace(self, in_scope: InScope, flip: Callable[[GroupSpec], int]) -> None:
        """The unchanged pods of a relabelled namespace enter (``flip`` +1) or leave (-1)
        each group whose namespace selector now admits (or no longer admits) them."""
        version = self.version
        for name, group in self.groups.items():
            step = flip(group.spec)
            if not step:
                continue
            dirty: set[int] = set()
            for pod in in_scope(group.spec):
                for ip in pod.ips_of(version):
                    address = int(ip)
                    if step > 0:
                        if address not in group.members:
                            group.members[address] = set()
                            bisect.insort(group.addresses, address)
                        group.members[address].add(pod.key)
                    else:
                        holders = group.members.get(address)
                        if holders is None:
                            continue
                        holders.discard(pod.key)
                        if not holders:
                            del group.members[address]
                            del group.addresses[bisect.bisect_left(group.addresses, address)]
                    dirty.add(address)
            if dirty:
                self._render_group(name, group, dirty)

    def rebuild_where(self, state: PolicyView, affected: Callable[[GroupSpec], bool]) -> None:
        for name, group in list(self.groups.items()):
            if affected(group.spec):
                self.build(state, group.spec, name)

    def keep_only(self, reachable: Set[str]) -> None:
        self.groups = {k: v for k, v in self.groups.items() if k in reachable}

    def _render_group(
        self, name: str, group: GroupEntry, dirty: Iterable[int] | None = None
    ) -> None:
        direction = group.spec.direction
        members = group.members

        def leaf_rules(addresses: Sequence[int]) -> list[Rule]:
            return self._render.group_leaf(direction, members, addresses)

        chains = build_tree(
            self._render,
            self._name_of,
            name,
            group.addresses,
            leaf_rules,
            direction,
            "peers",
            GROUP_DEPTH,
            group.subtrees,
            dirty,
        )
        group.unit = self._register(self._render.unit(chains))
