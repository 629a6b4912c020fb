"""Soak: memory under churn at L. ``python -m bench.soak`` (also part of ``make bench``).

Starts from the synthetic L cluster (bench/synth.py, fixed seed) and feeds the real
``Reconciler`` a fixed-seed stream of pod creates (new names, like CronJob pods; a fifth
on the measured node), deletes and relabels, interleaved with policy changes (edits of
existing policies, and policies created and later deleted). Each batch is one
``Reconciler.run_pass``: parse, snapshot, incremental compile of both families, exactly
as the agent's loop runs it. The dataplane is a stand-in that writes nothing to the
kernel (it returns an empty report), so this measures the agent's own memory, not
iptables'.

RSS (VmRSS after a full garbage collection) is taken after the warm-up and at the end;
the target is end <= 1.05 x warm-up.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import random
import resource
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from bench.synth import MEASURED_NODE, SIZES, generate

# Soak pods and policies alive at a time (prefilled before the stream starts).
POD_POPULATION = 1000
POLICY_POPULATION = 50
# Events per reconciler pass: a busy cluster's burst, coalesced.
BATCH = 250


def rss_kib() -> int:
    gc.collect()
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class _Stream:
    """The fixed-seed event stream, as ``Change`` batches."""

    def __init__(
        self, objects: list[dict[str, Any]], seed: int, pod_population: int, policy_population: int
    ) -> None:
        self.rng = random.Random(seed)
        self.pod_population = pod_population
        self.policy_population = policy_population
        self.pods = [o for o in objects if o["kind"] == "Pod"]
        self.policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
        self.nodes = sorted({p["spec"]["nodeName"] for p in self.pods})
        self.alive: deque[dict[str, Any]] = deque()
        self.alive_policies: deque[dict[str, Any]] = deque()
        self.created = 0
        self.created_policies = 0

    def pod_event(self) -> Any:
        from bench.run import _changes, _delete

        rng = self.rng
        roll = rng.random()
        # Creates and deletes are equally likely, so the population stays near where
        # the prefill put it (a random walk, kept within half and one and a half times).
        if len(self.alive) > self.pod_population * 3 // 2 or (
            roll < 0.35 and len(self.alive) > self.pod_population // 2
        ):
            return _delete(self.alive.popleft())
        if roll < 0.65:
            # Relabel a pod of the base cluster or a soak pod (its app label).
            pool = self.alive if self.alive and rng.random() < 0.5 else self.pods
            pod = pool[rng.randrange(len(pool))]
            pod["metadata"]["labels"]["app"] = f"app{rng.randrange(8)}"
            pod["metadata"]["resourceVersion"] = str(rng.random())
            return _changes([copy.deepcopy(pod)])[0]
        return self.create_pod()

    def create_pod(self) -> Any:
        from bench.run import _changes

        rng = self.rng
        self.created += 1
        n = self.created
        pod = copy.deepcopy(self.pods[rng.randrange(len(self.pods))])
        pod["metadata"]["name"] = f"soak-{n}"
        pod["metadata"]["uid"] = f"soak-{n}"
        pod["spec"]["nodeName"] = (
            MEASURED_NODE if rng.random() < 0.2 else self.nodes[rng.randrange(len(self.nodes))]
        )
        slot = n % 60000
        v4 = f"10.200.{slot // 256}.{slot % 256}"
        v6 = f"fd00:200::{slot:x}"
        pod["status"]["podIP"] = v4
        pod["status"]["podIPs"] = [{"ip": v4}, {"ip": v6}]
        self.alive.append(pod)
        return _changes([pod])[0]

    def policy_event(self) -> Any:
        from bench.run import _changes, _delete

        rng = self.rng
        roll = rng.random()
        if len(self.alive_policies) > self.policy_population * 3 // 2 or (
            roll < 0.25 and len(self.alive_policies) > self.policy_population // 2
        ):
            return _delete(self.alive_policies.popleft())
        if roll < 0.5:
            return self.create_policy()
        # Edit an existing policy: move one of its numeric ports.
        policy = self.policies[rng.randrange(len(self.policies))]
        for rule in [*policy["spec"].get("ingress", ()), *policy["spec"].get("egress", ())]:
            for port in rule.get("ports", ()):
                if isinstance(port.get("port"), int) and "endPort" not in port:
                    port["port"] = 1000 + rng.randrange(60000)
                    return _changes([copy.deepcopy(policy)])[0]
        labels = policy["spec"].setdefault("podSelector", {}).setdefault("matchLabels", {})
        labels["soak"] = str(rng.randrange(4))
        return _changes([copy.deepcopy(policy)])[0]

    def create_policy(self) -> Any:
        from bench.run import _changes

        self.created_policies += 1
        policy = copy.deepcopy(self.policies[self.rng.randrange(len(self.policies))])
        policy["metadata"]["name"] = f"soak-policy-{self.created_policies}"
        self.alive_policies.append(policy)
        return _changes([policy])[0]


def run(
    size_name: str = "L",
    pod_events: int = 100_000,
    policy_changes: int = 10_000,
    batch: int = BATCH,
    warmup_fraction: float = 0.2,
    seed: int = 7,
    pod_population: int = POD_POPULATION,
    policy_population: int = POLICY_POPULATION,
) -> dict[str, Any]:
    from agent.control.outcome import Cause
    from agent.control.reconciler import Reconciler, ReconcilerConfig
    from bench.run import NullDataplane, _changes, _StaticSource

    objects = generate(SIZES[size_name])
    reconciler = Reconciler(
        ReconcilerConfig(node_name=MEASURED_NODE, min_interval=0.0),
        _StaticSource(),  # type: ignore[arg-type]
        NullDataplane(),  # type: ignore[arg-type]
    )
    stream = _Stream(objects, seed, pod_population, policy_population)
    prefill = [stream.create_pod() for _ in range(pod_population)]
    prefill += [stream.create_policy() for _ in range(policy_population)]
    reconciler.on_changes([*_changes(objects), *prefill])
    reconciler.run_pass(Cause.INITIAL)
    start_rss = rss_kib()
    total = pod_events + policy_changes
    every = max(1, total // policy_changes) if policy_changes else 0
    warmup_at = int(total * warmup_fraction)
    warm_rss = 0
    passes = 0
    compile_seconds = 0.0
    started = time.perf_counter()
    done_pods = done_policies = 0
    pending: list[Any] = []
    sent = 0
    while done_pods < pod_events or done_policies < policy_changes:
        take_policy = done_policies < policy_changes and (
            done_pods >= pod_events or (every and (done_pods + done_policies) % every == every - 1)
        )
        if take_policy:
            pending.append(stream.policy_event())
            done_policies += 1
        else:
            pending.append(stream.pod_event())
            done_pods += 1
        sent += 1
        if len(pending) >= batch or sent == total:
            reconciler.on_changes(pending)
            outcome = reconciler.run_pass(Cause.CHANGE)
            if not outcome.succeeded:
                raise RuntimeError(f"pass failed: {outcome.error}")
            compile_seconds += outcome.compile_seconds
            passes += 1
            pending = []
            if not warm_rss and sent >= warmup_at:
                warm_rss = rss_kib()
    end_rss = rss_kib()
    return {
        "size": size_name,
        "pod_events": pod_events,
        "policy_changes": policy_changes,
        "batch": batch,
        "passes": passes,
        "seconds": time.perf_counter() - started,
        "compile_seconds": compile_seconds,
        "rss_after_initial_kib": start_rss,
        "rss_after_warmup_kib": warm_rss,
        "rss_end_kib": end_rss,
        "ratio": end_rss / warm_rss if warm_rss else float("nan"),
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def print_result(result: dict[str, Any]) -> None:
    print(
        f"soak {result['size']}: {result['pod_events']} pod events + "
        f"{result['policy_changes']} policy changes in {result['passes']} passes, "
        f"{result['seconds']:.0f} s (compile {result['compile_seconds']:.0f} s)\n"
        f"  RSS after initial sync {result['rss_after_initial_kib'] / 1024:.1f} MiB, "
        f"after warm-up {result['rss_after_warmup_kib'] / 1024:.1f} MiB, "
        f"at the end {result['rss_end_kib'] / 1024:.1f} MiB "
        f"(end / warm-up {result['ratio']:.3f}; target <= 1.05)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--size", default="L")
    parser.add_argument("--pod-events", type=int, default=100_000)
    parser.add_argument("--policy-changes", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=BATCH, help="events per reconciler pass")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    result = run(args.size, args.pod_events, args.policy_changes, args.batch)
    print_result(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(result, stream, indent=2)
    return 0 if result["ratio"] <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
