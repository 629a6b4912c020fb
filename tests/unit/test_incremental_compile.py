"""The incremental compiler always gives what a compile from scratch gives.

NodeCompiler keeps chains between compiles and rebuilds only what a change touches; if
its invalidation missed a dependency, a stale chain would survive. These tests replay
random change sequences (pods, namespaces, NetworkPolicies, ClusterNetworkPolicies,
nodes) and compare every step with a fresh compile.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.compiler import addresses as builder
from agent.compiler.config import CompilerConfig
from agent.compiler.node import NodeCompiler
from agent.model import parse
from agent.model.objects import (
    ClusterNetworkPolicy,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    PodPhase,
    Protocol,
)
from agent.policy.index import ClusterIndex
from agent.policy.state import ClusterState
from agent.rules import Family

NODE = "node-a"
NAMESPACES = ("x", "y", "z")
APPS = ("web", "db", "api")
CONFIG = CompilerConfig(chain_prefix="T")


def _pod(index: int, rng: random.Random) -> Pod:
    namespace = rng.choice(NAMESPACES)
    http = rng.choice((80, 8080))
    return parse.parse_pod(
        {
            "metadata": {
                "name": f"p{index}",
                "namespace": namespace,
                "labels": {"app": rng.choice(APPS), "tier": rng.choice(("a", "b"))},
            },
            "spec": {
                "nodeName": rng.choice((NODE, "node-b")),
                "containers": [{"ports": [{"name": "http", "containerPort": http}]}],
            },
            "status": {
                "phase": "Running",
                "podIPs": [
                    {"ip": f"10.0.{index // 200}.{index % 200 + 1}"},
                    {"ip": f"fd00::{index + 1:x}"},
                ],
            },
        }
    )


POLICY_SPECS: list[dict[str, Any]] = [
    {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}],
    },
    {
        "podSelector": {},
        "ingress": [
            {
                "from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}],
                "ports": [{"port": "http"}],
            }
        ],
    },
    {
        "podSelector": {"matchLabels": {"tier": "a"}},
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [{"podSelector": {"matchLabels": {"app": "db"}}, "namespaceSelector": {}}],
                "ports": [{"port": "http"}],
            }
        ],
    },
    {
        "podSelector": {
            "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]
        },
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/26"]}}]}],
    },
    {
        "podSelector": {"matchLabels": {"app": "db"}},
        "policyTypes": ["Egress"],
        "egress": [{"ports": [{"port": "http"}]}],
    },
]


def _policy(index: int, namespace: str) -> NetworkPolicy:
    return parse.parse_network_policy(
        {
            "metadata": {"name": f"pol{index}", "namespace": namespace},
            "spec": POLICY_SPECS[index % len(POLICY_SPECS)],
        }
    )


# ClusterNetworkPolicy rules over the same labels; each is given a tier and a priority
# when drawn (few priorities, so that ties happen: they are broken by name).
CLUSTER_POLICY_SPECS: list[dict[str, Any]] = [
    {
        "subject": {"namespaces": {"matchLabels": {"team": "blue"}}},
        "ingress": [
            {
                "action": "Deny",
                "from": [{"pods": {"podSelector": {"matchLabels": {"app": "api"}}}}],
            },
            {"action": "Pass", "from": [{"namespaces": {}}]},
        ],
    },
    {
        "subject": {"pods": {"podSelector": {"matchLabels": {"app": "web"}}}},
        "egress": [
            {
                "action": "Accept",
                "to": [{"pods": {"podSelector": {"matchLabels": {"app": "db"}}}}],
                "protocols": [{"destinationNamedPort": "http"}],
            },
            {"action": "Deny", "to": [{"networks": ["10.0.0.0/16", "fd00::/64"]}]},
        ],
    },
    {
        "subject": {"namespaces": {}},
        "egress": [
            {"action": "Deny", "to": [{"nodes": {"matchLabels": {"zone": "b"}}}]},
            {
                "action": "Accept",
                "to": [{"nodes": {}}],
                "protocols": [{"tcp": {"destinationPort": {"number": 10250}}}],
            },
        ],
    },
    {
        "subject": {
            "pods": {
                "namespaceSelector": {
                    "matchExpressions": [
                        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["x"]}
                    ]
                },
                "podSelector": {"matchLabels": {"tier": "a"}},
            }
        },
        "ingress": [
            {
                "action": "Accept",
                "from": [{"namespaces": {"matchLabels": {"team": "red"}}}],
                "protocols": [{"tcp": {"destinationPort": {"range": {"start": 80, "end": 8080}}}}],
            },
            {
                "action": "Deny",
                "from": [{"pods": {"podSelector": {"matchLabels": {"app": "web"}}}}],
                "protocols": [{"destinationNamedPort": "http"}],
            },
        ],
    },
    {
        "subject": {"namespaces": {}},
        "ingress": [
            {
                "action": "Pass",
                "from": [
                    {
                        "pods": {
                            "namespaceSelector": {"matchLabels": {"team": "blue"}},
                            "podSelector": {},
                        }
                    }
                ],
            }
        ],
        "egress": [
            {
                "action": "Deny",
                "to": [{"networks": ["0.0.0.0/0", "::/0"]}],
                "protocols": [{"sctp": {"destinationPort": {"number": 80}}}],
            }
        ],
    },
    {  # not supported: the rule denies everything in its place (fail closed)
        "subject": {"pods": {"podSelector": {"matchLabels": {"app": "db"}}}},
        "egress": [{"action": "Accept", "to": [{"domainNames": ["example.com"]}]}],
    },
]
NODE_ZONES = ("a", "b")


def _cluster_policy(index: int, rng: random.Random) -> ClusterNetworkPolicy:
    spec = CLUSTER_POLICY_SPECS[rng.randrange(len(CLUSTER_POLICY_SPECS))]
    return parse.parse_cluster_network_policy(
        {
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": f"cnp{index}"},
            "spec": {
                "tier": rng.choice(("Admin", "Baseline")),
                "priority": rng.choice((0, 5, 5, 10)),
                **spec,
            },
        }
    )


def _node(name: str, index: int, zone: str) -> Node:
    return Node(
        name,
        (ipaddress.ip_address(f"192.0.2.{index}"), ipaddress.ip_address(f"2001:db8::{index}")),
        labels={"zone": zone},
    )


def _initial(seed: int, pods: int, cluster: bool = False) -> ClusterState:
    """``cluster``: with nodes and ClusterNetworkPolicies too."""
    rng = random.Random(seed)
    state = ClusterState.of(
        namespaces=[
            Namespace(
                name, {"kubernetes.io/metadata.name": name, "team": rng.choice(("blue", "red"))}
            )
            for name in NAMESPACES
        ],
        pods=[_pod(i, rng) for i in range(pods)],
        policies=[_policy(i, NAMESPACES[i % 3]) for i in range(6)],
    )
    if not cluster:
        return state
    nodes = [_node(NODE, 1, "a"), _node("node-b", 2, "b")]
    policies = [_cluster_policy(i, rng) for i in range(rng.randrange(4))]
    return dataclasses.replace(
        state,
        nodes={node.name: node for node in nodes},
        cluster_policies={policy.key: policy for policy in policies},
    )


def _mutate(
    state: ClusterState, rng: random.Random, serial: int, cluster: bool = False
) -> ClusterState:
    """``cluster``: ClusterNetworkPolicies and nodes change too."""
    if cluster and rng.randrange(3) == 0:
        return _mutate_cluster(state, rng)
    pods = dict(state.pods)
    namespaces = dict(state.namespaces)
    policies = dict(state.policies)
    action = rng.randrange(7)
    keys = sorted(pods)
    if action == 0 and keys:  # relabel a pod
        key = rng.choice(keys)
        pods[key] = dataclasses.replace(
            pods[key], labels={**pods[key].labels, "app": rng.choice(APPS)}
        )
    elif action == 1:  # add a pod
        pod = _pod(1000 + serial, rng)
        pods[pod.key] = pod
    elif action == 2 and keys:  # delete a pod
        del pods[rng.choice(keys)]
    elif action == 3 and keys:  # a pod finishes, keeping its IP
        key = rng.choice(keys)
        pods[key] = dataclasses.replace(pods[key], phase=PodPhase.SUCCEEDED)
    elif action == 4:  # relabel a namespace
        name = rng.choice(NAMESPACES)
        namespaces[name] = dataclasses.replace(
            namespaces[name],
            labels={**namespaces[name].labels, "team": rng.choice(("blue", "red"))},
        )
    elif action == 5:  # add or replace a policy
        policy = _policy(rng.randrange(10), rng.choice(NAMESPACES))
        policies[policy.key] = policy
    elif policies:  # delete a policy
        del policies[rng.choice(sorted(policies))]
    return dataclasses.replace(state, namespaces=namespaces, pods=pods, policies=policies)


def _mutate_cluster(state: ClusterState, rng: random.Random) -> ClusterState:
    cluster_policies = dict(state.cluster_policies)
    nodes = dict(state.nodes)
    action = rng.randrange(4)
    if action == 0:  # add or replace one (its tier, priority or rules may change)
        policy = _cluster_policy(rng.randrange(5), rng)
        cluster_policies[policy.key] = policy
    elif action == 1 and cluster_policies:
        del cluster_policies[rng.choice(sorted(cluster_policies))]
    elif action == 2 and nodes:  # relabel a node; None: its labels could not be read
        name = rng.choice(sorted(nodes))
        labels = rng.choice([{"zone": zone} for zone in NODE_ZONES] + [{}, None])
        nodes[name] = dataclasses.replace(nodes[name], labels=labels)
    elif nodes:  # a node gains or loses an address
        name = rng.choice(sorted(nodes))
        addresses = nodes[name].addresses
        extra = ipaddress.ip_address(f"192.0.2.{100 + len(addresses)}")
        changed = addresses[:2] if len(addresses) > 2 else (*addresses, extra)
        nodes[name] = dataclasses.replace(nodes[name], addresses=changed)
    return dataclasses.replace(state, cluster_policies=cluster_policies, nodes=nodes)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 12), pods=st.integers(5, 60))
def test_incremental_compile_equals_a_fresh_compile_after_every_change(
    seed: int, steps: int, pods: int
) -> None:
    rng = random.Random(seed)
    state = _initial(seed, pods, cluster=True)
    compilers = {family: NodeCompiler(NODE, family, CONFIG) for family in Family}
    for compiler in compilers.values():
        compiler.compile(state)
    for serial in range(steps):
        # Sometimes several changes in one delta (a watch batch), e.g. a namespace
        # relabelled as the ClusterNetworkPolicy that selected it by label is deleted.
        for extra in range(rng.choice((1, 1, 2, 3))):
            state = _mutate(state, rng, 100 * serial + extra, cluster=True)
        for family, compiler in compilers.items():
            incremental = compiler.compile(state)
            fresh = NodeCompiler(NODE, family, CONFIG).compile(state)
            assert incremental == fresh, f"step {serial}: {family.value} differs"


@pytest.mark.parametrize("leaf_size", [2, 4])
def test_small_leaves_force_deep_trees_that_still_match_a_fresh_compile(
    monkeypatch: pytest.MonkeyPatch, leaf_size: int
) -> None:
    monkeypatch.setattr(builder, "LEAF_SIZE", leaf_size)
    rng = random.Random(7)
    state = _initial(7, 120)
    compiler = NodeCompiler(NODE, Family.IPV4, CONFIG)
    compiler.compile(state)
    for serial in range(25):
        state = _mutate(state, rng, serial)
        assert compiler.compile(state) == NodeCompiler(NODE, Family.IPV4, CONFIG).compile(state)


def test_trees_never_exceed_the_nf_tables_jump_depth() -> None:
    """nf_tables refuses chain graphs deeper than 16 levels (EMLINK)."""
    rng = random.Random(3)
    pods = [_pod(i, rng) for i in range(3000)]
    pods = [dataclasses.replace(p, node_name=NODE) if i < 110 else p for i, p in enumerate(pods)]
    state = ClusterState.of(
        namespaces=[
            Namespace(n, {"kubernetes.io/metadata.name": n, "team": "blue"}) for n in NAMESPACES
        ],
        pods=pods,
        policies=[_policy(i, NAMESPACES[i % 3]) for i in range(10)],
    )
    ruleset = NodeCompiler(NODE, Family.IPV4, CONFIG).compile(state)

    def depth(chain: str, seen: tuple[str, ...] = ()) -> int:
        children = {r.target for r in ruleset.chains[chain].rules if r.target in ruleset.chains}
        return 1 + max((depth(c, (*seen, chain)) for c in children), default=0)

    # FORWARD is level 0 and jumps to the entry chain at level 1; the deepest chain may sit
    # at level 15.
    assert depth(ruleset.entry_chain) <= 15


def test_an_address_reused_by_a_new_pod_gets_the_new_pods_groups_only() -> None:
    state = _initial(11, 20)
    compiler = NodeCompiler(NODE, Family.IPV4, CONFIG)
    compiler.compile(state)
    old = next(p for p in state.pods.values() if p.labels["app"] == "api")
    finished = dataclasses.replace(old, phase=PodPhase.SUCCEEDED)
    successor = dataclasses.replace(
        old,
        name="successor",
        labels={"app": "db", "tier": "b"},
        ips=(ipaddress.ip_address(str(old.ips[0])),),
    )
    pods = {**state.pods, old.key: finished, successor.key: successor}
    changed = ClusterState(
        namespaces=state.namespaces, pods=pods, policies=state.policies, nodes=state.nodes
    )
    assert compiler.compile(changed) == NodeCompiler(NODE, Family.IPV4, CONFIG).compile(changed)


def test_a_new_pod_serving_a_named_port_makes_the_egress_policy_live_for_other_pods() -> None:
    # Found by the property test above (seed 3): no destination served "http", so the
    # egress policy allowed nothing and the local pods' verdict chains left it out. A new
    # pod serving it must bring the policy into the chains of the pods it selects,
    # although neither the policy nor those pods changed.
    rng = random.Random(3)
    state = _initial(3, 5)
    compiler = NodeCompiler(NODE, Family.IPV4, CONFIG)
    compiler.compile(state)
    changed = _mutate(state, rng, 0)
    added = changed.pods.keys() - state.pods.keys()
    assert [changed.pods[key].resolve_named_port("http", Protocol.TCP) for key in added] == [80]
    assert compiler.compile(changed) == NodeCompiler(NODE, Family.IPV4, CONFIG).compile(changed)


def test_a_pod_relabelled_to_serve_a_named_port_brings_in_an_admin_deny_by_that_name() -> None:
    # Found by the property test above (seed 64): no "db" pod served "http", so the
    # Admin rule had no chain; the compiler then forgot it along with the destinations
    # it watches, and a pod relabelled "db" left the deny out of the local pod's chain.
    state = _initial(64, 5)
    web = next(p for p in state.pods.values() if p.labels["app"] == "web")
    local = dataclasses.replace(web, node_name=NODE)
    no_db = {
        key: dataclasses.replace(pod, labels={**pod.labels, "app": "api"})
        if pod.labels["app"] == "db"
        else pod
        for key, pod in state.pods.items()
    }
    deny = parse.parse_cluster_network_policy(
        {
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "deny-db-http"},
            "spec": {
                "tier": "Admin",
                "priority": 0,
                "subject": {"pods": {"podSelector": {"matchLabels": {"app": "web"}}}},
                "egress": [
                    {
                        "action": "Deny",
                        "to": [{"pods": {"podSelector": {"matchLabels": {"app": "db"}}}}],
                        "protocols": [{"destinationNamedPort": "http"}],
                    }
                ],
            },
        }
    )
    before = dataclasses.replace(
        state, pods={**no_db, web.key: local}, cluster_policies={deny.key: deny}
    )
    compiler = NodeCompiler(NODE, Family.IPV4, CONFIG)
    compiler.compile(before)
    other = next(p for p in before.pods.values() if p.key != web.key)
    db = dataclasses.replace(other, labels={**other.labels, "app": "db"})
    after = dataclasses.replace(before, pods={**before.pods, db.key: db})
    assert db.resolve_named_port("http", Protocol.TCP) is not None
    assert compiler.compile(after) == NodeCompiler(NODE, Family.IPV4, CONFIG).compile(after)


def test_the_last_cluster_policy_deleted_as_its_namespace_is_relabelled_leaves_no_tier() -> None:
    # One delta: the policy chose namespace x by a label that x loses at the same time.
    # Judged by x's new labels it never selected x's pods; their tiers must go anyway.
    state = _initial(7, 20)
    x_pods = [p for p in state.pods.values() if p.namespace == "x"]
    local = {p.key: dataclasses.replace(p, node_name=NODE) for p in x_pods}
    deny = parse.parse_cluster_network_policy(
        {
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "deny-red"},
            "spec": {
                "tier": "Admin",
                "priority": 0,
                "subject": {"namespaces": {"matchLabels": {"team": "red"}}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
            },
        }
    )
    red = dataclasses.replace(state.namespaces["x"], labels={"team": "red"})
    before = dataclasses.replace(
        state,
        namespaces={**state.namespaces, "x": red},
        pods={**state.pods, **local},
        cluster_policies={deny.key: deny},
    )
    compiler = NodeCompiler(NODE, Family.IPV4, CONFIG)
    assert "deny-red" in str(compiler.compile(before).chains)
    blue = dataclasses.replace(red, labels={"team": "blue"})
    after = dataclasses.replace(
        before, namespaces={**before.namespaces, "x": blue}, cluster_policies={}
    )
    assert compiler.compile(after) == NodeCompiler(NODE, Family.IPV4, CONFIG).compile(after)


def test_caches_follow_the_cluster_not_every_object_ever_seen() -> None:
    """Pods and policies come and go (CronJobs); once they are gone, so is what the
    compiler remembered about them."""
    state = _initial(5, 40)
    compiler = NodeCompiler(NODE, Family.IPV4, CONFIG)
    compiler.compile(state)
    rng = random.Random(5)
    for serial in range(300):
        pods = dict(state.pods)
        policies = dict(state.policies)
        pod = dataclasses.replace(_pod(500 + serial % 50, rng), name=f"job-{serial}")
        pods[pod.key] = dataclasses.replace(pod, node_name=NODE)
        policy = dataclasses.replace(_policy(serial, NAMESPACES[serial % 3]), name=f"p-{serial}")
        policies[policy.key] = policy
        cluster = dataclasses.replace(_cluster_policy(serial, rng), name=f"c-{serial}")
        cluster_policies = {**state.cluster_policies, cluster.key: cluster}
        churned = ClusterState(state.namespaces, pods, policies, state.nodes, cluster_policies)
        compiler.compile(churned)
    compiler.compile(state)
    fresh = NodeCompiler(NODE, Family.IPV4, CONFIG)
    fresh.compile(state)
    sizes, expected = compiler.cache_sizes(), fresh.cache_sizes()
    assert sizes["names"] <= 2 * expected["names"] + 256
    assert {k: v for k, v in sizes.items() if k != "names"} == {
        k: v for k, v in expected.items() if k != "names"
    }


def _apply_to_index(index: ClusterIndex, state: ClusterState) -> None:
    """Feed ``index`` what differs from ``state``, as the reconciler's store does."""
    index.apply(
        pods=[(k, state.pods.get(k)) for k in index.pods.keys() | state.pods.keys()],
        namespaces=[
            (k, state.namespaces.get(k)) for k in index.namespaces.keys() | state.namespaces.keys()
        ],
        policies=[
            (k, state.policies.get(k)) for k in index.policies.keys() | state.policies.keys()
        ],
        nodes=[(k, state.nodes.get(k)) for k in index.nodes.keys() | state.nodes.keys()],
        cluster_policies=[
            (k, state.cluster_policies.get(k))
            for k in index.cluster_policies.keys() | state.cluster_policies.keys()
        ],
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    steps=st.integers(1, 12),
    pods=st.integers(5, 60),
    batch=st.integers(1, 4),
)
def test_compiling_an_index_by_deltas_equals_a_fresh_compile(
    seed: int, steps: int, pods: int, batch: int
) -> None:
    """The agent's path: a ClusterIndex moved by deltas (several changes per batch), and
    compilers that see only what each batch changed."""
    rng = random.Random(seed)
    state = _initial(seed, pods, cluster=True)
    index = ClusterIndex()
    _apply_to_index(index, state)
    compilers = {family: NodeCompiler(NODE, family, CONFIG) for family in Family}
    for compiler in compilers.values():
        compiler.compile_index(index)
    for serial in range(steps):
        for sub in range(batch):
            state = _mutate(state, rng, serial * 10 + sub, cluster=True)
        _apply_to_index(index, state)
        for family, compiler in compilers.items():
            incremental = compiler.compile_index(index)
            fresh = NodeCompiler(NODE, family, CONFIG).compile(state)
            assert incremental == fresh, f"step {serial}: {family.value} differs"
            assert dict(incremental.chains) == dict(fresh.chains)


def test_a_compiler_that_missed_a_generation_starts_over() -> None:
    rng = random.Random(2)
    state = _initial(2, 30)
    index = ClusterIndex()
    _apply_to_index(index, state)
    compiler = NodeCompiler(NODE, Family.IPV4, CONFIG)
    compiler.compile_index(index)
    for serial in range(3):  # three generations the compiler does not see
        state = _mutate(state, rng, serial)
        _apply_to_index(index, state)
    assert compiler.compile_index(index) == NodeCompiler(NODE, Family.IPV4, CONFIG).compile(state)
