"""``netpol-agent explain --kubeconfig``: the verdict from what the real apiserver lists,
no dump needed; the same answers as from a file, and clear errors when the API cannot
be read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kube import Kube

pytestmark = pytest.mark.cluster


def explain(capsys: Any, kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    code = main(["explain", "--kubeconfig", str(kubeconfig), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_reads_the_live_cluster(
    control_plane: ControlPlane, kube: Kube, capsys: Any
) -> None:
    server = kube.create_namespace(labels={"team": "data"})
    clients = kube.create_namespace(labels={"team": "web"})
    kube.create_pod(server, "db", node_name="node-a", labels={"app": "db"}, ip="10.77.1.2",
                    ports=[5432])  # fmt: skip
    kube.create_pod(clients, "web", node_name="node-b", labels={"app": "web"}, ip="10.77.2.2")
    kube.create_pod(clients, "other", node_name="node-b", labels={"app": "other"},
                    ip="10.77.2.3")  # fmt: skip
    kube.create_network_policy(server, {
        "metadata": {"name": "db-from-web"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"team": "web"}},
                          "podSelector": {"matchLabels": {"app": "web"}}}],
                "ports": [{"port": 5432, "protocol": "TCP"}],
            }],
        },
    })  # fmt: skip
    kubeconfig = control_plane.admin_kubeconfig

    code, out, _ = explain(capsys, kubeconfig, "--from", f"{clients}/web",
                           "--to", f"{server}/db", "--port", "5432/TCP", "--json")  # fmt: skip
    verdict = json.loads(out)
    assert code == 0 and verdict["allowed"]
    assert verdict["ingress"]["allowed_by"] == [f"{server}/db-from-web ingress[0]"]
    assert verdict["from"] == f"{clients}/web (10.77.2.2)"

    code, out, _ = explain(capsys, kubeconfig, "--from", f"{clients}/other",
                           "--to", f"{server}/db", "--port", "5432/TCP", "--json")  # fmt: skip
    verdict = json.loads(out)
    assert code == 1 and not verdict["allowed"]
    assert verdict["ingress"]["selecting_policies"] == [f"{server}/db-from-web"]
    assert verdict["ingress"]["reason"] == "isolated and no rule allows it"

    code, out, _ = explain(capsys, kubeconfig, "--from", f"{clients}/web",
                           "--to", f"{server}/db", "--port", "80/TCP")  # fmt: skip
    assert code == 1 and out.startswith("DENIED:")
    assert f"isolated by: {server}/db-from-web" in out

    # A change is seen at once: nothing is cached between calls.
    kube.set_pod_labels(clients, "other", {"app": "web"})
    code, _, _ = explain(capsys, kubeconfig, "--from", f"{clients}/other",
                         "--to", f"{server}/db", "--port", "5432/TCP")  # fmt: skip
    assert code == 0


def test_explain_says_why_the_cluster_cannot_be_read(
    control_plane: ControlPlane, tmp_path: Path, capsys: Any
) -> None:
    unreachable = control_plane.write_admin_kubeconfig(
        tmp_path / "closed.kubeconfig", "https://127.0.0.1:1"
    )
    code, out, err = explain(capsys, unreachable, "--from", "a/b", "--to", "c/d",
                             "--port", "80")  # fmt: skip
    assert code == 2 and out == ""
    assert "cannot read the cluster" in err

    code, _, err = explain(capsys, tmp_path / "missing.kubeconfig", "--from", "a/b",
                           "--to", "c/d", "--port", "80")  # fmt: skip
    assert code == 2 and "cannot read the cluster" in err


def test_explain_takes_a_file_or_the_api_not_both(
    control_plane: ControlPlane, tmp_path: Path, capsys: Any
) -> None:
    code = main(["explain", "-f", str(tmp_path / "x.yaml"), "--kubeconfig",
                 str(control_plane.admin_kubeconfig), "--from", "a/b", "--to", "c/d",
                 "--port", "80"])  # fmt: skip
    assert code == 2
    assert "not allowed with argument" in capsys.readouterr().err
