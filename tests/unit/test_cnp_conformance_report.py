"""How tests/node/cnp_conformance.py reads the conformance suite's output.

The suite runs on the real nodes (``-m node``); these tests feed the parser the shapes it
meets there: test2json's events, the suite's test declarations, ``kubectl get -o wide``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.node.cnp_conformance import (
    OWN_NODE,
    SCTP_POKE,
    TOP,
    SuiteTest,
    failure_reason,
    parse_events,
    read_placement,
    suite_tests,
)

FAILED = "helper.go:71: FAILED Command was [/agnhost connect --timeout=3s --protocol="
CONNECT_SCTP = FAILED + "sctp 10.244.1.3:9003]\n"
CONNECT_TCP = FAILED + "tcp 172.18.0.3:34346]\n"
CONNECTED = (
    "helper.go:71: Expected connection to fail from ns-a/client-1 to 172.18.0.3, but instead "
    "it successfully connected.\n"
)


def write_events(path: Path, events: list[tuple[str, str, str | float]]) -> Path:
    """(test, action, output or elapsed) triples as test2json lines."""
    lines = []
    for test, action, extra in events:
        event: dict[str, object] = {"Action": action, "Package": "conformance", "Test": test}
        if action == "output":
            event["Output"] = extra
        elif action in ("pass", "fail", "skip"):
            event["Elapsed"] = extra
        lines.append(json.dumps(event))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_suite_tests_are_read_from_the_declarations_with_their_features(tmp_path: Path) -> None:
    tests_dir = tmp_path / "conformance" / "tests"
    tests_dir.mkdir(parents=True)
    (tests_dir / "a.go").write_text(
        'var X = suite.ConformanceTest{\n\tShortName:   "CNPAdminTierEgressNamedPort",\n'
        "\tFeatures: []suite.SupportedFeature{\n\t\tsuite.SupportClusterNetworkPolicy,\n"
        "\t\tsuite.SupportClusterNetworkPolicyNamedPorts,\n\t},\n}\n"
        'var Y = suite.ConformanceTest{\n\tShortName: "CNPAdminTierGress",\n'
        "\tFeatures: []suite.SupportedFeature{suite.SupportClusterNetworkPolicy},\n}\n"
    )
    tests = suite_tests(tmp_path)
    assert tests == [
        SuiteTest("CNPAdminTierEgressNamedPort",
                  ("ClusterNetworkPolicy", "ClusterNetworkPolicyNamedPorts")),
        SuiteTest("CNPAdminTierGress", ("ClusterNetworkPolicy",)),
    ]  # fmt: skip
    assert [t.experimental for t in tests] == [True, False]


def test_a_subtest_that_failed_at_an_sctp_poke_says_so_even_after_earlier_tcp_retries(
    tmp_path: Path,
) -> None:
    test, sub = f"{TOP}/CNPAdminTierGress", f"{TOP}/CNPAdminTierGress/Should_allow"
    events = write_events(tmp_path / "events.json", [
        (TOP, "run", ""), (test, "run", ""), (sub, "run", ""),
        (sub, "output", CONNECT_TCP), (sub, "output", CONNECT_SCTP),
        (sub, "fail", 11.5), (test, "fail", 12.0), (TOP, "fail", 13.0),
    ])  # fmt: skip
    [result] = parse_events(events, [SuiteTest("CNPAdminTierGress", ("ClusterNetworkPolicy",))])
    assert (result.status, result.seconds) == ("failed", 12.0)
    [subtest] = result.subtests
    assert (subtest.name, subtest.status, subtest.seconds) == ("Should allow", "failed", 11.5)
    assert failure_reason(subtest) == SCTP_POKE


def test_a_deny_that_connected_from_a_pod_to_its_own_node_is_named_from_the_placement(
    tmp_path: Path,
) -> None:
    test, sub = f"{TOP}/CNPAdminTierEgressNodePeers", f"{TOP}/CNPAdminTierEgressNodePeers/Deny"
    events = write_events(tmp_path / "events.json", [
        (test, "run", ""), (sub, "run", ""), (sub, "output", CONNECT_TCP),
        (sub, "output", CONNECTED), (sub, "fail", 10.0), (test, "fail", 10.1),
    ])  # fmt: skip
    [result] = parse_events(events, [SuiteTest("CNPAdminTierEgressNodePeers", ())])
    placement = tmp_path / "placement.txt"
    placement.write_text(
        "NAMESPACE NAME READY STATUS RESTARTS AGE IP NODE NOMINATED READINESS\n"
        "ns-a client-1 7/7 Running 0 1m 10.244.1.4 netpol-worker <none> <none>\n"
        "ns-a client-0 7/7 Running 0 1m 10.244.2.2 netpol-worker2 <none> <none>\n"
    )
    nodes = read_placement(
        placement, {"netpol-worker": "172.18.0.3", "netpol-worker2": "172.18.0.4"}
    )
    assert nodes == {"ns-a/client-1": "172.18.0.3", "ns-a/client-0": "172.18.0.4"}
    assert failure_reason(result.subtests[0], nodes) == OWN_NODE
    assert failure_reason(result.subtests[0], {"ns-a/client-1": "172.18.0.4"}) == ""


def test_tests_the_run_did_not_reach_are_listed_as_not_run(tmp_path: Path) -> None:
    ran = f"{TOP}/CNPAdminTierGress"
    events = write_events(tmp_path / "events.json", [(ran, "run", ""), (ran, "pass", 1.0)])
    tests = [SuiteTest("CNPAdminTierGress", ()), SuiteTest("CNPAdminTierEgressSCTP", ())]
    gress, sctp = parse_events(events, tests)
    assert gress.status == "passed"
    assert (sctp.status, sctp.message) == ("not run", "left out by -test.run / -test.skip")


def test_when_the_setup_stops_every_test_says_no_test_ran(tmp_path: Path) -> None:
    events = write_events(tmp_path / "events.json", [(TOP, "run", ""), (TOP, "fail", 300.0)])
    [result] = parse_events(events, [SuiteTest("CNPAdminTierGress", ())])
    assert result.status == "not run"
    assert "setup" in result.message


def test_a_test_that_started_and_never_ended_has_no_verdict(tmp_path: Path) -> None:
    test = f"{TOP}/CNPAdminTierGress"
    events = write_events(tmp_path / "events.json", [(test, "run", "")])
    [result] = parse_events(events, [SuiteTest("CNPAdminTierGress", ())])
    assert result.status == "no verdict"
