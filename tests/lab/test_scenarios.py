"""NetworkPolicy semantics, proven with real traffic in the netns lab.

One test per behaviour of /work/shared/NETPOL-SEMANTICS.md (numbers in brackets) and per
upstream e2e case (test/e2e/network/netpol/network_policy.go, quoted as "upstream: …").
Every scenario states by hand, from the semantics, what the cells that matter must do,
and additionally checks every probed cell against ``agent.policy.explain`` (see
``Scenario.verify``).  Topology (e2e model): namespaces x,y,z (``ns: <name>``), pods a,b,c
(``pod: <name>``); node-1: x/a x/b y/a y/c z/b, node-2: x/c y/b z/a z/c; host ``ext``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.nsutil import run
from tests.lab.prober import Probe
from tests.lab.scenarios_support import (
    EXT,
    NODES,
    PODS,
    Scenario,
    Service,
    TcpClient,
    TcpEcho,
    cells,
    expr,
    netpol,
    ns_of,
    ns_sel,
    pod_sel,
)
from tests.lab.topology import Backend, Lab

pytestmark = pytest.mark.lab

BOTH = pytest.mark.parametrize("backend", ["nft", "legacy"])
WITH_IPTC = pytest.mark.parametrize("backend", ["nft", "legacy", "iptc"])

EVERYONE = [*PODS, EXT]
X_PODS = ["x/a", "x/b", "x/c"]
TCP80 = (80, "TCP")
TCP81 = (81, "TCP")
UDP80 = (80, "UDP")
UDP81 = (81, "UDP")
SCTP80 = (80, "SCTP")
SCTP81 = (81, "SCTP")
ING = ["Ingress"]
EGR = ["Egress"]
BOTH_TYPES = ["Ingress", "Egress"]


@pytest.fixture
def sc(clean_lab: Lab, backend: Backend) -> Iterator[Scenario]:
    yield Scenario(clean_lab, backend)


def node_of(lab: Lab, pod: str) -> str:
    return lab.pod(pod).spec.node


def is_self(p: Probe) -> bool:
    return p.src == p.dst


# ============================================================================== isolation
@WITH_IPTC
def test_default_deny_ingress_isolates_every_pod_of_the_namespace(sc: Scenario) -> None:
    """[1, 2] upstream: should support a 'default-deny-ingress' policy (TCP, UDP and SCTP
    variants: "the same defaults over UDP and SCTP")."""
    sc.apply([netpol("x", "default-deny-ingress", {"podSelector": {}, "policyTypes": ING})])
    probes = cells(EVERYONE, PODS, [TCP80, UDP81, SCTP80]) + cells(PODS, PODS, [TCP80], (6,))
    sc.verify(probes, lambda p: is_self(p) if ns_of(p.dst) == "x" else True)


@WITH_IPTC
def test_default_deny_all_isolates_both_directions(sc: Scenario) -> None:
    """[1, 2] upstream: should support a 'default-deny-all' policy."""
    sc.apply([netpol("x", "default-deny-all", {"podSelector": {}, "policyTypes": BOTH_TYPES})])
    sc.verify(
        cells(EVERYONE, EVERYONE, [TCP80, UDP81]),
        lambda p: is_self(p) if "x" in (ns_of(p.src), ns_of(p.dst)) else True,
    )


@BOTH
def test_a_policy_isolates_only_the_pods_it_selects(sc: Scenario) -> None:
    """[1] isolation is per pod: x/b and x/c stay open."""
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"), "policyTypes": ING})])
    sc.verify(cells(EVERYONE, PODS), lambda p: is_self(p) if p.dst == "x/a" else True)


@BOTH
def test_policy_types_default_to_ingress_only_without_egress_rules(sc: Scenario) -> None:
    """[5] no policyTypes, no egress list: [Ingress] only, so x/a's egress stays open."""
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a")})])
    probes = cells(EVERYONE, ["x/a"]) + cells(["x/a"], EVERYONE)
    sc.verify(probes, lambda p: is_self(p) if p.dst == "x/a" else True)


@BOTH
def test_policy_types_default_adds_egress_when_egress_rules_exist(sc: Scenario) -> None:
    """[5, 6] no policyTypes + a non-empty egress list: [Ingress, Egress]; the missing
    ingress list then allows nothing."""
    spec = {"podSelector": pod_sel("a"), "egress": [{"to": [{"podSelector": pod_sel("b")}]}]}
    sc.apply([netpol("x", "a", spec)])

    def expected(p: Probe) -> bool:
        if p.src == "x/a":
            return p.dst in ("x/a", "x/b")
        return is_self(p) if p.dst == "x/a" else True

    sc.verify(cells(EVERYONE, ["x/a"]) + cells(["x/a"], EVERYONE), expected)


@BOTH
def test_section_not_listed_in_policy_types_is_ignored(sc: Scenario) -> None:
    """[5] policyTypes [Ingress] with an egress section: the egress rules are ignored and
    x/a's egress stays open."""
    spec = {
        "podSelector": pod_sel("a"),
        "policyTypes": ING,
        "ingress": [{"from": [{"podSelector": pod_sel("b")}]}],
        "egress": [{"to": [{"podSelector": pod_sel("c")}]}],
    }
    sc.apply([netpol("x", "a", spec)])
    sc.verify(
        cells(EVERYONE, ["x/a"]) + cells(["x/a"], EVERYONE),
        lambda p: p.src in ("x/a", "x/b") if p.dst == "x/a" else True,
    )


@BOTH
def test_missing_and_empty_rule_lists_both_allow_nothing(sc: Scenario) -> None:
    """[6] `ingress: []` (x/a) and a missing ingress (y/a) isolate the same way; so does
    `egress: []` (z/a).  upstream: should deny egress from pods based on PodSelector."""
    sc.apply([
        netpol("x", "a-empty", {"podSelector": pod_sel("a"), "policyTypes": ING, "ingress": []}),
        netpol("y", "a-missing", {"podSelector": pod_sel("a"), "policyTypes": ING}),
        netpol("z", "a-no-egress", {"podSelector": pod_sel("a"), "policyTypes": EGR,
                                    "egress": []}),
    ])  # fmt: skip

    def expected(p: Probe) -> bool:
        if is_self(p):
            return True
        return p.dst not in ("x/a", "y/a") and p.src != "z/a"

    sc.verify(cells(EVERYONE, EVERYONE), expected)


@BOTH
def test_deny_egress_from_all_pods_in_a_namespace(sc: Scenario) -> None:
    """[1, 2, 5] upstream: should deny egress from all pods in a namespace."""
    sc.apply([netpol("x", "deny-egress", {"podSelector": {}, "policyTypes": EGR})])
    probes = cells(PODS, EVERYONE, [TCP80, UDP81]) + cells([EXT], PODS)
    sc.verify(probes, lambda p: is_self(p) if ns_of(p.src) == "x" else True)


@BOTH
def test_empty_rule_allows_all_traffic_to_and_from_isolated_pods(sc: Scenario) -> None:
    """[6] a rule `{}` allows everything.  upstream: should support allow-all policy."""
    spec = {"podSelector": {}, "policyTypes": BOTH_TYPES, "ingress": [{}], "egress": [{}]}
    sc.apply([
        netpol("x", "default-deny-all", {"podSelector": {}, "policyTypes": BOTH_TYPES}),
        netpol("x", "allow-all", spec),
    ])  # fmt: skip
    sc.verify(cells(EVERYONE, EVERYONE, [TCP80, UDP81, SCTP81]), lambda p: True)


@BOTH
def test_empty_from_and_ports_lists_match_every_peer_and_port(sc: Scenario) -> None:
    """[6] `from: []` = every peer, `ports: []` = every port and protocol, next to a
    default-deny.  upstream: should enforce policy to allow ingress traffic for a target
    (x/a)."""
    sc.apply([
        netpol("x", "default-deny-ingress", {"podSelector": {}, "policyTypes": ING}),
        netpol("x", "a", {"podSelector": pod_sel("a"), "policyTypes": ING,
                          "ingress": [{"from": [], "ports": []}]}),
        netpol("x", "b", {"podSelector": pod_sel("b"), "policyTypes": ING,
                          "ingress": [{"from": [{"podSelector": pod_sel("c")}], "ports": []}]}),
        netpol("x", "c", {"podSelector": pod_sel("c"), "policyTypes": ING,
                          "ingress": [{"from": [], "ports": [{"port": 81}]}]}),
    ])  # fmt: skip

    def expected(p: Probe) -> bool:
        if p.dst == "x/b":
            return p.src in ("x/b", "x/c")
        if p.dst == "x/c":
            return is_self(p) or (p.port, p.protocol) == TCP81
        return True

    sc.verify(cells(EVERYONE, X_PODS, [TCP80, TCP81, UDP81, SCTP80]), expected)


@BOTH
def test_allow_all_ingress_takes_precedence_over_a_narrower_policy(sc: Scenario) -> None:
    """[3] upstream: should enforce multiple ingress policies with ingress allow-all policy
    taking precedence."""
    only81 = netpol("x", "only-81", {"podSelector": pod_sel("a"), "policyTypes": ING,
                                     "ingress": [{"ports": [{"port": 81}]}]})  # fmt: skip
    probes = cells(EVERYONE, ["x/a"], [TCP80, TCP81])
    sc.apply([only81])
    sc.verify(probes, lambda p: is_self(p) or p.port == 81, "only port 81")
    allow_all = netpol("x", "allow-all", {"podSelector": pod_sel("a"), "ingress": [{}]})
    sc.apply([only81, allow_all])
    sc.verify(probes, lambda p: True, "plus allow-all")


@BOTH
def test_allow_all_egress_takes_precedence_over_a_narrower_policy(sc: Scenario) -> None:
    """[3] upstream: should enforce multiple egress policies with egress allow-all policy
    taking precedence."""
    only80 = netpol("x", "only-80", {"podSelector": pod_sel("a"), "policyTypes": EGR,
                                     "egress": [{"ports": [{"port": 80}]}]})  # fmt: skip
    probes = cells(["x/a"], EVERYONE, [TCP80, TCP81, UDP80])
    sc.apply([only80])
    sc.verify(probes, lambda p: is_self(p) or (p.port, p.protocol) == TCP80, "only 80/TCP")
    allow_all = netpol("x", "allow-all", {"podSelector": pod_sel("a"), "policyTypes": EGR,
                                          "egress": [{}]})  # fmt: skip
    sc.apply([only80, allow_all])
    sc.verify(probes, lambda p: True, "plus allow-all")


@BOTH
def test_stacked_policies_are_additive(sc: Scenario) -> None:
    """[3] the allowed set is the union over the selecting policies.  upstream: should
    enforce multiple, stacked policies with overlapping podSelectors."""
    sc.apply([
        netpol("x", "ab-from-y", {
            "podSelector": {"matchExpressions": [expr("pod", "In", "a", "b")]},
            "ingress": [{"from": [{"namespaceSelector": ns_sel("y")}]}]}),
        netpol("x", "a-from-z", {
            "podSelector": pod_sel("a"),
            "ingress": [{"from": [{"namespaceSelector": ns_sel("z")}]}]}),
    ])  # fmt: skip

    def expected(p: Probe) -> bool:
        if p.dst == "x/a":
            return is_self(p) or ns_of(p.src) in ("y", "z")
        if p.dst == "x/b":
            return is_self(p) or ns_of(p.src) == "y"
        return True

    sc.verify(cells(EVERYONE, PODS), expected)


@WITH_IPTC
def test_client_side_egress_denial_wins_even_if_the_server_allows(sc: Scenario) -> None:
    """[4] both ends must allow; y/a's own egress isolation (node-1) blocks it even towards
    x/c on node-2, whose ingress allows y/a.  upstream: should support denying of egress
    traffic on the client side (even if the server explicitly allows this traffic)."""
    sc.apply([
        netpol("y", "a-no-egress", {"podSelector": pod_sel("a"), "policyTypes": EGR}),
        netpol("x", "from-y-a-b", {"podSelector": {}, "ingress": [{"from": [{
            "namespaceSelector": ns_sel("y"),
            "podSelector": {"matchExpressions": [expr("pod", "In", "a", "b")]}}]}]}),
    ])  # fmt: skip

    def expected(p: Probe) -> bool:
        if is_self(p):
            return True
        if p.src == "y/a":
            return False
        return p.src == "y/b" if ns_of(p.dst) == "x" else True

    sc.verify(cells(EVERYONE, EVERYONE, [TCP80, UDP81]), expected)


@BOTH
def test_ingress_and_egress_rules_in_one_policy(sc: Scenario) -> None:
    """[4, 5] upstream: should work with Ingress, Egress specified together."""
    sc.apply([netpol("x", "a", {
        "podSelector": pod_sel("a"), "policyTypes": BOTH_TYPES,
        "ingress": [{"from": [{"podSelector": pod_sel("b")}]}],
        "egress": [{"to": [{"namespaceSelector": ns_sel("y")}]}]})])  # fmt: skip

    def expected(p: Probe) -> bool:
        if is_self(p):
            return True
        if p.src == "x/a":
            return ns_of(p.dst) == "y"
        return p.src == "x/b" if p.dst == "x/a" else True

    sc.verify(cells(EVERYONE, EVERYONE), expected)


@BOTH
def test_ingress_and_egress_policies_are_independent(sc: Scenario) -> None:
    """[1, 5] x/a is isolated for egress only (allowed: x/b), x/b for ingress only
    (allowed: x/a).  upstream: should enforce policies to check ingress and egress policies
    can be controlled independently based on PodSelector."""
    sc.apply([
        netpol("x", "a-egress", {"podSelector": pod_sel("a"), "policyTypes": EGR,
                                 "egress": [{"to": [{"podSelector": pod_sel("b")}]}]}),
        netpol("x", "b-ingress", {"podSelector": pod_sel("b"), "policyTypes": ING,
                                  "ingress": [{"from": [{"podSelector": pod_sel("a")}]}]}),
    ])  # fmt: skip

    def expected(p: Probe) -> bool:
        if is_self(p):
            return True
        if p.src == "x/a":
            return p.dst == "x/b"
        return p.src == "x/a" if p.dst == "x/b" else True

    sc.verify(cells(EVERYONE, EVERYONE), expected)


@BOTH
def test_egress_to_another_namespace_by_pod_and_namespace_selector(sc: Scenario) -> None:
    """[9] upstream: should enforce egress policy allowing traffic to a server in a
    different namespace based on PodSelector and NamespaceSelector."""
    sc.apply([netpol("x", "a-to-y-a", {"podSelector": pod_sel("a"), "policyTypes": EGR,
                     "egress": [{"to": [{"namespaceSelector": ns_sel("y"),
                                         "podSelector": pod_sel("a")}]}]})])  # fmt: skip
    probes = cells(["x/a"], EVERYONE, [TCP80, UDP80]) + cells(["x/b"], EVERYONE)
    sc.verify(probes, lambda p: p.dst in ("x/a", "y/a") if p.src == "x/a" else True)


# ============================================================================== peers
@BOTH
def test_pod_selector_alone_selects_pods_of_the_policy_namespace(sc: Scenario) -> None:
    """[7] upstream: should enforce policy to allow traffic from pods within server
    namespace based on PodSelector (y/b and z/b carry `pod: b` too, and stay out)."""
    sc.apply([netpol("x", "a-from-b", {"podSelector": pod_sel("a"),
                     "ingress": [{"from": [{"podSelector": pod_sel("b")}]}]})])  # fmt: skip
    sc.verify(cells(EVERYONE, ["x/a", "x/b"]),
              lambda p: p.src in ("x/a", "x/b") if p.dst == "x/a" else True)  # fmt: skip


@BOTH
def test_empty_pod_selector_alone_selects_every_pod_of_the_policy_namespace(
    sc: Scenario,
) -> None:
    """[2, 7] upstream: should deny ingress from pods on other namespaces."""
    sc.apply([netpol("x", "same-ns", {"podSelector": {},
                     "ingress": [{"from": [{"podSelector": {}}]}]})])  # fmt: skip
    sc.verify(cells(EVERYONE, PODS),
              lambda p: ns_of(p.src) == "x" if ns_of(p.dst) == "x" else True)  # fmt: skip


@BOTH
def test_namespace_selector_alone_selects_all_pods_of_matching_namespaces(
    sc: Scenario,
) -> None:
    """[8] upstream: should enforce policy to allow traffic only from a different namespace,
    based on NamespaceSelector."""
    sc.apply([netpol("x", "from-y", {"podSelector": {},
                     "ingress": [{"from": [{"namespaceSelector": ns_sel("y")}]}]})])  # fmt: skip
    sc.verify(cells(EVERYONE, PODS),
              lambda p: is_self(p) or ns_of(p.src) == "y" if ns_of(p.dst) == "x" else True)  # fmt: skip


@BOTH
def test_empty_namespace_selector_selects_pods_of_all_namespaces(sc: Scenario) -> None:
    """[8] every pod, but no non-pod address (ext, the other node).  upstream: should
    enforce policy to allow ingress traffic from pods in all namespaces."""
    sc.apply([netpol("x", "a-from-all-pods", {"podSelector": pod_sel("a"),
                     "ingress": [{"from": [{"namespaceSelector": {}}]}]})])  # fmt: skip
    probes = cells([*EVERYONE, *NODES], ["x/a"], [TCP80], (4, 6))
    sc.verify(probes, lambda p: p.src in PODS or p.src == "node-1")


@BOTH
def test_namespace_selector_and_pod_selector_in_one_peer_are_anded(sc: Scenario) -> None:
    """[9] only y/b (not x/b, z/b, y/a …).  upstream: should enforce policy based on
    PodSelector and NamespaceSelector; should enforce policy to allow traffic only from a
    pod in a different namespace based on PodSelector and NamespaceSelector (TCP, UDP and
    SCTP variants)."""
    sc.apply([netpol("x", "a-from-y-b", {"podSelector": pod_sel("a"), "ingress": [{"from": [
        {"namespaceSelector": ns_sel("y"), "podSelector": pod_sel("b")}]}]})])  # fmt: skip
    probes = cells(EVERYONE, ["x/a"], [TCP80, UDP80, SCTP80], (4, 6))
    sc.verify(probes, lambda p: p.src in ("x/a", "y/b"))


@BOTH
def test_separate_peer_entries_are_ored(sc: Scenario) -> None:
    """[9] upstream: should enforce policy based on PodSelector or NamespaceSelector."""
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"), "ingress": [{"from": [
        {"namespaceSelector": ns_sel("y")}, {"podSelector": pod_sel("b")}]}]})])  # fmt: skip
    sc.verify(cells(EVERYONE, ["x/a"]),
              lambda p: p.src in ("x/a", "x/b") or ns_of(p.src) == "y")  # fmt: skip


@BOTH
def test_multiple_pod_and_namespace_selector_expressions(sc: Scenario) -> None:
    """[9, 10] upstream: should enforce policy based on Multiple PodSelectors and
    NamespaceSelectors."""
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"), "ingress": [{"from": [{
        "namespaceSelector": {"matchExpressions": [expr("ns", "NotIn", "x")]},
        "podSelector": {"matchExpressions": [expr("pod", "In", "b", "c")]}}]}]})])  # fmt: skip
    sc.verify(cells(EVERYONE, ["x/a"]),
              lambda p: p.src in ("x/a", "y/b", "y/c", "z/b", "z/c"))  # fmt: skip


@BOTH
def test_any_of_several_pod_selectors_allows(sc: Scenario) -> None:
    """[9] upstream: should enforce policy based on any PodSelectors."""
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"), "ingress": [{"from": [
        {"podSelector": pod_sel("b")}, {"podSelector": pod_sel("c")}]}]})])  # fmt: skip
    sc.verify(cells(EVERYONE, ["x/a"]), lambda p: p.src in X_PODS)


@BOTH
def test_pod_selector_match_expressions(sc: Scenario) -> None:
    """[10] Exists + NotIn (x/a: a tier other than db), DoesNotExist + In (x/b: no tier,
    pod b).  upstream: should enforce policy based on PodSelector with MatchExpressions."""
    sc.lab.set_pod_labels("y/a", {"pod": "a", "tier": "web"})
    sc.lab.set_pod_labels("y/b", {"pod": "b", "tier": "db"})
    sc.lab.set_pod_labels("z/a", {"pod": "a", "tier": "web"})
    sc.apply([
        netpol("x", "a", {"podSelector": pod_sel("a"), "ingress": [{"from": [{
            "namespaceSelector": {},
            "podSelector": {"matchExpressions": [expr("tier", "Exists"),
                                                 expr("tier", "NotIn", "db")]}}]}]}),
        netpol("x", "b", {"podSelector": pod_sel("b"), "ingress": [{"from": [{
            "namespaceSelector": {},
            "podSelector": {"matchExpressions": [expr("tier", "DoesNotExist"),
                                                 expr("pod", "In", "b")]}}]}]}),
    ])  # fmt: skip

    def expected(p: Probe) -> bool:
        if p.dst == "x/a":
            return p.src in ("x/a", "y/a", "z/a")
        return p.src in ("x/b", "z/b")

    sc.verify(cells(EVERYONE, ["x/a", "x/b"]), expected)


@BOTH
def test_notin_matches_pods_that_lack_the_key(sc: Scenario) -> None:
    """[10] `tier NotIn [web]` matches every pod without a tier label."""
    sc.lab.set_pod_labels("y/a", {"pod": "a", "tier": "web"})
    sc.lab.set_pod_labels("y/b", {"pod": "b", "tier": "db"})
    sc.apply([netpol("x", "c", {"podSelector": pod_sel("c"), "ingress": [{"from": [{
        "namespaceSelector": {},
        "podSelector": {"matchExpressions": [expr("tier", "NotIn", "web")]}}]}]})])  # fmt: skip
    sc.verify(cells(EVERYONE, ["x/c"]), lambda p: p.src in PODS and p.src != "y/a")


@BOTH
def test_namespace_selector_match_expressions(sc: Scenario) -> None:
    """[10] In (x/a), NotIn incl. a namespace without the key (x/b), DoesNotExist (x/c),
    Exists (y/a).  upstream: should enforce policy based on NamespaceSelector with
    MatchExpressions."""
    sc.lab.set_namespace_labels("y", {"ns": "y", "env": "prod"})
    sc.lab.set_namespace_labels("z", {"ns": "z", "env": "dev"})

    def from_ns(ns: str, pod: str, *expressions: dict[str, Any]) -> dict[str, Any]:
        return netpol(ns, f"{pod}-nsexpr", {"podSelector": pod_sel(pod), "ingress": [{"from": [
            {"namespaceSelector": {"matchExpressions": list(expressions)}}]}]})  # fmt: skip

    sc.apply([
        from_ns("x", "a", expr("env", "In", "prod")),
        from_ns("x", "b", expr("env", "NotIn", "prod")),
        from_ns("x", "c", expr("env", "DoesNotExist")),
        from_ns("y", "a", expr("env", "Exists")),
    ])  # fmt: skip
    allowed_ns = {"x/a": ("y",), "x/b": ("x", "z"), "x/c": ("x",), "y/a": ("y", "z")}
    sc.verify(
        cells(EVERYONE, [*X_PODS, "y/a"]),
        lambda p: is_self(p) or ns_of(p.src) in allowed_ns[p.dst],
    )


@BOTH
def test_namespace_name_label_selects_with_in_and_notin(sc: Scenario) -> None:
    """[11] upstream: should enforce policy to allow traffic based on NamespaceSelector with
    MatchLabels using default ns label (x/a); ... with MatchExpressions using default ns
    label (x/b, NotIn)."""
    name = "kubernetes.io/metadata.name"
    sc.apply([
        netpol("x", "a", {"podSelector": pod_sel("a"), "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {name: "y"}}}]}]}),
        netpol("x", "b", {"podSelector": pod_sel("b"), "ingress": [{"from": [
            {"namespaceSelector": {"matchExpressions": [expr(name, "NotIn", "y")]}}]}]}),
    ])  # fmt: skip

    def expected(p: Probe) -> bool:
        if p.dst == "x/a":
            return is_self(p) or ns_of(p.src) == "y"
        return ns_of(p.src) in ("x", "z")

    sc.verify(cells(EVERYONE, ["x/a", "x/b"]), expected)


@BOTH
def test_namespace_name_label_is_implied_when_the_object_lacks_it(sc: Scenario) -> None:
    """[11] file input without `kubernetes.io/metadata.name` on namespace y still matches."""
    ns_y = sc.namespace_object("y")
    ns_y["metadata"]["labels"] = {"ns": "y"}
    sc.apply(
        [netpol("x", "a", {"podSelector": pod_sel("a"), "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}]})],
        overrides=[ns_y],
    )  # fmt: skip
    sc.verify(cells(EVERYONE, ["x/a"]), lambda p: is_self(p) or ns_of(p.src) == "y")


# ============================================================================== ipBlock
def _node2_pods(lab: Lab) -> list[str]:
    return [p for p in PODS if node_of(lab, p) == "node-2"]


@BOTH
def test_ipblock_egress_allows_servers_in_the_cidr(sc: Scenario) -> None:
    """[12] upstream: should allow egress access to server in CIDR block (node-2's pod
    range, v4 and v6)."""
    node2 = sc.lab.node("node-2")
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"), "policyTypes": EGR,
                     "egress": [{"to": [{"ipBlock": {"cidr": node2.pod_cidr_v4}},
                                        {"ipBlock": {"cidr": node2.pod_cidr_v6}}]}]})])  # fmt: skip
    allowed = {"x/a", *_node2_pods(sc.lab)}
    sc.verify(cells(["x/a"], EVERYONE, [TCP80], (4, 6)), lambda p: p.dst in allowed)


@WITH_IPTC
def test_ipblock_except_excludes_addresses_from_the_cidr(sc: Scenario) -> None:
    """[12] upstream: should enforce except clause while egress access to server in CIDR
    block."""
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"), "policyTypes": EGR,
                     "egress": [{"to": [{"ipBlock": {
                         "cidr": sc.lab.node("node-2").pod_cidr_v4,
                         "except": [f"{sc.lab.pod('y/b').ipv4}/32"]}}]}]})])  # fmt: skip
    allowed = {"x/a", *_node2_pods(sc.lab)} - {"y/b"}
    sc.verify(cells(["x/a"], EVERYONE, [TCP80, UDP81]), lambda p: p.dst in allowed)


@BOTH
def test_ipblock_except_is_not_a_deny(sc: Scenario) -> None:
    """[3, 12] y/b is in one policy's except and in another policy's cidr: allowed.
    upstream: should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is
    allowed."""
    yb = f"{sc.lab.pod('y/b').ipv4}/32"
    sc.apply([
        netpol("x", "a-range", {"podSelector": pod_sel("a"), "policyTypes": EGR,
               "egress": [{"to": [{"ipBlock": {"cidr": sc.lab.node("node-2").pod_cidr_v4,
                                               "except": [yb]}}]}]}),
        netpol("x", "a-yb", {"podSelector": pod_sel("a"), "policyTypes": EGR,
               "egress": [{"to": [{"ipBlock": {"cidr": yb}}]}]}),
    ])  # fmt: skip
    allowed = {"x/a", *_node2_pods(sc.lab)}
    sc.verify(cells(["x/a"], EVERYONE), lambda p: p.dst in allowed)


@BOTH
def test_ipblock_ingress_matches_pod_and_external_addresses(sc: Scenario) -> None:
    """[12] a block matches any address in range, pod IPs included; except subtracts."""
    lab = sc.lab
    assert lab.external is not None
    sc.apply([netpol("x", "c", {"podSelector": pod_sel("c"), "ingress": [{"from": [
        {"ipBlock": {"cidr": lab.node("node-1").pod_cidr_v4,
                     "except": [f"{lab.pod('x/b').ipv4}/32"]}},
        {"ipBlock": {"cidr": f"{lab.external.ipv4}/32"}}]}]})])  # fmt: skip
    node1 = {p for p in PODS if node_of(lab, p) == "node-1"}
    sc.verify(cells(EVERYONE, ["x/c"]),
              lambda p: is_self(p) or p.src == EXT or p.src in node1 - {"x/b"})  # fmt: skip


@BOTH
def test_ipv4_block_never_matches_ipv6_and_vice_versa(sc: Scenario) -> None:
    """[12] x/a allows 0.0.0.0/0, x/b allows ::/0: each only in its own family."""
    sc.apply([
        netpol("x", "a", {"podSelector": pod_sel("a"),
                          "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}),
        netpol("x", "b", {"podSelector": pod_sel("b"),
                          "ingress": [{"from": [{"ipBlock": {"cidr": "::/0"}}]}]}),
    ])  # fmt: skip
    sc.verify(
        cells(EVERYONE, ["x/a", "x/b"], [TCP80, UDP81], (4, 6)),
        lambda p: is_self(p) or p.family == (4 if p.dst == "x/a" else 6),
    )


# ============================================================================== ports
@BOTH
def test_numeric_port_allows_only_that_port_and_protocol(sc: Scenario) -> None:
    """[14] 81/TCP on x/a, 81/UDP on x/b, 81/SCTP on x/c.  upstream: should enforce policy
    based on Ports (TCP, UDP and SCTP variants)."""
    sc.apply([
        netpol("x", f"{pod}-81", {"podSelector": pod_sel(pod),
               "ingress": [{"ports": [{"port": 81, "protocol": proto}]}]})
        for pod, proto in (("a", "TCP"), ("b", "UDP"), ("c", "SCTP"))
    ])  # fmt: skip
    allowed = {"x/a": TCP81, "x/b": UDP81, "x/c": SCTP81}
    sc.verify(
        cells(EVERYONE, X_PODS, [TCP80, TCP81, UDP80, UDP81, SCTP80, SCTP81]),
        lambda p: is_self(p) or (p.port, p.protocol) == allowed[p.dst],
    )


@BOTH
def test_protocol_defaults_to_tcp(sc: Scenario) -> None:
    """[14] `{port: 80}` is 80/TCP: not UDP, not SCTP."""
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"),
                                "ingress": [{"ports": [{"port": 80}]}]})])  # fmt: skip
    sc.verify(cells(EVERYONE, ["x/a"], [TCP80, TCP81, UDP80, SCTP80]),
              lambda p: is_self(p) or (p.port, p.protocol) == TCP80)  # fmt: skip


@BOTH
def test_protocol_only_port_entry_allows_every_port_of_that_protocol(sc: Scenario) -> None:
    """[15] upstream: should enforce ingress policy allowing any port traffic to a server
    on a specific protocol."""
    sc.lab.serve("x/a", 8080, "UDP")
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"),
                                "ingress": [{"ports": [{"protocol": "UDP"}]}]})])  # fmt: skip
    sc.verify(cells(EVERYONE, ["x/a"], [UDP80, UDP81, (8080, "UDP"), TCP80, TCP81, SCTP80]),
              lambda p: is_self(p) or p.protocol == "UDP")  # fmt: skip


@BOTH
def test_empty_port_entry_means_all_tcp_next_to_a_numeric_port(sc: Scenario) -> None:
    """[15] `ports: [{port: 80}, {}]` = every TCP port, still no UDP (Calico #4373)."""
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"),
                                "ingress": [{"ports": [{"port": 80}, {}]}]})])  # fmt: skip
    sc.verify(cells(EVERYONE, ["x/a"], [TCP80, TCP81, UDP80, UDP81]),
              lambda p: is_self(p) or p.protocol == "TCP")  # fmt: skip


@WITH_IPTC
def test_end_port_range_is_inclusive(sc: Scenario) -> None:
    """[16] `port: 8081, endPort: 8082` allows 8081 and 8082, not 8080 or 8083."""
    for port in range(8080, 8084):
        sc.lab.serve("x/a", port, "TCP")
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"),
                     "ingress": [{"ports": [{"port": 8081, "endPort": 8082}]}]})])  # fmt: skip
    probes = cells(["x/b", "y/b", EXT, "x/a"], ["x/a"], [(p, "TCP") for p in range(8080, 8084)])
    sc.verify(probes, lambda p: is_self(p) or 8081 <= p.port <= 8082)


@BOTH
def test_udp_only_or_sctp_only_rule_never_opens_tcp(sc: Scenario) -> None:
    """[18] upstream: should not allow access by TCP when a policy specifies only UDP
    (x/a); should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the
    plugin doesn't support SCTP (x/b: SCTP 81 allowed where the rule says SCTP)."""
    sc.apply([
        netpol("x", "a-udp", {"podSelector": pod_sel("a"),
               "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}]}),
        netpol("x", "b-sctp", {"podSelector": pod_sel("b"),
               "ingress": [{"ports": [{"port": 81, "protocol": "SCTP"}]}]}),
    ])  # fmt: skip
    allowed = {"x/a": UDP81, "x/b": SCTP81}
    sc.verify(cells(EVERYONE, ["x/a", "x/b"], [TCP81, UDP81, SCTP81, TCP80]),
              lambda p: is_self(p) or (p.port, p.protocol) == allowed[p.dst])  # fmt: skip


@BOTH
def test_sctp_only_policy_still_isolates_tcp_and_udp(sc: Scenario) -> None:
    """[15, 18] upstream: should properly isolate pods that are selected by a policy
    allowing SCTP, even if the plugin doesn't support SCTP."""
    sc.apply([netpol("x", "sctp-only", {"podSelector": {},
                     "ingress": [{"ports": [{"protocol": "SCTP"}]}]})])  # fmt: skip
    sc.verify(cells(EVERYONE, PODS, [TCP80, UDP80, SCTP80, SCTP81]),
              lambda p: is_self(p) or ns_of(p.dst) != "x" or p.protocol == "SCTP")  # fmt: skip


# ============================================================================== named ports
@BOTH
def test_named_port_ingress(sc: Scenario) -> None:
    """[17] upstream: should allow ingress access on one named port."""
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"),
                     "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]})])  # fmt: skip
    sc.verify(cells(EVERYONE, ["x/a"], [TCP80, TCP81, UDP81, SCTP81]),
              lambda p: is_self(p) or (p.port, p.protocol) == TCP81)  # fmt: skip


@BOTH
def test_named_port_ingress_from_a_namespace(sc: Scenario) -> None:
    """[17] upstream: should allow ingress access from namespace on one named port."""
    sc.apply([netpol("x", "from-y-80", {"podSelector": {}, "ingress": [{
        "from": [{"namespaceSelector": ns_sel("y")}],
        "ports": [{"port": "serve-80-tcp"}]}]})])  # fmt: skip
    sc.verify(
        cells(EVERYONE, X_PODS, [TCP80, TCP81]),
        lambda p: is_self(p) or (ns_of(p.src) == "y" and p.port == 80),
    )


@WITH_IPTC
def test_named_port_egress(sc: Scenario) -> None:
    """[17] upstream: should allow egress access on one named port (ext serves 80/TCP but
    is no pod, so the name does not match there)."""
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"), "policyTypes": EGR,
                     "egress": [{"ports": [{"port": "serve-80-tcp"}]}]})])  # fmt: skip
    sc.verify(
        cells(["x/a"], EVERYONE, [TCP80, TCP81, UDP80]),
        lambda p: is_self(p) or (p.dst != EXT and (p.port, p.protocol) == TCP80),
    )


@BOTH
def test_named_port_needs_name_and_protocol_to_match(sc: Scenario) -> None:
    """[14, 17] `serve-80-udp` with the default protocol TCP matches nothing; with
    protocol UDP, `serve-81-udp` is 81/UDP."""
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"), "ingress": [{"ports": [
        {"port": "serve-80-udp"}, {"port": "serve-81-udp", "protocol": "UDP"}]}]})])  # fmt: skip
    sc.verify(cells(EVERYONE, ["x/a"], [TCP80, UDP80, TCP81, UDP81]),
              lambda p: is_self(p) or (p.port, p.protocol) == UDP81)  # fmt: skip


@WITH_IPTC
def test_named_port_egress_resolves_against_each_destination_pod(sc: Scenario) -> None:
    """[17] `web` is 8080 on x/b and 8081 on y/b; x/c has no `web`."""
    xb, yb = sc.pod_object("x/b"), sc.pod_object("y/b")
    Scenario.with_named_port(xb, "web", 8080, "TCP")
    Scenario.with_named_port(yb, "web", 8081, "TCP")
    for pod in ("x/b", "y/b", "x/c"):
        for port in (8080, 8081):
            sc.lab.serve(pod, port, "TCP")
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"), "policyTypes": EGR,
                                "egress": [{"ports": [{"port": "web"}]}]})],
             overrides=[xb, yb])  # fmt: skip
    allowed = {("x/b", 8080), ("y/b", 8081)}
    sc.verify(cells(["x/a"], ["x/b", "y/b", "x/c"], [(8080, "TCP"), (8081, "TCP"), TCP80]),
              lambda p: (p.dst, p.port) in allowed)  # fmt: skip


@BOTH
def test_named_port_ingress_resolves_per_target_and_matches_nothing_where_unserved(
    sc: Scenario,
) -> None:
    """[17] one policy for all of x: `web` is 8081 on x/a, 8080 on x/b; x/c does not serve
    `web`, so the rule allows it nothing (it stays isolated)."""
    xa, xb = sc.pod_object("x/a"), sc.pod_object("x/b")
    Scenario.with_named_port(xa, "web", 8081, "TCP")
    Scenario.with_named_port(xb, "web", 8080, "TCP")
    for pod in X_PODS:
        for port in (8080, 8081):
            sc.lab.serve(pod, port, "TCP")
    sc.apply([netpol("x", "web", {"podSelector": {}, "ingress": [{"ports": [{"port": "web"}]}]})],
             overrides=[xa, xb])  # fmt: skip
    web = {"x/a": 8081, "x/b": 8080, "x/c": None}
    sc.verify(cells(EVERYONE, X_PODS, [(8080, "TCP"), (8081, "TCP"), TCP80]),
              lambda p: is_self(p) or p.port == web[p.dst])  # fmt: skip


@BOTH
def test_named_port_never_matches_a_non_pod_destination(sc: Scenario) -> None:
    """[17] x/a may reach `serve-80-tcp` anywhere in 0.0.0.0/0: pods yes, ext and the
    other node (bare addresses) no.  On ingress the name resolves on the destination pod,
    so ext -> x/b on `serve-80-tcp` is fine."""
    assert sc.lab.external is not None
    sc.apply([
        netpol("x", "a", {"podSelector": pod_sel("a"), "policyTypes": EGR, "egress": [{
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": "serve-80-tcp"}]}]}),
        netpol("x", "b", {"podSelector": pod_sel("b"), "ingress": [{
            "from": [{"ipBlock": {"cidr": f"{sc.lab.external.ipv4}/32"}}],
            "ports": [{"port": "serve-80-tcp"}]}]}),
    ])  # fmt: skip

    def expected(p: Probe) -> bool:
        if is_self(p):
            return True
        if p.src == "x/a":  # x/b only lets ext in
            return p.dst in PODS and p.dst != "x/b" and p.port == 80
        return p.src == EXT and p.port == 80  # towards x/b

    probes = cells(["x/a"], [*EVERYONE, "node-2"], [TCP80, TCP81]) + cells(
        [EXT, "y/b"], ["x/b"], [TCP80, TCP81]
    )
    sc.verify(probes, expected)


# ====================================================================== host, replies, lifecycle
@WITH_IPTC
def test_own_node_always_reaches_its_pods_the_other_node_does_not(sc: Scenario) -> None:
    """[19] kubelet probes: default-deny ingress still lets the pod's own node in."""
    sc.apply([netpol("x", "deny", {"podSelector": {}, "policyTypes": ING})])
    sc.verify(cells(NODES, X_PODS, [TCP80, UDP81], (4, 6)),
              lambda p: p.src == node_of(sc.lab, p.dst))  # fmt: skip


@BOTH
def test_other_node_is_an_ordinary_address_matched_by_ipblock(sc: Scenario) -> None:
    """[12, 19] x allows node-1's address: node-1 reaches x/c on node-2; node-2 does not
    reach x/a or x/b on node-1."""
    n1 = sc.lab.node("node-1")
    sc.apply([netpol("x", "from-node-1", {"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": f"{n1.wan_v4}/32"}},
        {"ipBlock": {"cidr": f"{n1.wan_v6}/128"}}]}]})])  # fmt: skip
    sc.verify(cells(NODES, X_PODS, [TCP80], (4, 6)),
              lambda p: p.src == "node-1" or node_of(sc.lab, p.dst) == "node-2")  # fmt: skip


@BOTH
def test_pod_to_its_own_node_is_not_subject_to_egress_policy(sc: Scenario) -> None:
    """[19] egress-isolated x pods still reach their own node; the other node and ext are
    ordinary (denied) destinations."""
    sc.apply([netpol("x", "deny-egress", {"podSelector": {}, "policyTypes": EGR})])
    sc.verify(cells(["x/a", "x/c"], [*NODES, EXT], [TCP80, UDP80], (4, 6)),
              lambda p: p.dst == node_of(sc.lab, p.src))  # fmt: skip


@WITH_IPTC
def test_replies_to_allowed_connections_pass_where_the_reverse_is_denied(
    sc: Scenario,
) -> None:
    """[21] x/a -> y/a (same node) and y/b (other node) is allowed; every other direction
    is isolated and allows nothing, yet TCP handshakes and UDP echoes complete."""
    sc.apply([
        netpol("x", "a", {"podSelector": pod_sel("a"), "policyTypes": BOTH_TYPES,
               "egress": [{"to": [{"namespaceSelector": ns_sel("y"), "podSelector":
                                   {"matchExpressions": [expr("pod", "In", "a", "b")]}}]}]}),
        netpol("y", "ab", {
            "podSelector": {"matchExpressions": [expr("pod", "In", "a", "b")]},
            "policyTypes": BOTH_TYPES,
            "ingress": [{"from": [{"namespaceSelector": ns_sel("x"),
                                   "podSelector": pod_sel("a")}]}]}),
    ])  # fmt: skip
    pp = [TCP80, UDP80]
    probes = cells(["x/a"], ["y/a", "y/b"], pp, (4, 6)) + cells(["y/a", "y/b"], ["x/a"], pp, (4, 6))
    sc.verify(probes, lambda p: p.src == "x/a")


@BOTH
def test_established_connection_carries_data_both_ways_across_a_policy_apply(
    sc: Scenario,
) -> None:
    """[21] a long-lived x/a -> y/b:8091 connection (node-1 -> node-2) opened before both
    pods are isolated, and allowed by the new policies, keeps carrying data both ways
    after the agent applies them; a new connection does too; other traffic is denied."""
    echo = TcpEcho(sc.lab, "y/b", 8091)
    old = new = None
    try:
        old = TcpClient(sc.lab, "x/a", "y/b", 8091, 4)
        assert old.round_trip(b"before the policy")
        sc.apply([
            netpol("x", "a", {"podSelector": pod_sel("a"), "policyTypes": BOTH_TYPES,
                   "egress": [{"to": [{"namespaceSelector": ns_sel("y"),
                                       "podSelector": pod_sel("b")}],
                               "ports": [{"port": 8091}]}]}),
            netpol("y", "b", {"podSelector": pod_sel("b"), "policyTypes": BOTH_TYPES,
                   "ingress": [{"from": [{"namespaceSelector": ns_sel("x"),
                                          "podSelector": pod_sel("a")}],
                                "ports": [{"port": 8091}]}]}),
        ])  # fmt: skip
        probes = cells(["x/a"], ["y/b"], [(8091, "TCP"), TCP80], (4, 6)) + cells(
            ["y/b"], ["x/a"], [TCP80], (4, 6)
        )
        sc.verify(probes, lambda p: p.src == "x/a" and p.port == 8091)
        assert old.round_trip(b"after the policy, same connection" * 100)
        new = TcpClient(sc.lab, "x/a", "y/b", 8091, 6)
        assert new.round_trip(b"a new connection, IPv6" * 100)
    finally:
        for client in (old, new):
            if client is not None:
                client.close()
        echo.close()


@WITH_IPTC
def test_service_traffic_is_judged_by_backend_pod_and_target_port(sc: Scenario) -> None:
    """[22] x/c allows 81 from x/a only.  svc-81 (port 80 -> targetPort 81) works for x/a,
    not x/b; svc-80 (80 -> 80) works for nobody, though x/a's packets are sent to port 80
    of a ClusterIP in both cases."""
    sc.apply([netpol("x", "c", {"podSelector": pod_sel("c"), "ingress": [{
        "from": [{"podSelector": pod_sel("a")}],
        "ports": [{"port": 81}, {"port": 81, "protocol": "UDP"}]}]})])  # fmt: skip
    pm81 = {TCP80: 81, UDP80: 81}
    pm80 = {TCP80: 80, UDP80: 80}
    sc.add_service(Service("svc-81", "x/c", "10.96.0.81", "fd00:10:96::51", pm81))
    sc.add_service(Service("svc-80", "x/c", "10.96.0.80", "fd00:10:96::50", pm80))
    probes = cells(["x/a", "x/b"], ["svc-81", "svc-80"], [TCP80, UDP80], (4, 6))
    sc.verify(probes, lambda p: p.src == "x/a" and p.dst == "svc-81")


@BOTH
def test_a_pod_always_reaches_itself(sc: Scenario) -> None:
    """[23] isolated both ways, x/a still reaches its own address (v4, v6, all protocols),
    and nothing else."""
    sc.apply([netpol("x", "a", {"podSelector": pod_sel("a"), "policyTypes": BOTH_TYPES})])
    pp = [TCP80, UDP81, SCTP80]
    probes = cells(["x/a"], ["x/a", "x/b"], pp, (4, 6)) + cells(["x/b"], ["x/a"], pp, (4, 6))
    sc.verify(probes, is_self)


@BOTH
def test_finished_pods_are_ignored_and_their_reused_ips_never_get_their_labels(
    sc: Scenario,
) -> None:
    """[13] y/old (Succeeded) was `role: trusted` with the IPs y/c has now: y/c must not
    be trusted.  x/done (Failed, IPs now held by z/b) is selected by a deny-all: z/b must
    not be isolated."""
    lab = sc.lab
    lab.set_pod_labels("y/a", {"pod": "a", "role": "trusted"})
    yc, zb = lab.pod("y/c"), lab.pod("z/b")
    extra = [
        sc.extra_pod("y", "old", node=yc.spec.node, ips=[yc.ipv4, yc.ipv6],
                     pod_labels={"role": "trusted"}, phase="Succeeded"),
        sc.extra_pod("x", "done", node=zb.spec.node, ips=[zb.ipv4, zb.ipv6],
                     pod_labels={"pod": "done"}, phase="Failed"),
    ]  # fmt: skip
    sc.apply([
        netpol("x", "a-from-trusted", {"podSelector": pod_sel("a"), "ingress": [{"from": [
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "trusted"}}}]}]}),
        netpol("x", "isolate-done", {"podSelector": pod_sel("done"),
                                     "policyTypes": BOTH_TYPES}),
    ], extra=extra)  # fmt: skip
    probes = cells(EVERYONE, ["x/a", "z/b"], [TCP80], (4, 6)) + cells(["z/b"], EVERYONE)
    sc.verify(probes, lambda p: p.src in ("x/a", "y/a") if p.dst == "x/a" else True)


@BOTH
def test_hostnetwork_pods_are_never_selector_peers(sc: Scenario) -> None:
    """[13, 20] a hostNetwork pod `pod: hn` on node-1 has node-1's addresses; a peer
    `podSelector: pod=hn` must not let node-1 into x/c on node-2."""
    n1 = sc.lab.node("node-1")
    hn = sc.extra_pod("x", "hn", node="node-1", ips=[n1.wan_v4, n1.wan_v6],
                      pod_labels={"pod": "hn"}, host_network=True)  # fmt: skip
    sc.apply([netpol("x", "from-hn", {"podSelector": {},
                     "ingress": [{"from": [{"podSelector": pod_sel("hn")}]}]})],
             extra=[hn])  # fmt: skip
    sc.verify(cells(NODES, X_PODS, [TCP80], (4, 6)),
              lambda p: p.src == node_of(sc.lab, p.dst))  # fmt: skip


@BOTH
def test_ipv6_neighbour_discovery_is_not_broken_by_isolation(sc: Scenario) -> None:
    """[25] x is isolated both ways and only talks to itself; with every neighbour cache
    flushed, v6 between x/a and x/b (same bridge) and to x/c (via the nodes) still works."""
    sc.apply([netpol("x", "internal", {
        "podSelector": {}, "policyTypes": BOTH_TYPES,
        "ingress": [{"from": [{"podSelector": {}}]}],
        "egress": [{"to": [{"podSelector": {}}]}]})])  # fmt: skip
    lab = sc.lab
    for netns in [*(lab.pod(p).netns for p in [*X_PODS, "y/a"]),
                  *(n.netns for n in lab.nodes.values())]:  # fmt: skip
        run(["ip", "-6", "neigh", "flush", "all"], netns=netns)
    probes = cells([*X_PODS, "y/a"], X_PODS, [TCP80, UDP80], (6,))
    sc.verify(probes, lambda p: ns_of(p.src) == "x")


# ============================================================================== updates
@WITH_IPTC
def test_updated_policy_is_enforced(sc: Scenario) -> None:
    """[24] upstream: should enforce updated policy."""

    def policy(pod: str) -> dict[str, Any]:
        return netpol("x", "a", {"podSelector": pod_sel("a"),
                                 "ingress": [{"from": [{"podSelector": pod_sel(pod)}]}]})  # fmt: skip

    probes = cells(EVERYONE, ["x/a"])
    sc.apply([policy("b")])
    sc.verify(probes, lambda p: p.src in ("x/a", "x/b"), "from b")
    sc.apply([policy("c")])
    sc.verify(probes, lambda p: p.src in ("x/a", "x/c"), "updated: from c")


@WITH_IPTC
def test_deleted_policy_stops_enforcing(sc: Scenario) -> None:
    """[24] upstream: should stop enforcing policies after they are deleted."""
    probes = cells(EVERYONE, EVERYONE)
    sc.apply([netpol("x", "deny-all", {"podSelector": {}, "policyTypes": BOTH_TYPES})])
    sc.verify(probes, lambda p: is_self(p) or "x" not in (ns_of(p.src), ns_of(p.dst)), "deny")
    sc.apply([])
    sc.verify(probes, lambda p: True, "deleted")


@BOTH
def test_relabelled_pod_becomes_an_allowed_peer(sc: Scenario) -> None:
    """[24] upstream: should allow ingress access from updated pod."""
    policy = netpol("x", "a", {"podSelector": pod_sel("a"), "ingress": [{"from": [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}]}]})  # fmt: skip
    probes = cells(EVERYONE, ["x/a"])
    sc.apply([policy])
    sc.verify(probes, is_self, "before")
    sc.lab.set_pod_labels("y/b", {"pod": "b", "role": "client"})
    sc.apply([policy])
    sc.verify(probes, lambda p: p.src in ("x/a", "y/b"), "y/b relabelled")


@BOTH
def test_relabelled_pod_becomes_isolated(sc: Scenario) -> None:
    """[24] upstream: should deny ingress access to updated pod."""
    policy = netpol("x", "isolate", {"podSelector": {"matchLabels": {"target": "isolated"}},
                                     "policyTypes": ING})  # fmt: skip
    probes = cells(EVERYONE, ["x/a", "x/b"])
    sc.apply([policy])
    sc.verify(probes, lambda p: True, "nobody selected")
    sc.lab.set_pod_labels("x/a", {"pod": "a", "target": "isolated"})
    sc.apply([policy])
    sc.verify(probes, lambda p: is_self(p) or p.dst != "x/a", "x/a relabelled")


@BOTH
def test_relabelled_namespace_becomes_an_allowed_peer(sc: Scenario) -> None:
    """[24] upstream: should allow ingress access from updated namespace."""
    policy = netpol("x", "a", {"podSelector": pod_sel("a"), "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]})  # fmt: skip
    probes = cells(EVERYONE, ["x/a"])
    sc.apply([policy])
    sc.verify(probes, is_self, "before")
    sc.lab.set_namespace_labels("y", {"ns": "y", "team": "blue"})
    sc.apply([policy])
    sc.verify(probes, lambda p: is_self(p) or ns_of(p.src) == "y", "namespace y relabelled")


# ============================================================================== bad input
@BOTH
def test_a_pod_with_unreadable_labels_is_quarantined_both_ways(sc: Scenario) -> None:
    """Bad input fails closed: x/a's labels cannot be read (one bad key), so x/a is
    isolated in both directions with nothing allowed, even under an allow-all policy
    of its namespace, and is no peer of any selector; every other pod is unaffected."""
    xa = sc.pod_object("x/a")
    xa["metadata"]["labels"]["bad key!"] = "x"
    allow_all = {"podSelector": {}, "policyTypes": BOTH_TYPES, "ingress": [{}], "egress": [{}]}
    sc.apply([netpol("x", "allow-all", allow_all)], overrides=[xa], problems_expected=True)
    sc.verify(
        cells(EVERYONE, EVERYONE, [TCP80, UDP81]),
        lambda p: is_self(p) or "x/a" not in (p.src, p.dst),
    )


@BOTH
def test_the_pods_of_a_namespace_with_unreadable_labels_are_quarantined(sc: Scenario) -> None:
    """Bad input fails closed: namespace y's labels cannot be read, so no namespace
    selector matches it (its name label alone would satisfy "ns NotIn [y]") and its pods
    are isolated both ways."""
    ns_y = sc.namespace_object("y")
    ns_y["metadata"]["labels"]["team"] = 5
    not_y = {"namespaceSelector": {"matchExpressions": [expr("ns", "NotIn", "y")]}}
    policy = netpol("x", "from-not-y", {"podSelector": {}, "ingress": [{"from": [not_y]}]})
    sc.apply([policy], overrides=[ns_y], problems_expected=True)
    sc.verify(
        cells(EVERYONE, EVERYONE, [TCP80]),
        lambda p: (
            is_self(p)
            or (
                "y" not in (ns_of(p.src), ns_of(p.dst))
                and (ns_of(p.dst) != "x" or ns_of(p.src) in ("x", "z"))
            )
        ),
    )
