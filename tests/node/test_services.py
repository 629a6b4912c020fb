"""Services through kube-proxy (iptables mode) into policy-selected backends, and the
node exemption for the kubelet's probes.

* ClusterIP: clients reach the backend through the Service's ClusterIP; the backend's
  ingress policy allows ``role=client`` pods on the targetPort (80) and on a *named*
  targetPort (``web`` = 8080), nothing on 9000. Every result equals ``netpol-agent
  explain`` for client -> backend pod on the targetPort (what the policy sees after
  kube-proxy's DNAT).
* NodePort from a host outside the cluster (``externalTrafficPolicy: Local``, so the
  client address survives): denied while the policy allows only pods, allowed once an
  ipBlock names the outside host; both equal explain for that address.
* A pod under deny-all (ingress and egress) with an HTTP readiness probe becomes Ready:
  the kubelet probes from its own node, which the agent always lets through.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.node.workloads import (
    HTTP_PORT,
    Probe,
    apply,
    connect,
    connect_all,
    delete_namespaces,
    dump_state,
    explain,
    get,
    images,
    last_peer,
    namespace,
    node_ip,
    pod_ip,
    policy,
    server_pod,
    service,
    table,
    unique,
    wait_ready,
    wait_until,
    workers,
)

if TYPE_CHECKING:
    from tests.node.cluster import NodeCluster

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("deployed_agent")]

SETTLE = 20.0


def _outside_ip(cluster: NodeCluster) -> str:
    """The outside host's address on the nodes' segment."""
    ip: str = cluster.outside_ip
    return ip


def _outside_connect(cluster: NodeCluster, host: str, port: int, timeout: float = 1.0) -> bool:
    result = cluster.run_outside(
        [
            images(cluster).netprobe_bin,
            "connect",
            "tcp",
            f"{host}:{port}",
            "--timeout",
            f"{int(timeout * 1000)}ms",
        ],
        check=False,
    )
    return result.returncode == 0


def _settle(check: Any, expected: bool) -> bool:
    """Probe until the result equals ``expected`` or SETTLE passes; the last result."""
    deadline = time.monotonic() + SETTLE
    while True:
        observed: bool = check()
        if observed == expected or time.monotonic() > deadline:
            return observed
        time.sleep(0.5)


@pytest.fixture
def backend_ns(node_cluster: NodeCluster) -> Any:
    ns = unique("svc")
    try:
        yield ns
    finally:
        delete_namespaces(node_cluster, ns)


def test_services_clusterip_and_nodeport_follow_the_backend_policy(
    node_cluster: NodeCluster, backend_ns: str, tmp_path: Path
) -> None:
    cluster = node_cluster
    ns = backend_ns
    node_a, node_b = workers(cluster)
    clients = {  # name: (node, labels); the policy allows role=client
        "client-a": (node_a, {"role": "client"}),
        "client-b": (node_b, {"role": "client"}),
        "other-a": (node_a, {"role": "other"}),
        "other-b": (node_b, {"role": "other"}),
    }
    apply(cluster, namespace(ns, {"purpose": "services"}))
    apply(
        cluster,
        server_pod(cluster, ns, "backend", node_a, {"app": "backend"}),
        *(server_pod(cluster, ns, name, node, labels) for name, (node, labels) in clients.items()),
        service(
            ns,
            "backend",
            {"app": "backend"},
            [
                {"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"},
                {"name": "named", "port": 8081, "targetPort": "web", "protocol": "TCP"},
                {"name": "alt", "port": 9001, "targetPort": 9000, "protocol": "TCP"},
            ],
        ),
        service(
            ns,
            "backend-nodeport",
            {"app": "backend"},
            [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}],
            kind="NodePort",
            external_traffic_policy="Local",
        ),
        service(
            ns,
            "backend-nodeport-cluster",
            {"app": "backend"},
            [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}],
            kind="NodePort",
            external_traffic_policy="Cluster",
        ),
        policy(
            ns,
            "backend-ingress",
            {"matchLabels": {"app": "backend"}},
            ingress=[
                {
                    "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"port": 80, "protocol": "TCP"}, {"port": "web", "protocol": "TCP"}],
                }
            ],
        ),
    )
    wait_ready(cluster, ns, "backend", *clients)
    svc = get(cluster, "-n", ns, "service", "backend")
    cluster_ip = svc["spec"]["clusterIP"]
    target_of = {p["port"]: p["targetPort"] for p in svc["spec"]["ports"]}
    container_port = {80: 80, 8081: HTTP_PORT, 9001: 9000}  # targetPort resolved in the pod
    nodeport = get(cluster, "-n", ns, "service", "backend-nodeport")["spec"]["ports"][0]["nodePort"]
    # The Service has endpoints before we probe it (kube-proxy programs them).
    wait_until(
        "endpoints of the backend Service",
        lambda: (
            get(cluster, "-n", ns, "endpointslices", "-l", "kubernetes.io/service-name=backend")[
                "items"
            ]
            and connect(cluster, Probe(f"{ns}/client-a", cluster_ip, 80))
        ),
        timeout=60,
    )

    state = dump_state(cluster, tmp_path / "state.yaml")
    rows = []
    failures = []
    probes = [
        (name, Probe(f"{ns}/{name}", cluster_ip, port))
        for name in clients
        for port in (80, 8081, 9001)
    ]
    verdicts = [
        explain(state, probe.src, f"{ns}/backend", container_port[probe.port])
        for _, probe in probes
    ]
    observed = connect_all(cluster, [p for _, p in probes])
    for i, ((name, probe), verdict) in enumerate(zip(probes, verdicts, strict=True)):
        if observed[i] != verdict.allowed:  # give the data plane a moment, then decide
            observed[i] = _settle(lambda p=probe: connect(cluster, p), verdict.allowed)
        rows.append(
            [
                f"{name} ({clients[name][0]})",
                f"ClusterIP:{probe.port} -> targetPort {target_of[probe.port]} "
                f"({container_port[probe.port]})",
                "ok" if observed[i] else "--",
                "ALLOWED" if verdict.allowed else "DENIED",
            ]
        )
        if observed[i] != verdict.allowed:
            failures.append(f"{probe}: observed {observed[i]}, explain {verdict.why()}")
    # Cross-check the guide-level expectation too: only role=client, only 80 and web.
    for (name, probe), verdict in zip(probes, verdicts, strict=True):
        expected = clients[name][1]["role"] == "client" and probe.port in (80, 8081)
        if verdict.allowed != expected:
            failures.append(f"explain says {verdict.allowed} for {probe}, expected {expected}")

    # NodePort from outside: the policy names pods only, so the outside host is denied...
    outside = _outside_ip(cluster)
    backend_node_ip = node_ip(cluster, node_a)
    for step, extra in (("pods only", None), ("+ ipBlock outside/32", f"{outside}/32")):
        if extra:
            apply(
                cluster,
                policy(
                    ns,
                    "backend-from-outside",
                    {"matchLabels": {"app": "backend"}},
                    ingress=[
                        {
                            "from": [{"ipBlock": {"cidr": extra}}],
                            "ports": [{"port": 80, "protocol": "TCP"}],
                        }
                    ],
                ),
            )
        state = dump_state(cluster, tmp_path / f"state-nodeport-{bool(extra)}.yaml")
        verdict = explain(state, outside, f"{ns}/backend", 80)
        seen = _settle(
            lambda: _outside_connect(cluster, backend_node_ip, nodeport), verdict.allowed
        )
        rows.append(
            [
                f"outside host {outside} ({step})",
                f"NodePort {backend_node_ip}:{nodeport} (Local) -> targetPort 80",
                "ok" if seen else "--",
                "ALLOWED" if verdict.allowed else "DENIED",
            ]
        )
        if seen != verdict.allowed:
            failures.append(
                f"NodePort from outside ({step}): observed {seen}, explain {verdict.why()}"
            )
        if verdict.allowed != bool(extra):
            failures.append(f"explain for the outside host ({step}): {verdict.why()}")

    # externalTrafficPolicy: Cluster masquerades. Through the other node the backend sees
    # that node's address: not its own node, so the policy decides (the outside host's
    # ipBlock no longer matches), until an ipBlock names that node. Through its own node it
    # sees the node's bridge address, which the node exemption lets through whatever the
    # policy (not compared with explain, which knows a node by its Node object's
    # addresses only). The source the backend saw is read from its log.
    np_cluster = get(cluster, "-n", ns, "service", "backend-nodeport-cluster")["spec"]["ports"][0][
        "nodePort"
    ]
    other_node_ip = node_ip(cluster, node_b)
    for step, cidr in (("", None), (f" + ipBlock {other_node_ip}/32", f"{other_node_ip}/32")):
        if cidr:
            apply(
                cluster,
                policy(
                    ns,
                    "backend-from-node",
                    {"matchLabels": {"app": "backend"}},
                    ingress=[{"from": [{"ipBlock": {"cidr": cidr}}]}],
                ),
            )
        state = dump_state(cluster, tmp_path / f"state-cluster-{bool(cidr)}.yaml")
        verdict = explain(state, other_node_ip, f"{ns}/backend", 80)
        seen = _settle(
            lambda: _outside_connect(cluster, other_node_ip, np_cluster), verdict.allowed
        )
        source = last_peer(cluster, ns, "backend", 80) if seen else "-"
        rows.append(
            [
                f"outside host {outside}{step}",
                f"NodePort {other_node_ip}:{np_cluster} (Cluster, other node)",
                f"ok (from {source})" if seen else "--",
                f"{'ALLOWED' if verdict.allowed else 'DENIED'} (from {other_node_ip})",
            ]
        )
        if seen != verdict.allowed:
            failures.append(
                f"NodePort (Cluster) via {node_b}{step}: observed {seen}, {verdict.why()}"
            )
        if seen and source != other_node_ip:
            failures.append(f"NodePort (Cluster) via {node_b}: the backend saw {source}")
    seen = _outside_connect(cluster, backend_node_ip, np_cluster)
    source = last_peer(cluster, ns, "backend", 80) if seen else "-"
    rows.append(
        [
            f"outside host {outside}",
            f"NodePort {backend_node_ip}:{np_cluster} (Cluster, backend's node)",
            f"ok (from {source})" if seen else "--",
            "n/a: the source is the node's own bridge address",
        ]
    )

    print(
        "\n"
        + table(["client", "through", "observed", "explain (client -> backend pod)"], rows)
        + f"\n(backend-ingress allows role=client on 80 and named port web; ClusterIP {cluster_ip})"
    )
    assert not failures, "\n".join(failures)


def test_kubelet_readiness_probe_passes_under_deny_all(
    node_cluster: NodeCluster, tmp_path: Path
) -> None:
    cluster = node_cluster
    ns = unique("probe")
    node_a, node_b = workers(cluster)
    try:
        apply(cluster, namespace(ns))
        apply(cluster, policy(ns, "deny-all", {}, ingress=[], egress=[]))
        # The policy exists before the pod: the pod is isolated from its first sync on.
        apply(
            cluster,
            server_pod(cluster, ns, "ready", node_a, {"app": "ready"}, readiness=True),
            server_pod(cluster, ns, "peer", node_b, {"app": "peer"}),
        )
        wait_ready(cluster, ns, "ready", "peer", timeout=60)
        state = dump_state(cluster, tmp_path / "state.yaml")
        from_node = explain(state, node_ip(cluster, node_a), f"{ns}/ready", HTTP_PORT)
        assert from_node.allowed, from_node.why()
        assert "own node" in from_node.why(), from_node.why()
        # ...while deny-all holds for everyone else.
        peer = explain(state, f"{ns}/peer", f"{ns}/ready", HTTP_PORT)
        assert not peer.allowed
        ready_ip = pod_ip(cluster, ns, "ready")
        assert not _settle(
            lambda: connect(cluster, Probe(f"{ns}/peer", ready_ip, HTTP_PORT)), False
        )
        # Ready stays Ready (the probe keeps passing every second).
        time.sleep(3)
        conditions = get(cluster, "-n", ns, "pod", "ready")["status"]["conditions"]
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    finally:
        delete_namespaces(cluster, ns)
