"""The rule-change log: one JSON line per chain or rule the agent added or removed.

Format
------
UTF-8, one JSON object per line (JSON Lines), keys always in this order::

    {"ts":"2024-05-01T12:00:03.250Z","action":"rule_added","family":"ipv4",
     "table":"filter","chain":"NPA-POD-IN-3F2A9C1B","rule":"-s 10.244.1.7/32
     -m comment --comment \\"npa:5f0c9e1d2b3a4c6d allow from prod/web\\" -j RETURN",
     "hash":"5f0c9e1d2b3a4c6d","policy":"prod/allow-web","pod":"prod/db-0",
     "reason":"policy created prod/allow-web"}

(shown wrapped; every entry is a single line).

``ts``
    When the pass that made the change finished (the rules were in the kernel), RFC 3339
    in UTC with milliseconds. Every line of one pass carries the same ``ts``.
``action``
    ``chain_added``, ``chain_removed``, ``rule_added`` or ``rule_removed``; for
    established flows, ``flow_revoked`` (strict mode: the new rules deny the flow, its
    packets are dropped from now on) and ``flow_removed`` (its conntrack entry was
    deleted because a local pod gave up the address).
``family``
    ``ipv4`` or ``ipv6``.
``table``
    ``filter``; ``conntrack`` on flow lines.
``chain``
    The chain the rule is in (or the chain added/removed). Rules in ``FORWARD`` are the
    agent's single jump into its own chains. Empty on flow lines.
``rule``
    The rule's arguments after ``-A <chain>`` exactly as written to iptables-restore,
    including the ``npa:<hash>`` comment. For a removed rule whose text the agent no
    longer knows (it was written by an earlier process, or changed behind its back) this
    is the rule's 16-hex-digit hash. ``null`` on chain lines. On flow lines, the flow as
    the filter table saw it: ``tcp 10.244.1.10:40312 -> 10.244.2.11:8080`` (after DNAT).
``hash``
    The rule's chained hash (the ``npa:`` comment in ``iptables-save``), to correlate a
    log line with the kernel; ``-`` for a rule in our chain that carried no hash of ours
    (someone else added it). ``null`` on chain lines and FORWARD jump lines.
``policy``
    ``namespace/name`` of the NetworkPolicy the rule implements, or ``null``. On chain
    lines: the policy all of the chain's rules share, if any.
``pod``
    ``namespace/name`` of the pod the rule is about (the local pod it protects or the peer
    pod it matches), or ``null``. On chain lines: the pod all of its rules share, if any.
``reason``
    Why the change happened: ``initial sync``, ``policy created|updated|deleted ns/name``,
    ``pod added|updated|deleted|labelled ns/name``, ``pod network added|deleted ns/name``
    (a CNI ADD gave the pod's addresses before its status; a DEL took them back),
    ``namespace added|deleted|labelled name``, ``node added|updated|deleted name``, ``node addresses changed``, ``resync
    repair`` (the kernel had drifted from what the agent wrote), ``retry after failure``.
    For a change pass the reason names the object change that matches the rule's policy or
    pod (its own change, its namespace's relabel, else a NetworkPolicy change in its
    namespace: a deny-all policy has no chain of its own, its pods' chains change); when
    none matches (e.g. a namespace relabel that changed who a selector picks), it names
    the pass's first change and how many more there were, e.g. ``namespace labelled prod
    (+2 more changes)``. On flow lines: the change behind the new rules
    (``flow_revoked``), or the change of the pod that gave up the address
    (``flow_removed``: ``pod deleted ns/name``, else ``pod address released ns/name``).

A pass that changes nothing writes nothing. Failed passes write nothing either:
iptables-restore commits a table atomically, so a failed family changed nothing.

Size
----
The file is rotated when the next line would take it past ``max_bytes``:
``netpol-agent.log`` → ``netpol-agent.log.1`` → … → ``.N`` (``N = backups``), the oldest
dropped. Disk use is bounded by ``max_bytes * (backups + 1)`` (40 MiB with the defaults)
whatever the agent does. A large initial sync is split across files at line boundaries.
If the file cannot be written (read-only ``/var/log``, full disk), the agent logs one
warning and keeps running without the rule-change log; it tries again on later passes
and logs once when writing works again.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.compiler.node import CLUSTER_POLICY_SCOPE
from agent.control.flows import RevokedFlow, RevokeReason
from agent.control.outcome import Cause, ObjectChange, SyncOutcome
from agent.control.source import Kind
from agent.dataplane.plan import ChainChange, ChangeKind, RuleAction, TablePlan
from agent.dataplane.state import FORWARD, canonical_jump_spec
from agent.dataplane.table import FamilySync
from agent.rules import Chain, Family, Rule

log = logging.getLogger("netpol-agent.rulelog")

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 3
MIN_MAX_BYTES = 4096
TABLE = "filter"

CHAIN_ADDED = "chain_added"
CHAIN_REMOVED = "chain_removed"
RULE_ADDED = "rule_added"
RULE_REMOVED = "rule_removed"
FLOW_REVOKED = "flow_revoked"
FLOW_REMOVED = "flow_removed"
CONNTRACK = "conntrack"

REASON_INITIAL = "initial sync"
REASON_REPAIR = "resync repair"
REASON_RETRY = "retry after failure"
REASON_NODE_ADDRESSES = "node addresses changed"

_FIXED_REASONS: Mapping[Cause, str] = {
    Cause.INITIAL: REASON_INITIAL,
    Cause.RESYNC: REASON_REPAIR,
    Cause.RETRY: REASON_RETRY,
    Cause.NODE_ADDRESSES: REASON_NODE_ADDRESSES,
}

_encode_str = json.encoder.encode_basestring  # C-accelerated; keeps UTF-8 as is


def _json_str(value: str | None) -> str:
    return "null" if value is None else _encode_str(value)


def format_ts(epoch: float) -> str:
    """RFC 3339, UTC, millisecond precision: ``2024-05-01T12:00:03.250Z``."""
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------------------------------
# Entries


@dataclass(frozen=True, slots=True)
class Entry:
    """One log line before serialization (what the tests compare)."""

    ts: str
    action: str
    family: str
    table: str
    chain: str
    rule: str | None
    hash: str | None
    policy: str | None
    pod: str | None
    reason: str

    def to_json(self) -> str:
        # Hand-built for speed (an initial sync can be tens of thousands of lines); the
        # output is ordinary JSON, equal to json.dumps of as_dict() with compact separators.
        return (
            f'{{"ts":"{self.ts}","action":"{self.action}","family":"{self.family}",'
            f'"table":"{self.table}","chain":{_encode_str(self.chain)},'
            f'"rule":{_json_str(self.rule)},"hash":{_json_str(self.hash)},'
            f'"policy":{_json_str(self.policy)},"pod":{_json_str(self.pod)},'
            f'"reason":{_encode_str(self.reason)}}}'
        )

    def as_dict(self) -> dict[str, str | None]:
        return {
            "ts": self.ts,
            "action": self.action,
            "family": self.family,
            "table": self.table,
            "chain": self.chain,
            "rule": self.rule,
            "hash": self.hash,
            "policy": self.policy,
            "pod": self.pod,
            "reason": self.reason,
        }


def describe_change(change: ObjectChange) -> str:
    """``pod labelled prod/web``, ``policy created prod/allow-web``, ..."""
    if change.kind is Kind.NETWORK_POLICY:
        verb = {"added": "created"}.get(change.action, change.action)
        return f"policy {verb} {change.key}"
    if change.kind is Kind.CLUSTER_NETWORK_POLICY:
        verb = {"added": "created"}.get(change.action, change.action)
        return f"cluster policy {verb} {change.key}"
    noun = {Kind.POD: "pod", Kind.NAMESPACE: "namespace", Kind.NODE: "node"}[change.kind]
    verb = change.action
    if verb == "updated" and "labels" in change.fields and change.kind is not Kind.NODE:
        verb = "labelled"
    return f"{noun} {verb} {change.key}"


class _Reasons:
    """Finds the reason for one rule of a pass: its policy's or pod's change, if any."""

    def __init__(self, outcome: SyncOutcome) -> None:
        self._fixed = _FIXED_REASONS.get(outcome.cause)
        self._policies: dict[str, str] = {}
        self._pods: dict[str, str] = {}
        self._namespaces: dict[str, str] = {}
        # NetworkPolicy changes by namespace: they are what re-isolates that namespace's
        # pods (a deny-all policy has no chain of its own; its pods' chains change).
        self._policy_namespaces: dict[str, str] = {}
        for change in outcome.changes:
            text = describe_change(change)
            if change.kind is Kind.NETWORK_POLICY:
                self._policies.setdefault(change.key, text)
                self._policy_namespaces.setdefault(change.key.partition("/")[0], text)
            elif change.kind is Kind.CLUSTER_NETWORK_POLICY:
                # Its rules carry the policy as the compiler names it.
                self._policies.setdefault(f"{CLUSTER_POLICY_SCOPE}/{change.key}", text)
            elif change.kind is Kind.POD:
                # The addresses a CNI ADD gave are what makes a new pod's rules.
                if change.action == "network added":
                    self._pods[change.key] = text
                else:
                    self._pods.setdefault(change.key, text)
            elif change.kind is Kind.NAMESPACE:
                self._namespaces.setdefault(change.key, text)
        if outcome.changes:
            first = describe_change(outcome.changes[0])
            more = len(outcome.changes) - 1
            self._fallback = f"{first} (+{more} more changes)" if more else first
        else:
            self._fallback = self._fixed or outcome.cause.value

    def pod_change(self, pod: str | None) -> str | None:
        """The pass's change of ``pod`` (``pod deleted ns/name``...), if it has one."""
        return self._pods.get(pod) if pod else None

    def of(self, policy: str | None, pod: str | None) -> str:
        if self._fixed is not None and self._fixed != REASON_REPAIR:
            return self._fixed
        # A ClusterNetworkPolicy's rules name the rule too: "ClusterNetworkPolicy/x egress[0]".
        policy = policy.partition(" ")[0] if policy else policy
        if policy and policy in self._policies:
            return self._policies[policy]
        if pod and pod in self._pods:
            return self._pods[pod]
        for key in (pod, policy):
            if key:
                namespace = key.partition("/")[0]
                if namespace in self._namespaces:
                    return self._namespaces[namespace]
        if pod and (in_namespace := self._policy_namespaces.get(pod.partition("/")[0])):
            return in_namespace
        if self._fixed is not None:
            return self._fixed  # a periodic resync that changed something: a repair
        return self._fallback


def _provenance(rule: Rule | None) -> tuple[str | None, str | None]:
    if rule is None:
        return None, None
    return rule.policy or None, rule.pod or None


def _shared_provenance(chain: Chain | None) -> tuple[str | None, str | None]:
    """The policy and pod every rule of the chain shares (None where they differ)."""
    if chain is None or not chain.rules:
        return None, None
    policies = {rule.policy for rule in chain.rules}
    pods = {rule.pod for rule in chain.rules}
    policy = next(iter(policies)) if len(policies) == 1 else ""
    pod = next(iter(pods)) if len(pods) == 1 else ""
    return policy or None, pod or None


def _rule_lines(
    change: ChainChange, family: Family
) -> Iterator[tuple[str, str, str | None, Rule | None]]:
    """(action, hash, text, rule) for each rule this chain change adds or removes."""
    new_chain = change.new_chain
    if change.kind is ChangeKind.REWRITE and change.old_hashes == change.new_hashes:
        return  # rewritten identically (a forced full sync): nothing changed
    if change.old_chain is None:
        # Old content unknown: chained hashes agree exactly on the common prefix of rules
        # that are unchanged, so skip it and report the rest.
        old_hashes = change.old_hashes
        new_hashes = change.new_hashes
        keep = 0
        for old, new in zip(old_hashes, new_hashes, strict=False):
            if old != new:
                break
            keep += 1
        for old_hash in old_hashes[keep:]:
            yield RULE_REMOVED, old_hash, None, None
        if new_chain is not None:
            for index in range(keep, len(new_hashes)):
                added = new_chain.rules[index]
                rule_hash = new_hashes[index]
                yield RULE_ADDED, rule_hash, added.render(rule_hash), added
        return
    for rule_change in change.rule_changes(family):
        rule = rule_change.rule
        text = rule.render(rule_change.rule_hash) if rule is not None else None
        action = RULE_ADDED if rule_change.action is RuleAction.ADDED else RULE_REMOVED
        yield action, rule_change.rule_hash, text, rule


def entries_for(outcome: SyncOutcome) -> list[Entry]:
    """Every log entry for one pass (empty when it changed nothing)."""
    report = outcome.report
    if report is None:
        return []
    synced = [fs for fs in report.families.values() if not fs.plan.is_noop]
    revoked = outcome.flows.revoked if outcome.flows is not None else ()
    if not synced and not revoked:
        return []
    ts = format_ts(outcome.started_at + outcome.total_seconds)
    reasons = _Reasons(outcome)
    entries: list[Entry] = []
    for family_sync in synced:
        entries.extend(_family_entries(family_sync, ts, reasons, outcome.cause))
    entries.extend(_flow_entries(revoked, ts, reasons))
    return entries


def _flow_entries(revoked: Iterable[RevokedFlow], ts: str, reasons: _Reasons) -> Iterator[Entry]:
    """One line per flow revoked (the new rules deny it) or removed (its pod is gone)."""
    for flow in revoked:
        pod = flow.pod or None
        if flow.reason is RevokeReason.POD_DELETED:
            action = FLOW_REMOVED
            reason = reasons.pod_change(pod) or f"pod address released {pod or '?'}"
        else:
            action, reason = FLOW_REVOKED, reasons.of(None, pod)
        text = flow.describe()
        yield Entry(ts, action, flow.family.value, CONNTRACK, "", text, None, None, pod, reason)


def _family_entries(
    family_sync: FamilySync, ts: str, reasons: _Reasons, cause: Cause
) -> Iterator[Entry]:
    plan: TablePlan = family_sync.plan
    family = plan.family.value
    drift = family_sync.drift
    drifted = set(drift.chains) if drift is not None and cause is not Cause.INITIAL else set()

    def entry(
        action: str, chain: str, rule: str | None, rule_hash: str | None,
        policy: str | None, pod: str | None,
    ) -> Entry:  # fmt: skip
        reason = REASON_REPAIR if chain in drifted else reasons.of(policy, pod)
        return Entry(ts, action, family, TABLE, chain, rule, rule_hash, policy, pod, reason)

    for change in plan.changes:
        name = change.name
        if change.kind is ChangeKind.CREATE:
            yield entry(CHAIN_ADDED, name, None, None, *_shared_provenance(change.new_chain))
        for action, rule_hash, text, rule in _rule_lines(change, plan.family):
            if text is None:  # removed, content unknown: the hash stands for it
                text = rule_hash
            yield entry(action, name, text, rule_hash, *_provenance(rule))
        if change.kind is ChangeKind.DELETE:
            yield entry(CHAIN_REMOVED, name, None, None, *_shared_provenance(change.old_chain))
    yield from _jump_entries(family_sync, ts, reasons, cause)


def _jump_entries(
    family_sync: FamilySync, ts: str, reasons: _Reasons, cause: Cause
) -> Iterator[Entry]:
    plan = family_sync.plan
    family = plan.family.value
    inserted = (
        canonical_jump_spec(plan.entry_chain) if plan.jump_insert and plan.entry_chain else None
    )
    removals = list(plan.jump_removals)
    if inserted is not None:
        # A forced full sync removes and re-inserts a correct jump: not a change.
        unchanged = [
            jump
            for jump in removals
            if jump.canonical and jump.position == 1 and jump.target == plan.entry_chain
        ]
        if unchanged:
            removals.remove(unchanged[0])
            inserted = None
    if not removals and inserted is None:
        return
    drift = family_sync.drift
    repair = drift is not None and drift.jump and cause is not Cause.INITIAL
    reason = REASON_REPAIR if repair else reasons.of(None, None)
    for jump in removals:
        yield Entry(ts, RULE_REMOVED, family, TABLE, FORWARD, jump.spec, None, None, None, reason)
    if inserted is not None:
        yield Entry(ts, RULE_ADDED, family, TABLE, FORWARD, inserted, None, None, None, reason)


# ---------------------------------------------------------------------------------------
# The size-capped file


class RotatingWriter:
    """Appends batches of lines to ``path``, rotating before any file exceeds ``max_bytes``.

    Lines are never split; a single line longer than ``max_bytes`` gets a file of its own.
    Not thread-safe by itself (``RuleLog`` serializes calls).
    """

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: int | None = None  # an O_APPEND file descriptor
        self._inode: tuple[int, int] | None = None
        self._size = 0

    def write_lines(self, lines: Sequence[bytes]) -> None:
        """Write all lines (each ending in a newline); raises OSError on failure."""
        self._ensure_open()
        chunk: list[bytes] = []
        chunk_size = 0
        for line in lines:
            length = len(line)
            if self._size + chunk_size + length > self.max_bytes and self._size + chunk_size > 0:
                self._write(chunk)
                chunk, chunk_size = [], 0
                self._rotate()
            chunk.append(line)
            chunk_size += length
        self._write(chunk)

    def close(self) -> None:
        if self._file is not None:
            fd, self._file = self._file, None
            os.close(fd)

    def _write(self, chunk: list[bytes]) -> None:
        if not chunk:
            return
        assert self._file is not None
        data = memoryview(b"".join(chunk))
        while data:
            written = os.write(self._file, data)
            self._size += written
            data = data[written:]

    def _ensure_open(self) -> None:
        if self._file is not None:
            # Reopen if someone moved or removed the file under us (logrotate, rm).
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    return
            except FileNotFoundError:
                pass
            self.close()
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        st = os.fstat(fd)
        self._file = fd
        self._inode = (st.st_dev, st.st_ino)
        self._size = st.st_size

    def _rotate(self) -> None:
        self.close()
        if self.backups > 0:
            for index in range(self.backups - 1, 0, -1):
                source = f"{self.path}.{index}"
                if os.path.exists(source):
                    os.replace(source, f"{self.path}.{index + 1}")
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._ensure_open()


class JsonLine(Protocol):
    def to_json(self) -> str: ...


class JsonLinesLog:
    """A size-capped JSON Lines file that never raises for I/O problems: the rule-change
    log and the deny log. ``what`` and ``flag`` name it in the one warning a failing
    file gets."""

    def __init__(
        self,
        path: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        *,
        what: str = "rule-change log",
        flag: str = "--rule-log",
    ) -> None:
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(
                f"{what} max bytes must be at least {MIN_MAX_BYTES} (an uncapped log "
                f"can fill the node's disk), not {max_bytes}"
            )
        if backups < 0:
            raise ValueError(f"{what} backups must be 0 or more, not {backups}")
        self.path = path
        self.what = what
        self._flag = flag
        self._writer = RotatingWriter(path, max_bytes, backups)
        self._lock = threading.Lock()
        self._failing = False
        self._warned = False
        self.lines_written = 0
        self.lines_dropped = 0

    def write(self, entries: Iterable[JsonLine]) -> None:
        lines = [(entry.to_json() + "\n").encode() for entry in entries]
        if not lines:
            return
        with self._lock:
            try:
                self._writer.write_lines(lines)
            except OSError as error:
                self._writer.close()
                self.lines_dropped += len(lines)
                self._report_failure(error)
                return
            self.lines_written += len(lines)
            if self._failing:
                self._failing = False
                log.info("%s %s is writable again", self.what, self.path)

    def close(self) -> None:
        with self._lock:
            self._writer.close()

    def _report_failure(self, error: OSError) -> None:
        self._failing = True
        if self._warned:
            log.debug("%s %s: %s", self.what, self.path, error)
            return
        self._warned = True
        hint = ""
        if error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            hint = f" (mount a writable directory or pass {self._flag}='' to disable it)"
        log.warning(
            "cannot write the %s %s: %s%s; the agent keeps enforcing policy "
            "without it (this warning is not repeated)",
            self.what,
            self.path,
            error.strerror or error,
            hint,
        )


class RuleLog(JsonLinesLog):
    """The rule-change log, as a ``SyncObserver``.

    ``RuleLog(path, max_bytes, backups)``; call ``sync_finished(outcome)`` after every
    pass (``changes_queued`` is a no-op). Never raises for I/O problems.
    """

    def sync_finished(self, outcome: SyncOutcome) -> None:
        entries = entries_for(outcome)
        if entries:
            self.write(entries)

    def changes_queued(self, at: float) -> None:
        pass
