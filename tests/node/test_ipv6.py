"""NetworkPolicy over IPv6: the agent, deployed from ``deploy/``, on an IPv6 single-stack
cluster (``NodeCluster(ip_family="ipv6")``: kind's ipv6 ranges).

The cluster is this module's own, started next to the session's IPv4 one and stopped at
the module's end: about 50 s here, the cluster's start, the agent's deploy and the stop
included, so ``make test`` runs it (``NETPOL_AGENT_NODE_IPV6=0`` skips it). The upstream
suite over IPv6 is ``python -m tests.node.e2e --ip-family ipv6``.

One scenario, three pods on the two workers: ``server`` alone on one, ``client`` and
``other`` on the other (routed traffic). The server admits TCP 80 from ``client`` only;
``other``'s egress is the pod range minus the client's address (an IPv6 ``ipBlock``
with an ``except``). Every ordered pair is probed from inside the source pod on TCP 80
and UDP 53, and every result must equal ``netpol-agent explain`` for the live objects.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.netpolapi import install_crd
from tests.node.cluster import IPV6_LAYOUT, NodeCluster, build_images
from tests.node.conftest import ENV_AGENT_ARCHIVE, ENV_AGENT_REF, NodeImages
from tests.node.workloads import (
    apply,
    namespace,
    pod_ip,
    policy,
    probe_matrix,
    render_matrix,
    server_pod,
    unique,
    wait_ready,
    workers,
)

#: Set to 0 to skip this module (a second cluster, for about 50 s).
ENV_RUN_IPV6 = "NETPOL_AGENT_NODE_IPV6"

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(os.environ.get(ENV_RUN_IPV6) == "0", reason=f"{ENV_RUN_IPV6}=0"),
    pytest.mark.skipif(not Path("/proc/net/if_inet6").exists(), reason="this kernel has no IPv6"),
]

PORTS: tuple[tuple[int, str], ...] = ((80, "tcp"), (53, "udp"))


@pytest.fixture(scope="module")
def ipv6_cluster(node_images: NodeImages) -> Iterator[NodeCluster]:
    archive, ref = os.environ.get(ENV_AGENT_ARCHIVE), os.environ.get(ENV_AGENT_REF)
    if not (archive and ref):
        agent = build_images("agent")
        archive, ref = agent["AGENT"], agent["AGENT_REF"]
    with NodeCluster(pause=(node_images.pause, node_images.pause_ref), ip_family="ipv6") as c:
        c.import_image(node_images.netprobe)
        assert c.control_plane is not None
        install_crd(c.control_plane)  # as the session's cluster has it (explain reads it)
        c.import_image(Path(archive))
        c.deploy_agent(ref)
        yield c


def test_ipv6_pod_ingress_and_ipblock_egress_match_explain(
    ipv6_cluster: NodeCluster, tmp_path: Path
) -> None:
    cluster = ipv6_cluster
    ns = unique("v6")
    server_node, client_node = workers(cluster)
    server, client, other = (f"{ns}/server", f"{ns}/client", f"{ns}/other")
    placement = {server: server_node, client: client_node, other: client_node}
    apply(cluster, namespace(ns))
    apply(
        cluster,
        *(
            server_pod(cluster, ns, pod.split("/")[1], placement[pod], {"role": name})
            for pod, name in ((server, "server"), (client, "client"), (other, "other"))
        ),
    )
    wait_ready(cluster, ns, "server", "client", "other")
    ips = {pod: pod_ip(cluster, *pod.split("/")) for pod in (server, client, other)}
    pod_range = ipaddress.ip_network(IPV6_LAYOUT.cluster_cidr)
    assert all(ipaddress.ip_address(ip) in pod_range for ip in ips.values()), ips

    apply(
        cluster,
        policy(
            ns,
            "server-from-client",
            {"matchLabels": {"role": "server"}},
            ingress=[
                {
                    "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"protocol": "TCP", "port": 80}],
                }
            ],
        ),
        policy(
            ns,
            "other-not-to-client",
            {"matchLabels": {"role": "other"}},
            egress=[
                {
                    "to": [
                        {
                            "ipBlock": {
                                "cidr": str(pod_range),
                                "except": [f"{ips[client]}/128"],
                            }
                        }
                    ]
                }
            ],
        ),
    )
    pods = (server, client, other)
    cells, rounds = probe_matrix(cluster, ips, tmp_path / "state.yaml", pods, PORTS, family="ipv6")
    short = {pod: pod.split("/")[1] for pod in pods}
    print(render_matrix(f"IPv6 ({rounds} probe rounds)", cells, pods, short, PORTS))
    mismatches = [
        f"{c.probe} to {c.dst}: observed {c.observed}, explain {c.explained} ({c.why})"
        for c in cells
        if c.observed != c.explained
    ]
    assert not mismatches, "\n".join(mismatches)
    verdicts = {(c.probe.src, c.dst, c.probe.port): c.observed for c in cells}
    # The policies decide both ways, so a matrix of all-allowed cannot pass.
    assert verdicts[(client, server, 80)] is True
    assert verdicts[(other, server, 80)] is False  # the server's ingress
    assert verdicts[(client, server, 53)] is False  # TCP 80 only
    assert verdicts[(other, client, 80)] is False  # other's egress: the except
    assert verdicts[(client, other, 80)] is True  # other's ingress is not isolated
