"""CNI chaining in the lab: pods made by a real CNI runtime (cnitool, the CNI project's
reference runtime) running the reference bridge + host-local plugins, with the
netpol-agent plugin chained last, against a running agent on the node.

A pod's containers start only after its sandbox's ADD returned, so a pod's first packet
is sent right after ADD returns: each start here has a process waiting in the new pod's
network namespace, released the instant ``cnitool add`` returns, which connects at once.
Under a deny-all, none of those connections may get through.

Topology (e2e model): the new pods are made on node-1, whose bridge the lab already
built; the connection target is the external host's TCP server on port 80.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.control import cni_conf
from tests.lab.nsutil import run
from tests.lab.test_established_flows import running_agents
from tests.lab.topology import Backend, Lab

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
NODE = "node-1"
STARTS = 100
WORKERS = 4  # pods started at the same time
CONNECT_TIMEOUT = 0.7
TARGET = "192.168.250.100"  # the external host, serving TCP 80

# Waits in the pod's namespace until told that ADD returned, then connects at once.
PROBE = r"""
import socket, sys
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
s = socket.socket(); s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("connected")
except socket.timeout:
    print("timeout")
except OSError as e:
    print(f"error {e.errno}")
"""


CNI_CACHE = Path("/var/lib/cni")  # where cnitool's libcni caches ADD results (fixed)


@pytest.fixture(scope="module")
def binaries() -> Iterator[dict[str, str]]:
    """The plugin and cnitool; afterwards, libcni's result cache goes if it was not here
    before and is empty (every DEL removed its entry)."""
    had_cache = CNI_CACHE.exists()
    try:
        yield _build()
    finally:
        if not had_cache:
            with contextlib.suppress(OSError):
                (CNI_CACHE / "results").rmdir()
                CNI_CACHE.rmdir()


def _build() -> dict[str, str]:
    proc = subprocess.run(["bash", str(REPO / "cni" / "build.sh"), "plugin", "cnitool"],
                          capture_output=True, text=True, check=False, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return {"plugin": lines["CNI_PLUGIN"], "cnitool": lines["CNITOOL"]}


def deny_all(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": namespace, "name": "deny-all"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}  # fmt: skip


def scheduled_pod(lab: Lab, namespace: str, name: str) -> dict[str, Any]:
    """A pod the scheduler put on node-1 whose sandbox is not up yet: no address."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": namespace, "name": name, "uid": pod_uid(lab, name),
                         "labels": {"app": "new"}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Pending"}}  # fmt: skip


def pod_uid(lab: Lab, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{lab.prefix}/{name}"))


@dataclass
class Added:
    ok: bool
    seconds: float
    output: str


class CniRuntime:
    """cnitool in node-1's namespace, with a network list per variant (a conf dir each)."""

    def __init__(self, lab: Lab, binaries: dict[str, str], name: str) -> None:
        assert lab.workdir is not None
        self.lab = lab
        self.cnitool = binaries["cnitool"]
        self.root = lab.workdir / f"cni-{name}"
        self.bin_dir = self.root / "bin"
        self.network = f"{lab.prefix}-net"
        cni_conf.install_binary(binaries["plugin"], str(self.bin_dir))
        self.socket = str(lab.workdir / f"{lab.prefix}-{name}.sock")
        self.netns: list[str] = []

    def conf_dir(self, variant: str, *, chained: bool, socket: str | None = None,
                 timeout: float = 5.0, failure_policy: str = "fail") -> str:  # fmt: skip
        """A conf dir holding the node's bridge network list, with our plugin chained
        last by the installer's own code when ``chained``."""
        directory = self.root / variant
        directory.mkdir(parents=True, exist_ok=True)
        node = self.lab.node(NODE)
        bridge = {
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [{
                "type": "bridge", "bridge": f"{self.lab.prefix}br",
                "isGateway": False, "ipMasq": False,
                "ipam": {"type": "host-local", "dataDir": str(self.root / "ipam"),
                         "ranges": [[{"subnet": node.pod_cidr_v4, "rangeStart": "10.244.1.100",
                                      "rangeEnd": "10.244.1.250", "gateway": node.gateway_v4}]],
                         "routes": [{"dst": "0.0.0.0/0", "gw": node.gateway_v4}]},
            }],
        }  # fmt: skip
        (directory / "10-bridge.conflist").write_text(json.dumps(bridge))
        if chained:
            entry = cni_conf.plugin_entry(socket or self.socket, timeout=timeout,
                                          failure_policy=failure_policy)  # fmt: skip
            cni_conf.insert(str(directory), entry)
        return str(directory)

    def new_netns(self, name: str) -> str:
        netns = f"{self.lab.prefix}-{name}"
        run(["ip", "netns", "add", netns])
        self.netns.append(netns)
        return netns

    def _cnitool(self, op: str, conf_dir: str, netns: str, namespace: str, name: str) -> Added:
        env = {
            **os.environ,
            "CNI_PATH": f"/usr/lib/cni:{self.bin_dir}",
            "NETCONFPATH": conf_dir,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
            f"K8S_POD_UID={pod_uid(self.lab, name)}",
        }
        argv = ["nsenter", f"--net=/run/netns/{self.lab.node(NODE).netns}",
                self.cnitool, op, self.network, f"/run/netns/{netns}"]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip
        return Added(proc.returncode == 0, time.monotonic() - started, proc.stdout + proc.stderr)

    def add(self, conf_dir: str, netns: str, namespace: str, name: str) -> Added:
        return self._cnitool("add", conf_dir, netns, namespace, name)

    def delete(self, conf_dir: str, netns: str, namespace: str, name: str) -> Added:
        return self._cnitool("del", conf_dir, netns, namespace, name)

    def check(self, conf_dir: str, netns: str, namespace: str, name: str) -> Added:
        return self._cnitool("check", conf_dir, netns, namespace, name)

    def close(self) -> None:
        for netns in self.netns:
            run(["ip", "netns", "del", netns], check=False)


@contextlib.contextmanager
def cni_runtime(lab: Lab, binaries: dict[str, str], name: str) -> Iterator[CniRuntime]:
    runtime = CniRuntime(lab, binaries, name)
    try:
        yield runtime
    finally:
        runtime.close()


def start_and_connect(
    runtime: CniRuntime, conf_dir: str, namespace: str, name: str
) -> tuple[Added, str]:
    """Make the pod through CNI; its process connects the instant ADD returns. (ADD, what
    the connection did: connected, timeout, error N; or "no add")."""
    netns = runtime.new_netns(name)
    probe = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", PROBE, TARGET, "80",
         str(CONNECT_TIMEOUT)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert probe.stdout is not None and probe.stdin is not None
    try:
        assert probe.stdout.readline().strip() == "ready"
        added = runtime.add(conf_dir, netns, namespace, name)
        probe.stdin.write("go\n")
        probe.stdin.flush()
        result = probe.stdout.readline().strip() if added.ok else "no add"
    finally:
        with contextlib.suppress(OSError):
            probe.stdin.close()
        probe.wait(timeout=10)  # our own child, by PID
        deleted = runtime.delete(conf_dir, netns, namespace, name)
        assert deleted.ok, deleted.output
        run(["ip", "netns", "del", netns], check=False)
    return added, result


def _ms(values: Sequence[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_a_pod_under_a_deny_all_cannot_connect_at_its_first_instant_over_100_starts(
    clean_lab: Lab, binaries: dict[str, str], backend: Backend
) -> None:
    lab = clean_lab
    names = [f"cni-{i}" for i in range(STARTS)]
    controls = [f"ctl-{i}" for i in range(3)]
    objects = [*lab.objects(), deny_all("x"),
               *(scheduled_pod(lab, "x", n) for n in names),
               *(scheduled_pod(lab, "y", n) for n in controls)]  # fmt: skip
    with cni_runtime(lab, binaries, backend) as runtime:
        chained = runtime.conf_dir("chained", chained=True)
        node_args = {NODE: ["--cni-socket", runtime.socket]}
        with running_agents(lab, backend, objects, node_args=node_args) as agents:
            # Controls: namespace y has no policy, so the same probe connects there.
            for name in controls:
                added, result = start_and_connect(runtime, chained, "y", name)
                assert added.ok, added.output
                assert result == "connected", (name, result)
            with ThreadPoolExecutor(WORKERS) as pool:
                starts = list(
                    pool.map(lambda n: start_and_connect(runtime, chained, "x", n), names)
                )
            failed = [(n, a.output) for n, (a, _) in zip(names, starts, strict=True) if not a.ok]
            assert not failed, failed
            leaked = [n for n, (_, r) in zip(names, starts, strict=True) if r == "connected"]
            print(f"\n[{backend}] {STARTS} pods started through CNI under a deny-all "
                  f"({WORKERS} at a time): {len(leaked)} first connections leaked; "
                  f"ADD {_ms([a.seconds for a, _ in starts])}")  # fmt: skip
            assert leaked == []
            assert {r for _, r in starts} == {"timeout"}
            # Each ADD made its pod's rules; each DEL (answered at once) took them back.
            wanted = {f"pod network {verb} x/{n}" for n in names for verb in ("added", "deleted")}
            deadline = time.monotonic() + 10
            while not wanted <= (reasons := {e["reason"] for e in agents.rule_log(NODE)}):
                assert time.monotonic() < deadline, sorted(wanted - reasons)[:5]
                time.sleep(0.1)


@pytest.mark.parametrize("backend", ["nft"])
def test_without_the_plugin_the_first_connections_leak(
    clean_lab: Lab, binaries: dict[str, str], backend: Backend
) -> None:
    """The same starts with the bridge alone: the agent learns the address only from the
    pod's status (here: never), so the first connection goes through."""
    lab = clean_lab
    names = [f"bare-{i}" for i in range(10)]
    objects = [*lab.objects(), deny_all("x"), *(scheduled_pod(lab, "x", n) for n in names)]
    with cni_runtime(lab, binaries, "bare") as runtime, running_agents(lab, backend, objects):
        bare = runtime.conf_dir("bare", chained=False)
        results = [start_and_connect(runtime, bare, "x", n)[1] for n in names]
    print(f"\n[{backend}] without the plugin: {results.count('connected')}/{len(names)} leaked")
    assert results.count("connected") == len(names)


def test_the_latency_the_plugin_adds_to_add(clean_lab: Lab, binaries: dict[str, str]) -> None:
    """ADD alone (no probe), one pod at a time, alternating the bridge alone and the bridge
    followed by the plugin, against a running agent (nft)."""
    lab = clean_lab
    rounds = 40
    names = [f"lat-{i}" for i in range(rounds)]
    objects = [*lab.objects(), deny_all("x"), *(scheduled_pod(lab, "x", n) for n in names)]
    with cni_runtime(lab, binaries, "lat") as runtime:
        chained = runtime.conf_dir("chained", chained=True)
        bare = runtime.conf_dir("bare", chained=False)
        node_args = {NODE: ["--cni-socket", runtime.socket]}
        with running_agents(lab, "nft", objects, node_args=node_args) as agents:
            mark = agents.mark(NODE)
            times: dict[str, list[float]] = {"bare": [], "chained": []}
            for name in names:
                for variant, conf_dir in (("bare", bare), ("chained", chained)):
                    netns = runtime.new_netns(f"{name}-{variant}")
                    added = runtime.add(conf_dir, netns, "x", name)
                    assert added.ok, added.output
                    times[variant].append(added.seconds)
                    assert runtime.delete(conf_dir, netns, "x", name).ok
                    run(["ip", "netns", "del", netns], check=False)
            passes = [float(line.split("total_ms=")[1].split()[0])
                      for _, line in agents.lines[NODE][mark:] if "msg=synced" in line]  # fmt: skip
    extra = [c - b for b, c in zip(times["bare"], times["chained"], strict=True)]
    print(f"\n[nft] cnitool add, {rounds} pods: bridge alone {_ms(times['bare'])}; "
          f"bridge + netpol-agent {_ms(times['chained'])}; "
          f"added by the plugin (pairwise) {_ms(extra)}; "
          f"the agent's passes {_ms([p / 1000 for p in passes])}")  # fmt: skip


def test_add_fails_closed_when_the_agent_is_unreachable_unless_told_to_pass(
    lab: Lab, binaries: dict[str, str]
) -> None:
    with cni_runtime(lab, binaries, "gone") as runtime:
        nobody = str(Path(runtime.socket).with_name(f"{lab.prefix}-nobody.sock"))
        fail = runtime.conf_dir("fail", chained=True, socket=nobody, timeout=1)
        passing = runtime.conf_dir("pass", chained=True, socket=nobody, timeout=1,
                                   failure_policy="pass")  # fmt: skip
        netns = runtime.new_netns("gone-0")
        added = runtime.add(fail, netns, "x", "gone-0")
        assert not added.ok
        assert "network policy not programmed" in added.output
        assert "agent not reachable" in added.output
        deleted = runtime.delete(fail, netns, "x", "gone-0")  # DEL succeeds, agent or not
        assert deleted.ok, deleted.output

        netns = runtime.new_netns("gone-1")
        added = runtime.add(passing, netns, "x", "gone-1")
        assert added.ok, added.output
        assert json.loads(added.output[: added.output.rindex("}") + 1])["ips"][0][
            "address"
        ].startswith("10.244.1.")
        assert runtime.delete(passing, netns, "x", "gone-1").ok


def test_add_fails_when_the_agent_does_not_know_the_pod_within_the_timeout(
    clean_lab: Lab, binaries: dict[str, str]
) -> None:
    lab = clean_lab
    with cni_runtime(lab, binaries, "unknown") as runtime:
        short = runtime.conf_dir("short", chained=True, timeout=1)
        node_args = {NODE: ["--cni-socket", runtime.socket]}
        objects = [*lab.objects(), scheduled_pod(lab, "x", "known-0")]
        with running_agents(lab, "nft", objects, node_args=node_args):
            netns = runtime.new_netns("unknown-0")
            added = runtime.add(short, netns, "x", "unknown-0")
            assert not added.ok
            assert "x/unknown-0: the pod is not known within 1s" in added.output
            assert runtime.delete(short, netns, "x", "unknown-0").ok
            # CHECK: the agent enforces a pod it confirmed, with the ADD's addresses.
            netns = runtime.new_netns("known-0")
            assert runtime.add(short, netns, "x", "known-0").ok
            checked = runtime.check(short, netns, "x", "known-0")
            assert checked.ok, checked.output
            assert runtime.delete(short, netns, "x", "known-0").ok


def test_the_running_agent_puts_the_plugin_back_when_the_main_cni_rewrites_its_list(
    clean_lab: Lab, binaries: dict[str, str]
) -> None:
    lab = clean_lab
    with cni_runtime(lab, binaries, "keep") as runtime:
        conf_dir = runtime.conf_dir("keep", chained=False)
        path = Path(conf_dir) / "10-bridge.conflist"
        original = path.read_text()

        def chained_last() -> bool:
            return json.loads(path.read_text())["plugins"][-1]["type"] == "netpol-agent"

        def eventually(what: str, timeout: float = 6.0) -> None:
            deadline = time.monotonic() + timeout
            while not chained_last():
                assert time.monotonic() < deadline, f"not chained {what}"
                time.sleep(0.1)

        node_args = {NODE: ["--cni-socket", runtime.socket, "--cni-conf-dir", conf_dir,
                           "--cni-timeout", "1"]}  # fmt: skip
        with running_agents(lab, "nft", lab.objects(), node_args=node_args):
            eventually("at start")
            rewritten = path.with_name("rewrite.tmp")
            rewritten.write_text(original)  # the main CNI writes its list again
            rewritten.replace(path)
            assert not chained_last()
            eventually("after the rewrite")
            netns = runtime.new_netns("keep-0")  # and the list works as chained
            added = runtime.add(conf_dir, netns, "x", "keep-0")
            assert not added.ok and "not known" in added.output  # the agent was asked
            assert runtime.delete(conf_dir, netns, "x", "keep-0").ok
