"""The ``netpol-agent`` command line."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from agent.compiler.config import (
    DEFAULT_CHAIN_PREFIX,
    DEFAULT_MARK,
    CompilerConfig,
    NodeContext,
    node_addresses,
)
from agent.compiler.node import compile_node
from agent.model.objects import IPAddress, Protocol
from agent.policy.explain import EndpointError, Verdict, explain, resolve_endpoint
from agent.policy.state import BuiltState, build_state
from agent.rules import Family

log = logging.getLogger("netpol-agent")

DEFAULT_METRICS_ADDRESS = "0.0.0.0:9872"
DEFAULT_RULE_LOG = "/var/log/netpol-agent.log"


class UsageError(Exception):
    pass


def load_state_file(path: str) -> BuiltState:
    import yaml  # only file mode needs it

    try:
        with open(path, encoding="utf-8") as stream:
            documents = [d for d in yaml.safe_load_all(stream) if d is not None]
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"{path} is not valid YAML: {error}") from None
    return build_state(documents)


def _report_problems(built: BuiltState) -> None:
    for problem in built.problems:
        log.warning("%s", problem)


def _mark(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0x1000)") from None


def _add_compiler_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chain-prefix",
        default=DEFAULT_CHAIN_PREFIX,
        help="prefix of every chain the agent owns (default %(default)s)",
    )
    parser.add_argument(
        "--allow-mark",
        type=_mark,
        default=DEFAULT_MARK,
        help="the one packet-mark bit used inside our chains (default %(default)#x)",
    )
    parser.add_argument(
        "--reject", action="store_true", help="REJECT denied traffic instead of dropping it"
    )


def compiler_config(args: argparse.Namespace) -> CompilerConfig:
    try:
        return CompilerConfig(
            chain_prefix=args.chain_prefix, allow_mark=args.allow_mark, reject=args.reject
        )
    except ValueError as error:
        raise UsageError(str(error)) from None


def _families(text: str | None) -> tuple[Family, ...]:
    if not text:
        return (Family.IPV4, Family.IPV6)
    try:
        return tuple(Family(part.strip()) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--family takes ipv4, ipv6 or both, not {text!r}") from None


def _node_ips(values: Sequence[str]) -> tuple[IPAddress, ...]:
    try:
        return tuple(ipaddress.ip_address(v) for v in values)
    except ValueError as error:
        raise UsageError(f"--node-ip: {error}") from None


# --- render ------------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    from agent.dataplane.plan import plan_table
    from agent.dataplane.restore import render_restore
    from agent.dataplane.state import ProgrammedState

    built = load_state_file(args.file)
    _report_problems(built)
    config = compiler_config(args)
    node = NodeContext(args.node, node_addresses(built.state, args.node, _node_ips(args.node_ip)))
    for family in _families(args.family):
        ruleset = compile_node(built.state, node, family, config)
        empty = ProgrammedState(
            family=family, prefix=config.chain_prefix, chains={}, forward_jumps=()
        )
        payload = render_restore(plan_table(ruleset, empty))
        binary = "iptables-restore" if family is Family.IPV4 else "ip6tables-restore"
        sys.stdout.write(f"# {family.value}: {binary} --noflush --wait\n{payload}")
    return 0


# --- explain -----------------------------------------------------------------------------


def _port(text: str) -> tuple[int, Protocol]:
    number, _, protocol = text.partition("/")
    try:
        port = int(number)
        proto = Protocol((protocol or "TCP").upper())
    except ValueError:
        raise UsageError(f"--port takes PORT[/TCP|UDP|SCTP], not {text!r}") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is out of range")
    return port, proto


def _verdict_dict(verdict: Verdict) -> dict[str, Any]:
    def side(v: Any) -> dict[str, Any] | None:
        if v is None:
            return None
        return {
            "pod": v.pod,
            "isolated": v.isolated,
            "allowed": v.allowed,
            "reason": v.reason,
            "selecting_policies": list(v.selecting),
            "allowed_by": list(v.allowed_by),
        }

    return {
        "from": verdict.source.describe(),
        "to": verdict.destination.describe(),
        "port": f"{verdict.port}/{verdict.protocol.value}",
        "allowed": verdict.allowed,
        "egress": side(verdict.egress),
        "ingress": side(verdict.ingress),
    }


def cmd_explain(args: argparse.Namespace) -> int:
    built = load_state_file(args.file)
    _report_problems(built)
    port, protocol = _port(args.port)
    version = 6 if args.family == "ipv6" else 4
    try:
        source = resolve_endpoint(built.state, args.source, version)
        destination = resolve_endpoint(built.state, args.destination, version)
    except EndpointError as error:
        raise UsageError(str(error)) from None
    verdict = explain(built.state, source, destination, protocol, port)
    if args.json:
        print(json.dumps(_verdict_dict(verdict), indent=2))
        return 0 if verdict.allowed else 1
    word = "ALLOWED" if verdict.allowed else "DENIED"
    print(f"{word}: {source.describe()} -> {destination.describe()} {port}/{protocol.value}")
    for label, side in (("egress ", verdict.egress), ("ingress", verdict.ingress)):
        if side is None:
            print(f"  {label}  not a pod: no {label.strip()} policy applies")
            continue
        state = "allow" if side.allowed else "DENY"
        print(f"  {label}  {state:5}  {side.pod}: {side.reason}")
        if side.selecting:
            print(f"           isolated by: {', '.join(side.selecting)}")
        if side.allowed_by:
            print(f"           allowed by:  {', '.join(side.allowed_by)}")
    return 0 if verdict.allowed else 1


# --- run / cleanup -----------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from agent.control.runner import run_agent

    return run_agent(args, compiler_config(args))


def cmd_cleanup(args: argparse.Namespace) -> int:
    from agent.control.runner import cleanup

    return cleanup(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netpol-agent",
        description="Enforce Kubernetes NetworkPolicy on this node with iptables.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    render = commands.add_parser("render", help="print the iptables-restore payload; touch nothing")
    render.add_argument("--node", required=True, help="the node to render for")
    render.add_argument(
        "-f", "--file", required=True, help="multi-document YAML of cluster objects"
    )
    render.add_argument("--family", choices=["ipv4", "ipv6"], help="one family only")
    render.add_argument("--node-ip", action="append", default=[], help="extra node address")
    _add_compiler_options(render)
    render.set_defaults(func=cmd_render)

    why = commands.add_parser("explain", help="is a connection allowed, and which policies decide")
    why.add_argument("-f", "--file", required=True, help="multi-document YAML of cluster objects")
    why.add_argument("--from", dest="source", required=True, help="NS/POD or an IP address")
    why.add_argument("--to", dest="destination", required=True, help="NS/POD or an IP address")
    why.add_argument("--port", required=True, help="PORT[/TCP|UDP|SCTP], e.g. 80/TCP")
    why.add_argument("--family", choices=["ipv4", "ipv6"], default="ipv4")
    why.add_argument("--json", action="store_true", help="machine-readable output")
    why.set_defaults(func=cmd_explain)

    run = commands.add_parser("run", help="program this node and keep it programmed")
    run.add_argument(
        "--node", default=os.environ.get("NODE_NAME"), help="node name (env NODE_NAME)"
    )
    source = run.add_mutually_exclusive_group()
    source.add_argument(
        "--source-file", help="read cluster objects from this YAML file, not the API"
    )
    source.add_argument(
        "--kubeconfig", help="kubeconfig path (default: in-cluster service account)"
    )
    run.add_argument("--once", action="store_true", help="sync once and exit")
    run.add_argument(
        "--backend",
        choices=["auto", "nft", "legacy", "iptc"],
        default=os.environ.get("NETPOL_AGENT_BACKEND", "auto"),
        help="iptables backend (default: detect as kubelet does)",
    )
    run.add_argument("--family", help="ipv4, ipv6 or ipv4,ipv6 (default both)")
    run.add_argument("--node-ip", action="append", default=[], help="extra node address")
    run.add_argument(
        "--no-kernel-addresses",
        action="store_true",
        help="do not read this node's addresses from the kernel",
    )
    run.add_argument("--min-sync-interval", type=float, default=0.1, help="seconds between syncs")
    run.add_argument(
        "--resync-period", type=float, default=60.0, help="seconds between full resyncs"
    )
    run.add_argument(
        "--metrics-address",
        default=DEFAULT_METRICS_ADDRESS,
        help="host:port for /metrics, /healthz, /readyz ('' to disable; default %(default)s)",
    )
    run.add_argument("--rule-log", default=DEFAULT_RULE_LOG, help="rule-change log ('' to disable)")
    run.add_argument("--rule-log-max-bytes", type=int, default=10 * 1024 * 1024)
    run.add_argument("--rule-log-backups", type=int, default=3)
    _add_compiler_options(run)
    run.set_defaults(func=cmd_run)

    clean = commands.add_parser("cleanup", help="remove every chain and jump the agent owns")
    clean.add_argument("--backend", choices=["auto", "nft", "legacy", "iptc"], default="auto")
    clean.add_argument("--family", help="ipv4, ipv6 or ipv4,ipv6 (default both)")
    clean.add_argument("--chain-prefix", default=DEFAULT_CHAIN_PREFIX)
    clean.set_defaults(func=cmd_cleanup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.func(args)
    except UsageError as error:
        print(f"netpol-agent {args.command}: {error}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
