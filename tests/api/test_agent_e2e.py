"""The running agent, one per lab node, driven through the real API; verdicts by probing.

Every scenario changes cluster state through kube-apiserver only and waits until real
traffic between the lab's pods matches what the NetworkPolicy semantics say. The API holds
the lab topology (namespaces x/y/z, pods a/b/c with their real addresses on node-1/2);
``fresh`` puts it back and waits for both agents to drop every policy before each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.agent_harness import AgentProcess, ApiLab, converge, policy
from tests.lab.prober import Probe, Prober

pytestmark = [pytest.mark.cluster, pytest.mark.lab]
CHAIN_SUFFIX = "E"

PODS = [f"{ns}/{p}" for ns in "xyz" for p in "abc"]
SOURCES = [*PODS, "ext"]
TCP80 = (80, "TCP")
TCP81 = (81, "TCP")
UDP80 = (80, "UDP")
# Agents program within ~0.1 s; the budget covers the probe timeout and a slow machine.
CONVERGE = 10.0


@pytest.fixture(scope="module")
def agents(api_lab: ApiLab) -> Iterator[dict[str, AgentProcess]]:
    started = api_lab.start_agents()
    try:
        yield started
    finally:
        api_lab.stop_agents(started)


@pytest.fixture(autouse=True)
def fresh(api_lab: ApiLab, agents: dict[str, AgentProcess]) -> Iterator[None]:
    api_lab.cluster.reset()
    for agent in agents.values():
        if not agent.running:
            agent.start()
            agent.wait_ready()
        agent.wait_synced(policies=0)
    api_lab.lab.flush_conntrack()
    yield
    for agent in agents.values():
        assert agent.running, f"agent on {agent.node} died:\n{agent.logs()[-3000:]}"


def expect_matrix(
    api_lab: ApiLab,
    prober: Prober,
    allowed: object,
    *,
    sources: list[str] = SOURCES,
    destinations: list[str] = PODS,
    port_protocols: tuple[tuple[int, str], ...] = (TCP80,),
    families: tuple[int, ...] = (4, 6),
) -> float:
    def expected(p: Probe) -> bool:
        return p.src == p.dst or bool(allowed(p))  # type: ignore[operator]

    return converge(
        prober,
        expected,
        sources=sources,
        destinations=destinations,
        port_protocols=port_protocols,
        families=families,
        timeout=CONVERGE,
        context=api_lab.agent_logs,
    )


def deny_all_ingress(name: str = "deny-all") -> dict[str, object]:
    return policy(name, {"podSelector": {}, "policyTypes": ["Ingress"]})


def test_default_deny_isolates_namespace(api_lab: ApiLab, fast_prober: Prober) -> None:
    expect_matrix(api_lab, fast_prober, lambda p: True)
    api_lab.kube.create_network_policy("x", deny_all_ingress())
    expect_matrix(api_lab, fast_prober, lambda p: not p.dst.startswith("x/"))


def test_allow_by_pod_selector(api_lab: ApiLab, fast_prober: Prober) -> None:
    api_lab.kube.create_network_policy("x", deny_all_ingress())
    api_lab.kube.create_network_policy("x", policy("a-from-b", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
    }))  # fmt: skip
    expect_matrix(
        api_lab, fast_prober,
        lambda p: not p.dst.startswith("x/") or (p.dst == "x/a" and p.src == "x/b"),
    )  # fmt: skip


def test_allow_by_namespace_selector(api_lab: ApiLab, fast_prober: Prober) -> None:
    api_lab.kube.create_network_policy("x", policy("a-from-y", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
    }))  # fmt: skip
    expect_matrix(api_lab, fast_prober, lambda p: p.dst != "x/a" or p.src.startswith("y/"))


def test_allow_by_namespace_and_pod_selector(api_lab: ApiLab, fast_prober: Prober) -> None:
    api_lab.kube.create_network_policy("x", policy("a-from-y-b", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{
            "namespaceSelector": {"matchLabels": {"ns": "y"}},
            "podSelector": {"matchLabels": {"pod": "b"}},
        }]}],
    }))  # fmt: skip
    expect_matrix(api_lab, fast_prober, lambda p: p.dst != "x/a" or p.src == "y/b")


def test_allow_ip_block_with_except(api_lab: ApiLab, fast_prober: Prober) -> None:
    # node-1's pods (10.244.1.0/24) and the wan except the external host.
    api_lab.kube.create_network_policy("x", policy("a-from-blocks", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}},
            {"ipBlock": {"cidr": "192.168.250.0/24", "except": ["192.168.250.100/32"]}},
        ]}],
    }))  # fmt: skip
    node1 = {k for k, v in api_lab.lab.pods.items() if v.spec.node == "node-1"}
    expect_matrix(
        api_lab, fast_prober,
        lambda p: p.dst != "x/a" or p.src in node1 or p.src == "node-2",
        sources=[*SOURCES, "node-2"], families=(4,),
    )  # fmt: skip


def test_allow_named_port(api_lab: ApiLab, fast_prober: Prober) -> None:
    api_lab.kube.create_network_policy("x", policy("a-named-port", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"ports": [{"port": "serve-81-tcp"}]}],
    }))  # fmt: skip
    expect_matrix(
        api_lab, fast_prober,
        lambda p: p.dst != "x/a" or (p.port, p.protocol) == TCP81,
        port_protocols=(TCP80, TCP81, UDP80),
    )  # fmt: skip


def test_egress_default_deny_and_allow(api_lab: ApiLab, fast_prober: Prober) -> None:
    api_lab.kube.create_network_policy("x", policy("a-egress-to-y", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Egress"],
        "egress": [{
            "to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
            "ports": [{"protocol": "TCP", "port": 80}],
        }],
    }))  # fmt: skip
    expect_matrix(
        api_lab, fast_prober,
        lambda p: p.src != "x/a" or (p.dst.startswith("y/") and p.protocol == "TCP"
                                     and p.port == 80),
        sources=["x/a", "x/b", "z/c"], destinations=[*PODS, "ext"],
        port_protocols=(TCP80, TCP81),
    )  # fmt: skip


def test_update_policy(api_lab: ApiLab, fast_prober: Prober) -> None:
    spec = {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"ports": [{"protocol": "TCP", "port": 80}]}],
    }
    api_lab.kube.create_network_policy("x", policy("a-port", spec))
    sources = ["x/b", "y/b", "z/a"]
    expect_matrix(api_lab, fast_prober, lambda p: p.dst != "x/a" or p.port == 80,
                  sources=sources, port_protocols=(TCP80, TCP81))  # fmt: skip
    spec["ingress"] = [{"ports": [{"protocol": "TCP", "port": 81}]}]
    api_lab.kube.update_network_policy("x", policy("a-port", spec))
    expect_matrix(api_lab, fast_prober, lambda p: p.dst != "x/a" or p.port == 81,
                  sources=sources, port_protocols=(TCP80, TCP81))  # fmt: skip


def test_delete_policy_stops_enforcing(api_lab: ApiLab, fast_prober: Prober) -> None:
    api_lab.kube.create_network_policy("y", deny_all_ingress())
    expect_matrix(api_lab, fast_prober, lambda p: not p.dst.startswith("y/"))
    api_lab.kube.delete_network_policy("y", "deny-all")
    expect_matrix(api_lab, fast_prober, lambda p: True)


def test_pod_label_change(api_lab: ApiLab, fast_prober: Prober) -> None:
    kube = api_lab.kube
    kube.create_network_policy("x", policy("a-from-b", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
    }))  # fmt: skip
    kube.create_network_policy("y", policy("locked", {
        "podSelector": {"matchLabels": {"role": "locked"}}, "policyTypes": ["Ingress"],
    }))  # fmt: skip
    expect_matrix(api_lab, fast_prober, lambda p: p.dst != "x/a" or p.src == "x/b")
    # Allow FROM the updated pod (x/c, on the other node, now looks like a "b").
    kube.set_pod_labels("x", "c", {"pod": "b"})
    # Deny TO the updated pod (y/b, on node-2, now selected by "locked").
    kube.set_pod_labels("y", "b", {"pod": "b", "role": "locked"})
    expect_matrix(
        api_lab, fast_prober,
        lambda p: (p.dst != "x/a" or p.src in ("x/b", "x/c")) and p.dst != "y/b",
    )  # fmt: skip
    kube.set_pod_labels("x", "c", {"pod": "c"})
    expect_matrix(
        api_lab, fast_prober,
        lambda p: (p.dst != "x/a" or p.src == "x/b") and p.dst != "y/b",
    )  # fmt: skip


def test_namespace_label_change(api_lab: ApiLab, fast_prober: Prober) -> None:
    kube = api_lab.kube
    kube.create_network_policy("x", policy("a-from-ns-y", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
    }))  # fmt: skip
    expect_matrix(api_lab, fast_prober, lambda p: p.dst != "x/a" or p.src.startswith("y/"),
                  destinations=["x/a", "x/b"])  # fmt: skip
    kube.set_namespace_labels("z", {"ns": "y"})
    kube.set_namespace_labels("y", {"ns": "not-y"})
    expect_matrix(api_lab, fast_prober, lambda p: p.dst != "x/a" or p.src.startswith("z/"),
                  destinations=["x/a", "x/b"])  # fmt: skip


def test_new_pod_isolated_as_soon_as_its_ip_is_known(api_lab: ApiLab, fast_prober: Prober) -> None:
    """x/b's sandbox (netns) is reused as a brand-new pod whose IP appears only later."""
    kube, cluster = api_lab.kube, api_lab.cluster
    kube.create_network_policy("x", policy("isolate-new", {
        "podSelector": {"matchLabels": {"app": "new"}}, "policyTypes": ["Ingress"],
    }))  # fmt: skip
    template = cluster.pod_object("x/b")
    kube.delete_pod("x", "b")
    cluster.create_pod(template, name="fresh", labels={"app": "new"}, phase=None)
    probes = [Probe(s, "x/b", 80, "TCP", f) for s in ("x/a", "z/a", "ext") for f in (4, 6)]
    # No IP yet: nobody can know this address is the new pod's; traffic flows.
    converge(fast_prober, True, probes, timeout=CONVERGE)
    kube.set_pod_status("x", "fresh", phase="Running",
                        ips=[i["ip"] for i in template["status"]["podIPs"]],
                        host_ip=template["status"]["hostIP"])  # fmt: skip
    took = converge(fast_prober, False, probes, timeout=CONVERGE, context=api_lab.agent_logs)
    assert took < 3.0, f"isolating the new pod took {took:.2f}s"


def test_ip_reuse_new_pods_labels_apply(api_lab: ApiLab, fast_prober: Prober) -> None:
    """x/a finishes (Succeeded, keeps its IP in status); x/a2 gets the same IP."""
    kube, cluster = api_lab.kube, api_lab.cluster
    kube.create_network_policy("y", policy("ya-from-a", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {},
                               "podSelector": {"matchLabels": {"pod": "a"}}}]}],
    }))  # fmt: skip
    kube.create_network_policy("x", policy("isolate-a", {
        "podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
    }))  # fmt: skip
    sources, destinations = ["x/a", "z/a", "z/b", "x/b"], ["y/a", "x/a"]

    def before(p: Probe) -> bool:
        if p.dst == "y/a":
            return p.src in ("x/a", "z/a")
        return p.src == "x/a"  # x/a is isolated

    expect_matrix(api_lab, fast_prober, before, sources=sources, destinations=destinations)
    template = cluster.pod_object("x/a")
    ips = [i["ip"] for i in template["status"]["podIPs"]]
    kube.set_pod_status("x", "a", phase="Succeeded", ips=ips,
                        host_ip=template["status"]["hostIP"])  # fmt: skip
    cluster.create_pod(template, name="a2", labels={"pod": "a2"})

    def after(p: Probe) -> bool:
        if p.dst == "y/a":
            return p.src == "z/a"  # 10.244.1.10 is x/a2 now: not a "pod: a" peer
        return True  # x/a2 is not selected by isolate-a

    expect_matrix(api_lab, fast_prober, after, sources=sources, destinations=destinations)


def test_deleted_pods_and_namespaces_leave_peer_groups(
    api_lab: ApiLab, fast_prober: Prober
) -> None:
    kube = api_lab.kube
    kube.create_network_policy("x", policy("a-from-any-b", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {},
                               "podSelector": {"matchLabels": {"pod": "b"}}}]}],
    }))  # fmt: skip
    sources = ["x/b", "y/b", "z/b", "z/a"]
    expect_matrix(api_lab, fast_prober, lambda p: p.src.endswith("/b"),
                  sources=sources, destinations=["x/a"])  # fmt: skip
    kube.delete_pod("y", "b")  # its sandbox still sends from its old address
    kube.delete_namespace("z")
    expect_matrix(api_lab, fast_prober, lambda p: p.src == "x/b",
                  sources=sources, destinations=["x/a"])  # fmt: skip


def test_legacy_backend(
    api_lab: ApiLab, fast_prober: Prober, agents: dict[str, AgentProcess]
) -> None:
    """The same agent on iptables-legacy, with the nft agents stopped meanwhile."""
    for agent in agents.values():
        agent.stop()
    api_lab.lab.reset_firewall()  # no nft chain may enforce for the legacy agents
    legacy = api_lab.start_agents(backend="legacy", chain_prefix=f"{api_lab.lab.prefix}L")
    try:
        api_lab.kube.create_network_policy("x", deny_all_ingress())
        api_lab.kube.create_network_policy("x", policy("a-from-y", {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
        }))  # fmt: skip
        expect_matrix(
            api_lab, fast_prober,
            lambda p: not p.dst.startswith("x/") or (p.dst == "x/a" and p.src.startswith("y/")),
        )  # fmt: skip
        assert legacy["node-1"].our_rules(), "no legacy rules on node-1"
        assert not any(
            f"{api_lab.lab.prefix}L" in line for line in agents["node-1"].save().splitlines()
        ), "the legacy agent wrote to nft"
        api_lab.kube.delete_network_policy("x", "deny-all")
        expect_matrix(api_lab, fast_prober, lambda p: p.dst != "x/a" or p.src.startswith("y/"))
    finally:
        api_lab.stop_agents(legacy)
        api_lab.lab.reset_firewall()
        for agent in agents.values():
            agent.start()
            agent.wait_ready()
