"""The conntrack scan of a strict-mode sync at a given size: entries scanned, time taken.

In a throwaway network namespace (run-unique name), the conntrack table is filled with
synthetic established IPv4 flows of the measured node (L: 110 local pods): into its pods
from pods on other nodes, out of them, between them, to Services (DNAT to a backend
pod), and some that are none of theirs; only flows the node's current rules allow (an
established flow was allowed when it started). Then the pass the reconciler runs after
a rule change is timed, median over runs: list the table (netlink dump), judge every
entry with a local pod at an end (the compiled-rule walker, memoised by source,
destination, protocol and port), mark the denied ones. Three passes:

- ``all_pods``: as after a first pass (or new node addresses): the flows of every local
  pod are judged against the same rules; nothing is revoked: a full scan's cost;
- ``one_app``: a policy (allowing all) selects one app of a local pod's namespace: only
  the flows of the pods whose chains changed are listed (the kernel filters the dump)
  and judged;
- ``lockdown``: the namespace of one local pod loses its policies but a deny-all; its
  pods' flows on the node are revoked (marks cleared between runs, so each run revokes
  the same).

    python -m bench.conntrack [--size L] [--entries 10000,50000] [--runs 7]   # root
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.synth import MEASURED_NODE, SIZES, generate

IPS_CONFIRMED_SEEN_REPLY_ASSURED = 0x8 | 0x4 | 0x2
TCP_ESTABLISHED = 3


def _fill(entries: int, seed: int, state: Any, judge: Any) -> dict[str, int]:
    """Add ``entries`` synthetic IPv4 entries to this namespace's table; their mix.
    Only flows ``judge`` allows: an established flow was allowed when it started."""
    from pyroute2 import NFCTSocket
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    from agent.compiler.flows import Flow, Verdict

    rng = random.Random(seed)
    pods = [p for p in state.pods.values() if p.is_selectable and p.ipv4]
    local = [p for p in pods if p.node_name == MEASURED_NODE]
    remote = [p for p in pods if p.node_name != MEASURED_NODE] or local  # tiny/S: one node

    def port_of(pod: Any) -> tuple[int, int]:
        served = [(c.number, 17 if c.protocol.value == "UDP" else 6) for c in pod.ports
                  if c.protocol.value in ("TCP", "UDP")]  # fmt: skip
        return rng.choice(served) if served else (rng.choice((80, 443, 8080)), 6)

    mix = {"into local pods": 0, "out of local pods": 0, "local to local": 0,
           "to a service": 0, "none of ours": 0}  # fmt: skip
    sock = NFCTSocket()
    added = 0
    try:
        while added < entries:
            i = added
            roll = rng.random()
            sport = 10000 + (i % 50000)
            if roll < 0.40:
                kind, src, dst = "into local pods", rng.choice(remote), rng.choice(local)
            elif roll < 0.75:
                kind, src, dst = "out of local pods", rng.choice(local), rng.choice(remote)
            elif roll < 0.85:
                kind, src, dst = "local to local", rng.choice(local), rng.choice(local)
            elif roll < 0.95:
                kind, src, dst = "to a service", rng.choice(local), rng.choice(remote)
            else:
                kind, src, dst = "none of ours", rng.choice(remote), rng.choice(remote)
            dport, proto = port_of(dst)
            if judge.judge(Flow(src.ipv4[0], dst.ipv4[0], proto, dport)) is Verdict.DENIED:
                continue
            added += 1
            s, d = str(src.ipv4[0]), str(dst.ipv4[0])
            shown, shown_port = d, dport
            if kind == "to a service":  # sent to a ClusterIP, DNAT to the backend pod
                shown = str(ipaddress.IPv4Address(0x0A600000 + (i % 4000) + 1))
                shown_port = 80
            mix[kind] += 1
            attributes: dict[str, Any] = {
                "tuple_orig": NFCTAttrTuple(saddr=s, daddr=shown, proto=proto, sport=sport,
                                            dport=shown_port),
                "tuple_reply": NFCTAttrTuple(saddr=d, daddr=s, proto=proto, sport=dport,
                                             dport=sport),
                "timeout": 3600,
                "status": IPS_CONFIRMED_SEEN_REPLY_ASSURED,
            }  # fmt: skip
            if proto == 6:
                attributes["protoinfo"] = {"attrs": [["CTA_PROTOINFO_TCP", {"attrs": [
                    ["CTA_PROTOINFO_TCP_STATE", TCP_ESTABLISHED]]}]]}  # fmt: skip
            if kind == "to a service":
                attributes["status"] |= 0x20 | 0x80  # IPS_DST_NAT, IPS_DST_NAT_DONE
            sock.entry("add", **attributes)
    finally:
        sock.close()
    return mix


def _lockdown(objects: list[dict[str, Any]], state: Any) -> list[dict[str, Any]]:
    """The rule change measured: the namespace of the measured node's first pod loses
    every policy but a deny-all (both ways), which revokes its pods' flows on the node
    (policies only add allows: a deny-all alone takes nothing away)."""
    namespace = next(p.namespace for p in state.pods.values() if p.node_name == MEASURED_NODE)
    kept = [
        o for o in objects
        if not (o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] == namespace)
    ]  # fmt: skip
    deny_all = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": "bench-deny-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    return [*kept, deny_all]


def _one_app_isolated(objects: list[dict[str, Any]], state: Any) -> list[dict[str, Any]]:
    """A small change: a policy selecting one app of a local pod's namespace (the pods of
    that app on the node are affected; the policy allows all, so nothing is revoked)."""
    pod = next(p for p in state.pods.values() if p.node_name == MEASURED_NODE)
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": pod.namespace, "name": "bench-one-app"},
        "spec": {"podSelector": {"matchLabels": {"app": pod.labels["app"]}}, "ingress": [{}]},
    }
    return [*objects, policy]


def _changed_chains(old: Any, new: Any) -> frozenset[str]:
    return frozenset(
        name
        for name, chain in new.chains.items()
        if name not in old.chains or old.chains[name].hashes != chain.hashes
    )


def _timed(revoker: Any, table: Any, ruleset: Any, changed: frozenset[str] | None, pods: Any,
           addresses: Any, runs: int) -> dict[str, Any]:  # fmt: skip
    from agent.compiler.config import DEFAULT_REVOKED_MARK
    from agent.rules import Family

    samples: dict[str, list[float]] = {"list": [], "judge": [], "mark": [], "total": []}
    revoked = walks = scanned = 0
    for _ in range(runs):
        started = time.perf_counter()
        report = revoker.after_sync(
            {Family.IPV4: ruleset}, {Family.IPV4: changed}, pods, addresses, {}
        )
        total = time.perf_counter() - started
        if report.error is not None:
            raise RuntimeError(report.error)
        samples["list"].append(report.list_seconds)
        samples["judge"].append(report.judge_seconds)
        samples["mark"].append(report.write_seconds)
        samples["total"].append(total)
        revoked, walks = len(report.revoked), report.walks
        scanned = report.scanned.get(Family.IPV4, 0)
        # Unmark, so the next run revokes the same flows again.
        marked = [e for e in table.list(Family.IPV4).entries if e.mark & DEFAULT_REVOKED_MARK]
        table.set_mark(marked, 0, DEFAULT_REVOKED_MARK)
    return {
        "entries": scanned,
        "revoked": revoked,
        "walks": walks,
        **{f"{key}_seconds": statistics.median(values) for key, values in samples.items()},
        **{f"{key}_seconds_all": values for key, values in samples.items()},
    }


def measure_inside(size_name: str, entries: int, runs: int) -> dict[str, Any]:
    from agent.compiler.config import DEFAULT_REVOKED_MARK, CompilerConfig, node_addresses
    from agent.compiler.flows import FlowJudge, affected_addresses
    from agent.compiler.node import NodeCompiler
    from agent.control.flows import EstablishedFlows, FlowRevoker
    from agent.dataplane.conntrack import NetlinkConntrack
    from agent.policy.state import build_state
    from agent.rules import Family

    objects = generate(SIZES[size_name])
    state = build_state(objects).state
    addresses = node_addresses(state, MEASURED_NODE)
    config = CompilerConfig(revoked_mark=DEFAULT_REVOKED_MARK)
    compiler = NodeCompiler(MEASURED_NODE, Family.IPV4, config)
    ruleset = compiler.compile(state, addresses)
    pods = {a: p.key for p in compiler.local_pods.values() for a in p.ips}
    started = time.perf_counter()
    mix = _fill(entries, 1, state, FlowJudge(ruleset, pods, addresses))
    fill_seconds = time.perf_counter() - started
    table = NetlinkConntrack()
    revoker = FlowRevoker(table, EstablishedFlows.STRICT, DEFAULT_REVOKED_MARK)
    result: dict[str, Any] = {
        "size": size_name,
        "local_pods": len(compiler.local_pods),
        "mix": mix,
        "fill_seconds": fill_seconds,
        "runs": runs,
        # A first pass (or new node addresses): every local pod's flows are judged.
        "all_pods": _timed(revoker, table, ruleset, None, pods, addresses, runs),
    }
    cases = {
        # One app's pods get a policy (allowing all): only their flows are judged.
        "one_app": _one_app_isolated(objects, state),
        # A namespace of local pods loses its policies but a deny-all: its flows revoked.
        "lockdown": _lockdown(objects, state),
    }
    for case, changed_objects in cases.items():
        changed_state = build_state(changed_objects).state
        new = NodeCompiler(MEASURED_NODE, Family.IPV4, config).compile(changed_state, addresses)
        chains = _changed_chains(ruleset, new)
        affected = affected_addresses(new, chains)
        timed = _timed(revoker, table, new, chains, pods, addresses, runs)
        timed["affected_pods"] = len(pods) if affected is None else len(affected)
        result[case] = timed
    return result


def run(size: str, entries: Sequence[int], runs: int) -> list[dict[str, Any]]:
    """Each table size in its own namespace, removed afterwards."""
    results = []
    for count in entries:
        netns = f"nc{os.getpid() % 10000:04d}{secrets.token_hex(2)}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            inside = subprocess.run(
                ["ip", "netns", "exec", netns, sys.executable, "-m", "bench.conntrack",
                 "--inside", size, str(count), str(runs)],
                check=False, capture_output=True, text=True, cwd=Path(__file__).parent.parent,
            )  # fmt: skip
            if inside.returncode != 0:
                raise RuntimeError(f"bench.conntrack --inside failed:\n{inside.stderr}")
            results.append(json.loads(inside.stdout))
        finally:
            subprocess.run(["ip", "netns", "del", netns], check=False)
    return results


CASES = ("all_pods", "one_app", "lockdown")


def render(results: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'size':5} {'pass':9} {'affected':>8} {'listed':>7} {'revoked':>8} {'walks':>6} "
        f"{'list':>8} {'judge':>8} {'mark':>8} {'total':>8}   (IPv4, median of runs)"
    ]
    for r in results:
        for case in CASES:
            c = r[case]
            affected = c.get("affected_pods", r["local_pods"])
            lines.append(
                f"{r['size']:5} {case:9} {affected:8} {c['entries']:7} {c['revoked']:8} "
                f"{c['walks']:6} {c['list_seconds'] * 1000:6.0f}ms "
                f"{c['judge_seconds'] * 1000:6.0f}ms {c['mark_seconds'] * 1000:6.0f}ms "
                f"{c['total_seconds'] * 1000:6.0f}ms"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.conntrack", description=__doc__)
    parser.add_argument("--size", default="L")
    parser.add_argument("--entries", default="10000,50000")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--inside", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        size, count, runs = args.inside
        print(json.dumps(measure_inside(size, int(count), int(runs))))
        return 0
    if os.geteuid() != 0:
        print("bench.conntrack needs root (a network namespace)", file=sys.stderr)
        return 2
    results = run(args.size, [int(n) for n in args.entries.split(",")], args.runs)
    print(render(results))
    for r in results:
        print(f"  {r['all_pods']['entries']} entries ({r['local_pods']} local pods): "
              f"{r['mix']}; filled in {r['fill_seconds']:.1f}s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
