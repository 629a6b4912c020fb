"""Faults against the running agent: apiserver death, 410 Gone, drift, failing restores,
SIGKILL under traffic, and RBAC. Each test starts its own agents (fresh processes)."""

from __future__ import annotations

import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.agent_harness import (
    AgentProcess,
    ApiLab,
    converge,
    policy,
    wait_until,
)
from tests.lab.background import ContinuousProber
from tests.lab.nsutil import run
from tests.lab.prober import Probe, Prober

pytestmark = [pytest.mark.cluster, pytest.mark.lab]
CHAIN_SUFFIX = "F"
CONVERGE = 10.0

ISOLATE_XA = policy("isolate-a", {
    "podSelector": {"matchLabels": {"pod": "a"}},
    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
})  # fmt: skip
# x/a (node-1) accepts only x/b; denied pairs: x/c (other node) and y/a (same node).
DENIED = [Probe("x/c", "x/a", 80, "TCP"), Probe("y/a", "x/a", 80, "TCP")]
ALLOWED = [Probe("x/b", "x/a", 80, "TCP"), Probe("z/a", "y/a", 80, "TCP")]


def verdicts(denied: list[Probe], allowed: list[Probe]) -> dict[Probe, bool]:
    return {**dict.fromkeys(denied, False), **dict.fromkeys(allowed, True)}


@pytest.fixture
def fresh(api_lab: ApiLab) -> Iterator[ApiLab]:
    api_lab.cluster.reset()
    api_lab.lab.reset_firewall()
    yield api_lab
    for agent in list(api_lab.agents):
        if agent.running:
            agent.kill()
    api_lab.agents.clear()
    for forwarder in api_lab.forwarders.values():
        forwarder.resume()
    if not api_lab.cp.apiserver_running:
        api_lab.cp.start_apiserver()
    api_lab.lab.reset_firewall()


@pytest.fixture
def agents(fresh: ApiLab) -> dict[str, AgentProcess]:
    return fresh.start_agents()


def test_apiserver_down_rules_stay_then_reconnect(
    fresh: ApiLab, agents: dict[str, AgentProcess], fast_prober: Prober
) -> None:
    api = fresh
    api.kube.create_network_policy("x", ISOLATE_XA)
    converge(fast_prober, verdicts(DENIED, ALLOWED), DENIED + ALLOWED, timeout=CONVERGE)
    api.cp.kill_apiserver()
    # Longer than a resync period: resyncs run while the API is gone and must keep rules.
    deadline = time.monotonic() + 2 * agents["node-1"].resync_period + 0.5
    while time.monotonic() < deadline:
        fast_prober.run(DENIED + ALLOWED).assert_matches(verdicts(DENIED, ALLOWED))
    for agent in agents.values():
        assert agent.running
        # Fail static: the rules stay, but readiness says the source is failing.
        status, reason = agent.readyz()
        assert status == 503 and "source failing" in reason, (status, reason)
    api.cp.start_apiserver()
    # The first write after the restart: allow x/c as well.
    api.kube.update_network_policy("x", policy("isolate-a", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchExpressions": [
            {"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]}],
    }))  # fmt: skip
    took = converge(
        fast_prober,
        verdicts([DENIED[1]], [*ALLOWED, DENIED[0]]),
        DENIED + ALLOWED,
        timeout=45.0,  # reconnect backoff after several failed attempts: up to ~16 s
        context=api.agent_logs,
    )
    print(f"converged {took:.2f}s after the apiserver came back")
    for agent in agents.values():
        assert (
            "recovered after" in agent.logs()
            or agent.metrics().value("netpol_agent_watch_errors_total")
            + agent.metrics().value("netpol_agent_list_errors_total")
            > 0
        )


def test_watch_410_relists_and_sees_missed_deletes(
    fresh: ApiLab, agents: dict[str, AgentProcess], fast_prober: Prober
) -> None:
    api = fresh
    api.kube.create_network_policy("x", ISOLATE_XA)
    converge(fast_prober, verdicts(DENIED, ALLOWED), DENIED + ALLOWED, timeout=CONVERGE)
    relists_before = {n: a.metrics().value("netpol_agent_relists_total") for n, a in agents.items()}
    # Partition both nodes from the apiserver; change things they cannot see; compact.
    for forwarder in api.forwarders.values():
        forwarder.pause()
    api.kube.delete_network_policy("x", "isolate-a")  # a DELETED event nobody receives
    api.kube.create_network_policy("y", policy("isolate-y", {
        "podSelector": {}, "policyTypes": ["Ingress"],
    }))  # fmt: skip
    api.cp.compact_etcd()
    for forwarder in api.forwarders.values():
        forwarder.resume()
    newly_denied = [Probe("x/a", "y/a", 80, "TCP"), Probe("x/c", "y/b", 80, "TCP")]
    took = converge(
        fast_prober,
        verdicts(newly_denied, [*DENIED, Probe("x/b", "x/a", 80, "TCP")]),
        DENIED + newly_denied,
        timeout=45.0,
        context=api.agent_logs,
    )
    print(f"converged {took:.2f}s after the partition ended")
    for name, agent in agents.items():
        scrape = agent.metrics()
        assert scrape.value("netpol_agent_relists_total") > relists_before[name], name
        assert scrape.value("netpol_agent_relists_total", kind="NetworkPolicy") >= 1, (
            scrape.samples.get("netpol_agent_relists_total")
        )
        assert scrape.value("netpol_agent_policies") == 1
        assert "is gone" in agent.logs()


def test_hand_flushed_chain_is_repaired_by_resync(
    fresh: ApiLab, agents: dict[str, AgentProcess], fast_prober: Prober
) -> None:
    api = fresh
    node1 = agents["node-1"]
    api.kube.create_network_policy("x", ISOLATE_XA)
    converge(fast_prober, verdicts(DENIED, ALLOWED), DENIED + ALLOWED, timeout=CONVERGE)
    node1.wait_synced(policies=1)
    repairs_before = node1.metrics().value("netpol_agent_resync_repairs_total")
    lines_before = len(node1.rule_log_lines())
    prefix = node1.chain_prefix
    jump = [
        line for line in node1.save().splitlines()
        if line.startswith("-A FORWARD") and f"-j {prefix}-FORWARD" in line
    ]  # fmt: skip
    assert len(jump) == 1, jump
    netns = api.lab.node("node-1").netns
    run(["iptables-nft", "-w", "-F", f"{prefix}-INGRESS"], netns=netns)
    run(["iptables-nft", "-w", "-D", "FORWARD", *jump[0].split()[2:]], netns=netns)
    broken_at = time.monotonic()
    # The damage is real: the same-node denied pair gets through now.
    assert fast_prober.run([DENIED[1]]).results[DENIED[1]].allowed
    took = converge(fast_prober, verdicts(DENIED, ALLOWED), DENIED + ALLOWED,
                    timeout=CONVERGE, context=api.agent_logs)  # fmt: skip
    repaired_after = time.monotonic() - broken_at
    assert repaired_after <= node1.resync_period + 1.5, f"repair took {repaired_after:.2f}s"
    print(f"repaired within {took:.2f}s of probing")
    wait_until(
        lambda: node1.metrics().value("netpol_agent_resync_repairs_total") > repairs_before,
        5.0, message="resync_repairs_total did not move",
    )  # fmt: skip
    new = node1.rule_log_lines()[lines_before:]
    repairs = [e for e in new if e["reason"] == "resync repair"]
    assert {e["chain"] for e in repairs} >= {f"{prefix}-INGRESS", "FORWARD"}, new
    assert any(e["chain"] == "FORWARD" and e["action"] == "rule_added" for e in repairs)
    assert sum(f"-j {prefix}-FORWARD" in ln for ln in node1.save().splitlines()) == 1


def _failing_restore_dir(base: Path) -> tuple[Path, Path]:
    """A PATH directory whose iptables-nft-restore fails once each time ``arm`` exists."""
    bindir = base / f"bin-{secrets.token_hex(3)}"
    bindir.mkdir()
    arm = bindir / "arm"
    for tool in ("iptables-nft-restore", "ip6tables-nft-restore"):
        script = bindir / tool
        script.write_text(
            "#!/bin/sh\n"
            f"if rm '{arm}' 2>/dev/null; then\n"
            "  cat >/dev/null\n"
            "  echo 'injected failure (test wrapper)' >&2\n"
            "  exit 1\n"
            "fi\n"
            f'exec /usr/sbin/{tool} "$@"\n'
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bindir, arm


def test_failing_restore_is_retried(fresh: ApiLab, fast_prober: Prober) -> None:
    api = fresh
    bindir, arm = _failing_restore_dir(api.workdir)
    path = f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    agents = api.start_agents(env={"PATH": path})
    node1 = agents["node-1"]
    arm.touch()  # the next restore on node-1 (or node-2, whichever is first) fails
    api.kube.create_network_policy("x", ISOLATE_XA)
    took = converge(fast_prober, verdicts(DENIED, ALLOWED), DENIED + ALLOWED,
                    timeout=CONVERGE, context=api.agent_logs)  # fmt: skip
    assert not arm.exists(), "no restore ran after arming"
    failed = [a for a in agents.values()
              if a.metrics().value("netpol_agent_iptables_restore_failures_total") >= 1]  # fmt: skip
    assert len(failed) == 1, api.agent_logs()
    agent = failed[0]
    scrape = agent.metrics()
    assert scrape.value("netpol_agent_sync_failures_total") >= 1
    assert "injected failure" in agent.logs()
    assert "retrying in" in agent.logs()
    # The kernel (what converge sees) is written before the pass's rule-log lines.
    wait_until(
        lambda: any(e["reason"] == "retry after failure" for e in agent.rule_log_lines()),
        5.0, message=lambda: f"no 'retry after failure' line: {agent.rule_log_lines()}",
    )  # fmt: skip
    print(f"converged in {took:.2f}s despite a failed restore on {agent.node}")
    node1.wait_synced(policies=1)


def test_sigkill_and_restart_never_leaks_a_denied_packet(
    fresh: ApiLab, agents: dict[str, AgentProcess], fast_prober: Prober
) -> None:
    api = fresh
    node1 = agents["node-1"]
    api.kube.create_network_policy("x", ISOLATE_XA)
    converge(fast_prober, verdicts(DENIED, ALLOWED), DENIED + ALLOWED, timeout=CONVERGE)
    node1.wait_synced(policies=1)
    api.lab.flush_conntrack()
    streams = [
        ContinuousProber.for_lab(api.lab, "y/a", "x/a", 80, "UDP").start(),  # same node
        ContinuousProber.for_lab(api.lab, "x/c", "x/a", 80, "UDP").start(),  # other node
        ContinuousProber.for_lab(api.lab, "y/a", "x/a", 80, "UDP", 6).start(),
    ]
    try:
        for cycle in range(3):
            logged = len(node1.rule_log_lines())
            node1.kill()
            if cycle == 1:
                # A change while the agent is dead: it must pick it up on restart.
                api.kube.create_network_policy("y", policy("noop-y", {
                    "podSelector": {"matchLabels": {"pod": "nobody"}},
                    "policyTypes": ["Ingress"],
                }))  # fmt: skip
            node1.start()
            node1.wait_ready()
            node1.wait_synced(policies=1 if cycle == 0 else 2)
            time.sleep(0.3)
            if cycle != 1:
                # Nothing changed while it was dead: the initial pass adopts the kernel's
                # rules and writes nothing (a pass from a partial view would rewrite).
                assert node1.rule_log_lines()[logged:] == [], node1.logs()[-3000:]
    finally:
        counts = [stream.stop() for stream in streams]
    for stream, count in zip(streams, counts, strict=True):
        assert count.sent > 100, count
        assert count.received == 0, (
            f"{stream.src.name} -> {stream.dst.name} IPv{stream.family}: {count.received} "
            f"of {count.sent} packets of a denied pair got through\n{node1.logs()[-4000:]}"
        )
    assert node1.starts == 4
    converge(fast_prober, verdicts(DENIED, ALLOWED), DENIED + ALLOWED, timeout=CONVERGE)


def test_rbac_clusterrole_from_deploy_is_enough(fresh: ApiLab, fast_prober: Prober) -> None:
    api = fresh
    suffix = secrets.token_hex(3)
    namespace, account = f"npa-rbac-{suffix}", "agent"
    role, binding = f"netpol-agent-{suffix}", f"netpol-agent-{suffix}"
    token = api.cp.service_account_token(namespace, account)
    kubeconfig = api.token_kubeconfig(token)
    identity = f"system:serviceaccount:{namespace}:{account}"
    api.cluster.clusterrole_from_deploy(role)
    try:
        # Without a binding: a clear error, keeps running, writes nothing, not ready.
        lonely = api.agent("node-1", kubeconfig=kubeconfig,
                           chain_prefix=f"{api.lab.prefix}R")  # fmt: skip
        wait_until(lambda: "forbidden (403)" in lonely.logs(), 15.0,
                   message=lambda: lonely.logs()[-3000:])  # fmt: skip
        time.sleep(2.0)
        assert lonely.running
        errors = [ln for ln in lonely.logs().splitlines() if "forbidden (403)" in ln]
        for resource in ("pods", "namespaces", "networkpolicies.networking.k8s.io"):
            assert any(f"cannot list {resource} " in ln and identity in ln for ln in errors), (
                resource, errors,
            )  # fmt: skip
        status, reason = lonely.readyz()
        assert status == 503, (status, reason)
        assert "initial sync not done" in reason
        assert "source failing" in reason and "forbidden (403)" in reason
        assert lonely.our_rules() == [] and lonely.our_rules(6) == []
        assert lonely.rule_log_lines() == []
        cpu = _cpu_seconds(lonely)
        time.sleep(2.0)
        busy = _cpu_seconds(lonely) - cpu
        assert busy < 0.5, f"an agent waiting for the API burnt {busy:.2f}s of CPU in 2s"
        lonely.kill()

        # With the binding to exactly deploy/clusterrole.yaml: it works.
        api.cluster.bind(role, namespace, account, binding)
        agents = api.start_agents(kubeconfig=kubeconfig)
        api.kube.create_network_policy("x", ISOLATE_XA)
        converge(fast_prober, verdicts(DENIED, ALLOWED), DENIED + ALLOWED,
                 timeout=CONVERGE, context=api.agent_logs)  # fmt: skip
        for agent in agents.values():
            assert "forbidden" not in agent.logs()
            agent.wait_synced(policies=1)
    finally:
        api.cluster.delete_rbac(roles=[role], bindings=[binding])
        api.kube.delete_namespace(namespace)


def _cpu_seconds(agent: AgentProcess) -> float:
    fields = Path(f"/proc/{agent.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
