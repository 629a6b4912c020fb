"""Workloads on the real-node cluster: one way to create, probe and explain each thing.

The tests in this directory (walkthrough, Services, faults, pod start) build on these:

* **objects** — :func:`namespace`, :func:`server_pod`, :func:`loop_pod`, :func:`policy`,
  :func:`service` return plain manifests (wire-format dicts); :func:`apply` sends them with
  ``kubectl apply``, the way a user would;
* **probes** — every probe runs the static ``netprobe`` binary inside the source pod's
  network namespace (``nsenter --net=<pod netns>``): :func:`connect` for one attempt,
  :func:`connect_all` for many at once, :class:`Loop` for a continuous probe (one attempt
  every few tens of milliseconds, each line of its output kept and counted);
* **explain** — :func:`dump_state` writes the live objects (``kubectl get -o yaml``) to a
  file and :func:`explain` runs ``netpol-agent explain -f FILE --json`` on it: the same
  command line users run, in this process;
* **the agent** — :func:`rule_log` reads a node's rule-change log through the node's
  ``/var/log`` on the host.

Everything a test creates lives in namespaces it deletes (:func:`delete_namespaces`); the
cluster itself (and its cleanup) belongs to ``tests/node/cluster.py``.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import itertools
import json
import re
import secrets
import shlex
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tests.node.cluster import AGENT_NAMESPACE, build_images

if TYPE_CHECKING:
    from tests.node.cluster import NodeCluster

JSON = dict[str, Any]

#: Where the netprobe image keeps its binary (tests/node/images.sh builds it there).
NETPROBE_IN_IMAGE = "/netprobe"
#: The ports every server pod answers (netprobe serve).
SERVE_TCP: tuple[int, ...] = (80, 8080, 9000)
SERVE_UDP: tuple[int, ...] = (53, 9000)
HTTP_PORT = 8080
AGENT_LABEL = "app.kubernetes.io/name=netpol-agent"
RULE_LOG = "netpol-agent.log"


def unique(prefix: str) -> str:
    """A DNS-1123 label unique to this call: ``prefix-<6 hex>``."""
    return f"{prefix}-{secrets.token_hex(3)}"


# ------------------------------------------------------------------------------ images
@dataclass(frozen=True)
class Images:
    netprobe: str  # the netprobe image's ref (imported on every node by node_cluster)
    netprobe_bin: str  # the static netprobe binary on this host (run via nsenter)


_IMAGES: list[Images] = []


def images(cluster: NodeCluster) -> Images:
    """The netprobe image and binary (``tests/node/images.sh`` caches: instant here)."""
    if not _IMAGES:
        found = build_images("netprobe")
        _IMAGES.append(Images(found["NETPROBE_REF"], found["NETPROBE_BIN"]))
    return _IMAGES[0]


def agent_image_tagged(cluster: NodeCluster, tag: str) -> str:
    """The agent image under another tag, imported on every node (same content, so
    cheap): what a user's rolling update to a new tag deploys. Returns its reference."""
    found = build_images("agent", "--tag", tag)
    cluster.import_image(Path(found["AGENT"]))
    return found["AGENT_REF"]


# ------------------------------------------------------------------------------ manifests
def namespace(name: str, labels: Mapping[str, str] | None = None) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": dict(labels or {})},
    }


def _container_ports(named: Mapping[str, tuple[int, str]]) -> list[JSON]:
    ports: list[JSON] = []
    for name, (port, protocol) in named.items():
        ports.append({"name": name, "containerPort": port, "protocol": protocol})
    return ports


#: The container ports a server pod declares (names are what named targetPorts and
#: named policy ports resolve against).
SERVER_PORTS: Mapping[str, tuple[int, str]] = {
    "http": (80, "TCP"),
    "web": (8080, "TCP"),
    "alt": (9000, "TCP"),
    "dns": (53, "UDP"),
    "alt-udp": (9000, "UDP"),
}


def server_pod(
    cluster: NodeCluster,
    ns: str,
    name: str,
    node: str,
    labels: Mapping[str, str],
    *,
    readiness: bool = False,
) -> JSON:
    """A pod on ``node`` running ``netprobe serve`` (TCP 80/8080/9000, UDP 53/9000,
    HTTP /healthz on 8080); ``readiness`` adds the kubelet's HTTP readiness probe."""
    argv = [
        NETPROBE_IN_IMAGE,
        "serve",
        "--tcp",
        ",".join(map(str, SERVE_TCP)),
        "--udp",
        ",".join(map(str, SERVE_UDP)),
        "--http",
        str(HTTP_PORT),
    ]
    container: JSON = {
        "name": "netprobe",
        "image": images(cluster).netprobe,
        "imagePullPolicy": "Never",
        "command": argv,
        "ports": _container_ports(SERVER_PORTS),
    }
    if readiness:
        container["readinessProbe"] = {
            "httpGet": {"path": "/healthz", "port": HTTP_PORT},
            "periodSeconds": 1,
            "timeoutSeconds": 1,
            "failureThreshold": 1,
        }
    return _pod(ns, name, node, labels, container)


def loop_pod(
    cluster: NodeCluster,
    ns: str,
    name: str,
    node: str,
    labels: Mapping[str, str],
    target: str,
    *,
    protocol: str = "tcp",
    interval: str = "20ms",
    timeout: str = "50ms",
    duration: str = "3s",
) -> JSON:
    """A pod whose only container runs ``netprobe loop`` to ``target`` from its first
    instant, then exits (restartPolicy Never): its log is the record of every attempt."""
    argv = loop_argv(NETPROBE_IN_IMAGE, protocol, target, interval, timeout, duration=duration)
    container: JSON = {
        "name": "loop",
        "image": images(cluster).netprobe,
        "imagePullPolicy": "Never",
        "command": argv,
    }
    return _pod(ns, name, node, labels, container)


def _pod(ns: str, name: str, node: str, labels: Mapping[str, str], container: JSON) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "tolerations": [{"operator": "Exists"}],
            "containers": [container],
        },
    }


def policy(
    ns: str,
    name: str,
    pod_selector: Mapping[str, Any] | None = None,
    *,
    ingress: list[JSON] | None = None,
    egress: list[JSON] | None = None,
) -> JSON:
    """A NetworkPolicy; ``ingress``/``egress`` None leaves that direction out of
    policyTypes, ``[]`` isolates it with nothing allowed."""
    types = [d for d, rules in (("Ingress", ingress), ("Egress", egress)) if rules is not None]
    spec: JSON = {"podSelector": dict(pod_selector or {}), "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def service(
    ns: str,
    name: str,
    selector: Mapping[str, str],
    ports: Sequence[JSON],
    *,
    kind: str = "ClusterIP",
    external_traffic_policy: str | None = None,
) -> JSON:
    spec: JSON = {"type": kind, "selector": dict(selector), "ports": list(ports)}
    if external_traffic_policy:
        spec["externalTrafficPolicy"] = external_traffic_policy
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


# ------------------------------------------------------------------------------ kubectl
def apply(cluster: NodeCluster, *objects: JSON) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))


def get(cluster: NodeCluster, *args: str) -> JSON:
    out: JSON = json.loads(cluster.kubectl("get", *args, "-o", "json"))
    return out


def delete_namespaces(cluster: NodeCluster, *names: str, wait: bool = False) -> None:
    """Delete namespaces (and everything in them); ``wait`` waits until they are gone."""
    if names:
        cluster.kubectl(
            "delete",
            "namespace",
            *names,
            "--ignore-not-found",
            f"--wait={'true' if wait else 'false'}",
        )


def wait_ready(cluster: NodeCluster, ns: str, *pods: str, timeout: float = 90) -> None:
    cluster.kubectl(
        "-n",
        ns,
        "wait",
        "--for=condition=Ready",
        f"--timeout={int(timeout)}s",
        *(f"pod/{pod}" for pod in pods),
    )


def pod_ip(cluster: NodeCluster, ns: str, pod: str) -> str:
    ip: str = get(cluster, "-n", ns, "pod", pod)["status"]["podIP"]
    return ip


def node_names(cluster: NodeCluster) -> list[str]:
    """The cluster's node names, control plane first (as ``cluster.nodes`` lists them)."""
    return [node.name for node in cluster.nodes]


def workers(cluster: NodeCluster) -> tuple[str, str]:
    """Two distinct nodes for workloads: the two workers, or the control plane and the
    one worker when there is only one."""
    names = node_names(cluster)
    chosen = names[1:3] if len(names) >= 3 else names[:2]
    return chosen[0], chosen[-1]


def node_ip(cluster: NodeCluster, name: str) -> str:
    for node in cluster.nodes:
        if node.name == name:
            return str(node.ip)
    raise KeyError(name)


_PEER = re.compile(r" (tcp|udp) (\d+) from (\S+):\d+$")


def last_peer(cluster: NodeCluster, ns: str, pod: str, port: int, protocol: str = "tcp") -> str:
    """The source address of the last connection a ``netprobe serve`` pod logged on a port."""
    peers = [
        m.group(3)
        for line in cluster.kubectl("-n", ns, "logs", pod).splitlines()
        if (m := _PEER.search(line)) and (m.group(1), int(m.group(2))) == (protocol, port)
    ]
    return peers[-1] if peers else ""


def pod_node(cluster: NodeCluster, ns: str, pod: str) -> str:
    node: str = get(cluster, "-n", ns, "pod", pod)["spec"]["nodeName"]
    return node


# ------------------------------------------------------------------------------ probes
def in_pod(
    cluster: NodeCluster, ns: str, pod: str, argv: Sequence[str], *, netns: str | None = None
) -> list[str]:
    """``argv`` run in the pod's network namespace (and nothing else of the pod's);
    ``netns``: the pod's ``cluster.pod_netns`` when the caller already has it."""
    return ["nsenter", f"--net={netns or cluster.pod_netns(ns, pod)}", "--", *argv]


@dataclass(frozen=True, order=True)
class Probe:
    """One connection attempt: from pod ``src`` (``ns/name``) to ``host``:``port``."""

    src: str
    host: str
    port: int
    protocol: str = "tcp"  # tcp | udp

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6: [addr]:port
        return f"{host}:{self.port}"


def connect(cluster: NodeCluster, probe: Probe, *, timeout: float = 1.0) -> bool:
    """One ``netprobe connect`` from inside the source pod: True = connected/answered."""
    ns, pod = probe.src.split("/", 1)
    argv = [
        images(cluster).netprobe_bin,
        "connect",
        probe.protocol,
        probe.target,
        "--timeout",
        f"{int(timeout * 1000)}ms",
    ]
    result = subprocess.run(
        in_pod(cluster, ns, pod, argv), capture_output=True, text=True, timeout=timeout + 20
    )
    if result.returncode not in (0, 1):
        raise RuntimeError(
            f"netprobe connect {probe} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result.returncode == 0


def connect_all(
    cluster: NodeCluster, probes: Sequence[Probe], *, timeout: float = 1.0, workers: int = 16
) -> list[bool]:
    """Every probe at once (threads), results in the order given."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: connect(cluster, p, timeout=timeout), probes))


def loop_argv(
    binary: str,
    protocol: str,
    target: str,
    interval: str,
    timeout: str,
    *,
    duration: str | None = None,
) -> list[str]:
    argv = [binary, "loop", protocol, target, "--interval", interval, "--timeout", timeout]
    if duration:
        argv += ["--duration", duration]
    return argv


@dataclass
class LoopCount:
    """What a ``netprobe loop`` recorded: one entry per attempt, in order."""

    attempts: list[tuple[float, str, str]] = field(default_factory=list)  # (time, ok|fail, rest)

    @property
    def total(self) -> int:
        return len(self.attempts)

    @property
    def ok(self) -> int:
        """Attempts that got through (a TCP handshake completed, a UDP echo came back)."""
        return sum(1 for _, verdict, _ in self.attempts if verdict == "ok")

    @property
    def refused(self) -> int:
        """Failed attempts whose packet still reached the other side (RST: port closed)."""
        return sum(1 for _, verdict, rest in self.attempts if verdict != "ok" and "refused" in rest)

    @property
    def leaked(self) -> int:
        """Attempts whose packets reached the destination pod: ok + refused."""
        return self.ok + self.refused

    def leaks_in(self, start: float, end: float) -> int:
        return sum(
            1
            for t, verdict, rest in self.attempts
            if start <= t <= end and (verdict == "ok" or "refused" in rest)
        )

    @property
    def first(self) -> float:
        return self.attempts[0][0] if self.attempts else 0.0

    @property
    def last(self) -> float:
        return self.attempts[-1][0] if self.attempts else 0.0

    @property
    def max_gap(self) -> float:
        """The longest time between two consecutive attempts (s): a gap could hide a leak."""
        times = [t for t, _, _ in self.attempts]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def first_ok(self) -> float | None:
        return next((t for t, verdict, _ in self.attempts if verdict == "ok"), None)

    def last_leak(self) -> float | None:
        leaks = [t for t, v, rest in self.attempts if v == "ok" or "refused" in rest]
        return leaks[-1] if leaks else None


#: One attempt of ``netprobe loop``: ``<RFC 3339 stamp> <seq> ok|fail <ms> <reply or error>``.
_ATTEMPT = re.compile(r"^(\S+) (\d+) (ok|fail) (.*)$")


def parse_time(text: str) -> float | None:
    """A netprobe timestamp: RFC 3339 (any fraction) or Unix seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    cleaned = text.strip().replace("Z", "+00:00")
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", cleaned)
    if not match:
        return None
    head, fraction, zone = match.groups()
    try:
        stamp = datetime.datetime.fromisoformat(head + (zone or "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp() + (float(fraction) if fraction else 0.0)


def parse_loop(output: str) -> LoopCount:
    """The attempts in ``netprobe loop`` output (other lines, e.g. its summary, skipped)."""
    count = LoopCount()
    for line in output.splitlines():
        match = _ATTEMPT.match(line.strip())
        stamp = parse_time(match.group(1)) if match else None
        if match and stamp is not None:
            count.attempts.append((stamp, match.group(3), match.group(4).lower()))
    return count


class Loop:
    """A continuous probe from inside a pod, run from this host until :meth:`stop`."""

    def __init__(
        self,
        cluster: NodeCluster,
        probe: Probe,
        *,
        interval: str = "20ms",
        timeout: str = "50ms",
        netns: str | None = None,
    ) -> None:
        ns, pod = probe.src.split("/", 1)
        self.probe = probe
        argv = loop_argv(
            images(cluster).netprobe_bin, probe.protocol, probe.target, interval, timeout
        )
        self.argv = in_pod(cluster, ns, pod, argv, netns=netns)
        self._proc: subprocess.Popen[str] | None = None
        self._out: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> Loop:
        self._proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        proc = self._proc

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self._out.append(line)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        return self

    def so_far(self) -> LoopCount:
        return parse_loop("".join(list(self._out)))

    def stop(self) -> LoopCount:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        return parse_loop("".join(self._out))

    def __enter__(self) -> Loop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(what: str, check: Any, *, timeout: float = 30, interval: float = 0.25) -> Any:
    """Poll ``check()`` until it returns something truthy; raise naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------ explain
STATE_KINDS = "namespaces,pods,networkpolicies,nodes,clusternetworkpolicies"


def dump_state(cluster: NodeCluster, path: Path) -> Path:
    """The live objects explain reads, as ``kubectl get -A -o yaml`` prints them."""
    path.write_text(cluster.kubectl("get", STATE_KINDS, "-A", "-o", "yaml"))
    return path


@dataclass(frozen=True)
class Explained:
    allowed: bool
    detail: JSON

    def why(self) -> str:
        sides = []
        for side in ("egress", "ingress"):
            verdict = self.detail.get(side)
            if verdict:
                sides.append(f"{side}: {verdict['reason']}")
        return "; ".join(sides)


def explain(
    state: Path,
    src: str,
    dst: str,
    port: int,
    protocol: str = "TCP",
    *,
    family: str | None = None,
) -> Explained:
    """``netpol-agent explain -f STATE --from SRC --to DST --port PORT/PROTO --json``.

    ``src``/``dst`` are ``ns/pod`` or an IP address, as on the command line; ``family``
    (``ipv6`` on an IPv6 cluster) is passed as ``--family`` (explain's default: ipv4)."""
    from agent.cli import main

    argv = [
        "explain",
        "-f",
        str(state),
        "--from",
        src,
        "--to",
        dst,
        "--port",
        f"{port}/{protocol.upper()}",
        *(["--family", family] if family else []),
        "--json",
    ]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    if code not in (0, 1):
        raise RuntimeError(f"netpol-agent {shlex.join(argv)} exited {code}: {err.getvalue()}")
    detail: JSON = json.loads(out.getvalue())
    if detail["allowed"] != (code == 0):
        raise RuntimeError(f"explain's exit code {code} disagrees with its JSON: {detail}")
    return Explained(bool(detail["allowed"]), detail)


# ------------------------------------------------------------------------------ the agent
def rule_log(cluster: NodeCluster, node: str) -> list[JSON]:
    """The node's rule-change log (current file only), one dict per line."""
    for candidate in cluster.nodes:
        if candidate.name == node:
            path = Path(candidate.var_log) / RULE_LOG
            break
    else:
        raise KeyError(node)
    if not path.exists():
        return []
    entries: list[JSON] = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries


def log_time(entry: Mapping[str, Any]) -> float:
    stamp = parse_time(str(entry["ts"]))
    assert stamp is not None, entry
    return stamp


def agent_rolled_out(cluster: NodeCluster, timeout: float = 180) -> None:
    cluster.kubectl(
        "-n", AGENT_NAMESPACE, "rollout", "status", "ds/netpol-agent", f"--timeout={int(timeout)}s"
    )


# ------------------------------------------------------------------------------ output
def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table (it goes into notes as is)."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ counting
class PacketCounter:
    """Counts the packets of one pair (``src_ip`` -> pod ``ns/pod``, protocol and port)
    that reach the destination pod's own network stack.

    One counting rule (no target) at the top of INPUT in the *pod's* network namespace
    (never the node's): whatever the node let through, this sees.
    """

    def __init__(
        self, cluster: NodeCluster, ns: str, pod: str, src_ip: str, protocol: str, port: int
    ) -> None:
        self.cluster, self.ns, self.pod = cluster, ns, pod
        self.comment = f"netpol-agent-test-count-{secrets.token_hex(4)}"
        self.rule = [
            "INPUT",
            "-s",
            f"{src_ip}/32",
            "-p",
            protocol,
            "--dport",
            str(port),
            "-m",
            "comment",
            "--comment",
            self.comment,
        ]

    def _iptables(self, *args: str) -> str:
        argv = in_pod(self.cluster, self.ns, self.pod, ["iptables", "-w", *args])
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    def install(self) -> PacketCounter:
        self._iptables("-I", *self.rule)
        return self

    def remove(self) -> None:
        self._iptables("-D", *self.rule)

    def packets(self) -> int:
        for line in self._iptables("-nvxL", "INPUT").splitlines():
            if self.comment in line:
                return int(line.split()[0])
        raise AssertionError(f"counting rule {self.comment} gone from {self.ns}/{self.pod}")


# ------------------------------------------------------------------------------ matrices
@dataclass
class Cell:
    probe: Probe
    dst: str
    observed: bool
    explained: bool
    why: str


def probe_matrix(
    cluster: NodeCluster,
    ips: Mapping[str, str],
    state: Path,
    pods: Sequence[str],
    ports: Sequence[tuple[int, str]],
    *,
    settle: float = 20.0,
    family: str | None = None,
) -> tuple[list[Cell], int]:
    """Probe every ordered pair of ``pods`` on ``ports`` until all equal explain (for the
    live objects, dumped to ``state``; ``family`` as for :func:`explain`) or ``settle``
    seconds pass; (cells, rounds)."""
    dump_state(cluster, state)
    cells = []
    for src in pods:
        for dst in pods:
            if src == dst:
                continue
            for port, proto in ports:
                probe = Probe(src, ips[dst], port, proto)
                verdict = explain(state, src, dst, port, proto, family=family)
                cells.append(Cell(probe, dst, False, verdict.allowed, verdict.why()))
    pending = list(range(len(cells)))
    deadline = time.monotonic() + settle
    rounds = 0
    while pending:
        rounds += 1
        results = connect_all(cluster, [cells[i].probe for i in pending])
        for i, observed in zip(pending, results, strict=True):
            cells[i].observed = observed
        pending = [i for i in pending if cells[i].observed != cells[i].explained]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return cells, rounds


def render_matrix(
    title: str,
    cells: Sequence[Cell],
    pods: Sequence[str],
    short: Mapping[str, str],
    ports: Sequence[tuple[int, str]],
) -> str:
    """Rows: source; columns: destination; a cell per port, observed (explain if not
    equal)."""

    def mark(allowed: bool) -> str:
        return "ok" if allowed else "--"

    rows = []
    for src in pods:
        row = [short[src]]
        for dst in pods:
            if src == dst:
                row.append("")
                continue
            parts = []
            for port, proto in ports:
                cell = next(
                    c
                    for c in cells
                    if c.probe.src == src
                    and c.dst == dst
                    and (c.probe.port, c.probe.protocol) == (port, proto)
                )
                text = mark(cell.observed)
                if cell.observed != cell.explained:
                    text += f"(explain {mark(cell.explained)})"
                parts.append(text)
            row.append(" ".join(parts))
        rows.append(row)
    described = ", ".join(f"{proto.upper()} {port}" for port, proto in ports)
    header = [f"from \\ to ({described})", *(short[p] for p in pods)]
    return f"### Step {title}\n\n" + table(header, rows)
