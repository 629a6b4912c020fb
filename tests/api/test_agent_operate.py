"""Operating a running agent: /metrics moves with the cluster, the rule-change log says
exactly what changed in the kernel (and nothing when nothing changed), and the deploy/
ServiceAccount is all the agent needs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from tests.api.agent_harness import (
    REPO,
    AgentProcess,
    ApiLab,
    Scrape,
    converge,
    our_rules,
    policy,
    wait_until,
)
from tests.lab.prober import Probe, Prober

pytestmark = [pytest.mark.cluster, pytest.mark.lab]
CHAIN_SUFFIX = "O"
CONVERGE = 10.0

A_FROM_B = policy("a-from-b", {
    "podSelector": {"matchLabels": {"pod": "a"}},
    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
})  # fmt: skip
DENIED = [Probe("x/c", "x/a", 80, "TCP"), Probe("y/a", "x/a", 80, "TCP")]
ALLOWED = [Probe("x/b", "x/a", 80, "TCP"), Probe("z/a", "y/a", 80, "TCP")]
EXPECTED = {**dict.fromkeys(DENIED, False), **dict.fromkeys(ALLOWED, True)}


@pytest.fixture
def agents(api_lab: ApiLab) -> Iterator[dict[str, AgentProcess]]:
    api_lab.cluster.reset()
    api_lab.lab.reset_firewall()
    started = api_lab.start_agents()
    yield started
    api_lab.stop_agents(started)
    api_lab.lab.reset_firewall()


def test_metrics_follow_the_cluster(
    api_lab: ApiLab, agents: dict[str, AgentProcess], fast_prober: Prober
) -> None:
    node1 = agents["node-1"]
    node1.wait_synced(policies=0)
    before = node1.metrics()
    for kind in ("Pod", "Namespace", "NetworkPolicy", "Node"):
        assert before.value("netpol_agent_watch_connected", kind=kind) == 1, kind
    # Every Node, not only its own (ClusterNetworkPolicy nodes peers select any of them).
    nodes = len(api_lab.kube.core.list_node().items)
    assert before.value("netpol_agent_watched_objects", kind="Node") == nodes >= 2
    assert before.value("netpol_agent_local_pods") == 5  # x/a x/b y/a y/c z/b
    assert before.value("netpol_agent_local_pods_selected", direction="ingress") == 0

    api_lab.kube.create_network_policy("x", policy("deny-all", {
        "podSelector": {}, "policyTypes": ["Ingress"],
    }))  # fmt: skip
    api_lab.kube.create_network_policy("x", A_FROM_B)
    converge(fast_prober, EXPECTED, DENIED + ALLOWED, timeout=CONVERGE)
    node1.wait_synced(policies=2)
    after = node1.metrics()

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert after.value("netpol_agent_local_pods_selected", direction="ingress") == 2  # x/a x/b
    assert after.value("netpol_agent_local_pods_selected", direction="egress") == 0
    assert after.value("netpol_agent_invalid_policies") == 0
    assert moved("netpol_agent_watched_objects", kind="NetworkPolicy") == 2
    assert moved("netpol_agent_sync_duration_seconds_count", kind="partial") >= 1
    assert moved("netpol_agent_network_programming_duration_seconds_count") >= 2
    assert moved("netpol_agent_iptables_restore_total", family="ipv4") >= 1
    assert moved("netpol_agent_iptables_restore_total", family="ipv6") >= 1
    assert moved("netpol_agent_bytes_written_total", family="ipv4") > 0
    assert moved("netpol_agent_rules", family="ipv4", table="filter") > 0
    assert moved("netpol_agent_chains", family="ipv4", table="filter") > 0
    # The rules/chains gauges are what the kernel holds in our chains.
    rules = [ln for ln in node1.our_rules() if ln.startswith(f"-A {node1.chain_prefix}-")]
    chains = [ln for ln in node1.our_rules() if ln.startswith(":")]
    assert after.value("netpol_agent_rules", family="ipv4", table="filter") == len(rules)
    assert after.value("netpol_agent_chains", family="ipv4", table="filter") == len(chains)
    assert after.value("netpol_agent_sync_failures_total") == 0

    api_lab.kube.delete_network_policy("x", "deny-all")
    api_lab.kube.delete_network_policy("x", "a-from-b")
    node1.wait_synced(policies=0)
    wait_until(lambda: node1.metrics().value(
        "netpol_agent_local_pods_selected", direction="ingress") == 0, 5.0)  # fmt: skip
    final = node1.metrics()
    for name in ("netpol_agent_rules", "netpol_agent_chains"):
        assert final.value(name, family="ipv4") == before.value(name, family="ipv4"), name


_HASH = re.compile(r"npa:([0-9a-f]{16})")


def _kernel(agent: AgentProcess, family: int) -> tuple[set[str], set[tuple[str, str]]]:
    """(our chains, {(chain, rule hash)}) as iptables-save shows them."""
    lines = our_rules(agent.save(family), agent.chain_prefix)
    chains = {ln[1:].split()[0] for ln in lines if ln.startswith(":")}
    rules = set()
    for line in lines:
        if line.startswith("-A "):
            found = _HASH.search(line)
            rules.add((line.split()[1], found.group(1) if found else line))
    return chains, rules


def test_rule_log_matches_the_kernel_exactly(
    api_lab: ApiLab, agents: dict[str, AgentProcess]
) -> None:
    node1 = agents["node-1"]
    node1.wait_synced(policies=0)
    prefix = node1.chain_prefix
    kernel_before = {f: _kernel(node1, f) for f in (4, 6)}
    logged = len(node1.rule_log_lines())

    api_lab.kube.create_network_policy("x", A_FROM_B)
    node1.wait_synced(policies=1)
    entries = node1.rule_log_lines()[logged:]
    assert entries, "the change wrote no rule-log lines"
    save_lines = {4: node1.save(4).splitlines(), 6: node1.save(6).splitlines()}
    for family, name in ((4, "ipv4"), (6, "ipv6")):
        chains_before, rules_before = kernel_before[family]
        chains_after, rules_after = _kernel(node1, family)
        mine = [e for e in entries if e["family"] == name]
        assert {e["chain"] for e in mine if e["action"] == "chain_added"} == (
            chains_after - chains_before
        )
        assert not [e for e in mine if e["action"] in ("chain_removed", "rule_removed")]
        assert chains_before <= chains_after and rules_before <= rules_after
        added = {(e["chain"], e["hash"]) for e in mine if e["action"] == "rule_added"}
        assert added == rules_after - rules_before, name
        assert len(added) == len([e for e in mine if e["action"] == "rule_added"])
        for entry in mine:
            assert entry["reason"] == "policy created x/a-from-b", entry
            assert entry["table"] == "filter"
            if entry["action"] == "rule_added":
                # The logged text is exactly what the kernel prints back.
                assert f"-A {entry['chain']} {entry['rule']}" in save_lines[family], entry
            chain = entry["chain"]
            if chain.startswith(f"{prefix}-PI-"):  # the policy's own chain
                assert entry["policy"] == "x/a-from-b", entry
            elif chain.startswith(f"{prefix}-I-") or chain == f"{prefix}-INGRESS":
                assert entry["pod"] == "x/a", entry  # x/a's ingress chain and its dispatch
            elif chain.startswith(f"{prefix}-G-") and entry["action"] == "rule_added":
                assert entry["pod"] == "x/b", entry  # the peer group: x/b's address
        kinds = {e["chain"].split("-")[1] for e in mine}
        assert {"PI", "I", "G", "INGRESS"} <= kinds, sorted(kinds)

    # An unchanged resync writes nothing: wait for two full passes.
    full = node1.metrics().value("netpol_agent_sync_duration_seconds_count", kind="full")
    written = node1.metrics().value("netpol_agent_bytes_written_total")
    lines = len(node1.rule_log_lines())
    wait_until(
        lambda: node1.metrics().value(
            "netpol_agent_sync_duration_seconds_count", kind="full") >= full + 2,
        3 * node1.resync_period + 2, message="no periodic resync",
    )  # fmt: skip
    assert len(node1.rule_log_lines()) == lines
    assert node1.metrics().value("netpol_agent_bytes_written_total") == written
    assert node1.metrics().value("netpol_agent_resync_repairs_total") == 0


DEPLOY_RBAC = ("namespace.yaml", "serviceaccount.yaml", "clusterrole.yaml",
               "clusterrolebinding.yaml")  # fmt: skip


def _apply_deploy_rbac(api: k8s_client.ApiClient) -> list[dict[str, Any]]:
    """Create deploy/'s namespace, ServiceAccount, ClusterRole and binding, unmodified.

    Returns what this call created (objects that already existed are left alone).
    """
    core = k8s_client.CoreV1Api(api)
    rbac = k8s_client.RbacAuthorizationV1Api(api)
    created = []
    for name in DEPLOY_RBAC:
        obj = yaml.safe_load((REPO / "deploy" / name).read_text())
        create: Callable[[dict[str, Any]], object] = {
            "Namespace": lambda o: core.create_namespace(body=o),
            "ServiceAccount": lambda o: core.create_namespaced_service_account(
                o["metadata"]["namespace"], body=o),
            "ClusterRole": lambda o: rbac.create_cluster_role(body=o),
            "ClusterRoleBinding": lambda o: rbac.create_cluster_role_binding(body=o),
        }[obj["kind"]]  # fmt: skip
        try:
            create(obj)
        except ApiException as exc:
            if exc.status != 409:
                raise
            continue
        created.append(obj)
    return created


def _delete(api_lab: ApiLab, objects: list[dict[str, Any]]) -> None:
    rbac = k8s_client.RbacAuthorizationV1Api(api_lab.kube.api)
    for obj in reversed(objects):
        name = obj["metadata"]["name"]
        try:
            if obj["kind"] == "ClusterRoleBinding":
                rbac.delete_cluster_role_binding(name)
            elif obj["kind"] == "ClusterRole":
                rbac.delete_cluster_role(name)
            elif obj["kind"] == "Namespace":
                api_lab.kube.delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def test_agent_runs_with_the_deploy_service_account(api_lab: ApiLab, fast_prober: Prober) -> None:
    api_lab.cluster.reset()
    api_lab.lab.reset_firewall()
    created = _apply_deploy_rbac(api_lab.kube.api)
    try:
        sa = yaml.safe_load((REPO / "deploy" / "serviceaccount.yaml").read_text())["metadata"]
        token = api_lab.cp.service_account_token(sa["namespace"], sa["name"])
        kubeconfig: Path = api_lab.token_kubeconfig(token)
        agents = api_lab.start_agents(kubeconfig=kubeconfig)
        api_lab.kube.create_network_policy("x", A_FROM_B)
        converge(fast_prober, EXPECTED, DENIED + ALLOWED, timeout=CONVERGE,
                 context=api_lab.agent_logs)  # fmt: skip
        for agent in agents.values():
            agent.wait_synced(policies=1)
            scrape: Scrape = agent.metrics()
            assert scrape.value("netpol_agent_list_errors_total") == 0
            assert "forbidden" not in agent.logs() and "401" not in agent.logs()
        api_lab.stop_agents(agents)
    finally:
        _delete(api_lab, created)
        api_lab.lab.reset_firewall()
