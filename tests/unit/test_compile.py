"""The compiler's structure: determinism, naming, sharing, and the rules it renders.

What the rules *mean* is cross-checked against explain() in test_compile_vs_explain.py;
these tests pin the layout promises of compile.py (and, where the promise is the same,
of the incremental builder the agent runs).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from typing import Any

import pytest

from agent.compiler.config import CompilerConfig, NodeContext
from agent.compiler.node import compile_node
from agent.compiler.ports import MULTIPORT_LIMIT, PortMatch, merge_ranges
from agent.compiler.walk import Packet, validate, walk
from agent.model.objects import Protocol
from agent.policy.state import ClusterState
from agent.rules import MAX_CHAIN_NAME, Family, Rule, Ruleset
from tests.unit import builders as b
from tests.unit.builders import labels

NODE1 = ("172.18.0.1", "fc00::1")
Compiler = Callable[..., Ruleset]
COMPILERS: dict[str, Compiler] = {"fresh": compile_node}


def cluster(*objects: Any) -> ClusterState:
    return b.state_of(
        b.namespace("x", team="a"), b.namespace("y", team="b"), b.node("node1", *NODE1), *objects
    )


def rules_of(
    state: ClusterState,
    family: Family = Family.IPV4,
    config: CompilerConfig | None = None,
    compiler: Compiler = compile_node,
) -> Ruleset:
    ruleset = compiler(state, NodeContext("node1", state.node_addresses("node1")), family, config)
    validate(ruleset)
    return ruleset


def chains(ruleset: Ruleset, kind: str, prefix: str = "NPA") -> list[str]:
    return [name for name in ruleset.chains if name.startswith(f"{prefix}-{kind}-")]


def all_rules(ruleset: Ruleset) -> list[Rule]:
    return [rule for chain in ruleset.chains.values() for rule in chain.rules]


def rendered(ruleset: Ruleset) -> list[str]:
    return [line for chain in ruleset.chains.values() for line in chain.render_rules()]


def passes(
    ruleset: Ruleset, source: str, destination: str, port: int = 80, proto: str = "tcp"
) -> bool:
    packet = Packet(ipaddress.ip_address(source), ipaddress.ip_address(destination), proto, port)
    local = [ipaddress.ip_address(a) for a in NODE1]
    return walk(ruleset, packet, [a for a in local if a.version == packet.source.version]).accepted


def sample_state() -> ClusterState:
    return cluster(
        b.pod(
            "x/a",
            "10.0.1.1",
            "fd00::1:1",
            labels={"app": "web"},
            ports=[{"name": "http", "containerPort": 80}],
        ),
        b.pod("x/b", "10.0.1.2", "fd00::1:2", labels={"app": "db"}),
        b.pod("y/c", "10.0.2.1", "fd00::2:1", labels={"app": "web"}, node_name="node2"),
        b.policy(
            "x/web",
            podSelector=labels(app="web"),
            policyTypes=["Ingress", "Egress"],
            ingress=[
                {
                    "from": [
                        {"namespaceSelector": labels(team="b")},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}},
                    ],
                    "ports": [{"port": "http"}, {"port": 1000, "endPort": 2000}],
                },
            ],
            egress=[{"to": [{"podSelector": labels(app="db")}], "ports": [{"port": 5432}]}],
        ),
        b.policy("x/deny-all"),
    )


# --- determinism and naming (both compilers) -------------------------------------------


@pytest.mark.parametrize("name", sorted(COMPILERS))
@pytest.mark.parametrize("family", list(Family))
def test_same_state_twice_gives_identical_rulesets(name: str, family: Family) -> None:
    first = rules_of(sample_state(), family, compiler=COMPILERS[name])
    second = rules_of(sample_state(), family, compiler=COMPILERS[name])
    assert rendered(first) == rendered(second)
    assert list(first.chains) == list(second.chains)


@pytest.mark.parametrize("name", sorted(COMPILERS))
def test_object_order_does_not_change_the_rules(name: str) -> None:
    objects = [
        b.namespace("x"),
        b.node("node1", *NODE1),
        *(b.pod(f"x/p{i}", f"10.0.1.{i + 1}", labels={"app": f"a{i % 3}"}) for i in range(8)),
        *(
            b.policy(
                f"x/np{i}",
                podSelector=labels(app=f"a{i % 3}"),
                ingress=[{"from": [{"podSelector": labels(app=f"a{(i + 1) % 3}")}]}],
            )
            for i in range(4)
        ),
    ]
    shuffled = list(objects)
    random.Random(7).shuffle(shuffled)
    first = rules_of(b.state_of(*objects), compiler=COMPILERS[name])
    second = rules_of(b.state_of(*shuffled), compiler=COMPILERS[name])
    assert rendered(first) == rendered(second)


@pytest.mark.parametrize("name", sorted(COMPILERS))
@pytest.mark.parametrize("prefix", ["NPA", "ABCDEFGH", "k-8_s"])
def test_chain_names_fit_and_carry_the_prefix(name: str, prefix: str) -> None:
    config = CompilerConfig(chain_prefix=prefix)
    for family in Family:
        ruleset = rules_of(sample_state(), family, config, compiler=COMPILERS[name])
        assert ruleset.entry_chain == f"{prefix}-FORWARD"
        for chain in ruleset.chains:
            assert len(chain) <= MAX_CHAIN_NAME
            assert chain.startswith(f"{prefix}-")


@pytest.mark.parametrize("name", sorted(COMPILERS))
def test_every_rule_has_a_hashed_comment(name: str) -> None:
    for family in Family:
        ruleset = rules_of(sample_state(), family, compiler=COMPILERS[name])
        for chain in ruleset.chains.values():
            for rule, line in zip(chain.rules, chain.render_rules(), strict=True):
                assert rule.comment.strip()
                assert ' -m comment --comment "npa:' in line


@pytest.mark.parametrize("name", sorted(COMPILERS))
def test_mark_is_set_with_set_xmark_value_slash_mask(name: str) -> None:
    config = CompilerConfig(allow_mark=0x20000)
    ruleset = rules_of(sample_state(), config=config, compiler=COMPILERS[name])
    marks = [rule for rule in all_rules(ruleset) if rule.target == "MARK"]
    assert marks
    for rule in marks:
        assert rule.target_options in (
            (("--set-xmark", "0x20000/0x20000"),),
            (("--set-xmark", "0x0/0x20000"),),
        )
    matches = [m for rule in all_rules(ruleset) for m in rule.matches if m.module == "mark"]
    assert matches and all(m.options == (("--mark", "0x20000/0x20000"),) for m in matches)


def test_chain_hashes_change_with_content_and_chain() -> None:
    ruleset = rules_of(sample_state())
    hashes = [h for chain in ruleset.chains.values() for h in chain.hashes]
    assert len(hashes) == len(set(hashes))
    assert all(len(h) == 16 for h in hashes)


# --- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("mark", [0x4000, 0x8000, 0xC000, 0x3, 0x1001, 0, -0x1000, 1 << 32])
def test_mark_config_rejects_kube_proxy_bits_multiple_bits_and_non_32_bit(mark: int) -> None:
    with pytest.raises(ValueError):
        CompilerConfig(allow_mark=mark)


@pytest.mark.parametrize("mark", [0x1, 0x1000, 0x2000, 0x10000, 1 << 31])
def test_mark_config_accepts_single_free_bits(mark: int) -> None:
    assert CompilerConfig(allow_mark=mark).mark_text == f"{mark:#x}/{mark:#x}"


@pytest.mark.parametrize("prefix", ["", "ABCDEFGHI", "NP A", "NP/A", "NP!"])
def test_chain_prefix_config_is_validated(prefix: str) -> None:
    with pytest.raises(ValueError):
        CompilerConfig(chain_prefix=prefix)


# --- sharing ----------------------------------------------------------------------------


def test_one_policy_chain_serves_every_pod_it_selects() -> None:
    state = cluster(
        *(b.pod(f"x/p{i}", f"10.0.1.{i + 1}", labels={"app": "web"}) for i in range(3)),
        b.policy(
            "x/web", podSelector=labels(app="web"), ingress=[{"from": [{"namespaceSelector": {}}]}]
        ),
    )
    ruleset = rules_of(state)
    assert len(chains(ruleset, "PI")) == 1
    assert len(chains(ruleset, "I")) == 3  # one per pod
    assert len(chains(ruleset, "G")) == 1
    assert len(ruleset.chains["NPA-INGRESS"].rules) == 3


def test_peer_group_is_shared_by_policies_naming_the_same_peer() -> None:
    peer = {"podSelector": labels(app="db")}
    state = cluster(
        b.pod("x/a", "10.0.1.1", labels={"app": "web"}),
        b.pod("x/b", "10.0.1.2", labels={"app": "api"}),
        b.pod("x/db", "10.0.1.3", labels={"app": "db"}),
        b.policy("x/web", podSelector=labels(app="web"), ingress=[{"from": [peer]}]),
        b.policy(
            "x/api",
            podSelector=labels(app="api"),
            ingress=[{"from": [peer], "ports": [{"port": 80}]}],
        ),
    )
    ruleset = rules_of(state)
    assert len(chains(ruleset, "PI")) == 2
    (group,) = chains(ruleset, "G")
    assert [r.source for r in ruleset.chains[group].rules] == ["10.0.1.3/32"]


def _scaled(pods: int, policies: int) -> ClusterState:
    """Policy j selects the pods labelled a<j> and admits those labelled a<j+1>."""
    return cluster(
        *(
            b.pod(f"x/p{i}", f"10.0.{i // 250}.{i % 250 + 1}", labels={"app": f"a{i % policies}"})
            for i in range(pods)
        ),
        *(
            b.policy(
                f"x/np{j}",
                podSelector=labels(app=f"a{j}"),
                ingress=[
                    {
                        "from": [{"podSelector": labels(app=f"a{(j + 1) % policies}")}],
                        "ports": [{"port": 80 + j}],
                    }
                ],
            )
            for j in range(policies)
        ),
        b.policy("x/deny-all"),  # and one policy selecting every pod
    )


@pytest.mark.parametrize("name", sorted(COMPILERS))
def test_rule_count_grows_with_pods_plus_policies_not_their_product(name: str) -> None:
    small = rules_of(_scaled(40, 10), compiler=COMPILERS[name]).rule_count
    large = rules_of(_scaled(80, 20), compiler=COMPILERS[name]).rule_count
    # A per-pod-per-policy layout would quadruple; shared chains stay near double.
    assert large < 2.5 * small, (small, large)


def _everyone_selected(pods: int, policies: int) -> ClusterState:
    return cluster(
        *(b.pod(f"x/p{i}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(pods)),
        *(
            b.policy(f"x/np{j}", ingress=[{"from": [{"podSelector": labels(app=f"a{j}")}]}])
            for j in range(policies)
        ),
    )


def test_rule_count_stays_linear_when_every_policy_selects_every_pod() -> None:
    """Pods selected by the same policies share one verdict chain: no pods x policies."""
    small = rules_of(_everyone_selected(40, 10)).rule_count
    large = rules_of(_everyone_selected(80, 20)).rule_count
    assert large < 2.5 * small, (small, large)


# --- ipBlock ----------------------------------------------------------------------------


def test_ip_block_with_except_returns_per_except_then_allows_the_cidr() -> None:
    state = cluster(
        b.pod("x/a", "10.0.1.1"),
        b.policy(
            "x/np",
            ingress=[
                {
                    "from": [
                        {
                            "ipBlock": {
                                "cidr": "10.0.0.0/8",
                                "except": ["10.2.0.0/16", "10.1.0.0/16"],
                            }
                        }
                    ]
                }
            ],
        ),
    )
    ruleset = rules_of(state)
    (block,) = chains(ruleset, "B")
    block_rules = ruleset.chains[block].rules
    assert [(r.source, r.target) for r in block_rules] == [
        ("10.1.0.0/16", "RETURN"),
        ("10.2.0.0/16", "RETURN"),
        ("10.0.0.0/8", "MARK"),
    ]
    assert block_rules[-1].target_options == (("--set-xmark", "0x1000/0x1000"),)


def test_ip_block_without_except_needs_no_block_chain() -> None:
    state = cluster(
        b.pod("x/a", "10.0.1.1"),
        b.policy("x/np", ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]),
    )
    ruleset = rules_of(state)
    assert chains(ruleset, "B") == []
    (policy_chain,) = chains(ruleset, "PI")
    assert [(r.source, r.target) for r in ruleset.chains[policy_chain].rules] == [
        ("10.0.0.0/8", "MARK")
    ]


def test_ipv4_blocks_are_absent_from_the_ipv6_ruleset() -> None:
    state = cluster(
        b.pod("x/a", "10.0.1.1", "fd00::1:1"),
        b.policy(
            "x/np",
            ingress=[
                {
                    "from": [
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                        {"ipBlock": {"cidr": "fd00::/64"}},
                    ]
                }
            ],
        ),
    )
    v6 = rules_of(state, Family.IPV6)
    text = "\n".join(rendered(v6))
    assert "10.0.0.0/8" not in text and "10.1.0.0/16" not in text
    assert "fd00::/64" in text
    v4 = "\n".join(rendered(rules_of(state, Family.IPV4)))
    assert "fd00::/64" not in v4


@pytest.mark.parametrize("name", sorted(COMPILERS))
def test_rule_whose_peers_are_all_of_the_other_family_allows_nothing_in_this_one(name: str) -> None:
    state = cluster(
        b.pod("x/a", "10.0.1.1", "fd00::1:1"),
        b.policy("x/np", ingress=[{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]),
    )
    v6 = rules_of(state, Family.IPV6, compiler=COMPILERS[name])
    assert not passes(v6, "2001:db8::1", "fd00::1:1")  # not "no peers left, so all"
    v4 = rules_of(state, Family.IPV4, compiler=COMPILERS[name])
    assert passes(v4, "192.168.1.1", "10.0.1.1")


# --- named ports --------------------------------------------------------------------------


def test_ingress_named_ports_resolve_per_local_pod() -> None:
    state = cluster(
        b.pod(
            "x/a", "10.0.1.1", labels={"app": "web"}, ports=[{"name": "http", "containerPort": 80}]
        ),
        b.pod(
            "x/b",
            "10.0.1.2",
            labels={"app": "web"},
            ports=[{"name": "http", "containerPort": 8080}],
        ),
        b.pod(
            "x/c", "10.0.1.3", labels={"app": "web"}, ports=[{"name": "http", "containerPort": 80}]
        ),
        b.policy("x/np", podSelector=labels(app="web"), ingress=[{"ports": [{"port": "http"}]}]),
    )
    ruleset = rules_of(state)
    policy_chains = chains(ruleset, "PI")
    assert len(policy_chains) == 2  # a and c share (http=80), b has its own (http=8080)
    ports = sorted(
        m.options for name in policy_chains for r in ruleset.chains[name].rules for m in r.matches
    )
    assert ports == [(("--dport", "80"),), (("--dport", "8080"),)]
    assert passes(ruleset, "10.0.2.1", "10.0.1.2", 8080)
    assert not passes(ruleset, "10.0.2.1", "10.0.1.2", 80)


def test_ingress_named_port_the_pod_lacks_leaves_the_pod_denied() -> None:
    state = cluster(
        b.pod("x/a", "10.0.1.1"),
        b.policy("x/np", ingress=[{"ports": [{"port": "http"}]}]),
    )
    ruleset = rules_of(state)
    assert chains(ruleset, "PI") == []
    (pod_chain,) = chains(ruleset, "I")
    (policy_set,) = chains(ruleset, "SI")
    assert [r.target for r in ruleset.chains[pod_chain].rules] == ["RETURN", policy_set]  # self
    assert [r.target for r in ruleset.chains[policy_set].rules] == ["DROP"]  # nothing allows


def test_egress_named_ports_split_destinations_by_number() -> None:
    state = cluster(
        b.pod("x/client", "10.0.1.1", labels={"app": "client"}),
        b.pod(
            "x/s1",
            "10.0.1.11",
            labels={"app": "srv"},
            ports=[{"name": "http", "containerPort": 80}],
        ),
        b.pod(
            "x/s2",
            "10.0.1.12",
            labels={"app": "srv"},
            ports=[{"name": "http", "containerPort": 8080}],
        ),
        b.pod(
            "x/s3",
            "10.0.1.13",
            labels={"app": "srv"},
            ports=[{"name": "http", "containerPort": 80}],
        ),
        b.pod("x/s4", "10.0.1.14", labels={"app": "srv"}),
        b.policy(
            "x/np",
            podSelector=labels(app="client"),
            policyTypes=["Egress"],
            egress=[{"to": [{"podSelector": labels(app="srv")}], "ports": [{"port": "http"}]}],
        ),
    )
    ruleset = rules_of(state)
    (policy_chain,) = chains(ruleset, "PE")
    by_port = {
        rule.matches[0].options[0][1]: sorted(
            r.destination for r in ruleset.chains[rule.target].rules
        )
        for rule in ruleset.chains[policy_chain].rules
        if rule.matches and rule.matches[0].module == "tcp"
    }
    assert by_port == {"80": ["10.0.1.11/32", "10.0.1.13/32"], "8080": ["10.0.1.12/32"]}


def test_named_only_egress_rule_towards_a_non_pod_block_renders_nothing() -> None:
    state = cluster(
        b.pod("x/client", "10.0.1.1"),
        b.policy(
            "x/np",
            policyTypes=["Egress"],
            egress=[{"to": [{"ipBlock": {"cidr": "192.168.0.0/16"}}], "ports": [{"port": "http"}]}],
        ),
    )
    ruleset = rules_of(state)
    assert chains(ruleset, "PE") == []
    assert "192.168.0.0/16" not in "\n".join(rendered(ruleset))
    assert not passes(ruleset, "10.0.1.1", "192.168.1.1", 80)


# --- which pods appear --------------------------------------------------------------------


def test_host_network_and_finished_pods_are_absent_from_groups_and_dispatch() -> None:
    state = cluster(
        b.pod("x/a", "10.0.1.1", labels={"app": "web"}),
        b.pod("x/done", "10.0.1.2", labels={"app": "web"}, phase="Succeeded"),
        b.pod("x/failed", "10.0.1.3", labels={"app": "web"}, phase="Failed"),
        b.pod("x/host", "172.18.0.1", labels={"app": "web"}, host_network=True),
        b.policy(
            "x/np",
            podSelector=labels(app="web"),
            ingress=[{"from": [{"podSelector": labels(app="web")}]}],
        ),
    )
    text = "\n".join(rendered(rules_of(state)))
    for gone in ("10.0.1.2", "10.0.1.3", "x/done", "x/failed", "x/host"):
        assert gone not in text
    assert "-A NPA-INGRESS -d 10.0.1.1/32" in text


def test_non_isolated_local_pods_have_no_dispatch_entry() -> None:
    state = cluster(
        b.pod("x/isolated", "10.0.1.1", labels={"app": "web"}),
        b.pod("x/free", "10.0.1.2", labels={"app": "db"}),
        b.pod("x/remote", "10.0.1.3", labels={"app": "web"}, node_name="node2"),
        b.policy("x/np", podSelector=labels(app="web")),
    )
    ruleset = rules_of(state)
    assert [r.destination for r in ruleset.chains["NPA-INGRESS"].rules] == ["10.0.1.1/32"]
    assert ruleset.chains["NPA-EGRESS"].rules == ()


def test_pod_without_an_address_of_the_family_is_not_dispatched_there() -> None:
    state = cluster(b.pod("x/v4", "10.0.1.1"), b.policy("x/np"))
    assert rules_of(state, Family.IPV6).chains["NPA-INGRESS"].rules == ()


# --- entry chain --------------------------------------------------------------------------


def test_ipv6_lets_neighbour_discovery_through() -> None:
    v6 = rules_of(cluster(), Family.IPV6)
    entry = v6.chains[v6.entry_chain].rules
    types = [int(r.matches[0].options[0][1]) for r in entry if r.protocol == "ipv6-icmp"]
    assert types == [133, 134, 135, 136, 137]
    assert all(r.target == "RETURN" for r in entry if r.protocol == "ipv6-icmp")
    v4 = rules_of(cluster(), Family.IPV4)
    assert not any(r.protocol for r in v4.chains[v4.entry_chain].rules)


def test_ipv6_neighbour_discovery_passes_an_isolated_pod() -> None:
    state = cluster(
        b.pod("x/a", "10.0.1.1", "fd00::1:1"), b.policy("x/np", policyTypes=["Ingress", "Egress"])
    )
    v6 = rules_of(state, Family.IPV6)
    for icmp_type in (135, 136):
        packet = Packet(
            ipaddress.ip_address("fd00::1:1"),
            ipaddress.ip_address("fd00::9"),
            "ipv6-icmp",
            icmp_type=icmp_type,
        )
        assert walk(v6, packet).accepted
    echo = Packet(
        ipaddress.ip_address("fd00::1:1"),
        ipaddress.ip_address("fd00::9"),
        "ipv6-icmp",
        icmp_type=128,
    )
    assert not walk(v6, echo).accepted


def test_established_traffic_returns_first() -> None:
    ruleset = rules_of(cluster(b.pod("x/a", "10.0.1.1"), b.policy("x/np")))
    first = ruleset.chains[ruleset.entry_chain].rules[0]
    assert first.target == "RETURN"
    assert first.matches[0].module == "conntrack"
    reply = Packet(
        ipaddress.ip_address("192.168.1.1"),
        ipaddress.ip_address("10.0.1.1"),
        "udp",
        5353,
        ctstate="ESTABLISHED",
    )
    assert walk(ruleset, reply).accepted


def test_own_node_reaches_an_isolated_pod() -> None:
    ruleset = rules_of(cluster(b.pod("x/a", "10.0.1.1"), b.policy("x/np")))
    assert passes(ruleset, NODE1[0], "10.0.1.1")
    assert not passes(ruleset, "172.18.0.2", "10.0.1.1")


# --- ports --------------------------------------------------------------------------------


def test_multiport_chunks_hold_at_most_15_ports_ranges_counting_2() -> None:
    singles = PortMatch(Protocol.TCP, tuple((p, p) for p in range(100, 132, 2)))  # 16 ports
    fields = singles.rule_fields()
    assert [len(f[1][0].options[0][1].split(",")) for f in fields] == [15, 1]
    assert fields[1][1][0].module == "tcp"  # a single port needs no multiport
    ranges = PortMatch(Protocol.UDP, tuple((p, p + 1) for p in range(1000, 1080, 10)))  # 8 ranges
    fields = ranges.rule_fields()
    assert [f[1][0].options[0][1].count(":") for f in fields] == [7, 1]
    assert all(f[0] == "udp" for f in fields)
    assert MULTIPORT_LIMIT == 15


def test_many_ports_in_a_policy_still_allow_each_of_them() -> None:
    ports = [{"port": p} for p in range(100, 140, 2)] + [{"port": 5000, "endPort": 5010}]
    state = cluster(b.pod("x/a", "10.0.1.1"), b.policy("x/np", ingress=[{"ports": ports}]))
    ruleset = rules_of(state)
    for port in (100, 138, 5000, 5010):
        assert passes(ruleset, "10.0.2.1", "10.0.1.1", port)
    for port in (101, 140, 5011):
        assert not passes(ruleset, "10.0.2.1", "10.0.1.1", port)


def test_port_ranges_are_merged() -> None:
    assert merge_ranges([(80, 80), (81, 90), (100, 100), (85, 95), (99, 99)]) == (
        (80, 95),
        (99, 100),
    )


def test_protocol_only_and_numbered_ports_of_one_protocol_collapse_to_all() -> None:
    state = cluster(
        b.pod("x/a", "10.0.1.1"),
        b.policy(
            "x/np", ingress=[{"ports": [{"protocol": "UDP"}, {"protocol": "UDP", "port": 53}]}]
        ),
    )
    ruleset = rules_of(state)
    (policy_chain,) = chains(ruleset, "PI")
    assert [(r.protocol, r.matches) for r in ruleset.chains[policy_chain].rules] == [("udp", ())]


# --- verdict ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COMPILERS))
@pytest.mark.parametrize(
    ("family", "reject_with"),
    [(Family.IPV4, "icmp-port-unreachable"), (Family.IPV6, "icmp6-port-unreachable")],
)
def test_reject_option_rejects_instead_of_dropping(
    name: str, family: Family, reject_with: str
) -> None:
    state = cluster(b.pod("x/a", "10.0.1.1", "fd00::1:1"), b.policy("x/np"))
    rejecting = rules_of(state, family, CompilerConfig(reject=True), compiler=COMPILERS[name])
    denials = [r for r in all_rules(rejecting) if r.target in ("DROP", "REJECT")]
    assert denials and all(r.target == "REJECT" for r in denials)
    assert all(r.target_options == (("--reject-with", reject_with),) for r in denials)
    dropping = rules_of(state, family, compiler=COMPILERS[name])
    assert {r.target for r in all_rules(dropping) if r.target in ("DROP", "REJECT")} == {"DROP"}
