"""The agent built from an AgentConfig, with a backend that records instead of writing:
logs on stdout in logfmt, one line per event, quiet when nothing happens."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent import app
from agent.cli import main
from agent.config import AgentConfig, SourceConfig
from agent.dataplane.backend import ApplyResult
from agent.dataplane.conntrack import ConntrackEntry, ListedEntries
from agent.dataplane.plan import TablePlan
from agent.dataplane.restore import render_restore
from agent.dataplane.state import ForwardJump, ProgrammedState, canonical_jump_spec
from agent.rules import Family
from tests.unit.test_cli import write_state

LOGFMT = re.compile(r'^ts=\S+Z level=(debug|info|warning|error) logger=\S+ msg=("[^"]*"|\S+)')


class RecordingBackend:
    """Remembers what it was told to write, as a kernel would."""

    name = "fake"
    parallel_safe = False

    def __init__(self) -> None:
        self.applied: list[TablePlan] = []
        self.tables: dict[Family, ProgrammedState] = {}

    def read(self, family: Family, prefix: str) -> ProgrammedState:
        empty = ProgrammedState(family=family, prefix=prefix, chains={}, forward_jumps=())
        return self.tables.get(family, empty)

    def apply(self, plan: TablePlan) -> ApplyResult:
        self.applied.append(plan)
        state = self.read(plan.family, "NPA-")
        chains = dict(state.chains)
        for change in plan.changes:
            if change.new_chain is None:
                chains.pop(change.name, None)
            else:
                chains[change.name] = change.new_hashes
        jumps = state.forward_jumps
        if plan.jump_insert and plan.entry_chain is not None:
            spec = canonical_jump_spec(plan.entry_chain)
            jumps = (ForwardJump(1, plan.entry_chain, spec, True),)
        self.tables[plan.family] = ProgrammedState(plan.family, state.prefix, chains, jumps)
        return ApplyResult.of(plan, self.name, render_restore(plan), 0.0)

    def cleanup(self, family: Family, prefix: str) -> ApplyResult:
        return ApplyResult.nothing(family, self.name)


class EmptyConntrack:
    """A conntrack table with nothing in it (the agent must not read this machine's)."""

    def list(self, family: Family, addresses: object = None) -> ListedEntries:
        return ListedEntries((), 0.0)

    def delete(self, entries: Sequence[ConntrackEntry]) -> int:
        return 0

    def set_mark(self, entries: Sequence[ConntrackEntry], value: int, mask: int) -> int:
        return 0


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> RecordingBackend:
    fake = RecordingBackend()
    monkeypatch.setattr("agent.dataplane.detect.make_backend", lambda choice: fake)
    monkeypatch.setattr("agent.app.make_conntrack", EmptyConntrack)
    return fake


def test_run_once_logs_logfmt_on_stdout_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: RecordingBackend
) -> None:
    path = write_state(tmp_path)
    code = main(
        ["run", "--once", "--node", "node1", "--source-file", path, "--no-kernel-addresses"]
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert err == ""
    lines = out.splitlines()
    assert lines and all(LOGFMT.match(line) for line in lines), lines
    (synced,) = [line for line in lines if "msg=synced" in line]
    assert 'cause="initial sync"' in synced and "changes=6" in synced
    assert {plan.family for plan in backend.applied} == {Family.IPV4, Family.IPV6}


def test_a_running_agent_is_quiet_when_nothing_happens(
    tmp_path: Path, backend: RecordingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_state(tmp_path)
    config = AgentConfig(
        node_name="node1",
        source=SourceConfig(file=path, poll_interval=0.05),
        kernel_addresses=False,
        metrics_address="",
        rule_log=None,
    )
    config = _fast(config)
    stop = threading.Event()
    result: list[int] = []
    caplog.set_level(logging.DEBUG)
    thread = threading.Thread(target=lambda: result.append(app.run(config, stop=stop)))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not any(r.getMessage() == "synced" for r in caplog.records):
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        applied = len(backend.applied)
        caplog.clear()
        time.sleep(1.5)  # several resync periods (0.3 s) with nothing to change
        infos = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert infos == [], [r.getMessage() for r in infos]
        assert len(backend.applied) == applied or all(
            plan.is_noop for plan in backend.applied[applied:]
        )
    finally:
        stop.set()
        thread.join(10)
    assert result == [0]


def _fast(config: AgentConfig) -> AgentConfig:
    import dataclasses

    from agent.config import Intervals

    return dataclasses.replace(config, intervals=Intervals(min_sync=0.0, resync=0.3))


def test_make_backend_retries_with_backoff_until_stopped() -> None:
    from agent.dataplane.backend import BackendError
    from agent.runtime.backoff import Backoff

    calls: list[str] = []

    def flaky(choice: Any) -> Any:
        calls.append(choice)
        if len(calls) < 3:
            raise BackendError("iptables-nft-save timed out")
        return RecordingBackend()

    stop = threading.Event()
    backend = app.make_backend("auto", stop, factory=flaky, backoff=Backoff(0.01, 0.02))
    assert isinstance(backend, RecordingBackend) and calls == ["auto"] * 3

    def broken(choice: Any) -> Any:
        raise BackendError("no iptables")

    with pytest.raises(BackendError):  # without a stop event the first failure raises
        app.make_backend("auto", None, factory=broken)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _readyz(port: int) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, "not serving yet"


def _wait_for(predicate: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_readyz_of_the_running_agent_names_an_unreadable_file_and_a_failing_family(
    tmp_path: Path, backend: RecordingBackend
) -> None:
    import os

    from agent.config import Intervals
    from agent.dataplane.backend import RestoreError

    path = write_state(tmp_path)
    port = _free_port()
    config = AgentConfig(
        node_name="node1",
        source=SourceConfig(file=path, poll_interval=0.05),
        kernel_addresses=False,
        metrics_address=f"127.0.0.1:{port}",
        rule_log=None,
        intervals=Intervals(min_sync=0.0, resync=0.3, retry_initial=0.05, retry_max=0.1),
    )
    stop = threading.Event()
    thread = threading.Thread(target=app.run, args=(config,), kwargs={"stop": stop})
    thread.start()
    try:
        _wait_for(lambda: _readyz(port)[0] == 200, "ready")

        os.rename(path, tmp_path / "gone.yaml")
        _wait_for(lambda: _readyz(port)[0] == 503, "not ready while the file is unreadable")
        body = _readyz(port)[1]
        assert "source failing" in body and "state.yaml" in body, body
        os.rename(tmp_path / "gone.yaml", path)
        _wait_for(lambda: _readyz(port)[0] == 200, "ready again")

        real_apply = backend.apply

        def ipv6_fails(plan: TablePlan) -> ApplyResult:
            if plan.family is Family.IPV6:
                raise RestoreError("ip6tables-nft-restore", 2, "injected failure")
            return real_apply(plan)

        backend.apply = ipv6_fails  # type: ignore[method-assign]
        _wait_for(lambda: _readyz(port)[0] == 503, "not ready while IPv6 fails")
        body = _readyz(port)[1]
        assert body.startswith("ipv6 sync failing") and "injected failure" in body, body
        assert "ipv4" not in body
        backend.apply = real_apply  # type: ignore[method-assign]
        _wait_for(lambda: _readyz(port) == (200, "ok\n"), "ready after IPv6 recovers")
    finally:
        stop.set()
        thread.join(10)
