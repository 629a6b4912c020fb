"""The benchmark's L cluster with ClusterNetworkPolicies: L plus 100 policies that all
parse, drawn from their own seed, covering what the bench means to measure."""

from __future__ import annotations

from collections import Counter

from agent.model.objects import IPBlock, NodePeer, SelectorPeer
from agent.policy.state import build_state
from bench.synth import SIZES, generate


def test_l_with_cluster_policies_is_l_plus_100_cluster_policies() -> None:
    plain = generate(SIZES["L"])
    with_cnp = generate(SIZES["L+cnp"])
    added = [o for o in with_cnp if o["kind"] == "ClusterNetworkPolicy"]
    assert len(added) == 100
    assert [o for o in with_cnp if o["kind"] != "ClusterNetworkPolicy"] == plain
    assert {o["apiVersion"] for o in added} == {"policy.networking.k8s.io/v1alpha2"}
    assert generate(SIZES["L+cnp"]) == with_cnp  # fixed seeds


def test_the_100_cluster_policies_parse_and_mix_tiers_actions_peers_and_ports() -> None:
    built = build_state(generate(SIZES["L+cnp"]))
    assert built.problems == ()
    policies = list(built.state.cluster_policies.values())
    rules = [rule for policy in policies for rule in (*policy.ingress, *policy.egress)]
    peers = [peer for rule in rules for peer in rule.peers or ()]
    ports = [port for rule in rules for port in rule.ports or ()]

    assert {policy.tier.value for policy in policies} == {"Admin", "Baseline"}
    ties = Counter((policy.tier, policy.priority) for policy in policies)
    assert max(ties.values()) > 1
    subjects = Counter(policy.subject.pod_selector is None for policy in policies if policy.subject)
    assert subjects[True] > 0 and subjects[False] > 0  # by namespaces, by pods
    assert {rule.action.value for rule in rules} == {"Accept", "Deny", "Pass"}
    assert any(isinstance(peer, SelectorPeer) and peer.pod_selector is None for peer in peers)
    assert any(isinstance(peer, SelectorPeer) and peer.pod_selector is not None for peer in peers)
    assert any(isinstance(peer, IPBlock) for peer in peers)
    assert any(isinstance(peer, NodePeer) for peer in peers)
    assert any(rule.ports is None for rule in rules)  # all traffic
    assert any(port.is_named for port in ports)
    assert any(port.end_port is not None for port in ports)
    assert any(not port.is_named and port.end_port is None for port in ports)
