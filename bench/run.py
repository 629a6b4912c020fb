"""``make bench``: compile, apply and incremental figures on synthetic clusters.

For each size (fixed seeds, see bench/synth.py) and each backend (nft, legacy), in a
throwaway network namespace with the real restore binaries:

- full compile (both families, a fresh compiler each run), full apply into an empty
  table, bytes written, chains and rules;
- the agent's peak RSS for an initial sync (``netpol-agent run --once`` as a subprocess);
- incremental cases through the real reconciler (parse → incremental compile → plan →
  restore): one policy added, one pod relabelled, one pod created, one namespace
  relabelled; each with compile time, bytes written, apply time and end to end (change
  received → rules in the kernel).

Medians of several runs; the machine is shared, so compare ratios within one run.
The dataplane cost (connections per second with and without the L policy set) comes
from bench/dataplane.py and is run here too unless ``--no-dataplane``; what 100
ClusterNetworkPolicies add to the L cluster from bench/cnp.py unless ``--no-cnp``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.synth import MEASURED_NODE, SIZES, generate

RESULTS = Path(__file__).parent / "results"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- inside the namespace ------------------------------------------------------------------


class _StaticSource:
    """A source that is always synced; the benchmark feeds changes itself."""

    synced = True

    def start(self, sink: Callable[..., None]) -> None:
        pass

    def stop(self) -> None:
        pass

    @property
    def health(self) -> Any:
        from agent.control.source import SourceHealth

        return SourceHealth()


def _changes(objects: Sequence[dict[str, Any]]) -> list[Any]:
    from agent.control.source import Change, Kind

    out = []
    for obj in objects:
        kind = Kind(obj["kind"])
        meta = obj["metadata"]
        key = f"{meta['namespace']}/{meta['name']}" if kind.namespaced else meta["name"]
        out.append(Change(kind, key, obj))
    return out


def _delete(obj: dict[str, Any]) -> Any:
    from agent.control.source import Change, Kind

    kind = Kind(obj["kind"])
    meta = obj["metadata"]
    key = f"{meta['namespace']}/{meta['name']}" if kind.namespaced else meta["name"]
    return Change(kind, key, None)


def _incremental_cases(objects: list[dict[str, Any]]) -> dict[str, tuple[list[Any], list[Any]]]:
    """name → (changes that make the case, changes that undo it)."""
    import copy

    pods = [o for o in objects if o["kind"] == "Pod"]
    local = [p for p in pods if p["spec"]["nodeName"] == MEASURED_NODE]
    remote = [p for p in pods if p["spec"]["nodeName"] != MEASURED_NODE]
    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    target = local[0]
    namespace = target["metadata"]["namespace"]

    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "bench-added", "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {"app": target["metadata"]["labels"]["app"]}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"tier": "web"}}}],
                    "ports": [{"port": 8443}],
                }
            ],
        },
    }
    others = remote or local[1:]  # size S fits on the measured node alone
    relabelled = copy.deepcopy(others[len(others) // 2])
    original_app = relabelled["metadata"]["labels"]["app"]
    relabelled["metadata"]["labels"]["app"] = "app1" if original_app != "app1" else "app2"
    created = copy.deepcopy(target)
    created["metadata"]["name"] = "bench-created"
    created["metadata"]["uid"] = "bench-created"
    created["status"]["podIP"] = "10.100.0.250"
    created["status"]["podIPs"] = [{"ip": "10.100.0.250"}, {"ip": "fd00:10:64:0::fa"}]
    namespace_obj = copy.deepcopy(namespaces[1 % len(namespaces)])
    team = namespace_obj["metadata"]["labels"]["team"]
    namespace_obj["metadata"]["labels"]["team"] = "team-5" if team != "team-5" else "team-4"
    original_namespace = namespaces[1 % len(namespaces)]
    original_pod = others[len(others) // 2]
    return {
        "policy added": (_changes([policy]), [_delete(policy)]),
        "pod relabelled": (_changes([relabelled]), _changes([original_pod])),
        "pod created": (_changes([created]), [_delete(created)]),
        "namespace relabelled": (_changes([namespace_obj]), _changes([original_namespace])),
    }


def measure_inside(size_name: str, backend_name: str, prefix: str, runs: int) -> dict[str, Any]:
    """Run in the benchmark's network namespace; returns the figures as a dict."""
    from agent.compiler.config import CompilerConfig, node_addresses
    from agent.compiler.node import NodeCompiler
    from agent.control.outcome import Cause
    from agent.control.reconciler import Reconciler, ReconcilerConfig
    from agent.dataplane.detect import make_backend
    from agent.dataplane.table import Dataplane
    from agent.policy.state import build_state
    from agent.rules import Family

    objects = generate(SIZES[size_name])
    state = build_state(objects).state
    config = CompilerConfig(chain_prefix=prefix)
    addresses = node_addresses(state, MEASURED_NODE)
    backend = make_backend(backend_name)  # type: ignore[arg-type]

    compile_times = []
    for _ in range(runs):
        started = time.perf_counter()
        rulesets = {
            family: NodeCompiler(MEASURED_NODE, family, config).compile(state, addresses)
            for family in Family
        }
        compile_times.append(time.perf_counter() - started)

    apply_times, bytes_written = [], 0
    for _ in range(runs):
        dataplane = Dataplane(backend, prefix + "-", read_on_partial=False)
        dataplane.cleanup()
        report = dataplane.sync(rulesets, full=False)
        # Wall time: the two families' restores run concurrently.
        apply_times.append(report.duration_seconds)
        bytes_written = report.bytes_written
    Dataplane(backend, prefix + "-").cleanup()

    reconciler = Reconciler(
        ReconcilerConfig(node_name=MEASURED_NODE, compiler=config, min_interval=0.0),
        _StaticSource(),  # type: ignore[arg-type]
        Dataplane(backend, prefix + "-", read_on_partial=False),
    )
    reconciler.on_changes(_changes(objects))
    initial = reconciler.run_pass(Cause.INITIAL)
    if not initial.succeeded:
        raise RuntimeError(f"initial sync failed: {initial.error}")
    incremental: dict[str, dict[str, float]] = {}
    for name, (forward, backward) in _incremental_cases(objects).items():
        samples: dict[str, list[float]] = {"compile": [], "bytes": [], "apply": [], "e2e": []}
        for _ in range(max(runs, 5)):
            for changes, record in ((forward, True), (backward, False)):
                started = time.perf_counter()
                reconciler.on_changes(changes)
                outcome = reconciler.run_pass(Cause.CHANGE)
                elapsed = time.perf_counter() - started
                if not outcome.succeeded or outcome.report is None:
                    raise RuntimeError(f"{name}: sync failed: {outcome.error}")
                if record:
                    report = outcome.report
                    samples["compile"].append(outcome.compile_seconds)
                    samples["bytes"].append(report.bytes_written)
                    samples["apply"].append(report.duration_seconds)
                    samples["e2e"].append(elapsed)
        incremental[name] = {key: _median(values) for key, values in samples.items()}
    Dataplane(backend, prefix + "-").cleanup()
    v4 = rulesets[Family.IPV4]
    v6 = rulesets[Family.IPV6]
    return {
        "size": size_name,
        "backend": backend.name,
        "pods": sum(1 for o in objects if o["kind"] == "Pod"),
        "policies": sum(1 for o in objects if o["kind"] == "NetworkPolicy"),
        "compile_seconds": _median(compile_times),
        "apply_seconds": _median(apply_times),
        "full_sync_seconds": _median(compile_times) + _median(apply_times),
        "bytes_written": bytes_written,
        "chains": {"ipv4": len(v4.chains), "ipv6": len(v6.chains)},
        "rules": {"ipv4": v4.rule_count, "ipv6": v6.rule_count},
        "incremental": incremental,
        "runs": runs,
    }


class NullDataplane:
    """Compiles go through the real reconciler pass; nothing is written to a kernel."""

    def sync(self, rulesets: Any, *, full: bool, verify: bool = False) -> Any:
        from agent.dataplane.table import SyncReport

        return SyncReport(families={}, duration_seconds=0.0)


def measure_compile(size_name: str, runs: int) -> dict[str, Any]:
    """Compile figures only (no namespace, no kernel): full compile of both families with
    a fresh compiler, and the incremental cases through ``Reconciler.run_pass`` with a
    dataplane that writes nothing (``--compile-only``)."""
    from agent.compiler.config import CompilerConfig, node_addresses
    from agent.control.outcome import Cause
    from agent.control.reconciler import Reconciler, ReconcilerConfig
    from agent.policy.state import build_state

    objects = generate(SIZES[size_name])
    state = build_state(objects).state
    addresses = node_addresses(state, MEASURED_NODE)
    config = CompilerConfig()
    compile_times = []
    for _ in range(runs):
        started = time.perf_counter()
        _full_compile(state, addresses, config)
        compile_times.append(time.perf_counter() - started)
    reconciler = Reconciler(
        ReconcilerConfig(node_name=MEASURED_NODE, compiler=config, min_interval=0.0),
        _StaticSource(),  # type: ignore[arg-type]
        NullDataplane(),  # type: ignore[arg-type]
    )
    reconciler.on_changes(_changes(objects))
    started = time.perf_counter()
    reconciler.run_pass(Cause.INITIAL)
    initial = time.perf_counter() - started
    incremental: dict[str, float] = {}
    for name, (forward, backward) in _incremental_cases(objects).items():
        samples = []
        for _ in range(max(runs, 5)):
            for changes, record in ((forward, True), (backward, False)):
                reconciler.on_changes(changes)
                outcome = reconciler.run_pass(Cause.CHANGE)
                if record:
                    samples.append(outcome.compile_seconds)
        incremental[name] = _median(samples)
    return {
        "size": size_name,
        "full_compile_seconds": _median(compile_times),
        "initial_pass_seconds": initial,
        "incremental_compile_seconds": incremental,
    }


def _full_compile(state: Any, addresses: Any, config: Any) -> Any:
    from agent.compiler.node import NodeCompiler
    from agent.rules import Family

    return {
        family: NodeCompiler(MEASURED_NODE, family, config).compile(state, addresses)
        for family in Family
    }


# --- outside: namespaces, subprocesses, the table ------------------------------------------


def _agent_rss_kib(netns: str, state_file: str, backend: str, prefix: str) -> int:
    agent = Path(sys.executable).with_name("netpol-agent")
    command = [
        "ip", "netns", "exec", netns, str(agent), "run", "--once", "--node", MEASURED_NODE,
        "--source-file", state_file, "--backend", backend, "--chain-prefix", prefix,
        "--no-kernel-addresses",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(
            f"agent run failed: {process.stderr.read().decode() if process.stderr else ''}"
        )
    return int(usage.ru_maxrss)


def run_size(size_name: str, backend: str, runs: int) -> dict[str, Any]:
    tag = f"{os.getpid() % 10000:04d}{secrets.token_hex(1)}"
    netns, prefix = f"nb{tag}", f"B{tag[:5]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        with tempfile.TemporaryDirectory(prefix="netpol-bench-") as tmp:
            state_file = os.path.join(tmp, "state.yaml")
            with open(state_file, "w", encoding="utf-8") as stream:
                yaml.safe_dump_all(generate(SIZES[size_name]), stream)
            inside = subprocess.run(
                ["ip", "netns", "exec", netns, sys.executable, "-m", "bench.run", "--inside",
                 size_name, backend, prefix, str(runs)],
                check=True, capture_output=True, text=True, cwd=Path(__file__).parent.parent,
            )  # fmt: skip
            result: dict[str, Any] = json.loads(inside.stdout)
            result["agent_rss_mib"] = _agent_rss_kib(netns, state_file, backend, prefix) / 1024
            subprocess.run(
                ["ip", "netns", "exec", netns, str(Path(sys.executable).with_name("netpol-agent")),
                 "cleanup", "--backend", backend, "--chain-prefix", prefix],
                check=False, capture_output=True,
            )  # fmt: skip
            return result
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def traversal_of(size_name: str) -> dict[str, Any]:
    """Rules compared by the first packet of connections to and from node-0's pods."""
    from agent.compiler.config import node_addresses
    from agent.compiler.node import NodeCompiler
    from agent.policy.state import build_state
    from agent.rules import Family
    from bench.traversal import measure

    state = build_state(generate(SIZES[size_name])).state
    addresses = node_addresses(state, MEASURED_NODE)
    ruleset = NodeCompiler(MEASURED_NODE, Family.IPV4).compile(state, addresses)
    return measure(state, ruleset, MEASURED_NODE, addresses).as_dict()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"{'size':5} {'backend':7} {'pods':>5} {'pols':>5} {'chains v4':>9} {'rules v4':>8} "
        f"{'rules v6':>8} {'MB':>6} {'compile ms':>10} {'apply ms':>9} {'full ms':>8} {'RSS MiB':>8}"
    )
    for r in results:
        print(
            f"{r['size']:5} {r['backend']:7} {r['pods']:5} {r['policies']:5} "
            f"{r['chains']['ipv4']:9} {r['rules']['ipv4']:8} {r['rules']['ipv6']:8} "
            f"{r['bytes_written'] / 1e6:6.2f} {_ms(r['compile_seconds']):>10} "
            f"{_ms(r['apply_seconds']):>9} {_ms(r['full_sync_seconds']):>8} "
            f"{r['agent_rss_mib']:8.1f}"
        )
    print()
    print(
        f"{'size':5} {'backend':7} {'case':22} {'compile ms':>10} {'bytes':>8} {'apply ms':>9} {'e2e ms':>8}"
    )
    for r in results:
        for case, figures in r["incremental"].items():
            print(
                f"{r['size']:5} {r['backend']:7} {case:22} {_ms(figures['compile']):>10} "
                f"{int(figures['bytes']):8} {_ms(figures['apply']):>9} {_ms(figures['e2e']):>8}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", default="S,M,L")
    parser.add_argument("--backends", default="nft,legacy")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny size, one run: proves the code runs"
    )
    parser.add_argument("--no-dataplane", action="store_true", help="skip the conn/s measurement")
    parser.add_argument(
        "--no-soak", action="store_true", help="skip the memory soak (bench/soak.py, minutes)"
    )
    parser.add_argument(
        "--no-startup",
        action="store_true",
        help="skip process start to programmed (real apiserver)",
    )
    parser.add_argument("--json", default=str(RESULTS / "bench.json"))
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help="only the compile figures (full, incremental through the reconciler); no root",
    )
    parser.add_argument(
        "--conntrack-only",
        action="store_true",
        help="only the strict-mode conntrack scan at L (bench/conntrack.py)",
    )
    parser.add_argument(
        "--no-conntrack", action="store_true", help="skip the conntrack scan (bench/conntrack.py)"
    )
    parser.add_argument(
        "--no-cnp",
        action="store_true",
        help="skip L without vs with 100 ClusterNetworkPolicies (bench/cnp.py)",
    )
    parser.add_argument("--inside", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.conntrack_only:
        from bench import conntrack

        if os.geteuid() != 0:
            print("the conntrack scan needs root (a network namespace)", file=sys.stderr)
            return 2
        size = "tiny" if args.smoke else "L"
        counts = [200] if args.smoke else [10_000, 50_000]
        print(conntrack.render(conntrack.run(size, counts, 1 if args.smoke else args.runs)))
        return 0
    if args.compile_only:
        for size in ["tiny"] if args.smoke else args.sizes.split(","):
            figures = measure_compile(size, 1 if args.smoke else args.runs)
            print(
                f"{size:5} full compile (both families) {_ms(figures['full_compile_seconds'])} ms"
                f"   initial pass {_ms(figures['initial_pass_seconds'])} ms"
            )
            for case, seconds in figures["incremental_compile_seconds"].items():
                print(f"{size:5}   {case:22} compile {_ms(seconds)} ms")
        return 0
    if args.inside:
        size, backend, prefix, runs = args.inside
        print(json.dumps(measure_inside(size, backend, prefix, int(runs))))
        return 0
    if os.geteuid() != 0:
        print("make bench needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    sizes = ["tiny"] if args.smoke else args.sizes.split(",")
    runs = 1 if args.smoke else args.runs
    results = []
    traversals: dict[str, dict[str, Any]] = {}
    for size in sizes:
        for backend in args.backends.split(","):
            print(f"... {size} on {backend}", file=sys.stderr, flush=True)
            results.append(run_size(size, backend, runs))
        print(f"... {size}: rules a new connection traverses", file=sys.stderr, flush=True)
        traversals[size] = traversal_of(size)
    print_table(results)
    print()
    print(
        f"{'size':5} {'packets':>8} {'worst':>6} {'p99':>5} {'median':>7}  worst packet (IPv4, rules compared)"
    )
    for size, t in traversals.items():
        print(
            f"{size:5} {t['packets']:8} {t['worst']:6} {t['p99']:5} {t['median']:7}  {t['worst_packet']}"
        )
    document: dict[str, Any] = {"compile_apply": results, "traversal": traversals}
    if not args.no_cnp:
        from bench import cnp

        print("... ClusterNetworkPolicies: L without and with 100", file=sys.stderr, flush=True)
        document["cnp"] = cnp.run(args.backends.split(","), runs, smoke=args.smoke)
        print()
        print(cnp.render(document["cnp"]))
    if not args.no_dataplane:
        from bench import dataplane

        document["dataplane"] = dataplane.run(
            "tiny" if args.smoke else "L",
            1 if args.smoke else 5,
            1 if args.smoke else 5,
            args.backends.split(","),
        )
    if not args.no_conntrack:
        from bench import conntrack

        print("... conntrack: the strict-mode scan after a rule change", file=sys.stderr,
              flush=True)  # fmt: skip
        smoke = args.smoke
        document["conntrack"] = conntrack.run(
            "tiny" if smoke else "L", [200] if smoke else [10_000, 50_000], 1 if smoke else 7
        )
        print()
        print(conntrack.render(document["conntrack"]))
    if not args.no_soak:
        from bench import soak

        print("... soak: memory under churn", file=sys.stderr, flush=True)
        if args.smoke:
            document["soak"] = soak.run(
                "tiny", 300, 30, batch=20, pod_population=20, policy_population=4
            )
        else:
            document["soak"] = soak.run()
        print()
        soak.print_result(document["soak"])
    if not args.no_startup:
        from bench import startup

        print("... startup: process start to rules programmed", file=sys.stderr, flush=True)
        document["startup"] = startup.run_bench(
            1 if args.smoke else 3, "tiny" if args.smoke else "L"
        )
        print()
        print(startup.render(document["startup"]))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(document, indent=2))
    print(
        f"\nwritten: {args.json}  (peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
