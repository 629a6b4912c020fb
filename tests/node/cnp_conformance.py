"""The network-policy-api conformance suite, unmodified, against the real nodes.

``python -m tests.node.cnp_conformance`` (as root):

1. builds (cached) the suite's test binary, ``go test -c
   sigs.k8s.io/network-policy-api/conformance`` from the pin in
   tests/cluster/gobuild/netpolapi-conformance (tests/cluster/build-cnp-conformance.sh), and
   the images: our pause, the agnhost its pods run, named as its manifests say
   (``registry.k8s.io/e2e-test-images/agnhost:2.45``, tests/node/images.sh cnp-agnhost) and
   the agent's own image (or ``NETPOL_AGENT_NODE_AGENT_ARCHIVE`` / ``..._REF``);
2. starts a :class:`tests.node.cluster.NodeCluster`, installs the *experimental*
   ClusterNetworkPolicy CRD of the same module version
   (:func:`tests.cluster.netpolapi.install_crd`, pinned in tests/cluster/gobuild/netpolapi,
   which build-cnp-conformance.sh checks; the standard CRD would drop ``nodes`` and named
   ports, which the experimental tests use) and deploys ``deploy/`` as users do
   (:meth:`NodeCluster.deploy_agent`);
3. installs :data:`NO_SCTP_SERVERS` (see there: this kernel has no SCTP sockets, and the
   suite's pods would never be Ready with a server that exits), then runs the binary as
   the module's own ``make conformance-profiles`` runs it (``go test -v ./conformance
   -run '^TestConformanceProfiles$' -args --conformance-profiles=ClusterNetworkPolicy``;
   -timeout 2h here, 20m there) with every feature of the profile,
   experimental ones included (``--supported-features``), the report in ``report.yaml``,
   through the Go toolchain's test2json so every test and subtest has a verdict and a time;
4. prints pass / fail / skip per test and per subtest with its wall time, writes the same
   as ``results.json`` in the report directory, and the command in ``command.txt``.

``--run REGEX`` narrows the selection to tests whose name (e.g. ``CNPAdminTierPriorityField``)
matches; ``--skip REGEX`` (default :data:`DEFAULT_SKIP`) leaves tests out with the test
binary's ``-test.skip``. The exit code is 0 when no selected test failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from tests.cluster.netpolapi import install_crd
from tests.node.cluster import (
    IP_FAMILY_LAYOUTS,
    REPO,
    NodeCluster,
    NodeClusterError,
    _key_values,
    build_images,
)

BUILD_SCRIPT = REPO / "tests" / "cluster" / "build-cnp-conformance.sh"

PROFILE = "ClusterNetworkPolicy"
#: Every feature of the profile: the standard one and both experimental ones.
FEATURES = (
    "ClusterNetworkPolicy",
    "ClusterNetworkPolicyNamedPorts",
    "ClusterNetworkPolicyEgressNodePeers",
)
EXPERIMENTAL_FEATURES = frozenset(FEATURES[1:])
#: The tests whose every check is SCTP: this machine's kernel has no SCTP sockets.
DEFAULT_SKIP = "SCTP"
TOP = "TestConformanceProfiles"
ENV_AGENT_ARCHIVE = "NETPOL_AGENT_NODE_AGENT_ARCHIVE"
ENV_AGENT_REF = "NETPOL_AGENT_NODE_AGENT_REF"

#: The suite's pods each run two ``agnhost porter`` SCTP servers (ports 9003 and 9005;
#: the host-network pods two more). This kernel has no SCTP sockets, so porter exits
#: (``Failed to listen SCTP``), the container restarts for ever, the pods are never Ready
#: and the suite stops in its setup. This policy, in the cluster and nowhere else, makes
#: those containers (and only those: the ones with a ``SERVE_SCTP_PORT_*`` variable)
#: run ``/agnhost pause`` instead, in the suite's namespaces only. Every other container
#: runs as the suite wrote it. The SCTP checks cannot pass either way: the tests made
#: only of them are left out (:data:`DEFAULT_SKIP`); a subtest that also pokes SCTP fails
#: at that poke, and the table says so.
NO_SCTP_SERVERS = """\
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata:
  name: cnp-conformance-no-sctp-servers
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: ["v1"]
      operations: ["CREATE"]
      resources: ["pods"]
    namespaceSelector:
      matchExpressions:
      - {key: conformance-house, operator: Exists}
  matchConditions:
  - name: runs-an-sctp-server
    expression: >-
      object.spec.containers.exists(c, has(c.env) &&
      c.env.exists(e, e.name.startsWith("SERVE_SCTP_PORT_")))
  failurePolicy: Fail
  reinvocationPolicy: Never
  mutations:
  - patchType: JSONPatch
    jsonPatch:
      expression: >-
        object.spec.containers.transformList(i, c,
        has(c.env) && c.env.exists(e, e.name.startsWith("SERVE_SCTP_PORT_")),
        JSONPatch{op: "replace", path: "/spec/containers/" + string(i) + "/command",
        value: ["/agnhost", "pause"]})
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata:
  name: cnp-conformance-no-sctp-servers
spec:
  policyName: cnp-conformance-no-sctp-servers
"""


@dataclass
class Result:
    """One test (``CNPAdminTierGress``) or subtest (``CNPAdminTierGress/Should ...``)."""

    name: str
    status: str  # passed, failed, skipped, not run, no verdict (started, never ended)
    seconds: float
    message: str = ""
    subtests: list[Result] = field(default_factory=list)
    experimental: bool = False
    reason: str = ""  #: why it failed, when known (:func:`failure_reason`)


@dataclass(frozen=True)
class SuiteTest:
    """A conformance test as the pinned module's conformance/tests/*.go declares it."""

    name: str
    features: tuple[str, ...]

    @property
    def experimental(self) -> bool:
        return any(f in EXPERIMENTAL_FEATURES for f in self.features)


def build_conformance() -> dict[str, str]:
    """tests/cluster/build-cnp-conformance.sh: {"CNP_CONFORMANCE_TEST": path, ...}."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
    )
    if proc.returncode != 0:
        raise NodeClusterError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
    return _key_values(proc.stdout)


def suite_tests(module_dir: Path) -> list[SuiteTest]:
    """Every test of the suite, in the order of its files, with the features it needs.

    Read from the module's source (``ShortName`` and ``Features`` of each
    ``suite.ConformanceTest``), so the table also lists the tests ``-test.skip`` left out,
    which the test binary does not mention at all.
    """
    tests = []
    block = re.compile(
        r'ShortName:\s*"(\w+)".*?Features:\s*\[\]suite\.SupportedFeature\{'
        r"(.*?)\}",
        re.S,
    )
    for path in sorted((module_dir / "conformance" / "tests").glob("*.go")):
        for match in block.finditer(path.read_text()):
            features = tuple(
                f.removeprefix("Support") for f in re.findall(r"suite\.(\w+)", match.group(2))
            )
            tests.append(SuiteTest(match.group(1), features))
    return tests


#: A namespace and pod like the suite's, to see the policy at work before the suite starts.
_PROBE_NAMESPACE = "cnp-conformance-admission-probe"
_PROBE_POD = f"""\
apiVersion: v1
kind: Pod
metadata:
  name: probe
  namespace: {_PROBE_NAMESPACE}
spec:
  containers:
  - name: sctp
    image: registry.k8s.io/e2e-test-images/agnhost:2.45
    command: ["/bin/bash", "-c", "/agnhost porter"]
    env:
    - name: SERVE_SCTP_PORT_9003
      value: foo
"""


def install_no_sctp_servers(cluster: NodeCluster, report_dir: Path, timeout: float = 60) -> None:
    """Apply :data:`NO_SCTP_SERVERS` and wait until the apiserver applies it.

    A new admission policy takes effect a moment after it is created (the apiserver
    loads it from a watch), and the suite creates its pods right away: a pod created in
    between keeps its SCTP server, which exits, and the suite's setup never ends. So a
    server-side dry run of a pod like the suite's, in a namespace labelled like the
    suite's, is repeated until the pod comes back changed.
    """
    path = report_dir / "no-sctp-servers.yaml"
    path.write_text(NO_SCTP_SERVERS)
    cluster.kubectl("apply", "-f", str(path))
    cluster.kubectl("create", "namespace", _PROBE_NAMESPACE)
    try:
        cluster.kubectl("label", "namespace", _PROBE_NAMESPACE, "conformance-house=probe")
        deadline = time.monotonic() + timeout
        while True:
            command = cluster.kubectl(
                "create", "--dry-run=server", "-o", "jsonpath={.spec.containers[0].command}",
                "-f", "-", input=_PROBE_POD,
            )  # fmt: skip
            if json.loads(command or "[]") == ["/agnhost", "pause"]:
                return
            if time.monotonic() > deadline:
                raise NodeClusterError(f"{path} not in effect after {timeout:.0f}s: {command}")
            time.sleep(1)
    finally:
        cluster.kubectl("delete", "namespace", _PROBE_NAMESPACE, "--wait=false")


def suite_argv(
    binary: Path, report_dir: Path, *, run: str, skip: str, timeout: str, agent_ref: str
) -> list[str]:
    """The test binary's command line (``-test.*`` flags, then the suite's own)."""
    return [
        str(binary),
        "-test.v=test2json",
        f"-test.run=^{TOP}$" + (f"/{run}" if run else ""),
        *([f"-test.skip=^{TOP}$/{skip}"] if skip else []),
        f"-test.timeout={timeout}",
        f"--conformance-profiles={PROFILE}",
        f"--supported-features={','.join(FEATURES)}",
        "--cleanup-base-resources=true",
        "--organization=netpol-agent",
        "--project=netpol-agent",
        "--url=https://example.invalid/netpol-agent",
        f"--version={agent_ref}",
        "--contact=netpol-agent maintainers",
        "--additional-info=python -m tests.node.cnp_conformance (tests/node/README.md)",
        f"--report-output={report_dir / 'report.yaml'}",
    ]


def run_suite(
    cluster: NodeCluster,
    binary: Path,
    test2json: Path,
    report_dir: Path,
    *,
    run: str = "",
    skip: str = DEFAULT_SKIP,
    timeout: str = "2h",
    agent_ref: str = "",
) -> tuple[int, float]:
    """Run the suite against the cluster; returns (exit code, seconds).

    Writes ``command.txt``, ``events.json`` (test2json's stream), ``conformance.log``
    (the suite's plain output) and ``placement.txt`` (the suite's pods, ``-o wide``) in
    ``report_dir``.
    """
    argv = [
        str(test2json),
        "-t",
        "-p",
        "conformance",
        *suite_argv(binary, report_dir, run=run, skip=skip, timeout=timeout, agent_ref=agent_ref),
    ]
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    (report_dir / "command.txt").write_text(
        f"KUBECONFIG={cluster.kubeconfig} " + shlex.join(argv) + "\n"
    )
    start = time.monotonic()
    with open(report_dir / "events.json", "wb") as events:
        proc = subprocess.Popen(
            argv, env=env, stdout=events, stderr=subprocess.STDOUT, cwd=report_dir
        )
        record_placement(cluster, proc, report_dir / "placement.txt")
    seconds = time.monotonic() - start
    with open(report_dir / "conformance.log", "w") as log:
        for event in read_events(report_dir / "events.json"):
            log.write(str(event.get("Output", "")))
    return proc.returncode, seconds


def record_placement(
    cluster: NodeCluster, proc: subprocess.Popen[bytes], path: Path, interval: float = 15.0
) -> None:
    """Until ``proc`` exits, keep in ``path`` where the suite's pods run (node, IP).

    The suite deletes its pods at the end; which client pod shares a node with which
    host-network server decides some verdicts (a pod's traffic to its own node).
    """
    while True:
        try:
            proc.wait(timeout=interval)
            return
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(NodeClusterError, subprocess.TimeoutExpired):
            pods = cluster.kubectl(
                "get", "pods", "-A", "-o", "wide", "-l", "conformance-house", timeout=30
            )
            if pods.count("\n") > 1:
                path.write_text(pods)


def read_events(path: Path) -> Iterable[dict[str, object]]:
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            yield {"Action": "output", "Output": line + "\n"}
            continue
        if isinstance(event, dict):
            yield event


#: The lines of a failed subtest's output worth repeating in the table.
_EVIDENCE = re.compile(
    r"FAILED Command was|Expected connection|Error:|error waiting|"
    r"Messages:|FAILED to execute|unable to"
)


def parse_events(path: Path, tests: Sequence[SuiteTest]) -> list[Result]:
    """Per test and per subtest verdicts from test2json's stream.

    Every test of ``tests`` is listed; one the run did not reach (left out by ``-test.run``
    or ``-test.skip``) is ``not run``.
    """
    verdicts: dict[str, tuple[str, float]] = {}
    output: dict[str, list[str]] = {}
    order: list[str] = []
    for event in read_events(path):
        name = str(event.get("Test") or "")
        if not name.startswith(TOP + "/"):
            continue
        name = name[len(TOP) + 1 :]
        action = event.get("Action")
        if action == "run" and name not in order:
            order.append(name)
        elif action == "output":
            output.setdefault(name, []).append(str(event.get("Output", "")))
        elif action in ("pass", "fail", "skip"):
            status = {"pass": "passed", "fail": "failed", "skip": "skipped"}[str(action)]
            elapsed = event.get("Elapsed", 0.0)
            verdicts[name] = (status, float(elapsed) if isinstance(elapsed, int | float) else 0.0)

    def result(name: str, *, experimental: bool = False) -> Result:
        status, seconds = verdicts.get(
            name, ("not run" if name not in order else "no verdict", 0.0)
        )
        lines = [line.strip() for line in output.get(name, [])]
        if status == "failed":
            message = " | ".join(line for line in lines if _EVIDENCE.search(line))
        elif status == "skipped":
            message = " | ".join(line for line in lines if "Skipping" in line or "SKIP" in line)
        else:
            message = ""
        display = name.split("/", 1)[-1].replace("_", " ") if "/" in name else name
        return Result(display, status, seconds, message[-3000:], experimental=experimental)

    results = []
    for test in tests:
        top = result(test.name, experimental=test.experimental)
        if top.status == "not run":
            top.message = (
                "left out by -test.run / -test.skip"
                if order
                else "no test ran: the suite stopped in its setup (conformance.log)"
            )
        top.subtests = [result(sub) for sub in order if sub.startswith(test.name + "/")]
        results.append(top)
    return results


def last_failed_poke(result: Result) -> str:
    """The last poke (``/agnhost connect ...``) the subtest logged as failed, or "".

    The suite retries a poke until it gives the expected result or its timeout passes, and
    logs every failed try, so only the last one is the poke that failed the subtest (the
    subtest stops there: the pokes after it were not checked).
    """
    commands = re.findall(r"FAILED Command was (\[[^\]]*\])", result.message)
    return commands[-1] if commands else ""


SCTP_POKE = "SCTP poke (this kernel has no SCTP sockets)"
OWN_NODE = "a pod to its own node (INPUT, which the agent does not filter)"


def failure_reason(result: Result, node_of_pod: Mapping[str, str] | None = None) -> str:
    """Why a subtest failed, when the output says: an SCTP poke, or a pod reaching its own
    node (``node_of_pod``: "namespace/pod" -> the IP of the node it ran on)."""
    if "--protocol=sctp" in last_failed_poke(result):
        return SCTP_POKE
    connected = re.findall(
        r"Expected connection to fail from (\S+) to (\S+), but instead it successfully",
        result.message,
    )
    if connected and node_of_pod and node_of_pod.get(connected[-1][0]) == connected[-1][1]:
        return OWN_NODE
    return ""


def read_placement(path: Path, node_ips: Mapping[str, str]) -> dict[str, str]:
    """``placement.txt`` (``kubectl get pods -A -o wide``) as "namespace/pod" -> node IP."""
    if not path.exists():
        return {}
    placement = {}
    for line in path.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] in node_ips:
            placement[f"{fields[0]}/{fields[1]}"] = node_ips[fields[7]]
    return placement


def table(results: Sequence[Result], node_of_pod: Mapping[str, str] | None = None) -> str:
    lines = [f"{'result':8} {'seconds':>8}  test / subtest"]
    for r in results:
        tag = " [experimental]" if r.experimental else ""
        note = f"  ({r.message})" if r.status in ("not run", "skipped") and r.message else ""
        lines.append(f"{r.status:8} {r.seconds:8.1f}  {r.name}{tag}{note}")
        for s in r.subtests:
            reason = failure_reason(s, node_of_pod) if s.status == "failed" else ""
            lines.append(
                f"{s.status:8} {s.seconds:8.1f}    {s.name}" + (f"  <- {reason}" if reason else "")
            )
    lines.append(summary(results))
    return "\n".join(lines)


def summary(results: Sequence[Result]) -> str:
    def counts(items: Iterable[Result]) -> str:
        items = list(items)
        return ", ".join(
            f"{sum(1 for r in items if r.status == s)} {s}"
            for s in ("passed", "failed", "skipped", "not run", "no verdict")
            if s != "no verdict" or any(r.status == s for r in items)
        )

    subs = [s for r in results for s in r.subtests]
    return f"tests: {counts(results)}; subtests: {counts(subs)}"


def read_report(path: Path) -> dict[str, object]:
    """The suite's own report (``--report-output``), or {} if it wrote none."""
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.node.cnp_conformance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run",
        default="",
        help="only the tests whose name matches (a Go regex, -test.run's second level)",
    )
    parser.add_argument(
        "--skip",
        default=DEFAULT_SKIP,
        help="leave out the tests whose name matches (-test.skip's second "
        f"level; default {DEFAULT_SKIP!r}; '' runs them all)",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        help="where the suite's report, its log and results.json go "
        "(default: a new directory under /tmp)",
    )
    parser.add_argument("--timeout", default="2h", help="-test.timeout for the whole run")
    parser.add_argument(
        "--ip-family",
        choices=sorted(IP_FAMILY_LAYOUTS),
        default="ipv4",
        help="the cluster's single IP family (ipv6: kind's ipv6 ranges; the suite's pokes go "
        "to status.podIP and the nodes' InternalIP, so this is the family it tests)",
    )
    args = parser.parse_args(argv)

    report_dir = args.report_dir or Path(tempfile.mkdtemp(prefix="netpol-cnp-conformance-"))
    report_dir = report_dir.resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def note(msg: str) -> None:
        print(f"cnp-conformance: {msg}", file=sys.stderr, flush=True)

    start = time.monotonic()
    built = build_conformance()
    binary, test2json = Path(built["CNP_CONFORMANCE_TEST"]), Path(built["TEST2JSON"])
    module_dir = Path(built["CNP_MODULE_DIR"])
    images = build_images("pause", "cnp-agnhost")
    archive, ref = os.environ.get(ENV_AGENT_ARCHIVE), os.environ.get(ENV_AGENT_REF)
    if not (archive and ref):
        agent = build_images("agent")
        archive, ref = agent["AGENT"], agent["AGENT_REF"]
    timings["build"] = time.monotonic() - start
    note(
        f"{binary} ({built['CNP_API_VERSION']}); {images['CNP_AGNHOST_REF']}; agent {ref} "
        f"({timings['build']:.0f}s)"
    )

    with NodeCluster(
        pause=(Path(images["PAUSE"]), images["PAUSE_REF"]), ip_family=args.ip_family
    ) as cluster:
        timings["nodes_ready"] = cluster.timings["nodes_ready"]
        cluster.import_image(images["CNP_AGNHOST"])
        cluster.import_image(archive)
        # The CRD before the agent, as a cluster that uses ClusterNetworkPolicies has it.
        assert cluster.control_plane is not None
        install_crd(cluster.control_plane)
        cluster.deploy_agent(ref)
        timings["agent_ready"] = cluster.timings["agent_ready"]
        node_ips = {node.name: node.ip for node in cluster.nodes}
        install_no_sctp_servers(cluster, report_dir)
        note(
            f"nodes Ready in {timings['nodes_ready']:.0f}s, agent Ready in "
            f"{timings['agent_ready']:.0f}s; running the suite (log: "
            f"{report_dir}/conformance.log)"
        )
        code, timings["suite"] = run_suite(
            cluster,
            binary,
            test2json,
            report_dir,
            run=args.run,
            skip=args.skip,
            timeout=args.timeout,
            agent_ref=ref,
        )
    timings["total"] = time.monotonic() - start

    results = parse_events(report_dir / "events.json", suite_tests(module_dir))
    report = read_report(report_dir / "report.yaml")
    node_of_pod = read_placement(report_dir / "placement.txt", node_ips)
    for sub in (sub for test in results for sub in test.subtests if sub.status == "failed"):
        sub.reason = failure_reason(sub, node_of_pod)
    (report_dir / "results.json").write_text(
        json.dumps(
            {
                "run": args.run,
                "skip": args.skip,
                "ip_family": args.ip_family,
                "exit_code": code,
                "timings": timings,
                "agent_image": ref,
                "agnhost_image": images["CNP_AGNHOST_REF"],
                "api_version": built["CNP_API_VERSION"],
                "profile_reports": report.get("profiles", report.get("profileReports", [])),
                "results": [asdict(r) for r in results],
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(table(results, node_of_pod))
    print(", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print(f"test binary exit code {code}; report in {report_dir}")
    if not report:
        note("the suite wrote no report.yaml")
    return 1 if code or any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
