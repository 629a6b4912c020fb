"""Build the running agent from an ``AgentConfig`` and run it; also ``cleanup``.

This is the only module that knows every layer: it picks the source, the backend, the
dataplane, the reconciler and the observers (metrics, rule log, health server), connects
them, and owns the process's lifetime (signals, ``--once``, shutdown). It takes a typed,
already validated configuration: nothing here parses flags.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Literal

from prometheus_client import CollectorRegistry

from agent.config import AgentConfig, BackendChoice
from agent.control import cni_conf
from agent.control.cni_server import CniServer
from agent.control.flows import FlowRevoker
from agent.control.node_addresses import AddressWatcher
from agent.control.outcome import Cause, SyncObserver, SyncOutcome
from agent.control.reconciler import Reconciler, ReconcilerConfig
from agent.control.source import Source
from agent.dataplane.backend import Backend, BackendError
from agent.dataplane.conntrack import ConntrackTable
from agent.dataplane.table import Dataplane
from agent.model.objects import Direction, IPAddress
from agent.observability.denylog import DenyLog
from agent.observability.health import HealthServer, HealthState
from agent.observability.metrics import Metrics
from agent.observability.rulelog import RuleLog
from agent.rules import Family
from agent.runtime.backoff import Backoff

log = logging.getLogger("netpol-agent")

INITIAL_SYNC_TIMEOUT = 60.0


def make_backend(
    choice: BackendChoice,
    stop: threading.Event | None = None,
    *,
    factory: Callable[[BackendChoice], Backend] | None = None,
    backoff: Backoff | None = None,
) -> Backend:
    """Detect (or build) the backend. A transient failure means retry (while ``stop`` is
    given and not set), never a guess; without ``stop`` the first failure raises."""
    if factory is None:
        from agent.dataplane.detect import make_backend as detect

        factory = detect
    backoff = backoff or Backoff(0.5, 30.0)
    while True:
        try:
            return factory(choice)
        except BackendError as error:
            if stop is None:
                raise
            delay = backoff.next_delay()
            log.warning(
                "cannot choose the iptables backend yet (%s); retrying in %.1fs", error, delay
            )
            if stop.wait(delay):
                raise


def make_conntrack() -> ConntrackTable:
    """The conntrack table of the namespace the agent runs in (the node's)."""
    from agent.dataplane.conntrack import NetlinkConntrack

    return NetlinkConntrack()


def make_source(config: AgentConfig) -> Source:
    if config.source.file is not None:
        from agent.control.file_source import FileSource

        return FileSource(
            config.source.file, poll_interval=None if config.once else config.source.poll_interval
        )
    from agent.control.kube_source import KubeSource, make_api_client

    return KubeSource(make_api_client(config.source.kubeconfig))


@dataclass
class Observers:
    """Metrics, rule log and health for ``run``; and the HTTP server to stop at exit."""

    observers: list[SyncObserver]
    health: HealthState | None
    server: HealthServer | None
    metrics: Metrics | None = None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def make_observers(config: AgentConfig, source: Source) -> Observers:
    """Raises OSError if the rule log cannot be opened or the metrics port bound."""
    if config.once:
        return Observers([], None, None)
    registry = CollectorRegistry()
    health = HealthState(source_health=lambda: source.health)
    metrics = Metrics(registry, source_health=lambda: source.health)
    # The rule log goes first: once a scrape or /readyz shows a pass, its lines are on disk.
    observers: list[SyncObserver] = []
    if config.rule_log is not None:
        rule_log = config.rule_log
        observers.append(RuleLog(rule_log.path, rule_log.max_bytes, rule_log.backups))
    observers.append(metrics)
    observers.append(health)
    server = None
    if config.metrics_address:
        server = HealthServer(config.metrics_address, registry, health).start()
    return Observers(observers, health, server, metrics)


class StartupGc:
    """The cyclic garbage collector stays off from start until the first pass finished
    (or ``deadline`` seconds passed, so an agent that cannot sync does not pile up cycles).

    Listing and compiling the initial state allocates millions of objects that all live
    on; each of them makes the collector walk everything again and find nothing (at L,
    about 0.9 s of full collections before the first rules). Reference counting still
    frees everything that is not a cycle meanwhile.
    """

    def __init__(self, deadline: float) -> None:
        self._was_enabled = gc.isenabled()
        self._lock = threading.Lock()
        self._done = False
        gc.disable()
        self._timer = threading.Timer(deadline, self.restore)
        self._timer.daemon = True
        self._timer.start()

    def restore(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._timer.cancel()
        if self._was_enabled:
            gc.enable()

    def sync_finished(self, outcome: SyncOutcome) -> None:
        self.restore()

    def changes_queued(self, at: float) -> None:
        pass


def reconciler_config(config: AgentConfig) -> ReconcilerConfig:
    intervals = config.intervals
    return ReconcilerConfig(
        node_name=config.node_name,
        families=config.families,
        compiler=config.compiler,
        min_interval=0.0 if config.once else intervals.min_sync,
        resync_period=intervals.resync,
        retry_initial=intervals.retry_initial,
        retry_max=intervals.retry_max,
        extra_node_addresses=config.node_ips,
        pod_cidrs=config.pod_cidrs,
    )


def run(config: AgentConfig, *, stop: threading.Event | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT (or ``stop``); 0 on a clean stop.

    Exit codes: 1 when iptables cannot be used or ``--once`` fails, 2 when a setting
    only the running system can check is wrong (metrics port taken, rule log unwritable,
    unreadable state file at start).
    """
    stop = stop or threading.Event()
    startup_gc = StartupGc(INITIAL_SYNC_TIMEOUT)
    try:
        return _run(config, stop, startup_gc)
    finally:
        startup_gc.restore()


def _run(config: AgentConfig, stop: threading.Event, startup_gc: StartupGc) -> int:
    reconciler: Reconciler | None = None
    cni_server: CniServer | None = None
    keeper: cni_conf.ConflistKeeper | None = None

    def on_signal(signum: int, _: FrameType | None) -> None:
        log.info("stopping; rules stay in place", extra={"kv": {"signal": signum}})
        stop.set()
        if reconciler is not None:
            reconciler.wake()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    try:
        backend = make_backend(config.backend, None if config.once else stop)
    except BackendError as error:
        log.error("cannot use iptables: %s", error)
        return 1
    log.info("iptables backend chosen", extra={"kv": {"backend": backend.name}})
    source = make_source(config)
    try:
        observers = make_observers(config, source)
    except OSError as error:
        log.error("cannot start metrics, health or the rule log: %s", error)
        return 2
    # Partial syncs trust what we last wrote (reading 20k rules back costs more than the
    # write); full resyncs read the kernel and repair any drift.
    dataplane = Dataplane(backend, config.compiler.chain_prefix + "-", read_on_partial=False)

    deny_log = start_deny_log(config, backend.name, observers.metrics)

    def on_addresses(addresses: tuple[IPAddress, ...]) -> None:
        if reconciler is not None:  # the watcher starts after the reconciler exists
            reconciler.on_node_addresses(addresses)

    watcher = AddressWatcher(on_change=on_addresses) if config.kernel_addresses else None
    health = observers.health
    reconciler = Reconciler(
        reconciler_config(config),
        source,
        dataplane,
        observers=[*observers.observers, startup_gc],
        kernel_addresses=(lambda: watcher.addresses) if watcher is not None else None,
        on_heartbeat=health.heartbeat if health is not None else None,
        # Both modes: flows of addresses that local pods gave up are deleted; strict
        # also judges established flows again after a policy change.
        flows=FlowRevoker(make_conntrack(), config.established_flows, config.compiler.revoked_mark),
        on_written=deny_log.update_state if deny_log is not None else None,
    )
    try:
        try:
            source.start(reconciler.on_changes)
        except Exception as error:  # e.g. the state file is unreadable at start
            log.error("cannot start the source: %s", error)
            return 2
        if config.once:
            return _run_once(reconciler, source, stop)
        if watcher is not None:
            watcher.start()
        if config.cni is not None:
            try:
                cni_server, keeper = start_cni(config, reconciler, observers.metrics)
            except OSError as error:
                log.error("cannot serve the cni socket %s: %s", config.cni.socket, error)
                return 2
        log.info("netpol-agent running", extra={"kv": {"node": config.node_name}})
        reconciler.run(stop)
        return 0
    finally:
        if keeper is not None:
            keeper.stop()
        if cni_server is not None:
            cni_server.stop()
        source.stop()
        if watcher is not None:
            watcher.stop()
        if deny_log is not None:
            deny_log.stop()
        observers.stop()


def start_deny_log(
    config: AgentConfig, backend_name: str, metrics: Metrics | None
) -> DenyLog | None:
    """The deny log's reader (``--log-denied``, not with ``--once``). If its NFLOG group
    cannot be bound, the agent says so and enforces without it: the log must never cost
    the node its policies."""
    if config.deny_log is None or config.compiler.deny_log is None or config.once:
        return None
    from agent.dataplane.nflog import NflogError
    from agent.dataplane.restore_backend import packet_counts

    # libiptc (iptc) is the legacy backend: its counters read like legacy's.
    mode: Literal["nft", "legacy"] = "nft" if backend_name == "nft" else "legacy"
    chains = {
        family: {d: config.compiler.denied_chain(d) for d in Direction}
        for family in config.families
    }
    if metrics is not None:
        metrics.deny_log_enabled()
    deny_log = DenyLog(
        config.deny_log.path,
        config.compiler.deny_log,
        chains,
        max_bytes=config.deny_log.max_bytes,
        backups=config.deny_log.backups,
        read_counters=lambda family, chain: packet_counts(mode, family, chain),
        on_denied=(lambda line: metrics.denied(line.direction, line.namespace))
        if metrics is not None
        else None,
        on_dropped=metrics.denied_log_lost if metrics is not None else None,
    )
    try:
        deny_log.start()
    except NflogError as error:
        log.error("the deny log is off: %s (another program may hold the group)", error)
        return None
    log.info(
        "deny log on",
        extra={"kv": {"file": deny_log.path, "group": config.compiler.deny_log.group}},
    )
    return deny_log


def start_cni(
    config: AgentConfig, reconciler: Reconciler, metrics: Metrics | None
) -> tuple[CniServer, cni_conf.ConflistKeeper | None]:
    """The plugin's socket and, with a conf dir, the keeper of its network-list entry."""
    assert config.cni is not None
    server = CniServer(
        config.cni.socket, reconciler, on_add=metrics.cni_add if metrics is not None else None
    ).start()
    keeper = None
    if config.cni.conf_dir is not None:
        entry = cni_conf.plugin_entry(
            config.cni.socket,
            timeout=config.cni.timeout,
            failure_policy=config.cni.failure_policy,
        )
        keeper = cni_conf.ConflistKeeper(config.cni.conf_dir, entry).start()
    return server, keeper


def install_cni(binary: str, bin_dir: str, conf_dir: str, entry: dict[str, object]) -> int:
    """``install-cni``: the plugin binary into ``bin_dir``, its entry last in the network
    list of ``conf_dir`` (if the main CNI wrote one yet; ``run --cni-conf-dir`` keeps it)."""
    try:
        path = cni_conf.install_binary(binary, bin_dir)
        log.info("cni plugin installed", extra={"kv": {"binary": path}})
        changed = cni_conf.insert(conf_dir, entry)
    except cni_conf.CniConfError as error:
        log.warning("%s: not chained (run --cni-conf-dir tries again)", error)
        return 0
    except OSError as error:
        log.error("cannot install the cni plugin: %s", error)
        return 1
    log.info("cni plugin chained", extra={"kv": {"file": changed or "unchanged"}})
    return 0


def cleanup_cni(conf_dir: str | None, bin_dir: str | None) -> int:
    """Take the plugin out of the network list first, then delete its binary."""
    try:
        if conf_dir is not None:
            changed = cni_conf.remove(conf_dir)
            log.info("cni plugin unchained", extra={"kv": {"file": changed or "unchanged"}})
        if bin_dir is not None:
            removed = cni_conf.remove_binary(bin_dir)
            log.info("cni plugin binary removed", extra={"kv": {"removed": removed}})
    except (OSError, cni_conf.CniConfError) as error:
        log.error("cannot remove the cni plugin: %s", error)
        return 1
    return 0


def _run_once(reconciler: Reconciler, source: Source, stop: threading.Event) -> int:
    deadline = time.monotonic() + INITIAL_SYNC_TIMEOUT
    while not source.synced:
        if time.monotonic() > deadline or stop.wait(0.05):
            log.error("the source did not finish its initial listing; nothing written")
            return 1
    outcome = reconciler.run_pass(Cause.INITIAL)
    return 0 if outcome.succeeded else 1


def cleanup(backend_choice: BackendChoice, families: Sequence[Family], chain_prefix: str) -> int:
    """Remove every chain the agent owns and the FORWARD jump, in the given families."""
    try:
        backend = make_backend(backend_choice)
    except BackendError as error:
        log.error("cannot use iptables: %s", error)
        return 1
    prefix = chain_prefix + "-"
    failed = False
    for family in families:
        try:
            result = backend.cleanup(family, prefix)
        except BackendError as error:
            log.error("cleanup of %s failed: %s", family.value, error)
            failed = True
            continue
        log.info(
            "cleanup done",
            extra={"kv": {"family": family.value, "chains_removed": result.chains_deleted}},
        )
    return 1 if failed else 0
