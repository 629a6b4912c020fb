"""The pod start window, a few starts: what must hold once the window is over.

The figures (leaks over 50 starts, sandbox -> IP -> rules times) come from
``python -m tests.node.podstart --starts 50``; the window leaks today (the baseline for
the pod-lifecycle work), so nothing here asserts how much gets through before isolation.
What must hold: every new pod gets rules on its node, its rules came after its IP reached
the API, and once they are in, nothing gets out of or into the pod any more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.node.podstart import measure, report

if TYPE_CHECKING:
    from tests.node.cluster import NodeCluster

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("deployed_agent")]

STARTS = 4
SLACK = 0.5  # seconds after the rule-change log's ts (ms resolution, end of the pass)


def test_new_pods_are_isolated_once_their_rules_are_in(node_cluster: NodeCluster) -> None:
    results = measure(node_cluster, STARTS, batch=2, window=4.0)
    print("\n" + report(results))
    assert len(results) == STARTS
    for start in results:
        for times, count in ((start.outbound, start.out_count), (start.inbound, start.in_count)):
            assert times.ip_seen is not None, f"{times.key}: never saw its IP"
            assert times.rules is not None, f"{times.key}: no rule-change log line"
            assert count.total > 0, f"{times.key}: the probe recorded nothing"
            # After the rules: nothing gets through, and the last attempt failed.
            late = count.leaks_in(times.rules + SLACK, float("inf"))
            assert late == 0, f"{times.key}: {late} attempt(s) through after its rules"
            assert count.attempts[-1][1] == "fail", f"{times.key}: still open at the end"
        assert start.in_after_window is False, f"{start.inbound.key} reachable after the window"
