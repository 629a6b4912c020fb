"""The command line: ``render`` and ``explain`` on a state file, exit codes and messages."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import main
from tests.unit import builders as b
from tests.unit.builders import labels

OBJECTS = [
    b.namespace("x", ns="x"),
    b.namespace("y", ns="y"),
    b.node("node1", "172.18.0.2", "fc00::2"),
    b.pod(
        "x/a",
        "10.244.1.2",
        "fd00:10:244:1::2",
        labels={"pod": "a"},
        ports=[{"name": "http", "containerPort": 80}],
    ),
    b.pod("y/b", "10.244.2.2", "fd00:10:244:2::2", labels={"pod": "b"}, node_name="node2"),
    b.policy(
        "x/allow-y",
        podSelector=labels(pod="a"),
        ingress=[{"from": [{"namespaceSelector": labels(ns="y")}], "ports": [{"port": "http"}]}],
    ),
]


def write_state(tmp_path: Path, objects: list[Any] = OBJECTS) -> str:
    path = tmp_path / "state.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    return str(path)


def render(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["render", "--node", "node1", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_render_prints_a_restore_payload_per_family(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = render(capsys, "-f", write_state(tmp_path))
    assert code == 0
    assert out.count("*filter") == 2
    assert out.count("COMMIT") == 2
    assert "# ipv4: iptables-restore" in out
    assert "# ipv6: ip6tables-restore" in out
    ipv4, ipv6 = out.split("# ipv6:")
    assert "-d 10.244.1.2/32" in ipv4 and "fd00:10:244:1::2" not in ipv4
    assert "-d fd00:10:244:1::2/128" in ipv6 and "10.244.1.2" not in ipv6


@pytest.mark.parametrize(("family", "absent"), [("ipv4", "ip6tables"), ("ipv6", "# ipv4")])
def test_render_one_family(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], family: str, absent: str
) -> None:
    code, out, _ = render(capsys, "-f", write_state(tmp_path), "--family", family)
    assert code == 0
    assert out.count("*filter") == 1 and out.count("COMMIT") == 1
    assert absent not in out


def test_render_honours_compiler_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = render(
        capsys,
        "-f",
        write_state(tmp_path),
        "--chain-prefix",
        "TEST",
        "--allow-mark",
        "0x20000",
        "--reject",
    )
    assert code == 0
    assert ":TEST-FORWARD" in out and "NPA-" not in out
    assert "--set-xmark 0x20000/0x20000" in out
    assert "-j REJECT --reject-with icmp-port-unreachable" in out


def test_render_rejects_a_kube_proxy_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = render(capsys, "-f", write_state(tmp_path), "--allow-mark", "0x4000")
    assert code == 2
    assert "0x4000" in err


def test_render_warns_about_a_bad_policy_and_renders_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    broken = b.policy(
        "x/broken", podSelector=labels(pod="a"), ingress=[{"ports": [{"port": 70000}]}]
    )
    with caplog.at_level(logging.WARNING):
        code, out, _ = render(
            capsys, "-f", write_state(tmp_path, [*OBJECTS, broken]), "--family", "ipv4"
        )
    assert code == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "NetworkPolicy x/broken" in warning and "spec.ingress[0].ports[0].port" in warning
    assert "x/allow-y ingress[0]" in out  # the good policy still renders
    assert "COMMIT" in out


def test_missing_state_file_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = render(capsys, "-f", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert out == ""
    assert "netpol-agent render: cannot read" in err and "nope.yaml" in err


def test_invalid_yaml_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kind: Pod\nmetadata: {name: [unclosed\n")
    code = main(["explain", "-f", str(path), "--from", "x/a", "--to", "y/b", "--port", "80"])
    err = capsys.readouterr().err
    assert code == 2
    assert "netpol-agent explain:" in err and "invalid YAML" in err


def explain(capsys: pytest.CaptureFixture[str], path: str, *args: str) -> tuple[int, str, str]:
    code = main(["explain", "-f", path, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_allowed_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(
        capsys, write_state(tmp_path), "--from", "y/b", "--to", "x/a", "--port", "80/TCP"
    )
    assert code == 0
    assert out.startswith("ALLOWED: y/b (10.244.2.2) -> x/a (10.244.1.2) 80/TCP")
    assert "x/allow-y ingress[0]" in out


def test_explain_denied_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(
        capsys, write_state(tmp_path), "--from", "y/b", "--to", "x/a", "--port", "8080"
    )
    assert code == 1
    assert out.startswith("DENIED:")
    assert "isolated and no rule allows it" in out


def test_explain_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_state(tmp_path)
    code, out, _ = explain(capsys, path, "--from", "y/b", "--to", "x/a", "--port", "80", "--json")
    assert code == 0
    verdict = json.loads(out)
    assert verdict["allowed"] is True
    assert verdict["port"] == "80/TCP"
    assert verdict["egress"]["isolated"] is False
    assert verdict["ingress"] == {
        "pod": "x/a",
        "isolated": True,
        "allowed": True,
        "reason": "allowed by a rule",
        "selecting_policies": ["x/allow-y"],
        "allowed_by": ["x/allow-y ingress[0]"],
        "tier": "NetworkPolicy",
        "decided_by": None,
        "passed_by": [],
    }
    code, out, _ = explain(
        capsys, path, "--from", "x/a", "--to", "y/b", "--port", "53/UDP", "--json"
    )
    assert code == 0 and json.loads(out)["ingress"]["isolated"] is False
    code, out, _ = explain(capsys, path, "--from", "y/b", "--to", "x/a", "--port", "81", "--json")
    assert code == 1 and json.loads(out)["allowed"] is False


def test_explain_ipv6_and_bare_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_state(tmp_path)
    code, out, _ = explain(
        capsys, path, "--from", "y/b", "--to", "x/a", "--port", "80", "--family", "ipv6"
    )
    assert code == 0 and "fd00:10:244:1::2" in out
    code, out, _ = explain(capsys, path, "--from", "192.168.1.1", "--to", "x/a", "--port", "80")
    assert code == 1 and "not a pod" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "x/nope", "--to", "x/a", "--port", "80"], "no pod x/nope"),
        (["--from", "bogus", "--to", "x/a", "--port", "80"], "neither ns/pod nor an IP"),
        (["--from", "y/b", "--to", "x/a", "--port", "80/ICMP"], "--port takes"),
        (["--from", "y/b", "--to", "x/a", "--port", "0"], "out of range"),
    ],
)
def test_explain_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = explain(capsys, write_state(tmp_path), *args)
    assert code == 2
    assert message in err


def test_installed_command_exit_codes(tmp_path: Path) -> None:
    path = write_state(tmp_path)
    command = [sys.executable, "-m", "agent.cli", "explain", "-f", path, "--to", "x/a"]
    allowed = subprocess.run(
        [*command, "--from", "y/b", "--port", "80"], capture_output=True, text=True
    )
    denied = subprocess.run(
        [*command, "--from", "y/b", "--port", "81"], capture_output=True, text=True
    )
    broken = subprocess.run(
        [
            *command[:4],
            "-f",
            str(tmp_path / "missing.yaml"),
            "--from",
            "y/b",
            "--to",
            "x/a",
            "--port",
            "80",
        ],
        capture_output=True,
        text=True,
    )
    assert (allowed.returncode, denied.returncode, broken.returncode) == (0, 1, 2)
    assert "cannot read" in broken.stderr


# --- bad flags: argparse's usage error, exit 2, never a traceback -------------------------


def test_render_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    # `netpol-agent render ... | head`: the reader left before the output was written.
    command = [sys.executable, "-m", "agent.cli", "render", "--node", "node1"]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [*command, "-f", write_state(tmp_path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--node", "n", "--family", "bogus"], "--family takes ipv4, ipv6"),
        (["run", "--node", "n", "--family", "ipv4,ipv4"], "names ipv4 twice"),
        (["run", "--node", "n", "--node-ip", "10.0.0.300"], "is not an IPv4 or IPv6 address"),
        (["run", "--node", "n", "--node-ip", "node1"], "--node-ip 'node1'"),
        (["run", "--node", "n", "--allow-mark", "lots"], "is not a number"),
        (["run", "--node", "n", "--allow-mark", "0x3000"], "single bit"),
        (["run", "--node", "n", "--allow-mark", "0x4000"], "kube-proxy"),
        (["run", "--node", "n", "--allow-mark", "-1"], "single bit"),
        (["run", "--node", "n", "--chain-prefix", "TOOLONGPREFIX"], "chain prefix"),
        (["run", "--node", "n", "--established-flows", "drop"], "takes strict or keep"),
        (["run", "--node", "n", "--chain-prefix", "a b"], "chain prefix"),
        (["run", "--node", "n", "--min-sync-interval", "-1"], "--min-sync-interval '-1'"),
        (["run", "--node", "n", "--min-sync-interval", "nan"], "--min-sync-interval 'nan'"),
        (["run", "--node", "n", "--resync-period", "0"], "--resync-period '0'"),
        (["run", "--node", "n", "--resync-period", "soon"], "not a number of seconds"),
        (["run", "--node", "n", "--metrics-address", "nowhere"], "not host:port"),
        (["run", "--node", "n", "--metrics-address", ":99999"], "out of range"),
        (["run", "--node", "n", "--rule-log-max-bytes", "10"], "below 4096"),
        (["run", "--node", "n", "--rule-log-max-bytes", "x"], "not a whole number"),
        (["run", "--node", "n", "--rule-log-backups", "-2"], "below 0"),
        (["run", "--node", "n", "--backend", "ebpf"], "--backend takes"),
        (["run", "--node", "a/b"], "not a valid node name"),
        (["run", "--node", ""], "--node (or env NODE_NAME) is required"),
        (["run", "--node", "n", "--source-file", "f", "--kubeconfig", "k"], "not allowed with"),
        (["render", "--node", "n", "-f", "x", "--family", "ipv5"], "--family takes"),
        (["render", "--node", "n", "-f", "x", "--node-ip", "::g"], "not an IPv4 or IPv6"),
        (
            ["explain", "-f", "x", "--from", "a", "--to", "b", "--port", "80", "--family", "both"],
            "--family takes",
        ),
        (["cleanup", "--family", "bogus"], "--family takes"),
        (["cleanup", "--backend", "bogus"], "--backend takes"),
        (["cleanup", "--chain-prefix", "x" * 20], "chain prefix"),
    ],
)
def test_a_bad_flag_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    assert err.startswith("usage: netpol-agent "), err
    assert message in err
    assert "Traceback" not in err


def test_run_without_a_node_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert main(["run", "--once", "--source-file", "x"]) == 2
    err = capsys.readouterr().err
    assert "usage: netpol-agent run" in err and "--node (or env NODE_NAME) is required" in err


def test_the_installed_command_gives_a_usage_line_for_a_bad_family() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--node", "n", "--family", "bogus"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: netpol-agent run")
    assert "Traceback" not in result.stderr


def test_run_flags_become_a_frozen_agent_config() -> None:
    import dataclasses
    import ipaddress

    from agent.cli import _parser, agent_config
    from agent.rules import Family

    args = _parser().parse_args(
        [
            "run", "--node", "n1", "--family", "ipv6", "--node-ip", "fd00::1",
            "--allow-mark", "0x20000", "--min-sync-interval", "0.5", "--resync-period", "30",
            "--metrics-address", "", "--rule-log", "", "--source-file", "/s.yaml",
            "--backend", "legacy", "--no-kernel-addresses",
        ]
    )  # fmt: skip
    config = agent_config(args)
    assert config.node_name == "n1"
    assert config.families == (Family.IPV6,)
    assert config.node_ips == (ipaddress.ip_address("fd00::1"),)
    assert config.compiler.allow_mark == 0x20000
    assert (config.intervals.min_sync, config.intervals.resync) == (0.5, 30.0)
    assert config.metrics_address == "" and config.rule_log is None
    assert config.source.file == "/s.yaml" and config.backend == "legacy"
    assert not config.kernel_addresses
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node_name = "other"  # type: ignore[misc]


def test_established_flows_are_strict_by_default_with_a_rule_for_revoked_flows() -> None:
    from agent.cli import _parser, agent_config
    from agent.control.flows import EstablishedFlows

    strict = agent_config(_parser().parse_args(["run", "--node", "n1"]))
    assert strict.established_flows is EstablishedFlows.STRICT
    assert strict.compiler.revoked_mark == 0x2000
    keep = agent_config(_parser().parse_args(["run", "--node", "n1", "--established-flows=keep"]))
    assert keep.established_flows is EstablishedFlows.KEEP
    assert keep.compiler.revoked_mark == 0  # no rule for revoked flows at all


def test_the_revoked_flow_mark_can_be_moved_to_another_connmark_bit() -> None:
    from agent.cli import _parser, agent_config

    args = _parser().parse_args(["run", "--node", "n1", "--revoked-mark", "0x200000"])
    assert agent_config(args).compiler.revoked_mark == 0x200000


@pytest.mark.parametrize("value", ["0", "0x3000", "0x100000000", "-1", "two"])
def test_a_revoked_mark_that_is_not_one_connmark_bit_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import _parser

    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["run", "--node", "n1", f"--revoked-mark={value}"])
    assert exit_info.value.code == 2
    assert "--revoked-mark" in capsys.readouterr().err


def test_a_revoked_mark_with_established_flows_kept_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from agent.cli import _parser, agent_config

    args = ["run", "--node", "n1", "--established-flows=keep", "--revoked-mark=0x200000"]
    with pytest.raises(SystemExit) as exit_info:
        agent_config(_parser().parse_args(args))
    assert exit_info.value.code == 2
    assert "--revoked-mark is only used with --established-flows=strict" in capsys.readouterr().err


# --- CNI chaining -------------------------------------------------------------------------


def test_cni_flags_become_the_agents_cni_config_and_it_is_off_by_default() -> None:
    from agent.cli import _parser, agent_config

    assert agent_config(_parser().parse_args(["run", "--node", "n1"])).cni is None
    args = _parser().parse_args(
        ["run", "--node", "n1", "--cni-socket", "/run/npa/cni.sock", "--cni-conf-dir",
         "/host/etc/cni/net.d", "--cni-timeout", "4", "--cni-failure-policy", "pass"]
    )  # fmt: skip
    cni = agent_config(args).cni
    assert cni is not None
    assert (cni.socket, cni.conf_dir, cni.timeout, cni.failure_policy) == (
        "/run/npa/cni.sock", "/host/etc/cni/net.d", 4.0, "pass",
    )  # fmt: skip


def test_a_cni_conf_dir_without_a_socket_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--node", "n1", "--cni-conf-dir", "/etc/cni/net.d"]) == 2
    assert "--cni-conf-dir needs --cni-socket" in capsys.readouterr().err


def test_install_cni_then_cleanup_leave_the_network_list_as_it_was(tmp_path: Path) -> None:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    original = {"cniVersion": "0.3.1", "name": "kindnet", "plugins": [{"type": "ptp"}]}
    (conf_dir / "10-kindnet.conflist").write_text(json.dumps(original))
    plugin = tmp_path / "plugin"
    plugin.write_bytes(b"binary")
    argv = ["install-cni", "--binary", str(plugin), "--bin-dir", str(bin_dir),
            "--conf-dir", str(conf_dir), "--timeout", "3"]  # fmt: skip
    assert main(argv) == 0
    assert main(argv) == 0  # idempotent
    chained = json.loads((conf_dir / "10-kindnet.conflist").read_text())
    assert chained["plugins"] == [
        {"type": "ptp"},
        {"type": "netpol-agent", "socket": "/var/run/netpol-agent/cni.sock",
         "timeoutSeconds": 3.0, "failurePolicy": "fail"},
    ]  # fmt: skip
    assert (bin_dir / "netpol-agent").read_bytes() == b"binary"
    from agent import app

    assert app.cleanup_cni(str(conf_dir), str(bin_dir)) == 0
    assert json.loads((conf_dir / "10-kindnet.conflist").read_text()) == original
    assert not (bin_dir / "netpol-agent").exists()


def test_explain_judges_ipv6_pods_in_ipv6_without_being_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = [
        b.namespace("v6"),
        b.pod("v6/a", "fd00:10:244:1::2"),
        b.pod("v6/b", "fd00:10:244:2::2", node_name="node2"),
        b.policy("v6/deny-all"),
    ]
    code, out, _ = explain(
        capsys, write_state(tmp_path, objects), "--from", "v6/a", "--to", "v6/b", "--port", "80"
    )
    assert code == 1
    assert out.startswith("DENIED: v6/a (fd00:10:244:1::2) -> v6/b (fd00:10:244:2::2) 80/TCP")
