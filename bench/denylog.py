"""The deny log under a flood: the agent's CPU while denied SYNs pour in at an isolated pod.

On the lab (two nodes as network namespaces), agents run on both nodes with the deny-log
tests' policies (y/b on node-2 takes connections from x/c only). From x/a (node-1), a
raw socket sends bare SYNs to y/b:80, each from its own source port (so each is a new
connection to the kernel and to the log), paced at ``--rate`` for ``--seconds``: the
sender is tests/lab/flood/synflood.c (sendmmsg batches), run in x/a's netns. For
node-2's agent the script reports its CPU time (utime + stime from /proc) over the
flood, as a share of one core, next to the same agent idle, and the same flood with
``--log-denied`` off; the lines written, the packets the rate limit dropped (as the
agent counted them) and the log chain's own counters; and, to tell the sender's limits
from the kernel's, the sender's rate and CPU, the machine's user/system/softirq shares
and the cores' input backlog drops.

    sudo .venv/bin/python -m bench.denylog [--rate 50000] [--seconds 10] [--family 4]
        [--backend nft]

On the shared 2-core machine, 50,000 SYN/s for 10 s (default limit 10/s, burst 20):

    backend, family  SYN/s   agent CPU flood (idle)  no log  lines  rate-limited (reached/NFLOG)
    nft, IPv4        49,997  0.7% (0.6%)             0.2%    67     499,880 (500,000/120)
    legacy, IPv4     49,998  0.5% (0.4%)             0.2%    87     499,881 (500,000/119)
    nft, IPv6        49,998  0.8% (0.5%)             0.4%    59     499,880 (500,000/120)

Every SYN reached the log chain, no backlog drops. The sender spends 0.49-0.59 of a core
at 50k/s, all of it kernel time (the forwarding through both nodes runs in its context);
unpaced it reached 106,681 SYN/s (IPv4) and 90,639 (IPv6), so neither it nor the
forwarding caps the rate asked. Under other load it can end a little late (48.9k/s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.lab.nsutil import run
from tests.lab.ownership import owner_marker, signals_as_interrupt, sweep_stale_labs
from tests.lab.synflood import SynFlood
from tests.lab.test_deny_log import policies
from tests.lab.test_established_flows import RunningAgents, running_agents
from tests.lab.topology import Backend, Lab

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


@contextmanager
def agents(lab: Lab, backend: Backend, log_denied: bool, path: Path) -> Iterator[RunningAgents]:
    args = ("--log-denied",) if log_denied else ()
    node_args = {"node-2": ["--log-denied-file", str(path)]} if log_denied else None
    with running_agents(lab, backend, [*lab.objects(), *policies()], *args,
                        node_args=node_args) as running:  # fmt: skip
        yield running


def machine_cpu() -> list[int]:
    """The machine's CPU time so far, in ticks: user+nice, system, softirq, all (every core)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return [fields[0] + fields[1], fields[2], fields[6], sum(fields[:8])]


def backlog_drops() -> int:
    """Packets the cores' input backlogs dropped (/proc/net/softnet_stat, every core)."""
    lines = Path("/proc/net/softnet_stat").read_text().splitlines()
    return sum(int(line.split()[1], 16) for line in lines)


def measure(
    lab: Lab, running: RunningAgents, family: int, rate: float, seconds: float, flood: bool
) -> dict[str, Any]:
    pid = running.procs["node-2"].pid
    source, target = lab.pod("x/a"), lab.pod("y/b")
    sender = SynFlood(source.netns, source.ip(family), target.ip(family), 80, ports=40000)
    cpu_before, machine_before, drops_before = cpu_seconds(pid), machine_cpu(), backlog_drops()
    started = time.monotonic()
    if flood:
        sent = sender.send(int(rate * seconds), rate=rate)
    else:
        time.sleep(seconds)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu_before
    machine = [after - before for after, before in zip(machine_cpu(), machine_before, strict=True)]
    result: dict[str, Any] = {
        "seconds": round(elapsed, 2), "agent_cpu_seconds": round(cpu, 3),
        "agent_cpu_share": round(cpu / elapsed, 4),
        # Shares of the whole machine (every core), over the same span.
        "machine_cpu_share": {name: round(ticks / machine[3], 3) for name, ticks in
                              zip(("user", "system", "softirq"), machine[:3], strict=False)},
        "backlog_drops": backlog_drops() - drops_before,
    }  # fmt: skip
    if flood:
        result["sender"] = {
            "sent": sent.sent, "failed": sent.failed, "seconds": round(sent.seconds, 3),
            "sent_per_second": round(sent.per_second),
            "cpu_share": round((sent.cpu_user + sent.cpu_system) / sent.seconds, 3),
            "cpu_system_share": round(sent.cpu_system / sent.seconds, 3),
        }  # fmt: skip
    return result


def log_chain_counts(lab: Lab, backend: Backend, family: int) -> list[int]:
    tool = f"{'ip6tables' if family == 6 else 'iptables'}-{backend}"
    out = run([tool, "-w", "-S", f"{lab.prefix}-DENIED-INGRESS", "-v"],
              netns=lab.nodes["node-2"].netns).stdout  # fmt: skip
    return [int(line.split(" -c ")[-1].split()[0]) for line in out.splitlines()
            if line.startswith("-A")]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50000.0, help="SYNs a second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--family", type=int, choices=(4, 6), default=4)
    parser.add_argument("--backend", choices=("nft", "legacy"), default="nft")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, iptables, raw sockets)", file=sys.stderr)
        return 2
    sweep_stale_labs()
    lab = Lab()
    results: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds,
                               "family": args.family, "backend": args.backend}  # fmt: skip
    with signals_as_interrupt(), owner_marker(lab.prefix):
        try:
            lab.start()
            assert lab.workdir is not None
            path = lab.workdir / "denied.log"
            with agents(lab, args.backend, True, path) as running:
                mark = running.mark("node-2")
                results["idle_with_log"] = measure(lab, running, args.family, args.rate,
                                                   args.seconds, flood=False)  # fmt: skip
                results["flood_with_log"] = measure(lab, running, args.family, args.rate,
                                                    args.seconds, flood=True)  # fmt: skip
                time.sleep(7)  # the agent reads the counters at most every 5 s
                lines = path.read_text().splitlines() if path.exists() else []
                dropped = sum(
                    int(text.split("dropped=")[1].split()[0])
                    for _, text in running.lines["node-2"][mark:]
                    if "deny log rate limit reached" in text
                )
                counts = log_chain_counts(lab, args.backend, args.family)
                results["lines_written"] = len(lines)
                results["rate_limited_counted_by_agent"] = dropped
                results["log_chain_counters"] = {"nflog": counts[-2], "reached": counts[-1]}
                results["reached_per_second"] = round(
                    counts[-1] / results["flood_with_log"]["sender"]["seconds"]
                )
                results["sample_lines"] = lines[:2]
            lab.reset_firewall()
            with agents(lab, args.backend, False, path) as running:
                results["flood_without_log"] = measure(lab, running, args.family, args.rate,
                                                       args.seconds, flood=True)  # fmt: skip
        finally:
            lab.close()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
