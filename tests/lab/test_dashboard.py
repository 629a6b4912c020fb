"""deploy/grafana/netpol-agent.json: importable as it is, and every metric a panel (or a
template variable) queries is in a real /metrics scrape of a lab agent that synced,
took a change and denied a connection."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.api.agent_harness import Scrape, http_get
from tests.lab.scenarios_support import netpol, pod_sel
from tests.lab.test_deny_log import agents_with_deny_log, tcp_connect
from tests.lab.topology import Lab

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "netpol-agent.json"
METRIC = re.compile(r"\bnetpol_agent_[a-z0-9_]+")
PORT = 19872


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def queries(board: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", ())]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def test_the_dashboard_is_importable_as_it_is() -> None:
    board = dashboard()
    assert board["uid"] == "netpol-agent" and board["title"]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and all(t["refId"] and t["expr"] for t in panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("sync duration", "programming latency", "restore failures",
                  "rules per node", "chains per node", "denied connections", "watches"):  # fmt: skip
        assert topic in titles, topic


@pytest.mark.lab
def test_every_metric_a_panel_queries_is_in_a_real_scrape(clean_lab: Lab) -> None:
    lab = clean_lab
    names = {name for expr in queries(dashboard()) for name in METRIC.findall(expr)}
    assert len(names) >= 15
    metrics = ("--metrics-address", f"127.0.0.1:{PORT}")
    with agents_with_deny_log(lab, "nft", *metrics) as (agents, _):
        # A change after the initial sync (programming latency), a denied connection.
        mark = agents.mark("node-2")
        agents.write([*lab.objects(), *_policies_plus_one()])
        agents.wait_for("node-2", "msg=synced", mark)
        assert not tcp_connect(lab, "x/a", "y/b", 80, 4, 1.0)
        netns = lab.nodes["node-2"].netns
        deadline = time.monotonic() + 10
        while True:
            status, body = http_get(netns, PORT, "/metrics")
            assert status == 200
            scrape = Scrape.parse(body)
            if scrape.value("netpol_agent_denied_connections_total") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    missing = sorted(name for name in names if not scrape.has(name))
    assert not missing, f"queried but not in the scrape: {missing}"
    assert scrape.value("netpol_agent_denied_connections_total", namespace="y",
                        direction="ingress") == 1  # fmt: skip


def _policies_plus_one() -> list[dict[str, Any]]:
    from tests.lab.test_deny_log import policies

    isolate = netpol("z", "c-no-ingress", {"podSelector": pod_sel("c"), "policyTypes": ["Ingress"]})
    return [*policies(), isolate]
