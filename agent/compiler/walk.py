"""A tiny, pure model of how netfilter walks a compiled :class:`Ruleset`.

It follows exactly the constructs the compiler emits -- ``-s``/``-d``/``-p``, the
``conntrack``, ``addrtype``, ``mark``, ``connmark``, ``tcp``/``udp``/``sctp`` (and ``--syn``),
``multiport``, ``icmp6`` and ``hashlimit`` matches, negated with ``!``, and the
``-j``/``-g``/RETURN/MARK/DROP/REJECT/NFLOG targets -- and refuses
anything else, so a new construct in the compiler fails loudly here instead of being
silently misjudged. It also checks what iptables itself would reject (a port match
without ``-p``, a jump to a chain that does not exist, a jump loop).

The unit tests use it to cross-check the compiler against ``explain()`` without root;
the benchmark uses its count of evaluated rules for the cost of a new connection.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.model.objects import IPAddress
from agent.rules import Match, Rule, Ruleset

# Chains FORWARD can reach through us are short; anything deeper is a loop.
MAX_STEPS = 10_000
MAX_DEPTH = 50  # nf_tables allows 16 levels of jumps; the compiler stays within them

PORT_MODULES = ("tcp", "udp", "sctp")
PROTOCOLS = ("tcp", "udp", "sctp", "ipv6-icmp", "icmp")


class WalkError(AssertionError):
    """The ruleset holds something iptables would refuse or this model does not know."""


@dataclass(frozen=True, slots=True)
class Packet:
    """The first packet of a connection, as FORWARD sees it."""

    source: IPAddress
    destination: IPAddress
    protocol: str  # "tcp", "udp", "sctp", "ipv6-icmp"
    dport: int | None = None
    icmp_type: int | None = None
    ctstate: str = "NEW"
    mark: int = 0
    ctmark: int = 0  # the connection's conntrack mark


@dataclass(frozen=True, slots=True)
class Outcome:
    """``verdict`` is ACCEPT (fell back to FORWARD), DROP or REJECT."""

    verdict: str
    mark: int
    trace: tuple[tuple[str, int], ...] = field(default=())  # (chain, rule index) that matched
    evaluated: int = 0  # rules the packet was compared against, matched or not

    @property
    def accepted(self) -> bool:
        return self.verdict == "ACCEPT"


@functools.lru_cache(maxsize=4096)
def _network(text: str, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if text.startswith("!"):
        raise WalkError(f"negated address {text!r} is not modelled")
    network = ipaddress.ip_network(text, strict=True)
    if network.version != version:
        # iptables-restore / ip6tables-restore refuse the whole payload for this.
        raise WalkError(f"{text} in an IPv{version} ruleset")
    return network


@functools.lru_cache(maxsize=64)
def _value_mask(text: str) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    return int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF


def _port_in(spec: str, port: int | None) -> bool:
    if port is None:
        return False
    first, _, last = spec.partition(":")
    return int(first) <= port <= int(last or first)


def _option(match: Match, name: str) -> str:
    options = dict(match.options)
    if set(options) != {name}:
        raise WalkError(f"-m {match.module}: expected only {name}, got {match.render()}")
    return options[name]


def _match_module(
    match: Match, rule: Rule, packet: Packet, local: frozenset[IPAddress], mark: int
) -> bool:
    if match.options[:1] == (("!", ""),):
        return not _match_module(Match(match.module, match.options[1:]), rule, packet, local, mark)
    module = match.module
    if module == "hashlimit":
        # A rate limit decides only whether the deny log gets a line, never a verdict:
        # the model lets everything through it.
        return True
    if module == "tcp" and dict(match.options).keys() == {"--syn"}:
        if rule.protocol != "tcp":
            raise WalkError("--syn needs -p tcp")
        return packet.protocol == "tcp"  # a connection's first packet: a bare SYN
    if module == "conntrack":
        states = _option(match, "--ctstate").split(",")
        return packet.ctstate in states
    if module == "addrtype":
        if _option(match, "--src-type") != "LOCAL":
            raise WalkError(f"addrtype: only --src-type LOCAL is modelled: {match.render()}")
        return packet.source in local
    if module == "mark":
        value, mask = _value_mask(_option(match, "--mark"))
        return (mark & mask) == value
    if module == "connmark":
        value, mask = _value_mask(_option(match, "--mark"))
        return (packet.ctmark & mask) == value
    if module in PORT_MODULES:
        if rule.protocol != module:
            raise WalkError(f"-m {module} needs -p {module}, rule has -p {rule.protocol}")
        return _port_in(_option(match, "--dport"), packet.dport)
    if module == "multiport":
        if rule.protocol not in PORT_MODULES:
            raise WalkError(f"-m multiport needs -p tcp/udp/sctp, rule has -p {rule.protocol}")
        specs = _option(match, "--dports").split(",")
        weight = sum(1 if ":" not in s else 2 for s in specs)
        if weight > 15:
            raise WalkError(f"multiport takes at most 15 ports (ranges count 2): {specs}")
        return any(_port_in(spec, packet.dport) for spec in specs)
    if module == "icmp6":
        if rule.protocol != "ipv6-icmp":
            raise WalkError("-m icmp6 needs -p ipv6-icmp")
        return packet.icmp_type is not None and int(_option(match, "--icmpv6-type")) == (
            packet.icmp_type
        )
    raise WalkError(f"match module {module!r} is not modelled: {match.render()}")


def rule_matches(rule: Rule, packet: Packet, local: frozenset[IPAddress], mark: int) -> bool:
    """Whether ``rule`` matches ``packet`` (of the rule's family) while it carries ``mark``."""
    version = packet.source.version
    if rule.source is not None and packet.source not in _network(rule.source, version):
        return False
    if rule.destination is not None and packet.destination not in _network(
        rule.destination, version
    ):
        return False
    if rule.protocol is not None:
        if rule.protocol not in PROTOCOLS:
            raise WalkError(f"protocol {rule.protocol!r} is not modelled")
        if rule.protocol != packet.protocol:
            return False
    return all(_match_module(m, rule, packet, local, mark) for m in rule.matches)


def walk(ruleset: Ruleset, packet: Packet, local_addresses: Iterable[IPAddress] = ()) -> Outcome:
    """Walk ``packet`` from the entry chain (jumped to from FORWARD, policy ACCEPT)."""
    for address in (packet.source, packet.destination):
        if address.version != ruleset.family.version:
            raise WalkError(f"{address} is not an IPv{ruleset.family.version} address")
    local = frozenset(local_addresses)
    chains = ruleset.chains
    mark = packet.mark
    stack: list[tuple[str, int]] = []  # return points pushed by -j
    chain, index = ruleset.entry_chain, 0
    trace: list[tuple[str, int]] = []
    evaluated = 0
    for _ in range(MAX_STEPS):
        rules = chains[chain].rules
        if index >= len(rules):
            # Falling off a user chain is an implicit RETURN.
            if not stack:
                return Outcome("ACCEPT", mark, tuple(trace), evaluated)
            chain, index = stack.pop()
            continue
        rule = rules[index]
        evaluated += 1
        if not rule_matches(rule, packet, local, mark):
            index += 1
            continue
        trace.append((chain, index))
        target = rule.target
        if target == "RETURN":
            if rule.target_options:
                raise WalkError("RETURN takes no options")
            if not stack:
                return Outcome("ACCEPT", mark, tuple(trace), evaluated)
            chain, index = stack.pop()
        elif target in ("DROP", "REJECT"):
            return Outcome(target, mark, tuple(trace), evaluated)
        elif target == "ACCEPT":
            return Outcome("ACCEPT", mark, tuple(trace), evaluated)
        elif target == "NFLOG":
            index += 1  # the deny log: a copy to the agent, no verdict
        elif target == "MARK":
            options = dict(rule.target_options)
            if set(options) != {"--set-xmark"}:
                raise WalkError(f"MARK: only --set-xmark value/mask is modelled: {options}")
            value, mask = _value_mask(options["--set-xmark"])
            mark = (mark & ~mask) ^ value
            index += 1
        else:
            if target not in chains:
                raise WalkError(f"{chain}[{index}] jumps to missing chain {target}")
            if rule.goto:
                chain, index = target, 0
            else:
                if len(stack) >= MAX_DEPTH:
                    raise WalkError("jump depth exceeded: a loop?")
                stack.append((chain, index + 1))
                chain, index = target, 0
    raise WalkError("too many steps: a loop?")


def verdict_across_nodes(
    rulesets: Mapping[str, Ruleset],
    node_addresses: Mapping[str, Iterable[IPAddress]],
    nodes: Iterable[str],
    packet: Packet,
) -> bool:
    """Whether ``packet`` passes FORWARD on every node it crosses (``nodes``, deduplicated)."""
    for node in dict.fromkeys(nodes):
        if not walk(rulesets[node], packet, node_addresses.get(node, ())).accepted:
            return False
    return True


def validate(ruleset: Ruleset) -> None:
    """Check every rule, reached or not, for what iptables would refuse or we cannot model."""
    any_address: IPAddress = ipaddress.ip_address(
        "::" if ruleset.family.version == 6 else "0.0.0.0"
    )
    probe = Packet(any_address, any_address, "tcp", 1)
    for chain in ruleset.chains.values():
        for index, rule in enumerate(chain.rules):
            where = f"{chain.name}[{index}]"
            if rule.goto and rule.target not in ruleset.chains:
                raise WalkError(f"{where}: -g to missing chain {rule.target}")
            if rule.target not in ("RETURN", "DROP", "REJECT", "ACCEPT", "MARK", "NFLOG") and (
                rule.target not in ruleset.chains
            ):
                raise WalkError(f"{where}: -j to missing chain {rule.target}")
            for address in (rule.source, rule.destination):
                if address is not None:
                    _network(address, ruleset.family.version)
            if rule.protocol is not None and rule.protocol not in PROTOCOLS:
                raise WalkError(f"{where}: protocol {rule.protocol!r} is not modelled")
            for match in rule.matches:
                _match_module(match, rule, probe, frozenset(), 0)
