"""The ``netpol-agent`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from agent import config
from agent.compiler.config import (
    DEFAULT_CHAIN_PREFIX,
    DEFAULT_DENY_LOG_BURST,
    DEFAULT_DENY_LOG_GROUP,
    DEFAULT_DENY_LOG_RATE,
    DEFAULT_MARK,
    DEFAULT_REVOKED_MARK,
    CompilerConfig,
    DenyLogRules,
    NodeContext,
    node_addresses,
    pod_cidrs,
)
from agent.compiler.node import compile_node
from agent.config import (
    BACKENDS,
    DEFAULT_METRICS_ADDRESS,
    DEFAULT_RULE_LOG,
    AgentConfig,
    CniConfig,
    ConfigError,
    DenyLogConfig,
    Intervals,
    RuleLogConfig,
    SourceConfig,
)
from agent.control import cni_conf
from agent.control.cni_server import DEFAULT_SOCKET as DEFAULT_CNI_SOCKET
from agent.control.flows import EstablishedFlows
from agent.model.objects import Protocol
from agent.observability.denylog import DEFAULT_DENY_LOG
from agent.observability.logs import configure_logging
from agent.observability.rulelog import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES
from agent.policy.explain import (
    ClusterRuleRef,
    EndpointError,
    Verdict,
    explain,
    resolve_endpoint,
)
from agent.policy.state import BuiltState, ClusterState
from agent.rules import Family

log = logging.getLogger("netpol-agent")

T = TypeVar("T")


class UsageError(Exception):
    pass


def load_state_file(path: str) -> BuiltState:
    """The state in ``path`` (YAML or JSON, any ``*List``), read as ``run`` reads it."""
    from agent.model.parse import parse_read
    from agent.model.reader import ReadError, read_file

    try:
        parsed = parse_read(read_file(path))
    except ReadError as error:
        raise UsageError(str(error)) from None
    state = ClusterState.of(
        parsed.namespaces, parsed.pods, parsed.policies, parsed.nodes, parsed.cluster_policies
    )
    return BuiltState(state, parsed.problems)


def _report_problems(built: BuiltState) -> None:
    for problem in built.problems:
        log.warning("%s", problem)


def _flag(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type=``: a ConfigError becomes argparse's own usage error (exit 2)."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


def _seconds(flag: str, *, positive: bool) -> Callable[[str], float]:
    def parse_seconds_flag(text: str) -> float:
        return config.parse_seconds(flag, text, positive=positive)

    return _flag(parse_seconds_flag)


def _count(flag: str, minimum: int) -> Callable[[str], int]:
    def parse_count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{flag} {text!r} is not a whole number") from None
        if value < minimum:
            raise ConfigError(f"{flag} {value} is below {minimum}")
        return value

    return _flag(parse_count)


def _add_compiler_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chain-prefix",
        default=DEFAULT_CHAIN_PREFIX,
        help="prefix of every chain the agent owns (default %(default)s)",
    )
    parser.add_argument(
        "--allow-mark",
        type=_flag(config.parse_mark),
        default=DEFAULT_MARK,
        help="the one packet-mark bit used inside our chains (default %(default)#x)",
    )
    parser.add_argument(
        "--reject", action="store_true", help="REJECT denied traffic instead of dropping it"
    )
    parser.add_argument(
        "--isolate-unknown-pod-ips",
        action="store_true",
        help="drop traffic to and from addresses of this node's pod CIDRs that no pod the"
        " agent knows holds yet (replies and the node's own traffic pass)",
    )
    parser.add_argument(
        "--log-denied",
        action="store_true",
        help="log each denied connection, attributed to its pod and policies (NFLOG with a"
        " kernel rate limit; off by default: without it no NFLOG rule exists)",
    )
    parser.add_argument(
        "--log-denied-group",
        type=_count("--log-denied-group", 0),
        default=DEFAULT_DENY_LOG_GROUP,
        help="the NFLOG group the agent reads (default %(default)s)",
    )
    parser.add_argument(
        "--log-denied-rate",
        type=_count("--log-denied-rate", 1),
        default=DEFAULT_DENY_LOG_RATE,
        help="denied packets logged a second, per node and IP family (default %(default)s)",
    )
    parser.add_argument(
        "--log-denied-burst",
        type=_count("--log-denied-burst", 1),
        default=DEFAULT_DENY_LOG_BURST,
        help="how many may be logged at once above the rate (default %(default)s)",
    )
    parser.add_argument(
        "--pod-cidr",
        type=_flag(config.parse_pod_cidr),
        action="append",
        default=[],
        help="this node's pod CIDR (repeatable; IPv4 and IPv6), instead of its Node's"
        " spec.podCIDRs, for --isolate-unknown-pod-ips",
    )


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """argparse's own usage error for the subcommand: usage line, message, exit 2."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def compiler_config(args: argparse.Namespace) -> CompilerConfig:
    try:
        if args.pod_cidr and not args.isolate_unknown_pod_ips:
            raise ConfigError("--pod-cidr is only read with --isolate-unknown-pod-ips")
        return config.compiler_config(
            args.chain_prefix,
            args.allow_mark,
            args.reject,
            isolate_unknown_pod_ips=args.isolate_unknown_pod_ips,
            deny_log=_deny_log_rules(args),
        )
    except ConfigError as error:
        _usage_error(args, str(error))


def _deny_log_rules(args: argparse.Namespace) -> DenyLogRules | None:
    if not args.log_denied:
        return None
    return config.deny_log_rules(args.log_denied_group, args.log_denied_rate, args.log_denied_burst)


def agent_config(args: argparse.Namespace) -> AgentConfig:
    """``run``'s flags as a validated ``AgentConfig``; a bad value is a usage error."""
    try:
        rule_log = (
            RuleLogConfig(args.rule_log, args.rule_log_max_bytes, args.rule_log_backups)
            if args.rule_log
            else None
        )
        return AgentConfig(
            node_name=args.node or "",
            families=args.family,
            compiler=config.compiler_config(
                args.chain_prefix,
                args.allow_mark,
                args.reject,
                isolate_unknown_pod_ips=args.isolate_unknown_pod_ips,
                revoked_mark=args.revoked_mark or 0,
                deny_log=_deny_log_rules(args),
            ),
            backend=args.backend,
            source=SourceConfig(file=args.source_file, kubeconfig=args.kubeconfig),
            node_ips=tuple(args.node_ip),
            pod_cidrs=tuple(args.pod_cidr),
            kernel_addresses=not args.no_kernel_addresses,
            established_flows=args.established_flows,
            once=args.once,
            intervals=Intervals(min_sync=args.min_sync_interval, resync=args.resync_period),
            metrics_address=args.metrics_address,
            rule_log=rule_log,
            verbose=args.verbose,
            cni=_cni_config(args),
            deny_log=DenyLogConfig(
                args.log_denied_file, args.log_denied_max_bytes, args.log_denied_backups
            )
            if args.log_denied
            else None,
        )
    except ConfigError as error:
        _usage_error(args, str(error))


def _cni_config(args: argparse.Namespace) -> CniConfig | None:
    if args.cni_socket is None:
        if args.cni_conf_dir is not None:
            raise ConfigError("--cni-conf-dir needs --cni-socket")
        return None
    return CniConfig(
        socket=args.cni_socket,
        conf_dir=args.cni_conf_dir,
        timeout=args.cni_timeout,
        failure_policy=args.cni_failure_policy,
    )


# --- render ------------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    from agent.dataplane.plan import plan_table
    from agent.dataplane.restore import render_restore
    from agent.dataplane.state import ProgrammedState

    built = load_state_file(args.file)
    _report_problems(built)
    compiler = compiler_config(args)
    node = NodeContext(
        args.node,
        node_addresses(built.state, args.node, tuple(args.node_ip)),
        pod_cidrs(built.state, args.node, tuple(args.pod_cidr)),
    )
    for family in args.family:
        ruleset = compile_node(built.state, node, family, compiler)
        empty = ProgrammedState(
            family=family, prefix=compiler.chain_prefix, chains={}, forward_jumps=()
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
            "tier": v.tier or None,
            "decided_by": _rule_ref_dict(v.decided_by),
            "passed_by": [_rule_ref_dict(ref) for ref in v.passed_by],
        }

    return {
        "from": verdict.source.describe(),
        "to": verdict.destination.describe(),
        "port": f"{verdict.port}/{verdict.protocol.value}",
        "allowed": verdict.allowed,
        "egress": side(verdict.egress),
        "ingress": side(verdict.ingress),
    }


def _rule_ref_dict(ref: ClusterRuleRef | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {
        "tier": ref.tier.value,
        "policy": ref.policy,
        "priority": ref.priority,
        "rule": ref.index,
        "rule_name": ref.name or None,
        "action": ref.action.value,
    }


def load_state_api(kubeconfig: str) -> BuiltState:
    """The cluster as the API lists it now, read as ``run`` reads its watches."""
    from agent.control.kube_source import ApiStatusError, list_cluster, make_api_client
    from agent.policy.state import build_state

    try:
        client = make_api_client(kubeconfig)
        objects = list_cluster(client)
    except ApiStatusError as error:
        raise UsageError(f"the API refused a list: {error}") from None
    except Exception as error:  # unreadable kubeconfig, unreachable server
        raise UsageError(f"cannot read the cluster: {type(error).__name__}: {error}") from None
    return build_state(objects)


def _explain_version(state: ClusterState, args: argparse.Namespace) -> int:
    """The family to judge in when ``--family`` is not given: an address's, else IPv4
    when every pod named has an IPv4 address (an IPv6-only cluster gets IPv6)."""
    import ipaddress

    for text in (args.source, args.destination):
        try:
            return ipaddress.ip_address(text).version
        except ValueError:
            continue
    pods = [state.pods.get(text) for text in (args.source, args.destination)]
    if all(pod is None or pod.ipv4 or not pod.ipv6 for pod in pods):
        return 4
    return 6


def cmd_explain(args: argparse.Namespace) -> int:
    built = load_state_api(args.kubeconfig) if args.kubeconfig else load_state_file(args.file)
    _report_problems(built)
    port, protocol = _port(args.port)
    version = (
        _explain_version(built.state, args)
        if args.family is None
        else (6 if args.family == (Family.IPV6,) else 4)
    )
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
        for ref in side.passed_by:
            print(f"           passed by:   {ref.describe(side.direction)}")
    return 0 if verdict.allowed else 1


# --- run / cleanup -----------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from agent import app

    return app.run(agent_config(args))


def cmd_cleanup(args: argparse.Namespace) -> int:
    from agent import app

    try:  # validates --chain-prefix
        config.compiler_config(args.chain_prefix, DEFAULT_MARK, False)
    except ConfigError as error:
        _usage_error(args, str(error))
    status = app.cleanup(args.backend, args.family, args.chain_prefix)
    if args.cni_conf_dir is not None or args.cni_bin_dir is not None:
        status = max(status, app.cleanup_cni(args.cni_conf_dir, args.cni_bin_dir))
    return status


def cmd_install_cni(args: argparse.Namespace) -> int:
    from agent import app

    return app.install_cni(
        args.binary,
        args.bin_dir,
        args.conf_dir,
        cni_conf.plugin_entry(
            args.socket, timeout=args.timeout, failure_policy=args.failure_policy
        ),
    )


def _add_rotation_options(parser: argparse.ArgumentParser, log_flag: str) -> None:
    """``<log_flag>-max-bytes`` and ``<log_flag>-backups``: a JSON-lines log's rotation."""
    parser.add_argument(
        f"{log_flag}-max-bytes",
        type=_count(f"{log_flag}-max-bytes", 1),
        default=DEFAULT_MAX_BYTES,
        help="rotate when the file would pass this size (default %(default)s)",
    )
    parser.add_argument(
        f"{log_flag}-backups",
        type=_count(f"{log_flag}-backups", 0),
        default=DEFAULT_BACKUPS,
        help="rotated files kept (default %(default)s)",
    )


def _add_cni_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cni-socket",
        help="answer the netpol-agent CNI plugin on this unix socket (off by default; "
        f"deploy/cni uses {DEFAULT_CNI_SOCKET})",
    )
    parser.add_argument(
        "--cni-conf-dir",
        help="keep the plugin last in this CNI conf dir's network list (put it back "
        "when the main CNI rewrites the file)",
    )
    parser.add_argument(
        "--cni-timeout", type=_seconds("--cni-timeout", positive=True), default=10.0,
        help="the plugin's timeoutSeconds in the entry kept in the list (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--cni-failure-policy", choices=("fail", "pass"), default="fail",
        help="the plugin's failurePolicy in the entry kept in the list (default %(default)s)",
    )  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netpol-agent",
        description="Enforce Kubernetes NetworkPolicy on this node with iptables.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    families = _flag(config.parse_families)
    node_ip = _flag(config.parse_node_ip)
    backend = _flag(config.parse_backend)

    render = commands.add_parser("render", help="print the iptables-restore payload; touch nothing")
    render.add_argument("--node", required=True, help="the node to render for")
    render.add_argument(
        "-f",
        "--file",
        required=True,
        help="cluster objects: multi-document YAML or JSON, any *List (kubectl get -o yaml|json)",
    )
    render.add_argument(
        "--family",
        type=families,
        default=config.parse_families(None),
        help="ipv4 or ipv6: one family only",
    )
    render.add_argument(
        "--node-ip", type=node_ip, action="append", default=[], help="extra node address"
    )
    _add_compiler_options(render)
    render.set_defaults(func=cmd_render, parser=render)

    why = commands.add_parser("explain", help="is a connection allowed, and which policies decide")
    source = why.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "-f",
        "--file",
        help="cluster objects: multi-document YAML or JSON, any *List (kubectl get -o yaml|json)",
    )
    source.add_argument(
        "--kubeconfig",
        help="read Namespaces, Pods, NetworkPolicies and Nodes from this cluster's API"
        " instead (list permission on each)",
    )
    why.add_argument("--from", dest="source", required=True, help="NS/POD or an IP address")
    why.add_argument("--to", dest="destination", required=True, help="NS/POD or an IP address")
    why.add_argument("--port", required=True, help="PORT[/TCP|UDP|SCTP], e.g. 80/TCP")
    why.add_argument(
        "--family",
        type=_flag(_one_family),
        default=None,
        help="ipv4 or ipv6 (default: the family of an address given, else ipv4 when "
        "both pods have an IPv4 address, else ipv6)",
    )
    why.add_argument("--json", action="store_true", help="machine-readable output")
    why.set_defaults(func=cmd_explain, parser=why)

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
    run.add_argument(
        "--once",
        action="store_true",
        help="sync once and exit (no metrics, health endpoints or rule log)",
    )
    run.add_argument(
        "--backend",
        type=backend,
        default=os.environ.get("NETPOL_AGENT_BACKEND", "auto"),
        help=f"iptables backend: {', '.join(BACKENDS)} (default: detect as kubelet does)",
    )
    run.add_argument(
        "--family",
        type=families,
        default=config.parse_families(None),
        help="ipv4, ipv6 or ipv4,ipv6 (default both)",
    )
    run.add_argument(
        "--node-ip", type=node_ip, action="append", default=[], help="extra node address"
    )
    run.add_argument(
        "--established-flows",
        type=_flag(config.parse_established_flows),
        default=EstablishedFlows.STRICT,
        metavar="strict|keep",
        help="strict (default): after a policy change, delete the conntrack entries of"
        " established flows the new rules deny; keep: leave established flows alone",
    )
    run.add_argument(
        "--revoked-mark",
        type=_flag(config.parse_revoked_mark),
        default=None,
        help="the one conntrack-mark bit set on established flows strict mode revokes"
        f" (default {DEFAULT_REVOKED_MARK:#x}); pick another if something else on the node"
        " uses that connmark bit",
    )
    run.add_argument(
        "--no-kernel-addresses",
        action="store_true",
        help="do not read this node's addresses from the kernel",
    )
    run.add_argument(
        "--min-sync-interval",
        type=_seconds("--min-sync-interval", positive=False),
        default=Intervals().min_sync,
        help="seconds between syncs, at least (default %(default)s)",
    )
    run.add_argument(
        "--resync-period",
        type=_seconds("--resync-period", positive=True),
        default=Intervals().resync,
        help="seconds between full resyncs (default %(default)s)",
    )
    run.add_argument(
        "--metrics-address",
        default=DEFAULT_METRICS_ADDRESS,
        help="host:port for /metrics, /healthz, /readyz ('' to disable; default %(default)s)",
    )
    run.add_argument("--rule-log", default=DEFAULT_RULE_LOG, help="rule-change log ('' to disable)")
    _add_rotation_options(run, "--rule-log")
    run.add_argument(
        "--log-denied-file",
        default=DEFAULT_DENY_LOG,
        help="the deny log, with --log-denied (default %(default)s)",
    )
    _add_rotation_options(run, "--log-denied")
    _add_cni_options(run)
    _add_compiler_options(run)
    run.set_defaults(func=cmd_run, parser=run)

    install = commands.add_parser(
        "install-cni", help="copy the CNI plugin to the node and chain it last in its network list"
    )
    install.add_argument("--binary", default=DEFAULT_CNI_BINARY, help="the plugin binary to copy")
    install.add_argument("--bin-dir", required=True, help="the node's CNI bin dir")
    install.add_argument("--conf-dir", required=True, help="the node's CNI conf dir")
    install.add_argument("--socket", default=DEFAULT_CNI_SOCKET, help="the agent's CNI socket")
    install.add_argument(
        "--timeout", type=_seconds("--timeout", positive=True), default=10.0,
        help="seconds the plugin waits for the agent (default %(default)s)",
    )  # fmt: skip
    install.add_argument(
        "--failure-policy", choices=("fail", "pass"), default="fail",
        help="an ADD the agent did not confirm fails (default) or passes",
    )  # fmt: skip
    install.set_defaults(func=cmd_install_cni, parser=install)

    clean = commands.add_parser("cleanup", help="remove every chain and jump the agent owns")
    clean.add_argument("--backend", type=backend, default="auto")
    clean.add_argument(
        "--family",
        type=families,
        default=config.parse_families(None),
        help="ipv4, ipv6 or ipv4,ipv6 (default both)",
    )
    clean.add_argument("--chain-prefix", default=DEFAULT_CHAIN_PREFIX)
    clean.add_argument("--cni-conf-dir", help="also take the CNI plugin out of this conf dir")
    clean.add_argument("--cni-bin-dir", help="also delete the CNI plugin binary from this dir")
    clean.set_defaults(func=cmd_cleanup, parser=clean)
    return parser


DEFAULT_CNI_BINARY = "/opt/netpol-agent/cni/netpol-agent"


def _one_family(text: str) -> tuple[Family, ...]:
    families = config.parse_families(text)
    if len(families) != 1:
        raise ConfigError(f"--family takes ipv4 or ipv6 here, not {text!r}")
    return families


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # a usage error (2) or --help (0): argparse printed it
        return exit_.code if isinstance(exit_.code, int) else 2
    # run/cleanup log to stdout (the container log); render/explain print their result
    # on stdout, so their warnings go to stderr.
    daemon = args.command in ("run", "cleanup")
    configure_logging(
        verbose=args.verbose, stream=sys.stdout if daemon else sys.stderr, plain=not daemon
    )
    try:
        result: int = args.func(args)
        sys.stdout.flush()  # inside the try: a reader gone by now is a broken pipe too
    except SystemExit as exit_:  # a usage error found after parsing (parser.error)
        return exit_.code if isinstance(exit_.code, int) else 2
    except BrokenPipeError:
        # `render ... | head`: the reader is gone, which is not our error. Point stdout at
        # /dev/null so the interpreter's final flush cannot raise again, and exit as a
        # process killed by SIGPIPE would (128 + 13).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except UsageError as error:
        print(f"netpol-agent {args.command}: {error}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
