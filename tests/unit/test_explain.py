"""explain(): the per-connection oracle, one NETPOL-SEMANTICS point per test.

Numbers in the names' docstrings refer to /work/shared/NETPOL-SEMANTICS.md.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.model.objects import Direction
from agent.policy.explain import EndpointError
from tests.unit import builders as b
from tests.unit.builders import allowed, check, labels

NODE1 = ("172.18.0.1", "fc00::1")
NODE2 = ("172.18.0.2", "fc00::2")


def cluster(*objects: Any) -> Any:
    """Namespaces x (team=a) and y (team=b), two nodes, server x/a and clients x/b, y/b."""
    return b.state_of(
        b.namespace("x", team="a"),
        b.namespace("y", team="b"),
        b.node("node1", *NODE1),
        b.node("node2", *NODE2),
        b.pod("x/a", "10.0.1.1", "fd00::1:1", labels={"pod": "a"}),
        b.pod("x/b", "10.0.1.2", "fd00::1:2", labels={"pod": "b"}, node_name="node2"),
        b.pod("y/b", "10.0.2.2", "fd00::2:2", labels={"pod": "b"}, node_name="node2"),
        *objects,
    )


def ingress_to_a(*rules: Any, **spec: Any) -> Any:
    return b.policy("x/to-a", podSelector=labels(pod="a"), ingress=list(rules), **spec)


def egress_of_a(*rules: Any, **spec: Any) -> Any:
    return b.policy(
        "x/from-a", podSelector=labels(pod="a"), policyTypes=["Egress"], egress=list(rules), **spec
    )


# --- isolation (1-6) --------------------------------------------------------------------------


def test_no_policy_allows_everything() -> None:
    state = cluster()
    verdict = check(state, "y/b", "x/a")
    assert verdict.allowed
    assert verdict.ingress is not None and not verdict.ingress.isolated
    assert verdict.egress is not None and not verdict.egress.isolated


def test_policy_in_another_namespace_does_not_isolate() -> None:
    state = cluster(b.policy("y/deny-all"))
    assert allowed(state, "x/b", "x/a")


def test_policy_selecting_other_pods_does_not_isolate() -> None:
    state = cluster(b.policy("x/deny-b", podSelector=labels(pod="b")))
    assert allowed(state, "y/b", "x/a")
    assert not allowed(state, "y/b", "x/b")


def test_empty_pod_selector_isolates_every_pod_of_the_namespace() -> None:
    state = cluster(b.policy("x/deny-all"))
    assert not allowed(state, "y/b", "x/a")
    assert not allowed(state, "y/b", "x/b")
    assert allowed(state, "x/a", "y/b")  # y is not isolated; egress default is not touched


def test_ingress_only_policy_leaves_egress_open() -> None:
    state = cluster(b.policy("x/deny-ingress", policyTypes=["Ingress"]))
    verdict = check(state, "x/a", "y/b")
    assert verdict.allowed
    assert verdict.egress is not None and not verdict.egress.isolated


def test_default_deny_egress_blocks_the_client_side() -> None:
    state = cluster(b.policy("x/deny-egress", policyTypes=["Egress"]))
    verdict = check(state, "x/a", "y/b")
    assert not verdict.allowed
    assert verdict.egress is not None and not verdict.egress.allowed
    assert verdict.ingress is not None and verdict.ingress.allowed


def test_policy_types_default_adds_egress_only_with_egress_rules() -> None:
    # No policyTypes, egress rules present: egress is isolated too (5).
    state = cluster(
        b.policy("x/np", podSelector=labels(pod="a"), egress=[{"ports": [{"port": 53}]}])
    )
    assert not allowed(state, "x/a", "y/b", 80)
    assert allowed(state, "x/a", "y/b", 53)
    assert not allowed(state, "y/b", "x/a", 80)  # and ingress, allowing nothing


def test_egress_section_ignored_when_not_in_policy_types() -> None:
    state = cluster(
        b.policy("x/np", podSelector=labels(pod="a"), policyTypes=["Ingress"], egress=[{}])
    )
    assert allowed(state, "x/a", "y/b")


@pytest.mark.parametrize("ingress", [None, []], ids=["missing", "empty"])
def test_missing_or_empty_ingress_isolates_and_allows_nothing(ingress: Any) -> None:
    spec: dict[str, Any] = {"podSelector": labels(pod="a")}
    if ingress is not None:
        spec["ingress"] = ingress
    state = cluster(b.policy("x/np", **spec))
    assert not allowed(state, "y/b", "x/a")


def test_empty_rule_allows_everything() -> None:
    state = cluster(ingress_to_a({}))
    assert allowed(state, "y/b", "x/a", 1234, "UDP")
    assert allowed(state, "192.168.7.7", "10.0.1.1")


@pytest.mark.parametrize("shape", ["missing", "empty"])
def test_missing_or_empty_from_and_ports_match_everything(shape: str) -> None:
    rule: dict[str, Any] = {} if shape == "missing" else {"from": [], "ports": []}
    state = cluster(ingress_to_a(rule))
    assert allowed(state, "y/b", "x/a", 9999, "SCTP")


def test_policies_are_additive() -> None:
    state = cluster(
        ingress_to_a({"from": [{"podSelector": labels(pod="b")}]}),
        b.policy(
            "x/also-y",
            podSelector=labels(pod="a"),
            ingress=[{"from": [{"namespaceSelector": labels(team="b")}]}],
        ),
    )
    verdict = check(state, "y/b", "x/a")
    assert verdict.allowed
    assert verdict.ingress is not None
    assert verdict.ingress.selecting == ("x/also-y", "x/to-a")
    assert verdict.ingress.allowed_by == ("x/also-y ingress[0]",)
    assert allowed(state, "x/b", "x/a")


def test_a_deny_all_policy_does_not_override_an_allow() -> None:
    state = cluster(b.policy("x/deny-all"), ingress_to_a({}))
    assert allowed(state, "y/b", "x/a")


def test_both_directions_are_needed_server_allows_client_denies() -> None:
    state = cluster(
        b.policy("y/deny-egress", policyTypes=["Egress"]),
        ingress_to_a({"from": [{"namespaceSelector": {}}]}),
    )
    verdict = check(state, "y/b", "x/a")
    assert verdict.ingress is not None and verdict.ingress.allowed
    assert verdict.egress is not None and not verdict.egress.allowed
    assert not verdict.allowed


def test_both_directions_are_needed_client_allows_server_denies() -> None:
    state = cluster(
        b.policy("y/egress-all", policyTypes=["Egress"], egress=[{}]),
        ingress_to_a({"from": [{"podSelector": {}}]}),  # only x's own pods
    )
    assert not allowed(state, "y/b", "x/a")


def test_ingress_and_egress_of_one_pod_are_independent() -> None:
    state = cluster(
        b.policy(
            "x/np",
            podSelector=labels(pod="a"),
            policyTypes=["Ingress", "Egress"],
            ingress=[{"from": [{"namespaceSelector": labels(team="b")}]}],
            egress=[{"to": [{"podSelector": labels(pod="b")}]}],
        )
    )
    assert allowed(state, "y/b", "x/a")
    assert not allowed(state, "x/b", "x/a")
    assert allowed(state, "x/a", "x/b")
    assert not allowed(state, "x/a", "y/b")


# --- peers (7-12) ---------------------------------------------------------------------------


def test_pod_selector_alone_means_the_policy_namespace() -> None:
    state = cluster(ingress_to_a({"from": [{"podSelector": labels(pod="b")}]}))
    assert allowed(state, "x/b", "x/a")
    assert not allowed(state, "y/b", "x/a")  # same labels, other namespace


def test_empty_pod_selector_alone_means_all_pods_of_the_policy_namespace() -> None:
    state = cluster(ingress_to_a({"from": [{"podSelector": {}}]}))
    assert allowed(state, "x/b", "x/a")
    assert not allowed(state, "y/b", "x/a")


def test_namespace_selector_alone_means_every_pod_of_matching_namespaces() -> None:
    state = cluster(ingress_to_a({"from": [{"namespaceSelector": labels(team="b")}]}))
    assert allowed(state, "y/b", "x/a")
    assert not allowed(state, "x/b", "x/a")


def test_empty_namespace_selector_means_every_pod_everywhere() -> None:
    state = cluster(ingress_to_a({"from": [{"namespaceSelector": {}}]}))
    assert allowed(state, "y/b", "x/a")
    assert allowed(state, "x/b", "x/a")
    assert not allowed(state, "192.168.7.7", "10.0.1.1")  # but no non-pod address


def test_both_selectors_in_one_entry_are_anded() -> None:
    state = cluster(
        b.pod("y/c", "10.0.2.3", labels={"pod": "c"}),
        ingress_to_a(
            {"from": [{"namespaceSelector": labels(team="b"), "podSelector": labels(pod="b")}]}
        ),
    )
    assert allowed(state, "y/b", "x/a")
    assert not allowed(state, "y/c", "x/a")  # right namespace, wrong pod
    assert not allowed(state, "x/b", "x/a")  # right pod, wrong namespace


def test_separate_entries_are_ored() -> None:
    state = cluster(
        b.pod("y/c", "10.0.2.3", labels={"pod": "c"}),
        ingress_to_a(
            {"from": [{"namespaceSelector": labels(team="b")}, {"podSelector": labels(pod="b")}]}
        ),
    )
    assert allowed(state, "y/b", "x/a")
    assert allowed(state, "y/c", "x/a")
    assert allowed(state, "x/b", "x/a")


def test_namespace_selected_by_its_name_label() -> None:
    by_name = {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["y"]}
        ]
    }
    state = cluster(ingress_to_a({"from": [{"namespaceSelector": by_name}]}))
    assert allowed(state, "y/b", "x/a")
    assert not allowed(state, "x/b", "x/a")


def test_namespace_excluded_by_its_name_label() -> None:
    not_y = {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["y"]}
        ]
    }
    state = cluster(ingress_to_a({"from": [{"namespaceSelector": not_y}]}))
    assert not allowed(state, "y/b", "x/a")
    assert allowed(state, "x/b", "x/a")


def test_namespace_name_label_holds_without_a_namespace_object() -> None:
    state = b.state_of(
        b.pod("x/a", "10.0.1.1", labels={"pod": "a"}),
        b.pod("z/c", "10.0.3.1"),
        ingress_to_a(
            {"from": [{"namespaceSelector": labels(**{"kubernetes.io/metadata.name": "z"})}]}
        ),
    )
    assert allowed(state, "z/c", "x/a")


def test_match_expressions_on_pods() -> None:
    not_b = {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["b"]}]}
    state = cluster(
        b.pod("y/c", "10.0.2.3", labels={"pod": "c"}),
        b.pod("y/bare", "10.0.2.4"),
        ingress_to_a({"from": [{"namespaceSelector": {}, "podSelector": not_b}]}),
    )
    assert allowed(state, "y/c", "x/a")
    assert allowed(state, "y/bare", "x/a")  # NotIn matches a pod without the key
    assert not allowed(state, "y/b", "x/a")


def test_ip_block_allows_addresses_in_range_pods_included() -> None:
    state = cluster(ingress_to_a({"from": [{"ipBlock": {"cidr": "10.0.2.0/24"}}]}))
    assert allowed(state, "y/b", "x/a")  # a pod, inside the block
    assert allowed(state, "10.0.2.200", "10.0.1.1")  # not a pod, inside
    assert not allowed(state, "x/b", "x/a")  # 10.0.1.2: outside


def test_ip_block_except_is_subtracted() -> None:
    state = cluster(
        ingress_to_a({"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]})
    )
    assert allowed(state, "x/b", "x/a")
    assert not allowed(state, "y/b", "x/a")
    assert not allowed(state, "10.0.2.9", "10.0.1.1")


def test_ip_block_except_is_not_a_deny_when_another_policy_allows() -> None:
    state = cluster(
        ingress_to_a({"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]}),
        b.policy(
            "x/allow-y-b",
            podSelector=labels(pod="a"),
            ingress=[{"from": [{"ipBlock": {"cidr": "10.0.2.2/32"}}]}],
        ),
    )
    verdict = check(state, "y/b", "x/a")
    assert verdict.allowed
    assert verdict.ingress is not None
    assert verdict.ingress.allowed_by == ("x/allow-y-b ingress[0]",)


def test_ip_block_except_is_not_a_deny_when_another_rule_allows() -> None:
    state = cluster(
        ingress_to_a(
            {"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]},
            {"from": [{"namespaceSelector": labels(team="b")}]},
        )
    )
    assert allowed(state, "y/b", "x/a")


def test_ipv4_block_never_matches_ipv6_traffic() -> None:
    state = cluster(ingress_to_a({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}))
    assert allowed(state, "10.0.2.2", "10.0.1.1")
    assert not allowed(state, "fd00::2:2", "fd00::1:1")


def test_ipv6_block_never_matches_ipv4_traffic() -> None:
    state = cluster(ingress_to_a({"from": [{"ipBlock": {"cidr": "::/0"}}]}))
    assert allowed(state, "fd00::2:2", "fd00::1:1")
    assert not allowed(state, "10.0.2.2", "10.0.1.1")


def test_egress_to_ip_block() -> None:
    state = cluster(
        egress_of_a({"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]})
    )
    assert allowed(state, "10.0.1.1", "192.168.2.1")
    assert not allowed(state, "10.0.1.1", "192.168.1.1")
    assert not allowed(state, "10.0.1.1", "8.8.8.8")


# --- which pods count (13, 20) ---------------------------------------------------------------


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_finished_pod_is_not_a_peer(phase: str) -> None:
    state = cluster(
        b.pod("y/done", "10.0.2.9", labels={"pod": "b"}, phase=phase),
        ingress_to_a({"from": [{"namespaceSelector": {}, "podSelector": labels(pod="b")}]}),
    )
    assert not allowed(state, "10.0.2.9", "10.0.1.1")


def test_finished_pod_is_not_a_target() -> None:
    state = cluster(
        b.pod("x/done", "10.0.1.9", labels={"pod": "a"}, phase="Succeeded"),
        b.policy("x/deny-all"),
    )
    verdict = check(state, "y/b", "10.0.1.9")
    assert verdict.ingress is None  # the address is no pod any more
    with pytest.raises(EndpointError, match="finished"):
        check(state, "y/b", "x/done")


def test_reused_ip_never_gets_the_finished_pods_labels() -> None:
    # y/old (pod=b) finished; its address now belongs to y/new (pod=c).
    state = cluster(
        b.pod("y/old", "10.0.2.9", labels={"pod": "b"}, phase="Succeeded"),
        b.pod("y/new", "10.0.2.9", labels={"pod": "c"}),
        ingress_to_a({"from": [{"namespaceSelector": {}, "podSelector": labels(pod="b")}]}),
    )
    verdict = check(state, "10.0.2.9", "10.0.1.1")
    assert verdict.source.pod is not None and verdict.source.pod.key == "y/new"
    assert not verdict.allowed


def test_reused_ip_is_judged_by_the_new_pods_policies() -> None:
    state = cluster(
        b.pod("y/old", "10.0.2.9", labels={"pod": "b"}, phase="Failed"),
        b.pod("y/new", "10.0.2.9", labels={"pod": "c"}),
        b.policy("y/isolate-b", podSelector=labels(pod="b")),
    )
    assert allowed(state, "x/a", "10.0.2.9")  # the new pod is not isolated


def test_host_network_pod_is_not_a_selector_peer() -> None:
    state = cluster(
        b.pod("y/host", *NODE2, labels={"pod": "b"}, host_network=True, node_name="node2"),
        ingress_to_a({"from": [{"namespaceSelector": {}, "podSelector": labels(pod="b")}]}),
    )
    assert not allowed(state, NODE2[0], "10.0.1.1")


def test_host_network_pod_is_not_a_target() -> None:
    state = cluster(
        b.pod("x/host", *NODE2, labels={"pod": "a"}, host_network=True, node_name="node2"),
        b.policy("x/deny-all"),
    )
    assert check(state, "y/b", NODE2[0]).ingress is None
    with pytest.raises(EndpointError, match="hostNetwork"):
        check(state, "y/b", "x/host")


def test_other_nodes_are_ordinary_addresses() -> None:
    state = cluster(ingress_to_a({"from": [{"ipBlock": {"cidr": "172.18.0.0/24"}}]}))
    assert allowed(state, NODE2[0], "10.0.1.1")
    state = cluster(ingress_to_a())
    assert not allowed(state, NODE2[0], "10.0.1.1")


# --- ports (14-18) ---------------------------------------------------------------------------


def test_numeric_port() -> None:
    state = cluster(ingress_to_a({"ports": [{"port": 80}]}))
    assert allowed(state, "y/b", "x/a", 80)
    assert not allowed(state, "y/b", "x/a", 81)
    assert not allowed(state, "y/b", "x/a", 80, "UDP")  # protocol defaults to TCP


def test_protocol_without_port_allows_every_port_of_it() -> None:
    state = cluster(ingress_to_a({"ports": [{"protocol": "UDP"}]}))
    assert allowed(state, "y/b", "x/a", 1, "UDP")
    assert allowed(state, "y/b", "x/a", 65535, "UDP")
    assert not allowed(state, "y/b", "x/a", 53, "TCP")


def test_empty_port_entry_allows_every_tcp_port() -> None:
    state = cluster(ingress_to_a({"ports": [{}]}))
    assert allowed(state, "y/b", "x/a", 12345, "TCP")
    assert not allowed(state, "y/b", "x/a", 53, "UDP")
    assert not allowed(state, "y/b", "x/a", 80, "SCTP")


def test_udp_only_rule_isolates_and_never_opens_tcp() -> None:
    state = cluster(ingress_to_a({"ports": [{"protocol": "UDP", "port": 53}]}))
    assert allowed(state, "y/b", "x/a", 53, "UDP")
    assert not allowed(state, "y/b", "x/a", 53, "TCP")
    assert not allowed(state, "y/b", "x/a", 80, "TCP")


def test_sctp_is_not_tcp() -> None:
    state = cluster(ingress_to_a({"ports": [{"protocol": "SCTP", "port": 80}]}))
    assert allowed(state, "y/b", "x/a", 80, "SCTP")
    assert not allowed(state, "y/b", "x/a", 80, "TCP")
    state = cluster(ingress_to_a({"ports": [{"port": 80}]}))
    assert not allowed(state, "y/b", "x/a", 80, "SCTP")


def test_end_port_range_is_inclusive() -> None:
    state = cluster(ingress_to_a({"ports": [{"port": 1000, "endPort": 2000}]}))
    assert not allowed(state, "y/b", "x/a", 999)
    assert allowed(state, "y/b", "x/a", 1000)
    assert allowed(state, "y/b", "x/a", 2000)
    assert not allowed(state, "y/b", "x/a", 2001)


def _server_pods() -> list[Any]:
    return [
        b.pod(
            "x/s80",
            "10.0.1.80",
            labels={"app": "srv"},
            ports=[{"name": "http", "containerPort": 80}],
        ),
        b.pod(
            "x/s8080",
            "10.0.1.81",
            labels={"app": "srv"},
            ports=[{"name": "http", "containerPort": 8080}],
        ),
        b.pod("x/none", "10.0.1.82", labels={"app": "srv"}),
        b.pod(
            "x/udp",
            "10.0.1.83",
            labels={"app": "srv"},
            ports=[{"name": "http", "containerPort": 80, "protocol": "UDP"}],
        ),
    ]


def test_ingress_named_port_resolves_per_destination_pod() -> None:
    state = cluster(
        *_server_pods(),
        b.policy("x/srv", podSelector=labels(app="srv"), ingress=[{"ports": [{"port": "http"}]}]),
    )
    assert allowed(state, "y/b", "x/s80", 80)
    assert not allowed(state, "y/b", "x/s80", 8080)
    assert allowed(state, "y/b", "x/s8080", 8080)
    assert not allowed(state, "y/b", "x/s8080", 80)


def test_named_port_the_pod_does_not_serve_matches_nothing() -> None:
    state = cluster(
        *_server_pods(),
        b.policy("x/srv", podSelector=labels(app="srv"), ingress=[{"ports": [{"port": "http"}]}]),
    )
    for port in (80, 8080, 443):
        assert not allowed(state, "y/b", "x/none", port)


def test_named_port_needs_name_and_protocol_to_match() -> None:
    state = cluster(
        *_server_pods(),
        b.policy("x/srv", podSelector=labels(app="srv"), ingress=[{"ports": [{"port": "http"}]}]),
    )
    assert not allowed(state, "y/b", "x/udp", 80, "TCP")
    assert not allowed(state, "y/b", "x/udp", 80, "UDP")  # the rule's protocol is TCP


def test_named_port_from_a_namespace() -> None:
    state = cluster(
        *_server_pods(),
        b.policy(
            "x/srv",
            podSelector=labels(app="srv"),
            ingress=[
                {"from": [{"namespaceSelector": labels(team="b")}], "ports": [{"port": "http"}]}
            ],
        ),
    )
    assert allowed(state, "y/b", "x/s8080", 8080)
    assert not allowed(state, "x/b", "x/s8080", 8080)


def test_egress_named_port_resolves_against_each_destination_pod() -> None:
    state = cluster(*_server_pods(), egress_of_a({"ports": [{"port": "http"}]}))
    assert allowed(state, "x/a", "x/s80", 80)
    assert allowed(state, "x/a", "x/s8080", 8080)
    assert not allowed(state, "x/a", "x/s8080", 80)
    assert not allowed(state, "x/a", "x/none", 80)


def test_egress_named_port_never_matches_a_non_pod_address() -> None:
    state = cluster(
        *_server_pods(),
        egress_of_a({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": "http"}]}),
    )
    assert allowed(state, "x/a", "10.0.1.80", 80)  # a pod in the block serving http=80
    assert not allowed(state, "x/a", "192.168.1.1", 80)  # not a pod: no named ports
    assert not allowed(state, "x/a", "192.168.1.1", 8080)


# --- host, self (19, 23) --------------------------------------------------------------------


def test_own_node_reaches_an_isolated_pod() -> None:
    state = cluster(b.policy("x/deny-all"))
    verdict = check(state, NODE1[0], "x/a")
    assert verdict.allowed
    assert verdict.ingress is not None and "own node" in verdict.ingress.reason


def test_own_node_over_ipv6_reaches_an_isolated_pod() -> None:
    state = cluster(b.policy("x/deny-all"))
    assert allowed(state, NODE1[1], "fd00::1:1")


def test_other_node_does_not_get_the_own_node_exemption() -> None:
    state = cluster(b.policy("x/deny-all"))
    assert not allowed(state, NODE2[0], "x/a")  # x/a lives on node1


def test_pod_to_its_own_node_is_exempt_from_egress() -> None:
    state = cluster(b.policy("x/deny-all", policyTypes=["Egress"]))
    verdict = check(state, "x/a", NODE1[0])
    assert verdict.allowed
    assert verdict.egress is not None and verdict.egress.reason == "always allowed: to own node"
    assert not allowed(state, "x/a", NODE2[0])  # another node is an ordinary address


def test_pod_always_reaches_itself() -> None:
    state = cluster(b.policy("x/deny-all", policyTypes=["Ingress", "Egress"]))
    for family_address in ("x/a", "10.0.1.1"):
        verdict = check(state, "x/a", family_address)
        assert verdict.allowed
    assert allowed(state, "fd00::1:1", "fd00::1:1")


# --- the verdict itself ---------------------------------------------------------------------


def test_verdict_names_the_deciding_policy_and_rule() -> None:
    state = cluster(
        ingress_to_a(
            {"ports": [{"port": 443}]},
            {"from": [{"namespaceSelector": {}}], "ports": [{"port": 80}]},
        )
    )
    verdict = check(state, "y/b", "x/a", 80)
    assert verdict.ingress is not None
    assert verdict.ingress.direction is Direction.INGRESS
    assert verdict.ingress.pod == "x/a"
    assert verdict.ingress.selecting == ("x/to-a",)
    assert verdict.ingress.allowed_by == ("x/to-a ingress[1]",)


def test_non_pod_ends_have_no_verdict_side() -> None:
    state = cluster()
    verdict = check(state, "192.168.1.1", "x/a")
    assert verdict.egress is None
    assert verdict.ingress is not None


def test_unknown_pod_is_an_endpoint_error() -> None:
    with pytest.raises(EndpointError, match="no pod x/nope"):
        check(cluster(), "x/nope", "x/a")


def test_pod_without_an_address_in_the_family_is_an_endpoint_error() -> None:
    state = cluster(b.pod("x/v4only", "10.0.1.7"))
    with pytest.raises(EndpointError, match="IPv6"):
        check(state, "x/v4only", "fd00::1:1")
