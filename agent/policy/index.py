"""The cluster kept up to date by deltas, with the indexes the compiler asks: selectable
pods by namespace and by label, policies by namespace. A change costs what it touches,
never a walk over every object; each ``apply`` records the ``Delta`` it made, so a
compiler that saw the previous generation can rebuild only what changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from agent.model.objects import (
    ClusterNetworkPolicy,
    Direction,
    IPAddress,
    IPNetwork,
    Namespace,
    NetworkPolicy,
    Node,
    NodePeer,
    Pod,
    SelectorPeer,
    Tier,
)
from agent.policy.view import (
    Delta,
    Pair,
    TierOrder,
    applying,
    default_namespace_labels,
    is_local,
    node_peer_members,
    peer_matches_pod,
    peer_members,
    tiers_of,
)

T = TypeVar("T")
Obj = Pod | Namespace | NetworkPolicy | Node | ClusterNetworkPolicy


def _add(index: dict[T, dict[str, Pod]], key: T, pod: Pod) -> None:
    index.setdefault(key, {})[pod.key] = pod


def _remove(index: dict[T, dict[str, Pod]], key: T, pod: Pod) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(pod.key, None)
        if not bucket:
            del index[key]


class TrackedStore(dict[str, T]):
    """A dict that remembers which keys were set or removed since ``take_changed``: the
    store a source's changes are folded into, so the index hears of exactly those."""

    def __init__(self) -> None:
        super().__init__()
        self._changed: set[str] = set()

    def __setitem__(self, key: str, value: T) -> None:
        self._changed.add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._changed.add(key)
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self._changed.add(key)
        return super().pop(key, *default)

    def take_changed(self) -> list[tuple[str, T | None]]:
        """(key, object now or None) for every key touched since the last call."""
        changed = [(key, self.get(key)) for key in self._changed]
        self._changed = set()
        return changed


class ClusterIndex:
    def __init__(self) -> None:
        self.namespaces: dict[str, Namespace] = {}
        self.pods: dict[str, Pod] = {}
        self.policies: dict[str, NetworkPolicy] = {}
        self.nodes: dict[str, Node] = {}
        self.cluster_policies: dict[str, ClusterNetworkPolicy] = {}
        self._tiers: TierOrder | None = None
        # Pods selectors may match (selectable, not quarantined), by namespace and label.
        self._by_namespace: dict[str, dict[str, Pod]] = {}
        self._by_label: dict[tuple[str, str], dict[str, Pod]] = {}
        self._policies_in: dict[str, dict[str, NetworkPolicy]] = {}
        self._sorted_policies: dict[str, tuple[NetworkPolicy, ...]] = {}
        self._all_sorted: tuple[Pod, ...] | None = None
        self._peer_cache: dict[tuple[SelectorPeer, str], tuple[Pod, ...]] = {}
        self.invalid_policies = 0
        self.generation = 0
        self.delta = Delta()  # what the last apply changed

    # --- deltas --------------------------------------------------------------------

    def apply(
        self,
        pods: Iterable[tuple[str, Pod | None]] = (),
        namespaces: Iterable[tuple[str, Namespace | None]] = (),
        policies: Iterable[tuple[str, NetworkPolicy | None]] = (),
        nodes: Iterable[tuple[str, Node | None]] = (),
        cluster_policies: Iterable[tuple[str, ClusterNetworkPolicy | None]] = (),
    ) -> Delta:
        """Set each key to its object (None: deleted); one generation."""
        pod_pairs: list[Pair[Pod]] = []
        for key, pod in pods:
            old = self.pods.get(key)
            if old is pod:
                continue
            pod_pairs.append((old, pod))
            if old is not None:
                self._unindex_pod(old)
                del self.pods[key]
            if pod is not None:
                self.pods[key] = pod
                self._index_pod(pod)
        namespace_pairs: list[Pair[Namespace]] = []
        for key, namespace in namespaces:
            old_ns = self.namespaces.get(key)
            if old_ns is namespace:
                continue
            namespace_pairs.append((old_ns, namespace))
            if namespace is None:
                del self.namespaces[key]
            else:
                self.namespaces[key] = namespace
        policy_pairs: list[Pair[NetworkPolicy]] = []
        for key, policy in policies:
            old_policy = self.policies.get(key)
            if old_policy is policy:
                continue
            policy_pairs.append((old_policy, policy))
            if old_policy is not None:
                self.invalid_policies -= bool(old_policy.problems)
                del self.policies[key]
                del self._policies_in[old_policy.namespace][key]
                self._sorted_policies.pop(old_policy.namespace, None)
            if policy is not None:
                self.invalid_policies += bool(policy.problems)
                self.policies[key] = policy
                self._policies_in.setdefault(policy.namespace, {})[key] = policy
                self._sorted_policies.pop(policy.namespace, None)
        node_pairs: list[Pair[Node]] = []
        for key, node in nodes:
            old_node = self.nodes.get(key)
            if old_node is node:
                continue
            node_pairs.append((old_node, node))
            if node is None:
                del self.nodes[key]
            else:
                self.nodes[key] = node
        cluster_pairs: list[Pair[ClusterNetworkPolicy]] = []
        for key, cluster_policy in cluster_policies:
            old_cluster = self.cluster_policies.get(key)
            if old_cluster is cluster_policy:
                continue
            cluster_pairs.append((old_cluster, cluster_policy))
            if old_cluster is not None:
                self.invalid_policies -= bool(old_cluster.problems)
                del self.cluster_policies[key]
            if cluster_policy is not None:
                self.invalid_policies += bool(cluster_policy.problems)
                self.cluster_policies[key] = cluster_policy
        if cluster_pairs:
            self._tiers = None
        if pod_pairs or namespace_pairs:
            self._peer_cache.clear()
        if pod_pairs:
            self._all_sorted = None
        self.delta = Delta(
            tuple(pod_pairs),
            tuple(policy_pairs),
            tuple(namespace_pairs),
            tuple(cluster_pairs),
            tuple(node_pairs),
        )
        self.generation += 1
        return self.delta

    def delta_since(self, generation: int) -> Delta | None:
        """What changed since ``generation``, or None when that is further back than the
        last apply (the caller then starts from scratch)."""
        if generation == self.generation:
            return Delta()
        if generation == self.generation - 1:
            return self.delta
        return None

    def _index_pod(self, pod: Pod) -> None:
        if not pod.is_peer:
            return
        _add(self._by_namespace, pod.namespace, pod)
        for item in pod.labels.items():
            _add(self._by_label, item, pod)

    def _unindex_pod(self, pod: Pod) -> None:
        if not pod.is_peer:
            return
        _remove(self._by_namespace, pod.namespace, pod)
        for item in pod.labels.items():
            _remove(self._by_label, item, pod)

    # --- the questions (agent.policy.view.PolicyView) -------------------------------

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        namespace = self.namespaces.get(name)
        return namespace.labels if namespace is not None else default_namespace_labels(name)

    def all_selectable_pods(self) -> Sequence[Pod]:
        if self._all_sorted is None:
            self._all_sorted = tuple(
                pod for _, pod in sorted(self.pods.items()) if pod.is_selectable
            )
        return self._all_sorted

    def selectable_pods_in(self, namespace: str) -> Sequence[Pod]:
        """The pods of ``namespace`` that selectors may match (quarantined ones never)."""
        return tuple(self._by_namespace.get(namespace, {}).values())

    def local_pods(self, node_name: str) -> tuple[Pod, ...]:
        return tuple(pod for pod in self.all_selectable_pods() if is_local(pod, node_name))

    def policies_selecting(self, pod: Pod, direction: Direction) -> tuple[NetworkPolicy, ...]:
        ordered = self._sorted_policies.get(pod.namespace)
        if ordered is None:
            ordered = tuple(
                policy for _, policy in sorted(self._policies_in.get(pod.namespace, {}).items())
            )
            self._sorted_policies[pod.namespace] = ordered
        return tuple(
            policy for policy in ordered if direction in policy.policy_types and policy.selects(pod)
        )

    def peer_pods(self, peer: SelectorPeer, policy_namespace: str) -> tuple[Pod, ...]:
        key = (peer, policy_namespace)
        found = self._peer_cache.get(key)
        if found is None:
            found = self._peer_cache[key] = self._resolve_peer_pods(peer, policy_namespace)
        return found

    def peer_matches_pod(self, peer: SelectorPeer, policy_namespace: str, pod: Pod) -> bool:
        return peer_matches_pod(peer, policy_namespace, pod, self.namespace_labels, self.namespaces)

    def node_addresses(self, node_name: str) -> tuple[IPAddress, ...]:
        node = self.nodes.get(node_name)
        return node.addresses if node else ()

    def node_pod_cidrs(self, node_name: str) -> tuple[IPNetwork, ...]:
        node = self.nodes.get(node_name)
        return node.pod_cidrs if node else ()

    def cluster_policies_selecting(
        self, pod: Pod, direction: Direction, tier: Tier
    ) -> tuple[ClusterNetworkPolicy, ...]:
        if self._tiers is None:
            self._tiers = tiers_of(self.cluster_policies.values())
        return applying(self._tiers[direction, tier], pod, self.namespace_labels, self.namespaces)

    def node_peer_addresses(self, peer: NodePeer) -> tuple[IPAddress, ...]:
        return node_peer_members(peer, self.nodes.values())

    def _namespace_quarantined(self, name: str) -> bool:
        namespace = self.namespaces.get(name)
        return namespace is not None and namespace.quarantined

    def _resolve_peer_pods(self, peer: SelectorPeer, policy_namespace: str) -> tuple[Pod, ...]:
        if peer.namespace_selector is None:
            namespaces = {policy_namespace}
        else:
            namespace_selector = peer.namespace_selector
            namespaces = {
                ns
                for ns in self.namespaces.keys() | self._by_namespace.keys()
                if namespace_selector.matches(self.namespace_labels(ns))
            }
        namespaces = {ns for ns in namespaces if not self._namespace_quarantined(ns)}
        return peer_members(
            peer.pod_selector,
            namespaces,
            lambda item: self._by_label.get(item, {}).values(),
            lambda namespace: self._by_namespace.get(namespace, {}).values(),
        )
