"""Metrics move as outcomes arrive, and the exposition parses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.control.outcome import Cause, ObjectChange, StateCounts
from agent.control.source import Kind, KindHealth, SourceHealth
from agent.dataplane.plan import expected_state
from agent.dataplane.state import ProgrammedState
from agent.observability.metrics import METRICS, PREFIX, Metrics
from agent.rules import Family
from tests.unit.test_rulelog import (
    POD_CHAIN,
    T0,
    empty_state,
    family_sync,
    outcome,
    revoked_flows,
    ruleset,
)
from tests.unit.test_rulelog import (
    PREFIX as CHAIN_PREFIX,
)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    got = registry.get_sample_value(name, labels)
    return got


def parsed(registry: CollectorRegistry) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    text = generate_latest(registry).decode()
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def test_every_documented_metric_is_exposed_and_parses() -> None:
    registry = CollectorRegistry()
    Metrics(
        registry,
        source_health=lambda: SourceHealth(
            {Kind.POD: KindHealth(listed=True, connected=True, objects=3)}
        ),
    )
    families = parsed(registry)
    for name, _kind, _, _ in METRICS:
        base = PREFIX + name.removesuffix("_total")
        assert base in families, f"{base} missing from the exposition"
    # Counters are exposed with _total (and _created), histograms with buckets.
    names = {sample[0] for sample in families["netpol_agent_sync_failures"]}
    assert "netpol_agent_sync_failures_total" in names
    buckets = [
        s for s in families["netpol_agent_sync_duration_seconds"] if s[0].endswith("_bucket")
    ]
    assert {s[1]["kind"] for s in buckets} == {"full", "partial"}
    assert families["netpol_agent_watched_objects"] == [
        ("netpol_agent_watched_objects", {"kind": "Pod"}, 3.0)
    ]


def test_the_readme_lists_every_metric() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("### Metrics") : readme.index("### The rule-change log")]
    for name, _, _, _ in METRICS:
        assert f"`{PREFIX}{name}`" in table or f"`_{name}`" in table, name


def test_two_instances_do_not_share_state() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    Metrics(first).changes_queued(123.0)
    Metrics(second)
    assert value(first, "netpol_agent_last_queued_timestamp_seconds") == 123.0
    assert value(second, "netpol_agent_last_queued_timestamp_seconds") == 0.0


def test_values_move_as_outcomes_arrive() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    counts = StateCounts(
        pods=40, namespaces=5, policies=7, local_pods=4,
        local_pods_ingress_isolated=3, local_pods_egress_isolated=1, invalid_policies=2,
    )  # fmt: skip

    # 1. Initial sync of both families.
    syncs = [family_sync(ruleset(with_policy=False, family=f), empty_state(f)) for f in Family]
    metrics.sync_finished(outcome(syncs, cause=Cause.INITIAL, full=True, counts=counts))
    assert value(registry, "netpol_agent_sync_duration_seconds_count", kind="full") == 1
    assert value(registry, "netpol_agent_sync_duration_seconds_count", kind="partial") == 0
    assert value(registry, "netpol_agent_sync_duration_seconds_sum", kind="full") == 0.25
    assert value(registry, "netpol_agent_compile_duration_seconds_count") == 1
    assert value(registry, "netpol_agent_last_sync_timestamp_seconds") == T0 + 0.25
    for family in ("ipv4", "ipv6"):
        assert value(registry, "netpol_agent_iptables_restore_total", family=family) == 1
        assert value(registry, "netpol_agent_iptables_restore_failures_total", family=family) == 0
        assert value(registry, "netpol_agent_rules", family=family, table="filter") == 3
        assert value(registry, "netpol_agent_chains", family=family, table="filter") == 2
        written = value(registry, "netpol_agent_bytes_written_total", family=family)
        assert written is not None and written > 100
        assert (
            value(registry, "netpol_agent_iptables_restore_duration_seconds_count", family=family)
            == 1
        )
    assert value(registry, "netpol_agent_pods") == 40
    assert value(registry, "netpol_agent_namespaces") == 5
    assert value(registry, "netpol_agent_policies") == 7
    assert value(registry, "netpol_agent_invalid_policies") == 2
    assert value(registry, "netpol_agent_local_pods") == 4
    assert value(registry, "netpol_agent_local_pods_selected", direction="ingress") == 3
    assert value(registry, "netpol_agent_local_pods_selected", direction="egress") == 1
    # Initial-sync objects do not count as network programming latency.
    assert value(registry, "netpol_agent_network_programming_duration_seconds_count") == 0

    # 2. A policy arrives: partial sync, programming latency observed.
    metrics.changes_queued(T0 + 9.5)
    assert value(registry, "netpol_agent_last_queued_timestamp_seconds") == T0 + 9.5
    before = ruleset(with_policy=False)
    after = ruleset(with_policy=True)
    programmed = expected_state(before, CHAIN_PREFIX)
    sync = family_sync(after, programmed, previous=before, expected=programmed)
    change = ObjectChange(Kind.NETWORK_POLICY, "prod/allow-web", "added", received_at=T0 + 9.5)
    metrics.sync_finished(outcome([sync], changes=[change], started_at=T0 + 10, counts=counts))
    assert value(registry, "netpol_agent_sync_duration_seconds_count", kind="partial") == 1
    assert value(registry, "netpol_agent_network_programming_duration_seconds_count") == 1
    assert value(registry, "netpol_agent_network_programming_duration_seconds_sum") == 0.75
    assert value(registry, "netpol_agent_rules", family="ipv4", table="filter") == 5
    assert value(registry, "netpol_agent_chains", family="ipv4", table="filter") == 3
    assert value(registry, "netpol_agent_rules", family="ipv6", table="filter") == 3  # untouched
    assert value(registry, "netpol_agent_iptables_restore_total", family="ipv4") == 2

    # 3. Nothing to do: no restore counted, the pass still is.
    ours = expected_state(after, CHAIN_PREFIX)
    noop = family_sync(after, ours, previous=after, expected=ours)
    metrics.sync_finished(outcome([noop], started_at=T0 + 20))
    assert value(registry, "netpol_agent_iptables_restore_total", family="ipv4") == 2
    assert value(registry, "netpol_agent_sync_duration_seconds_count", kind="partial") == 2
    assert value(registry, "netpol_agent_resync_repairs_total") == 0

    # 4. A full resync finds someone removed a rule: a repair.
    chains = dict(ours.chains)
    chains[POD_CHAIN] = chains[POD_CHAIN][:1]
    tampered = ProgrammedState(Family.IPV4, CHAIN_PREFIX, chains, ours.forward_jumps)
    repair = family_sync(after, tampered, previous=after, full=True, expected=ours)
    metrics.sync_finished(outcome([repair], cause=Cause.RESYNC, full=True, started_at=T0 + 60))
    assert value(registry, "netpol_agent_resync_repairs_total") == 1
    assert value(registry, "netpol_agent_last_sync_timestamp_seconds") == T0 + 60.25

    # 5. ipv6 fails while ipv4 goes through; then everything fails.
    v4 = family_sync(after, expected_state(after, CHAIN_PREFIX), previous=after)
    rulesets = {Family.IPV4: after, Family.IPV6: ruleset(with_policy=True, family=Family.IPV6)}
    metrics.sync_finished(
        outcome([v4], rulesets=rulesets, error="ipv6: exit 1", started_at=T0 + 70)
    )
    assert value(registry, "netpol_agent_iptables_restore_failures_total", family="ipv6") == 1
    assert value(registry, "netpol_agent_iptables_restore_failures_total", family="ipv4") == 0
    assert value(registry, "netpol_agent_sync_failures_total") == 1
    metrics.sync_finished(
        outcome([], rulesets=rulesets, error="boom", report=False, started_at=T0 + 80)
    )
    assert value(registry, "netpol_agent_iptables_restore_failures_total", family="ipv6") == 2
    assert value(registry, "netpol_agent_iptables_restore_failures_total", family="ipv4") == 1
    assert value(registry, "netpol_agent_sync_failures_total") == 2
    # Failed passes do not move the last-successful-sync time.
    assert value(registry, "netpol_agent_last_sync_timestamp_seconds") == T0 + 60.25

    families = parsed(registry)
    assert families["netpol_agent_sync_duration_seconds"]


def test_flows_revoked_are_counted_by_family_and_reason() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    desired = ruleset(with_policy=True)
    ours = expected_state(desired, CHAIN_PREFIX)
    noop = family_sync(desired, ours, previous=desired, expected=ours)
    metrics.sync_finished(outcome([noop]))
    for reason in ("policy", "pod deleted"):  # present at zero before any revocation
        assert value(registry, "netpol_agent_flows_revoked_total", family="ipv4",
                     reason=reason) == 0  # fmt: skip
    for _ in range(2):
        metrics.sync_finished(dataclasses.replace(outcome([noop]), flows=revoked_flows()))
    assert value(registry, "netpol_agent_flows_revoked_total", family="ipv4", reason="policy") == 2
    assert (
        value(registry, "netpol_agent_flows_revoked_total", family="ipv4", reason="pod deleted")
        == 2
    )
    assert value(registry, "netpol_agent_flow_scan_duration_seconds_count") == 2


def test_programming_latency_ends_when_the_rules_are_in_not_after_the_flow_scan() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    desired = ruleset(with_policy=True)
    sync = family_sync(desired, empty_state())
    change = ObjectChange(Kind.NETWORK_POLICY, "x/deny", "added", received_at=T0 - 0.5)
    scan = dataclasses.replace(revoked_flows(), list_seconds=0.1, judge_seconds=0.05)
    metrics.sync_finished(dataclasses.replace(outcome([sync], changes=[change]), flows=scan))
    # The pass took 0.25 s (started at T0), 0.15 s of it judging flows after the write.
    assert value(registry, "netpol_agent_network_programming_duration_seconds_sum") == (
        pytest.approx(0.6)
    )


def test_watch_health_is_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    health = {"value": SourceHealth()}
    Metrics(registry, source_health=lambda: health["value"])
    assert value(registry, "netpol_agent_watch_restarts_total", kind="Pod") is None
    health["value"] = SourceHealth(
        {
            Kind.POD: KindHealth(listed=True, connected=True, objects=12, watch_restarts=4,
                                 relists=1, watch_errors=2),
            Kind.NETWORK_POLICY: KindHealth(listed=True, connected=False, list_errors=3),
        }
    )  # fmt: skip
    assert value(registry, "netpol_agent_watch_restarts_total", kind="Pod") == 4
    assert value(registry, "netpol_agent_relists_total", kind="Pod") == 1
    assert value(registry, "netpol_agent_watch_errors_total", kind="Pod") == 2
    assert value(registry, "netpol_agent_watched_objects", kind="Pod") == 12
    assert value(registry, "netpol_agent_watch_connected", kind="Pod") == 1
    assert value(registry, "netpol_agent_watch_connected", kind="NetworkPolicy") == 0
    assert value(registry, "netpol_agent_list_errors_total", kind="NetworkPolicy") == 3
    text = generate_latest(registry).decode()
    assert 'netpol_agent_relists_total{kind="Pod"} 1.0' in text
    # Every family parses, and the custom counters carry the counter type.
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["netpol_agent_watch_restarts"] == "counter"
    assert types["netpol_agent_watch_connected"] == "gauge"


def test_cni_adds_are_timed_and_the_unconfirmed_ones_counted_by_result() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    assert value(registry, "netpol_agent_cni_add_failures_total", result="timeout") == 0
    metrics.cni_add(0.03, "ok")
    metrics.cni_add(10.0, "timeout")
    metrics.cni_add(0.001, "error")
    assert value(registry, "netpol_agent_cni_add_duration_seconds_count") == 3
    assert value(registry, "netpol_agent_cni_add_duration_seconds_bucket", le="0.05") == 2
    assert value(registry, "netpol_agent_cni_add_failures_total", result="timeout") == 1
    assert value(registry, "netpol_agent_cni_add_failures_total", result="error") == 1


def test_an_unserved_kind_has_no_watch_connected_sample_but_its_object_count() -> None:
    registry = CollectorRegistry()
    unserved = KindHealth(listed=True, connected=False, served=False)
    Metrics(registry, source_health=lambda: SourceHealth({Kind.CLUSTER_NETWORK_POLICY: unserved}))
    kind = "ClusterNetworkPolicy"
    assert value(registry, "netpol_agent_watch_connected", kind=kind) is None
    assert value(registry, "netpol_agent_watched_objects", kind=kind) == 0
