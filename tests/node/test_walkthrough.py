"""The AKS walkthrough of deploy/kind/README.md section 3 on real pods and real nodes.

Namespaces ``development`` (purpose=development) and ``production`` (purpose=production),
a backend and a frontend in each role the guide uses, on two nodes: the backend shares
its node with the production frontend (bridged traffic), the development pods sit on the
other node (routed traffic). After each step of the guide every ordered pair of pods is
probed from inside the source pod (TCP 80 and UDP 53, ``netprobe connect``), and every
result must equal what ``netpol-agent explain`` says for the same live objects
(``kubectl get -o yaml``). The matrix of each step is printed (``pytest -s``). The backend
node's rule-change log must give the reasons the guide quotes (``policy created
development/backend-policy``, ``namespace labelled production``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.node.workloads import (
    apply,
    delete_namespaces,
    log_time,
    namespace,
    pod_ip,
    probe_matrix,
    render_matrix,
    rule_log,
    server_pod,
    wait_ready,
    wait_until,
    workers,
)

if TYPE_CHECKING:
    from tests.node.cluster import NodeCluster

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("deployed_agent")]

BACKEND = "development/backend"
DEV_FRONTEND = "development/frontend"
DEV_OTHER = "development/other"
PROD_FRONTEND = "production/frontend"
PODS = (BACKEND, DEV_FRONTEND, DEV_OTHER, PROD_FRONTEND)
SHORT = {
    BACKEND: "dev/backend",
    DEV_FRONTEND: "dev/frontend",
    DEV_OTHER: "dev/other",
    PROD_FRONTEND: "prod/frontend",
}
PORTS: tuple[tuple[int, str], ...] = ((80, "tcp"), (53, "udp"))
SETTLE = 20.0  # seconds a step may take to reach the data plane
FRONTEND = {"matchLabels": {"app": "webapp", "role": "frontend"}}


def backend_policy(ingress: list[dict[str, Any]]) -> dict[str, Any]:
    """The guide's backend-policy, exactly as it writes it (no policyTypes)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "backend-policy", "namespace": "development"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "webapp", "role": "backend"}},
            "ingress": ingress,
        },
    }


@dataclass(frozen=True)
class Step:
    title: str
    change: Callable[[NodeCluster], None]
    reach_backend: frozenset[str]  # the guide's expectation, checked besides explain
    log_reason: str | None = None  # the backend node's rule-change log says why (the guide)


def _apply_policy(ingress: list[dict[str, Any]]) -> Callable[[NodeCluster], None]:
    return lambda cluster: apply(cluster, backend_policy(ingress))


def _relabel_production(cluster: NodeCluster) -> None:
    cluster.kubectl("label", "namespace/production", "purpose=development", "--overwrite")


STEPS: tuple[Step, ...] = (
    Step("0 no policy", lambda cluster: None, frozenset({DEV_FRONTEND, DEV_OTHER, PROD_FRONTEND})),
    Step(
        "1 deny all inbound to the backend",
        _apply_policy([]),
        frozenset(),
        "policy created development/backend-policy",
    ),
    Step(
        "2 allow frontends by pod label (any namespace)",
        _apply_policy([{"from": [{"namespaceSelector": {}, "podSelector": FRONTEND}]}]),
        frozenset({DEV_FRONTEND, PROD_FRONTEND}),
        "policy updated development/backend-policy",
    ),
    Step(
        "3 allow frontends only from purpose=development namespaces",
        _apply_policy(
            [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"purpose": "development"}},
                            "podSelector": FRONTEND,
                        }
                    ]
                }
            ]
        ),
        frozenset({DEV_FRONTEND}),
        "policy updated development/backend-policy",
    ),
    Step(
        "4 production relabelled purpose=development",
        _relabel_production,
        frozenset({DEV_FRONTEND, PROD_FRONTEND}),
        "namespace labelled production",
    ),
)


def _logged(cluster: NodeCluster, node: str, since: float, reason: str) -> bool:
    """The node's rule-change log has a line since ``since`` with this reason (a pass
    with several changes appends ``(+N more changes)``)."""

    def found() -> bool:
        return any(
            log_time(e) >= since - 0.5 and str(e.get("reason")).startswith(reason)
            for e in rule_log(cluster, node)
        )

    try:
        wait_until(f"{reason!r} in {node}'s rule-change log", found, timeout=10)
    except AssertionError:
        return False
    return True


def test_aks_walkthrough_matches_explain(node_cluster: NodeCluster, tmp_path: Path) -> None:
    cluster = node_cluster
    node_a, node_b = workers(cluster)
    delete_namespaces(cluster, "development", "production", wait=True)  # a dead run's
    placement = {BACKEND: node_a, PROD_FRONTEND: node_a, DEV_FRONTEND: node_b, DEV_OTHER: node_b}
    labels = {
        BACKEND: {"app": "webapp", "role": "backend"},
        DEV_FRONTEND: {"app": "webapp", "role": "frontend"},
        DEV_OTHER: {"app": "other"},
        PROD_FRONTEND: {"app": "webapp", "role": "frontend"},
    }
    try:
        apply(
            cluster,
            namespace("development", {"purpose": "development"}),
            namespace("production", {"purpose": "production"}),
        )
        apply(
            cluster,
            *(
                server_pod(cluster, ns, name, placement[pod], labels[pod])
                for pod in PODS
                for ns, name in [pod.split("/")]
            ),
        )
        for pod in PODS:
            wait_ready(cluster, *pod.split("/"))
        ips = {pod: pod_ip(cluster, *pod.split("/")) for pod in PODS}
        report = [
            f"Nodes: {node_a} runs dev/backend and prod/frontend, "
            f"{node_b} runs dev/frontend and dev/other. 'ok' = connected (TCP) or echoed "
            "(UDP), '--' = no answer; every cell equals explain unless marked."
        ]
        mismatches: list[str] = []
        for number, step in enumerate(STEPS):
            began = time.time()
            step.change(cluster)
            cells, rounds = probe_matrix(
                cluster, ips, tmp_path / f"state-{number}.yaml", PODS, PORTS, settle=SETTLE
            )
            if step.log_reason and not _logged(cluster, node_a, began, step.log_reason):
                mismatches.append(f"step {step.title}: no rule-change log line {step.log_reason!r}")
            matrix = render_matrix(step.title, cells, PODS, SHORT, PORTS)
            report.append(matrix + f"\n\n(settled in {rounds} probe round(s))")
            for cell in cells:
                if cell.observed != cell.explained:
                    mismatches.append(
                        f"step {step.title}: {cell.probe} to {cell.dst}: observed "
                        f"{cell.observed}, explain {cell.explained} ({cell.why})"
                    )
                if cell.dst == BACKEND:
                    guide = cell.probe.src in step.reach_backend
                    if cell.explained != guide:
                        mismatches.append(
                            f"step {step.title}: explain says {cell.explained} for "
                            f"{cell.probe.src} -> backend, the guide says {guide}"
                        )
        print("\n\n".join(report))
        assert not mismatches, "\n".join(mismatches)
    finally:
        delete_namespaces(cluster, "development", "production")
