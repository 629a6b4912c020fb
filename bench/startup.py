"""Process start to rules programmed, against a real kube-apiserver holding the L cluster.

Definition (what is reported as ``programmed_s``): the time from just before the agent
process is spawned (``ip netns exec <ns> netpol-agent run ...``) to the completion of the
first poll at which the kernel of the agent's network namespace holds the agent's final
rules for BOTH families. Polls run back to back from a thread switched into the
namespace: a cheap one (``nft list chain ip|ip6 filter FORWARD``) until that family's
FORWARD jump into our chains appears, then right away (in a second thread) a full ``iptables-nft-save -t
filter`` / ``ip6tables-nft-save -t filter`` of that family, which must equal the final
rules ("final" = two consecutive full saves after the agent logged its first ``synced``
agree; ``first_appearance_final`` says it did, else the first full save equal to the
final counts). The figure is an upper bound by at most one cheap poll
(``poll_ms``, including a 20 ms pause that leaves the CPU to the agent). The agent runs as in production (kernel addresses, default intervals).

The breakdown comes from the agent's own log timestamps (ms) and metrics:
``imports_s`` = interpreter start + importing everything ``run`` imports (a separate
process, same run); ``backend_chosen`` = the first log line ("iptables backend chosen"),
i.e. interpreter, the imports before it and backend detection; ``list_<kind>_s`` = that kind's "listed" line relative to process start;
``compile_s`` and ``restore_<family>_s`` from the initial pass's ``synced`` line and the
``iptables_restore_duration_seconds`` histogram.

The cluster (bench/synth.py, size L, seed 1) is loaded once with parallel raw HTTP
creates (not measured); each run uses a fresh chain prefix and removes its chains after.

    sudo .venv/bin/python -m bench.startup [--runs 3] [--size L] [--json PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import http.client
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.synth import MEASURED_NODE, SIZES, generate
from tests.api.agent_harness import (
    METRICS_PORT,
    NetnsForwarder,
    Scrape,
    http_get,
    kubeconfig_via_forwarder,
    our_rules,
)
from tests.cluster.controlplane import ControlPlane, build_binaries
from tests.lab.nsutil import in_netns

AGENT = str(Path(sys.executable).with_name("netpol-agent"))
# The command that runs the agent (e.g. "python -X importtime .../netpol-agent" to profile).
AGENT_COMMAND = os.environ.get("NETPOL_STARTUP_AGENT", AGENT).split()
FORWARD_PORT = 6443
POLL_PAUSE = 0.02
IMPORTS = (
    "import agent.cli, agent.app, agent.control.kube_source, agent.dataplane.detect, "
    "agent.control.reconciler, agent.dataplane.table"
)


# --- loading the cluster (not measured) ---------------------------------------------------


class Loader:
    """Creates objects with parallel raw HTTPS requests (one connection per thread)."""

    def __init__(self, cp: ControlPlane, threads: int = 12) -> None:
        self.cp = cp
        self.threads = threads
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPSConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.cp.apiserver_port, context=self.cp._ssl_context(), timeout=60
            )
            self._local.conn = conn
        return conn

    def call(self, method: str, path: str, body: Any, content_type: str) -> None:
        data = json.dumps(body).encode()
        for attempt in range(5):
            conn = self._conn()
            try:
                conn.request(method, path, data, {"Content-Type": content_type})
                response = conn.getresponse()
                text = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                time.sleep(0.2 * (attempt + 1))
                continue
            if response.status in (429, 500, 503, 504):
                time.sleep(0.2 * (attempt + 1))
                continue
            if response.status >= 300 and response.status != 409:
                raise RuntimeError(f"{method} {path}: {response.status} {text[:300]!r}")
            return
        raise RuntimeError(f"{method} {path}: gave up")

    def run_all(self, calls: list[tuple[str, str, Any, str]]) -> None:
        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            for future in [pool.submit(self.call, *call) for call in calls]:
                future.result()

    def load(self, objects: list[dict[str, Any]]) -> None:
        post, merge = "application/json", "application/merge-patch+json"
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for obj in objects:
            by_kind.setdefault(obj["kind"], []).append(obj)
        self.run_all([("POST", "/api/v1/namespaces", o, post) for o in by_kind["Namespace"]])
        nodes, pods, status = [], [], []
        for node in by_kind["Node"]:
            nodes.append(("POST", "/api/v1/nodes", {**node, "status": {}}, post))
            status.append((
                "PATCH", f"/api/v1/nodes/{node['metadata']['name']}/status",
                {"status": node["status"]}, merge,
            ))  # fmt: skip
        for pod in by_kind["Pod"]:
            meta = pod["metadata"]
            body = {k: v for k, v in pod.items() if k != "status"}
            body["metadata"] = {k: v for k, v in meta.items() if k != "uid"}
            body["spec"] = {
                **pod["spec"],
                "containers": [{**c, "image": "busybox"} for c in pod["spec"]["containers"]],
            }
            pods.append(("POST", f"/api/v1/namespaces/{meta['namespace']}/pods", body, post))
            status.append((
                "PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                {"status": pod["status"]}, merge,
            ))  # fmt: skip
        policies = [
            ("POST",
             f"/apis/networking.k8s.io/v1/namespaces/{p['metadata']['namespace']}/networkpolicies",
             p, post)
            for p in by_kind["NetworkPolicy"]
        ]  # fmt: skip
        self.run_all(nodes + pods + policies)
        self.run_all(status)


# --- one measured start ---------------------------------------------------------------------


def _poll_rules(netns: str, prefix: str, family: int) -> list[str]:
    tool = "ip6tables-nft-save" if family == 6 else "iptables-nft-save"
    with in_netns(netns):  # the child inherits this thread's namespace
        out = subprocess.run([tool, "-t", "filter"], capture_output=True, text=True, check=True)
    return our_rules(out.stdout, prefix)


def _jump_present(netns: str, prefix: str, family: int) -> bool:
    """Whether FORWARD jumps to our chains: a cheap probe (one chain, not the table)."""
    table = "ip6" if family == 6 else "ip"
    with in_netns(netns):
        out = subprocess.run(
            ["nft", "list", "chain", table, "filter", "FORWARD"], capture_output=True, text=True
        )
    return f"jump {prefix}-" in out.stdout


def _log_times(log_text: str, spawned_wall: float) -> dict[str, float]:
    """Seconds after spawn of the log lines the breakdown needs (first occurrence each)."""
    found: dict[str, float] = {}
    for line in log_text.splitlines():
        match = re.match(r"ts=(\S+) ", line)
        if not match:
            continue
        moment = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
        at = moment.replace(tzinfo=datetime.UTC).timestamp() - spawned_wall
        for key, needle in (
            ("backend_chosen", "iptables backend chosen"),
            ("list_pods", 'msg="pods: listed'),
            ("list_namespaces", 'msg="namespaces: listed'),
            ("list_networkpolicies", 'msg="networkpolicies.networking.k8s.io: listed'),
            ("list_nodes", 'msg="nodes: listed'),
            ("synced", "msg=synced"),
        ):
            if needle in line and key not in found:
                found[key] = at
                if key == "synced":
                    for name in ("compile_ms", "total_ms"):
                        value = re.search(rf"{name}=(\S+)", line)
                        if value:
                            found[name] = float(value.group(1).strip('"')) / 1000
    return found


def one_start(netns: str, kubeconfig: Path, workdir: Path, timeout: float = 60.0) -> dict[str, Any]:
    prefix = f"S{secrets.token_hex(2)}"
    log_path = workdir / f"agent-{prefix}.log"
    argv = [
        "ip", "netns", "exec", netns, *AGENT_COMMAND, "run", "--node", MEASURED_NODE,
        "--kubeconfig", str(kubeconfig), "--backend", "nft", "--chain-prefix", prefix,
        "--metrics-address", f"127.0.0.1:{METRICS_PORT}",
    ]  # fmt: skip
    full_polls: list[tuple[float, dict[int, list[str]]]] = []
    seen: dict[int, float] = {}  # family -> end of the first cheap poll showing our jump
    at_seen: dict[int, list[str]] = {}  # family -> full save taken right after that
    poll_costs: list[float] = []
    with log_path.open("wb") as log:
        spawned_wall = time.time()
        spawned = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        # Cheap polls (the FORWARD chain only) until each family shows our jump; then
        # the whole table of that family, to check that what appeared is already final
        # (one restore per family is one nft transaction).
        # The full save (0.5 s at L) runs beside the probes, so the other family's
        # appearance is not seen late.
        saver = concurrent.futures.ThreadPoolExecutor(2)
        saves: dict[int, concurrent.futures.Future[list[str]]] = {}
        while len(seen) < 2:
            started = time.monotonic()
            for family in (4, 6):
                if family not in seen and _jump_present(netns, prefix, family):
                    seen[family] = time.monotonic() - spawned
                    saves[family] = saver.submit(_poll_rules, netns, prefix, family)
            time.sleep(POLL_PAUSE)  # leave the CPU to the agent between probes
            poll_costs.append(time.monotonic() - started)
            if proc.poll() is not None:
                raise RuntimeError(
                    f"agent exited {proc.returncode}: {log_path.read_text()[-2000:]}"
                )
            if time.monotonic() - spawned > timeout:
                raise TimeoutError(f"no rules within {timeout}s: {log_path.read_text()[-2000:]}")
        at_seen = {family: future.result() for family, future in saves.items()}
        saver.shutdown()
        while "msg=synced" not in log_path.read_text():
            if time.monotonic() - spawned > timeout:
                raise TimeoutError(f"not synced within {timeout}s")
            time.sleep(0.05)
        # "final": two consecutive full saves after the first "synced" agree.
        while True:
            snapshot = {family: _poll_rules(netns, prefix, family) for family in (4, 6)}
            full_polls.append((time.monotonic() - spawned, snapshot))
            if len(full_polls) >= 2 and full_polls[-1][1] == full_polls[-2][1]:
                break
        final = full_polls[-1][1]
        if not final[4] or not final[6]:
            raise RuntimeError("the agent synced but a family has no rules")
        # A family whose first appearance was not yet final counts from the first full
        # save that was (never the case with one restore per family, but checked).
        complete = {
            family: seen[family]
            if at_seen[family] == final[family]
            else next(at for at, snap in full_polls if snap[family] == final[family])
            for family in (4, 6)
        }
        programmed = max(complete.values())
        status, text = http_get(netns, METRICS_PORT, "/metrics")
        scrape = Scrape.parse(text) if status == 200 else None
    finally:
        proc.terminate()  # our own child, by PID
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(
            ["ip", "netns", "exec", netns, AGENT, "cleanup", "--backend", "nft",
             "--chain-prefix", prefix],
            check=False, capture_output=True,
        )  # fmt: skip
    times = _log_times(log_path.read_text(), spawned_wall)
    result: dict[str, Any] = {
        "programmed_s": programmed,
        "poll_ms": statistics.median(poll_costs) * 1000,
        "rules": {family: len(final[family]) for family in (4, 6)},
        "first_appearance_final": all(at_seen[f] == final[f] for f in (4, 6)),
        **times,
    }
    if scrape is not None:
        for name in ("ipv4", "ipv6"):
            with contextlib.suppress(Exception):
                result[f"restore_{name}_s"] = scrape.value(
                    "netpol_agent_iptables_restore_duration_seconds_sum", family=name
                )
    return result


def imports_seconds() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    return time.monotonic() - started


# --- the whole benchmark ------------------------------------------------------------------


def run_bench(runs: int = 3, size: str = "L", *, verbose: bool = True) -> dict[str, Any]:
    tag = f"{os.getpid() % 10000:04d}{secrets.token_hex(1)}"
    netns = f"su{tag}"
    cp = ControlPlane(build_binaries(quiet=True)).start()
    forwarder: NetnsForwarder | None = None
    created = False
    workdir: Path | None = None
    succeeded = False
    try:
        subprocess.run(["ip", "netns", "add", netns], check=True)
        created = True
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"netpol-startup-{tag}-"))
        objects = generate(SIZES[size])
        started = time.monotonic()
        Loader(cp).load(objects)
        if verbose:
            print(
                f"  loaded {len(objects)} objects in {time.monotonic() - started:.1f}s",
                file=sys.stderr,
            )
        forwarder = NetnsForwarder(netns, FORWARD_PORT, ("127.0.0.1", cp.apiserver_port)).start()
        kubeconfig = kubeconfig_via_forwarder(
            cp.admin_kubeconfig, workdir / "kubeconfig", FORWARD_PORT
        )
        samples: list[dict[str, Any]] = []
        for index in range(runs):
            imports = imports_seconds()
            sample = one_start(netns, kubeconfig, workdir)
            sample["imports_s"] = imports
            samples.append(sample)
            if verbose:
                print(f"  run {index + 1}: {_line(sample)}", file=sys.stderr)
        keys = sorted({k for s in samples for k, v in s.items() if isinstance(v, float)})
        succeeded = True
        return {
            "definition": "process spawn -> first poll where the netns holds the agent's final "
            "rules for ipv4 AND ipv6 (upper bound by one poll)",
            "size": size,
            "runs": runs,
            "median": {k: statistics.median(s[k] for s in samples if k in s) for k in keys},
            "samples": samples,
        }
    finally:
        if forwarder is not None:
            forwarder.stop()
        if created:
            subprocess.run(["ip", "netns", "del", netns], check=False)
        cp.stop()
        if workdir is not None:
            if succeeded:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                print(f"  agent logs kept in {workdir}", file=sys.stderr)


ORDER = (
    "imports_s", "backend_chosen", "list_namespaces", "list_networkpolicies", "list_pods",
    "list_nodes", "compile_ms", "restore_ipv4_s", "restore_ipv6_s", "total_ms", "synced",
    "programmed_s", "poll_ms",
)  # fmt: skip


def _line(values: dict[str, Any]) -> str:
    return "  ".join(
        f"{k}={values[k] * (1 if k == 'poll_ms' else 1000):.0f}ms"
        if k != "poll_ms"
        else f"poll={values[k]:.0f}ms"
        for k in ORDER
        if k in values
    )


def render(result: dict[str, Any]) -> str:
    median = result["median"]
    names = {
        "imports_s": "interpreter + imports (separate process)",
        "backend_chosen": "backend chosen, 1st log line (since spawn)",
        "list_namespaces": "namespaces listed (since spawn)",
        "list_networkpolicies": "networkpolicies listed (since spawn)",
        "list_pods": "pods listed (since spawn)",
        "list_nodes": "nodes listed (since spawn)",
        "compile_ms": "initial compile, both families",
        "restore_ipv4_s": "restore ipv4",
        "restore_ipv6_s": "restore ipv6",
        "total_ms": "initial pass total (compile + restores)",
        "synced": "'synced' logged (since spawn)",
        "programmed_s": "PROGRAMMED, both families (since spawn)",
    }
    lines = [f"startup at {result['size']}, median of {result['runs']} ({result['definition']})"]
    for key, label in names.items():
        if key in median:
            lines.append(f"  {label:44s} {median[key] * 1000:8.0f} ms")
    lines.append(f"  {'one poll (resolution)':44s} {median.get('poll_ms', 0):8.0f} ms")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", default="L", choices=sorted(SIZES))
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench.startup needs root (network namespaces, iptables)")
    result = run_bench(args.runs, args.size)
    print(render(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
