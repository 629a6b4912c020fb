"""The pod start window: how much gets through before a new pod is isolated.

``python -m tests.node.podstart --starts 50`` brings up the real-node cluster, deploys the
agent and, in a namespace whose deny-all (ingress and egress, ``podSelector: {}``) exists
before any pod, starts pods in batches. Each start is two pods on the same node:

* ``out-N`` — its only container runs ``netprobe loop tcp SINK:80`` from its first instant
  (one attempt every 20 ms for the window); every attempt that connected is a connection
  that got out before the egress rules were in place (read from the container's log);
* ``in-N`` — a server; the moment its IP appears in the API (a watch on the namespace), a
  prober pod on the same node, outside the deny-all, loops on ``in-N:80``; every attempt
  that connected (or was refused: the SYN reached the pod) got in before isolation.

Times, all from this machine's one clock:

* **sandbox created** — containerd's ``CreatedAt`` of the pod's sandbox;
* **IP in the API** — when the watch saw ``status.podIP``;
* **rules in the kernel** — the ``ts`` of the first rule-change log line about the pod on
  its node (the agent writes it once the pass's iptables-restore committed).

This is a measurement, not a test: it asserts nothing about the figures (the window leaks
today; that is the baseline). ``tests/node/test_podstart.py`` runs a few starts and
asserts only what must hold after the window.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.node.workloads import (
    Loop,
    LoopCount,
    Probe,
    apply,
    connect,
    delete_namespaces,
    get,
    log_time,
    loop_pod,
    namespace,
    parse_loop,
    parse_time,
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

if TYPE_CHECKING:
    from tests.node.cluster import NodeCluster

INTERVAL = "20ms"
ATTEMPT_TIMEOUT = "50ms"


@dataclass
class PodTimes:
    key: str  # ns/name
    node: str
    uid: str = ""
    sandbox: float | None = None
    ip_seen: float | None = None
    ip: str = ""
    rules: float | None = None

    @property
    def sandbox_to_ip(self) -> float | None:
        if self.sandbox is None or self.ip_seen is None:
            return None
        return self.ip_seen - self.sandbox

    @property
    def ip_to_rules(self) -> float | None:
        if self.rules is None or self.ip_seen is None:
            return None
        return self.rules - self.ip_seen


@dataclass
class Start:
    number: int
    outbound: PodTimes
    inbound: PodTimes
    out_count: LoopCount = field(default_factory=LoopCount)
    in_count: LoopCount = field(default_factory=LoopCount)
    in_after_window: bool | None = None  # a fresh probe after the window connected


@dataclass
class World:
    ns: str  # under deny-all
    open_ns: str  # the sink and the probers
    nodes: tuple[str, str]
    sink_ip: str
    prober_netns: dict[str, str]  # node -> the prober pod's network namespace there


def setup(cluster: NodeCluster) -> World:
    node_a, node_b = workers(cluster)
    ns, open_ns = unique("podstart"), unique("podstart-open")
    apply(cluster, namespace(ns, {"purpose": "podstart"}), namespace(open_ns))
    apply(cluster, policy(ns, "deny-all", {}, ingress=[], egress=[]))
    apply(
        cluster,
        server_pod(cluster, open_ns, "sink", node_b, {"app": "sink"}),
        server_pod(cluster, open_ns, f"prober-{node_a}", node_a, {"app": "prober"}),
        server_pod(cluster, open_ns, f"prober-{node_b}", node_b, {"app": "prober"}),
    )
    wait_ready(cluster, open_ns, "sink", f"prober-{node_a}", f"prober-{node_b}")
    return World(
        ns,
        open_ns,
        (node_a, node_b),
        pod_ip(cluster, open_ns, "sink"),
        {node: cluster.pod_netns(open_ns, f"prober-{node}") for node in (node_a, node_b)},
    )


class Watch:
    """Sees each pod of a namespace get its IP; starts the inbound prober at once."""

    def __init__(self, cluster: NodeCluster, world: World, starts: dict[str, Start]) -> None:
        self.cluster, self.world, self.starts = cluster, world, starts
        self.loops: dict[str, Loop] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        for loop in self.loops.values():
            loop.stop()

    def _run(self) -> None:
        from kubernetes import client, watch

        core = client.CoreV1Api(self.cluster.api)
        try:
            while not self._stop.is_set():
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    core.list_namespaced_pod, self.world.ns, timeout_seconds=2
                )
                for event in stream:
                    self._seen(event["object"].to_dict(), time.time())
                    if self._stop.is_set():
                        break
        except BaseException as error:  # surfaced by collect()
            self.error = error

    def _seen(self, pod: dict[str, Any], now: float) -> None:
        name = pod["metadata"]["name"]
        ip = (pod.get("status") or {}).get("pod_ip")
        start = self.starts.get(name)
        if start is None or not ip:
            return
        times = start.outbound if name.startswith("out-") else start.inbound
        if times.ip_seen is not None:
            return
        times.ip_seen, times.ip, times.uid = now, ip, pod["metadata"]["uid"]
        if times is start.inbound:
            prober = f"{self.world.open_ns}/prober-{times.node}"
            loop = Loop(
                self.cluster,
                Probe(prober, ip, 80, "tcp"),
                interval=INTERVAL,
                timeout=ATTEMPT_TIMEOUT,
                netns=self.world.prober_netns[times.node],
            )
            self.loops[name] = loop.start()


def sandbox_created(cluster: NodeCluster, node: str, uid: str) -> float | None:
    """containerd's creation time of the pod's sandbox (None if it cannot be read)."""
    ctr = ["ctr", "-n", "k8s.io"]
    listing = cluster.run_on_node(
        node,
        [
            *ctr,
            "containers",
            "ls",
            "-q",
            f'labels."io.kubernetes.pod.uid"=={uid},labels."io.cri-containerd.kind"==sandbox',
        ],
    ).stdout
    ids = listing.split()
    if len(ids) != 1:
        return None
    info = json.loads(cluster.run_on_node(node, [*ctr, "containers", "info", ids[0]]).stdout)
    return parse_time(info.get("CreatedAt", ""))


def rules_time(cluster: NodeCluster, times: PodTimes, since: float) -> float | None:
    for entry in rule_log(cluster, times.node):
        if entry.get("pod") == times.key and log_time(entry) >= since - 1:
            return log_time(entry)
    return None


def run_batch(
    cluster: NodeCluster, world: World, first: int, count: int, window: float
) -> list[Start]:
    starts: dict[str, Start] = {}
    pods = []
    for number in range(first, first + count):
        node = world.nodes[number % 2]
        start = Start(
            number,
            PodTimes(f"{world.ns}/out-{number:03d}", node),
            PodTimes(f"{world.ns}/in-{number:03d}", node),
        )
        starts[f"out-{number:03d}"] = starts[f"in-{number:03d}"] = start
        pods.append(
            loop_pod(
                cluster,
                world.ns,
                f"out-{number:03d}",
                node,
                {"app": "outbound"},
                f"{world.sink_ip}:80",
                interval=INTERVAL,
                timeout=ATTEMPT_TIMEOUT,
                duration=f"{window}s",
            )
        )
        pods.append(server_pod(cluster, world.ns, f"in-{number:03d}", node, {"app": "inbound"}))
    since = time.time()
    unique_starts = list({id(s): s for s in starts.values()}.values())
    with Watch(cluster, world, starts) as watcher:
        apply(cluster, *pods)
        # Every inbound loop runs for the window after its pod's IP appeared.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            seen = [s.inbound.ip_seen for s in unique_starts if s.inbound.ip_seen is not None]
            if len(seen) == len(unique_starts) and time.time() > max(seen) + window:
                break
            time.sleep(0.2)
        if watcher.error is not None:
            raise watcher.error
        for start in unique_starts:
            loop = watcher.loops.get(start.inbound.key.split("/")[1])
            if loop is not None:
                start.in_count = loop.stop()
    for start in unique_starts:
        name = start.outbound.key.split("/")[1]
        wait_until(
            f"{name} finished",
            lambda n=name: (
                get(cluster, "-n", world.ns, "pod", n)["status"].get("phase")
                in ("Succeeded", "Failed")
            ),
            timeout=60,
        )
        start.out_count = parse_loop(cluster.kubectl("-n", world.ns, "logs", name))
        if start.inbound.ip:
            prober = f"{world.open_ns}/prober-{start.inbound.node}"
            start.in_after_window = connect(cluster, Probe(prober, start.inbound.ip, 80))
        for times in (start.outbound, start.inbound):
            if times.uid:
                times.sandbox = sandbox_created(cluster, times.node, times.uid)
            times.rules = rules_time(cluster, times, since)
    cluster.kubectl(
        "-n", world.ns, "delete", "pods", "--all", "--grace-period=0", "--force", "--wait=true"
    )
    return unique_starts


def measure(
    cluster: NodeCluster, starts: int, *, batch: int = 5, window: float = 3.0
) -> list[Start]:
    world = setup(cluster)
    results: list[Start] = []
    try:
        for first in range(0, starts, batch):
            results += run_batch(cluster, world, first, min(batch, starts - first), window)
    finally:
        delete_namespaces(cluster, world.ns, world.open_ns)
    return results


def _figures(values: Sequence[float | None]) -> str:
    known = sorted(v for v in values if v is not None)
    if not known:
        return "n/a"
    p90 = known[min(len(known) - 1, round(0.9 * (len(known) - 1)))]
    return (
        f"median {statistics.median(known) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
        f"max {known[-1] * 1000:.0f} ms (n={len(known)})"
    )


def report(results: Sequence[Start]) -> str:
    n = len(results)
    pods = [t for s in results for t in (s.outbound, s.inbound)]
    rows = []
    for what, counts in (
        (
            "outbound: the new pod connects out from its first instant",
            [s.out_count for s in results],
        ),
        ("inbound: a prober connects in once the IP is in the API", [s.in_count for s in results]),
    ):
        rows.append(
            [
                what,
                f"{sum(1 for c in counts if c.leaked)}/{n}",
                str(sum(c.ok for c in counts)),
                str(sum(c.refused for c in counts)),
                str(max((c.leaked for c in counts), default=0)),
                str(sum(c.total for c in counts)),
            ]
        )
    lines = [
        table(
            [
                "pod start",
                "starts with a leak",
                "connected",
                "refused (reached the pod)",
                "most in one start",
                "attempts",
            ],
            rows,
        ),
        "",
        "sandbox created -> IP in the API: " + _figures([t.sandbox_to_ip for t in pods]),
        "IP in the API -> rules in the kernel: " + _figures([t.ip_to_rules for t in pods]),
        "sandbox created -> rules in the kernel: "
        + _figures(
            [
                t.rules - t.sandbox if t.rules is not None and t.sandbox is not None else None
                for t in pods
            ]
        ),
        "inbound: IP in the API -> first probe attempt: "
        + _figures(
            [
                s.in_count.first - s.inbound.ip_seen
                if s.in_count.total and s.inbound.ip_seen is not None
                else None
                for s in results
            ]
        ),
        "outbound: first attempt -> rules in the kernel: "
        + _figures(
            [
                s.outbound.rules - s.out_count.first
                if s.out_count.total and s.outbound.rules is not None
                else None
                for s in results
            ]
        ),
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _cluster() -> Iterator[NodeCluster]:
    """A real-node cluster with the agent deployed, as the pytest fixtures make it."""
    from tests.node.cluster import NodeCluster, build_images

    found = build_images("pause", "netprobe", "agent")
    with NodeCluster(pause=(Path(found["PAUSE"]), found["PAUSE_REF"])) as cluster:
        cluster.import_image(found["NETPROBE"])
        cluster.import_image(found["AGENT"])
        cluster.deploy_agent(found["AGENT_REF"])
        yield cluster


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.node.podstart", description=__doc__)
    parser.add_argument("--starts", type=int, default=50)
    parser.add_argument("--batch", type=int, default=5, help="starts at once (default 5)")
    parser.add_argument("--window", type=float, default=3.0, help="seconds probed per pod")
    args = parser.parse_args(argv)
    began = time.monotonic()
    with _cluster() as cluster:
        results = measure(cluster, args.starts, batch=args.batch, window=args.window)
        print(
            f"Pod start window over {len(results)} starts (batches of {args.batch}, "
            f"{args.window:g} s probed per pod, attempts every {INTERVAL}):\n"
        )
        print(report(results))
        print(f"\n(took {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
