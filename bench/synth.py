"""Synthetic clusters of fixed seeds, shaped like real ones.

Pods carry app/tier labels and named container ports (the same name mapping to different
numbers on different apps); each namespace gets a default deny, and policies mix what
real clusters hold: pod-label allows, namespace-selector allows, ipBlocks with except,
named ports, port ranges, and egress rules (DNS, other namespaces, external blocks).
The measured node ("node-0") holds ``pods_on_measured_node`` pods, like a full kubelet.

A size with ``cluster_policies`` adds that many ClusterNetworkPolicies
(``policy.networking.k8s.io/v1alpha2``) drawn from a random generator of their own, so
the rest of the cluster is exactly the size without them ("L+cnp" is "L" plus 100): the
figures of the two compare what the ClusterNetworkPolicies cost and nothing else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

MEASURED_NODE = "node-0"


@dataclass(frozen=True, slots=True)
class Size:
    name: str
    pods: int
    policies: int
    namespaces: int
    pods_on_measured_node: int = 110
    pods_per_other_node: int = 110
    cluster_policies: int = 0


SIZES = {
    "tiny": Size("tiny", pods=30, policies=8, namespaces=3, pods_on_measured_node=10),
    "S": Size("S", pods=100, policies=20, namespaces=5),
    "M": Size("M", pods=1000, policies=200, namespaces=15),
    "L": Size("L", pods=5000, policies=1000, namespaces=30),
    # The same clusters with ClusterNetworkPolicies (admin and baseline) on top.
    "tiny+cnp": Size(
        "tiny+cnp", pods=30, policies=8, namespaces=3, pods_on_measured_node=10,
        cluster_policies=12,
    ),
    "L+cnp": Size("L+cnp", pods=5000, policies=1000, namespaces=30, cluster_policies=100),
}  # fmt: skip

# The ClusterNetworkPolicies' own generator, seeded apart from the rest of the cluster.
CLUSTER_POLICY_SEED_OFFSET = 1_000_003
ZONES = 3

APPS_PER_NAMESPACE = 8
TIERS = ("web", "api", "db", "cache", "worker")


def _pod_ip(node: int, index: int) -> tuple[str, str]:
    # node n owns 10.(n/256).(n%256).0/24 and fd00:10:244:n::/64
    return (
        f"10.{100 + node // 256}.{node % 256}.{index + 2}",
        f"fd00:10:{100 + node // 256:x}:{node % 256:x}::{index + 2:x}",
    )


def namespace_name(index: int) -> str:
    return f"ns-{index:02d}"


def generate(size: Size, seed: int = 1) -> list[dict[str, Any]]:
    """All objects of the cluster, as the API would return them (dicts)."""
    rng = random.Random(seed)
    objects: list[dict[str, Any]] = []
    namespaces = [namespace_name(i) for i in range(size.namespaces)]
    for i, name in enumerate(namespaces):
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/metadata.name": name,
                        "team": f"team-{i % 6}",
                        "env": "prod" if i % 3 else "dev",
                    },
                },
            }
        )
    # Nodes: the measured one first, then as many as the remaining pods need.
    remaining = size.pods - size.pods_on_measured_node
    node_count = 1 + max(0, -(-remaining // size.pods_per_other_node))
    for n in range(node_count):
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"node-{n}",
                    # What ClusterNetworkPolicy ``nodes`` peers select on.
                    "labels": {
                        "kubernetes.io/hostname": f"node-{n}",
                        "topology.kubernetes.io/zone": f"zone-{n % ZONES}",
                        **({"node-role.kubernetes.io/control-plane": ""} if n == 0 else {}),
                    },
                },
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": f"172.18.{n // 250}.{n % 250 + 2}"},
                        {"type": "InternalIP", "address": f"fc00:f853::{n + 2:x}"},
                    ]
                },
            }
        )
    slots = [0] * node_count
    for p in range(size.pods):
        node = (
            0
            if p < size.pods_on_measured_node
            else 1 + (p - size.pods_on_measured_node) // size.pods_per_other_node
        )
        index = slots[node]
        slots[node] += 1
        namespace = namespaces[rng.randrange(len(namespaces))]
        app = rng.randrange(APPS_PER_NAMESPACE)
        tier = TIERS[app % len(TIERS)]
        http = 8080 if app % 2 else 80  # the same name, different numbers
        v4, v6 = _pod_ip(node, index)
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"app{app}-{p:05d}",
                    "namespace": namespace,
                    "uid": f"uid-{p:05d}",
                    "labels": {"app": f"app{app}", "tier": tier, "version": f"v{rng.randrange(3)}"},
                },
                "spec": {
                    "nodeName": f"node-{node}",
                    "containers": [
                        {
                            "name": "main",
                            "ports": [
                                {"name": "http", "containerPort": http, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            ],
                        }
                    ],
                },
                "status": {"phase": "Running", "podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}]},
            }
        )
    objects.extend(_policies(size, namespaces, rng))
    if size.cluster_policies:
        cnp_rng = random.Random(seed + CLUSTER_POLICY_SEED_OFFSET)
        objects.extend(_cluster_policies(size.cluster_policies, namespaces, cnp_rng))
    return objects


def _policies(size: Size, namespaces: list[str], rng: random.Random) -> list[dict[str, Any]]:
    policies: list[dict[str, Any]] = []

    def add(namespace: str, name: str, spec: dict[str, Any]) -> None:
        policies.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            }
        )

    for namespace in namespaces:  # default deny ingress everywhere
        if len(policies) < size.policies:
            add(namespace, "default-deny", {"podSelector": {}, "policyTypes": ["Ingress"]})
    kinds = ("pod-allow", "ns-allow", "ipblock", "named", "range", "egress-dns", "egress-ns")
    i = 0
    while len(policies) < size.policies:
        namespace = namespaces[rng.randrange(len(namespaces))]
        app = f"app{rng.randrange(APPS_PER_NAMESPACE)}"
        other = f"app{rng.randrange(APPS_PER_NAMESPACE)}"
        kind = kinds[i % len(kinds)]
        target = {"matchLabels": {"app": app}}
        if kind == "pod-allow":
            spec = {
                "podSelector": target,
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"app": other}}}],
                        "ports": [{"port": 8080}, {"port": 80}],
                    }
                ],
            }
        elif kind == "ns-allow":
            spec = {
                "podSelector": target,
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"team": f"team-{rng.randrange(6)}"}
                                },
                                "podSelector": {
                                    "matchExpressions": [
                                        {"key": "tier", "operator": "In", "values": ["web", "api"]}
                                    ]
                                },
                            }
                        ]
                    }
                ],
            }
        elif kind == "ipblock":
            spec = {
                "podSelector": target,
                "ingress": [
                    {
                        "from": [
                            {
                                "ipBlock": {
                                    "cidr": "172.16.0.0/12",
                                    "except": [f"172.{16 + rng.randrange(15)}.0.0/16"],
                                }
                            },
                            {"ipBlock": {"cidr": "fc00::/7", "except": ["fc00:f853::/32"]}},
                        ],
                        "ports": [{"protocol": "TCP", "port": 443}],
                    }
                ],
            }
        elif kind == "named":
            spec = {
                "podSelector": target,
                "ingress": [
                    {
                        "from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}],
                        "ports": [{"port": "http"}, {"port": "metrics"}],
                    }
                ],
            }
        elif kind == "range":
            first = 30000 + rng.randrange(1000)
            spec = {
                "podSelector": target,
                "ingress": [
                    {
                        "from": [{"podSelector": {}}],
                        "ports": [
                            {"protocol": "TCP", "port": first, "endPort": first + 100},
                            {"protocol": "UDP", "port": 5000},
                        ],
                    }
                ],
            }
        elif kind == "egress-dns":
            spec = {
                "podSelector": target,
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": namespaces[0]}
                                }
                            }
                        ],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                    },
                    {
                        "to": [
                            {
                                "ipBlock": {
                                    "cidr": "0.0.0.0/0",
                                    "except": ["10.0.0.0/8", "169.254.0.0/16"],
                                }
                            }
                        ]
                    },
                ],
            }
        else:  # egress-ns
            spec = {
                "podSelector": target,
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"team": f"team-{rng.randrange(6)}"}
                                },
                                "podSelector": {"matchLabels": {"app": other}},
                            }
                        ],
                        "ports": [{"port": "http"}],
                    }
                ],
            }
        add(namespace, f"{kind}-{i:04d}", spec)
        i += 1
    return policies


# --- ClusterNetworkPolicies -------------------------------------------------------------

# Each dimension cycles with its own period, so the 100 policies cover every combination
# of tier, subject kind, action, peer kind and port kind several times over; the
# selectors' values and the priorities are drawn at random.
CNP_ACTIONS = ("Accept", "Deny", "Pass")
CNP_INGRESS_PEERS = ("namespaces", "pods", "pods-any-namespace")
CNP_EGRESS_PEERS = ("namespaces", "pods", "networks", "nodes")
CNP_PROTOCOLS = ("all", "number", "range", "named", "udp", "sctp", "two")


def _cnp_namespaces(namespaces: list[str], rng: random.Random) -> dict[str, Any]:
    """A namespace selector: by team, by environment, or by name (two namespaces)."""
    choice = rng.randrange(3)
    if choice == 0:
        return {"matchLabels": {"team": f"team-{rng.randrange(6)}"}}
    if choice == 1:
        return {"matchLabels": {"env": rng.choice(("prod", "dev"))}}
    return {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "In",
                "values": sorted(rng.sample(namespaces, 2)),
            }
        ]
    }


def _cnp_pods(namespaces: list[str], rng: random.Random, *, any_namespace: bool) -> dict[str, Any]:
    pods: dict[str, Any] = {
        "namespaceSelector": {} if any_namespace else _cnp_namespaces(namespaces, rng),
        "podSelector": {"matchLabels": {"app": f"app{rng.randrange(APPS_PER_NAMESPACE)}"}},
    }
    if rng.randrange(3) == 0:
        pods["podSelector"] = {
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": sorted(rng.sample(TIERS, 2))}
            ]
        }
    return pods


def _cnp_protocols(kind: str, rng: random.Random) -> list[dict[str, Any]] | None:
    if kind == "all":
        return None  # all traffic, ICMP too
    if kind == "number":
        return [{"tcp": {"destinationPort": {"number": rng.choice((80, 443, 8080, 9090))}}}]
    if kind == "range":
        start = 30000 + rng.randrange(1000)
        return [{"tcp": {"destinationPort": {"range": {"start": start, "end": start + 200}}}}]
    if kind == "named":
        return [{"destinationNamedPort": rng.choice(("http", "metrics", "dns"))}]
    if kind == "udp":
        return [{"udp": {"destinationPort": {"number": rng.choice((53, 5000))}}}]
    if kind == "sctp":
        return [{"sctp": {"destinationPort": {"number": 9999}}}]
    # two: a number and a range
    return [
        {"tcp": {"destinationPort": {"number": 443}}},
        {"udp": {"destinationPort": {"range": {"start": 5000, "end": 5100}}}},
    ]


def _cnp_egress_peer(kind: str, namespaces: list[str], rng: random.Random) -> dict[str, Any]:
    if kind == "namespaces":
        return {"namespaces": _cnp_namespaces(namespaces, rng)}
    if kind == "pods":
        return {"pods": _cnp_pods(namespaces, rng, any_namespace=False)}
    if kind == "networks":
        return {
            "networks": rng.choice(
                (
                    ["169.254.169.254/32", "fd00:ec2::254/128"],
                    ["172.16.0.0/12"],
                    ["0.0.0.0/0", "::/0"],
                    [f"10.{200 + rng.randrange(50)}.0.0/16"],
                )
            )
        }
    # nodes: all of them, the control plane, or one zone
    return {
        "nodes": rng.choice(
            (
                {},
                {"matchExpressions": [
                    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}
                ]},
                {"matchLabels": {"topology.kubernetes.io/zone": f"zone-{rng.randrange(ZONES)}"}},
            )
        )
    }  # fmt: skip


def _cluster_policies(
    count: int, namespaces: list[str], rng: random.Random
) -> list[dict[str, Any]]:
    """``count`` ClusterNetworkPolicies: 3 in 5 Admin, the rest Baseline; priorities from
    a coarse grid (ties happen, and every tenth policy copies its predecessor's on
    purpose); subjects by namespaces or by pods; 1-3 ingress and 0-2 egress rules mixing
    Accept, Deny and Pass over namespaces, pods, networks and nodes peers and port
    numbers, ranges and named ports."""
    policies: list[dict[str, Any]] = []
    rule_count = 0
    priority = 0
    for i in range(count):
        tier = "Admin" if i % 5 < 3 else "Baseline"
        if i % 10 != 9:  # every tenth: the same priority as the one before (a tie)
            priority = rng.randrange(0, 1001, 25)
        if i % 3 == 2:
            subject: dict[str, Any] = {"pods": _cnp_pods(namespaces, rng, any_namespace=False)}
        else:
            subject = {"namespaces": _cnp_namespaces(namespaces, rng)}
        ingress: list[dict[str, Any]] = []
        for j in range(1 + i % 3):
            peer_kind = CNP_INGRESS_PEERS[rule_count % len(CNP_INGRESS_PEERS)]
            peer = (
                {"namespaces": _cnp_namespaces(namespaces, rng)}
                if peer_kind == "namespaces"
                else {"pods": _cnp_pods(namespaces, rng, any_namespace=peer_kind != "pods")}
            )
            rule: dict[str, Any] = {
                "name": f"in-{j}",
                "action": CNP_ACTIONS[rule_count % len(CNP_ACTIONS)],
                "from": [peer],
            }
            protocols = _cnp_protocols(CNP_PROTOCOLS[rule_count % len(CNP_PROTOCOLS)], rng)
            if protocols is not None:
                rule["protocols"] = protocols
            ingress.append(rule)
            rule_count += 1
        egress: list[dict[str, Any]] = []
        for j in range((i + 1) % 3):
            peer_kind = CNP_EGRESS_PEERS[rule_count % len(CNP_EGRESS_PEERS)]
            protocol_kind = CNP_PROTOCOLS[rule_count % len(CNP_PROTOCOLS)]
            if protocol_kind == "named" and peer_kind in ("networks", "nodes"):
                protocol_kind = "number"  # the CRD: no named port towards networks or nodes
            rule = {
                "name": f"out-{j}",
                "action": CNP_ACTIONS[rule_count % len(CNP_ACTIONS)],
                "to": [_cnp_egress_peer(peer_kind, namespaces, rng)],
            }
            protocols = _cnp_protocols(protocol_kind, rng)
            if protocols is not None:
                rule["protocols"] = protocols
            egress.append(rule)
            rule_count += 1
        spec: dict[str, Any] = {"tier": tier, "priority": priority, "subject": subject}
        if ingress:
            spec["ingress"] = ingress
        if egress:
            spec["egress"] = egress
        policies.append(
            {
                "apiVersion": "policy.networking.k8s.io/v1alpha2",
                "kind": "ClusterNetworkPolicy",
                "metadata": {"name": f"{tier.lower()}-{i:03d}"},
                "spec": spec,
            }
        )
    return policies
