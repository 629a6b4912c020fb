"""ClusterNetworkPolicy objects (``policy.networking.k8s.io``, v1alpha2 and v1beta1).

Read as strictly as the experimental CRD validates them (it keeps ``nodes``,
``destinationNamedPort`` and ``domainNames``): a field of the wrong type, out of range,
or unknown (the API server prunes or rejects those) is an error naming the policy and
the field path. Where the API would have rejected the object, the agent fails closed at
the level of the error:

- A rule that cannot be read whole (unknown action, a peer with no known field or an
  unsupported one such as ``domainNames``, a bad port, a bad CIDR, an empty or too long
  ``from``/``to``, a named port with ``networks``/``nodes`` peers) becomes a Deny of all
  traffic at its place (``ClusterRule(DENY, None, None, index, name)``). This is stricter
  than the API asks of an Accept rule: the pods it applies to stay isolated.
- A direction that cannot be read (not a list, more than 25 rules) becomes one such rule.
- An unreadable spec, tier, priority or subject (or an apiVersion of another version)
  makes the whole policy: tier Admin, priority as read (else 0), subject as read (else
  every pod), and a single Deny of all traffic in each direction.
- A rule ``name`` that cannot be read is reported and left out; it decides nothing.

Only a policy without a readable identity raises ``InvalidObject``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from agent.model.fields import (
    FieldError,
    as_dict,
    identity,
    is_port_name,
    only_known,
    parse_masked_cidr,
    port_number,
    shown,
    unknown_field,
    wrong_type,
)
from agent.model.objects import (
    ClusterNetworkPolicy,
    ClusterPeer,
    ClusterRule,
    Direction,
    IPBlock,
    NodePeer,
    PolicyPort,
    Protocol,
    RuleAction,
    SelectorPeer,
    Tier,
)
from agent.model.parse_policy import parse_selector

KIND = "ClusterNetworkPolicy"
GROUP = "policy.networking.k8s.io"
# The versions of the CRD in network-policy-api v0.3.0 (their schemas are the same).
API_VERSIONS = (f"{GROUP}/v1alpha2", f"{GROUP}/v1beta1")

MAX_PRIORITY = 1000
MAX_RULES = 25  # per direction
MAX_ITEMS = 25  # peers per rule, protocols per rule, networks per peer
MAX_RULE_NAME = 100

_TIERS = {tier.value: tier for tier in Tier}
_ACTIONS = {action.value: action for action in RuleAction}
_PROTOCOL_FIELDS = {"tcp": Protocol.TCP, "udp": Protocol.UDP, "sctp": Protocol.SCTP}
_NAMED_PORT = "destinationNamedPort"

_SPEC_FIELDS = ("tier", "priority", "subject", "ingress", "egress")
_SUBJECT_FIELDS = ("namespaces", "pods")
_INGRESS_PEER_FIELDS = ("namespaces", "pods")
_EGRESS_PEER_FIELDS = ("namespaces", "pods", "nodes", "networks", "domainNames")
_UNSUPPORTED_PEER_FIELDS = frozenset({"domainNames"})

_T = TypeVar("_T")

DENY_ALL = "denying all traffic both ways to"
RULE_DENIES = "denies all traffic in its place (fail closed)"


def parse_cluster_network_policy(obj: Any) -> ClusterNetworkPolicy:
    """Parse a ClusterNetworkPolicy; validation problems are recorded on the result.

    Problems read ``ClusterNetworkPolicy <name>: <field path>: ...``. Only a policy
    without a readable identity (not an object, no valid name) raises ``InvalidObject``.
    """
    raw = as_dict(obj)
    _, name, _ = identity(raw, KIND, namespaced=False)
    try:
        return _parse(raw, name)
    except FieldError as error:  # a check not caught where it stands: still fail closed
        return _denying(name, 0, None, [str(error)])
    except (AttributeError, TypeError, ValueError) as error:  # a shape no check foresaw
        return _denying(name, 0, None, [f"spec: malformed ({type(error).__name__})"])


def _parse(raw: Mapping[str, Any], name: str) -> ClusterNetworkPolicy:
    version = raw.get("apiVersion")
    if version is not None and version not in API_VERSIONS:
        # Another version's schema may mean something else by the same fields: nothing
        # of it is trusted.
        return _denying(
            name,
            0,
            None,
            [
                f"apiVersion: {shown(version)} is not a version the agent reads "
                f"({' or '.join(API_VERSIONS)})"
            ],
        )
    spec = raw.get("spec")
    if spec is None:
        return _denying(name, 0, None, ["spec: is required"])
    if not isinstance(spec, Mapping):
        return _denying(name, 0, None, [str(wrong_type("spec", "an object", spec))])
    fatal: list[str] = []
    for key in spec:
        if key not in _SPEC_FIELDS:
            fatal.append(str(unknown_field("spec", key, _SPEC_FIELDS)))
    tier = _read(fatal, _tier, spec.get("tier"), "spec.tier")
    priority = _read(fatal, _priority, spec.get("priority"), "spec.priority")
    subject = _read(fatal, _subject, spec.get("subject"), "spec.subject")
    if fatal or tier is None or priority is None or subject is None:
        return _denying(name, 0 if priority is None else priority, subject, fatal)
    problems: list[str] = []
    ingress = _rules(spec.get("ingress"), Direction.INGRESS, "spec.ingress", problems)
    egress = _rules(spec.get("egress"), Direction.EGRESS, "spec.egress", problems)
    return ClusterNetworkPolicy(
        name=name,
        tier=tier,
        priority=priority,
        subject=subject,
        ingress=ingress,
        egress=egress,
        problems=tuple(f"{KIND} {name}: {p}" for p in problems),
    )


def _read(fatal: list[str], read: Callable[[Any, str], _T], raw: Any, path: str) -> _T | None:
    """``read(raw, path)``, or None with the error added to ``fatal``."""
    try:
        return read(raw, path)
    except FieldError as error:
        fatal.append(str(error))
        return None


def _denying(
    name: str, priority: int, subject: SelectorPeer | None, problems: Sequence[str]
) -> ClusterNetworkPolicy:
    """The policy failed closed as a whole: its subjects (every pod when the subject
    could not be read) are denied all traffic both ways, before any NetworkPolicy."""
    whom = "the pods of its subject" if subject is not None else "every pod"
    return ClusterNetworkPolicy(
        name=name,
        tier=Tier.ADMIN,
        priority=priority,
        subject=subject,
        ingress=(ClusterRule(RuleAction.DENY, None, None, 0),),
        egress=(ClusterRule(RuleAction.DENY, None, None, 0),),
        problems=tuple(
            f"{KIND} {name}: {p}; the policy is read as Admin tier {DENY_ALL} {whom} (fail closed)"
            for p in problems
        ),
    )


# --- spec fields -------------------------------------------------------------------------


def _tier(raw: Any, path: str) -> Tier:
    if raw is None:
        raise FieldError(path, "is required (Admin or Baseline)")
    tier = _TIERS.get(raw) if type(raw) is str else None
    if tier is None:
        raise FieldError(path, f"unknown tier {shown(raw)} (Admin or Baseline)")
    return tier


def _priority(raw: Any, path: str) -> int:
    if raw is None:
        raise FieldError(path, f"is required (0 to {MAX_PRIORITY})")
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise wrong_type(path, "an integer", raw)
    if not 0 <= raw <= MAX_PRIORITY:
        raise FieldError(path, f"{raw} is out of range 0-{MAX_PRIORITY}")
    return raw


def _subject(raw: Any, path: str) -> SelectorPeer:
    if raw is None:
        raise FieldError(path, "is required (namespaces or pods)")
    field, value = _exactly_one(raw, path, _SUBJECT_FIELDS)
    if field == "namespaces":
        return SelectorPeer(parse_selector(value, f"{path}.namespaces"), None)
    return _namespaced_pods(value, f"{path}.pods")


def _namespaced_pods(raw: Any, path: str) -> SelectorPeer:
    """``pods``: a pod selector within the namespaces of a namespace selector (absent:
    every namespace)."""
    fields = only_known(raw, path, ("namespaceSelector", "podSelector"))
    if fields.get("podSelector") is None:
        raise FieldError(f"{path}.podSelector", "is required ({} selects every pod)")
    return SelectorPeer(
        parse_selector(fields.get("namespaceSelector"), f"{path}.namespaceSelector"),
        parse_selector(fields["podSelector"], f"{path}.podSelector"),
    )


# --- rules ---------------------------------------------------------------------------------


def _rules(
    raw: Any, direction: Direction, path: str, problems: list[str]
) -> tuple[ClusterRule, ...]:
    if raw is None or raw == []:  # no rules: the policy does not affect this direction
        return ()
    deny_direction = ClusterRule(RuleAction.DENY, None, None, 0)
    consequence = f"{direction.short} is read as one rule that denies all traffic (fail closed)"
    if not isinstance(raw, list):
        problems.append(f"{wrong_type(path, 'a list of rules', raw)}; {consequence}")
        return (deny_direction,)
    if len(raw) > MAX_RULES:
        problems.append(f"{path}: {len(raw)} rules, at most {MAX_RULES} are allowed; {consequence}")
        return (deny_direction,)
    rules: list[ClusterRule] = []
    for index, entry in enumerate(raw):
        where = f"{path}[{index}]"
        name = _rule_name(entry, where, problems)
        try:
            rules.append(_rule(entry, index, name, direction, where))
        except FieldError as error:
            problems.append(f"{error}; rule {where} {RULE_DENIES}")
            rules.append(ClusterRule(RuleAction.DENY, None, None, index, name))
    return tuple(rules)


def _rule_name(entry: Any, path: str, problems: list[str]) -> str:
    """The rule's ``name`` (for messages and explain only); a bad one is reported and
    left out, since it decides nothing."""
    if not isinstance(entry, Mapping):
        return ""
    name = entry.get("name")
    if name is None:
        return ""
    where = f"{path}.name"
    if not isinstance(name, str) or not name.isprintable():
        problems.append(f"{wrong_type(where, 'a printable string', name)}; read without a name")
        return ""
    if len(name) > MAX_RULE_NAME:
        problems.append(
            f"{where}: {len(name)} characters, at most {MAX_RULE_NAME} are allowed; read "
            "without a name"
        )
        return ""
    return name


def _rule(raw: Any, index: int, name: str, direction: Direction, path: str) -> ClusterRule:
    peers_field = "from" if direction is Direction.INGRESS else "to"
    rule = only_known(raw, path, ("name", "action", peers_field, "protocols"))
    action = _action(rule.get("action"), f"{path}.action")
    peers = _peers(rule.get(peers_field), direction, f"{path}.{peers_field}")
    ports = _protocols(rule.get("protocols"), f"{path}.protocols")
    if ports is not None and any(port.is_named for port in ports):
        # The CRD's rule: networks and nodes have no named ports to resolve.
        for i, entry in enumerate(rule[peers_field]):
            for kind in ("networks", "nodes"):
                if entry.get(kind) is not None:
                    raise FieldError(
                        f"{path}.protocols",
                        f"{_NAMED_PORT} cannot be used with a {kind} peer "
                        f"({path}.{peers_field}[{i}]): it has no named ports",
                    )
    return ClusterRule(action, peers, ports, index, name)


def _action(raw: Any, path: str) -> RuleAction:
    if raw is None:
        raise FieldError(path, "is required (Accept, Deny or Pass)")
    action = _ACTIONS.get(raw) if type(raw) is str else None
    if action is None:
        raise FieldError(path, f"unknown action {shown(raw)} (Accept, Deny or Pass)")
    return action


def _peers(raw: Any, direction: Direction, path: str) -> tuple[ClusterPeer, ...]:
    entries = _bounded_list(raw, path, "peer")
    peers: list[ClusterPeer] = []
    for i, entry in enumerate(entries):
        for peer in _peer(entry, direction, f"{path}[{i}]"):
            if peer not in peers:
                peers.append(peer)
    return tuple(peers)


def _peer(raw: Any, direction: Direction, path: str) -> tuple[ClusterPeer, ...]:
    known = _INGRESS_PEER_FIELDS if direction is Direction.INGRESS else _EGRESS_PEER_FIELDS
    if direction is Direction.INGRESS and isinstance(raw, Mapping):
        for key in raw:
            if key in _EGRESS_PEER_FIELDS and key not in known:
                raise FieldError(f"{path}.{key}", "is an egress peer; not allowed in ingress")
    field, value = _exactly_one(raw, path, known)
    where = f"{path}.{field}"
    if field in _UNSUPPORTED_PEER_FIELDS:
        raise FieldError(where, "domain name peers are not supported by this agent")
    if field == "namespaces":
        return (SelectorPeer(parse_selector(value, where), None),)
    if field == "pods":
        return (_namespaced_pods(value, where),)
    if field == "nodes":
        return (NodePeer(parse_selector(value, where)),)
    return _networks(value, where)


def _networks(raw: Any, path: str) -> tuple[IPBlock, ...]:
    entries = _bounded_list(raw, path, "CIDR")
    blocks: list[IPBlock] = []
    written: set[str] = set()
    for i, text in enumerate(entries):
        network = parse_masked_cidr(text, f"{path}[{i}]")
        if text in written:  # a list of type set: the API rejects a repeated entry
            raise FieldError(f"{path}[{i}]", f"{shown(text)} is given twice")
        written.add(text)
        block = IPBlock(network)
        if block not in blocks:
            blocks.append(block)
    return tuple(blocks)


def _protocols(raw: Any, path: str) -> tuple[PolicyPort, ...] | None:
    """None (absent): all traffic, any protocol. Otherwise at least one entry."""
    if raw is None:
        return None
    entries = _bounded_list(raw, path, "protocol")
    ports: list[PolicyPort] = []
    for i, entry in enumerate(entries):
        where = f"{path}[{i}]"
        field, value = _exactly_one(entry, where, (*_PROTOCOL_FIELDS, _NAMED_PORT))
        if field == _NAMED_PORT:
            if not is_port_name(value):
                raise FieldError(f"{where}.{field}", f"{shown(value)} is not a valid port name")
            # A pod serves a name under one protocol: one named port per protocol.
            found = [PolicyPort(protocol, sys.intern(value)) for protocol in Protocol]
        else:
            found = [_destination_port(value, _PROTOCOL_FIELDS[field], f"{where}.{field}")]
        ports.extend(port for port in found if port not in ports)
    return tuple(ports)


def _destination_port(raw: Any, protocol: Protocol, path: str) -> PolicyPort:
    fields = only_known(raw, path, ("destinationPort",))
    if fields.get("destinationPort") is None:
        raise FieldError(
            f"{path}.destinationPort",
            "is required (for every port of any protocol, leave protocols out)",
        )
    where = f"{path}.destinationPort"
    field, value = _exactly_one(fields["destinationPort"], where, ("number", "range"))
    if field == "number":
        return PolicyPort(protocol, port_number(value, f"{where}.number"))
    where = f"{where}.range"
    port_range = only_known(value, where, ("start", "end"))
    for bound in ("start", "end"):
        if port_range.get(bound) is None:
            raise FieldError(f"{where}.{bound}", "is required")
    start = port_number(port_range["start"], f"{where}.start")
    end = port_number(port_range["end"], f"{where}.end")
    if start >= end:
        raise FieldError(where, f"start {start} must be less than end {end}")
    return PolicyPort(protocol, start, end)


# --- shapes --------------------------------------------------------------------------------


def _exactly_one(raw: Any, path: str, known: Sequence[str]) -> tuple[str, Any]:
    """The one field of ``known`` set in ``raw`` (null counts as not set)."""
    fields = only_known(raw, path, known)
    present = [key for key in known if fields.get(key) is not None]
    if len(present) != 1:
        got = f"; got {', '.join(present)}" if present else ""
        raise FieldError(path, f"must set exactly one of {', '.join(known)}{got}")
    return present[0], fields[present[0]]


def _bounded_list(raw: Any, path: str, what: str) -> list[Any]:
    if raw is None:
        raise FieldError(path, f"is required (1 to {MAX_ITEMS} of {what})")
    if not isinstance(raw, list):
        raise wrong_type(path, "a list", raw)
    if not 1 <= len(raw) <= MAX_ITEMS:
        raise FieldError(path, f"{len(raw)} entries; 1 to {MAX_ITEMS} of {what} are allowed")
    return raw
