"""The agent's configuration: typed, frozen, validated once (by the CLI, or by a test).

Nothing below ``agent.app`` sees argparse: the CLI turns argv into an ``AgentConfig``
(``ConfigError`` becomes a usage error, exit 2), and ``agent.app`` builds the running
agent from it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from dataclasses import dataclass, field
from typing import Literal

from agent.compiler.config import DEFAULT_REVOKED_MARK, CompilerConfig, DenyLogRules
from agent.control.flows import EstablishedFlows
from agent.model.objects import IPAddress, IPNetwork
from agent.observability.denylog import DEFAULT_DENY_LOG
from agent.observability.health import parse_address
from agent.observability.rulelog import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES, MIN_MAX_BYTES
from agent.rules import Family

BackendChoice = Literal["auto", "nft", "legacy", "iptc"]
BACKENDS: tuple[BackendChoice, ...] = ("auto", "nft", "legacy", "iptc")
#: Every address of both families (``0.0.0.0`` alone misses an IPv6-only node's address,
#: where the kubelet probes a hostNetwork pod).
DEFAULT_METRICS_ADDRESS = ":9872"
DEFAULT_RULE_LOG = "/var/log/netpol-agent.log"
MAX_NODE_NAME = 253


class ConfigError(ValueError):
    """A setting is invalid; the message names the flag and the value."""


# --- parsers for single values (the CLI's argparse ``type=`` functions use these) --------


def parse_families(text: str | None) -> tuple[Family, ...]:
    """``ipv4``, ``ipv6``, ``ipv4,ipv6`` (or empty: both)."""
    if text is None or not text.strip():
        return (Family.IPV4, Family.IPV6)
    families: list[Family] = []
    for part in text.split(","):
        try:
            family = Family(part.strip())
        except ValueError:
            raise ConfigError(f"--family takes ipv4, ipv6 or ipv4,ipv6, not {text!r}") from None
        if family in families:
            raise ConfigError(f"--family names {family.value} twice")
        families.append(family)
    return tuple(families)


def parse_node_ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ConfigError(f"--node-ip {text!r} is not an IPv4 or IPv6 address") from None


def parse_pod_cidr(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as error:
        raise ConfigError(f"--pod-cidr {text!r} is not an IPv4 or IPv6 CIDR: {error}") from None


def parse_mark(text: str, flag: str = "--allow-mark") -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a number (e.g. 0x1000)") from None


def parse_revoked_mark(text: str) -> int:
    mark = parse_mark(text, "--revoked-mark")
    if mark <= 0 or mark > 0xFFFFFFFF or mark & (mark - 1):
        raise ConfigError(f"--revoked-mark {text!r} must be one bit of the 32-bit conntrack mark")
    return mark


def parse_seconds(flag: str, text: str, *, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "positive" if positive else "zero or more"
        raise ConfigError(f"{flag} {text!r} must be a {need} number of seconds")
    return value


def parse_backend(text: str) -> BackendChoice:
    if text not in BACKENDS:
        raise ConfigError(f"--backend takes {', '.join(BACKENDS)}, not {text!r}")
    return text


def deny_log_rules(group: int, rate: int, burst: int) -> DenyLogRules:
    try:
        return DenyLogRules(group=group, rate=rate, burst=burst)
    except ValueError as error:
        raise ConfigError(
            f"{error} (--log-denied-group, --log-denied-rate, --log-denied-burst)"
        ) from None


def parse_established_flows(text: str) -> EstablishedFlows:
    try:
        return EstablishedFlows(text)
    except ValueError:
        raise ConfigError(f"--established-flows takes strict or keep, not {text!r}") from None


def compiler_config(
    chain_prefix: str,
    allow_mark: int,
    reject: bool,
    *,
    isolate_unknown_pod_ips: bool = False,
    revoked_mark: int = 0,
    deny_log: DenyLogRules | None = None,
) -> CompilerConfig:
    try:
        return CompilerConfig(
            chain_prefix=chain_prefix,
            allow_mark=allow_mark,
            reject=reject,
            isolate_unknown_pod_ips=isolate_unknown_pod_ips,
            revoked_mark=revoked_mark,
            deny_log=deny_log,
        )
    except ValueError as error:
        raise ConfigError(
            f"{error} (--chain-prefix {chain_prefix!r}, --allow-mark {allow_mark:#x})"
        ) from None


# --- the parts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """Where cluster state comes from: a file (embedded mode) or the API."""

    file: str | None = None
    kubeconfig: str | None = None  # None with no file: the in-cluster service account
    poll_interval: float = 0.5  # seconds between looks at the file

    def __post_init__(self) -> None:
        if self.file is not None and self.kubeconfig is not None:
            raise ConfigError("--source-file and --kubeconfig exclude each other")
        if self.file is not None and not self.file.strip():
            raise ConfigError("--source-file must name a file")
        if not self.poll_interval > 0:
            raise ConfigError("the file poll interval must be positive")


@dataclass(frozen=True, slots=True)
class RuleLogConfig:
    path: str
    max_bytes: int = DEFAULT_MAX_BYTES
    backups: int = DEFAULT_BACKUPS

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("the rule log needs a path (use no RuleLogConfig to disable it)")
        if self.max_bytes < MIN_MAX_BYTES:
            raise ConfigError(
                f"--rule-log-max-bytes {self.max_bytes} is below {MIN_MAX_BYTES} (an uncapped"
                " log can fill the node's disk)"
            )
        if self.backups < 0:
            raise ConfigError(f"--rule-log-backups {self.backups} is negative")


@dataclass(frozen=True, slots=True)
class DenyLogConfig:
    """``--log-denied``: the file of attributed lines (its rules are the compiler's
    ``deny_log``)."""

    path: str = DEFAULT_DENY_LOG
    max_bytes: int = DEFAULT_MAX_BYTES
    backups: int = DEFAULT_BACKUPS

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("--log-denied-file must name a file")
        if self.max_bytes < MIN_MAX_BYTES:
            raise ConfigError(
                f"--log-denied-max-bytes {self.max_bytes} is below {MIN_MAX_BYTES} (an"
                " uncapped log can fill the node's disk)"
            )
        if self.backups < 0:
            raise ConfigError(f"--log-denied-backups {self.backups} is negative")


@dataclass(frozen=True, slots=True)
class Intervals:
    min_sync: float = 0.1  # seconds between two syncs, at least
    resync: float = 60.0  # seconds between full resyncs
    retry_initial: float = 0.5
    retry_max: float = 30.0

    def __post_init__(self) -> None:
        for name in ("min_sync", "resync", "retry_initial", "retry_max"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"interval {name} must be zero or more seconds, not {value}")
        if self.resync <= 0:
            raise ConfigError("--resync-period must be positive")
        if self.retry_initial <= 0 or self.retry_max < self.retry_initial:
            raise ConfigError("the retry backoff needs 0 < initial <= max")


@dataclass(frozen=True, slots=True)
class CniConfig:
    """The CNI plugin's side in the agent: the socket it answers on and, when given, the
    node's CNI conf dir where it keeps the plugin last in the network list."""

    socket: str
    conf_dir: str | None = None
    timeout: float = 10.0  # the plugin's timeoutSeconds in the entry the agent keeps
    failure_policy: Literal["fail", "pass"] = "fail"

    def __post_init__(self) -> None:
        if not self.socket.strip():
            raise ConfigError("--cni-socket must name a path")
        if self.conf_dir is not None and not self.conf_dir.strip():
            raise ConfigError("--cni-conf-dir must name a directory")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"--cni-timeout {self.timeout} must be a positive number of seconds")
        if self.failure_policy not in ("fail", "pass"):
            raise ConfigError(
                f"--cni-failure-policy takes fail or pass, not {self.failure_policy!r}"
            )


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything ``run`` needs. Build it with keyword arguments; it validates itself."""

    node_name: str
    families: tuple[Family, ...] = (Family.IPV4, Family.IPV6)
    compiler: CompilerConfig = field(default_factory=CompilerConfig)
    backend: BackendChoice = "auto"
    source: SourceConfig = field(default_factory=SourceConfig)
    node_ips: tuple[IPAddress, ...] = ()
    # --pod-cidr: the node's pod CIDRs for --isolate-unknown-pod-ips, instead of its
    # Node's spec.podCIDRs.
    pod_cidrs: tuple[IPNetwork, ...] = ()
    kernel_addresses: bool = True  # follow this node's addresses in the kernel
    # strict: judge established flows again after a policy change; keep: leave them.
    established_flows: EstablishedFlows = EstablishedFlows.STRICT
    once: bool = False  # sync once and exit (no metrics, health, rule log)
    intervals: Intervals = field(default_factory=Intervals)
    metrics_address: str = DEFAULT_METRICS_ADDRESS  # "" disables /metrics and probes
    rule_log: RuleLogConfig | None = field(default_factory=lambda: RuleLogConfig(DEFAULT_RULE_LOG))
    verbose: bool = False
    cni: CniConfig | None = None  # None: no CNI socket (pods are enforced from their status)
    # --log-denied: where the lines go; the rules come with compiler.deny_log (both or
    # neither).
    deny_log: DenyLogConfig | None = None

    def __post_init__(self) -> None:
        name = self.node_name.strip()
        if not name:
            raise ConfigError("--node (or env NODE_NAME) is required")
        if len(name) > MAX_NODE_NAME or any(c.isspace() or c == "/" for c in name):
            raise ConfigError(f"--node {self.node_name!r} is not a valid node name")
        if not self.families or len(set(self.families)) != len(self.families):
            raise ConfigError("at least one family, each at most once")
        if (self.deny_log is None) != (self.compiler.deny_log is None):
            raise ConfigError("the deny log needs both its file and its rules (--log-denied)")
        if self.deny_log is not None and self.backend == "iptc":
            # python-iptables fails (and crashed, on 1.0.1) committing hashlimit and NFLOG.
            raise ConfigError("--log-denied needs --backend nft, legacy or auto, not iptc")
        if self.pod_cidrs and not self.compiler.isolate_unknown_pod_ips:
            raise ConfigError("--pod-cidr is only read with --isolate-unknown-pod-ips")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend takes {', '.join(BACKENDS)}, not {self.backend!r}")
        # Strict mode needs the entry chain's rule dropping revoked flows; keep mode has
        # no such rule.
        strict = self.established_flows is EstablishedFlows.STRICT
        if self.compiler.revoked_mark and not strict:
            raise ConfigError("--revoked-mark is only used with --established-flows=strict")
        revoked_mark = (self.compiler.revoked_mark or DEFAULT_REVOKED_MARK) if strict else 0
        if revoked_mark != self.compiler.revoked_mark:
            compiler = dataclasses.replace(self.compiler, revoked_mark=revoked_mark)
            object.__setattr__(self, "compiler", compiler)
        if self.metrics_address:
            try:
                parse_address(self.metrics_address)
            except ValueError as error:
                raise ConfigError(f"--metrics-address: {error}") from None
