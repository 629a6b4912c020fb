"""The AKS network-policy tutorial, step by step, in the network-namespace lab.

``make demo`` (root) runs this: two lab nodes, namespaces ``development`` and ``production``,
a backend web server and a few clients, and the REAL agent (``netpol-agent run --once`` on
every node, through :meth:`tests.lab.topology.Lab.apply`).  After each step it prints the
policy, probes real TCP traffic between all pods (IPv4 and IPv6) and shows a grid.  At the end,
``netpol-agent explain`` for one allowed and one denied pair, and an excerpt of the chains the
agent programmed on the backend's node.

The exit code is 0 only if every step's connectivity equals the expected one (and explain
agrees), so this is also a test (``tests/lab/test_demo.py``).

Environment: ``DEMO_BACKEND=nft`` (default) or ``legacy``; ``NO_COLOR`` disables colour
(colour is only used when stdout is a terminal anyway).

Everything (namespaces, links, chains) is removed at the end, on failure, on Ctrl-C and on
SIGTERM: the :class:`~tests.lab.topology.Lab` context manager and its ``atexit`` hook do it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from tests.lab.nsutil import LabCommandError, run
from tests.lab.ownership import owner_marker, signals_as_interrupt, sweep_stale_labs
from tests.lab.prober import Matrix, Probe, Prober, Verdict
from tests.lab.topology import (
    Backend,
    ContainerPort,
    Lab,
    LabSpec,
    NamespaceSpec,
    PodSpec,
)

BACKEND_POD = "development/backend"
DEV_FRONTEND = "development/frontend"
DEV_OTHER = "development/other"
PROD_FRONTEND = "production/frontend"
PODS: tuple[str, ...] = (BACKEND_POD, DEV_FRONTEND, DEV_OTHER, PROD_FRONTEND)
SHORT: Mapping[str, str] = {
    BACKEND_POD: "dev/backend",
    DEV_FRONTEND: "dev/frontend",
    DEV_OTHER: "dev/other",
    PROD_FRONTEND: "prod/frontend",
}
PORT = 80
FAMILIES: tuple[int, ...] = (4, 6)
PROBE_TIMEOUT = 1.0  # a denied connection costs this once per step (all probes fly at once)
EXCERPT_LINES = 20
BACKENDS: Mapping[str, Backend] = {"nft": "nft", "legacy": "legacy"}

# Every pod serves TCP 80 (the "web server"); UDP 80 is the lab's echo used by its readiness
# check (Lab.wait_ready probes UDP 80 between all endpoints).
PORTS = (ContainerPort("http", PORT, "TCP"), ContainerPort("echo", PORT, "UDP"))


def demo_spec() -> LabSpec:
    """Two nodes; the backend shares node-1 with the production frontend, so both same-node
    (bridged) and cross-node (routed) traffic is exercised, allowed and denied."""
    return LabSpec(
        nodes=("node-1", "node-2"),
        namespaces=(
            NamespaceSpec("development", {"purpose": "development"}),
            NamespaceSpec("production", {"purpose": "production"}),
        ),
        pods=(
            PodSpec("development", "backend", "node-1", {"app": "webapp", "role": "backend"}, PORTS),
            PodSpec("development", "frontend", "node-2", {"app": "webapp", "role": "frontend"}, PORTS),
            PodSpec("development", "other", "node-2", {"app": "other"}, PORTS),
            PodSpec("production", "frontend", "node-1", {"app": "webapp", "role": "frontend"}, PORTS),
        ),
        external=False,
    )  # fmt: skip


# ------------------------------------------------------------------------------ the steps
def backend_policy(ingress: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "backend-policy", "namespace": "development"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "webapp", "role": "backend"}},
            "ingress": ingress,
        },
    }


FRONTEND_SELECTOR: dict[str, Any] = {"matchLabels": {"app": "webapp", "role": "frontend"}}


@dataclass(frozen=True)
class Step:
    number: int
    title: str
    explanation: str
    policy: dict[str, Any] | None
    reach_backend: frozenset[str]  # the pods that may connect to the backend

    def expected(self, probe: Probe) -> bool:
        """Only the backend is ever selected by a policy: every other pod is reachable."""
        return probe.dst != BACKEND_POD or probe.src in self.reach_backend


STEPS: tuple[Step, ...] = (
    Step(
        0,
        "No policy",
        "Without a NetworkPolicy every pod accepts traffic from everyone.",
        None,
        frozenset({DEV_FRONTEND, DEV_OTHER, PROD_FRONTEND}),
    ),
    Step(
        1,
        "Deny all inbound traffic to the backend",
        "backend-policy selects app=webapp,role=backend and allows no ingress, "
        "so nobody reaches the backend.",
        backend_policy([]),
        frozenset(),
    ),
    Step(
        2,
        "Allow inbound traffic based on a pod label",
        "Pods labelled app=webapp,role=frontend (namespaceSelector {} = in any namespace) may "
        "reach the backend; the other pod may not.",
        backend_policy([{"from": [{"namespaceSelector": {}, "podSelector": FRONTEND_SELECTOR}]}]),
        frozenset({DEV_FRONTEND, PROD_FRONTEND}),
    ),
    Step(
        3,
        "Allow traffic only from within a defined namespace",
        "Only frontend pods in namespaces labelled purpose=development (one peer: namespace "
        "AND pod selector) may reach the backend; the production frontend is now denied.",
        backend_policy(
            [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"purpose": "development"}},
                            "podSelector": FRONTEND_SELECTOR,
                        }
                    ]
                }
            ]
        ),
        frozenset({DEV_FRONTEND}),
    ),
)

# explain at the end, against the final state: (from, to, expected allowed)
EXPLAIN_PAIRS: tuple[tuple[str, str, bool], ...] = (
    (DEV_FRONTEND, BACKEND_POD, True),
    (PROD_FRONTEND, BACKEND_POD, False),
)


# ------------------------------------------------------------------------------ output
class Printer:
    """Writes to ``out``; ANSI colours only when ``out`` is a terminal (and NO_COLOR is unset)."""

    CODES: Mapping[str, str] = {
        "bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36",
    }  # fmt: skip

    def __init__(self, out: TextIO, colour: bool | None = None) -> None:
        self.out = out
        if colour is None:
            isatty = getattr(out, "isatty", None)
            colour = bool(isatty and isatty()) and "NO_COLOR" not in os.environ
        self.colour = colour

    def style(self, text: str, *styles: str) -> str:
        if not self.colour or not styles:
            return text
        codes = ";".join(self.CODES[s] for s in styles)
        return f"\033[{codes}m{text}\033[0m"

    def __call__(self, text: str = "", *styles: str) -> None:
        self.out.write(self.style(text, *styles) + "\n")
        self.out.flush()

    def pad(self, text: str, width: int, *styles: str) -> str:
        """Left-justify, then colour (escape codes must not count towards the width)."""
        return self.style(text.ljust(width), *styles)


Cell = tuple[Verdict, ...]  # one verdict per family, in FAMILIES order


def cell_of(m: Matrix, src: str, dst: str) -> Cell:
    return tuple(m.get(src, dst, PORT, "TCP", fam).verdict for fam in FAMILIES)


def cell_word(cell: Cell) -> str:
    """``✔ allowed`` / ``✘ DENIED`` when both families agree, else per family."""
    names = {
        Verdict.ALLOWED: "✔ allowed",
        Verdict.DENIED: "✘ DENIED",
        Verdict.REFUSED: "refused",
        Verdict.ERROR: "error",
    }
    if len(set(cell)) == 1:
        return names[cell[0]]
    marks = {Verdict.ALLOWED: "✔", Verdict.DENIED: "✘", Verdict.REFUSED: "R", Verdict.ERROR: "E"}
    return " ".join(f"v{fam}{marks[v]}" for fam, v in zip(FAMILIES, cell, strict=True))


def render_grid(
    p: Printer, m: Matrix, step: Step, previous: Matrix | None
) -> tuple[list[str], list[str]]:
    """The grid lines, and the change lines (``src → dst: before → after``)."""
    first = max(len(SHORT[s]) for s in PODS) + 3
    width = max(len(SHORT[d]) for d in PODS) + 3
    lines = [
        "  " + p.pad("from \\ to", first, "dim")
        + "".join(p.pad(SHORT[d], width if d != PODS[-1] else 0, "bold") for d in PODS)
    ]  # fmt: skip
    changes: list[str] = []
    for src in PODS:
        row = "  " + p.pad(SHORT[src], first, "bold")
        for dst in PODS:
            w = width if dst != PODS[-1] else 0  # no trailing blanks
            if src == dst:
                row += p.pad("·", w, "dim")
                continue
            cell = cell_of(m, src, dst)
            want = (
                Verdict.ALLOWED if step.expected(Probe(src, dst, PORT, "TCP")) else Verdict.DENIED
            )
            ok = all(v is want for v in cell)
            before = cell_of(previous, src, dst) if previous is not None else None
            changed = before is not None and before != cell
            text = cell_word(cell) + ("*" if changed else "") + ("" if ok else " !")
            colour = "green" if cell == (Verdict.ALLOWED,) * len(cell) else "red"
            styles = (colour, "bold") if changed or not ok else (colour,)
            row += p.pad(text, w, *styles)
            if changed and before is not None:
                changes.append(
                    f"{SHORT[src]} → {SHORT[dst]}: {cell_word(before)} → {cell_word(cell)}"
                )
        lines.append(row)
    return lines, changes


def probe_all(prober: Prober) -> Matrix:
    probes = [
        Probe(src, dst, PORT, "TCP", fam)
        for fam in FAMILIES
        for src in PODS
        for dst in PODS
        if src != dst  # a pod reaching itself never leaves its own namespace
    ]
    return prober.run(probes)


def policy_yaml(policy: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(policy), sort_keys=False, default_flow_style=False)


# ------------------------------------------------------------------------------ the run
@dataclass
class StepResult:
    step: Step
    matrix: Matrix
    mismatches: int


def run_step(
    p: Printer, lab: Lab, prober: Prober, backend: Backend, step: Step, previous: Matrix | None
) -> StepResult:
    p()
    p(f"━━ Step {step.number}: {step.title} ━━", "bold", "cyan")
    for line in textwrap.wrap(step.explanation, 96):
        p(line)
    p()
    policies = [step.policy] if step.policy is not None else []
    if step.policy is not None:
        for line in policy_yaml(step.policy).splitlines():
            p("    " + line, "dim")
    else:
        p("    (no NetworkPolicy objects)", "dim")
    t0 = time.monotonic()
    lab.apply(policies, backend)
    t_apply = time.monotonic() - t0
    m = probe_all(prober)
    p()
    p(
        f"  TCP {PORT}, IPv4 + IPv6 (agent synced {len(lab.nodes)} nodes in {t_apply:.1f}s, "
        f"{len(m)} probes in {m.elapsed:.1f}s):"
    )
    grid, changes = render_grid(p, m, step, previous)
    for line in grid:
        p(line)
    if previous is not None:
        if changes:
            p(f"  changed since step {step.number - 1} (*):", "yellow")
            for line in changes:
                p("    " + line, "yellow")
        else:
            p(f"  no change since step {step.number - 1}", "dim")
    mismatches = m.diff(step.expected)
    if mismatches:
        p(f"  ✘ {len(mismatches)} of {len(m)} probes differ from the expected result (!):",
          "red", "bold")  # fmt: skip
        for mm in mismatches:
            p(f"    {mm}", "red")
    else:
        p(f"  ✔ as expected: backend reachable from "
          f"{', '.join(SHORT[s] for s in PODS if s in step.reach_backend) or 'nobody'}",
          "green")  # fmt: skip
    return StepResult(step, m, len(mismatches))


def show_explain(p: Printer, state_file: Path) -> bool:
    p()
    p("━━ Why? `netpol-agent explain` on the final state ━━", "bold", "cyan")
    ok = True
    agent = str(Path(sys.executable).parent / "netpol-agent")
    for src, dst, want in EXPLAIN_PAIRS:
        argv = [agent, "explain", "-f", str(state_file), "--from", src, "--to", dst,
                "--port", f"{PORT}/TCP"]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        p()
        p(f"  $ netpol-agent explain -f state.yaml --from {src} --to {dst} --port {PORT}/TCP",
          "bold")  # fmt: skip
        for line in (proc.stdout + proc.stderr).rstrip().splitlines():
            colour = "green" if line.startswith("ALLOWED") else "red" if line.startswith(
                "DENIED") else ""  # fmt: skip
            p("  " + line, *((colour,) if colour else ()))
        word = "ALLOWED" if want else "DENIED"
        good = proc.returncode == (0 if want else 1) and proc.stdout.startswith(word)
        if not good:
            p(f"  ✘ expected {word} (exit {0 if want else 1}), got exit {proc.returncode}",
              "red", "bold")  # fmt: skip
        ok = ok and good
    return ok


def chain_excerpt(lab: Lab, backend: Backend, node: str) -> tuple[str, list[str]]:
    """``iptables-<flavor>-save`` in the node netns: the filter-table rules in our chains and
    the jumps to them."""
    tool = f"iptables-{'legacy' if backend == 'legacy' else 'nft'}-save"
    proc = run([tool, "-t", "filter"], netns=lab.node(node).netns, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("-A ")]
    return tool, [line for line in lines if lab.prefix in line]


def show_chains(p: Printer, lab: Lab, backend: Backend) -> bool:
    node = lab.node_of(BACKEND_POD).name
    tool, lines = chain_excerpt(lab, backend, node)
    p()
    p(f"━━ What got programmed: `{tool}` on {node} (the backend's node) ━━", "bold", "cyan")
    shown = f"first {EXCERPT_LINES} of {len(lines)}" if len(lines) > EXCERPT_LINES else "all"
    p(f"  {shown} rules in or jumping to our chains (prefix {lab.prefix!r}, unique to this "
      "run):", "dim")  # fmt: skip
    for line in lines[:EXCERPT_LINES]:
        p("    " + line)
    if len(lines) > EXCERPT_LINES:
        p(f"    … {len(lines) - EXCERPT_LINES} more", "dim")
    if not lines:
        p("  ✘ no chains with our prefix found", "red", "bold")
    return bool(lines)


def run_demo(p: Printer, backend: Backend) -> bool:
    started = time.monotonic()
    p("NetworkPolicy walkthrough (Azure AKS tutorial: \"Secure traffic between pods using "
      "network policies\")", "bold")  # fmt: skip
    p(f"in the netns lab, enforced by the real netpol-agent (backend: iptables-{backend})")
    sweep_stale_labs()
    lab = Lab(demo_spec())
    with owner_marker(lab.prefix), lab:
        p()
        for name, pod in lab.pods.items():
            labels = ",".join(f"{k}={v}" for k, v in lab.pod_labels[name].items())
            p(f"  {name:<22} {pod.spec.node}  {pod.ipv4:<12} {labels}", "dim")
        for ns in lab.spec.namespaces:
            labels = ",".join(f"{k}={v}" for k, v in (ns.labels or {}).items())
            p(f"  namespace {ns.name:<12} {labels}", "dim")
        p(f"  lab {lab.prefix!r} ready in {time.monotonic() - started:.1f}s", "dim")

        prober = Prober(lab.pod_endpoints(), timeout=PROBE_TIMEOUT)
        results: list[StepResult] = []
        previous: Matrix | None = None
        for step in STEPS:
            res = run_step(p, lab, prober, backend, step, previous)
            results.append(res)
            previous = res.matrix
        assert lab.workdir is not None
        explain_ok = show_explain(p, lab.workdir / "state.yaml")
        chains_ok = show_chains(p, lab, backend)

    elapsed = time.monotonic() - started
    failed = [r.step.number for r in results if r.mismatches]
    p()
    if not failed and explain_ok and chains_ok:
        p(f"✔ all {len(results)} steps matched the expected connectivity; lab removed "
          f"({elapsed:.1f}s)", "green", "bold")  # fmt: skip
        return True
    why = [f"step(s) {', '.join(map(str, failed))} differ"] if failed else []
    why += [] if explain_ok else ["explain disagrees"]
    why += [] if chains_ok else ["no chains programmed"]
    p(f"✘ FAILED: {'; '.join(why)}; lab removed ({elapsed:.1f}s)", "red", "bold")
    return False


def main(
    argv: Sequence[str] | None = None,
    *,
    out: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """0 if every step matched, 1 if not (or the lab/agent failed), 2 on bad usage,
    130 when interrupted."""
    del argv  # no options: the environment selects the backend
    env = os.environ if environ is None else environ
    p = Printer(out if out is not None else sys.stdout)

    def err(text: str) -> None:
        p(text, "red", "bold")

    name = env.get("DEMO_BACKEND") or "nft"
    backend = BACKENDS.get(name)
    if backend is None:
        err(f"DEMO_BACKEND must be one of {', '.join(BACKENDS)}, not {name!r}")
        return 2
    if os.geteuid() != 0:
        err("the demo needs root (network namespaces, iptables): run `sudo make demo`")
        return 2
    try:
        with signals_as_interrupt():
            ok = run_demo(p, backend)
    except KeyboardInterrupt:
        err("\ninterrupted: the lab has been removed")
        return 130
    except LabCommandError as exc:
        err(f"✘ a lab command failed (the lab has been removed):\n{exc}")
        return 1
    except Exception as exc:
        err(f"✘ demo failed (the lab has been removed): {type(exc).__name__}: {exc}")
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
