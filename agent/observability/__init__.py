"""Observability: Prometheus metrics, the rule-change log, health endpoints and logging.

Each of ``Metrics``, ``RuleLog`` and ``HealthState`` is a ``SyncObserver``
(agent/control/outcome.py): the reconciler calls ``sync_finished(outcome)`` after every
pass and ``changes_queued(at)`` when the source delivers changes. ``logs`` holds the log
format (logfmt on stdout).
"""

from agent.observability.health import HealthServer, HealthState
from agent.observability.logs import LogfmtFormatter, configure_logging
from agent.observability.metrics import Metrics
from agent.observability.rulelog import RuleLog

__all__ = [
    "HealthServer",
    "HealthState",
    "LogfmtFormatter",
    "Metrics",
    "RuleLog",
    "configure_logging",
]
