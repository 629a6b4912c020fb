"""FileSource: initial batch, diffs on change, and a broken file never loses state."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.control.file_source import FileSource, FileSourceError, State, parse_state
from agent.control.source import Change, Kind

NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata:
  name: prod
  labels: {team: a}
"""

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: prod
  uid: u-1
  labels: {app: web}
  annotations: {big: "dropped by trimming"}
spec:
  nodeName: node-1
  containers:
  - name: c
    image: nginx
    ports:
    - {name: http, containerPort: 80}
  - name: no-ports
    image: busybox
status:
  phase: Running
  podIP: 10.0.0.5
  podIPs: [{ip: 10.0.0.5}]
  conditions: [{type: Ready, status: "True"}]
"""

POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: prod
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""

NODE = """\
apiVersion: v1
kind: Node
metadata:
  name: node-1
status:
  addresses: [{type: InternalIP, address: 192.0.2.1}]
"""


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[Change]] = []
        self.lock = threading.Lock()

    def __call__(self, changes: Sequence[Change]) -> None:
        with self.lock:
            self.batches.append(list(changes))

    def flat(self) -> list[Change]:
        with self.lock:
            return [change for batch in self.batches for change in batch]


def write(path: Path, *documents: str) -> None:
    """Replace the file atomically with a new mtime, as a well-behaved writer does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("---\n".join(documents))
    os.replace(tmp, path)
    bump_mtime(path)


def bump_mtime(path: Path) -> None:
    # Filesystems with coarse timestamps could keep the old mtime; the size or inode
    # normally differ anyway, but make the stamp change for certain.
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000))


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    path = tmp_path / "state.yaml"
    write(path, NAMESPACE, POD, POLICY, NODE)
    return path


def test_initial_batch_per_kind_trimmed(state_file: Path) -> None:
    recorder = Recorder()
    source = FileSource(state_file, poll_interval=None)
    assert not source.synced
    source.start(recorder)
    assert source.synced
    assert len(recorder.batches) == len(Kind)
    by_kind = {batch[0].kind: batch for batch in recorder.batches if batch}
    assert {change.key for change in by_kind[Kind.NAMESPACE]} == {"prod"}
    assert {change.key for change in by_kind[Kind.NETWORK_POLICY]} == {"prod/deny-all"}
    assert {change.key for change in by_kind[Kind.NODE]} == {"node-1"}
    (pod,) = by_kind[Kind.POD]
    assert pod.key == "prod/web"
    assert pod.obj == {
        "metadata": {"namespace": "prod", "name": "web", "uid": "u-1", "labels": {"app": "web"}},
        "spec": {
            "nodeName": "node-1",
            "containers": [{"ports": [{"containerPort": 80, "name": "http"}]}],
        },
        "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}]},
    }
    assert source.health.connected
    assert source.health.kinds[Kind.POD].objects == 1


def test_change_is_emitted_as_diff(state_file: Path) -> None:
    recorder = Recorder()
    source = FileSource(state_file, poll_interval=None)
    source.start(recorder)
    recorder.batches.clear()

    assert source.check_now() == []  # nothing changed

    relabelled = NAMESPACE.replace("team: a", "team: b")
    conditions_only = POD.replace('status: "True"', 'status: "False"')
    write(state_file, relabelled, conditions_only, NODE)  # policy removed
    changes = source.check_now()
    assert {(c.kind, c.key, c.obj is None) for c in changes} == {
        (Kind.NAMESPACE, "prod", False),
        (Kind.NETWORK_POLICY, "prod/deny-all", True),
    }
    assert recorder.flat() == changes
    namespace = next(c for c in changes if c.kind is Kind.NAMESPACE)
    assert namespace.obj is not None
    assert namespace.obj["metadata"]["labels"] == {"team": "b"}

    # Rewriting identical bytes (touch) is not a change.
    bump_mtime(state_file)
    assert source.check_now() == []


def test_broken_yaml_keeps_previous_state(
    state_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    source = FileSource(state_file, poll_interval=None)
    source.start(recorder)
    recorder.batches.clear()

    state_file.write_text("kind: Pod\nmetadata: {name: [unclosed\n")
    bump_mtime(state_file)
    with caplog.at_level(logging.ERROR):
        assert source.check_now() == []
    assert "invalid YAML" in caplog.text
    assert "keeping the previous state" in caplog.text
    assert recorder.batches == []
    health = source.health
    assert not health.connected
    assert health.kinds[Kind.POD].last_error is not None
    assert health.kinds[Kind.POD].objects == 1
    assert source.synced

    # An empty file (a non-atomic writer caught mid-write) is not "delete everything".
    state_file.write_text("")
    bump_mtime(state_file)
    assert source.check_now() == []

    # Repairing the file with one change emits only that change.
    write(state_file, NAMESPACE, POD, NODE)
    changes = source.check_now()
    assert [(c.kind, c.key, c.obj) for c in changes] == [
        (Kind.NETWORK_POLICY, "prod/deny-all", None)
    ]
    assert source.health.connected


def load(path: Path) -> State:
    return parse_state(path.read_bytes(), str(path)).state


def test_unknown_kind_is_reported_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: svc}\n"
    nameless = "apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n"
    write(path, service, NAMESPACE, nameless)
    parsed = parse_state(path.read_bytes(), str(path))
    (problem,) = parsed.problems
    assert "document 1: kind 'Service' svc is not a kind the agent reads" in problem
    assert set(parsed.state[Kind.NAMESPACE]) == {"prod"}
    # Trimmed as is: the reconciler's parsing rejects it, naming the missing field.
    assert list(parsed.state[Kind.POD]) == ["x/None"]


def test_kubectl_list_and_default_namespace(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    pod_without_namespace = POD.replace("  namespace: prod\n", "")
    items = "\n".join(
        "- " + line if i == 0 else "  " + line
        for i, line in enumerate(pod_without_namespace.splitlines())
    )
    path.write_text(f"apiVersion: v1\nkind: List\nitems:\n{items}\n")
    assert set(load(path)[Kind.POD]) == {"default/web"}


def test_typed_lists_and_json_are_read_as_render_reads_them(tmp_path: Path) -> None:
    # A PodList used to render but not run: one reader now serves both.
    path = tmp_path / "state.json"
    pod = {"kind": "Pod", "metadata": {"name": "web", "namespace": "prod"}}
    path.write_text(json.dumps({"kind": "List", "items": [{"kind": "PodList", "items": [pod]}]}))
    assert set(load(path)[Kind.POD]) == {"prod/web"}


def test_a_failing_consumer_gets_the_batch_again(state_file: Path) -> None:
    batches: list[list[Change]] = []
    fail = [False]

    def sink(changes: Sequence[Change]) -> None:
        if fail[0] and any(c.kind is Kind.NETWORK_POLICY for c in changes):
            fail[0] = False
            raise RuntimeError("consumer bug")
        batches.append(list(changes))

    source = FileSource(state_file, poll_interval=None)
    source.start(sink)
    batches.clear()
    fail[0] = True
    write(state_file, NAMESPACE, POD, NODE)  # policy removed
    with pytest.raises(RuntimeError):
        source.check_now()
    # Not recorded as delivered: the next check delivers the deletion again.
    assert [(c.kind, c.key, c.obj) for c in source.check_now()] == [
        (Kind.NETWORK_POLICY, "prod/deny-all", None)
    ]
    assert len(batches) == 1


@pytest.mark.parametrize(
    "content",
    [
        b"a: " + b"[" * 600 + b"]" * 600 + b"\n",  # deep nesting (a RecursionError before)
        b"a: &a [*a]\n",  # a recursive alias
        b"kind: Pod\nmetadata: {name: \xff}\n",  # not UTF-8
    ],
    ids=["deep", "recursive-alias", "not-utf8"],
)
def test_unusable_file_is_one_log_line_and_health_keeps_saying_why(
    state_file: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    source = FileSource(state_file, poll_interval=None)
    source.start(Recorder())
    state_file.write_bytes(content)
    bump_mtime(state_file)
    with caplog.at_level(logging.DEBUG):
        for _ in range(5):
            assert source.check_now() == []
            bump_mtime(state_file)  # touched again: still the same failure
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "Traceback" not in caplog.text
    assert str(state_file) in errors[0].getMessage()
    health = source.health
    assert not health.connected
    assert all(
        kind.last_error == health.kinds[Kind.POD].last_error for kind in health.kinds.values()
    )
    assert health.kinds[Kind.POD].objects == 1  # the last good state stays


def test_broken_file_at_start_raises(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    path.write_text("a: [b\n")
    with pytest.raises(FileSourceError, match="invalid YAML"):
        FileSource(path, poll_interval=None).start(Recorder())
    with pytest.raises(FileSourceError, match="cannot"):
        FileSource(tmp_path / "missing.yaml", poll_interval=None).start(Recorder())


def test_polling_thread_picks_up_changes_and_stops(state_file: Path) -> None:
    recorder = Recorder()
    source = FileSource(state_file, poll_interval=0.02)
    source.start(recorder)
    initial_batches = len(recorder.batches)
    write(state_file, NAMESPACE, POD, POLICY)  # node removed
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(recorder.batches) == initial_batches:
        time.sleep(0.01)
    assert [(c.kind, c.key, c.obj) for c in recorder.batches[-1]] == [(Kind.NODE, "node-1", None)]
    started = time.monotonic()
    source.stop()
    assert time.monotonic() - started < 1
