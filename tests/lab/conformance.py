"""The network-policy-api conformance suite's world in the lab, and a runner replaying its
tests case by case.

Upstream (``sigs.k8s.io/network-policy-api@v0.3.0``, ``conformance/base/manifests.yaml``):
four namespaces labelled ``conformance-house: <house>``, each with a StatefulSet of two
pods (gryffindor: harry-potter, slytherin: draco-malfoy, hufflepuff: cedric-diggory,
ravenclaw: luna-lovegood) serving TCP 80 (named ``web``) and 8080, UDP 53 (``dns``) and
5353, SCTP 9003 and 9005; and ``forbidden-forrest`` with the hostNetwork StatefulSet
``centaur`` (two pods, so one per node) serving TCP, UDP and SCTP on the suite's
``HostNetworkPorts`` (34345 + i).  Nodes carry ``kubernetes.io/os: linux``.

Here: the same namespaces, pods, labels (StatefulSet pods also carry
``statefulset.kubernetes.io/pod-name``, which the pod-selector tests select on) and named
ports, on two nodes.  The centaurs are Pod objects with ``hostNetwork: true`` whose servers
listen in their node's own namespace (the lab's ``node_ports``), so a probe "to centaur-1"
is a probe to node-2's address, exactly as upstream pokes ``centaur-1.status.podIP``.

Placement (upstream leaves it to the scheduler): both gryffindor pods — the clients of
every node-peer probe — are on node-1 and the probed ``centaur-1`` on node-2, because
traffic from a pod to its own node is never filtered here (it goes to INPUT), so a
node-peer Deny only shows across nodes.  The other houses have ``-0`` on node-1 and ``-1``
on node-2, so the suite's probes cross both the same-node bridge and the node-to-node
path.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.lab.prober import Matrix, Probe, Prober, Verdict
from tests.lab.scenarios_support import Scenario
from tests.lab.topology import Backend, ContainerPort, Lab, LabSpec, NamespaceSpec, PodSpec

PREFIX = "network-policy-conformance-"
HOUSES = ("gryffindor", "slytherin", "hufflepuff", "ravenclaw")
FORBIDDEN_FORREST = f"{PREFIX}forbidden-forrest"
STATEFULSETS = {
    "gryffindor": "harry-potter",
    "slytherin": "draco-malfoy",
    "hufflepuff": "cedric-diggory",
    "ravenclaw": "luna-lovegood",
}
NODE_OS_LABELS = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}

RETRY_TIMEOUT = 2.0  # seconds, for a cell that timed out where explain allows it

# the suite's default HostNetworkPortRangeStart, 8 ports
HOST_NETWORK_PORTS: tuple[int, ...] = tuple(range(34345, 34345 + 8))

# every house pod: declared ``web`` TCP 80 and ``dns`` UDP 53; the other containers listen
# without declaring their ports (SCTP is answered by the prober's raw receivers)
HOUSE_POD_PORTS = (
    ContainerPort("dns", 53, "UDP"),  # first UDP port: what the lab checks readiness with
    ContainerPort("", 5353, "UDP"),
    ContainerPort("web", 80, "TCP"),
    ContainerPort("", 8080, "TCP"),
    ContainerPort("", 9003, "SCTP"),
    ContainerPort("", 9005, "SCTP"),
)
# centaur: web-<p0> TCP, web-<p1> TCP, dns-<p2> UDP, dns-<p4> UDP, SCTP <p6> and <p7>
# (and netexec's HTTP ports p3 and p5, which no test probes)
CENTAUR_PORTS = (
    ContainerPort(f"web-{HOST_NETWORK_PORTS[0]}", HOST_NETWORK_PORTS[0], "TCP"),
    ContainerPort(f"web-{HOST_NETWORK_PORTS[1]}", HOST_NETWORK_PORTS[1], "TCP"),
    ContainerPort(f"dns-{HOST_NETWORK_PORTS[2]}", HOST_NETWORK_PORTS[2], "UDP"),
    ContainerPort(f"dns-{HOST_NETWORK_PORTS[4]}", HOST_NETWORK_PORTS[4], "UDP"),
    ContainerPort("", HOST_NETWORK_PORTS[6], "SCTP"),
    ContainerPort("", HOST_NETWORK_PORTS[7], "SCTP"),
)


def ns(house: str) -> str:
    """``gryffindor`` -> ``network-policy-conformance-gryffindor``."""
    return f"{PREFIX}{house}"


def pod(house: str, index: int) -> str:
    """The lab's endpoint name (``<namespace>/<pod>``) of a house pod."""
    return f"{ns(house)}/{STATEFULSETS[house]}-{index}"


HARRY_POTTER_0, HARRY_POTTER_1 = pod("gryffindor", 0), pod("gryffindor", 1)
DRACO_MALFOY_0, DRACO_MALFOY_1 = pod("slytherin", 0), pod("slytherin", 1)
CEDRIC_DIGGORY_0, CEDRIC_DIGGORY_1 = pod("hufflepuff", 0), pod("hufflepuff", 1)
LUNA_LOVEGOOD_0, LUNA_LOVEGOOD_1 = pod("ravenclaw", 0), pod("ravenclaw", 1)
HOUSE_PODS = tuple(pod(h, i) for h in HOUSES for i in (0, 1))

PLACEMENT: Mapping[str, str] = {
    HARRY_POTTER_0: "node-1", HARRY_POTTER_1: "node-1",
    DRACO_MALFOY_0: "node-1", DRACO_MALFOY_1: "node-2",
    CEDRIC_DIGGORY_0: "node-1", CEDRIC_DIGGORY_1: "node-2",
    LUNA_LOVEGOOD_0: "node-1", LUNA_LOVEGOOD_1: "node-2",
}  # fmt: skip
CENTAUR_NODES = {"centaur-0": "node-1", "centaur-1": "node-2"}
# a poke "to centaur-1" goes to its status.podIP, i.e. its node's address
CENTAUR_1 = CENTAUR_NODES["centaur-1"]


def statefulset_labels(house: str, index: int) -> dict[str, str]:
    """What the StatefulSet controller puts on its pods (template labels + its own)."""
    name = f"{STATEFULSETS[house]}-{index}"
    return {
        "conformance-house": house,
        "statefulset.kubernetes.io/pod-name": name,
        "apps.kubernetes.io/pod-index": str(index),
        "controller-revision-hash": f"{STATEFULSETS[house]}-6d5f8b7c9",
    }


def conformance_spec() -> LabSpec:
    namespaces = tuple(
        NamespaceSpec(ns(h), {"conformance-house": h}) for h in (*HOUSES, "forbidden-forrest")
    )
    pods = tuple(
        PodSpec(
            ns(h),
            f"{STATEFULSETS[h]}-{i}",
            PLACEMENT[pod(h, i)],
            statefulset_labels(h, i),
            HOUSE_POD_PORTS,
        )
        for h in HOUSES
        for i in (0, 1)
    )
    nodes = ("node-1", "node-2")
    return LabSpec(
        nodes=nodes,
        namespaces=namespaces,
        pods=pods,
        external=False,
        node_labels={n: NODE_OS_LABELS for n in nodes},
        node_ports=CENTAUR_PORTS,
    )


def centaur_pods(scenario: Scenario) -> list[dict[str, Any]]:
    """The hostNetwork ``centaur`` pods: Pod objects whose IPs are their nodes'."""
    out = []
    for name, node in CENTAUR_NODES.items():
        info = scenario.lab.node(node)
        index = int(name.rsplit("-", 1)[1])
        obj = scenario.extra_pod(
            FORBIDDEN_FORREST,
            name,
            node=node,
            ips=[info.wan_v4, info.wan_v6],
            pod_labels={
                "conformance-house": "forbidden-forrest",
                "statefulset.kubernetes.io/pod-name": name,
                "apps.kubernetes.io/pod-index": str(index),
            },
            host_network=True,
        )
        for cp in CENTAUR_PORTS:
            if cp.name:
                Scenario.with_named_port(obj, cp.name, cp.port, cp.protocol)
        out.append(obj)
    return out


def swap(rules: list[Any], i: int, j: int) -> None:
    """``mutate.Spec.Egress[i], mutate.Spec.Egress[j] = ...[j], ...[i]`` in the Go tests."""
    rules[i], rules[j] = rules[j], rules[i]


# ------------------------------------------------------------------------------ runner
@dataclass(frozen=True)
class Poke:
    """One ``kubernetes.PokeServer`` call: a cell of the hand-written table."""

    subtest: str
    client: str
    server: str
    protocol: str  # "TCP" | "UDP" | "SCTP"
    port: int
    should_connect: bool
    # the ClusterNetworkPolicy rule the Go test's comment says takes effect, as
    # "[<policy> ]<egress|ingress>[<index>]" (the index in the list as mutated so far;
    # the policy may be left out when the test has one); "" = no rule matches; None = the
    # test does not say
    rule: str | None = None

    def probe(self, family: int) -> Probe:
        return Probe(self.client, self.server, self.port, self.protocol, family)


@dataclass(frozen=True)
class Disagreement:
    subtest: str  # "" for an extra cell (not an upstream poke)
    probe: Probe
    hand: Verdict | None
    lab: Verdict
    explain: Verdict
    detail: str

    def __str__(self) -> str:
        where = f"[{self.subtest}] " if self.subtest else "[extra cell] "
        hand = self.hand.name if self.hand is not None else "-"
        return (
            f"{where}{short(self.probe)}: hand {hand}, lab {self.lab.name}, "
            f"explain {self.explain.name}{self.detail}"
        )


def short(probe: Probe) -> str:
    def name(endpoint: str) -> str:
        return endpoint.removeprefix(PREFIX).split("/", 1)[-1]

    return f"{name(probe.src)} -> {name(probe.dst)} {probe.port}/{probe.protocol} IPv{probe.family}"


@dataclass
class ConformanceRun:
    """Replays one upstream ``ConformanceTest`` in the lab.

    The test's manifests are created, then its subtests run in order: every mutation the
    Go test makes (patching a policy, deleting one, relabelling a pod or namespace) is made
    here at the same point, and every ``PokeServer`` becomes a cell (client, server,
    protocol, port, shouldConnect) of the hand-written table.  Pokes between two mutations
    share one agent run and one probe run (all probes fly at once).  Each poke is probed in
    every family of ``families`` and checked three ways: hand table == traffic, traffic ==
    ``explain``, hand table == ``explain``; a poke given ``rule`` also checks that
    ``explain`` names that rule.  Besides the upstream pokes, every flush also probes all
    house pods to all house pods (and the poked nodes) on the ports the pokes used, and
    checks those extra cells traffic == ``explain`` (no hand verdict: upstream states
    none).
    """

    lab: Lab
    backend: Backend
    test: str
    families: Sequence[int] = (4, 6)
    extra_cells: bool = True
    scenario: Scenario = field(init=False)
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    current: str = ""
    subtests: list[str] = field(default_factory=list)
    pending: list[Poke] = field(default_factory=list)
    disagreements: list[Disagreement] = field(default_factory=list)
    cells: dict[int, int] = field(default_factory=dict)  # family -> upstream cells checked
    extra_checked: int = 0
    flushes: int = 0
    retried: int = 0
    rules_checked: int = 0
    rule_disagreements: list[str] = field(default_factory=list)
    _dumps: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scenario = Scenario(self.lab, self.backend)

    # ---------------------------------------------------------------- the Go test's verbs
    def manifests(self, *objects: Mapping[str, Any]) -> None:
        """The ConformanceTest's ``Manifests`` (applied before its first subtest)."""
        for obj in objects:
            self.objects[_ident(obj)] = copy.deepcopy(dict(obj))

    def subtest(self, name: str) -> None:
        """``t.Run(name, ...)``: the pokes that follow belong to it."""
        assert name not in self.subtests, f"duplicate subtest {name!r}"
        self.current = name
        self.subtests.append(name)

    def patch(self, obj: Mapping[str, Any]) -> None:
        """``kubernetes.PatchClusterNetworkPolicy``: the object as the test mutated it."""
        key = _ident(obj)
        assert key in self.objects, f"patching {key}, which the test never created"
        self._mutating()
        self.objects[key] = copy.deepcopy(dict(obj))

    def delete(self, kind: str, name: str, namespace: str = "") -> None:
        self._mutating()
        del self.objects[(kind, namespace, name)]

    def set_namespace_labels(self, namespace: str, labels: Mapping[str, str]) -> None:
        """``PatchNamespace`` with ``SetLabels(labels)`` (the API server keeps
        ``kubernetes.io/metadata.name``)."""
        self._mutating()
        self.lab.set_namespace_labels(namespace, labels)

    def set_pod_label(self, pod_key: str, key: str, value: str) -> None:
        """``kubernetes.SetPodLabel``."""
        self._mutating()
        self.lab.set_pod_labels(pod_key, {**self.lab.pod_labels[pod_key], key: value})

    def remove_pod_label(self, pod_key: str, key: str) -> None:
        """``kubernetes.RemovePodLabel``."""
        self._mutating()
        labels = dict(self.lab.pod_labels[pod_key])
        labels.pop(key, None)
        self.lab.set_pod_labels(pod_key, labels)

    def poke(
        self,
        client: str,
        protocol: str,
        server: str,
        port: int,
        should_connect: bool,
        rule: str | None = None,
    ) -> None:
        """``kubernetes.PokeServer(client, protocol, server IP, port, shouldConnect)``, in
        the same argument order; ``rule``: see :class:`Poke`."""
        assert self.current, "poke outside a subtest"
        self.pending.append(
            Poke(self.current, client, server, protocol.upper(), port, should_connect, rule)
        )

    # ---------------------------------------------------------------- running and judging
    def _mutating(self) -> None:
        # what was poked so far saw the state before this mutation
        self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        pokes, self.pending = self.pending, []
        scenario = self.scenario
        scenario.apply(list(self.objects.values()), extra=centaur_pods(scenario))
        self.flushes += 1
        probes = [p.probe(f) for p in pokes for f in self.families]
        extras = self._extra_probes(pokes) if self.extra_cells else []
        matrix = scenario.run([*probes, *extras])
        explained = {
            probe: Verdict.ALLOWED if scenario.oracle(probe) else Verdict.DENIED for probe in matrix
        }
        self._retry_slow(matrix, explained)
        before = len(self.disagreements)
        judged: set[Probe] = set()
        for poke in pokes:
            for family in self.families:
                probe = poke.probe(family)
                hand = Verdict.ALLOWED if poke.should_connect else Verdict.DENIED
                self._judge(matrix, explained, probe, poke.subtest, hand)
                self._judge_rule(poke, probe)
                judged.add(probe)
                self.cells[family] = self.cells.get(family, 0) + 1
        for probe in extras:
            if probe not in judged:
                judged.add(probe)
                self.extra_checked += 1
                self._judge(matrix, explained, probe, "", None)
        if len(self.disagreements) > before and not self._dumps:
            self._dumps.extend(
                f"===== ruleset {n} (after flush {self.flushes})\n{self.lab.ruleset_dump(n)}"
                for n in self.lab.nodes
            )

    def _retry_slow(self, matrix: Matrix, explained: Mapping[Probe, Verdict]) -> None:
        """Probe once more, with a longer timeout, the cells that timed out where explain
        allows them.  With ~1,000 probes in flight on a loaded machine an answer can miss
        the short window (the lab's servers are one thread); a dropped packet times out
        again.  How many were retried is in the summary."""
        slow = [
            probe
            for probe, result in matrix.results.items()
            if result.verdict is Verdict.DENIED and explained[probe] is Verdict.ALLOWED
        ]
        if not slow:
            return
        self.retried += len(slow)
        prober = Prober(self.scenario.prober.endpoints.values(), timeout=RETRY_TIMEOUT)
        again = prober.run(slow)
        for probe in slow:
            matrix.results[probe] = again[probe]

    def _extra_probes(self, pokes: Sequence[Poke]) -> list[Probe]:
        """Every house pod to every other house pod on the (port, protocol)s the pokes
        used towards pods, and to every node a poke targeted on that node's poked ports
        (a port nothing serves would answer "refused", which tests nothing)."""
        served: dict[str, set[tuple[int, str]]] = {}
        for p in pokes:
            targets = HOUSE_PODS if p.server in HOUSE_PODS else (p.server,)
            for target in targets:
                served.setdefault(target, set()).add((p.port, p.protocol))
        return [
            Probe(src, dst, port, proto, family)
            for family in self.families
            for dst, port_protocols in served.items()
            for port, proto in sorted(port_protocols)
            for src in HOUSE_PODS
            if src != dst
        ]

    def _judge(
        self,
        matrix: Matrix,
        explained: Mapping[Probe, Verdict],
        probe: Probe,
        subtest: str,
        hand: Verdict | None,
    ) -> None:
        result, explain_verdict = matrix[probe], explained[probe]
        if result.verdict is explain_verdict and (hand is None or hand is explain_verdict):
            return
        detail = f" ({result.detail})" if result.detail else ""
        self.disagreements.append(
            Disagreement(subtest, probe, hand, result.verdict, explain_verdict, detail)
        )

    def _judge_rule(self, poke: Poke, probe: Probe) -> None:
        """The fourth check: explain names the rule the Go test says takes effect (as the
        rule that decided, or the Pass that sent the flow on)."""
        if poke.rule is None:
            return
        self.rules_checked += 1
        verdict = self.scenario.explained(probe)
        named = {
            direction.direction.short: [
                *([direction.decided_by] if direction.decided_by else []),
                *direction.passed_by,
            ]
            for direction in (verdict.egress, verdict.ingress)
            if direction is not None
        }
        said = "; ".join(
            f"{ref.policy} {side}[{ref.index}] {ref.action.value}"
            for side, refs in named.items()
            for ref in refs
        )
        if poke.rule == "":
            if not said:
                return
        else:
            policy, side, index = self._rule_ref(poke.rule)
            if any(r.policy == policy and r.index == index for r in named.get(side, [])):
                return
        self.rule_disagreements.append(
            f"[{poke.subtest}] {short(probe)}: the test says "
            f"{poke.rule or 'no rule'}, explain names {said or 'no rule'}"
        )

    def _rule_ref(self, text: str) -> tuple[str, str, int]:
        *policy, where = text.split()
        side, _, index = where.partition("[")
        if policy:
            return policy[0], side, int(index.rstrip("]"))
        cnps = [n for kind, _, n in self.objects if kind == "ClusterNetworkPolicy"]
        assert len(cnps) == 1, f"name the policy in {text!r}: the test has {cnps}"
        return cnps[0], side, int(index.rstrip("]"))

    # ---------------------------------------------------------------- report
    def subtest_failures(self) -> dict[str, set[int]]:
        """subtest -> the families in which one of its cells disagreed."""
        out: dict[str, set[int]] = {}
        for d in self.disagreements:
            if d.subtest:
                out.setdefault(d.subtest, set()).add(d.probe.family)
        for text in self.rule_disagreements:
            subtest = text[1 : text.index("] ")]
            family = int(text.split(" IPv", 1)[1].split(":", 1)[0])
            out.setdefault(subtest, set()).add(family)
        return out

    def summary(self) -> str:
        failures = self.subtest_failures()
        parts = []
        for family in self.families:
            passed = sum(1 for s in self.subtests if family not in failures.get(s, set()))
            parts.append(
                f"IPv{family} {passed}/{len(self.subtests)} subtests "
                f"({self.cells.get(family, 0)} cells)"
            )
        extra_bad = sum(1 for d in self.disagreements if not d.subtest)
        return (
            f"CONFORMANCE {self.test} [{self.backend}]: {', '.join(parts)}; "
            f"{self.extra_checked} extra cells traffic==explain, {extra_bad} disagree; "
            f"{self.flushes} agent runs; {self.retried} slow cells probed again; "
            f"{self.rules_checked} deciding rules checked, "
            f"{len(self.rule_disagreements)} differ"
        )

    def finish(self) -> None:
        """Flush the last pokes, print the summary, fail on any disagreement."""
        self.flush()
        assert self.subtests, "a conformance test has subtests"
        print(f"\n{self.summary()}")
        for name in self.subtests:
            bad = self.subtest_failures().get(name, set())
            status = "FAIL " + ",".join(f"IPv{f}" for f in sorted(bad)) if bad else "pass"
            print(f"  {status:12} {name}")
        if self.disagreements or self.rule_disagreements:
            for dump in self._dumps:
                print(dump)
            lines = "\n".join(f"  {d}" for d in self.disagreements[:60])
            rules = "\n".join(f"  {r}" for r in self.rule_disagreements[:40])
            raise AssertionError(
                f"{self.test} [{self.backend}]: {len(self.disagreements)} cells disagree "
                f"(hand = the Go test's shouldConnect):\n{lines}\n"
                f"{len(self.rule_disagreements)} deciding rules differ:\n{rules}"
            )


def _ident(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return (str(obj["kind"]), str(meta.get("namespace", "")), str(meta["name"]))


__all__ = [
    "CEDRIC_DIGGORY_0",
    "CEDRIC_DIGGORY_1",
    "CENTAUR_1",
    "DRACO_MALFOY_0",
    "DRACO_MALFOY_1",
    "FORBIDDEN_FORREST",
    "HARRY_POTTER_0",
    "HARRY_POTTER_1",
    "HOST_NETWORK_PORTS",
    "HOUSES",
    "HOUSE_PODS",
    "LUNA_LOVEGOOD_0",
    "LUNA_LOVEGOOD_1",
    "ConformanceRun",
    "Poke",
    "centaur_pods",
    "conformance_spec",
    "ns",
    "pod",
    "swap",
]
