"""The dataplane benchmark still runs: its smoke mode (tiny cluster, 1 round of 1 s).

The numbers of a 1-second run on a shared machine mean little; this only proves the
topology, the loadgen build, the policy checks and the measuring loop work end to end,
and that nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import dataplane

pytestmark = pytest.mark.lab

# The load generator is built with the project's Go toolchain (scripts/go-toolchain.sh).
if os.geteuid() != 0 or shutil.which("ip") is None:
    pytest.skip("needs root and iproute2", allow_module_level=True)


def _our_netns() -> set[str]:
    root = Path("/run/netns")
    prefix = f"bd{os.getpid() % 10000:04d}"
    return {p.name for p in root.iterdir() if p.name.startswith(prefix)} if root.is_dir() else set()


def test_dataplane_bench_smoke(tmp_path: Path) -> None:
    before = _our_netns()
    result: dict[str, Any] = dataplane.run("tiny", 1, 1.0, ("nft", "legacy"), verbose=False)
    text = dataplane.render(result)
    dataplane.write_results(result, tmp_path / "dataplane.json")

    assert result["rules_in_ruleset"] > 0
    assert [entry["backend"] for entry in result["backends"]] == ["nft", "legacy"]
    for entry in result["backends"]:
        assert entry["baseline_conn_per_s"]["median"] > 0, text
        assert entry["rules_conn_per_s"]["median"] > 0, text
        assert 0 < entry["ratio"] < 2, text
        checks = entry["checks"]
        assert checks["allowed_with_rules"] > 0
        assert checks["denied_with_rules_completed"] == 0
        assert checks["denied_without_jump_completed"] > 0
        counters = entry["counters"]
        assert counters["new_connections"] > 0
        assert counters["rules_matched_per_new_connection"] > 0
    assert (tmp_path / "dataplane.json").stat().st_size > 0
    assert _our_netns() == before  # every namespace of the run is gone


def _startup_netns() -> set[str]:
    root = Path("/run/netns")
    prefix = f"su{os.getpid() % 10000:04d}"
    return {p.name for p in root.iterdir() if p.name.startswith(prefix)} if root.is_dir() else set()


def test_startup_bench_smoke() -> None:
    """bench.startup end to end on the tiny cluster: real apiserver, real agent, both
    families seen complete at their first appearance, and no namespace left behind."""
    from bench import startup

    before = _startup_netns()
    result: dict[str, Any] = startup.run_bench(1, "tiny", verbose=False)
    text = startup.render(result)
    (sample,) = result["samples"]
    assert 0 < sample["programmed_s"] < 60, text
    assert sample["first_appearance_final"], text
    assert sample["rules"][4] > 0 and sample["rules"][6] > 0, text
    for key in ("backend_chosen", "list_pods", "list_namespaces", "list_networkpolicies"):
        assert 0 < sample[key] <= sample["programmed_s"], text
    assert _startup_netns() == before


def _cnp_netns() -> set[str]:
    root = Path("/run/netns")
    prefix = f"nc{os.getpid() % 10000:04d}"
    return {p.name for p in root.iterdir() if p.name.startswith(prefix)} if root.is_dir() else set()


def test_cluster_network_policy_bench_smoke() -> None:
    """bench.cnp on the tiny cluster without and with its ClusterNetworkPolicies: both
    read from the file, compiled, applied and changed on both backends; the policies add
    rules, their single changes write something, the incremental rules equal a fresh
    compile, and no namespace is left behind."""
    from bench import cnp

    before = _cnp_netns()
    result: dict[str, Any] = cnp.run(("nft", "legacy"), 1, smoke=True, verbose=False)
    text = cnp.render(result)
    without, with_cnp = result["variants"]
    for backend in ("nft", "legacy"):
        plain, policed = result["backends"][backend][without], result["backends"][backend][with_cnp]
        assert plain["cluster_policies"] == 0 and policed["cluster_policies"] > 0, text
        assert policed["pods"] == plain["pods"] and policed["policies"] == plain["policies"]
        assert policed["rules"]["ipv4"] > plain["rules"]["ipv4"], text
        assert "ClusterNetworkPolicy edited" not in plain["changes"], text
        assert policed["changes"]["ClusterNetworkPolicy edited"]["bytes"] > 0, text
        assert policed["changes"]["ClusterNetworkPolicy reordered"]["bytes"] > 0, text
        assert plain["incremental_equals_fresh"] and policed["incremental_equals_fresh"]
        assert policed["agent_rss_mib"] > 0, text
    assert result["traversal"][with_cnp]["worst"] > 0, text
    assert _cnp_netns() == before
