"""Quarantine: a pod or namespace whose fields cannot be read fails closed.

A pod whose labels (any key or value), uid, spec, nodeName or status cannot be read, and
every pod of a namespace whose labels cannot be read, is *quarantined*: no pod or
namespace selector matches it (not even ``{}``), and where it runs it is isolated in both
directions with nothing allowed, except what is always allowed (its own node, itself,
replies). ipBlock peers still match its address, as they match any address.

Each scenario is checked twice: by ``explain`` and by walking node1's compiled rules.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from agent.compiler.config import NodeContext
from agent.compiler.node import NodeCompiler, compile_node
from agent.compiler.walk import Packet, validate, walk
from agent.model.parse import parse_namespace, parse_pod
from agent.policy.index import ClusterIndex
from agent.policy.state import ClusterState, build_state
from agent.rules import Family, Ruleset
from tests.unit import builders as b

NODE1, NODE2 = "172.18.0.1", "172.18.0.2"


def cluster(*objects: Any) -> ClusterState:
    """Namespaces x (team a) and y (team b), two nodes, and ``objects``."""
    base = [
        b.namespace("x", team="a"),
        b.namespace("y", team="b"),
        b.node("node1", NODE1),
        b.node("node2", NODE2),
    ]
    return build_state([*base, *objects]).state


def broken_labels(raw: dict[str, Any]) -> dict[str, Any]:
    raw["metadata"]["labels"] = {"app": "web", "bad key!": "x"}
    return raw


def rules(state: ClusterState, node: str = "node1") -> Ruleset:
    ruleset = compile_node(state, NodeContext(node, state.node_addresses(node)), Family.IPV4)
    validate(ruleset)
    return ruleset


def verdict(state: ClusterState, source: str, destination: str, port: int = 80) -> bool:
    """explain's verdict, after checking that node1's rules say the same."""
    expected = b.allowed(state, source, destination, port)
    addresses = []
    for text in (source, destination):
        pod = state.pods.get(text)
        addresses.append(pod.ips[0] if pod is not None else ipaddress.ip_address(text))
    packet = Packet(addresses[0], addresses[1], "tcp", port)
    local = [ipaddress.ip_address(NODE1)]
    assert walk(rules(state), packet, local).accepted == expected, (source, destination)
    return expected


# --- pods ------------------------------------------------------------------------------


def test_a_pod_with_one_bad_label_is_kept_quarantined_and_reported() -> None:
    pod = parse_pod(broken_labels(b.pod("x/web", "10.0.0.1")))
    assert pod.quarantined and pod.is_selectable and not pod.is_peer
    assert pod.labels == {}  # no label of a set that cannot be read is trusted
    assert any(
        p.startswith("Pod x/web: metadata.labels['bad key!']") and "quarantined" in p
        for p in pod.problems
    )


def test_a_quarantined_local_pod_is_isolated_for_ingress_without_any_policy() -> None:
    state = cluster(
        broken_labels(b.pod("x/web", "10.0.0.1")), b.pod("x/client", "10.0.0.2", node_name="node2")
    )
    assert not verdict(state, "x/client", "x/web")
    assert b.check(state, "x/client", "x/web").ingress.reason.startswith("quarantined")  # type: ignore[union-attr]


def test_a_quarantined_local_pod_is_isolated_for_egress_without_any_policy() -> None:
    state = cluster(
        broken_labels(b.pod("x/web", "10.0.0.1")), b.pod("x/db", "10.0.0.2", node_name="node2")
    )
    assert not verdict(state, "x/web", "x/db")
    assert not verdict(state, "x/web", "192.168.1.1")


def test_an_allow_all_policy_does_not_open_a_quarantined_pod() -> None:
    state = cluster(
        broken_labels(b.pod("x/web", "10.0.0.1")),
        b.pod("x/client", "10.0.0.2", node_name="node2"),
        b.policy("x/all", policyTypes=["Ingress", "Egress"], ingress=[{}], egress=[{}]),
    )
    assert not verdict(state, "x/client", "x/web")
    assert not verdict(state, "x/web", "x/client")


def test_its_own_node_still_reaches_a_quarantined_pod() -> None:
    state = cluster(broken_labels(b.pod("x/web", "10.0.0.1")))
    assert verdict(state, NODE1, "x/web")


def test_a_quarantined_pod_is_no_peer_of_an_empty_pod_selector() -> None:
    state = cluster(
        b.pod("x/db", "10.0.0.1", labels={"app": "db"}),
        broken_labels(b.pod("x/web", "10.0.0.2", node_name="node2")),
        b.pod("x/ok", "10.0.0.3", node_name="node2"),
        b.policy(
            "x/same-ns", podSelector=b.labels(app="db"), ingress=[{"from": [{"podSelector": {}}]}]
        ),
    )
    assert verdict(state, "x/ok", "x/db")
    assert not verdict(state, "x/web", "x/db")


def test_a_quarantined_pod_is_no_peer_of_an_empty_namespace_selector() -> None:
    state = cluster(
        b.pod("x/db", "10.0.0.1", labels={"app": "db"}),
        broken_labels(b.pod("y/web", "10.0.0.2", node_name="node2")),
        b.pod("y/ok", "10.0.0.3", node_name="node2"),
        b.policy("x/any-ns", ingress=[{"from": [{"namespaceSelector": {}}]}]),
    )
    assert verdict(state, "y/ok", "x/db")
    assert not verdict(state, "y/web", "x/db")


def test_an_ip_block_still_matches_a_quarantined_pods_address() -> None:
    # The quarantined pod's own egress still denies the connection (on its node), but
    # the destination's ingress matches its address like any other in the block.
    state = cluster(
        b.pod("x/db", "10.0.0.1"),
        broken_labels(b.pod("x/web", "10.0.0.2", node_name="node2")),
        b.policy("x/block", ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/24"}}]}]),
    )
    decided = b.check(state, "x/web", "x/db")
    assert decided.ingress is not None and decided.ingress.allowed
    assert decided.egress is not None and not decided.egress.allowed
    packet = Packet(ipaddress.ip_address("10.0.0.2"), ipaddress.ip_address("10.0.0.1"), "tcp", 80)
    assert walk(rules(state), packet, [ipaddress.ip_address(NODE1)]).accepted  # db's node


def test_a_pod_with_an_unreadable_node_name_is_isolated_on_every_node() -> None:
    raw = b.pod("x/web", "10.0.0.1")
    raw["spec"]["nodeName"] = "Not_A_Node"
    state = cluster(raw, b.pod("x/client", "10.0.0.2"))
    pod = state.pods["x/web"]
    assert pod.quarantined and pod.node_name is None
    assert not verdict(state, "x/client", "x/web")  # node1 drops it
    packet = Packet(pod.ips[0], ipaddress.ip_address("10.0.0.9"), "tcp", 80)
    assert not walk(rules(state, "node2"), packet).accepted  # and so does node2


def test_a_pod_with_an_unreadable_status_is_quarantined_with_nothing_to_enforce() -> None:
    raw = b.pod("x/web", "10.0.0.1")
    raw["status"] = "Running"
    state = cluster(raw)
    pod = state.pods["x/web"]
    assert pod.quarantined and pod.ips == () and not pod.is_selectable
    assert "10.0.0.1" not in str(rules(state).chains)


# --- namespaces -----------------------------------------------------------------------


def broken_namespace(name: str) -> dict[str, Any]:
    raw = b.namespace(name)
    raw["metadata"]["labels"] = {"team": ["b"]}
    return raw


def test_a_namespace_with_unreadable_labels_is_kept_quarantined_and_reported() -> None:
    namespace = parse_namespace(broken_namespace("z"))
    assert namespace.quarantined
    assert namespace.problems and namespace.problems[0].startswith(
        "Namespace z: metadata.labels.team: label value must be a string"
    )


def test_a_not_in_namespace_selector_does_not_match_a_quarantined_namespace() -> None:
    # Its name label alone would satisfy "team NotIn [b]": it must not.
    state = cluster(
        broken_namespace("z"),
        b.pod("x/db", "10.0.0.1"),
        b.pod("z/web", "10.0.0.2", node_name="node2"),
        b.policy(
            "x/not-b",
            ingress=[
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchExpressions": [
                                    {"key": "team", "operator": "NotIn", "values": ["b"]}
                                ]
                            }
                        }
                    ]
                }
            ],
        ),
    )
    assert not verdict(state, "z/web", "x/db")


def test_the_local_pods_of_a_quarantined_namespace_are_isolated_both_ways() -> None:
    state = cluster(
        broken_namespace("z"),
        b.pod("z/web", "10.0.0.1"),
        b.pod("x/client", "10.0.0.2", node_name="node2"),
        b.policy("z/all", policyTypes=["Ingress", "Egress"], ingress=[{}], egress=[{}]),
    )
    assert not verdict(state, "x/client", "z/web")
    assert not verdict(state, "z/web", "x/client")


def test_a_namespace_entering_and_leaving_quarantine_compiles_as_from_scratch() -> None:
    objects = [
        b.namespace("x", team="a"),
        b.node("node1", NODE1),
        b.pod("x/db", "10.0.0.1"),
        b.pod("x/web", "10.0.0.2", node_name="node2"),
        b.policy("x/any", ingress=[{"from": [{"namespaceSelector": {}}]}]),
    ]
    index = ClusterIndex()
    compiler = NodeCompiler("node1", Family.IPV4)
    parsed = build_state(objects).state
    index.apply(
        pods=parsed.pods.items(),
        namespaces=parsed.namespaces.items(),
        policies=parsed.policies.items(),
        nodes=parsed.nodes.items(),
    )
    compiler.compile_index(index)
    for namespace in (broken_namespace("x"), b.namespace("x", team="a")):
        index.apply(namespaces=[("x", parse_namespace(namespace))])
        incremental = compiler.compile_index(index)
        fresh = NodeCompiler("node1", Family.IPV4).compile_index(index)
        assert {c.name: c.rules for c in incremental.chains.values()} == {
            c.name: c.rules for c in fresh.chains.values()
        }
        state = ClusterState(index.namespaces, index.pods, index.policies, index.nodes)
        allowed = b.allowed(state, "x/web", "x/db")
        packet = Packet(
            ipaddress.ip_address("10.0.0.2"), ipaddress.ip_address("10.0.0.1"), "tcp", 80
        )
        assert walk(incremental, packet, [ipaddress.ip_address(NODE1)]).accepted == allowed
        assert allowed == (not index.namespaces["x"].quarantined)


def test_a_pod_entering_and_leaving_quarantine_compiles_as_from_scratch() -> None:
    objects = [
        b.namespace("x", team="a"),
        b.node("node1", NODE1),
        b.pod("x/db", "10.0.0.1", labels={"app": "db"}),
        b.pod("x/web", "10.0.0.2", labels={"app": "web"}, node_name="node2"),
        b.policy("x/db-in", podSelector=b.labels(app="db"), ingress=[{}]),
    ]
    parsed = build_state(objects).state
    index = ClusterIndex()
    index.apply(
        pods=parsed.pods.items(),
        namespaces=parsed.namespaces.items(),
        policies=parsed.policies.items(),
        nodes=parsed.nodes.items(),
    )
    compiler = NodeCompiler("node1", Family.IPV4)
    compiler.compile_index(index)
    good = b.pod("x/db", "10.0.0.1", labels={"app": "db"})
    for raw, allowed in ((broken_labels(b.pod("x/db", "10.0.0.1")), False), (good, True)):
        index.apply(pods=[("x/db", parse_pod(raw))])
        incremental = compiler.compile_index(index)
        fresh = NodeCompiler("node1", Family.IPV4).compile_index(index)
        assert {c.name: c.rules for c in incremental.chains.values()} == {
            c.name: c.rules for c in fresh.chains.values()
        }
        packet = Packet(
            ipaddress.ip_address("10.0.0.2"), ipaddress.ip_address("10.0.0.1"), "tcp", 80
        )
        assert walk(incremental, packet, [ipaddress.ip_address(NODE1)]).accepted == allowed
