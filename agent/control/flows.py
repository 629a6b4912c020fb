"""After a pass wrote new rules: revoke the established flows they now deny (strict
mode), and forget the flows of addresses that local pods gave up (always).

The judging is the compiler's (``agent.compiler.flows``, pure); the table is the
dataplane's (``agent.dataplane.conntrack``, thin netlink I/O); this module only decides
which entries to look at and which to delete, and reports what it did.

- **Strict** (``--established-flows=strict``, the default): after a pass that changed a
  family's rules (and after the first pass of a process, which may follow rules written
  by someone else), every conntrack entry with a local pod at either end is judged as the
  first packet of a new connection through the new rules. Denied ones are *revoked*:
  their conntrack mark gets the revoked bit, which the entry chain drops before it lets
  established traffic through, so not one more packet passes in either direction.
  Deleting the entry is not enough for TCP: with ``nf_conntrack_tcp_loose`` (the
  default) the next packet of the accepting side is picked up as a NEW flow in the
  reverse direction, which the rules may allow, and the connection lives on. A revoked
  flow the rules allow again (a later change) is unmarked.
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

from agent.compiler.flows import Flow, FlowJudge, Verdict, affected_addresses
from agent.dataplane.conntrack import ConntrackEntry, ConntrackError, ConntrackTable
from agent.model.objects import IPAddress
from agent.rules import Family, Ruleset

log = logging.getLogger(__name__)

# Up to this many addresses, the conntrack dump is filtered by the kernel, two dumps per
# address (as the original source, as the reply source); beyond, one dump of everything.
FILTERED_LIST_LIMIT = 16


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
    pod: str = ""  # the local pod (namespace/name) at an end, or the one that left

    def describe(self) -> str:
        """``tcp 10.0.0.1:40000 -> 10.0.0.2:80``."""
        flow = self.flow

        def host(address: IPAddress) -> str:
            return f"[{address}]" if address.version == 6 else str(address)

        sport = f":{self.sport}" if self.sport is not None else ""
        dport = f":{flow.dport}" if flow.dport is not None else ""
        return f"{flow.protocol_name} {host(flow.source)}{sport} -> {host(flow.destination)}{dport}"


@dataclass(frozen=True, slots=True)
class FlowReport:
    """What one pass did to the conntrack table."""

    scanned: Mapping[Family, int] = field(default_factory=dict)  # entries listed
    revoked: tuple[RevokedFlow, ...] = ()
    restored: int = 0  # revoked flows the rules allow again
    list_seconds: float = 0.0  # reading the table
    judge_seconds: float = 0.0  # deciding
    write_seconds: float = 0.0  # deleting and marking entries
    walks: int = 0  # distinct packets walked through the rules
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.list_seconds + self.judge_seconds + self.write_seconds


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


@dataclass(frozen=True, slots=True)
class FlowPlan:
    """What to do to a family's entries."""

    delete: tuple[tuple[ConntrackEntry, RevokedFlow], ...] = ()  # released addresses
    revoke: tuple[tuple[ConntrackEntry, RevokedFlow], ...] = ()  # now denied: mark them
    restore: tuple[ConntrackEntry, ...] = ()  # revoked before, allowed again: unmark


def plan_flows(
    entries: Iterable[ConntrackEntry],
    judge: FlowJudge | None,
    released: Collection[IPAddress],
    node_addresses: Collection[IPAddress],
    revoked_mark: int = 0,
    pods: Mapping[IPAddress, str] | None = None,
) -> FlowPlan:
    """Which entries to delete (an end at a released address), to revoke (the new rules
    deny them) and to restore (revoked earlier, allowed again). ``judge`` is None when
    established flows are not to be judged (keep mode, or the rules did not change)."""
    delete: list[tuple[ConntrackEntry, RevokedFlow]] = []
    revoke: list[tuple[ConntrackEntry, RevokedFlow]] = []
    restore: list[ConntrackEntry] = []
    owners = pods or {}

    def pod_of(flow: Flow) -> str:
        return owners.get(flow.destination) or owners.get(flow.source) or ""

    for entry in entries:
        flow = flow_of(entry)
        ends = (flow.source, flow.destination, entry.original.destination)
        if released and any(address in released for address in ends):
            revoked = RevokedFlow(
                entry.family, flow, RevokeReason.POD_DELETED, entry.original.sport, pod_of(flow)
            )
            delete.append((entry, revoked))
            continue
        if judge is None or flow.destination in node_addresses:
            # Traffic to the node itself never crosses FORWARD: not ours to judge.
            continue
        verdict = judge.judge(flow)
        marked = bool(revoked_mark and entry.mark & revoked_mark)
        if verdict is Verdict.DENIED and not marked:
            revoked = RevokedFlow(
                entry.family, flow, RevokeReason.POLICY, entry.original.sport, pod_of(flow)
            )
            revoke.append((entry, revoked))
        elif verdict is Verdict.ALLOWED and marked:
            restore.append(entry)
    return FlowPlan(tuple(delete), tuple(revoke), tuple(restore))


class FlowRevoker:
    """``revoked_mark``: the conntrack mark bit the entry chain drops (strict mode; 0 in
    keep mode, where only released addresses are cleaned)."""

    def __init__(self, table: ConntrackTable, mode: EstablishedFlows, revoked_mark: int) -> None:
        if mode is EstablishedFlows.STRICT and not revoked_mark:
            raise ValueError("strict mode needs a conntrack mark bit for revoked flows")
        self.table = table
        self.mode = mode
        self.revoked_mark = revoked_mark if mode is EstablishedFlows.STRICT else 0

    def after_sync(
        self,
        rulesets: Mapping[Family, Ruleset],
        changed: Mapping[Family, Collection[str] | None],
        local_pods: Mapping[IPAddress, str],
        node_addresses: Collection[IPAddress],
        released: Mapping[IPAddress, str],
    ) -> FlowReport:
        """Judge (strict) and clean (``released`` addresses).

        ``changed``: per family whose rules changed, the chains created or rewritten
        (None: any may have, e.g. a first pass); only flows of the local pods those
        chains can affect are judged. ``local_pods`` and ``released`` map an address to
        its pod (``namespace/name``), now and before.
        """
        scanned: dict[Family, int] = {}
        revoked: list[RevokedFlow] = []
        restored = 0
        list_seconds = judge_seconds = write_seconds = 0.0
        walks = 0
        strict = self.mode is EstablishedFlows.STRICT
        mark = self.revoked_mark
        try:
            for family, ruleset in rulesets.items():
                version = family.version
                gone = frozenset(a for a in released if a.version == version)
                judged = strict and family in changed
                started = time.monotonic()
                mine = frozenset(a for a in local_pods if a.version == version)
                affected: frozenset[IPAddress] = frozenset()
                if judged:
                    chains = changed[family]
                    found = affected_addresses(ruleset, chains) if chains is not None else None
                    affected = mine if found is None else found & mine
                judge_seconds += time.monotonic() - started
                if not affected and not gone:
                    continue
                wanted = affected | gone
                # A few addresses: the kernel filters the dump; many: one dump of it all.
                listed = self.table.list(
                    family, wanted if len(wanted) <= FILTERED_LIST_LIMIT else None
                )
                list_seconds += listed.seconds
                scanned[family] = len(listed.entries)
                started = time.monotonic()
                judge = FlowJudge(ruleset, affected, node_addresses) if affected else None
                plan = plan_flows(
                    listed.entries,
                    judge,
                    gone,
                    frozenset(a for a in node_addresses if a.version == version),
                    mark,
                    {**local_pods, **released},  # a released address: its old pod
                )
                walks += judge.walks if judge is not None else 0
                judge_seconds += time.monotonic() - started
                started = time.monotonic()
                if plan.delete:
                    self.table.delete([entry for entry, _ in plan.delete])
                if plan.revoke:
                    self.table.set_mark([entry for entry, _ in plan.revoke], mark, mark)
                if plan.restore:
                    restored += self.table.set_mark(plan.restore, 0, mark)
                write_seconds += time.monotonic() - started
                revoked.extend(flow for _, flow in (*plan.delete, *plan.revoke))
        except ConntrackError as error:
            log.warning("established flows not checked: %s", error)
            return FlowReport(
                scanned, tuple(revoked), restored, list_seconds, judge_seconds, write_seconds,
                walks, str(error),
            )  # fmt: skip
        return FlowReport(
            scanned, tuple(revoked), restored, list_seconds, judge_seconds, write_seconds, walks
        )


__all__ = [
    "EstablishedFlows",
    "FlowPlan",
    "FlowReport",
    "FlowRevoker",
    "RevokeReason",
    "RevokedFlow",
    "flow_of",
    "plan_flows",
]
