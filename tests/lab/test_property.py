"""Property: for random NetworkPolicies and ClusterNetworkPolicies over the fixed e2e
topology, real traffic through the agent's rules (nft backend) equals
``agent.policy.explain`` for every probed cell.

Hypothesis draws 1-3 NetworkPolicies per example from the lab's own vocabulary:
pod/namespace selectors (matchLabels and matchExpressions In/NotIn/Exists/DoesNotExist,
incl. the ``kubernetes.io/metadata.name`` label and a key no object carries), peers alone
and ANDed, ipBlocks over pod ranges, single pods, the wan (nodes + ext) and everything,
with excepts, ports numeric / named (matching and mismatching protocol) / protocol-only /
``{}`` / endPort ranges, and random or absent policyTypes, ``[]`` and missing lists.

Next to them, 0-3 ClusterNetworkPolicies: Admin or Baseline, a few priorities (so ties,
broken by name, happen), a namespaces or pods subject, rules with a random action over
namespaces, pods, networks (the same CIDRs, 0.0.0.0/0 and ::/0) and nodes (by hostname
label) peers, protocols by number, range or destinationNamedPort, or none; now and then a
rule the agent cannot read (domainNames, an unknown action), which denies in its place.
Pods also probe node-2's address, where nodes peers decide.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agent.policy.state import build_state
from tests.lab.prober import Probe, Verdict
from tests.lab.scenarios_support import EXT, PODS, Scenario, cells, netpol
from tests.lab.topology import Lab

pytestmark = pytest.mark.lab

MAX_EXAMPLES = 25
NAME_LABEL = "kubernetes.io/metadata.name"

SOURCES = [*PODS, EXT, "node-1"]
DESTINATIONS = [*PODS, EXT]
PROBES: list[Probe] = (
    cells(SOURCES, DESTINATIONS, [(80, "TCP"), (81, "TCP"), (81, "UDP")])
    + cells(SOURCES, DESTINATIONS, [(80, "TCP"), (80, "SCTP")], (6,))
    # A node serves TCP and UDP only; from node-1's pods the packet crosses node-1.
    + cells(PODS, ["node-2"], [(80, "TCP"), (81, "UDP")], (4, 6))
)


# ------------------------------------------------------------------------------ strategies
def _expression(keys_values: dict[str, list[str]]) -> st.SearchStrategy[dict[str, Any]]:
    keys = sorted(keys_values)
    with_values = st.builds(
        lambda key, op, data: {"key": key, "operator": op, "values": data},
        st.sampled_from(keys),
        st.sampled_from(["In", "NotIn"]),
        st.just(None),
    ).flatmap(
        lambda e: st.lists(
            st.sampled_from(keys_values[e["key"]]), min_size=1, max_size=2, unique=True
        ).map(lambda vs: {**e, "values": vs})
    )
    existence = st.builds(
        lambda key, op: {"key": key, "operator": op},
        st.sampled_from([*keys, "tier"]),
        st.sampled_from(["Exists", "DoesNotExist"]),
    )
    return st.one_of(with_values, existence)


def _selector(keys_values: dict[str, list[str]]) -> st.SearchStrategy[dict[str, Any]]:
    match_labels = st.sampled_from(sorted(keys_values)).flatmap(
        lambda k: st.sampled_from(keys_values[k]).map(lambda v: {"matchLabels": {k: v}})
    )
    expressions = st.lists(_expression(keys_values), min_size=1, max_size=2).map(
        lambda es: {"matchExpressions": es}
    )
    return st.one_of(st.just({}), match_labels, expressions)


POD_SELECTOR = _selector({"pod": ["a", "b", "c"]})
NS_SELECTOR = _selector({"ns": ["x", "y", "z"], NAME_LABEL: ["x", "y", "z"]})


def _blocks(lab: Lab) -> list[tuple[str, list[str]]]:
    """(cidr, candidate excepts) over the lab's addresses, v4 and v6."""
    assert lab.external is not None
    n1, n2 = lab.node("node-1"), lab.node("node-2")
    xa, yb = lab.pod("x/a"), lab.pod("y/b")
    return [
        (n1.pod_cidr_v4, [f"{xa.ipv4}/32", "10.244.1.8/29"]),
        (n2.pod_cidr_v4, [f"{yb.ipv4}/32"]),
        ("10.244.0.0/16", [n2.pod_cidr_v4, f"{yb.ipv4}/32"]),
        (f"{lab.pod('z/c').ipv4}/32", []),
        (f"{lab.external.ipv4}/32", []),
        ("192.168.250.0/24", [f"{lab.external.ipv4}/32", f"{n1.wan_v4}/32"]),
        ("0.0.0.0/0", [n1.pod_cidr_v4, f"{lab.external.ipv4}/32"]),
        (n1.pod_cidr_v6, [f"{xa.ipv6}/128"]),
        (n2.pod_cidr_v6, []),
        (
            str(ipaddress.ip_network(f"{lab.external.ipv6}/64", strict=False)),
            [f"{lab.external.ipv6}/128"],
        ),
        ("::/0", [n2.pod_cidr_v6]),
    ]


def _ip_block(lab: Lab) -> st.SearchStrategy[dict[str, Any]]:
    def with_excepts(item: tuple[str, list[str]]) -> st.SearchStrategy[dict[str, Any]]:
        cidr, candidates = item
        if not candidates:
            return st.just({"ipBlock": {"cidr": cidr}})
        return st.lists(st.sampled_from(candidates), max_size=2, unique=True).map(
            lambda ex: {"ipBlock": {"cidr": cidr, **({"except": ex} if ex else {})}}
        )

    return st.sampled_from(_blocks(lab)).flatmap(with_excepts)


def _peer(lab: Lab) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        POD_SELECTOR.map(lambda s: {"podSelector": s}),
        NS_SELECTOR.map(lambda s: {"namespaceSelector": s}),
        st.builds(
            lambda n, p: {"namespaceSelector": n, "podSelector": p}, NS_SELECTOR, POD_SELECTOR
        ),
        _ip_block(lab),
    )


PORT_ENTRY = st.sampled_from(
    [
        {"port": 80},
        {"port": 81, "protocol": "TCP"},
        {"port": 81, "protocol": "UDP"},
        {"protocol": "UDP"},
        {"protocol": "TCP"},
        {"protocol": "SCTP"},
        {"port": 80, "protocol": "SCTP"},
        {},
        {"port": "serve-80-tcp"},
        {"port": "serve-81-udp", "protocol": "UDP"},
        {"port": "serve-81-udp"},  # name served only as UDP: matches nothing for TCP
        {"port": "serve-80-sctp", "protocol": "SCTP"},
        {"port": 79, "endPort": 80},
        {"port": 81, "endPort": 90, "protocol": "UDP"},
    ]
)


def _list_field(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """None = field missing; [] and a non-empty list otherwise."""
    return st.one_of(st.none(), st.just([]), st.lists(inner, min_size=1, max_size=2))


def _rule(lab: Lab, peers_key: str) -> st.SearchStrategy[dict[str, Any]]:
    def build(peers: list[Any] | None, ports: list[Any] | None) -> dict[str, Any]:
        rule: dict[str, Any] = {}
        if peers is not None:
            rule[peers_key] = peers
        if ports is not None:
            rule["ports"] = ports
        return rule

    return st.builds(build, _list_field(_peer(lab)), _list_field(PORT_ENTRY))


def _policy(lab: Lab, index: int) -> st.SearchStrategy[dict[str, Any]]:
    def build(
        ns: str,
        selector: dict[str, Any],
        types: list[str] | None,
        ingress: list[Any] | None,
        egress: list[Any] | None,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {"podSelector": selector}
        if types is not None:
            spec["policyTypes"] = types
        if ingress is not None:
            spec["ingress"] = ingress
        if egress is not None:
            spec["egress"] = egress
        return netpol(ns, f"p{index}", spec)

    types = st.one_of(
        st.none(),
        st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]),
    )
    rules_in = st.one_of(st.none(), st.lists(_rule(lab, "from"), max_size=2))
    rules_out = st.one_of(st.none(), st.lists(_rule(lab, "to"), max_size=2))
    return st.builds(build, st.sampled_from("xyz"), POD_SELECTOR, types, rules_in, rules_out)


def _policies(lab: Lab) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.integers(min_value=1, max_value=3).flatmap(
        lambda n: st.tuples(*(_policy(lab, i) for i in range(n))).map(list)
    )


# --------------------------------------------------------------- ClusterNetworkPolicy
HOSTNAME = "kubernetes.io/hostname"
NODE_SELECTOR = _selector({HOSTNAME: ["node-1", "node-2"]})
CLUSTER_PROTOCOLS = [
    {"tcp": {"destinationPort": {"number": 80}}},
    {"tcp": {"destinationPort": {"number": 81}}},
    {"udp": {"destinationPort": {"number": 81}}},
    {"sctp": {"destinationPort": {"number": 80}}},
    {"tcp": {"destinationPort": {"range": {"start": 79, "end": 80}}}},
    {"udp": {"destinationPort": {"range": {"start": 81, "end": 90}}}},
]
NAMED_PROTOCOLS = [
    {"destinationNamedPort": "serve-80-tcp"},
    {"destinationNamedPort": "serve-81-udp"},
    {"destinationNamedPort": "serve-80-sctp"},
    {"destinationNamedPort": "serve-82-tcp"},  # served by no pod
]
UNREADABLE = ("domainNames", "action")  # how a rule is broken now and then


def _namespaced_pods() -> st.SearchStrategy[dict[str, Any]]:
    def build(ns: dict[str, Any] | None, pods: dict[str, Any]) -> dict[str, Any]:
        return (
            {"podSelector": pods} if ns is None else {"namespaceSelector": ns, "podSelector": pods}
        )

    return st.builds(build, st.one_of(st.none(), NS_SELECTOR), POD_SELECTOR)


def _networks(lab: Lab) -> st.SearchStrategy[list[str]]:
    cidrs = sorted({cidr for cidr, _ in _blocks(lab)} | {"0.0.0.0/0", "::/0"})
    return st.lists(st.sampled_from(cidrs), min_size=1, max_size=2, unique=True)


def _cluster_peer(lab: Lab, egress: bool) -> st.SearchStrategy[dict[str, Any]]:
    peers = [
        NS_SELECTOR.map(lambda s: {"namespaces": s}),
        _namespaced_pods().map(lambda p: {"pods": p}),
    ]
    if egress:
        peers += [
            _networks(lab).map(lambda n: {"networks": n}),
            NODE_SELECTOR.map(lambda s: {"nodes": s}),
        ]
    return st.one_of(*peers)


@st.composite
def _cluster_rule(draw: st.DrawFn, lab: Lab, egress: bool) -> dict[str, Any]:
    peers = draw(st.lists(_cluster_peer(lab, egress), min_size=1, max_size=2))
    rule: dict[str, Any] = {
        "action": draw(st.sampled_from(["Accept", "Deny", "Pass"])),
        "to" if egress else "from": peers,
    }
    # The CRD allows no named port with networks or nodes peers (they serve none).
    addresses = any("networks" in p or "nodes" in p for p in peers)
    choices = CLUSTER_PROTOCOLS if addresses else CLUSTER_PROTOCOLS + NAMED_PROTOCOLS
    if draw(st.booleans()):
        rule["protocols"] = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=2))
    broken = draw(st.sampled_from([None] * 20 + list(UNREADABLE)))
    if broken == "domainNames" and egress:
        peers.append({"domainNames": ["example.com"]})
    elif broken is not None:
        rule["action"] = "Allow"
    return rule


@st.composite
def _cluster_policy(draw: st.DrawFn, lab: Lab, index: int) -> dict[str, Any]:
    subject = draw(
        st.one_of(
            NS_SELECTOR.map(lambda s: {"namespaces": s}),
            _namespaced_pods().map(lambda p: {"pods": p}),
        )
    )
    spec: dict[str, Any] = {
        "tier": draw(st.sampled_from(["Admin", "Baseline"])),
        "priority": draw(st.sampled_from([0, 5, 5, 10])),
        "subject": subject,
    }
    for section, egress in (("ingress", False), ("egress", True)):
        rules = draw(st.one_of(st.none(), st.lists(_cluster_rule(lab, egress), max_size=2)))
        if rules is not None:
            spec[section] = rules
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": f"cnp{index}"},
        "spec": spec,
    }


def _cluster_policies(lab: Lab) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.integers(min_value=0, max_value=3).flatmap(
        lambda n: st.tuples(*(_cluster_policy(lab, i) for i in range(n))).map(list)
    )


# ------------------------------------------------------------------------------ the property
def test_random_policies_dataplane_equals_explain(clean_lab: Lab) -> None:
    lab = clean_lab
    sc = Scenario(lab, "nft")
    runs: list[int] = []
    allowed_counts: list[int] = []

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),  # a shrink would re-apply dozens of times
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(policies=_policies(lab), cluster_policies=_cluster_policies(lab))
    def check(policies: list[dict[str, Any]], cluster_policies: list[dict[str, Any]]) -> None:
        policies = [*policies, *cluster_policies]
        lab.reset_firewall()
        # A rule drawn unreadable on purpose is reported (and denies in its place).
        sc.apply(policies, problems_expected=bool(build_state(policies).problems))
        m = sc.run(PROBES)
        oracle = {p: Verdict.ALLOWED if sc.oracle(p) else Verdict.DENIED for p in m}
        runs.append(len(m))
        allowed_counts.append(sum(1 for v in oracle.values() if v is Verdict.ALLOWED))
        mismatches = m.diff(oracle)
        if mismatches:
            detail = "\n".join(f"  {x}" for x in mismatches[:40])
            raise AssertionError(
                f"case {len(runs)}: {len(mismatches)} of {len(m)} cells differ from explain\n"
                f"{detail}\npolicies:\n{yaml.safe_dump_all(policies, sort_keys=False)}"
            )

    try:
        check()
    finally:
        print(
            f"\nproperty: {len(runs)} cases, {sum(runs)} probes, allowed per case {allowed_counts}"
        )
    assert len(runs) >= MAX_EXAMPLES * 0.8, f"only {len(runs)} cases ran"
    # the property says little unless many cases actually deny something
    denying = sum(1 for allowed in allowed_counts if allowed < len(PROBES))
    assert denying >= len(runs) // 3, f"only {denying} of {len(runs)} cases deny any cell"
