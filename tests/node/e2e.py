"""Kubernetes' own NetworkPolicy e2e tests, unmodified, against the real nodes.

``python -m tests.node.e2e --focus REGEX`` (as root):

1. builds (cached) ``e2e.test`` from the k8s.io/kubernetes pin (tests/cluster/build-e2e.sh)
   and the images: our pause, agnhost named exactly as the pinned suite expects
   (``registry.k8s.io/e2e-test-images/agnhost:<version>``, tests/node/images.sh agnhost)
   and the agent's own image (or ``NETPOL_AGENT_NODE_AGENT_ARCHIVE`` / ``..._REF``);
2. starts a :class:`tests.node.cluster.NodeCluster`, imports agnhost and the agent image
   on every node and deploys ``deploy/`` as users do (:meth:`NodeCluster.deploy_agent`);
3. runs ``e2e.test`` as kube-network-policies' CI runs it on kind (``--provider=local``,
   ``KUBERNETES_CONFORMANCE_TEST=y``, ``--disable-log-dump``) with ``--ginkgo.focus``
   (default ``Netpol``) and ``--ginkgo.skip`` (default: what this machine and the
   cluster's single family cannot run, :data:`SKIPS`), the JUnit report in ``--report-dir``;

4. prints pass / fail / skip per test with its wall time (from the JUnit report) and
   writes the same as ``results.json`` in the report directory.

``--ip-family ipv6`` builds the cluster IPv6 single-stack (kind's ipv6 ranges), so the
suite, which probes one address per pod, runs over IPv6.

The exit code is 0 when no selected test failed. ``--keep-going`` is not needed: the
suite runs every selected test whatever the outcome of the others.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.node.cluster import REPO, NodeCluster, NodeClusterError, _key_values, build_images

BUILD_E2E_SCRIPT = REPO / "tests" / "cluster" / "build-e2e.sh"

#: kube-network-policies' CI focus on kind.
DEFAULT_FOCUS = "Netpol"
#: SCTP: this machine's kernel has no SCTP sockets (the SCTP cases are
#: ``[Feature:SCTPConnectivity]``). IPv6 / dual-stack: the cluster is IPv4 only.
DEFAULT_SKIP = r"SCTPConnectivity|IPv6|DualStack|\[Feature:IPv6DualStack\]"
#: The same for an IPv6 single-stack cluster (``--ip-family ipv6``): SCTP as above, and
#: what needs both families. kube-network-policies' ipv6 kind lane runs ``Netpol`` with
#: no skip at all; no Netpol spec is marked IPv4-only (the ipBlock specs size their
#: CIDRs from the pod IPs' family).
IPV6_SKIP = r"SCTPConnectivity|IPv4|DualStack|\[Feature:IPv6DualStack\]"
SKIPS = {"ipv4": DEFAULT_SKIP, "ipv6": IPV6_SKIP}
ENV_AGENT_ARCHIVE = "NETPOL_AGENT_NODE_AGENT_ARCHIVE"
ENV_AGENT_REF = "NETPOL_AGENT_NODE_AGENT_REF"


@dataclass
class Result:
    name: str
    status: str  # passed, failed, skipped
    seconds: float
    message: str = ""


def build_e2e(*names: str) -> dict[str, Path]:
    """tests/cluster/build-e2e.sh NAME...: {"E2E_TEST": path, "GINKGO": path, ...}."""
    proc = subprocess.run(
        ["bash", str(BUILD_E2E_SCRIPT), *names], stdout=subprocess.PIPE, text=True, check=False
    )
    if proc.returncode != 0:
        raise NodeClusterError(f"{BUILD_E2E_SCRIPT} failed with exit code {proc.returncode}")
    return {k: Path(v) for k, v in _key_values(proc.stdout).items()}


def parse_junit(path: Path, focus: str) -> list[Result]:
    """The test cases of a ginkgo JUnit report whose names match ``focus``.

    Specs that the focus/skip filters left out are in the report too (as skipped, with
    no message); only names matching ``focus`` are returned, so the table shows the
    tests asked for, and skips by ``--ginkgo.skip`` among them.
    """
    results = []
    pattern = re.compile(focus)
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        if not pattern.search(name):
            continue
        seconds = float(case.get("time", "0") or 0)
        failure = case.find("failure")
        error = case.find("error")
        skipped = case.find("skipped")
        if failure is not None or error is not None:
            node = failure if failure is not None else error
            assert node is not None
            msg = (node.get("message") or node.text or "").strip()
            results.append(Result(name, "failed", seconds, msg))
        elif skipped is not None:
            results.append(Result(name, "skipped", seconds, (skipped.get("message") or "").strip()))
        else:
            results.append(Result(name, "passed", seconds))
    return results


def short_name(name: str) -> str:
    """The test's name without the common ``[sig-network] Netpol`` prefix."""
    return re.sub(
        r"^(\[It\] )?\[sig-network\] Netpol (NetworkPolicy between server and "
        r"client )?",
        "",
        name,
    )


def table(results: Sequence[Result]) -> str:
    lines = [f"{'result':8} {'seconds':>8}  test"]
    for r in results:
        lines.append(f"{r.status:8} {r.seconds:8.1f}  {short_name(r.name)}")
    counts = {s: sum(1 for r in results if r.status == s) for s in ("passed", "failed", "skipped")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def run_suite(
    cluster: NodeCluster,
    e2e_test: Path,
    report_dir: Path,
    *,
    focus: str,
    skip: str,
    timeout: str,
    extra: Sequence[str],
    nodes: int = 1,
    ginkgo: Path | None = None,
) -> tuple[int, float]:
    """Run e2e.test against the cluster; returns (exit code, seconds).

    ``nodes`` > 1 runs it through the ginkgo CLI (``ginkgo --nodes=N e2e.test -- ...``),
    as kube-network-policies' CI does with 25.
    """
    suite_args = [
        f"--kubeconfig={cluster.kubeconfig}",
        f"--kubectl-path={cluster.kubectl_bin}",
        "--provider=local",
        "--dump-logs-on-failure=false",
        "--disable-log-dump=true",
        f"--report-dir={report_dir}",
    ]
    ginkgo_args = [
        f"--focus={focus}",
        f"--timeout={timeout}",
        "-v",
        "--no-color",
        *([f"--skip={skip}"] if skip else []),
    ]
    if nodes > 1:
        if ginkgo is None:
            raise NodeClusterError("--nodes needs the ginkgo CLI")
        argv = [
            str(ginkgo),
            f"--nodes={nodes}",
            *ginkgo_args,
            str(e2e_test),
            "--",
            *suite_args,
            *extra,
        ]
    else:
        argv = [
            str(e2e_test),
            *suite_args,
            *(f"--ginkgo.{a.lstrip('-')}" for a in ginkgo_args),
            *extra,
        ]
    env = dict(os.environ, KUBERNETES_CONFORMANCE_TEST="y")
    (report_dir / "command.txt").write_text(
        "KUBERNETES_CONFORMANCE_TEST=y " + shlex.join(argv) + "\n"
    )
    start = time.monotonic()
    with open(report_dir / "e2e.log", "wb") as log:
        proc = subprocess.run(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, check=False, cwd=report_dir
        )
    return proc.returncode, time.monotonic() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.node.e2e",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--focus", default=DEFAULT_FOCUS, help="--ginkgo.focus (a regex)")
    parser.add_argument(
        "--skip",
        help="--ginkgo.skip (a regex; default: what the IP family cannot run, "
        f"ipv4 {DEFAULT_SKIP!r}, ipv6 {IPV6_SKIP!r})",
    )
    parser.add_argument(
        "--ip-family",
        choices=sorted(SKIPS),
        default="ipv4",
        help="the cluster's single IP family (ipv6: kind's ipv6 ranges; the suite probes "
        "status.podIP, so this is the family it tests)",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        help="where e2e.test writes its JUnit report, its log and "
        "results.json (default: a new directory under /tmp)",
    )
    parser.add_argument("--timeout", default="2h", help="--ginkgo.timeout for the whole run")
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="parallel ginkgo processes (> 1: through the ginkgo CLI)",
    )
    parser.add_argument("extra", nargs="*", help="more e2e.test arguments (after --)")
    args = parser.parse_args(argv)
    if args.skip is None:
        args.skip = SKIPS[args.ip_family]

    report_dir = args.report_dir or Path(tempfile.mkdtemp(prefix="netpol-e2e-"))
    report_dir = report_dir.resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def note(msg: str) -> None:
        print(f"e2e: {msg}", file=sys.stderr, flush=True)

    start = time.monotonic()
    bins = build_e2e("e2e.test", *(["ginkgo"] if args.nodes > 1 else []))
    e2e_test = bins["E2E_TEST"]
    images = build_images("pause", "agnhost")
    archive, ref = os.environ.get(ENV_AGENT_ARCHIVE), os.environ.get(ENV_AGENT_REF)
    if not (archive and ref):
        agent = build_images("agent")
        archive, ref = agent["AGENT"], agent["AGENT_REF"]
    timings["build"] = time.monotonic() - start
    note(f"e2e.test {e2e_test}; {images['AGNHOST_REF']}; agent {ref} ({timings['build']:.0f}s)")

    with NodeCluster(
        pause=(Path(images["PAUSE"]), images["PAUSE_REF"]), ip_family=args.ip_family
    ) as cluster:
        timings["nodes_ready"] = cluster.timings["nodes_ready"]
        cluster.import_image(images["AGNHOST"])
        cluster.import_image(archive)
        cluster.deploy_agent(ref)
        timings["agent_ready"] = cluster.timings["agent_ready"]
        note(
            f"nodes Ready in {timings['nodes_ready']:.0f}s, agent Ready in "
            f"{timings['agent_ready']:.0f}s; running e2e.test (log: {report_dir}/e2e.log)"
        )
        code, timings["suite"] = run_suite(
            cluster,
            e2e_test,
            report_dir,
            focus=args.focus,
            skip=args.skip,
            timeout=args.timeout,
            extra=args.extra,
            nodes=args.nodes,
            ginkgo=bins.get("GINKGO"),
        )
    timings["total"] = time.monotonic() - start

    reports = sorted(report_dir.glob("junit*.xml"))
    results = [r for p in reports for r in parse_junit(p, args.focus)]
    (report_dir / "results.json").write_text(
        json.dumps(
            {
                "ip_family": args.ip_family,
                "focus": args.focus,
                "skip": args.skip,
                "nodes": args.nodes,
                "exit_code": code,
                "timings": timings,
                "agent_image": ref,
                "agnhost_image": images["AGNHOST_REF"],
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
        + "\n"
    )
    print(table(results))
    print(", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print(f"e2e.test exit code {code}; report in {report_dir}")
    if not reports:
        note("no JUnit report was written")
        return code or 1
    return 1 if code or any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
