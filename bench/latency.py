"""Event-to-programmed latency of the running agent, on the lab with a real kube-apiserver.

Definition (what is reported): for each single change made through the API, the time from
the API call returning (the object is stored in etcd) to the agent's new rules being in
node-1's kernel for BOTH families, observed by polling ``iptables-nft-save -t filter`` and
``ip6tables-nft-save -t filter`` inside node-1's namespace until our chains differ from the
snapshot taken before the call. The value is the completion time of the first poll that
shows the change, so it is an upper bound by at most one poll (reported as ``poll_ms``). It includes the watch delivery, the
agent's coalescing (``--min-sync-interval 0``), compile and iptables-restore.

For comparison the agent's own ``netpol_agent_network_programming_duration_seconds``
(received by the agent -> programmed) is reported as a mean over the same changes.

Changes alternate: create a policy isolating y/a, delete it, relabel x/c into the peer
group of a standing policy, relabel it back (each one changes node-1's rules).

    sudo .venv/bin/python -m bench.latency [--changes 30] [--smoke] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.api.agent_harness import AgentProcess, ApiLab, our_rules, policy
from tests.cluster.controlplane import ControlPlane, build_binaries
from tests.lab.nsutil import in_netns
from tests.lab.topology import Lab

STANDING = policy("bench-a-from-b", {
    "podSelector": {"matchLabels": {"pod": "a"}},
    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
})  # fmt: skip
ISOLATE = policy("bench-isolate-ya", {
    "podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
})  # fmt: skip


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class KernelWatcher:
    """Reads node-1's filter tables from a thread switched into its namespace (no ip-netns)."""

    def __init__(self, netns: str, prefix: str) -> None:
        self.netns = netns
        self.prefix = prefix

    def rules(self, family: int) -> list[str]:
        tool = "ip6tables-nft-save" if family == 6 else "iptables-nft-save"
        with in_netns(self.netns):  # the child inherits this thread's namespace
            out = subprocess.run(
                [tool, "-t", "filter"], capture_output=True, text=True, check=True
            ).stdout
        return our_rules(out, self.prefix)

    def snapshot(self) -> dict[int, list[str]]:
        return {family: self.rules(family) for family in (4, 6)}

    def wait_change(
        self, before: dict[int, list[str]], since: float, timeout: float
    ) -> tuple[float, float]:
        """(seconds from ``since`` until saves of BOTH families show a change, poll cost)."""
        deadline = since + timeout
        pending = set(before)
        costs: list[float] = []
        while True:
            started = time.monotonic()
            for family in sorted(pending):
                if self.rules(family) != before[family]:
                    pending.discard(family)
            done = time.monotonic()
            costs.append(done - started)
            if not pending:
                return done - since, statistics.median(costs)
            if done > deadline:
                raise TimeoutError(f"no rule change within {timeout}s (families {pending})")


def run_bench(changes: int = 30, *, verbose: bool = True) -> dict[str, Any]:
    cp = ControlPlane(build_binaries(quiet=True)).start()
    lab = Lab()
    env: ApiLab | None = None
    try:
        lab.start()
        workdir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-bench-"))
        env = ApiLab(lab, cp, workdir, "B").start()
        agents: dict[str, AgentProcess] = env.start_agents(
            min_sync_interval=0.0, resync_period=300.0
        )
        node1 = agents["node-1"]
        kube = env.kube
        kube.create_network_policy("x", STANDING)
        node1.wait_synced(policies=1)
        watcher = KernelWatcher(lab.node("node-1").netns, env.chain_prefix)

        steps: list[tuple[str, Callable[[], object]]] = [
            ("policy create", lambda: kube.create_network_policy("y", ISOLATE)),
            ("policy delete", lambda: kube.delete_network_policy("y", "bench-isolate-ya")),
            ("pod relabel (into peer group)", lambda: kube.set_pod_labels("x", "c", {"pod": "b"})),
            ("pod relabel (out of peer group)",
             lambda: kube.set_pod_labels("x", "c", {"pod": "c"})),
        ]  # fmt: skip
        samples: dict[str, list[float]] = {name: [] for name, _ in steps}
        polls: list[float] = []
        hist_name = "netpol_agent_network_programming_duration_seconds"
        first = node1.metrics()
        for index in range(changes):
            name, action = steps[index % len(steps)]
            node1.wait_synced()  # previous change fully in
            before = watcher.snapshot()
            action()
            since = time.monotonic()
            took, poll = watcher.wait_change(before, since, timeout=30.0)
            samples[name].append(took)
            polls.append(poll)
            if verbose:
                print(f"  {index + 1:3d} {name:34s} {took * 1000:8.1f} ms", file=sys.stderr)
        node1.wait_synced()
        last = node1.metrics()
        agent_count = last.value(f"{hist_name}_count") - first.value(f"{hist_name}_count")
        agent_sum = last.value(f"{hist_name}_sum") - first.value(f"{hist_name}_sum")
        everything = [v for values in samples.values() for v in values]
        result: dict[str, Any] = {
            "definition": "API call returned -> change visible in node-1 iptables-nft-save "
            "AND ip6tables-nft-save (upper bound by one poll)",
            "changes": len(everything),
            "median_ms": statistics.median(everything) * 1000,
            "p99_ms": percentile(everything, 99) * 1000,
            "max_ms": max(everything) * 1000,
            "poll_ms": statistics.median(polls) * 1000,
            "by_kind": {
                name: {
                    "n": len(values),
                    "median_ms": statistics.median(values) * 1000,
                    "p99_ms": percentile(values, 99) * 1000,
                }
                for name, values in samples.items()
                if values
            },
            "agent_received_to_programmed_mean_ms": (
                agent_sum / agent_count * 1000 if agent_count else None
            ),
            "agent_histogram_observations": agent_count,
        }
        env.stop_agents(agents)
        return result
    finally:
        if env is not None:
            env.close()
        lab.close()
        cp.stop()


def render(result: dict[str, Any]) -> str:
    lines = [
        f"event-to-programmed latency ({result['definition']})",
        f"{'change':34s} {'n':>4s} {'median ms':>10s} {'p99 ms':>10s}",
    ]
    for name, row in result["by_kind"].items():
        lines.append(f"{name:34s} {row['n']:4d} {row['median_ms']:10.1f} {row['p99_ms']:10.1f}")
    lines.append(
        f"{'all':34s} {result['changes']:4d} {result['median_ms']:10.1f} {result['p99_ms']:10.1f}"
    )
    mean = result["agent_received_to_programmed_mean_ms"]
    lines.append(
        f"poll resolution (one poll): {result['poll_ms']:.1f} ms; agent's own "
        f"received->programmed mean: {mean:.1f} ms over "
        f"{result['agent_histogram_observations']:.0f} observations"
        if mean is not None
        else "agent histogram: no observations"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="3 changes only")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = run_bench(3 if args.smoke else args.changes)
    print(render(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
