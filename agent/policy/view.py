"""What the compiler asks of the cluster, and what changed since it last asked.

Two things answer these questions: ``ClusterState``, an immutable snapshot (render,
explain, tests), and ``ClusterIndex``, kept up to date by deltas (the running agent).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

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
from agent.model.selectors import LabelSelector, Operator

T = TypeVar("T")
Pair = tuple[T | None, T | None]  # (old, new): None for "absent"


class PolicyView(Protocol):
    @property
    def pods(self) -> Mapping[str, Pod]: ...
    @property
    def policies(self) -> Mapping[str, NetworkPolicy]: ...
    @property
    def namespaces(self) -> Mapping[str, Namespace]: ...
    def namespace_labels(self, name: str) -> Mapping[str, str]: ...
    def all_selectable_pods(self) -> Sequence[Pod]: ...
    def selectable_pods_in(self, namespace: str) -> Sequence[Pod]: ...
    def local_pods(self, node_name: str) -> tuple[Pod, ...]: ...
    def policies_selecting(self, pod: Pod, direction: Direction) -> tuple[NetworkPolicy, ...]: ...
    def peer_pods(self, peer: SelectorPeer, policy_namespace: str) -> tuple[Pod, ...]: ...
    def peer_matches_pod(self, peer: SelectorPeer, policy_namespace: str, pod: Pod) -> bool: ...
    def node_addresses(self, node_name: str) -> tuple[IPAddress, ...]: ...
    def node_pod_cidrs(self, node_name: str) -> tuple[IPNetwork, ...]: ...
    @property
    def cluster_policies(self) -> Mapping[str, ClusterNetworkPolicy]: ...
    @property
    def nodes(self) -> Mapping[str, Node]: ...
    def cluster_policies_selecting(
        self, pod: Pod, direction: Direction, tier: Tier
    ) -> tuple[ClusterNetworkPolicy, ...]: ...
    def node_peer_addresses(self, peer: NodePeer) -> tuple[IPAddress, ...]: ...


class PeerMatcher(Protocol):
    def peer_matches_pod(self, peer: SelectorPeer, policy_namespace: str, pod: Pod) -> bool: ...


def default_namespace_labels(name: str) -> Mapping[str, str]:
    # Not seen (yet): it still carries the label the API server always sets.
    return {NAMESPACE_NAME_LABEL: name}


def is_local(pod: Pod, node_name: str) -> bool:
    """``pod`` is enforced on ``node_name``: it runs there, or it is quarantined and its
    node is unknown (then every node isolates it)."""
    return pod.node_name == node_name or (pod.node_name is None and pod.quarantined)


def quarantined(view: PolicyView, pod: Pod) -> bool:
    """``pod`` is quarantined, by its own unreadable fields or its namespace's labels:
    isolated both ways with nothing allowed, and never a selector peer."""
    if pod.quarantined:
        return True
    namespace = view.namespaces.get(pod.namespace)
    return namespace is not None and namespace.quarantined


def quarantine_changed(delta: Delta) -> bool:
    """A namespace entered or left quarantine: that changes every pod in it at once."""
    return any(
        (old is not None and old.quarantined) != (new is not None and new.quarantined)
        for old, new in delta.namespaces
    )


def peer_matches_pod(
    peer: SelectorPeer,
    policy_namespace: str,
    pod: Pod,
    namespace_labels: Callable[[str], Mapping[str, str]],
    namespaces: Mapping[str, Namespace],
) -> bool:
    # A quarantined pod (or any pod of a quarantined namespace) is nobody's peer.
    if not pod.is_peer:
        return False
    namespace = namespaces.get(pod.namespace)
    if namespace is not None and namespace.quarantined:
        return False
    if peer.namespace_selector is None:
        if pod.namespace != policy_namespace:
            return False
    elif not peer.namespace_selector.matches(namespace_labels(pod.namespace)):
        return False
    return peer.pod_selector is None or peer.pod_selector.matches(pod.labels)


def subject_selects(
    policy: ClusterNetworkPolicy,
    pod: Pod,
    namespace_labels: Callable[[str], Mapping[str, str]],
    namespaces: Mapping[str, Namespace],
) -> bool:
    """``policy`` applies to ``pod``: never a hostNetwork, finished or address-less pod;
    every other pod when the subject could not be read (fail closed). A quarantined pod
    is denied everything before any tier is asked, so it needs no answer here."""
    if not pod.is_selectable:
        return False
    if policy.subject is None:
        return True
    return peer_matches_pod(policy.subject, pod.namespace, pod, namespace_labels, namespaces)


def tier_order(
    policies: Iterable[ClusterNetworkPolicy], direction: Direction, tier: Tier
) -> tuple[ClusterNetworkPolicy, ...]:
    """The policies of ``tier`` with rules in ``direction``, in evaluation order (a
    policy without rules in a direction does not affect it)."""
    return tuple(
        sorted(
            (p for p in policies if p.tier is tier and p.rules(direction)),
            key=lambda p: p.order,
        )
    )


TierOrder = dict[tuple[Direction, Tier], tuple[ClusterNetworkPolicy, ...]]


def tiers_of(policies: Iterable[ClusterNetworkPolicy]) -> TierOrder:
    """Every tier's policies per direction, in evaluation order (``tier_order``)."""
    listed = tuple(policies)
    return {(d, t): tier_order(listed, d, t) for d in Direction for t in Tier}


def applying(
    ordered: Iterable[ClusterNetworkPolicy],
    pod: Pod,
    namespace_labels: Callable[[str], Mapping[str, str]],
    namespaces: Mapping[str, Namespace],
) -> tuple[ClusterNetworkPolicy, ...]:
    """Those of ``ordered`` whose subject selects ``pod``, keeping the order."""
    return tuple(p for p in ordered if subject_selects(p, pod, namespace_labels, namespaces))


def node_peer_members(peer: NodePeer, nodes: Iterable[Node]) -> tuple[IPAddress, ...]:
    """The addresses of every node ``peer`` selects, in address order."""
    found = {address for node in nodes if peer.matches(node) for address in node.addresses}
    return tuple(sorted(found, key=lambda a: (a.version, int(a))))


def diff(previous: Mapping[str, T], current: Mapping[str, T]) -> tuple[Pair[T], ...]:
    """(old, new) for every key whose object is not the very same one in both."""
    if previous is current:
        return ()
    changed: list[Pair[T]] = [
        (previous.get(key), value)
        for key, value in current.items()
        if previous.get(key) is not value
    ]
    changed.extend((value, None) for key, value in previous.items() if key not in current)
    return tuple(changed)


@dataclass(frozen=True, slots=True)
class Delta:
    """The objects that changed between two views, as (old, new) pairs."""

    pods: tuple[Pair[Pod], ...] = ()
    policies: tuple[Pair[NetworkPolicy], ...] = ()
    namespaces: tuple[Pair[Namespace], ...] = ()
    cluster_policies: tuple[Pair[ClusterNetworkPolicy], ...] = ()
    nodes: tuple[Pair[Node], ...] = ()

    @classmethod
    def between(cls, previous: PolicyView, current: PolicyView) -> Delta:
        """By identity (snapshots share unchanged objects): a walk over every object."""
        return cls(
            pods=diff(previous.pods, current.pods),
            policies=diff(previous.policies, current.policies),
            namespaces=diff(previous.namespaces, current.namespaces),
            cluster_policies=diff(previous.cluster_policies, current.cluster_policies),
            nodes=diff(previous.nodes, current.nodes),
        )

    def relabelled(self) -> dict[str, tuple[Mapping[str, str], Mapping[str, str]]]:
        """Namespaces whose labels changed: name → (old labels, new labels)."""
        out: dict[str, tuple[Mapping[str, str], Mapping[str, str]]] = {}
        for old, new in self.namespaces:
            name = (new or old).name  # type: ignore[union-attr]
            before = old.labels if old is not None else default_namespace_labels(name)
            after = new.labels if new is not None else default_namespace_labels(name)
            if before != after:
                out[name] = (before, after)
        return out


class Before:
    """``view`` as it matched peers before ``delta``: namespaces carry their old labels.
    (Pods are given explicitly, old or new, so only namespace labels need rolling back.)"""

    def __init__(
        self,
        view: PolicyView,
        relabelled: Mapping[str, tuple[Mapping[str, str], Mapping[str, str]]],
    ) -> None:
        self._view = view
        self._old = {name: labels[0] for name, labels in relabelled.items()}

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        old = self._old.get(name)
        return old if old is not None else self._view.namespace_labels(name)

    def peer_matches_pod(self, peer: SelectorPeer, policy_namespace: str, pod: Pod) -> bool:
        return peer_matches_pod(
            peer, policy_namespace, pod, self.namespace_labels, self._view.namespaces
        )


def peer_members(
    pod_selector: LabelSelector | None,
    namespaces: Collection[str],
    pods_with_label: Callable[[tuple[str, str]], Iterable[Pod]],
    pods_in_namespace: Callable[[str], Iterable[Pod]],
) -> tuple[Pod, ...]:
    """The peer pods of ``namespaces`` that ``pod_selector`` matches, in key order.

    Both views answer through here: the label index narrows the search when the selector
    has an ``In`` requirement (the smallest one wins), else the namespaces are walked.
    """
    candidates: list[Pod] | None = None
    if pod_selector is not None:
        for requirement in pod_selector.requirements:
            if requirement.operator is not Operator.IN:
                continue
            found = [
                pod
                for value in requirement.values
                for pod in pods_with_label((requirement.key, value))
            ]
            if candidates is None or len(found) < len(candidates):
                candidates = found
    in_scope: Iterable[Pod]
    if candidates is None:
        in_scope = (pod for namespace in namespaces for pod in pods_in_namespace(namespace))
    else:
        in_scope = (pod for pod in candidates if pod.namespace in namespaces)
    members = [pod for pod in in_scope if pod_selector is None or pod_selector.matches(pod.labels)]
    members.sort(key=lambda pod: pod.key)
    return tuple(members)
