"""Reading single fields of Kubernetes objects strictly, as the API server validates them.

Every helper takes the raw value and the field's path, and raises ``FieldError`` (naming
the path) for a value of the wrong type or shape; absent (null) is told apart from every
wrong type, because absent often means "all". Names, label keys and values, addresses,
protocols and port numbers are checked as ``k8s.io/apimachinery`` validation does, so
nothing unprintable reaches a message or a rule.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from agent.model.objects import IPAddress, IPNetwork, Protocol


class InvalidObject(ValueError):
    """An object the agent cannot use at all (no name, wrong shape)."""


class FieldError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# The API's validation patterns (k8s.io/apimachinery/pkg/util/validation).
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def shown(value: Any) -> str:
    """``value`` for a message: quoted, escaped, and never longer than a line."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def type_name(value: Any) -> str:
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


def wrong_type(path: str, expected: str, value: Any) -> FieldError:
    return FieldError(path, f"must be {expected}, got {type_name(value)} {shown(value)}")


def unknown_field(path: str, key: Any, known: Sequence[str]) -> FieldError:
    where = (
        f"{path}.{key}" if isinstance(key, str) and key.isidentifier() else f"{path}[{shown(key)}]"
    )
    return FieldError(where, f"unknown field (known: {', '.join(known)})")


def only_known(raw: Any, path: str, known: Sequence[str]) -> Mapping[str, Any]:
    """An object with only ``known`` fields: an unknown one (a misspelling, say) may have
    meant to narrow what the object matches, so reading past it could fail open."""
    fields = as_entry(raw, path)
    for key in fields:
        if key not in known:
            raise unknown_field(path, key, known)
    return fields


def as_dict(obj: Any) -> Mapping[str, Any]:
    """The API JSON shape of ``obj``: a dict as is, a client model serialized."""
    if isinstance(obj, Mapping):
        return obj
    if hasattr(obj, "to_dict") and hasattr(obj, "openapi_types"):
        from kubernetes.client import ApiClient  # lazy: file mode never needs it

        serialized = ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        if isinstance(serialized, Mapping):
            return serialized
    raise InvalidObject(f"not a Kubernetes object: {type_name(obj)} {shown(obj)}")


_T = TypeVar("_T")


def checked(kind: str, parse: Callable[[Mapping[str, Any]], _T], obj: Any) -> _T:
    """Run ``parse``; a field error makes the object invalid, named by kind and key."""
    raw = as_dict(obj)
    try:
        return parse(raw)
    except FieldError as error:
        raise InvalidObject(f"{kind} {key_for_message(raw)}: {error}") from None
    except InvalidObject:
        raise
    except (AttributeError, TypeError, ValueError) as error:  # a shape no check foresaw
        raise InvalidObject(
            f"{kind} {key_for_message(raw)}: malformed object ({type(error).__name__})"
        ) from None


def key_for_message(raw: Mapping[str, Any]) -> str:
    metadata = raw.get("metadata")
    if not isinstance(metadata, Mapping):
        return "(unnamed)"
    name, namespace = metadata.get("name"), metadata.get("namespace")
    name_text = name if isinstance(name, str) and DNS_SUBDOMAIN.match(name) else shown(name)
    if namespace is None:
        return name_text
    namespace_text = (
        namespace if isinstance(namespace, str) and DNS_LABEL.match(namespace) else shown(namespace)
    )
    return f"{namespace_text}/{name_text}"


def identity(raw: Mapping[str, Any], kind: str, namespaced: bool) -> tuple[str, str, str]:
    """(namespace, name, uid), validated as the API does; ``InvalidObject`` otherwise."""
    metadata = raw.get("metadata")
    if not isinstance(metadata, Mapping):
        raise InvalidObject(
            f"{kind} (unnamed): metadata: must be an object, got {type_name(metadata)} "
            f"{shown(metadata)}"
        )
    name = metadata.get("name")
    if name is None or name == "":
        raise InvalidObject(f"{kind} without metadata.name")
    if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        raise InvalidObject(
            f"{kind} {shown(name)}: metadata.name: not a valid name (lowercase letters, "
            "digits, '-' and '.', at most 253 characters)"
        )
    if kind == "Namespace" and (len(name) > 63 or not DNS_LABEL.match(name)):
        raise InvalidObject(
            f"Namespace {shown(name)}: metadata.name: not a valid namespace name (lowercase "
            "letters, digits and '-', at most 63 characters)"
        )
    namespace = ""
    if namespaced:
        given = metadata.get("namespace")
        if given is None or given == "":
            namespace = "default"
        elif isinstance(given, str) and len(given) <= 63 and DNS_LABEL.match(given):
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
            f"{kind} {where}: {wrong_type('metadata.uid', 'a printable string', uid)}"
        )
    return namespace, name, uid


def label_key_problem(key: Any) -> str | None:
    if not isinstance(key, str):
        return f"must be a string, got {type_name(key)}"
    return _label_key_text_problem(key)


@functools.lru_cache(maxsize=65536)  # keys repeat across thousands of objects
def _label_key_text_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        return "has an invalid prefix (a DNS subdomain before '/')"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            "is not a valid label key (at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit)"
        )
    return None


def label_value_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {type_name(value)} {shown(value)}"
    return _label_value_text_problem(value)


@functools.lru_cache(maxsize=65536)  # values repeat across thousands of objects
def _label_value_text_problem(value: str) -> str | None:
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return (
            "is not a valid label value (empty, or at most 63 letters, digits, '-', '_' or "
            "'.', starting and ending with a letter or digit)"
        )
    return None


def parse_labels(raw: Any, path: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise wrong_type(path, "a map of strings", raw)
    labels: dict[str, str] = {}
    for key, value in raw.items():
        problem = label_key_problem(key)
        if problem is not None:
            raise FieldError(f"{path}[{shown(key)}]", f"label key {problem}")
        problem = label_value_problem(value)
        if problem is not None:
            raise FieldError(f"{path}.{key}", f"label value {problem}")
        # Interned: the same keys and values repeat across thousands of pods.
        labels[sys.intern(key)] = sys.intern(value)
    return labels


def parse_ip(text: Any, path: str) -> IPAddress:
    if not isinstance(text, str):
        raise wrong_type(path, "an IP address string", text)
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
    # ipaddress takes an IPv6 zone ("fe80::1%eth0"), which the API refuses and no rule
    # can hold.
    if "%" in text:
        raise FieldError(path, f"bad IP {shown(text)} (a zone is not allowed)")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise FieldError(path, f"bad IP {shown(text)}") from None


def parse_cidr(text: Any, path: str) -> IPNetwork:
    """A CIDR as the API server takes it: an address, ``/`` and a decimal prefix length
    (host bits may be set: the network is meant). A bare address or a netmask, which
    Python would read, is refused, as the API server refuses it."""
    if not isinstance(text, str):
        raise wrong_type(path, "a CIDR string", text)
    if "%" in text:  # as in parse_ip
        raise FieldError(path, f"invalid CIDR {shown(text)} (a zone is not allowed)")
    _, slash, length = text.partition("/")
    if not slash or not length.isascii() or not length.isdigit():
        raise FieldError(
            path, f"invalid CIDR {shown(text)} (an address, '/' and a decimal prefix length)"
        )
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise FieldError(path, f"invalid CIDR {shown(text)}") from None


# A prefix length as Go's netip.ParsePrefix reads it: decimal, no sign, no leading zero.
_PREFIX_LENGTH = re.compile(r"(0|[1-9][0-9]{0,2})\Z")
# The CRDs' limit on a CIDR's text (the longest canonical IPv6 prefix).
MAX_CIDR_TEXT = 43


def parse_masked_cidr(text: Any, path: str) -> IPNetwork:
    """A CIDR as the network-policy-api CRDs take it (``isCIDR(self) && cidr(self) ==
    cidr(self).masked()``): an address, ``/`` and a decimal prefix length, no host bits
    set (``10.0.0.0/8``, never ``10.0.0.1/8``), no zone, no netmask."""
    if not isinstance(text, str):
        raise wrong_type(path, "a CIDR string", text)
    network = parse_cidr(text, path)
    address, slash, length = text.partition("/")
    if len(text) > MAX_CIDR_TEXT or not slash or not _PREFIX_LENGTH.match(length):
        raise FieldError(
            path, f"invalid CIDR {shown(text)} (an address, '/' and a decimal prefix length)"
        )
    if ipaddress.ip_address(address) != network.network_address:
        raise FieldError(
            path, f"{shown(text)} has host bits set (the network is {network}); write the network"
        )
    return network


_FAST_FAMILIES: tuple[tuple[int, type[IPAddress]], ...] = (
    (socket.AF_INET, ipaddress.IPv4Address),
    (socket.AF_INET6, ipaddress.IPv6Address),
)


def as_list(raw: Any, path: str) -> list[Any]:
    """A list field: absent (null) is empty; any other type is an error."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise wrong_type(path, "a list", raw)
    return raw


def as_entry(raw: Any, path: str) -> Mapping[str, Any]:
    """An object in a list: null is an error here (it is no object at all)."""
    if not isinstance(raw, Mapping):
        raise wrong_type(path, "an object", raw)
    return raw


def as_mapping(raw: Any, path: str) -> Mapping[str, Any]:
    """An object field: absent (null) is empty; any other type is an error."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise wrong_type(path, "an object", raw)
    return raw


_PROTOCOLS = {protocol.value: protocol for protocol in Protocol}


def parse_protocol(value: Any, path: str) -> Protocol:
    if value is None:
        return Protocol.TCP
    if type(value) is str and value in _PROTOCOLS:
        return _PROTOCOLS[value]
    raise FieldError(path, f"unsupported protocol {shown(value)} (TCP, UDP or SCTP)")


def is_port_name(name: Any) -> bool:
    return isinstance(name, str) and _port_name_text_ok(name)


@functools.lru_cache(maxsize=4096)  # the same few names on thousands of pods
def _port_name_text_ok(name: str) -> bool:
    return (
        len(name) <= 15
        and bool(_PORT_NAME.match(name))
        and "--" not in name
        and any(c.isalpha() for c in name)
    )


def port_number(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(path, "an integer", value)
    if not 1 <= value <= 65535:
        raise FieldError(path, f"{value} is out of range 1-65535")
    return value
