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

from agent.model.reader import strictly_equal


class Kind(enum.Enum):
    POD = "Pod"
    NAMESPACE = "Namespace"
    NETWORK_POLICY = "NetworkPolicy"
    NODE = "Node"
    CLUSTER_NETWORK_POLICY = "ClusterNetworkPolicy"

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
    # False while the API does not serve the kind (ClusterNetworkPolicy without its
    # CRD): listed and empty, nothing to watch, not a failure.
    served: bool = True


@dataclass(frozen=True, slots=True)
class SourceHealth:
    kinds: Mapping[Kind, KindHealth] = field(default_factory=dict)

    @property
    def connected(self) -> bool:
        """Every kind the API serves has its watch connected."""
        return bool(self.kinds) and all(
            health.connected or not health.served for health in self.kinds.values()
        )


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
# Trimming. It keeps the fields the compiler reads *as they are*: a field of the wrong type
# is kept so that parsing reports it with its path (turning it into "absent" here could
# mean "all"), and trimming itself never fails on any shape. Label keys and values repeat
# across thousands of pods ("app", "team", the namespace name...), so strings are interned:
# each distinct string is stored once.

# Deeper than this, a policy spec is kept as it is rather than copied (no valid spec nests
# half as deep; parsing rejects whatever sits there).
_MAX_INTERN_DEPTH = 32


def _interned(value: Any) -> Any:
    return sys.intern(value) if type(value) is str else value


def _intern_labels(labels: Any) -> Any:
    if not isinstance(labels, Mapping):
        return labels  # wrong type: parsing reports it
    return {_interned(key): _interned(value) for key, value in labels.items()}


def _intern_tree(value: Any, depth: int = 0) -> Any:
    """Copy a JSON value, interning every string (policy specs are mostly selectors)."""
    if type(value) is str:
        return sys.intern(value)
    if depth > _MAX_INTERN_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {_interned(key): _intern_tree(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_intern_tree(item, depth + 1) for item in value]
    return value


def _copy_fields(source: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The fields of ``source`` that are present (not null), strings interned."""
    return {name: _interned(source[name]) for name in names if source.get(name) is not None}


def _metadata(obj: Mapping[str, Any], *, namespaced: bool, uid: bool, labels: bool) -> Any:
    source = obj.get("metadata")
    if not isinstance(source, Mapping):
        return source  # wrong type: parsing reports it
    fields = ["name", "resourceVersion"]
    if namespaced:
        fields.append("namespace")
    if uid:
        fields.append("uid")
    trimmed = _copy_fields(source, fields)
    if labels and source.get("labels") is not None:
        trimmed["labels"] = _intern_labels(source["labels"])
    return trimmed


_DROPPED = object()  # what an item trimmer returns for an item not worth keeping


def _trim_list(value: Any, trim_item: Callable[[Any], Any]) -> Any:
    """``value`` with each item trimmed (or dropped); a non-list is kept as it is."""
    if not isinstance(value, list):
        return value
    return [kept for kept in (trim_item(item) for item in value) if kept is not _DROPPED]


def _trim_port(port: Any) -> Any:
    if not isinstance(port, Mapping):
        return port
    return _copy_fields(port, ("containerPort", "name", "protocol"))


def _trim_container(container: Any) -> Any:
    # Only containers that declare ports matter (named ports in policies resolve against
    # them); the rest of a container spec is by far the largest part of a pod.
    if not isinstance(container, Mapping):
        return container
    if container.get("ports") is None or container.get("ports") == []:
        return _DROPPED
    return {"ports": _trim_list(container["ports"], _trim_port)}


def _trim_pod_ip(entry: Any) -> Any:
    if not isinstance(entry, Mapping):
        return entry
    return _copy_fields(entry, ("ip",))


def trim_pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    trimmed: dict[str, Any] = {"metadata": _metadata(obj, namespaced=True, uid=True, labels=True)}
    spec = obj.get("spec")
    if isinstance(spec, Mapping):
        trimmed_spec = _copy_fields(spec, ("nodeName", "hostNetwork"))
        for section in ("containers", "initContainers"):
            containers = _trim_list(spec.get(section), _trim_container)
            if containers is not None and containers != []:
                trimmed_spec[section] = containers
        trimmed["spec"] = trimmed_spec
    elif spec is not None:
        trimmed["spec"] = spec
    status = obj.get("status")
    if isinstance(status, Mapping):
        trimmed_status = _copy_fields(status, ("phase", "podIP"))
        if status.get("podIPs") is not None:
            trimmed_status["podIPs"] = _trim_list(status["podIPs"], _trim_pod_ip)
        trimmed["status"] = trimmed_status
    elif status is not None:
        trimmed["status"] = status
    return trimmed


def trim_namespace(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"metadata": _metadata(obj, namespaced=False, uid=False, labels=True)}


def trim_network_policy(obj: Mapping[str, Any]) -> dict[str, Any]:
    trimmed: dict[str, Any] = {"metadata": _metadata(obj, namespaced=True, uid=True, labels=False)}
    if obj.get("spec") is not None:
        trimmed["spec"] = _intern_tree(obj["spec"])
    return trimmed


def _trim_address(entry: Any) -> Any:
    if not isinstance(entry, Mapping):
        return entry
    return _copy_fields(entry, ("type", "address"))


def trim_node(obj: Mapping[str, Any]) -> dict[str, Any]:
    trimmed: dict[str, Any] = {
        # Labels: what ClusterNetworkPolicy ``nodes`` peers select on.
        "metadata": _metadata(obj, namespaced=False, uid=False, labels=True)
    }
    spec = obj.get("spec")
    if isinstance(spec, Mapping):
        trimmed_spec = _copy_fields(spec, ("podCIDR", "podCIDRs"))
        if trimmed_spec:
            trimmed["spec"] = trimmed_spec
    elif spec is not None:
        trimmed["spec"] = spec
    status = obj.get("status")
    if isinstance(status, Mapping):
        if status.get("addresses") is not None:
            trimmed["status"] = {"addresses": _trim_list(status["addresses"], _trim_address)}
    elif status is not None:
        trimmed["status"] = status
    return trimmed


def trim_cluster_network_policy(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Name, resourceVersion and spec: what parsing reads (no labels, no status)."""
    trimmed: dict[str, Any] = {
        "metadata": _metadata(obj, namespaced=False, uid=False, labels=False)
    }
    if obj.get("spec") is not None:
        trimmed["spec"] = _intern_tree(obj["spec"])
    return trimmed


_TRIMMERS: dict[Kind, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    Kind.POD: trim_pod,
    Kind.NAMESPACE: trim_namespace,
    Kind.NETWORK_POLICY: trim_network_policy,
    Kind.NODE: trim_node,
    Kind.CLUSTER_NETWORK_POLICY: trim_cluster_network_policy,
}


def trim(kind: Kind, obj: Any) -> dict[str, Any]:
    """Reduce a full API object (as parsed JSON) to the fields the compiler needs.

    Never fails: what is not an object becomes an object whose metadata parsing rejects.
    """
    if not isinstance(obj, Mapping):
        return {"metadata": obj}
    return _TRIMMERS[kind](obj)


def object_key(kind: Kind, obj: Mapping[str, Any]) -> str:
    """The store key of a full or trimmed object: "namespace/name" or "name".

    Any shape gives a key; an unusable object is then rejected when it is parsed.
    """
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        metadata = {}
    name = metadata.get("name")
    name = name if isinstance(name, str) else repr(name)
    if kind.namespaced:
        namespace = metadata.get("namespace") or "default"
        namespace = namespace if isinstance(namespace, str) else repr(namespace)
        return f"{namespace}/{name}"
    return name


def _without_resource_version(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return dict(obj)
    return {**obj, "metadata": {k: v for k, v in metadata.items() if k != "resourceVersion"}}


def same_content(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True if two trimmed objects differ at most in resourceVersion (nothing to recompile).

    Types count: ``containerPort: 80.0`` or ``hostNetwork: 0`` is a change to report.
    """
    old_content, new_content = _without_resource_version(old), _without_resource_version(new)
    return old_content == new_content and strictly_equal(old_content, new_content)


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
