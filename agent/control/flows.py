"""After a pass wrote new rules: revoke the established flows they now deny (strict
mode), and forget the flows of addresses that local pods gave up (always).

The judging is the compiler's (``agent.compiler.flows``, pure); the table is the
dataplane's (``agent.dataplane.conntrack``, thin netlink I/O); this module only decides
which entries to look at and which to delete, and reports what it did.

- **Strict** (``--established-flows=strict``, the default): after a pass that changed a
  family's rules (and after the first pass of a process, which may follow rules written
  by someone else), every conntrack entry with a local pod at either end is judged as the
  first packet of a new connection through the new rules; denied ones are deleted, so
  their next packet is tracked again as NEW and meets the policy chains.
- **Keep**: established flows are left alone (what Calico and Antrea do).
- **Released addresses**, in both modes: when an address leaves this node's pod set (its
  pod was deleted or finished, or the address now belongs to another pod), every entry
  with that address at either end is deleted, so a new pod that gets the address
  inherits nothing.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from agent.compiler.flows import Flow, FlowJudge, Verdict
from agent.dataplane.conntrack import ConntrackEntry, ConntrackError, ConntrackTable
from agent.model.objects import IPAddress
from agent.rules import Family, Ruleset

log = logging.getLogger(__name__)


class EstablishedFlows(enum.Enum):
    STRICT = "strict"
    KEEP = "keep"


class RevokeReason(enum.Enum):
    POLICY = "policy"  # the new rules deny it
    POD_DELETED = "pod deleted"  # an end is an address no local pod holds any more


@dataclass(frozen=True, slots=True)
class RevokedFlow:
    family: Family
    flow: Flow
    reason: RevokeReason
    sport: int | None = None


@dataclass(frozen=True, slots=True)
class FlowReport:
    """What one pass did to the conntrack table."""

    scanned: Mapping[Family, int] = field(default_factory=dict)  # entries listed
    revoked: tuple[RevokedFlow, ...] = ()
    list_seconds: float = 0.0  # reading the table
    judge_seconds: float = 0.0  # deciding
    delete_seconds: float = 0.0
    walks: int = 0  # distinct packets walked through the rules
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.list_seconds + self.judge_seconds + self.delete_seconds


def flow_of(entry: ConntrackEntry) -> Flow:
    """The flow as FORWARD judged its first packet: original source, destination and
    port after DNAT (the reply tuple's source)."""
    original, reply = entry.original, entry.reply
    return Flow(
        source=original.source,
        destination=reply.source,
        protocol=original.protocol,
        dport=reply.sport,
        icmp_type=original.icmp_type,
    )


def select_revocations(
    entries: Iterable[ConntrackEntry],
    judge: FlowJudge | None,
    released: Collection[IPAddress],
    node_addresses: Collection[IPAddress],
) -> list[tuple[ConntrackEntry, RevokedFlow]]:
    """The entries to delete, and why. ``judge`` is None when the rules are not to be
    applied to established flows (keep mode, or this family's rules did not change)."""
    chosen: list[tuple[ConntrackEntry, RevokedFlow]] = []
    for entry in entries:
        flow = flow_of(entry)
        ends = (flow.source, flow.destination, entry.original.destination)
        reason: RevokeReason | None = None
        if released and any(address in released for address in ends):
            reason = RevokeReason.POD_DELETED
        elif (
            judge is not None
            # Traffic to the node itself never crosses FORWARD: not ours to judge.
            and flow.destination not in node_addresses
            and judge.judge(flow) is Verdict.DENIED
        ):
            reason = RevokeReason.POLICY
        if reason is not None:
            chosen.append((entry, RevokedFlow(entry.family, flow, reason, entry.original.sport)))
    return chosen


class FlowRevoker:
    def __init__(self, table: ConntrackTable, mode: EstablishedFlows) -> None:
        self.table = table
        self.mode = mode

    def after_sync(
        self,
        rulesets: Mapping[Family, Ruleset],
        changed: Collection[Family],
        local_pods: Collection[IPAddress],
        node_addresses: Collection[IPAddress],
        released: Collection[IPAddress],
    ) -> FlowReport:
        """Judge (strict, ``changed`` families) and clean (``released`` addresses)."""
        scanned: dict[Family, int] = {}
        revoked: list[RevokedFlow] = []
        list_seconds = judge_seconds = delete_seconds = 0.0
        walks = 0
        strict = self.mode is EstablishedFlows.STRICT
        try:
            for family, ruleset in rulesets.items():
                version = family.version
                gone = frozenset(a for a in released if a.version == version)
                judged = strict and family in changed
                if not judged and not gone:
                    continue
                listed = self.table.list(family)
                list_seconds += listed.seconds
                scanned[family] = len(listed.entries)
                started = time.monotonic()
                judge = FlowJudge(ruleset, local_pods, node_addresses) if judged else None
                chosen = select_revocations(
                    listed.entries,
                    judge,
                    gone,
                    frozenset(a for a in node_addresses if a.version == version),
                )
                walks += judge.walks if judge is not None else 0
                judge_seconds += time.monotonic() - started
                if not chosen:
                    continue
                started = time.monotonic()
                self.table.delete([entry for entry, _ in chosen])
                delete_seconds += time.monotonic() - started
                revoked.extend(flow for _, flow in chosen)
        except ConntrackError as error:
            log.warning("established flows not checked: %s", error)
            return FlowReport(
                scanned, tuple(revoked), list_seconds, judge_seconds, delete_seconds, walks,
                str(error),
            )  # fmt: skip
        return FlowReport(
            scanned, tuple(revoked), list_seconds, judge_seconds, delete_seconds, walks
        )


__all__ = [
    "EstablishedFlows",
    "FlowReport",
    "FlowRevoker",
    "RevokeReason",
    "RevokedFlow",
    "flow_of",
    "select_revocations",
]
