"""Prometheus metrics, in a registry of their own (tests make several).

Names follow kube-proxy's and Calico's where there is an equivalent; every duration is
in seconds and every counter ends in ``_total``. ``Metrics`` is a ``SyncObserver``: the
reconciler hands it each ``SyncOutcome``; watch health is read from the source at
scrape time.

``METRICS`` below lists every metric (name, type, labels, meaning). The README's Metrics
table is written by hand from it; a unit test checks that every name appears there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.control.flows import RevokeReason
from agent.control.outcome import Cause, SyncOutcome
from agent.control.source import SourceHealth
from agent.rules import Family

PREFIX: Final = "netpol_agent_"
TABLE: Final = "filter"

# Restores of a few rules take milliseconds; a 700k-line restore on nft took 12.8 s.
SYNC_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Event to rules-in-kernel: what users feel when a new pod cannot connect yet.
PROGRAMMING_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

#: (name without prefix, type, labels, help): the documented metric set.
METRICS: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("sync_duration_seconds", "histogram", "kind: full, partial",
     "Duration of a reconcile pass (compile + read + restore), successful or not."),
    ("compile_duration_seconds", "histogram", "",
     "Time spent compiling the desired rulesets in a pass."),
    ("last_sync_timestamp_seconds", "gauge", "",
     "Unix time the last successful pass finished (rules in the kernel)."),
    ("last_queued_timestamp_seconds", "gauge", "",
     "Unix time the source last delivered changes that a pass still has to take in."),
    ("network_programming_duration_seconds", "histogram", "",
     "From an object change being received to its rules being in the kernel "
     "(after the initial sync)."),
    ("sync_failures_total", "counter", "",
     "Passes that ended in an error (compile or dataplane)."),
    ("iptables_restore_total", "counter", "family",
     "iptables-restore transactions that changed something, per IP family."),
    ("iptables_restore_failures_total", "counter", "family",
     "iptables-restore (or libiptc commit) failures, per IP family."),
    ("iptables_restore_duration_seconds", "histogram", "family",
     "Duration of one iptables-restore transaction (exec + commit)."),
    ("bytes_written_total", "counter", "family",
     "Bytes of restore payload written to the kernel."),
    ("rules", "gauge", "family,table",
     "Rules programmed in the agent's own chains."),
    ("chains", "gauge", "family,table",
     "Chains the agent has programmed."),
    ("resync_repairs_total", "counter", "",
     "Passes that found the kernel drifted from what the agent wrote (and repaired it)."),
    ("local_pods", "gauge", "",
     "Pods on this node that the agent enforces for."),
    ("local_pods_selected", "gauge", "direction: ingress, egress",
     "Local pods that a NetworkPolicy isolates or a ClusterNetworkPolicy rule applies to "
     "in that direction."),
    ("policies", "gauge", "", "NetworkPolicies in the cluster."),
    ("cluster_policies", "gauge", "", "ClusterNetworkPolicies in the cluster."),
    ("invalid_policies", "gauge", "",
     "NetworkPolicies and ClusterNetworkPolicies with problems (each fails closed)."),
    ("pods", "gauge", "", "Pods in the cluster."),
    ("namespaces", "gauge", "", "Namespaces in the cluster."),
    ("flows_revoked_total", "counter", "family,reason",
     "Established flows revoked: reason policy (strict mode: the new rules deny them), "
     "or pod deleted (an end is an address no local pod holds any more)."),
    ("flow_scan_duration_seconds", "histogram", "",
     "Reading and judging the conntrack table after a pass (and revoking what it must)."),
    ("cni_add_duration_seconds", "histogram", "",
     "From a CNI ADD reaching the agent to its answer (the pod's rules in the kernel, "
     "or why not)."),
    ("cni_add_failures_total", "counter", "result: timeout, error",
     "CNI ADDs the agent did not confirm: timeout (the pod unknown or its rules not "
     "written in time), error (refused)."),
    ("denied_connections_total", "counter", "direction,namespace",
     "Connections a policy denied on this node, as written to the deny log "
     "(--log-denied): direction egress (the source pod's) or ingress (the destination "
     "pod's), namespace of that pod (empty: an address no known pod holds)."),
    ("denied_log_dropped_total", "counter", "reason",
     "Denied packets the deny log has no line for: rate_limit (the kernel's rate limit "
     "kept them from the agent; retransmissions count), overflow (logged by the kernel, "
     "lost in a full socket buffer)."),
    ("watch_restarts_total", "counter", "kind",
     "Watches of the API server that ended and were restarted."),
    ("relists_total", "counter", "kind",
     "Full relists forced by 410 Gone (history compacted while the watch was away)."),
    ("list_errors_total", "counter", "kind", "Failed list requests."),
    ("watch_errors_total", "counter", "kind", "Watches that ended with an error."),
    ("watch_connected", "gauge", "kind",
     "1 while the watch for that kind is connected (no sample for ClusterNetworkPolicy "
     "while the API does not serve it)."),
    ("watched_objects", "gauge", "kind", "Objects of that kind in the agent's store."),
)  # fmt: skip

HealthReader = Callable[[], SourceHealth]


class _SourceCollector(Collector):
    """Reads the source's health at scrape time (counters live in the source)."""

    def __init__(self, reader: HealthReader | None) -> None:
        self._reader = reader

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return iter(self._families(SourceHealth()))

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        reader = self._reader
        health = reader() if reader is not None else SourceHealth()
        return iter(self._families(health))

    @staticmethod
    def _families(health: SourceHealth) -> list[CounterMetricFamily | GaugeMetricFamily]:
        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(PREFIX + name, doc, labels=["kind"])

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, labels=["kind"])

        docs = {name: text for name, _, _, text in METRICS}
        restarts = counter("watch_restarts", docs["watch_restarts_total"])
        relists = counter("relists", docs["relists_total"])
        list_errors = counter("list_errors", docs["list_errors_total"])
        watch_errors = counter("watch_errors", docs["watch_errors_total"])
        connected = gauge("watch_connected", docs["watch_connected"])
        objects = gauge("watched_objects", docs["watched_objects"])
        for kind, kind_health in health.kinds.items():
            labels = [kind.value]
            restarts.add_metric(labels, kind_health.watch_restarts)
            relists.add_metric(labels, kind_health.relists)
            list_errors.add_metric(labels, kind_health.list_errors)
            watch_errors.add_metric(labels, kind_health.watch_errors)
            if kind_health.served:  # no CRD, nothing to watch: no sample, no false alarm
                connected.add_metric(labels, 1.0 if kind_health.connected else 0.0)
            objects.add_metric(labels, kind_health.objects)
        return [restarts, relists, list_errors, watch_errors, connected, objects]


class Metrics:
    """All agent metrics in ``registry``; a ``SyncObserver``.

    ``Metrics(registry, source_health=None)``: ``source_health`` is a callable returning
    the source's ``SourceHealth`` (e.g. ``lambda: source.health``). Passing a fresh ``CollectorRegistry()`` per instance keeps
    instances independent; registering two ``Metrics`` in one registry raises ValueError.
    """

    def __init__(
        self, registry: CollectorRegistry, *, source_health: HealthReader | None = None
    ) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._families_seen: set[Family] = set()
        docs = {name: text for name, _, _, text in METRICS}

        def counter(name: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(
                PREFIX + name.removesuffix("_total"), docs[name], labels, registry=registry
            )

        def gauge(name: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, docs[name], labels, registry=registry)

        def histogram(
            name: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()
        ) -> Histogram:
            return Histogram(PREFIX + name, docs[name], labels, registry=registry, buckets=buckets)

        self.sync_duration = histogram("sync_duration_seconds", SYNC_BUCKETS, ("kind",))
        self.compile_duration = histogram("compile_duration_seconds", SYNC_BUCKETS)
        self.last_sync = gauge("last_sync_timestamp_seconds")
        self.last_queued = gauge("last_queued_timestamp_seconds")
        self.programming_duration = histogram(
            "network_programming_duration_seconds", PROGRAMMING_BUCKETS
        )
        self.sync_failures = counter("sync_failures_total")
        self.restores = counter("iptables_restore_total", ("family",))
        self.restore_failures = counter("iptables_restore_failures_total", ("family",))
        self.restore_duration = histogram(
            "iptables_restore_duration_seconds", SYNC_BUCKETS, ("family",)
        )
        self.bytes_written = counter("bytes_written_total", ("family",))
        self.rules = gauge("rules", ("family", "table"))
        self.chains = gauge("chains", ("family", "table"))
        self.resync_repairs = counter("resync_repairs_total")
        self.local_pods = gauge("local_pods")
        self.local_pods_selected = gauge("local_pods_selected", ("direction",))
        self.policies = gauge("policies")
        self.invalid_policies = gauge("invalid_policies")
        self.cluster_policies = gauge("cluster_policies")
        self.pods = gauge("pods")
        self.namespaces = gauge("namespaces")
        self.flows_revoked = counter("flows_revoked_total", ("family", "reason"))
        self.flow_scan_duration = histogram("flow_scan_duration_seconds", SYNC_BUCKETS)
        self.cni_add_duration = histogram("cni_add_duration_seconds", SYNC_BUCKETS)
        self.cni_add_failures = counter("cni_add_failures_total", ("result",))
        for result in ("timeout", "error"):
            self.cni_add_failures.labels(result=result)
        self.denied_connections = counter("denied_connections_total", ("direction", "namespace"))
        self.denied_log_dropped = counter("denied_log_dropped_total", ("reason",))
        # Both kinds exist from the start, so rate() and absent() behave before any sync.
        for kind in ("full", "partial"):
            self.sync_duration.labels(kind=kind)
        for direction in ("ingress", "egress"):
            self.local_pods_selected.labels(direction=direction)
        registry.register(_SourceCollector(source_health))

    def cni_add(self, seconds: float, result: str) -> None:
        """One CNI ADD answered after ``seconds``: ok, timeout or error."""
        self.cni_add_duration.observe(seconds)
        if result != "ok":
            self.cni_add_failures.labels(result=result).inc()

    def deny_log_enabled(self) -> None:
        """With --log-denied, the drop counters exist from the start (rate() works)."""
        for reason in ("rate_limit", "overflow"):
            self.denied_log_dropped.labels(reason=reason)

    def denied(self, direction: str, namespace: str) -> None:
        self.denied_connections.labels(direction=direction, namespace=namespace).inc()

    def denied_log_lost(self, reason: str, count: int) -> None:
        self.denied_log_dropped.labels(reason=reason).inc(count)

    # -- SyncObserver --------------------------------------------------------------------

    def changes_queued(self, at: float) -> None:
        self.last_queued.set(at)

    def sync_finished(self, outcome: SyncOutcome) -> None:
        with self._lock:
            self._observe(outcome)

    def _observe(self, outcome: SyncOutcome) -> None:
        finished = outcome.started_at + outcome.total_seconds
        kind = "full" if outcome.full else "partial"
        self.sync_duration.labels(kind=kind).observe(outcome.total_seconds)
        self.compile_duration.observe(outcome.compile_seconds)
        for family in outcome.rulesets:
            self._see_family(family)

        report = outcome.report
        synced = report.families if report is not None else {}
        for family, family_sync in synced.items():
            self._see_family(family)
            name = family.value
            if not family_sync.plan.is_noop:
                self.restores.labels(family=name).inc()
                self.restore_duration.labels(family=name).observe(family_sync.restore_seconds)
            self.bytes_written.labels(family=name).inc(family_sync.bytes_written)
            ruleset = outcome.rulesets.get(family)
            if ruleset is not None:
                self.rules.labels(family=name, table=TABLE).set(ruleset.rule_count)
                self.chains.labels(family=name, table=TABLE).set(len(ruleset.chains))
        if report is not None and report.drift_found:
            self.resync_repairs.inc()

        if outcome.succeeded:
            self.last_sync.set(finished)
            # The rules were in the kernel before the pass looked at established flows.
            programmed = finished - (outcome.flows.seconds if outcome.flows is not None else 0.0)
            if outcome.cause is not Cause.INITIAL:
                for change in outcome.changes:
                    if change.received_at > 0:
                        latency = max(0.0, programmed - change.received_at)
                        self.programming_duration.observe(latency)
        else:
            self.sync_failures.inc()
            # Families that were to be written but are not in the report failed.
            for family in outcome.rulesets:
                if family not in synced:
                    self.restore_failures.labels(family=family.value).inc()

        flows = outcome.flows
        if flows is not None:
            self.flow_scan_duration.observe(flows.seconds)
            for revoked in flows.revoked:
                self.flows_revoked.labels(
                    family=revoked.family.value, reason=revoked.reason.value
                ).inc()

        counts = outcome.counts
        self.local_pods.set(counts.local_pods)
        self.local_pods_selected.labels(direction="ingress").set(counts.local_pods_ingress_isolated)
        self.local_pods_selected.labels(direction="egress").set(counts.local_pods_egress_isolated)
        self.policies.set(counts.policies)
        self.invalid_policies.set(counts.invalid_policies)
        self.cluster_policies.set(counts.cluster_policies)
        self.pods.set(counts.pods)
        self.namespaces.set(counts.namespaces)

    def _see_family(self, family: Family) -> None:
        if family in self._families_seen:
            return
        self._families_seen.add(family)
        name = family.value
        self.restores.labels(family=name)
        self.restore_failures.labels(family=name)
        self.bytes_written.labels(family=name)
        for reason in RevokeReason:
            self.flows_revoked.labels(family=name, reason=reason.value)
