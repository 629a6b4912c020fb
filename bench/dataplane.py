"""Dataplane cost: new TCP connections per second through node-0, without and with rules.

A throwaway topology of three network namespaces (all named ``<run prefix>-…``)::

    CLIENT netns ── veth ── NODE netns (node-0, ip_forward=1) ── veth ── SERVER netns
    a pod of another node                                        a local pod of node-0

The client and server carry the IPv4 addresses of two pods of the synthetic cluster,
chosen so that the policy set ALLOWS the connection and the server's ingress chain walks
as many of its policies as possible before the allowing one (``choose_pair``). Every
connection crosses the node's FORWARD chain, where the compiled ruleset for node-0 is
programmed through the agent's own ``Dataplane`` (one iptables-restore).

Per backend (nft, legacy: each in a fresh topology) the Go load generator
(``bench/loadgen``) opens short connections for ``seconds``, alternating

    (a) baseline: our chains are loaded but FORWARD does not jump into them,
        so no rule of ours is evaluated;
    (b) rules: the FORWARD jump is in place, every new connection walks the ruleset;

for ``rounds`` rounds (a,b then b,a, balanced against drift). Both states keep conntrack
in the path (the ruleset's ``-m conntrack`` rules make the kernel track every flow of the
netns, loaded or jumped-to); the conntrack table is flushed before every measurement.
Before measuring, the run checks that the allowed pair connects, that a DENIED pair is
refused with the jump in place (the ruleset is live) and connects without it.

After the (b) rounds the per-rule packet counters give the rules *matched* per new
connection (counters show matches, not evaluations; the evaluated count is another tool's).

    python -m bench.dataplane [--size L] [--rounds 5] [--seconds 5] [--backends nft,legacy]
    python -m bench.dataplane --smoke      # tiny, 1 round of 1 s: what `make test` runs
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import ctypes.util
import ipaddress
import json
import os
import random
import re
import shlex
import signal
import statistics
import string
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.compiler.config import CompilerConfig
from agent.compiler.node import NodeCompiler
from agent.dataplane.detect import make_backend
from agent.dataplane.state import canonical_jump_spec
from agent.dataplane.table import Dataplane
from agent.model.objects import Direction, IPBlock, Pod, Protocol
from agent.policy.explain import explain, resolve_endpoint
from agent.policy.state import ClusterState, build_state
from agent.rules import Family, Ruleset
from bench.synth import MEASURED_NODE, SIZES, generate
from tests.lab.ownership import owner_marker, signals_as_interrupt

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
BUILD_SCRIPT = HERE / "loadgen" / "build.sh"
NETNS_DIR = Path("/run/netns")
# Markers the lab fixtures sweep: a run killed with SIGKILL is removed by the next lab run.
GATEWAY = "169.254.1.1"  # the node side of every veth (Calico style: pods are /32s)
CONCURRENCY = 32
BACKENDS = ("nft", "legacy")
IPTABLES = {"nft": "iptables-nft", "legacy": "iptables-legacy"}
CLONE_NEWNET = 0x40000000


class BenchError(RuntimeError):
    pass


# --- choosing the measured pair ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pair:
    server: str  # ns/pod, a local pod of the measured node
    server_ip: str
    client: str  # ns/pod of another node (or an external address) allowed to server:port
    client_ip: str
    port: int
    denied: str  # ns/pod of another node, denied server:port
    denied_ip: str
    policies_in_chain: int  # policies the server's ingress chain jumps to
    policies_walked: int  # of those, how many the allowed connection enters (1-based)
    allowed_by: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": f"{self.server} ({self.server_ip}:{self.port}/tcp)",
            "client": f"{self.client} ({self.client_ip})",
            "denied_client": f"{self.denied} ({self.denied_ip})",
            "policies_in_server_chain": self.policies_in_chain,
            "policies_walked": self.policies_walked,
            "allowed_by": list(self.allowed_by),
        }


def _ingress_policy_order(ruleset: Ruleset, prefix: str) -> dict[str, list[str]]:
    """Local pod → the policies its ingress verdict chain jumps to, in chain order.

    A pod chain (P-I-) holds the pod's self rule and a goto to the verdict chain (P-SI-)
    shared by the pods the same policies select; that one jumps to the policy chains.
    """
    policy_chain = f"{prefix}-PI-"
    order: dict[str, list[str]] = {}
    for name, chain in ruleset.chains.items():
        if not name.startswith(f"{prefix}-I-"):
            continue
        pod = next((rule.pod for rule in chain.rules if rule.pod), "")
        verdict = next(
            (r.target for r in chain.rules if r.target.startswith(f"{prefix}-SI-")), None
        )
        if pod and verdict is not None:
            order[pod] = [
                r.policy for r in ruleset.chains[verdict].rules if r.target.startswith(policy_chain)
            ]
    return order


def _candidate_ports(state: ClusterState, pod: Pod) -> list[int]:
    ports: set[int] = set()
    for policy in state.policies_selecting(pod, Direction.INGRESS):
        for rule in policy.rules(Direction.INGRESS):
            for entry in rule.ports or ():
                if entry.protocol is not Protocol.TCP:
                    continue
                if isinstance(entry.port, str):
                    number = pod.resolve_named_port(entry.port, Protocol.TCP)
                    if number is not None:
                        ports.add(number)
                elif entry.port is not None:
                    ports.add(entry.end_port if entry.end_port is not None else entry.port)
            if rule.ports is None:
                ports.add(8080)
    return sorted(ports) or [8080]


def _external_candidates(state: ClusterState, pod: Pod) -> list[str]:
    """A few IPv4 addresses outside the pod network from the server's ingress ipBlocks."""
    found: list[str] = []
    for policy in state.policies_selecting(pod, Direction.INGRESS):
        for rule in policy.rules(Direction.INGRESS):
            for peer in rule.peers or ():
                if not isinstance(peer, IPBlock) or peer.cidr.version != 4:
                    continue
                step = max(1, peer.cidr.num_addresses // 16)
                for k in range(16):
                    offset = k * step + 2
                    if offset >= peer.cidr.num_addresses:
                        break
                    address = peer.cidr.network_address + offset
                    if (
                        address.is_loopback
                        or address.is_link_local
                        or address.is_multicast
                        or address in state.pod_by_ip
                    ):
                        continue
                    found.append(str(address))
    return sorted(set(found), key=lambda text: ipaddress.ip_address(text))


def choose_pair(state: ClusterState, ruleset: Ruleset, prefix: str, node: str) -> Pair:
    """The allowed (client, server, port) whose server chain walks the most policies.

    The server is a local pod of ``node``; the client a pod of another node (or, when
    no such pod is allowed anywhere, an address of an ipBlock the server admits). Score:
    which of the server's ingress policies is the first to allow the connection (they
    are tried in chain order, so a later one means a longer walk), then the chain's
    length, then pods before bare addresses. Deterministic for a given cluster.
    """
    order = _ingress_policy_order(ruleset, prefix)
    remote = sorted(p.key for p in state.selectable_pods if p.node_name != node and p.ips_of(4))
    best: tuple[tuple[int, int, int, int], Pair] | None = None
    # The servers with the longest chains first; a few of them suffice.
    servers = sorted(order, key=lambda key: (-len(order[key]), key))[:6]
    for server_key in servers:
        policies = order[server_key]
        if not policies or (best is not None and best[0][0] >= len(policies)):
            continue  # servers are sorted by chain length: this one cannot walk further
        server = resolve_endpoint(state, server_key, 4)
        assert server.pod is not None
        # TEST-NET-3: outside every pod range, a denied peer when no pod is one.
        clients = [*remote, *_external_candidates(state, server.pod), "203.0.113.2"]
        for port in _candidate_ports(state, server.pod):
            allowed: list[tuple[int, int, str, tuple[str, ...]]] = []
            denied: str | None = None
            for text in clients:
                client = resolve_endpoint(state, text, 4)
                verdict = explain(state, client, server, Protocol.TCP, port)
                if not verdict.allowed:
                    if denied is None or (client.pod is not None and "/" not in denied):
                        denied = text  # a denied pod if there is one, else an address
                    continue
                assert verdict.ingress is not None
                names = {entry.split(" ", 1)[0] for entry in verdict.ingress.allowed_by}
                walked = next((i + 1 for i, p in enumerate(policies) if p in names), 0)
                if walked:
                    is_pod = int(client.pod is not None)
                    allowed.append((walked, is_pod, text, verdict.ingress.allowed_by))
                    if walked == len(policies) and is_pod and denied and "/" in denied:
                        break  # nothing on this port can walk further
            if not allowed or denied is None:
                continue
            walked, is_pod, client_text, allowed_by = max(allowed, key=lambda a: (a[0], a[1]))
            score = (walked, len(policies), is_pod, -port)
            if best is None or score > best[0]:
                best = (
                    score,
                    Pair(
                        server=server_key,
                        server_ip=str(server.address),
                        client=client_text,
                        client_ip=str(resolve_endpoint(state, client_text, 4).address),
                        port=port,
                        denied=denied,
                        denied_ip=str(resolve_endpoint(state, denied, 4).address),
                        policies_in_chain=len(policies),
                        policies_walked=walked,
                        allowed_by=allowed_by,
                    ),
                )
    if best is None:
        raise BenchError(f"no local pod of {node} has both an allowed and a denied peer")
    return best[1]


# --- processes and namespaces --------------------------------------------------------


def _run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    stdin: str | None = None,
    timeout: float = 60.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    full = [*(["ip", "netns", "exec", netns] if netns else []), *argv]
    proc = subprocess.run(
        full, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise BenchError(
            f"command failed (rc={proc.returncode}): {shlex.join(full)}\n{proc.stdout}{proc.stderr}"
        )
    return proc


def _ip_batch(commands: Sequence[str], netns: str | None = None) -> None:
    _run(["ip", *(["-n", netns] if netns else []), "-batch", "-"], stdin="\n".join(commands) + "\n")


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """The calling thread (and the processes it starts) inside netns ``name``."""
    target = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            # Never program the root namespace by mistake: check where we are.
            if os.stat("/proc/thread-self/ns/net").st_ino != os.fstat(target).st_ino:
                raise BenchError(f"setns into {name} did not take effect")
            yield
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)


def make_prefix() -> str:
    """``bd`` + 4 PID digits + 2 random letters: 8 characters, 7 left for interface names."""
    letters = "".join(random.choices(string.ascii_lowercase, k=2))
    return f"bd{os.getpid() % 10000:04d}{letters}"


_LIVE: set[Topology] = set()


@atexit.register
def _close_live() -> None:
    for topology in list(_LIVE):
        with contextlib.suppress(Exception):
            topology.close()


class Topology:
    """CLIENT ── NODE ── SERVER namespaces, addressed with the chosen pods' IPs."""

    def __init__(self, prefix: str, pair: Pair) -> None:
        if not 5 <= len(prefix) <= 8:
            raise ValueError("the run prefix must have 5-8 characters")
        self.prefix = prefix
        self.pair = pair
        self.node = f"{prefix}-node"
        self.client = f"{prefix}-cli"
        self.server = f"{prefix}-srv"
        self._created: list[str] = []
        self._processes: list[subprocess.Popen[str]] = []

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.node, self.client, self.server)

    def __enter__(self) -> Topology:
        _LIVE.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        p, pair = self.prefix, self.pair
        for name in self.namespaces:
            if (NETNS_DIR / name).exists():
                raise BenchError(f"netns {name} already exists")
            _run(["ip", "netns", "add", name])
            self._created.append(name)
        no_rp = {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"}
        for name in self.namespaces:
            _sysctl(name, no_rp)
        _sysctl(self.node, {"net.ipv4.ip_forward": "1"})
        # Node side: one veth per pod, the gateway address on each, /32 routes to the pods.
        _ip_batch(
            [
                "link set lo up",
                f"link add {p}c type veth peer name {p}e netns {self.client}",
                f"link add {p}s type veth peer name {p}e netns {self.server}",
                f"addr add {GATEWAY}/32 dev {p}c",
                f"addr add {GATEWAY}/32 dev {p}s",
                f"link set {p}c up",
                f"link set {p}s up",
                f"route add {pair.server_ip}/32 dev {p}s",
                f"route add {pair.client_ip}/32 dev {p}c",
                f"route add {pair.denied_ip}/32 dev {p}c",
            ],
            self.node,
        )
        for netns, addresses in (
            (self.client, (pair.client_ip, pair.denied_ip)),
            (self.server, (pair.server_ip,)),
        ):
            _ip_batch(
                [
                    "link set lo up",
                    *(f"addr add {a}/32 dev {p}e" for a in addresses),
                    f"link set {p}e up",
                    f"route add default via {GATEWAY} dev {p}e onlink",
                ],
                netns,
            )

    def start(self, netns: str, argv: Sequence[str]) -> subprocess.Popen[str]:
        if netns not in self.namespaces:
            raise ValueError(f"{netns} is not ours")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._processes.append(proc)
        return proc

    def close(self) -> None:
        # Our processes first (by PID): a netns with a live process outlives its name.
        for proc in self._processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self._processes.clear()
        for name in reversed(self._created):
            _run(["ip", "netns", "del", name], check=False)
        self._created.clear()
        _LIVE.discard(self)


def _sysctl(netns: str, values: dict[str, str]) -> None:
    if values:
        _run(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())], netns=netns)


def build_loadgen() -> str:
    proc = _run(["bash", str(BUILD_SCRIPT)], timeout=300)
    path = proc.stdout.strip().splitlines()[-1]
    if not os.access(path, os.X_OK):
        raise BenchError(f"loadgen build gave no binary: {proc.stdout}{proc.stderr}")
    return path


# --- measuring -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadResult:
    completed: int
    failures: int
    conn_per_s: float
    errors: dict[str, int]


class Bench:
    """One backend's measurements in one topology."""

    def __init__(
        self, topology: Topology, loadgen: str, backend: str, chain_prefix: str, concurrency: int
    ) -> None:
        self.topo = topology
        self.loadgen = loadgen
        self.backend = backend
        self.chain_prefix = chain_prefix
        self.concurrency = concurrency
        self.iptables = IPTABLES[backend]
        self.jump = shlex.split(canonical_jump_spec(f"{chain_prefix}-FORWARD"))
        pair = topology.pair
        self.target = f"{pair.server_ip}:{pair.port}"
        self._jumped = False

    def start_server(self, lifetime_seconds: float) -> None:
        proc = self.topo.start(
            self.topo.server,
            [
                self.loadgen,
                "server",
                "-listen",
                self.target,
                "-lifetime",
                f"{lifetime_seconds:.0f}s",
            ],
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # "ready", or EOF when it failed
        if line != "ready":
            proc.wait(timeout=5)
            stderr = proc.stderr.read() if proc.stderr else ""
            raise BenchError(f"loadgen server did not start: {line!r} {stderr}")

    def program(self, ruleset: Ruleset) -> float:
        """Sync the ruleset into the node netns with the agent's own Dataplane."""
        dataplane = Dataplane(
            make_backend("nft" if self.backend == "nft" else "legacy"),
            self.chain_prefix + "-",
            read_on_partial=False,
        )
        with in_netns(self.topo.node):
            report = dataplane.sync({Family.IPV4: ruleset}, full=False)
        self._jumped = True
        return report.duration_seconds

    def set_jump(self, on: bool) -> None:
        if on == self._jumped:
            return
        verb = ["-I", "FORWARD", "1"] if on else ["-D", "FORWARD"]
        _run([self.iptables, "-w", *verb, *self.jump], netns=self.topo.node)
        self._jumped = on

    def load(
        self,
        seconds: float,
        *,
        source: str | None = None,
        concurrency: int | None = None,
        timeout: float = 1.0,
    ) -> LoadResult:
        argv = [
            self.loadgen, "client", "-target", self.target,
            "-duration", f"{seconds}s", "-concurrency", str(concurrency or self.concurrency),
            "-timeout", f"{timeout}s",
        ]  # fmt: skip
        if source:
            argv += ["-source", source]
        proc = _run(argv, netns=self.topo.client, timeout=seconds + timeout + 30)
        data = json.loads(proc.stdout)
        return LoadResult(
            int(data["completed"]), int(data["failures"]), float(data["conn_per_s"]),
            {str(k): int(v) for k, v in (data.get("errors") or {}).items()},
        )  # fmt: skip

    def flush_conntrack(self) -> None:
        _run(["conntrack", "-F"], netns=self.topo.node, check=False)

    def conntrack_count(self) -> int:
        proc = _run(
            ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"], netns=self.topo.node, check=False
        )
        return int(proc.stdout.strip() or 0)

    def counters(self) -> dict[tuple[str, int], tuple[int, str]]:
        """(chain, position) → (packets, rule text) for every rule in our chains."""
        text = _run([f"{self.iptables}-save", "-c", "-t", "filter"], netns=self.topo.node).stdout
        found: dict[tuple[str, int], tuple[int, str]] = {}
        position: dict[str, int] = {}
        pattern = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) (.*)$")
        for line in text.splitlines():
            match = pattern.match(line)
            if not match or not match.group(3).startswith(self.chain_prefix + "-"):
                continue
            chain = match.group(3)
            position[chain] = position.get(chain, 0) + 1
            found[(chain, position[chain])] = (int(match.group(1)), match.group(4))
        return found


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


_COMMENT = re.compile(r'-m comment --comment "?npa:[0-9a-f]+ ([^"]*?)"? (?=-)')


def _find_rule(
    rules: dict[tuple[str, int], tuple[int, str]], chain: str, text: str
) -> tuple[str, int] | None:
    return next((key for key, (_, body) in rules.items() if key[0] == chain and text in body), None)


def _matched_per_connection(
    before: dict[tuple[str, int], tuple[int, str]],
    after: dict[tuple[str, int], tuple[int, str]],
    prefix: str,
) -> dict[str, Any]:
    """What the counters say about the (b) rounds: rules *matched* per new connection.

    Only the first packet of a connection walks past the entry chain's conntrack rule;
    every other packet returns there. New connections are counted at the entry chain's
    "start with a clear allow mark" rule (reached by every packet past the exemptions),
    allowed ones at its last rule (denied packets are dropped before it).
    """
    delta = {key: after[key][0] - before.get(key, (0, ""))[0] for key in after}
    entry = f"{prefix}-FORWARD"
    established = _find_rule(after, entry, "ctstate RELATED,ESTABLISHED")
    start = _find_rule(after, entry, "start with a clear allow mark")
    done = _find_rule(after, entry, "allowed, leave no mark behind")
    new_connections = delta[start] if start else 0
    matched = {k: v for k, v in delta.items() if v > 0 and k != established}
    total = sum(matched.values())

    def describe(key: tuple[str, int]) -> str:
        body = after[key][1]
        comment = _COMMENT.search(body + " -")
        text = _COMMENT.sub("", body + " -")[:-2].strip()
        note = f"  [{comment.group(1)[:60]}]" if comment else ""
        return f"{key[0]}#{key[1]}: {text[:80]}{note} ({delta[key]})"

    return {
        "established_returns": delta[established] if established else None,
        "new_connections": new_connections,
        "new_connections_allowed": delta[done] if done else None,
        "rules_matched_per_new_connection": round(total / new_connections, 2)
        if new_connections
        else None,
        "distinct_rules_matched": len(matched),
        "chains_entered": len({chain for chain, _ in matched}),
        "matched_rules": [describe(key) for key in sorted(matched)],
    }


def _measure_backend(
    backend: str,
    pair: Pair,
    ruleset: Ruleset,
    chain_prefix: str,
    loadgen: str,
    rounds: int,
    seconds: float,
    concurrency: int,
    log: Any,
) -> dict[str, Any]:
    prefix = make_prefix()
    lifetime = 120 + rounds * 2 * (seconds + 5)
    with owner_marker(prefix), Topology(prefix, pair) as topo:
        bench = Bench(topo, loadgen, backend, chain_prefix, concurrency)
        bench.start_server(lifetime)
        apply_seconds = bench.program(ruleset)
        log(f"[{backend}] programmed {ruleset.rule_count} rules in {apply_seconds:.2f}s")

        # The ruleset is live: the allowed pair connects, the denied one does not,
        # and without the FORWARD jump the denied one connects too.
        checks: dict[str, Any] = {}
        allowed = bench.load(0.5, concurrency=2)
        denied = bench.load(1.0, source=pair.denied_ip, concurrency=2, timeout=0.3)
        bench.set_jump(False)
        unjumped = bench.load(0.5, source=pair.denied_ip, concurrency=2)
        checks = {
            "allowed_with_rules": allowed.completed,
            "allowed_failures": allowed.failures,
            "denied_with_rules_completed": denied.completed,
            "denied_with_rules_failures": denied.failures,
            "denied_without_jump_completed": unjumped.completed,
        }
        if allowed.completed == 0 or allowed.failures:
            raise BenchError(f"[{backend}] the allowed pair does not connect: {allowed}")
        if denied.completed or not denied.failures:
            raise BenchError(f"[{backend}] the denied pair is not denied: {denied}")
        if unjumped.completed == 0:
            raise BenchError(f"[{backend}] without the jump the denied pair fails: {unjumped}")
        log(f"[{backend}] checks ok: {checks}")

        bench.load(min(1.0, seconds))  # warm up (page cache, ARP, Go runtime)
        baseline: list[float] = []
        with_rules: list[float] = []
        failures = {"baseline": 0, "rules": 0}
        conntrack_after: dict[str, list[int]] = {"baseline": [], "rules": []}
        rule_connections = 0
        counters_before = bench.counters()
        for index in range(rounds):
            order = (False, True) if index % 2 == 0 else (True, False)
            for rules_on in order:
                bench.set_jump(rules_on)
                bench.flush_conntrack()
                result = bench.load(seconds)
                kind = "rules" if rules_on else "baseline"
                (with_rules if rules_on else baseline).append(result.conn_per_s)
                failures[kind] += result.failures
                conntrack_after[kind].append(bench.conntrack_count())
                if rules_on:
                    rule_connections += result.completed
                log(
                    f"[{backend}] round {index + 1}/{rounds} {kind:8s} "
                    f"{result.conn_per_s:9.1f} conn/s ({result.failures} failures)"
                )
        counters = _matched_per_connection(counters_before, bench.counters(), chain_prefix)
        counters["connections_completed_with_rules"] = rule_connections

    if min(conntrack_after["baseline"] + conntrack_after["rules"]) == 0:
        raise BenchError(f"[{backend}] conntrack saw no flows: {conntrack_after}")
    base, rules = _stats(baseline), _stats(with_rules)
    ratios = [r / b for b, r in zip(baseline, with_rules, strict=True) if b]
    return {
        "backend": backend,
        "baseline_conn_per_s": base,
        "rules_conn_per_s": rules,
        "ratio": round(rules["median"] / base["median"], 3) if base["median"] else None,
        # Each round's (b) next to its own (a): less exposed to slow drifts of the machine.
        "median_round_ratio": round(statistics.median(ratios), 3) if ratios else None,
        "round_ratios": [round(r, 3) for r in ratios],
        "baseline_samples": [round(v, 1) for v in baseline],
        "rules_samples": [round(v, 1) for v in with_rules],
        "failures": failures,
        "conntrack_entries_after_round": conntrack_after,
        "apply_seconds": round(apply_seconds, 3),
        "checks": checks,
        "counters": counters,
    }


def run(
    size: str = "L",
    rounds: int = 5,
    seconds: float = 5.0,
    backends: Sequence[str] = BACKENDS,
    *,
    concurrency: int = CONCURRENCY,
    verbose: bool = True,
) -> dict[str, Any]:
    """Measure every backend; returns the JSON-able result (see ``render``)."""
    if os.geteuid() != 0:
        raise BenchError("the dataplane benchmark needs root (network namespaces)")
    if rounds < 1 or seconds <= 0 or concurrency < 1:
        raise ValueError("rounds, seconds and concurrency must be positive")
    unknown = [b for b in backends if b not in IPTABLES]
    if unknown or not backends:
        raise ValueError(f"backends must be among {', '.join(IPTABLES)}; got {list(backends)}")

    def log(message: str) -> None:
        if verbose:
            print(message, file=sys.stderr, flush=True)

    loadgen = build_loadgen()
    chain_prefix = f"B{os.getpid() % 10000}"
    started = time.monotonic()
    state = build_state(generate(SIZES[size])).state
    ruleset = NodeCompiler(
        MEASURED_NODE, Family.IPV4, CompilerConfig(chain_prefix=chain_prefix)
    ).compile(state, state.node_addresses(MEASURED_NODE))
    pair = choose_pair(state, ruleset, chain_prefix, MEASURED_NODE)
    log(
        f"size {size}: {ruleset.rule_count} rules in {len(ruleset.chains)} chains; "
        f"client {pair.client} ({pair.client_ip}) -> server {pair.server} "
        f"({pair.server_ip}:{pair.port}), policy {pair.policies_walked} of "
        f"{pair.policies_in_chain} allows; denied {pair.denied} ({pair.denied_ip}) "
        f"[{time.monotonic() - started:.1f}s]"
    )
    results = []
    with signals_as_interrupt((signal.SIGTERM, signal.SIGHUP)):
        for backend in backends:
            results.append(
                _measure_backend(
                    backend, pair, ruleset, chain_prefix, loadgen, rounds, seconds, concurrency, log
                )
            )
    return {
        "benchmark": "dataplane",
        "size": size,
        "node": MEASURED_NODE,
        "family": "ipv4",
        "rules_in_ruleset": ruleset.rule_count,
        "chains_in_ruleset": len(ruleset.chains),
        "rounds": rounds,
        "duration_seconds": seconds,
        "concurrency": concurrency,
        "pair": pair.as_dict(),
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "loadgen": Path(loadgen).name,
        "backends": results,
    }


def render(result: dict[str, Any]) -> str:
    """The result as a plain-text table."""
    header = (
        f"dataplane: size {result['size']}, {result['node']}, {result['rules_in_ruleset']} rules, "
        f"{result['rounds']} rounds x {result['duration_seconds']}s, "
        f"concurrency {result['concurrency']}\n"
        f"pair: {result['pair']['client']} -> {result['pair']['server']} "
        f"(policy {result['pair']['policies_walked']} of "
        f"{result['pair']['policies_in_server_chain']} allows)\n"
    )
    columns = (
        f"{'backend':8s} {'baseline med':>12s} {'(min-max)':>19s} {'rules med':>10s} "
        f"{'(min-max)':>19s} {'ratio':>6s} {'rnd ratio':>9s} {'matched/conn':>12s}"
    )
    lines = [header + columns, "-" * len(columns)]
    for entry in result["backends"]:
        base, rules = entry["baseline_conn_per_s"], entry["rules_conn_per_s"]
        matched = entry["counters"]["rules_matched_per_new_connection"]
        lines.append(
            f"{entry['backend']:8s} {base['median']:12.1f} "
            f"{'(' + format(base['min'], '.0f') + '-' + format(base['max'], '.0f') + ')':>19s} "
            f"{rules['median']:10.1f} "
            f"{'(' + format(rules['min'], '.0f') + '-' + format(rules['max'], '.0f') + ')':>19s} "
            f"{entry['ratio']:6.3f} {entry['median_round_ratio']:9.3f} "
            f"{matched if matched is not None else '-':>12}"
        )
    return "\n".join(lines)


def write_results(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dataplane", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--size", default="L", choices=sorted(SIZES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--smoke", action="store_true", help="size tiny, 1 round of 1 s")
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.rounds, args.seconds = "tiny", 1, 1.0
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    output = args.output or RESULTS_DIR / (
        "dataplane-smoke.json" if args.smoke else "dataplane.json"
    )
    try:
        result = run(args.size, args.rounds, args.seconds, backends, concurrency=args.concurrency)
    except BenchError as error:
        print(f"bench.dataplane: {error}", file=sys.stderr)
        return 1
    print(render(result))
    write_results(result, output)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
