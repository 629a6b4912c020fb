"""What ClusterNetworkPolicies cost: the L cluster without and with 100 of them, one run.

"L" and "L+cnp" (bench/synth.py) are the same cluster (5,000 pods, 1,000
NetworkPolicies, fixed seeds) except for 100 ClusterNetworkPolicies in the second, Admin
and Baseline, written as ``policy.networking.k8s.io/v1alpha2`` objects in the same YAML
file. Each is read through ``agent.cli.load_state_file`` (what ``render``, ``explain``
and ``run`` read a file with), then, per backend, in a throwaway network namespace with
the real restore binaries:

- full compile of both families with a fresh compiler (median of N), full apply into an
  empty table (one restore per family, the two concurrently: wall time), bytes, chains
  and rules;
- the agent's passes (``Reconciler.run_pass``, as ``run --source-file`` runs them: the
  file source's objects first, then changes): single changes compiled incrementally and
  written, then undone: one NetworkPolicy edited, one ClusterNetworkPolicy edited (a
  rule's port) and one moved to the front of its tier, one pod relabelled, one
  namespace relabelled; the last state is then compared with a fresh compile, so the
  figures are of correct rules;
- the agent's peak RSS for an initial sync (``netpol-agent run --once`` on the file);

and, outside any namespace, the rules the first packet of a new connection is compared
against (bench/traversal.py over the compiled IPv4 rules: every local pod with a fixed
sample of others, both directions, several ports).

The machine is shared: compare the two columns of one run, not runs with each other;
CPU times (the agent's process, and the restore binaries it ran) say more than wall
times when the machine is busy.

    python -m bench.cnp [--runs 5] [--backends nft,legacy] [--smoke] [--json FILE]

One run (``python -m bench.cnp --runs 5``, a real-node cluster running beside it; CPU
times, medians), L vs L+cnp: full compile 347 vs 1,809 ms; rules (IPv4) 16,977 vs
82,499 (72k of them in peer-group address trees); full apply, restore CPU, nft 0.99 vs
9.4 s, legacy 0.30 vs 1.2 s; agent RSS 120 vs 260 MiB; rules a new connection
traverses, median / p99 / worst, 31 / 85 / 156 vs 130 / 355 / 475. Single changes,
agent CPU (nft): NetworkPolicy edited 17 vs 72 ms, ClusterNetworkPolicy edited 87 ms,
reordered 144 ms, pod relabelled 15 vs 79 ms, namespace relabelled 44 vs 279 ms.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.run import _agent_rss_kib
from bench.synth import MEASURED_NODE, SIZES, generate

RESULTS = Path(__file__).parent / "results"
# (without, with) ClusterNetworkPolicies
VARIANTS = {"L": ("L", "L+cnp"), "tiny": ("tiny", "tiny+cnp")}


def write_state_file(size_name: str, path: Path) -> None:
    """The cluster as ``kubectl get -o yaml`` style multi-document YAML."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.write_text(yaml.dump_all(generate(SIZES[size_name]), Dumper=dumper, sort_keys=False))


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _children_cpu() -> float:
    """CPU seconds of the restore binaries this process has run (user and system): the
    apply's cost without the machine's other load."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- single changes ------------------------------------------------------------------------

Edit = tuple[str, str, dict[str, Any] | None]  # kind, key, object (None: deleted)


def _key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else str(meta["name"])


def _edit(obj: dict[str, Any]) -> Edit:
    return (obj["kind"], _key(obj), obj)


def single_changes(objects: list[dict[str, Any]]) -> dict[str, tuple[list[Edit], list[Edit]]]:
    """case → (the edits that make it, the edits that undo it). The same objects in both
    variants (the ClusterNetworkPolicy cases only where there are some), chosen to touch
    the measured node's pods."""
    pods = [o for o in objects if o["kind"] == "Pod"]
    local = [p for p in pods if p["spec"]["nodeName"] == MEASURED_NODE]
    remote = [p for p in pods if p["spec"]["nodeName"] != MEASURED_NODE] or local[1:]
    local_apps = {(p["metadata"]["namespace"], p["metadata"]["labels"]["app"]) for p in local}
    cases: dict[str, tuple[list[Edit], list[Edit]]] = {}

    # A pod-allow NetworkPolicy selecting a local pod: its first port moves.
    policy = next(
        o
        for o in objects
        if o["kind"] == "NetworkPolicy"
        and "ingress" in o["spec"]
        and "ports" in o["spec"]["ingress"][0]
        and (
            o["metadata"]["namespace"],
            o["spec"]["podSelector"].get("matchLabels", {}).get("app"),
        )
        in local_apps
    )
    edited = copy.deepcopy(policy)
    edited["spec"]["ingress"][0]["ports"][0] = {"protocol": "TCP", "port": 8443}
    cases["NetworkPolicy edited"] = ([_edit(edited)], [_edit(policy)])

    cluster_policies = [o for o in objects if o["kind"] == "ClusterNetworkPolicy"]
    if cluster_policies:
        # An Admin policy whose subject is namespaces (it applies to local pods wherever
        # they are): its first ingress rule's ports change, then its priority.
        cluster_policy = next(
            o
            for o in cluster_policies
            if o["spec"]["tier"] == "Admin" and "namespaces" in o["spec"]["subject"]
        )
        edited = copy.deepcopy(cluster_policy)
        edited["spec"]["ingress"][0]["protocols"] = [{"tcp": {"destinationPort": {"number": 8443}}}]
        cases["ClusterNetworkPolicy edited"] = ([_edit(edited)], [_edit(cluster_policy)])
        # Then it moves to the front of its tier (or to the back if it is there): every
        # pod it applies to sees its admin section reordered.
        moved = copy.deepcopy(cluster_policy)
        moved["spec"]["priority"] = 0 if cluster_policy["spec"]["priority"] else 1000
        cases["ClusterNetworkPolicy reordered"] = ([_edit(moved)], [_edit(cluster_policy)])

    # As bench/run.py's cases: a remote pod's app label, a namespace's team label.
    original_pod = remote[len(remote) // 2]
    relabelled = copy.deepcopy(original_pod)
    app = relabelled["metadata"]["labels"]["app"]
    relabelled["metadata"]["labels"]["app"] = "app1" if app != "app1" else "app2"
    cases["pod relabelled"] = ([_edit(relabelled)], [_edit(original_pod)])
    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    original_namespace = namespaces[1 % len(namespaces)]
    namespace = copy.deepcopy(original_namespace)
    team = namespace["metadata"]["labels"]["team"]
    namespace["metadata"]["labels"]["team"] = "team-5" if team != "team-5" else "team-4"
    cases["namespace relabelled"] = ([_edit(namespace)], [_edit(original_namespace)])
    return cases


# --- inside the namespace ------------------------------------------------------------------


def _changes(edits: Sequence[Edit]) -> list[Any]:
    from agent.control.source import Change, Kind

    return [Change(Kind(kind), key, obj) for kind, key, obj in edits]


def measure_inside(
    size_name: str, backend_name: str, prefix: str, runs: int, state_file: str
) -> dict[str, Any]:
    """Run in the benchmark's network namespace; the figures of one variant."""
    from agent.cli import load_state_file
    from agent.compiler.config import CompilerConfig, node_addresses
    from agent.compiler.node import NodeCompiler
    from agent.control.file_source import parse_state
    from agent.control.outcome import Cause
    from agent.control.reconciler import Reconciler, ReconcilerConfig
    from agent.control.source import Change
    from agent.dataplane.detect import make_backend
    from agent.dataplane.table import Dataplane
    from agent.rules import Family
    from bench.run import _StaticSource

    load_times = []
    for _ in range(runs):
        started = time.perf_counter()
        built = load_state_file(state_file)
        load_times.append(time.perf_counter() - started)
    if built.problems:
        raise RuntimeError(f"{size_name}: problems reading the file: {built.problems[:3]}")
    state = built.state
    config = CompilerConfig(chain_prefix=prefix)
    addresses = node_addresses(state, MEASURED_NODE)
    backend = make_backend(backend_name)  # type: ignore[arg-type]

    compile_walls, compile_cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        rulesets = {
            family: NodeCompiler(MEASURED_NODE, family, config).compile(state, addresses)
            for family in Family
        }
        compile_walls.append(time.perf_counter() - wall)
        compile_cpus.append(time.process_time() - cpu)

    apply_times, apply_cpus, bytes_written = [], [], 0
    for _ in range(runs):
        dataplane = Dataplane(backend, prefix + "-", read_on_partial=False)
        dataplane.cleanup()
        children = _children_cpu()
        report = dataplane.sync(rulesets, full=False)
        apply_cpus.append(_children_cpu() - children)
        apply_times.append(report.duration_seconds)  # the two families run concurrently
        bytes_written = report.bytes_written
    Dataplane(backend, prefix + "-").cleanup()

    # The agent's own pass (run --source-file): the file source's objects, then changes.
    reconciler = Reconciler(
        ReconcilerConfig(node_name=MEASURED_NODE, compiler=config, min_interval=0.0),
        _StaticSource(),
        Dataplane(backend, prefix + "-", read_on_partial=False),
    )
    parsed = parse_state(Path(state_file).read_bytes(), state_file)
    if parsed.problems:
        raise RuntimeError(f"{size_name}: the file source skipped: {parsed.problems[:3]}")
    reconciler.on_changes(
        [Change(kind, key, obj) for kind, objs in parsed.state.items() for key, obj in objs.items()]
    )
    initial = reconciler.run_pass(Cause.INITIAL)
    if not initial.succeeded:
        raise RuntimeError(f"initial sync failed: {initial.error}")
    changes: dict[str, dict[str, float]] = {}
    outcome = initial
    for case, (forward, backward) in single_changes(generate(SIZES[size_name])).items():
        samples: dict[str, list[float]] = {
            "compile": [], "apply": [], "bytes": [], "e2e": [], "cpu": [], "apply_cpu": []
        }  # fmt: skip
        for _ in range(max(runs, 5)):
            for edits, record in ((forward, True), (backward, False)):
                started, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
                reconciler.on_changes(_changes(edits))
                outcome = reconciler.run_pass(Cause.CHANGE)
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu
                children = _children_cpu() - children
                if not outcome.succeeded or outcome.report is None:
                    raise RuntimeError(f"{case}: sync failed: {outcome.error}")
                if record:
                    samples["compile"].append(outcome.compile_seconds)
                    samples["apply"].append(outcome.report.duration_seconds)
                    samples["bytes"].append(outcome.report.bytes_written)
                    samples["e2e"].append(elapsed)
                    samples["cpu"].append(cpu)  # the agent's process: parse to plan
                    samples["apply_cpu"].append(children)  # the restore binaries
        changes[case] = {figure: _median(values) for figure, values in samples.items()}
    # The incremental compiler's rules after all that equal a fresh compile's.
    index = reconciler.snapshot()
    equal = all(
        outcome.rulesets[family]
        == NodeCompiler(MEASURED_NODE, family, config).compile(
            index, reconciler.node_addresses(index)
        )
        for family in Family
    )
    if not equal:
        raise RuntimeError(f"{size_name}: the incremental compile differs from a fresh one")
    Dataplane(backend, prefix + "-").cleanup()
    v4, v6 = rulesets[Family.IPV4], rulesets[Family.IPV6]
    return {
        "size": size_name,
        "backend": backend.name,
        "pods": len(state.pods),
        "policies": len(state.policies),
        "cluster_policies": len(state.cluster_policies),
        "load_seconds": _median(load_times),
        "compile_seconds": _median(compile_walls),
        "compile_cpu_seconds": _median(compile_cpus),
        "apply_seconds": _median(apply_times),
        "apply_cpu_seconds": _median(apply_cpus),
        "bytes_written": bytes_written,
        "chains": {"ipv4": len(v4.chains), "ipv6": len(v6.chains)},
        "rules": {"ipv4": v4.rule_count, "ipv6": v6.rule_count},
        "changes": changes,
        "incremental_equals_fresh": equal,
        "runs": runs,
    }


# --- outside ---------------------------------------------------------------------------------


def traversal(state_file: str) -> dict[str, Any]:
    """Rules compared by the first packet of connections to and from node-0's pods."""
    from agent.cli import load_state_file
    from agent.compiler.config import node_addresses
    from agent.compiler.node import NodeCompiler
    from agent.rules import Family
    from bench.traversal import measure

    state = load_state_file(state_file).state
    addresses = node_addresses(state, MEASURED_NODE)
    ruleset = NodeCompiler(MEASURED_NODE, Family.IPV4).compile(state, addresses)
    return measure(state, ruleset, MEASURED_NODE, addresses).as_dict()


def run(
    backends: Sequence[str], runs: int, *, smoke: bool = False, verbose: bool = True
) -> dict[str, Any]:
    """Both variants on every backend, then memory and traversal; the figures as a dict."""
    without, with_cnp = VARIANTS["tiny" if smoke else "L"]
    tag = f"{os.getpid() % 10000:04d}{secrets.token_hex(1)}"
    netns, prefix = f"nc{tag}", f"C{tag[:5]}"
    result: dict[str, Any] = {"variants": [without, with_cnp], "runs": runs, "backends": {}}
    with tempfile.TemporaryDirectory(prefix="netpol-bench-cnp-") as tmp:
        files = {size: str(Path(tmp) / f"{size}.yaml") for size in (without, with_cnp)}
        for size, path in files.items():
            write_state_file(size, Path(path))
        for backend in backends:
            subprocess.run(["ip", "netns", "add", netns], check=True)
            try:
                for size in (without, with_cnp):
                    if verbose:
                        print(f"... {size} on {backend}", file=sys.stderr, flush=True)
                    inside = subprocess.run(
                        ["ip", "netns", "exec", netns, sys.executable, "-m", "bench.cnp",
                         "--inside", size, backend, prefix, str(runs), files[size]],
                        check=True, capture_output=True, text=True,
                        cwd=Path(__file__).parent.parent,
                    )  # fmt: skip
                    figures = json.loads(inside.stdout)
                    figures["agent_rss_mib"] = (
                        _agent_rss_kib(netns, files[size], backend, prefix) / 1024
                    )
                    result["backends"].setdefault(backend, {})[size] = figures
            finally:
                subprocess.run(["ip", "netns", "del", netns], check=False)
        for size, path in files.items():
            if verbose:
                print(f"... {size}: rules a new connection traverses", file=sys.stderr,
                      flush=True)  # fmt: skip
            result.setdefault("traversal", {})[size] = traversal(path)
    return result


FIGURES = {
    "compile": "compile",
    "apply": "apply",
    "e2e": "end to end",
    "cpu": "agent CPU",
    "apply_cpu": "restore CPU",
}


def _ratio(without: float, with_cnp: float) -> str:
    return f"{with_cnp / without:6.2f}x" if without else "      -"


def render(result: dict[str, Any]) -> str:
    without, with_cnp = result["variants"]
    first = next(iter(result["backends"].values()))
    a, b = first[without], first[with_cnp]
    lines = [
        f"ClusterNetworkPolicy cost: {without} ({a['pods']} pods, {a['policies']} "
        f"NetworkPolicies) without and with {b['cluster_policies']} ClusterNetworkPolicies; "
        f"median of {result['runs']}",
        f"{'':50} {without:>10} {with_cnp:>10} {'ratio':>7}",
    ]

    def row(label: str, x: float, y: float, fmt: str = "{:10.1f}") -> None:
        lines.append(f"{label:50} {fmt.format(x)} {fmt.format(y)} {_ratio(x, y)}")

    row("load the file (load_state_file) ms", a["load_seconds"] * 1e3, b["load_seconds"] * 1e3)
    row("full compile, both families ms", a["compile_seconds"] * 1e3, b["compile_seconds"] * 1e3)
    for family in ("ipv4", "ipv6"):
        row(f"rules {family}", a["rules"][family], b["rules"][family], "{:10d}")
    row("chains ipv4", a["chains"]["ipv4"], b["chains"]["ipv4"], "{:10d}")
    row("bytes written (full)", a["bytes_written"], b["bytes_written"], "{:10d}")
    row(
        "full compile, both families, CPU ms",
        a["compile_cpu_seconds"] * 1e3,
        b["compile_cpu_seconds"] * 1e3,
    )
    walk = result["traversal"]
    for figure in ("median", "p99", "worst"):
        row(f"rules a new connection traverses, {figure}", walk[without][figure],
            walk[with_cnp][figure], "{:10}")  # fmt: skip
    for backend, variants in result["backends"].items():
        a, b = variants[without], variants[with_cnp]
        row(f"{backend}: full apply ms", a["apply_seconds"] * 1e3, b["apply_seconds"] * 1e3)
        row(
            f"{backend}: full apply, restore CPU ms",
            a["apply_cpu_seconds"] * 1e3,
            b["apply_cpu_seconds"] * 1e3,
        )
        row(f"{backend}: agent RSS (run --once) MiB", a["agent_rss_mib"], b["agent_rss_mib"])
        for case, y in b["changes"].items():
            x = a["changes"].get(case)
            for figure in ("compile", "apply", "e2e", "cpu", "apply_cpu"):
                label = f"{backend}: {case}: {FIGURES[figure]} ms"
                if x is None:
                    lines.append(f"{label:50} {'-':>10} {y[figure] * 1e3:10.1f}")
                else:
                    row(label, x[figure] * 1e3, y[figure] * 1e3)
            label = f"{backend}: {case}: bytes"
            if x is None:
                lines.append(f"{label:50} {'-':>10} {int(y['bytes']):10d}")
            else:
                row(label, x["bytes"], y["bytes"], "{:10.0f}")
    worst = walk[with_cnp]["worst_packet"]
    lines.append(f"worst packet with ClusterNetworkPolicies (IPv4): {worst}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cnp", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backends", default="nft,legacy")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny cluster, one run")
    parser.add_argument("--json", default=str(RESULTS / "cnp.json"))
    parser.add_argument("--inside", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        size, backend, prefix, runs, state_file = args.inside
        print(json.dumps(measure_inside(size, backend, prefix, int(runs), state_file)))
        return 0
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    result = run(args.backends.split(","), 1 if args.smoke else args.runs, smoke=args.smoke)
    print(render(result))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
