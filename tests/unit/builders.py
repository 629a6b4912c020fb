"""Small builders of API-shaped dicts, so each test states only what matters to it."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from agent.model.objects import Protocol
from agent.policy.explain import Endpoint, Verdict, explain, resolve_endpoint
from agent.policy.state import ClusterState, build_state

Obj = dict[str, Any]


def namespace(name: str, **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def node(name: str, *addresses: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]},
    }


def pod(
    key: str,
    *ips: str,
    labels: Mapping[str, str] | None = None,
    node_name: str = "node1",
    phase: str = "Running",
    host_network: bool = False,
    ports: Sequence[Mapping[str, Any]] = (),
) -> Obj:
    """``key`` is ``ns/name``; ``ports`` are container ports (name, containerPort, protocol)."""
    ns, name = key.split("/")
    spec: Obj = {"nodeName": node_name, "containers": [{"name": "c", "ports": list(ports)}]}
    if host_network:
        spec["hostNetwork"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {})},
        "spec": spec,
        "status": {"phase": phase, "podIPs": [{"ip": ip} for ip in ips]},
    }


def policy(key: str, **spec: Any) -> Obj:
    """``key`` is ``ns/name``; keyword arguments are the spec (``from_`` for ``from``)."""
    ns, name = key.split("/")
    spec.setdefault("podSelector", {})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def labels(**values: str) -> Obj:
    """A ``matchLabels`` selector."""
    return {"matchLabels": values}


def state_of(*objects: Obj, allow_problems: bool = False) -> ClusterState:
    built = build_state(objects)
    if not allow_problems:
        assert built.problems == (), built.problems
    return built.state


def endpoint(state: ClusterState, text: str, version: int = 4) -> Endpoint:
    return resolve_endpoint(state, text, version)


def check(
    state: ClusterState, source: str, destination: str, port: int = 80, protocol: str = "TCP"
) -> Verdict:
    """The verdict for ``source`` -> ``destination`` (``ns/pod`` or an address)."""
    version = 4
    for text in (source, destination):
        try:
            version = ipaddress.ip_address(text).version
        except ValueError:
            continue
    return explain(
        state,
        endpoint(state, source, version),
        endpoint(state, destination, version),
        Protocol(protocol),
        port,
    )


def allowed(
    state: ClusterState, source: str, destination: str, port: int = 80, protocol: str = "TCP"
) -> bool:
    return check(state, source, destination, port, protocol).allowed


def cnp(name: str, tier: str, priority: int, subject: Obj, **spec: Any) -> Obj:
    """A ClusterNetworkPolicy; ``subject`` as the API writes it (``{"namespaces": {}}``),
    keyword arguments are the rest of the spec (``ingress``, ``egress``)."""
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"tier": tier, "priority": priority, "subject": subject, **spec},
    }


def cnp_rule(
    action: str, *peers: Obj, protocols: Sequence[Obj] | None = None, name: str = ""
) -> Obj:
    """One ingress or egress rule: ``peers`` go to ``from``/``to`` (see ``ingress``/
    ``egress``)."""
    rule: Obj = {"action": action, "peers": list(peers)}
    if protocols is not None:
        rule["protocols"] = list(protocols)
    if name:
        rule["name"] = name
    return rule


def ingress(*rules: Obj) -> list[Obj]:
    return [{("from" if k == "peers" else k): v for k, v in rule.items()} for rule in rules]


def egress(*rules: Obj) -> list[Obj]:
    return [{("to" if k == "peers" else k): v for k, v in rule.items()} for rule in rules]
