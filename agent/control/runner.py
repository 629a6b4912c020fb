"""Wire a source, the reconciler, the dataplane and the observers into a running agent."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from agent.compiler.config import CompilerConfig
from agent.control.node_addresses import AddressWatcher
from agent.control.outcome import Cause, SyncObserver
from agent.control.reconciler import Reconciler, ReconcilerConfig
from agent.control.source import Source
from agent.dataplane.backend import Backend, BackendError
from agent.dataplane.table import Dataplane
from agent.observability.health import HealthState
from agent.rules import Family

log = logging.getLogger(__name__)

INITIAL_SYNC_TIMEOUT = 60.0


def _families(text: str | None) -> tuple[Family, ...]:
    if not text:
        return (Family.IPV4, Family.IPV6)
    return tuple(Family(part.strip()) for part in text.split(","))


def make_backend_with_retry(choice: str, stop: threading.Event | None = None) -> Backend:
    """Detect (or build) the backend; a transient failure means retry, never a guess."""
    from agent.dataplane.detect import make_backend

    delay = 0.5
    while True:
        try:
            return make_backend(choice)  # type: ignore[arg-type]
        except BackendError as error:
            if stop is None:
                raise
            log.warning("cannot choose the iptables backend yet (%s); retrying", error)
            if stop.wait(delay):
                raise
            delay = min(delay * 2, 30.0)


def _make_source(args: argparse.Namespace) -> Source:
    if args.source_file:
        from agent.control.file_source import FileSource

        return FileSource(args.source_file, poll_interval=None if args.once else 0.5)
    from agent.control.kube_source import KubeSource, make_api_client

    return KubeSource(make_api_client(args.kubeconfig), args.node)


def _observers(args: argparse.Namespace, source: Source) -> tuple[list[SyncObserver], Any]:
    """Metrics, rule log and health; and the HTTP server to shut down at exit."""
    from agent.observability import wiring

    return wiring.build(args, source)


def run_agent(args: argparse.Namespace, compiler: CompilerConfig) -> int:
    if not args.node:
        log.error("--node (or env NODE_NAME) is required")
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        log.info("signal %d: stopping; rules stay in place", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        backend = make_backend_with_retry(args.backend, None if args.once else stop)
    except BackendError as error:
        log.error("cannot use iptables: %s", error)
        return 1
    log.info("iptables backend: %s", backend.name)
    extra = tuple(ipaddress.ip_address(text) for text in args.node_ip)
    config = ReconcilerConfig(
        node_name=args.node,
        families=_families(args.family),
        compiler=compiler,
        min_interval=0.0 if args.once else args.min_sync_interval,
        resync_period=args.resync_period,
        extra_node_addresses=extra,
    )
    source = _make_source(args)
    try:
        observers, server = ([], None) if args.once else _observers(args, source)
    except (ValueError, OSError) as error:
        log.error("cannot start metrics, health or the rule log: %s", error)
        return 2
    heartbeat = next((o.heartbeat for o in observers if isinstance(o, HealthState)), None)
    # Partial syncs trust what we last wrote (reading 20k rules back costs more than the
    # write); full resyncs read the kernel and repair any drift.
    dataplane = Dataplane(backend, compiler.chain_prefix + "-", read_on_partial=False)
    watcher: AddressWatcher | None = None
    if not args.no_kernel_addresses:
        # The callback runs only after start(), when `reconciler` exists.
        watcher = AddressWatcher(
            on_change=lambda addresses: reconciler.on_node_addresses(addresses)
        )
    reconciler = Reconciler(
        config,
        source,
        dataplane,
        observers=observers,
        kernel_addresses=(lambda: watcher.addresses) if watcher is not None else None,
        on_heartbeat=heartbeat,
    )
    source.start(reconciler.on_changes)
    try:
        if args.once:
            return _run_once(reconciler, source, stop)
        if watcher is not None:
            watcher.start()
        log.info("netpol-agent running on node %s", args.node)
        reconciler.run(stop)
        return 0
    finally:
        source.stop()
        if watcher is not None:
            watcher.stop()
        if server is not None:
            server.stop()


def _run_once(reconciler: Reconciler, source: Source, stop: threading.Event) -> int:
    deadline = time.monotonic() + INITIAL_SYNC_TIMEOUT
    while not source.synced:
        if time.monotonic() > deadline or stop.wait(0.05):
            log.error("the source did not finish its initial listing; nothing written")
            return 1
    outcome = reconciler.run_pass(Cause.INITIAL)
    return 0 if outcome.succeeded else 1


def cleanup(args: argparse.Namespace) -> int:
    """Remove every chain the agent owns and the FORWARD jump, in both families."""
    try:
        backend = make_backend_with_retry(args.backend)
    except BackendError as error:
        log.error("cannot use iptables: %s", error)
        return 1
    prefix = args.chain_prefix + "-"
    failed = False
    for family in _families(args.family):
        try:
            result = backend.cleanup(family, prefix)
        except BackendError as error:
            log.error("cleanup of %s failed: %s", family.value, error)
            failed = True
            continue
        log.info("%s: removed %d chains", family.value, result.chains_deleted)
    return 1 if failed else 0
