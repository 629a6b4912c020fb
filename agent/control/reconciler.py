"""Keep this node's chains equal to what the cluster state says, as the state changes.

The source delivers changes; the reconciler folds them into its store of model objects,
coalesces bursts (at most one pass per ``min_interval``), and runs a pass: snapshot →
compile per family → ``Dataplane.sync`` (which diffs per-chain hashes read back from the
kernel and writes only changed chains, one restore per family). A full pass every
``resync_period`` rewrites drifted chains. A failed write is retried with capped
exponential backoff and the retry is a full pass. Nothing is written before the source
has listed everything once, and nothing is ever flushed: on an API outage the rules stay
as they are (fail static).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.compiler.config import CompilerConfig, node_addresses
from agent.compiler.node import NodeCompiler
from agent.control.node_addresses import compare_with_node_object
from agent.control.outcome import (
    Cause,
    ObjectChange,
    StateCounts,
    SyncObserver,
    SyncOutcome,
)
from agent.control.source import Change, Kind, Source
from agent.dataplane.backend import BackendError
from agent.dataplane.table import Dataplane, DataplaneSyncError, SyncReport
from agent.model import parse
from agent.model.objects import Direction, IPAddress, Namespace, NetworkPolicy, Node, Pod
from agent.policy.index import ClusterIndex, TrackedStore
from agent.rules import Family, Ruleset

log = logging.getLogger(__name__)

ModelObject = Pod | Namespace | NetworkPolicy | Node


@dataclass(frozen=True, slots=True)
class ReconcilerConfig:
    node_name: str
    families: tuple[Family, ...] = (Family.IPV4, Family.IPV6)
    compiler: CompilerConfig = field(default_factory=CompilerConfig)
    min_interval: float = 0.1
    resync_period: float = 60.0
    retry_initial: float = 0.5
    retry_max: float = 30.0
    extra_node_addresses: tuple[IPAddress, ...] = ()


def _parse(kind: Kind, obj: Mapping[str, Any]) -> ModelObject:
    if kind is Kind.POD:
        return parse.parse_pod(obj)
    if kind is Kind.NAMESPACE:
        return parse.parse_namespace(obj)
    if kind is Kind.NETWORK_POLICY:
        return parse.parse_network_policy(obj)
    return parse.parse_node(obj)


def _changed_fields(old: ModelObject, new: ModelObject) -> tuple[str, ...]:
    names: tuple[str, ...]
    if isinstance(old, Pod) and isinstance(new, Pod):
        names = ("labels", "ips", "phase", "ports", "node_name", "host_network")
    elif isinstance(old, Namespace) and isinstance(new, Namespace):
        names = ("labels",)
    elif isinstance(old, Node) and isinstance(new, Node):
        names = ("addresses",)
    else:
        return ("spec",)
    return tuple(name for name in names if getattr(old, name) != getattr(new, name))


class Reconciler:
    def __init__(
        self,
        config: ReconcilerConfig,
        source: Source,
        dataplane: Dataplane,
        *,
        observers: Iterable[SyncObserver] = (),
        kernel_addresses: Callable[[], tuple[IPAddress, ...]] | None = None,
        on_heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.dataplane = dataplane
        self._observers = tuple(observers)
        self._kernel_addresses = kernel_addresses
        self._on_heartbeat = on_heartbeat
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._store: dict[Kind, TrackedStore[ModelObject]] = {kind: TrackedStore() for kind in Kind}
        self._index = ClusterIndex()  # follows the store by deltas (see snapshot)
        self._pending: list[ObjectChange] = []
        self._dirty = False
        self._addresses_changed = False
        self._initial_done = False
        self._last_pass = 0.0
        self._last_full = 0.0
        self._retry_at: float | None = None
        self._retry_delay = config.retry_initial
        self.last_outcome: SyncOutcome | None = None
        self._address_warnings: set[str] = set()
        # One incremental compiler per family: each pass recompiles only what changed.
        self._compilers = {
            family: NodeCompiler(config.node_name, family, config.compiler)
            for family in config.families
        }
        self.heartbeat = time.monotonic()

    # --- input -------------------------------------------------------------------------

    def on_changes(self, changes: Sequence[Change]) -> None:
        """The source's sink: fold a batch into the store and wake the loop."""
        now = time.time()
        taken: list[ObjectChange] = []
        with self._lock:
            store_changed = False
            for change in changes:
                bucket = self._store[change.kind]
                old = bucket.get(change.key)
                if change.obj is None:
                    if bucket.pop(change.key, None) is not None:
                        taken.append(ObjectChange(change.kind, change.key, "deleted", (), now))
                        store_changed = True
                    continue
                try:
                    new = _parse(change.kind, change.obj)
                except parse.InvalidObject as error:
                    # Unusable as a whole: forget it, as if deleted, and say why.
                    log.warning("%s %s ignored: %s", change.kind.value, change.key, error)
                    if bucket.pop(change.key, None) is not None:
                        taken.append(ObjectChange(change.kind, change.key, "deleted", (), now))
                        store_changed = True
                    continue
                if isinstance(new, NetworkPolicy):
                    for problem in new.problems:
                        log.warning("%s", problem)
                if old == new:
                    continue
                bucket[change.key] = new
                if old is None:
                    taken.append(ObjectChange(change.kind, change.key, "added", (), now))
                else:
                    fields = _changed_fields(old, new)
                    taken.append(ObjectChange(change.kind, change.key, "updated", fields, now))
                store_changed = True
            if store_changed:
                self._pending.extend(taken)
                self._dirty = True
        if store_changed:
            for observer in self._observers:
                observer.changes_queued(now)
            self._wake.set()

    def on_node_addresses(self, _: tuple[IPAddress, ...]) -> None:
        with self._lock:
            self._addresses_changed = True
        self._wake.set()

    # --- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Reconcile until ``stop`` is set. Rules stay in place when it returns."""
        while not stop.is_set():
            self._beat()
            wait = self._seconds_until_due()
            self._wake.wait(timeout=min(wait, 1.0))
            if stop.is_set():
                break
            self._wake.clear()
            self._beat()
            if not self.source.synced:
                # Never write rules from a partial view of the cluster. The source does not
                # signal when it becomes synced and the wait above is 0 s until the initial
                # pass, so poll here instead of spinning a CPU (e.g. for as long as RBAC
                # forbids the lists).
                stop.wait(0.05)
                continue
            # Coalesce bursts: at most one pass per min_interval.
            since = time.monotonic() - self._last_pass
            if since < self.config.min_interval and stop.wait(self.config.min_interval - since):
                break
            cause = self._due_cause()
            if cause is not None:
                self.run_pass(cause)

    def _beat(self) -> None:
        """The loop is alive: it wakes at least every second, idle or not."""
        self.heartbeat = time.monotonic()
        if self._on_heartbeat is not None:
            self._on_heartbeat()

    def _seconds_until_due(self) -> float:
        now = time.monotonic()
        if self._retry_at is not None:
            # A failed write waits out its backoff, whatever else is pending.
            return max(0.0, self._retry_at - now)
        with self._lock:
            if self._dirty or self._addresses_changed or not self._initial_done:
                return 0.0
        return max(0.0, self._last_full + self.config.resync_period - now)

    def _due_cause(self) -> Cause | None:
        now = time.monotonic()
        if self._retry_at is not None:
            # Also after a failed initial pass: back off, then rewrite everything.
            return Cause.RETRY if now >= self._retry_at else None
        with self._lock:
            dirty = self._dirty
            addresses = self._addresses_changed
        if not self._initial_done:
            return Cause.INITIAL
        if now - self._last_full >= self.config.resync_period:
            return Cause.RESYNC
        if dirty:
            return Cause.CHANGE
        if addresses:
            return Cause.NODE_ADDRESSES
        return None

    # --- one pass ----------------------------------------------------------------------

    def snapshot(self) -> ClusterIndex:
        """The cluster as of now: the index, moved forward by what the store changed
        since the last snapshot (no copy, no walk over unchanged objects)."""
        with self._lock:
            changed = {kind: self._store[kind].take_changed() for kind in Kind}
        self._index.apply(
            pods=[(k, v) for k, v in changed[Kind.POD] if v is None or isinstance(v, Pod)],
            namespaces=[
                (k, v) for k, v in changed[Kind.NAMESPACE] if v is None or isinstance(v, Namespace)
            ],
            policies=[
                (k, v)
                for k, v in changed[Kind.NETWORK_POLICY]
                if v is None or isinstance(v, NetworkPolicy)
            ],
            nodes=[(k, v) for k, v in changed[Kind.NODE] if v is None or isinstance(v, Node)],
        )
        return self._index

    def node_addresses(self, state: ClusterIndex) -> tuple[IPAddress, ...]:
        kernel = self._kernel_addresses() if self._kernel_addresses is not None else ()
        if kernel:
            listed = state.node_addresses(self.config.node_name)
            for warning in compare_with_node_object(kernel, listed, self.config.node_name):
                if warning not in self._address_warnings:  # once each, not every pass
                    self._address_warnings.add(warning)
                    log.warning("%s", warning)
        extra = (*self.config.extra_node_addresses, *kernel)
        return node_addresses(state, self.config.node_name, extra)

    def compile(self, state: ClusterIndex) -> dict[Family, Ruleset]:
        addresses = self.node_addresses(state)
        return {
            family: compiler.compile_index(state, addresses)
            for family, compiler in self._compilers.items()
        }

    def run_pass(self, cause: Cause) -> SyncOutcome:
        started_wall = time.time()
        started = time.monotonic()
        full = cause in (Cause.INITIAL, Cause.RESYNC, Cause.RETRY)
        with self._lock:
            changes = tuple(self._pending)
            self._pending.clear()
            self._dirty = False
            self._addresses_changed = False
        state = self.snapshot()
        compile_started = time.monotonic()
        rulesets = self.compile(state)
        compile_seconds = time.monotonic() - compile_started
        report: SyncReport | None = None
        error: str | None = None
        try:
            # The initial pass adopts what a previous instance programmed: it writes only
            # chains whose hashes differ, so no window opens. A resync reads the kernel
            # back and rewrites what drifted; after a failure everything is rewritten.
            report = self.dataplane.sync(
                rulesets, full=cause is Cause.RETRY, verify=cause is Cause.RESYNC
            )
        except DataplaneSyncError as failure:
            report = failure.report
            error = str(failure)
        except BackendError as failure:
            error = str(failure)
        now = time.monotonic()
        self._last_pass = now
        if full:
            self._last_full = now
        if error is None:
            self._initial_done = True
            self._retry_at = None
            self._retry_delay = self.config.retry_initial
        else:
            delay = random.uniform(self._retry_delay / 2, self._retry_delay)
            log.error("sync failed (%s); retrying in %.1fs with a full rewrite", error, delay)
            self._retry_at = now + delay
            self._retry_delay = min(self._retry_delay * 2, self.config.retry_max)
            with self._lock:
                # Changes not programmed yet are still owed; keep them for the next pass.
                self._pending[:0] = changes
        outcome = SyncOutcome(
            cause=cause,
            full=full,
            started_at=started_wall,
            compile_seconds=compile_seconds,
            total_seconds=time.monotonic() - started,
            changes=changes,
            counts=self._counts(state),
            rulesets=rulesets,
            report=report,
            error=error,
        )
        self.last_outcome = outcome
        for observer in self._observers:
            try:
                observer.sync_finished(outcome)
            except Exception:  # an observer must never break enforcement
                log.exception("observer %r failed", observer)
        if error is None and (report is None or report.bytes_written or changes):
            log.info(
                "sync (%s): %d changes, %d bytes written, compile %.1f ms, total %.1f ms",
                cause.value,
                len(changes),
                report.bytes_written if report else 0,
                compile_seconds * 1000,
                outcome.total_seconds * 1000,
            )
        return outcome

    def _counts(self, state: ClusterIndex) -> StateCounts:
        # The compilers already know the local pods; walking 110 pods and their policies
        # again here would cost more than an incremental compile.
        compiler = next(iter(self._compilers.values()), None)
        return StateCounts(
            pods=len(state.pods),
            namespaces=len(state.namespaces),
            policies=len(state.policies),
            local_pods=compiler.local_pod_count if compiler else 0,
            local_pods_ingress_isolated=compiler.isolated.get(Direction.INGRESS, 0)
            if compiler
            else 0,
            local_pods_egress_isolated=compiler.isolated.get(Direction.EGRESS, 0)
            if compiler
            else 0,
            invalid_policies=state.invalid_policies,
        )
