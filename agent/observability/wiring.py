"""Build the observers (metrics, rule-change log, health) a running agent reports to."""

from __future__ import annotations

import argparse
from typing import Any

from prometheus_client import CollectorRegistry

from agent.control.outcome import SyncObserver
from agent.control.source import Source
from agent.observability.health import HealthServer, HealthState
from agent.observability.metrics import Metrics
from agent.observability.rulelog import RuleLog


def build(args: argparse.Namespace, source: Source) -> tuple[list[SyncObserver], Any]:
    """The observers for ``run``, and the HTTP server to shut down at exit (or None).

    The observers are ``[Metrics, HealthState]`` plus a ``RuleLog`` unless ``--rule-log``
    is empty. The reconciler must tick ``HealthState.heartbeat()`` (the server's
    ``state``, or find it in the list) on every loop iteration. Raises ValueError for an
    invalid ``--rule-log-max-bytes``/``--rule-log-backups`` or ``--metrics-address``, and
    OSError if the metrics port cannot be bound.
    """
    registry = CollectorRegistry()
    metrics = Metrics(registry, source_health=lambda: source.health)
    health = HealthState()
    observers: list[SyncObserver] = [metrics, health]
    rule_log_path = getattr(args, "rule_log", "")
    if rule_log_path:
        observers.append(RuleLog(rule_log_path, args.rule_log_max_bytes, args.rule_log_backups))
    server: HealthServer | None = None
    address = getattr(args, "metrics_address", "")
    if address:
        server = HealthServer(address, registry, health).start()
    return observers, server
