"""Semantic cross-check: walking the compiled rules gives explain()'s verdict.

For random small clusters, NetworkPolicies and ClusterNetworkPolicies, every pair of endpoints (pods, node addresses,
outside addresses, addresses a finished pod left behind) and every probe port is judged
twice: by ``explain()`` straight from the API semantics, and by walking the rulesets
compiled for the nodes the packet crosses. Any difference is a compiler (or oracle) bug.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.compiler import node as compile
from agent.compiler.config import CompilerConfig, NodeContext
from agent.compiler.walk import Packet, validate, verdict_across_nodes
from agent.model.objects import IPAddress, Protocol
from agent.policy.explain import Endpoint, explain
from agent.policy.state import ClusterState, build_state
from agent.rules import Family
from tests.unit import builders as b

NAMESPACES = "ab"
POD_NAMESPACES = "aaaabbc"  # "c" has no Namespace object: its name label is still implied
NODES = {"node1": ("172.18.0.1", "fc00::1"), "node2": ("172.18.0.2", "fc00::2")}
# What ClusterNetworkPolicy ``nodes`` peers select on.
NODE_LABELS = {"node1": {"zone": "east", "role": "edge"}, "node2": {"zone": "west"}}
OUTSIDE = ("192.168.1.1", "10.0.0.200", "2001:db8::1", "fd00::c8")
PROBES = (
    (Protocol.TCP, 80),
    (Protocol.TCP, 8080),
    (Protocol.TCP, 443),
    (Protocol.UDP, 53),
    (Protocol.UDP, 80),
    (Protocol.SCTP, 80),
)

CONTAINER_PORTS = (
    {"name": "http", "containerPort": 80},
    {"name": "http", "containerPort": 8080},
    {"name": "http", "containerPort": 80},
    {"name": "http", "containerPort": 8080},
    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
    {"name": "http", "containerPort": 53, "protocol": "UDP"},
    {"name": "web", "containerPort": 80, "protocol": "SCTP"},
    {"containerPort": 443},
)

POD_SELECTORS = (
    {},
    {"matchLabels": {"app": "web"}},
    {"matchLabels": {"app": "db"}},
    {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]},
    {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]},
    {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
    {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]},
)
NAMESPACE_SELECTORS = (
    {},
    {"matchLabels": {"team": "x"}},
    {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a"]}
        ]
    },
    {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["x"]}]},
)
IP_BLOCKS = (
    {"cidr": "10.0.0.0/24"},
    {"cidr": "10.0.0.0/24", "except": ["10.0.0.0/30"]},
    {"cidr": "10.0.0.2/32"},
    {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/29", "172.18.0.0/24"]},
    {"cidr": "192.168.0.0/16"},
    {"cidr": "172.18.0.0/24"},
    {"cidr": "fd00::/64"},
    {"cidr": "fd00::/64", "except": ["fd00::/126"]},
    {"cidr": "::/0"},
)
POLICY_PORTS = (
    {},
    {"protocol": "UDP"},
    {"protocol": "SCTP"},
    {"port": 80},
    {"port": 53, "protocol": "UDP"},
    {"port": 79, "endPort": 81},
    {"port": 443, "endPort": 8080},
    {"port": "http"},
    {"port": "http"},
    {"port": "http", "protocol": "UDP"},
    {"port": "dns", "protocol": "UDP"},
    {"port": "web", "protocol": "SCTP"},
    {"port": "metrics"},
)


# Shapes of an optional list field, weighted towards lists: that is where the cases are,
# but missing and [] must behave alike and right too.
SHAPES = ("missing", "empty", "list", "list", "list")


def _maybe_list(draw: st.DrawFn, element: Any, max_size: int) -> list[Any] | None:
    shape = draw(st.sampled_from(SHAPES))
    if shape == "missing":
        return None
    if shape == "empty":
        return []
    return [draw(element) for _ in range(draw(st.integers(1, max_size)))]


@st.composite
def peers(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["ipBlock", "ipBlock", "pods", "namespaces", "both"]))
    if kind == "ipBlock":
        return {"ipBlock": draw(st.sampled_from(IP_BLOCKS))}
    peer: dict[str, Any] = {}
    if kind in ("pods", "both"):
        peer["podSelector"] = draw(st.sampled_from(POD_SELECTORS))
    if kind in ("namespaces", "both"):
        peer["namespaceSelector"] = draw(st.sampled_from(NAMESPACE_SELECTORS))
    return peer


@st.composite
def rules(draw: st.DrawFn, peer_field: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    peer_list = _maybe_list(draw, peers(), 2)
    if peer_list is not None:
        rule[peer_field] = peer_list
    port_list = _maybe_list(draw, st.sampled_from(POLICY_PORTS), 3)
    if port_list is not None:
        rule["ports"] = port_list
    return rule


@st.composite
def policies(draw: st.DrawFn, index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": draw(st.sampled_from(POD_SELECTORS))}
    types = draw(st.sampled_from([None, [], ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    if types is not None:
        spec["policyTypes"] = types
    for section, peer_field in (("ingress", "from"), ("egress", "to")):
        rule_list = _maybe_list(draw, rules(peer_field), 2)
        if rule_list is not None:
            spec[section] = rule_list
    return b.policy(f"{draw(st.sampled_from(NAMESPACES))}/pol{index}", **spec)


# --- ClusterNetworkPolicy ------------------------------------------------------------

CLUSTER_POLICY_API = "policy.networking.k8s.io/v1alpha2"
# Few values, so that policies of one tier often tie (ties are broken by name).
PRIORITIES = (0, 5, 5, 10)
ACTIONS = ("Accept", "Deny", "Pass")
NODE_SELECTORS = (
    {},
    {"matchLabels": {"zone": "east"}},
    {"matchLabels": {"zone": "west"}},
    {"matchExpressions": [{"key": "role", "operator": "Exists"}]},
    {"matchLabels": {"zone": "north"}},  # no node
)
NETWORKS = (
    "10.0.0.0/24",
    "10.0.0.0/30",
    "10.0.0.2/32",
    "0.0.0.0/0",
    "172.18.0.0/24",
    "192.168.0.0/16",
    "fd00::/64",
    "fd00::2/128",
    "fc00::/64",
    "::/0",
)
CLUSTER_PROTOCOLS = (
    {"tcp": {"destinationPort": {"number": 80}}},
    {"tcp": {"destinationPort": {"number": 8080}}},
    {"udp": {"destinationPort": {"number": 53}}},
    {"sctp": {"destinationPort": {"number": 80}}},
    {"tcp": {"destinationPort": {"range": {"start": 80, "end": 443}}}},
    {"udp": {"destinationPort": {"range": {"start": 53, "end": 80}}}},
)
NAMED_PROTOCOLS = (
    {"destinationNamedPort": "http"},
    {"destinationNamedPort": "dns"},
    {"destinationNamedPort": "web"},
    {"destinationNamedPort": "metrics"},  # served by no pod
)
# Peers the agent cannot read: each makes its rule a Deny of everything (fail closed).
BROKEN_PEERS = {
    "ingress": ({}, {"nodes": {}}),  # no field; an egress-only peer
    "egress": ({"domainNames": ["example.com"]}, {}, {"networks": ["10.0.0.1/24"]}),
}


def _namespaced_pods(draw: st.DrawFn) -> dict[str, Any]:
    pods: dict[str, Any] = {"podSelector": draw(st.sampled_from(POD_SELECTORS))}
    if draw(st.booleans()):
        pods["namespaceSelector"] = draw(st.sampled_from(NAMESPACE_SELECTORS))
    return pods


@st.composite
def cluster_peers(draw: st.DrawFn, egress: bool) -> dict[str, Any]:
    kinds = ["namespaces", "pods", "pods"]
    if egress:
        kinds += ["networks", "networks", "nodes"]
    kind = draw(st.sampled_from(kinds))
    if kind == "namespaces":
        return {"namespaces": draw(st.sampled_from(NAMESPACE_SELECTORS))}
    if kind == "pods":
        return {"pods": _namespaced_pods(draw)}
    if kind == "nodes":
        return {"nodes": draw(st.sampled_from(NODE_SELECTORS))}
    return {
        "networks": draw(st.lists(st.sampled_from(NETWORKS), min_size=1, max_size=2, unique=True))
    }


@st.composite
def cluster_rules(draw: st.DrawFn, egress: bool) -> dict[str, Any]:
    rule: dict[str, Any] = {"action": draw(st.sampled_from(ACTIONS))}
    if draw(st.integers(0, 3)) == 0:
        rule["name"] = f"r{draw(st.integers(0, 9))}"
    peers = draw(st.lists(cluster_peers(egress), min_size=1, max_size=2))
    rule["to" if egress else "from"] = peers
    # The CRD allows no named port with networks or nodes peers (they serve none).
    addresses = any("networks" in p or "nodes" in p for p in peers)
    choices = CLUSTER_PROTOCOLS if addresses else CLUSTER_PROTOCOLS + NAMED_PROTOCOLS
    if draw(st.booleans()):
        rule["protocols"] = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=2))
    # Now and then a rule the agent cannot read: it must deny everything in its place.
    broken = draw(st.sampled_from(["none"] * 30 + ["peer", "action"]))
    if broken == "peer":
        peers.append(draw(st.sampled_from(BROKEN_PEERS["egress" if egress else "ingress"])))
    elif broken == "action":
        rule["action"] = "Allow"
    return rule


@st.composite
def cluster_policies(draw: st.DrawFn, index: int) -> dict[str, Any]:
    subject: dict[str, Any]
    if draw(st.booleans()):
        subject = {"namespaces": draw(st.sampled_from(NAMESPACE_SELECTORS))}
    else:
        subject = {"pods": _namespaced_pods(draw)}
    spec: dict[str, Any] = {
        "tier": draw(st.sampled_from(["Admin", "Baseline"])),
        "priority": draw(st.sampled_from(PRIORITIES)),
        "subject": subject,
    }
    if draw(st.sampled_from([False] * 50 + [True])):
        spec["tier"] = "Middle"  # unreadable: the whole policy denies its subject all
    for section, egress in (("ingress", False), ("egress", True)):
        shape = draw(st.sampled_from(SHAPES))
        if shape == "empty":
            spec[section] = []
        elif shape == "list":
            spec[section] = draw(st.lists(cluster_rules(egress), min_size=1, max_size=3))
    return cluster_policy(f"cnp{index}", **spec)


def cluster_policy(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": CLUSTER_POLICY_API,
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


# Namespace b's labels: a broken value quarantines the namespace (and its pods).
NAMESPACE_LABELS: tuple[dict[str, Any], ...] = ({}, {"team": "x"}, {"team": "y"}, {"team": 5})


def _namespace_b(labels: dict[str, Any]) -> dict[str, Any]:
    raw = b.namespace("b")
    raw["metadata"]["labels"] = dict(labels)
    return raw


def _node(name: str, labels: dict[str, Any] | None = None) -> dict[str, Any]:
    raw = b.node(name, *NODES[name])
    raw["metadata"]["labels"] = dict(NODE_LABELS[name] if labels is None else labels)
    return raw


@st.composite
def clusters(draw: st.DrawFn) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [
        b.namespace("a", team="x"),
        _namespace_b(draw(st.sampled_from(NAMESPACE_LABELS))),
    ]
    # node2's labels now and then unreadable: then only a nodes peer selecting every node
    # selects it.
    objects += [_node("node1"), _node("node2", draw(st.sampled_from([None] * 5 + [{"zone": 5}])))]
    count = draw(st.integers(min_value=2, max_value=5))
    for i in range(count):
        node_name = draw(st.sampled_from(["node1", "node1", "node2"]))
        # "quarantined": unreadable labels; "nodeless": an unreadable nodeName as well.
        kind = draw(st.sampled_from(["live"] * 6 + ["finished", "host", "quarantined", "nodeless"]))
        if kind == "host":
            ips = NODES[node_name]
        elif kind == "finished":
            # A finished pod keeps an address that another (live) pod may now use.
            reused = draw(st.integers(min_value=1, max_value=count))
            ips = (f"10.0.0.{reused}", f"fd00::{reused}")
        else:
            ips = (f"10.0.0.{i + 1}",) + ((f"fd00::{i + 1}",) if draw(st.booleans()) else ())
        app = draw(st.sampled_from([None, "web", "db"]))
        raw = b.pod(
            f"{draw(st.sampled_from(POD_NAMESPACES))}/p{i}",
            *ips,
            labels={"app": app} if app else {},
            node_name=node_name,
            phase=draw(st.sampled_from(["Succeeded", "Failed"]))
            if kind == "finished"
            else "Running",
            host_network=kind == "host",
            ports=draw(st.lists(st.sampled_from(CONTAINER_PORTS), max_size=2)),
        )
        if kind in ("quarantined", "nodeless"):
            raw["metadata"]["labels"]["bad key!"] = "x"
        if kind == "nodeless":
            raw["spec"]["nodeName"] = "Not_A_Node"
        objects.append(raw)
    for i in range(draw(st.integers(min_value=1, max_value=3))):
        objects.append(draw(policies(i)))
    for i in range(draw(st.integers(min_value=0, max_value=3))):
        objects.append(draw(cluster_policies(i)))
    return objects


def _endpoints(state: ClusterState, version: int) -> list[Endpoint]:
    found = [Endpoint(ip, pod) for pod in state.selectable_pods for ip in pod.ips_of(version)]
    addresses: list[IPAddress] = [ipaddress.ip_address(a) for a in OUTSIDE]
    addresses += [ipaddress.ip_address(a) for pair in NODES.values() for a in pair]
    # Addresses that only a finished (or no) pod holds: never a pod for policy.
    addresses += [ipaddress.ip_address(f"10.0.0.{i}") for i in range(1, 7)]
    addresses += [ipaddress.ip_address(f"fd00::{i}") for i in range(1, 7)]
    for address in addresses:
        if address.version == version and address not in state.pod_by_ip:
            found.append(Endpoint(address, None))
    return found


def _crossed_nodes(
    source: Endpoint, destination: Endpoint, node_addresses: dict[str, tuple[IPAddress, ...]]
) -> list[str]:
    """Nodes whose FORWARD chain the packet crosses: the nodes of its pod ends.

    A packet to one of a node's own addresses is delivered locally there (INPUT), and
    one from them leaves through OUTPUT: neither crosses that node's FORWARD.
    """
    crossed = []
    for end in (source, destination):
        if end.pod is None:
            continue
        if end.pod.node_name is None:
            # A quarantined pod whose node is unknown: it runs on one of them, and
            # every node isolates it, so any node may stand for its own.
            ends = list(node_addresses) if end.pod.quarantined else []
        else:
            ends = [end.pod.node_name]
        for node_name in ends:
            own = node_addresses[node_name]
            if source.address not in own and destination.address not in own:
                crossed.append(node_name)
    return crossed


def _base(*pods: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        b.namespace("a", team="x"),
        *(_node(name) for name in NODES),
        *pods,
    ]


# Two local pods that map "http" to different numbers under one policy: the policy's
# ingress chain must not be shared between them.
NAMED_PORTS_PER_POD = [
    *_base(
        b.pod("a/p0", "10.0.0.1", ports=[{"name": "http", "containerPort": 80}]),
        b.pod("a/p1", "10.0.0.2", ports=[{"name": "http", "containerPort": 8080}]),
        b.pod("a/p2", "10.0.0.3", labels={"app": "web"}),
    ),
    b.policy("a/pol0", ingress=[{"ports": [{"port": "http"}]}]),
]
# except carves addresses out of an allowed block; a second rule allows one of them back.
EXCEPT_AND_OVERLAP = [
    *_base(
        b.pod("a/p0", "10.0.0.1", "fd00::1", labels={"app": "web"}),
        b.pod("a/p1", "10.0.0.2", "fd00::2", node_name="node2"),
        b.pod("a/p2", "10.0.0.5", "fd00::5"),
    ),
    b.policy(
        "a/pol0",
        podSelector={"matchLabels": {"app": "web"}},
        ingress=[
            {"from": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.0/30"]}}]},
            {"from": [{"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::/126"]}}]},
            {"from": [{"ipBlock": {"cidr": "10.0.0.2/32"}}], "ports": [{"port": 80}]},
        ],
    ),
]

# An Admin Pass sends a pod that no NetworkPolicy selects on to Baseline (which denies),
# and a selected one to its NetworkPolicy; a Baseline Pass falls through to "allowed".
PASS_THEN_BASELINE = [
    *_base(
        b.pod("a/p0", "10.0.0.1", "fd00::1", labels={"app": "web"}),
        b.pod("b/p1", "10.0.0.2", "fd00::2", node_name="node2"),
        b.pod("b/p2", "10.0.0.3", "fd00::3", labels={"app": "db"}),
    ),
    b.namespace("b"),
    b.policy("a/pol0", ingress=[{"ports": [{"port": 80}]}]),
    cluster_policy(
        "pass",
        tier="Admin",
        priority=5,
        subject={"namespaces": {}},
        ingress=[{"action": "Pass", "from": [{"namespaces": {}}]}],
    ),
    # Ties with "pass" at priority 5 and goes first by name: p2 is denied, not passed.
    cluster_policy(
        "a-deny",
        tier="Admin",
        priority=5,
        subject={"pods": {"podSelector": {"matchLabels": {"app": "db"}}}},
        ingress=[{"action": "Deny", "from": [{"pods": {"podSelector": {}}}]}],
    ),
    cluster_policy(
        "baseline",
        tier="Baseline",
        priority=0,
        subject={"namespaces": {}},
        ingress=[
            {"action": "Pass", "from": [{"namespaces": {"matchLabels": {"team": "x"}}}]},
            {"action": "Deny", "from": [{"namespaces": {}}]},
        ],
    ),
]
# An egress Accept decides only the source's side: the destination's ingress (an Admin
# Deny, or a NetworkPolicy that isolates it) still applies.
EGRESS_ACCEPT_INGRESS_DENY = [
    *_base(
        b.pod("a/p0", "10.0.0.1", "fd00::1", labels={"app": "web"}),
        b.pod("a/p1", "10.0.0.2", "fd00::2", labels={"app": "db"}, node_name="node2"),
        b.pod("a/p2", "10.0.0.3", "fd00::3"),
    ),
    b.policy("a/pol0", podSelector={"matchLabels": {"app": "db"}}, policyTypes=["Ingress"]),
    cluster_policy(
        "accept-out",
        tier="Admin",
        priority=0,
        subject={"pods": {"podSelector": {"matchLabels": {"app": "web"}}}},
        egress=[{"action": "Accept", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}],
    ),
    cluster_policy(
        "deny-in",
        tier="Admin",
        priority=10,
        subject={
            "pods": {
                "podSelector": {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}
            }
        },
        ingress=[
            {"action": "Deny", "from": [{"pods": {"podSelector": {"matchLabels": {"app": "web"}}}}]}
        ],
    ),
]
# One Admin rule by named port over two local pods that serve "http" at different
# numbers: each pod's rule chain resolves it to its own number.
CLUSTER_NAMED_PORTS_PER_POD = [
    *_base(
        b.pod("a/p0", "10.0.0.1", ports=[{"name": "http", "containerPort": 80}]),
        b.pod("a/p1", "10.0.0.2", ports=[{"name": "http", "containerPort": 8080}]),
        b.pod("a/p2", "10.0.0.3", labels={"app": "web"}, node_name="node2"),
        b.pod("a/p3", "10.0.0.4", ports=[{"name": "http", "containerPort": 53, "protocol": "UDP"}]),
    ),
    cluster_policy(
        "named",
        tier="Admin",
        priority=0,
        subject={"namespaces": {}},
        ingress=[
            {
                "action": "Deny",
                "from": [{"namespaces": {}}],
                "protocols": [{"destinationNamedPort": "http"}],
            }
        ],
        egress=[
            {
                "action": "Deny",
                "to": [
                    {
                        "pods": {
                            "podSelector": {
                                "matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]
                            }
                        }
                    }
                ],
                "protocols": [{"destinationNamedPort": "http"}],
            }
        ],
    ),
]
# A nodes peer: a pod's traffic to its own node stays allowed (it is not forwarded);
# to another node, and to a hostNetwork pod there, the rule decides. The west selector
# matches node2 only.
NODE_PEERS = [
    *_base(
        b.pod("a/p0", "10.0.0.1", "fd00::1"),
        b.pod("a/p1", "10.0.0.2", "fd00::2", node_name="node2", labels={"app": "web"}),
        b.pod("a/host", *NODES["node2"], node_name="node2", host_network=True),
    ),
    cluster_policy(
        "nodes",
        tier="Admin",
        priority=0,
        subject={"namespaces": {}},
        egress=[
            {
                "action": "Accept",
                "to": [{"nodes": {"matchLabels": {"zone": "west"}}}],
                "protocols": [{"tcp": {"destinationPort": {"number": 443}}}],
            },
            {"action": "Deny", "to": [{"nodes": {}}]},
        ],
    ),
]
# networks peers match pod addresses too (pod-to-pod traffic is checked against them);
# a Pass for pods first keeps a wide Deny to outside addresses only.
NETWORKS_MATCH_PODS = [
    *_base(
        b.pod("a/p0", "10.0.0.1", "fd00::1", labels={"app": "web"}),
        b.pod("a/p1", "10.0.0.2", "fd00::2", node_name="node2"),
        b.pod("a/p2", "10.0.0.5", "fd00::5"),
    ),
    cluster_policy(
        "networks",
        tier="Admin",
        priority=0,
        subject={"pods": {"podSelector": {"matchLabels": {"app": "web"}}}},
        egress=[
            {"action": "Deny", "to": [{"networks": ["10.0.0.0/30", "fd00::2/128"]}]},
            {"action": "Pass", "to": [{"pods": {"podSelector": {}}}]},
            {"action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]},
        ],
    ),
    cluster_policy(
        "into-pods",
        tier="Baseline",
        priority=0,
        subject={"namespaces": {}},
        ingress=[
            {
                "action": "Deny",
                "from": [{"pods": {"podSelector": {"matchLabels": {"app": "web"}}}}],
                "protocols": [{"udp": {"destinationPort": {"range": {"start": 53, "end": 80}}}}],
            }
        ],
    ),
]


COMPILERS = {"fresh": compile.compile_node}


@pytest.mark.parametrize("compiler", sorted(COMPILERS))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objects=clusters(), reject=st.booleans())
@example(objects=NAMED_PORTS_PER_POD, reject=False)
@example(objects=EXCEPT_AND_OVERLAP, reject=True)
@example(objects=PASS_THEN_BASELINE, reject=False)
@example(objects=EGRESS_ACCEPT_INGRESS_DENY, reject=True)
@example(objects=CLUSTER_NAMED_PORTS_PER_POD, reject=False)
@example(objects=NODE_PEERS, reject=False)
@example(objects=NETWORKS_MATCH_PODS, reject=False)
def test_walking_the_compiled_rules_agrees_with_explain(
    compiler: str, objects: list[Any], reject: bool
) -> None:
    compile_node = COMPILERS[compiler]
    state = build_state(objects).state
    config = CompilerConfig(reject=reject)
    node_addresses = {name: state.node_addresses(name) for name in NODES}
    for family in Family:
        rulesets = {
            name: compile_node(state, NodeContext(name, node_addresses[name]), family, config)
            for name in NODES
        }
        for ruleset in rulesets.values():
            validate(ruleset)
        endpoints = _endpoints(state, family.version)
        for source in endpoints:
            for destination in endpoints:
                if source.pod is None and destination.pod is None:
                    continue
                nodes = _crossed_nodes(source, destination, node_addresses)
                for protocol, port in PROBES:
                    expected = explain(state, source, destination, protocol, port).allowed
                    packet = Packet(
                        source.address, destination.address, protocol.iptables_name, port
                    )
                    actual = verdict_across_nodes(rulesets, node_addresses, nodes, packet)
                    assert actual == expected, (
                        f"{family.value}: {source.describe()} -> {destination.describe()} "
                        f"{port}/{protocol.value}: rules say {actual}, explain says {expected}"
                    )


def _parse_sharing(objects: list[Any], cache: dict[str, Any]) -> ClusterState:
    """A snapshot whose unchanged objects are the very objects of the previous one, as
    the agent's store keeps them: the incremental compiler diffs by identity."""
    kinds: dict[str, list[Any]] = {kind: [] for kind in _FIELD}
    for obj in objects:
        key = json.dumps(obj, sort_keys=True)
        if key not in cache:
            (cache[key],) = getattr(build_state([obj]).state, _FIELD[obj["kind"]]).values()
        kinds[obj["kind"]].append(cache[key])
    return ClusterState.of(
        kinds["Namespace"],
        kinds["Pod"],
        kinds["NetworkPolicy"],
        kinds["Node"],
        kinds["ClusterNetworkPolicy"],
    )


_FIELD = {
    "Namespace": "namespaces",
    "Pod": "pods",
    "NetworkPolicy": "policies",
    "Node": "nodes",
    "ClusterNetworkPolicy": "cluster_policies",
}
# A node's labels after an edit; a value that is no string makes them unreadable (then
# only a nodes peer that selects every node selects it).
EDITED_NODE_LABELS: tuple[dict[str, Any], ...] = (
    {},
    {"zone": "east"},
    {"zone": "west", "role": "edge"},
    {"zone": 5},
)


@st.composite
def edited(draw: st.DrawFn, objects: list[Any]) -> list[Any]:
    """``objects`` after a few edits of the kinds the agent sees from a watch."""
    result = [json.loads(json.dumps(obj)) for obj in objects]
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(
            st.sampled_from(
                [
                    "relabel",
                    "finish",
                    "delete",
                    "policy",
                    "namespace",
                    "quarantine",
                    "cluster policy",
                    "cluster policy edit",
                    "node",
                ]
            )
        )
        pods = [i for i, obj in enumerate(result) if obj["kind"] == "Pod"]
        cluster = [i for i, obj in enumerate(result) if obj["kind"] == "ClusterNetworkPolicy"]
        if edit == "relabel" and pods:
            labels = result[draw(st.sampled_from(pods))]["metadata"]["labels"]
            labels["app"] = draw(st.sampled_from(["web", "db", "api"]))
        elif edit == "quarantine" and pods:
            labels = result[draw(st.sampled_from(pods))]["metadata"]["labels"]
            labels["bad key!"] = draw(st.sampled_from(["x", None]))
            if labels["bad key!"] is None:
                del labels["bad key!"]  # and a quarantined pod is let out again
                labels.pop("app", None)
        elif edit == "finish" and pods:
            result[draw(st.sampled_from(pods))]["status"]["phase"] = "Succeeded"
        elif edit == "delete" and len(result) > 4:
            del result[draw(st.integers(4, len(result) - 1))]  # keep namespaces and nodes
        elif edit == "policy":
            result.append(draw(policies(draw(st.integers(0, 4)))))
        elif edit == "namespace":
            result[1]["metadata"]["labels"] = dict(draw(st.sampled_from(NAMESPACE_LABELS)))
        elif edit == "cluster policy":  # a new one, or a new version of one by name
            added = draw(cluster_policies(draw(st.integers(0, 4))))
            name = added["metadata"]["name"]
            result = [
                o
                for o in result
                if not (o["kind"] == added["kind"] and o["metadata"]["name"] == name)
            ]
            result.append(added)
        elif edit == "cluster policy edit" and cluster:
            _edit_cluster_policy(draw, result[draw(st.sampled_from(cluster))]["spec"])
        elif edit == "node":
            node = result[draw(st.sampled_from([2, 3]))]  # after the two namespaces
            if draw(st.booleans()):
                node["metadata"]["labels"] = dict(draw(st.sampled_from(EDITED_NODE_LABELS)))
            else:  # an address more or less: nodes peers and the exemptions follow
                addresses = node["status"]["addresses"]
                if len(addresses) > 2:
                    addresses.pop()
                else:
                    addresses.append({"type": "InternalIP", "address": "172.18.0.9"})
    return result


def _edit_cluster_policy(draw: st.DrawFn, spec: dict[str, Any]) -> None:
    """One field of a ClusterNetworkPolicy changed in place, as ``kubectl edit`` does."""
    field = draw(st.sampled_from(["priority", "tier", "subject", "action", "rules"]))
    if field == "priority":
        spec["priority"] = draw(st.sampled_from(PRIORITIES))
    elif field == "tier":
        spec["tier"] = "Baseline" if spec.get("tier") == "Admin" else "Admin"
    elif field == "subject":
        spec["subject"] = {"pods": _namespaced_pods(draw)}
    else:
        section, egress = draw(st.sampled_from([("ingress", False), ("egress", True)]))
        rules = spec.get(section) or []
        if field == "action" and rules:
            rules[draw(st.integers(0, len(rules) - 1))]["action"] = draw(st.sampled_from(ACTIONS))
        elif rules and draw(st.booleans()):
            del rules[draw(st.integers(0, len(rules) - 1))]
        else:
            spec[section] = [*rules, draw(cluster_rules(egress))]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_incremental_compile_equals_compiling_from_scratch(data: st.DataObject) -> None:
    first = data.draw(clusters())
    second = data.draw(edited(first))
    cache: dict[str, Any] = {}
    before, after = _parse_sharing(first, cache), _parse_sharing(second, cache)
    for family in Family:
        for name in NODES:
            incremental = compile.NodeCompiler(name, family)
            incremental.compile(before, before.node_addresses(name))
            updated = incremental.compile(after, after.node_addresses(name))
            fresh = compile.NodeCompiler(name, family).compile(after, after.node_addresses(name))
            assert {c.name: c.rules for c in updated.chains.values()} == {
                c.name: c.rules for c in fresh.chains.values()
            }, f"{family.value} {name}: incremental result differs from a fresh compile"
