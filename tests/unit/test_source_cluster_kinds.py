"""ClusterNetworkPolicy and every Node through the source contract: trimming keeps what
parsing reads, the file source delivers them, and the reconciler's snapshot, written
state and counts carry them."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.control.file_source import FileSource
from agent.control.outcome import Cause, ObjectChange
from agent.control.reconciler import Reconciler, ReconcilerConfig
from agent.control.source import Change, Kind, KindHealth, SourceHealth, same_content, trim
from agent.model.objects import RuleAction, Tier
from agent.observability.rulelog import describe_change
from agent.policy.state import ClusterState
from tests.unit.test_file_source import NAMESPACE, Recorder
from tests.unit.test_reconciler import Dataplane, Source

SPEC: dict[str, Any] = {
    "tier": "Admin",
    "priority": 10,
    "subject": {"namespaces": {"matchLabels": {"team": "a"}}},
    "egress": [
        {"name": "no-nodes", "action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "x"}}}]}
    ],
}

FULL_CNP: dict[str, Any] = {
    "apiVersion": "policy.networking.k8s.io/v1alpha2",
    "kind": "ClusterNetworkPolicy",
    "metadata": {
        "name": "guard",
        "resourceVersion": "42",
        "uid": "u-1",
        "generation": 3,
        "labels": {"owner": "sec"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        "creationTimestamp": "2026-01-01T00:00:00Z",
    },
    "spec": SPEC,
    "status": {"conditions": [{"type": "Ready", "status": "True"}]},
}

FULL_NODE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {
        "name": "node-7",
        "resourceVersion": "9",
        "uid": "u-n",
        "labels": {
            "kubernetes.io/hostname": "node-7",
            "topology.kubernetes.io/zone": "zone-a",
            "node-role.kubernetes.io/control-plane": "",
        },
        "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/x": "y"},
        "managedFields": [{"manager": "kubelet"}],
    },
    "spec": {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24", "fd00:7::/64"],
             "providerID": "kind://x", "taints": [{"key": "k", "effect": "NoSchedule"}]},
    "status": {
        "addresses": [
            {"type": "InternalIP", "address": "192.0.2.7"},
            {"type": "InternalIP", "address": "2001:db8::7"},
            {"type": "Hostname", "address": "node-7"},
        ],
        "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "now"}],
        "images": [{"names": ["registry/image:tag"], "sizeBytes": 1234}] * 30,
        "nodeInfo": {"kubeletVersion": "v1.35.0", "osImage": "Debian"},
        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
    },
}  # fmt: skip


def test_a_cluster_network_policy_keeps_its_name_version_and_spec_only() -> None:
    assert trim(Kind.CLUSTER_NETWORK_POLICY, FULL_CNP) == {
        "metadata": {"name": "guard", "resourceVersion": "42"},
        "spec": SPEC,
    }


def test_a_cluster_network_policy_spec_of_the_wrong_type_is_kept_for_parsing_to_report() -> None:
    broken = {"metadata": {"name": "bad"}, "spec": ["not", "an", "object"]}
    assert trim(Kind.CLUSTER_NETWORK_POLICY, broken) == broken
    assert trim(Kind.CLUSTER_NETWORK_POLICY, "junk") == {"metadata": "junk"}


def test_cluster_network_policy_spec_strings_are_interned() -> None:
    first = trim(Kind.CLUSTER_NETWORK_POLICY, json.loads(json.dumps(FULL_CNP)))
    second = trim(Kind.CLUSTER_NETWORK_POLICY, json.loads(json.dumps(FULL_CNP)))
    assert (
        first["spec"]["subject"]["namespaces"]["matchLabels"]["team"]
        is (second["spec"]["subject"]["namespaces"]["matchLabels"]["team"])
    )


def test_a_status_change_of_a_cluster_network_policy_is_no_change() -> None:
    updated = {**FULL_CNP, "metadata": {**FULL_CNP["metadata"], "resourceVersion": "43"},
               "status": {"conditions": []}}  # fmt: skip
    old = trim(Kind.CLUSTER_NETWORK_POLICY, FULL_CNP)
    assert same_content(old, trim(Kind.CLUSTER_NETWORK_POLICY, updated))


def test_a_node_keeps_name_labels_addresses_and_pod_cidrs_only() -> None:
    assert trim(Kind.NODE, FULL_NODE) == {
        "metadata": {
            "name": "node-7",
            "resourceVersion": "9",
            "labels": FULL_NODE["metadata"]["labels"],
        },
        "spec": {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24", "fd00:7::/64"]},
        "status": {"addresses": FULL_NODE["status"]["addresses"]},
    }


def test_a_node_label_change_is_a_change() -> None:
    relabelled = json.loads(json.dumps(FULL_NODE))
    relabelled["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-b"
    assert not same_content(trim(Kind.NODE, FULL_NODE), trim(Kind.NODE, relabelled))


def deep_size(value: Any, seen: set[int] | None = None) -> int:
    """Bytes a trimmed object holds, counting every container and string once."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, Mapping):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in value.items())
    elif isinstance(value, list):
        size += sum(deep_size(item, seen) for item in value)
    return size


def test_a_trimmed_node_is_small() -> None:
    # Name, three labels, three addresses, two pod CIDRs: about 3 KiB in CPython
    # (interned strings shared with other nodes count here in full). 5,000 nodes: ~15 MB.
    size = deep_size(trim(Kind.NODE, FULL_NODE))
    assert size < 4096, size


# --- the file source ------------------------------------------------------------------


CNP_YAML = """\
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: guard
spec:
  tier: Baseline
  priority: 5
  subject: {namespaces: {}}
"""


def test_the_file_source_delivers_cluster_network_policies(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    path.write_text("---\n".join([NAMESPACE, CNP_YAML]))
    recorder = Recorder()
    source = FileSource(path, poll_interval=None)
    source.start(recorder)
    changes = [c for c in recorder.flat() if c.kind is Kind.CLUSTER_NETWORK_POLICY]
    assert [(c.key, c.obj) for c in changes] == [
        ("guard", {"metadata": {"name": "guard"},
                   "spec": {"tier": "Baseline", "priority": 5, "subject": {"namespaces": {}}}}),
    ]  # fmt: skip
    assert source.health.kinds[Kind.CLUSTER_NETWORK_POLICY].objects == 1


# --- the reconciler ---------------------------------------------------------------------


def cnp(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": "1"},
            "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}}, **spec}}  # fmt: skip


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}  # fmt: skip


def reconciler(written: list[ClusterState] | None = None) -> Reconciler:
    return Reconciler(
        ReconcilerConfig(node_name="n"),
        Source(synced=True),  # type: ignore[arg-type]
        Dataplane(),  # type: ignore[arg-type]
        on_written=written.append if written is not None else None,
    )


def test_cluster_network_policies_reach_the_index_and_leave_it() -> None:
    follower = reconciler()
    follower.on_changes([Change(Kind.CLUSTER_NETWORK_POLICY, "guard", cnp("guard"))])
    state = follower.snapshot()
    assert list(state.cluster_policies) == ["guard"]
    assert state.delta.cluster_policies[0][1] is state.cluster_policies["guard"]
    follower.on_changes([Change(Kind.CLUSTER_NETWORK_POLICY, "guard", None)])
    assert follower.snapshot().cluster_policies == {}


def test_the_written_state_and_the_counts_carry_cluster_network_policies() -> None:
    written: list[ClusterState] = []
    follower = reconciler(written)
    follower.on_changes([Change(Kind.CLUSTER_NETWORK_POLICY, "guard", cnp("guard"))])
    outcome = follower.run_pass(Cause.INITIAL)
    assert outcome.error is None
    assert list(written[-1].cluster_policies) == ["guard"]
    assert outcome.counts.cluster_policies == 1
    assert [(c.kind, c.key, c.action) for c in outcome.changes] == [
        (Kind.CLUSTER_NETWORK_POLICY, "guard", "added")
    ]


def test_a_cluster_network_policy_the_parser_fails_on_denies_everything(monkeypatch: Any) -> None:
    from agent.control import reconciler as module

    def broken(obj: Mapping[str, Any]) -> Any:
        raise TypeError("unexpected shape")  # a parser bug, not an InvalidObject

    monkeypatch.setitem(module._PARSERS, Kind.CLUSTER_NETWORK_POLICY, broken)
    follower = reconciler()
    follower.on_changes([Change(Kind.CLUSTER_NETWORK_POLICY, "guard", cnp("guard"))])
    policy = follower.snapshot().cluster_policies["guard"]
    assert policy.tier is Tier.ADMIN and policy.subject is None
    for rules in (policy.ingress, policy.egress):
        assert [(r.action, r.peers, r.ports) for r in rules] == [(RuleAction.DENY, None, None)]
    assert "unexpected shape" in policy.problems[0]


def test_a_cluster_network_policy_without_a_name_is_skipped() -> None:
    follower = reconciler()
    follower.on_changes([Change(Kind.CLUSTER_NETWORK_POLICY, "None", {"metadata": {}})])
    assert follower.snapshot().cluster_policies == {}


def test_a_node_label_change_reaches_the_index_as_a_labels_update() -> None:
    follower = reconciler()
    follower.on_changes([Change(Kind.NODE, "other", node("other", zone="a"))])
    follower.run_pass(Cause.INITIAL)
    follower.on_changes([Change(Kind.NODE, "other", node("other", zone="b"))])
    outcome = follower.run_pass(Cause.CHANGE)
    (change,) = outcome.changes
    assert (change.kind, change.key, change.action) == (Kind.NODE, "other", "updated")
    assert change.fields == ("labels",)
    assert follower.snapshot().nodes["other"].labels == {"zone": "b"}


def test_the_rule_log_names_a_cluster_network_policy_change() -> None:
    change = ObjectChange(Kind.CLUSTER_NETWORK_POLICY, "guard", "added", (), 0.0)
    assert describe_change(change) == "cluster policy created guard"


def test_an_unserved_kind_does_not_make_the_source_disconnected() -> None:
    health = SourceHealth({
        Kind.POD: KindHealth(listed=True, connected=True),
        Kind.CLUSTER_NETWORK_POLICY: KindHealth(listed=True, connected=False, served=False),
    })  # fmt: skip
    assert health.connected
    broken = SourceHealth({
        Kind.POD: KindHealth(listed=True, connected=True),
        Kind.CLUSTER_NETWORK_POLICY: KindHealth(listed=True, connected=False),
    })  # fmt: skip
    assert not broken.connected
