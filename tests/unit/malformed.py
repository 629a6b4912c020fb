"""A seeded generator of malformed state files: a valid baseline plus one mutation each.

``cases()`` yields at least 1,000 cases from a fixed seed:

- wrong types at every level: every field of every baseline object (and every list
  entry, and each document itself) replaced by values of the wrong type or invalid
  strings, never by a valid alternative (a valid relabel is a change, not malformed input);
- out-of-range and wrongly typed numbers (ports, endPort, containerPort);
- bad CIDRs, excepts outside (or equal to, or of another family than) their cidr;
- unknown operators, protocols, policy types, phases and kinds;
- huge lists (tens of thousands of rules, values, ports, items);
- non-UTF-8 bytes anywhere in the file;
- bounded YAML alias bombs and recursive aliases, deep nesting;
- duplicates (identical, and differing copies of each object);
- an empty file, a file of only ``---``, whitespace;
- ClusterNetworkPolicy: every field as above, plus what the CRD forbids though the type
  is right (priority and ports out of range, backwards port ranges, unmasked CIDRs,
  unknown fields, two fields where one is allowed, egress-only peers in ingress,
  ``domainNames``, a named port to networks or nodes, more than 25 rules or peers).

Each case says which baseline object it touched (``target``) and what the file as a whole
should do (``expect``), which is what the test's oracle needs.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

Obj = dict[str, Any]
Path = tuple[str | int, ...]

SEED = 20261130
WRONG_VALUES_PER_FIELD = 3
NODE = "node1"


def baseline() -> list[Obj]:
    """Namespaces, pods and policies covering every field the agent reads."""

    def namespace(name: str, **labels: str) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
        }

    def pod(
        ns: str, name: str, ip: str, ip6: str, node: str, ports: list[Obj], **labels: str
    ) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels},
            "spec": {
                "nodeName": node,
                "hostNetwork": False,
                "containers": [{"name": "c", "ports": ports}],
            },
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}, {"ip": ip6}]},
        }

    def policy(ns: str, name: str, spec: Obj) -> Obj:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }

    def cluster_policy(name: str, spec: Obj) -> Obj:
        return {
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }

    http = [{"name": "http", "containerPort": 80, "protocol": "TCP"}]
    pg = [{"name": "pg", "containerPort": 5432, "protocol": "TCP"}]
    dns = [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]
    return [
        namespace("ns-a", team="a"),
        namespace("ns-b", team="b"),
        namespace("ns-c", team="c"),
        pod("ns-a", "web", "10.1.0.2", "fd00::1:2", NODE, http, app="web", tier="front"),
        pod("ns-a", "db", "10.1.0.3", "fd00::1:3", "node2", pg, app="db"),
        pod("ns-b", "client", "10.2.0.2", "fd00::2:2", NODE, [], app="client"),
        pod("ns-b", "dns", "10.2.0.3", "fd00::2:3", "node2", dns, app="dns"),
        pod("ns-c", "tool", "10.3.0.2", "fd00::3:2", NODE, http, app="tool"),
        policy(
            "ns-a",
            "web-in",
            {
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {"matchLabels": {"team": "b"}},
                                "podSelector": {
                                    "matchExpressions": [
                                        {"key": "app", "operator": "In", "values": ["client"]}
                                    ]
                                },
                            },
                            {
                                "namespaceSelector": {
                                    "matchExpressions": [
                                        {"key": "team", "operator": "NotIn", "values": ["a", "b"]}
                                    ]
                                }
                            },
                        ],
                        "ports": [{"protocol": "TCP", "port": "http"}],
                    },
                    {"from": [{"podSelector": {}}], "ports": [{"port": 8000, "endPort": 8080}]},
                ],
            },
        ),
        policy(
            "ns-a",
            "db-both",
            {
                "podSelector": {
                    "matchExpressions": [
                        {"key": "app", "operator": "In", "values": ["db"]},
                        {"key": "tier", "operator": "DoesNotExist"},
                    ]
                },
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                        "ports": [{"port": 5432}],
                    }
                ],
                "egress": [
                    {
                        "to": [
                            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                            {"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::1:0/112"]}},
                        ],
                        "ports": [{"protocol": "UDP", "port": 53}],
                    }
                ],
            },
        ),
        policy(
            "ns-b",
            "egress-to-a",
            {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}],
                        "ports": [{"port": 80}, {"port": 5432}],
                    },
                    {"to": [{"podSelector": {"matchLabels": {"app": "dns"}}}]},
                ],
            },
        ),
        policy(
            "ns-b",
            "dns-in",
            {
                "podSelector": {"matchLabels": {"app": "dns"}},
                "ingress": [{"ports": [{"protocol": "UDP", "port": "dns"}]}],
            },
        ),
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE, "labels": {"zone": "a"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node2", "labels": {"zone": "b"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.2"}]},
        },
        cluster_policy(
            "guard-c",
            {
                "tier": "Admin",
                "priority": 10,
                "subject": {"namespaces": {"matchLabels": {"team": "c"}}},
                "ingress": [
                    {
                        "name": "accept-client-http",
                        "action": "Accept",
                        "from": [
                            {
                                "pods": {
                                    "namespaceSelector": {"matchLabels": {"team": "b"}},
                                    "podSelector": {"matchLabels": {"app": "client"}},
                                }
                            }
                        ],
                        "protocols": [{"tcp": {"destinationPort": {"number": 80}}}],
                    },
                    {
                        "name": "pass-a-range",
                        "action": "Pass",
                        "from": [{"namespaces": {"matchLabels": {"team": "a"}}}],
                        "protocols": [
                            {"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8080}}}}
                        ],
                    },
                    {"name": "deny-the-rest", "action": "Deny", "from": [{"namespaces": {}}]},
                ],
                "egress": [
                    {
                        "name": "deny-dns-server",
                        "action": "Deny",
                        "to": [{"networks": ["10.2.0.3/32", "fd00::2:3/128"]}],
                        "protocols": [{"udp": {"destinationPort": {"number": 53}}}],
                    },
                    {
                        "name": "accept-kubelet-zone-a",
                        "action": "Accept",
                        "to": [{"nodes": {"matchLabels": {"zone": "a"}}}],
                        "protocols": [{"tcp": {"destinationPort": {"number": 10250}}}],
                    },
                ],
            },
        ),
        cluster_policy(
            "isolate-ab",
            {
                "tier": "Baseline",
                "priority": 500,
                "subject": {
                    "pods": {
                        "namespaceSelector": {
                            "matchExpressions": [
                                {"key": "team", "operator": "In", "values": ["a", "b"]}
                            ]
                        },
                        "podSelector": {},
                    }
                },
                "ingress": [
                    {
                        "name": "accept-db",
                        "action": "Accept",
                        "from": [{"pods": {"podSelector": {"matchLabels": {"app": "db"}}}}],
                        "protocols": [{"tcp": {"destinationPort": {"number": 5432}}}],
                    },
                    {
                        "name": "deny-c-low-ports",
                        "action": "Deny",
                        "from": [{"namespaces": {"matchLabels": {"team": "c"}}}],
                        "protocols": [
                            {"tcp": {"destinationPort": {"range": {"start": 1, "end": 1024}}}},
                            {"sctp": {"destinationPort": {"number": 9003}}},
                        ],
                    },
                ],
                "egress": [
                    {
                        "name": "deny-named-dns-in-b",
                        "action": "Deny",
                        "to": [{"namespaces": {"matchLabels": {"team": "b"}}}],
                        "protocols": [{"destinationNamedPort": "dns"}],
                    },
                    {
                        "name": "pass-c",
                        "action": "Pass",
                        "to": [{"namespaces": {"matchLabels": {"team": "c"}}}],
                    },
                ],
            },
        ),
        cluster_policy(
            "open-web",
            {
                "tier": "Admin",
                "priority": 10,
                "subject": {"pods": {"podSelector": {"matchLabels": {"app": "web"}}}},
                "ingress": [
                    {
                        "name": "accept-c-postgres",
                        "action": "Accept",
                        "from": [{"namespaces": {"matchLabels": {"team": "c"}}}],
                        "protocols": [{"tcp": {"destinationPort": {"number": 5432}}}],
                    },
                    {
                        "action": "Pass",
                        "from": [
                            {
                                "pods": {
                                    "namespaceSelector": {},
                                    "podSelector": {"matchLabels": {"app": "client"}},
                                }
                            }
                        ],
                    },
                ],
                "egress": [
                    {
                        "name": "deny-b-postgres",
                        "action": "Deny",
                        "to": [{"networks": ["10.2.0.0/16", "fd00::2:0/112"]}],
                        "protocols": [{"tcp": {"destinationPort": {"number": 5432}}}],
                    }
                ],
            },
        ),
    ]


@dataclass(frozen=True, slots=True)
class Target:
    """The baseline object a mutation touched."""

    kind: str
    key: str  # "ns/name" or "name"
    namespace: str  # the namespace whose pods it can affect ("" for a Node)


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    category: str
    data: bytes
    filename: str
    target: Target | None  # None: the mutation touched no baseline object
    # "state": loads, with problems unless the mutation is harmless;
    # "file-error": the file as a whole is rejected; "empty": a valid state of no objects.
    expect: str
    mutated: Obj | None = None  # the mutated object, for delivery through the API
    field: str = ""  # the dotted path mutated ("" for the document itself or the file)


def target_of(obj: Obj) -> Target:
    """``namespace`` is "" for a Node and for a ClusterNetworkPolicy (which can touch
    every pod)."""
    kind = obj["kind"]
    name = obj["metadata"]["name"]
    if kind in ("Pod", "NetworkPolicy"):
        namespace = obj["metadata"]["namespace"]
        return Target(kind, f"{namespace}/{name}", namespace)
    if kind == "Namespace":
        return Target(kind, name, name)
    return Target(kind, name, "")


# --- serialization -----------------------------------------------------------------------


def to_yaml(objects: Sequence[Any]) -> bytes | None:
    try:
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        return yaml.dump_all(
            list(objects), Dumper=dumper, allow_unicode=False, sort_keys=False
        ).encode()
    except (yaml.YAMLError, UnicodeEncodeError, RecursionError):
        return None


def to_json(objects: Sequence[Any]) -> bytes:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}).encode()


def serialized(objects: Sequence[Any], rng: random.Random) -> tuple[bytes, str]:
    if rng.random() < 0.5:
        data = to_yaml(objects)
        if data is not None:
            return data, "state.yaml"
    return to_json(objects), "state.json"


# --- wrong values ------------------------------------------------------------------------

_NOT_A_LABEL = ["\ud800", "-bad-", "a" * 64, "has space", "a\\"]
_WRONG_SCALARS: list[Any] = [0, 5, -1, 1.5, True, False]
_WRONG_CONTAINERS: list[Any] = [[None], [5], [True], [[]]]


def _is_unread(path: Path, kind: str) -> bool:
    """Fields the agent does not read: changing them changes nothing."""
    if path == ("apiVersion",):
        return kind != "ClusterNetworkPolicy"  # its version decides which schema it has
    return len(path) >= 3 and path[-1] == "name" and path[-3] in ("containers", "initContainers")


def _is_rule_name(path: Path) -> bool:
    return len(path) >= 3 and path[-1] == "name" and path[-3] in ("ingress", "egress")


def wrong_values(path: Path, value: Any) -> list[Any]:
    """Values of the wrong type (or invalid strings) for the field at ``path``."""
    last = path[-1] if path else None
    parent = path[-2] if len(path) >= 2 else None
    in_labels = parent in ("labels", "matchLabels") or (
        isinstance(last, int) and parent == "values"
    )
    if in_labels:  # a label value: "" or another word would be a valid relabel
        return [*_WRONG_SCALARS, [], {}, ["x"], *_NOT_A_LABEL]
    if last in ("name", "namespace") and parent == "metadata":
        return [5, True, [], {}, "Bad_Name", "\ud800", "x" * 300]
    if _is_rule_name(path):  # any printable text of at most 100 characters is a name
        return [5, True, [], {}, "x" * 101, "\ud800", "a\tb"]
    if last == "priority":  # 0-1000 would be a valid reordering
        return [-1, 1001, 2**40, True, False, "10", 10.0, [], {}]
    if last == "key":  # a label key
        return [5, True, [], {}, "-bad-", "\ud800", "a b", "/x"]
    if last == "port":  # a number or a port name: only what is neither
        return [0, -1, 65536, True, 1.5, [], {}, "-bad-", "\ud800", "80", "HTTP"]
    if last == "uid":  # any string is a uid
        return [5, True, [], {}, "\ud800"]
    if isinstance(value, bool):
        return ["false", "true", 0, 1, [], {}, "yes"]
    if isinstance(value, int):
        return [0, -1, 65536, 2**40, True, False, str(value), "http-", float(value), [], {}]
    if isinstance(value, str):
        return [*_WRONG_SCALARS, [], {}, ["x"], "\ud800", "-bad-", "ICMP", "10.0.0.0/33"]
    if isinstance(value, list):
        # Never [] (missing and [] mean "all"/"none" legitimately) nor a valid list.
        return [0, 5, "", "admin", False, True, {}, {"a": "b"}, *_WRONG_CONTAINERS]
    if isinstance(value, dict):
        # Never {} (an empty selector is valid and means "all").
        return [0, 5, "", "x", False, True, [], [{}], ["x"]]
    return [5]


def paths(value: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every (path, value) inside ``value``, the value itself first."""
    yield prefix, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def with_value(obj: Obj, path: Path, value: Any) -> Obj:
    mutated = copy.deepcopy(obj)
    holder: Any = mutated
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = value
    return mutated


def _show(path: Path) -> str:
    return ".".join(str(p) for p in path) or "(document)"


# --- the cases ---------------------------------------------------------------------------


def cases(seed: int = SEED) -> list[Case]:
    rng = random.Random(seed)
    base = baseline()
    found: list[Case] = []

    def add(
        name: str,
        category: str,
        objects: Sequence[Any],
        target: Target | None,
        expect: str = "state",
        mutated: Obj | None = None,
        field: str = "",
    ) -> None:
        data, filename = serialized(objects, rng)
        found.append(Case(name, category, data, filename, target, expect, mutated, field))

    # Wrong types at every level: each field of each object, each document itself.
    for index, obj in enumerate(base):
        target = target_of(obj)
        for path, value in paths(obj):
            if path == ("kind",) or _is_unread(path, obj["kind"]):
                continue
            if not path:
                for wrong in [5, "x", [], True, [obj]]:
                    objects = [*base[:index], wrong, *base[index + 1 :]]
                    add(f"document {index} <- {wrong!r:.40}", "wrong-type", objects, target)
                continue
            pool = wrong_values(path, value)
            for wrong in rng.sample(pool, min(WRONG_VALUES_PER_FIELD, len(pool))):
                mutated = with_value(obj, path, wrong)
                objects = [*base[:index], mutated, *base[index + 1 :]]
                add(
                    f"{target.kind} {target.key}: {_show(path)} <- {wrong!r:.40}",
                    "wrong-type",
                    objects,
                    target,
                    mutated=mutated,
                    field=_show(path),
                )

    def mutate(index: int, path: Path, value: Any, category: str) -> None:
        obj = base[index]
        target = target_of(obj)
        mutated = with_value(obj, path, value)
        objects = [*base[:index], mutated, *base[index + 1 :]]
        add(
            f"{target.kind} {target.key}: {_show(path)} <- {value!r:.40}",
            category,
            objects,
            target,
            mutated=mutated,
            field=_show(path),
        )

    web_in, db_both, egress_to_a, dns_in = 8, 9, 10, 11
    web_pod, dns_pod = 3, 6
    guard_c, isolate_ab = 14, 15
    assert base[guard_c]["metadata"]["name"] == "guard-c"
    # Numbers out of range / of the wrong type.
    for number in [0, -80, 65536, 99999, 2**63, 80.5, True, "80", "8O80", [80]]:
        mutate(web_in, ("spec", "ingress", 1, "ports", 0, "port"), number, "numbers")
        mutate(web_in, ("spec", "ingress", 1, "ports", 0, "endPort"), number, "numbers")
        mutate(web_pod, ("spec", "containers", 0, "ports", 0, "containerPort"), number, "numbers")
    mutate(web_in, ("spec", "ingress", 1, "ports", 0, "endPort"), 7999, "numbers")
    # Bad CIDRs and excepts outside their cidr.
    block = ("spec", "egress", 0, "to", 0, "ipBlock")
    for cidr in [
        "10.0.0.0/33",
        "bogus",
        "10.0.0.256/8",
        "010.0.0.0/8",
        "::/129",
        "",
        "10.0.0.0/-1",
    ]:
        mutate(db_both, (*block, "cidr"), cidr, "cidr")
    for excluded in [
        ["192.168.0.0/16"],
        ["10.0.0.0/8"],
        ["10.0.0.0/7"],
        ["fd00::/112"],
        ["10.1.0.0/16", "bogus"],
        ["10.1.0.0/16", "11.0.0.0/8"],
    ]:
        mutate(db_both, (*block, "except"), excluded, "cidr")
    # Unknown operators, protocols, policy types, phases, kinds.
    expression = ("spec", "podSelector", "matchExpressions", 0)
    for operator in ["in", "Equals", "NotExists", "", "IN"]:
        mutate(db_both, (*expression, "operator"), operator, "unknown-enum")
    for protocol in ["tcp", "ICMP", "HTTP", "", "TCP "]:
        mutate(egress_to_a, ("spec", "egress", 0, "ports", 0, "protocol"), protocol, "unknown-enum")
        mutate(dns_pod, ("spec", "containers", 0, "ports", 0, "protocol"), protocol, "unknown-enum")
    for types in [["Ingress", "Sideways"], ["ingress"], "Ingress", [""], [None]]:
        mutate(web_in, ("spec", "policyTypes"), types, "unknown-enum")
    for phase in ["Runnning", "Done", 5]:
        mutate(web_pod, ("status", "phase"), phase, "unknown-enum")
    for kind in ["Service", "Pods", "networkpolicy", "", "NetworkPolicyList", "List"]:
        mutate(dns_in, ("kind",), kind, "unknown-enum")
    # Huge lists: parsing must stay linear.
    many = 20_000
    mutate(
        web_in,
        ("spec", "ingress"),
        [{"from": [{"podSelector": {"matchLabels": {"app": f"a{i}"}}}]} for i in range(many)] + [5],
        "huge",
    )
    mutate(
        web_in,
        ("spec", "ingress", 0, "from", 0, "podSelector", "matchExpressions", 0, "values"),
        [f"v{i}" for i in range(many)] + [None],
        "huge",
    )
    mutate(
        db_both,
        ("spec", "egress", 0, "ports"),
        [{"port": 1 + i % 65535} for i in range(many)] + [{"port": 0}],
        "huge",
    )
    mutate(
        db_both,
        (*block, "except"),
        [f"10.{i // 256 % 256}.{i % 256}.0/24" for i in range(2, many)] + ["11.0.0.0/24"],
        "huge",
    )
    mutate(web_pod, ("metadata", "labels"), {f"k{i}": "v" for i in range(many)} | {"x": 5}, "huge")
    mutate(
        web_pod,
        ("status", "podIPs"),
        [{"ip": f"10.9.{i // 256 % 256}.{i % 256}"} for i in range(many)] + [{"ip": "bad"}],
        "huge",
    )
    add(
        "a List of many unknown kinds",
        "huge",
        [*base, *({"kind": "ConfigMap", "metadata": {"name": f"c{i}"}} for i in range(many))],
        None,
    )
    # Duplicates: identical copies, and differing copies of each object.
    for obj in base:
        target = target_of(obj)
        add(f"{target.kind} {target.key} twice", "duplicate", [*base, obj], None)
        changed = copy.deepcopy(obj)
        changed["metadata"].setdefault("labels", {})["extra"] = "copy"
        if obj["kind"] == "NetworkPolicy":
            changed["spec"] = {"podSelector": {}, "ingress": [{}], "egress": [{}]}
        add(
            f"{target.kind} {target.key} twice, differing",
            "duplicate",
            [*base, changed],
            target if obj["kind"] in ("NetworkPolicy", "ClusterNetworkPolicy") else None,
        )
    _cluster_policy_cases(mutate, guard_c, isolate_ab, many)
    # Whole-file cases, built on the text of the baseline.
    text = to_yaml(base)
    assert text is not None
    listed = to_json(base)
    for i in range(40):
        source, filename = (text, "state.yaml") if i % 2 == 0 else (listed, "state.json")
        offset = rng.randrange(len(source))
        bad = bytes([rng.choice([0x80, 0xBF, 0xC0, 0xFF, 0xFE, 0xED])])
        found.append(
            Case(
                f"non-UTF-8 byte {bad!r} at offset {offset} of {filename}",
                "non-utf8",
                source[:offset] + bad + source[offset:],
                filename,
                None,
                "file-error",
            )
        )
    laughs = "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)
    )
    bombs = {
        "billion laughs as a document": text + b"---\n" + laughs.encode(),
        "billion laughs in a label": text
        + b"---\nkind: Namespace\nmetadata:\n  name: bomb\n  labels:\n"
        + "".join(f"    {line}\n" for line in laughs.splitlines()).encode(),
        "recursive alias": text + b"---\nkind: Pod\nmetadata: &m {name: x, labels: *m}\n",
        "self-containing sequence": text + b"---\n&a [*a]\n",
        "deep nesting (600 levels)": text + b"---\nkind: Pod\nspec: " + b"[" * 600 + b"]" * 600,
        "deep nesting (150 levels)": text + b"---\na: " + b"{b: " * 150 + b"1" + b"}" * 150,
        "deep JSON (600 levels)": b'{"kind": "List", "items": ' + b"[" * 600 + b"]" * 600 + b"}",
        "merge key": text + b"---\nbase: &b {kind: Pod}\npod: {<<: *b}\n",
        "duplicate key": text + b"---\nkind: Pod\nkind: Namespace\n",
        "python tag": text + b"---\n!!python/object/apply:os.system [true]\n",
        "unclosed flow": text + b"---\nkind: Pod\nmetadata: {name: [x\n",
        "tab indentation": text + b"---\nkind: Pod\nmetadata:\n\tname: x\n",
        "truncated JSON": listed[: len(listed) // 2],
    }
    for name, data in bombs.items():
        filename = (
            "state.json" if name.startswith(("deep JSON", "truncated JSON")) else "state.yaml"
        )
        found.append(Case(name, "yaml-bomb", data, filename, None, "file-error"))
    # A harmless alias: allowed, and expanded as written.
    found.append(
        Case(
            "benign alias",
            "yaml-bomb",
            text + b"---\nkind: Namespace\nmetadata: {name: extra, labels: &l {team: z}}\n"
            b"---\nkind: Namespace\nmetadata: {name: extra2, labels: *l}\n",
            "state.yaml",
            None,
            "state",
        )
    )
    for name, data in {
        "empty file": b"",
        "only ---": b"---\n",
        "several ---": b"---\n---\n---\n",
        "whitespace": b"  \n\n",
        "only a comment": b"# nothing here\n",
        "empty JSON List": b'{"kind": "List", "items": []}',
        "empty JSON array": b"[]",
    }.items():
        filename = "state.json" if "JSON" in name else "state.yaml"
        found.append(Case(name, "empty", data, filename, None, "empty"))
    return found


def _cluster_policy_cases(
    mutate: Callable[[int, Path, Any, str], None], guard_c: int, isolate_ab: int, many: int
) -> None:
    """What the CRD rejects though the types are right, on the two ClusterNetworkPolicies."""
    spec: Path = ("spec",)
    accept_in: Path = (*spec, "ingress", 0)
    kubelet_out: Path = (*spec, "egress", 1)
    dns_out: Path = (*spec, "egress", 0)
    port: Path = (*accept_in, "protocols", 0, "tcp", "destinationPort")
    port_range: Path = (*spec, "ingress", 1, "protocols", 0, "tcp", "destinationPort", "range")
    networks: Path = (*dns_out, "to", 0, "networks")
    for version in ["policy.networking.k8s.io/v1alpha1", "policy.networking.k8s.io/v1",
                    "example.com/v1alpha2", "v1"]:  # fmt: skip
        mutate(guard_c, ("apiVersion",), version, "unknown-enum")
    for tier in ["admin", "Namespace", "NetworkPolicy", ""]:
        mutate(guard_c, (*spec, "tier"), tier, "unknown-enum")
    for action in ["Allow", "accept", "Drop", ""]:
        mutate(guard_c, (*accept_in, "action"), action, "unknown-enum")
        mutate(isolate_ab, (*spec, "egress", 0, "action"), action, "unknown-enum")
    for priority in [-1, 1001, 65536, 2**31]:
        mutate(isolate_ab, (*spec, "priority"), priority, "numbers")
    for number in [0, 65536, -80]:
        mutate(guard_c, (*port, "number"), number, "numbers")
        mutate(guard_c, (*port_range, "start"), number, "numbers")
    for start, end in [(8080, 8080), (8080, 8000), (1, 65536)]:
        mutate(guard_c, port_range, {"start": start, "end": end}, "numbers")
    for cidr in ["10.2.0.3/8", "10.2.0.3", "10.2.0.0/255.255.0.0", "fd00::2:3/64",
                 "fe80::%eth0/64", "10.2.0.0/016", "10.2.0.3/32 "]:  # fmt: skip
        mutate(guard_c, (*networks, 0), cidr, "cidr")
    mutate(guard_c, networks, ["10.2.0.3/32", "10.2.0.3/32"], "cidr")
    # Two fields where one is allowed, unknown fields, fields of the other direction.
    both = {"namespaces": {}, "pods": {"podSelector": {}}}
    mutate(guard_c, (*spec, "subject"), both, "cnp-shape")
    mutate(guard_c, (*spec, "subject"), {}, "cnp-shape")
    mutate(guard_c, (*spec, "podSelector"), {"matchLabels": {"app": "x"}}, "cnp-shape")
    mutate(guard_c, (*accept_in, "from", 0), {"namespaces": {}, **{"pods": {"podSelector": {}}}},
           "cnp-shape")  # fmt: skip
    mutate(guard_c, (*accept_in, "from", 0), {}, "cnp-shape")
    mutate(guard_c, (*accept_in, "from", 0, "pods", "ipBlock"), {"cidr": "10.0.0.0/8"},
           "cnp-shape")  # fmt: skip
    mutate(guard_c, (*accept_in, "from", 0, "pods"), {"namespaceSelector": {}}, "cnp-shape")
    mutate(guard_c, (*accept_in, "ports"), [{"port": 80}], "cnp-shape")
    mutate(guard_c, (*accept_in, "to"), [{"namespaces": {}}], "cnp-shape")
    mutate(guard_c, (*accept_in, "protocols", 0, "udp"), {"destinationPort": {"number": 80}},
           "cnp-shape")  # fmt: skip
    mutate(guard_c, (*accept_in, "protocols", 0, "tcp"), {}, "cnp-shape")
    mutate(guard_c, port, {}, "cnp-shape")
    mutate(guard_c, (*port, "range"), {"start": 1, "end": 2}, "cnp-shape")
    mutate(guard_c, (*accept_in, "protocols"), [], "cnp-shape")
    mutate(guard_c, (*accept_in, "from"), [], "cnp-shape")
    mutate(guard_c, (*accept_in, "from", 0), {"networks": ["10.0.0.0/8"]}, "cnp-shape")
    mutate(guard_c, (*accept_in, "from", 0), {"nodes": {}}, "cnp-shape")
    mutate(isolate_ab, (*spec, "egress", 0, "protocols", 0), {"destinationNamedPort": "DNS"},
           "cnp-shape")  # fmt: skip
    # Unsupported: domainNames; a named port to networks or nodes peers.
    mutate(guard_c, (*kubelet_out, "to", 0), {"domainNames": ["example.com"]}, "unsupported")
    mutate(guard_c, (*kubelet_out, "protocols", 0), {"destinationNamedPort": "http"},
           "unsupported")  # fmt: skip
    mutate(guard_c, (*dns_out, "protocols", 0), {"destinationNamedPort": "dns"}, "unsupported")
    # Too many: rules, peers, networks, protocols (the CRD allows 25 of each).
    rule = {"action": "Accept", "from": [{"namespaces": {}}]}
    mutate(guard_c, (*spec, "ingress"), [rule] * 26, "huge")
    mutate(guard_c, (*spec, "ingress"), [rule] * many, "huge")
    mutate(guard_c, (*accept_in, "from"), [{"namespaces": {}}] * 26, "huge")
    mutate(guard_c, networks, [f"10.{i // 256 % 256}.{i % 256}.0/24" for i in range(many)], "huge")
    mutate(guard_c, (*accept_in, "protocols"),
           [{"tcp": {"destinationPort": {"number": 1 + i % 65535}}} for i in range(many)],
           "huge")  # fmt: skip
