"""--isolate-unknown-pod-ips: traffic to and from an address of the node's pod CIDRs that
no pod the agent knows holds yet is dropped, after replies and the node's own traffic.

A pod's address reaches the API late (the kubelet reports it once the sandbox runs), so
between its first packet and the agent's next sync a new pod is nobody: with this flag,
nobody in the pod CIDR may talk. Once the pod is known, its policies (or none) decide.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from typing import Any

import pytest

from agent.compiler.config import CompilerConfig, NodeContext, pod_cidrs
from agent.compiler.node import NodeCompiler, compile_node
from agent.compiler.walk import Packet, validate, walk
from agent.config import AgentConfig, ConfigError, parse_pod_cidr
from agent.control.outcome import Cause
from agent.control.reconciler import Reconciler, ReconcilerConfig
from agent.control.source import Change, Kind, trim
from agent.model.parse import parse_node
from agent.policy.index import ClusterIndex
from agent.policy.state import ClusterState, build_state
from agent.rules import Family, Ruleset
from tests.unit import builders as b
from tests.unit.test_reconciler import Dataplane, Source

ISOLATE = CompilerConfig(isolate_unknown_pod_ips=True)
NODE_IP = ipaddress.ip_address("192.168.0.1")
V4_CIDR = ipaddress.ip_network("10.244.1.0/24")
V6_CIDR = ipaddress.ip_network("fd00:10:244:1::/64")
BRIDGE_IP = ipaddress.ip_address("10.244.1.1")  # the node's address on its pod bridge
NODE = NodeContext(
    "node1", (NODE_IP, BRIDGE_IP, ipaddress.ip_address("fd00::1")), (V4_CIDR, V6_CIDR)
)


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


def state(*objects: Any) -> ClusterState:
    return b.state_of(b.namespace("x"), *objects)


def compiled(st: ClusterState, family: Family = Family.IPV4, **node: Any) -> Ruleset:
    context = NodeContext(
        "node1", node.get("addresses", NODE.addresses), node.get("cidrs", NODE.pod_cidrs)
    )
    ruleset = compile_node(st, context, family, ISOLATE)
    validate(ruleset)
    return ruleset


def passes(ruleset: Ruleset, source: str, destination: str, **packet: Any) -> bool:
    version = ruleset.family.version
    local = [a for a in NODE.addresses if a.version == version]
    sent = Packet(ip(source), ip(destination), packet.pop("protocol", "tcp"), 80, **packet)
    return walk(ruleset, sent, local).accepted


KNOWN = b.pod("x/known", "10.244.1.10", "fd00:10:244:1::a")
REMOTE = b.pod("x/remote", "10.244.2.10", node_name="node2")


# --- the rules -------------------------------------------------------------------------


def test_unknown_addresses_are_dropped_both_ways_known_ones_go_on_to_their_policies() -> None:
    ruleset = compiled(state(KNOWN, REMOTE))
    new = "10.244.1.99"  # in the pod CIDR, held by no pod the agent knows
    assert not passes(ruleset, new, "10.244.2.10")  # from the new pod, to a remote pod
    assert not passes(ruleset, "10.244.2.10", new)  # to the new pod, from a remote pod
    assert not passes(ruleset, "10.244.1.10", new)  # between pods of the node
    assert not passes(ruleset, new, "10.244.1.10")
    assert not passes(ruleset, new, "8.8.8.8", protocol="udp")  # anywhere
    assert passes(ruleset, "10.244.1.10", "10.244.2.10")  # known, isolated by nothing
    assert passes(ruleset, "10.244.2.10", "10.244.1.10")
    assert passes(ruleset, "10.244.7.1", "8.8.8.8")  # outside the pod CIDR: not ours


def test_replies_and_the_node_itself_still_pass() -> None:
    ruleset = compiled(state(KNOWN))
    new = "10.244.1.99"
    assert passes(ruleset, new, "10.244.2.10", ctstate="ESTABLISHED")
    assert passes(ruleset, "10.244.2.10", new, ctstate="RELATED")
    assert passes(ruleset, str(NODE_IP), new)  # kubelet probes reach a pod before it is known
    assert passes(ruleset, "10.244.1.1", new)  # the bridge's address is the node's too
    # IPv6 neighbour discovery never breaks.
    v6 = compiled(state(KNOWN), Family.IPV6)
    solicit = Packet(ip("fd00:10:244:1::63"), ip("ff02::1:ff00:a"), "ipv6-icmp", icmp_type=135)
    assert walk(v6, solicit).accepted


def test_a_known_pod_under_a_deny_all_is_judged_by_its_policy() -> None:
    deny_all = b.policy("x/deny", policyTypes=["Ingress", "Egress"])
    ruleset = compiled(state(KNOWN, REMOTE, deny_all))
    assert not passes(ruleset, "10.244.1.10", "10.244.2.10")
    open_ruleset = compiled(state(KNOWN, REMOTE))
    assert passes(open_ruleset, "10.244.1.10", "10.244.2.10")


def test_revoked_flows_are_dropped_before_anything_and_replies_before_unknown_addresses() -> None:
    strict = CompilerConfig(isolate_unknown_pod_ips=True, revoked_mark=0x2000)
    ruleset = compile_node(state(KNOWN), NODE, Family.IPV4, strict)
    targets = [rule.target for rule in ruleset.chains[ruleset.entry_chain].rules]
    assert targets[:2] == ["DROP", "RETURN"]  # revoked connmark, then established
    unknown = [i for i, t in enumerate(targets) if t.startswith("NPA-UNKNOWN-")]
    node_exemptions = [
        i
        for i, rule in enumerate(ruleset.chains[ruleset.entry_chain].rules)
        if "from this node" in rule.comment
    ]
    policies = targets.index("NPA-EGRESS")
    assert max(node_exemptions) < min(unknown) and max(unknown) < policies
    revoked = Packet(
        ip("10.244.1.10"), ip("10.244.2.10"), "tcp", 80, ctstate="ESTABLISHED", ctmark=0x2000
    )
    assert not walk(ruleset, revoked).accepted


def test_the_entry_chain_jumps_once_per_pod_cidr_of_its_family() -> None:
    ruleset = compiled(state(KNOWN))
    entry = [r.render_body() for r in ruleset.chains["NPA-FORWARD"].rules]
    assert "-s 10.244.1.0/24 -j NPA-UNKNOWN-EGRESS" in entry
    assert "-d 10.244.1.0/24 -j NPA-UNKNOWN-INGRESS" in entry
    assert not any("fd00" in rule for rule in entry)
    v6 = [r.render_body() for r in compiled(state(KNOWN), Family.IPV6).chains["NPA-FORWARD"].rules]
    assert "-s fd00:10:244:1::/64 -j NPA-UNKNOWN-EGRESS" in v6


def test_a_short_list_is_one_chain_returning_for_each_known_address_then_dropping() -> None:
    ruleset = compiled(state(KNOWN, b.pod("x/other", "10.244.1.11")))
    assert [r.render_body() for r in ruleset.chains["NPA-UNKNOWN-EGRESS"].rules] == [
        "-s 10.244.1.10/32 -j RETURN",
        "-s 10.244.1.11/32 -j RETURN",
        "-j DROP",
    ]
    assert [r.render_body() for r in ruleset.chains["NPA-UNKNOWN-INGRESS"].rules] == [
        "-d 10.244.1.10/32 -j RETURN",
        "-d 10.244.1.11/32 -j RETURN",
        "-j DROP",
    ]
    comments = [r.comment for r in ruleset.chains["NPA-UNKNOWN-EGRESS"].rules]
    assert comments[0] == "held by x/known"


def test_reject_rejects_unknown_addresses_too() -> None:
    config = CompilerConfig(isolate_unknown_pod_ips=True, reject=True)
    ruleset = compile_node(state(KNOWN), NODE, Family.IPV4, config)
    assert ruleset.chains["NPA-UNKNOWN-INGRESS"].rules[-1].target == "REJECT"


def test_without_the_flag_or_without_a_pod_cidr_nothing_changes() -> None:
    st = state(KNOWN)
    plain = compile_node(st, NODE, Family.IPV4, CompilerConfig())
    no_cidr = compile_node(st, NodeContext("node1", NODE.addresses), Family.IPV4, ISOLATE)
    assert plain.chains == no_cidr.chains
    assert not any("UNKNOWN" in name for name in plain.chains)
    v6_only = compile_node(
        st, NodeContext("node1", NODE.addresses, (V6_CIDR,)), Family.IPV4, ISOLATE
    )
    assert v6_only.chains == plain.chains


def test_finished_and_host_network_pods_make_no_address_known() -> None:
    done = b.pod("x/done", "10.244.1.20", phase="Succeeded")
    host = b.pod("x/host", "10.244.1.21", host_network=True)
    elsewhere = b.pod("x/elsewhere", "10.244.1.22", node_name="node2")
    ruleset = compiled(state(KNOWN, done, host, elsewhere))
    for address in ("10.244.1.20", "10.244.1.21", "10.244.1.22"):
        assert not passes(ruleset, address, "10.244.2.10"), address


def test_a_quarantined_pod_is_known_and_isolated_by_its_quarantine() -> None:
    broken = b.pod("x/broken", "10.244.1.30")
    broken["metadata"]["labels"] = {"bad key!": "v"}
    st = b.state_of(b.namespace("x"), KNOWN, broken, allow_problems=True)
    ruleset = compiled(st)
    chain = ruleset.chains["NPA-UNKNOWN-EGRESS"]
    assert "-s 10.244.1.30/32 -j RETURN" in [r.render_body() for r in chain.rules]
    assert not passes(ruleset, "10.244.1.30", "10.244.2.10")  # by the quarantine


def test_many_pods_make_a_tree_and_every_lookup_agrees_with_the_known_set() -> None:
    rng = random.Random(11)
    hosts = rng.sample(range(2, 254), 120)
    known = sorted(hosts[:100])
    pods = [b.pod(f"x/p{h}", f"10.244.1.{h}") for h in known]
    ruleset = compiled(state(*pods))
    assert len([n for n in ruleset.chains if n.startswith("NPA-T-")]) >= 8
    for h in range(0, 256):
        address = f"10.244.1.{h}"
        expected = h in known or h == 1  # .1: the node's bridge address, from the node
        assert passes(ruleset, address, "10.244.2.10") is expected, address
        assert passes(ruleset, "10.244.2.10", address) is (h in known), address


def test_same_rules_as_without_the_flag_except_for_unknown_pod_addresses() -> None:
    """Cross-check with the walker: random pods (some isolated), random packets. A packet
    with an unknown address of the pod CIDR at either end, not from the node and not a
    reply, is dropped; every other packet gets the verdict it gets without the flag."""
    rng = random.Random(19)
    for _ in range(20):
        pods = []
        for i, h in enumerate(rng.sample(range(2, 60), rng.randrange(0, 25))):
            pods.append(b.pod(f"x/p{i}", f"10.244.1.{h}", labels={"app": rng.choice("ab")}))
        pods.append(REMOTE)
        policies = [
            b.policy("x/a-in", podSelector=b.labels(app="a"), ingress=[{"from": [
                {"podSelector": b.labels(app="b")}]}]),
            b.policy("x/b-out", podSelector=b.labels(app="b"), policyTypes=["Egress"],
                     egress=[{"to": [{"ipBlock": {"cidr": "10.244.0.0/16"}}]}]),
        ][: rng.randrange(0, 3)]  # fmt: skip
        st = state(*pods, *policies)
        known = {p["status"]["podIPs"][0]["ip"] for p in pods if p is not REMOTE}
        with_flag = compiled(st)
        without = compile_node(st, NODE, Family.IPV4, CompilerConfig())
        candidates = [f"10.244.1.{h}" for h in range(1, 64)] + ["10.244.2.10", "1.1.1.1"]
        for _ in range(200):
            source, destination = rng.choice(candidates), rng.choice(candidates)
            if source == destination or destination == "10.244.1.1":
                continue  # to the node itself: INPUT, never FORWARD
            state_of_flow = rng.choice(("NEW", "NEW", "NEW", "ESTABLISHED"))
            unknown = any(
                ip(a) in V4_CIDR and a not in known and a != "10.244.1.1"
                for a in (source, destination)
            )
            from_node = source == "10.244.1.1"
            expected = passes(without, source, destination, ctstate=state_of_flow) and not (
                unknown and not from_node and state_of_flow == "NEW"
            )
            got = passes(with_flag, source, destination, ctstate=state_of_flow)
            assert got is expected, (source, destination, state_of_flow, sorted(known))


def test_incremental_compiles_follow_pods_coming_and_going() -> None:
    index = ClusterIndex()
    compiler = NodeCompiler("node1", Family.IPV4, ISOLATE)
    parsed = build_state([b.namespace("x"), KNOWN]).state
    index.apply(pods=list(parsed.pods.items()), namespaces=list(parsed.namespaces.items()))
    first = compiler.compile_index(index, NODE.addresses, NODE.pod_cidrs)
    assert not passes(first, "10.244.1.50", "10.244.2.10")
    new = build_state([b.pod("x/new", "10.244.1.50")]).state.pods["x/new"]
    index.apply(pods=[("x/new", new)])
    second = compiler.compile_index(index, NODE.addresses, NODE.pod_cidrs)
    assert passes(second, "10.244.1.50", "10.244.2.10")
    assert second.chains == compile_node(index, NODE, Family.IPV4, ISOLATE).chains
    index.apply(pods=[("x/new", None)])
    third = compiler.compile_index(index, NODE.addresses, NODE.pod_cidrs)
    assert not passes(third, "10.244.1.50", "10.244.2.10")
    assert third.chains == first.chains


# --- the Node's pod CIDRs -----------------------------------------------------------------


def node_object(spec: Any) -> dict[str, Any]:
    return {"kind": "Node", "metadata": {"name": "node1"}, "spec": spec}


def test_pod_cidrs_are_read_from_spec_pod_cidrs_or_the_single_pod_cidr() -> None:
    dual = parse_node(node_object({"podCIDR": "10.244.1.0/24",
                                   "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]}))  # fmt: skip
    assert dual.pod_cidrs == (V4_CIDR, V6_CIDR) and dual.problems == ()
    single = parse_node(node_object({"podCIDR": "10.244.1.0/24"}))
    assert single.pod_cidrs == (V4_CIDR,)
    assert parse_node(node_object(None)).pod_cidrs == ()


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("nope", "Node node1: spec: must be an object"),
        ({"podCIDRs": "10.244.1.0/24"}, "Node node1: spec.podCIDRs: must be a list"),
        ({"podCIDRs": [24]}, "Node node1: spec.podCIDRs[0]: must be a CIDR string"),
        ({"podCIDRs": ["10.244.1.0/33"]}, "Node node1: spec.podCIDRs[0]: invalid CIDR"),
        ({"podCIDR": ["x"]}, "Node node1: spec.podCIDR: must be a CIDR string"),
    ],
)
def test_a_wrongly_typed_pod_cidr_is_an_error_naming_the_node_and_the_field(
    spec: Any, problem: str
) -> None:
    parsed = parse_node(node_object(spec))
    assert parsed.pod_cidrs == ()
    assert len(parsed.problems) == 1 and parsed.problems[0].startswith(problem), parsed.problems


def test_a_bad_entry_is_left_out_and_the_good_ones_kept() -> None:
    parsed = parse_node(node_object({"podCIDRs": ["10.244.1.0/24", "bogus"]}))
    assert parsed.pod_cidrs == (V4_CIDR,)
    assert "spec.podCIDRs[1]" in parsed.problems[0]


def test_the_source_keeps_the_pod_cidrs_of_a_node() -> None:
    full = {
        "metadata": {"name": "node1", "resourceVersion": "7", "annotations": {"a": "b"}},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "taints": []},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]},
    }
    trimmed = trim(Kind.NODE, full)
    assert trimmed["spec"] == {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}
    assert parse_node(trimmed).pod_cidrs == (V4_CIDR,)


def test_pod_cidr_flags_replace_the_nodes_own() -> None:
    st = b.state_of(b.namespace("x"), {**node_object({"podCIDRs": ["10.244.1.0/24"]})})
    assert pod_cidrs(st, "node1") == (V4_CIDR,)
    override = (ipaddress.ip_network("10.0.0.0/16"),)
    assert pod_cidrs(st, "node1", override) == override
    assert pod_cidrs(st, "other") == ()


# --- configuration -------------------------------------------------------------------------


def test_pod_cidr_flags_are_checked() -> None:
    assert parse_pod_cidr("fd00:10:244:1::/64") == V6_CIDR
    for bad in ("10.244.1.5/24", "10.244.1.0/33", "nope"):
        with pytest.raises(ConfigError, match="--pod-cidr"):
            parse_pod_cidr(bad)
    with pytest.raises(ConfigError, match="only read with --isolate-unknown-pod-ips"):
        AgentConfig(node_name="n", pod_cidrs=(V4_CIDR,))
    AgentConfig(node_name="n", pod_cidrs=(V4_CIDR,), compiler=ISOLATE)


def _reconciler(families: tuple[Family, ...], pod_cidrs: tuple[Any, ...] = ()) -> Reconciler:
    config = ReconcilerConfig(
        node_name="node1", families=families, compiler=ISOLATE, pod_cidrs=pod_cidrs
    )
    return Reconciler(config, Source(synced=True), Dataplane())  # type: ignore[arg-type]


def _feed(reconciler: Reconciler, node_spec: Any) -> None:
    reconciler.on_changes(
        [
            Change(Kind.NAMESPACE, "x", b.namespace("x")),
            Change(Kind.POD, "x/known", KNOWN),
            Change(Kind.NODE, "node1", node_object(node_spec)),
        ]
    )


def test_the_agent_says_so_when_a_family_has_no_pod_cidr_and_isolates_nothing_extra(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reconciler = _reconciler((Family.IPV4, Family.IPV6))
    _feed(reconciler, {"podCIDRs": ["10.244.1.0/24"]})
    with caplog.at_level(logging.WARNING):
        outcome = reconciler.run_pass(Cause.INITIAL)
        reconciler.run_pass(Cause.RESYNC)
    assert "NPA-UNKNOWN-EGRESS" in outcome.rulesets[Family.IPV4].chains
    assert not any("UNKNOWN" in n for n in outcome.rulesets[Family.IPV6].chains)
    warnings = [r.getMessage() for r in caplog.records if "pod CIDR" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not every pass
    assert "node node1 has no ipv6 pod CIDR" in warnings[0]
    assert "are not isolated" in warnings[0]


def test_a_node_without_pod_cidrs_isolates_nothing_extra_and_the_log_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reconciler = _reconciler((Family.IPV4,))
    _feed(reconciler, None)
    with caplog.at_level(logging.WARNING):
        outcome = reconciler.run_pass(Cause.INITIAL)
    assert not any("UNKNOWN" in n for n in outcome.rulesets[Family.IPV4].chains)
    assert any("node node1 has no ipv4 pod CIDR" in r.getMessage() for r in caplog.records)


def test_the_flag_replaces_the_nodes_pod_cidrs_and_a_node_update_moves_them() -> None:
    reconciler = _reconciler((Family.IPV4,), (ipaddress.ip_network("10.9.0.0/16"),))
    _feed(reconciler, {"podCIDRs": ["10.244.1.0/24"]})
    outcome = reconciler.run_pass(Cause.INITIAL)
    entry = [r.render_body() for r in outcome.rulesets[Family.IPV4].chains["NPA-FORWARD"].rules]
    assert "-s 10.9.0.0/16 -j NPA-UNKNOWN-EGRESS" in entry
    assert not any("10.244.1.0/24" in rule for rule in entry)
    follower = _reconciler((Family.IPV4,))
    _feed(follower, {"podCIDRs": ["10.244.1.0/24"]})
    follower.run_pass(Cause.INITIAL)
    follower.on_changes([Change(Kind.NODE, "node1", node_object({"podCIDRs": ["10.244.3.0/24"]}))])
    moved = follower.run_pass(Cause.CHANGE)
    entry = [r.render_body() for r in moved.rulesets[Family.IPV4].chains["NPA-FORWARD"].rules]
    assert "-d 10.244.3.0/24 -j NPA-UNKNOWN-INGRESS" in entry
    assert moved.changes[-1].fields == ("pod_cidrs",)


# --- strict mode ---------------------------------------------------------------------------


def test_a_pod_that_becomes_known_has_its_flows_judged_again() -> None:
    """A pass that revoked a flow of a local pod with an unknown address (both still
    there) must be undone when the address becomes a pod's, even if no policy selects
    that pod (its own chains do not change): its address counts as affected."""
    from agent.compiler.flows import affected_addresses

    before = compiled(state(KNOWN))
    newcomer = b.pod("x/newcomer", "10.244.1.50")
    after = compiled(state(KNOWN, newcomer))
    changed = {
        name
        for name, chain in after.chains.items()
        if before.chains.get(name) is None or before.chains[name].rules != chain.rules
    }
    assert changed and changed <= {"NPA-UNKNOWN-EGRESS", "NPA-UNKNOWN-INGRESS"}
    assert ip("10.244.1.50") in (affected_addresses(after, changed) or ())
    # The same pod in a tree of many: only the rewritten leaves count.
    many = [b.pod(f"x/p{h}", f"10.244.1.{h}") for h in range(100, 140)]
    big_before, big_after = compiled(state(*many)), compiled(state(*many, newcomer))
    changed = {
        name
        for name, chain in big_after.chains.items()
        if big_before.chains.get(name) is None or big_before.chains[name].rules != chain.rules
    }
    found = affected_addresses(big_after, changed)
    assert found is not None and ip("10.244.1.50") in found and len(found) <= 33
