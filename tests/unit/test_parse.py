"""Parsing API objects: the API server's defaulting, its validation, and failing closed.

NETPOL-SEMANTICS 5, 6, 11, 13, 14, 16: a file-read object must behave exactly like the
defaulted object the API would return; an invalid field is reported (naming the policy
and the field path) and never widens what the policy allows.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from kubernetes import client as k8s

from agent.model.objects import (
    NAMESPACE_NAME_LABEL,
    ContainerPort,
    Direction,
    IPBlock,
    PodPhase,
    PolicyPort,
    Protocol,
    SelectorPeer,
)
from agent.model.parse import (
    InvalidObject,
    parse_namespace,
    parse_network_policy,
    parse_node,
    parse_pod,
)
from agent.model.selectors import LabelSelector
from agent.policy.state import build_state
from tests.unit import builders as b

BOTH = frozenset(Direction)
INGRESS_ONLY = frozenset({Direction.INGRESS})


def parse(**spec: Any) -> Any:
    return parse_network_policy(b.policy("prod/np", **spec))


# --- policyTypes defaulting (5) ---------------------------------------------------------


def test_policy_types_absent_means_ingress_only() -> None:
    policy = parse(ingress=[{}])
    assert policy.policy_types == INGRESS_ONLY


def test_policy_types_absent_with_egress_rules_adds_egress() -> None:
    assert parse(egress=[{}]).policy_types == BOTH


def test_policy_types_absent_with_empty_egress_list_stays_ingress_only() -> None:
    assert parse(egress=[]).policy_types == INGRESS_ONLY


def test_empty_policy_types_is_the_same_as_absent() -> None:
    assert parse(policyTypes=[], egress=[{}]).policy_types == BOTH
    assert parse(policyTypes=[]).policy_types == INGRESS_ONLY


def test_section_not_in_policy_types_is_ignored() -> None:
    policy = parse(policyTypes=["Egress"], ingress=[{}], egress=[{}])
    assert policy.policy_types == frozenset({Direction.EGRESS})
    assert policy.ingress == ()
    assert len(policy.egress) == 1


def test_explicit_egress_type_with_no_rules_isolates_egress_allowing_nothing() -> None:
    policy = parse(policyTypes=["Egress"])
    assert policy.policy_types == frozenset({Direction.EGRESS})
    assert policy.egress == ()


# --- other defaults (6, 11, 14) -----------------------------------------------------------


def test_missing_pod_selector_selects_every_pod_of_the_namespace() -> None:
    raw = b.policy("prod/np")
    del raw["spec"]["podSelector"]
    policy = parse_network_policy(raw)
    assert policy.pod_selector == LabelSelector()
    assert policy.problems == ()


def test_protocol_defaults_to_tcp() -> None:
    (rule,) = parse(ingress=[{"ports": [{"port": 80}, {}]}]).ingress
    assert rule.ports == (PolicyPort(Protocol.TCP, 80), PolicyPort(Protocol.TCP))


def test_namespace_gets_its_name_label() -> None:
    namespace = parse_namespace(b.namespace("prod", team="a"))
    assert namespace.labels == {"team": "a", NAMESPACE_NAME_LABEL: "prod"}


def test_namespace_name_label_is_not_overwritten_when_present() -> None:
    raw = b.namespace("prod")
    raw["metadata"]["labels"] = {NAMESPACE_NAME_LABEL: "prod"}
    assert parse_namespace(raw).labels == {NAMESPACE_NAME_LABEL: "prod"}


@pytest.mark.parametrize("section", ["ingress", "egress"])
@pytest.mark.parametrize("shape", ["missing", "empty"])
def test_missing_and_empty_rule_lists_both_allow_nothing(section: str, shape: str) -> None:
    spec: dict[str, Any] = {"policyTypes": ["Ingress", "Egress"]}
    if shape == "empty":
        spec[section] = []
    policy = parse(**spec)
    assert policy.rules(Direction(section.capitalize())) == ()
    assert policy.policy_types == BOTH


@pytest.mark.parametrize("field", ["from", "ports"])
def test_missing_and_empty_peers_or_ports_both_mean_all(field: str) -> None:
    (missing,) = parse(ingress=[{}]).ingress
    (empty,) = parse(ingress=[{field: []}]).ingress
    assert missing == empty
    assert empty.peers is None and empty.ports is None


def test_missing_and_empty_to_both_mean_all_destinations() -> None:
    (missing,) = parse(egress=[{}]).egress
    (empty,) = parse(egress=[{"to": []}]).egress
    assert missing.peers is None and empty.peers is None


def test_peers_parse_to_selectors_and_blocks() -> None:
    (rule,) = parse(
        ingress=[
            {
                "from": [
                    {"podSelector": {}},
                    {"namespaceSelector": {}},
                    {"podSelector": b.labels(app="web"), "namespaceSelector": b.labels(team="a")},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                ]
            }
        ]
    ).ingress
    assert rule.peers == (
        SelectorPeer(namespace_selector=None, pod_selector=LabelSelector()),
        SelectorPeer(namespace_selector=LabelSelector(), pod_selector=None),
        SelectorPeer(
            namespace_selector=LabelSelector.from_labels({"team": "a"}),
            pod_selector=LabelSelector.from_labels({"app": "web"}),
        ),
        IPBlock(ipaddress.ip_network("10.0.0.0/8"), (ipaddress.ip_network("10.1.0.0/16"),)),
    )


def test_port_ranges_and_named_ports_parse() -> None:
    (rule,) = parse(
        ingress=[
            {
                "ports": [
                    {"port": 1000, "endPort": 2000},
                    {"port": "http"},
                    {"protocol": "SCTP"},
                    {"protocol": "UDP", "port": 53, "endPort": 53},
                ]
            }
        ]
    ).ingress
    assert rule.ports == (
        PolicyPort(Protocol.TCP, 1000, 2000),
        PolicyPort(Protocol.TCP, "http"),
        PolicyPort(Protocol.SCTP),
        PolicyPort(Protocol.UDP, 53, 53),
    )


# --- validation: each error names the policy and the field, the rest is kept -------------

INVALID_PEERS = {
    "bad cidr": ({"ipBlock": {"cidr": "10.0.0.0/33"}}, "from[0].ipBlock.cidr"),
    "cidr not a string": ({"ipBlock": {"cidr": 10}}, "from[0].ipBlock.cidr"),
    "cidr without a prefix length": ({"ipBlock": {"cidr": "10.0.0.1"}}, "from[0].ipBlock.cidr"),
    "cidr with a netmask": ({"ipBlock": {"cidr": "10.0.0.0/255.0.0.0"}}, "from[0].ipBlock.cidr"),
    "cidr with an empty prefix length": ({"ipBlock": {"cidr": "fd00::/"}}, "from[0].ipBlock.cidr"),
    "except without a prefix length": (
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.1"]}},
        "from[0].ipBlock.except[0]",
    ),
    "cidr with a zone": ({"ipBlock": {"cidr": "fe80::%eth0/64"}}, "from[0].ipBlock.cidr"),
    "except outside cidr": (
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}},
        "from[0].ipBlock.except[0]",
    ),
    "except equal to cidr": (
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}},
        "from[0].ipBlock.except[0]",
    ),
    "except of the other family": (
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["fd00::/64"]}},
        "from[0].ipBlock.except[0]",
    ),
    "bad except": (
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/99"]}},
        "from[0].ipBlock.except[0]",
    ),
    "ipBlock with a podSelector": (
        {"ipBlock": {"cidr": "10.0.0.0/16"}, "podSelector": {}},
        "from[0]",
    ),
    "ipBlock with a namespaceSelector": (
        {"ipBlock": {"cidr": "10.0.0.0/16"}, "namespaceSelector": {}},
        "from[0]",
    ),
    "a peer with nothing": ({}, "from[0]"),
    "misspelled matchLabels (would select every pod)": (
        {"podSelector": {"matchLabel": {"app": "db"}}},
        "from[0].podSelector.matchLabel",
    ),
    "unknown field in a namespaceSelector": (
        {"namespaceSelector": {"matchLabels": {"a": "b"}, "matchExpression": []}},
        "from[0].namespaceSelector.matchExpression",
    ),
    "unknown field in a match expression": (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "value": ["x"]}]}},
        "from[0].podSelector.matchExpressions[0].value",
    ),
    "unknown operator": (
        {
            "podSelector": {
                "matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]
            }
        },
        "from[0].podSelector.matchExpressions[0].operator",
    ),
    "In with no values": (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}},
        "from[0].podSelector.matchExpressions[0].values",
    ),
    "NotIn with no values": (
        {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "NotIn"}]}},
        "from[0].namespaceSelector.matchExpressions[0].values",
    ),
    "Exists with values": (
        {
            "podSelector": {
                "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
            }
        },
        "from[0].podSelector.matchExpressions[0].values",
    ),
    "DoesNotExist with values": (
        {
            "podSelector": {
                "matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]
            }
        },
        "from[0].podSelector.matchExpressions[0].values",
    ),
}

INVALID_PORTS = {
    "endPort below port": ({"port": 2000, "endPort": 1000}, "ports[0].endPort"),
    "endPort with a named port": ({"port": "http", "endPort": 90}, "ports[0].endPort"),
    "endPort without port": ({"endPort": 90}, "ports[0].endPort"),
    "unknown protocol": ({"protocol": "ICMP", "port": 80}, "ports[0].protocol"),
    "lower-case protocol": ({"protocol": "tcp"}, "ports[0].protocol"),
    "port 0": ({"port": 0}, "ports[0].port"),
    "port 65536": ({"port": 65536}, "ports[0].port"),
    "endPort 65536": ({"port": 80, "endPort": 65536}, "ports[0].endPort"),
    "port name with upper case": ({"port": "HTTP"}, "ports[0].port"),
    "port name too long": ({"port": "a-very-long-port-name"}, "ports[0].port"),
    "port name of digits only": ({"port": "8080"}, "ports[0].port"),
    "port name with a double dash": ({"port": "my--port"}, "ports[0].port"),
    "port name ending in a dash": ({"port": "http-"}, "ports[0].port"),
}


@pytest.mark.parametrize("case", sorted(INVALID_PEERS))
def test_invalid_peer_is_reported_with_policy_and_field_path(case: str) -> None:
    peer, field = INVALID_PEERS[case]
    policy = parse(ingress=[{"from": [peer], "ports": [{"port": 80}]}, {"ports": [{"port": 443}]}])
    (problem,) = policy.problems
    assert problem.startswith("NetworkPolicy prod/np: ")
    assert f"spec.ingress[0].{field}" in problem
    # The broken rule is gone; the good rule after it is kept.
    assert [rule.index for rule in policy.ingress] == [1]


@pytest.mark.parametrize("case", sorted(INVALID_PORTS))
def test_invalid_port_is_reported_with_policy_and_field_path(case: str) -> None:
    port, field = INVALID_PORTS[case]
    policy = parse(egress=[{"ports": [{"port": 443}, port]}, {"to": [{"podSelector": {}}]}])
    (problem,) = policy.problems
    assert problem.startswith("NetworkPolicy prod/np: ")
    assert f"spec.egress[0].{field.replace('[0]', '[1]', 1)}" in problem
    assert [rule.index for rule in policy.egress] == [1]


def test_broken_rule_is_dropped_whole_not_narrowed_into_all_ports() -> None:
    # Dropping just the bad port would leave "ports: [80]"; dropping all of them would
    # leave "all ports". Neither: the rule allows nothing.
    policy = parse(ingress=[{"ports": [{"port": 80}, {"port": 0}]}])
    assert policy.ingress == ()
    assert policy.policy_types == INGRESS_ONLY  # still isolating


def test_broken_peer_does_not_turn_into_all_peers() -> None:
    policy = parse(ingress=[{"from": [{"ipBlock": {"cidr": "bogus"}}]}])
    assert policy.ingress == ()


@pytest.mark.parametrize(
    "selector",
    [
        {"matchExpressions": [{"key": "app", "operator": "In"}]},
        {"matchLabel": {"app": "web"}},  # misspelled: unread, it would narrow nothing
    ],
)
def test_broken_pod_selector_selects_the_whole_namespace(selector: dict[str, object]) -> None:
    policy = parse(podSelector=selector, ingress=[{}])
    assert policy.pod_selector is None
    (problem,) = policy.problems
    assert "NetworkPolicy prod/np" in problem and "spec.podSelector" in problem
    assert "fail closed" in problem
    pod = parse_pod(b.pod("prod/any", "10.0.0.1", labels={"x": "y"}))
    assert policy.selects(pod)
    assert not policy.selects(parse_pod(b.pod("other/any", "10.0.0.2")))


@pytest.mark.parametrize("types", [["Ingress", "Sideways"], "Ingress"])
def test_broken_policy_types_isolates_both_directions(types: Any) -> None:
    policy = parse(policyTypes=types, ingress=[{"ports": [{"port": 80}]}])
    assert policy.policy_types == BOTH
    (problem,) = policy.problems
    assert "NetworkPolicy prod/np" in problem and "spec.policyTypes" in problem
    assert len(policy.ingress) == 1 and policy.egress == ()


def test_rules_that_are_not_a_list_allow_nothing() -> None:
    policy = parse(policyTypes=["Ingress"], ingress={"from": []})
    assert policy.ingress == ()
    (problem,) = policy.problems
    assert "spec.ingress" in problem


def test_several_problems_are_all_reported() -> None:
    policy = parse(
        ingress=[{"ports": [{"port": 0}]}, {"from": [{}]}, {}],
        egress=[{"ports": [{"protocol": "ICMP"}]}],
    )
    assert len(policy.problems) == 3
    assert [rule.index for rule in policy.ingress] == [2]


# --- kubernetes client objects -------------------------------------------------------------


def test_client_network_policy_parses_like_the_dict() -> None:
    raw = b.policy(
        "prod/np",
        podSelector={"matchLabels": {"app": "web"}},
        policyTypes=["Ingress", "Egress"],
        ingress=[
            {
                "from": [
                    {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                ],
                "ports": [{"port": "http"}, {"port": 1000, "endPort": 2000, "protocol": "UDP"}],
            }
        ],
        egress=[{"to": [{"namespaceSelector": {}}]}],
    )
    model = k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=k8s.V1ObjectMeta(name="np", namespace="prod"),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(match_labels={"app": "web"}),
            policy_types=["Ingress", "Egress"],
            ingress=[
                k8s.V1NetworkPolicyIngressRule(
                    _from=[
                        k8s.V1NetworkPolicyPeer(
                            pod_selector=k8s.V1LabelSelector(
                                match_expressions=[
                                    k8s.V1LabelSelectorRequirement(key="a", operator="Exists")
                                ]
                            )
                        ),
                        k8s.V1NetworkPolicyPeer(
                            ip_block=k8s.V1IPBlock(cidr="10.0.0.0/8", _except=["10.1.0.0/16"])
                        ),
                    ],
                    ports=[
                        k8s.V1NetworkPolicyPort(port="http"),
                        k8s.V1NetworkPolicyPort(port=1000, end_port=2000, protocol="UDP"),
                    ],
                )
            ],
            egress=[
                k8s.V1NetworkPolicyEgressRule(
                    to=[k8s.V1NetworkPolicyPeer(namespace_selector=k8s.V1LabelSelector())]
                )
            ],
        ),
    )
    assert parse_network_policy(model) == parse_network_policy(raw)


def test_client_policy_without_types_gets_the_same_defaults() -> None:
    model = k8s.V1NetworkPolicy(
        metadata=k8s.V1ObjectMeta(name="np", namespace="prod"),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(),
            egress=[k8s.V1NetworkPolicyEgressRule()],
        ),
    )
    assert parse_network_policy(model).policy_types == BOTH


def test_client_pod_parses_like_the_dict() -> None:
    raw = b.pod(
        "prod/web",
        "10.0.0.5",
        "fd00::5",
        labels={"app": "web"},
        ports=[{"name": "http", "containerPort": 8080}],
    )
    model = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="web", namespace="prod", labels={"app": "web"}),
        spec=k8s.V1PodSpec(
            node_name="node1",
            containers=[
                k8s.V1Container(
                    name="c", ports=[k8s.V1ContainerPort(name="http", container_port=8080)]
                )
            ],
        ),
        status=k8s.V1PodStatus(
            phase="Running",
            pod_ips=[k8s.V1PodIP(ip="10.0.0.5"), k8s.V1PodIP(ip="fd00::5")],
        ),
    )
    assert parse_pod(model) == parse_pod(raw)


def test_client_namespace_parses_like_the_dict() -> None:
    model = k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name="prod", labels={"team": "a"}))
    assert parse_namespace(model) == parse_namespace(b.namespace("prod", team="a"))


# --- pods (13) -------------------------------------------------------------------------------


def test_pod_uses_every_pod_ip_dual_stack() -> None:
    pod = parse_pod(b.pod("prod/web", "10.0.0.5", "fd00::5"))
    assert pod.ips == (ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("fd00::5"))
    assert pod.ips_of(4) == (ipaddress.ip_address("10.0.0.5"),)
    assert pod.ips_of(6) == (ipaddress.ip_address("fd00::5"),)


def test_pod_falls_back_to_pod_ip_without_pod_ips() -> None:
    raw = b.pod("prod/web")
    raw["status"] = {"phase": "Running", "podIP": "10.0.0.5"}
    assert parse_pod(raw).ips == (ipaddress.ip_address("10.0.0.5"),)


def test_pod_without_an_ip_is_not_selectable() -> None:
    pod = parse_pod(b.pod("prod/pending", phase="Pending"))
    assert pod.ips == ()
    assert not pod.is_selectable


def test_host_network_pod_is_not_selectable() -> None:
    pod = parse_pod(b.pod("prod/host", "172.18.0.2", host_network=True))
    assert pod.host_network
    assert not pod.is_selectable


@pytest.mark.parametrize(
    ("phase", "selectable"),
    [
        ("Pending", True),
        ("Running", True),
        ("Unknown", True),
        ("Succeeded", False),
        ("Failed", False),
    ],
)
def test_finished_pods_are_not_selectable(phase: str, selectable: bool) -> None:
    pod = parse_pod(b.pod("prod/p", "10.0.0.5", phase=phase))
    assert pod.phase is PodPhase(phase)
    assert pod.is_selectable is selectable


def test_unknown_phase_text_is_kept_as_unknown() -> None:
    assert parse_pod(b.pod("prod/p", "10.0.0.5", phase="Exploded")).phase is PodPhase.UNKNOWN


def test_named_container_ports_include_init_containers() -> None:
    raw = b.pod(
        "prod/web",
        "10.0.0.5",
        ports=[{"name": "http", "containerPort": 8080}, {"containerPort": 9090}],
    )
    raw["spec"]["initContainers"] = [
        {"name": "sidecar", "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]}
    ]
    pod = parse_pod(raw)
    assert pod.ports == (
        ContainerPort(8080, Protocol.TCP, "http"),
        ContainerPort(9090, Protocol.TCP, None),
        ContainerPort(53, Protocol.UDP, "dns"),
    )
    assert pod.resolve_named_port("dns", Protocol.UDP) == 53
    assert pod.resolve_named_port("dns", Protocol.TCP) is None  # protocol must match too
    assert pod.resolve_named_port("http", Protocol.TCP) == 8080
    assert pod.resolve_named_port("metrics", Protocol.TCP) is None


def test_pod_with_a_bad_ip_keeps_its_good_address_and_reports_the_bad_one() -> None:
    raw = b.pod("prod/web", "10.0.0.5")
    raw["status"]["podIPs"].insert(0, {"ip": "not-an-ip"})
    pod = parse_pod(raw)
    assert [str(ip) for ip in pod.ips] == ["10.0.0.5"]
    (problem,) = pod.problems
    assert problem.startswith("Pod prod/web: status.podIPs[0].ip") and "not-an-ip" in problem


def test_pod_ip_with_a_zone_is_a_bad_ip() -> None:
    """ipaddress takes "fe80::1%eth0"; the API does not, and no rule can hold it."""
    raw = b.pod("prod/web", "10.0.0.5")
    raw["status"]["podIPs"].append({"ip": "fe80::1%eth0"})
    pod = parse_pod(raw)
    assert [str(ip) for ip in pod.ips] == ["10.0.0.5"]
    (problem,) = pod.problems
    assert problem.startswith("Pod prod/web: status.podIPs[1].ip: bad IP 'fe80::1%eth0'")


def test_pod_without_any_usable_ip_says_it_cannot_be_enforced() -> None:
    pod = parse_pod(b.pod("prod/web", "not-an-ip"))
    assert pod.ips == () and not pod.is_selectable
    assert any("cannot be enforced" in p for p in pod.problems)


def test_pod_without_a_name_is_invalid() -> None:
    raw = b.pod("prod/web", "10.0.0.5")
    del raw["metadata"]["name"]
    with pytest.raises(InvalidObject, match=r"metadata\.name"):
        parse_pod(raw)


def test_pod_with_a_field_of_the_wrong_shape_is_reported_not_a_crash() -> None:
    raw = b.pod("prod/web")
    raw["status"]["podIPs"] = ["10.0.0.5"]  # strings, not {"ip": ...}
    pod = parse_pod(raw)
    assert pod.ips == ()
    assert any("status.podIPs[0]: must be an object" in p for p in pod.problems)
    raw["status"] = "Running"
    pod = parse_pod(raw)
    assert pod.quarantined and pod.ips == ()
    assert any(p.startswith("Pod prod/web: status: must be an object") for p in pod.problems)


def test_object_without_a_namespace_defaults_to_default() -> None:
    raw = b.policy("x/np")
    del raw["metadata"]["namespace"]
    assert parse_network_policy(raw).namespace == "default"


# --- build_state ----------------------------------------------------------------------------


def test_build_state_skips_unknown_kinds_and_keeps_the_rest() -> None:
    built = build_state(
        [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}},
            b.namespace("prod"),
            b.pod("prod/web", "10.0.0.5"),
        ]
    )
    assert list(built.state.pods) == ["prod/web"]
    assert list(built.state.namespaces) == ["prod"]
    (problem,) = built.problems
    assert "'Service' svc" in problem and "skipped" in problem


def test_build_state_skips_invalid_objects_with_a_clear_problem() -> None:
    bad_name = b.pod("prod/Bad_Name", "10.0.0.1")
    wrong_shape = b.pod("prod/shape", "10.0.0.2")
    wrong_shape["spec"]["containers"] = [{"name": "c", "ports": ["http"]}]
    built = build_state(
        [bad_name, wrong_shape, "just a string", b.pod("prod/good", "10.0.0.5"), b.node("n1")]
    )
    assert list(built.state.pods) == ["prod/shape", "prod/good"]
    assert built.state.pods["prod/shape"].ports == ()
    assert list(built.state.nodes) == ["n1"]
    assert len(built.problems) == 3
    assert any("Pod 'Bad_Name'" in p and "metadata.name" in p for p in built.problems)
    assert any(
        "Pod prod/shape: spec.containers[0].ports[0]: must be an object" in p
        for p in built.problems
    )
    assert any("document 3: not an object (got a string)" in p for p in built.problems)


def test_build_state_keeps_a_policy_with_problems_and_reports_them() -> None:
    built = build_state([b.policy("prod/np", ingress=[{"ports": [{"port": 0}]}])])
    assert "prod/np" in built.state.policies
    (problem,) = built.problems
    assert problem.startswith("NetworkPolicy prod/np: spec.ingress[0].ports[0].port")
    assert built.state.problems == built.problems


def test_build_state_flattens_list_documents() -> None:
    built = build_state(
        [
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    b.namespace("prod"),
                    {"kind": "PodList", "items": [b.pod("prod/a", "10.0.0.1")]},
                ],
            },
            {"kind": "NetworkPolicyList", "items": [b.policy("prod/np")]},
            None,
        ]
    )
    assert built.problems == ()
    assert list(built.state.namespaces) == ["prod"]
    assert list(built.state.pods) == ["prod/a"]
    assert list(built.state.policies) == ["prod/np"]


# --- strict shapes: the cases ------------------------------------------------------

# Each: a spec that used to crash or to be read as "absent" (often "all").
WRONG_TYPES_IN_POLICIES = {
    "ports: 5": ({"ingress": [{"ports": 5}]}, "spec.ingress[0].ports"),
    "ports: 0 (not all ports)": ({"ingress": [{"ports": 0}]}, "spec.ingress[0].ports"),
    "from: 5": ({"ingress": [{"from": 5}]}, "spec.ingress[0].from"),
    "from: 0 (not every peer)": ({"ingress": [{"from": 0}]}, "spec.ingress[0].from"),
    "from: ''": ({"ingress": [{"from": ""}]}, "spec.ingress[0].from"),
    "matchExpressions: 5": (
        {"ingress": [{"from": [{"podSelector": {"matchExpressions": 5}}]}]},
        "spec.ingress[0].from[0].podSelector.matchExpressions",
    ),
    "values: 5": (
        {"ingress": [{"from": [{"podSelector": {"matchExpressions": [
            {"key": "a", "operator": "In", "values": 5}]}}]}]},
        "matchExpressions[0].values",
    ),
    "values: admin (not the letters a, d, m, i, n)": (
        {"ingress": [{"from": [{"podSelector": {"matchExpressions": [
            {"key": "a", "operator": "In", "values": "admin"}]}}]}]},
        "matchExpressions[0].values",
    ),
    "values: [null] (not 'None')": (
        {"ingress": [{"from": [{"podSelector": {"matchExpressions": [
            {"key": "a", "operator": "In", "values": [None]}]}}]}]},
        "matchExpressions[0].values[0]",
    ),
    "except: 5": (
        {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": 5}}]}]},
        "ipBlock.except",
    ),
    "except: 0 (not no excepts)": (
        {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": 0}}]}]},
        "ipBlock.except",
    ),
    "matchLabels: [] (not every pod)": (
        {"ingress": [{"from": [{"podSelector": {"matchLabels": []}}]}]},
        "podSelector.matchLabels",
    ),
    "matchLabels value 5": (
        {"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": 5}}}]}]},
        "podSelector.matchLabels.app",
    ),
    "ingress rule null": ({"ingress": [None]}, "spec.ingress[0]"),
    "port: true": ({"ingress": [{"ports": [{"port": True}]}]}, "ports[0].port"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(WRONG_TYPES_IN_POLICIES))
def test_wrong_type_in_a_rule_is_an_error_and_drops_the_rule(case: str) -> None:
    spec, field = WRONG_TYPES_IN_POLICIES[case]
    policy = parse(policyTypes=["Ingress"], **spec)
    assert policy.ingress == ()  # the rule allows nothing; the pods stay isolated
    assert policy.policy_types == INGRESS_ONLY
    (problem,) = policy.problems
    assert problem.startswith("NetworkPolicy prod/np: ") and field in problem


@pytest.mark.parametrize("spec", [5, False, "", [], "x"])
def test_spec_of_the_wrong_type_isolates_the_namespace_both_ways(spec: Any) -> None:
    raw = b.policy("prod/np")
    raw["spec"] = spec
    policy = parse_network_policy(raw)
    assert policy.pod_selector is None and policy.policy_types == BOTH
    assert policy.ingress == () and policy.egress == ()
    (problem,) = policy.problems
    assert "NetworkPolicy prod/np: spec: must be an object" in problem and "fail closed" in problem


def test_broken_pod_selector_allows_nothing_through_that_policy() -> None:
    # Before, the rules of a policy with a broken selector applied to the whole namespace.
    policy = parse(podSelector={"matchLabels": []}, ingress=[{}], egress=[{}])
    assert policy.pod_selector is None and policy.policy_types == BOTH
    assert policy.ingress == () and policy.egress == ()


def test_egress_of_the_wrong_type_without_policy_types_still_isolates_egress() -> None:
    assert parse(egress=0).policy_types == BOTH
    assert parse(policyTypes=0).policy_types == BOTH


@pytest.mark.parametrize(
    "metadata", ["x", 5, [], {"name": "\ud800", "namespace": "prod"}, {"name": "Web"}]
)
def test_unreadable_identity_is_invalid_with_a_printable_message(metadata: Any) -> None:
    raw = b.policy("prod/np")
    raw["metadata"] = metadata
    with pytest.raises(InvalidObject) as caught:
        parse_network_policy(raw)
    assert str(caught.value).isprintable()
    assert "metadata" in str(caught.value)


def test_pod_host_network_of_the_wrong_type_keeps_the_pod_enforced() -> None:
    raw = b.pod("prod/web", "10.0.0.5")
    raw["spec"]["hostNetwork"] = "false"
    pod = parse_pod(raw)
    assert not pod.host_network and pod.is_selectable
    assert any("spec.hostNetwork: must be true or false" in p for p in pod.problems)


def test_container_port_true_is_not_port_1() -> None:
    pod = parse_pod(b.pod("prod/web", "10.0.0.5", ports=[{"name": "http", "containerPort": True}]))
    assert pod.ports == ()
    assert any("containerPort: must be an integer" in p for p in pod.problems)


@pytest.mark.parametrize(
    ("section", "value", "field"),
    [
        ("status", "Running", "status: must be an object"),
        ("spec", 5, "spec: must be an object"),
    ],
)
def test_pod_with_unreadable_spec_or_status_is_quarantined_and_reported(
    section: str, value: Any, field: str
) -> None:
    raw = b.pod("prod/web", "10.0.0.5")
    raw[section] = value
    pod = parse_pod(raw)
    assert pod.quarantined and not pod.is_peer
    assert any(p.startswith(f"Pod prod/web: {field}") for p in pod.problems)
    assert any("quarantined" in p for p in pod.problems)


def test_pod_ips_and_containers_of_the_wrong_type_are_reported() -> None:
    raw = b.pod("prod/web", "10.0.0.5")
    raw["status"]["podIPs"] = 5
    raw["status"]["podIP"] = "10.0.0.5"
    raw["spec"]["containers"] = 5
    pod = parse_pod(raw)
    assert [str(ip) for ip in pod.ips] == ["10.0.0.5"]  # podIP still counts
    assert any("status.podIPs: must be a list" in p for p in pod.problems)
    assert any("spec.containers: must be a list" in p for p in pod.problems)


# --- the reader -----------------------------------------------------------------------------


def test_reader_expands_every_list_kind_and_reports_what_it_skips() -> None:
    from agent.model.reader import read_bytes

    data = json.dumps(
        {
            "kind": "List",
            "items": [
                {"kind": "PodList", "items": [b.pod("prod/a", "10.0.0.1")]},
                {"kind": "NamespaceList", "items": [b.namespace("prod")]},
                {
                    "kind": "ClusterNetworkPolicyList",
                    "items": [{"kind": "ClusterNetworkPolicy", "metadata": {"name": "c"}}],
                },
                {"kind": "Service", "metadata": {"name": "svc"}},
                7,
            ],
        }
    ).encode()
    read = read_bytes(data, "s.json")
    assert [obj["kind"] for obj in read.objects] == ["Pod", "Namespace", "ClusterNetworkPolicy"]
    assert read.problems == (
        "s.json: document 1 item 3: kind 'Service' svc is not a kind the agent reads "
        "(ClusterNetworkPolicy, Namespace, NetworkPolicy, Node, Pod, or a List of them); "
        "skipped",
        "s.json: document 1 item 4: not an object (got a number); skipped",
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"kind: Pod\nmetadata: {name: \xff}\n", "not UTF-8: byte offset 27 (line 2)"),
        (b"a: " + b"[" * 500 + b"]" * 500, "nested deeper than 100 levels"),
        (b"a: &a [*a]\n", "an alias refers to a node that contains it"),
        (
            b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + b"".join(
                b"%c: &%c [%s]\n" % (98 + i, 98 + i, b", ".join([b"*%c" % (97 + i)] * 10))
                for i in range(8)
            ),
            "aliases expand to more than",
        ),
        (b"kind: Pod\nkind: Pod\n", "duplicate key 'kind'"),
        (b"a: [\n", "invalid YAML"),
        (b'{"kind": "List", "items": [', "invalid JSON"),
    ],
    ids=["not-utf8", "deep", "recursive-alias", "alias-bomb", "duplicate-key", "yaml", "json"],
)
def test_reader_rejects_an_unusable_file_naming_it(data: bytes, message: str) -> None:
    from agent.model.reader import ReadError, read_bytes

    with pytest.raises(ReadError, match=r"^s\.yaml: ") as caught:
        read_bytes(data, "s.yaml")
    assert message in str(caught.value)


@pytest.mark.parametrize("data", [b"", b"---\n", b"---\n---\n", b"# comment\n", b"[]"])
def test_empty_files_are_valid_empty_states(data: bytes) -> None:
    from agent.model.reader import read_bytes

    assert read_bytes(data, "s.yaml") == read_bytes(b"", "s.yaml")
    assert read_bytes(data, "s.yaml").objects == ()


def test_duplicates_keep_one_and_a_differing_policy_fails_closed() -> None:
    built = build_state(
        [
            b.pod("prod/a", "10.0.0.1", labels={"v": "1"}),
            b.pod("prod/a", "10.0.0.1", labels={"v": "2"}),
            b.policy("prod/np", ingress=[{}]),
            b.policy("prod/np", ingress=[{}]),
            b.policy("prod/other", ingress=[{}]),
            b.policy("prod/other", podSelector={"matchLabels": {"v": "1"}}, ingress=[{}]),
        ]
    )
    assert built.state.pods["prod/a"].labels == {"v": "1"}  # the first one
    assert built.state.policies["prod/np"].ingress != ()  # identical copies: kept once
    other = built.state.policies["prod/other"]
    assert other.pod_selector == LabelSelector() and other.policy_types == BOTH
    assert other.ingress == () and other.egress == ()
    assert len(built.problems) == 3
    assert any("prod/other" in p and "fail closed" in p for p in built.problems)


def test_reader_without_libyaml_gives_the_same_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from agent.model import reader

    cases = [
        b"kind: Namespace\nmetadata: {name: a}\n---\n",
        b"a: " + b"[" * 600 + b"]" * 600,
        b"a: &a [*a]\n",
        b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + b"".join(
            b"%c: &%c [%s]\n" % (98 + i, 98 + i, b", ".join([b"*%c" % (97 + i)] * 10))
            for i in range(8)
        ),
    ]

    def outcome(data: bytes) -> object:
        try:
            return reader.read_bytes(data, "s.yaml")
        except reader.ReadError as error:
            return str(error).split(":")[1]  # the kind of error, not the C/Python wording

    with_libyaml = [outcome(data) for data in cases]
    monkeypatch.setattr(reader, "_Loader", reader.loader_class(yaml.SafeLoader))
    assert [outcome(data) for data in cases] == with_libyaml


def test_an_unforeseen_shape_in_a_policy_isolates_its_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent.model import parse_policy as parse_module

    def broken(*args: Any) -> Any:
        raise TypeError("a shape no check foresaw")

    monkeypatch.setattr(parse_module, "_rules", broken)
    policy = parse(ingress=[{}])
    assert policy.pod_selector is None and policy.policy_types == BOTH
    assert policy.ingress == () and policy.egress == ()
    assert "malformed (TypeError)" in policy.problems[0]


@pytest.mark.parametrize("address_type", [["InternalIP"], {"x": 1}, 5, None])
def test_a_node_address_type_of_the_wrong_type_drops_that_address_only(
    address_type: Any,
) -> None:
    node = parse_node(
        {
            "kind": "Node",
            "metadata": {"name": "n"},
            "status": {
                "addresses": [
                    {"type": address_type, "address": "10.0.0.9"},
                    {"type": "InternalIP", "address": "10.0.0.1"},
                ]
            },
        }
    )
    assert node.addresses == (ipaddress.ip_address("10.0.0.1"),)
    assert "status.addresses[0].type" in node.problems[0]
