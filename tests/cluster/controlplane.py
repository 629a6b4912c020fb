"""A real etcd + kube-apiserver on loopback, for integration tests.

No scheduler, kubelet or controller-manager run: tests create Pods with
``spec.nodeName`` already set and write their status through the status
subresource, the way a kubelet would (see :mod:`tests.cluster.kube`).

Everything a :class:`ControlPlane` creates is unique to it: a temporary directory
under ``/tmp`` (certificates, etcd data, logs, kubeconfigs), free loopback ports,
and the two child processes, which are stopped by PID on :meth:`ControlPlane.stop`,
at interpreter exit, and (through ``PR_SET_PDEATHSIG``) by the kernel if the
Python process dies without cleaning up.

Run ``python -m tests.cluster.controlplane`` for a control plane in the
foreground (prints the admin kubeconfig path; Ctrl-C stops it).

The real-node cluster (:mod:`tests.node.cluster`) runs the same two processes inside
a node's network namespace: ``command_prefix`` (an ``nsenter``), ``netns`` (where this
process opens its own health-check connections), ``host`` (the apiserver's bind and
advertise address), ``client_url`` (how the test process reaches the apiserver),
``extra_sans`` and ``disabled_admission_plugins``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import errno
import http.client
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from tests.cluster.kube import model

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"

#: Environment variables that point at prebuilt binaries (build.sh builds only the others).
ENV_ETCD = "NETPOL_AGENT_ETCD"
ENV_KUBE_APISERVER = "NETPOL_AGENT_KUBE_APISERVER"
ENV_KUBECTL = "NETPOL_AGENT_KUBECTL"
#: Set to 1 to keep the run directory (logs, certs, etcd data) after stop().
ENV_KEEP_DIR = "NETPOL_AGENT_KEEP_CLUSTER_DIR"

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "netpol-test-admin"

# Admission plugins that kube-apiserver enables by default but that assume
# controllers (or a kubelet) we do not run, or mutate test objects behind the
# tests' back. NamespaceLifecycle (and the rest of the defaults) stay on.
DISABLED_ADMISSION_PLUGINS = (
    "ServiceAccount",  # needs the "default" SA the (absent) SA controller makes
    "LimitRanger",
    "ResourceQuota",
    "DefaultStorageClass",
    "DefaultIngressClass",
    "StorageObjectInUseProtection",
    "PersistentVolumeClaimResize",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
)


RUN_DIR_PARENT = "/tmp"
RUN_DIR_PREFIX = "netpol-agent-cp-"
OWNER_FILE = "owner.pid"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_stale_run_dirs() -> None:
    """Remove run directories whose owning Python process is gone (it was SIGKILLed).

    Their etcd/apiserver died with it (PR_SET_PDEATHSIG); only files are left.
    """
    for path in Path(RUN_DIR_PARENT).glob(f"{RUN_DIR_PREFIX}*"):
        try:
            owner = int((path / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        if not _pid_alive(owner):
            shutil.rmtree(path, ignore_errors=True)


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or used."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kubectl: Path


#: build.sh component name -> (its KEY= output line, the overriding environment variable).
_COMPONENTS = {
    "etcd": ("ETCD", ENV_ETCD),
    "kube-apiserver": ("KUBE_APISERVER", ENV_KUBE_APISERVER),
    "kubectl": ("KUBECTL", ENV_KUBECTL),
}


def build_binaries(*, quiet: bool = False) -> Binaries:
    """Build (or find in the cache) etcd, kube-apiserver and kubectl; raise if that fails.

    ``NETPOL_AGENT_ETCD`` / ``NETPOL_AGENT_KUBE_APISERVER`` / ``NETPOL_AGENT_KUBECTL``
    override each path; tests/cluster/build.sh builds only the others (with all three
    set, it is not run at all). Debian's etcd-server 3.4.23 (/usr/bin/etcd) also passes
    our tests, for instance. A kubectl that happens to be on PATH is never used.
    """
    paths = {name: os.environ.get(env, "") for name, (_, env) in _COMPONENTS.items()}
    wanted = [name for name, path in paths.items() if not path]
    if wanted:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), *wanted],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if quiet else None,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            detail = proc.stderr[-4000:] if quiet and proc.stderr else "(see stderr above)"
            raise ControlPlaneError(
                f"{BUILD_SCRIPT} failed with exit code {proc.returncode}: {detail}"
            )
        found: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                found[key.strip()] = value.strip()
        for name in wanted:
            key = _COMPONENTS[name][0]
            if key not in found:
                raise ControlPlaneError(f"build.sh printed no {key}= line: {proc.stdout!r}")
            paths[name] = found[key]
    bins = Binaries(Path(paths["etcd"]), Path(paths["kube-apiserver"]), Path(paths["kubectl"]))
    for path in (bins.etcd, bins.kube_apiserver, bins.kubectl):
        if not os.access(path, os.X_OK):
            raise ControlPlaneError(f"not an executable: {path}")
    return bins


_CLONE_NEWNET = 0x40000000


def socket_in_netns(netns: Path | None, family: int = socket.AF_INET) -> socket.socket:
    """A new TCP socket of ``family`` that lives in network namespace ``netns`` (None: this one).

    setns() applies to the calling thread only, so a short-lived thread enters the
    namespace and creates the socket; the socket stays in that namespace.
    """
    if netns is None:
        return socket.socket(family, socket.SOCK_STREAM)
    out: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            out.append(socket.socket(family, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the caller
            out.append(exc)

    thread = threading.Thread(target=work, name="setns-socket")
    thread.start()
    thread.join()
    result = out[0] if out else OSError(errno.EIO, "setns thread produced nothing")
    if isinstance(result, BaseException):
        raise result
    return result


class _NetnsHTTPConnection(http.client.HTTPConnection):
    """HTTP over a socket opened in a given network namespace."""

    def __init__(self, host: str, port: int, *, netns: Path | None, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._netns = netns

    def connect(self) -> None:
        sock = socket_in_netns(self._netns, _address_family(self.host))
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _NetnsHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS over a socket opened in a given network namespace."""

    def __init__(
        self, host: str, port: int, *, netns: Path | None, timeout: float,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._netns = netns
        self._ctx = context

    def connect(self) -> None:
        sock = socket_in_netns(self._netns, _address_family(self.host))
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


def _address_family(host: str) -> int:
    """AF_INET6 for an IPv6 literal, else AF_INET (names resolve to IPv4 here)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the thread that forked it dies."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _terminate(proc: subprocess.Popen[bytes], *, graceful: bool, timeout: float = 15.0) -> None:
    """Stop one child we started, by its PID only."""
    if proc.poll() is not None:
        return
    if graceful:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    # A stop path: a child stuck after SIGKILL (D state) must not abort the rest of it.
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def _tail(path: Path, nbytes: int = 4000) -> str:
    """The end of a log, preceded by its last few klog error/fatal lines."""
    try:
        text = path.read_bytes().decode(errors="replace")
    except OSError:
        return "(no log)"
    errors = [ln for ln in text.splitlines() if ln[:1] in ("E", "F") and ln[1:5].isdigit()]
    head = "".join(f"{ln}\n" for ln in errors[-5:])
    return (f"errors:\n{head}...\n" if head else "") + text[-nbytes:]


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


_OPENSSL_EXTENSIONS = f"""\
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, \
DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, IP:{SERVICE_IP}

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Pki:
    ca_crt: Path
    ca_key: Path
    server_crt: Path
    server_key: Path
    admin_crt: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def generate_pki(directory: Path, extra_sans: Sequence[str] = ()) -> Pki:
    """CA, apiserver serving cert, admin client cert (system:masters), SA key pair.

    ``extra_sans`` (IP addresses or DNS names) are added to the serving cert's SANs.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ext = directory / "extensions.cnf"
    extensions = _OPENSSL_EXTENSIONS
    if extra_sans:
        extra = []
        for san in extra_sans:
            try:
                ipaddress.ip_address(san)
                extra.append(f"IP:{san}")
            except ValueError:
                extra.append(f"DNS:{san}")
        extensions = extensions.replace(
            f"IP:{SERVICE_IP}\n", f"IP:{SERVICE_IP}, {', '.join(extra)}\n", 1
        )
    ext.write_text(extensions)

    def ec_key(name: str) -> None:
        _openssl(
            "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", f"{name}.key", cwd=directory,
        )

    def cert(name: str, subject: str, section: str, *, signer: str | None) -> None:
        ec_key(name)
        _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject,
                 "-out", f"{name}.csr", cwd=directory)
        sign = (["-signkey", "ca.key"] if signer is None
                else ["-CA", f"{signer}.crt", "-CAkey", f"{signer}.key"])
        _openssl("x509", "-req", "-in", f"{name}.csr", *sign,
                 "-set_serial", f"0x{secrets.token_hex(12)}", "-days", "30",
                 "-extfile", ext.name, "-extensions", section, "-out", f"{name}.crt",
                 cwd=directory)

    cert("ca", "/CN=netpol-agent-test-ca", "ca", signer=None)
    cert("server", "/CN=kube-apiserver", "server", signer="ca")
    cert("admin", f"/O=system:masters/CN={ADMIN_USER}", "client", signer="ca")
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", "sa.key", cwd=directory)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    d = directory
    return Pki(d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key",
               d / "admin.crt", d / "admin.key", d / "sa.key", d / "sa.pub")


class ControlPlane:
    """A real etcd + kube-apiserver on 127.0.0.1. Use as a context manager.

    ``watch_cache`` (default False) maps to ``--watch-cache``: without the watch
    cache, watches and lists are served from etcd directly, so a watch from a
    resourceVersion older than :meth:`compact_etcd` fails with 410 Gone at once,
    deterministically. With the watch cache on, the apiserver answers old
    resourceVersions from its in-memory window instead; :meth:`compact_etcd`
    followed by a :meth:`restart_apiserver` gives 410 there too.

    ``etcd_compaction_interval`` maps to ``--etcd-compaction-interval``;
    the default "0" turns the apiserver's own periodic compaction off, so only
    :meth:`compact_etcd` compacts.
    """

    def __init__(
        self,
        binaries: Binaries | None = None,
        *,
        watch_cache: bool = False,
        etcd_compaction_interval: str = "0",
        extra_apiserver_args: Sequence[str] = (),
        ready_timeout: float = 90.0,
        disabled_admission_plugins: Sequence[str] = DISABLED_ADMISSION_PLUGINS,
        extra_sans: Sequence[str] = (),
        command_prefix: Sequence[str] = (),
        netns: Path | None = None,
        host: str = "127.0.0.1",
        apiserver_port: int | None = None,
        client_url: str | None = None,
        service_cidr: str = SERVICE_CIDR,
    ) -> None:
        """See the class docstring; the last eight arguments place the control plane.

        ``command_prefix`` is put before etcd's and the apiserver's argv (for example
        ``nsenter --net=/run/netns/X``); ``netns`` is the network namespace this process
        opens its health checks in (the one the prefix enters); ``host`` is the
        apiserver's bind and advertise address there (etcd stays on that namespace's
        127.0.0.1); ``apiserver_port`` fixes the port (default: a free one);
        ``client_url`` is the apiserver URL written into the admin kubeconfig, for a
        test process that reaches it through a forwarder (default: ``apiserver_url``).
        A non-loopback ``host`` turns the endpoint reconciler on, so the ``kubernetes``
        Service gets ``host`` as its endpoint. ``service_cidr`` is
        ``--service-cluster-ip-range`` (its family must be ``host``'s, e.g. an IPv6
        range for an IPv6 ``host``; the serving certificate then needs the range's first
        address in ``extra_sans``).
        """
        self.binaries = binaries if binaries is not None else build_binaries()
        self.watch_cache = watch_cache
        self.etcd_compaction_interval = etcd_compaction_interval
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.ready_timeout = ready_timeout
        self.disabled_admission_plugins = list(disabled_admission_plugins)
        self.extra_sans = list(extra_sans)
        self.command_prefix = list(command_prefix)
        self.netns = netns
        self.host = host
        self.client_url = client_url
        self.service_cidr = service_cidr

        _reap_stale_run_dirs()
        self.run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=RUN_DIR_PARENT))
        (self.run_dir / OWNER_FILE).write_text(f"{os.getpid()}\n")
        self._lock = threading.RLock()
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._token_kubeconfigs = 0
        self._stopped = False
        self.etcd_client_port = 0
        self.etcd_peer_port = 0
        self.apiserver_port = apiserver_port or 0
        self.pki: Pki | None = None
        self.admin_kubeconfig = self.run_dir / "admin.kubeconfig"
        # Children we started, oldest first; shared with the finalizer, which must
        # not reference self. Cleanup runs on stop(), on garbage collection and at
        # interpreter exit, whichever comes first (and only once).
        self._children: list[subprocess.Popen[bytes]] = []
        self._finalizer = weakref.finalize(
            self, ControlPlane._cleanup, self.run_dir, self._children
        )

    # -- lifecycle -------------------------------------------------------

    @staticmethod
    def _cleanup(run_dir: Path, children: list[subprocess.Popen[bytes]]) -> None:
        # apiserver first (it is the later one), then etcd.
        for proc in reversed(children):
            with contextlib.suppress(Exception):  # best effort, also at exit
                _terminate(proc, graceful=True, timeout=10)
        children.clear()
        if os.environ.get(ENV_KEEP_DIR) == "1":
            print(f"controlplane: kept {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)

    def start(self) -> ControlPlane:
        with self._lock:
            if self._stopped:
                raise ControlPlaneError("this ControlPlane was stopped; make a new one")
            try:
                self.pki = generate_pki(self.run_dir / "pki", self.extra_sans)
                self._start_etcd()
                self.apiserver_port = self.apiserver_port or free_port()
                self._write_admin_kubeconfig()
                self.start_apiserver()
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """Stop apiserver and etcd (by PID) and remove the run directory."""
        with self._lock:
            self._stopped = True
            self._etcd = None
            self._apiserver = None
            self._finalizer()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log_path = self.run_dir / log_name
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [*self.command_prefix, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.run_dir,
                preexec_fn=_die_with_parent,  # only a prctl() call: fork-safe
            )
        self._children.append(proc)
        return proc

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        if proc in self._children:
            self._children.remove(proc)

    # -- etcd ----------------------------------------------------------------

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_client_port}"

    def _start_etcd(self) -> None:
        for _attempt in range(3):
            self.etcd_client_port, self.etcd_peer_port = free_port(), free_port()
            if self.etcd_client_port == self.etcd_peer_port:
                continue
            peer = f"http://127.0.0.1:{self.etcd_peer_port}"
            argv = [
                str(self.binaries.etcd),
                "--name=netpol-test",
                f"--data-dir={self.run_dir / 'etcd-data'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=netpol-test={peer}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token=netpol-{secrets.token_hex(4)}",
                "--unsafe-no-fsync=true",  # test data only: speed over durability
                "--log-level=warn",
            ]
            proc = self._spawn(argv, "etcd.log")
            self._etcd = proc
            if self._wait(self._etcd_healthy, proc, "etcd", self.run_dir / "etcd.log",
                          retry_on_port_clash=True):
                return
            shutil.rmtree(self.run_dir / "etcd-data", ignore_errors=True)
        raise ControlPlaneError("etcd: could not get free ports after 3 attempts")

    def _etcd_request(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float
    ) -> tuple[int, bytes]:
        conn = _NetnsHTTPConnection(
            "127.0.0.1", self.etcd_client_port, netns=self.netns, timeout=timeout
        )
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _etcd_healthy(self) -> bool:
        try:
            status, data = self._etcd_request("GET", "/health", None, timeout=2)
            return status == 200 and bool(json.loads(data).get("health") == "true")
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def _etcd_call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to etcd's gRPC-gateway (JSON form of the v3 gRPC API)."""
        status, data = self._etcd_request("POST", f"/v3/{method}", body, timeout=30)
        if status != 200:
            raise ControlPlaneError(f"etcd {method}: {status} {data!r}")
        out: dict[str, Any] = json.loads(data)
        return out

    def etcd_revision(self) -> int:
        """etcd's current revision (== the newest resourceVersion the apiserver can hand out)."""
        out = self._etcd_call("kv/range", {"key": base64.b64encode(b"/").decode(), "limit": 1})
        return int(out["header"]["revision"])

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now; returns the compaction revision.

        Afterwards, a watch from ANY resourceVersion observed before this call
        gets 410 Gone ("too old resource version") when the watch cache is off
        (the default). Two writes to a key outside the apiserver's /registry
        prefix first move the revision at least two past every earlier one, because
        a watch from RV starts at RV+1, which must itself be compacted away.
        Uses etcd's JSON gateway (same call as ``etcdctl compact --physical``).
        """
        key = base64.b64encode(b"/netpol-agent-tests/compaction-marker").decode()
        rev = 0
        for i in range(2):
            value = base64.b64encode(str(i).encode()).decode()
            rev = int(self._etcd_call("kv/put", {"key": key, "value": value})["header"]["revision"])
        self._etcd_call("kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    # -- kube-apiserver ------------------------------------------------------

    @property
    def apiserver_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.apiserver_port}"

    def _apiserver_argv(self) -> list[str]:
        pki = self._pki()
        argv = [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.run_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.server_crt}",
            f"--tls-private-key-file={pki.server_key}",
            f"--client-ca-file={pki.ca_crt}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--enable-admission-plugins=NamespaceLifecycle",
            *(
                [f"--disable-admission-plugins={','.join(self.disabled_admission_plugins)}"]
                if self.disabled_admission_plugins
                else []
            ),
            f"--watch-cache={'true' if self.watch_cache else 'false'}",
            f"--etcd-compaction-interval={self.etcd_compaction_interval}",
            # The apiserver refuses to publish a loopback address as the endpoint of
            # the "kubernetes" Service; nothing routes Service IPs to loopback anyway.
            *(["--endpoint-reconciler-type=none"] if self._loopback_host() else []),
            "--profiling=false",
            "--v=1",
            *self.extra_apiserver_args,
        ]
        return argv

    def _loopback_host(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def start_apiserver(self) -> None:
        """(Re)start kube-apiserver on the same port, against the same etcd; wait for /readyz."""
        with self._lock:
            if self._apiserver is not None and self._apiserver.poll() is None:
                raise ControlPlaneError("kube-apiserver is already running")
            if self._etcd is None or self._etcd.poll() is not None:
                raise ControlPlaneError("etcd is not running")
            log_path = self.run_dir / "kube-apiserver.log"
            proc = self._spawn(self._apiserver_argv(), log_path.name)
            self._apiserver = proc
            # The port is fixed (clients keep their kubeconfig), so a clash is fatal.
            self._wait(self._apiserver_ready, proc, "kube-apiserver", log_path,
                       retry_on_port_clash=False)

    def kill_apiserver(self, *, graceful: bool = False) -> None:
        """Stop kube-apiserver only (SIGKILL, or SIGTERM if graceful); etcd keeps running."""
        with self._lock:
            proc = self._apiserver
            if proc is None:
                return
            _terminate(proc, graceful=graceful)
            self._forget(proc)
            self._apiserver = None

    def restart_apiserver(self, *, graceful: bool = True) -> None:
        self.kill_apiserver(graceful=graceful)
        self.start_apiserver()

    @property
    def apiserver_running(self) -> bool:
        return self._apiserver is not None and self._apiserver.poll() is None

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self._pki()
        ctx = ssl.create_default_context(cafile=str(pki.ca_crt))
        ctx.load_cert_chain(str(pki.admin_crt), str(pki.admin_key))
        return ctx

    def _apiserver_ready(self) -> bool:
        conn = _NetnsHTTPSConnection(
            self.host, self.apiserver_port, netns=self.netns, timeout=5,
            context=self._ssl_context(),
        )
        try:
            conn.request("GET", "/readyz")
            resp = conn.getresponse()
            resp.read()
            return resp.status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _wait(
        self,
        probe: Any,
        proc: subprocess.Popen[bytes],
        what: str,
        log_path: Path,
        *,
        retry_on_port_clash: bool,
    ) -> bool:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._forget(proc)
                log = _tail(log_path)
                if retry_on_port_clash and "address already in use" in log:
                    return False
                raise ControlPlaneError(
                    f"{what} exited with code {proc.returncode}; log {log_path} ends:\n{log}"
                )
            if probe():
                return True
            time.sleep(0.2)
        _terminate(proc, graceful=False)
        self._forget(proc)
        raise ControlPlaneError(
            f"{what} not ready after {self.ready_timeout}s; log {log_path} ends:\n"
            f"{_tail(log_path)}"
        )

    # -- credentials -----------------------------------------------------------

    def _pki(self) -> Pki:
        if self.pki is None:
            raise ControlPlaneError("control plane not started")
        return self.pki

    def _kubeconfig(self, user: dict[str, Any], server: str | None = None) -> dict[str, Any]:
        ca = base64.b64encode(self._pki().ca_crt.read_bytes()).decode()
        if server is None:
            server = self.client_url or self.apiserver_url
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "netpol-test",
                "cluster": {"server": server, "certificate-authority-data": ca},
            }],
            "users": [{"name": "user", "user": user}],
            "contexts": [{
                "name": "netpol-test",
                "context": {"cluster": "netpol-test", "user": "user"},
            }],
            "current-context": "netpol-test",
        }

    def _write_kubeconfig(
        self, path: Path, user: dict[str, Any], server: str | None = None
    ) -> Path:
        tmp = path.with_suffix(".tmp")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            yaml.safe_dump(self._kubeconfig(user, server), fh)
        tmp.replace(path)
        return path

    def _admin_user(self) -> dict[str, Any]:
        pki = self._pki()
        return {
            "client-certificate-data": base64.b64encode(pki.admin_crt.read_bytes()).decode(),
            "client-key-data": base64.b64encode(pki.admin_key.read_bytes()).decode(),
        }

    def _write_admin_kubeconfig(self) -> None:
        self._write_kubeconfig(self.admin_kubeconfig, self._admin_user())

    def write_admin_kubeconfig(self, path: Path, server: str) -> Path:
        """An admin (system:masters) kubeconfig for ``server``, e.g. ``apiserver_url``
        for daemons that run beside the apiserver; returns its path."""
        return self._write_kubeconfig(path, self._admin_user(), server)

    def kubeconfig_for_token(self, token: str) -> Path:
        """Write a kubeconfig that authenticates with this bearer token; returns its path."""
        with self._lock:
            self._token_kubeconfigs += 1
            path = self.run_dir / f"token-{self._token_kubeconfigs}.kubeconfig"
        return self._write_kubeconfig(path, {"token": token})

    @staticmethod
    def client_from_kubeconfig(path: Path) -> k8s_client.ApiClient:
        # Load it the way the agent will: through the client's kubeconfig loader.
        api: k8s_client.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(path), persist_config=False
        )
        return api

    def api_client(self) -> k8s_client.ApiClient:
        """A new ApiClient authenticated as admin (group system:masters)."""
        return self.client_from_kubeconfig(self.admin_kubeconfig)

    def api_client_for_token(self, token: str) -> k8s_client.ApiClient:
        return self.client_from_kubeconfig(self.kubeconfig_for_token(token))

    def service_account_token(
        self,
        namespace: str,
        name: str,
        audiences: Sequence[str] | None = None,
        expiration_seconds: int = 3600,
    ) -> str:
        """A bound token for SA namespace/name via TokenRequest.

        Creates the namespace and the ServiceAccount if missing. ``audiences``
        defaults to the apiserver's own audience (the issuer).
        """
        with self.api_client() as api:
            core = k8s_client.CoreV1Api(api)
            for create in (
                lambda: core.create_namespace(
                    body=model(k8s_client.V1Namespace, {"metadata": {"name": namespace}})
                ),
                lambda: core.create_namespaced_service_account(
                    namespace,
                    body=model(k8s_client.V1ServiceAccount, {"metadata": {"name": name}}),
                ),
            ):
                try:
                    create()
                except ApiException as exc:
                    if exc.status != 409:
                        raise
            spec: dict[str, Any] = {
                "audiences": list(audiences) if audiences else [],
                "expirationSeconds": expiration_seconds,
            }
            resp = core.create_namespaced_service_account_token(
                name, namespace,
                body=model(k8s_client.AuthenticationV1TokenRequest, {"spec": spec}),
            )
            if resp.status is None or not resp.status.token:
                raise ControlPlaneError(f"TokenRequest for {namespace}/{name} returned no token")
            return resp.status.token


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster.controlplane",
        description="Run a real etcd + kube-apiserver on loopback until Ctrl-C/SIGTERM.",
    )
    parser.add_argument("--watch-cache", action="store_true", help="enable --watch-cache")
    parser.add_argument("--kubeconfig-out", type=Path,
                        help="also copy the admin kubeconfig here")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ControlPlane(watch_cache=args.watch_cache) as cp:
        kubeconfig = cp.admin_kubeconfig
        if args.kubeconfig_out is not None:
            shutil.copyfile(cp.admin_kubeconfig, args.kubeconfig_out)
            args.kubeconfig_out.chmod(0o600)
            kubeconfig = args.kubeconfig_out
        print(f"KUBECONFIG={kubeconfig}", flush=True)
        print(f"KUBECTL={cp.binaries.kubectl}", flush=True)
        print(f"apiserver {cp.apiserver_url}  etcd {cp.etcd_url}  dir {cp.run_dir}",
              file=sys.stderr, flush=True)
        print("Ctrl-C to stop", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            if not cp.apiserver_running:
                log = cp.run_dir / "kube-apiserver.log"
                print(f"kube-apiserver exited; {log} ends:\n{_tail(log)}", file=sys.stderr)
                return 1
    if args.kubeconfig_out is not None:
        args.kubeconfig_out.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
