"""Keep this node's chains equal to what the cluster state says, as the state changes.

The source delivers changes; the reconciler folds them into its store of model objects,
and its loop is the one bounded-frequency runner (``agent.runtime.runner``): bursts are
coalesced (at most one pass per ``min_interval``), a full pass every ``resync_period``
rewrites drifted chains, and a failed pass is retried as a full pass after a jittered
capped exponential backoff. A pass is: snapshot → compile per family →
``Dataplane.sync`` (which diffs per-chain hashes and writes only changed chains, one
restore per family). Nothing is written before the source has listed everything once,
and nothing is ever flushed: on an API outage the rules stay as they are (fail static).

A batch from the source is taken in whole or not at all: every object is parsed first
(an object the parser rejects is a logged problem and counts as absent; one it fails on
unexpectedly too, except a NetworkPolicy, which then isolates its whole namespace), then the store is updated under the lock. If the
sink raises anyway, nothing of the batch was taken, and the source must not record the
batch as delivered (it retries it).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.compiler.config import CompilerConfig, node_addresses
from agent.compiler.config import pod_cidrs as node_pod_cidrs
from agent.compiler.node import NodeCompiler
from agent.control.flows import FlowReport, FlowRevoker
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
from agent.dataplane.plan import ChangeKind
from agent.dataplane.table import Dataplane, DataplaneSyncError, SyncReport
from agent.model import parse
from agent.model.objects import (
    ClusterNetworkPolicy,
    ClusterRule,
    Direction,
    IPAddress,
    IPNetwork,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    PodPhase,
    RuleAction,
    Tier,
)
from agent.policy.index import ClusterIndex, TrackedStore
from agent.policy.state import ClusterState
from agent.rules import Family, Ruleset
from agent.runtime.backoff import Backoff
from agent.runtime.runner import BoundedFrequencyRunner, Clock, Reason

log = logging.getLogger(__name__)

ModelObject = Pod | Namespace | NetworkPolicy | Node | ClusterNetworkPolicy

_REASONS = {
    Cause.INITIAL: Reason.FIRST,
    Cause.RETRY: Reason.RETRY,
    Cause.RESYNC: Reason.RESYNC,
    Cause.CHANGE: Reason.REQUEST,
    Cause.NODE_ADDRESSES: Reason.REQUEST,
}


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
    # --pod-cidr: replaces the Node's spec.podCIDRs (compiler.isolate_unknown_pod_ips).
    pod_cidrs: tuple[IPNetwork, ...] = ()


_PARSERS: Mapping[Kind, Callable[[Mapping[str, Any]], ModelObject]] = {
    Kind.POD: parse.parse_pod,
    Kind.NAMESPACE: parse.parse_namespace,
    Kind.NETWORK_POLICY: parse.parse_network_policy,
    Kind.NODE: parse.parse_node,
    Kind.CLUSTER_NETWORK_POLICY: parse.parse_cluster_network_policy,
}


def _parse(kind: Kind, obj: Mapping[str, Any]) -> ModelObject:
    return _PARSERS[kind](obj)


def _deny_all_cluster_policy(name: str, reason: str) -> ClusterNetworkPolicy:
    """What a ClusterNetworkPolicy the parser failed on stands for: as one whose spec
    cannot be read (admin tier, every pod, both directions denied)."""
    problem = (
        f"ClusterNetworkPolicy {name}: {reason}; denying every pod all traffic in both "
        "directions (admin tier) until it is fixed"
    )
    log.warning("%s", problem)
    deny_all = (ClusterRule(RuleAction.DENY, None, None),)
    return ClusterNetworkPolicy(
        name=name,
        tier=Tier.ADMIN,
        priority=0,
        subject=None,
        ingress=deny_all,
        egress=deny_all,
        problems=(problem,),
    )


@dataclass(frozen=True, slots=True)
class EarlyAddresses:
    """A pod's addresses as its CNI ADD gave them, before its status has them."""

    uid: str  # "" when the runtime did not say
    ips: tuple[IPAddress, ...]
    container_id: str = ""  # the sandbox the ADD was for ("" when not said)

    def fits(self, pod: Pod) -> bool:
        return not self.uid or pod.uid == self.uid


class NetworkAddError(Exception):
    """A pod network ADD that could not be confirmed; the message says why."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def _changed_fields(old: ModelObject, new: ModelObject) -> tuple[str, ...]:
    names: tuple[str, ...]
    if isinstance(old, Pod) and isinstance(new, Pod):
        names = ("labels", "ips", "phase", "ports", "node_name", "host_network")
    elif isinstance(old, Namespace) and isinstance(new, Namespace):
        names = ("labels",)
    elif isinstance(old, Node) and isinstance(new, Node):
        names = ("addresses", "pod_cidrs", "labels")
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
        flows: FlowRevoker | None = None,
        on_written: Callable[[ClusterState], None] | None = None,
        clock: Clock = time.monotonic,
        wait: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.dataplane = dataplane
        self._observers = tuple(observers)
        self._kernel_addresses = kernel_addresses
        self._flows = flows
        # Told the cluster as the rules just written enforce it (a snapshot it may keep
        # and read from another thread): the deny log attributes drops with it.
        self._on_written = on_written
        # Local pod addresses and who held them after the last pass that looked at the
        # conntrack table: an address that leaves (or changes hands) has its flows deleted.
        self._local_owners: dict[IPAddress, tuple[str, str]] | None = None  # (key, uid)
        self._lock = threading.Lock()
        # CNI ADDs: addresses a pod got before its status says so (by pod key), and the
        # sequence of batches taken vs. written, which a waiting ADD compares.
        self._early: dict[str, EarlyAddresses] = {}
        self._taken_seq = 0
        self._written_seq = 0
        self._written = threading.Condition(self._lock)
        self._store: dict[Kind, TrackedStore[ModelObject]] = {kind: TrackedStore() for kind in Kind}
        self._index = ClusterIndex()  # follows the store by deltas (see snapshot)
        self._pending: list[ObjectChange] = []
        self._dirty = False
        self._addresses_changed = False
        self.last_outcome: SyncOutcome | None = None
        self.runner = BoundedFrequencyRunner(
            "reconciler",
            self._run_for,
            min_interval=config.min_interval,
            resync_period=config.resync_period,
            backoff=Backoff(config.retry_initial, config.retry_max, jitter=0.5),
            clock=clock,
            wait=wait,
            ready=lambda: self.source.synced,
            on_tick=on_heartbeat,
        )
        self._address_warnings: set[str] = set()
        self._pod_cidrs_missing: tuple[str, ...] | None = None  # families, when last said
        # One incremental compiler per family: each pass recompiles only what changed.
        self._compilers = {
            family: NodeCompiler(config.node_name, family, config.compiler)
            for family in config.families
        }

    # --- input -------------------------------------------------------------------------

    def on_changes(self, changes: Sequence[Change]) -> None:
        """The source's sink: fold a batch into the store and wake the loop.

        All or nothing: the batch is parsed first, then applied under the lock. A raise
        from here means nothing of the batch was taken (the source keeps it owed).
        """
        now = time.time()
        parsed = [(change, self._parse_change(change)) for change in changes]
        taken: list[ObjectChange] = []
        with self._lock:
            for change, new in parsed:
                bucket = self._store[change.kind]
                action = ""
                if change.kind is Kind.POD:
                    new, action = self._with_early_addresses(
                        change.key, new, bucket.get(change.key)
                    )
                if new is None:
                    # Deleted, or unusable as a whole: forget it (fail closed for what it
                    # selected).
                    if bucket.pop(change.key, None) is not None:
                        taken.append(ObjectChange(change.kind, change.key, "deleted", (), now))
                    continue
                old = bucket.get(change.key)
                if old == new:
                    continue
                bucket[change.key] = new
                if action:
                    taken.append(ObjectChange(change.kind, change.key, action, ("ips",), now))
                elif old is None:
                    taken.append(ObjectChange(change.kind, change.key, "added", (), now))
                else:
                    fields = _changed_fields(old, new)
                    taken.append(ObjectChange(change.kind, change.key, "updated", fields, now))
            if taken:
                self._pending.extend(taken)
                self._dirty = True
                self._taken_seq += 1
            self._written.notify_all()  # an ADD may be waiting for this pod to be known
        if taken:
            for observer in self._observers:
                observer.changes_queued(now)
            self.runner.request()

    @staticmethod
    def _parse_change(change: Change) -> ModelObject | None:
        """The model object; None for a delete and for an object that cannot be used.

        A NetworkPolicy the parser fails on unexpectedly (a bug, not ``InvalidObject``)
        fails closed: it stands as a policy isolating every pod of its namespace in both
        directions and allowing nothing, until a usable version replaces it. A
        ClusterNetworkPolicy likewise: an admin policy denying every pod everything.
        """
        if change.obj is None:
            return None
        try:
            new = _parse(change.kind, change.obj)
        except parse.InvalidObject as error:
            # Unusable as a whole (as render/explain skip it): forget it, as if deleted.
            log.warning("%s %s ignored: %s", change.kind.value, change.key, error)
            return None
        except Exception as error:  # a parser bug must cost this object only, not the batch
            reason = f"cannot parse it ({type(error).__name__}: {error})"
            log.debug("parse failure of %s %s", change.kind.value, change.key, exc_info=True)
            if change.kind is Kind.NETWORK_POLICY and "/" in change.key:
                namespace, _, name = change.key.partition("/")
                problem = (
                    f"NetworkPolicy {change.key}: {reason}; isolating every pod of "
                    f"namespace {namespace} in both directions until it is fixed"
                )
                log.warning("%s", problem)
                return NetworkPolicy(
                    namespace=namespace,
                    name=name,
                    pod_selector=None,
                    policy_types=frozenset((Direction.INGRESS, Direction.EGRESS)),
                    problems=(problem,),
                )
            if change.kind is Kind.CLUSTER_NETWORK_POLICY:
                return _deny_all_cluster_policy(change.key, reason)
            log.warning("%s %s ignored: %s", change.kind.value, change.key, reason)
            return None
        for problem in getattr(new, "problems", ()):
            log.warning("%s", problem)
        return new

    # --- CNI: addresses before the pod's status has them ---------------------------------

    def _with_early_addresses(
        self, key: str, new: ModelObject | None, old: ModelObject | None
    ) -> tuple[ModelObject | None, str]:
        """The pod as the store should hold it, and "network added" when that is the pod
        with the addresses its CNI ADD gave (its status has none yet). Lock held.

        The status's addresses replace the early ones as soon as the status has them all;
        until then the pod holds both (a new sandbox's addresses while the status still
        shows the previous sandbox's: the one is enforced at once, the other stays
        enforced). A deleted pod takes its early addresses with it.
        """
        early = self._early.get(key)
        if early is None:
            return new, ""
        if new is None:
            if old is None or not isinstance(old, Pod) or early.fits(old):
                del self._early[key]
            return None, ""
        if not isinstance(new, Pod) or not early.fits(new):
            return new, ""  # another pod of that name (an earlier one going away)
        if new.ips and set(early.ips) <= set(new.ips):
            del self._early[key]  # the status has them now
            return new, ""
        if new.host_network or new.phase in (PodPhase.SUCCEEDED, PodPhase.FAILED):
            return new, ""
        ips = tuple(dict.fromkeys((*new.ips, *early.ips)))
        with_ips = dataclasses.replace(new, ips=ips)
        added = not (isinstance(old, Pod) and old.ips == ips and early.fits(old))
        return with_ips, "network added" if added else ""

    def _take_early(self, key: str, early: EarlyAddresses | None, now: float) -> bool:
        """Put the store's pod ``key`` in line with ``early`` (None: forget the early
        addresses). True when the store changed. Lock held."""
        bucket = self._store[Kind.POD]
        pod = bucket.get(key)
        if not isinstance(pod, Pod):  # not known yet: the pod's arrival takes them
            if early is None:
                self._early.pop(key, None)
            else:
                self._early[key] = early
            return False
        previous = self._early.get(key)
        if early is None:
            if previous is None or not previous.fits(pod):
                self._early.pop(key, None)
                return False
            del self._early[key]
            kept = tuple(ip for ip in pod.ips if ip not in previous.ips)
            if kept == pod.ips:
                return False
            bucket[key] = dataclasses.replace(pod, ips=kept)
            action = "network deleted"
        else:
            self._early[key] = early
            new, _ = self._with_early_addresses(key, pod, None)
            if new == pod or new is None:
                return False
            bucket[key] = new
            action = "network added"
        self._pending.append(ObjectChange(Kind.POD, key, action, ("ips",), now))
        self._dirty = True
        self._taken_seq += 1
        return True

    def pod_network_added(
        self,
        namespace: str,
        name: str,
        uid: str,
        ips: Sequence[IPAddress],
        timeout: float,
        container_id: str = "",
    ) -> None:
        """A CNI ADD gave pod ``namespace/name`` these addresses: enforce them now, as if
        its status had them, and return once its rules are in the kernel.

        A pod the agent does not know yet is waited for. Raises ``NetworkAddError`` when
        that does not happen within ``timeout`` seconds, or the pod runs elsewhere.
        """
        key = f"{namespace}/{name}"
        early = EarlyAddresses(uid, tuple(dict.fromkeys(ips)), container_id)
        deadline = time.monotonic() + timeout
        now = time.time()
        with self._lock:
            changed = self._take_early(key, early, now)
        if changed:
            for observer in self._observers:
                observer.changes_queued(now)
            self.runner.request()
        with self._lock:
            target: int | None = None
            while True:
                pod = self._store[Kind.POD].get(key)
                if target is None and isinstance(pod, Pod) and early.fits(pod):
                    if pod.node_name != self.config.node_name:
                        raise NetworkAddError(
                            f"pod {key} runs on node {pod.node_name}, not {self.config.node_name}"
                        )
                    target = self._taken_seq  # its addresses are in the store by now
                if target is not None and self._written_seq >= target:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    if target is None and self._early.get(key) == early:
                        del self._early[key]  # never came: the kubelet will ask again
                    what = "its rules were not written" if target else "the pod is not known"
                    raise NetworkAddError(f"{key}: {what} within {timeout:g}s", timed_out=True)
                self._written.wait(left)

    def pod_network_deleted(
        self, namespace: str, name: str, uid: str, container_id: str = ""
    ) -> None:
        """A CNI DEL: forget the addresses an ADD gave (the status's stay). A DEL of
        another sandbox than the one the addresses came from (a late DEL of the previous
        one) leaves them."""
        key = f"{namespace}/{name}"
        now = time.time()
        with self._lock:
            early = self._early.get(key)
            if early is None or (uid and early.uid and uid != early.uid):
                return
            if container_id and early.container_id and container_id != early.container_id:
                return
            changed = self._take_early(key, None, now)
        if changed:
            self.runner.request()

    def pod_network_programmed(
        self, namespace: str, name: str, uid: str, ips: Sequence[IPAddress]
    ) -> bool:
        """A CNI CHECK: the pod is known here with these addresses, all written."""
        with self._lock:
            pod = self._store[Kind.POD].get(f"{namespace}/{name}")
            return (
                isinstance(pod, Pod)
                and (not uid or pod.uid == uid)
                and pod.node_name == self.config.node_name
                and set(ips) <= set(pod.ips)
                and self._written_seq >= self._taken_seq
            )

    def on_node_addresses(self, _: tuple[IPAddress, ...]) -> None:
        with self._lock:
            self._addresses_changed = True
        self.runner.request()

    # --- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Reconcile until ``stop`` is set. Rules stay in place when it returns."""
        self.runner.run(stop)

    def wake(self) -> None:
        """Make the loop look at ``stop`` (and anything due) now."""
        self.runner.interrupt()

    def _run_for(self, reason: Reason) -> bool:
        cause = self._cause(reason)
        if cause is None:
            return True  # a request whose changes an explicit pass already took in
        return self.run_pass(cause, record=False).succeeded

    def _cause(self, reason: Reason) -> Cause | None:
        if reason is Reason.FIRST:
            return Cause.INITIAL
        if reason is Reason.RETRY:
            return Cause.RETRY  # also after a failed initial pass: rewrite everything
        if reason is Reason.RESYNC:
            return Cause.RESYNC
        with self._lock:
            if self._dirty:
                return Cause.CHANGE
            if self._addresses_changed:
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
            cluster_policies=[
                (k, v)
                for k, v in changed[Kind.CLUSTER_NETWORK_POLICY]
                if v is None or isinstance(v, ClusterNetworkPolicy)
            ],
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

    def pod_cidrs(self, state: ClusterIndex) -> tuple[IPNetwork, ...]:
        """The node's pod CIDRs, when unknown addresses in them are isolated. Said in the
        log (once per change) when an enforced family has none: nothing is isolated
        there beyond the policies, and that must never go unsaid."""
        if not self.config.compiler.isolate_unknown_pod_ips:
            return ()
        cidrs = node_pod_cidrs(state, self.config.node_name, self.config.pod_cidrs)
        missing = tuple(
            family.value
            for family in self.config.families
            if not any(cidr.version == family.version for cidr in cidrs)
        )
        if missing != self._pod_cidrs_missing:
            self._pod_cidrs_missing = missing
            if missing:
                log.warning(
                    "--isolate-unknown-pod-ips: node %s has no %s pod CIDR (no Node "
                    "spec.podCIDRs and no --pod-cidr): %s addresses of pods the agent does "
                    "not know yet are not isolated",
                    self.config.node_name,
                    " or ".join(missing),
                    " and ".join(missing),
                )
            else:
                log.info(
                    "isolating unknown pod addresses",
                    extra={"kv": {"pod_cidrs": ",".join(map(str, cidrs))}},
                )
        return cidrs

    def compile(self, state: ClusterIndex) -> dict[Family, Ruleset]:
        addresses = self.node_addresses(state)
        cidrs = self.pod_cidrs(state)
        return {
            family: compiler.compile_index(state, addresses, cidrs)
            for family, compiler in self._compilers.items()
        }

    def run_pass(self, cause: Cause, *, record: bool = True) -> SyncOutcome:
        """One pass. ``record=False`` when the runner called it (it accounts for itself)."""
        started_wall = time.time()
        started = time.monotonic()
        full = cause in (Cause.INITIAL, Cause.RESYNC, Cause.RETRY)
        with self._lock:
            changes = tuple(self._pending)
            self._pending.clear()
            self._dirty = False
            self._addresses_changed = False
            seq = self._taken_seq
        state = self.snapshot()
        compile_started = time.monotonic()
        rulesets: dict[Family, Ruleset] = {}
        report: SyncReport | None = None
        error: str | None = None
        family_errors: dict[Family, str] = {}
        try:
            rulesets = self.compile(state)
        except Exception as failure:  # a compiler bug: write nothing, keep the rules
            log.error("compile failed", exc_info=True)
            error = f"compile failed: {type(failure).__name__}: {failure}"
            # Its incremental caches may be half updated: the retry starts from scratch.
            self._compilers = {
                family: NodeCompiler(self.config.node_name, family, self.config.compiler)
                for family in self.config.families
            }
        compile_seconds = time.monotonic() - compile_started
        if error is None:
            try:
                # The initial pass adopts what a previous instance programmed: it writes
                # only chains whose hashes differ, so no window opens. A resync reads the
                # kernel back and rewrites what drifted; after a failure everything is
                # rewritten.
                report = self.dataplane.sync(
                    rulesets, full=cause is Cause.RETRY, verify=cause is Cause.RESYNC
                )
            except DataplaneSyncError as failure:
                report = failure.report
                error = str(failure)
                family_errors = {family: str(e) for family, e in failure.errors.items()}
            except BackendError as failure:
                error = str(failure)
                family_errors = {family: error for family in rulesets}
        if error is not None:
            log.error(
                "sync (%s) failed: %s; retrying in %.1fs with a full rewrite",
                cause.value,
                error,
                self.runner.draw_retry_delay(),
            )
            with self._lock:
                # Not applied: the changes are still owed to the next pass.
                self._pending[:0] = changes
        if error is None:
            with self._lock:  # the rules of every batch up to seq are in the kernel
                self._written_seq = max(self._written_seq, seq)
                self._written.notify_all()
            if self._on_written is not None:
                written = ClusterState(
                    dict(state.namespaces),
                    dict(state.pods),
                    dict(state.policies),
                    dict(state.nodes),
                    dict(state.cluster_policies),
                )
                try:
                    self._on_written(written)
                except Exception:  # never breaks enforcement
                    log.exception("on_written failed")
        flows: FlowReport | None = None
        if error is None and report is not None and self._flows is not None:
            flows = self._revoke_flows(cause, state, rulesets, report)
        if record:
            self.runner.record(_REASONS[cause], error is None)
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
            family_errors=family_errors,
            flows=flows,
        )
        self.last_outcome = outcome
        for observer in self._observers:
            try:
                observer.sync_finished(outcome)
            except Exception:  # an observer must never break enforcement
                log.exception("observer %r failed", observer)
        # One line per pass that did something; a pass that changed nothing is quiet.
        if error is None and (report is None or report.bytes_written or changes):
            log.info(
                "synced",
                extra={
                    "kv": {
                        "cause": cause.value,
                        "changes": len(changes),
                        "rules_written": report.rules_written if report else 0,
                        "bytes_written": report.bytes_written if report else 0,
                        "drift": bool(report and report.drift_found),
                        "compile_ms": f"{compile_seconds * 1000:.1f}",
                        "total_ms": f"{outcome.total_seconds * 1000:.1f}",
                    }
                },
            )
        if flows is not None and flows.revoked:
            by_reason: dict[str, int] = {}
            for revoked in flows.revoked:
                by_reason[revoked.reason.value] = by_reason.get(revoked.reason.value, 0) + 1
            log.info(
                "flows revoked",
                extra={
                    "kv": {
                        "revoked": len(flows.revoked),
                        **{reason.replace(" ", "_"): n for reason, n in by_reason.items()},
                        "scanned": sum(flows.scanned.values()),
                        "scan_ms": f"{flows.seconds * 1000:.1f}",
                    }
                },
            )
        return outcome

    def _revoke_flows(
        self,
        cause: Cause,
        state: ClusterIndex,
        rulesets: Mapping[Family, Ruleset],
        report: SyncReport,
    ) -> FlowReport | None:
        """Strict mode: judge the flows of local pods against rules that changed. Both
        modes: delete the flows of addresses local pods gave up since the last look."""
        assert self._flows is not None
        compiler = next(iter(self._compilers.values()), None)
        if compiler is None:
            return None
        owners = {
            address: (pod.key, pod.uid)
            for pod in compiler.local_pods.values()
            for address in pod.ips
        }
        previous = self._local_owners
        released = (
            {a: owner[0] for a, owner in previous.items() if owners.get(a) != owner}
            if previous is not None
            else {}
        )
        # Per family whose rules changed, the chains written (None: after the first
        # pass of this process, any rule may differ from when a flow started).
        changed: dict[Family, frozenset[str] | None] = {
            family: None
            if cause is Cause.INITIAL
            else frozenset(
                change.name
                for change in synced.plan.changes
                if change.kind is not ChangeKind.DELETE
            )
            for family, synced in report.families.items()
            if cause is Cause.INITIAL or not synced.plan.is_noop
        }
        if not changed and not released:
            self._local_owners = owners
            return None
        try:
            pods = {address: owner[0] for address, owner in owners.items()}
            flows = self._flows.after_sync(
                rulesets, changed, pods, self.node_addresses(state), released
            )
        except Exception:  # revoking flows must never break enforcement
            log.exception("checking established flows failed")
            return None
        if flows.error is None:
            self._local_owners = owners
        return flows

    def _counts(self, state: ClusterIndex) -> StateCounts:
        # The compilers already know the local pods; walking 110 pods and their policies
        # again here would cost more than an incremental compile.
        compiler = next(iter(self._compilers.values()), None)
        return StateCounts(
            pods=len(state.pods),
            namespaces=len(state.namespaces),
            policies=len(state.policies),
            cluster_policies=len(state.cluster_policies),
            local_pods=compiler.local_pod_count if compiler else 0,
            local_pods_ingress_isolated=compiler.isolated.get(Direction.INGRESS, 0)
            if compiler
            else 0,
            local_pods_egress_isolated=compiler.isolated.get(Direction.EGRESS, 0)
            if compiler
            else 0,
            invalid_policies=state.invalid_policies,
        )
