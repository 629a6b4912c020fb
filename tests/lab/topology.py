"""The lab topology: Kubernetes nodes and pods as network namespaces on this machine.

Layout (default spec = the upstream netpol e2e model)::

    ext netns ──┐                       (external host, 192.168.250.100 / fd00:250::64)
                │
    wan netns: bridge <p>wbr  ── node-1 netns (<p>wan 192.168.250.11)   ── node-2 netns (.12)
                                   bridge <p>br 10.244.1.1/24, fd00:10:244:1::1/64
                                     ├─ veth <p>v0 ── pod netns x/a (<p>eth 10.244.1.10)
                                     └─ …

Every node netns runs br_netfilter (``bridge-nf-call-ip(6)tables=1``) and forwards v4 and v6,
so pod-to-pod traffic on one node crosses iptables FORWARD like with the bridge CNI, and
cross-node traffic is routed through FORWARD of both nodes.  All names (netns, interfaces,
bridges, iptables chains made by the lab) start with a run-unique prefix; nothing in the root
namespace is changed (veths are created directly inside the namespaces).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import shutil
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from tests.lab import nsutil
from tests.lab.nsutil import LabCommandError, ip_batch, run, write_sysctl
from tests.lab.servers import ServerThread

log = logging.getLogger(__name__)

Backend = Literal["nft", "legacy", "iptc"]
Protocol = Literal["TCP", "UDP", "SCTP"]
Kind = Literal["pod", "node", "external", "service"]

WAN_V4 = "192.168.250"
WAN_V6 = "fd00:250:"
EXTERNAL_NAME = "ext"


# --------------------------------------------------------------------------------------------
# declarative spec
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContainerPort:
    """A port a pod serves.  ``name=""``: served but not declared in the Pod object (like
    a container listening on a port its spec does not list)."""

    name: str
    port: int
    protocol: Protocol


def e2e_ports(ports: Iterable[int] = (80, 81)) -> tuple[ContainerPort, ...]:
    """Container ports exactly like upstream e2e: ``serve-80-tcp``, ``serve-80-udp`` …"""
    out: list[ContainerPort] = []
    for port in ports:
        protos: tuple[Protocol, ...] = ("TCP", "UDP", "SCTP")
        for proto in protos:
            out.append(ContainerPort(f"serve-{port}-{proto.lower()}", port, proto))
    return tuple(out)


E2E_PORTS = e2e_ports()


@dataclass(frozen=True)
class NamespaceSpec:
    name: str
    labels: Mapping[str, str] | None = None  # default {"ns": name}

    def effective_labels(self) -> dict[str, str]:
        labels = dict(self.labels) if self.labels is not None else {"ns": self.name}
        labels.setdefault("kubernetes.io/metadata.name", self.name)
        return labels


@dataclass(frozen=True)
class PodSpec:
    namespace: str
    name: str
    node: str
    labels: Mapping[str, str] | None = None  # default {"pod": name}
    ports: tuple[ContainerPort, ...] = E2E_PORTS

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def effective_labels(self) -> dict[str, str]:
        return dict(self.labels) if self.labels is not None else {"pod": self.name}


@dataclass(frozen=True)
class LabSpec:
    nodes: tuple[str, ...]
    namespaces: tuple[NamespaceSpec, ...]
    pods: tuple[PodSpec, ...]
    external: bool = True
    # extra labels of the Node objects (every node has ``kubernetes.io/hostname``)
    node_labels: Mapping[str, Mapping[str, str]] | None = None
    # ports served in every node's own namespace (what hostNetwork pods would listen on)
    node_ports: tuple[ContainerPort, ...] = ()

    def validate(self) -> None:
        if len(self.nodes) > 200:
            raise ValueError("too many nodes")
        ns_names = {n.name for n in self.namespaces}
        seen: set[str] = set()
        for pod in self.pods:
            if pod.namespace not in ns_names:
                raise ValueError(f"pod {pod.key}: unknown namespace")
            if pod.node not in self.nodes:
                raise ValueError(f"pod {pod.key}: unknown node {pod.node}")
            if pod.key in seen:
                raise ValueError(f"duplicate pod {pod.key}")
            seen.add(pod.key)
        unknown_nodes = set(self.node_labels or {}) - set(self.nodes)
        if unknown_nodes:
            raise ValueError(f"labels for unknown nodes {sorted(unknown_nodes)}")
        if len(self.pods) > 999:
            raise ValueError("too many pods")


# e2e model: x/a x/b y/a y/c z/b on node-1; x/c y/b z/a z/c on node-2
DEFAULT_PLACEMENT: Mapping[str, str] = {
    "x/a": "node-1", "x/b": "node-1", "x/c": "node-2",
    "y/a": "node-1", "y/b": "node-2", "y/c": "node-1",
    "z/a": "node-2", "z/b": "node-1", "z/c": "node-2",
}  # fmt: skip


def default_spec() -> LabSpec:
    pods = tuple(
        PodSpec(ns, pod, DEFAULT_PLACEMENT[f"{ns}/{pod}"]) for ns in "xyz" for pod in "abc"
    )
    return LabSpec(
        nodes=("node-1", "node-2"),
        namespaces=tuple(NamespaceSpec(ns) for ns in "xyz"),
        pods=pods,
    )


# --------------------------------------------------------------------------------------------
# runtime model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """Something that can send or receive probes: a pod, a node, the external host."""

    name: str  # "x/a", "node-1", "ext"
    netns: str
    ipv4: str
    ipv6: str
    kind: Kind

    def ip(self, family: int) -> str:
        if family == 4:
            return self.ipv4
        if family == 6:
            return self.ipv6
        raise ValueError(f"family must be 4 or 6, not {family}")


@dataclass(frozen=True)
class NodeInfo:
    name: str
    index: int  # 1-based; pod CIDR 10.244.<index>.0/24
    netns: str
    wan_v4: str
    wan_v6: str
    pod_cidr_v4: str
    pod_cidr_v6: str
    gateway_v4: str
    gateway_v6: str

    def endpoint(self) -> Endpoint:
        return Endpoint(self.name, self.netns, self.wan_v4, self.wan_v6, "node")


@dataclass(frozen=True)
class PodInfo:
    spec: PodSpec
    netns: str
    ipv4: str
    ipv6: str
    uid: str
    host_ifname: str

    @property
    def key(self) -> str:
        return self.spec.key

    def ip(self, family: int) -> str:
        return self.endpoint().ip(family)

    def endpoint(self) -> Endpoint:
        return Endpoint(self.key, self.netns, self.ipv4, self.ipv6, "pod")


def make_prefix() -> str:
    """``l`` + 4 digits of the PID + 2 random letters: 7 chars, leaving 8 for interface names."""
    rnd = "".join(random.choices(string.ascii_lowercase, k=2))
    return f"l{os.getpid() % 10000:04d}{rnd}"


_LIVE_LABS: set[Lab] = set()
_LIVE_LOCK = threading.Lock()


def _atexit_cleanup() -> None:
    with _LIVE_LOCK:
        labs = list(_LIVE_LABS)
    for lab in labs:
        with contextlib.suppress(Exception):
            lab.close()


atexit.register(_atexit_cleanup)


def remove_prefix(prefix: str) -> list[str]:
    """Delete every netns named ``<prefix>-*`` and root-netns links named ``<prefix>*``.

    The safety net for crashed runs; returns what it removed.
    """
    if len(prefix) < 5:
        raise ValueError("refusing a prefix this short")
    removed: list[str] = []
    for name in nsutil.list_netns():
        if name.startswith(prefix + "-"):
            proc = run(["ip", "netns", "del", name], check=False)
            if proc.returncode == 0:
                removed.append(name)
    proc = run(["ip", "-o", "link", "show"], check=False)
    for line in proc.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) < 3:
            continue
        ifname = parts[1].strip().split("@", 1)[0]
        if (
            ifname.startswith(prefix)
            and run(["ip", "link", "del", ifname], check=False).returncode == 0
        ):
            removed.append(ifname)
    return removed


def _venv_bin(tool: str) -> str:
    # sys.executable is <venv>/bin/python; do not resolve symlinks (that leaves the venv)
    return str(Path(sys.executable).parent / tool)


class Lab:
    """Nodes + pods + external host as network namespaces.  Use as a context manager."""

    def __init__(self, spec: LabSpec | None = None, *, prefix: str | None = None) -> None:
        self.spec = spec or default_spec()
        self.spec.validate()
        self.prefix = prefix or make_prefix()
        p = self.prefix
        self.wan_netns = f"{p}-wan"
        self.nodes: dict[str, NodeInfo] = {}
        for i, node_name in enumerate(self.spec.nodes, start=1):
            self.nodes[node_name] = NodeInfo(
                name=node_name,
                index=i,
                netns=f"{p}-{node_name}",
                wan_v4=f"{WAN_V4}.{10 + i}",
                wan_v6=f"{WAN_V6}:{10 + i:x}",
                pod_cidr_v4=f"10.244.{i}.0/24",
                pod_cidr_v6=f"fd00:10:244:{i:x}::/64",
                gateway_v4=f"10.244.{i}.1",
                gateway_v6=f"fd00:10:244:{i:x}::1",
            )
        self.pods: dict[str, PodInfo] = {}
        per_node: dict[str, int] = {}
        for idx, pod in enumerate(self.spec.pods):
            index = self.nodes[pod.node].index
            k = per_node.get(pod.node, 0)
            per_node[pod.node] = k + 1
            self.pods[pod.key] = PodInfo(
                spec=pod,
                netns=f"{p}-{pod.namespace}-{pod.name}",
                ipv4=f"10.244.{index}.{10 + k}",
                ipv6=f"fd00:10:244:{index:x}::{10 + k:x}",
                uid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"netpol-lab/pod/{pod.key}")),
                host_ifname=f"{p}v{idx}",
            )
        self.external: Endpoint | None = (
            Endpoint(EXTERNAL_NAME, f"{p}-ext", f"{WAN_V4}.100", f"{WAN_V6}:64", "external")
            if self.spec.external
            else None
        )
        # mutable labels (tests update them, objects() reflects the change)
        self.pod_labels: dict[str, dict[str, str]] = {
            k: v.spec.effective_labels() for k, v in self.pods.items()
        }
        self.namespace_labels: dict[str, dict[str, str]] = {
            n.name: n.effective_labels() for n in self.spec.namespaces
        }
        self.servers: ServerThread | None = None
        self.workdir: Path | None = None
        self._closed = False
        self._started = False

    # ---------------------------------------------------------------------------- lookups
    def all_netns(self) -> list[str]:
        names = [self.wan_netns, *(n.netns for n in self.nodes.values())]
        names += [p.netns for p in self.pods.values()]
        if self.external:
            names.append(self.external.netns)
        return names

    def pod(self, key: str) -> PodInfo:
        return self.pods[key]

    def node(self, name: str) -> NodeInfo:
        return self.nodes[name]

    def node_of(self, pod_key: str) -> NodeInfo:
        return self.nodes[self.pods[pod_key].spec.node]

    def endpoint(self, name: str) -> Endpoint:
        if name in self.pods:
            return self.pods[name].endpoint()
        if name in self.nodes:
            return self.nodes[name].endpoint()
        if self.external and name == self.external.name:
            return self.external
        raise KeyError(name)

    def pod_endpoints(self) -> list[Endpoint]:
        return [p.endpoint() for p in self.pods.values()]

    def endpoints(self, *, external: bool = True, nodes: bool = False) -> list[Endpoint]:
        """Pods in spec order, then (optionally) the nodes and the external host."""
        out = self.pod_endpoints()
        if nodes:
            out += [n.endpoint() for n in self.nodes.values()]
        if external and self.external:
            out.append(self.external)
        return out

    # ---------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        with _LIVE_LOCK:
            _LIVE_LABS.add(self)
        try:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
            self._build_network()
            self.servers = ServerThread()
            self._start_servers()
            self.wait_ready()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.servers is not None:
                self.servers.close()
                self.servers = None
        finally:
            leftovers = remove_prefix(self.prefix)
            log.debug("lab %s removed %s", self.prefix, leftovers)
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
            with _LIVE_LOCK:
                _LIVE_LABS.discard(self)

    def _build_network(self) -> None:
        p = self.prefix
        ip_batch([f"netns add {name}" for name in self.all_netns()])
        common = {
            "net.ipv6.conf.all.accept_dad": "0",
            "net.ipv6.conf.default.accept_dad": "0",
            "net.ipv6.conf.all.disable_ipv6": "0",
            "net.ipv6.conf.default.disable_ipv6": "0",
        }
        for name in self.all_netns():
            write_sysctl(name, common)
        node_sysctl = {
            "net.ipv4.ip_forward": "1",
            "net.ipv6.conf.all.forwarding": "1",
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
            "net.bridge.bridge-nf-call-iptables": "1",
            "net.bridge.bridge-nf-call-ip6tables": "1",
        }
        for node in self.nodes.values():
            write_sysctl(node.netns, node_sysctl)
        write_sysctl(
            self.wan_netns,
            {
                "net.bridge.bridge-nf-call-iptables": "0",
                "net.bridge.bridge-nf-call-ip6tables": "0",
            },
        )

        # wan: a plain bridge
        wbr = f"{p}wbr"
        ip_batch(
            [
                "link set lo up",
                f"link add name {wbr} type bridge stp_state 0 mcast_snooping 0",
                f"link set {wbr} up",
            ],
            netns=self.wan_netns,
        )
        wan_ports: list[str] = []

        for node in self.nodes.values():
            br = f"{p}br"
            port = f"{p}n{node.index}"
            wan_ports.append(port)
            cmds = [
                "link set lo up",
                # A fixed address: a bridge without one takes its lowest port's, so a pod
                # veth joining later with a lower one would change the pods' gateway MAC
                # under their neighbour caches (their frames then miss the router).
                f"link add name {br} address 02:6e:62:00:00:{node.index:02x} type bridge"
                " stp_state 0 mcast_snooping 0 nf_call_iptables 1 nf_call_ip6tables 1",
                f"addr add {node.gateway_v4}/24 dev {br}",
                f"addr add {node.gateway_v6}/64 dev {br} nodad",
                f"link set {br} up",
                f"link add name {p}wan type veth peer name {port} netns {self.wan_netns}",
                f"addr add {node.wan_v4}/24 dev {p}wan",
                f"addr add {node.wan_v6}/64 dev {p}wan nodad",
                f"link set {p}wan up",
            ]
            for other in self.nodes.values():
                if other is node:
                    continue
                cmds.append(f"route add {other.pod_cidr_v4} via {other.wan_v4}")
                cmds.append(f"route add {other.pod_cidr_v6} via {other.wan_v6}")
            for pod in self.pods.values():
                if pod.spec.node != node.name:
                    continue
                cmds += [
                    f"link add name {pod.host_ifname} type veth peer name {p}eth netns {pod.netns}",
                    f"link set {pod.host_ifname} master {br}",
                    f"link set {pod.host_ifname} up",
                ]
            ip_batch(cmds, netns=node.netns)

        if self.external:
            ext = self.external
            port = f"{p}x"
            wan_ports.append(port)
            cmds = [
                "link set lo up",
                f"link add name {p}wan type veth peer name {port} netns {self.wan_netns}",
                f"addr add {ext.ipv4}/24 dev {p}wan",
                f"addr add {ext.ipv6}/64 dev {p}wan nodad",
                f"link set {p}wan up",
            ]
            for node in self.nodes.values():
                cmds.append(f"route add {node.pod_cidr_v4} via {node.wan_v4}")
                cmds.append(f"route add {node.pod_cidr_v6} via {node.wan_v6}")
            ip_batch(cmds, netns=ext.netns)

        ip_batch(
            [
                c
                for port in wan_ports
                for c in (f"link set {port} master {wbr}", f"link set {port} up")
            ],
            netns=self.wan_netns,
        )

        for pod in self.pods.values():
            node = self.nodes[pod.spec.node]
            ip_batch(
                [
                    "link set lo up",
                    f"addr add {pod.ipv4}/24 dev {p}eth",
                    f"addr add {pod.ipv6}/64 dev {p}eth nodad",
                    f"link set {p}eth up",
                    f"route add default via {node.gateway_v4}",
                    f"route add ::/0 via {node.gateway_v6}",
                ],
                netns=pod.netns,
            )

    def _start_servers(self) -> None:
        assert self.servers is not None
        for pod in self.pods.values():
            for cp in pod.spec.ports:
                if cp.protocol in ("TCP", "UDP"):
                    self.servers.listen(pod.key, pod.netns, cp.port, cp.protocol)
        others = [n.endpoint() for n in self.nodes.values()]
        if self.external:
            others.append(self.external)
        for ep in others:
            for port in (80, 81):
                for proto in ("TCP", "UDP"):
                    self.servers.listen(ep.name, ep.netns, port, proto)
        for node in self.nodes.values():
            for cp in self.spec.node_ports:
                if cp.protocol in ("TCP", "UDP"):
                    self.servers.listen(node.name, node.netns, cp.port, cp.protocol)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Probe UDP 80 between every pair of endpoints (v4 and v6) until all answer.

        Right after creation, the first packets between namespaces can be lost while
        neighbour discovery settles; this also warms the neighbour caches so the first real
        matrix is not flaky.  Raises if the lab never becomes fully connected.
        """
        from tests.lab.prober import Probe, Prober

        eps = self.endpoints(external=True, nodes=True)
        prober = Prober(eps, timeout=0.5)
        todo = [
            Probe(s.name, d.name, self._ready_port(d), "UDP", fam)
            for fam in (4, 6)
            for s in eps
            for d in eps
        ]
        deadline = time.monotonic() + timeout
        while True:
            m = prober.run(todo)
            todo = [p for p, r in m.results.items() if not r.allowed]
            if not todo:
                return
            if time.monotonic() > deadline:
                detail = "\n".join(f"  {p}: {m.results[p]}" for p in todo[:20])
                raise RuntimeError(f"lab {self.prefix} not fully connected:\n{detail}")

    def _ready_port(self, endpoint: Endpoint) -> int:
        """The UDP port wait_ready probes: a pod's first UDP port (80 in the e2e model),
        80 on nodes and the external host."""
        if endpoint.kind == "pod":
            udp = [cp.port for cp in self.pods[endpoint.name].spec.ports if cp.protocol == "UDP"]
            if not udp:
                raise ValueError(f"pod {endpoint.name} serves no UDP port to check it with")
            return udp[0]
        return 80

    def serve(self, endpoint: str, port: int, protocol: Protocol) -> None:
        """Serve an extra TCP/UDP port on a pod or the external host (SCTP needs nothing:
        the prober's raw receivers see INITs to any port)."""
        if protocol == "SCTP":
            return
        assert self.servers is not None, "lab not started"
        ep = self.endpoint(endpoint)
        self.servers.listen(ep.name, ep.netns, port, protocol)

    # ---------------------------------------------------------------------------- labels
    def set_pod_labels(self, pod_key: str, labels: Mapping[str, str]) -> None:
        self.pod_labels[pod_key] = dict(labels)

    def set_namespace_labels(self, namespace: str, labels: Mapping[str, str]) -> None:
        new = dict(labels)
        new.setdefault("kubernetes.io/metadata.name", namespace)
        self.namespace_labels[namespace] = new

    # ---------------------------------------------------------------------------- k8s objects
    def objects(self) -> list[dict[str, Any]]:
        """Namespaces, Pods and Nodes of the topology, shaped like API JSON (camelCase)."""
        out: list[dict[str, Any]] = []
        for ns in self.spec.namespaces:
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "name": ns.name,
                        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"netpol-lab/ns/{ns.name}")),
                        "labels": dict(self.namespace_labels[ns.name]),
                    },
                    "status": {"phase": "Active"},
                }
            )
        for node in self.nodes.values():
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": node.name,
                        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"netpol-lab/node/{node.name}")),
                        "labels": {
                            **(self.spec.node_labels or {}).get(node.name, {}),
                            "kubernetes.io/hostname": node.name,
                        },
                    },
                    "spec": {
                        "podCIDR": node.pod_cidr_v4,
                        "podCIDRs": [node.pod_cidr_v4, node.pod_cidr_v6],
                    },
                    "status": {
                        "addresses": [
                            {"type": "InternalIP", "address": node.wan_v4},
                            {"type": "InternalIP", "address": node.wan_v6},
                            {"type": "Hostname", "address": node.name},
                        ]
                    },
                }
            )
        for pod in self.pods.values():
            node = self.nodes[pod.spec.node]
            containers: list[dict[str, Any]] = [
                {
                    "name": f"cont-{cp.port}-{cp.protocol.lower()}",
                    "image": "registry.k8s.io/e2e-test-images/agnhost:2.47",
                }
                for cp in pod.spec.ports
            ]
            for container, cp in zip(containers, pod.spec.ports, strict=True):
                if cp.name:
                    container["ports"] = [
                        {"name": cp.name, "containerPort": cp.port, "protocol": cp.protocol}
                    ]
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "namespace": pod.spec.namespace,
                        "name": pod.spec.name,
                        "uid": pod.uid,
                        "labels": dict(self.pod_labels[pod.key]),
                    },
                    "spec": {"nodeName": node.name, "containers": containers},
                    "status": {
                        "phase": "Running",
                        "hostIP": node.wan_v4,
                        "hostIPs": [{"ip": node.wan_v4}, {"ip": node.wan_v6}],
                        "podIP": pod.ipv4,
                        "podIPs": [{"ip": pod.ipv4}, {"ip": pod.ipv6}],
                    },
                }
            )
        return out

    def write_state(
        self, path: str | os.PathLike[str], extra_objects: Iterable[Mapping[str, Any]] = ()
    ) -> Path:
        """Write objects() + extra objects (e.g. NetworkPolicies) as multi-document YAML."""
        docs = [*self.objects(), *(dict(o) for o in extra_objects)]
        target = Path(path)
        target.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return target

    # ---------------------------------------------------------------------------- agent
    def agent_argv(
        self, node: str, state_path: str | os.PathLike[str], *, backend: Backend,
        extra_args: Sequence[str] = (),
    ) -> list[str]:  # fmt: skip
        return [
            "ip", "netns", "exec", self.nodes[node].netns,
            _venv_bin("netpol-agent"), "run", "--once",
            "--node", node,
            "--source-file", str(state_path),
            "--backend", backend,
            "--chain-prefix", self.prefix,
            *extra_args,
        ]  # fmt: skip

    def run_agent(
        self, node: str, state_path: str | os.PathLike[str], *, backend: Backend,
        extra_args: Sequence[str] = (), timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        argv = self.agent_argv(node, state_path, backend=backend, extra_args=extra_args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def apply(
        self, objects: Iterable[Mapping[str, Any]], backend: Backend,
        extra_args: Sequence[str] = (), timeout: float = 120.0,
    ) -> list[subprocess.CompletedProcess[str]]:  # fmt: skip
        """Write the state file (topology + ``objects``) and run the agent once on every node
        (all nodes concurrently).  Raises :class:`LabCommandError` (with stderr) unless every
        run exits 0."""
        assert self.workdir is not None, "lab not started"
        state = self.write_state(self.workdir / "state.yaml", objects)
        argvs = [
            self.agent_argv(node, state, backend=backend, extra_args=extra_args)
            for node in self.nodes
        ]
        procs = [
            subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for a in argvs
        ]
        results: list[subprocess.CompletedProcess[str]] = []
        for argv, proc in zip(argvs, procs, strict=True):
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()  # our own child, by PID
                out, err = proc.communicate()
            results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
        for res in results:
            if res.returncode != 0:
                raise LabCommandError(res.args, res.returncode, res.stdout, res.stderr)
        return results

    # ---------------------------------------------------------------------------- firewall
    def iptables(
        self, node: str, *args: str, family: int = 4, flavor: Literal["nft", "legacy"] = "nft",
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run ``iptables-<flavor>`` (or ip6tables) with ``-w`` inside a node netns."""
        tool = f"{'ip6tables' if family == 6 else 'iptables'}-{flavor}"
        return run([tool, "-w", *args], netns=self.nodes[node].netns, check=check)

    def lab_comment(self) -> list[str]:
        """``-m comment`` arguments tagging a hand-written rule so reset_firewall removes it."""
        return ["-m", "comment", "--comment", f"{self.prefix}-lab"]

    def reset_firewall(self) -> None:
        """Remove every chain named ``<prefix>…`` and every rule jumping to one (or tagged with
        the prefix in a comment), for iptables-legacy and iptables-nft, v4 and v6, all tables,
        in every node netns; delete nft tables named ``<prefix>…``; flush conntrack."""
        for node in self.nodes.values():
            for flavor in ("legacy", "nft"):
                for fam in ("iptables", "ip6tables"):
                    _reset_iptables(node.netns, f"{fam}-{flavor}", self.prefix)
            _reset_nft_tables(node.netns, self.prefix)
        self.flush_conntrack()

    def flush_conntrack(self) -> None:
        for node in self.nodes.values():
            for fam in ("ipv4", "ipv6"):
                run(["conntrack", "-F", "-f", fam], netns=node.netns, check=False)

    def ruleset_dump(self, node: str) -> str:
        """All iptables (legacy+nft, v4+v6) rules of a node, for failure messages."""
        parts = []
        for flavor in ("legacy", "nft"):
            for fam in ("iptables", "ip6tables"):
                proc = run([f"{fam}-{flavor}-save"], netns=self.nodes[node].netns, check=False)
                parts.append(f"### {fam}-{flavor}-save\n{proc.stdout}{proc.stderr}")
        return "\n".join(parts)


def _reset_iptables(netns: str, tool: str, prefix: str) -> None:
    proc = run([f"{tool}-save"], netns=netns, check=False)
    if proc.returncode != 0:
        return
    lines: list[str] = []
    table: str | None = None
    chains: list[str] = []
    deletes: list[str] = []

    def flush_table() -> None:
        if table is not None and (chains or deletes):
            lines.append(f"*{table}")
            lines.extend(deletes)
            lines.extend(f"-F {c}" for c in chains)
            lines.extend(f"-X {c}" for c in chains)
            lines.append("COMMIT")

    for raw in proc.stdout.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            flush_table()
            table, chains, deletes = line[1:], [], []
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith(prefix):
                chains.append(name)
        elif line.startswith("-A "):
            chain = line.split()[1]
            if not chain.startswith(prefix) and prefix in line:
                deletes.append("-D " + line[3:])
        elif line == "COMMIT":
            flush_table()
            table, chains, deletes = None, [], []
    if lines:
        run([f"{tool}-restore", "-w", "--noflush"], netns=netns, input_text="\n".join(lines) + "\n")


def _reset_nft_tables(netns: str, prefix: str) -> None:
    if shutil.which("nft") is None:
        return
    proc = run(["nft", "list", "tables"], netns=netns, check=False)
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and parts[2].startswith(prefix):
            run(["nft", "delete", "table", parts[1], parts[2]], netns=netns, check=False)


__all__ = [
    "E2E_PORTS",
    "EXTERNAL_NAME",
    "Backend",
    "ContainerPort",
    "Endpoint",
    "Lab",
    "LabSpec",
    "NamespaceSpec",
    "NodeInfo",
    "PodInfo",
    "PodSpec",
    "Protocol",
    "default_spec",
    "e2e_ports",
    "make_prefix",
    "remove_prefix",
]
