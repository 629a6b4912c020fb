"""Build model objects from Kubernetes objects as the API returns them.

Input is either a dict in the API's JSON shape (camelCase, as read from a watch or a
YAML/JSON file) or a ``kubernetes`` client model object. The API server's defaulting is
applied here too (policyTypes, protocol TCP, the namespace name label), so objects read
from a file behave exactly like objects read from the API.

Parsing is strict: every field the agent reads must have the API's type. A wrong type is
an error naming ``namespace/name`` and the field path, never "absent" (absent often
means "all"). What an error does depends on what fails closed:

- NetworkPolicy: the policy is kept with its problems listed. A broken rule is dropped
  whole (never widened); broken ``policyTypes`` isolate both directions; a broken
  ``spec`` or ``spec.podSelector`` isolates every pod of the namespace in both
  directions, and that policy allows nothing.
- Pod: a bad ``status.podIPs`` entry or container port is reported and left out (the
  pod keeps its good addresses; a named port that cannot be read resolves to nothing).
  A wrongly typed ``hostNetwork`` is reported and read as false, so the pod keeps its
  rules. A pod whose labels (any one key or value), ``spec`` or ``spec.nodeName`` cannot
  be read is *quarantined* (``Pod.quarantined``): never a selector peer, isolated both
  ways with nothing allowed, on every node when its node is unknown. An unreadable
  ``status`` or ``metadata.uid`` quarantines it too (without a status it has no address
  to enforce). Only a pod whose name or namespace cannot be read is rejected
  (``InvalidObject``): it has no key to be kept under.
- Namespace: unreadable labels quarantine it (``Namespace.quarantined``): no selector
  matches its pods, which are quarantined. Unreadable identity rejects it.
- Node: unreadable identity rejects it; a bad node address or pod CIDR is reported and
  left out; unreadable labels are reported and read as None (no ``nodes`` peer selects
  it but one that selects every node).
- ClusterNetworkPolicy: see :mod:`agent.model.parse_cnp` (a broken rule denies all
  traffic at its place; a broken tier, priority or subject makes the whole policy deny).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.model.fields import (
    DNS_SUBDOMAIN,
    FieldError,
    InvalidObject,
    as_dict,
    as_entry,
    as_list,
    as_mapping,
    checked,
    identity,
    is_port_name,
    parse_cidr,
    parse_ip,
    parse_labels,
    parse_protocol,
    port_number,
    shown,
    wrong_type,
)
from agent.model.objects import (
    NAMESPACE_NAME_LABEL,
    ClusterNetworkPolicy,
    ContainerPort,
    IPAddress,
    IPNetwork,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    PodPhase,
)
from agent.model.parse_cnp import parse_cluster_network_policy
from agent.model.parse_policy import parse_network_policy, parse_selector
from agent.model.reader import ReadResult, expand_documents

__all__ = [
    "FieldError",
    "InvalidObject",
    "ParsedObjects",
    "as_dict",
    "parse_cluster_network_policy",
    "parse_namespace",
    "parse_network_policy",
    "parse_node",
    "parse_objects",
    "parse_pod",
    "parse_read",
    "parse_selector",
    "shown",
]


# --- Namespace ---------------------------------------------------------------------------


def parse_namespace(obj: Any) -> Namespace:
    return checked("Namespace", _parse_namespace, obj)


def _parse_namespace(raw: Mapping[str, Any]) -> Namespace:
    _, name, _ = identity(raw, "Namespace", namespaced=False)
    try:
        labels = parse_labels(raw["metadata"].get("labels"), "metadata.labels")
    except FieldError as error:
        # Fail closed: matching it by what is left (its name) could satisfy a NotIn or
        # DoesNotExist it would not, so no selector matches it at all.
        problem = f"Namespace {name}: {error}; {NAMESPACE_QUARANTINE}"
        labels = {NAMESPACE_NAME_LABEL: name}
        return Namespace(name=name, labels=labels, quarantined=True, problems=(problem,))
    # The API server sets this immutable label; file input may lack it.
    labels.setdefault(NAMESPACE_NAME_LABEL, name)
    return Namespace(name=name, labels=labels)


NAMESPACE_QUARANTINE = (
    "the namespace is quarantined: no namespace selector matches it, and its pods are "
    "isolated both ways and never selected as peers"
)
POD_QUARANTINE = "the pod is quarantined: isolated both ways, never selected as a peer"


_PHASES = {phase.value: phase for phase in PodPhase}


# --- Pod ---------------------------------------------------------------------------------


def _container_ports(spec: Mapping[str, Any], problems: list[str]) -> tuple[ContainerPort, ...]:
    """Every readable container port. A port that cannot be read is reported and left
    out: a named port then resolves to nothing on this pod, which allows less."""
    ports: list[ContainerPort] = []
    # Restartable init containers (sidecars) serve ports too.
    for section in ("containers", "initContainers"):
        try:
            containers = as_list(spec.get(section), f"spec.{section}")
        except FieldError as error:
            problems.append(f"{error}; its container ports are ignored")
            continue
        for c, container in enumerate(containers):
            where = f"spec.{section}[{c}]"
            try:
                entries = as_list(as_entry(container, where).get("ports"), f"{where}.ports")
            except FieldError as error:
                problems.append(f"{error}; its container ports are ignored")
                continue
            for p, port in enumerate(entries):
                try:
                    ports.append(_container_port(port, f"{where}.ports[{p}]"))
                except FieldError as error:
                    problems.append(f"{error}; that port is ignored")
    return tuple(ports)


def _container_port(raw: Any, path: str) -> ContainerPort:
    port = as_entry(raw, path)
    number = port_number(port.get("containerPort"), f"{path}.containerPort")
    protocol = parse_protocol(port.get("protocol"), f"{path}.protocol")
    name = port.get("name")
    if name is None or name == "":
        return ContainerPort(number, protocol, None)
    if not is_port_name(name):
        raise FieldError(f"{path}.name", f"{shown(name)} is not a valid port name")
    return ContainerPort(number, protocol, sys.intern(name))


def _pod_ips(status: Mapping[str, Any], problems: list[str]) -> tuple[IPAddress, ...]:
    """The pod's addresses: every good entry of podIPs (podIP if there is none). A bad
    entry is reported and left out; the good ones are kept."""
    ips: list[IPAddress] = []
    good_texts: set[str] = set()
    problems_before = len(problems)
    try:
        entries = as_list(status.get("podIPs"), "status.podIPs")
    except FieldError as error:
        problems.append(str(error))
        entries = []
    for i, entry in enumerate(entries):
        try:
            address = parse_ip(
                as_entry(entry, f"status.podIPs[{i}]").get("ip"), f"status.podIPs[{i}].ip"
            )
        except FieldError as error:
            problems.append(f"{error}; that address is ignored")
            continue
        good_texts.add(entry["ip"])
        if address not in ips:
            ips.append(address)
    primary = status.get("podIP")
    if primary is not None and not (isinstance(primary, str) and primary in good_texts | {""}):
        try:
            address = parse_ip(primary, "status.podIP")
        except FieldError as error:
            problems.append(f"{error}; that address is ignored")
        else:
            if not ips:  # podIP is podIPs[0]; it matters only without podIPs
                ips.append(address)
    if len(problems) > problems_before and not ips:
        problems.append("no usable IP address: this pod cannot be enforced")
    return tuple(ips)


def _phase(status: Mapping[str, Any], problems: list[str]) -> PodPhase:
    value = status.get("phase")
    if value is None or value == "":
        return PodPhase.PENDING
    if type(value) is str and value in _PHASES:
        return _PHASES[value]
    problems.append(f"status.phase: unknown phase {shown(value)}; read as Unknown")
    return PodPhase.UNKNOWN


def parse_pod(obj: Any) -> Pod:
    return checked("Pod", _parse_pod, obj)


def _parse_pod(raw: Mapping[str, Any]) -> Pod:
    problems: list[str] = []
    quarantined = False
    metadata = raw.get("metadata")
    bad_uid: FieldError | None = None
    if isinstance(metadata, Mapping) and metadata.get("uid") is not None:
        uid_value = metadata["uid"]
        if not isinstance(uid_value, str) or not uid_value.isprintable():
            # Not needed to key the pod: read what is left, and quarantine it below.
            bad_uid = wrong_type("metadata.uid", "a printable string", uid_value)
            raw = {**raw, "metadata": {k: v for k, v in metadata.items() if k != "uid"}}
    namespace, name, uid = identity(raw, "Pod", namespaced=True)

    def quarantine(error: FieldError, consequence: str = POD_QUARANTINE) -> None:
        nonlocal quarantined
        quarantined = True
        problems.append(f"{error}; {consequence}")

    if bad_uid is not None:
        quarantine(bad_uid)
    labels: dict[str, str] = {}
    try:
        labels = parse_labels(raw["metadata"].get("labels"), "metadata.labels")
    except FieldError as error:
        quarantine(error)
    spec: Mapping[str, Any] = {}
    node_unknown = "its node is unknown: enforced on every node"
    try:
        spec = as_mapping(raw.get("spec"), "spec")
    except FieldError as error:
        quarantine(error, f"{POD_QUARANTINE}; {node_unknown}")
    status: Mapping[str, Any] = {}
    try:
        status = as_mapping(raw.get("status"), "status")
    except FieldError as error:
        quarantine(error, f"{POD_QUARANTINE}; without an address it cannot be enforced")
    node_name = spec.get("nodeName")
    if node_name == "":
        node_name = None
    if node_name is not None and (
        not isinstance(node_name, str) or len(node_name) > 253 or not DNS_SUBDOMAIN.match(node_name)
    ):
        quarantine(
            FieldError("spec.nodeName", f"not a valid node name: {shown(node_name)}"),
            f"{POD_QUARANTINE}; {node_unknown}",
        )
        node_name = None
    host_network = spec.get("hostNetwork")
    if host_network is None:
        host_network = False
    elif not isinstance(host_network, bool):
        # Read as false: the pod keeps its rules (dropping them would open it).
        problems.append(
            f"{wrong_type('spec.hostNetwork', 'true or false', host_network)}; read as false"
        )
        host_network = False
    phase = _phase(status, problems)
    ips = _pod_ips(status, problems)
    ports = _container_ports(spec, problems)
    return Pod(
        namespace=sys.intern(namespace),
        name=name,
        labels=labels,
        node_name=sys.intern(node_name) if node_name else None,
        host_network=host_network,
        phase=phase,
        ips=ips,
        ports=ports,
        uid=uid,
        quarantined=quarantined,
        problems=tuple(f"Pod {namespace}/{name}: {p}" for p in problems),
    )


# --- Node --------------------------------------------------------------------------------

# Address types that name a host rather than give an address.
_HOSTNAME_TYPES = frozenset({"Hostname", "InternalDNS", "ExternalDNS"})
_ADDRESS_TYPES = frozenset({"InternalIP", "ExternalIP"})


def parse_node(obj: Any) -> Node:
    return checked("Node", _parse_node, obj)


def _parse_node(raw: Mapping[str, Any]) -> Node:
    _, name, _ = identity(raw, "Node", namespaced=False)
    problems: list[str] = []
    addresses: list[IPAddress] = []
    try:
        entries = as_list(
            as_mapping(raw.get("status"), "status").get("addresses"), "status.addresses"
        )
    except FieldError as error:
        problems.append(str(error))
        entries = []
    for i, entry in enumerate(entries):
        path = f"status.addresses[{i}]"
        try:
            fields = as_entry(entry, path)
            address_type = fields.get("type")
            if address_type in _HOSTNAME_TYPES:
                continue
            if address_type not in _ADDRESS_TYPES:
                raise FieldError(
                    f"{path}.type",
                    f"unknown address type {shown(address_type)} (InternalIP, ExternalIP, ...)",
                )
            address = parse_ip(fields.get("address"), f"{path}.address")
        except FieldError as error:
            problems.append(f"{error}; that address is ignored")
            continue
        if address not in addresses:
            addresses.append(address)
    pod_cidrs = _pod_cidrs(raw, problems)
    labels: dict[str, str] | None
    try:
        labels = parse_labels(raw["metadata"].get("labels"), "metadata.labels")
    except FieldError as error:
        # Fail closed: a selector could match it by what is left, so none does (only
        # one that selects every node).
        problems.append(f"{error}; no nodes peer selects this node but one selecting all")
        labels = None
    return Node(
        name=name,
        addresses=tuple(addresses),
        pod_cidrs=pod_cidrs,
        labels=labels,
        problems=tuple(f"Node {name}: {p}" for p in problems),
    )


def _pod_cidrs(raw: Mapping[str, Any], problems: list[str]) -> tuple[IPNetwork, ...]:
    """``spec.podCIDRs`` (or ``spec.podCIDR`` when the list is absent or empty): every
    readable entry. A bad entry is reported and left out (only ``--isolate-unknown-pod-ips``
    reads these, and an entry it cannot read isolates nothing: the log says so)."""
    try:
        spec = as_mapping(raw.get("spec"), "spec")
        entries = [
            (f"spec.podCIDRs[{i}]", entry)
            for i, entry in enumerate(as_list(spec.get("podCIDRs"), "spec.podCIDRs"))
        ]
        if not entries and spec.get("podCIDR") is not None:
            entries = [("spec.podCIDR", spec.get("podCIDR"))]
    except FieldError as error:
        problems.append(f"{error}; no pod CIDR is read from it")
        return ()
    cidrs: list[IPNetwork] = []
    for path, entry in entries:
        try:
            cidr = parse_cidr(entry, path)
        except FieldError as error:
            problems.append(f"{error}; that pod CIDR is ignored")
            continue
        if cidr not in cidrs:
            cidrs.append(cidr)
    return tuple(cidrs)


# --- many objects ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedObjects:
    namespaces: tuple[Namespace, ...]
    pods: tuple[Pod, ...]
    policies: tuple[NetworkPolicy, ...]
    nodes: tuple[Node, ...]
    problems: tuple[str, ...]
    cluster_policies: tuple[ClusterNetworkPolicy, ...] = ()


def parse_objects(documents: Iterable[Any], origin: str = "input") -> ParsedObjects:
    """Parse documents of any supported kind (``*List`` documents expanded).

    What the agent cannot use is skipped and reported; the rest still applies.
    """
    return parse_read(expand_documents(documents, origin))


def parse_read(expanded: ReadResult) -> ParsedObjects:
    """Parse what the reader found; its problems come first."""
    problems = list(expanded.problems)
    namespaces: list[Namespace] = []
    pods: list[Pod] = []
    policies: list[NetworkPolicy] = []
    nodes: list[Node] = []
    cluster_policies: list[ClusterNetworkPolicy] = []
    for raw, where in zip(expanded.objects, expanded.origins, strict=True):
        kind = raw["kind"]
        try:
            if kind == "Namespace":
                namespace = parse_namespace(raw)
                namespaces.append(namespace)
                problems.extend(namespace.problems)
            elif kind == "Pod":
                pod = parse_pod(raw)
                pods.append(pod)
                problems.extend(pod.problems)
            elif kind == "NetworkPolicy":
                policy = parse_network_policy(raw)
                policies.append(policy)
                problems.extend(policy.problems)
            elif kind == "ClusterNetworkPolicy":
                cluster_policy = parse_cluster_network_policy(raw)
                cluster_policies.append(cluster_policy)
                problems.extend(cluster_policy.problems)
            else:
                node = parse_node(raw)
                nodes.append(node)
                problems.extend(node.problems)
        except InvalidObject as error:
            problems.append(f"{where}: {error}; skipped")
    return ParsedObjects(
        tuple(namespaces),
        tuple(pods),
        tuple(policies),
        tuple(nodes),
        tuple(problems),
        tuple(cluster_policies),
    )
