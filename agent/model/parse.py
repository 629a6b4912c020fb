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
  rules. A pod whose identity, labels, spec or status cannot be read is rejected
  (``InvalidObject``): it cannot be enforced, and it is reported.
- Namespace, Node: unreadable identity or labels reject the object; a bad node address
  is reported and left out.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.model.objects import (
    NAMESPACE_NAME_LABEL,
    ContainerPort,
    Direction,
    IPAddress,
    IPBlock,
    Namespace,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    PodPhase,
    PolicyPort,
    PolicyRule,
    Protocol,
    SelectorPeer,
)
from agent.model.reader import ReadResult, expand_documents
from agent.model.selectors import LabelSelector, Operator, Requirement


class InvalidObject(ValueError):
    """An object the agent cannot use at all (no name, wrong shape)."""


class FieldError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# The API's validation patterns (k8s.io/apimachinery/pkg/util/validation).
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def shown(value: Any) -> str:
    """``value`` for a message: quoted, escaped, and never longer than a line."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _wrong_type(path: str, expected: str, value: Any) -> FieldError:
    return FieldError(path, f"must be {expected}, got {_type_name(value)} {shown(value)}")


def as_dict(obj: Any) -> Mapping[str, Any]:
    """The API JSON shape of ``obj``: a dict as is, a client model serialized."""
    if isinstance(obj, Mapping):
        return obj
    if hasattr(obj, "to_dict") and hasattr(obj, "openapi_types"):
        from kubernetes.client import ApiClient  # lazy: file mode never needs it

        serialized = ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        if isinstance(serialized, Mapping):
            return serialized
    raise InvalidObject(f"not a Kubernetes object: {_type_name(obj)} {shown(obj)}")


_T = TypeVar("_T")


def _checked(kind: str, parse: Callable[[Mapping[str, Any]], _T], obj: Any) -> _T:
    """Run ``parse``; a field error makes the object invalid, named by kind and key."""
    raw = as_dict(obj)
    try:
        return parse(raw)
    except FieldError as error:
        raise InvalidObject(f"{kind} {_key_for_message(raw)}: {error}") from None
    except InvalidObject:
        raise
    except (AttributeError, TypeError, ValueError) as error:  # a shape no check foresaw
        raise InvalidObject(
            f"{kind} {_key_for_message(raw)}: malformed object ({type(error).__name__})"
        ) from None


def _key_for_message(raw: Mapping[str, Any]) -> str:
    metadata = raw.get("metadata")
    if not isinstance(metadata, Mapping):
        return "(unnamed)"
    name, namespace = metadata.get("name"), metadata.get("namespace")
    name_text = name if isinstance(name, str) and _DNS_SUBDOMAIN.match(name) else shown(name)
    if namespace is None:
        return name_text
    namespace_text = (
        namespace
        if isinstance(namespace, str) and _DNS_LABEL.match(namespace)
        else shown(namespace)
    )
    return f"{namespace_text}/{name_text}"


def _metadata(raw: Mapping[str, Any], kind: str, namespaced: bool) -> tuple[str, str, str]:
    """(namespace, name, uid), validated as the API does; ``InvalidObject`` otherwise."""
    metadata = raw.get("metadata")
    if not isinstance(metadata, Mapping):
        raise InvalidObject(
            f"{kind} (unnamed): metadata: must be an object, got {_type_name(metadata)} "
            f"{shown(metadata)}"
        )
    name = metadata.get("name")
    if name is None or name == "":
        raise InvalidObject(f"{kind} without metadata.name")
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise InvalidObject(
            f"{kind} {shown(name)}: metadata.name: not a valid name (lowercase letters, "
            "digits, '-' and '.', at most 253 characters)"
        )
    if kind == "Namespace" and (len(name) > 63 or not _DNS_LABEL.match(name)):
        raise InvalidObject(
            f"Namespace {shown(name)}: metadata.name: not a valid namespace name (lowercase "
            "letters, digits and '-', at most 63 characters)"
        )
    namespace = ""
    if namespaced:
        given = metadata.get("namespace")
        if given is None or given == "":
            namespace = "default"
        elif isinstance(given, str) and len(given) <= 63 and _DNS_LABEL.match(given):
            namespace = given
        else:
            raise InvalidObject(
                f"{kind} {shown(given)}/{name}: metadata.namespace: not a valid namespace name"
            )
    uid = metadata.get("uid")
    if uid is None:
        uid = ""
    elif not isinstance(uid, str) or not uid.isprintable():
        where = f"{namespace}/{name}" if namespaced else name
        raise InvalidObject(
            f"{kind} {where}: {_wrong_type('metadata.uid', 'a printable string', uid)}"
        )
    return namespace, name, uid


def _label_key_problem(key: Any) -> str | None:
    if not isinstance(key, str):
        return f"must be a string, got {_type_name(key)}"
    return _label_key_text_problem(key)


@functools.lru_cache(maxsize=65536)  # keys repeat across thousands of objects
def _label_key_text_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "has an invalid prefix (a DNS subdomain before '/')"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            "is not a valid label key (at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit)"
        )
    return None


def _label_value_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {_type_name(value)} {shown(value)}"
    return _label_value_text_problem(value)


@functools.lru_cache(maxsize=65536)  # values repeat across thousands of objects
def _label_value_text_problem(value: str) -> str | None:
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return (
            "is not a valid label value (empty, or at most 63 letters, digits, '-', '_' or "
            "'.', starting and ending with a letter or digit)"
        )
    return None


def _labels(raw: Any, path: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _wrong_type(path, "a map of strings", raw)
    labels: dict[str, str] = {}
    for key, value in raw.items():
        problem = _label_key_problem(key)
        if problem is not None:
            raise FieldError(f"{path}[{shown(key)}]", f"label key {problem}")
        problem = _label_value_problem(value)
        if problem is not None:
            raise FieldError(f"{path}.{key}", f"label value {problem}")
        # Interned: the same keys and values repeat across thousands of pods.
        labels[sys.intern(key)] = sys.intern(value)
    return labels


def _ip(text: Any, path: str) -> IPAddress:
    if not isinstance(text, str):
        raise _wrong_type(path, "an IP address string", text)
    # The C parser first: pod addresses are thousands of canonical texts, and
    # ipaddress parses in Python. Only a text that reads back identically is taken (no
    # leading zeros, no other spelling); anything else gets ipaddress's strict reading.
    for family, address_type in _FAST_FAMILIES:
        try:
            packed = socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
        if socket.inet_ntop(family, packed) == text:
            return address_type(packed)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise FieldError(path, f"bad IP {shown(text)}") from None


_FAST_FAMILIES: tuple[tuple[int, type[IPAddress]], ...] = (
    (socket.AF_INET, ipaddress.IPv4Address),
    (socket.AF_INET6, ipaddress.IPv6Address),
)


def _list(raw: Any, path: str) -> list[Any]:
    """A list field: absent (null) is empty; any other type is an error."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _wrong_type(path, "a list", raw)
    return raw


def _entry(raw: Any, path: str) -> Mapping[str, Any]:
    """An object in a list: null is an error here (it is no object at all)."""
    if not isinstance(raw, Mapping):
        raise _wrong_type(path, "an object", raw)
    return raw


def _mapping(raw: Any, path: str) -> Mapping[str, Any]:
    """An object field: absent (null) is empty; any other type is an error."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _wrong_type(path, "an object", raw)
    return raw


# --- Namespace ---------------------------------------------------------------------------


def parse_namespace(obj: Any) -> Namespace:
    return _checked("Namespace", _parse_namespace, obj)


def _parse_namespace(raw: Mapping[str, Any]) -> Namespace:
    _, name, _ = _metadata(raw, "Namespace", namespaced=False)
    labels = _labels(raw["metadata"].get("labels"), "metadata.labels")
    # The API server sets this immutable label; file input may lack it.
    labels.setdefault(NAMESPACE_NAME_LABEL, name)
    return Namespace(name=name, labels=labels)


_PROTOCOLS = {protocol.value: protocol for protocol in Protocol}
_PHASES = {phase.value: phase for phase in PodPhase}
_OPERATORS = {operator.value: operator for operator in Operator}
_DIRECTIONS = {direction.value: direction for direction in Direction}


def _protocol(value: Any, path: str) -> Protocol:
    if value is None:
        return Protocol.TCP
    if type(value) is str and value in _PROTOCOLS:
        return _PROTOCOLS[value]
    raise FieldError(path, f"unsupported protocol {shown(value)} (TCP, UDP or SCTP)")


# --- Pod ---------------------------------------------------------------------------------


def _port_name_ok(name: Any) -> bool:
    return isinstance(name, str) and _port_name_text_ok(name)


@functools.lru_cache(maxsize=4096)  # the same few names on thousands of pods
def _port_name_text_ok(name: str) -> bool:
    return (
        len(name) <= 15
        and bool(_PORT_NAME.match(name))
        and "--" not in name
        and any(c.isalpha() for c in name)
    )


def _container_ports(spec: Mapping[str, Any], problems: list[str]) -> tuple[ContainerPort, ...]:
    """Every readable container port. A port that cannot be read is reported and left
    out: a named port then resolves to nothing on this pod, which allows less."""
    ports: list[ContainerPort] = []
    # Restartable init containers (sidecars) serve ports too.
    for section in ("containers", "initContainers"):
        try:
            containers = _list(spec.get(section), f"spec.{section}")
        except FieldError as error:
            problems.append(f"{error}; its container ports are ignored")
            continue
        for c, container in enumerate(containers):
            where = f"spec.{section}[{c}]"
            try:
                entries = _list(_entry(container, where).get("ports"), f"{where}.ports")
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
    port = _entry(raw, path)
    number = _port_number(port.get("containerPort"), f"{path}.containerPort")
    protocol = _protocol(port.get("protocol"), f"{path}.protocol")
    name = port.get("name")
    if name is None or name == "":
        return ContainerPort(number, protocol, None)
    if not _port_name_ok(name):
        raise FieldError(f"{path}.name", f"{shown(name)} is not a valid port name")
    return ContainerPort(number, protocol, sys.intern(name))


def _pod_ips(status: Mapping[str, Any], problems: list[str]) -> tuple[IPAddress, ...]:
    """The pod's addresses: every good entry of podIPs (podIP if there is none). A bad
    entry is reported and left out; the good ones are kept."""
    ips: list[IPAddress] = []
    good_texts: set[str] = set()
    problems_before = len(problems)
    try:
        entries = _list(status.get("podIPs"), "status.podIPs")
    except FieldError as error:
        problems.append(str(error))
        entries = []
    for i, entry in enumerate(entries):
        try:
            address = _ip(_entry(entry, f"status.podIPs[{i}]").get("ip"), f"status.podIPs[{i}].ip")
        except FieldError as error:
            problems.append(f"{error}; that address is ignored")
            continue
        good_texts.add(entry["ip"])
        if address not in ips:
            ips.append(address)
    primary = status.get("podIP")
    if primary is not None and not (isinstance(primary, str) and primary in good_texts | {""}):
        try:
            address = _ip(primary, "status.podIP")
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
    return _checked("Pod", _parse_pod, obj)


def _parse_pod(raw: Mapping[str, Any]) -> Pod:
    namespace, name, uid = _metadata(raw, "Pod", namespaced=True)
    labels = _labels(raw["metadata"].get("labels"), "metadata.labels")
    spec = _mapping(raw.get("spec"), "spec")
    status = _mapping(raw.get("status"), "status")
    problems: list[str] = []
    node_name = spec.get("nodeName")
    if node_name == "":
        node_name = None
    if node_name is not None and (
        not isinstance(node_name, str)
        or len(node_name) > 253
        or not _DNS_SUBDOMAIN.match(node_name)
    ):
        raise FieldError("spec.nodeName", f"not a valid node name: {shown(node_name)}")
    host_network = spec.get("hostNetwork")
    if host_network is None:
        host_network = False
    elif not isinstance(host_network, bool):
        # Read as false: the pod keeps its rules (dropping them would open it).
        problems.append(
            f"{_wrong_type('spec.hostNetwork', 'true or false', host_network)}; read as false"
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
        problems=tuple(f"Pod {namespace}/{name}: {p}" for p in problems),
    )


# --- Node --------------------------------------------------------------------------------

# Address types that name a host rather than give an address.
_HOSTNAME_TYPES = frozenset({"Hostname", "InternalDNS", "ExternalDNS"})
_ADDRESS_TYPES = frozenset({"InternalIP", "ExternalIP"})


def parse_node(obj: Any) -> Node:
    return _checked("Node", _parse_node, obj)


def _parse_node(raw: Mapping[str, Any]) -> Node:
    _, name, _ = _metadata(raw, "Node", namespaced=False)
    problems: list[str] = []
    addresses: list[IPAddress] = []
    try:
        entries = _list(_mapping(raw.get("status"), "status").get("addresses"), "status.addresses")
    except FieldError as error:
        problems.append(str(error))
        entries = []
    for i, entry in enumerate(entries):
        path = f"status.addresses[{i}]"
        try:
            fields = _entry(entry, path)
            address_type = fields.get("type")
            if address_type in _HOSTNAME_TYPES:
                continue
            if address_type not in _ADDRESS_TYPES:
                raise FieldError(
                    f"{path}.type",
                    f"unknown address type {shown(address_type)} (InternalIP, ExternalIP, ...)",
                )
            address = _ip(fields.get("address"), f"{path}.address")
        except FieldError as error:
            problems.append(f"{error}; that address is ignored")
            continue
        if address not in addresses:
            addresses.append(address)
    return Node(
        name=name,
        addresses=tuple(addresses),
        problems=tuple(f"Node {name}: {p}" for p in problems),
    )


# --- NetworkPolicy -----------------------------------------------------------------


def parse_selector(raw: Any, path: str) -> LabelSelector:
    if raw is None:
        return LabelSelector()
    if not isinstance(raw, Mapping):
        raise _wrong_type(path, "a label selector object", raw)
    requirements: list[Requirement] = []
    match_labels = raw.get("matchLabels")
    if match_labels is not None and not isinstance(match_labels, Mapping):
        raise _wrong_type(f"{path}.matchLabels", "a map of strings", match_labels)
    for key, value in (match_labels or {}).items():
        problem = _label_key_problem(key)
        if problem is not None:
            raise FieldError(f"{path}.matchLabels[{shown(key)}]", f"label key {problem}")
        problem = _label_value_problem(value)
        if problem is not None:
            raise FieldError(f"{path}.matchLabels.{key}", f"label value {problem}")
        requirements.append(Requirement(sys.intern(key), Operator.IN, frozenset({value})))
    expressions = _list(raw.get("matchExpressions"), f"{path}.matchExpressions")
    for i, expression in enumerate(expressions):
        requirements.append(_requirement(expression, f"{path}.matchExpressions[{i}]"))
    return LabelSelector(tuple(requirements))


def _requirement(expression: Any, where: str) -> Requirement:
    if not isinstance(expression, Mapping):
        raise _wrong_type(where, "an object", expression)
    key = expression.get("key")
    if key is None or key == "":
        raise FieldError(f"{where}.key", "is required")
    problem = _label_key_problem(key)
    if problem is not None:
        raise FieldError(f"{where}.key", f"label key {problem}")
    raw_operator = expression.get("operator")
    operator = _OPERATORS.get(raw_operator) if type(raw_operator) is str else None
    if operator is None:
        raise FieldError(
            f"{where}.operator",
            f"unknown operator {shown(raw_operator)} (In, NotIn, Exists, DoesNotExist)",
        )
    values = _list(expression.get("values"), f"{where}.values")
    for v, value in enumerate(values):
        problem = _label_value_problem(value)
        if problem is not None:
            raise FieldError(f"{where}.values[{v}]", f"label value {problem}")
    if operator in (Operator.IN, Operator.NOT_IN) and not values:
        raise FieldError(f"{where}.values", f"must be non-empty for {operator.value}")
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
        raise FieldError(f"{where}.values", f"must be empty for {operator.value}")
    return Requirement(sys.intern(key), operator, frozenset(values))


def _network(text: Any, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(text, str):
        raise _wrong_type(path, "a CIDR string", text)
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise FieldError(path, f"invalid CIDR {shown(text)}") from None


def _ip_block(raw: Any, path: str) -> IPBlock:
    if not isinstance(raw, Mapping):
        raise _wrong_type(path, "an object", raw)
    cidr = _network(raw.get("cidr"), f"{path}.cidr")
    excepts = []
    for i, text in enumerate(_list(raw.get("except"), f"{path}.except")):
        where = f"{path}.except[{i}]"
        excluded = _network(text, where)
        if (
            excluded.version != cidr.version
            or not excluded.subnet_of(cidr)  # type: ignore[arg-type]
            or excluded.prefixlen <= cidr.prefixlen
        ):
            raise FieldError(where, f"{shown(text)} must be a strict subset of cidr {cidr}")
        excepts.append(excluded)
    return IPBlock(cidr=cidr, excepts=tuple(sorted(set(excepts), key=_network_sort_key)))


def _network_sort_key(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> tuple[int, int, int]:
    return (network.version, int(network.network_address), network.prefixlen)


def _peer(raw: Any, path: str) -> Peer:
    if not isinstance(raw, Mapping):
        raise _wrong_type(path, "an object", raw)
    has_block = raw.get("ipBlock") is not None
    has_pods = raw.get("podSelector") is not None
    has_namespaces = raw.get("namespaceSelector") is not None
    if has_block:
        if has_pods or has_namespaces:
            raise FieldError(path, "ipBlock cannot be combined with a selector")
        return _ip_block(raw["ipBlock"], f"{path}.ipBlock")
    if not has_pods and not has_namespaces:
        raise FieldError(path, "must specify podSelector, namespaceSelector or ipBlock")
    return SelectorPeer(
        namespace_selector=(
            parse_selector(raw["namespaceSelector"], f"{path}.namespaceSelector")
            if has_namespaces
            else None
        ),
        pod_selector=(
            parse_selector(raw["podSelector"], f"{path}.podSelector") if has_pods else None
        ),
    )


def _port_number(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(path, "an integer", value)
    if not 1 <= value <= 65535:
        raise FieldError(path, f"{value} is out of range 1-65535")
    return value


def _policy_port(raw: Any, path: str) -> PolicyPort:
    if not isinstance(raw, Mapping):
        raise _wrong_type(path, "an object", raw)
    protocol = _protocol(raw.get("protocol"), f"{path}.protocol")
    port = raw.get("port")
    end_port = raw.get("endPort")
    if port is None:
        if end_port is not None:
            raise FieldError(f"{path}.endPort", "requires port")
        return PolicyPort(protocol)
    if isinstance(port, str):
        if not _port_name_ok(port):
            raise FieldError(
                f"{path}.port", f"{shown(port)} is neither a port number nor a valid port name"
            )
        if end_port is not None:
            raise FieldError(f"{path}.endPort", "cannot be used with a named port")
        return PolicyPort(protocol, sys.intern(port))
    number = _port_number(port, f"{path}.port")
    if end_port is None:
        return PolicyPort(protocol, number)
    last = _port_number(end_port, f"{path}.endPort")
    if last < number:
        raise FieldError(f"{path}.endPort", f"{last} is less than port {number}")
    return PolicyPort(protocol, number, last)


def _rule(raw: Any, index: int, direction: Direction, path: str) -> PolicyRule:
    if not isinstance(raw, Mapping):
        raise _wrong_type(path, "an object", raw)
    peers_field = "from" if direction is Direction.INGRESS else "to"
    # Absent and [] mean the same: every peer, every port. Any other type is an error
    # (the rule is dropped), never "absent".
    raw_peers = _list(raw.get(peers_field), f"{path}.{peers_field}")
    raw_ports = _list(raw.get("ports"), f"{path}.ports")
    peers = (
        tuple(_peer(p, f"{path}.{peers_field}[{i}]") for i, p in enumerate(raw_peers))
        if raw_peers
        else None
    )
    ports = (
        tuple(_policy_port(p, f"{path}.ports[{i}]") for i, p in enumerate(raw_ports))
        if raw_ports
        else None
    )
    return PolicyRule(peers=peers, ports=ports, index=index)


def _rules(
    raw: Any, direction: Direction, path: str, problems: list[str]
) -> tuple[PolicyRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(f"{_wrong_type(path, 'a list', raw)}; no rule of it allows anything")
        return ()
    rules: list[PolicyRule] = []
    for index, raw_rule in enumerate(raw):
        try:
            rules.append(_rule(raw_rule, index, direction, f"{path}[{index}]"))
        except FieldError as error:
            # Dropping the whole rule narrows what is allowed; dropping one bad entry
            # of its ports or peers could turn "these ports" into "all ports".
            problems.append(f"{error}; rule {path}[{index}] ignored")
    return tuple(rules)


def _policy_types(spec: Mapping[str, Any], problems: list[str]) -> frozenset[Direction]:
    raw = spec.get("policyTypes")
    if raw is None or raw == []:
        types = {Direction.INGRESS}
        egress = spec.get("egress")
        # Egress rules, or an egress section of the wrong type: isolate egress too.
        if egress is not None and egress != []:
            types.add(Direction.EGRESS)
        return frozenset(types)
    if not isinstance(raw, list):
        problems.append(
            f"{_wrong_type('spec.policyTypes', 'a list', raw)}; isolating both directions"
        )
        return frozenset(Direction)
    types = set()
    for i, value in enumerate(raw):
        direction = _DIRECTIONS.get(value) if type(value) is str else None
        if direction is None:
            problems.append(
                f"spec.policyTypes[{i}]: unknown policy type {shown(value)} (Ingress or "
                "Egress); isolating both directions"
            )
            return frozenset(Direction)
        types.add(direction)
    return frozenset(types)


def parse_network_policy(obj: Any) -> NetworkPolicy:
    """Parse a NetworkPolicy; validation problems are recorded on the result.

    Problems are prefixed with ``namespace/name``. Only a policy without a readable
    identity raises ``InvalidObject``.
    """
    raw = as_dict(obj)
    namespace, name, _ = _metadata(raw, "NetworkPolicy", namespaced=True)
    try:
        return _parse_policy_spec(raw, namespace, name)
    except (AttributeError, TypeError, ValueError) as error:  # a shape no check foresaw
        return _isolating(
            namespace,
            name,
            [f"spec: malformed ({type(error).__name__}); isolating every pod of namespace "
             f"{namespace} in both directions, allowing nothing through this policy "
             "(fail closed)"],
        )  # fmt: skip


def _isolating(namespace: str, name: str, problems: list[str]) -> NetworkPolicy:
    """A policy that isolates its whole namespace both ways and allows nothing."""
    return NetworkPolicy(
        namespace=namespace,
        name=name,
        pod_selector=None,
        policy_types=frozenset(Direction),
        problems=tuple(f"NetworkPolicy {namespace}/{name}: {p}" for p in problems),
    )


def _parse_policy_spec(raw: Mapping[str, Any], namespace: str, name: str) -> NetworkPolicy:
    problems: list[str] = []
    spec = raw.get("spec")
    pod_selector: LabelSelector | None = None
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        problems.append(f"{_wrong_type('spec', 'an object', spec)}")
    else:
        try:
            pod_selector = parse_selector(spec.get("podSelector"), "spec.podSelector")
        except FieldError as error:
            problems.append(str(error))
    if pod_selector is None:
        # Nobody can tell which pods this policy meant, nor what it allows them.
        problems[-1] += (
            f"; isolating every pod of namespace {namespace} in both directions, "
            "allowing nothing through this policy (fail closed)"
        )
        return _isolating(namespace, name, problems)
    policy_types = _policy_types(spec, problems)
    ingress = _rules(spec.get("ingress"), Direction.INGRESS, "spec.ingress", problems)
    egress = _rules(spec.get("egress"), Direction.EGRESS, "spec.egress", problems)
    return NetworkPolicy(
        namespace=namespace,
        name=name,
        pod_selector=pod_selector,
        policy_types=policy_types,
        ingress=ingress if Direction.INGRESS in policy_types else (),
        egress=egress if Direction.EGRESS in policy_types else (),
        problems=tuple(f"NetworkPolicy {namespace}/{name}: {p}" for p in problems),
    )


# --- many objects ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedObjects:
    namespaces: tuple[Namespace, ...]
    pods: tuple[Pod, ...]
    policies: tuple[NetworkPolicy, ...]
    nodes: tuple[Node, ...]
    problems: tuple[str, ...]


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
    for raw, where in zip(expanded.objects, expanded.origins, strict=True):
        kind = raw["kind"]
        try:
            if kind == "Namespace":
                namespaces.append(parse_namespace(raw))
            elif kind == "Pod":
                pod = parse_pod(raw)
                pods.append(pod)
                problems.extend(pod.problems)
            elif kind == "NetworkPolicy":
                policy = parse_network_policy(raw)
                policies.append(policy)
                problems.extend(policy.problems)
            else:
                node = parse_node(raw)
                nodes.append(node)
                problems.extend(node.problems)
        except InvalidObject as error:
            problems.append(f"{where}: {error}; skipped")
    return ParsedObjects(
        tuple(namespaces), tuple(pods), tuple(policies), tuple(nodes), tuple(problems)
    )
