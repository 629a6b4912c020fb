"""The network-policy-api conformance suite's policies (v0.3.0, ``conformance/base/``),
transcribed rule by rule.  One function per manifest file, named after it; each returns
fresh objects (tests mutate them the way the Go tests do).  ``{{ index .HostNetworkPorts
i }}`` is ``HOST_NETWORK_PORTS[i]``.
"""

from __future__ import annotations

from typing import Any

from tests.lab.conformance import HOST_NETWORK_PORTS, ns
from tests.lab.scenarios_support import (
    cnp,
    cnp_egress,
    cnp_ingress,
    cnp_namespaces,
    cnp_networks,
    cnp_nodes,
    cnp_pods,
    cnp_port,
    cnp_range,
)

Obj = dict[str, Any]
ADMIN, BASELINE = "Admin", "Baseline"
ACCEPT, DENY, PASS = "Accept", "Deny", "Pass"
LINUX_NODES = {"matchLabels": {"kubernetes.io/os": "linux"}}
EVERYWHERE = cnp_networks("0.0.0.0/0", "::/0")


def by_name(house: str) -> dict[str, Any]:
    """``matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-<house>}``"""
    return {"matchLabels": {"kubernetes.io/metadata.name": ns(house)}}


def by_house(house: str) -> dict[str, Any]:
    """``matchLabels: {conformance-house: <house>}``"""
    return {"matchLabels": {"conformance-house": house}}


def house_namespace(house: str) -> Obj:
    """The peer/subject ``namespaces`` selecting one house by its metadata.name label."""
    return cnp_namespaces(by_name(house))


def house_pods(house: str) -> Obj:
    """The peer/subject ``pods`` selecting one house's pods by namespace and pod label."""
    return cnp_pods(by_house(house), by_house(house))


# ============================================================================ admin tier
def admin_egress_tcp_rules() -> Obj:
    """base/admin_tier/standard-egress-tcp-rules.yaml"""
    return cnp("egress-tcp", ADMIN, 6, house_namespace("gryffindor"), egress=[
        cnp_egress("allow-to-ravenclaw-everything", ACCEPT, house_namespace("ravenclaw")),
        cnp_egress("deny-to-ravenclaw-everything", DENY, house_namespace("ravenclaw")),
        cnp_egress("pass-to-ravenclaw-everything", PASS, house_namespace("ravenclaw")),
        cnp_egress("deny-to-slytherin-at-port-80", DENY, house_namespace("slytherin"),
                   protocols=[cnp_port("tcp", 80)]),
        cnp_egress("pass-to-slytherin-at-port-80", PASS, house_namespace("slytherin"),
                   protocols=[cnp_port("tcp", 80)]),
        cnp_egress("allow-to-hufflepuff-at-port-8080", ACCEPT, house_namespace("hufflepuff"),
                   protocols=[cnp_port("tcp", 8080)]),
        cnp_egress("deny-to-hufflepuff-everything-else", DENY, house_namespace("hufflepuff")),
    ])  # fmt: skip


def admin_egress_udp_rules() -> Obj:
    """base/admin_tier/standard-egress-udp-rules.yaml"""
    return cnp("egress-udp", ADMIN, 7, house_namespace("hufflepuff"), egress=[
        cnp_egress("allow-to-ravenclaw-everything", ACCEPT, house_namespace("ravenclaw")),
        cnp_egress("deny-to-ravenclaw-everything", DENY, house_namespace("ravenclaw")),
        cnp_egress("pass-to-ravenclaw-everything", PASS, house_namespace("ravenclaw")),
        cnp_egress("deny-to-slytherin-at-port-5353", DENY, house_namespace("slytherin"),
                   protocols=[cnp_port("udp", 5353)]),
        cnp_egress("pass-to-slytherin-at-port-5353", PASS, house_namespace("slytherin"),
                   protocols=[cnp_port("udp", 5353)]),
        cnp_egress("allow-to-gryffindor-at-port-53", ACCEPT, house_namespace("gryffindor"),
                   protocols=[cnp_port("udp", 53)]),
        cnp_egress("deny-to-gryffindor-everything-else", DENY, house_namespace("gryffindor")),
    ])  # fmt: skip


def admin_egress_sctp_rules() -> Obj:
    """base/admin_tier/standard-egress-sctp-rules.yaml"""
    return cnp("egress-sctp", ADMIN, 8, house_namespace("ravenclaw"), egress=[
        cnp_egress("allow-to-gryffindor-everything", ACCEPT, house_namespace("gryffindor")),
        cnp_egress("deny-to-gryffindor-everything", DENY, house_namespace("gryffindor")),
        cnp_egress("pass-to-gryffindor-everything", PASS, house_namespace("gryffindor")),
        cnp_egress("deny-to-slytherin-at-port-9003", DENY, house_namespace("slytherin"),
                   protocols=[cnp_port("sctp", 9003)]),
        cnp_egress("pass-to-slytherin-at-port-9003", PASS, house_namespace("slytherin"),
                   protocols=[cnp_port("sctp", 9003)]),
        cnp_egress("allow-to-hufflepuff-at-port-9003", ACCEPT, house_namespace("hufflepuff"),
                   protocols=[cnp_port("sctp", 9003)]),
        cnp_egress("deny-to-hufflepuff-everything-else", DENY, house_namespace("hufflepuff")),
    ])  # fmt: skip


def admin_ingress_tcp_rules() -> Obj:
    """base/admin_tier/standard-ingress-tcp-rules.yaml"""
    return cnp("ingress-tcp", ADMIN, 3, house_namespace("gryffindor"), ingress=[
        cnp_ingress("allow-from-ravenclaw-everything", ACCEPT, house_namespace("ravenclaw")),
        cnp_ingress("deny-from-ravenclaw-everything", DENY, house_namespace("ravenclaw")),
        cnp_ingress("pass-from-ravenclaw-everything", PASS, house_namespace("ravenclaw")),
        cnp_ingress("deny-from-slytherin-at-port-80", DENY, house_namespace("slytherin"),
                    protocols=[cnp_port("tcp", 80)]),
        cnp_ingress("pass-from-slytherin-at-port-80", PASS, house_namespace("slytherin"),
                    protocols=[cnp_port("tcp", 80)]),
        cnp_ingress("allow-from-hufflepuff-at-port-80", ACCEPT, house_namespace("hufflepuff"),
                    protocols=[cnp_port("tcp", 80)]),
        cnp_ingress("deny-from-hufflepuff-everything-else", DENY,
                    house_namespace("hufflepuff")),
    ])  # fmt: skip


def admin_ingress_udp_rules() -> Obj:
    """base/admin_tier/standard-ingress-udp-rules.yaml"""
    return cnp("ingress-udp", ADMIN, 4, house_namespace("hufflepuff"), ingress=[
        cnp_ingress("allow-from-ravenclaw-everything", ACCEPT, house_namespace("ravenclaw")),
        cnp_ingress("deny-from-ravenclaw-everything", DENY, house_namespace("ravenclaw")),
        cnp_ingress("pass-from-ravenclaw-everything", PASS, house_namespace("ravenclaw")),
        cnp_ingress("deny-from-slytherin-at-port-5353", DENY, house_namespace("slytherin"),
                    protocols=[cnp_port("udp", 5353)]),
        cnp_ingress("pass-from-slytherin-at-port-5353", PASS, house_namespace("slytherin"),
                    protocols=[cnp_port("udp", 5353)]),
        cnp_ingress("allow-from-gryffindor-at-port-53", ACCEPT, house_namespace("gryffindor"),
                    protocols=[cnp_port("udp", 53)]),
        cnp_ingress("deny-from-gryffindor-everything-else", DENY,
                    house_namespace("gryffindor")),
    ])  # fmt: skip


def admin_ingress_sctp_rules() -> Obj:
    """base/admin_tier/standard-ingress-sctp-rules.yaml"""
    return cnp("ingress-sctp", ADMIN, 5, house_namespace("ravenclaw"), ingress=[
        cnp_ingress("allow-from-gryffindor-everything", ACCEPT, house_namespace("gryffindor")),
        cnp_ingress("deny-from-gryffindor-everything", DENY, house_namespace("gryffindor")),
        cnp_ingress("pass-from-gryffindor-everything", PASS, house_namespace("gryffindor")),
        cnp_ingress("deny-from-slytherin-at-port-9003", DENY, house_namespace("slytherin"),
                    protocols=[cnp_port("sctp", 9003)]),
        cnp_ingress("pass-from-slytherin-at-port-9003", PASS, house_namespace("slytherin"),
                    protocols=[cnp_port("sctp", 9003)]),
        cnp_ingress("allow-from-hufflepuff-at-port-9003", ACCEPT, house_namespace("hufflepuff"),
                    protocols=[cnp_port("sctp", 9003)]),
        cnp_ingress("deny-from-hufflepuff-everything-else", DENY,
                    house_namespace("hufflepuff")),
    ])  # fmt: skip


def admin_gress_rules_combined() -> Obj:
    """base/admin_tier/standard-gress-rules-combined.yaml"""
    p80_53_9003 = [cnp_port("tcp", 80), cnp_port("udp", 53), cnp_port("sctp", 9003)]
    return cnp("gress-rules", ADMIN, 15, house_namespace("gryffindor"), ingress=[
        cnp_ingress("allow-from-ravenclaw-everything", ACCEPT, house_namespace("ravenclaw")),
        cnp_ingress("deny-from-ravenclaw-everything", DENY, house_namespace("ravenclaw")),
        cnp_ingress("pass-from-ravenclaw-everything", PASS, house_namespace("ravenclaw")),
        cnp_ingress("deny-from-slytherin-at-port-80-53-9003", DENY,
                    house_namespace("slytherin"), protocols=p80_53_9003),
        cnp_ingress("pass-from-slytherin-at-port-80-53-9003", PASS,
                    house_namespace("slytherin"), protocols=p80_53_9003),
        cnp_ingress("allow-from-hufflepuff-at-port-80-5353-9003", ACCEPT,
                    house_namespace("hufflepuff"),
                    protocols=[cnp_port("tcp", 80), cnp_port("udp", 5353),
                               cnp_port("sctp", 9003)]),
        cnp_ingress("deny-from-hufflepuff-everything-else", DENY,
                    house_namespace("hufflepuff")),
    ], egress=[
        cnp_egress("allow-to-ravenclaw-everything", ACCEPT, house_namespace("ravenclaw")),
        cnp_egress("deny-to-ravenclaw-everything", DENY, house_namespace("ravenclaw")),
        cnp_egress("pass-to-ravenclaw-everything", PASS, house_namespace("ravenclaw")),
        cnp_egress("deny-to-slytherin-at-ports-80-53-9003", DENY,
                   house_namespace("slytherin"), protocols=p80_53_9003),
        cnp_egress("pass-to-slytherin-at-port-80-53-9003", PASS,
                   house_namespace("slytherin"), protocols=p80_53_9003),
        cnp_egress("allow-to-hufflepuff-at-ports-8080-5353-9003", ACCEPT,
                   house_namespace("hufflepuff"),
                   protocols=[cnp_port("tcp", 8080), cnp_port("udp", 5353),
                              cnp_port("sctp", 9003)]),
        cnp_egress("deny-to-hufflepuff-everything-else", DENY, house_namespace("hufflepuff")),
    ])  # fmt: skip


def admin_egress_inline_cidr_rules() -> Obj:
    """base/admin_tier/standard-egress-inline-cidr-rules.yaml"""
    return cnp("inline-cidr-as-peers-example", ADMIN, 85, house_pods("gryffindor"), egress=[
        cnp_egress("allow-egress-to-slytherin", ACCEPT, house_pods("slytherin")),
        cnp_egress("deny-egress-to-internet", DENY, EVERYWHERE),
    ])  # fmt: skip


def admin_pod_selector_rules() -> list[Obj]:
    """base/admin_tier/standard-pod-selector-rules.yaml"""
    return _pod_selector_rules(ADMIN, 20, 21)


def admin_port_range_rules_combined() -> Obj:
    """base/admin_tier/standard-port-range-rules-combined.yaml"""
    return _port_range_rules(ADMIN, 9)


def admin_priority_field() -> list[Obj]:
    """base/admin_tier/standard-priority-field.yaml"""
    slytherin = house_pods("slytherin")
    return [
        cnp("priority-50-example", ADMIN, 50, house_pods("gryffindor"),
            ingress=[cnp_ingress("deny-all-ingress-from-slytherin", DENY, slytherin)],
            egress=[cnp_egress("deny-all-egress-to-slytherin", DENY, slytherin)]),
        cnp("old-priority-60-new-priority-40-example", ADMIN, 60, house_pods("gryffindor"),
            ingress=[cnp_ingress("pass-all-ingress-from-slytherin", PASS, slytherin)],
            egress=[cnp_egress("pass-all-egress-to-slytherin", PASS, slytherin)]),
        cnp("default", BASELINE, 10, house_pods("gryffindor"),
            ingress=[cnp_ingress("allow-all-ingress-from-slytherin", ACCEPT, slytherin)],
            egress=[cnp_egress("allow-all-egress-to-slytherin", ACCEPT, slytherin)]),
    ]  # fmt: skip


def admin_same_priority() -> list[Obj]:
    """base/admin_tier/standard-same-priority.yaml"""
    return _same_priority(ADMIN, 15, "same-priority-")


def admin_experimental_egress_selector_rules() -> Obj:
    """base/admin_tier/experimental-egress-selector-rules.yaml"""
    p = HOST_NETWORK_PORTS
    return cnp("node-and-cidr-as-peers-example", ADMIN, 75, house_pods("gryffindor"), egress=[
        cnp_egress(f"allow-egress-to-{p[0]}-on-nodes", ACCEPT, cnp_nodes(LINUX_NODES),
                   protocols=[cnp_port("tcp", p[0])]),
        cnp_egress(f"pass-egress-to-{p[2]}-on-nodes", PASS, cnp_nodes(LINUX_NODES),
                   protocols=[cnp_port("udp", p[2])]),
        cnp_egress("deny-egress-to-slytherin-and-nodes-and-internet", DENY,
                   house_pods("slytherin"), cnp_nodes(LINUX_NODES), EVERYWHERE),
    ])  # fmt: skip


# ====================================================================== api integration
def api_integration_anp_np_banp() -> list[Obj]:
    """base/api_integration/standard-anp-np-banp.yaml (``podSelector:`` with no value is
    stored by the API server as ``{}``)."""
    slytherin = cnp_namespaces(by_house("slytherin"))
    return [
        cnp("pass-example", ADMIN, 10, cnp_namespaces(by_house("gryffindor")),
            ingress=[cnp_ingress("deny-all-ingress-from-slytherin", DENY, slytherin)],
            egress=[cnp_egress("deny-all-egress-to-slytherin", DENY, slytherin)]),
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": "allow-gress-from-to-slytherin-to-gryffindor",
                "namespace": ns("gryffindor"),
            },
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"namespaceSelector": by_house("slytherin")}]}],
                "egress": [{"to": [{"namespaceSelector": by_house("slytherin")}]}],
            },
        },
        cnp("default", BASELINE, 10, cnp_namespaces(by_house("gryffindor")),
            ingress=[cnp_ingress("deny-all-ingress-from-slytherin", DENY, slytherin)],
            egress=[cnp_egress("deny-all-egress-to-slytherin", DENY, slytherin)]),
    ]  # fmt: skip


# ========================================================================= baseline tier
def baseline_egress_tcp_rules() -> Obj:
    """base/baseline_tier/standard-egress-tcp-rules.yaml"""
    return cnp("default", BASELINE, 10, house_namespace("gryffindor"), egress=[
        cnp_egress("allow-to-ravenclaw-everything", ACCEPT, house_namespace("ravenclaw")),
        cnp_egress("deny-to-ravenclaw-everything", DENY, house_namespace("ravenclaw")),
        cnp_egress("deny-to-slytherin-at-port-80", DENY, house_namespace("slytherin"),
                   protocols=[cnp_port("tcp", 80)]),
        cnp_egress("allow-to-hufflepuff-at-port-8080", ACCEPT, house_namespace("hufflepuff"),
                   protocols=[cnp_port("tcp", 8080)]),
        cnp_egress("deny-to-hufflepuff-everything-else", DENY, house_namespace("hufflepuff")),
    ])  # fmt: skip


def baseline_egress_udp_rules() -> Obj:
    """base/baseline_tier/standard-egress-udp-rules.yaml"""
    return cnp("default", BASELINE, 10, house_namespace("hufflepuff"), egress=[
        cnp_egress("allow-to-ravenclaw-everything", ACCEPT, house_namespace("ravenclaw")),
        cnp_egress("deny-to-ravenclaw-everything", DENY, house_namespace("ravenclaw")),
        cnp_egress("deny-to-slytherin-at-port-5353", DENY, house_namespace("slytherin"),
                   protocols=[cnp_port("udp", 5353)]),
        cnp_egress("allow-to-gryffindor-at-port-53", ACCEPT, house_namespace("gryffindor"),
                   protocols=[cnp_port("udp", 53)]),
        cnp_egress("deny-to-gryffindor-everything-else", DENY, house_namespace("gryffindor")),
    ])  # fmt: skip


def baseline_egress_sctp_rules() -> Obj:
    """base/baseline_tier/standard-egress-sctp-rules.yaml"""
    return cnp("default", BASELINE, 10, house_namespace("ravenclaw"), egress=[
        cnp_egress("allow-to-gryffindor-everything", ACCEPT, house_namespace("gryffindor")),
        cnp_egress("deny-to-gryffindor-everything", DENY, house_namespace("gryffindor")),
        cnp_egress("deny-to-slytherin-at-port-9003", DENY, house_namespace("slytherin"),
                   protocols=[cnp_port("sctp", 9003)]),
        cnp_egress("allow-to-hufflepuff-at-port-9003", ACCEPT, house_namespace("hufflepuff"),
                   protocols=[cnp_port("sctp", 9003)]),
        cnp_egress("deny-to-hufflepuff-everything-else", DENY, house_namespace("hufflepuff")),
    ])  # fmt: skip


def baseline_ingress_tcp_rules() -> Obj:
    """base/baseline_tier/standard-ingress-tcp-rules.yaml"""
    return cnp("default", BASELINE, 10, house_namespace("gryffindor"), ingress=[
        cnp_ingress("allow-from-ravenclaw-everything", ACCEPT, house_namespace("ravenclaw")),
        cnp_ingress("deny-from-ravenclaw-everything", DENY, house_namespace("ravenclaw")),
        cnp_ingress("deny-from-slytherin-at-port-80", DENY, house_namespace("slytherin"),
                    protocols=[cnp_port("tcp", 80)]),
        cnp_ingress("allow-from-hufflepuff-at-port-80", ACCEPT, house_namespace("hufflepuff"),
                    protocols=[cnp_port("tcp", 80)]),
        cnp_ingress("deny-from-hufflepuff-everything-else", DENY,
                    house_namespace("hufflepuff")),
    ])  # fmt: skip


def baseline_ingress_udp_rules() -> Obj:
    """base/baseline_tier/standard-ingress-udp-rules.yaml"""
    return cnp("default", BASELINE, 10, house_namespace("hufflepuff"), ingress=[
        cnp_ingress("allow-from-ravenclaw-everything", ACCEPT, house_namespace("ravenclaw")),
        cnp_ingress("deny-from-ravenclaw-everything", DENY, house_namespace("ravenclaw")),
        cnp_ingress("deny-from-slytherin-at-port-5353", DENY, house_namespace("slytherin"),
                    protocols=[cnp_port("udp", 5353)]),
        cnp_ingress("allow-from-gryffindor-at-port-53", ACCEPT, house_namespace("gryffindor"),
                    protocols=[cnp_port("udp", 53)]),
        cnp_ingress("deny-from-gryffindor-everything-else", DENY,
                    house_namespace("gryffindor")),
    ])  # fmt: skip


def baseline_ingress_sctp_rules() -> Obj:
    """base/baseline_tier/standard-ingress-sctp-rules.yaml"""
    return cnp("default", BASELINE, 10, house_namespace("ravenclaw"), ingress=[
        cnp_ingress("allow-from-gryffindor-everything", ACCEPT, house_namespace("gryffindor")),
        cnp_ingress("deny-from-gryffindor-everything", DENY, house_namespace("gryffindor")),
        cnp_ingress("deny-from-slytherin-at-port-9003", DENY, house_namespace("slytherin"),
                    protocols=[cnp_port("sctp", 9003)]),
        cnp_ingress("allow-from-hufflepuff-at-port-9003", ACCEPT, house_namespace("hufflepuff"),
                    protocols=[cnp_port("sctp", 9003)]),
        cnp_ingress("deny-from-hufflepuff-everything-else", DENY,
                    house_namespace("hufflepuff")),
    ])  # fmt: skip


def baseline_gress_rules_combined() -> Obj:
    """base/baseline_tier/standard-gress-rules-combined.yaml (its egress allow rule is
    named ``...-8080-5353`` but also lists SCTP 9003, as upstream)."""
    p80_53_9003 = [cnp_port("tcp", 80), cnp_port("udp", 53), cnp_port("sctp", 9003)]
    return cnp("default", BASELINE, 10, house_namespace("gryffindor"), ingress=[
        cnp_ingress("allow-from-ravenclaw-everything", ACCEPT, house_namespace("ravenclaw")),
        cnp_ingress("deny-from-ravenclaw-everything", DENY, house_namespace("ravenclaw")),
        cnp_ingress("deny-from-slytherin-at-port-80-53-9003", DENY,
                    house_namespace("slytherin"), protocols=p80_53_9003),
        cnp_ingress("allow-from-hufflepuff-at-port-80-5353-9003", ACCEPT,
                    house_namespace("hufflepuff"),
                    protocols=[cnp_port("tcp", 80), cnp_port("udp", 5353),
                               cnp_port("sctp", 9003)]),
        cnp_ingress("deny-from-hufflepuff-everything-else", DENY,
                    house_namespace("hufflepuff")),
    ], egress=[
        cnp_egress("allow-to-ravenclaw-everything", ACCEPT, house_namespace("ravenclaw")),
        cnp_egress("deny-to-ravenclaw-everything", DENY, house_namespace("ravenclaw")),
        cnp_egress("deny-to-slytherin-at-ports-80-53-9003", DENY,
                   house_namespace("slytherin"), protocols=p80_53_9003),
        cnp_egress("allow-to-hufflepuff-at-ports-8080-5353", ACCEPT,
                   house_namespace("hufflepuff"),
                   protocols=[cnp_port("tcp", 8080), cnp_port("udp", 5353),
                              cnp_port("sctp", 9003)]),
        cnp_egress("deny-to-hufflepuff-everything-else", DENY, house_namespace("hufflepuff")),
    ])  # fmt: skip


def baseline_egress_inline_cidr_rules() -> Obj:
    """base/baseline_tier/standard-egress-inline-cidr-rules.yaml"""
    return cnp("default", BASELINE, 10, house_namespace("gryffindor"), egress=[
        cnp_egress("allow-egress-to-slytherin", ACCEPT, house_pods("slytherin")),
        cnp_egress("deny-egress-to-internet", DENY, EVERYWHERE),
    ])  # fmt: skip


def baseline_pod_selector_rules() -> list[Obj]:
    """base/baseline_tier/standard-pod-selector-rules.yaml"""
    return _pod_selector_rules(BASELINE, 10, 10)


def baseline_port_range_rules_combined() -> Obj:
    """base/baseline_tier/standard-port-range-rules-combined.yaml"""
    return _port_range_rules(BASELINE, 10)


def baseline_same_priority() -> list[Obj]:
    """base/baseline_tier/standard-same-priority.yaml"""
    return _same_priority(BASELINE, 10, "baseline-same-priority-")


def baseline_experimental_egress_selector_rules() -> Obj:
    """base/baseline_tier/experimental-egress-selector-rules.yaml"""
    p = HOST_NETWORK_PORTS
    return cnp("default", BASELINE, 10, house_namespace("gryffindor"), egress=[
        cnp_egress(f"allow-egress-to-{p[0]}-on-nodes", ACCEPT, cnp_nodes(LINUX_NODES),
                   protocols=[cnp_range("tcp", p[0], p[1])]),
        cnp_egress("deny-egress-to-nodes-and-internet", DENY, cnp_nodes(LINUX_NODES),
                   EVERYWHERE),
    ])  # fmt: skip


# ================================================================ shared by both tiers
def _pod_selector_rules(tier: str, priority: int, subject_priority: int) -> list[Obj]:
    """The admin and baseline ``standard-pod-selector-rules.yaml`` differ only in tier and
    priorities (Admin 20 and 21, Baseline 10 and 10)."""
    return [
        cnp("pod-selector-rules", tier, priority, cnp_pods(by_house("gryffindor")), ingress=[
            cnp_ingress("allow-from-draco-malfoy-0", ACCEPT, cnp_pods(
                {"matchLabels": {"statefulset.kubernetes.io/pod-name": "draco-malfoy-0"}},
                by_house("slytherin"))),
            cnp_ingress("deny-from-slytherin-pods", DENY, cnp_pods(by_house("slytherin"))),
            cnp_ingress("deny-from-blocked-hufflepuff-pods", DENY, cnp_pods(
                {"matchLabels": {"conformance-role": "blocked"}}, by_house("hufflepuff"))),
        ], egress=[
            cnp_egress("allow-to-luna-lovegood-0-tcp-80", ACCEPT, cnp_pods(
                {"matchLabels": {"statefulset.kubernetes.io/pod-name": "luna-lovegood-0"}},
                by_house("ravenclaw")), protocols=[cnp_port("tcp", 80)]),
            cnp_egress("deny-to-ravenclaw-pods", DENY, cnp_pods(by_house("ravenclaw"))),
        ]),
        cnp("label-selected-subject-rules", tier, subject_priority,
            cnp_pods({"matchLabels": {"conformance-role": "restricted"}}, by_house("ravenclaw")),
            egress=[cnp_egress("deny-to-slytherin", DENY, house_namespace("slytherin"))]),
    ]  # fmt: skip


def _port_range_rules(tier: str, priority: int) -> Obj:
    every_house = cnp_namespaces(
        {"matchExpressions": [{"key": "conformance-house", "operator": "Exists"}]}
    )
    return cnp("port-range-rules", tier, priority, house_namespace("gryffindor"), ingress=[
        cnp_ingress("allow-from-ravenclaw-tcp-port-range", ACCEPT, house_namespace("ravenclaw"),
                    protocols=[cnp_range("tcp", 80, 8080)]),
        cnp_ingress("allow-from-hufflepuff-udp-port-range", ACCEPT,
                    house_namespace("hufflepuff"), protocols=[cnp_range("udp", 53, 5353)]),
        cnp_ingress("allow-from-slytherin-sctp-port-range", ACCEPT,
                    house_namespace("slytherin"), protocols=[cnp_range("sctp", 9003, 9005)]),
        cnp_ingress("deny-all-ingress", DENY, every_house),
    ], egress=[
        cnp_egress("allow-to-ravenclaw-tcp-port-range", ACCEPT, house_namespace("ravenclaw"),
                   protocols=[cnp_range("tcp", 80, 8080)]),
        cnp_egress("allow-to-hufflepuff-udp-port-range", ACCEPT, house_namespace("hufflepuff"),
                   protocols=[cnp_range("udp", 53, 5353)]),
        cnp_egress("allow-to-slytherin-sctp-port-range", ACCEPT, house_namespace("slytherin"),
                   protocols=[cnp_range("sctp", 9003, 9005)]),
        cnp_egress("deny-all-egress", DENY, every_house),
    ])  # fmt: skip


def _same_priority(tier: str, priority: int, prefix: str) -> list[Obj]:
    def deny_both_ways(name: str, subject: str, peer: str, port: int) -> Obj:
        return cnp(f"{prefix}{name}", tier, priority, house_namespace(subject),
                   ingress=[cnp_ingress(f"deny-from-{peer}-at-port-{port}", DENY,
                                        house_namespace(peer),
                                        protocols=[cnp_port("tcp", port)])],
                   egress=[cnp_egress(f"deny-to-{peer}-at-port-{port}", DENY,
                                      house_namespace(peer),
                                      protocols=[cnp_port("tcp", port)])])  # fmt: skip

    return [
        deny_both_ways("gryffindor-slytherin", "gryffindor", "slytherin", 80),
        deny_both_ways("gryffindor-hufflepuff", "gryffindor", "hufflepuff", 80),
        deny_both_ways("hufflepuff-slytherin", "hufflepuff", "slytherin", 8080),
    ]
