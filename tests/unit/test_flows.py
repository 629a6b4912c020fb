"""Established flows judged again: a conntrack entry is judged as the first packet of its
connection through the new compiled rules (ingress of a local destination, egress of a
local source, the node's own traffic exempt), and only flows with a local pod at an end
are ours. No root: the rules are walked, not loaded."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Collection, Sequence

from agent.compiler.config import CompilerConfig, NodeContext
from agent.compiler.flows import Flow, FlowJudge, Verdict, affected_addresses
from agent.compiler.node import compile_node
from agent.compiler.walk import walk
from agent.control.flows import (
    EstablishedFlows,
    FlowRevoker,
    RevokeReason,
    flow_of,
    plan_flows,
)
from agent.control.outcome import Cause
from agent.control.reconciler import Reconciler, ReconcilerConfig
from agent.control.source import Change, Kind
from agent.dataplane.conntrack import ConntrackEntry, ListedEntries, Tuple
from agent.dataplane.table import Dataplane
from agent.model.objects import IPAddress
from agent.policy.state import ClusterState
from agent.rules import Family
from tests.unit import builders as b

TCP, UDP = 6, 17
NODE_IP = "192.168.0.1"
# node1: x/a 10.0.1.10, x/b 10.0.1.11; node2: y/c 10.0.2.10
POD_IPS = {"x/a": "10.0.1.10", "x/b": "10.0.1.11", "y/c": "10.0.2.10"}


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def cluster(*policies: b.Obj) -> ClusterState:
    return b.state_of(
        b.namespace("x", ns="x"),
        b.namespace("y", ns="y"),
        b.node("node1", NODE_IP),
        b.pod("x/a", POD_IPS["x/a"], labels={"app": "a"}),
        b.pod("x/b", POD_IPS["x/b"], labels={"app": "b"}),
        b.pod("y/c", POD_IPS["y/c"], labels={"app": "c"}, node_name="node2"),
        *policies,
    )


def judge_on_node1(state: ClusterState) -> FlowJudge:
    ruleset = compile_node(state, NodeContext("node1", (ip(NODE_IP),)), Family.IPV4)
    local = [ip(POD_IPS["x/a"]), ip(POD_IPS["x/b"])]
    return FlowJudge(ruleset, local, [ip(NODE_IP)])


def flow(src: str, dst: str, dport: int = 80, protocol: int = TCP) -> Flow:
    return Flow(ip(POD_IPS.get(src, src)), ip(POD_IPS.get(dst, dst)), protocol, dport)


def entry(
    src: str, dst: str, dport: int = 80, *, sport: int = 40000, protocol: int = TCP,
    backend: str | None = None, backend_port: int | None = None,
) -> ConntrackEntry:  # fmt: skip
    """A conntrack entry; ``backend``: the destination after DNAT (a Service's pod)."""
    s, d = ip(POD_IPS.get(src, src)), ip(POD_IPS.get(dst, dst))
    real = ip(POD_IPS.get(backend, backend)) if backend else d
    real_port = backend_port or dport
    return ConntrackEntry(
        Family.IPV4,
        Tuple(s, d, protocol, sport, dport),
        Tuple(real, s, protocol, real_port, sport),
    )


A_ONLY_FROM_B_ON_80 = b.policy(
    "x/a-from-b",
    podSelector=b.labels(app="a"),
    ingress=[{"from": [{"podSelector": b.labels(app="b")}], "ports": [{"port": 80}]}],
)
A_NO_EGRESS = b.policy("x/a-no-egress", podSelector=b.labels(app="a"), policyTypes=["Egress"])
A_NO_INGRESS = b.policy("x/a-no-ingress", podSelector=b.labels(app="a"))


# --- the verdict ----------------------------------------------------------------------


def test_a_flow_the_new_ingress_rules_no_longer_admit_is_denied() -> None:
    judge = judge_on_node1(cluster(A_ONLY_FROM_B_ON_80))
    assert judge.judge(flow("y/c", "x/a")) is Verdict.DENIED


def test_a_flow_the_new_ingress_rules_still_admit_is_allowed() -> None:
    judge = judge_on_node1(cluster(A_ONLY_FROM_B_ON_80))
    assert judge.judge(flow("x/b", "x/a")) is Verdict.ALLOWED


def test_a_flow_on_a_port_or_protocol_the_rule_does_not_name_is_denied() -> None:
    judge = judge_on_node1(cluster(A_ONLY_FROM_B_ON_80))
    assert judge.judge(flow("x/b", "x/a", 81)) is Verdict.DENIED
    assert judge.judge(flow("x/b", "x/a", 80, UDP)) is Verdict.DENIED


def test_a_flow_from_a_local_pod_its_new_egress_rules_deny_is_denied() -> None:
    judge = judge_on_node1(cluster(A_NO_EGRESS))
    assert judge.judge(flow("x/a", "y/c")) is Verdict.DENIED
    assert judge.judge(flow("y/c", "x/a")) is Verdict.ALLOWED  # ingress is not isolated


def test_a_flow_is_judged_in_the_direction_it_was_opened_not_by_its_replies() -> None:
    """x/a accepts nothing, but the connection x/a opened to y/c is its egress: allowed."""
    judge = judge_on_node1(cluster(A_NO_INGRESS))
    assert judge.judge(flow("x/a", "y/c")) is Verdict.ALLOWED
    assert judge.judge(flow("y/c", "x/a")) is Verdict.DENIED


def test_a_flow_from_the_node_itself_is_always_allowed() -> None:
    judge = judge_on_node1(cluster(A_NO_INGRESS))
    assert judge.judge(flow(NODE_IP, "x/a")) is Verdict.ALLOWED


def test_a_flow_without_a_local_pod_at_either_end_is_never_ours() -> None:
    judge = judge_on_node1(cluster(A_NO_INGRESS))
    assert judge.judge(flow("y/c", "10.9.9.9")) is Verdict.NOT_OURS
    assert judge.judge(flow("10.9.9.9", "y/c")) is Verdict.NOT_OURS


def test_the_source_port_never_matters_so_flows_of_one_pair_and_port_cost_one_walk() -> None:
    judge = judge_on_node1(cluster(A_ONLY_FROM_B_ON_80))
    verdicts = {judge.judge(flow("y/c", "x/a")) for _ in range(100)}
    assert verdicts == {Verdict.DENIED}
    assert judge.walks == 1


def test_a_flow_of_the_other_family_is_not_judged_by_this_ruleset() -> None:
    judge = judge_on_node1(cluster(A_NO_INGRESS))
    assert judge.judge(Flow(ip("fd00::1"), ip("fd00::2"), TCP, 80)) is Verdict.NOT_OURS


# --- which local pods a change affects ----------------------------------------------------


def affected_by(before: ClusterState, after: ClusterState, node_ip: str = NODE_IP) -> set[str]:
    """The local pods whose flows must be judged again, by name (``*``: all of them)."""
    old = compile_node(before, NodeContext("node1", (ip(NODE_IP),)), Family.IPV4)
    new = compile_node(after, NodeContext("node1", (ip(node_ip),)), Family.IPV4)
    changed = {
        name for name, chain in new.chains.items()
        if name not in old.chains or old.chains[name].hashes != chain.hashes
    }  # fmt: skip
    found = affected_addresses(new, changed)
    if found is None:
        return {"*"}
    names = {ip(address): pod for pod, address in POD_IPS.items()}
    return {names[address] for address in found}


def test_a_policy_change_affects_only_the_pods_it_selects() -> None:
    assert affected_by(cluster(), cluster(A_NO_INGRESS)) == {"x/a"}
    assert affected_by(cluster(A_NO_INGRESS), cluster(A_ONLY_FROM_B_ON_80)) == {"x/a"}


def test_a_peer_leaving_a_group_affects_the_pods_whose_policies_name_it() -> None:
    """x/b is relabelled out of ``app: b``: x/a (which admits app b) is affected."""
    relabelled = b.state_of(
        b.namespace("x", ns="x"),
        b.namespace("y", ns="y"),
        b.node("node1", NODE_IP),
        b.pod("x/a", POD_IPS["x/a"], labels={"app": "a"}),
        b.pod("x/b", POD_IPS["x/b"], labels={"app": "other"}),
        b.pod("y/c", POD_IPS["y/c"], labels={"app": "c"}, node_name="node2"),
        A_ONLY_FROM_B_ON_80,
    )
    assert affected_by(cluster(A_ONLY_FROM_B_ON_80), relabelled) == {"x/a"}


def test_a_change_that_adds_no_isolation_affects_nobody() -> None:
    opens = b.policy("y/c-open", podSelector=b.labels(app="c"))  # selects no local pod
    assert affected_by(cluster(), cluster(opens)) == set()


def test_new_node_addresses_affect_every_local_pod() -> None:
    assert affected_by(cluster(A_NO_INGRESS), cluster(A_NO_INGRESS), "192.168.0.2") == {"*"}


# --- which entries are deleted ----------------------------------------------------------


MARK = 0x2000


def revoked(
    entries: Sequence[ConntrackEntry], judge: FlowJudge | None, released: Sequence[str] = ()
) -> list[tuple[str, RevokeReason]]:
    """The entries deleted or revoked, as ``(flow, reason)``."""
    gone = {ip(POD_IPS.get(r, r)) for r in released}
    plan = plan_flows(entries, judge, gone, {ip(NODE_IP)}, MARK)
    return [(f.flow.describe(), f.reason) for _, f in (*plan.delete, *plan.revoke)]


def test_a_service_flow_is_judged_by_its_backend_and_target_port() -> None:
    """y/c -> ClusterIP 10.96.0.1:8080, DNAT to x/a:80 (the reply tuple holds x/a)."""
    judge = judge_on_node1(cluster(A_NO_INGRESS))
    service = entry("y/c", "10.96.0.1", 8080, backend="x/a", backend_port=80)
    assert flow_of(service) == flow("y/c", "x/a", 80)
    assert revoked([service], judge) == [("tcp 10.0.2.10 -> 10.0.1.10:80", RevokeReason.POLICY)]


def test_only_denied_entries_are_chosen_and_allowed_ones_stay() -> None:
    judge = judge_on_node1(cluster(A_ONLY_FROM_B_ON_80))
    entries = [entry("x/b", "x/a"), entry("y/c", "x/a"), entry("x/a", "y/c")]
    assert revoked(entries, judge) == [("tcp 10.0.2.10 -> 10.0.1.10:80", RevokeReason.POLICY)]


def test_a_flow_to_the_node_itself_is_not_judged() -> None:
    """It never crosses FORWARD, so the agent's rules do not decide it."""
    judge = judge_on_node1(cluster(A_NO_EGRESS))
    assert revoked([entry("x/a", NODE_IP, 10250)], judge) == []


def test_every_flow_of_a_released_address_is_chosen_without_judging() -> None:
    """x/b was deleted: its flows go in both directions, whatever the rules say."""
    entries = [entry("x/b", "y/c"), entry("y/c", "x/b", 53, protocol=UDP), entry("x/a", "y/c")]
    assert revoked(entries, None, released=["x/b"]) == [
        ("tcp 10.0.1.11 -> 10.0.2.10:80", RevokeReason.POD_DELETED),
        ("udp 10.0.2.10 -> 10.0.1.11:53", RevokeReason.POD_DELETED),
    ]


def test_a_released_service_backend_takes_the_flows_sent_to_its_cluster_ip() -> None:
    service = entry("y/c", "10.96.0.1", 8080, backend="x/b", backend_port=80)
    assert revoked([service], None, released=["x/b"]) == [
        ("tcp 10.0.2.10 -> 10.0.1.11:80", RevokeReason.POD_DELETED)
    ]


def test_without_a_judge_established_flows_are_kept() -> None:
    """Keep mode (or rules that did not change): nothing is judged."""
    assert revoked([entry("y/c", "x/a")], None) == []


def test_a_flow_revoked_before_is_not_revoked_again() -> None:
    judge = judge_on_node1(cluster(A_NO_INGRESS))
    marked = dataclasses.replace(entry("y/c", "x/a"), mark=MARK | 0x1)
    assert revoked([marked], judge) == []


def test_a_revoked_flow_the_rules_allow_again_is_restored() -> None:
    judge = judge_on_node1(cluster())
    marked = dataclasses.replace(entry("y/c", "x/a"), mark=MARK)
    plan = plan_flows([marked, entry("x/b", "x/a")], judge, set(), {ip(NODE_IP)}, MARK)
    assert plan.restore == (marked,) and plan.revoke == () and plan.delete == ()


def test_the_entry_chain_drops_every_packet_of_a_revoked_flow_even_established_ones() -> None:
    """Strict mode's first rule: the revoked conntrack mark drops, both ways, before
    established traffic is let through; other established flows still pass."""
    state = cluster()
    config = CompilerConfig(revoked_mark=MARK)
    ruleset = compile_node(state, NodeContext("node1", (ip(NODE_IP),)), Family.IPV4, config)
    for src, dst in (("y/c", "x/a"), ("x/a", "y/c")):
        packet = dataclasses.replace(flow(src, dst).packet(), ctstate="ESTABLISHED")
        assert walk(ruleset, packet).accepted
        assert walk(ruleset, dataclasses.replace(packet, ctmark=MARK)).verdict == "DROP"


def test_keep_mode_has_no_rule_for_revoked_flows() -> None:
    ruleset = compile_node(cluster(), NodeContext("node1", (ip(NODE_IP),)), Family.IPV4)
    packet = dataclasses.replace(flow("y/c", "x/a").packet(), ctstate="ESTABLISHED", ctmark=MARK)
    assert walk(ruleset, packet).accepted


# --- the reconciler calls it after a successful write ---------------------------------------


class FakeConntrack:
    def __init__(self, entries: Sequence[ConntrackEntry]) -> None:
        self.entries = list(entries)
        self.deleted: list[ConntrackEntry] = []
        self.listed: list[frozenset[IPAddress] | None] = []  # the addresses asked for

    def list(self, family: Family, addresses: Collection[IPAddress] | None = None) -> ListedEntries:
        self.listed.append(None if addresses is None else frozenset(addresses))
        return ListedEntries(
            tuple(
                e
                for e in self.entries
                if e.family is family
                and (addresses is None or {e.original.source, e.reply.source} & set(addresses))
            ),
            0.0,
        )

    def delete(self, entries: Sequence[ConntrackEntry]) -> int:
        for e in entries:
            self.entries.remove(e)
            self.deleted.append(e)
        return len(entries)

    def set_mark(self, entries: Sequence[ConntrackEntry], value: int, mask: int) -> int:
        for e in entries:
            self.entries[self.entries.index(e)] = dataclasses.replace(
                e, mark=(e.mark & ~mask) ^ value
            )
        return len(entries)

    def revoked(self) -> list[ConntrackEntry]:
        return [dataclasses.replace(e, mark=0) for e in self.entries if e.mark & MARK]


class SyncedSource:
    synced = True

    def start(self, sink: object) -> None:
        pass

    def stop(self) -> None:
        pass


def reconciler(table: FakeConntrack, mode: EstablishedFlows) -> Reconciler:
    from tests.unit.test_app import RecordingBackend

    dataplane = Dataplane(RecordingBackend(), "NPA-")
    config = ReconcilerConfig(node_name="node1", families=(Family.IPV4,))
    return Reconciler(
        config,
        SyncedSource(),  # type: ignore[arg-type]
        dataplane,
        flows=FlowRevoker(table, mode, MARK),
    )


def changes(*objects: b.Obj) -> list[Change]:
    kinds = {"Namespace": Kind.NAMESPACE, "Pod": Kind.POD, "Node": Kind.NODE,
             "NetworkPolicy": Kind.NETWORK_POLICY}  # fmt: skip
    out = []
    for obj in objects:
        meta = obj["metadata"]
        key = f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"]
        out.append(Change(kinds[obj["kind"]], key, obj))
    return out


def deleted(obj: b.Obj) -> Change:
    (change,) = changes(obj)
    return Change(change.kind, change.key, None)


TOPOLOGY = (
    b.namespace("x", ns="x"),
    b.namespace("y", ns="y"),
    b.node("node1", NODE_IP),
    b.pod("x/a", POD_IPS["x/a"], labels={"app": "a"}),
    b.pod("x/b", POD_IPS["x/b"], labels={"app": "b"}),
    b.pod("y/c", POD_IPS["y/c"], labels={"app": "c"}, node_name="node2"),
)


def test_strict_a_policy_change_revokes_the_flows_it_denies_and_keeps_the_rest() -> None:
    table = FakeConntrack([entry("y/c", "x/a"), entry("x/b", "x/a"), entry("x/a", "y/c")])
    r = reconciler(table, EstablishedFlows.STRICT)
    r.on_changes(changes(*TOPOLOGY))
    assert r.run_pass(Cause.INITIAL).flows is not None
    assert table.revoked() == []  # no policy yet: everything is allowed
    r.on_changes(changes(A_ONLY_FROM_B_ON_80))
    outcome = r.run_pass(Cause.CHANGE)
    assert table.revoked() == [entry("y/c", "x/a")]
    assert table.deleted == []
    # Only x/a's rules changed: only its flows were asked for (and judged).
    assert table.listed[-1] == {ip(POD_IPS["x/a"])}
    assert outcome.flows is not None and outcome.flows.scanned == {Family.IPV4: 3}
    assert [f.reason for f in outcome.flows.revoked] == [RevokeReason.POLICY]


def test_strict_a_pass_that_changed_no_rules_does_not_look_at_flows() -> None:
    table = FakeConntrack([entry("y/c", "x/a")])
    r = reconciler(table, EstablishedFlows.STRICT)
    r.on_changes(changes(*TOPOLOGY))
    r.run_pass(Cause.INITIAL)
    r.on_changes(changes(b.namespace("z", ns="z")))  # selects nothing: no rule changes
    assert r.run_pass(Cause.CHANGE).flows is None


def test_keep_a_policy_change_leaves_established_flows_alone() -> None:
    table = FakeConntrack([entry("y/c", "x/a")])
    r = reconciler(table, EstablishedFlows.KEEP)
    r.on_changes(changes(*TOPOLOGY))
    r.run_pass(Cause.INITIAL)
    r.on_changes(changes(A_NO_INGRESS))
    r.run_pass(Cause.CHANGE)
    assert table.deleted == [] and table.revoked() == []


def test_a_deleted_pod_takes_its_flows_with_it_in_either_mode() -> None:
    for mode in EstablishedFlows:
        table = FakeConntrack([entry("y/c", "x/b"), entry("x/b", "y/c"), entry("y/c", "x/a")])
        r = reconciler(table, mode)
        r.on_changes(changes(*TOPOLOGY))
        r.run_pass(Cause.INITIAL)
        r.on_changes([deleted(b.pod("x/b", POD_IPS["x/b"]))])
        outcome = r.run_pass(Cause.CHANGE)
        assert table.deleted == [entry("y/c", "x/b"), entry("x/b", "y/c")], mode
        assert outcome.flows is not None
        assert {f.reason for f in outcome.flows.revoked} == {RevokeReason.POD_DELETED}


def test_an_address_that_changes_hands_in_one_pass_is_released_too() -> None:
    """x/b deleted and x/new created with its address, in the same batch: the new pod
    inherits no flow (keep mode, so only the release can have deleted it)."""
    table = FakeConntrack([entry("y/c", "x/b")])
    r = reconciler(table, EstablishedFlows.KEEP)
    r.on_changes(changes(*TOPOLOGY))
    r.run_pass(Cause.INITIAL)
    reused = b.pod("x/new", POD_IPS["x/b"], labels={"app": "new"})
    r.on_changes([deleted(b.pod("x/b", POD_IPS["x/b"])), *changes(reused)])
    r.run_pass(Cause.CHANGE)
    assert table.deleted == [entry("y/c", "x/b")]
