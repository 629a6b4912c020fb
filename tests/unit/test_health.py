"""A real HTTP server on 127.0.0.1:0: /healthz, /readyz transitions, /metrics."""

from __future__ import annotations

import dataclasses
import io
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.control.outcome import Cause, SyncOutcome
from agent.observability.health import HealthServer, HealthState, parse_address
from agent.observability.logs import LogfmtFormatter, configure_logging
from agent.observability.metrics import Metrics
from agent.rules import Family
from tests.unit.test_rulelog import empty_state, family_sync, outcome, ruleset


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def setup(clock: Clock) -> Iterator[tuple[HealthServer, HealthState, Metrics]]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    state = HealthState(heartbeat_timeout=30, ready_window=120, clock=clock)
    server = HealthServer("127.0.0.1:0", registry, state).start()
    try:
        yield server, state, metrics
    finally:
        server.stop()


def good_outcome(started_at: float = 0.0) -> SyncOutcome:
    sync = family_sync(ruleset(with_policy=False), empty_state())
    return outcome([sync], cause=Cause.INITIAL, full=True, started_at=started_at)


def failed_outcome(error: str = "iptables-restore: exit 4 (resource problem)") -> SyncOutcome:
    return outcome([], cause=Cause.RETRY, error=error, report=False)


def test_healthz_and_readyz_transitions(
    setup: tuple[HealthServer, HealthState, Metrics], clock: Clock
) -> None:
    server, state, _ = setup
    base = server.url

    # Just started: alive (grace period), not ready.
    assert get(f"{base}/healthz")[0] == 200
    status, content_type, body = get(f"{base}/readyz")
    assert (status, body) == (503, "initial sync not done yet\n")
    assert content_type.startswith("text/plain")

    # The initial sync fails: still not ready, and the reason says why.
    state.heartbeat()
    state.sync_finished(failed_outcome())
    status, _, body = get(f"{base}/readyz")
    assert status == 503
    assert "initial sync not done (1 failed attempts)" in body and "exit 4" in body

    # It succeeds: ready.
    state.sync_finished(good_outcome())
    assert get(f"{base}/readyz")[:1] == (200,)

    # A later failure inside the window: still ready (rules are in place), reason noted.
    clock.now += 10
    state.sync_finished(failed_outcome("boom"))
    status, _, body = get(f"{base}/readyz")
    assert status == 200 and "last sync failed" in body

    # Failing for longer than the window: not ready. Heartbeats keep it alive.
    for _ in range(13):
        clock.now += 10
        state.heartbeat()
        state.sync_finished(failed_outcome("boom"))
    status, _, body = get(f"{base}/readyz")
    assert status == 503
    assert "no successful sync for 140s (window 120s)" in body and "boom" in body
    assert get(f"{base}/healthz")[0] == 200

    # Recovery.
    state.sync_finished(good_outcome())
    assert get(f"{base}/readyz") == (200, "text/plain; charset=utf-8", "ok\n")

    # The reconciler stops ticking: /healthz fails with a reason, and so does /readyz.
    clock.now += 31
    status, _, body = get(f"{base}/healthz")
    assert status == 500
    assert body.startswith("reconciler loop stalled: last heartbeat 31s ago")
    assert get(f"{base}/readyz")[0] == 503
    state.heartbeat()
    assert get(f"{base}/healthz")[0] == 200


def test_a_loop_that_never_ticks_fails_after_the_timeout(clock: Clock) -> None:
    state = HealthState(heartbeat_timeout=30, loops=("reconciler", "source"), clock=clock)
    state.heartbeat("reconciler")
    assert state.liveness().ok
    clock.now += 31
    state.heartbeat("reconciler")
    check = state.liveness()
    assert not check.ok
    assert check.reason == "source loop stalled: no heartbeat since start 31s ago"


def test_metrics_endpoint(setup: tuple[HealthServer, HealthState, Metrics]) -> None:
    server, _, metrics = setup
    metrics.sync_finished(good_outcome(started_at=1_714_564_800.0))
    status, content_type, body = get(f"{server.url}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert families["netpol_agent_rules"].samples[0].value == 3
    assert families["netpol_agent_last_sync_timestamp_seconds"].samples[0].value == (
        1_714_564_800.25
    )
    # OpenMetrics on request, as Prometheus asks for it.
    request = urllib.request.Request(
        f"{server.url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().decode().rstrip().endswith("# EOF")
    assert get(f"{server.url}/nope")[0] == 404
    assert get(f"{server.url}/healthz?verbose=1")[0] == 200


def test_head_and_keepalive(setup: tuple[HealthServer, HealthState, Metrics]) -> None:
    import http.client

    server, _, _ = setup
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        for _ in range(3):  # several requests on one connection
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert response.status == 200 and response.read() == b"ok\n"
        conn.request("HEAD", "/metrics")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b""
    finally:
        conn.close()


def test_port_in_use_raises(setup: tuple[HealthServer, HealthState, Metrics]) -> None:
    server, state, _ = setup
    other = HealthServer(f"127.0.0.1:{server.port}", CollectorRegistry(), state)
    with pytest.raises(OSError):
        other.start()


def test_all_addresses_serves_ipv4_and_ipv6() -> None:
    # The default (":9872"): a hostNetwork agent on an IPv6-only node is probed at the
    # node's IPv6 address, on an IPv4 node at its IPv4 address.
    server = HealthServer(":0", CollectorRegistry(), HealthState()).start()
    try:
        assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
        if server.url.startswith("http://[::]:"):
            assert get(f"http://[::1]:{server.port}/healthz")[0] == 200
        else:
            assert server.url.startswith("http://0.0.0.0:")  # a kernel without IPv6
    finally:
        server.stop()


def test_ipv4_wildcard_stays_ipv4_only() -> None:
    server = HealthServer("0.0.0.0:0", CollectorRegistry(), HealthState()).start()
    try:
        assert server.url.startswith("http://0.0.0.0:")
        assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
    finally:
        server.stop()


def test_ipv6_loopback() -> None:
    state = HealthState()
    try:
        server = HealthServer("[::1]:0", CollectorRegistry(), state).start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert server.url.startswith("http://[::1]:")
        assert get(f"{server.url}/healthz")[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:9872", ("0.0.0.0", 9872)),
        (":9872", ("", 9872)),
        ("[::]:9872", ("::", 9872)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9872", "host:http", "host:70000"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_health_state_is_a_sync_observer_for_partial_failures(clock: Clock) -> None:
    # A DataplaneSyncError outcome (one family failed) is a failure for readiness.
    state = HealthState(clock=clock)
    v4 = family_sync(ruleset(with_policy=False), empty_state())
    rulesets = {Family.IPV4: ruleset(with_policy=False)}
    state.sync_finished(outcome([v4], rulesets=rulesets, error="ipv6 failed"))
    assert not state.readiness().ok


def test_logfmt_single_lines() -> None:
    stream = io.StringIO()
    handler = configure_logging(verbose=False, stream=stream)
    try:
        logger = logging.getLogger("netpol-agent.test")
        logger.info("synced %d rules", 12, extra={"kv": {"family": "ipv4", "took": "0.1 s"}})
        logger.debug("hidden at info level")
        try:
            raise RuntimeError("bad\nthing")
        except RuntimeError:
            logger.exception('failed "sync"')
        # Idempotent: a second call replaces the handler instead of doubling lines.
        handler = configure_logging(verbose=False, stream=stream)
        logger.warning("once")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("ts=")
    assert lines[0].endswith(
        'level=info logger=netpol-agent.test msg="synced 12 rules" family=ipv4 took="0.1 s"'
    )
    assert 'level=error logger=netpol-agent.test msg="failed \\"sync\\"" exc="Traceback' in lines[1]
    assert "bad\\nthing" in lines[1]
    assert lines[2].endswith("level=warning logger=netpol-agent.test msg=once")
    assert logging.getLogger("urllib3").level == logging.WARNING


def test_formatter_timestamp_is_utc_ms() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.created = 1_714_564_800.5
    assert LogfmtFormatter().format(record).startswith("ts=2024-05-01T12:00:00.500Z ")


def test_readyz_names_a_failing_source_and_a_failing_family(clock: Clock) -> None:
    from agent.control.source import Kind, KindHealth, SourceHealth

    source = {"health": SourceHealth()}
    state = HealthState(clock=clock, source_health=lambda: source["health"])
    server = HealthServer("127.0.0.1:0", CollectorRegistry(), state).start()
    try:
        state.sync_finished(good_outcome())
        assert get(f"{server.url}/readyz")[:1] == (200,)

        # The state file became unreadable: every kind reports the same error, once.
        broken = KindHealth(listed=True, connected=False, last_error="/s.yaml: cannot read")
        source["health"] = SourceHealth({kind: broken for kind in Kind})
        status, _, body = get(f"{server.url}/readyz")
        assert status == 503
        assert body.count("source failing") == 1 and "/s.yaml: cannot read" in body
        assert "Pod" in body and "NetworkPolicy" in body

        # Readable again, but the IPv6 write fails while IPv4 works.
        source["health"] = SourceHealth({kind: KindHealth(True, True) for kind in Kind})
        v4 = family_sync(ruleset(with_policy=False), empty_state())
        half = outcome([v4], error="dataplane sync failed: ipv6: ip6tables-restore failed")
        half = dataclasses.replace(
            half, family_errors={Family.IPV6: "ip6tables-restore failed (exit 2)"}
        )
        state.sync_finished(half)
        state.sync_finished(half)
        status, _, body = get(f"{server.url}/readyz")
        assert status == 503
        assert body == "ipv6 sync failing (2 attempts): ip6tables-restore failed (exit 2)\n"

        # Both at once: one line each.
        source["health"] = SourceHealth({Kind.POD: broken})
        status, _, body = get(f"{server.url}/readyz")
        assert status == 503 and len(body.splitlines()) == 2

        # IPv6 written again, source back: ready.
        source["health"] = SourceHealth({kind: KindHealth(True, True) for kind in Kind})
        v6 = family_sync(ruleset(with_policy=False, family=Family.IPV6), empty_state(Family.IPV6))
        state.sync_finished(outcome([v4, v6]))
        assert get(f"{server.url}/readyz") == (200, "text/plain; charset=utf-8", "ok\n")
    finally:
        server.stop()
