"""Run the real ``netpol-agent run`` against the real test kube-apiserver, inside lab nodes.

The lab's node namespaces have their own network stack, so the apiserver (listening on
127.0.0.1 of the root namespace) cannot be reached from inside them. ``NetnsForwarder``
bridges that gap with no extra process: its listening socket is created while the
calling thread is switched into the node namespace (a socket keeps the namespace it was
created in), and each accepted connection is relayed to the apiserver by sockets opened
from the test process's root namespace. Inside the node, the agent's kubeconfig points at
``https://127.0.0.1:<port>`` (the serving certificate is valid for 127.0.0.1). The
forwarder doubles as a fault injector: ``drop_all()`` cuts every relayed connection and
``pause()`` refuses new ones (a network partition between one node and the apiserver).

``AgentProcess`` is one long-lived agent: ``ip netns exec <node> netpol-agent run ...``
(``ip netns exec`` execs, so the PID we hold is the agent's). It is killed by its PID
only, by a finalizer, at interpreter exit, and by the kernel (``PR_SET_PDEATHSIG``) if
the test process dies.

``LabCluster`` mirrors the lab topology into the API (namespaces x/y/z, the two Nodes,
the nine pods with their real addresses, status written like a kubelet) and puts it
back to that state between tests.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.controlplane import ControlPlane
from tests.cluster.kube import Kube, model
from tests.lab.nsutil import in_netns, run
from tests.lab.prober import E2E_PORT_PROTOCOLS, Expected, Matrix, Probe, Prober
from tests.lab.topology import Lab

REPO = Path(__file__).resolve().parents[2]
FORWARD_PORT = 6443  # inside each node namespace (each has its own port space)
METRICS_PORT = 9872  # idem
LAB_NAMESPACES = ("x", "y", "z")


# ---------------------------------------------------------------------------------------
# waiting


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    *,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
) -> float:
    """Poll ``predicate`` until it is truthy; return the seconds it took, raise on timeout."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"after {timeout:.1f}s: {text}")
        time.sleep(interval)


def converge(
    prober: Prober,
    expected: Expected,
    probes: Sequence[Probe] | None = None,
    *,
    sources: Sequence[str] | None = None,
    destinations: Sequence[str] | None = None,
    port_protocols: Sequence[tuple[int, str]] = (E2E_PORT_PROTOCOLS[0],),
    families: Sequence[int] = (4,),
    timeout: float = 10.0,
    context: Callable[[], str] | None = None,
) -> float:
    """Probe until every result matches ``expected``; return the seconds that took.

    ``probes`` or a matrix spec (sources x destinations x port_protocols x families). On
    timeout the last matrix's diff (and ``context()``, e.g. agent logs) is raised.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if probes is not None:
            matrix: Matrix = prober.run(list(probes))
        else:
            matrix = prober.matrix(sources, destinations, port_protocols, families)
        if not matrix.diff(expected):
            return time.monotonic() - start
        if time.monotonic() > deadline:
            try:
                matrix.assert_matches(expected)
            except AssertionError as error:
                extra = f"\n\n{context()}" if context is not None else ""
                raise AssertionError(
                    f"not converged after {timeout:.1f}s: {error}{extra}"
                ) from None
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------
# connectivity into a node namespace


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def http_get(netns: str, port: int, path: str, timeout: float = 3.0) -> tuple[int, str]:
    """GET http://127.0.0.1:<port><path> as seen from inside ``netns``."""
    with in_netns(netns):
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode("utf-8", "replace")


class NetnsForwarder:
    """TCP relay: 127.0.0.1:<listen_port> inside ``netns`` -> ``upstream`` in the root netns.

    Start it from a thread in the root namespace (its threads inherit that namespace).
    """

    def __init__(self, netns: str, listen_port: int, upstream: tuple[str, int]) -> None:
        self.netns = netns
        self.listen_port = listen_port
        self.upstream = upstream
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.accepted = 0

    def start(self) -> NetnsForwarder:
        with in_netns(self.netns):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.listen_port))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"fwd-{self.netns}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.drop_all()

    def drop_all(self) -> int:
        """Cut every relayed connection, as a network failure would; returns how many."""
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        for a, b in pairs:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        return len(pairs)

    def pause(self) -> None:
        """Drop everything and refuse new connections until resume()."""
        self._paused.set()
        self.drop_all()

    def resume(self) -> None:
        self._paused.clear()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                down, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._paused.is_set():
                down.close()
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                down.close()  # apiserver down: the client sees the connection drop
                continue
            up.settimeout(None)
            down.settimeout(None)
            pair = (down, up)
            with self._lock:
                self._pairs.add(pair)
                self.accepted += 1
            for src, dst in ((down, up), (up, down)):
                threading.Thread(
                    target=self._pump, args=(src, dst, pair), daemon=True, name="fwd-pump"
                ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


def kubeconfig_via_forwarder(source: Path, target: Path, port: int = FORWARD_PORT) -> Path:
    """Copy a kubeconfig, pointing its server at the forwarder inside the node."""
    config = yaml.safe_load(source.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(config, handle)
    return target


# ---------------------------------------------------------------------------------------
# metrics


@dataclass
class Scrape:
    """One /metrics scrape: samples by name, each a list of (labels, value)."""

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        out = cls()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return out

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(
            value
            for sample_labels, value in self.samples.get(name, [])
            if all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def has(self, name: str) -> bool:
        return name in self.samples


# ---------------------------------------------------------------------------------------
# the agent process

_LIVE: set[AgentProcess] = set()
_LIVE_LOCK = threading.Lock()


def _kill_pid(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()  # by PID: our own child
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


@atexit.register
def _kill_all_at_exit() -> None:
    with _LIVE_LOCK:
        agents = list(_LIVE)
    for agent in agents:
        with contextlib.suppress(Exception):
            agent.kill()


def venv_bin(tool: str) -> str:
    return str(Path(sys.executable).parent / tool)


def iptables_save(netns: str, backend: str = "nft", family: int = 4) -> str:
    tool = f"{'ip6tables' if family == 6 else 'iptables'}-{backend}-save"
    return run([tool, "-t", "filter"], netns=netns).stdout


def our_rules(save_text: str, prefix: str) -> list[str]:
    """Chain declarations and rules of chains named ``<prefix>-*``, plus jumps into them."""
    mine = f"{prefix}-"
    return [
        line
        for line in save_text.splitlines()
        if line.startswith((f":{mine}", f"-A {mine}")) or f"-j {mine}" in line
    ]


class AgentProcess:
    """``netpol-agent run`` in a lab node namespace, talking to the API through a forwarder."""

    def __init__(
        self,
        *,
        node: str,
        netns: str,
        kubeconfig: Path,
        chain_prefix: str,
        workdir: Path,
        backend: str = "nft",
        metrics_port: int = METRICS_PORT,
        resync_period: float = 3.0,
        min_sync_interval: float = 0.05,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.node = node
        self.netns = netns
        self.kubeconfig = kubeconfig
        self.chain_prefix = chain_prefix
        self.backend = backend
        self.metrics_port = metrics_port
        self.resync_period = resync_period
        self.min_sync_interval = min_sync_interval
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.workdir = workdir / f"agent-{node}-{chain_prefix}-{secrets.token_hex(3)}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rule_log = self.workdir / "rules.log"
        self.log_path = self.workdir / "agent.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._finalizer = weakref.finalize(self, _finalize, [None])

    # -- lifecycle

    def argv(self) -> list[str]:
        return [
            "ip", "netns", "exec", self.netns,
            venv_bin("netpol-agent"), "run",
            "--node", self.node,
            "--kubeconfig", str(self.kubeconfig),
            "--backend", self.backend,
            "--chain-prefix", self.chain_prefix,
            "--metrics-address", f"127.0.0.1:{self.metrics_port}",
            "--rule-log", str(self.rule_log),
            "--resync-period", str(self.resync_period),
            "--min-sync-interval", str(self.min_sync_interval),
            "--no-kernel-addresses",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> AgentProcess:
        if self.running:
            raise RuntimeError(f"agent on {self.node} already running (pid {self.pid})")
        env = {**os.environ, **self.env}
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.starts + 1}: {' '.join(self.argv())}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
            )
        self._proc = proc
        self.starts += 1
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _finalize, [proc])
        with _LIVE_LOCK:
            _LIVE.add(self)
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, *, assert_rules_stay: bool = True, timeout: float = 15.0) -> int:
        """SIGTERM; the agent must exit and leave its rules in place. Returns the exit code."""
        proc = self._proc
        if proc is None:
            return 0
        before = our_rules(iptables_save(self.netns, self.backend), self.chain_prefix)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_pid(proc)
                raise AssertionError(
                    f"agent on {self.node} ignored SIGTERM for {timeout}s\n{self.logs()[-3000:]}"
                ) from None
        self._forget()
        if assert_rules_stay:
            after = our_rules(iptables_save(self.netns, self.backend), self.chain_prefix)
            assert after == before, (
                f"SIGTERM changed the rules on {self.node}:\n"
                f"before: {len(before)} lines, after: {len(after)} lines"
            )
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL (by PID)."""
        if self._proc is not None:
            _kill_pid(self._proc)
        self._forget()

    def restart(self, *, hard: bool = False) -> AgentProcess:
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def _forget(self) -> None:
        with _LIVE_LOCK:
            _LIVE.discard(self)

    # -- observation

    def readyz(self) -> tuple[int, str]:
        try:
            return http_get(self.netns, self.metrics_port, "/readyz")
        except OSError as error:
            return 0, str(error)

    def wait_ready(self, timeout: float = 30.0) -> float:
        def ready() -> bool:
            if not self.running:
                raise AssertionError(f"agent on {self.node} exited:\n{self.logs()[-4000:]}")
            return self.readyz()[0] == 200

        return wait_until(
            ready,
            timeout,
            interval=0.1,
            message=lambda: (
                f"agent on {self.node} not ready: {self.readyz()}\n{self.logs()[-4000:]}"
            ),
        )

    def metrics(self) -> Scrape:
        status, body = http_get(self.netns, self.metrics_port, "/metrics")
        assert status == 200, f"/metrics answered {status}: {body[:200]}"
        return Scrape.parse(body)

    def rule_log_lines(self) -> list[dict[str, Any]]:
        try:
            text = self.rule_log.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def save(self, family: int = 4) -> str:
        return iptables_save(self.netns, self.backend, family)

    def our_rules(self, family: int = 4) -> list[str]:
        return our_rules(self.save(family), self.chain_prefix)

    def wait_synced(self, timeout: float = 10.0, **gauges: float) -> float:
        """Wait until a pass finished after the last queued change, and gauges match.

        ``gauges``: ``policies=2`` means ``netpol_agent_policies == 2``.
        """

        def done() -> bool:
            scrape = self.metrics()
            last_sync = scrape.value("netpol_agent_last_sync_timestamp_seconds")
            last_queued = scrape.value("netpol_agent_last_queued_timestamp_seconds")
            if last_sync <= 0 or last_sync < last_queued:
                return False
            return all(
                scrape.value(f"netpol_agent_{name}") == value for name, value in gauges.items()
            )

        return wait_until(
            done, timeout, interval=0.05, message=lambda: f"agent on {self.node} not synced"
        )


def _finalize(holder: list[subprocess.Popen[bytes] | None]) -> None:
    proc = holder[0]
    if proc is not None:
        with contextlib.suppress(Exception):
            _kill_pid(proc)


# ---------------------------------------------------------------------------------------
# the lab topology in the API


class LabCluster:
    """The lab's namespaces, nodes and pods as real API objects; reset between tests."""

    def __init__(self, kube: Kube, lab: Lab) -> None:
        self.kube = kube
        self.lab = lab
        self.rbac = k8s_client.RbacAuthorizationV1Api(kube.api)

    # desired state, from the lab
    def _desired(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[Any]]:
        namespaces: dict[str, dict[str, Any]] = {}
        pods: dict[str, dict[str, Any]] = {}
        nodes: list[Any] = []
        for obj in self.lab.objects():
            if obj["kind"] == "Namespace":
                namespaces[obj["metadata"]["name"]] = obj
            elif obj["kind"] == "Pod":
                meta = obj["metadata"]
                pods[f"{meta['namespace']}/{meta['name']}"] = obj
            elif obj["kind"] == "Node":
                nodes.append(obj)
        return namespaces, pods, nodes

    def create_nodes(self) -> None:
        _, _, nodes = self._desired()
        for node in nodes:
            body = {"metadata": node["metadata"] | {"uid": None}, "spec": node["spec"]}
            body["metadata"] = {k: v for k, v in body["metadata"].items() if v is not None}
            try:
                self.kube.core.create_node(body=model(k8s_client.V1Node, body))
            except ApiException as exc:
                if exc.status != 409:
                    raise
            self.kube.core.patch_node_status(
                node["metadata"]["name"],
                body={"status": node["status"]},
                _content_type="application/merge-patch+json",
            )

    def delete_nodes(self) -> None:
        for name in self.lab.nodes:
            with contextlib.suppress(ApiException):
                self.kube.core.delete_node(name)

    def create_pod(self, obj: Mapping[str, Any], *, labels: Mapping[str, str] | None = None,
                   name: str | None = None, ips: Sequence[str] | None = None,
                   phase: str | None = "Running") -> dict[str, Any]:  # fmt: skip
        meta = obj["metadata"]
        ports = [
            (p["containerPort"], p["protocol"], p["name"])
            for c in obj["spec"]["containers"]
            for p in c.get("ports", [])
        ]
        return self.kube.create_pod(
            meta["namespace"],
            name or meta["name"],
            node_name=obj["spec"]["nodeName"],
            labels=labels if labels is not None else meta["labels"],
            ports=ports,
            ips=list(ips) if ips is not None else [i["ip"] for i in obj["status"]["podIPs"]],
            phase=phase,
            host_ip=obj["status"]["hostIP"],
        )

    def reset(self) -> None:
        """Make the API hold exactly the lab topology and no NetworkPolicies in x/y/z."""
        namespaces, pods, _ = self._desired()
        for name, ns in namespaces.items():
            labels = {
                k: v for k, v in ns["metadata"]["labels"].items()
                if k != "kubernetes.io/metadata.name"
            }  # fmt: skip
            try:
                current = self.kube.get_namespace(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self.kube.create_namespace(name, labels)
                continue
            if current["metadata"].get("deletionTimestamp"):
                self.kube.delete_namespace(name)
                self.kube.create_namespace(name, labels)
                continue
            have = dict(current["metadata"].get("labels") or {})
            have.pop("kubernetes.io/metadata.name", None)
            if have != labels:
                self.kube.set_namespace_labels(name, labels)
        for name in namespaces:
            for item in self.kube.net.list_namespaced_network_policy(name).items:
                self.kube.delete_network_policy(name, _name(item))
            existing = {_name(pod) for pod in self.kube.core.list_namespaced_pod(name).items}
            for pod_name in existing:
                if f"{name}/{pod_name}" not in pods:
                    self.kube.delete_pod(name, pod_name)
        for key, obj in pods.items():
            namespace, name = key.split("/")
            try:
                current = self.kube.get_pod(namespace, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self.create_pod(obj)
                continue
            if (current["metadata"].get("labels") or {}) != obj["metadata"]["labels"]:
                self.kube.set_pod_labels(namespace, name, obj["metadata"]["labels"])
            status = current.get("status") or {}
            want_ips = [i["ip"] for i in obj["status"]["podIPs"]]
            have_ips = [i["ip"] for i in status.get("podIPs") or []]
            if status.get("phase") != "Running" or have_ips != want_ips:
                self.kube.set_pod_status(
                    namespace, name, phase="Running", ips=want_ips, host_ip=obj["status"]["hostIP"]
                )

    def delete_all(self) -> None:
        for name in LAB_NAMESPACES:
            with contextlib.suppress(ApiException, TimeoutError):
                self.kube.delete_namespace(name)
        self.delete_nodes()

    def pod_object(self, key: str) -> dict[str, Any]:
        return self._desired()[1][key]

    # -- RBAC for service-account agents

    def clusterrole_from_deploy(self, name: str) -> dict[str, Any]:
        """deploy/clusterrole.yaml with its rules untouched, under another name."""
        role = yaml.safe_load((REPO / "deploy" / "clusterrole.yaml").read_text())
        role["metadata"]["name"] = name
        self.rbac.create_cluster_role(body=role)
        return dict(role)

    def bind(self, role: str, namespace: str, service_account: str, name: str) -> None:
        self.rbac.create_cluster_role_binding(body=model(k8s_client.V1ClusterRoleBinding, {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": service_account,
                          "namespace": namespace}],
        }))  # fmt: skip

    def delete_rbac(self, *, roles: Iterable[str] = (), bindings: Iterable[str] = ()) -> None:
        for binding in bindings:
            with contextlib.suppress(ApiException):
                self.rbac.delete_cluster_role_binding(binding)
        for role in roles:
            with contextlib.suppress(ApiException):
                self.rbac.delete_cluster_role(role)


# ---------------------------------------------------------------------------------------
# everything together


class ApiLab:
    """Lab + control plane + forwarders + the topology in the API, for one test module."""

    def __init__(self, lab: Lab, control_plane: ControlPlane, workdir: Path, suffix: str) -> None:
        self.lab = lab
        self.cp = control_plane
        self.workdir = workdir
        self.chain_prefix = f"{lab.prefix}{suffix}"  # run-unique, under the lab's prefix
        self.forwarders: dict[str, NetnsForwarder] = {}
        self._api = control_plane.api_client()
        self.kube = Kube(self._api)
        self.cluster = LabCluster(self.kube, lab)
        self.kubeconfig = workdir / "admin-via-forwarder.kubeconfig"
        self.agents: list[AgentProcess] = []

    def start(self) -> ApiLab:
        for name, node in self.lab.nodes.items():
            self.forwarders[name] = NetnsForwarder(
                node.netns, FORWARD_PORT, ("127.0.0.1", self.cp.apiserver_port)
            ).start()
        kubeconfig_via_forwarder(self.cp.admin_kubeconfig, self.kubeconfig)
        self.lab.reset_firewall()
        self.cluster.create_nodes()
        self.cluster.reset()
        return self

    def close(self) -> None:
        errors: list[BaseException] = []
        for agent in self.agents:
            try:
                agent.kill()
            except Exception as exc:
                errors.append(exc)
        self.agents.clear()
        if not self.cp.apiserver_running:
            self.cp.start_apiserver()
        try:
            self.cluster.delete_all()
            self.kube.cleanup()
        except Exception as exc:
            errors.append(exc)
        for forwarder in self.forwarders.values():
            forwarder.stop()
        self.lab.reset_firewall()
        self._api.close()  # type: ignore[no-untyped-call]
        if errors:
            raise errors[0]

    def token_kubeconfig(self, token: str) -> Path:
        path = self.cp.kubeconfig_for_token(token)
        return kubeconfig_via_forwarder(path, self.workdir / f"{path.stem}-fwd.kubeconfig")

    def agent(self, node: str, *, start: bool = True, **kwargs: Any) -> AgentProcess:
        kwargs.setdefault("kubeconfig", self.kubeconfig)
        kwargs.setdefault("chain_prefix", self.chain_prefix)
        agent = AgentProcess(
            node=node, netns=self.lab.node(node).netns, workdir=self.workdir, **kwargs
        )
        self.agents.append(agent)
        if start:
            agent.start()
        return agent

    def start_agents(self, **kwargs: Any) -> dict[str, AgentProcess]:
        agents = {node: self.agent(node, **kwargs) for node in self.lab.nodes}
        for agent in agents.values():
            agent.wait_ready()
        return agents

    def stop_agents(self, agents: Mapping[str, AgentProcess]) -> None:
        for agent in agents.values():
            if agent.running:
                agent.stop()
            if agent in self.agents:
                self.agents.remove(agent)

    def agent_logs(self, agents: Iterable[AgentProcess] | None = None) -> str:
        chosen = list(agents) if agents is not None else self.agents
        return "\n".join(
            f"=== agent {a.node} ({a.chain_prefix})\n{a.logs()[-3000:]}" for a in chosen
        )


def _name(obj: Any) -> str:
    return str(obj.metadata.name)


def policy(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": dict(spec)}
