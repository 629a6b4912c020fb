"""Synthetic clusters of fixed seeds, shaped like real ones.

Pods carry app/tier labels and named container ports (the same name mapping to different
numbers on different apps); each namespace gets a default deny, and policies mix what
real clusters hold: pod-label allows, namespace-selector allows, ipBlocks with except,
named ports, port ranges, and egress rules (DNS, other namespaces, external blocks).
The measured node ("node-0") holds ``pods_on_measured_node`` pods, like a full kubelet.
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


SIZES = {
    "tiny": Size("tiny", pods=30, policies=8, namespaces=3, pods_on_measured_node=10),
    "S": Size("S", pods=100, policies=20, namespaces=5),
    "M": Size("M", pods=1000, policies=200, namespaces=15),
    "L": Size("L", pods=5000, policies=1000, namespaces=30),
}

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
                "metadata": {"name": f"node-{n}"},
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
