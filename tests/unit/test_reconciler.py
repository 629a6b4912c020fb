"""The reconcile loop's timing rules, with a dataplane that records instead of writing."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from agent.control.outcome import Cause
from agent.control.reconciler import Reconciler, ReconcilerConfig
from agent.control.source import Change, Kind, SourceHealth
from agent.dataplane.backend import BackendError
from agent.dataplane.table import SyncReport
from agent.rules import Family, Ruleset


class Source:
    def __init__(self, synced: bool) -> None:
        self.synced = synced

    def start(self, sink: Any) -> None:
        pass

    def stop(self) -> None:
        pass

    @property
    def health(self) -> SourceHealth:
        return SourceHealth()


class Dataplane:
    def __init__(self, failures: int = 0) -> None:
        self.calls: list[tuple[float, bool]] = []
        self.failures = failures

    def sync(
        self, rulesets: Mapping[Family, Ruleset], *, full: bool, verify: bool = False
    ) -> SyncReport:
        self.calls.append((time.monotonic(), full))
        if self.failures:
            self.failures -= 1
            raise BackendError("restore failed")
        return SyncReport(families={}, duration_seconds=0.0)


def _run(reconciler: Reconciler, seconds: float) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=reconciler.run, args=(stop,))
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(5)


def test_the_loop_heartbeats_while_idle_and_before_the_first_listing() -> None:
    beats: list[float] = []
    dataplane = Dataplane()
    reconciler = Reconciler(
        ReconcilerConfig(node_name="n", resync_period=3600),
        Source(synced=False),  # type: ignore[arg-type]
        dataplane,  # type: ignore[arg-type]
        on_heartbeat=lambda: beats.append(time.monotonic()),
    )
    _run(reconciler, 2.5)
    assert len(beats) >= 2
    assert dataplane.calls == []  # nothing is written before the source has listed


def test_a_failed_initial_write_backs_off_and_retries_as_a_full_rewrite() -> None:
    dataplane = Dataplane(failures=1)
    config = ReconcilerConfig(
        node_name="n", min_interval=0.0, resync_period=3600, retry_initial=0.8, retry_max=0.8
    )
    reconciler = Reconciler(config, Source(synced=True), dataplane)  # type: ignore[arg-type]
    reconciler.on_changes([Change(Kind.NAMESPACE, "x", {"metadata": {"name": "x"}})])
    _run(reconciler, 2.0)
    assert len(dataplane.calls) == 2, dataplane.calls  # the failure, then one retry
    (first, _), (second, retried_full) = dataplane.calls
    assert second - first >= 0.35  # jittered between half and all of the 0.8 s backoff
    assert retried_full
    assert reconciler.last_outcome is not None and reconciler.last_outcome.cause is Cause.RETRY


# --- a batch is recorded as applied only after it was applied ------------------------------


def _write(path: Any, objects: list[Any]) -> None:
    import os

    import yaml

    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(objects))
    os.replace(tmp, path)
    stamp = time.time_ns() + len(objects) * 1_000_000_000  # a new mtime every write
    os.utime(path, ns=(stamp, stamp))


def test_one_object_the_parser_chokes_on_does_not_stop_the_rest_of_its_batch(
    monkeypatch: Any,
) -> None:
    from agent.control import reconciler as module
    from tests.unit import builders as b

    real = module._parse

    def flaky(kind: Kind, obj: Mapping[str, Any]) -> Any:
        if obj.get("metadata", {}).get("name") == "evil":
            raise TypeError("unexpected shape")  # a parser bug, not an InvalidObject
        return real(kind, obj)

    monkeypatch.setattr(module, "_parse", flaky)
    reconciler = Reconciler(ReconcilerConfig(node_name="n"), Source(synced=True), Dataplane())  # type: ignore[arg-type]
    good = b.policy("x/good", podSelector={})
    evil = b.policy("x/evil", podSelector={})
    changes = [
        Change(Kind.NETWORK_POLICY, "x/evil", evil),
        Change(Kind.NETWORK_POLICY, "x/good", good),
    ]
    reconciler.on_changes(changes)
    state = reconciler.snapshot()
    assert sorted(state.policies) == ["x/evil", "x/good"]  # the valid one is taken
    broken = state.policies["x/evil"]
    # Fails closed: it isolates every pod of its namespace, both ways, allowing nothing.
    assert broken.pod_selector is None and len(broken.policy_types) == 2
    assert broken.ingress == () and broken.egress == ()
    assert "unexpected shape" in broken.problems[0]


def test_a_batch_that_raises_in_the_sink_is_delivered_again_whole(
    tmp_path: Any, monkeypatch: Any
) -> None:
    from agent.control.file_source import FileSource
    from tests.unit import builders as b

    path = tmp_path / "state.yaml"
    namespace = b.namespace("x")
    _write(path, [namespace])
    reconciler = Reconciler(ReconcilerConfig(node_name="n"), Source(synced=True), Dataplane())  # type: ignore[arg-type]
    source = FileSource(path, poll_interval=None)
    source.start(reconciler.on_changes)

    # The consumer fails on the next batch as a whole (e.g. a bug after parsing).
    real = reconciler.on_changes
    calls = {"n": 0}

    def failing_once(changes: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        real(changes)

    monkeypatch.setattr(source, "_sink", failing_once)
    _write(path, [namespace, b.policy("x/a", podSelector={})])
    with pytest.raises(RuntimeError):
        source.check_now()
    assert "x/a" not in reconciler.snapshot().policies
    assert not source.health.kinds[Kind.POD].connected  # reported, so /readyz says so
    # Next poll: the same file is read again and the whole batch delivered.
    assert [c.key for c in source.check_now()] == ["x/a"]
    assert "x/a" in reconciler.snapshot().policies
    # And a later valid file is diffed against what was delivered, not what was read.
    _write(path, [namespace, b.policy("x/a", podSelector={}), b.policy("x/b", podSelector={})])
    assert [c.key for c in source.check_now()] == ["x/b"]
    assert set(reconciler.snapshot().policies) == {"x/a", "x/b"}


def test_a_failed_compile_keeps_the_changes_owed_and_retries() -> None:
    dataplane = Dataplane()
    reconciler = Reconciler(ReconcilerConfig(node_name="n"), Source(synced=True), dataplane)  # type: ignore[arg-type]
    reconciler.on_changes([Change(Kind.NAMESPACE, "x", {"metadata": {"name": "x"}})])

    def broken(state: Any) -> Any:
        raise RuntimeError("compiler bug")

    reconciler.compile = broken  # type: ignore[method-assign]
    outcome = reconciler.run_pass(Cause.INITIAL)
    assert not outcome.succeeded and "compiler bug" in (outcome.error or "")
    assert dataplane.calls == []  # nothing written
    assert reconciler.runner.retry_pending
    del reconciler.compile
    retried = reconciler.run_pass(Cause.RETRY)
    assert retried.succeeded
    assert [c.key for c in retried.changes] == ["x"]  # still owed, not lost


def test_a_failing_family_is_named_in_the_outcome() -> None:
    from agent.dataplane.table import DataplaneSyncError

    class HalfBroken(Dataplane):
        def sync(self, rulesets: Any, *, full: bool, verify: bool = False) -> SyncReport:
            raise DataplaneSyncError(
                SyncReport(families={}, duration_seconds=0.0),
                {Family.IPV6: BackendError("ip6tables-restore failed")},
            )

    reconciler = Reconciler(ReconcilerConfig(node_name="n"), Source(synced=True), HalfBroken())  # type: ignore[arg-type]
    outcome = reconciler.run_pass(Cause.INITIAL)
    assert outcome.family_errors == {Family.IPV6: "ip6tables-restore failed"}


def test_a_file_the_parser_blows_up_on_is_reported_once_not_every_poll(
    tmp_path: Any, monkeypatch: Any, caplog: Any
) -> None:
    import logging

    from agent.control import file_source
    from agent.control.file_source import FileSource
    from tests.unit import builders as b

    path = tmp_path / "state.yaml"
    _write(path, [b.namespace("x")])
    delivered: list[Any] = []
    source = FileSource(path, poll_interval=None)
    source.start(delivered.extend)

    def deep(text: str, origin: str = "") -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(file_source, "parse_state", deep)
    _write(path, [b.namespace("x"), b.namespace("y")])
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        for _ in range(5):
            assert source.check_now() == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "RecursionError" in errors[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)  # no traceback
    assert source.health.kinds[Kind.NAMESPACE].list_errors == 1
    assert [c.key for c in delivered] == ["x"]  # the previous state stays in force


def test_an_unreadable_file_is_reported_until_it_is_readable_again(tmp_path: Any) -> None:
    import os

    from agent.control.file_source import FileSource
    from tests.unit import builders as b

    path = tmp_path / "state.yaml"
    _write(path, [b.namespace("x")])
    source = FileSource(path, poll_interval=None)
    source.start(lambda changes: None)
    os.rename(path, tmp_path / "away.yaml")
    source.check_now()
    health = source.health.kinds[Kind.POD]
    assert not health.connected and "cannot stat" in (health.last_error or "")
    os.rename(tmp_path / "away.yaml", path)  # back, same bytes
    source.check_now()
    health = source.health.kinds[Kind.POD]
    assert health.connected and health.last_error is None


class _Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def _drive(reconciler: Reconciler, clock: _Clock, until: float) -> None:
    while clock.now < until:
        delay = reconciler.runner.step()
        if delay > 0:
            clock.now += min(delay, until - clock.now)


def test_the_loop_on_a_fake_clock_coalesces_retries_and_resyncs() -> None:
    clock = _Clock()
    dataplane = Dataplane(failures=1)
    config = ReconcilerConfig(
        node_name="n", min_interval=1.0, resync_period=30.0, retry_initial=2.0, retry_max=2.0
    )
    reconciler = Reconciler(config, Source(synced=True), dataplane, clock=clock)  # type: ignore[arg-type]
    causes: list[tuple[float, Cause]] = []
    run_pass = reconciler.run_pass

    def recording(cause: Cause, *, record: bool = True) -> Any:
        causes.append((clock.now, cause))
        return run_pass(cause, record=record)

    reconciler.run_pass = recording  # type: ignore[method-assign]
    _drive(reconciler, clock, 510.0)
    # The initial pass failed; the retry came 1-2 s later (jittered backoff), as a full one.
    assert [c for _, c in causes] == [Cause.INITIAL, Cause.RETRY]
    assert 501.0 <= causes[1][0] <= 502.0
    # A burst of changes is one pass.
    for name in "abcde":
        reconciler.on_changes([Change(Kind.NAMESPACE, name, {"metadata": {"name": name}})])
    _drive(reconciler, clock, 520.0)
    assert [c for _, c in causes[2:]] == [Cause.CHANGE]
    assert len(reconciler.last_outcome.changes) == 5  # type: ignore[union-attr]
    # Nothing more until the resync period after the last full pass.
    _drive(reconciler, clock, causes[1][0] + 30.0 + 0.5)
    assert [c for _, c in causes[3:]] == [Cause.RESYNC]
