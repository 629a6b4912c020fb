"""The contract between a source of cluster state and the agent that consumes it.

A source (the Kubernetes API, or a YAML file for the embedded mode) delivers batches of
``Change``. Every object it delivers is *trimmed*: a small plain dict in the API's JSON
shape (camelCase keys) that keeps only the fields the policy compiler reads. Trimming
lives here so that every source hands the compiler exactly the same shape.

Trimmed objects are shared between the source's store and the consumer: treat them as
read-only.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class Kind(enum.Enum):
    POD = "Pod"
    NAMESPACE = "Namespace"
    NETWORK_POLICY = "NetworkPolicy"
    NODE = "Node"

    @property
    def namespaced(self) -> bool:
        return self in (Kind.POD, Kind.NETWORK_POLICY)


@dataclass(frozen=True, slots=True)
class Change:
    """One object added, updated (``obj`` set) or deleted (``obj`` is None).

    ``key`` is ``"namespace/name"`` for namespaced kinds and ``"name"`` otherwise.
    """

    kind: Kind
    key: str
    obj: Mapping[str, Any] | None


ChangeSink = Callable[[Sequence[Change]], None]


@dataclass(frozen=True, slots=True)
class KindHealth:
    """A snapshot of one kind's list/watch loop, for logs, health checks and metrics."""

    listed: bool = False
    connected: bool = False
    resource_version: str = ""
    last_event_time: float | None = None  # wall clock (time.time()) of the last event
    objects: int = 0
    watch_restarts: int = 0
    relists: int = 0  # relists forced by 410 Gone (history compacted while away)
    list_restarts: int = 0  # paged lists restarted because the continue token expired
    list_errors: int = 0
    watch_errors: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class SourceHealth:
    kinds: Mapping[Kind, KindHealth] = field(default_factory=dict)

    @property
    def connected(self) -> bool:
        return bool(self.kinds) and all(health.connected for health in self.kinds.values())


class Source(Protocol):
    def start(self, sink: ChangeSink) -> None:
        """Begin delivering batches to ``sink``. The sink is never called concurrently."""

    def stop(self) -> None:
        """Stop delivering and release connections; returns promptly."""

    @property
    def synced(self) -> bool:
        """True once every kind has been listed once; stays True afterwards."""

    @property
    def health(self) -> SourceHealth: ...


# ---------------------------------------------------------------------------------------
# Trimming. Label keys and values repeat across thousands of pods ("app", "team", the
# namespace name...), so they are interned: each distinct string is stored once.


def _intern_labels(labels: Any) -> dict[str, str]:
    if not isinstance(labels, Mapping):
        return {}
    return {sys.intern(str(key)): sys.intern(str(value)) for key, value in labels.items()}


def _intern_tree(value: Any) -> Any:
    """Copy a JSON value, interning every string (policy specs are mostly selectors)."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, Mapping):
        return {sys.intern(str(key)): _intern_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_intern_tree(item) for item in value]
    return value


def _metadata(
    obj: Mapping[str, Any], *, namespaced: bool, uid: bool, labels: bool
) -> dict[str, Any]:
    source = obj.get("metadata") or {}
    trimmed: dict[str, Any] = {}
    if namespaced:
        trimmed["namespace"] = sys.intern(str(source.get("namespace") or "default"))
    trimmed["name"] = str(source.get("name") or "")
    if uid and source.get("uid"):
        trimmed["uid"] = str(source["uid"])
    if source.get("resourceVersion"):
        trimmed["resourceVersion"] = str(source["resourceVersion"])
    if labels:
        trimmed["labels"] = _intern_labels(source.get("labels"))
    return trimmed


def _trim_ports(container: Mapping[str, Any]) -> list[dict[str, Any]]:
    ports = []
    for port in container.get("ports") or ():
        if not isinstance(port, Mapping) or "containerPort" not in port:
            continue
        trimmed: dict[str, Any] = {"containerPort": port["containerPort"]}
        if port.get("name"):
            trimmed["name"] = sys.intern(str(port["name"]))
        trimmed["protocol"] = sys.intern(str(port.get("protocol") or "TCP"))
        ports.append(trimmed)
    return ports


def _trim_containers(containers: Any, *, keep_restart_policy: bool) -> list[dict[str, Any]]:
    # Only containers that declare ports matter (named ports in policies resolve against
    # them); the rest of a container spec is by far the largest part of a pod.
    trimmed = []
    for container in containers or ():
        if not isinstance(container, Mapping):
            continue
        ports = _trim_ports(container)
        if not ports:
            continue
        entry: dict[str, Any] = {"ports": ports}
        if keep_restart_policy and container.get("restartPolicy"):
            # restartPolicy: Always marks a sidecar that keeps serving; the compiler decides
            # whether a plain init container's ports count.
            entry["restartPolicy"] = sys.intern(str(container["restartPolicy"]))
        trimmed.append(entry)
    return trimmed


def trim_pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    trimmed_spec: dict[str, Any] = {}
    if spec.get("nodeName"):
        trimmed_spec["nodeName"] = sys.intern(str(spec["nodeName"]))
    if spec.get("hostNetwork"):
        trimmed_spec["hostNetwork"] = True
    containers = _trim_containers(spec.get("containers"), keep_restart_policy=False)
    if containers:
        trimmed_spec["containers"] = containers
    init_containers = _trim_containers(spec.get("initContainers"), keep_restart_policy=True)
    if init_containers:
        trimmed_spec["initContainers"] = init_containers
    trimmed_status: dict[str, Any] = {}
    if status.get("phase"):
        trimmed_status["phase"] = sys.intern(str(status["phase"]))
    if status.get("podIP"):
        trimmed_status["podIP"] = str(status["podIP"])
    pod_ips = [
        {"ip": str(entry["ip"])}
        for entry in status.get("podIPs") or ()
        if isinstance(entry, Mapping) and entry.get("ip")
    ]
    if pod_ips:
        trimmed_status["podIPs"] = pod_ips
    return {
        "metadata": _metadata(obj, namespaced=True, uid=True, labels=True),
        "spec": trimmed_spec,
        "status": trimmed_status,
    }


def trim_namespace(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"metadata": _metadata(obj, namespaced=False, uid=False, labels=True)}


def trim_network_policy(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "metadata": _metadata(obj, namespaced=True, uid=True, labels=False),
        "spec": _intern_tree(obj.get("spec") or {}),
    }


def trim_node(obj: Mapping[str, Any]) -> dict[str, Any]:
    status = obj.get("status") or {}
    addresses = [
        {"type": sys.intern(str(entry.get("type") or "")), "address": str(entry["address"])}
        for entry in status.get("addresses") or ()
        if isinstance(entry, Mapping) and entry.get("address")
    ]
    return {
        "metadata": _metadata(obj, namespaced=False, uid=False, labels=False),
        "status": {"addresses": addresses},
    }


_TRIMMERS: dict[Kind, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    Kind.POD: trim_pod,
    Kind.NAMESPACE: trim_namespace,
    Kind.NETWORK_POLICY: trim_network_policy,
    Kind.NODE: trim_node,
}


def trim(kind: Kind, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Reduce a full API object (as parsed JSON) to the fields the compiler needs."""
    return _TRIMMERS[kind](obj)


def object_key(kind: Kind, obj: Mapping[str, Any]) -> str:
    """The store key of a full or trimmed object: "namespace/name" or "name"."""
    metadata = obj.get("metadata") or {}
    name = str(metadata.get("name") or "")
    if kind.namespaced:
        return f"{metadata.get('namespace') or 'default'}/{name}"
    return name


def _without_resource_version(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = dict(obj.get("metadata") or {})
    metadata.pop("resourceVersion", None)
    return {**obj, "metadata": metadata}


def same_content(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True if two trimmed objects differ at most in resourceVersion (nothing to recompile)."""
    return _without_resource_version(old) == _without_resource_version(new)


def diff_stores(
    kind: Kind,
    old: Mapping[str, Mapping[str, Any]],
    new: Mapping[str, Mapping[str, Any]],
) -> list[Change]:
    """The changes that turn ``old`` into ``new`` (adds/updates, then deletes)."""
    changes = [
        Change(kind, key, obj)
        for key, obj in new.items()
        if key not in old or not same_content(old[key], obj)
    ]
    changes.extend(Change(kind, key, None) for key in old if key not in new)
    return changes
