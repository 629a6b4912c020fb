"""File load time: the synthetic cluster read as ``render``/``explain``/``run`` read it.

The cluster (bench/synth.py, fixed seed; ``--size L+cnp`` adds 100
ClusterNetworkPolicies) is written twice: as multi-document YAML, and
as ``kubectl get ns,pods,netpol,nodes -A -o json`` writes it (one ``kind: List``). Each
is loaded through ``agent.cli.load_state_file`` (the reader plus parsing into the policy
snapshot: what ``render`` and ``explain`` do) and through the file source's parse (what
``run --source-file`` does). Medians of wall and CPU time over several runs.

Targets at L: YAML < 2 s, JSON < 0.5 s (``load_state_file``).

    python -m bench.load [--size L] [--runs 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from agent.cli import load_state_file
from agent.control.file_source import parse_state
from agent.model.reader import LIBYAML
from bench.synth import SIZES, generate

TARGETS = {"yaml": 2.0, "json": 0.5}


def write_files(size: str, directory: Path) -> dict[str, Path]:
    objects = generate(SIZES[size])
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    yaml_path = directory / f"{size}.yaml"
    yaml_path.write_text(yaml.dump_all(objects, Dumper=dumper, sort_keys=False))
    json_path = directory / f"{size}.json"
    json_path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "metadata": {"resourceVersion": ""},
                "items": objects,
            },
            indent=4,
        )
    )
    return {"yaml": yaml_path, "json": json_path}


def measure(load: Callable[[], Any], runs: int) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        load()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "wall": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "min_wall": min(walls),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--size", default="L", choices=sorted(SIZES))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"size": args.size, "libyaml": LIBYAML, "runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(args.size, Path(tmp))
        for fmt, path in files.items():
            built = load_state_file(str(path))
            assert not built.problems, built.problems[:3]
            data = path.read_bytes()
            results[fmt] = {
                "bytes": len(data),
                "objects": len(built.state.pods)
                + len(built.state.policies)
                + len(built.state.cluster_policies),
                "render/explain (load_state_file)": measure(
                    lambda path=path: load_state_file(str(path)), args.runs
                ),
                "run --source-file (parse_state)": measure(
                    lambda data=data, path=path: parse_state(data, str(path)), args.runs
                ),
            }
    print(f"load time, {args.size} cluster, libyaml={LIBYAML}, median of {args.runs} runs")
    print(f"{'format':6} {'MB':>5} {'entry point':34} {'wall s':>7} {'cpu s':>6} {'target':>7}")
    failed = False
    for fmt in ("yaml", "json"):
        figures = results[fmt]
        for entry, timing in figures.items():
            if not isinstance(timing, dict):
                continue
            target = TARGETS[fmt] if entry.startswith("render") else None
            verdict = ""
            if target is not None:
                ok = timing["wall"] < target
                failed |= not ok
                verdict = f"< {target:g} s {'ok' if ok else 'MISSED'}"
            print(
                f"{fmt:6} {figures['bytes'] / 1e6:5.1f} {entry:34} {timing['wall']:7.2f} "
                f"{timing['cpu']:6.2f} {verdict:>7}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if failed:
        print("a target was missed (figures above; the machine may be busy: compare medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
