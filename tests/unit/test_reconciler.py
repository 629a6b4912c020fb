"""The reconcile loop's timing rules, with a dataplane that records instead of writing."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

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
