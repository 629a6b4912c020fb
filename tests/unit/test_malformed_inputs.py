"""Malformed input through every entry point, judged by outcome against the baseline.

The cases come from ``tests.unit.malformed`` (a fixed seed, at least 1,000): a valid
baseline state plus one mutation each. Every case goes through

(a) the reader + ``build_state`` (``load_state_file``, what ``render``/``explain`` use);
(b) ``netpol-agent render`` and ``explain`` in-process (``agent.cli.main``);
(c) the file source (``FileSource.check_now()``) feeding a store like the reconciler's;
(d) the Kubernetes source, objects delivered by a scripted HTTP server (list + watch),
    since a real apiserver would validate them away.

Nothing may raise, print a traceback or hang (a per-case alarm is only a hang detector).

The oracle. Probes are every (source, destination, port/protocol) between the
baseline's pods, both families, addressed by IP, decided by ``explain``. Let ``B`` be the
baseline's verdict and ``M`` the mutated state's. ``T`` (touched) is the set of pods the
mutated object can affect: a Pod itself; every pod of a Namespace or of a NetworkPolicy's
namespace; every pod for a ClusterNetworkPolicy; nothing for a Node or for a file-level
mutation.

1. A file rejected as a whole (not UTF-8, bad YAML/JSON, too deep, alias bombs) is an
   error naming the file: ``render``/``explain`` exit 2; the file source keeps its last
   good state exactly and its health says why. Cases generated as whole-file errors must
   be rejected; a field mutation may also be (e.g. a ``\\ud800`` escape YAML refuses).
2. Otherwise the state loads, with at least one problem naming the touched object (or the
   document index), unless the input is a valid empty state (which loads with no
   objects and no problems), and:
   - probes touching no pod of ``T``: ``M == B`` (nothing else changes);
   - probes touching ``T``: ``M => B`` (a malformed object can only take allows away),
   - and a *quarantined* pod (its labels, uid, spec, nodeName or status unreadable, or
     its Namespace's labels) takes part in no allowed probe at all: it is isolated both
     ways and no selector matches it. These probes are judged like any other;
   - except probes touching an object that was *rejected whole* and probes addressed to
     a pod address the mutation made unreadable: those cannot be enforced and are
     counted, not judged. Only an unreadable identity (the document itself, its kind,
     metadata, name or namespace) may reject a Pod, Namespace or ClusterNetworkPolicy
     whole; any other mutation of one must leave it loaded (quarantined if it cannot be
     read; a ClusterNetworkPolicy denying where it cannot be read).
   - a mutated ClusterNetworkPolicy, read on its own, says nothing its baseline did not:
     each rule is the baseline's rule at that place (name aside) or a Deny of all
     traffic, and while any rule is not such a Deny its tier, priority and subject are
     the baseline's. This holds whatever explain makes of it.
3. (b) agrees with (a): the explain exit code is (a)'s verdict for that probe.
   (c) and (d) agree with (a): the objects the file source and the API source deliver
   parse to exactly the model objects (a) built from the same input (trimming keeps
   every field, including wrongly typed ones).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.cli import UsageError, load_state_file, main
from agent.control.file_source import FileSource
from agent.control.source import Change, Kind, trim
from agent.model import parse
from agent.model.objects import ClusterNetworkPolicy, Protocol, RuleAction
from agent.policy.explain import explain, resolve_endpoint
from agent.policy.state import BuiltState, ClusterState
from tests.unit.malformed import NODE, Case, Target, baseline, cases, to_yaml

HANG_SECONDS = 60
# Mutations that leave an object without a readable identity: it cannot be kept at all.
IDENTITY = frozenset({"", "kind", "metadata", "metadata.name", "metadata.namespace"})
PORTS = ((Protocol.TCP, 80), (Protocol.TCP, 5432), (Protocol.UDP, 53), (Protocol.TCP, 8000))

Probe = tuple[str, str, str, int]  # source IP, destination IP, protocol, port


@contextlib.contextmanager
def hang_detector(what: str, seconds: int = HANG_SECONDS) -> Iterator[None]:
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{what}: still running after {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- the oracle --------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    state: ClusterState
    owner: Mapping[str, str]  # pod IP -> pod key
    probes: tuple[Probe, ...]
    verdicts: Mapping[Probe, bool]
    pods_of_namespace: Mapping[str, frozenset[str]]


def verdicts(state: ClusterState, probes: Sequence[Probe]) -> dict[Probe, bool]:
    decided = {}
    for probe in probes:
        source, destination, protocol, port = probe
        version = 6 if ":" in source else 4
        verdict = explain(
            state,
            resolve_endpoint(state, source, version),
            resolve_endpoint(state, destination, version),
            Protocol(protocol),
            port,
        )
        decided[probe] = verdict.allowed
    return decided


def make_baseline() -> Baseline:
    built = parse.parse_objects(baseline())
    assert built.problems == ()
    state = ClusterState.of(
        built.namespaces, built.pods, built.policies, built.nodes, built.cluster_policies
    )
    owner = {str(ip): pod.key for pod in state.pods.values() for ip in pod.ips}
    probes = tuple(
        (source, destination, protocol.value, port)
        for source in owner
        for destination in owner
        if owner[source] != owner[destination] and (":" in source) == (":" in destination)
        for protocol, port in PORTS
    )
    by_namespace: dict[str, set[str]] = {}
    for pod in state.pods.values():
        by_namespace.setdefault(pod.namespace, set()).add(pod.key)
    return Baseline(
        state,
        owner,
        probes,
        verdicts(state, probes),
        {ns: frozenset(keys) for ns, keys in by_namespace.items()},
    )


@dataclass
class Tally:
    """Counts per entry point, for the issue's note."""

    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def fail(self, case: Case, message: str) -> None:
        self.failures.append(f"[{case.category}] {case.name}: {message}")

    def report(self, entry_point: str) -> str:
        parts = ", ".join(f"{key} {value}" for key, value in sorted(self.counts.items()))
        return f"{entry_point}: {parts}"


def _present(state: ClusterState, target: Target) -> bool:
    found: Mapping[str, Any] = {
        "Pod": state.pods,
        "Namespace": state.namespaces,
        "NetworkPolicy": state.policies,
        "Node": state.nodes,
        "ClusterNetworkPolicy": state.cluster_policies,
    }[target.kind]
    return target.key in found


def says_more(baseline: ClusterNetworkPolicy, mutated: ClusterNetworkPolicy) -> str | None:
    """What ``mutated`` says that ``baseline`` did not (None: nothing)."""
    said_more = []
    for direction in ("ingress", "egress"):
        written = getattr(baseline, direction)
        for rule in getattr(mutated, direction):
            if rule.action is RuleAction.DENY and rule.peers is None and rule.ports is None:
                continue  # denies all: says nothing new
            original = written[rule.index] if rule.index < len(written) else None
            same = original is not None and (rule.action, rule.peers, rule.ports) == (
                original.action,
                original.peers,
                original.ports,
            )
            if not same:
                said_more.append(f"{direction}[{rule.index}] {rule!r:.200}")
            elif (mutated.tier, mutated.priority, mutated.subject) != (
                baseline.tier,
                baseline.priority,
                baseline.subject,
            ):
                said_more.append(f"{direction}[{rule.index}] kept under another tier or subject")
    return "; ".join(said_more) or None


def judge_state(
    base: Baseline, case: Case, built: BuiltState, tally: Tally
) -> dict[Probe, bool] | None:
    """Apply the oracle to a state that loaded; returns the mutated verdicts."""
    state, problems = built.state, built.problems
    if case.expect == "empty":
        if state.pods or state.policies or state.namespaces or state.nodes or problems:
            tally.fail(case, f"an empty input loaded objects or problems: {problems[:3]}")
        tally.counts["empty states"] += 1
        return None
    if case.expect == "file-error":
        tally.fail(case, "a file that must be rejected as a whole was loaded")
        return None
    target = case.target
    harmless = case.name == "benign alias" or (
        case.category == "duplicate" and "differing" not in case.name
    )
    if not problems and not harmless and case.category != "duplicate":
        tally.fail(case, "loaded without any problem reported")
    if problems and target is not None:
        name = target.key.rpartition("/")[2]
        if not any(target.key in p or name in p or "document" in p for p in problems):
            tally.fail(case, f"no problem names {target.key}: {problems[:3]}")
    for problem in problems:
        if "Traceback" in problem or not problem.isprintable():
            tally.fail(case, f"problem text is not a clean line: {problem!r:.200}")
    touched: frozenset[str] = frozenset()
    rejected = False
    if target is not None:
        if target.kind == "Pod":
            touched = frozenset({target.key})
        elif target.kind in ("Namespace", "NetworkPolicy"):
            touched = base.pods_of_namespace.get(target.namespace, frozenset())
        elif target.kind == "ClusterNetworkPolicy":
            touched = frozenset(base.owner.values())
        rejected = not _present(state, target)
        if (
            rejected
            and target.kind in ("Pod", "Namespace", "ClusterNetworkPolicy")
            and case.field not in IDENTITY
        ):
            tally.fail(case, f"rejected whole for {case.field}: it must be kept, failing closed")
        if target.kind == "ClusterNetworkPolicy" and not rejected:
            tally.counts["cluster policies judged on their own"] += 1
            said = says_more(
                base.state.cluster_policies[target.key], state.cluster_policies[target.key]
            )
            if said is not None:
                tally.fail(case, f"the mutated policy says more than the baseline: {said}")
    tally.counts["rejected whole" if rejected else "loaded"] += 1
    quarantined = {
        pod.key
        for pod in state.pods.values()
        if pod.quarantined
        or (pod.namespace in state.namespaces and state.namespaces[pod.namespace].quarantined)
    }
    if quarantined:
        tally.counts["loaded with quarantined pods"] += 1
    # A pod address the mutated state no longer has cannot be enforced.
    present = {str(ip) for pod in state.pods.values() for ip in pod.ips}
    lost = {ip for ip, key in base.owner.items() if key in touched and ip not in present}
    judged = []
    for probe in base.probes:
        source, destination = base.owner[probe[0]], base.owner[probe[1]]
        if (source in touched or destination in touched) and (
            rejected or probe[0] in lost or probe[1] in lost
        ):
            tally.counts["probes not judged (rejected object)"] += 1
        else:
            judged.append(probe)
    mutated = verdicts(state, judged)
    for probe in judged:
        source, destination = base.owner[probe[0]], base.owner[probe[1]]
        before, after = base.verdicts[probe], mutated[probe]
        if source in quarantined or destination in quarantined:
            tally.counts["probes judged (quarantined: must be denied)"] += 1
            if after:
                tally.fail(case, f"a quarantined pod takes part in an allowed probe {probe}")
        if source in touched or destination in touched:
            tally.counts["probes judged (touched: may only lose allows)"] += 1
            if after and not before:
                tally.fail(case, f"fails open: {probe} allowed, the baseline denies it")
        else:
            tally.counts["probes judged (untouched: must be equal)"] += 1
            if after != before:
                tally.fail(case, f"changed an untouched probe {probe}: {before} -> {after}")
    return mutated


# --- (a) reader + build_state ------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """What (a) made of one case: a state, or the whole-file error."""

    built: BuiltState | None
    error: str | None
    verdicts: dict[Probe, bool] | None
    path: str = ""


def write_case(directory: Path, case: Case) -> Path:
    path = directory / case.filename
    path.write_bytes(case.data)
    return path


def run_reader(
    base: Baseline, all_cases: Sequence[Case], directory: Path
) -> tuple[Tally, dict[int, Loaded]]:
    tally = Tally()
    loaded: dict[int, Loaded] = {}
    for index, case in enumerate(all_cases):
        path = write_case(directory, case)
        tally.counts["cases"] += 1
        try:
            with hang_detector(case.name):
                built = load_state_file(str(path))
        except UsageError as error:
            loaded[index] = Loaded(None, str(error), None, str(path))
            tally.counts["file rejected"] += 1
            if str(path) not in str(error):
                tally.fail(case, f"the error does not name the file: {error}")
            if case.expect == "empty":
                tally.fail(case, f"a valid empty state was rejected: {error}")
            continue
        except Exception as error:
            tally.fail(case, f"raised {type(error).__name__}: {error!r:.300}")
            continue
        with hang_detector(case.name):
            decided = judge_state(base, case, built, tally)
        loaded[index] = Loaded(built, None, decided, str(path))
    return tally, loaded


# --- (b) the command line ----------------------------------------------------------------


class _StrictText(io.TextIOWrapper):
    """A UTF-8 text stream that refuses what a real terminal or pipe would refuse."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)

    def text(self) -> str:
        self.flush()
        buffer = self.buffer
        assert isinstance(buffer, io.BytesIO)
        return buffer.getvalue().decode("utf-8")


def run_cli(argv: list[str]) -> tuple[int | str, str, str]:
    stdout, stderr = _StrictText(), _StrictText()
    handler = logging.StreamHandler(stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code: int | str = main(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 2
            except Exception as error:
                code = f"raised {type(error).__name__}: {error!r:.300}"
    finally:
        root.removeHandler(handler)
    return code, stdout.text(), stderr.text()


def run_commands(
    base: Baseline, all_cases: Sequence[Case], loaded: Mapping[int, Loaded], directory: Path
) -> Tally:
    tally = Tally()
    for index, case in enumerate(all_cases):
        if index not in loaded:
            continue  # (a) already failed it
        result = loaded[index]
        path = str(write_case(directory, case))
        probe = base.probes[index % len(base.probes)]
        family = "ipv6" if ":" in probe[0] else "ipv4"
        runs = {
            "render": ["render", "--node", NODE, "--family", "ipv4", "-f", path],
            "explain": [
                "explain", "-f", path, "--from", probe[0], "--to", probe[1],
                "--port", f"{probe[3]}/{probe[2]}", "--family", family,
            ],
        }  # fmt: skip
        for command, argv in runs.items():
            with hang_detector(f"{command} {case.name}"):
                code, out, err = run_cli(argv)
            tally.counts[f"{command} exit {code}" if isinstance(code, int) else "crashed"] += 1
            if isinstance(code, str):
                tally.fail(case, f"{command} {code}")
                continue
            if "Traceback" in out or "Traceback" in err or "Logging error" in err:
                tally.fail(case, f"{command} printed a traceback: {err[-500:]}")
            if result.error is not None:
                if code != 2 or f"netpol-agent {command}:" not in err or path not in err:
                    tally.fail(case, f"{command}: exit {code} for a rejected file: {err[-300:]}")
                continue
            assert result.built is not None
            if command == "render" and code != 0:
                tally.fail(case, f"render exit {code}: {err[-300:]}")
            if command == "explain":
                # An empty state isolates nothing: everything is allowed.
                if result.verdicts is None:
                    allowed = True
                elif probe in result.verdicts:
                    allowed = result.verdicts[probe]
                else:  # a probe (a) did not judge: ask explain on (a)'s state
                    allowed = verdicts(result.built.state, [probe])[probe]
                expected = 0 if allowed else 1
                if code != expected:
                    tally.fail(case, f"explain exit {code}, (a) says {expected}: {err[-300:]}")
            for problem in result.built.problems[:3]:
                if problem.replace(result.path, path) not in err:
                    tally.fail(case, f"{command} did not report {problem!r:.200}")
    return tally


# --- (c) the file source, into a store like the reconciler's ----------------------------


class ModelStore:
    """Folds change batches into parsed model objects, as ``Reconciler.on_changes``."""

    def __init__(self) -> None:
        self.objects: dict[Kind, dict[str, Any]] = {kind: {} for kind in Kind}

    def __call__(self, changes: Sequence[Change]) -> None:
        for change in changes:
            bucket = self.objects[change.kind]
            if change.obj is None:
                bucket.pop(change.key, None)
                continue
            try:
                bucket[change.key] = PARSERS[change.kind](change.obj)
            except parse.InvalidObject:
                bucket.pop(change.key, None)

    def by_model_key(self) -> dict[str, dict[str, Any]]:
        return {
            "pods": {pod.key: pod for pod in self.objects[Kind.POD].values()},
            "namespaces": {ns.name: ns for ns in self.objects[Kind.NAMESPACE].values()},
            "policies": {p.key: p for p in self.objects[Kind.NETWORK_POLICY].values()},
            "nodes": {node.name: node for node in self.objects[Kind.NODE].values()},
        }


PARSERS: Mapping[Kind, Callable[[Any], Any]] = {
    Kind.POD: parse.parse_pod,
    Kind.NAMESPACE: parse.parse_namespace,
    Kind.NETWORK_POLICY: parse.parse_network_policy,
    Kind.NODE: parse.parse_node,
    Kind.CLUSTER_NETWORK_POLICY: parse.parse_cluster_network_policy,
}


def model_of(state: ClusterState) -> dict[str, dict[str, Any]]:
    return {
        "pods": dict(state.pods),
        "namespaces": dict(state.namespaces),
        "policies": dict(state.policies),
        "nodes": dict(state.nodes),
    }


def with_problems(model: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Model objects with the problems they carry (which ``==`` leaves out)."""
    return {
        kind: {key: (obj, getattr(obj, "problems", ())) for key, obj in objects.items()}
        for kind, objects in model.items()
    }


def run_file_source(
    base: Baseline, all_cases: Sequence[Case], loaded: Mapping[int, Loaded], directory: Path
) -> Tally:
    tally = Tally()
    baseline_text = to_yaml(baseline())
    assert baseline_text is not None
    baseline_model = with_problems(model_of(base.state))
    for index, case in enumerate(all_cases):
        if index not in loaded:
            continue
        result = loaded[index]
        path = directory / "source.state"
        path.write_bytes(baseline_text)
        store = ModelStore()
        source = FileSource(path, poll_interval=None)
        source.start(store)
        path.write_bytes(case.data)
        status = path.stat()
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000))
        try:
            with hang_detector(f"file source {case.name}"):
                source.check_now()
                health = source.health
        except Exception as error:
            tally.fail(case, f"file source raised {type(error).__name__}: {error!r:.300}")
            continue
        finally:
            source.stop()
        got = with_problems(store.by_model_key())
        error = next((k.last_error for k in health.kinds.values() if k.last_error), None)
        if result.error is not None or not case.data:
            tally.counts["kept the last good state"] += 1
            if got != baseline_model:
                tally.fail(case, "the file source did not keep the last good state")
            if error is None or health.connected:
                tally.fail(case, "the file source's health does not report the unusable file")
            continue
        assert result.built is not None
        tally.counts["applied"] += 1
        if error is not None:
            tally.fail(case, f"health reports an error for a usable file: {error}")
        expected = with_problems(model_of(result.built.state))
        if got != expected:
            for kind in expected:
                if got[kind] != expected[kind]:
                    differing = sorted(
                        key
                        for key in set(got[kind]) | set(expected[kind])
                        if got[kind].get(key) != expected[kind].get(key)
                    )
                    first = differing[0]
                    tally.fail(
                        case,
                        f"file source {kind} differ from (a) at {differing}: "
                        f"{got[kind].get(first)!r:.300} != {expected[kind].get(first)!r:.300}",
                    )
    return tally


# --- (d) the Kubernetes source against a scripted server --------------------------------

RESOURCE_PATHS = {
    "Pod": "/api/v1/pods",
    "Namespace": "/api/v1/namespaces",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/networkpolicies",
    "Node": "/api/v1/nodes",
}
KIND_OF = {
    "Pod": Kind.POD,
    "Namespace": Kind.NAMESPACE,
    "NetworkPolicy": Kind.NETWORK_POLICY,
    "Node": Kind.NODE,
}


def _outcome(kind: Kind, obj: Any) -> tuple[str, Any, tuple[str, ...]]:
    try:
        parsed = PARSERS[kind](obj)
    except parse.InvalidObject as error:
        return ("rejected", str(error), ())
    return ("parsed", parsed, tuple(getattr(parsed, "problems", ())))


def run_kube_source(all_cases: Sequence[Case]) -> Tally:
    from kubernetes import client as k8s_client

    from agent.control.kube_source import KubeSource, KubeSourceConfig
    from tests.api.test_kube_source_fake import Reply, Script, make_handler

    tally = Tally()
    objects = baseline()
    script = Script()
    expected: dict[str, tuple[Case, Kind, Any]] = {}
    untagged: list[Case] = []
    events: dict[str, list[Any]] = {path: [] for path in RESOURCE_PATHS.values()}
    for index, case in enumerate(all_cases):
        mutated = case.mutated
        if mutated is None or case.target is None or case.category == "huge":
            continue
        kind_name = case.target.kind
        if kind_name not in KIND_OF:
            continue  # a kind this source does not watch
        if mutated.get("kind") != kind_name:
            continue  # a kind mutation: a real server never sends another kind
        original = next(o for o in objects if o["kind"] == kind_name and _key(o) == case.target.key)
        tag = f"case-{index}"
        delivered = json.loads(json.dumps(mutated))
        metadata = delivered.get("metadata")
        if isinstance(metadata, dict):
            metadata["resourceVersion"] = tag
            expected[tag] = (case, KIND_OF[kind_name], mutated)
        else:
            untagged.append(case)
        restore = json.loads(json.dumps(original))
        restore["metadata"]["resourceVersion"] = f"restore-{index}"
        events[RESOURCE_PATHS[kind_name]] += [
            {"type": "MODIFIED", "object": delivered},
            {"type": "MODIFIED", "object": restore},
        ]
    for kind_name, path in RESOURCE_PATHS.items():
        items = [o for o in objects if o["kind"] == kind_name]
        script.add(
            path,
            "list",
            Reply(
                body={
                    "kind": f"{kind_name}List",
                    "metadata": {"resourceVersion": "1"},
                    "items": items,
                }
            ),
        )
        sentinel = {"metadata": {"name": "sentinel", "namespace": "ns-a", "resourceVersion": "end"}}
        script.add(
            path,
            "watch",
            Reply(events=[*events[path], {"type": "ADDED", "object": sentinel}], hang=True),
        )

    seen: dict[str, list[Any]] = {}
    ended: set[Kind] = set()
    lock = threading.Lock()
    store = ModelStore()

    def sink(changes: Sequence[Change]) -> None:
        store(changes)
        with lock:
            for change in changes:
                if change.obj is None:
                    continue
                metadata = change.obj.get("metadata")
                version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
                if version == "end":
                    ended.add(change.kind)
                elif isinstance(version, str) and version.startswith("case-"):
                    seen.setdefault(version, []).append(change.obj)
                elif not isinstance(metadata, Mapping):
                    seen.setdefault("untagged", []).append((change.kind, change.obj))

    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(script))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = k8s_client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    api: Any = k8s_client.ApiClient(configuration)
    config = KubeSourceConfig(page_size=500, backoff_initial_seconds=0.01, backoff_max_seconds=0.05)
    source = KubeSource(api, config)
    try:
        with hang_detector("the API source"):
            source.start(sink)
            deadline = time.monotonic() + HANG_SECONDS - 5
            while len(ended) < len(RESOURCE_PATHS) and time.monotonic() < deadline:
                time.sleep(0.05)
            health = source.health
    finally:
        source.stop()
        script.closing.set()
        server.shutdown()
        server.server_close()
        api.close()
    if len(ended) < len(RESOURCE_PATHS):
        tally.failures.append(
            f"the API source stalled: kinds done {sorted(k.value for k in ended)}"
        )
    for kind, kind_health in health.kinds.items():
        if kind_health.list_errors or kind_health.watch_errors:
            tally.failures.append(
                f"{kind.value}: a malformed object broke the stream: {kind_health}"
            )
    for tag, (case, kind, mutated) in expected.items():
        tally.counts["objects delivered"] += 1
        want = _outcome(kind, mutated)
        got_objects = seen.get(tag)
        if not got_objects:
            # No change is emitted only if trimming makes it equal to what was stored.
            if _outcome(kind, trim(kind, mutated)) != _outcome(kind, trim(kind, _original(case))):
                tally.fail(case, "the API source never delivered this object")
            else:
                tally.counts["no change (same content)"] += 1
            continue
        got = _outcome(kind, got_objects[-1])
        tally.counts[want[0]] += 1
        if got != want:
            tally.fail(case, f"API delivery parses to {got!r:.300}, the file to {want!r:.300}")
    # Objects without readable metadata carry no tag: each must be rejected (below).
    tally.counts["objects delivered"] += len(untagged)
    tally.counts["rejected"] += len(untagged)
    for kind, obj in seen.get("untagged", []):
        if _outcome(kind, obj)[0] != "rejected":
            tally.failures.append(f"an object without readable metadata was accepted: {obj!r:.200}")
    return tally


def _key(obj: Mapping[str, Any]) -> str:
    metadata = obj["metadata"]
    if "namespace" in metadata:
        return f"{metadata['namespace']}/{metadata['name']}"
    return str(metadata["name"])


def _original(case: Case) -> Any:
    assert case.target is not None
    return next(
        o for o in baseline() if o["kind"] == case.target.kind and _key(o) == case.target.key
    )


# --- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated() -> tuple[Baseline, list[Case]]:
    return make_baseline(), cases()


@pytest.fixture(scope="module")
def through_reader(
    generated: tuple[Baseline, list[Case]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Tally, dict[int, Loaded]]:
    base, all_cases = generated
    return run_reader(base, all_cases, tmp_path_factory.mktemp("reader"))


def _check(tally: Tally, entry_point: str, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\n{tally.report(entry_point)}")
    assert not tally.failures, "\n".join(tally.failures[:25]) + f"\n({len(tally.failures)} in all)"


def test_generator_makes_enough_cases_of_every_kind(
    generated: tuple[Baseline, list[Case]],
) -> None:
    base, all_cases = generated
    assert len(all_cases) >= 1000
    categories = Counter(case.category for case in all_cases)
    for category in ("wrong-type", "numbers", "cidr", "unknown-enum", "huge", "non-utf8",
                     "yaml-bomb", "duplicate", "empty", "cnp-shape", "unsupported"):  # fmt: skip
        assert categories[category] > 0, category
    assert any(base.verdicts.values()) and not all(base.verdicts.values())
    cluster_cases = [c for c in all_cases if c.target and c.target.kind == "ClusterNetworkPolicy"]
    assert len(cluster_cases) >= 300


def test_reader_and_build_state(
    through_reader: tuple[Tally, dict[int, Loaded]], capsys: pytest.CaptureFixture[str]
) -> None:
    _check(through_reader[0], "reader+build_state", capsys)


def test_render_and_explain_commands(
    generated: tuple[Baseline, list[Case]],
    through_reader: tuple[Tally, dict[int, Loaded]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base, all_cases = generated
    _check(run_commands(base, all_cases, through_reader[1], tmp_path), "render/explain", capsys)


def test_file_source(
    generated: tuple[Baseline, list[Case]],
    through_reader: tuple[Tally, dict[int, Loaded]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base, all_cases = generated
    with caplog_off():
        tally = run_file_source(base, all_cases, through_reader[1], tmp_path)
    _check(tally, "file source", capsys)


def test_kube_source_through_a_scripted_server(
    generated: tuple[Baseline, list[Case]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, all_cases = generated
    with caplog_off():
        tally = run_kube_source(all_cases)
    _check(tally, "API source", capsys)


@contextlib.contextmanager
def caplog_off() -> Iterator[None]:
    """The sources log every problem; thousands of lines would only slow the run."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
