"""NetworkPolicy objects: selectors, peers, ports, rules, policyTypes defaulting.

A policy is kept with its problems listed; what a problem does is chosen to fail closed
(see :mod:`agent.model.parse`).
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Mapping
from typing import Any

from agent.model.fields import (
    FieldError,
    as_dict,
    as_list,
    identity,
    is_port_name,
    label_key_problem,
    label_value_problem,
    only_known,
    parse_cidr,
    parse_protocol,
    port_number,
    shown,
    wrong_type,
)
from agent.model.objects import (
    Direction,
    IPBlock,
    NetworkPolicy,
    Peer,
    PolicyPort,
    PolicyRule,
    SelectorPeer,
)
from agent.model.selectors import LabelSelector, Operator, Requirement

_OPERATORS = {operator.value: operator for operator in Operator}
# A selector's fields: one misspelled (``matchLabel``) would otherwise read as ``{}``,
# which selects everything. The API server prunes it the same way, but a file is read
# here first, and a peer that selects everything fails open.
_SELECTOR_FIELDS = ("matchLabels", "matchExpressions")
_REQUIREMENT_FIELDS = ("key", "operator", "values")
_DIRECTIONS = {direction.value: direction for direction in Direction}


# --- NetworkPolicy -----------------------------------------------------------------


def parse_selector(raw: Any, path: str) -> LabelSelector:
    if raw is None:
        return LabelSelector()
    if not isinstance(raw, Mapping):
        raise wrong_type(path, "a label selector object", raw)
    only_known(raw, path, _SELECTOR_FIELDS)
    requirements: list[Requirement] = []
    match_labels = raw.get("matchLabels")
    if match_labels is not None and not isinstance(match_labels, Mapping):
        raise wrong_type(f"{path}.matchLabels", "a map of strings", match_labels)
    for key, value in (match_labels or {}).items():
        problem = label_key_problem(key)
        if problem is not None:
            raise FieldError(f"{path}.matchLabels[{shown(key)}]", f"label key {problem}")
        problem = label_value_problem(value)
        if problem is not None:
            raise FieldError(f"{path}.matchLabels.{key}", f"label value {problem}")
        requirements.append(Requirement(sys.intern(key), Operator.IN, frozenset({value})))
    expressions = as_list(raw.get("matchExpressions"), f"{path}.matchExpressions")
    for i, expression in enumerate(expressions):
        requirements.append(_requirement(expression, f"{path}.matchExpressions[{i}]"))
    return LabelSelector(tuple(requirements))


def _requirement(expression: Any, where: str) -> Requirement:
    if not isinstance(expression, Mapping):
        raise wrong_type(where, "an object", expression)
    only_known(expression, where, _REQUIREMENT_FIELDS)
    key = expression.get("key")
    if key is None or key == "":
        raise FieldError(f"{where}.key", "is required")
    problem = label_key_problem(key)
    if problem is not None:
        raise FieldError(f"{where}.key", f"label key {problem}")
    raw_operator = expression.get("operator")
    operator = _OPERATORS.get(raw_operator) if type(raw_operator) is str else None
    if operator is None:
        raise FieldError(
            f"{where}.operator",
            f"unknown operator {shown(raw_operator)} (In, NotIn, Exists, DoesNotExist)",
        )
    values = as_list(expression.get("values"), f"{where}.values")
    for v, value in enumerate(values):
        problem = label_value_problem(value)
        if problem is not None:
            raise FieldError(f"{where}.values[{v}]", f"label value {problem}")
    if operator in (Operator.IN, Operator.NOT_IN) and not values:
        raise FieldError(f"{where}.values", f"must be non-empty for {operator.value}")
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
        raise FieldError(f"{where}.values", f"must be empty for {operator.value}")
    return Requirement(sys.intern(key), operator, frozenset(values))


_network = parse_cidr


def _ip_block(raw: Any, path: str) -> IPBlock:
    if not isinstance(raw, Mapping):
        raise wrong_type(path, "an object", raw)
    cidr = _network(raw.get("cidr"), f"{path}.cidr")
    excepts = []
    for i, text in enumerate(as_list(raw.get("except"), f"{path}.except")):
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
        raise wrong_type(path, "an object", raw)
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


def _policy_port(raw: Any, path: str) -> PolicyPort:
    if not isinstance(raw, Mapping):
        raise wrong_type(path, "an object", raw)
    protocol = parse_protocol(raw.get("protocol"), f"{path}.protocol")
    port = raw.get("port")
    end_port = raw.get("endPort")
    if port is None:
        if end_port is not None:
            raise FieldError(f"{path}.endPort", "requires port")
        return PolicyPort(protocol)
    if isinstance(port, str):
        if not is_port_name(port):
            raise FieldError(
                f"{path}.port", f"{shown(port)} is neither a port number nor a valid port name"
            )
        if end_port is not None:
            raise FieldError(f"{path}.endPort", "cannot be used with a named port")
        return PolicyPort(protocol, sys.intern(port))
    number = port_number(port, f"{path}.port")
    if end_port is None:
        return PolicyPort(protocol, number)
    last = port_number(end_port, f"{path}.endPort")
    if last < number:
        raise FieldError(f"{path}.endPort", f"{last} is less than port {number}")
    return PolicyPort(protocol, number, last)


def _rule(raw: Any, index: int, direction: Direction, path: str) -> PolicyRule:
    if not isinstance(raw, Mapping):
        raise wrong_type(path, "an object", raw)
    peers_field = "from" if direction is Direction.INGRESS else "to"
    # Absent and [] mean the same: every peer, every port. Any other type is an error
    # (the rule is dropped), never "absent".
    raw_peers = as_list(raw.get(peers_field), f"{path}.{peers_field}")
    raw_ports = as_list(raw.get("ports"), f"{path}.ports")
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
        problems.append(f"{wrong_type(path, 'a list', raw)}; no rule of it allows anything")
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
            f"{wrong_type('spec.policyTypes', 'a list', raw)}; isolating both directions"
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
    namespace, name, _ = identity(raw, "NetworkPolicy", namespaced=True)
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
        problems.append(f"{wrong_type('spec', 'an object', spec)}")
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
