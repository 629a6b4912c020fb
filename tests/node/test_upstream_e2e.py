"""A named subset of Kubernetes' own NetworkPolicy e2e tests, run unmodified (``-m node``).

The whole ``Netpol`` selection runs with ``python -m tests.node.e2e`` (``make e2e``, about
13 minutes); this test runs one spec per area on the session's cluster with the agent
deployed: isolation, egress, peers (pod and namespace selectors), ports, named ports,
updates and ipBlock (about 2 minutes). Every spec must pass.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

from tests.node.cluster import NodeCluster, build_images
from tests.node.conftest import AgentImage
from tests.node.e2e import SKIPS, build_e2e, parse_junit, run_suite, table

pytestmark = pytest.mark.node

#: One spec per area (the names as the suite writes them; regex-escaped where needed).
SUBSET = (
    r"should support a 'default-deny-all' policy",
    r"should deny egress from pods based on PodSelector",
    r"should enforce policy based on PodSelector and NamespaceSelector",
    r"NetworkPolicy between server and client should enforce policy based on Ports",
    r"should allow ingress access from namespace on one named port",
    r"should allow ingress access from updated pod",
    r"should enforce except clause while egress access to server in CIDR block",
)


def test_upstream_netpol_subset(node_cluster: NodeCluster, deployed_agent: AgentImage) -> None:
    e2e_test = build_e2e("e2e.test")["E2E_TEST"]
    agnhost = build_images("agnhost")
    node_cluster.import_image(agnhost["AGNHOST"])
    focus = "|".join(SUBSET)
    report_dir = Path(tempfile.mkdtemp(prefix="e2e-", dir=node_cluster.run_dir))
    skip = SKIPS[node_cluster.layout.family]
    code, seconds = run_suite(
        node_cluster, e2e_test, report_dir, focus=focus, skip=skip, timeout="20m", extra=()
    )
    results = [r for p in sorted(report_dir.glob("junit*.xml")) for r in parse_junit(p, focus)]
    print(f"\n{table(results)}\nsuite {seconds:.0f}s", file=sys.stderr)
    assert code == 0, (report_dir / "e2e.log").read_text()[-5000:]
    assert len(results) == len(SUBSET), [r.name for r in results]
    assert all(r.status == "passed" for r in results), table(results)
