"""explain (the oracle) on ClusterNetworkPolicy tiers, straight from the API's docs
(apis/v1alpha2 of sigs.k8s.io/network-policy-api): Admin by priority, then
NetworkPolicy, then Baseline, then allow; Accept and Deny decide, Pass moves on."""

from __future__ import annotations

from agent.model.objects import RuleAction, Tier
from tests.unit import builders as b

ALL_NAMESPACES = {"namespaces": {}}
TCP80 = [{"tcp": {"destinationPort": {"number": 80}}}]


def _cluster(*policies: b.Obj) -> list[b.Obj]:
    return [
        b.namespace("a", team="x"),
        b.namespace("b", team="y"),
        b.node("node1", "172.18.0.1"),
        b.node("node2", "172.18.0.2"),
        b.pod(
            "a/web",
            "10.0.0.1",
            labels={"app": "web"},
            ports=[{"name": "http", "containerPort": 80}],
        ),
        b.pod("a/db", "10.0.0.2", labels={"app": "db"}, node_name="node2"),
        b.pod("b/client", "10.0.0.3", labels={"app": "client"}, node_name="node2"),
        *policies,
    ]


def state(*policies: b.Obj) -> b.ClusterState:
    return b.state_of(*_cluster(*policies))


def deny_all_ingress(name: str, tier: str, priority: int, subject: b.Obj = ALL_NAMESPACES) -> b.Obj:
    return b.cnp(
        name, tier, priority, subject, ingress=b.ingress(b.cnp_rule("Deny", ALL_NAMESPACES))
    )


def test_admin_deny_beats_a_networkpolicy_allow() -> None:
    s = state(
        deny_all_ingress("deny", "Admin", 10),
        b.policy("a/allow-all", ingress=[{}]),
    )
    verdict = b.check(s, "b/client", "a/web")
    assert not verdict.allowed
    assert verdict.ingress is not None and verdict.ingress.tier == "Admin"
    ref = verdict.ingress.decided_by
    assert ref is not None
    assert (ref.tier, ref.policy, ref.priority, ref.index, ref.action) == (
        Tier.ADMIN,
        "deny",
        10,
        0,
        RuleAction.DENY,
    )


def test_admin_accept_skips_networkpolicy_isolation() -> None:
    s = state(
        b.cnp(
            "accept",
            "Admin",
            1,
            ALL_NAMESPACES,
            ingress=b.ingress(b.cnp_rule("Accept", {"namespaces": b.labels(team="y")})),
        ),
        b.policy("a/deny-all"),
    )
    assert b.allowed(s, "b/client", "a/web")
    assert not b.allowed(s, "a/db", "a/web")  # not accepted: NetworkPolicy decides


def test_admin_pass_hands_over_to_networkpolicy() -> None:
    s = state(
        b.cnp(
            "pass",
            "Admin",
            1,
            ALL_NAMESPACES,
            ingress=b.ingress(b.cnp_rule("Pass", {"namespaces": b.labels(team="y")})),
        ),
        deny_all_ingress("deny", "Admin", 2),
        b.policy("a/allow-client", ingress=[{"from": [{"namespaceSelector": b.labels(team="y")}]}]),
    )
    verdict = b.check(s, "b/client", "a/web")
    assert verdict.allowed
    assert verdict.ingress is not None and verdict.ingress.tier == "NetworkPolicy"
    assert [ref.policy for ref in verdict.ingress.passed_by] == ["pass"]
    assert not b.allowed(s, "a/db", "a/web")  # not passed: the priority-2 deny decides


def test_pass_without_a_networkpolicy_goes_to_the_baseline() -> None:
    s = state(
        b.cnp(
            "pass",
            "Admin",
            1,
            ALL_NAMESPACES,
            ingress=b.ingress(b.cnp_rule("Pass", ALL_NAMESPACES)),
        ),
        deny_all_ingress("baseline-deny", "Baseline", 1),
    )
    verdict = b.check(s, "b/client", "a/web")
    assert not verdict.allowed and verdict.ingress is not None
    assert verdict.ingress.tier == "Baseline"


def test_lower_priority_number_goes_first_and_ties_break_by_name() -> None:
    accept = b.ingress(b.cnp_rule("Accept", ALL_NAMESPACES))
    s = state(
        deny_all_ingress("deny", "Admin", 5),
        b.cnp("accept", "Admin", 4, ALL_NAMESPACES, ingress=accept),
    )
    assert b.allowed(s, "b/client", "a/web")
    s = state(
        deny_all_ingress("b-deny", "Admin", 5),
        b.cnp("a-accept", "Admin", 5, ALL_NAMESPACES, ingress=accept),
    )
    assert b.allowed(s, "b/client", "a/web")


def test_rule_order_within_a_policy_decides() -> None:
    s = state(
        b.cnp(
            "ordered",
            "Admin",
            1,
            ALL_NAMESPACES,
            ingress=b.ingress(
                b.cnp_rule("Accept", {"namespaces": b.labels(team="y")}, protocols=TCP80),
                b.cnp_rule("Deny", ALL_NAMESPACES),
            ),
        )
    )
    assert b.allowed(s, "b/client", "a/web", 80)
    assert not b.allowed(s, "b/client", "a/web", 81)


def test_egress_accept_still_needs_the_destinations_ingress() -> None:
    s = state(
        b.cnp(
            "egress-accept",
            "Admin",
            1,
            {"namespaces": b.labels(team="y")},
            egress=b.egress(b.cnp_rule("Accept", ALL_NAMESPACES)),
        ),
        deny_all_ingress(
            "deny-web",
            "Admin",
            2,
            {"pods": {"namespaceSelector": {}, "podSelector": b.labels(app="web")}},
        ),
    )
    verdict = b.check(s, "b/client", "a/web")
    assert verdict.egress is not None and verdict.egress.allowed
    assert not verdict.allowed


def test_baseline_applies_only_where_no_networkpolicy_isolates_that_direction() -> None:
    s = state(
        deny_all_ingress("baseline", "Baseline", 1),
        b.cnp(
            "baseline-egress",
            "Baseline",
            1,
            ALL_NAMESPACES,
            egress=b.egress(b.cnp_rule("Deny", ALL_NAMESPACES)),
        ),
        b.policy(
            "a/web-ingress",
            podSelector=b.labels(app="web"),
            ingress=[{"from": [{"namespaceSelector": {}}]}],
        ),
    )
    verdict = b.check(s, "a/web", "a/db")
    assert verdict.egress is not None and not verdict.egress.allowed  # baseline egress
    verdict = b.check(s, "b/client", "a/web")
    assert verdict.ingress is not None and verdict.ingress.allowed  # NetworkPolicy decides
    assert not b.check(s, "b/client", "a/db").allowed  # baseline ingress for db


def test_baseline_pass_is_the_default_allow() -> None:
    s = state(
        b.cnp(
            "pass",
            "Baseline",
            1,
            ALL_NAMESPACES,
            ingress=b.ingress(b.cnp_rule("Pass", ALL_NAMESPACES)),
        ),
        deny_all_ingress("deny", "Baseline", 2),
    )
    assert b.allowed(s, "b/client", "a/web")


def test_a_policy_without_ingress_rules_does_not_touch_ingress() -> None:
    s = state(
        b.cnp(
            "egress-only",
            "Admin",
            1,
            ALL_NAMESPACES,
            egress=b.egress(b.cnp_rule("Deny", ALL_NAMESPACES)),
        ),
    )
    verdict = b.check(s, "b/client", "a/web")
    assert verdict.ingress is not None and verdict.ingress.allowed and verdict.ingress.tier == ""


def test_networks_match_pod_addresses_too() -> None:
    s = state(
        b.cnp(
            "deny-net",
            "Admin",
            1,
            {"namespaces": b.labels(team="y")},
            egress=b.egress(b.cnp_rule("Deny", {"networks": ["10.0.0.0/30"]})),
        ),
    )
    assert not b.allowed(s, "b/client", "a/web")  # 10.0.0.1
    assert b.allowed(s, "b/client", "192.168.1.1")


def test_nodes_peer_selects_node_addresses_by_node_labels() -> None:
    objects = _cluster(
        b.cnp(
            "deny-nodes",
            "Admin",
            1,
            ALL_NAMESPACES,
            egress=b.egress(b.cnp_rule("Deny", {"nodes": {}})),
        ),
    )
    s = b.state_of(*objects)
    assert not b.allowed(s, "a/web", "172.18.0.2")  # another node
    assert b.allowed(s, "a/web", "172.18.0.1")  # its own node: always allowed


def test_named_port_resolves_at_the_destination_pod() -> None:
    s = state(
        b.cnp(
            "named",
            "Admin",
            1,
            ALL_NAMESPACES,
            egress=b.egress(
                b.cnp_rule("Deny", ALL_NAMESPACES, protocols=[{"destinationNamedPort": "http"}]),
            ),
        ),
    )
    assert not b.allowed(s, "b/client", "a/web", 80)
    assert b.allowed(s, "b/client", "a/db", 80)  # db serves no "http"


def test_own_node_is_exempt_from_an_admin_deny_all() -> None:
    s = state(deny_all_ingress("deny", "Admin", 1))
    verdict = b.check(s, "172.18.0.1", "a/web")
    assert verdict.allowed and verdict.ingress is not None
    assert verdict.ingress.reason == "always allowed: from the pod's own node"


def test_host_network_pods_are_neither_subjects_nor_peers() -> None:
    objects = _cluster(
        b.pod("b/host", "172.18.0.2", node_name="node2", host_network=True),
        b.cnp(
            "accept-b",
            "Admin",
            1,
            ALL_NAMESPACES,
            ingress=b.ingress(b.cnp_rule("Accept", {"namespaces": b.labels(team="y")})),
        ),
        b.policy("a/deny-all"),
    )
    s = b.state_of(*objects)
    assert b.allowed(s, "b/client", "a/web")
    # The hostNetwork pod of namespace b is only its node's address: not accepted, so
    # the NetworkPolicy denies it.
    assert not b.allowed(s, "172.18.0.2", "a/web")


def test_an_unsupported_peer_fails_closed_as_a_deny() -> None:
    objects = _cluster(
        b.cnp(
            "domains",
            "Admin",
            1,
            ALL_NAMESPACES,
            egress=b.egress(b.cnp_rule("Accept", {"domainNames": ["example.com"]})),
        ),
    )
    built = b.build_state(objects)
    assert any("domainNames" in p for p in built.problems)
    assert not b.allowed(built.state, "a/web", "192.168.1.1")
