"""The incremental compile equals a fresh one when only a ClusterNetworkPolicy rule's
name changes (the tier chain's comment names the rule)."""

from __future__ import annotations

from typing import Any

from agent.compiler.node import NodeCompiler
from agent.model.parse import parse_cluster_network_policy
from agent.policy.index import ClusterIndex
from agent.policy.state import build_state
from agent.rules import Family
from bench.synth import MEASURED_NODE, SIZES, generate


def _named(obj: dict[str, Any], name: str | None) -> dict[str, Any]:
    rule = {key: value for key, value in obj["spec"]["ingress"][0].items() if key != "name"}
    if name is not None:
        rule["name"] = name
    return {**obj, "spec": {**obj["spec"], "ingress": [rule, *obj["spec"]["ingress"][1:]]}}


def test_renaming_a_cluster_policy_rule_recompiles_to_what_a_fresh_compile_gives() -> None:
    objects = generate(SIZES["tiny+cnp"])
    state = build_state(objects).state
    index = ClusterIndex()
    index.apply(
        pods=state.pods.items(),
        namespaces=state.namespaces.items(),
        policies=state.policies.items(),
        nodes=state.nodes.items(),
        cluster_policies=state.cluster_policies.items(),
    )
    compilers = {family: NodeCompiler(MEASURED_NODE, family) for family in Family}
    for compiler in compilers.values():
        compiler.compile_index(index)
    policy = next(o for o in objects if o["kind"] == "ClusterNetworkPolicy")
    for name in (None, "renamed", "in-0"):
        changed = parse_cluster_network_policy(_named(policy, name))
        index.apply(cluster_policies=[(changed.key, changed)])
        for family, compiler in compilers.items():
            incremental = compiler.compile_index(index)
            fresh = NodeCompiler(MEASURED_NODE, family).compile(index)
            assert dict(incremental.chains) == dict(fresh.chains), (name, family.value)
