"""The README's ClusterNetworkPolicy examples on real pods and real nodes.

Namespaces ``monitoring`` (prometheus, grafana), ``team-a`` (web, api) and ``team-b``
(client), spread over both workers. Step by step: an Admin policy lets nothing reach the
monitoring namespace but Prometheus; a Baseline policy isolates team-a from other
namespaces; a NetworkPolicy in team-a lets team-b's client reach web (and, isolating web,
overrides the baseline for it); the Admin policy is updated, then deleted. After each step
every ordered pair of pods is probed from inside the source pod (TCP 80, UDP 53,
``netprobe connect``) and must equal ``netpol-agent explain`` for the live objects
(``kubectl get -o yaml``, ClusterNetworkPolicies included), and the cells the README
states must say what it says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.node.workloads import (
    apply,
    delete_namespaces,
    namespace,
    pod_ip,
    probe_matrix,
    render_matrix,
    server_pod,
    wait_ready,
    workers,
)

if TYPE_CHECKING:
    from tests.node.cluster import NodeCluster

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("deployed_agent")]

PROMETHEUS = "monitoring/prometheus"
GRAFANA = "monitoring/grafana"
WEB = "team-a/web"
API = "team-a/api"
CLIENT = "team-b/client"
PODS = (PROMETHEUS, GRAFANA, WEB, API, CLIENT)
SHORT = {pod: pod.replace("monitoring/", "mon/") for pod in PODS}
NAMESPACES = ("monitoring", "team-a", "team-b")
PORTS: tuple[tuple[int, str], ...] = ((80, "tcp"), (53, "udp"))
SETTLE = 20.0
NAME = "kubernetes.io/metadata.name"
API_VERSION = "policy.networking.k8s.io/v1alpha2"


def _in(namespace_name: str) -> dict[str, Any]:
    return {"matchLabels": {NAME: namespace_name}}


def protect_monitoring(*also: dict[str, Any]) -> dict[str, Any]:
    """README: nothing reaches the monitoring namespace except Prometheus."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "protect-monitoring"},
        "spec": {
            "tier": "Admin",
            "priority": 10,
            "subject": {"namespaces": _in("monitoring")},
            "ingress": [
                {
                    "name": "allow-prometheus",
                    "action": "Accept",
                    "from": [
                        {
                            "pods": {
                                "namespaceSelector": _in("monitoring"),
                                "podSelector": {"matchLabels": {"app": "prometheus"}},
                            }
                        },
                        *also,
                    ],
                },
                {"name": "deny-the-rest", "action": "Deny", "from": [{"namespaces": {}}]},
            ],
        },
    }


ISOLATE_TEAM_A = {
    "apiVersion": API_VERSION,
    "kind": "ClusterNetworkPolicy",
    "metadata": {"name": "isolate-team-a"},
    "spec": {
        "tier": "Baseline",
        "priority": 50,
        "subject": {"namespaces": _in("team-a")},
        "ingress": [
            {"name": "same-namespace", "action": "Accept", "from": [{"namespaces": _in("team-a")}]},
            {"name": "other-namespaces", "action": "Deny", "from": [{"namespaces": {}}]},
        ],
    },
}

WEB_FROM_TEAM_B = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "web-from-team-b", "namespace": "team-a"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"namespaceSelector": _in("team-b")}]}],
    },
}


def _apply(*objects: dict[str, Any]) -> Callable[[NodeCluster], None]:
    return lambda cluster: apply(cluster, *objects)


def _delete_protect_monitoring(cluster: NodeCluster) -> None:
    cluster.kubectl("delete", "clusternetworkpolicy", "protect-monitoring", "--wait=true")


@dataclass(frozen=True)
class Step:
    title: str
    change: Callable[[NodeCluster], None]
    # What the README says of some TCP 80 cells: (source, destination) → reachable.
    says: Mapping[tuple[str, str], bool]


STEPS: tuple[Step, ...] = (
    Step("0 no policy", lambda cluster: None, {(CLIENT, GRAFANA): True, (CLIENT, WEB): True}),
    Step(
        "1 admin: nothing reaches monitoring but Prometheus",
        _apply(protect_monitoring()),
        {
            (PROMETHEUS, GRAFANA): True,
            (GRAFANA, PROMETHEUS): False,
            (CLIENT, GRAFANA): False,
            (WEB, PROMETHEUS): False,
            (CLIENT, WEB): True,
        },
    ),
    Step(
        "2 baseline: team-a isolated from other namespaces",
        _apply(ISOLATE_TEAM_A),
        {
            (API, WEB): True,
            (CLIENT, WEB): False,
            (PROMETHEUS, API): False,
            (WEB, CLIENT): True,
        },
    ),
    Step(
        "3 a NetworkPolicy lets team-b reach web (and overrides the baseline for it)",
        _apply(WEB_FROM_TEAM_B),
        {
            (CLIENT, WEB): True,
            (API, WEB): False,  # web is isolated by the NetworkPolicy: baseline no longer asked
            (CLIENT, API): False,  # api still under the baseline
        },
    ),
    Step(
        "4 admin updated: team-a's api may reach monitoring too",
        _apply(
            protect_monitoring(
                {
                    "pods": {
                        "namespaceSelector": _in("team-a"),
                        "podSelector": {"matchLabels": {"app": "api"}},
                    }
                }
            )
        ),
        {(API, GRAFANA): True, (WEB, GRAFANA): False, (PROMETHEUS, GRAFANA): True},
    ),
    Step(
        "5 admin deleted: monitoring open again",
        _delete_protect_monitoring,
        {(CLIENT, GRAFANA): True, (WEB, PROMETHEUS): True, (CLIENT, WEB): True},
    ),
)


def test_cluster_network_policy_walkthrough_matches_explain(
    node_cluster: NodeCluster, tmp_path: Path
) -> None:
    cluster = node_cluster
    node_a, node_b = workers(cluster)
    delete_namespaces(cluster, *NAMESPACES, wait=True)  # a dead run's
    for name in ("protect-monitoring", "isolate-team-a"):
        cluster.kubectl("delete", "clusternetworkpolicy", name, "--ignore-not-found")
    placement = {PROMETHEUS: node_a, GRAFANA: node_b, WEB: node_a, API: node_b, CLIENT: node_b}
    app = {pod: {"app": pod.split("/")[1]} for pod in PODS}
    try:
        apply(cluster, *(namespace(ns) for ns in NAMESPACES))
        apply(
            cluster,
            *(
                server_pod(cluster, ns, name, placement[pod], app[pod])
                for pod in PODS
                for ns, name in [pod.split("/")]
            ),
        )
        for pod in PODS:
            wait_ready(cluster, *pod.split("/"))
        ips = {pod: pod_ip(cluster, *pod.split("/")) for pod in PODS}
        report = [
            f"Nodes: {node_a} runs mon/prometheus and team-a/web, {node_b} the others. "
            "'ok' = connected (TCP) or echoed (UDP), '--' = no answer; every cell equals "
            "explain unless marked."
        ]
        mismatches: list[str] = []
        for number, step in enumerate(STEPS):
            began = time.monotonic()
            step.change(cluster)
            cells, rounds = probe_matrix(
                cluster, ips, tmp_path / f"state-{number}.yaml", PODS, PORTS, settle=SETTLE
            )
            took = time.monotonic() - began
            matrix = render_matrix(step.title, cells, PODS, SHORT, PORTS)
            report.append(matrix + f"\n\n(settled in {rounds} probe round(s), {took:.1f}s)")
            for cell in cells:
                if cell.observed != cell.explained:
                    mismatches.append(
                        f"step {step.title}: {cell.probe} to {cell.dst}: observed "
                        f"{cell.observed}, explain {cell.explained} ({cell.why})"
                    )
                said = step.says.get((cell.probe.src, cell.dst))
                if said is not None and cell.probe.port == 80 and cell.explained != said:
                    mismatches.append(
                        f"step {step.title}: explain says {cell.explained} for "
                        f"{cell.probe.src} -> {cell.dst}, the README says {said} ({cell.why})"
                    )
        print("\n\n".join(report))
        assert not mismatches, "\n".join(mismatches)
    finally:
        for name in ("protect-monitoring", "isolate-team-a"):
            cluster.kubectl("delete", "clusternetworkpolicy", name, "--ignore-not-found")
        delete_namespaces(cluster, *NAMESPACES)
