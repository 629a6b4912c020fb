"""Helpers for the lab scenarios: apply a cluster state, probe, and judge the result twice.

A :class:`Scenario` writes the topology objects (optionally with overridden or extra
pods/namespaces) plus the scenario's NetworkPolicies to a state file, runs
``netpol-agent run --once`` on every node, probes real traffic and checks it

* against the EXPECTED table written by hand from the semantics (the cells that matter), and
* against ``agent.policy.explain`` (the oracle) for EVERY probed cell.

A third check compares the hand-written table with the oracle, so a disagreement there is
reported as what it is: a bug in explain (or in the expectation), not in the dataplane.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.model.objects import Protocol
from agent.policy.explain import Verdict as ExplainVerdict
from agent.policy.explain import explain, resolve_endpoint
from agent.policy.state import ClusterState, build_state
from tests.lab.nsutil import LabCommandError, in_netns
from tests.lab.prober import Matrix, Probe, Prober, Verdict
from tests.lab.topology import Backend, Endpoint, Lab

PODS: tuple[str, ...] = tuple(f"{ns}/{pod}" for ns in "xyz" for pod in "abc")
NODES: tuple[str, ...] = ("node-1", "node-2")
EXT = "ext"
PROBE_TIMEOUT = 0.75  # a denied cell costs this once per probe run (all probes fly at once)

PortProtocol = tuple[int, str]
Hand = Mapping[Probe, bool] | Callable[[Probe], bool | None]

_counter = itertools.count()


# ------------------------------------------------------------------------------ objects
def netpol(namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": name},
        "spec": copy.deepcopy(dict(spec)),
    }


def labels(**kv: str) -> dict[str, Any]:
    """``{"matchLabels": {...}}``."""
    return {"matchLabels": dict(kv)}


def pod_sel(pod: str) -> dict[str, Any]:
    return {"matchLabels": {"pod": pod}}


def ns_sel(ns: str) -> dict[str, Any]:
    return {"matchLabels": {"ns": ns}}


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


# ------------------------------------------------------------------ ClusterNetworkPolicy
CNP_API_VERSION = "policy.networking.k8s.io/v1beta1"  # the conformance suite's; v1alpha2 parses too


def cnp(
    name: str,
    tier: str,
    priority: int,
    subject: Mapping[str, Any],
    *,
    ingress: Sequence[Mapping[str, Any]] | None = None,
    egress: Sequence[Mapping[str, Any]] | None = None,
    api_version: str = CNP_API_VERSION,
) -> dict[str, Any]:
    """A ClusterNetworkPolicy object; ``ingress``/``egress`` = None leaves the field out."""
    spec: dict[str, Any] = {"tier": tier, "priority": priority, "subject": dict(subject)}
    if ingress is not None:
        spec["ingress"] = [dict(r) for r in ingress]
    if egress is not None:
        spec["egress"] = [dict(r) for r in egress]
    return copy.deepcopy(
        {
            "apiVersion": api_version,
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def cnp_namespaces(selector: Mapping[str, Any]) -> dict[str, Any]:
    """A subject or peer ``namespaces: <selector>``."""
    return {"namespaces": copy.deepcopy(dict(selector))}


def cnp_pods(
    pod_selector: Mapping[str, Any], namespace_selector: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A subject or peer ``pods: {namespaceSelector, podSelector}`` (namespaceSelector left
    out when None, which the API reads as every namespace)."""
    pods: dict[str, Any] = {}
    if namespace_selector is not None:
        pods["namespaceSelector"] = copy.deepcopy(dict(namespace_selector))
    pods["podSelector"] = copy.deepcopy(dict(pod_selector))
    return {"pods": pods}


def cnp_networks(*cidrs: str) -> dict[str, Any]:
    return {"networks": list(cidrs)}


def cnp_nodes(selector: Mapping[str, Any]) -> dict[str, Any]:
    return {"nodes": copy.deepcopy(dict(selector))}


def cnp_port(protocol: str, number: int) -> dict[str, Any]:
    """``{tcp: {destinationPort: {number: n}}}`` (protocol TCP/UDP/SCTP, any case)."""
    return {protocol.lower(): {"destinationPort": {"number": number}}}


def cnp_range(protocol: str, start: int, end: int) -> dict[str, Any]:
    return {protocol.lower(): {"destinationPort": {"range": {"start": start, "end": end}}}}


def cnp_named_port(name: str) -> dict[str, Any]:
    return {"destinationNamedPort": name}


def _cnp_rule(
    name: str,
    action: str,
    key: str,
    peers: Sequence[Mapping[str, Any]],
    protocols: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    rule: dict[str, Any] = {"name": name, "action": action, key: [dict(p) for p in peers]}
    if protocols is not None:
        rule["protocols"] = [dict(p) for p in protocols]
    return copy.deepcopy(rule)


def cnp_ingress(
    name: str,
    action: str,
    *peers: Mapping[str, Any],
    protocols: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """An ingress rule: ``{name, action, from: peers, protocols}``."""
    return _cnp_rule(name, action, "from", peers, protocols)


def cnp_egress(
    name: str,
    action: str,
    *peers: Mapping[str, Any],
    protocols: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """An egress rule: ``{name, action, to: peers, protocols}``."""
    return _cnp_rule(name, action, "to", peers, protocols)


def ns_of(name: str) -> str:
    return name.split("/", 1)[0] if "/" in name else ""


def cells(
    sources: Iterable[str],
    destinations: Iterable[str],
    port_protocols: Sequence[PortProtocol] = ((80, "TCP"),),
    families: Sequence[int] = (4,),
) -> list[Probe]:
    dsts = list(destinations)
    return [
        Probe(s, d, port, proto, fam)
        for s in sources
        for d in dsts
        for port, proto in port_protocols
        for fam in families
    ]


# ------------------------------------------------------------------------------ TCP echo
class TcpEcho:
    """A TCP echo server in one endpoint's netns (the lab's own TCP servers accept and
    close; this one keeps connections open to carry data both ways)."""

    def __init__(self, lab: Lab, endpoint: str, port: int) -> None:
        with in_netns(lab.endpoint(endpoint).netns):
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::", port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(10)
            while data := conn.recv(65535):
                conn.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class TcpClient:
    """One long-lived TCP connection from ``src`` to ``dst``:``port``."""

    def __init__(self, lab: Lab, src: str, dst: str, port: int, family: int = 4) -> None:
        with in_netns(lab.endpoint(src).netns):
            self.sock = socket.socket(
                socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM
            )
        self.sock.settimeout(2.0)
        self.sock.connect((lab.endpoint(dst).ip(family), port))

    def round_trip(self, payload: bytes) -> bool:
        """Send ``payload``; True iff the same bytes come back within the timeout."""
        try:
            self.sock.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = self.sock.recv(65535)
                if not chunk:
                    return False
                got += chunk
        except OSError:
            return False
        return got == payload

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------------------ scenario
@dataclass(frozen=True)
class Service:
    """A ClusterIP (DNAT on the client's node) in front of one backend pod."""

    name: str
    backend: str
    cluster_v4: str
    cluster_v6: str
    port_map: Mapping[tuple[int, str], int]  # (service port, protocol) -> targetPort


@dataclass
class Scenario:
    lab: Lab
    backend: Backend
    timeout: float = PROBE_TIMEOUT
    objects: list[dict[str, Any]] = field(default_factory=list)
    state: ClusterState | None = None
    services: dict[str, Service] = field(default_factory=dict)
    applies: int = 0

    def __post_init__(self) -> None:
        self.prober = Prober(self.lab.endpoints(external=True, nodes=True), timeout=self.timeout)

    # -------------------------------------------------------------------------- topology
    def pod_object(self, key: str) -> dict[str, Any]:
        """A deep copy of the topology's Pod object for ``key`` (to override it)."""
        ns, name = key.split("/", 1)
        for obj in self.lab.objects():
            meta = obj["metadata"]
            if obj["kind"] == "Pod" and meta["namespace"] == ns and meta["name"] == name:
                return copy.deepcopy(obj)
        raise KeyError(key)

    def namespace_object(self, name: str) -> dict[str, Any]:
        for obj in self.lab.objects():
            if obj["kind"] == "Namespace" and obj["metadata"]["name"] == name:
                return copy.deepcopy(obj)
        raise KeyError(name)

    def extra_pod(
        self,
        namespace: str,
        name: str,
        *,
        node: str,
        ips: Sequence[str],
        pod_labels: Mapping[str, str],
        phase: str = "Running",
        host_network: bool = False,
    ) -> dict[str, Any]:
        """A Pod object that is not part of the lab's netns topology (finished pods,
        hostNetwork pods, pods whose IP is reused …)."""
        node_info = self.lab.node(node)
        spec: dict[str, Any] = {
            "nodeName": node,
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}],
        }
        if host_network:
            spec["hostNetwork"] = True
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "namespace": namespace,
                "name": name,
                "uid": f"lab-extra-{namespace}-{name}",
                "labels": dict(pod_labels),
            },
            "spec": spec,
            "status": {
                "phase": phase,
                "hostIP": node_info.wan_v4,
                "podIP": ips[0],
                "podIPs": [{"ip": ip} for ip in ips],
            },
        }

    @staticmethod
    def with_named_port(pod: dict[str, Any], name: str, port: int, protocol: str) -> None:
        pod["spec"]["containers"].append(
            {
                "name": f"extra-{name}",
                "image": "registry.k8s.io/e2e-test-images/agnhost:2.47",
                "ports": [{"name": name, "containerPort": port, "protocol": protocol}],
            }
        )

    # -------------------------------------------------------------------------- apply
    def apply(
        self,
        policies: Sequence[Mapping[str, Any]],
        *,
        overrides: Sequence[Mapping[str, Any]] = (),
        extra: Sequence[Mapping[str, Any]] = (),
        problems_expected: bool = False,
    ) -> None:
        """State = topology objects (each replaced by an override of the same kind and
        name) + extra objects + policies; run the agent once on every node.
        ``problems_expected``: the objects are malformed on purpose (bad input)."""

        def ident(o: Mapping[str, Any]) -> tuple[str, str, str]:
            meta = o.get("metadata") or {}
            return (str(o["kind"]), str(meta.get("namespace", "")), str(meta["name"]))

        replaced = {ident(o): o for o in overrides}
        objects = [dict(replaced.pop(ident(o), o)) for o in self.lab.objects()]
        assert not replaced, f"overrides for objects not in the topology: {list(replaced)}"
        objects += [copy.deepcopy(dict(o)) for o in (*extra, *policies)]
        built = build_state(objects)
        assert bool(built.problems) == problems_expected, f"problems: {built.problems}"
        self.objects, self.state = objects, built.state

        assert self.lab.workdir is not None, "lab not started"
        path = Path(self.lab.workdir) / f"scenario-{next(_counter)}.yaml"
        path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        argvs = [self.lab.agent_argv(n, path, backend=self.backend) for n in self.lab.nodes]
        procs = [
            subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for a in argvs
        ]
        failures = []
        for argv, proc in zip(argvs, procs, strict=True):
            try:
                out, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()  # our own child, by PID
                out, err = proc.communicate()
            if proc.returncode != 0:
                failures.append(LabCommandError(argv, proc.returncode, out, err))
        self.applies += 1
        if failures:
            raise failures[0]

    # -------------------------------------------------------------------------- services
    def add_service(self, service: Service) -> None:
        """Install kube-proxy-like DNAT rules on every node (tagged with the lab comment,
        so the clean_lab reset removes them) and make the ClusterIP probeable."""
        backend = self.lab.pod(service.backend)
        flavor = "nft" if self.backend == "nft" else "legacy"
        for node in self.lab.nodes:
            for (port, proto), target in service.port_map.items():
                for fam, vip in ((4, service.cluster_v4), (6, service.cluster_v6)):
                    ip = backend.ip(fam)
                    dest = f"{ip}:{target}" if fam == 4 else f"[{ip}]:{target}"
                    self.lab.iptables(
                        node, "-t", "nat", "-I", "PREROUTING", "-d", vip, "-p", proto.lower(),
                        "--dport", str(port), "-j", "DNAT", "--to-destination", dest,
                        *self.lab.lab_comment(), family=fam, flavor=flavor,
                    )  # fmt: skip
        self.services[service.name] = service
        self.prober.add(
            Endpoint(service.name, backend.netns, service.cluster_v4, service.cluster_v6, "service")
        )

    # -------------------------------------------------------------------------- judging
    def oracle(self, probe: Probe) -> bool:
        """explain's verdict for one probe (a Service probe is judged at its backend)."""
        return self.explained(probe).allowed

    def explained(self, probe: Probe) -> ExplainVerdict:
        """explain's whole answer for one probe: per direction, the tier and the rule."""
        assert self.state is not None, "apply() first"
        dst, port = probe.dst, probe.port
        if dst in self.services:
            svc = self.services[dst]
            dst, port = svc.backend, svc.port_map[(probe.port, probe.protocol)]
        source = resolve_endpoint(self.state, self._address(probe.src, probe.family),
                                  probe.family)  # fmt: skip
        destination = resolve_endpoint(self.state, self._address(dst, probe.family),
                                       probe.family)  # fmt: skip
        return explain(self.state, source, destination, Protocol(probe.protocol), port)

    def _address(self, name: str, family: int) -> str:
        assert self.state is not None
        if name in self.state.pods and name in self.lab.pods:
            return name
        return self.lab.endpoint(name).ip(family)

    def run(self, probes: Iterable[Probe]) -> Matrix:
        return self.prober.run(list(dict.fromkeys(probes)))

    def verify(self, probes: Iterable[Probe], expected: Hand, title: str = "") -> Matrix:
        """Probe, then check lab == hand-written table (where it says something), lab ==
        explain everywhere, and hand-written table == explain."""
        m = self.run(probes)
        hand: dict[Probe, Verdict] = {}
        for p in m:
            want = expected.get(p) if isinstance(expected, Mapping) else expected(p)
            if want is not None:
                hand[p] = Verdict.ALLOWED if want else Verdict.DENIED
        oracle = {p: Verdict.ALLOWED if self.oracle(p) else Verdict.DENIED for p in m}
        assert hand, "a scenario must state what it expects"
        sections: list[str] = []
        lab_vs_hand = m.diff(hand)
        if lab_vs_hand:
            sections.append(
                f"DATAPLANE differs from the hand-written table in {len(lab_vs_hand)} cells:\n"
                + "\n".join(f"  {x}" for x in lab_vs_hand[:40])
                + "\n"
                + m.render_diff(hand)
            )
        lab_vs_oracle = m.diff(oracle)
        if lab_vs_oracle:
            sections.append(
                f"DATAPLANE differs from explain in {len(lab_vs_oracle)} cells:\n"
                + "\n".join(f"  {x}" for x in lab_vs_oracle[:40])
            )
        oracle_vs_hand = sorted(p for p in hand if hand[p] is not oracle[p])
        if oracle_vs_hand:
            sections.append(
                f"EXPLAIN (oracle) differs from the hand-written table in "
                f"{len(oracle_vs_hand)} cells:\n"
                + "\n".join(
                    f"  {p}: hand {hand[p].name}, explain {oracle[p].name}"
                    for p in oracle_vs_hand[:40]
                )
            )
        print(f"\n--- {title or 'matrix'} [{self.backend}] {len(m)} probes, "
              f"{len(hand)} hand-checked, {m.elapsed:.2f}s\n{m.render()}")  # fmt: skip
        if sections:
            dumps = "\n".join(
                f"===== ruleset {node}\n{self.lab.ruleset_dump(node)}" for node in self.lab.nodes
            )
            print(dumps)
            raise AssertionError(f"{title} [{self.backend}]\n" + "\n\n".join(sections))
        return m


__all__ = [
    "CNP_API_VERSION",
    "EXT",
    "NODES",
    "PODS",
    "PROBE_TIMEOUT",
    "Scenario",
    "Service",
    "TcpClient",
    "TcpEcho",
    "cells",
    "cnp",
    "cnp_egress",
    "cnp_ingress",
    "cnp_named_port",
    "cnp_namespaces",
    "cnp_networks",
    "cnp_nodes",
    "cnp_pods",
    "cnp_port",
    "cnp_range",
    "expr",
    "labels",
    "netpol",
    "ns_of",
    "ns_sel",
    "pod_sel",
]


# --- ClusterNetworkPolicy (cnp() is defined above, with the conformance helpers)
def explain_probe(scenario: Scenario, probe: Probe) -> Any:
    """``agent.policy.explain``'s whole verdict for one probe of an applied scenario (the
    per-direction detail: which tier, policy, priority and rule decided)."""
    assert scenario.state is not None, "apply() first"
    assert probe.dst not in scenario.services, "judge a Service probe at its backend"
    state, family = scenario.state, probe.family
    source = resolve_endpoint(state, scenario._address(probe.src, family), family)
    destination = resolve_endpoint(state, scenario._address(probe.dst, family), family)
    return explain(state, source, destination, Protocol(probe.protocol), probe.port)


__all__ += ["cnp", "explain_probe"]
