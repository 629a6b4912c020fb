"""The deny log (``--log-denied``): one JSON line per connection a policy denied on this
node, naming the pod, the direction and the policies that isolate it.

How a line comes to be
----------------------
Every drop of a new connection in the agent's chains first jumps to the log chain of its
direction (``NPA-DENIED-EGRESS``: the source pod's egress denied it; ``-INGRESS``: the
destination pod's ingress). There, only a connection's first packet (not a TCP segment
without a bare SYN, not a packet conntrack calls anything but NEW) goes on to a kernel
rate limit shared by every drop site of the family (``hashlimit``, one bucket per node
and family), and what passes it is copied to an NFLOG group (``--log-denied-group``).
The agent reads the group over netlink, attributes each packet with the cluster as the
rules just written enforce it (the reconciler hands over a snapshot after each pass) and
writes a line. A connection's retransmitted first packets (TCP retries its SYN for about
two minutes) are the same connection: one line per source, destination, protocol and
ports within ``DEDUP_SECONDS``.

Format
------
UTF-8 JSON Lines, keys always in this order::

    {"ts":"2026-11-30T13:20:01.250Z","family":"ipv4","direction":"ingress",
     "pod":"prod/db-0","source":"prod/web-0","source_ip":"10.244.1.7",
     "source_port":40312,"destination":"prod/db-0","destination_ip":"10.244.2.9",
     "protocol":"TCP","port":5432,"policies":["prod/db-only-from-api"],
     "reason":"isolated and no rule allows it"}

``direction`` and ``pod``: whose policies denied it (``pod`` null when the address is no
known pod's: ``--isolate-unknown-pod-ips`` dropped it). ``source``/``destination``: a pod
(``namespace/name``) or the address. ``protocol``: TCP, UDP, SCTP, ICMP, ICMPv6 or the
IP protocol number; ``port`` the destination port (null without ports).
``policies``: the policies isolating ``pod`` in ``direction``, or, when a
ClusterNetworkPolicy rule denied it, that policy (``ClusterNetworkPolicy/<name>``; the
reason names its tier, priority and rule). ``reason``: as ``explain`` says it, from the
state the agent has now.

What the rate limit kept from the log is counted, not guessed: the log chain's last
rule matches every packet that reached the limit, so its counter minus the NFLOG rule's
is what the limit dropped. The agent reads the two counters (``iptables -S CHAIN -v``,
one small chain) at most every ``COUNTER_SECONDS`` and only while packets are being
logged. Packets the kernel logged but the socket had no room for show as gaps in the
group's sequence numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from agent.compiler.config import DENY_LOG_COPY_BYTES, DENY_LOG_PREFIX, DenyLogRules
from agent.dataplane.backend import BackendError
from agent.dataplane.nflog import LoggedPacket, NflogGroup, PacketHeader, decode_ip
from agent.model.objects import Direction, IPAddress, Protocol
from agent.observability.rulelog import (
    DEFAULT_BACKUPS,
    DEFAULT_MAX_BYTES,
    JsonLinesLog,
    _encode_str,
    _json_str,
    format_ts,
)
from agent.policy.explain import Endpoint, decide
from agent.policy.state import ClusterState
from agent.rules import Family

log = logging.getLogger("netpol-agent.denylog")

DEFAULT_DENY_LOG = "/var/log/netpol-agent-denied.log"
DEDUP_SECONDS = 130.0  # TCP's SYN retries (6 by default) span about 127 s
DEDUP_ENTRIES = 8192
COUNTER_SECONDS = 5.0
# The log chain's rules: not a first packet, not NEW, the NFLOG rule, the counting rule.
_NFLOG_RULE, _COUNT_RULE = 2, 3

_PROTOCOL_NAMES = {
    socket.IPPROTO_TCP: "TCP",
    socket.IPPROTO_UDP: "UDP",
    132: "SCTP",
    socket.IPPROTO_ICMP: "ICMP",
    socket.IPPROTO_ICMPV6: "ICMPv6",
}
_PORT_PROTOCOLS = {
    socket.IPPROTO_TCP: Protocol.TCP,
    socket.IPPROTO_UDP: Protocol.UDP,
    132: Protocol.SCTP,
}
_DIRECTIONS = {DenyLogRules.nflog_prefix(d): d for d in Direction}


@dataclass(frozen=True, slots=True)
class DeniedConnection:
    """One line of the deny log."""

    ts: str
    family: str
    direction: str
    pod: str | None
    source: str
    source_ip: str
    source_port: int | None
    destination: str
    destination_ip: str
    protocol: str
    port: int | None
    policies: tuple[str, ...]
    reason: str

    def to_json(self) -> str:
        policies = ",".join(_encode_str(p) for p in self.policies)
        return (
            f'{{"ts":"{self.ts}","family":"{self.family}","direction":"{self.direction}",'
            f'"pod":{_json_str(self.pod)},"source":{_encode_str(self.source)},'
            f'"source_ip":"{self.source_ip}","source_port":{_json_int(self.source_port)},'
            f'"destination":{_encode_str(self.destination)},'
            f'"destination_ip":"{self.destination_ip}","protocol":"{self.protocol}",'
            f'"port":{_json_int(self.port)},"policies":[{policies}],'
            f'"reason":{_encode_str(self.reason)}}}'
        )

    @property
    def namespace(self) -> str:
        """The isolated pod's namespace (the metric's label); empty for an address."""
        return self.pod.partition("/")[0] if self.pod else ""


def _json_int(value: int | None) -> str:
    return "null" if value is None else str(value)


def attribute(
    state: ClusterState,
    direction: Direction,
    family: Family,
    header: PacketHeader,
    ts: str,
) -> DeniedConnection:
    """Who a denied packet was, and whose policies denied it (pure)."""
    source = Endpoint(header.source, state.pod_by_ip.get(header.source))
    destination = Endpoint(header.destination, state.pod_by_ip.get(header.destination))
    isolated = source.pod if direction is Direction.EGRESS else destination.pod
    protocol = _PORT_PROTOCOLS.get(header.protocol)
    port = header.dport if protocol is not None else None
    policies: tuple[str, ...] = ()
    if isolated is None:
        address = header.source if direction is Direction.EGRESS else header.destination
        reason = f"no known pod holds {address} (unknown pod addresses are isolated)"
    else:
        other = destination if direction is Direction.EGRESS else source
        decided = decide(state, direction, isolated, other, protocol, port, destination)
        policies, reason = decided.selecting, decided.reason
        if decided.decided_by is not None:
            policies = (f"ClusterNetworkPolicy/{decided.decided_by.policy}",)
        if decided.allowed:
            reason = f"denied by the rules then in the kernel; allowed now ({reason})"
    return DeniedConnection(
        ts=ts,
        family=family.value,
        direction=direction.short,
        pod=isolated.key if isolated is not None else None,
        source=source.pod.key if source.pod is not None else str(header.source),
        source_ip=str(header.source),
        source_port=header.sport if protocol is not None else None,
        destination=destination.pod.key if destination.pod is not None else str(header.destination),
        destination_ip=str(header.destination),
        protocol=_PROTOCOL_NAMES.get(header.protocol, str(header.protocol)),
        port=port,
        policies=policies,
        reason=reason,
    )


FlowKey = tuple[str, IPAddress, IPAddress, int, int | None, int | None, int | None]


class RecentFlows:
    """The connections logged lately (bounded): a retransmitted first packet is the same
    connection, not a new line."""

    def __init__(self, seconds: float = DEDUP_SECONDS, entries: int = DEDUP_ENTRIES) -> None:
        self.seconds = seconds
        self.entries = entries
        self._seen: OrderedDict[FlowKey, float] = OrderedDict()

    def first_time(self, key: FlowKey, now: float) -> bool:
        seen = self._seen
        while seen:
            oldest_key, oldest = next(iter(seen.items()))
            if now - oldest < self.seconds and len(seen) < self.entries:
                break
            del seen[oldest_key]
        last = seen.pop(key, None)
        seen[key] = now  # a retransmission keeps its connection remembered
        return last is None


@dataclass(frozen=True, slots=True)
class LogCounts:
    """What the deny log saw, for metrics and the tests."""

    lines: int = 0
    rate_limited: int = 0
    overflowed: int = 0


# Packet counters of a log chain: (family, chain) -> counts per rule.
CounterReader = Callable[[Family, str], Sequence[int]]
DeniedCallback = Callable[[DeniedConnection], None]
DroppedCallback = Callable[[str, int], None]


class DenyLog:
    """Reads the NFLOG group in a thread of its own and writes the deny log.

    ``update_state`` is called from the reconcile thread after every pass that wrote;
    nothing is attributed before the first (nothing is dropped by our rules before it).
    """

    def __init__(
        self,
        path: str,
        rules: DenyLogRules,
        chains: dict[Family, dict[Direction, str]],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        read_counters: CounterReader | None = None,
        on_denied: DeniedCallback | None = None,
        on_dropped: DroppedCallback | None = None,
        clock: Callable[[], float] = time.time,
        counter_seconds: float = COUNTER_SECONDS,
    ) -> None:
        self.rules = rules
        self._chains = chains
        self._file = JsonLinesLog(
            path, max_bytes, backups, what="deny log", flag="--log-denied-file"
        )
        self._read_counters = read_counters
        self._on_denied = on_denied
        self._on_dropped = on_dropped
        self._clock = clock
        self._counter_seconds = counter_seconds
        self._state: ClusterState | None = None
        self._recent = RecentFlows()
        self._last_seq: int | None = None
        self._counted: dict[tuple[Family, Direction], int] = {}
        self._counters_owed = False
        self._counters_read_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._group: NflogGroup | None = None
        self.counts = LogCounts()

    @property
    def path(self) -> str:
        return self._file.path

    def update_state(self, state: ClusterState) -> None:
        self._state = state  # one reference: the reader sees the old or the new

    # --- pure-ish steps (the unit tests drive these) ---------------------------------

    def handle(self, packets: Iterable[LoggedPacket]) -> list[DeniedConnection]:
        """Attribute and write the packets of one read; the lines written."""
        state = self._state
        now = self._clock()
        ts = format_ts(now)
        lines: list[DeniedConnection] = []
        overflowed = 0
        for packet in packets:
            if packet.seq is not None:
                if self._last_seq is not None and packet.seq > self._last_seq + 1:
                    overflowed += packet.seq - self._last_seq - 1
                self._last_seq = packet.seq
            direction = _DIRECTIONS.get(packet.prefix)
            if direction is None or state is None:
                continue  # not ours (another rule using the group), or before the first pass
            try:
                header = decode_ip(packet.payload, packet.family)
            except ValueError:
                log.debug("undecodable packet in the deny log's group")
                continue
            key: FlowKey = (
                direction.short,
                header.source,
                header.destination,
                header.protocol,
                header.sport,
                header.dport,
                header.icmp_type,
            )
            if not self._recent.first_time(key, now):
                continue
            lines.append(attribute(state, direction, packet.family, header, ts))
        if lines:
            self._counters_owed = True
            self._file.write(lines)
            for line in lines:
                if self._on_denied is not None:
                    self._on_denied(line)
        if overflowed:
            self._dropped("overflow", overflowed)
        self.counts = dataclasses.replace(self.counts, lines=self.counts.lines + len(lines))
        return lines

    def read_rate_limited(self) -> int:
        """Read the log chains' counters; what the rate limit dropped since the last read."""
        if self._read_counters is None:
            return 0
        total = 0
        for family, chains in self._chains.items():
            for direction, chain in chains.items():
                try:
                    counts = self._read_counters(family, chain)
                except BackendError as error:
                    log.debug("cannot read the deny log's counters: %s", error)
                    continue
                if len(counts) <= _COUNT_RULE:
                    continue
                limited = counts[_COUNT_RULE] - counts[_NFLOG_RULE]
                before = self._counted.get((family, direction), 0)
                self._counted[(family, direction)] = limited
                # Counters start again from 0 when the chain is rewritten.
                total += limited - before if limited >= before else limited
        if total:
            self._dropped("rate_limit", total)
            log.info(
                "deny log rate limit reached",
                extra={"kv": {"dropped": total, "rate": self.rules.rate}},
            )
        return total

    def take_baseline(self) -> None:
        """Before the first pass: what the log chains counted already is a previous
        process's (a restart adopts its chains, counters and all); no chain yet, 0."""
        if self._read_counters is None:
            return
        for family, chains in self._chains.items():
            for direction, chain in chains.items():
                try:
                    counts = self._read_counters(family, chain)
                except BackendError:
                    counts = ()
                limited = (
                    counts[_COUNT_RULE] - counts[_NFLOG_RULE] if len(counts) > _COUNT_RULE else 0
                )
                self._counted[(family, direction)] = limited

    def _dropped(self, reason: str, count: int) -> None:
        if reason == "overflow":
            self.counts = dataclasses.replace(
                self.counts, overflowed=self.counts.overflowed + count
            )
        else:
            self.counts = dataclasses.replace(
                self.counts, rate_limited=self.counts.rate_limited + count
            )
        if self._on_dropped is not None:
            self._on_dropped(reason, count)

    # --- the thread ---------------------------------------------------------------------

    def start(self) -> DenyLog:
        """Bind the group (NflogError if it cannot) and start reading."""
        self._group = NflogGroup(self.rules.group, DENY_LOG_COPY_BYTES)
        self.take_baseline()
        self._thread = threading.Thread(target=self._run, name="deny-log", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        group = self._group
        assert group is not None
        while not self._stop.is_set():
            try:
                packets, overflow = group.receive(0.5)
                if overflow:
                    log.debug("deny log socket overflowed")
                if packets:
                    self.handle(packets)
                now = time.monotonic()
                if self._counters_owed and now - self._counters_read_at >= self._counter_seconds:
                    self._counters_owed = False
                    self._counters_read_at = now
                    self.read_rate_limited()
            except Exception:  # the log must never take the agent down
                log.exception("deny log reader failed; retrying")
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._group is not None:
            self._group.close()
        self._file.close()


__all__ = [
    "DEFAULT_DENY_LOG",
    "DENY_LOG_PREFIX",
    "DeniedConnection",
    "DenyLog",
    "LogCounts",
    "RecentFlows",
    "attribute",
]
