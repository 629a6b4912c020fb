"""Build model objects from Kubernetes objects as the API returns them.

Input is either a dict in the API's JSON shape (camelCase, as read from a watch or a
YAML file) or a ``kubernetes`` client model object. The API server's defaulting is
applied here too (policyTypes, protocol TCP, the namespace name label), so objects read
from a file behave exactly like objects read from the API.

Validation follows the API server's rules. A NetworkPolicy with errors is still
returned, with its problems listed: the broken rule is dropped, never widened, so the
agent fails closed for the pods the policy selects. Errors name ``namespace/name`` and
the field path.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable, Iterable, Mapping
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
from agent.model.selectors import LabelSelector, Operator, Requirement


class InvalidObject(ValueError):
    """An object the agent cannot use at all (no name, wrong shape)."""


class FieldError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def as_dict(obj: Any) -> Mapping[str, Any]:
    """The API JSON shape of ``obj``: a dict as is, a client model serialized."""
    if isinstance(obj, Mapping):
        return obj
    if hasattr(obj, "to_dict") and hasattr(obj, "openapi_types"):
        from kubernetes.client import ApiClient  # lazy: file mode never needs it

        serialized = ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        if isinstance(serialized, Mapping):
            return serialized
    raise InvalidObject(f"not a Kubernetes object: {type(obj).__name__}")


_T = TypeVar("_T")


def _shape_checked(kind: str, parse: Callable[[Mapping[str, Any]], _T], obj: Any) -> _T:
    """Run ``parse``; a field of the wrong shape makes the object invalid, not a crash."""
    raw = as_dict(obj)
    try:
        return parse(raw)
    except (AttributeError, TypeError) as error:
        metadata = raw.get("metadata")
        name = "?"
        if isinstance(metadata, Mapping):
            name = "/".join(
                str(part) for part in (metadata.get("namespace"), metadata.get("name")) if part
            )
        raise InvalidObject(f"{kind} {name}: malformed object ({error})") from None


def _metadata(raw: Mapping[str, Any], kind: str, namespaced: bool) -> tuple[str, str, str]:
    metadata = raw.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidObject(f"{kind} without metadata.name")
    namespace = metadata.get("namespace") or ("default" if namespaced else "")
    if not isinstance(namespace, str):
        raise InvalidObject(f"{kind} {name}: metadata.namespace is not a string")
    uid = metadata.get("uid") or ""
    return namespace, name, str(uid)


def _labels(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidObject(f"{where}: labels must be a map")
    # Interned: the same keys and values repeat across thousands of pods.
    return {sys.intern(str(k)): sys.intern(str(v)) for k, v in raw.items()}


def _ip(text: Any) -> IPAddress:
    return ipaddress.ip_address(str(text))


def parse_namespace(obj: Any) -> Namespace:
    return _shape_checked("Namespace", _parse_namespace, obj)


def _parse_namespace(raw: Mapping[str, Any]) -> Namespace:
    _, name, _ = _metadata(raw, "Namespace", namespaced=False)
    labels = _labels((raw.get("metadata") or {}).get("labels"), f"Namespace {name}")
    # The API server sets this immutable label; file input may lack it.
    labels.setdefault(NAMESPACE_NAME_LABEL, name)
    return Namespace(name=name, labels=labels)


def _protocol(value: Any, path: str) -> Protocol:
    if value is None:
        return Protocol.TCP
    try:
        return Protocol(value)
    except ValueError:
        raise FieldError(path, f"unsupported protocol {value!r} (TCP, UDP or SCTP)") from None


def _container_ports(spec: Mapping[str, Any]) -> tuple[ContainerPort, ...]:
    ports: list[ContainerPort] = []
    # Restartable init containers (sidecars) serve ports too.
    for section in ("containers", "initContainers"):
        for container in spec.get(section) or ():
            for port in container.get("ports") or ():
                number = port.get("containerPort")
                if not isinstance(number, int) or not 1 <= number <= 65535:
                    continue
                try:
                    protocol = _protocol(port.get("protocol"), "ports.protocol")
                except FieldError:
                    continue
                name = port.get("name")
                ports.append(ContainerPort(number, protocol, sys.intern(name) if name else None))
    return tuple(ports)


def parse_pod(obj: Any) -> Pod:
    return _shape_checked("Pod", _parse_pod, obj)


def _parse_pod(raw: Mapping[str, Any]) -> Pod:
    namespace, name, uid = _metadata(raw, "Pod", namespaced=True)
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    labels = _labels((raw.get("metadata") or {}).get("labels"), f"Pod {namespace}/{name}")
    try:
        phase = PodPhase(status.get("phase") or "Pending")
    except ValueError:
        phase = PodPhase.UNKNOWN
    texts: list[Any] = [entry.get("ip") for entry in status.get("podIPs") or ()]
    if not texts and status.get("podIP"):
        texts = [status["podIP"]]
    ips: list[IPAddress] = []
    for text in texts:
        try:
            address = _ip(text)
        except ValueError:
            raise InvalidObject(f"Pod {namespace}/{name}: status.podIPs: bad IP {text!r}") from None
        if address not in ips:
            ips.append(address)
    node_name = spec.get("nodeName")
    return Pod(
        namespace=sys.intern(namespace),
        name=name,
        labels=labels,
        node_name=sys.intern(node_name) if node_name else None,
        host_network=bool(spec.get("hostNetwork")),
        phase=phase,
        ips=tuple(ips),
        ports=_container_ports(spec),
        uid=uid,
    )


def parse_node(obj: Any) -> Node:
    return _shape_checked("Node", _parse_node, obj)


def _parse_node(raw: Mapping[str, Any]) -> Node:
    _, name, _ = _metadata(raw, "Node", namespaced=False)
    addresses: list[IPAddress] = []
    for entry in (raw.get("status") or {}).get("addresses") or ():
        try:
            address = _ip(entry.get("address"))
        except ValueError:
            continue  # Hostname and friends
        if address not in addresses:
            addresses.append(address)
    return Node(name=name, addresses=tuple(addresses))


# --- NetworkPolicy -----------------------------------------------------------------


def parse_selector(raw: Any, path: str) -> LabelSelector:
    if raw is None:
        return LabelSelector()
    if not isinstance(raw, Mapping):
        raise FieldError(path, "must be a label selector")
    requirements: list[Requirement] = []
    match_labels = raw.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise FieldError(f"{path}.matchLabels", "must be a map")
    for key, value in match_labels.items():
        if not isinstance(value, str | int | bool) or value is None:
            raise FieldError(f"{path}.matchLabels.{key}", "value must be a string")
        requirements.append(Requirement(str(key), Operator.IN, frozenset({str(value)})))
    for i, expression in enumerate(raw.get("matchExpressions") or ()):
        where = f"{path}.matchExpressions[{i}]"
        if not isinstance(expression, Mapping):
            raise FieldError(where, "must be an object")
        key = expression.get("key")
        if not isinstance(key, str) or not key:
            raise FieldError(f"{where}.key", "is required")
        try:
            operator = Operator(expression.get("operator"))
        except ValueError:
            raise FieldError(
                f"{where}.operator",
                f"unknown operator {expression.get('operator')!r} "
                "(In, NotIn, Exists, DoesNotExist)",
            ) from None
        values = expression.get("values") or []
        if operator in (Operator.IN, Operator.NOT_IN) and not values:
            raise FieldError(f"{where}.values", f"must be non-empty for {operator.value}")
        if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
            raise FieldError(f"{where}.values", f"must be empty for {operator.value}")
        requirements.append(Requirement(key, operator, frozenset(str(v) for v in values)))
    return LabelSelector(tuple(requirements))


def _network(text: Any, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(text, str):
        raise FieldError(path, "must be a CIDR string")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise FieldError(path, f"invalid CIDR {text!r}") from None


def _ip_block(raw: Any, path: str) -> IPBlock:
    if not isinstance(raw, Mapping):
        raise FieldError(path, "must be an object")
    cidr = _network(raw.get("cidr"), f"{path}.cidr")
    excepts = []
    for i, text in enumerate(raw.get("except") or ()):
        where = f"{path}.except[{i}]"
        excluded = _network(text, where)
        if (
            excluded.version != cidr.version
            or not excluded.subnet_of(cidr)  # type: ignore[arg-type]
            or excluded.prefixlen <= cidr.prefixlen
        ):
            raise FieldError(where, f"{text!r} must be a strict subset of cidr {cidr}")
        excepts.append(excluded)
    return IPBlock(cidr=cidr, excepts=tuple(sorted(set(excepts), key=_network_sort_key)))


def _network_sort_key(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> tuple[int, int, int]:
    return (network.version, int(network.network_address), network.prefixlen)


def _peer(raw: Any, path: str) -> Peer:
    if not isinstance(raw, Mapping):
        raise FieldError(path, "must be an object")
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
        raise FieldError(path, f"must be an integer, got {value!r}")
    if not 1 <= value <= 65535:
        raise FieldError(path, f"{value} is out of range 1-65535")
    return value


def _policy_port(raw: Any, path: str) -> PolicyPort:
    if not isinstance(raw, Mapping):
        raise FieldError(path, "must be an object")
    protocol = _protocol(raw.get("protocol"), f"{path}.protocol")
    port = raw.get("port")
    end_port = raw.get("endPort")
    if port is None:
        if end_port is not None:
            raise FieldError(f"{path}.endPort", "requires port")
        return PolicyPort(protocol)
    if isinstance(port, str):
        if not (
            len(port) <= 15
            and _PORT_NAME.match(port)
            and "--" not in port
            and any(c.isalpha() for c in port)
        ):
            raise FieldError(
                f"{path}.port", f"{port!r} is neither a port number nor a valid port name"
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
        raise FieldError(path, "must be an object")
    peers_field = "from" if direction is Direction.INGRESS else "to"
    raw_peers = raw.get(peers_field)
    raw_ports = raw.get("ports")
    # Missing and [] mean the same: every peer, every port.
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
        problems.append(f"{path}: must be a list")
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
    if raw and not isinstance(raw, list):
        problems.append("spec.policyTypes: must be a list; isolating both directions")
        return frozenset(Direction)
    if not raw:
        types = {Direction.INGRESS}
        if spec.get("egress"):
            types.add(Direction.EGRESS)
        return frozenset(types)
    types = set()
    for i, value in enumerate(raw):
        try:
            types.add(Direction(value))
        except ValueError:
            problems.append(
                f"spec.policyTypes[{i}]: unknown policy type {value!r} (Ingress or Egress); "
                "isolating both directions"
            )
            return frozenset(Direction)
    return frozenset(types)


def parse_network_policy(obj: Any) -> NetworkPolicy:
    """Parse a NetworkPolicy; validation problems are recorded on the result.

    Problems are prefixed with ``namespace/name``. A broken podSelector makes the
    policy select its whole namespace; broken rules are dropped.
    """
    raw = as_dict(obj)
    namespace, name, _ = _metadata(raw, "NetworkPolicy", namespaced=True)
    spec = raw.get("spec") or {}
    problems: list[str] = []
    pod_selector: LabelSelector | None
    try:
        pod_selector = parse_selector(spec.get("podSelector"), "spec.podSelector")
    except FieldError as error:
        problems.append(f"{error}; selecting every pod of namespace {namespace} (fail closed)")
        pod_selector = None
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


def kind_of(obj: Any) -> str:
    raw = as_dict(obj)
    return str(raw.get("kind") or "")


def flatten_lists(
    objects: Iterable[Any], problems: list[str] | None = None
) -> Iterable[Mapping[str, Any]]:
    """Expand ``kind: List`` / ``*List`` documents into their items.

    With ``problems`` given, what is not an object is reported there and skipped;
    without, it raises ``InvalidObject``.
    """
    for obj in objects:
        if obj is None:
            continue
        try:
            raw = as_dict(obj)
        except InvalidObject as error:
            if problems is None:
                raise
            problems.append(f"{error}; skipped")
            continue
        if str(raw.get("kind", "")).endswith("List") and isinstance(raw.get("items"), list):
            yield from flatten_lists(raw["items"], problems)
        else:
            yield raw
