"""Pod-start leaks on the real nodes, through containerd and the kubelet, in three agent
configurations: the CNI plugin chained (``deploy/cni``), ``--isolate-unknown-pod-ips``
without the plugin, and neither.

``python -m tests.node.podlifecycle --starts 100`` brings up the real-node cluster and,
for each configuration, deploys the agent that way (a kustomize overlay of ``deploy/``,
as a user writes one) and starts pods in a namespace whose deny-all (ingress and egress,
``podSelector: {}``) exists before any pod, ``--batch`` at a time, spread over the two
workers. Each pod's only container runs ``netprobe loop tcp SINK:80`` from its first
instant (one attempt every 20 ms for the window), to a sink pod in another namespace with
no policy. A start **leaks** if any attempt connected, or the sink logged a connection
from the pod's address.

Pod-start times, from this machine's one clock:

* **create -> first attempt**: from just before ``kubectl apply`` of the batch to the
  first attempt the container logged (the pod's own timestamp): what a user's pod
  waits, with the apiserver, the kubelet, the sandbox (CNI ADD included) and the
  container start in it;
* **RunPodSandbox**: containerd's own log, from ``RunPodSandbox for <pod>`` to
  ``... returns sandbox id`` (the kubelet's call that makes the network: the CNI ADD,
  our plugin's wait included, is inside it).

``tests/node/test_pod_lifecycle.py`` runs 30 starts per configuration and asserts 0
leaks with the plugin and with ``--isolate-unknown-pod-ips``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.node.workloads import (
    LoopCount,
    apply,
    delete_namespaces,
    get,
    loop_pod,
    namespace,
    parse_loop,
    parse_time,
    pod_ip,
    policy,
    server_pod,
    table,
    unique,
    wait_ready,
    wait_until,
    workers,
)

if TYPE_CHECKING:
    from tests.node.cluster import NodeCluster

INTERVAL = "20ms"
ATTEMPT_TIMEOUT = "50ms"
WINDOW = 3.0  # seconds each pod probes


@dataclass(frozen=True)
class Config:
    """One way to deploy the agent (``NodeCluster.deploy_agent``'s components and args)."""

    name: str
    components: tuple[str, ...] = ()
    args: tuple[str, ...] = ()

    def deploy(self, cluster: NodeCluster, image_ref: str, *, recreate: bool = True) -> float:
        return cluster.deploy_agent(
            image_ref, components=self.components, args=self.args, recreate=recreate
        )


PLUGIN = Config("plugin", components=("cni",))
ISOLATE = Config("isolate-unknown-pod-ips", args=("--isolate-unknown-pod-ips",))
NEITHER = Config("neither")
CONFIGS = (PLUGIN, ISOLATE, NEITHER)


@dataclass
class PodStart:
    name: str
    node: str
    applied: float  # time.time() just before kubectl apply of its batch
    ip: str = ""
    count: LoopCount = field(default_factory=LoopCount)
    sink_saw: int = 0  # connections the sink logged from the pod's address
    sandbox: float | None = None  # containerd's RunPodSandbox, seconds

    @property
    def leaked(self) -> bool:
        return self.count.leaked > 0 or self.sink_saw > 0

    @property
    def to_first_attempt(self) -> float | None:
        return self.count.first - self.applied if self.count.total else None


@dataclass
class World:
    ns: str  # under deny-all; the new pods
    open_ns: str  # the sink
    nodes: tuple[str, str]
    sink_ip: str


def setup(cluster: NodeCluster) -> World:
    node_a, node_b = workers(cluster)
    ns, open_ns = unique("lifecycle"), unique("lifecycle-open")
    apply(cluster, namespace(ns, {"purpose": "podlifecycle"}), namespace(open_ns))
    apply(cluster, policy(ns, "deny-all", {}, ingress=[], egress=[]))
    apply(cluster, server_pod(cluster, open_ns, "sink", node_b, {"app": "sink"}))
    wait_ready(cluster, open_ns, "sink")
    return World(ns, open_ns, (node_a, node_b), pod_ip(cluster, open_ns, "sink"))


def teardown(cluster: NodeCluster, world: World) -> None:
    delete_namespaces(cluster, world.ns, world.open_ns)


_SINK_LINE = re.compile(r"^(\S+) tcp 80 from (\S+):\d+$")
_SANDBOX_START = re.compile(
    r'time="([^"]+)".*RunPodSandbox for &PodSandboxMetadata\{Name:([^,]+),Uid:[^,]*,'
    r"Namespace:([^,]+),"
)
_SANDBOX_DONE = re.compile(r"returns sandbox id")


def sink_connections(cluster: NodeCluster, world: World, since: float) -> dict[str, int]:
    """Connections the sink logged since ``since``, per source address."""
    seen: dict[str, int] = {}
    for line in cluster.kubectl("-n", world.open_ns, "logs", "sink").splitlines():
        match = _SINK_LINE.match(line.strip())
        stamp = parse_time(match.group(1)) if match else None
        if match and stamp is not None and stamp >= since:
            seen[match.group(2)] = seen.get(match.group(2), 0) + 1
    return seen


def sandbox_times(cluster: NodeCluster, node: str, ns: str) -> dict[str, float]:
    """Seconds containerd took for RunPodSandbox, per pod of ``ns`` (from its log)."""
    started: dict[str, float] = {}
    took: dict[str, float] = {}
    log = cluster.node(node).log_dir / "containerd.log"
    for line in log.read_text(errors="replace").splitlines():
        if "RunPodSandbox for &PodSandboxMetadata" not in line:
            continue
        match = _SANDBOX_START.search(line)
        if match is None or match.group(3) != ns:
            continue
        stamp = parse_time(match.group(1))
        if stamp is None:
            continue
        name = match.group(2)
        if _SANDBOX_DONE.search(line):
            if name in started:
                took[name] = stamp - started.pop(name)
        elif "failed" not in line and "error" not in line:
            started[name] = stamp
    return took


@dataclass(frozen=True)
class CniAdds:
    """The agent's own count of CNI ADDs on a node (``/metrics``)."""

    count: int
    seconds: float  # summed time from ADD received to the agent's answer
    failures: int  # ADDs that timed out or failed

    def __sub__(self, other: CniAdds) -> CniAdds:
        return CniAdds(
            self.count - other.count, self.seconds - other.seconds, self.failures - other.failures
        )


def cni_adds(cluster: NodeCluster, node: str) -> CniAdds:
    """``netpol_agent_cni_add_duration_seconds`` and ``_failures_total`` of the node's agent."""
    text = cluster.run_on_node(
        node, ["curl", "-sf", "--max-time", "5", "http://127.0.0.1:9872/metrics"], check=True
    ).stdout
    values = {"count": 0.0, "sum": 0.0, "failures": 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == "netpol_agent_cni_add_duration_seconds_count":
            values["count"] = float(value)
        elif name == "netpol_agent_cni_add_duration_seconds_sum":
            values["sum"] = float(value)
        elif name.startswith("netpol_agent_cni_add_failures_total"):
            values["failures"] += float(value)
    return CniAdds(int(values["count"]), values["sum"], int(values["failures"]))


def run_batch(cluster: NodeCluster, world: World, first: int, count: int) -> list[PodStart]:
    names = [f"start-{n:03d}" for n in range(first, first + count)]
    starts = {name: PodStart(name, world.nodes[i % 2], 0.0) for i, name in enumerate(names)}
    pods = [
        loop_pod(
            cluster,
            world.ns,
            s.name,
            s.node,
            {"app": "new"},
            f"{world.sink_ip}:80",
            interval=INTERVAL,
            timeout=ATTEMPT_TIMEOUT,
            duration=f"{WINDOW}s",
        )
        for s in starts.values()
    ]
    applied = time.time()
    for s in starts.values():
        s.applied = applied
    apply(cluster, *pods)

    def finished() -> bool:
        items = get(cluster, "-n", world.ns, "pods")["items"]
        phases = {p["metadata"]["name"]: p["status"].get("phase") for p in items}
        return all(phases.get(n) in ("Succeeded", "Failed") for n in names)

    wait_until(f"pods {names[0]}..{names[-1]} finished", finished, timeout=120, interval=0.5)
    sink = sink_connections(cluster, world, applied)
    sandboxes: dict[str, float] = {}
    for node in world.nodes:
        sandboxes.update(sandbox_times(cluster, node, world.ns))
    for s in starts.values():
        s.ip = get(cluster, "-n", world.ns, "pod", s.name)["status"].get("podIP", "")
        s.count = parse_loop(cluster.kubectl("-n", world.ns, "logs", s.name))
        s.sink_saw = sink.get(s.ip, 0) if s.ip else 0
        s.sandbox = sandboxes.get(s.name)
    cluster.kubectl(
        "-n", world.ns, "delete", "pods", *names, "--grace-period=0", "--force", "--wait=true"
    )
    return list(starts.values())


def measure(cluster: NodeCluster, world: World, starts: int, *, batch: int = 10) -> list[PodStart]:
    results: list[PodStart] = []
    for first in range(0, starts, batch):
        results += run_batch(cluster, world, first, min(batch, starts - first))
    return results


def _ms(values: Sequence[float | None]) -> str:
    known = sorted(v for v in values if v is not None)
    if not known:
        return "n/a"
    p99 = known[min(len(known) - 1, round(0.99 * (len(known) - 1)))]
    return f"{statistics.median(known) * 1000:.0f} / {p99 * 1000:.0f} ms (n={len(known)})"


def report(results: dict[str, list[PodStart]]) -> str:
    rows = []
    for name, starts in results.items():
        rows.append(
            [
                name,
                f"{sum(s.leaked for s in starts)}/{len(starts)}",
                str(sum(s.count.ok for s in starts)),
                str(sum(s.sink_saw for s in starts)),
                str(sum(s.count.total for s in starts)),
                _ms([s.to_first_attempt for s in starts]),
                _ms([s.sandbox for s in starts]),
            ]
        )
    return table(
        [
            "agent",
            "starts that leaked",
            "attempts connected",
            "sink saw",
            "attempts",
            "create -> first attempt (median / p99)",
            "RunPodSandbox (median / p99)",
        ],
        rows,
    )


@contextlib.contextmanager
def _cluster() -> Iterator[tuple[NodeCluster, str]]:
    """A real-node cluster with the agent's image imported (nothing deployed yet)."""
    from tests.node.cluster import NodeCluster, build_images

    found = build_images("pause", "netprobe", "agent")
    with NodeCluster(pause=(Path(found["PAUSE"]), found["PAUSE_REF"])) as cluster:
        cluster.import_image(found["NETPROBE"])
        cluster.import_image(found["AGENT"])
        yield cluster, found["AGENT_REF"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.node.podlifecycle", description=__doc__)
    parser.add_argument("--starts", type=int, default=100, help="per configuration")
    parser.add_argument("--batch", type=int, default=10, help="starts at once (default 10)")
    parser.add_argument(
        "--config",
        action="append",
        choices=[c.name for c in CONFIGS],
        help="only these configurations, in this order (default: all three, in the order"
        " plugin, isolate-unknown-pod-ips, neither)",
    )
    args = parser.parse_args(argv)
    began = time.monotonic()
    results: dict[str, list[PodStart]] = {}
    with _cluster() as (cluster, image):
        world = setup(cluster)
        chained = False
        notes: list[str] = []
        try:
            by_name = {c.name: c for c in CONFIGS}
            for config in [by_name[n] for n in args.config] if args.config else CONFIGS:
                if chained:
                    # Leaving the plugin: take it off the nodes first, or every ADD fails.
                    cluster.delete_agent()
                    cluster.cleanup_agent_cni(image)
                config.deploy(cluster, image)
                chained = "cni" in config.components
                before = {n: cni_adds(cluster, n) for n in world.nodes} if chained else {}
                results[config.name] = measure(cluster, world, args.starts, batch=args.batch)
                if chained:
                    adds = [cni_adds(cluster, n) - before[n] for n in world.nodes]
                    count, seconds = sum(a.count for a in adds), sum(a.seconds for a in adds)
                    notes.append(
                        f"{config.name}: the agents answered {count} ADDs, mean "
                        f"{seconds / max(count, 1) * 1000:.0f} ms from request to answer, "
                        f"{sum(a.failures for a in adds)} failed"
                    )
                print(f"{config.name}: done", file=sys.stderr, flush=True)
        finally:
            teardown(cluster, world)
    print(
        f"Pod starts under a deny-all ({args.starts} per configuration, {args.batch} at a "
        f"time, each probing for {WINDOW:g} s, attempts every {INTERVAL}):\n"
    )
    print(report(results))
    for note in notes:
        print(f"\n{note}")
    print(f"\n(took {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
