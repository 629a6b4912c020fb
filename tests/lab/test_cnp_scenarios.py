"""ClusterNetworkPolicy semantics, proven with real traffic in the netns lab.

One test per behaviour the API documents (the field comments of
sigs.k8s.io/network-policy-api apis/v1alpha2/clusternetworkpolicy_types.go and the API
overview: tiers, actions, priorities, rule order, subjects, peers, protocols, hostNetwork,
fail closed), each run over IPv4 and IPv6 on both iptables backends.  Every scenario is
checked three ways (``Scenario.verify``): real traffic against the table written here by
hand, real traffic against ``agent.policy.explain`` on every probed cell, and the hand table
against explain; then ``explain`` must name the tier, policy, priority and rule that decided
the flows that matter.

Topology (e2e model): namespaces x,y,z (``ns: <name>``), pods a,b,c (``pod: <name>``);
node-1: x/a x/b y/a y/c z/b, node-2: x/c y/b z/a z/c; host ``ext``.  The README's two
examples run in a lab of their own whose namespaces carry the README's names.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
import yaml

from agent.model.objects import Direction
from agent.policy.explain import NETWORK_POLICY_TIER, DirectionVerdict
from agent.policy.state import build_state
from tests.lab.nsutil import in_netns
from tests.lab.ownership import owner_marker, signals_as_interrupt, sweep_stale_labs
from tests.lab.prober import Matrix, Probe, Verdict
from tests.lab.scenarios_support import (
    EXT,
    NODES,
    PODS,
    Scenario,
    Service,
    cells,
    cnp,
    explain_probe,
    expr,
    netpol,
    ns_of,
    ns_sel,
    pod_sel,
)
from tests.lab.topology import Backend, Lab, LabSpec, NamespaceSpec, PodSpec

pytestmark = pytest.mark.lab

# Every scenario: nft and legacy, IPv4 and IPv6 (one agent run and one probe run each).
MATRIX = pytest.mark.parametrize(
    ("backend", "family"),
    [("nft", 4), ("nft", 6), ("legacy", 4), ("legacy", 6)],
    ids=["nft-ipv4", "nft-ipv6", "legacy-ipv4", "legacy-ipv6"],
)

EVERYONE = [*PODS, EXT]
X_PODS = ["x/a", "x/b", "x/c"]
Y_PODS = ["y/a", "y/b", "y/c"]
TCP80 = (80, "TCP")
TCP81 = (81, "TCP")
UDP80 = (80, "UDP")
UDP81 = (81, "UDP")
SCTP80 = (80, "SCTP")
SCTP81 = (81, "SCTP")
ALL_PP = [TCP80, TCP81, UDP80, UDP81, SCTP80, SCTP81]
ADMIN, BASELINE = "Admin", "Baseline"
ING, EGR = Direction.INGRESS, Direction.EGRESS
ALL_V4, ALL_V6 = "0.0.0.0/0", "::/0"


@pytest.fixture
def sc(clean_lab: Lab, backend: Backend) -> Iterator[Scenario]:
    yield Scenario(clean_lab, backend)


# ------------------------------------------------------------------------------ builders
def namespaces(selector: Mapping[str, Any]) -> dict[str, Any]:
    """A ``namespaces`` subject or peer: every pod of the matching namespaces."""
    return {"namespaces": dict(selector)}


def pods(pod_selector: Mapping[str, Any], namespace_selector: Any = None) -> dict[str, Any]:
    """A ``pods`` subject or peer; ``namespace_selector`` None leaves it out (= all)."""
    inner: dict[str, Any] = {"podSelector": dict(pod_selector)}
    if namespace_selector is not None:
        inner["namespaceSelector"] = dict(namespace_selector)
    return {"pods": inner}


def networks(*cidrs: str) -> dict[str, Any]:
    return {"networks": list(cidrs)}


def nodes(selector: Mapping[str, Any]) -> dict[str, Any]:
    return {"nodes": dict(selector)}


def ns_in(*names: str) -> dict[str, Any]:
    return {"matchExpressions": [expr("ns", "In", *names)]}


def rule(
    action: str,
    *peers: Mapping[str, Any],
    to: bool = False,
    protocols: Sequence[Mapping[str, Any]] | None = None,
    name: str = "",
) -> dict[str, Any]:
    out: dict[str, Any] = {"action": action, ("to" if to else "from"): [dict(p) for p in peers]}
    if protocols is not None:
        out["protocols"] = [dict(p) for p in protocols]
    if name:
        out["name"] = name
    return out


def ingress(action: str, *peers: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
    return rule(action, *peers, **kw)


def egress(action: str, *peers: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
    return rule(action, *peers, to=True, **kw)


def _port(port: int | tuple[int, int]) -> dict[str, Any]:
    if isinstance(port, tuple):
        return {"destinationPort": {"range": {"start": port[0], "end": port[1]}}}
    return {"destinationPort": {"number": port}}


def tcp(port: int | tuple[int, int]) -> dict[str, Any]:
    return {"tcp": _port(port)}


def udp(port: int | tuple[int, int]) -> dict[str, Any]:
    return {"udp": _port(port)}


def sctp(port: int | tuple[int, int]) -> dict[str, Any]:
    return {"sctp": _port(port)}


def named_port(name: str) -> dict[str, Any]:
    return {"destinationNamedPort": name}


def x_subject() -> dict[str, Any]:
    return namespaces(ns_sel("x"))


def default_deny(ns: str, *types: str) -> dict[str, Any]:
    return netpol(ns, f"default-deny-{'-'.join(t.lower() for t in types)}",
                  {"podSelector": {}, "policyTypes": list(types)})  # fmt: skip


def allow_all(ns: str, *types: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": {}, "policyTypes": list(types)}
    for t in types:
        spec[t.lower()] = [{}]
    return netpol(ns, "allow-all", spec)


# ------------------------------------------------------------------------------ judging
def is_self(p: Probe) -> bool:
    return p.src == p.dst


def node_of(lab: Lab, endpoint: str) -> str | None:
    return lab.pod(endpoint).spec.node if endpoint in lab.pods else None


def host_cidr(lab: Lab, endpoint: str, family: int) -> str:
    return f"{lab.endpoint(endpoint).ip(family)}/{32 if family == 4 else 128}"


def both(*checks: Callable[[Probe], bool]) -> Callable[[Probe], bool]:
    """A connection needs every direction's verdict: the source's egress and the
    destination's ingress."""
    return lambda p: all(check(p) for check in checks)


def verify(
    sc: Scenario, probes: list[Probe], expected: Callable[[Probe], bool], title: str = ""
) -> Matrix:
    return sc.verify(probes, expected, f"{title} IPv{probes[0].family}")


def assert_decided(
    sc: Scenario,
    probe: Probe,
    direction: Direction,
    *,
    allowed: bool,
    tier: str,
    policy: str | None = None,
    priority: int | None = None,
    rule_index: int | None = None,
    rule_name: str | None = None,
    passed: Sequence[tuple[str, str, int]] | None = None,
) -> None:
    """explain names who decided ``probe`` in ``direction``: the tier ("Admin",
    "NetworkPolicy", "Baseline", or "default" when no tier decided), the policy (for
    NetworkPolicy: the one whose rule allowed it), its priority and the rule (index and
    name); ``passed``: the (tier, policy, rule index) of the Pass rules it went through."""
    verdict = explain_probe(sc, probe)
    side = verdict.ingress if direction is ING else verdict.egress
    assert side is not None, f"{probe}: explain has no {direction.value} verdict"
    got = decided_by(side)
    want = {"allowed": allowed, "tier": tier, "policy": policy, "priority": priority,
            "rule_index": rule_index, "rule_name": rule_name,
            "passed": None if passed is None else tuple(passed)}  # fmt: skip
    mismatch = {k: (got.get(k), v) for k, v in want.items() if v is not None and got.get(k) != v}
    assert not mismatch, f"{probe} {direction.value}: explain says {side}; (got, want) {mismatch}"


def decided_by(side: DirectionVerdict) -> dict[str, Any]:
    """The deciding tier/policy/priority/rule as explain reports them."""
    rule_ref = side.decided_by
    policy = rule_ref.policy if rule_ref else None
    if side.tier == NETWORK_POLICY_TIER and side.allowed_by:
        policy = side.allowed_by[0].split(" ")[0]  # "ns/name ingress[i]"
    return {
        "allowed": side.allowed,
        "tier": side.tier or "default",
        "policy": policy,
        "priority": rule_ref.priority if rule_ref else None,
        "rule_index": rule_ref.index if rule_ref else None,
        "rule_name": rule_ref.name if rule_ref else None,
        "passed": tuple((r.tier.value, r.policy, r.index) for r in side.passed_by),
    }


# ------------------------------------------------------------------------------ ICMP
ICMP_ECHO = {4: 8, 6: 128}
ICMP_ECHO_REPLY = {4: 0, 6: 129}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def ping(lab: Lab, src: str, dst: str, family: int, timeout: float = 1.0) -> bool:
    """One ICMP echo (raw socket in ``src``'s netns): True iff ``dst`` answered. The
    prober has no ICMP; explain has no ICMP either, so this is judged by hand only."""
    address = lab.endpoint(dst).ip(family)
    with in_netns(lab.endpoint(src).netns):
        if family == 4:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        else:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    ident, payload = random.randrange(1, 0xFFFF), os.urandom(16)
    header = struct.pack("!BBHHH", ICMP_ECHO[family], 0, 0, ident, 1)
    if family == 4:  # the kernel fills in the ICMPv6 checksum, not the ICMPv4 one
        header = struct.pack("!BBHHH", ICMP_ECHO[family], 0,
                             _checksum(header + payload), ident, 1)  # fmt: skip
    with sock:
        sock.sendto(header + payload, (address, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                return False
            if family == 4:
                data = data[(data[0] & 0x0F) * 4 :]
            if peer[0] != address or len(data) < 8:
                continue
            kind, _, _, got_ident, _ = struct.unpack("!BBHHH", data[:8])
            if kind == ICMP_ECHO_REPLY[family] and got_ident == ident and data[8:] == payload:
                return True
    return False


def verify_pings(lab: Lab, family: int, expected: Mapping[tuple[str, str], bool]) -> None:
    got = {pair: ping(lab, *pair, family) for pair in expected}
    wrong = {pair: (got[pair], want) for pair, want in expected.items() if got[pair] != want}
    assert not wrong, f"ICMP IPv{family} (got, want): {wrong}"


# ====================================================================== tiers and actions
@MATRIX
def test_admin_deny_beats_a_networkpolicy_allow(sc: Scenario, family: int) -> None:
    """Admin tier, Deny: "No further ClusterNetworkPolicy or NetworkPolicy rules will be
    processed."  x allows every ingress by NetworkPolicy; the admin denies y."""
    sc.apply([
        allow_all("x", "Ingress"),
        cnp("deny-from-y", ADMIN, 10, x_subject(),
            ingress=[ingress("Deny", namespaces(ns_sel("y")), name="from-y")]),
    ])  # fmt: skip
    verify(sc, cells(EVERYONE, X_PODS, [TCP80, UDP81], (family,)),
           lambda p: is_self(p) or ns_of(p.src) != "y")  # fmt: skip
    assert_decided(sc, Probe("y/b", "x/a", 80, "TCP", family), ING, allowed=False, tier=ADMIN,
                   policy="deny-from-y", priority=10, rule_index=0, rule_name="from-y")  # fmt: skip
    assert_decided(sc, Probe("z/b", "x/a", 80, "TCP", family), ING, allowed=True,
                   tier="NetworkPolicy", policy="x/allow-all")  # fmt: skip


@MATRIX
def test_admin_accept_skips_networkpolicy_isolation(sc: Scenario, family: int) -> None:
    """Admin tier, Accept: "No further ingress ClusterNetworkPolicy or NetworkPolicy rules
    will be processed."  x is default-deny by NetworkPolicy; the admin accepts y."""
    sc.apply([
        default_deny("x", "Ingress"),
        cnp("accept-from-y", ADMIN, 10, x_subject(),
            ingress=[ingress("Accept", namespaces(ns_sel("y")), name="from-y")]),
    ])  # fmt: skip
    verify(sc, cells(EVERYONE, X_PODS, [TCP80, UDP81], (family,)),
           lambda p: is_self(p) or ns_of(p.src) == "y")  # fmt: skip
    assert_decided(sc, Probe("y/b", "x/a", 80, "TCP", family), ING, allowed=True, tier=ADMIN,
                   policy="accept-from-y", priority=10, rule_index=0, rule_name="from-y")  # fmt: skip
    assert_decided(sc, Probe("z/b", "x/a", 80, "TCP", family), ING, allowed=False,
                   tier="NetworkPolicy")  # fmt: skip


@MATRIX
def test_admin_pass_hands_over_to_networkpolicy(sc: Scenario, family: int) -> None:
    """Admin tier, Pass: "Skips all further ClusterNetworkPolicy rules in the current tier
    ... and passes evaluation to the next tier."  y is passed to x's NetworkPolicy (which
    allows y/b, x/c and ext only); every other pod is denied by the admin's next rule, so
    x/c's NetworkPolicy allow does not help it; ext is no pod and no admin rule matches."""
    lab = sc.lab
    sc.apply([
        cnp("delegate-y", ADMIN, 10, x_subject(), ingress=[
            ingress("Pass", namespaces(ns_sel("y")), name="y-to-owners"),
            ingress("Deny", namespaces({}), name="other-pods"),
        ]),
        netpol("x", "owners", {"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": ns_sel("y"), "podSelector": pod_sel("b")},
            {"podSelector": pod_sel("c")},
            {"ipBlock": {"cidr": host_cidr(lab, EXT, 4)}},
            {"ipBlock": {"cidr": host_cidr(lab, EXT, 6)}},
        ]}]}),
    ])  # fmt: skip
    verify(sc, cells(EVERYONE, X_PODS, [TCP80], (family,)),
           lambda p: is_self(p) or p.src in ("y/b", EXT))  # fmt: skip
    assert_decided(sc, Probe("y/b", "x/a", 80, "TCP", family), ING, allowed=True,
                   tier="NetworkPolicy", policy="x/owners",
                   passed=[(ADMIN, "delegate-y", 0)])  # fmt: skip
    assert_decided(sc, Probe("y/a", "x/a", 80, "TCP", family), ING, allowed=False,
                   tier="NetworkPolicy")  # fmt: skip
    assert_decided(sc, Probe("x/c", "x/a", 80, "TCP", family), ING, allowed=False, tier=ADMIN,
                   policy="delegate-y", priority=10, rule_index=1, rule_name="other-pods")  # fmt: skip


@MATRIX
def test_pass_with_no_networkpolicy_falls_to_baseline(sc: Scenario, family: int) -> None:
    """API: "When the Pass action is matched at the Admin tier, NetworkPolicy will apply next or
    if there is no NetworkPolicy match, Baseline policies will be evaluated."  y is passed;
    no NetworkPolicy selects x; the baseline accepts y/a and denies the rest of y."""
    sc.apply([
        cnp("delegate-y", ADMIN, 10, x_subject(), ingress=[
            ingress("Pass", namespaces(ns_sel("y")), name="y-to-owners"),
            ingress("Deny", namespaces({}), name="other-pods"),
        ]),
        cnp("baseline-x", BASELINE, 10, x_subject(), ingress=[
            ingress("Accept", pods(pod_sel("a"), ns_sel("y")), name="y-a"),
            ingress("Deny", namespaces(ns_sel("y")), name="rest-of-y"),
        ]),
    ])  # fmt: skip
    verify(sc, cells(EVERYONE, X_PODS, [TCP80, UDP81], (family,)),
           lambda p: is_self(p) or p.src in ("y/a", EXT))  # fmt: skip
    assert_decided(sc, Probe("y/b", "x/a", 80, "TCP", family), ING, allowed=False,
                   tier=BASELINE, policy="baseline-x", priority=10, rule_index=1,
                   rule_name="rest-of-y", passed=[(ADMIN, "delegate-y", 0)])  # fmt: skip
    assert_decided(sc, Probe("y/a", "x/a", 80, "TCP", family), ING, allowed=True,
                   tier=BASELINE, policy="baseline-x", priority=10, rule_index=0,
                   rule_name="y-a")  # fmt: skip


@MATRIX
def test_baseline_pass_is_the_default_allow(sc: Scenario, family: int) -> None:
    """Baseline tier, Pass: nothing after the Baseline tier but "the default kubernetes
    policy ... all pods can communicate with each other"."""
    sc.apply([cnp("pass-y", BASELINE, 10, x_subject(), ingress=[
        ingress("Pass", namespaces(ns_sel("y")), name="y-passes"),
        ingress("Deny", namespaces({}), name="other-pods"),
    ])])  # fmt: skip
    verify(sc, cells(EVERYONE, X_PODS, [TCP80, UDP81], (family,)),
           lambda p: is_self(p) or ns_of(p.src) == "y" or p.src == EXT)  # fmt: skip
    assert_decided(sc, Probe("y/b", "x/a", 80, "TCP", family), ING, allowed=True,
                   tier="default", passed=[(BASELINE, "pass-y", 0)])  # fmt: skip
    assert_decided(sc, Probe("z/b", "x/a", 80, "TCP", family), ING, allowed=False,
                   tier=BASELINE, policy="pass-y", rule_index=1)  # fmt: skip


@MATRIX
def test_lower_priority_number_wins_between_two_admin_policies(sc: Scenario, family: int) -> None:
    """API: "Policies with lower priority values have higher precedence."  Names sort against
    the priorities, so a name order would give the opposite verdicts.  Moving the Deny
    behind the y/a Accept flips y/a."""

    def policies(deny_priority: int) -> list[dict[str, Any]]:
        return [
            cnp("c-accept-y-b", ADMIN, 5, x_subject(),
                ingress=[ingress("Accept", pods(pod_sel("b"), ns_sel("y")))]),
            cnp("b-deny-y", ADMIN, deny_priority, x_subject(),
                ingress=[ingress("Deny", namespaces(ns_sel("y")))]),
            cnp("a-accept-y-a", ADMIN, 20, x_subject(),
                ingress=[ingress("Accept", pods(pod_sel("a"), ns_sel("y")))]),
        ]  # fmt: skip

    probes = cells(EVERYONE, X_PODS, [TCP80], (family,))
    sc.apply(policies(10))
    verify(sc, probes, lambda p: is_self(p) or p.src not in ("y/a", "y/c"), "deny at 10")
    assert_decided(sc, Probe("y/a", "x/a", 80, "TCP", family), ING, allowed=False, tier=ADMIN,
                   policy="b-deny-y", priority=10, rule_index=0)  # fmt: skip
    assert_decided(sc, Probe("y/b", "x/a", 80, "TCP", family), ING, allowed=True, tier=ADMIN,
                   policy="c-accept-y-b", priority=5, rule_index=0)  # fmt: skip
    sc.apply(policies(30))
    verify(sc, probes, lambda p: is_self(p) or p.src != "y/c", "deny at 30")
    assert_decided(sc, Probe("y/a", "x/a", 80, "TCP", family), ING, allowed=True, tier=ADMIN,
                   policy="a-accept-y-a", priority=20, rule_index=0)  # fmt: skip


@MATRIX
def test_lower_priority_number_wins_within_the_baseline_tier(sc: Scenario, family: int) -> None:
    """Priorities order the Baseline tier the same way."""
    sc.apply([
        cnp("a-deny-y", BASELINE, 10, x_subject(),
            ingress=[ingress("Deny", namespaces(ns_sel("y")))]),
        cnp("b-accept-y-a", BASELINE, 5, x_subject(),
            ingress=[ingress("Accept", pods(pod_sel("a"), ns_sel("y")))]),
    ])  # fmt: skip
    verify(sc, cells(EVERYONE, X_PODS, [TCP80], (family,)),
           lambda p: is_self(p) or p.src not in ("y/b", "y/c"))  # fmt: skip
    assert_decided(sc, Probe("y/a", "x/c", 80, "TCP", family), ING, allowed=True,
                   tier=BASELINE, policy="b-accept-y-a", priority=5)  # fmt: skip


@MATRIX
def test_equal_priorities_are_ordered_by_name(sc: Scenario, family: int) -> None:
    """The API leaves two policies of one priority matching the same connection to the
    implementation; this agent orders them by name, so the choice is stable."""
    sc.apply([
        cnp("b-deny-y", ADMIN, 10, x_subject(), ingress=[ingress("Deny", namespaces(ns_sel("y")))]),
        cnp("a-accept-y-a", ADMIN, 10, x_subject(),
            ingress=[ingress("Accept", pods(pod_sel("a"), ns_sel("y")))]),
    ])  # fmt: skip
    verify(sc, cells(EVERYONE, X_PODS, [TCP80], (family,)),
           lambda p: is_self(p) or p.src not in ("y/b", "y/c"))  # fmt: skip
    assert_decided(sc, Probe("y/a", "x/b", 80, "TCP", family), ING, allowed=True, tier=ADMIN,
                   policy="a-accept-y-a", priority=10)  # fmt: skip


@MATRIX
def test_rule_order_within_a_policy_decides(sc: Scenario, family: int) -> None:
    """API: "The relative precedence of ingress rules within a single CNP object ... will be
    determined by the order in which the rule is written."  Ingress: accept y/a, then deny
    y (y/b, y/c), then an Accept of y that is never reached.  Egress (x is default-deny by
    NetworkPolicy): deny z/a, then accept z (z/b, z/c)."""
    sc.apply([
        default_deny("x", "Egress"),
        cnp("ordered", ADMIN, 10, x_subject(),
            ingress=[
                ingress("Accept", pods(pod_sel("a"), ns_sel("y")), name="y-a-first"),
                ingress("Deny", namespaces(ns_sel("y")), name="then-y"),
                ingress("Accept", namespaces(ns_sel("y")), name="never-reached"),
            ],
            egress=[
                egress("Deny", pods(pod_sel("a"), ns_sel("z")), name="not-z-a"),
                egress("Accept", namespaces(ns_sel("z")), name="z"),
            ]),
    ])  # fmt: skip

    def ingress_ok(p: Probe) -> bool:
        return ns_of(p.dst) != "x" or p.src not in ("y/b", "y/c")

    def egress_ok(p: Probe) -> bool:
        return ns_of(p.src) != "x" or p.dst in ("z/b", "z/c")

    probes = cells(EVERYONE, X_PODS, [TCP80], (family,)) + cells(
        X_PODS, EVERYONE, [TCP80], (family,)
    )
    verify(sc, probes, lambda p: is_self(p) or both(ingress_ok, egress_ok)(p))
    assert_decided(sc, Probe("y/c", "x/a", 80, "TCP", family), ING, allowed=False, tier=ADMIN,
                   policy="ordered", priority=10, rule_index=1, rule_name="then-y")  # fmt: skip
    assert_decided(sc, Probe("x/a", "z/a", 80, "TCP", family), EGR, allowed=False, tier=ADMIN,
                   policy="ordered", rule_index=0, rule_name="not-z-a")  # fmt: skip
    assert_decided(sc, Probe("x/a", "z/c", 80, "TCP", family), EGR, allowed=True, tier=ADMIN,
                   policy="ordered", rule_index=1, rule_name="z")  # fmt: skip


@MATRIX
def test_egress_accept_still_needs_the_destinations_ingress(sc: Scenario, family: int) -> None:
    """Egress Accept: "No further egress ClusterNetworkPolicy or NetworkPolicy rules will be
    processed but any ingress rules at the destination do apply."  x's own egress
    NetworkPolicy is skipped; y/b's ingress NetworkPolicy still denies."""
    sc.apply([
        default_deny("x", "Egress"),
        netpol("y", "b-isolated", {"podSelector": pod_sel("b"), "policyTypes": ["Ingress"]}),
        cnp("x-to-y", ADMIN, 10, x_subject(),
            egress=[egress("Accept", namespaces(ns_sel("y")), name="y")]),
    ])  # fmt: skip
    verify(sc, cells(X_PODS, EVERYONE, [TCP80, UDP81], (family,)),
           lambda p: is_self(p) or p.dst in ("y/a", "y/c"))  # fmt: skip
    probe = Probe("x/a", "y/b", 80, "TCP", family)
    assert_decided(sc, probe, EGR, allowed=True, tier=ADMIN, policy="x-to-y", priority=10,
                   rule_index=0, rule_name="y")  # fmt: skip
    assert_decided(sc, probe, ING, allowed=False, tier="NetworkPolicy")


@MATRIX
def test_baseline_applies_only_where_no_networkpolicy_isolates_the_pod_in_that_direction(
    sc: Scenario, family: int
) -> None:
    """API: "v1.NetworkPolicy always makes a final decision for selected pods. Further evaluation
    only happens for Pods not selected by a v1.NetworkPolicy."  The baseline denies x's
    pod traffic both ways; a NetworkPolicy isolates x/a for ingress only (allowing z), so
    x/a's ingress follows it while x/a's egress still follows the baseline."""
    sc.apply([
        cnp("zero-trust-x", BASELINE, 10, x_subject(),
            ingress=[ingress("Deny", namespaces({}), name="no-pod-in")],
            egress=[egress("Deny", namespaces({}), name="no-pod-out")]),
        netpol("x", "a-from-z", {"podSelector": pod_sel("a"), "policyTypes": ["Ingress"],
                                 "ingress": [{"from": [{"namespaceSelector": ns_sel("z")}]}]}),
    ])  # fmt: skip

    def egress_ok(p: Probe) -> bool:  # the baseline everywhere in x
        return ns_of(p.src) != "x" or p.dst not in PODS

    def ingress_ok(p: Probe) -> bool:
        if p.dst == "x/a":  # the NetworkPolicy decides
            return ns_of(p.src) == "z"
        return ns_of(p.dst) != "x" or p.src not in PODS  # the baseline

    probes = cells(EVERYONE, X_PODS, [TCP80], (family,)) + cells(
        X_PODS, EVERYONE, [TCP80], (family,)
    )
    verify(sc, probes, lambda p: is_self(p) or both(egress_ok, ingress_ok)(p))
    assert_decided(sc, Probe("z/a", "x/a", 80, "TCP", family), ING, allowed=True,
                   tier="NetworkPolicy", policy="x/a-from-z")  # fmt: skip
    assert_decided(sc, Probe("x/a", "y/a", 80, "TCP", family), EGR, allowed=False,
                   tier=BASELINE, policy="zero-trust-x", priority=10, rule_name="no-pod-out")  # fmt: skip
    assert_decided(sc, Probe("z/a", "x/b", 80, "TCP", family), ING, allowed=False,
                   tier=BASELINE, policy="zero-trust-x", rule_name="no-pod-in")  # fmt: skip


@MATRIX
def test_a_policy_without_rules_in_a_direction_does_not_touch_that_direction(
    sc: Scenario, family: int
) -> None:
    """API: "CNPs with no ingress rules do not affect ingress traffic" (and egress alike).  An
    egress-only admin policy on x leaves x's ingress to the Baseline tier (which denies
    z); an ingress-only one on y leaves y's egress alone."""
    sc.apply([
        cnp("x-egress-only", ADMIN, 10, x_subject(), egress=[egress("Deny", namespaces({}))]),
        cnp("y-ingress-only", ADMIN, 20, namespaces(ns_sel("y")),
            ingress=[ingress("Deny", namespaces({}))]),
        cnp("x-baseline", BASELINE, 10, x_subject(),
            ingress=[ingress("Deny", namespaces(ns_sel("z")))]),
    ])  # fmt: skip

    def egress_ok(p: Probe) -> bool:
        return ns_of(p.src) != "x" or p.dst not in PODS

    def ingress_ok(p: Probe) -> bool:
        if ns_of(p.dst) == "y":
            return p.src not in PODS
        return ns_of(p.dst) != "x" or ns_of(p.src) != "z"

    verify(sc, cells(EVERYONE, EVERYONE, [TCP80], (family,)),
           lambda p: is_self(p) or both(egress_ok, ingress_ok)(p))  # fmt: skip
    assert_decided(sc, Probe("z/a", "x/a", 80, "TCP", family), ING, allowed=False,
                   tier=BASELINE, policy="x-baseline")  # fmt: skip
    assert_decided(sc, Probe("y/a", "z/a", 80, "TCP", family), EGR, allowed=True,
                   tier="default")  # fmt: skip


# ====================================================================== subjects
@MATRIX
def test_subject_namespaces_selects_every_pod_of_the_matching_namespaces(
    sc: Scenario, family: int
) -> None:
    """subject.namespaces: "select pods via namespace selectors"."""
    sc.apply([cnp("xy-from-z", ADMIN, 10, namespaces(ns_in("x", "y")),
                  ingress=[ingress("Deny", namespaces(ns_sel("z")))])])  # fmt: skip
    verify(sc, cells(EVERYONE, PODS, [TCP80], (family,)),
           lambda p: not (ns_of(p.dst) in ("x", "y") and ns_of(p.src) == "z"))  # fmt: skip


@MATRIX
def test_subject_pods_selects_pods_within_the_namespaces(sc: Scenario, family: int) -> None:
    """subject.pods: namespace selector AND pod selector; without a namespaceSelector it
    spans every namespace (its peer twin too: pods `pod: b` of any namespace)."""
    sc.apply([
        cnp("a-in-x-y", ADMIN, 10, pods(pod_sel("a"), ns_in("x", "y")),
            ingress=[ingress("Deny", namespaces(ns_sel("z")))]),
        cnp("c-anywhere", ADMIN, 20, pods(pod_sel("c")),
            ingress=[ingress("Deny", pods(pod_sel("b")))]),
    ])  # fmt: skip

    def expected(p: Probe) -> bool:
        if p.dst in ("x/a", "y/a"):
            return ns_of(p.src) != "z"
        if p.dst.endswith("/c"):
            return not p.src.endswith("/b")
        return True

    verify(sc, cells(EVERYONE, PODS, [TCP80], (family,)), expected)


@MATRIX
def test_empty_selectors_select_everything(sc: Scenario, family: int) -> None:
    """`namespaces: {}` / `pods: {namespaceSelector: {}, podSelector: {}}` as subject and
    peer: every pod (but nothing that is not a pod: ext stays reachable both ways)."""
    probes = cells(EVERYONE, EVERYONE, [TCP80], (family,))
    sc.apply([cnp("all-in", ADMIN, 10, namespaces({}),
                  ingress=[ingress("Deny", namespaces({}))])])  # fmt: skip
    verify(sc, probes, lambda p: is_self(p) or EXT in (p.src, p.dst), "namespaces {}")
    sc.apply([cnp("all-out", ADMIN, 10, pods({}, {}),
                  egress=[egress("Deny", pods({}, {}))])])  # fmt: skip
    verify(sc, probes, lambda p: is_self(p) or EXT in (p.src, p.dst), "pods {} {}")


# ====================================================================== peers
@MATRIX
def test_namespaces_and_pods_peers(sc: Scenario, family: int) -> None:
    """Peers: `namespaces` (every pod of them), `pods` (namespace AND pod selector); several
    peers of a rule are ORed.  Ingress: accept y or z/b, deny other pods; egress: deny y/a
    or z."""
    sc.apply([cnp("x-peers", ADMIN, 10, x_subject(),
        ingress=[
            ingress("Accept", namespaces(ns_sel("y")), pods(pod_sel("b"), ns_sel("z")),
                    name="y-or-z-b"),
            ingress("Deny", namespaces({}), name="other-pods"),
        ],
        egress=[egress("Deny", pods(pod_sel("a"), ns_sel("y")), namespaces(ns_sel("z")),
                       name="y-a-or-z")])])  # fmt: skip

    def ingress_ok(p: Probe) -> bool:
        return ns_of(p.dst) != "x" or ns_of(p.src) == "y" or p.src in ("z/b", EXT)

    def egress_ok(p: Probe) -> bool:
        return ns_of(p.src) != "x" or not (p.dst == "y/a" or ns_of(p.dst) == "z")

    probes = cells(EVERYONE, X_PODS, [TCP80], (family,)) + cells(
        X_PODS, EVERYONE, [TCP80], (family,)
    )
    verify(sc, probes, lambda p: is_self(p) or both(ingress_ok, egress_ok)(p))


@MATRIX
def test_networks_peer_matches_addresses_pod_traffic_and_icmp_too(
    sc: Scenario, family: int
) -> None:
    """networks: CIDRs of both families; "cluster-internal traffic will be checked against
    the rule as well" (y/b is matched by its address) and "Networks matches both regular IP
    traffic and ICMP traffic"."""
    lab = sc.lab
    sc.apply([cnp("x-a-networks", ADMIN, 10, pods(pod_sel("a"), ns_sel("x")), egress=[
        egress("Accept", networks(host_cidr(lab, "y/b", 4), host_cidr(lab, "y/b", 6)),
               name="y-b"),
        egress("Deny", networks(ALL_V4, ALL_V6), name="everything-else"),
    ])])  # fmt: skip
    probes = cells(["x/a"], [*EVERYONE, "node-2"], [TCP80, UDP81], (family,))
    verify(sc, probes, lambda p: p.dst in ("x/a", "y/b"))
    assert_decided(sc, Probe("x/a", "z/a", 80, "TCP", family), EGR, allowed=False, tier=ADMIN,
                   policy="x-a-networks", priority=10, rule_index=1,
                   rule_name="everything-else")  # fmt: skip
    verify_pings(lab, family, {("x/a", "y/b"): True, ("x/a", "z/a"): False,
                               ("x/a", EXT): False, ("x/b", EXT): True})  # fmt: skip


@MATRIX
def test_an_ipv4_network_never_matches_ipv6_traffic(sc: Scenario, family: int) -> None:
    """x denies 0.0.0.0/0 only, y denies ::/0 only: each blocks only its own family."""
    sc.apply([
        cnp("x-no-v4", ADMIN, 10, x_subject(), egress=[egress("Deny", networks(ALL_V4))]),
        cnp("y-no-v6", ADMIN, 10, namespaces(ns_sel("y")),
            egress=[egress("Deny", networks(ALL_V6))]),
    ])  # fmt: skip
    blocked = "x" if family == 4 else "y"
    verify(sc, cells([*X_PODS, *Y_PODS], EVERYONE, [TCP80], (family,)),
           lambda p: is_self(p) or ns_of(p.src) != blocked)  # fmt: skip


def _node_object(sc: Scenario, name: str) -> dict[str, Any]:
    for obj in sc.lab.objects():
        if obj["kind"] == "Node" and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(name)


@MATRIX
def test_nodes_peer_selects_node_addresses_by_label(sc: Scenario, family: int) -> None:
    """nodes: "selects the nodeIPs ... in the node.Status.Addresses field" of the nodes
    whose labels match; `{}` selects all nodes.  Pods on those nodes are no node addresses;
    a pod's own node stays reachable (see the node exemption)."""
    node2 = _node_object(sc, "node-2")
    node2["metadata"]["labels"]["role"] = "infra"
    sc.apply([
        cnp("x-not-infra", ADMIN, 10, x_subject(),
            egress=[egress("Deny", nodes({"matchLabels": {"role": "infra"}}), name="infra")]),
        cnp("y-no-nodes", ADMIN, 10, namespaces(ns_sel("y")),
            egress=[egress("Deny", nodes({}), name="all-nodes")]),
    ], overrides=[node2])  # fmt: skip

    def expected(p: Probe) -> bool:
        if p.dst not in NODES or p.dst == node_of(sc.lab, p.src):
            return True
        if ns_of(p.src) == "y":
            return False
        return not (ns_of(p.src) == "x" and p.dst == "node-2")

    probes = cells([*X_PODS, *Y_PODS, "z/b"], [*NODES, "z/a", "y/b", EXT], [TCP80, UDP81],
                   (family,))  # fmt: skip
    verify(sc, probes, expected)
    assert_decided(sc, Probe("x/a", "node-2", 80, "TCP", family), EGR, allowed=False,
                   tier=ADMIN, policy="x-not-infra", priority=10, rule_name="infra")  # fmt: skip


# ====================================================================== protocols
@MATRIX
def test_protocols_match_tcp_udp_and_sctp_by_port_number(sc: Scenario, family: int) -> None:
    """protocols: tcp/udp/sctp destinationPort.number; only the listed protocol-port pairs
    are denied."""
    sc.apply([cnp("x-ports", ADMIN, 10, x_subject(), ingress=[
        ingress("Deny", namespaces({}), protocols=[tcp(80), udp(81), sctp(80)])])])  # fmt: skip
    denied = {TCP80, UDP81, SCTP80}
    verify(sc, cells(EVERYONE, X_PODS, ALL_PP, (family,)),
           lambda p: is_self(p) or p.src == EXT or (p.port, p.protocol) not in denied)  # fmt: skip


@MATRIX
def test_protocols_match_port_ranges(sc: Scenario, family: int) -> None:
    """destinationPort.range: start..end inclusive, per protocol."""
    sc.apply([cnp("x-ranges", ADMIN, 10, x_subject(), ingress=[
        ingress("Deny", namespaces({}),
                protocols=[tcp((81, 90)), udp((70, 80)), sctp((81, 82))])])])  # fmt: skip
    denied = {TCP81, UDP80, SCTP81}
    verify(sc, cells(EVERYONE, X_PODS, ALL_PP, (family,)),
           lambda p: is_self(p) or p.src == EXT or (p.port, p.protocol) not in denied)  # fmt: skip


@MATRIX
def test_destination_named_port_on_egress_resolves_at_the_destination_pod(
    sc: Scenario, family: int
) -> None:
    """destinationNamedPort "selects a destination port on a pod based on the ContainerPort
    name": `web` is 81/TCP on y/a, 80/TCP on y/b, 80/UDP on z/a, absent elsewhere (and
    80/TCP on the source x/a itself, which must not matter)."""
    overrides = []
    for key, port, proto in (("y/a", 81, "TCP"), ("y/b", 80, "TCP"), ("z/a", 80, "UDP"),
                             ("x/a", 80, "TCP")):  # fmt: skip
        obj = sc.pod_object(key)
        Scenario.with_named_port(obj, "web", port, proto)
        overrides.append(obj)
    sc.apply([cnp("x-a-no-web", ADMIN, 10, pods(pod_sel("a"), ns_sel("x")), egress=[
        egress("Deny", namespaces({}), protocols=[named_port("web")], name="web")])],
        overrides=overrides)  # fmt: skip
    denied = {("y/a", 81, "TCP"), ("y/b", 80, "TCP"), ("z/a", 80, "UDP")}
    verify(sc, cells(["x/a"], EVERYONE, [TCP80, TCP81, UDP80, UDP81], (family,)),
           lambda p: (p.dst, p.port, p.protocol) not in denied)  # fmt: skip
    assert_decided(sc, Probe("x/a", "y/a", 81, "TCP", family), EGR, allowed=False, tier=ADMIN,
                   policy="x-a-no-web", rule_name="web")  # fmt: skip


@MATRIX
def test_destination_named_port_on_ingress_resolves_at_the_subject(
    sc: Scenario, family: int
) -> None:
    """On ingress the destination is the subject pod: `web` is 81/TCP on x/a, 80/TCP on x/b,
    absent on x/c; a source's own `web` (y/a: 80/TCP) does not matter."""
    overrides = []
    for key, port in (("x/a", 81), ("x/b", 80), ("y/a", 80)):
        obj = sc.pod_object(key)
        Scenario.with_named_port(obj, "web", port, "TCP")
        overrides.append(obj)
    sc.apply([cnp("x-no-web-in", ADMIN, 10, x_subject(), ingress=[
        ingress("Deny", namespaces({}), protocols=[named_port("web")])])],
        overrides=overrides)  # fmt: skip
    web = {"x/a": 81, "x/b": 80}
    verify(sc, cells(EVERYONE, X_PODS, [TCP80, TCP81, UDP80, UDP81], (family,)),
           lambda p: is_self(p) or p.src == EXT or p.protocol != "TCP"
           or web.get(p.dst) != p.port)  # fmt: skip


@MATRIX
def test_no_protocols_means_all_traffic_icmp_too(sc: Scenario, family: int) -> None:
    """protocols: "If unspecified, protocol-specific attributes will not be used to match
    traffic": x/a's Deny of y covers every protocol, ping included; x/b's Deny of y only
    TCP 80 (ping passes)."""
    sc.apply([
        cnp("x-a-from-y", ADMIN, 10, pods(pod_sel("a"), ns_sel("x")),
            ingress=[ingress("Deny", namespaces(ns_sel("y")))]),
        cnp("x-b-tcp-80-from-y", ADMIN, 10, pods(pod_sel("b"), ns_sel("x")),
            ingress=[ingress("Deny", namespaces(ns_sel("y")), protocols=[tcp(80)])]),
    ])  # fmt: skip

    def expected(p: Probe) -> bool:
        if ns_of(p.src) != "y":
            return True
        return p.dst == "x/b" and (p.port, p.protocol) != TCP80

    verify(sc, cells(EVERYONE, ["x/a", "x/b"], ALL_PP, (family,)), expected)
    verify_pings(sc.lab, family, {("y/b", "x/a"): False, ("y/a", "x/a"): False,
                                  ("z/b", "x/a"): True, ("y/b", "x/b"): True})  # fmt: skip


@MATRIX
def test_service_traffic_is_judged_at_the_backend_pod_and_target_port(
    sc: Scenario, family: int
) -> None:
    """Policy sees the packet after the Service's DNAT: x/c denies 81/TCP from y, so y/a
    cannot reach it through svc-81 (port 80 -> targetPort 81) but can through svc-80, and
    z's admin Deny of the ClusterIP range (networks) matches nothing: it sees pod addresses."""
    vips = ["10.96.0.0/16", "fd00:10:96::/64"]
    sc.apply([
        cnp("x-c-81", ADMIN, 10, pods(pod_sel("c"), ns_sel("x")),
            ingress=[ingress("Deny", namespaces(ns_sel("y")), protocols=[tcp(81)])]),
        cnp("no-cluster-ips", ADMIN, 20, namespaces(ns_sel("z")),
            egress=[egress("Deny", networks(*vips))]),
    ])  # fmt: skip
    sc.add_service(Service("svc-81", "x/c", "10.96.0.81", "fd00:10:96::51", {TCP80: 81}))
    sc.add_service(Service("svc-80", "x/c", "10.96.0.80", "fd00:10:96::50", {TCP80: 80}))
    probes = cells(["y/a", "y/b", "z/a", "z/b"], ["svc-81", "svc-80"], [TCP80], (family,))
    verify(sc, probes, lambda p: not (ns_of(p.src) == "y" and p.dst == "svc-81"))


# ====================================================================== host, replies
@MATRIX
def test_hostnetwork_pods_are_neither_subjects_nor_peers(sc: Scenario, family: int) -> None:
    """API: "host-networked pods are not included in subject selection" nor in namespaces/pods
    peers.  x/hn is a hostNetwork pod on node-2 (node-2's addresses): accepting it does
    not let node-2 into x/a, x/b (x is default-deny), denying it does not cut x off from
    node-2, and selecting it as subject isolates nothing."""
    n2 = sc.lab.node("node-2")
    hn = sc.extra_pod("x", "hn", node="node-2", ips=[n2.wan_v4, n2.wan_v6],
                      pod_labels={"pod": "hn"}, host_network=True)  # fmt: skip
    sc.apply([
        default_deny("x", "Ingress"),
        cnp("accept-hn", ADMIN, 10, x_subject(), ingress=[ingress("Accept", pods(pod_sel("hn")))]),
        cnp("deny-to-hn", ADMIN, 20, x_subject(), egress=[egress("Deny", pods(pod_sel("hn")))]),
        cnp("hn-subject", ADMIN, 30, pods(pod_sel("hn")),
            ingress=[ingress("Deny", namespaces({}))], egress=[egress("Deny", namespaces({}))]),
    ], extra=[hn])  # fmt: skip

    def expected(p: Probe) -> bool:
        if ns_of(p.dst) == "x":  # default-deny, the pod's own node excepted
            return p.src == node_of(sc.lab, p.dst)
        return True

    probes = (cells(NODES, [*X_PODS, "y/a", "y/b"], [TCP80], (family,))
              + cells([*X_PODS, "y/a", "y/b"], NODES, [TCP80], (family,)))  # fmt: skip
    verify(sc, probes, expected)


@MATRIX
def test_own_node_stays_reachable_under_an_admin_deny_all(sc: Scenario, family: int) -> None:
    """Traffic between a pod and its own node stays allowed (kubelet probes): an admin Deny
    of every pod, node and network keeps x/a <-> node-1 and x/c <-> node-2, while the
    other node is denied as an ordinary address.  (Ingress peers cannot name nodes; the
    fail-closed tests cover a Deny of everything on ingress.)"""
    sc.apply([cnp("deny-everything", ADMIN, 0, namespaces({}),
                  ingress=[ingress("Deny", namespaces({}))],
                  egress=[egress("Deny", namespaces({}), nodes({}),
                                 networks(ALL_V4, ALL_V6))])])  # fmt: skip

    def expected(p: Probe) -> bool:
        if p.src in NODES:  # only pods are ingress peers
            return True
        return is_self(p) or p.dst == node_of(sc.lab, p.src)

    probes = cells(NODES, X_PODS, [TCP80, UDP81], (family,)) + cells(
        X_PODS, [*NODES, EXT, "y/b"], [TCP80, UDP81], (family,))  # fmt: skip
    verify(sc, probes, expected)


@MATRIX
def test_replies_and_related_icmp_of_an_accepted_connection_pass(sc: Scenario, family: int) -> None:
    """Accept "accepts the selected traffic, including replies to that traffic": x -> y is
    accepted both ends while x denies all pod ingress and y all pod egress, so only the
    replies cross those Denies (TCP handshakes, UDP echoes); y -> x is denied."""
    sc.apply([
        cnp("x", ADMIN, 10, x_subject(), ingress=[ingress("Deny", namespaces({}))],
            egress=[egress("Accept", namespaces(ns_sel("y")))]),
        cnp("y", ADMIN, 20, namespaces(ns_sel("y")),
            ingress=[ingress("Accept", namespaces(ns_sel("x")))],
            egress=[egress("Deny", namespaces({}))]),
    ])  # fmt: skip
    pp = [TCP80, UDP80, SCTP80]
    probes = cells(X_PODS, Y_PODS, pp, (family,)) + cells(Y_PODS, X_PODS, pp, (family,))
    verify(sc, probes, lambda p: ns_of(p.src) == "x")
    verify_pings(sc.lab, family, {("x/a", "y/b"): True, ("y/b", "x/a"): False})
    # "... and related ICMP traffic": UDP to a port nobody serves is answered by an ICMP
    # port unreachable, which crosses x's ingress Deny (refused); the other way round the
    # datagram itself is denied (no answer at all).
    closed = [Probe("x/a", "y/b", 82, "UDP", family), Probe("y/b", "x/a", 82, "UDP", family)]
    m = sc.run(closed)
    got = {p: m[p].verdict for p in closed}
    assert got == {closed[0]: Verdict.REFUSED, closed[1]: Verdict.DENIED}, got


# ====================================================================== fail closed
def _problems(sc: Scenario) -> tuple[str, ...]:
    return tuple(build_state(sc.objects).problems)


@MATRIX
def test_a_domain_names_rule_fails_closed_as_a_deny_with_a_problem(
    sc: Scenario, family: int
) -> None:
    """domainNames is not supported: the rule becomes a Deny of everything at its place
    (stricter than "match no traffic" for an Accept: the subjects stay isolated), with a
    problem naming the field.  The Accept before it still decides first."""
    sc.apply([cnp("x-allowlist", ADMIN, 10, x_subject(), egress=[
        egress("Accept", namespaces(ns_sel("y")), name="y"),
        {"action": "Accept", "name": "example", "to": [{"domainNames": ["example.com"]}]},
    ])], problems_expected=True)  # fmt: skip
    problems = _problems(sc)
    assert any("ClusterNetworkPolicy x-allowlist" in p and "spec.egress[1].to[0].domainNames" in p
               for p in problems), problems  # fmt: skip
    verify(sc, cells(X_PODS, [*EVERYONE, *NODES], [TCP80, UDP81], (family,)),
           lambda p: is_self(p) or ns_of(p.dst) == "y" or p.dst == node_of(sc.lab, p.src))  # fmt: skip
    assert_decided(sc, Probe("x/a", "z/a", 80, "TCP", family), EGR, allowed=False, tier=ADMIN,
                   policy="x-allowlist", priority=10, rule_index=1, rule_name="example")  # fmt: skip


@MATRIX
def test_an_unreadable_rule_fails_closed_as_a_deny_of_everything(sc: Scenario, family: int) -> None:
    """An unknown action ("Allow") cannot be read: a Deny of everything at its place, every
    pod and address (the other node and ext too), with the pod's own node still exempt."""
    sc.apply([cnp("x-typo", ADMIN, 10, x_subject(), ingress=[
        ingress("Accept", namespaces(ns_sel("y")), name="y"),
        ingress("Allow", namespaces(ns_sel("z")), name="z"),
    ])], problems_expected=True)  # fmt: skip
    problems = _problems(sc)
    assert any("ClusterNetworkPolicy x-typo" in p and "spec.ingress[1]" in p for p in problems), (
        problems
    )
    verify(sc, cells([*EVERYONE, *NODES], X_PODS, [TCP80, UDP81], (family,)),
           lambda p: is_self(p) or ns_of(p.src) == "y" or p.src == node_of(sc.lab, p.dst))  # fmt: skip


@MATRIX
def test_a_peer_with_no_field_this_agent_knows_fails_closed(sc: Scenario, family: int) -> None:
    """API: "If an implementation sees no fields are set [in a peer] then it can infer that
    the deployed CRD is of an incompatible version with an unknown field. In that case it
    should fail closed."  A Pass rule whose peer has only a future field: a Deny of
    everything at its place (for a Deny or Pass rule the API asks exactly that)."""
    sc.apply([cnp("x-future", ADMIN, 10, x_subject(), ingress=[
        ingress("Accept", namespaces(ns_sel("y")), name="y"),
        {"action": "Pass", "name": "tenants", "from": [{"sameTenant": {"key": "tenant"}}]},
    ])], problems_expected=True)  # fmt: skip
    problems = _problems(sc)
    assert any("ClusterNetworkPolicy x-future" in p and "spec.ingress[1].from[0]" in p
               for p in problems), problems  # fmt: skip
    verify(sc, cells([*EVERYONE, *NODES], X_PODS, [TCP80, UDP81], (family,)),
           lambda p: is_self(p) or ns_of(p.src) == "y" or p.src == node_of(sc.lab, p.dst))  # fmt: skip
    assert_decided(sc, Probe("z/a", "x/c", 80, "TCP", family), ING, allowed=False, tier=ADMIN,
                   policy="x-future", priority=10, rule_index=1, rule_name="tenants")  # fmt: skip


@MATRIX
def test_a_policy_whose_spec_cannot_be_read_fails_closed(sc: Scenario, family: int) -> None:
    """An unknown tier: the policy becomes an Admin Deny of everything, both ways, for its
    subject (x), over x's allow-all NetworkPolicy; only self and the own node remain."""
    sc.apply([
        allow_all("x", "Ingress", "Egress"),
        cnp("x-bad-tier", "Platform", 10, x_subject(),
            ingress=[ingress("Accept", namespaces({}))], egress=[egress("Accept", namespaces({}))]),
    ], problems_expected=True)  # fmt: skip
    problems = _problems(sc)
    assert any("ClusterNetworkPolicy x-bad-tier" in p and "spec.tier" in p for p in problems), (
        problems
    )

    def expected(p: Probe) -> bool:
        if is_self(p):
            return True
        if ns_of(p.dst) == "x" and p.src != node_of(sc.lab, p.dst):
            return False
        return not (ns_of(p.src) == "x" and p.dst != node_of(sc.lab, p.src))

    everyone = [*EVERYONE, *NODES]
    probes = cells(everyone, X_PODS, [TCP80, UDP81], (family,)) + cells(
        X_PODS, everyone, [TCP80, UDP81], (family,))  # fmt: skip
    verify(sc, probes, expected)
    assert_decided(sc, Probe("y/a", "x/a", 80, "TCP", family), ING, allowed=False, tier=ADMIN,
                   policy="x-bad-tier", priority=10)  # fmt: skip


@MATRIX
def test_a_policy_whose_subject_cannot_be_read_isolates_every_pod(
    sc: Scenario, family: int
) -> None:
    """A subject with a field this agent does not know could select anyone: the policy
    becomes an Admin Deny of everything for every pod, both ways; only a pod's traffic to
    itself and between a pod and its own node remain."""
    sc.apply([
        cnp("future-subject", BASELINE, 500, {"serviceAccounts": {"name": "web"}},
            ingress=[ingress("Accept", namespaces({}))]),
    ], problems_expected=True)  # fmt: skip
    problems = _problems(sc)
    assert any("ClusterNetworkPolicy future-subject" in p and "spec.subject" in p
               for p in problems), problems  # fmt: skip
    everyone = [*EVERYONE, *NODES]
    verify(sc, cells(everyone, everyone, [TCP80], (family,)),
           lambda p: is_self(p) or not ({p.src, p.dst} & set(PODS))
           or node_of(sc.lab, p.src) == p.dst or node_of(sc.lab, p.dst) == p.src)  # fmt: skip
    assert_decided(sc, Probe("y/a", "z/b", 80, "TCP", family), EGR, allowed=False, tier=ADMIN,
                   policy="future-subject", priority=500)  # fmt: skip


@MATRIX
def test_a_quarantined_pod_stays_isolated_under_an_admin_accept(sc: Scenario, family: int) -> None:
    """Bad input fails closed before any tier: x/a's labels cannot be read, so an admin
    Accept of everything to and from x cannot open it; x/b, under the same Accept, is
    open."""
    xa = sc.pod_object("x/a")
    xa["metadata"]["labels"]["bad key!"] = "x"
    sc.apply([
        default_deny("x", "Ingress", "Egress"),
        cnp("x-open", ADMIN, 0, x_subject(), ingress=[ingress("Accept", namespaces({}))],
            egress=[egress("Accept", namespaces({}))]),
    ], overrides=[xa], problems_expected=True)  # fmt: skip

    def expected(p: Probe) -> bool:
        if is_self(p):
            return True
        if "x/a" in (p.src, p.dst):
            return False
        return EXT not in (p.src, p.dst) or "x" not in (ns_of(p.src), ns_of(p.dst))

    probes = cells(EVERYONE, X_PODS, [TCP80, UDP81], (family,)) + cells(
        X_PODS, EVERYONE, [TCP80, UDP81], (family,))  # fmt: skip
    verify(sc, probes, expected)


# ====================================================================== the README's examples
README_ADMIN_EXAMPLE = """\
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: protect-monitoring
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces:
      matchLabels:
        kubernetes.io/metadata.name: monitoring
  ingress:
  - name: allow-prometheus
    action: Accept
    from:
    - pods:
        namespaceSelector:
          matchLabels:
            kubernetes.io/metadata.name: monitoring
        podSelector:
          matchLabels:
            app: prometheus
  - name: deny-the-rest
    action: Deny
    from:
    - namespaces: {}
"""

README_BASELINE_EXAMPLE = """\
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: isolate-team-a
spec:
  tier: Baseline
  priority: 50
  subject:
    namespaces:
      matchLabels:
        kubernetes.io/metadata.name: team-a
  ingress:
  - name: same-namespace
    action: Accept
    from:
    - namespaces:
        matchLabels:
          kubernetes.io/metadata.name: team-a
  - name: other-namespaces
    action: Deny
    from:
    - namespaces: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-from-team-b
  namespace: team-a
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: team-b
"""

# As in the real-node walkthrough of the same examples (tests/node/test_cnp_walkthrough.py).
README_PODS = {
    "monitoring/prometheus": "node-1", "monitoring/grafana": "node-2",
    "team-a/web": "node-1", "team-a/api": "node-2", "team-b/client": "node-2",
}  # fmt: skip
README_EVERYONE = [*README_PODS, EXT]


def readme_spec() -> LabSpec:
    return LabSpec(
        nodes=("node-1", "node-2"),
        namespaces=tuple(NamespaceSpec(ns) for ns in ("monitoring", "team-a", "team-b")),
        pods=tuple(
            PodSpec(ns, name, node, {"app": name})
            for ns, name, node in ((*k.split("/"), n) for k, n in README_PODS.items())
        ),
    )


@pytest.fixture(scope="module")
def readme_lab() -> Iterator[Lab]:
    """A lab whose namespaces carry the README example's names (built like ``lab``)."""
    if os.geteuid() != 0:
        pytest.skip("the netns lab needs root (network namespaces, iptables, raw sockets)")
    sweep_stale_labs()
    the_lab = Lab(readme_spec())
    with signals_as_interrupt(), owner_marker(the_lab.prefix):
        try:
            the_lab.start()
            yield the_lab
        finally:
            the_lab.close()


@pytest.fixture
def readme(readme_lab: Lab, backend: Backend) -> Iterator[Scenario]:
    readme_lab.reset_firewall()
    try:
        yield Scenario(readme_lab, backend)
    finally:
        readme_lab.reset_firewall()


@MATRIX
def test_readme_admin_example_nothing_reaches_monitoring_except_prometheus(
    readme: Scenario, family: int
) -> None:
    """The README's admin example, verbatim: no pod reaches monitoring except Prometheus,
    even with an allow-all NetworkPolicy in monitoring (admins cannot be overridden).
    Ingress peers are pods: ext and the nodes are left to other policy."""
    example = list(yaml.safe_load_all(README_ADMIN_EXAMPLE))
    owner = allow_all("monitoring", "Ingress")
    readme.apply([*example, owner])

    def expected(p: Probe) -> bool:
        if ns_of(p.dst) != "monitoring" or is_self(p):
            return True
        return p.src in ("monitoring/prometheus", EXT, *NODES)

    probes = cells([*README_EVERYONE, *NODES], README_PODS, [TCP80, UDP81], (family,))
    verify(readme, probes, expected)
    assert_decided(readme, Probe("team-b/client", "monitoring/grafana", 80, "TCP", family),
                   ING, allowed=False, tier=ADMIN, policy="protect-monitoring",
                   priority=10, rule_index=1, rule_name="deny-the-rest")  # fmt: skip
    assert_decided(readme, Probe("monitoring/prometheus", "monitoring/grafana", 80, "TCP", family),
                   ING, allowed=True, tier=ADMIN, policy="protect-monitoring",
                   priority=10, rule_index=0, rule_name="allow-prometheus")  # fmt: skip


@MATRIX
def test_readme_baseline_example_namespace_isolation_a_networkpolicy_overrides(
    readme: Scenario, family: int
) -> None:
    """The README's baseline example, verbatim: team-a accepts only its own pods (api),
    except where team-a's NetworkPolicy takes over (web: team-b only, so not even api, and
    not ext)."""
    readme.apply(list(yaml.safe_load_all(README_BASELINE_EXAMPLE)))

    def expected(p: Probe) -> bool:
        if is_self(p) or ns_of(p.dst) != "team-a":
            return True
        if p.dst == "team-a/web":  # the NetworkPolicy decides
            return ns_of(p.src) == "team-b"
        return ns_of(p.src) == "team-a" or p.src == EXT  # the baseline

    verify(readme, cells(README_EVERYONE, README_PODS, [TCP80, UDP81], (family,)), expected)
    assert_decided(readme, Probe("team-b/client", "team-a/web", 80, "TCP", family), ING,
                   allowed=True, tier="NetworkPolicy", policy="team-a/web-from-team-b")  # fmt: skip
    assert_decided(readme, Probe("team-a/api", "team-a/web", 80, "TCP", family), ING,
                   allowed=False, tier="NetworkPolicy")  # fmt: skip
    assert_decided(readme, Probe("team-b/client", "team-a/api", 80, "TCP", family), ING,
                   allowed=False, tier=BASELINE, policy="isolate-team-a", priority=50,
                   rule_index=1, rule_name="other-namespaces")  # fmt: skip
    assert_decided(readme, Probe("team-a/web", "team-a/api", 80, "TCP", family), ING,
                   allowed=True, tier=BASELINE, policy="isolate-team-a", rule_index=0,
                   rule_name="same-namespace")  # fmt: skip
