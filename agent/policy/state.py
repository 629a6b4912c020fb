"""A consistent snapshot of the cluster as the policy layer sees it, with indexes."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agent.model.objects import (
    NAMESPACE_NAME_LABEL,
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
    TierOrder,
    applying,
    is_local,
    node_peer_members,
    peer_matches_pod,
    peer_members,
    tiers_of,
)


@dataclass(frozen=True)
class ClusterState:
    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    pods: Mapping[str, Pod] = field(default_factory=dict)  # by "ns/name"
    policies: Mapping[str, NetworkPolicy] = field(default_factory=dict)  # by "ns/name"
    nodes: Mapping[str, Node] = field(default_factory=dict)
    cluster_policies: Mapping[str, ClusterNetworkPolicy] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        namespaces: Iterable[Namespace] = (),
        pods: Iterable[Pod] = (),
        policies: Iterable[NetworkPolicy] = (),
        nodes: Iterable[Node] = (),
        cluster_policies: Iterable[ClusterNetworkPolicy] = (),
    ) -> ClusterState:
        return cls(
            namespaces={ns.name: ns for ns in namespaces},
            pods={pod.key: pod for pod in pods},
            policies={policy.key: policy for policy in policies},
            nodes={node.name: node for node in nodes},
            cluster_policies={policy.key: policy for policy in cluster_policies},
        )

    # --- indexes (computed once per snapshot) ------------------------------------

    @functools.cached_property
    def selectable_pods(self) -> tuple[Pod, ...]:
        return tuple(pod for _, pod in sorted(self.pods.items()) if pod.is_selectable)

    @functools.cached_property
    def pods_by_namespace(self) -> Mapping[str, tuple[Pod, ...]]:
        """Pods selectors may match (selectable, not quarantined), by namespace."""
        grouped: dict[str, list[Pod]] = defaultdict(list)
        for pod in self.selectable_pods:
            if pod.is_peer:
                grouped[pod.namespace].append(pod)
        return {ns: tuple(pods) for ns, pods in grouped.items()}

    @functools.cached_property
    def pod_by_ip(self) -> Mapping[IPAddress, Pod]:
        """Selectable pods by address. Finished pods never claim an address."""
        index: dict[IPAddress, Pod] = {}
        for pod in self.selectable_pods:
            for ip in pod.ips:
                index.setdefault(ip, pod)
        return index

    @functools.cached_property
    def policies_by_namespace(self) -> Mapping[str, tuple[NetworkPolicy, ...]]:
        grouped: dict[str, list[NetworkPolicy]] = defaultdict(list)
        for _, policy in sorted(self.policies.items()):
            grouped[policy.namespace].append(policy)
        return {ns: tuple(policies) for ns, policies in grouped.items()}

    def all_selectable_pods(self) -> Sequence[Pod]:
        return self.selectable_pods

    def selectable_pods_in(self, namespace: str) -> Sequence[Pod]:
        return self.pods_by_namespace.get(namespace, ())

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        namespace = self.namespaces.get(name)
        if namespace is None:
            # Not seen (yet): it still carries the label the API server always sets.
            return {NAMESPACE_NAME_LABEL: name}
        return namespace.labels

    # --- selection -----------------------------------------------------------------

    def local_pods(self, node_name: str) -> tuple[Pod, ...]:
        return tuple(pod for pod in self.selectable_pods if is_local(pod, node_name))

    def policies_selecting(self, pod: Pod, direction: Direction) -> tuple[NetworkPolicy, ...]:
        """Policies that isolate ``pod`` in ``direction``, in a stable order."""
        return tuple(
            policy
            for policy in self.policies_by_namespace.get(pod.namespace, ())
            if direction in policy.policy_types and policy.selects(pod)
        )

    @functools.cached_property
    def _tiers(self) -> TierOrder:
        return tiers_of(self.cluster_policies.values())

    def cluster_policies_selecting(
        self, pod: Pod, direction: Direction, tier: Tier
    ) -> tuple[ClusterNetworkPolicy, ...]:
        """The ClusterNetworkPolicies of ``tier`` that apply to ``pod`` in ``direction``,
        in evaluation order (priority, then name)."""
        return applying(self._tiers[direction, tier], pod, self.namespace_labels, self.namespaces)

    def node_peer_addresses(self, peer: NodePeer) -> tuple[IPAddress, ...]:
        return node_peer_members(peer, self.nodes.values())

    def selected_namespaces(self, peer: SelectorPeer, policy_namespace: str) -> tuple[str, ...]:
        """The namespaces whose pods ``peer`` may match: never a quarantined one."""
        if peer.namespace_selector is None:
            candidates = {policy_namespace}
        else:
            selector = peer.namespace_selector
            candidates = {
                ns
                for ns in set(self.namespaces) | set(self.pods_by_namespace)
                if selector.matches(self.namespace_labels(ns))
            }
        return tuple(
            sorted(
                ns
                for ns in candidates
                if not (ns in self.namespaces and self.namespaces[ns].quarantined)
            )
        )

    @functools.cached_property
    def pods_by_label(self) -> Mapping[tuple[str, str], tuple[Pod, ...]]:
        """Pods selectors may match by (label key, value), each list in key order."""
        grouped: dict[tuple[str, str], list[Pod]] = defaultdict(list)
        for pod in self.selectable_pods:
            if not pod.is_peer:
                continue
            for item in pod.labels.items():
                grouped[item].append(pod)
        return {item: tuple(pods) for item, pods in grouped.items()}

    @functools.cached_property
    def _peer_pods_cache(self) -> dict[tuple[SelectorPeer, str], tuple[Pod, ...]]:
        return {}

    def peer_pods(self, peer: SelectorPeer, policy_namespace: str) -> tuple[Pod, ...]:
        """Selectable pods a selector peer stands for, in key order (memoized per
        snapshot: both families' compilers ask the same questions)."""
        cache = self._peer_pods_cache
        key = (peer, policy_namespace)
        found = cache.get(key)
        if found is None:
            found = cache[key] = self._resolve_peer_pods(peer, policy_namespace)
        return found

    def _resolve_peer_pods(self, peer: SelectorPeer, policy_namespace: str) -> tuple[Pod, ...]:
        return peer_members(
            peer.pod_selector,
            set(self.selected_namespaces(peer, policy_namespace)),
            lambda item: self.pods_by_label.get(item, ()),
            lambda namespace: self.pods_by_namespace.get(namespace, ()),
        )

    def peer_matches_pod(self, peer: SelectorPeer, policy_namespace: str, pod: Pod) -> bool:
        return peer_matches_pod(peer, policy_namespace, pod, self.namespace_labels, self.namespaces)

    def node_addresses(self, node_name: str) -> tuple[IPAddress, ...]:
        node = self.nodes.get(node_name)
        return node.addresses if node else ()

    def node_pod_cidrs(self, node_name: str) -> tuple[IPNetwork, ...]:
        node = self.nodes.get(node_name)
        return node.pod_cidrs if node else ()

    @property
    def problems(self) -> tuple[str, ...]:
        namespaced = (p for policy in self.policies.values() for p in policy.problems)
        cluster = (p for policy in self.cluster_policies.values() for p in policy.problems)
        return (*namespaced, *cluster)


@dataclass(frozen=True, slots=True)
class BuiltState:
    state: ClusterState
    problems: tuple[str, ...]


def build_state(objects: Iterable[object]) -> BuiltState:
    """Parse API objects of any supported kind (``*List`` documents expanded) into a
    snapshot. Objects the agent cannot use are skipped and reported; the rest still apply.
    """
    from agent.model.parse import parse_objects  # the policy layer builds on the model

    parsed = parse_objects(objects)
    state = ClusterState.of(
        parsed.namespaces, parsed.pods, parsed.policies, parsed.nodes, parsed.cluster_policies
    )
    return BuiltState(state, parsed.problems)
