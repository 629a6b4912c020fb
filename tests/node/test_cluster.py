"""Smoke test of the real-node cluster (tests/node/cluster.py) and of deploying the agent.

Nodes Ready; pods on the two workers reach each other (cross-node routes) and are
reached from a node; then ``deploy/`` is applied as deploy/kind/README.md says: the
DaemonSet is Ready on all three nodes through ``/readyz``, the agent talks to the
apiserver with in-cluster config (its projected ServiceAccount token, through the
``kubernetes`` Service that kube-proxy DNATs), its rule-change log is on the node's
``/var/log``, and ``/metrics`` answers through a Service ClusterIP.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client

from tests.cluster.controlplane import SERVICE_IP
from tests.node.cluster import AGENT_NAMESPACE, NodeCluster
from tests.node.conftest import AgentImage, NodeImages

pytestmark = pytest.mark.node


def _eventually(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # not there yet
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}: last {last!r}")


def _get(cluster: NodeCluster, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cluster.kubectl("get", "-o", "json", *args))
    return out


@pytest.fixture(scope="module")
def smoke_ns(node_cluster: NodeCluster) -> Iterator[str]:
    name = f"smoke-{secrets.token_hex(3)}"
    node_cluster.kubectl("create", "namespace", name)
    yield name
    node_cluster.kubectl("delete", "namespace", name, "--wait=false")


def _server_pod(name: str, node: str, image: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "smoke", "pod": name}},
            "spec": {
                # Through the scheduler, not spec.nodeName.
                "nodeSelector": {"kubernetes.io/hostname": node},
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "serve",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "args": ["serve", "--tcp", "80,8080", "--udp", "53", "--http", "8080"],
                        "readinessProbe": {
                            "httpGet": {"path": "/healthz", "port": 8080},
                            "periodSeconds": 1,
                        },
                    }
                ],
            },
        }
    )


def test_nodes_ready(node_cluster: NodeCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in _get(node_cluster, "nodes")["items"]}
    assert sorted(nodes) == sorted(n.name for n in node_cluster.nodes)
    for node in node_cluster.nodes:
        obj = nodes[node.name]
        ready = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node.name
        assert obj["spec"]["podCIDR"] == node.pod_cidr
        addresses = {a["type"]: a["address"] for a in obj["status"]["addresses"]}
        assert addresses["InternalIP"] == node.ip
    cp = nodes[node_cluster.control_plane_node.name]
    assert "node-role.kubernetes.io/control-plane" in cp["metadata"]["labels"]
    assert {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"} in [
        {k: t[k] for k in ("key", "effect")} for t in cp["spec"].get("taints", [])
    ]
    assert len({n.pod_cidr for n in node_cluster.nodes}) == 3
    print(
        f"\nnode cluster: every node Ready {node_cluster.timings['nodes_ready']:.1f}s after start",
        file=sys.stderr,
    )


def test_pods_reach_each_other_across_nodes(
    node_cluster: NodeCluster, node_images: NodeImages, smoke_ns: str
) -> None:
    w1, w2 = node_cluster.workers
    pods = {"a": w1, "b": w2}
    for name, node in pods.items():
        node_cluster.kubectl(
            "-n",
            smoke_ns,
            "apply",
            "-f",
            "-",
            input=_server_pod(name, node.name, node_images.netprobe_ref),
        )
    node_cluster.kubectl(
        "-n",
        smoke_ns,
        "wait",
        "--for=condition=Ready",
        "pod/a",
        "pod/b",
        "--timeout=90s",
        timeout=120,
    )
    core = k8s_client.CoreV1Api(node_cluster.api)
    ips = {}
    for name, node in pods.items():
        pod = core.read_namespaced_pod(name, smoke_ns)
        assert pod.spec.node_name == node.name
        ips[name] = pod.status.pod_ip
        assert ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(node.pod_cidr)
    probe = str(node_images.netprobe_bin)
    # Pod to pod, both ways, across the fabric (TCP and UDP).
    for src, dst in (("a", "b"), ("b", "a")):
        out = node_cluster.run_in_pod(
            smoke_ns, src, [probe, "connect", "tcp", f"{ips[dst]}:80", "--timeout", "2s"]
        )
        assert out.returncode == 0, out.stderr
        assert dst in out.stdout  # the server writes its pod name
        udp = node_cluster.run_in_pod(
            smoke_ns, src, [probe, "connect", "udp", f"{ips[dst]}:53", "--timeout", "2s"]
        )
        assert udp.returncode == 0, udp.stderr
    # From every node (its own pod, and the other worker's).
    for node in node_cluster.nodes:
        for name in pods:
            out = node_cluster.run_on_node(
                node, [probe, "connect", "tcp", f"{ips[name]}:8080", "--timeout", "2s"]
            )
            assert out.returncode == 0, f"{node.name} -> {name}: {out.stderr}"
    # kube-proxy: a ClusterIP Service to pod b, from pod a on the other worker.
    node_cluster.kubectl(
        "-n", smoke_ns, "expose", "pod", "b", "--name=b", "--port=81", "--target-port=80"
    )
    cluster_ip = core.read_namespaced_service("b", smoke_ns).spec.cluster_ip

    def via_service() -> bool:
        out = node_cluster.run_in_pod(
            smoke_ns, "a", [probe, "connect", "tcp", f"{cluster_ip}:81", "--timeout", "1s"]
        )
        return out.returncode == 0 and "b" in out.stdout

    _eventually(via_service, f"pod a -> Service b ({cluster_ip}:81)", timeout=30)
    # A NodePort, from the outside host, through the node that does not run pod b.
    node_cluster.kubectl(
        "-n", smoke_ns, "expose", "pod", "b", "--name=b-nodeport", "--type=NodePort", "--port=80"
    )
    node_port = core.read_namespaced_service("b-nodeport", smoke_ns).spec.ports[0].node_port

    def via_node_port() -> bool:
        out = node_cluster.run_outside(
            [probe, "connect", "tcp", f"{w1.ip}:{node_port}", "--timeout", "1s"]
        )
        return out.returncode == 0 and "b" in out.stdout

    _eventually(via_node_port, f"outside -> {w1.name}:{node_port} -> pod b", timeout=30)


def test_agent_deployed_as_the_kind_guide_says(
    node_cluster: NodeCluster, deployed_agent: AgentImage
) -> None:
    print(
        f"\nnode cluster: agent DaemonSet Ready {node_cluster.timings['agent_ready']:.1f}s "
        f"after start (nodes Ready at {node_cluster.timings['nodes_ready']:.1f}s)",
        file=sys.stderr,
    )
    ds = _get(node_cluster, "-n", AGENT_NAMESPACE, "daemonset", "netpol-agent")
    assert ds["status"]["desiredNumberScheduled"] == 3
    assert ds["status"]["numberReady"] == 3
    container = ds["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == deployed_agent.ref
    assert not any(arg.startswith("--kubeconfig") for arg in container.get("args", []))

    pods = _get(
        node_cluster, "-n", AGENT_NAMESPACE, "pods", "-l", "app.kubernetes.io/name=netpol-agent"
    )["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(n.name for n in node_cluster.nodes)
    for pod in pods:
        # In-cluster config: the projected ServiceAccount token volume is mounted, and the
        # pod reaches the apiserver at the kubernetes Service's ClusterIP.
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        projected = [v for v in volumes.values() if "projected" in v]
        assert any(
            any("serviceAccountToken" in s for s in v["projected"]["sources"]) for v in projected
        ), pod["metadata"]["name"]
        mounts = pod["spec"]["containers"][0]["volumeMounts"]
        assert "/var/run/secrets/kubernetes.io/serviceaccount" in [m["mountPath"] for m in mounts]
        env = node_cluster.kubectl(
            "-n",
            AGENT_NAMESPACE,
            "exec",
            pod["metadata"]["name"],
            "--",
            "sh",
            "-c",
            "echo $KUBERNETES_SERVICE_HOST",
        )
        assert env.strip() == SERVICE_IP
        logs = node_cluster.kubectl("-n", AGENT_NAMESPACE, "logs", pod["metadata"]["name"])
        assert "netpol-agent running" in logs, logs[-2000:]
        assert 'config="in-cluster service account"' in logs, logs[-2000:]

    # The kubernetes Service's endpoint is the apiserver on the control-plane node, and
    # the agent's token is a bound ServiceAccount token for netpol-agent/netpol-agent.
    ep = _get(
        node_cluster,
        "-n",
        "default",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=kubernetes",
    )["items"][0]
    assert ep["endpoints"][0]["addresses"] == [node_cluster.control_plane_node.ip]
    worker = node_cluster.workers[0]
    conns = node_cluster.run_on_node(
        worker, ["conntrack", "-L", "-p", "tcp", "--orig-dst", SERVICE_IP, "--dport", "443"]
    )
    if conns.returncode == 0:  # conntrack(8) is installed
        assert SERVICE_IP in conns.stdout, conns.stdout + conns.stderr

    # The rule-change log, through the hostPath /var/log, on every node.
    for node in node_cluster.nodes:
        log = node.var_log / "netpol-agent.log"
        _eventually(
            lambda log=log: log.exists() and log.stat().st_size > 0,  # type: ignore[misc]
            f"{log}",
            timeout=30,
        )
        first = json.loads(log.read_text().splitlines()[0])
        assert isinstance(first, dict)

    # /metrics from every agent (the Service's endpoints, what Prometheus scrapes), and
    # through the Service's ClusterIP (kube-proxy, iptables mode), from a node.
    svc = _get(node_cluster, "-n", AGENT_NAMESPACE, "service", "netpol-agent")
    port = next(p for p in svc["spec"]["ports"] if p["name"] == "metrics")["port"]
    cluster_ip = svc["spec"]["clusterIP"]
    assert cluster_ip not in (None, "", "None"), svc["spec"]
    for node in node_cluster.nodes:
        out = node_cluster.run_on_node(
            worker, ["curl", "-sS", "--max-time", "5", f"http://{node.ip}:{port}/metrics"]
        )
        assert out.returncode == 0 and "netpol_agent_" in out.stdout, out.stderr

    def scrape() -> str | None:
        out = node_cluster.run_on_node(
            worker, ["curl", "-sS", "--max-time", "3", f"http://{cluster_ip}:{port}/metrics"]
        )
        return out.stdout if out.returncode == 0 and "netpol_agent_" in out.stdout else None

    metrics = _eventually(scrape, f"/metrics at {cluster_ip}:{port}", timeout=30)
    assert "netpol_agent_" in metrics


def test_restart_kubelet_keeps_pods(node_cluster: NodeCluster, smoke_ns: str) -> None:
    worker = node_cluster.workers[1]
    before = node_cluster.pod_netns(smoke_ns, "b")
    node_cluster.restart_kubelet(worker)

    def ready() -> bool:
        node = _get(node_cluster, "node", worker.name)
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"]
        )

    _eventually(ready, f"{worker.name} Ready after a kubelet restart", timeout=60)
    assert node_cluster.pod_netns(smoke_ns, "b") == before  # the same sandbox runs on
