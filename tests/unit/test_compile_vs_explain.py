"""Semantic cross-check: walking the compiled rules gives explain()'s verdict.

For random small clusters and policies, every pair of endpoints (pods, node addresses,
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


# Namespace b's labels: a broken value quarantines the namespace (and its pods).
NAMESPACE_LABELS: tuple[dict[str, Any], ...] = ({}, {"team": "x"}, {"team": "y"}, {"team": 5})


def _namespace_b(labels: dict[str, Any]) -> dict[str, Any]:
    raw = b.namespace("b")
    raw["metadata"]["labels"] = dict(labels)
    return raw


@st.composite
def clusters(draw: st.DrawFn) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [
        b.namespace("a", team="x"),
        _namespace_b(draw(st.sampled_from(NAMESPACE_LABELS))),
    ]
    objects += [b.node(name, *addresses) for name, addresses in NODES.items()]
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
        *(b.node(name, *addresses) for name, addresses in NODES.items()),
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


COMPILERS = {"fresh": compile.compile_node}


@pytest.mark.parametrize("compiler", sorted(COMPILERS))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objects=clusters(), reject=st.booleans())
@example(objects=NAMED_PORTS_PER_POD, reject=False)
@example(objects=EXCEPT_AND_OVERLAP, reject=True)
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
    kinds: dict[str, list[Any]] = {"Namespace": [], "Pod": [], "NetworkPolicy": [], "Node": []}
    for obj in objects:
        key = json.dumps(obj, sort_keys=True)
        if key not in cache:
            (cache[key],) = getattr(build_state([obj]).state, _FIELD[obj["kind"]]).values()
        kinds[obj["kind"]].append(cache[key])
    return ClusterState.of(kinds["Namespace"], kinds["Pod"], kinds["NetworkPolicy"], kinds["Node"])


_FIELD = {"Namespace": "namespaces", "Pod": "pods", "NetworkPolicy": "policies", "Node": "nodes"}


@st.composite
def edited(draw: st.DrawFn, objects: list[Any]) -> list[Any]:
    """``objects`` after a few edits of the kinds the agent sees from a watch."""
    result = [json.loads(json.dumps(obj)) for obj in objects]
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(
            st.sampled_from(["relabel", "finish", "delete", "policy", "namespace", "quarantine"])
        )
        pods = [i for i, obj in enumerate(result) if obj["kind"] == "Pod"]
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
    return result


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
