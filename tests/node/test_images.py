"""The images of tests/node/images.sh, as a node gets them: imported into containerd's
k8s.io namespace under the printed ref, and run with runc.

Each test starts a throwaway containerd (tests/node/images/ctr-check.sh: its own root,
state and socket under a run-unique /tmp dir, stopped by PID). The agent image is the
project's Dockerfile built for real, so this is also the check that the Dockerfile builds
and that what it builds runs the way deploy/daemonset.yaml runs it (read-only root
filesystem, /tmp a tmpfs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.node

REPO = Path(__file__).resolve().parents[2]
IMAGES_SH = REPO / "tests/node/images.sh"
CTR_CHECK = REPO / "tests/node/images/ctr-check.sh"


def images(*args: str) -> dict[str, str]:
    """Run images.sh and return its KEY=value lines."""
    out = subprocess.run(
        ["bash", str(IMAGES_SH), *args], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def ctr_check(*args: str, run_args: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CTR_RUN_ARGS": run_args}
    return subprocess.run(
        ["bash", str(CTR_CHECK), *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module", autouse=True)
def _needs_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (containerd, runc, buildah)")
    missing = [
        t for t in ("containerd", "ctr", "runc", "buildah", "mmdebstrap") if not shutil.which(t)
    ]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (scripts/setup-host.sh)")


def test_pause_and_netprobe_import_under_their_refs_and_run() -> None:
    got = images("pause", "netprobe")
    assert got["PAUSE_REF"].startswith("localhost/netpol-test/pause:")
    assert got["NETPROBE_REF"].startswith("localhost/netpol-test/netprobe:")
    assert Path(got["NETPROBE_BIN"]).is_file()
    r = ctr_check(
        got["PAUSE"], got["PAUSE_REF"], "--", "/pause", "-v", ",",
        got["NETPROBE"], got["NETPROBE_REF"], "--",
        "/netprobe", "loop", "tcp", "127.0.0.1:1", "--count", "2", "--interval", "10ms",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "pause (netpol-agent tests)" in r.stdout
    assert [line.split()[2] for line in r.stdout.splitlines()[1:]] == ["fail", "fail"], r.stdout


def test_agent_image_runs_as_the_daemonset_runs_it(tmp_path: Path) -> None:
    """Also: `--tag` gives the same image under a second name (for a rolling update)."""
    got = images("agent")
    assert got["AGENT_REF"].startswith("localhost/netpol-agent:dev-")
    second = images("agent", "--tag", "rollout-test")
    assert second["AGENT_REF"] == "localhost/netpol-agent:rollout-test"
    assert second["AGENT"] != got["AGENT"]
    state = tmp_path / "state.yaml"
    state.write_text(
        yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}},
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": "x", "labels": {"ns": "x"}},
                },
            ]
        )
    )
    script = "; ".join(
        [
            "set -e",
            "netpol-agent --help >/dev/null",
            "iptables-nft --version",
            "iptables-legacy --version",
            "ip6tables-nft-restore --version",
            "ip6tables-legacy-save --version",
            "python -c 'import iptc; print(\"iptc\", iptc.__name__)'",
            # the CNI plugin that install-cni copies to the node: a static binary that runs
            "CNI_COMMAND=VERSION /opt/netpol-agent/cni/netpol-agent </dev/null",
            "netpol-agent render --node node1 -f /state.yaml | grep -c '^COMMIT'",
        ]
    )
    r = ctr_check(
        got["AGENT"], got["AGENT_REF"], ",",
        second["AGENT"], second["AGENT_REF"], "--", "sh", "-c", script,
        run_args=(
            "--read-only --mount type=tmpfs,src=tmpfs,dst=/tmp,options=size=16m "
            f"--mount type=bind,src={state},dst=/state.yaml,options=rbind:ro"
        ),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"imported as {got['AGENT_REF']}" in r.stderr
    assert f"imported as {second['AGENT_REF']}" in r.stderr
    lines = r.stdout.splitlines()
    versions = [line for line in lines if line.startswith(("iptables v", "ip6tables"))]
    assert [v.rsplit(" ", 1)[-1] for v in versions] == ["(nf_tables)", "(legacy)"] * 2, lines
    assert "iptc iptc" in lines
    assert any('"supportedVersions"' in line and '"1.1.0"' in line for line in lines), lines
    assert lines[-1] == "2", "one restore payload per family"
