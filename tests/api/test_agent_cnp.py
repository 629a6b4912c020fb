"""The running agent and ClusterNetworkPolicy through the real API: without the CRD it
says so once and enforces NetworkPolicy; the CRD installed later is picked up; a CNP
created, updated and deleted moves the rules (traffic, the rule-change log, explain);
a node's labels changing moves a ``nodes`` peer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.cli import main
from tests.api.agent_harness import AgentProcess, ApiLab, converge, policy
from tests.cluster import netpolapi
from tests.lab.prober import Probe, Prober

pytestmark = [pytest.mark.cluster, pytest.mark.lab]
CHAIN_SUFFIX = "C"

NOT_SERVED = "ClusterNetworkPolicy API not served; enforcing NetworkPolicy only"
SERVED = "ClusterNetworkPolicy API served; enforcing ClusterNetworkPolicy"
CONVERGE = 10.0
# The agent looks for a CRD that was not there every 30 s (jittered below that).
CRD_NOTICED = 60.0
NS = "kubernetes.io/metadata.name"
PODS = [f"{ns}/{p}" for ns in "xyz" for p in "abc"]


def expect(
    api_lab: ApiLab,
    prober: Prober,
    allowed: Callable[[Probe], bool],
    sources: list[str],
    destinations: list[str],
) -> None:
    converge(
        prober,
        lambda p: p.src == p.dst or allowed(p),
        sources=sources,
        destinations=destinations,
        port_protocols=((80, "TCP"),),
        families=(4, 6),
        timeout=CONVERGE,
        context=api_lab.agent_logs,
    )


def explain(api_lab: ApiLab, capsys: Any, source: str, destination: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["explain", "--kubeconfig", str(api_lab.cp.admin_kubeconfig),
                 "--from", source, "--to", destination, "--port", "80/TCP"])  # fmt: skip
    return code, capsys.readouterr().out


def rule_log_reasons(agents: dict[str, AgentProcess], cnp_name: str) -> set[tuple[str, str]]:
    """(action, reason) of every rule-log line of that ClusterNetworkPolicy's rules."""
    return {
        (line["action"], line["reason"])
        for agent in agents.values()
        for line in agent.rule_log_lines()
        # "ClusterNetworkPolicy/<name> ingress[0]": the policy and its rule
        if (line.get("policy") or "").partition(" ")[0] == f"ClusterNetworkPolicy/{cnp_name}"
    }


def deny_ingress_to(name: str, subject_ns: str, from_ns: dict[str, Any]) -> tuple[str, Any]:
    return name, {
        "tier": "Admin",
        "priority": 10,
        "subject": {"namespaces": {"matchLabels": {NS: subject_ns}}},
        "ingress": [{"name": "deny", "action": "Deny", "from": [{"namespaces": from_ns}]}],
    }


@pytest.fixture
def cnps(api_lab: ApiLab) -> Iterator[netpolapi.ClusterPolicies]:
    helper = netpolapi.ClusterPolicies(api_lab.kube.api)
    try:
        yield helper
    finally:
        if netpolapi.crd_installed(api_lab.cp):
            helper.cleanup()


def test_without_the_crd_the_agent_says_so_once_enforces_networkpolicy_and_picks_cnps_up_later(
    api_lab: ApiLab, fast_prober: Prober, cnps: netpolapi.ClusterPolicies, capsys: Any
) -> None:
    netpolapi.remove_crd(api_lab.cp)
    api_lab.cluster.reset()
    agents = api_lab.start_agents()  # ready without the CRD
    try:
        api_lab.kube.create_network_policy("x", policy("deny-all", {"podSelector": {}}))
        expect(api_lab, fast_prober, lambda p: not p.dst.startswith("x/"),
               ["x/a", "z/a"], ["x/b", "y/a", "z/c"])  # fmt: skip

        netpolapi.install_crd(api_lab.cp)
        name, spec = deny_ingress_to("deny-to-y", "y", {})
        cnps.create(name, spec)
        for agent in agents.values():
            agent.wait_synced(CRD_NOTICED, cluster_policies=1)
        expect(api_lab, fast_prober, lambda p: p.dst.startswith("z/"),
               ["x/a", "z/a"], ["x/b", "y/a", "y/b", "z/c"])  # fmt: skip
        code, out = explain(api_lab, capsys, "z/a", "y/a")
        assert code == 1 and "deny-to-y" in out, out
        for agent in agents.values():
            logs = agent.logs()
            assert logs.count(NOT_SERVED) == 1, logs[-3000:]
            assert logs.count(SERVED) == 1, logs[-3000:]
    finally:
        api_lab.stop_agents(agents)


@pytest.fixture(scope="module")
def agents(api_lab: ApiLab) -> Iterator[dict[str, AgentProcess]]:
    netpolapi.install_crd(api_lab.cp)
    started = api_lab.start_agents()
    try:
        yield started
    finally:
        # Every policy gone and its removal written before the agents stop (a stop
        # mid-pass would change the rules, which stop_agents checks it does not).
        netpolapi.ClusterPolicies(api_lab.kube.api).delete_all()
        for agent in started.values():
            if agent.running:
                agent.wait_synced(cluster_policies=0)
        api_lab.stop_agents(started)
        netpolapi.remove_crd(api_lab.cp)


@pytest.fixture
def fresh(api_lab: ApiLab, agents: dict[str, AgentProcess]) -> dict[str, AgentProcess]:
    api_lab.cluster.reset()
    for agent in agents.values():
        agent.wait_synced(policies=0, cluster_policies=0)
    api_lab.lab.flush_conntrack()
    return agents


def test_a_cnp_created_updated_and_deleted_moves_the_rules(
    api_lab: ApiLab,
    fresh: dict[str, AgentProcess],
    fast_prober: Prober,
    cnps: netpolapi.ClusterPolicies,
    capsys: Any,
) -> None:
    sources, destinations = ["x/a", "z/a", "z/b"], ["y/a", "y/b", "x/c"]
    name, spec = deny_ingress_to("guard-y", "y", {"matchLabels": {NS: "z"}})
    cnps.create(name, spec)
    expect(api_lab, fast_prober, lambda p: not (p.src[0] == "z" and p.dst[0] == "y"),
           sources, destinations)  # fmt: skip
    assert ("rule_added", f"cluster policy created {name}") in rule_log_reasons(fresh, name)
    code, out = explain(api_lab, capsys, "z/a", "y/b")
    assert code == 1 and name in out, out

    _, spec = deny_ingress_to(name, "y", {"matchLabels": {NS: "x"}})
    cnps.replace(name, spec)
    expect(api_lab, fast_prober, lambda p: not (p.src[0] == "x" and p.dst[0] == "y"),
           sources, destinations)  # fmt: skip
    assert any(
        reason == f"cluster policy updated {name}" for _, reason in rule_log_reasons(fresh, name)
    )
    code, out = explain(api_lab, capsys, "z/a", "y/b")
    assert code == 0, out

    cnps.delete(name)
    expect(api_lab, fast_prober, lambda p: True, sources, destinations)
    assert ("rule_removed", f"cluster policy deleted {name}") in rule_log_reasons(fresh, name)
    for agent in fresh.values():
        agent.wait_synced(cluster_policies=0)


def test_a_nodes_peer_follows_the_labels_of_the_nodes(
    api_lab: ApiLab,
    fresh: dict[str, AgentProcess],
    fast_prober: Prober,
    cnps: netpolapi.ClusterPolicies,
) -> None:
    cnps.create("no-blocked-nodes", {
        "tier": "Admin",
        "priority": 5,
        "subject": {"namespaces": {"matchLabels": {NS: "x"}}},
        "egress": [{"action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "blocked"}}}]}],
    })  # fmt: skip
    for agent in fresh.values():
        agent.wait_synced(cluster_policies=1)
    # x/a runs on node-1, x/c and z/a on node-2: a pod's own node stays reachable.
    sources, destinations = ["x/a", "x/c", "z/a"], ["node-1", "node-2"]
    core = api_lab.kube.core
    try:
        expect(api_lab, fast_prober, lambda p: True, sources, destinations)
        core.patch_node("node-2", body={"metadata": {"labels": {"role": "blocked"}}})
        expect(api_lab, fast_prober, lambda p: not (p.src == "x/a" and p.dst == "node-2"),
               sources, destinations)  # fmt: skip
        core.patch_node("node-2", body={"metadata": {"labels": {"role": None}}})
        core.patch_node("node-1", body={"metadata": {"labels": {"role": "blocked"}}})
        expect(api_lab, fast_prober, lambda p: not (p.src == "x/c" and p.dst == "node-1"),
               sources, destinations)  # fmt: skip
    finally:
        for node in ("node-1", "node-2"):
            core.patch_node(node, body={"metadata": {"labels": {"role": None}}})
    expect(api_lab, fast_prober, lambda p: True, sources, destinations)
