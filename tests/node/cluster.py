"""A three-node Kubernetes cluster made of real parts, the way kind builds one.

:class:`NodeCluster` runs, on this machine and without containers for the nodes:

* a "fabric" network namespace with one bridge: the nodes' L2 segment (172.18.0.0/16,
  like kind's docker network), and an "outside" namespace on it (172.18.0.1, a host
  that is not a node, and the nodes' default gateway);
* three nodes, ``netpol-control-plane``, ``netpol-worker`` and ``netpol-worker2``
  (kind's names for a cluster called ``netpol``). Each is a network namespace plus a
  private mount namespace (held by a ``sleep`` started with ``unshare --mount``) in which
  ``/run`` and ``/var/lib`` are fresh tmpfs mounts (``/var/lib/containerd`` stays on it)
  and per-node directories are bind-mounted over ``/var/lib/kubelet``, ``/var/lib/cni``,
  ``/run/containerd``, ``/etc/cni/net.d``, ``/var/log`` and ``/opt`` (its ``/opt/cni/bin``,
  containerd's CNI ``bin_dir``, holds copies of this machine's bridge, host-local, portmap
  and loopback plugins, so an install-cni init container writes there). Each node
  runs containerd, a kubelet (with its own cgroupRoot) and kube-proxy (iptables mode),
  all started with ``nsenter --mount=... --net=...``;
* the control plane in the control-plane node's network namespace: etcd and
  kube-apiserver (:class:`tests.cluster.controlplane.ControlPlane`), kube-controller-manager
  (node IPAM, service accounts and their tokens, the root CA ConfigMap, DaemonSets,
  Deployments, StatefulSets, EndpointSlices, namespaces, garbage collection) and kube-scheduler;
* pod networking like kindnet's: a ``bridge`` + ``host-local`` conflist with the node's
  podCIDR (allocated by the controller-manager) and ``portmap``, and routes on every node
  (and in the outside namespace) to the other nodes' podCIDRs via their node IPs.

``NodeCluster(ip_family="ipv6")`` builds all of it IPv6 single-stack instead, with kind's
ipv6 ranges (:data:`IPV6_LAYOUT`: fabric fc00:f853:ccd:e793::/64, pods fd00:10:244::/56,
Services fd00:10:96::/112); the default is IPv4 (:data:`IPV4_LAYOUT`).

The test process reaches the apiserver through a forwarder (:mod:`tests.node.forward`)
on 127.0.0.1; nothing is added to the machine's own network namespace.

Everything carries the run's prefix ``npn-<8 hex>``: the run directory
``/tmp/npn-<hex>/``, the network namespaces ``npn-<hex>-{fab,out,cp,w1,w2}`` and the
kubelets' cgroups ``/sys/fs/cgroup/<controller>/npn-<hex>-<node>``. :meth:`NodeCluster.stop`
(also at interpreter exit) kills what was started by PID: daemons, then every process in
the nodes' cgroups (the containers), then every process left in a node's mount and
network namespaces (the containerd shims, which are reparented away from containerd);
it removes the cgroups, the namespaces and the run directory. A run whose Python process
died is reaped the same way, from its ``state.json``, when the next one starts.

Run ``python -m tests.node.cluster`` to start one in the foreground (prints the
kubeconfig and the timings; Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from kubernetes import client as k8s_client

from tests.cluster.controlplane import (
    SERVICE_CIDR,
    SERVICE_IP,
    ControlPlane,
    _die_with_parent,
    _pid_alive,
    _tail,
    _terminate,
    build_binaries,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILD_SCRIPT = REPO / "tests" / "cluster" / "build.sh"
IMAGES_SCRIPT = HERE / "images.sh"
DEPLOY_DIR = REPO / "deploy"

RUN_PARENT = Path("/tmp")
PREFIX = "npn-"
OWNER_FILE = "owner.pid"
STATE_FILE = "state.json"
CGROUP_FS = Path("/sys/fs/cgroup")
#: Set to 1 to keep the run directory (logs, configs) after stop().
ENV_KEEP_DIR = "NETPOL_AGENT_KEEP_NODE_DIR"

#: The node's CNI directories, as on a kind node (and the paths deploy/cni mounts).
CNI_BIN_DIR = "/opt/cni/bin"
CNI_CONF_DIR = "/etc/cni/net.d"
#: This machine's reference CNI plugins (Debian's containernetworking-plugins); each node
#: gets copies of these in its own /opt/cni/bin.
HOST_CNI_PLUGINS = Path("/usr/lib/cni")
NODE_CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")

FABRIC_PREFIXLEN = 16
OUTSIDE_IP = "172.18.0.1"
CLUSTER_CIDR = "10.244.0.0/16"
APISERVER_PORT = 6443
AGENT_NAMESPACE = "netpol-agent"
AGENT_DAEMONSET = "netpol-agent"

#: (node name, short name used in namespace/cgroup names, node IP, is control plane)
NODE_LAYOUT: tuple[tuple[str, str, str, bool], ...] = (
    ("netpol-control-plane", "cp", "172.18.0.2", True),
    ("netpol-worker", "w1", "172.18.0.3", False),
    ("netpol-worker2", "w2", "172.18.0.4", False),
)


@dataclass(frozen=True)
class IPFamilyLayout:
    """The addresses of one single-stack cluster: fabric, pods, Services."""

    family: str  #: "ipv4" or "ipv6"
    fabric_prefixlen: int
    outside_ip: str
    node_ips: tuple[str, ...]  #: in NODE_LAYOUT's order
    cluster_cidr: str  #: controller-manager --cluster-cidr, kube-proxy clusterCIDR
    node_cidr_mask_flag: str  #: the controller-manager flag that sizes each node's podCIDR
    service_cidr: str
    service_ip: str  #: the ``kubernetes`` Service's ClusterIP (first address of the range)
    default_route: str  #: ``ip route`` destination of the nodes' default route


#: Today's cluster: kind's docker network, pod and Service ranges.
IPV4_LAYOUT = IPFamilyLayout(
    family="ipv4",
    fabric_prefixlen=FABRIC_PREFIXLEN,
    outside_ip=OUTSIDE_IP,
    node_ips=tuple(ip for _, _, ip, _ in NODE_LAYOUT),
    cluster_cidr=CLUSTER_CIDR,
    node_cidr_mask_flag="--node-cidr-mask-size=24",
    service_cidr=SERVICE_CIDR,
    service_ip=SERVICE_IP,
    default_route="default",
)
#: IPv6 single-stack, the ranges kind uses for ``networking.ipFamily: ipv6``: the docker
#: network's ULA fc00:f853:ccd:e793::/64, pods fd00:10:244::/56 (a /64 per node),
#: Services fd00:10:96::/112.
IPV6_LAYOUT = IPFamilyLayout(
    family="ipv6",
    fabric_prefixlen=64,
    outside_ip="fc00:f853:ccd:e793::1",
    node_ips=("fc00:f853:ccd:e793::2", "fc00:f853:ccd:e793::3", "fc00:f853:ccd:e793::4"),
    cluster_cidr="fd00:10:244::/56",
    node_cidr_mask_flag="--node-cidr-mask-size-ipv6=64",
    service_cidr="fd00:10:96::/112",
    service_ip="fd00:10:96::1",
    default_route="::/0",
)
IP_FAMILY_LAYOUTS = {layout.family: layout for layout in (IPV4_LAYOUT, IPV6_LAYOUT)}
#: The cluster's IP family when the caller does not say (``ipv4`` or ``ipv6``), e.g.
#: ``NETPOL_AGENT_NODE_IP_FAMILY=ipv6 pytest -m node tests/node``.
ENV_IP_FAMILY = "NETPOL_AGENT_NODE_IP_FAMILY"

#: The values the kubelet insists on (it would write them to the machine's kernel
#: otherwise); each node's mount namespace shows them through bind-mounted files.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}

#: Controllers the cluster needs (kube-controller-manager --controllers).
CONTROLLERS = (
    "daemonset-controller",
    "replicaset-controller",
    "deployment-controller",
    "statefulset-controller",  # the network-policy-api conformance suite's pods
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "node-ipam-controller",
    "node-lifecycle-controller",
    "pod-garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    "ttl-controller",
)


class NodeClusterError(RuntimeError):
    """The cluster could not be built, started, used or cleaned up."""


@dataclass
class Node:
    """One node: its namespaces, address, podCIDR and where its files are on this machine."""

    name: str
    short: str
    ip: str
    control_plane: bool
    netns: str  #: network namespace name (``ip netns``), ``/run/netns/<netns>``
    dir: Path  #: per-node directory in the run directory
    cgroup_root: str  #: the kubelet's cgroupRoot, e.g. ``/npn-1a2b3c4d-w1``
    pod_cidr: str = ""  #: filled in once the controller-manager has allocated it
    holder_pid: int = 0  #: the process holding the node's mount namespace

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def log_dir(self) -> Path:
        """Logs of the node's daemons (containerd.log, kubelet.log, kube-proxy.log)."""
        return self.dir / "logs"

    @property
    def var_log(self) -> Path:
        """The node's ``/var/log`` as a directory on this machine (hostPath /var/log)."""
        return self.dir / "root" / "var" / "log"

    @property
    def cni_bin_dir(self) -> Path:
        """The node's ``/opt/cni/bin`` as a directory on this machine."""
        return self.dir / "root" / CNI_BIN_DIR.lstrip("/")

    @property
    def cni_conf_dir(self) -> Path:
        """The node's ``/etc/cni/net.d`` as a directory on this machine."""
        return self.dir / "root" / CNI_CONF_DIR.lstrip("/")

    @property
    def containerd_socket(self) -> Path:
        """containerd's socket (``/run/containerd/containerd.sock`` on the node)."""
        return self.dir / "root" / "run" / "containerd" / "containerd.sock"

    @property
    def mnt_ns_path(self) -> str:
        return f"/proc/{self.holder_pid}/ns/mnt"


@dataclass
class _Daemon:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class _State:
    """What a run created, on disk so that the next run can reap it if this one dies."""

    path: Path
    netns: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)  # relative to each controller
    namespaces: dict[str, list[int]] = field(default_factory=dict)  # node -> [mnt, net] inode

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "netns": self.netns,
                    "cgroups": self.cgroups,
                    "namespaces": self.namespaces,
                }
            )
        )
        tmp.replace(self.path)

    @classmethod
    def load(cls, path: Path) -> _State:
        data = json.loads(path.read_text())
        return cls(
            path,
            list(data.get("netns", [])),
            list(data.get("cgroups", [])),
            {k: list(v) for k, v in data.get("namespaces", {}).items()},
        )


# -- processes, cgroups, namespaces ---------------------------------------------------


def _ns_inode(path: str) -> int:
    return os.stat(path).st_ino


def _pids_in_namespaces(mnt_ino: int, net_ino: int) -> list[int]:
    """Processes whose mount AND network namespaces are these (a node's processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if (
                os.stat(f"/proc/{entry}/ns/mnt").st_ino == mnt_ino
                and os.stat(f"/proc/{entry}/ns/net").st_ino == net_ino
            ):
                found.append(int(entry))
        except OSError:
            continue
    return found


def _controllers() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, name=systemd, the v2 "unified")."""
    out = []
    try:
        entries = sorted(CGROUP_FS.iterdir())
    except OSError:
        return out
    for path in entries:
        if path.is_dir() and not path.is_symlink() and (path / "cgroup.procs").exists():
            out.append(path)
    return out


def _cgroup_tree(root: Path) -> list[Path]:
    """root and all its descendants, deepest first."""
    if not root.is_dir():
        return []
    dirs = [Path(d) for d, _, _ in os.walk(root)]
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids(rel: str) -> set[int]:
    pids: set[int] = set()
    for ctl in _controllers():
        for cg in _cgroup_tree(ctl / rel.lstrip("/")):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in (cg / "cgroup.procs").read_text().split())
    return pids


def _kill_cgroups(rels: Sequence[str], timeout: float = 10.0) -> None:
    """SIGKILL every process in these cgroup trees until they are empty."""
    deadline = time.monotonic() + timeout
    while True:
        pids = set().union(*(_cgroup_pids(rel) for rel in rels)) if rels else set()
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _remove_cgroups(rels: Sequence[str], timeout: float = 10.0) -> list[str]:
    """rmdir the cgroup trees, deepest first; returns what could not be removed."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for rel in rels:
            for ctl in _controllers():
                for cg in _cgroup_tree(ctl / rel.lstrip("/")):
                    try:
                        cg.rmdir()
                    except FileNotFoundError:
                        pass
                    except OSError:
                        left.append(str(cg))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _kill_namespaces(namespaces: Sequence[Sequence[int]], timeout: float = 10.0) -> None:
    """SIGKILL every process in these (mount, network) namespace pairs until none is left."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [pid for mnt, net in namespaces for pid in _pids_in_namespaces(mnt, net)]
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _delete_netns(names: Sequence[str]) -> None:
    for name in names:
        if os.path.exists(f"/run/netns/{name}"):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def _mounted_under(path: Path) -> bool:
    prefix = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        return any(line.split()[4].startswith(prefix) for line in fh)


def _teardown_state(state: _State, run_dir: Path, *, keep_dir: bool) -> list[str]:
    """Kill, remove and delete everything ``state`` records. Returns problems left."""
    _kill_cgroups(state.cgroups)
    _kill_namespaces(list(state.namespaces.values()))
    problems = [f"cgroup left: {p}" for p in _remove_cgroups(state.cgroups)]
    _delete_netns(state.netns)
    problems += [f"netns left: {n}" for n in state.netns if os.path.exists(f"/run/netns/{n}")]
    if _mounted_under(run_dir):
        problems.append(f"mounts left under {run_dir}; not removing it")
    elif keep_dir:
        print(f"node cluster: kept {run_dir}", file=sys.stderr)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return problems


def reap_stale_runs() -> None:
    """Tear down the leftovers of runs whose Python process is gone (it was SIGKILLed)."""
    for path in RUN_PARENT.glob(f"{PREFIX}*"):
        try:
            owner = int((path / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not a run directory, or one being created right now
        if _pid_alive(owner):
            continue
        try:
            state = _State.load(path / STATE_FILE)
        except (OSError, ValueError):
            state = _State(path / STATE_FILE)
        problems = _teardown_state(state, path, keep_dir=False)
        if problems:
            print(f"node cluster: reaping {path}: {problems}", file=sys.stderr)


# -- small helpers ---------------------------------------------------------------------


def _run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 60.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and proc.returncode != 0:
        raise NodeClusterError(
            f"{' '.join(argv)} failed with exit code {proc.returncode}: "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def _key_values(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def build_node_binaries() -> dict[str, Path]:
    """kubelet, kube-proxy, kube-controller-manager, kube-scheduler (tests/cluster/build.sh)."""
    names = ["kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler"]
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *names], stdout=subprocess.PIPE, text=True, check=False
    )
    if proc.returncode != 0:
        raise NodeClusterError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
    found = _key_values(proc.stdout)
    out = {}
    for name in names:
        key = name.upper().replace("-", "_")
        if key not in found:
            raise NodeClusterError(f"build.sh printed no {key}= line")
        out[name] = Path(found[key])
    return out


def build_images(*names: str) -> dict[str, str]:
    """Run tests/node/images.sh NAME...; returns its KEY=value lines (PAUSE=, PAUSE_REF=...)."""
    proc = subprocess.run(
        ["bash", str(IMAGES_SCRIPT), *names], stdout=subprocess.PIPE, text=True, check=False
    )
    if proc.returncode != 0:
        raise NodeClusterError(
            f"{IMAGES_SCRIPT} {' '.join(names)} failed with exit code {proc.returncode}"
        )
    return _key_values(proc.stdout)


def _unix_socket_up(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


# -- the cluster -----------------------------------------------------------------------


class NodeCluster:
    """Three real nodes and a real control plane; see the module docstring.

    Use as a context manager (or :meth:`start` / :meth:`stop`). Start and stop it from a
    thread that lives as long as the cluster (pytest's main thread): its daemons get
    ``PR_SET_PDEATHSIG`` and die with the thread that started them. The same holds for
    :meth:`restart_kubelet`.

    ``timings`` holds, after :meth:`start`, seconds from the start to ``"nodes_ready"``
    (every node Ready) and, after :meth:`deploy_agent`, to ``"agent_ready"``.
    """

    def __init__(
        self,
        *,
        ready_timeout: float = 180.0,
        pause: tuple[Path, str] | None = None,
        keep_dir: bool | None = None,
        ip_family: str | None = None,
    ) -> None:
        family = ip_family or os.environ.get(ENV_IP_FAMILY) or "ipv4"
        if family not in IP_FAMILY_LAYOUTS:
            raise NodeClusterError(
                f"ip_family {family!r}: one of {', '.join(IP_FAMILY_LAYOUTS)} (single-stack)"
            )
        #: The addresses: IPv4 (default) or IPv6 single-stack.
        self.layout = IP_FAMILY_LAYOUTS[family]
        self.ready_timeout = ready_timeout
        self.keep_dir = os.environ.get(ENV_KEEP_DIR) == "1" if keep_dir is None else keep_dir
        self._pause = pause
        self.timings: dict[str, float] = {}
        self._t0 = 0.0
        self.run_dir = Path()
        self.prefix = ""
        self.nodes: list[Node] = []
        self.outside_ip = self.layout.outside_ip
        self.outside_netns = ""
        self.fabric_netns = ""
        self.control_plane: ControlPlane | None = None
        self.kubeconfig = Path()
        self.kubectl_bin = Path()
        self._api: k8s_client.ApiClient | None = None
        self._daemons: dict[str, _Daemon] = {}
        self._forwarder: subprocess.Popen[bytes] | None = None
        self._holders: list[subprocess.Popen[bytes]] = []
        self._state: _State | None = None
        self._lock = threading.RLock()
        self._stopped = False
        self._started = False

    # -- public API --------------------------------------------------------------

    @property
    def api(self) -> k8s_client.ApiClient:
        """An admin ApiClient (through the forwarder to the apiserver)."""
        if self._api is None:
            if self.control_plane is None:
                raise NodeClusterError("cluster not started")
            self._api = self.control_plane.api_client()
        return self._api

    @property
    def control_plane_node(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if not n.control_plane]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if name in (node.name, node.short):
                return node
        raise KeyError(name)

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120.0) -> str:
        """Run kubectl as admin; returns stdout, raises NodeClusterError on failure."""
        argv = [str(self.kubectl_bin), f"--kubeconfig={self.kubeconfig}", *args]
        return _run(argv, input=input, timeout=timeout).stdout

    def run_on_node(
        self,
        node: str | Node,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv on a node: in its mount and network namespaces (like ``docker exec``)."""
        n = node if isinstance(node, Node) else self.node(node)
        return _run(self._node_prefix(n) + list(argv), check=check, timeout=timeout, input=input)

    def run_outside(
        self,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the outside host's network namespace (not a node)."""
        return _run(
            ["nsenter", f"--net=/run/netns/{self.outside_netns}", "--", *argv],
            check=check,
            timeout=timeout,
        )

    def pod_node(self, namespace: str, pod: str) -> Node:
        obj = k8s_client.CoreV1Api(self.api).read_namespaced_pod(pod, namespace)
        if not obj.spec.node_name:
            raise NodeClusterError(f"pod {namespace}/{pod} is not scheduled")
        return self.node(obj.spec.node_name)

    def pod_netns(self, namespace: str, pod: str) -> str:
        """``/proc/<pid>/ns/net`` of the pod's sandbox (for ``nsenter --net=<path>``).

        Valid while the sandbox runs; a restarted pod gets a new one.
        """
        core = k8s_client.CoreV1Api(self.api)
        obj = core.read_namespaced_pod(pod, namespace)
        if obj.spec.host_network:
            return self.node(obj.spec.node_name).netns_path
        node = self.node(obj.spec.node_name)
        uid = obj.metadata.uid
        ctr = ["ctr", f"--address={node.containerd_socket}", "--namespace=k8s.io"]
        ids = _run(
            [
                *ctr,
                "containers",
                "list",
                "--quiet",
                f'labels."io.kubernetes.pod.uid"=={uid},labels."io.cri-containerd.kind"==sandbox',
            ]
        ).stdout.split()
        tasks = {}
        for line in _run([*ctr, "tasks", "list"]).stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "RUNNING":
                tasks[parts[0]] = int(parts[1])
        running = [tasks[i] for i in ids if i in tasks]
        if not running:
            raise NodeClusterError(f"no running sandbox for pod {namespace}/{pod} ({uid})")
        return f"/proc/{running[0]}/ns/net"

    def run_in_pod(
        self,
        namespace: str,
        pod: str,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv (a binary of this machine) in the pod's network namespace only."""
        return _run(
            ["nsenter", f"--net={self.pod_netns(namespace, pod)}", "--", *argv],
            check=check,
            timeout=timeout,
        )

    def import_image(self, archive: Path | str) -> None:
        """``ctr -n k8s.io images import`` the OCI archive on every node (in parallel).

        ``timings["import <file name>"]`` records how long it took.
        """
        start = time.monotonic()
        self._for_each_node(lambda n: self._import_on(n, Path(archive)))
        self.timings[f"import {Path(archive).name}"] = time.monotonic() - start

    def restart_kubelet(self, node: str | Node, *, timeout: float = 60.0) -> None:
        """Stop the node's kubelet (SIGTERM) and start it again; waits for its /healthz."""
        n = node if isinstance(node, Node) else self.node(node)
        with self._lock:
            daemon = self._daemons[f"{n.short}/kubelet"]
            if daemon.proc is not None:
                _terminate(daemon.proc, graceful=True, timeout=10)
            self._spawn(daemon)
        self._wait(
            lambda: self._kubelet_healthy(n), f"{n.name} kubelet /healthz", [daemon], timeout
        )

    def deploy_agent(
        self,
        image_ref: str,
        *,
        components: Sequence[str] = (),
        args: Sequence[str] = (),
        recreate: bool = False,
        timeout: float = 180.0,
    ) -> float:
        """Deploy ``deploy/`` as the kind guide does, with the image set by kustomize.

        Writes an overlay in a new directory of the run directory, the way a user would:
        ``resources: [<relative path to deploy/>]``, ``components:`` for each name in
        ``components`` (a directory of ``deploy/``, e.g. ``"cni"`` for CNI chaining),
        ``images:`` naming ``netpol-agent``, and, for ``args``, a JSON patch appending
        each to the agent container's arguments (e.g. ``--isolate-unknown-pod-ips``).
        Runs ``kubectl apply -k`` on it and ``kubectl -n netpol-agent rollout status
        ds/netpol-agent``, then checks that one pod per node is Ready.

        ``recreate`` deletes the DaemonSet first (:meth:`delete_agent`), so every node
        starts the new agent at once instead of one node at a time (a switch between
        configurations in seconds rather than a rolling update's minute). Returns the
        seconds it took; ``timings["agent_ready"]`` is measured from the cluster's start.
        """
        start = time.monotonic()
        if recreate:
            self.delete_agent(timeout=timeout)
        overlay = self.write_agent_overlay(image_ref, components=components, args=args)
        self.kubectl("apply", "-k", str(overlay))
        try:
            self.kubectl(
                "-n",
                AGENT_NAMESPACE,
                "rollout",
                "status",
                f"ds/{AGENT_DAEMONSET}",
                f"--timeout={int(timeout)}s",
                timeout=timeout + 30,
            )
        except NodeClusterError as exc:
            raise NodeClusterError(f"{exc}\n{self._agent_diagnostics()}") from exc
        self._wait(
            self._agent_ready_everywhere,
            "an agent pod Ready on every node",
            self._all_node_daemons(),
            timeout,
        )
        self.timings["agent_ready"] = time.monotonic() - self._t0
        self.timings["deploy_agent"] = time.monotonic() - start
        return self.timings["deploy_agent"]

    def write_agent_overlay(
        self, image_ref: str, *, components: Sequence[str] = (), args: Sequence[str] = ()
    ) -> Path:
        """The kustomize overlay :meth:`deploy_agent` applies (a new directory)."""
        overlay = Path(tempfile.mkdtemp(prefix="agent-overlay-", dir=self.run_dir))
        name, tag = _split_ref(image_ref)
        image: dict[str, str] = {"name": "netpol-agent", "newName": name}
        if tag:
            image["newTag"] = tag
        kustomization: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(DEPLOY_DIR, overlay)],
        }
        if components:
            kustomization["components"] = [
                os.path.relpath(DEPLOY_DIR / c, overlay) for c in components
            ]
        kustomization["images"] = [image]
        if args:
            ops = [
                {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": arg}
                for arg in args
            ]
            kustomization["patches"] = [
                {
                    "target": {"kind": "DaemonSet", "name": AGENT_DAEMONSET},
                    "patch": yaml.safe_dump(ops, sort_keys=False),
                }
            ]
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        return overlay

    def delete_agent(self, *, timeout: float = 120.0) -> None:
        """Delete the agent's DaemonSet and wait until none of its pods is left (the
        namespace, RBAC and Service stay; the chains stay in each node's kernel)."""
        self.kubectl(
            "-n",
            AGENT_NAMESPACE,
            "delete",
            "daemonset",
            AGENT_DAEMONSET,
            "--ignore-not-found",
            "--wait=true",
            timeout=timeout,
        )
        core = k8s_client.CoreV1Api(self.api)
        self._wait(
            lambda: (
                not core.list_namespaced_pod(
                    AGENT_NAMESPACE, label_selector="app.kubernetes.io/name=netpol-agent"
                ).items
            ),
            "the agent's pods gone",
            self._all_node_daemons(),
            timeout,
        )

    def cleanup_agent_cni(self, image_ref: str, *, timeout: float = 120.0) -> dict[str, str]:
        """Uninstall the CNI plugin as ``deploy/cni/kustomization.yaml`` says: on every
        node, a pod of the agent's image (host network, NET_ADMIN, the DaemonSet's mounts)
        runs ``netpol-agent cleanup --cni-conf-dir /host/etc/cni/net.d --cni-bin-dir
        /host/opt/cni/bin``. Host-network pods get no CNI ADD, so this works while the
        entry is still chained and no agent answers. Returns each node's log; raises if a
        pod did not succeed. The pods are deleted afterwards."""
        name = f"cni-cleanup-{secrets.token_hex(3)}"
        pods = []
        for node in self.nodes:
            pods.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": f"{name}-{node.short}",
                        "namespace": AGENT_NAMESPACE,
                        "labels": {"app.kubernetes.io/name": "netpol-agent-cleanup"},
                    },
                    "spec": {
                        "nodeName": node.name,
                        "hostNetwork": True,
                        "restartPolicy": "Never",
                        "automountServiceAccountToken": False,
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [
                            {
                                "name": "cleanup",
                                "image": image_ref,
                                "imagePullPolicy": "IfNotPresent",
                                "args": [
                                    "cleanup",
                                    "--cni-conf-dir=/host/etc/cni/net.d",
                                    "--cni-bin-dir=/host/opt/cni/bin",
                                ],
                                "securityContext": {
                                    "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}
                                },
                                "volumeMounts": [
                                    {"name": "xtables-lock", "mountPath": "/run/xtables.lock"},
                                    {"name": "cni-bin", "mountPath": "/host/opt/cni/bin"},
                                    {"name": "cni-conf", "mountPath": "/host/etc/cni/net.d"},
                                ],
                            }
                        ],
                        "volumes": [
                            {
                                "name": "xtables-lock",
                                "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"},
                            },
                            {"name": "cni-bin", "hostPath": {"path": CNI_BIN_DIR}},
                            {"name": "cni-conf", "hostPath": {"path": CNI_CONF_DIR}},
                        ],
                    },
                }
            )
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(pods))
        core = k8s_client.CoreV1Api(self.api)
        names = [p["metadata"]["name"] for p in pods]

        def phases() -> dict[str, str]:
            return {n: core.read_namespaced_pod(n, AGENT_NAMESPACE).status.phase for n in names}

        try:
            self._wait(
                lambda: all(ph in ("Succeeded", "Failed") for ph in phases().values()),
                "the cni cleanup pods finished",
                self._all_node_daemons(),
                timeout,
            )
            logs = {n: self.kubectl("-n", AGENT_NAMESPACE, "logs", n) for n in names}
            failed = [n for n, ph in phases().items() if ph != "Succeeded"]
            if failed:
                raise NodeClusterError(
                    f"netpol-agent cleanup failed in {failed}:\n"
                    + "\n".join(logs[n] for n in failed)
                )
        finally:
            self.kubectl(
                "-n",
                AGENT_NAMESPACE,
                "delete",
                "pods",
                *names,
                "--ignore-not-found",
                "--grace-period=0",
                "--force",
                "--wait=true",
            )
        return logs

    def agent_pod(self, node: str | Node) -> str:
        """The name of the agent pod on a node."""
        n = node if isinstance(node, Node) else self.node(node)
        pods = k8s_client.CoreV1Api(self.api).list_namespaced_pod(
            AGENT_NAMESPACE,
            label_selector="app.kubernetes.io/name=netpol-agent",
            field_selector=f"spec.nodeName={n.name}",
        )
        live = [p.metadata.name for p in pods.items if p.metadata.deletion_timestamp is None]
        if not live:
            raise NodeClusterError(f"no agent pod on {n.name}")
        return str(live[0])

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> NodeCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> NodeCluster:
        with self._lock:
            if self._started:
                raise NodeClusterError("a NodeCluster starts once")
            self._started = True
            self._t0 = time.monotonic()
            reap_stale_runs()
            self.run_dir = Path(tempfile.mkdtemp(prefix=PREFIX, dir=RUN_PARENT))
            (self.run_dir / OWNER_FILE).write_text(f"{os.getpid()}\n")
            self.prefix = self.run_dir.name  # npn-xxxxxxxx
            self._state = _State(self.run_dir / STATE_FILE)
            self._state.save()
            atexit.register(self.stop)
            try:
                self._start()
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """Stop everything by PID and remove what was created (idempotent)."""
        with self._lock:
            if self._stopped or not self._started:
                return
            start = time.monotonic()
            self._stopped = True
            atexit.unregister(self.stop)
            if self._api is not None:
                with contextlib.suppress(Exception):
                    self._api.close()
            # Node agents first (so nothing restarts containers), then the containers.
            for suffix in ("kubelet", "kube-proxy"):
                for node in self.nodes:
                    daemon = self._daemons.get(f"{node.short}/{suffix}")
                    if daemon is not None and daemon.proc is not None:
                        _terminate(daemon.proc, graceful=True, timeout=10)
            state = self._state
            if state is not None:
                _kill_cgroups(state.cgroups)
            for node in self.nodes:
                daemon = self._daemons.get(f"{node.short}/containerd")
                if daemon is not None and daemon.proc is not None:
                    _terminate(daemon.proc, graceful=True, timeout=10)
            for name in ("kube-scheduler", "kube-controller-manager"):
                daemon = self._daemons.get(name)
                if daemon is not None and daemon.proc is not None:
                    _terminate(daemon.proc, graceful=True, timeout=10)
            if self.control_plane is not None:
                with contextlib.suppress(Exception):
                    self.control_plane.stop()
            if self._forwarder is not None:
                _terminate(self._forwarder, graceful=True, timeout=5)
            for holder in self._holders:
                _terminate(holder, graceful=False, timeout=5)
            if state is not None:
                problems = _teardown_state(state, self.run_dir, keep_dir=self.keep_dir)
                if problems:
                    print(f"node cluster: cleanup left {problems}", file=sys.stderr)
            self.timings["stop"] = time.monotonic() - start

    # -- start-up ------------------------------------------------------------------------

    def _start(self) -> None:
        cp_bins = build_binaries(quiet=False)
        bins = build_node_binaries()
        self.kubectl_bin = cp_bins.kubectl
        if self._pause is None:
            images = build_images("pause")
            self._pause = (Path(images["PAUSE"]), images["PAUSE_REF"])
        pause_archive, pause_ref = self._pause

        self._make_network()
        for node in self.nodes:
            self._make_cgroups(node)
            self._make_node_root(node)
            self._start_holder(node)
        for node in self.nodes:
            self._start_containerd(node, pause_ref)

        cp = self.control_plane_node
        self._forwarder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.node.forward",
                f"--netns={cp.netns_path}",
                f"--target={cp.ip}:{APISERVER_PORT}",
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        assert self._forwarder.stdout is not None
        line = self._forwarder.stdout.readline().decode()
        if not line.startswith("PORT="):
            raise NodeClusterError(f"the apiserver forwarder failed to start: {line!r}")
        client_url = f"https://127.0.0.1:{int(line[5:])}"

        # Import the pause image on every node while the control plane starts.
        importer = _Background(
            lambda: self._for_each_node(
                lambda n: (self._wait_containerd(n), self._import_on(n, pause_archive))
            )
        )
        self.control_plane = ControlPlane(
            cp_bins,
            watch_cache=True,
            etcd_compaction_interval="5m",
            disabled_admission_plugins=(),
            extra_sans=[cp.ip, cp.name, self.layout.service_ip],
            command_prefix=["nsenter", f"--net={cp.netns_path}", "--"],
            netns=Path(cp.netns_path),
            host=cp.ip,
            apiserver_port=APISERVER_PORT,
            client_url=client_url,
            service_cidr=self.layout.service_cidr,
            ready_timeout=self.ready_timeout,
            extra_apiserver_args=[
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
            ],
        )
        # apiserver -> kubelet calls (logs, exec) authenticate with the admin certificate.
        pki_dir = self.control_plane.run_dir / "pki"
        self.control_plane.extra_apiserver_args += [
            f"--kubelet-client-certificate={pki_dir / 'admin.crt'}",
            f"--kubelet-client-key={pki_dir / 'admin.key'}",
        ]
        self.control_plane.start()
        pki = self.control_plane.pki
        assert pki is not None
        self.kubeconfig = self.control_plane.admin_kubeconfig
        incluster = self.control_plane.write_admin_kubeconfig(
            self.run_dir / "node-admin.kubeconfig", self.control_plane.apiserver_url
        )
        self._start_controller_manager(bins, incluster, pki.ca_crt, pki.sa_key)
        self._start_scheduler(bins, incluster)
        importer.join()
        for node in self.nodes:
            self._start_kubelet(node, bins["kubelet"], incluster, pki.ca_crt)
            self._start_kube_proxy(node, bins["kube-proxy"], incluster)
        self._configure_pod_network()
        self._wait(
            self._nodes_ready, "every node Ready", self._all_node_daemons(), self.ready_timeout
        )
        self.timings["nodes_ready"] = time.monotonic() - self._t0

    def _make_network(self) -> None:
        assert self._state is not None
        p = self.prefix
        self.fabric_netns, self.outside_netns = f"{p}-fab", f"{p}-out"
        for short in ("fab", "out"):
            self._add_netns(f"{p}-{short}")
        self.nodes = [
            Node(
                name=name,
                short=short,
                ip=ip,
                control_plane=cp,
                netns=f"{p}-{short}",
                dir=self.run_dir / short,
                cgroup_root=f"/{p}-{short}",
            )
            for (name, short, _, cp), ip in zip(NODE_LAYOUT, self.layout.node_ips, strict=True)
        ]
        for node in self.nodes:
            self._add_netns(node.netns)
        fab = self.fabric_netns
        batch = ["link add br0 type bridge", "link set br0 up"]
        for short, ns in [("out", self.outside_netns), *((n.short, n.netns) for n in self.nodes)]:
            batch += [
                f"link add {short} type veth peer name eth0 netns {ns}",
                f"link set {short} master br0",
                f"link set {short} up",
            ]
        _run(["ip", "-n", fab, "-batch", "-"], input="\n".join(batch) + "\n")
        layout = self.layout
        ipv6 = layout.family == "ipv6"
        for ns, ip in [(self.outside_netns, layout.outside_ip)] + [
            (n.netns, n.ip) for n in self.nodes
        ]:
            cmds = [
                "link set lo up",
                # No duplicate address detection on a segment whose addresses we assign:
                # the address is usable at once instead of tentative for a second or two.
                f"addr add {ip}/{layout.fabric_prefixlen} dev eth0" + (" nodad" if ipv6 else ""),
                "link set eth0 up",
            ]
            if ns != self.outside_netns:
                cmds.append(f"route add {layout.default_route} via {layout.outside_ip} dev eth0")
            _run(["ip", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n")
        sysctls = {
            "net.ipv4.ip_forward": "1",
            "net.bridge.bridge-nf-call-iptables": "1",
            "net.bridge.bridge-nf-call-ip6tables": "1",
        }
        if ipv6:
            sysctls |= {
                "net.ipv6.conf.all.forwarding": "1",
                # cni0 and the pods' host-side veths are created later in the node's
                # namespace; their addresses need no DAD either.
                "net.ipv6.conf.default.accept_dad": "0",
            }
        for node in self.nodes:
            _run(
                [
                    "nsenter",
                    f"--net={node.netns_path}",
                    "--",
                    "sysctl",
                    "-q",
                    "-w",
                    *(f"{k}={v}" for k, v in sysctls.items()),
                ]
            )
        # The fabric is a plain switch: its own bridge traffic skips iptables.
        _run(
            [
                "nsenter",
                f"--net=/run/netns/{fab}",
                "--",
                "sysctl",
                "-q",
                "-w",
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
            ]
        )

    def _add_netns(self, name: str) -> None:
        assert self._state is not None
        self._state.netns.append(name)
        self._state.save()
        _run(["ip", "netns", "add", name])

    def _make_cgroups(self, node: Node) -> None:
        assert self._state is not None
        self._state.cgroups.append(node.cgroup_root)
        self._state.save()
        for ctl in _controllers():
            path = ctl / node.cgroup_root.lstrip("/")
            path.mkdir(exist_ok=True)
            if ctl.name == "cpuset":
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (path / knob).write_text((ctl / knob).read_text())

    def _make_node_root(self, node: Node) -> None:
        root = node.dir / "root"
        for sub in (
            "var/lib/kubelet",
            "var/lib/cni",
            "run/containerd",
            "etc/cni/net.d",
            "var/log",
            "sysctl",
            "opt/cni/bin",
        ):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # The node's own CNI bin dir (its /opt), holding copies of the machine's plugins:
        # an install-cni init container writes here, never into the machine's dirs.
        for plugin in NODE_CNI_PLUGINS:
            source = HOST_CNI_PLUGINS / plugin
            if not source.is_file():
                raise NodeClusterError(
                    f"{source} is missing (scripts/setup-host.sh installs "
                    "containernetworking-plugins)"
                )
            shutil.copy2(source, node.cni_bin_dir / plugin)
        node.log_dir.mkdir(parents=True, exist_ok=True)
        (node.dir / "config").mkdir(exist_ok=True)
        for i, value in enumerate(KUBELET_SYSCTLS.values()):
            (root / "sysctl" / str(i)).write_text(f"{value}\n")

    def _start_holder(self, node: Node) -> None:
        assert self._state is not None
        root = node.dir / "root"
        if not Path("/etc/cni/net.d").is_dir():
            Path("/etc/cni/net.d").mkdir(parents=True, exist_ok=True)
        lines = [
            "set -e",
            # Fresh /run and /var/lib for the node, then its own directories on top.
            # containerd's root (content and unpacked snapshots) stays on that tmpfs:
            # imports are faster and it is gone with the mount namespace.
            "mount -t tmpfs -o mode=0755 none /run",
            "mount -t tmpfs -o mode=0755 none /var/lib",
            "mkdir -p /run/containerd /var/lib/kubelet /var/lib/containerd /var/lib/cni",
            f"mount --bind {root}/run/containerd /run/containerd",
            f"mount --bind {root}/var/lib/kubelet /var/lib/kubelet",
            f"mount --bind {root}/var/lib/cni /var/lib/cni",
            f"mount --bind {root}/etc/cni/net.d /etc/cni/net.d",
            f"mount --bind {root}/var/log /var/log",
            # The node's /opt (and so /opt/cni/bin) is its own directory.
            f"mount --bind {root}/opt /opt",
        ]
        for i, key in enumerate(KUBELET_SYSCTLS):
            lines.append(f"mount --bind {root}/sysctl/{i} /proc/sys/{key}")
        lines += ["echo ready", "exec sleep 2147483647"]
        with (node.log_dir / "holder.log").open("ab") as log:
            proc = subprocess.Popen(
                [
                    "nsenter",
                    f"--net={node.netns_path}",
                    "--",
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "sh",
                    "-c",
                    "\n".join(lines),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        self._holders.append(proc)
        node.holder_pid = proc.pid
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            proc.wait(timeout=5)
            raise NodeClusterError(
                f"{node.name}: mount namespace setup failed:\n{_tail(node.log_dir / 'holder.log')}"
            )
        self._state.namespaces[node.name] = [
            _ns_inode(node.mnt_ns_path),
            _ns_inode(node.netns_path),
        ]
        self._state.save()

    def _node_prefix(self, node: Node) -> list[str]:
        return ["nsenter", f"--mount={node.mnt_ns_path}", f"--net={node.netns_path}", "--"]

    def _spawn(self, daemon: _Daemon) -> None:
        with daemon.log.open("ab") as log:
            daemon.proc = subprocess.Popen(
                daemon.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                preexec_fn=_die_with_parent,
            )

    def _add_daemon(self, key: str, argv: list[str], log: Path) -> _Daemon:
        daemon = _Daemon(key, argv, log)
        self._daemons[key] = daemon
        self._spawn(daemon)
        return daemon

    def _start_containerd(self, node: Node, pause_ref: str) -> None:
        config = node.dir / "config" / "containerd.toml"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config.write_text(f"""\
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"

[{cri}]
  sandbox_image = "{pause_ref}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"

[{cri}.containerd]
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{CNI_CONF_DIR}"
""")
        self._add_daemon(
            f"{node.short}/containerd",
            [*self._node_prefix(node), "containerd", f"--config={config}"],
            node.log_dir / "containerd.log",
        )

    def _wait_containerd(self, node: Node) -> None:
        self._wait(
            lambda: _unix_socket_up(node.containerd_socket),
            f"{node.name} containerd",
            [self._daemons[f"{node.short}/containerd"]],
            self.ready_timeout,
        )

    def _import_on(self, node: Node, archive: Path) -> None:
        _run(
            [
                "ctr",
                f"--address={node.containerd_socket}",
                "--namespace=k8s.io",
                "images",
                "import",
                str(archive),
            ],
            timeout=300,
        )

    def _start_controller_manager(
        self, bins: dict[str, Path], kubeconfig: Path, ca: Path, sa_key: Path
    ) -> None:
        cp = self.control_plane_node
        argv = [
            "nsenter",
            f"--net={cp.netns_path}",
            "--",
            str(bins["kube-controller-manager"]),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            f"--controllers={','.join(CONTROLLERS)}",
            "--allocate-node-cidrs=true",
            f"--cluster-cidr={self.layout.cluster_cidr}",
            self.layout.node_cidr_mask_flag,
            f"--service-cluster-ip-range={self.layout.service_cidr}",
            f"--root-ca-file={ca}",
            f"--service-account-private-key-file={sa_key}",
            "--use-service-account-credentials=true",
            "--node-monitor-grace-period=20s",
            "--v=1",
        ]
        self._add_daemon(
            "kube-controller-manager", argv, cp.log_dir / "kube-controller-manager.log"
        )

    def _start_scheduler(self, bins: dict[str, Path], kubeconfig: Path) -> None:
        cp = self.control_plane_node
        argv = [
            "nsenter",
            f"--net={cp.netns_path}",
            "--",
            str(bins["kube-scheduler"]),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--v=1",
        ]
        self._add_daemon("kube-scheduler", argv, cp.log_dir / "kube-scheduler.log")

    def _start_kubelet(self, node: Node, kubelet: Path, kubeconfig: Path, ca: Path) -> None:
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": node.cgroup_root,
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": [],
            "localStorageCapacityIsolation": False,
            "evictionHard": {
                k: "0%"
                for k in (
                    "memory.available",
                    "nodefs.available",
                    "nodefs.inodesFree",
                    "imagefs.available",
                    "imagefs.inodesFree",
                )
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "",
            "failSwapOn": False,
            "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(ca)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "clusterDomain": "cluster.local",
            "volumePluginDir": "/var/lib/kubelet/volumeplugins",
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "2s",
            "registerWithTaints": (
                [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
                if node.control_plane
                else []
            ),
        }
        path = node.dir / "config" / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [
            *self._node_prefix(node),
            str(kubelet),
            f"--config={path}",
            f"--kubeconfig={kubeconfig}",
            f"--hostname-override={node.name}",
            f"--node-ip={node.ip}",
            "--v=1",
        ]
        self._add_daemon(f"{node.short}/kubelet", argv, node.log_dir / "kubelet.log")

    def _start_kube_proxy(self, node: Node, kube_proxy: Path, kubeconfig: Path) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clusterCIDR": self.layout.cluster_cidr,
            "hostnameOverride": node.name,
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            # Leave the machine-wide conntrack table size and timeouts alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "metricsBindAddress": "127.0.0.1:10249",
            "healthzBindAddress": "127.0.0.1:10256",
        }
        path = node.dir / "config" / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [*self._node_prefix(node), str(kube_proxy), f"--config={path}", "--v=1"]
        self._add_daemon(f"{node.short}/kube-proxy", argv, node.log_dir / "kube-proxy.log")

    def _configure_pod_network(self) -> None:
        """Wait for every node's podCIDR, then write its CNI conflist and the routes."""
        core = k8s_client.CoreV1Api(self.api)
        cidrs: dict[str, str] = {}

        def allocated() -> bool:
            for obj in core.list_node().items:
                if obj.spec.pod_cidr:
                    cidrs[obj.metadata.name] = obj.spec.pod_cidr
            return all(n.name in cidrs for n in self.nodes)

        self._wait(
            allocated,
            "every node registered with a podCIDR",
            [*self._all_node_daemons(), self._daemons["kube-controller-manager"]],
            self.ready_timeout,
        )
        for node in self.nodes:
            node.pod_cidr = cidrs[node.name]
        for node in self.nodes:
            routes = [
                f"route replace {o.pod_cidr} via {o.ip} dev eth0"
                for o in self.nodes
                if o is not node
            ]
            _run(["ip", "-n", node.netns, "-batch", "-"], input="\n".join(routes) + "\n")
            conflist = {
                "cniVersion": "0.4.0",
                "name": "netpol-bridge",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": True,
                        "ipMasq": False,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": node.pod_cidr}]],
                            "routes": [
                                {"dst": "::/0" if self.layout.family == "ipv6" else "0.0.0.0/0"}
                            ],
                        },
                    },
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                ],
            }
            target = node.cni_conf_dir / "10-netpol-bridge.conflist"
            tmp = target.with_suffix(".tmp")
            tmp.write_text(json.dumps(conflist, indent=2))
            tmp.replace(target)
        out_routes = [f"route replace {n.pod_cidr} via {n.ip} dev eth0" for n in self.nodes]
        _run(["ip", "-n", self.outside_netns, "-batch", "-"], input="\n".join(out_routes) + "\n")
        # Like kubeadm (kind): the control-plane node's role label.
        cp = self.control_plane_node
        core.patch_node(
            cp.name,
            {
                "metadata": {
                    "labels": {
                        "node-role.kubernetes.io/control-plane": "",
                        "node.kubernetes.io/exclude-from-external-load-balancers": "",
                    }
                }
            },
        )

    # -- waiting ------------------------------------------------------------------------

    def _all_node_daemons(self) -> list[_Daemon]:
        return list(self._daemons.values())

    def _wait(
        self,
        probe: Callable[[], bool],
        what: str,
        daemons: Sequence[_Daemon],
        timeout: float,
        interval: float = 0.25,
    ) -> None:
        """Poll ``probe`` until true; raise with a daemon's log if it exits or on timeout."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            for daemon in daemons:
                if daemon.proc is not None and daemon.proc.poll() is not None:
                    raise NodeClusterError(
                        f"waiting for {what}: {daemon.name} exited with code "
                        f"{daemon.proc.returncode}; {daemon.log} ends:\n{_tail(daemon.log)}"
                    )
            try:
                if probe():
                    return
            except Exception as exc:  # the apiserver not answering yet, ...
                last_error = exc
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {d.log} ---\n{_tail(d.log, 1500)}"
                    for d in daemons
                    if d.name.endswith(("kubelet", "kube-controller-manager"))
                )
                raise NodeClusterError(
                    f"timed out after {timeout:.0f}s waiting for {what} "
                    f"(last error: {last_error!r})\n{logs}"
                )
            time.sleep(interval)

    def _nodes_ready(self) -> bool:
        ready = set()
        for obj in k8s_client.CoreV1Api(self.api).list_node().items:
            for cond in obj.status.conditions or []:
                if cond.type == "Ready" and cond.status == "True":
                    ready.add(obj.metadata.name)
        return all(n.name in ready for n in self.nodes)

    def _kubelet_healthy(self, node: Node) -> bool:
        proc = self.run_on_node(
            node, ["curl", "-sf", "--max-time", "2", "http://127.0.0.1:10248/healthz"], timeout=5
        )
        return proc.returncode == 0 and proc.stdout.strip() == "ok"

    def _agent_ready_everywhere(self) -> bool:
        pods = k8s_client.CoreV1Api(self.api).list_namespaced_pod(
            AGENT_NAMESPACE, label_selector="app.kubernetes.io/name=netpol-agent"
        )
        ready_on = set()
        for pod in pods.items:
            if pod.metadata.deletion_timestamp is not None:
                continue
            for cond in pod.status.conditions or []:
                if cond.type == "Ready" and cond.status == "True":
                    ready_on.add(pod.spec.node_name)
        return all(n.name in ready_on for n in self.nodes)

    def _agent_diagnostics(self) -> str:
        parts = []
        with contextlib.suppress(NodeClusterError):
            parts.append(self.kubectl("-n", AGENT_NAMESPACE, "get", "pods", "-o", "wide"))
        with contextlib.suppress(NodeClusterError):
            parts.append(self.kubectl("-n", AGENT_NAMESPACE, "describe", "pods"))
        with contextlib.suppress(NodeClusterError):
            parts.append(
                self.kubectl(
                    "-n",
                    AGENT_NAMESPACE,
                    "logs",
                    "--tail=30",
                    "-l",
                    "app.kubernetes.io/name=netpol-agent",
                    "--prefix",
                )
            )
        return "\n".join(parts)[-8000:]

    # -- helpers --------------------------------------------------------------------------

    def _for_each_node(self, work: Callable[[Node], object]) -> None:
        errors: list[BaseException] = []

        def run(node: Node) -> None:
            try:
                work(node)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,)) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]


def _split_ref(ref: str) -> tuple[str, str]:
    """ "registry:5000/a/b:tag" -> ("registry:5000/a/b", "tag"); no tag -> (ref, "")."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, ""
    return name, tag


class _Background:
    """Run a function in a thread; join() re-raises what it raised."""

    def __init__(self, func: Callable[[], object]) -> None:
        self._error: BaseException | None = None

        def run() -> None:
            try:
                func()
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.node.cluster", description="Run the real-node cluster until Ctrl-C."
    )
    parser.add_argument(
        "--agent-image",
        help="also deploy the agent with this image ref (after importing --agent-archive)",
    )
    parser.add_argument("--agent-archive", type=Path)
    parser.add_argument(
        "--ip-family",
        choices=sorted(IP_FAMILY_LAYOUTS),
        help=f"single-stack ipv4 (default) or ipv6 (default from ${ENV_IP_FAMILY})",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with NodeCluster(ip_family=args.ip_family) as cluster:
        print(f"KUBECONFIG={cluster.kubeconfig}", flush=True)
        print(f"KUBECTL={cluster.kubectl_bin}", flush=True)
        print(
            f"nodes Ready {cluster.timings['nodes_ready']:.1f}s after start; "
            f"run dir {cluster.run_dir}",
            file=sys.stderr,
            flush=True,
        )
        if args.agent_archive is not None:
            cluster.import_image(args.agent_archive)
        if args.agent_image:
            cluster.deploy_agent(args.agent_image)
            print(
                f"agent Ready {cluster.timings['agent_ready']:.1f}s after start",
                file=sys.stderr,
                flush=True,
            )
        print("Ctrl-C to stop", file=sys.stderr, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
