"""What one reconcile pass did: the record the observability layer turns into metrics,
rule-change log lines and readiness."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agent.control.flows import FlowReport
from agent.control.source import Kind
from agent.dataplane.table import SyncReport
from agent.rules import Family, Ruleset


class Cause(enum.Enum):
    INITIAL = "initial sync"
    CHANGE = "change"
    RESYNC = "periodic resync"
    RETRY = "retry after failure"
    NODE_ADDRESSES = "node addresses changed"


@dataclass(frozen=True, slots=True)
class ObjectChange:
    """One object change that this pass took in: ``action`` is added/updated/deleted."""

    kind: Kind
    key: str
    action: str
    # What changed, when known: e.g. ("labels",) for a relabelled pod or namespace.
    fields: tuple[str, ...] = ()
    received_at: float = 0.0  # time.time() when the source delivered it


@dataclass(frozen=True, slots=True)
class StateCounts:
    pods: int = 0
    namespaces: int = 0
    policies: int = 0
    local_pods: int = 0
    local_pods_ingress_isolated: int = 0
    local_pods_egress_isolated: int = 0
    invalid_policies: int = 0  # NetworkPolicies and ClusterNetworkPolicies with problems
    cluster_policies: int = 0


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    cause: Cause
    full: bool
    started_at: float  # time.time()
    compile_seconds: float
    total_seconds: float
    changes: tuple[ObjectChange, ...] = ()
    counts: StateCounts = field(default_factory=StateCounts)
    rulesets: Mapping[Family, Ruleset] = field(default_factory=dict)
    report: SyncReport | None = None  # None when the dataplane write failed entirely
    error: str | None = None
    # The families whose write failed, and why (the others were written).
    family_errors: Mapping[Family, str] = field(default_factory=dict)
    # What the pass did to established flows (None: it did not look at them).
    flows: FlowReport | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None


class SyncObserver(Protocol):
    def sync_finished(self, outcome: SyncOutcome) -> None:
        """Called after every pass, successful or not, from the reconcile thread."""

    def changes_queued(self, at: float) -> None:
        """Called when the source delivered changes that a later pass will take in."""
