"""Faults on the real node while denied pairs are probed continuously.

On the probed node run a policy-selected server and an egress-jailed pod; from both nodes
``netprobe loop`` (an attempt every 20 ms, or every 50 ms when it times out) tries the denied pairs the
whole time:

* ``stranger-a -> server`` TCP 80 (same node, ingress denied),
* ``stranger-b -> server`` TCP 80 and UDP 53 (from the other node, ingress denied),
* ``jailed -> open`` TCP 80 (egress denied on the probed node, to a pod elsewhere).

Besides the clients' own count (attempts that connected or were refused, i.e. reached the
other side), a counting rule in each destination pod's own network namespace counts every
packet from the denied source that arrived. The faults: a rolling update of the DaemonSet
to a new image tag, ``kubectl delete pod`` of the probed node's agent, and a kubelet
restart on the probed node. Each must pass 0 packets and converge again: the allowed pair
works, and a policy change made afterwards reaches the data plane (both ways).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.node.cluster import AGENT_NAMESPACE, NodeCluster, NodeClusterError
from tests.node.conftest import AgentImage
from tests.node.workloads import (
    Loop,
    LoopCount,
    PacketCounter,
    Probe,
    agent_image_tagged,
    agent_rolled_out,
    apply,
    connect,
    delete_namespaces,
    log_time,
    namespace,
    pod_ip,
    policy,
    rule_log,
    server_pod,
    table,
    unique,
    wait_ready,
    wait_until,
    workers,
)

pytestmark = pytest.mark.node

INTERVAL = "20ms"
ATTEMPT_TIMEOUT = "50ms"
MAX_GAP = 1.0  # seconds without an attempt that would make "0 leaked" unconvincing
BASELINE = 1.0  # seconds of probing before the fault
RESULTS: list[list[str]] = []  # one row per fault, printed at the end of the module


@dataclass
class World:
    ns: str
    probed: str  # the node the faults hit
    other: str
    ips: dict[str, str]

    def pod(self, name: str) -> str:
        return f"{self.ns}/{name}"

    def denied(self) -> list[Probe]:
        return [
            Probe(self.pod("stranger-a"), self.ips["server"], 80, "tcp"),
            Probe(self.pod("stranger-b"), self.ips["server"], 80, "tcp"),
            Probe(self.pod("stranger-b"), self.ips["server"], 53, "udp"),
            Probe(self.pod("jailed"), self.ips["open"], 80, "tcp"),
        ]


@pytest.fixture(scope="module")
def world(node_cluster: NodeCluster, deployed_agent: AgentImage) -> Iterator[World]:
    cluster = node_cluster
    probed, other = workers(cluster)
    ns = unique("faults")
    pods = {
        "server": (probed, {"app": "server"}),
        "stranger-a": (probed, {"app": "stranger"}),
        "jailed": (probed, {"app": "jailed"}),
        "friend": (other, {"role": "friend"}),
        "stranger-b": (other, {"app": "stranger"}),
        "open": (other, {"app": "open"}),
    }
    try:
        apply(cluster, namespace(ns))
        apply(
            cluster,
            policy(
                ns,
                "server-ingress",
                {"matchLabels": {"app": "server"}},
                ingress=[{"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}]}],
            ),
            policy(ns, "jail", {"matchLabels": {"app": "jailed"}}, egress=[]),
            *(server_pod(cluster, ns, name, node, labels) for name, (node, labels) in pods.items()),
        )
        wait_ready(cluster, ns, *pods)
        ips = {name: pod_ip(cluster, ns, name) for name in pods}
        world = World(ns, probed, other, ips)
        for probe in world.denied():  # the policies are in force before any fault
            wait_until(f"{probe} denied", lambda p=probe: not connect(cluster, p), timeout=30)
        yield world
        print("\n" + table(FAULT_HEADER, RESULTS))
    finally:
        delete_namespaces(cluster, ns)


FAULT_HEADER = [
    "fault",
    "denied pairs probed",
    "attempts",
    "connected/refused",
    "packets arrived",
    "longest gap",
    "fault to converged",
    "rule changes on the probed node (reasons)",
]


def _converged(cluster: NodeCluster, world: World, fault: str) -> str:
    """After the fault: the allowed pair works, and a new policy reaches the data plane
    (stranger-a may reach server:9000 while it exists, and not once it is deleted)."""
    friend = Probe(world.pod("friend"), world.ips["server"], 80, "tcp")
    wait_until(f"{friend} connects after {fault}", lambda: connect(cluster, friend), timeout=30)
    late = Probe(world.pod("stranger-a"), world.ips["server"], 9000, "tcp")
    assert not connect(cluster, late), f"{late} connects before the new policy"
    name = unique("late")
    apply(
        cluster,
        policy(
            world.ns,
            name,
            {"matchLabels": {"app": "server"}},
            ingress=[
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "stranger"}}}],
                    "ports": [{"port": 9000, "protocol": "TCP"}],
                }
            ],
        ),
    )
    wait_until(f"{late} allowed by {name} after {fault}", lambda: connect(cluster, late))
    cluster.kubectl("-n", world.ns, "delete", "networkpolicy", name)
    wait_until(f"{late} denied again after {name} is deleted", lambda: not connect(cluster, late))
    return name


def _rule_changes(cluster: NodeCluster, node: str, start: float, end: float, skip: str) -> str:
    """The rule-change log lines the node's agent wrote in [start, end], by reason (the
    convergence check's own policy left out): what the fault made the agent rewrite."""
    reasons: dict[str, int] = {}
    own = 0
    for entry in rule_log(cluster, node):
        if not start <= log_time(entry) <= end:
            continue
        reason = str(entry.get("reason"))
        if skip in reason:
            own += 1
        else:
            reasons[reason] = reasons.get(reason, 0) + 1
    listed = "; ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
    return f"{sum(reasons.values())}{f' ({listed})' if listed else ''}, +{own} for {skip}"


def run_fault(cluster: NodeCluster, world: World, fault: str, act: Callable[[], None]) -> None:
    by_ip = {ip: name for name, ip in world.ips.items()}
    counters = [
        PacketCounter(
            cluster,
            world.ns,
            by_ip[probe.host],
            world.ips[probe.src.split("/")[1]],
            probe.protocol,
            probe.port,
        ).install()
        for probe in world.denied()
    ]
    loops = [Loop(cluster, p, interval=INTERVAL, timeout=ATTEMPT_TIMEOUT) for p in world.denied()]
    for loop in loops:
        loop.start()
    counts: list[LoopCount] = []
    try:
        time.sleep(BASELINE)
        started = time.time()
        act()
        late = _converged(cluster, world, fault)
        converged = time.time()
        time.sleep(0.5)
    finally:
        counts = [loop.stop() for loop in loops]
    packets = [c.packets() for c in counters]
    for counter in counters:  # leave the pods as we found them
        counter.remove()
    rows = [
        f"{loop.probe.src.split('/')[1]}->{loop.probe.target}/{loop.probe.protocol}"
        for loop in loops
    ]
    RESULTS.append(
        [
            fault,
            ", ".join(rows),
            " ".join(str(c.total) for c in counts),
            " ".join(f"{c.ok}/{c.refused}" for c in counts),
            " ".join(str(p) for p in packets),
            f"{max(c.max_gap for c in counts) * 1000:.0f} ms",
            f"{converged - started:.1f} s",
            _rule_changes(cluster, world.probed, started, converged, late),
        ]
    )
    for loop, count in zip(loops, counts, strict=True):
        assert count.total > 0, f"{loop.probe}: the loop recorded nothing"
        assert count.first < started, f"{loop.probe}: first attempt after the fault began"
        assert count.last > converged, f"{loop.probe}: loop stopped before convergence"
        assert count.max_gap < MAX_GAP, f"{loop.probe}: {count.max_gap:.2f}s without an attempt"
        assert count.leaked == 0, f"{fault}: {loop.probe} got through {count.leaked} time(s)"
    assert packets == [0] * len(packets), f"{fault}: denied packets arrived: {packets}"


def test_rolling_update_to_a_new_tag_leaks_nothing(
    node_cluster: NodeCluster, world: World, deployed_agent: AgentImage
) -> None:
    cluster = node_cluster
    target = agent_image_tagged(cluster, unique("roll"))
    assert target != deployed_agent.ref

    def act() -> None:
        cluster.deploy_agent(target)  # kubectl apply -k, waits for the rollout and Ready
        agent_rolled_out(cluster)
        spec = cluster.kubectl(
            "-n",
            AGENT_NAMESPACE,
            "get",
            "ds/netpol-agent",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        )
        assert spec.strip() == target

    run_fault(cluster, world, f"rolling update to {target.rsplit(':', 1)[1]}", act)


def test_deleting_the_agent_pod_leaks_nothing(node_cluster: NodeCluster, world: World) -> None:
    cluster = node_cluster
    old = cluster.agent_pod(world.probed)

    def act() -> None:
        cluster.kubectl("-n", AGENT_NAMESPACE, "delete", "pod", old, "--wait=true")
        wait_until(
            "a new agent pod on the probed node",
            lambda: _new_agent(cluster, world.probed, old),
            timeout=60,
        )
        agent_rolled_out(cluster)
        wait_ready(cluster, AGENT_NAMESPACE, cluster.agent_pod(world.probed), timeout=90)

    run_fault(cluster, world, "kubectl delete pod (agent)", act)


def _new_agent(cluster: NodeCluster, node: str, old: str) -> bool:
    try:
        return cluster.agent_pod(node) != old
    except NodeClusterError:
        return False


def test_kubelet_restart_leaks_nothing(node_cluster: NodeCluster, world: World) -> None:
    cluster = node_cluster

    def act() -> None:
        cluster.restart_kubelet(world.probed)
        cluster.kubectl("wait", "--for=condition=Ready", f"node/{world.probed}", "--timeout=90s")
        agent_rolled_out(cluster)
        wait_ready(cluster, AGENT_NAMESPACE, cluster.agent_pod(world.probed), timeout=90)
        wait_ready(cluster, world.ns, "server", "stranger-a", "jailed", timeout=90)

    run_fault(cluster, world, "kubelet restart", act)
