"""Parsing ClusterNetworkPolicy: every field, every error, and how each error fails closed.

The spec is the experimental CRD of sigs.k8s.io/network-policy-api v0.3.0 (v1alpha2 and
v1beta1 share the schema). What the API server would reject is an error naming the policy
and the field path; a rule that cannot be read denies all traffic at its place; an
unreadable tier, priority or subject makes the whole policy an Admin Deny of everything.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from agent.cli import load_state_file
from agent.control.source import Kind, trim
from agent.model.objects import (
    ClusterNetworkPolicy,
    ClusterRule,
    IPBlock,
    NodePeer,
    PolicyPort,
    Protocol,
    RuleAction,
    SelectorPeer,
    Tier,
)
from agent.model.parse import (
    InvalidObject,
    parse_cluster_network_policy,
    parse_node,
    parse_objects,
)
from agent.model.reader import read_bytes
from agent.model.selectors import LabelSelector, Operator, Requirement
from tests.unit import builders as b

ALL = LabelSelector()
DENY_ALL = ClusterRule(RuleAction.DENY, None, None, 0)


def labels(**values: str) -> LabelSelector:
    return LabelSelector.from_labels(values)


def cnp(
    name: str = "c", api_version: str = "policy.networking.k8s.io/v1alpha2", **spec: Any
) -> Any:
    """A valid policy: Admin, priority 10, every namespace; ``spec`` replaces fields."""
    full = {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}}, **spec}
    return {
        "apiVersion": api_version,
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": full,
    }


def ingress(*peers: Any, action: Any = "Accept", **fields: Any) -> dict[str, Any]:
    return {"action": action, "from": list(peers), **fields}


def egress(*peers: Any, action: Any = "Accept", **fields: Any) -> dict[str, Any]:
    return {"action": action, "to": list(peers), **fields}


PODS_PEER = {"pods": {"podSelector": {"matchLabels": {"app": "web"}}}}
WEB = SelectorPeer(ALL, labels(app="web"))


def parse(**spec: Any) -> ClusterNetworkPolicy:
    return parse_cluster_network_policy(cnp(**spec))


def parse_clean(**spec: Any) -> ClusterNetworkPolicy:
    policy = parse(**spec)
    assert policy.problems == ()
    return policy


def tcp(number: int) -> dict[str, Any]:
    return {"tcp": {"destinationPort": {"number": number}}}


# --- what a valid policy reads as ------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1alpha2", "v1beta1"])
def test_both_served_versions_read_alike(version: str) -> None:
    policy = parse_cluster_network_policy(
        cnp(api_version=f"policy.networking.k8s.io/{version}", ingress=[ingress(PODS_PEER)])
    )
    assert policy == parse(ingress=[ingress(PODS_PEER)])
    assert policy.problems == ()


def test_an_object_without_api_version_is_read_as_the_watched_version() -> None:
    """The API source trims apiVersion away; the watch asks for v1alpha2."""
    raw = cnp(ingress=[ingress(PODS_PEER)])
    del raw["apiVersion"]
    assert parse_cluster_network_policy(raw) == parse(ingress=[ingress(PODS_PEER)])


@pytest.mark.parametrize(("text", "tier"), [("Admin", Tier.ADMIN), ("Baseline", Tier.BASELINE)])
def test_tier(text: str, tier: Tier) -> None:
    assert parse_clean(tier=text).tier is tier


@pytest.mark.parametrize("priority", [0, 1000])
def test_priority_takes_both_ends_of_its_range(priority: int) -> None:
    assert parse_clean(priority=priority).priority == priority


def test_subject_namespaces_selects_every_pod_of_those_namespaces() -> None:
    policy = parse_clean(subject={"namespaces": {"matchLabels": {"team": "a"}}})
    assert policy.subject == SelectorPeer(labels(team="a"), None)


def test_subject_pods_without_a_namespace_selector_looks_in_every_namespace() -> None:
    policy = parse_clean(subject={"pods": {"podSelector": {"matchLabels": {"app": "web"}}}})
    assert policy.subject == SelectorPeer(ALL, labels(app="web"))


def test_subject_pods_with_a_namespace_selector() -> None:
    policy = parse_clean(
        subject={
            "pods": {
                "namespaceSelector": {"matchExpressions": [{"key": "t", "operator": "Exists"}]},
                "podSelector": {},
            }
        }
    )
    exists = LabelSelector((Requirement("t", Operator.EXISTS),))
    assert policy.subject == SelectorPeer(exists, ALL)


def test_rules_keep_their_written_order_action_index_and_name() -> None:
    policy = parse_clean(
        ingress=[
            ingress(PODS_PEER, action="Pass", name="first"),
            ingress(PODS_PEER, action="Deny"),
            ingress(PODS_PEER, action="Accept", name="third"),
        ]
    )
    assert policy.ingress == (
        ClusterRule(RuleAction.PASS, (WEB,), None, 0, "first"),
        ClusterRule(RuleAction.DENY, (WEB,), None, 1, ""),
        ClusterRule(RuleAction.ACCEPT, (WEB,), None, 2, "third"),
    )


def test_namespaces_peer_is_a_namespace_selector_without_pod_selector() -> None:
    policy = parse_clean(ingress=[ingress({"namespaces": {"matchLabels": {"team": "b"}}})])
    assert policy.ingress[0].peers == (SelectorPeer(labels(team="b"), None),)


def test_pods_peer_reads_both_selectors() -> None:
    peer = {
        "pods": {
            "namespaceSelector": {"matchLabels": {"team": "b"}},
            "podSelector": {"matchLabels": {"app": "client"}},
        }
    }
    policy = parse_clean(egress=[egress(peer)])
    assert policy.egress[0].peers == (SelectorPeer(labels(team="b"), labels(app="client")),)


def test_networks_peer_is_one_block_per_cidr_of_either_family() -> None:
    policy = parse_clean(egress=[egress({"networks": ["10.0.0.0/8", "fd00::/64", "0.0.0.0/0"]})])
    assert policy.egress[0].peers == (
        IPBlock(ipaddress.ip_network("10.0.0.0/8")),
        IPBlock(ipaddress.ip_network("fd00::/64")),
        IPBlock(ipaddress.ip_network("0.0.0.0/0")),
    )


def test_nodes_peer_is_a_node_selector() -> None:
    policy = parse_clean(
        egress=[egress({"nodes": {"matchLabels": {"kubernetes.io/os": "linux"}}}, {"nodes": {}})]
    )
    assert policy.egress[0].peers == (
        NodePeer(LabelSelector.from_labels({"kubernetes.io/os": "linux"})),
        NodePeer(ALL),
    )


def test_peers_of_every_kind_in_one_rule_keep_their_order() -> None:
    policy = parse_clean(egress=[egress({"nodes": {}}, PODS_PEER, {"networks": ["192.0.2.0/24"]})])
    assert policy.egress[0].peers == (
        NodePeer(ALL),
        WEB,
        IPBlock(ipaddress.ip_network("192.0.2.0/24")),
    )


def test_protocols_absent_means_all_traffic() -> None:
    assert parse_clean(ingress=[ingress(PODS_PEER)]).ingress[0].ports is None


@pytest.mark.parametrize(
    ("field", "protocol"), [("tcp", Protocol.TCP), ("udp", Protocol.UDP), ("sctp", Protocol.SCTP)]
)
def test_port_number_of_each_protocol(field: str, protocol: Protocol) -> None:
    rule = ingress(PODS_PEER, protocols=[{field: {"destinationPort": {"number": 8080}}}])
    assert parse_clean(ingress=[rule]).ingress[0].ports == (PolicyPort(protocol, 8080),)


@pytest.mark.parametrize("number", [1, 65535])
def test_port_number_takes_both_ends_of_its_range(number: int) -> None:
    rule = ingress(PODS_PEER, protocols=[tcp(number)])
    assert parse_clean(ingress=[rule]).ingress[0].ports == (PolicyPort(Protocol.TCP, number),)


def test_port_range_is_a_port_with_an_end() -> None:
    rule = ingress(
        PODS_PEER, protocols=[{"udp": {"destinationPort": {"range": {"start": 53, "end": 5353}}}}]
    )
    assert parse_clean(ingress=[rule]).ingress[0].ports == (PolicyPort(Protocol.UDP, 53, 5353),)


def test_named_port_is_that_name_under_each_protocol() -> None:
    rule = ingress(PODS_PEER, protocols=[{"destinationNamedPort": "http"}])
    assert parse_clean(ingress=[rule]).ingress[0].ports == (
        PolicyPort(Protocol.TCP, "http"),
        PolicyPort(Protocol.UDP, "http"),
        PolicyPort(Protocol.SCTP, "http"),
    )


def test_several_protocols_in_written_order() -> None:
    rule = egress(
        PODS_PEER,
        protocols=[tcp(80), {"sctp": {"destinationPort": {"number": 9003}}}, tcp(443)],
    )
    assert parse_clean(egress=[rule]).egress[0].ports == (
        PolicyPort(Protocol.TCP, 80),
        PolicyPort(Protocol.SCTP, 9003),
        PolicyPort(Protocol.TCP, 443),
    )


def test_named_port_with_pod_peers_in_egress_is_allowed() -> None:
    rule = egress(PODS_PEER, protocols=[{"destinationNamedPort": "dns"}])
    assert parse_clean(egress=[rule]).egress[0].action is RuleAction.ACCEPT


@pytest.mark.parametrize("rules", [None, []])
def test_no_rules_in_a_direction_leaves_it_alone(rules: Any) -> None:
    policy = parse_clean(ingress=rules, egress=[egress(PODS_PEER)])
    assert policy.ingress == ()
    assert len(policy.egress) == 1


def test_twenty_five_of_everything_is_allowed() -> None:
    peers = [{"networks": [f"10.{i}.{j}.0/24" for j in range(25)]} for i in range(25)]
    rule = egress(*peers, protocols=[tcp(1000 + i) for i in range(25)], name="n" * 100)
    policy = parse_clean(egress=[rule] * 25)
    assert len(policy.egress) == 25
    assert len(policy.egress[24].peers or ()) == 625
    assert policy.egress[24].name == "n" * 100


def test_the_key_is_the_name() -> None:
    assert parse_cluster_network_policy(cnp(name="deny-monitoring")).key == "deny-monitoring"


# --- an unusable object is rejected (as for every kind) ---------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        5,
        "policy",
        {"kind": "ClusterNetworkPolicy", "spec": {}},
        {"kind": "ClusterNetworkPolicy", "metadata": {}},
        {"kind": "ClusterNetworkPolicy", "metadata": {"name": "Bad_Name"}},
        {"kind": "ClusterNetworkPolicy", "metadata": {"name": 5}},
        {"kind": "ClusterNetworkPolicy", "metadata": ["c"]},
    ],
    ids=["number", "string", "no-metadata", "no-name", "bad-name", "name-number", "metadata-list"],
)
def test_an_object_without_a_readable_name_is_invalid(obj: Any) -> None:
    with pytest.raises(InvalidObject) as caught:
        parse_cluster_network_policy(obj)
    assert str(caught.value).isprintable()


# --- an unreadable spec: the whole policy denies (fail closed) ------------------------------


def assert_denies_everything(policy: ClusterNetworkPolicy) -> None:
    assert policy.tier is Tier.ADMIN
    assert policy.ingress == (DENY_ALL,)
    assert policy.egress == (DENY_ALL,)
    assert policy.problems
    assert all("fail closed" in problem for problem in policy.problems)


@pytest.mark.parametrize(
    "version",
    [
        "policy.networking.k8s.io/v1alpha1",
        "policy.networking.k8s.io/v1",
        "example.com/v1alpha2",
        "v1",
        "",
        5,
    ],
)
def test_an_api_version_the_agent_does_not_read_denies_everything_to_every_pod(
    version: Any,
) -> None:
    policy = parse_cluster_network_policy(cnp(api_version=version, ingress=[ingress(PODS_PEER)]))
    assert_denies_everything(policy)
    assert policy.subject is None
    assert policy.priority == 0
    assert policy.problems[0].startswith("ClusterNetworkPolicy c: apiVersion: ")
    assert "v1alpha2 or policy.networking.k8s.io/v1beta1" in policy.problems[0]


@pytest.mark.parametrize("spec", [None, 5, "x", [], [{}]])
def test_a_spec_that_is_not_an_object_denies_everything_to_every_pod(spec: Any) -> None:
    raw = cnp()
    raw["spec"] = spec
    policy = parse_cluster_network_policy(raw)
    assert_denies_everything(policy)
    assert policy.subject is None
    assert policy.problems[0].startswith("ClusterNetworkPolicy c: spec: ")
    assert "every pod" in policy.problems[0]


@pytest.mark.parametrize("tier", [None, "admin", "Namespace", "", 1, True, ["Admin"]])
def test_an_unreadable_tier_denies_everything_to_the_subject(tier: Any) -> None:
    policy = parse(tier=tier, priority=7, ingress=[ingress(PODS_PEER)])
    assert_denies_everything(policy)
    assert policy.priority == 7
    assert policy.subject == SelectorPeer(ALL, None)
    assert policy.problems[0].startswith("ClusterNetworkPolicy c: spec.tier: ")
    assert "the pods of its subject" in policy.problems[0]


@pytest.mark.parametrize("priority", [None, -1, 1001, 2**31, True, False, "10", 10.0, [10]])
def test_an_unreadable_priority_denies_everything_at_priority_zero(priority: Any) -> None:
    policy = parse(tier="Baseline", priority=priority, egress=[egress(PODS_PEER)])
    assert_denies_everything(policy)
    assert policy.priority == 0
    assert policy.subject == SelectorPeer(ALL, None)
    assert policy.problems[0].startswith("ClusterNetworkPolicy c: spec.priority: ")


@pytest.mark.parametrize(
    ("subject", "path"),
    [
        (None, "spec.subject: is required"),
        ({}, "spec.subject: must set exactly one of namespaces, pods"),
        ({"namespaces": None}, "spec.subject: must set exactly one"),
        ({"namespaces": {}, "pods": {"podSelector": {}}}, "spec.subject: must set exactly one"),
        ({"nodes": {}}, "spec.subject.nodes: unknown field"),
        ([{"namespaces": {}}], "spec.subject: must be an object"),
        ({"namespaces": 5}, "spec.subject.namespaces: must be a label selector"),
        ({"namespaces": {"matchLabels": {"a": 5}}}, "spec.subject.namespaces.matchLabels.a: "),
        ({"pods": {"namespaceSelector": {}}}, "spec.subject.pods.podSelector: is required"),
        ({"pods": {"podSelector": {}, "x": {}}}, "spec.subject.pods.x: unknown field"),
        ({"namespaces": {"matchLabel": {"a": "b"}}}, "spec.subject.namespaces.matchLabel: unknown field"),
        ({"pods": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}},
         "spec.subject.pods.podSelector.matchExpressions[0].operator: unknown operator"),
    ],
)  # fmt: skip
def test_an_unreadable_subject_denies_everything_to_every_pod(subject: Any, path: str) -> None:
    policy = parse(subject=subject, priority=3, ingress=[ingress(PODS_PEER)])
    assert_denies_everything(policy)
    assert policy.subject is None
    assert policy.priority == 3
    assert policy.problems[0].startswith(f"ClusterNetworkPolicy c: {path}")
    assert "every pod" in policy.problems[0]


def test_an_unknown_spec_field_denies_everything_to_the_subject() -> None:
    """A NetworkPolicy habit: ``podSelector`` here would have narrowed the subject."""
    policy = parse(podSelector={"matchLabels": {"app": "web"}}, ingress=[ingress(PODS_PEER)])
    assert_denies_everything(policy)
    assert policy.subject == SelectorPeer(ALL, None)
    assert policy.problems[0].startswith("ClusterNetworkPolicy c: spec.podSelector: unknown field")


def test_every_unreadable_spec_field_is_reported() -> None:
    policy = parse(tier="admin", priority=-1, subject={})
    assert [problem.split(": ")[1] for problem in policy.problems] == [
        "spec.tier",
        "spec.priority",
        "spec.subject",
    ]


# --- a rule that cannot be read denies all traffic at its place -------------------------------

BROKEN_INGRESS_RULES: list[tuple[str, Any, str]] = [
    ("not an object", 5, "spec.ingress[1]: must be an object"),
    ("action missing", {"from": [PODS_PEER]}, "spec.ingress[1].action: is required"),
    ("action unknown", ingress(PODS_PEER, action="Allow"), "spec.ingress[1].action: unknown action"),
    ("action lower case", ingress(PODS_PEER, action="accept"), "spec.ingress[1].action: unknown"),
    ("action a list", ingress(PODS_PEER, action=["Deny"]), "spec.ingress[1].action: unknown"),
    ("from missing", {"action": "Accept"}, "spec.ingress[1].from: is required"),
    ("from null", {"action": "Accept", "from": None}, "spec.ingress[1].from: is required"),
    ("from empty", ingress(), "spec.ingress[1].from: 0 entries; 1 to 25"),
    ("from an object", {"action": "Accept", "from": PODS_PEER}, "spec.ingress[1].from: must be a list"),
    ("26 peers", ingress(*[PODS_PEER] * 26), "spec.ingress[1].from: 26 entries; 1 to 25"),
    ("to in ingress", {"action": "Accept", "from": [PODS_PEER], "to": []}, "spec.ingress[1].to: unknown field"),
    ("NetworkPolicy ports", ingress(PODS_PEER, ports=[{"port": 80}]), "spec.ingress[1].ports: unknown field"),
    ("peer not an object", ingress(PODS_PEER, "web"), "spec.ingress[1].from[1]: must be an object"),
    ("peer empty", ingress(PODS_PEER, {}), "spec.ingress[1].from[1]: must set exactly one of namespaces, pods"),
    ("peer null field", ingress({"pods": None}), "spec.ingress[1].from[0]: must set exactly one"),
    ("peer of two fields", ingress({"namespaces": {}, **PODS_PEER}), "spec.ingress[1].from[0]: must set exactly one of namespaces, pods; got namespaces, pods"),
    ("peer unknown field", ingress({"podSelector": {}}), "spec.ingress[1].from[0].podSelector: unknown field"),
    ("networks in ingress", ingress({"networks": ["10.0.0.0/8"]}), "spec.ingress[1].from[0].networks: is an egress peer"),
    ("nodes in ingress", ingress({"nodes": {}}), "spec.ingress[1].from[0].nodes: is an egress peer"),
    ("pods without podSelector", ingress({"pods": {"namespaceSelector": {}}}), "spec.ingress[1].from[0].pods.podSelector: is required"),
    ("pods unknown field", ingress({"pods": {"podSelector": {}, "ipBlock": {}}}), "spec.ingress[1].from[0].pods.ipBlock: unknown field"),
    ("bad label value", ingress({"namespaces": {"matchLabels": {"a": "-x-"}}}), "spec.ingress[1].from[0].namespaces.matchLabels.a: label value"),
    ("bad selector type", ingress({"namespaces": ["a"]}), "spec.ingress[1].from[0].namespaces: must be a label selector"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rule", "message"),
    [(rule, message) for _, rule, message in BROKEN_INGRESS_RULES],
    ids=[name for name, _, _ in BROKEN_INGRESS_RULES],
)
def test_a_broken_ingress_rule_denies_all_at_its_place(rule: Any, message: str) -> None:
    policy = parse(
        ingress=[ingress(PODS_PEER, name="before"), rule, ingress(PODS_PEER, action="Pass")]
    )
    assert policy.ingress == (
        ClusterRule(RuleAction.ACCEPT, (WEB,), None, 0, "before"),
        ClusterRule(RuleAction.DENY, None, None, 1),
        ClusterRule(RuleAction.PASS, (WEB,), None, 2),
    )
    assert len(policy.problems) == 1
    assert policy.problems[0].startswith(f"ClusterNetworkPolicy c: {message}"), policy.problems
    assert policy.problems[0].endswith(
        "rule spec.ingress[1] denies all traffic in its place (fail closed)"
    )


NETWORKS = ("networks",)
BROKEN_EGRESS_RULES: list[tuple[str, Any, str]] = [
    ("from in egress", {"action": "Deny", "from": [PODS_PEER]}, "spec.egress[0].from: unknown field"),
    ("to empty", egress(), "spec.egress[0].to: 0 entries"),
    ("domainNames", egress({"domainNames": ["example.com"]}), "spec.egress[0].to[0].domainNames: domain name peers are not supported"),
    ("domainNames and a pod peer", egress(PODS_PEER, {"domainNames": ["*.example.com"]}), "spec.egress[0].to[1].domainNames: domain name peers are not supported"),
    ("networks empty", egress({"networks": []}), "spec.egress[0].to[0].networks: 0 entries"),
    ("networks a string", egress({"networks": "10.0.0.0/8"}), "spec.egress[0].to[0].networks: must be a list"),
    ("26 networks", egress({"networks": [f"10.{i}.0.0/16" for i in range(26)]}), "spec.egress[0].to[0].networks: 26 entries"),
    ("host bits set", egress({"networks": ["10.0.0.1/8"]}), "spec.egress[0].to[0].networks[0]: '10.0.0.1/8' has host bits set (the network is 10.0.0.0/8)"),
    ("host bits set, IPv6", egress({"networks": ["fd00::1/64"]}), "spec.egress[0].to[0].networks[0]: 'fd00::1/64' has host bits set"),
    ("no prefix length", egress({"networks": ["10.0.0.1"]}), "spec.egress[0].to[0].networks[0]: invalid CIDR '10.0.0.1'"),
    ("netmask", egress({"networks": ["10.0.0.0/255.0.0.0"]}), "spec.egress[0].to[0].networks[0]: invalid CIDR"),
    ("prefix with a leading zero", egress({"networks": ["10.0.0.0/08"]}), "spec.egress[0].to[0].networks[0]: invalid CIDR"),
    ("zone", egress({"networks": ["fe80::%eth0/64"]}), "spec.egress[0].to[0].networks[0]: invalid CIDR"),
    ("prefix too long", egress({"networks": ["10.0.0.0/33"]}), "spec.egress[0].to[0].networks[0]: invalid CIDR"),
    ("not a CIDR", egress({"networks": ["internet"]}), "spec.egress[0].to[0].networks[0]: invalid CIDR"),
    ("CIDR a number", egress({"networks": [10]}), "spec.egress[0].to[0].networks[0]: must be a CIDR string"),
    ("CIDR given twice", egress({"networks": ["10.0.0.0/8", "10.0.0.0/8"]}), "spec.egress[0].to[0].networks[1]: '10.0.0.0/8' is given twice"),
    ("nodes a list", egress({"nodes": [{}]}), "spec.egress[0].to[0].nodes: must be a label selector"),
    ("protocols empty", egress(PODS_PEER, protocols=[]), "spec.egress[0].protocols: 0 entries"),
    ("protocols an object", egress(PODS_PEER, protocols=tcp(80)), "spec.egress[0].protocols: must be a list"),
    ("26 protocols", egress(PODS_PEER, protocols=[tcp(i + 1) for i in range(26)]), "spec.egress[0].protocols: 26 entries"),
    ("protocol empty", egress(PODS_PEER, protocols=[{}]), "spec.egress[0].protocols[0]: must set exactly one of tcp, udp, sctp, destinationNamedPort"),
    ("protocol of two fields", egress(PODS_PEER, protocols=[{**tcp(80), "destinationNamedPort": "http"}]), "spec.egress[0].protocols[0]: must set exactly one"),
    ("protocol unknown", egress(PODS_PEER, protocols=[{"icmp": {}}]), "spec.egress[0].protocols[0].icmp: unknown field"),
    ("NetworkPolicy port", egress(PODS_PEER, protocols=[{"protocol": "TCP", "port": 80}]), "spec.egress[0].protocols[0].protocol: unknown field"),
    ("tcp empty", egress(PODS_PEER, protocols=[{"tcp": {}}]), "spec.egress[0].protocols[0].tcp.destinationPort: is required"),
    ("tcp a number", egress(PODS_PEER, protocols=[{"tcp": 80}]), "spec.egress[0].protocols[0].tcp: must be an object"),
    ("tcp unknown field", egress(PODS_PEER, protocols=[{"tcp": {"port": 80}}]), "spec.egress[0].protocols[0].tcp.port: unknown field"),
    ("port empty", egress(PODS_PEER, protocols=[{"tcp": {"destinationPort": {}}}]), "spec.egress[0].protocols[0].tcp.destinationPort: must set exactly one of number, range"),
    ("port of both kinds", egress(PODS_PEER, protocols=[{"tcp": {"destinationPort": {"number": 80, "range": {"start": 1, "end": 2}}}}]), "spec.egress[0].protocols[0].tcp.destinationPort: must set exactly one"),
    ("port 0", egress(PODS_PEER, protocols=[tcp(0)]), "spec.egress[0].protocols[0].tcp.destinationPort.number: 0 is out of range 1-65535"),
    ("port 65536", egress(PODS_PEER, protocols=[tcp(65536)]), "spec.egress[0].protocols[0].tcp.destinationPort.number: 65536 is out of range"),
    ("port true", egress(PODS_PEER, protocols=[tcp(True)]), "spec.egress[0].protocols[0].tcp.destinationPort.number: must be an integer"),
    ("port a string", egress(PODS_PEER, protocols=[{"udp": {"destinationPort": {"number": "53"}}}]), "spec.egress[0].protocols[0].udp.destinationPort.number: must be an integer"),
    ("port a float", egress(PODS_PEER, protocols=[{"sctp": {"destinationPort": {"number": 80.0}}}]), "spec.egress[0].protocols[0].sctp.destinationPort.number: must be an integer"),
    ("range start equals end", egress(PODS_PEER, protocols=[{"tcp": {"destinationPort": {"range": {"start": 80, "end": 80}}}}]), "spec.egress[0].protocols[0].tcp.destinationPort.range: start 80 must be less than end 80"),
    ("range backwards", egress(PODS_PEER, protocols=[{"tcp": {"destinationPort": {"range": {"start": 90, "end": 80}}}}]), "spec.egress[0].protocols[0].tcp.destinationPort.range: start 90 must be less than end 80"),
    ("range without end", egress(PODS_PEER, protocols=[{"tcp": {"destinationPort": {"range": {"start": 80}}}}]), "spec.egress[0].protocols[0].tcp.destinationPort.range.end: is required"),
    ("range end 65536", egress(PODS_PEER, protocols=[{"tcp": {"destinationPort": {"range": {"start": 80, "end": 65536}}}}]), "spec.egress[0].protocols[0].tcp.destinationPort.range.end: 65536 is out of range"),
    ("range NetworkPolicy style", egress(PODS_PEER, protocols=[{"tcp": {"destinationPort": {"range": {"start": 80, "endPort": 90}}}}]), "spec.egress[0].protocols[0].tcp.destinationPort.range.endPort: unknown field"),
    ("named port invalid", egress(PODS_PEER, protocols=[{"destinationNamedPort": "-http-"}]), "spec.egress[0].protocols[0].destinationNamedPort: '-http-' is not a valid port name"),
    ("named port upper case", egress(PODS_PEER, protocols=[{"destinationNamedPort": "HTTP"}]), "spec.egress[0].protocols[0].destinationNamedPort: 'HTTP' is not a valid port name"),
    ("named port empty", egress(PODS_PEER, protocols=[{"destinationNamedPort": ""}]), "spec.egress[0].protocols[0].destinationNamedPort: '' is not a valid port name"),
    ("named port a number", egress(PODS_PEER, protocols=[{"destinationNamedPort": 80}]), "spec.egress[0].protocols[0].destinationNamedPort: 80 is not a valid port name"),
    ("named port to networks", egress(PODS_PEER, {"networks": ["10.0.0.0/8"]}, protocols=[{"destinationNamedPort": "http"}]), "spec.egress[0].protocols: destinationNamedPort cannot be used with a networks peer (spec.egress[0].to[1])"),
    ("named port to nodes", egress({"nodes": {}}, protocols=[tcp(80), {"destinationNamedPort": "http"}]), "spec.egress[0].protocols: destinationNamedPort cannot be used with a nodes peer (spec.egress[0].to[0])"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rule", "message"),
    [(rule, message) for _, rule, message in BROKEN_EGRESS_RULES],
    ids=[name for name, _, _ in BROKEN_EGRESS_RULES],
)
def test_a_broken_egress_rule_denies_all_at_its_place(rule: Any, message: str) -> None:
    policy = parse(egress=[rule, egress(PODS_PEER, action="Accept")])
    assert policy.egress == (
        ClusterRule(RuleAction.DENY, None, None, 0),
        ClusterRule(RuleAction.ACCEPT, (WEB,), None, 1),
    )
    assert len(policy.problems) == 1
    assert policy.problems[0].startswith(f"ClusterNetworkPolicy c: {message}"), policy.problems
    assert "rule spec.egress[0] denies all traffic in its place (fail closed)" in policy.problems[0]


def test_a_broken_accept_rule_never_accepts_anything() -> None:
    """One bad protocol must not turn "these ports" into "all traffic"."""
    rule = egress(PODS_PEER, protocols=[tcp(80), {"tcp": {"destinationPort": {"number": 0}}}])
    assert parse(egress=[rule]).egress == (DENY_ALL,)


def test_a_broken_rule_keeps_its_name() -> None:
    rule = ingress(PODS_PEER, action="Allow", name="allow-prometheus")
    assert parse(ingress=[rule]).ingress == (
        ClusterRule(RuleAction.DENY, None, None, 0, "allow-prometheus"),
    )


def test_the_problem_names_the_policy_and_the_whole_field_path() -> None:
    raw = cnp(
        name="deny-monitoring",
        ingress=[
            ingress(
                PODS_PEER,
                {"pods": {"podSelector": {"matchLabels": {"app": "prometheus", "bad key": "x"}}}},
            )
        ],
    )
    (problem,) = parse_cluster_network_policy(raw).problems
    assert problem == (
        "ClusterNetworkPolicy deny-monitoring: "
        "spec.ingress[0].from[1].pods.podSelector.matchLabels['bad key']: label key is not a "
        "valid label key (at most 63 letters, digits, '-', '_' or '.', starting and ending "
        "with a letter or digit); rule spec.ingress[0] denies all traffic in its place "
        "(fail closed)"
    )


def test_every_broken_rule_is_reported_in_order() -> None:
    policy = parse(
        ingress=[ingress(PODS_PEER, action="x"), ingress(PODS_PEER)],
        egress=[egress({"domainNames": ["a.example"]}), egress(PODS_PEER, protocols=[])],
    )
    assert [problem.split(": ")[1] for problem in policy.problems] == [
        "spec.ingress[0].action",
        "spec.egress[0].to[0].domainNames",
        "spec.egress[1].protocols",
    ]


# --- a direction that cannot be read is one Deny-all rule ------------------------------------


@pytest.mark.parametrize("rules", [5, "rules", {"action": "Deny"}, True])
def test_rules_that_are_not_a_list_deny_all_in_that_direction(rules: Any) -> None:
    policy = parse(ingress=rules, egress=[egress(PODS_PEER)])
    assert policy.ingress == (DENY_ALL,)
    assert policy.egress[0].action is RuleAction.ACCEPT
    (problem,) = policy.problems
    assert problem.startswith("ClusterNetworkPolicy c: spec.ingress: must be a list of rules")
    assert problem.endswith("ingress is read as one rule that denies all traffic (fail closed)")


def test_more_than_25_rules_deny_all_in_that_direction() -> None:
    policy = parse(egress=[egress(PODS_PEER)] * 26, ingress=[ingress(PODS_PEER)])
    assert policy.egress == (DENY_ALL,)
    assert policy.ingress[0].action is RuleAction.ACCEPT
    (problem,) = policy.problems
    assert problem.startswith("ClusterNetworkPolicy c: spec.egress: 26 rules, at most 25")


# --- a rule's name decides nothing: a bad one is reported and left out ------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("n" * 101, "spec.ingress[0].name: 101 characters, at most 100 are allowed"),
        (5, "spec.ingress[0].name: must be a printable string, got a number 5"),
        (["a"], "spec.ingress[0].name: must be a printable string"),
        ("a\nb", "spec.ingress[0].name: must be a printable string"),
    ],
)
def test_a_bad_rule_name_is_reported_and_the_rule_still_applies(name: Any, message: str) -> None:
    policy = parse(ingress=[ingress(PODS_PEER, name=name)])
    assert policy.ingress == (ClusterRule(RuleAction.ACCEPT, (WEB,), None, 0, ""),)
    (problem,) = policy.problems
    assert problem.startswith(f"ClusterNetworkPolicy c: {message}")
    assert problem.endswith("; read without a name")


def test_a_rule_name_may_be_any_printable_text() -> None:
    name = "allow-egress-to-{{ index .HostNetworkPorts 0 }}-on-nodes"
    assert parse_clean(ingress=[ingress(PODS_PEER, name=name)]).ingress[0].name == name


# --- Node labels (what nodes peers select on) --------------------------------------------------


def test_node_labels_are_read() -> None:
    node = {**b.node("n1", "192.0.2.1"), "metadata": {"name": "n1", "labels": {"zone": "a"}}}
    assert parse_node(node).labels == {"zone": "a"}


def test_a_node_without_labels_has_none() -> None:
    assert parse_node(b.node("n1", "192.0.2.1")).labels == {}


@pytest.mark.parametrize("node_labels", [["zone"], {"zone": 5}, {"bad key": "a"}, "zone=a"])
def test_unreadable_node_labels_match_no_selector_but_every_node(node_labels: Any) -> None:
    node = {**b.node("n1", "192.0.2.1"), "metadata": {"name": "n1", "labels": node_labels}}
    parsed = parse_node(node)
    assert parsed.labels is None
    assert parsed.addresses == (ipaddress.ip_address("192.0.2.1"),)
    (problem,) = parsed.problems
    assert problem.startswith("Node n1: metadata.labels")
    assert not NodePeer(LabelSelector.from_labels({"zone": "a"})).matches(parsed)
    assert not NodePeer(LabelSelector((Requirement("zone", Operator.DOES_NOT_EXIST),))).matches(
        parsed
    )
    assert NodePeer(ALL).matches(parsed)


def test_the_source_keeps_a_nodes_labels() -> None:
    node = {"metadata": {"name": "n1", "labels": {"zone": "a"}, "annotations": {"x": "y"}}}
    assert trim(Kind.NODE, node)["metadata"] == {"name": "n1", "labels": {"zone": "a"}}


# --- reading files: ClusterNetworkPolicy and its List -----------------------------------------


def test_files_give_cluster_policies_and_their_problems() -> None:
    broken = cnp(name="broken", ingress=[ingress(PODS_PEER, action="Allow")])
    data = json.dumps(
        {
            "kind": "List",
            "items": [
                {"kind": "ClusterNetworkPolicyList", "items": [cnp(name="a"), broken]},
                cnp(name="b", tier="Baseline"),
                {"kind": "ClusterNetworkPolicy", "metadata": {"name": "Bad_Name"}},
            ],
        }
    ).encode()
    parsed = parse_objects(read_bytes(data, "s.json").objects)
    assert [p.name for p in parsed.cluster_policies] == ["a", "broken", "b"]
    assert len(parsed.problems) == 2
    assert parsed.problems[0].startswith("ClusterNetworkPolicy broken: spec.ingress[0].action")
    assert "ClusterNetworkPolicy 'Bad_Name': metadata.name" in parsed.problems[1]
    assert parsed.problems[1].endswith("; skipped")


def test_a_cluster_policy_given_twice_alike_is_kept_once() -> None:
    read = read_bytes(json.dumps([cnp(), cnp()]).encode(), "s.json")
    assert len(read.objects) == 1
    assert read.problems == (
        "s.json: document 2: ClusterNetworkPolicy c is given more than once; kept once",
    )


def test_a_cluster_policy_given_twice_differing_denies_everything_to_every_pod() -> None:
    data = json.dumps([cnp(priority=1), cnp(priority=2), cnp(priority=3)]).encode()
    read = read_bytes(data, "s.json")
    parsed = parse_objects(read.objects)
    (policy,) = parsed.cluster_policies
    assert_denies_everything(policy)
    assert policy.subject is None
    assert read.problems[0] == (
        "s.json: document 2: ClusterNetworkPolicy c is given more than once with different "
        "content; denying all traffic both ways to every pod instead (fail closed)"
    )
    assert "given more than once with different content" in parsed.problems[0]


def test_render_and_explain_read_cluster_policies_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    path.write_text(
        """\
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata:
  name: deny-monitoring
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces:
      matchLabels: {kubernetes.io/metadata.name: monitoring}
  ingress:
  - name: allow-prometheus
    action: Accept
    from:
    - pods:
        namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}
        podSelector: {matchLabels: {app: prometheus}}
  - name: deny-the-rest
    action: Deny
    from:
    - namespaces: {}
"""
    )
    built = load_state_file(str(path))
    assert built.problems == ()
    policy = built.state.cluster_policies["deny-monitoring"]
    assert [rule.name for rule in policy.ingress] == ["allow-prometheus", "deny-the-rest"]


# --- the conformance suite's policies -------------------------------------------------------------

# Written for these tests after the kinds of policy in conformance/base of
# network-policy-api v0.3.0: each of them must read without any problem.
CONFORMANCE_LIKE = """\
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: admin-ingress-sctp}
spec:
  tier: Admin
  priority: 5
  subject:
    namespaces:
      matchLabels: {kubernetes.io/metadata.name: house-a}
  ingress:
  - name: accept-sctp-from-b
    action: Accept
    from:
    - namespaces:
        matchLabels: {kubernetes.io/metadata.name: house-b}
    protocols:
    - sctp: {destinationPort: {number: 9003}}
  - name: pass-from-c
    action: Pass
    from:
    - pods:
        namespaceSelector: {matchLabels: {house: c}}
        podSelector: {matchLabels: {house: c}}
  - name: deny-the-rest
    action: Deny
    from:
    - namespaces:
        matchExpressions: [{key: house, operator: Exists}]
---
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: admin-egress-to-nodes-and-networks}
spec:
  tier: Admin
  priority: 75
  subject:
    pods:
      namespaceSelector: {matchLabels: {house: a}}
      podSelector: {matchLabels: {house: a}}
  egress:
  - name: "accept-{{ index .HostNetworkPorts 0 }}-on-nodes"
    action: "Accept"
    to:
    - nodes: {matchLabels: {kubernetes.io/os: linux}}
    protocols:
    - tcp: {destinationPort: {number: 34000}}
  - name: accept-port-range-to-b
    action: Accept
    to:
    - namespaces: {matchLabels: {house: b}}
    protocols:
    - udp: {destinationPort: {range: {start: 53, end: 5353}}}
  - name: deny-nodes-pods-and-internet
    action: Deny
    to:
    - pods:
        namespaceSelector: {matchLabels: {house: d}}
        podSelector: {matchLabels: {house: d}}
    - nodes: {matchLabels: {kubernetes.io/os: linux}}
    - networks: [0.0.0.0/0, "::/0"]
---
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: default}
spec:
  tier: Baseline
  priority: 10
  subject:
    namespaces: {matchLabels: {house: a}}
  ingress:
  - {name: deny-from-d, action: Deny, from: [{namespaces: {matchLabels: {house: d}}}]}
  egress:
  - name: deny-to-d
    action: Deny
    to: [{namespaces: {matchLabels: {house: d}}}]
    protocols: [{tcp: {destinationPort: {number: 80}}}, {destinationNamedPort: web}]
"""


def test_policies_like_the_conformance_suites_read_without_a_problem() -> None:
    parsed = parse_objects(read_bytes(CONFORMANCE_LIKE.encode(), "conformance.yaml").objects)
    assert parsed.problems == ()
    policies = {policy.name: policy for policy in parsed.cluster_policies}
    assert [p.tier for p in policies.values()] == [Tier.ADMIN, Tier.ADMIN, Tier.BASELINE]
    egress_rules = policies["admin-egress-to-nodes-and-networks"].egress
    assert egress_rules[2].peers == (
        SelectorPeer(LabelSelector.from_labels({"house": "d"}), labels(house="d")),
        NodePeer(LabelSelector.from_labels({"kubernetes.io/os": "linux"})),
        IPBlock(ipaddress.ip_network("0.0.0.0/0")),
        IPBlock(ipaddress.ip_network("::/0")),
    )
    assert egress_rules[1].ports == (PolicyPort(Protocol.UDP, 53, 5353),)
    assert [rule.action for rule in policies["admin-ingress-sctp"].ingress] == [
        RuleAction.ACCEPT,
        RuleAction.PASS,
        RuleAction.DENY,
    ]


def _module_conformance_base() -> Path | None:
    cache = os.environ.get("GOMODCACHE") or str(Path.home() / "go" / "pkg" / "mod")
    base = Path(cache) / "sigs.k8s.io" / "network-policy-api@v0.3.0" / "conformance" / "base"
    return base if base.is_dir() else None


_TEMPLATE = re.compile(r"\{\{\s*index \.HostNetworkPorts (\d+)\s*\}\}")


def test_every_policy_of_the_conformance_suite_reads_without_a_problem() -> None:
    base = _module_conformance_base()
    if base is None:
        pytest.skip("sigs.k8s.io/network-policy-api@v0.3.0 is not in the Go module cache")
    read_any = False
    for path in sorted(base.rglob("*.yaml")):
        # The suite fills in host-network ports at run time.
        text = _TEMPLATE.sub(lambda m: str(34000 + int(m.group(1))), path.read_text())
        parsed = parse_objects(read_bytes(text.encode(), str(path)).objects)
        cluster_problems = [p for p in parsed.problems if "ClusterNetworkPolicy" in p]
        assert cluster_problems == [], path
        read_any = read_any or bool(parsed.cluster_policies)
    assert read_any
