"""pytest fixtures for the real-node tests (marker ``node``).

* ``node_cluster`` (session): one :class:`tests.node.cluster.NodeCluster` shared by
  every node test; started on first use, stopped (and cleaned up) at the end.
* ``node_images`` (session): the test images from ``tests/node/images.sh``
  (pause, netprobe), netprobe imported on every node.
* ``agent_image`` (session): the agent's own image (``images.sh agent``, or the archive
  and ref in ``NETPOL_AGENT_NODE_AGENT_ARCHIVE`` / ``NETPOL_AGENT_NODE_AGENT_REF``),
  imported on every node.
* ``deployed_agent`` (session): ``deploy/`` applied with that image, as the kind guide
  does; the DaemonSet Ready on every node.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.netpolapi import install_crd
from tests.node.cluster import NodeCluster, build_images


@dataclass(frozen=True)
class NodeImages:
    pause: Path
    pause_ref: str
    netprobe: Path
    netprobe_ref: str
    netprobe_bin: Path  #: the static binary, to run on a node or in a pod's netns


@dataclass(frozen=True)
class AgentImage:
    archive: Path
    ref: str


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the real-node cluster needs root")
    for tool in ("containerd", "runc", "ctr", "nsenter", "unshare", "ip", "buildah"):
        if shutil.which(tool) is None:
            pytest.skip(f"the real-node cluster needs {tool}")


@pytest.fixture(scope="session")
def node_images() -> NodeImages:
    _require_root()
    out = build_images("pause", "netprobe")
    return NodeImages(
        Path(out["PAUSE"]),
        out["PAUSE_REF"],
        Path(out["NETPROBE"]),
        out["NETPROBE_REF"],
        Path(out["NETPROBE_BIN"]),
    )


@pytest.fixture(scope="session")
def node_cluster(node_images: NodeImages) -> Iterator[NodeCluster]:
    cluster = NodeCluster(pause=(node_images.pause, node_images.pause_ref))
    with cluster:
        cluster.import_image(node_images.netprobe)
        # The ClusterNetworkPolicy CRD, as a cluster that uses them has it before the
        # agent starts (an agent started without it checks again every 30 s).
        assert cluster.control_plane is not None
        install_crd(cluster.control_plane)
        yield cluster
    times = ", ".join(f"{k} {v:.1f}s" for k, v in cluster.timings.items())
    print(f"\nnode cluster timings: {times}", file=sys.stderr)


#: A prebuilt agent image (OCI archive) and its ref, instead of ``images.sh agent``.
ENV_AGENT_ARCHIVE = "NETPOL_AGENT_NODE_AGENT_ARCHIVE"
ENV_AGENT_REF = "NETPOL_AGENT_NODE_AGENT_REF"


@pytest.fixture(scope="session")
def agent_image(node_cluster: NodeCluster) -> AgentImage:
    archive, ref = os.environ.get(ENV_AGENT_ARCHIVE), os.environ.get(ENV_AGENT_REF)
    if archive and ref:
        image = AgentImage(Path(archive), ref)
    else:
        out = build_images("agent")
        image = AgentImage(Path(out["AGENT"]), out["AGENT_REF"])
    node_cluster.import_image(image.archive)
    return image


@pytest.fixture(scope="session")
def deployed_agent(node_cluster: NodeCluster, agent_image: AgentImage) -> AgentImage:
    node_cluster.deploy_agent(agent_image.ref)
    return agent_image
