"""Pod-start leaks on real nodes (containerd, the kubelet), and the CNI plugin's install,
hazard and uninstall, the way a user deploys them.

In one namespace under a deny-all (ingress and egress), pods start 10 at a time on the
two workers; each one's container runs ``netprobe loop tcp SINK:80`` from its first
instant (``tests/node/podlifecycle.py``). A start leaks if an attempt connected or the
sink logged the pod's address. In order (the module shares one deny-all namespace and
changes the agent's deployment as it goes):

1. **plugin** (``deploy/`` with the ``deploy/cni`` component): every node's conflist
   ends with the ``netpol-agent`` entry and ``/opt/cni/bin/netpol-agent`` is there;
   30 starts, 0 leaks.
2. **the hazard**: the DaemonSet deleted, the entry left (failurePolicy fail): a new pod's
   sandbox does not start, its event names the plugin; once the agent is back the
   kubelet's retry starts it.
3. **uninstall**: DaemonSet deleted, then ``netpol-agent cleanup --cni-conf-dir
   --cni-bin-dir`` on every node (a host-network pod with the DaemonSet's mounts):
   entry and binary gone, the main CNI's plugins untouched, and a pod starts with no
   agent at all.
4. **--isolate-unknown-pod-ips** without the plugin: 30 starts, 0 leaks.
5. **neither**: 30 starts, the count printed (nothing asserted about it).

The module ends with the standard deployment (``deploy/`` as the ``deployed_agent``
fixture applies it) and no plugin on any node, whatever failed, so test order does not
matter. Run with ``-s`` to see the figures; ``python -m tests.node.podlifecycle`` prints
the same table over more starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.control.cni_conf import PLUGIN_TYPE
from tests.node.cluster import NodeCluster, NodeClusterError
from tests.node.conftest import AgentImage
from tests.node.podlifecycle import (
    ISOLATE,
    NEITHER,
    PLUGIN,
    PodStart,
    World,
    cni_adds,
    measure,
    report,
    setup,
    teardown,
)
from tests.node.workloads import apply, get, server_pod, wait_ready, wait_until

pytestmark = pytest.mark.node

STARTS = 30
BATCH = 10
MAIN_PLUGINS = ["bridge", "portmap"]  # what the harness's conflist lists


@dataclass
class Lifecycle:
    cluster: NodeCluster
    image: str
    world: World
    deployment: str = "standard"  # standard | plugin | isolate-unknown-pod-ips | none
    results: dict[str, list[PodStart]] = field(default_factory=dict)

    def plugin_types(self, node: Any) -> list[str]:
        conflists = sorted(node.cni_conf_dir.glob("*.conflist"))
        assert conflists, f"{node.name}: no conflist"
        data = json.loads(conflists[0].read_text())
        return [p.get("type") for p in data["plugins"]]

    def plugin_anywhere(self) -> bool:
        return any(
            PLUGIN_TYPE in self.plugin_types(n) or (n.cni_bin_dir / "netpol-agent").exists()
            for n in self.cluster.nodes
        )

    def uninstall_plugin(self) -> dict[str, str]:
        """The order that works: the DaemonSet goes first (a running agent puts its entry
        back within 2 s), then cleanup on every node."""
        self.cluster.delete_agent()
        self.deployment = "none"
        return self.cluster.cleanup_agent_cni(self.image)

    def restore(self) -> None:
        """Back to the standard deployment, with no plugin on any node."""
        if self.plugin_anywhere():
            self.uninstall_plugin()
        if self.deployment != "standard":
            NEITHER.deploy(self.cluster, self.image)
            self.deployment = "standard"

    def record(self, name: str, starts: list[PodStart]) -> None:
        self.results[name] = starts
        print(f"\n{report({name: starts})}", file=sys.stderr)

    def measure(self, name: str, *, plugin: bool = False) -> list[PodStart]:
        before = {n: cni_adds(self.cluster, n) for n in self.world.nodes} if plugin else {}
        starts = measure(self.cluster, self.world, STARTS, batch=BATCH)
        self.record(name, starts)
        if plugin:
            adds = [cni_adds(self.cluster, n) - before[n] for n in self.world.nodes]
            count, seconds = sum(a.count for a in adds), sum(a.seconds for a in adds)
            print(
                f"the agents answered {count} ADDs, mean {seconds / max(count, 1) * 1000:.0f} ms"
                f" from request to answer, {sum(a.failures for a in adds)} failed",
                file=sys.stderr,
            )
            assert count >= STARTS, adds  # every start went through the plugin
            assert sum(a.failures for a in adds) == 0, adds
        assert len(starts) == STARTS
        for s in starts:  # the measurement ran: every pod started and probed
            assert s.ip, f"{s.name}: no address"
            assert s.count.total > 0, f"{s.name}: its loop recorded nothing"
        return starts


@pytest.fixture(scope="module")
def lifecycle(node_cluster: NodeCluster, deployed_agent: AgentImage) -> Iterator[Lifecycle]:
    world = setup(node_cluster)
    lc = Lifecycle(node_cluster, deployed_agent.ref, world)
    try:
        yield lc
    finally:
        if lc.results:
            print(f"\npod starts under a deny-all:\n{report(lc.results)}", file=sys.stderr)
        with contextlib.suppress(NodeClusterError):
            teardown(node_cluster, world)
        lc.restore()


def _leaks(starts: list[PodStart]) -> list[str]:
    return [
        f"{s.name} ({s.node}, {s.ip}): {s.count.ok} connected, sink saw {s.sink_saw}"
        for s in starts
        if s.leaked
    ]


def _sandbox_events(cluster: NodeCluster, ns: str, pod: str) -> list[str]:
    events = get(cluster, "-n", ns, "events", "--field-selector", f"involvedObject.name={pod}")
    return [
        str(e.get("message", ""))
        for e in events["items"]
        if e.get("reason") == "FailedCreatePodSandBox"
    ]


def test_plugin_installed_and_no_pod_start_leaks(lifecycle: Lifecycle) -> None:
    cluster = lifecycle.cluster
    PLUGIN.deploy(cluster, lifecycle.image)
    lifecycle.deployment = "plugin"
    for node in cluster.nodes:
        types = lifecycle.plugin_types(node)
        assert types == [*MAIN_PLUGINS, PLUGIN_TYPE], f"{node.name}: {types}"
        binary = node.cni_bin_dir / "netpol-agent"
        assert binary.is_file() and os.access(binary, os.X_OK), f"{node.name}: no {binary}"
        for plugin in ("bridge", "host-local", "portmap", "loopback"):
            assert (node.cni_bin_dir / plugin).is_file(), f"{node.name}: {plugin} gone"
    starts = lifecycle.measure("plugin", plugin=True)
    assert _leaks(starts) == []


def test_agent_gone_entry_left_sandbox_waits_until_agent_back(lifecycle: Lifecycle) -> None:
    cluster, world = lifecycle.cluster, lifecycle.world
    if lifecycle.deployment != "plugin":
        PLUGIN.deploy(cluster, lifecycle.image)
        lifecycle.deployment = "plugin"
    cluster.delete_agent()
    lifecycle.deployment = "none"
    node = cluster.node(world.nodes[0])
    assert lifecycle.plugin_types(node)[-1] == PLUGIN_TYPE  # nobody took the entry away
    apply(cluster, server_pod(cluster, world.open_ns, "waiter", node.name, {"app": "waiter"}))
    try:
        messages = wait_until(
            "a FailedCreatePodSandBox event for the waiter",
            lambda: _sandbox_events(cluster, world.open_ns, "waiter"),
            timeout=60,
        )
        print(f"\nsandbox event with the agent gone: {messages[-1]}", file=sys.stderr)
        assert any("netpol-agent" in m and "not programmed" in m for m in messages), messages
        phase = get(cluster, "-n", world.open_ns, "pod", "waiter")["status"].get("phase")
        assert phase == "Pending"
        back = time.monotonic()
        PLUGIN.deploy(cluster, lifecycle.image, recreate=False)
        lifecycle.deployment = "plugin"
        wait_ready(cluster, world.open_ns, "waiter", timeout=120)
        print(
            f"waiter Ready {time.monotonic() - back:.1f} s after the agent's redeploy began",
            file=sys.stderr,
        )
    finally:
        cluster.kubectl(
            "-n", world.open_ns, "delete", "pod", "waiter", "--ignore-not-found",
            "--grace-period=0", "--force", "--wait=true",
        )  # fmt: skip


def test_uninstall_then_pods_start_without_agent(lifecycle: Lifecycle) -> None:
    cluster, world = lifecycle.cluster, lifecycle.world
    if lifecycle.deployment != "plugin":
        PLUGIN.deploy(cluster, lifecycle.image)
        lifecycle.deployment = "plugin"
    # Cleanup while the agent still runs is undone: its keeper puts the entry back within
    # its 2 s look, and the binary stays gone (every ADD on the node would fail). So the
    # DaemonSet goes first.
    cluster.cleanup_agent_cni(lifecycle.image)
    for node in cluster.nodes:
        wait_until(
            f"the running agent on {node.name} to put its entry back",
            lambda n=node: lifecycle.plugin_types(n) == [*MAIN_PLUGINS, PLUGIN_TYPE],
            timeout=15,
        )
        assert not (node.cni_bin_dir / "netpol-agent").exists(), node.name
    logs = lifecycle.uninstall_plugin()
    for node in cluster.nodes:
        assert lifecycle.plugin_types(node) == MAIN_PLUGINS, node.name
        assert not (node.cni_bin_dir / "netpol-agent").exists(), node.name
        for plugin in ("bridge", "host-local", "portmap", "loopback"):
            assert (node.cni_bin_dir / plugin).is_file(), f"{node.name}: {plugin} gone"
    assert all("cni plugin unchained" in log for log in logs.values()), logs
    apply(cluster, server_pod(cluster, world.open_ns, "after", world.nodes[0], {"app": "a"}))
    try:
        wait_ready(cluster, world.open_ns, "after", timeout=60)
    finally:
        cluster.kubectl(
            "-n", world.open_ns, "delete", "pod", "after", "--ignore-not-found",
            "--grace-period=0", "--force", "--wait=true",
        )  # fmt: skip


def test_isolate_unknown_pod_ips_no_pod_start_leaks(lifecycle: Lifecycle) -> None:
    if lifecycle.plugin_anywhere():
        lifecycle.uninstall_plugin()
    ISOLATE.deploy(lifecycle.cluster, lifecycle.image)
    lifecycle.deployment = ISOLATE.name
    starts = lifecycle.measure(ISOLATE.name)
    assert _leaks(starts) == []


def test_neither_pod_start_leaks_counted(lifecycle: Lifecycle) -> None:
    if lifecycle.plugin_anywhere():
        lifecycle.uninstall_plugin()
    NEITHER.deploy(lifecycle.cluster, lifecycle.image)
    lifecycle.deployment = "standard"
    starts = lifecycle.measure(NEITHER.name)
    print(f"neither: {len(_leaks(starts))}/{len(starts)} starts leaked", file=sys.stderr)
