"""The rule-change log: exact entries for scripted passes, silence when nothing changed,
size-capped rotation, and an unwritable path that never stops the agent."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from agent.compiler.flows import Flow
from agent.control.flows import FlowReport, RevokedFlow, RevokeReason
from agent.control.outcome import Cause, ObjectChange, StateCounts, SyncOutcome
from agent.control.source import Kind
from agent.dataplane.backend import ApplyResult
from agent.dataplane.plan import Drift, expected_state, find_drift, plan_table
from agent.dataplane.restore import render_restore
from agent.dataplane.state import ProgrammedState, canonical_jump_spec
from agent.dataplane.table import FamilySync, SyncReport
from agent.observability.rulelog import RuleLog, entries_for, format_ts
from agent.rules import Chain, Family, Match, Rule, Ruleset

PREFIX = "NPA-"
ENTRY = "NPA-FORWARD"
POD_CHAIN = "NPA-POD-IN-DB"
POLICY_CHAIN = "NPA-POL-WEB"
T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


# ---------------------------------------------------------------------------------------
# Helpers (also used by test_metrics and test_health)


def dispatch_rule(ip: str, chain: str, pod: str) -> Rule:
    return Rule(chain, f"in of {pod}", destination=f"{ip}/32", goto=True, pod=pod)


def pod_chain_rules(*, with_policy: bool) -> tuple[Rule, ...]:
    rules = [Rule("RETURN", "prod/db: itself", source="10.244.1.7/32", pod="prod/db")]
    if with_policy:
        rules.append(
            Rule(POLICY_CHAIN, "prod/db: policy prod/allow-web", policy="prod/allow-web",
                 pod="prod/db")
        )  # fmt: skip
    rules.append(Rule("DROP", "prod/db: default deny in", pod="prod/db"))
    return tuple(rules)


def ruleset(*, with_policy: bool, family: Family = Family.IPV4) -> Ruleset:
    chains = [
        Chain(ENTRY, (dispatch_rule("10.244.1.7", POD_CHAIN, "prod/db"),)),
        Chain(POD_CHAIN, pod_chain_rules(with_policy=with_policy)),
    ]
    if with_policy:
        chains.append(
            Chain(
                POLICY_CHAIN,
                (
                    Rule(
                        "RETURN",
                        "prod/allow-web: from prod/web",
                        source="10.244.2.9/32",
                        protocol="tcp",
                        matches=(Match("tcp", (("--dport", "5432"),)),),
                        policy="prod/allow-web",
                        pod="prod/web",
                    ),
                ),
            )
        )
    return Ruleset.of(family, ENTRY, chains)


def empty_state(family: Family = Family.IPV4) -> ProgrammedState:
    return ProgrammedState(family=family, prefix=PREFIX, chains={}, forward_jumps=())


def family_sync(
    desired: Ruleset,
    programmed: ProgrammedState,
    *,
    previous: Ruleset | None = None,
    full: bool = False,
    expected: ProgrammedState | None = None,
    seconds: float = 0.004,
) -> FamilySync:
    plan = plan_table(desired, programmed, force_full=full, previous=previous)
    result = ApplyResult.of(plan, "test", render_restore(plan), seconds)
    _DESIRED[id(plan)] = (plan, desired)
    drift: Drift | None = find_drift(expected, programmed) if expected is not None else None
    return FamilySync(desired.family, full, plan, result, drift, 0.001)


def outcome(
    syncs: Sequence[FamilySync],
    *,
    cause: Cause = Cause.CHANGE,
    changes: Sequence[ObjectChange] = (),
    full: bool = False,
    rulesets: Mapping[Family, Ruleset] | None = None,
    error: str | None = None,
    report: bool = True,
    started_at: float = T0,
    counts: StateCounts | None = None,
) -> SyncOutcome:
    if rulesets is None:
        rulesets = {fs.family: ruleset_of(fs) for fs in syncs}
    return SyncOutcome(
        cause=cause,
        full=full,
        started_at=started_at,
        compile_seconds=0.002,
        total_seconds=0.25,
        changes=tuple(changes),
        counts=counts or StateCounts(),
        rulesets=rulesets,
        report=SyncReport({fs.family: fs for fs in syncs}, 0.01) if report else None,
        error=error,
    )


def ruleset_of(fs: FamilySync) -> Ruleset:
    """The desired ruleset a helper-made FamilySync was planned from."""
    return _DESIRED[id(fs.plan)][1]


# id(plan) -> (plan, desired): keeps the plan alive so its id stays unique.
_DESIRED: dict[int, tuple[object, Ruleset]] = {}


def read_lines(path: Path) -> list[dict[str, str | None]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


TS = "2024-05-01T12:00:00.250Z"


# ---------------------------------------------------------------------------------------
# Entries


def test_timestamp_format() -> None:
    assert format_ts(T0) == "2024-05-01T12:00:00.000Z"
    assert format_ts(T0 + 0.25) == TS
    assert format_ts(T0 + 0.9999) == "2024-05-01T12:00:00.999Z"


def test_initial_sync_exact_entries(tmp_path: Path) -> None:
    desired = ruleset(with_policy=False)
    sync = family_sync(desired, empty_state())
    path = tmp_path / "rules.log"
    rule_log = RuleLog(str(path), 1 << 20, 1)
    rule_log.sync_finished(outcome([sync], cause=Cause.INITIAL, full=True))

    entry_hash = desired.chains[ENTRY].hashes[0]
    pod_hashes = desired.chains[POD_CHAIN].hashes
    base = {"ts": TS, "family": "ipv4", "table": "filter", "reason": "initial sync"}
    expected = [
        # Callees first: the pod chain, then the entry chain that jumps to it.
        {**base, "action": "chain_added", "chain": POD_CHAIN, "rule": None, "hash": None,
         "policy": None, "pod": "prod/db"},
        {**base, "action": "rule_added", "chain": POD_CHAIN,
         "rule": f'-s 10.244.1.7/32 -m comment --comment "npa:{pod_hashes[0]} prod/db: itself" -j RETURN',
         "hash": pod_hashes[0], "policy": None, "pod": "prod/db"},
        {**base, "action": "rule_added", "chain": POD_CHAIN,
         "rule": f'-m comment --comment "npa:{pod_hashes[1]} prod/db: default deny in" -j DROP',
         "hash": pod_hashes[1], "policy": None, "pod": "prod/db"},
        {**base, "action": "chain_added", "chain": ENTRY, "rule": None, "hash": None,
         "policy": None, "pod": "prod/db"},
        {**base, "action": "rule_added", "chain": ENTRY,
         "rule": f'-d 10.244.1.7/32 -m comment --comment "npa:{entry_hash} in of prod/db" -g {POD_CHAIN}',
         "hash": entry_hash, "policy": None, "pod": "prod/db"},
        {**base, "action": "rule_added", "chain": "FORWARD", "rule": canonical_jump_spec(ENTRY),
         "hash": None, "policy": None, "pod": None},
    ]  # fmt: skip
    assert read_lines(path) == expected
    # Field order is part of the format.
    first = path.read_text().splitlines()[0]
    assert list(json.loads(first)) == [
        "ts", "action", "family", "table", "chain", "rule", "hash", "policy", "pod", "reason",
    ]  # fmt: skip
    assert rule_log.lines_written == len(expected)


def test_policy_created_names_the_policy_and_only_the_difference(tmp_path: Path) -> None:
    before = ruleset(with_policy=False)
    after = ruleset(with_policy=True)
    programmed = expected_state(before, PREFIX)
    sync = family_sync(after, programmed, previous=before, expected=programmed)
    change = ObjectChange(Kind.NETWORK_POLICY, "prod/allow-web", "added", received_at=T0 - 1)
    path = tmp_path / "rules.log"
    RuleLog(str(path), 1 << 20, 1).sync_finished(outcome([sync], changes=[change]))

    pod_hashes = after.chains[POD_CHAIN].hashes
    policy_hash = after.chains[POLICY_CHAIN].hashes[0]
    reason = "policy created prod/allow-web"
    assert [(e["action"], e["chain"], e["hash"], e["policy"], e["pod"], e["reason"])
            for e in read_lines(path)] == [
        ("chain_added", POLICY_CHAIN, None, "prod/allow-web", "prod/web", reason),
        ("rule_added", POLICY_CHAIN, policy_hash, "prod/allow-web", "prod/web", reason),
        # The old "default deny" line is re-hashed (hashes are chained) but unchanged in
        # content: matched by content, so only the inserted rule is logged.
        ("rule_added", POD_CHAIN, pod_hashes[1], "prod/allow-web", "prod/db", reason),
    ]  # fmt: skip


def test_policy_deleted_logs_removals_with_provenance(tmp_path: Path) -> None:
    before = ruleset(with_policy=True)
    after = ruleset(with_policy=False)
    programmed = expected_state(before, PREFIX)
    sync = family_sync(after, programmed, previous=before, expected=programmed)
    change = ObjectChange(Kind.NETWORK_POLICY, "prod/allow-web", "deleted")
    path = tmp_path / "rules.log"
    RuleLog(str(path), 1 << 20, 1).sync_finished(outcome([sync], changes=[change]))
    lines = read_lines(path)
    assert [(e["action"], e["chain"], e["policy"], e["reason"]) for e in lines] == [
        ("rule_removed", POD_CHAIN, "prod/allow-web", "policy deleted prod/allow-web"),
        ("rule_removed", POLICY_CHAIN, "prod/allow-web", "policy deleted prod/allow-web"),
        ("chain_removed", POLICY_CHAIN, "prod/allow-web", "policy deleted prod/allow-web"),
    ]
    removed = lines[0]
    assert removed["rule"] is not None and "policy prod/allow-web" in removed["rule"]


def test_removed_rule_of_unknown_content_is_logged_by_hash(tmp_path: Path) -> None:
    # An earlier process wrote the policy chain: we only know its hashes.
    before = ruleset(with_policy=True)
    after = ruleset(with_policy=False)
    sync = family_sync(after, expected_state(before, PREFIX), previous=None)
    change = ObjectChange(Kind.NETWORK_POLICY, "prod/allow-web", "deleted")
    path = tmp_path / "rules.log"
    RuleLog(str(path), 1 << 20, 1).sync_finished(outcome([sync], changes=[change]))
    lines = read_lines(path)
    gone = before.chains[POLICY_CHAIN].hashes[0]
    assert {
        "action": "rule_removed", "chain": POLICY_CHAIN, "rule": gone, "hash": gone,
        "policy": None, "pod": None, "reason": "policy deleted prod/allow-web",
    }.items() <= lines[-2].items()  # fmt: skip
    assert lines[-1]["action"] == "chain_removed"
    # In the pod chain the unchanged first rule (same chained hash) is not logged.
    pod_lines = [e for e in lines if e["chain"] == POD_CHAIN]
    assert before.chains[POD_CHAIN].hashes[0] not in {e["hash"] for e in pod_lines}


def test_pod_label_change_and_fallback_reason(tmp_path: Path) -> None:
    before = ruleset(with_policy=False)
    after = ruleset(with_policy=True)
    programmed = expected_state(before, PREFIX)
    sync = family_sync(after, programmed, previous=before, expected=programmed)
    changes = [
        ObjectChange(Kind.NAMESPACE, "staging", "updated", ("labels",)),
        ObjectChange(Kind.POD, "prod/web", "updated", ("labels",)),
    ]
    path = tmp_path / "rules.log"
    RuleLog(str(path), 1 << 20, 1).sync_finished(outcome([sync], changes=changes))
    reasons = {(e["chain"], e["pod"]): e["reason"] for e in read_lines(path)}
    # The policy chain's rule matches peer pod prod/web: that pod's change is the reason.
    assert reasons[(POLICY_CHAIN, "prod/web")] == "pod labelled prod/web"
    # The pod chain's new rule is about prod/db, which did not change: first change + count.
    assert reasons[(POD_CHAIN, "prod/db")] == "namespace labelled staging (+1 more changes)"


def test_a_deny_all_policy_is_the_reason_for_its_pods_chains_in_a_mixed_pass(
    tmp_path: Path,
) -> None:
    """A deny-all policy has no chain of its own: prod/db's chain is what it changes. The
    pass also took another pod's update first, which must not become the reason."""
    after = Ruleset.of(
        Family.IPV4,
        ENTRY,
        [
            Chain(ENTRY, (dispatch_rule("10.244.1.7", POD_CHAIN, "prod/db"),)),
            Chain(POD_CHAIN, (Rule("DROP", "prod/db: default deny in", pod="prod/db"),)),
        ],
    )
    sync = family_sync(after, empty_state())
    changes = [
        ObjectChange(Kind.POD, "staging/cache", "updated", ("status",)),
        ObjectChange(Kind.NETWORK_POLICY, "prod/deny-all", "added"),
    ]
    path = tmp_path / "rules.log"
    RuleLog(str(path), 1 << 20, 1).sync_finished(outcome([sync], changes=changes))
    reasons = {(e["action"], e["chain"]): e["reason"] for e in read_lines(path)}
    assert reasons[("rule_added", POD_CHAIN)] == "policy created prod/deny-all"
    assert reasons[("chain_added", POD_CHAIN)] == "policy created prod/deny-all"


def test_resync_repair_of_a_chain_someone_changed(tmp_path: Path) -> None:
    desired = ruleset(with_policy=False)
    ours = expected_state(desired, PREFIX)
    # Someone deleted the default-deny rule from our pod chain.
    tampered_chains = dict(ours.chains)
    tampered_chains[POD_CHAIN] = ours.chains[POD_CHAIN][:1]
    tampered = ProgrammedState(Family.IPV4, PREFIX, tampered_chains, ours.forward_jumps)
    sync = family_sync(desired, tampered, previous=desired, full=True, expected=ours)
    path = tmp_path / "rules.log"
    RuleLog(str(path), 1 << 20, 1).sync_finished(outcome([sync], cause=Cause.RESYNC, full=True))
    lines = read_lines(path)
    assert [(e["action"], e["chain"], e["hash"], e["reason"]) for e in lines] == [
        ("rule_added", POD_CHAIN, desired.chains[POD_CHAIN].hashes[1], "resync repair"),
    ]


def test_unchanged_syncs_write_nothing(tmp_path: Path) -> None:
    desired = ruleset(with_policy=True)
    ours = expected_state(desired, PREFIX)
    path = tmp_path / "rules.log"
    rule_log = RuleLog(str(path), 1 << 20, 1)
    # A partial sync with nothing to do, and a forced full resync that rewrites every chain
    # (and the FORWARD jump) identically.
    partial = family_sync(desired, ours, previous=desired, expected=ours)
    assert partial.plan.is_noop
    forced = family_sync(desired, ours, previous=desired, full=True, expected=ours)
    assert not forced.plan.is_noop
    unknown = family_sync(desired, ours, previous=None, full=True, expected=ours)
    for sync, cause in ((partial, Cause.CHANGE), (forced, Cause.RESYNC), (unknown, Cause.RESYNC)):
        rule_log.sync_finished(outcome([sync], cause=cause, full=sync.full))
    # Failed passes (nothing applied) write nothing either.
    rule_log.sync_finished(outcome([], error="iptables-restore failed", report=False))
    assert not path.exists()
    assert rule_log.lines_written == 0


def test_both_families_are_logged(tmp_path: Path) -> None:
    syncs = [
        family_sync(ruleset(with_policy=False, family=f), empty_state(f))
        for f in (Family.IPV4, Family.IPV6)
    ]
    path = tmp_path / "rules.log"
    RuleLog(str(path), 1 << 20, 1).sync_finished(outcome(syncs, cause=Cause.INITIAL))
    families = [e["family"] for e in read_lines(path)]
    assert families.count("ipv4") == families.count("ipv6") == 6


# ---------------------------------------------------------------------------------------
# Rotation and failures


def big_outcome(rules: int, *, started_at: float = T0) -> SyncOutcome:
    chain_rules = tuple(
        Rule("RETURN", f"peer pod ns-{i % 50}/pod-{i}", source=f"10.{i // 65536 % 256}."
             f"{i // 256 % 256}.{i % 256}/32", policy=f"ns-{i % 50}/policy-{i % 7}",
             pod=f"ns-{i % 50}/pod-{i}")
        for i in range(rules)
    )  # fmt: skip
    desired = Ruleset.of(
        Family.IPV4,
        ENTRY,
        [Chain(ENTRY, (Rule("NPA-PEERS", "peers"),)), Chain("NPA-PEERS", chain_rules)],
    )
    return outcome(
        [family_sync(desired, empty_state())], cause=Cause.INITIAL, started_at=started_at
    )


def log_files(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name))


def test_rotation_caps_size_and_count(tmp_path: Path) -> None:
    path = tmp_path / "rules.log"
    max_bytes = 16 * 1024
    rule_log = RuleLog(str(path), max_bytes, 2)
    for i in range(5):
        rule_log.sync_finished(big_outcome(150, started_at=T0 + i))
    files = log_files(path)
    assert [p.name for p in files] == ["rules.log", "rules.log.1", "rules.log.2"]
    for file in files:
        assert 0 < file.stat().st_size <= max_bytes
        for line in file.read_text().splitlines():
            json.loads(line)  # never a torn line
    # The newest lines are in the current file, in order; .1 holds the lines just before.
    newest = read_lines(path)
    previous = read_lines(tmp_path / "rules.log.1")
    assert newest[-1]["ts"] == format_ts(T0 + 4 + 0.25)
    assert str(previous[-1]["ts"]) <= str(newest[0]["ts"])
    assert rule_log.lines_written == 5 * (150 + 4)  # rules + 2 chains + entry rule + jump


def test_rotation_with_no_backups_keeps_one_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.log"
    rule_log = RuleLog(str(path), 8192, 0)
    for i in range(3):
        rule_log.sync_finished(big_outcome(100, started_at=T0 + i))
    assert [p.name for p in log_files(path)] == ["rules.log"]
    assert path.stat().st_size <= 8192


def test_appends_to_an_existing_file_and_counts_its_size(tmp_path: Path) -> None:
    path = tmp_path / "rules.log"
    path.write_bytes(b"x" * 8000 + b"\n")
    RuleLog(str(path), 8192, 1).sync_finished(big_outcome(10))
    # The old content plus this pass would not fit: rotated before writing.
    assert (tmp_path / "rules.log.1").read_bytes().startswith(b"xxxx")
    assert path.stat().st_size <= 8192


def test_file_removed_under_us_is_recreated(tmp_path: Path) -> None:
    path = tmp_path / "rules.log"
    rule_log = RuleLog(str(path), 1 << 20, 1)
    rule_log.sync_finished(big_outcome(3))
    path.unlink()
    rule_log.sync_finished(big_outcome(3, started_at=T0 + 1))
    assert read_lines(path)[0]["ts"] == format_ts(T0 + 1.25)


def test_missing_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "var" / "log" / "netpol-agent.log"
    RuleLog(str(path), 1 << 20, 1).sync_finished(big_outcome(2))
    assert len(read_lines(path)) == 2 + 4


def test_unwritable_path_warns_once_and_keeps_going(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "netpol-agent.log"  # works as root too: the parent is a file
    rule_log = RuleLog(str(path), 1 << 20, 1)
    with caplog.at_level(logging.DEBUG, logger="netpol-agent.rulelog"):
        for i in range(3):
            rule_log.sync_finished(big_outcome(5, started_at=T0 + i))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()
    assert rule_log.lines_dropped == 3 * 9
    # Once the path works again, writing resumes (and says so).
    blocker.unlink()
    blocker.mkdir()
    with caplog.at_level(logging.INFO, logger="netpol-agent.rulelog"):
        rule_log.sync_finished(big_outcome(5, started_at=T0 + 9))
    assert len(read_lines(path)) == 9
    assert any("writable again" in r.getMessage() for r in caplog.records)


def test_read_only_file_does_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "rules.log"
    rule_log = RuleLog(str(path), 1 << 20, 1)
    rule_log.sync_finished(big_outcome(2))
    # Make writes fail from now on, whoever we run as: swap the fd for a read-only one.
    writer = rule_log._writer
    assert writer._file is not None
    os.close(writer._file)
    writer._file = os.open(path, os.O_RDONLY)
    rule_log.sync_finished(big_outcome(2, started_at=T0 + 1))  # must not raise
    assert rule_log.lines_dropped == 6


@pytest.mark.parametrize(("max_bytes", "backups"), [(0, 3), (100, 3), (1 << 20, -1)])
def test_unbounded_or_invalid_settings_are_refused(max_bytes: int, backups: int) -> None:
    with pytest.raises(ValueError):
        RuleLog("/tmp/never-written.log", max_bytes, backups)


def test_large_initial_sync_is_fast(tmp_path: Path) -> None:
    big = big_outcome(50_000)
    path = tmp_path / "rules.log"
    rule_log = RuleLog(str(path), 10 * 1024 * 1024, 3)
    started = time.perf_counter()
    rule_log.sync_finished(big)
    elapsed = time.perf_counter() - started
    total = sum(len(p.read_text().splitlines()) for p in log_files(path))
    assert total == 50_004
    assert all(p.stat().st_size <= 10 * 1024 * 1024 for p in log_files(path))
    assert elapsed < 5.0, f"50k-rule initial sync took {elapsed:.2f}s to log"


def test_hand_built_json_equals_json_dumps() -> None:
    syncs = [family_sync(ruleset(with_policy=True), empty_state())]
    changes = [ObjectChange(Kind.POD, 'prod/"odd" näme\\x\ty', "deleted")]
    entries = entries_for(outcome(syncs, changes=changes))
    assert entries and "näme" in entries[0].reason
    for entry in entries:
        assert entry.to_json() == json.dumps(
            entry.as_dict(), separators=(",", ":"), ensure_ascii=False
        )


def revoked_flows() -> FlowReport:
    """x/a's flow from 10.0.2.10 revoked by a policy; y/old's flow removed with it."""
    a, c, old = (ipaddress.ip_address(t) for t in ("10.0.1.10", "10.0.2.10", "10.0.1.99"))
    return FlowReport(
        scanned={Family.IPV4: 12},
        revoked=(
            RevokedFlow(Family.IPV4, Flow(c, a, 6, 80), RevokeReason.POLICY, 40000, "x/a"),
            RevokedFlow(Family.IPV4, Flow(old, c, 17, 53), RevokeReason.POD_DELETED, 5353,
                        "y/old"),
        ),
    )  # fmt: skip


def test_flows_revoked_and_removed_are_logged_with_their_cause(tmp_path: Path) -> None:
    desired = ruleset(with_policy=True)
    ours = expected_state(desired, PREFIX)
    noop = family_sync(desired, ours, previous=desired, expected=ours)
    changes = [
        ObjectChange(Kind.NETWORK_POLICY, "x/deny", "added"),
        ObjectChange(Kind.POD, "y/old", "deleted"),
    ]
    passed = dataclasses.replace(outcome([noop], changes=changes), flows=revoked_flows())
    entries = [e.as_dict() for e in entries_for(passed)]
    common = {"ts": TS, "family": "ipv4", "table": "conntrack", "chain": "", "hash": None,
              "policy": None}  # fmt: skip
    assert entries == [
        {**common, "action": "flow_revoked", "rule": "tcp 10.0.2.10:40000 -> 10.0.1.10:80",
         "pod": "x/a", "reason": "policy created x/deny"},
        {**common, "action": "flow_removed", "rule": "udp 10.0.1.99:5353 -> 10.0.2.10:53",
         "pod": "y/old", "reason": "pod deleted y/old"},
    ]  # fmt: skip


def test_a_cluster_network_policy_rule_is_logged_with_its_policy_change_as_reason(
    tmp_path: Path,
) -> None:
    before = Ruleset.of(Family.IPV4, ENTRY, [Chain(ENTRY, ())])
    tier_rule = Rule("DROP", "Admin guard ingress[0]", policy="ClusterNetworkPolicy/guard ingress[0]")  # fmt: skip
    after = Ruleset.of(Family.IPV4, ENTRY, [Chain(ENTRY, (tier_rule,))])
    programmed = expected_state(before, PREFIX)
    sync = family_sync(after, programmed, previous=before, expected=programmed)
    changes = [
        ObjectChange(Kind.POD, "prod/web", "updated", ("labels",)),
        ObjectChange(Kind.CLUSTER_NETWORK_POLICY, "guard", "added"),
    ]
    path = tmp_path / "rules.log"
    RuleLog(str(path), 1 << 20, 1).sync_finished(outcome([sync], changes=changes))
    assert [(e["action"], e["policy"], e["reason"]) for e in read_lines(path)] == [
        ("rule_added", "ClusterNetworkPolicy/guard ingress[0]", "cluster policy created guard"),
    ]
