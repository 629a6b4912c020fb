"""The one way cluster objects are read from a file: ``render``, ``explain`` and
``run --source-file`` all come through here.

A file holds multi-document YAML (as ``kubectl get -o yaml`` writes it, or written by
hand) or JSON (``kubectl get -o json``). Any ``*List`` document (``List``, ``PodList``,
``NetworkPolicyList``...) is expanded into its items. The result is a flat tuple of the
objects of the kinds the agent reads, plus a list of problems for the documents it had to
skip; the rest still loads.

The file as a whole is rejected (``ReadError``, naming the file and where) when it is not
UTF-8, is not valid YAML/JSON, nests deeper than ``MAX_DEPTH``, or uses YAML aliases that
expand to more than ``MAX_ALIAS_EXPANSION`` nodes or refer to themselves. An empty file
and a file of only ``---`` are valid and hold no objects.

YAML goes through libyaml (``CSafeLoader``) when PyYAML has it; the Python objects are
then built by a small iterative constructor, which is faster than PyYAML's generic one
and cannot overflow the stack.

The same ``namespace/name`` of one kind given twice is reported. Identical copies are kept
once. For differing copies the first one is kept, except for a policy: nobody can tell
which copy was meant, so a NetworkPolicy is replaced by a policy that isolates its
namespace in both directions and allows nothing, and a ClusterNetworkPolicy by one whose
spec cannot be read, which the parser turns into a Deny of all traffic both ways to every
pod (fail closed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# The kinds the agent reads. Anything else is reported and skipped.
KINDS = frozenset({"Namespace", "Pod", "NetworkPolicy", "Node", "ClusterNetworkPolicy"})

# Kubernetes objects nest about 20 levels (managedFields included); a List adds two.
MAX_DEPTH = 100
# Aliases may expand to at most this many nodes beyond the document's own (a "billion
# laughs" document expands to billions).
MAX_ALIAS_EXPANSION = 100_000

_SAFE_LOADER: type[Any] = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader
LIBYAML = _SAFE_LOADER is not yaml.SafeLoader

_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class ReadError(ValueError):
    """The file cannot be used at all; the message names the file and where."""


@dataclass(frozen=True, slots=True)
class ReadResult:
    """The objects of a file (kinds the agent reads, Lists expanded) and what was skipped."""

    objects: tuple[Mapping[str, Any], ...]
    problems: tuple[str, ...]
    # Where each object came from ("FILE: document 2 item 5"), in the order of objects.
    origins: tuple[str, ...] = ()


def read_file(path: str | os.PathLike[str]) -> ReadResult:
    """Read and expand a state file. Raises ``ReadError``."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ReadError(f"cannot read {path}: {error.strerror or error}") from None
    return read_bytes(data, str(path))


def read_bytes(data: bytes, origin: str = "<input>") -> ReadResult:
    """Parse and expand the bytes of a state file. Raises ``ReadError``."""
    return expand_documents(load_documents(data, origin), origin)


def load_documents(data: bytes, origin: str = "<input>") -> list[Any]:
    """The documents of a YAML or JSON file, as plain Python values."""
    text = _decode(data, origin)
    if origin.endswith(".json"):
        return _load_json(text, origin)
    if text.lstrip()[:1] in ("{", "["):
        # JSON (kubectl -o json) or a YAML flow collection: JSON first, it is faster and
        # its error is the useful one for a truncated JSON file.
        try:
            return _load_json(text, origin)
        except ReadError as json_error:
            try:
                return _load_yaml(text, origin)
            except ReadError:
                raise json_error from None
    return _load_yaml(text, origin)


def _decode(data: bytes, origin: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ReadError(
            f"{origin}: not UTF-8: byte offset {error.start} (line {line}): "
            f"{data[error.start : error.start + 1]!r} ({error.reason})"
        ) from None
    return text.removeprefix("\ufeff")  # a byte order mark is allowed, and meaningless


def _load_json(text: str, origin: str) -> list[Any]:
    if not text.strip():
        return []
    try:
        document = json.loads(text)
    except RecursionError:
        raise ReadError(f"{origin}: invalid JSON: nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as error:
        raise ReadError(
            f"{origin}: invalid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    _check_depth(document, origin)
    # A JSON array of objects is read like a stream of documents.
    return list(document) if isinstance(document, list) else [document]


def _check_depth(document: Any, origin: str) -> None:
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ReadError(f"{origin}: nested deeper than {MAX_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))


def loader_class(base: type[Any]) -> type[Any]:
    """``base`` (a PyYAML safe loader) with a memoized tag resolver: keys and label values
    repeat thousands of times, and resolving a plain scalar runs regular expressions."""
    resolved_first_characters = frozenset(
        first for first in base.yaml_implicit_resolvers if first is not None
    )

    class Loader(base):  # type: ignore[misc]
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._resolved: dict[tuple[str, bool], str] = {}

        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            if kind is not yaml.ScalarNode or not implicit[0]:
                return super().resolve(kind, value, implicit)
            if value and value[0] not in resolved_first_characters:
                return _STR_TAG  # no implicit type (int, bool, null...) starts this way
            key = (value, bool(implicit[1]))
            tag = self._resolved.get(key)
            if tag is None:
                tag = self._resolved[key] = super().resolve(kind, value, implicit)
            return tag

    return Loader


_Loader = loader_class(_SAFE_LOADER)


def _load_yaml(text: str, origin: str) -> list[Any]:
    loader = _Loader(text)
    documents: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            documents.append(_Builder(loader, origin, len(documents) + 1).build(node))
    except yaml.MarkedYAMLError as error:
        raise ReadError(f"{origin}: invalid YAML: {_describe_yaml_error(error)}") from None
    except yaml.YAMLError as error:
        raise ReadError(f"{origin}: invalid YAML: {error}") from None
    except RecursionError:  # the pure-Python composer recurses per nesting level
        raise ReadError(f"{origin}: invalid YAML: nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
    return documents


def _describe_yaml_error(error: yaml.MarkedYAMLError) -> str:
    parts = [part for part in (error.context, error.problem) if part]
    mark = error.problem_mark or error.context_mark
    where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    return f"{', '.join(parts) or 'syntax error'}{where}"


class _Builder:
    """Turns a composed YAML node graph into plain values, iteratively.

    Each collection node is built once (an alias shares the built value, as PyYAML does).
    Height and alias expansion are counted on the graph, so a recursive alias or a
    "billion laughs" is an error, not a hang or a crash.
    """

    def __init__(self, loader: Any, origin: str, document: int) -> None:
        self._loader = loader
        self._origin = origin
        self._document = document
        self._built: dict[int, Any] = {}  # id(node) -> value
        self._size: dict[int, int] = {}  # id(node) -> nodes when expanded
        self._height: dict[int, int] = {}  # id(node) -> nesting levels when expanded
        self._used: set[int] = set()  # collection nodes placed once already
        self._alias_expansion = 0

    def _fail(self, node: Any, message: str) -> ReadError:
        mark = getattr(node, "start_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        return ReadError(
            f"{self._origin}: invalid YAML: document {self._document}{where}: {message}"
        )

    def _scalar(self, node: Any) -> Any:
        if node.tag == _STR_TAG:
            return node.value
        return self._loader.construct_object(node)  # int, bool, null, float, timestamp

    def build(self, root: Any) -> Any:
        if isinstance(root, yaml.ScalarNode):
            return self._scalar(root)
        built = self._built
        open_nodes: set[int] = set()  # on the current path: reaching one again is a cycle
        # Post-order over collection nodes: (node, depth, children done?)
        stack: list[tuple[Any, int, bool]] = [(root, 1, False)]
        while stack:
            node, depth, children_done = stack.pop()
            key = id(node)
            if children_done:
                open_nodes.discard(key)
                built[key] = self._construct(node)
                continue
            if key in built:
                continue  # an alias of a node built already
            if depth > MAX_DEPTH:
                raise self._fail(node, f"nested deeper than {MAX_DEPTH} levels")
            open_nodes.add(key)
            stack.append((node, depth, True))
            children = (
                [child for pair in node.value for child in pair]
                if isinstance(node, yaml.MappingNode)
                else node.value
            )
            for child in children:
                if isinstance(child, yaml.ScalarNode):
                    continue
                child_key = id(child)
                if child_key in open_nodes:
                    raise self._fail(child, "an alias refers to a node that contains it")
                if child_key not in built:
                    stack.append((child, depth + 1, False))
        return built[id(root)]

    def _construct(self, node: Any) -> Any:
        size = 1
        height = 0
        value: Any
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                raise self._fail(node, f"unsupported tag {node.tag!r}")
            value = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self._fail(key_node, "a mapping key must be a scalar")
                if key_node.tag == _MERGE_TAG:
                    raise self._fail(key_node, "merge keys (<<) are not supported")
                map_key = self._scalar(key_node)
                try:
                    duplicate = map_key in value
                except TypeError:
                    raise self._fail(key_node, "a mapping key must be a scalar") from None
                if duplicate:
                    raise self._fail(key_node, f"duplicate key {map_key!r}")
                if isinstance(value_node, yaml.ScalarNode):
                    value[map_key] = self._scalar(value_node)
                    size += 1
                else:
                    value[map_key], child_size, child_height = self._place(value_node)
                    size += child_size
                    height = max(height, child_height)
        else:
            if node.tag != _SEQ_TAG:
                raise self._fail(node, f"unsupported tag {node.tag!r}")
            value = []
            for item_node in node.value:
                if isinstance(item_node, yaml.ScalarNode):
                    value.append(self._scalar(item_node))
                    size += 1
                else:
                    item, child_size, child_height = self._place(item_node)
                    value.append(item)
                    size += child_size
                    height = max(height, child_height)
        key = id(node)
        self._size[key] = size
        self._height[key] = height + 1
        if height + 1 > MAX_DEPTH:
            raise self._fail(node, f"nested deeper than {MAX_DEPTH} levels (through aliases)")
        return value

    def _place(self, node: Any) -> tuple[Any, int, int]:
        """A built collection as the child of another; a second placement is an alias."""
        key = id(node)
        size = self._size[key]
        if key in self._used:
            self._alias_expansion += size
            if self._alias_expansion > MAX_ALIAS_EXPANSION:
                raise self._fail(node, f"aliases expand to more than {MAX_ALIAS_EXPANSION} nodes")
        else:
            self._used.add(key)
        return self._built[key], size, self._height[key]


# --- documents to objects ----------------------------------------------------------------


def expand_documents(documents: Iterable[Any], origin: str = "<input>") -> ReadResult:
    """Expand ``*List`` documents and keep the kinds the agent reads.

    A document that is not an object, or of another kind, is reported (naming its index)
    and skipped. Duplicates are resolved as the module docstring says.
    """
    objects: list[Mapping[str, Any]] = []
    origins: list[str] = []
    problems: list[str] = []
    first_seen: dict[tuple[str, str], int] = {}  # (kind, key) -> index in objects
    replaced: set[tuple[str, str]] = set()
    for index, document in enumerate(documents, start=1):
        if document is None:  # an empty document, e.g. a trailing "---"
            continue
        for where, obj in _expand(document, f"{origin}: document {index}", problems):
            kind = obj["kind"]
            identity = _identity(kind, obj)
            if identity is None:
                objects.append(obj)  # parsing reports the broken metadata
                origins.append(where)
                continue
            seen = first_seen.get(identity)
            if seen is None:
                first_seen[identity] = len(objects)
                objects.append(obj)
                origins.append(where)
                continue
            name = identity[1]
            if strictly_equal(objects[seen], obj) or identity in replaced:
                problems.append(f"{where}: {kind} {name} is given more than once; kept once")
            elif kind == "NetworkPolicy":
                namespace, _, policy_name = name.partition("/")
                objects[seen] = isolate_namespace_policy(namespace, policy_name)
                replaced.add(identity)
                problems.append(
                    f"{where}: NetworkPolicy {name} is given more than once with different "
                    f"content; isolating namespace {namespace} in both directions instead "
                    "(fail closed)"
                )
            elif kind == "ClusterNetworkPolicy":
                objects[seen] = conflicting_cluster_policy(name)
                replaced.add(identity)
                problems.append(
                    f"{where}: ClusterNetworkPolicy {name} is given more than once with "
                    "different content; denying all traffic both ways to every pod instead "
                    "(fail closed)"
                )
            else:
                problems.append(
                    f"{where}: {kind} {name} is given more than once with different content; "
                    "the first one is kept"
                )
    return ReadResult(tuple(objects), tuple(problems), tuple(origins))


def _expand(
    document: Any, where: str, problems: list[str]
) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(where, object) for each object of a known kind in ``document``; Lists expanded."""
    stack: list[tuple[str, Any]] = [(where, document)]
    while stack:
        where, value = stack.pop()
        if not isinstance(value, Mapping):
            problems.append(f"{where}: not an object (got {_type_name(value)}); skipped")
            continue
        kind = value.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and "items" in value:
            items = value["items"]
            if items is None:
                continue
            if not isinstance(items, list):
                problems.append(f"{where}: {kind}.items must be a list; skipped")
                continue
            stack.extend(reversed([(f"{where} item {i}", item) for i, item in enumerate(items)]))
            continue
        if kind not in KINDS:
            metadata = value.get("metadata")
            name = metadata.get("name") if isinstance(metadata, Mapping) else None
            named = f" {name}" if isinstance(name, str) and name.isprintable() else ""
            problems.append(
                f"{where}: {_describe_kind(kind)}{named} is not a kind the agent reads "
                f"({', '.join(sorted(KINDS))}, or a List of them); skipped"
            )
            continue
        yield where, value


def strictly_equal(left: Any, right: Any) -> bool:
    """``==`` that also tells ``1`` from ``True`` and ``80`` from ``80.0``: a value of the
    wrong type is a different value, even where Python calls them equal."""
    stack = [(left, right)]
    while stack:
        a, b = stack.pop()
        if type(a) is not type(b):
            return False
        if isinstance(a, dict):
            if a.keys() != b.keys():
                return False
            stack.extend((a[key], b[key]) for key in a)
        elif isinstance(a, list):
            if len(a) != len(b):
                return False
            stack.extend(zip(a, b, strict=True))
        elif a != b:
            return False
    return True


def _identity(kind: str, obj: Mapping[str, Any]) -> tuple[str, str] | None:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    name = metadata.get("name")
    if not isinstance(name, str) or not name or not name.isprintable():
        return None  # parsing reports it
    if kind in ("Pod", "NetworkPolicy"):
        namespace = metadata.get("namespace")
        if namespace is None:
            namespace = "default"
        if not isinstance(namespace, str) or not namespace or not namespace.isprintable():
            return None
        return kind, f"{namespace}/{name}"
    return kind, name


def isolate_namespace_policy(namespace: str, name: str) -> dict[str, Any]:
    """A NetworkPolicy that selects every pod of ``namespace`` and allows nothing."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }


CONFLICTING_COPIES = "given more than once with different content"


def conflicting_cluster_policy(name: str) -> dict[str, Any]:
    """A ClusterNetworkPolicy ``name`` whose spec says it could not be told apart from
    another copy: the parser reads it as a Deny of all traffic to every pod."""
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": CONFLICTING_COPIES,
    }


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    names |= {list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _describe_kind(kind: Any) -> str:
    if kind is None:
        return "an object without kind"
    if not isinstance(kind, str):
        return f"kind {_type_name(kind)}"
    return f"kind {kind!r}"
