"""The pure rule renderer: decisions (who is selected, which peers, which ports) in,
rules and chains out. No caches and no cluster state: the same inputs always give the
same chains.

Allow decisions travel as one mark bit (masked, configurable) because a peer group is a
shared chain that cannot RETURN through two levels: a rule that allows sets the mark, and
the chain above returns when it is set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.compiler import cidr
from agent.compiler.config import (
    DENY_LOG_COPY_BYTES,
    NEIGHBOUR_DISCOVERY_TYPES,
    CompilerConfig,
)
from agent.model.objects import (
    Direction,
    IPAddress,
    IPBlock,
    IPNetwork,
    Protocol,
    RuleAction,
)
from agent.rules import Chain, Match, Rule, escape_comment
from agent.rules.ruleset import MAX_COMMENT_TEXT


@dataclass(frozen=True, slots=True)
class ClusterStep:
    """One ClusterNetworkPolicy rule in a tier chain: the chain that sets the mark when
    the rule matches, and what to do then."""

    chain: str
    action: RuleAction
    comment: str
    policy: str


@dataclass(frozen=True, slots=True)
class Unit:
    """The chains built for one thing (a group, a policy, a pod…): root first."""

    chains: tuple[Chain, ...]
    children: tuple[str, ...]  # root names of other units this one jumps to

    @property
    def root(self) -> str:
        return self.chains[0].name


class Renderer:
    def __init__(self, config: CompilerConfig, version: int) -> None:
        self.config = config
        self.version = version
        self._owned = config.chain_prefix + "-"
        self.allow_options = (("--set-xmark", config.mark_text),)
        # Peer-group leaf rules by (at source, block, pods): an address is in many groups
        # and most of a rebuilt leaf is unchanged, so rules (and their rendered text) are
        # reused. Two generations, turned over by ``new_generation``, bound it.
        self._leaves: dict[tuple[bool, int, int, tuple[str, ...]], Rule] = {}
        self._old_leaves: dict[tuple[bool, int, int, tuple[str, ...]], Rule] = {}
        # Leaf comments as written (escaped and cut), by comment, and leaf addresses as
        # text: an address and a pod are in many groups. Turned over with the leaves.
        self._written_comments: dict[str, str] = {}
        self._host_texts: dict[int, str] = {}  # "a.b.c.d/32" by address, likewise

    def new_generation(self, *, unless_below: int = 0) -> None:
        if len(self._leaves) >= unless_below:
            self._old_leaves = self._leaves
            self._leaves = {}
            self._written_comments = {}
            self._host_texts = {}

    # --- single rules ---------------------------------------------------------------

    def text(self, block: cidr.Block) -> str:
        return cidr.text(block, self.version)

    def host_text(self, address: int) -> str:
        return cidr.text((address, cidr.width(self.version)), self.version)

    def allow(self, comment: str, *, policy: str = "", pod: str = "") -> Rule:
        """Set the allow mark; the caller's next ``mark? RETURN`` acts on it."""
        return Rule("MARK", comment, target_options=self.allow_options, policy=policy, pod=pod)

    def clear_mark(self, comment: str) -> Rule:
        mask = f"{self.config.allow_mark:#x}"
        return Rule("MARK", comment, target_options=(("--set-xmark", f"0x0/{mask}"),))

    def if_allowed_return(self, comment: str, policy: str = "", pod: str = "") -> Rule:
        return Rule(
            "RETURN",
            comment,
            matches=(Match("mark", (("--mark", self.config.mark_text),)),),
            policy=policy,
            pod=pod,
        )

    def deny(self, comment: str, direction: Direction) -> tuple[Rule, ...]:
        """The drop of a denied connection; with the deny log, a jump to the log chain of
        ``direction`` first (it only logs and always returns)."""
        rules: tuple[Rule, ...] = ()
        if self.config.deny_log is not None:
            log_chain = self.config.denied_chain(direction)
            rules = (Rule(log_chain, f"netpol-agent: log denied {direction.short}"),)
        if not self.config.reject:
            return (*rules, Rule("DROP", comment))
        reject_with = "icmp-port-unreachable" if self.version == 4 else "icmp6-port-unreachable"
        return (*rules, Rule("REJECT", comment, target_options=(("--reject-with", reject_with),)))

    def denied_log_chain(self, direction: Direction) -> Chain:
        """``--log-denied``: what reaches a drop of ``direction`` is logged here, at most
        the rate limit's packets, and counted. Only a connection's first packet is logged
        (the entry chain already returned replies and established flows; a TCP segment
        that is not a bare SYN or a packet conntrack calls INVALID is not a new
        connection). The last rule matches every packet that reached the rate limit, so
        its counter minus the NFLOG rule's is what the limit kept out of the log."""
        rules_config = self.config.deny_log
        assert rules_config is not None
        limit = Match(
            "hashlimit",
            (
                ("--hashlimit-upto", f"{rules_config.rate}/sec"),
                ("--hashlimit-burst", str(rules_config.burst)),
                ("--hashlimit-name", rules_config.hashlimit_name(self.config.chain_prefix)),
            ),
        )
        nflog = (
            ("--nflog-group", str(rules_config.group)),
            ("--nflog-prefix", rules_config.nflog_prefix(direction)),
            ("--nflog-size", str(DENY_LOG_COPY_BYTES)),
        )
        rules = (
            Rule(
                "RETURN",
                "netpol-agent: not the first packet of a connection",
                protocol="tcp",
                matches=(Match("tcp", (("!", ""), ("--syn", ""))),),
            ),
            Rule(
                "RETURN",
                "netpol-agent: not a new connection",
                matches=(Match("conntrack", (("!", ""), ("--ctstate", "NEW"))),),
            ),
            Rule(
                "NFLOG",
                f"netpol-agent: log denied {direction.short}, rate-limited",
                matches=(limit,),
                target_options=nflog,
            ),
            Rule("RETURN", f"netpol-agent: denied {direction.short} (counted)"),
        )
        return Chain(self.config.denied_chain(direction), rules)

    @staticmethod
    def at(direction: Direction, address: str, rule: Rule) -> Rule:
        """``rule`` matching ``address`` at the peer's end: source for ingress."""
        source, destination = (address, None) if direction is Direction.INGRESS else (None, address)
        return Rule(
            rule.target,
            rule.comment,
            source=source,
            destination=destination,
            protocol=rule.protocol,
            matches=rule.matches,
            target_options=rule.target_options,
            goto=rule.goto,
            policy=rule.policy,
            pod=rule.pod,
        )

    def unit(self, chains: Sequence[Chain]) -> Unit:
        targets = frozenset().union(*(chain.targets for chain in chains))
        if len(chains) > 1:
            targets = targets.difference(chain.name for chain in chains)
        owned = self._owned
        children = sorted(target for target in targets if target.startswith(owned))
        return Unit(tuple(chains), tuple(children))

    # --- leaves of address trees ----------------------------------------------------

    def group_leaf(
        self, direction: Direction, members: Mapping[int, set[str]], addresses: Sequence[int]
    ) -> list[Rule]:
        """A peer group's leaf: set the mark for each CIDR its addresses collapse into.

        The hottest loop of a full compile (one rule per peer address): rules are built
        directly rather than through ``allow`` and ``at``.
        """
        version = self.version
        at_source = direction is Direction.INGRESS
        allow_options = self.allow_options
        leaves, old_leaves = self._leaves, self._old_leaves
        written_comments, host_texts = self._written_comments, self._host_texts
        host_length = cidr.width(version)
        rules: list[Rule] = []
        blocks = cidr.collapse_sorted(addresses, version)
        ends = [first for _, _, first in blocks[1:]]
        if blocks:
            ends.append(len(addresses))
        for (network, length, first), end in zip(blocks, ends, strict=True):
            if end - first == 1:  # the usual case: one address, most often one pod
                holders = members[addresses[first]]
                inside = tuple(holders) if len(holders) == 1 else tuple(sorted(holders))
            else:
                pods: list[str] = []
                for address in addresses[first:end]:
                    pods.extend(sorted(members[address]))
                inside = tuple(pods)
            key = (at_source, network, length, inside)
            known = leaves.get(key)
            if known is None:
                known = old_leaves.get(key)
                if known is None:
                    pod = inside[0] if len(inside) == 1 else ""
                    comment = (
                        f"peer pod {pod}" if pod else f"peer pods {inside[0]} +{len(inside) - 1}"
                    )
                    written = written_comments.get(comment)
                    if written is None:  # a pod's comment is the same in both directions
                        written = written_comments[comment] = escape_comment(
                            comment, MAX_COMMENT_TEXT
                        )
                    if length == host_length:  # the usual case: one address per rule
                        block_text = host_texts.get(network)
                        if block_text is None:
                            block_text = host_texts[network] = cidr.text((network, length), version)
                    else:
                        block_text = cidr.text((network, length), version)
                    known = Rule.set_mark(
                        block_text, at_source, comment, allow_options, pod, written
                    )
                leaves[key] = known
            rules.append(known)
        return rules

    def dispatch_leaf(
        self, direction: Direction, targets: Mapping[int, tuple[str, str]], addresses: Sequence[int]
    ) -> list[Rule]:
        """Dispatch looks at the local pod's own end: the opposite of where peers are."""
        own_end = Direction.EGRESS if direction is Direction.INGRESS else Direction.INGRESS
        return [
            self.at(
                own_end,
                self.host_text(address),
                Rule(
                    targets[address][0],
                    f"{direction.short} of {targets[address][1]}",
                    goto=True,
                    pod=targets[address][1],
                ),
            )
            for address in addresses
        ]

    # --- whole chains ---------------------------------------------------------------

    def block_chain(self, name: str, direction: Direction, block: IPBlock) -> Chain:
        """ipBlock with except: RETURN per except, then the cidr sets the mark."""
        description = f"ipBlock {block.cidr} except {','.join(map(str, block.excepts))}"
        rules = [
            self.at(direction, str(excluded), Rule("RETURN", description))
            for excluded in block.excepts
        ]
        rules.append(self.at(direction, str(block.cidr), self.allow(description)))
        return Chain(name, tuple(rules))

    def policy_chain(
        self, name: str, policy_key: str, direction: Direction, blocks: Sequence[list[Rule]]
    ) -> Chain | None:
        """Per rule block of a policy: its rules, then ``mark? RETURN`` between blocks."""
        rules: list[Rule] = []
        for i, block in enumerate(blocks):
            rules.extend(block)
            if i < len(blocks) - 1:
                rules.append(
                    self.if_allowed_return(
                        f"{policy_key} {direction.short}: allowed", policy=policy_key
                    )
                )
        return Chain(name, tuple(rules)) if rules else None

    def rule_block(
        self,
        direction: Direction,
        policy_key: str,
        comment: str,
        port_fields: Sequence[tuple[str | None, tuple[Match, ...], object]],
        peers: Iterable[tuple[str | None, str | None]],
    ) -> list[Rule]:
        """One policy rule's port matches crossed with its peers. A peer is an address
        (the rule sets the mark itself) or a chain to jump to (it sets the mark)."""
        out: list[Rule] = []
        options: tuple[tuple[str, str], ...]
        for address, group in peers:
            for protocol, matches, _ in port_fields:
                if group is None:
                    target, options = "MARK", self.allow_options
                else:
                    target, options = group, ()
                base = Rule(
                    target,
                    comment,
                    protocol=protocol,
                    matches=matches,
                    target_options=options,
                    policy=policy_key,
                )
                out.append(base if address is None else self.at(direction, address, base))
        return out

    def named_port_jump(
        self,
        group: str,
        comment: str,
        policy_key: str,
        protocol: Protocol,
        port_name: str,
        number: int,
    ) -> Rule:
        return Rule(
            group,
            f"{comment} port {port_name}={number}/{protocol.value}",
            protocol=protocol.iptables_name,
            matches=(Match(protocol.iptables_name, (("--dport", str(number)),)),),
            policy=policy_key,
        )

    def pod_chain(
        self, name: str, direction: Direction, pod_key: str, ips: Iterable[IPAddress], verdict: str
    ) -> Chain:
        rules: list[Rule] = [
            # Hairpin through a Service back to itself: a pod is never cut off from itself.
            self.at(
                direction,
                self.host_text(int(ip)),
                Rule("RETURN", f"{pod_key}: itself", pod=pod_key),
            )
            for ip in ips
        ]
        rules.append(Rule(verdict, f"{pod_key}: its policies", goto=True, pod=pod_key))
        return Chain(name, tuple(rules))

    def verdict_chain(
        self,
        name: str,
        direction: Direction,
        isolating: Sequence[str],
        live: Sequence[tuple[str, str]],
    ) -> Chain:
        """Per policy that can allow something: jump, ``mark? RETURN``; then deny."""
        rules: list[Rule] = []
        for policy_key, chain in live:
            rules.append(Rule(chain, f"policy {policy_key}", policy=policy_key))
            rules.append(self.if_allowed_return(f"allowed by {policy_key}", policy_key))
        text = ", ".join(isolating)
        rules.extend(
            self.deny(f"default deny {direction.short} (isolated by {text})"[:200], direction)
        )
        return Chain(name, tuple(rules))

    # --- ClusterNetworkPolicy tiers --------------------------------------------------

    def _if_matched(self, rule: Rule) -> Rule:
        """``rule`` only for a packet whose rule chain set the mark (it matched)."""
        return Rule(
            rule.target,
            rule.comment,
            matches=(Match("mark", (("--mark", self.config.mark_text),)), *rule.matches),
            target_options=rule.target_options,
            goto=rule.goto,
            policy=rule.policy,
            pod=rule.pod,
        )

    def tier_steps(
        self,
        direction: Direction,
        steps: Sequence[ClusterStep],
        pass_to: str | None,
    ) -> list[Rule]:
        """Per ClusterNetworkPolicy rule, in evaluation order: jump to its rule chain (it
        sets the mark when the rule matches), then act on the mark: Accept returns
        (allowed in this direction), Deny drops, Pass goes to ``pass_to`` (the next
        tier's chain, which starts by clearing the mark) or, with None, returns (after
        the Baseline tier comes the default allow). An unmatched packet leaves each
        rule chain without the mark, so it reaches the next step."""
        rules: list[Rule] = []
        for step in steps:
            rules.append(Rule(step.chain, step.comment, policy=step.policy))
            if step.action is RuleAction.DENY:
                for rule in self.deny(f"{step.comment}: Deny", direction):
                    rules.append(
                        self._if_matched(
                            Rule(
                                rule.target,
                                rule.comment,
                                target_options=rule.target_options,
                                policy=step.policy,
                            )
                        )
                    )
            elif step.action is RuleAction.ACCEPT or pass_to is None:
                rules.append(
                    self._if_matched(
                        Rule("RETURN", f"{step.comment}: {step.action.value}", policy=step.policy)
                    )
                )
            else:
                rules.append(
                    self._if_matched(
                        Rule(pass_to, f"{step.comment}: Pass", goto=True, policy=step.policy)
                    )
                )
        return rules

    def admin_chain(
        self, name: str, direction: Direction, steps: Sequence[ClusterStep], after: str | None
    ) -> Chain:
        """The Admin tier of the pods these policies select: its steps, then (nothing
        matched, or a Pass) the next tier's chain ``after``; with None, the default
        allow (fall off the end)."""
        rules = self.tier_steps(direction, steps, after)
        if after is not None:
            rules.append(Rule(after, f"admin tier {direction.short}: not decided", goto=True))
        return Chain(name, tuple(rules))

    def after_admin_chain(
        self,
        name: str,
        direction: Direction,
        network_policies: str | None,
        steps: Sequence[ClusterStep],
    ) -> Chain:
        """What follows the Admin tier: the NetworkPolicy verdict chain when one isolates
        the pod (it decides), else the Baseline tier's steps and then the default allow.
        It starts by clearing the mark an Admin Pass arrives with."""
        rules = [self.clear_mark(f"after the admin tier ({direction.short})")]
        if network_policies is not None:
            rules.append(Rule(network_policies, f"networkpolicy tier {direction.short}", goto=True))
        else:
            rules.extend(self.tier_steps(direction, steps, None))
        return Chain(name, tuple(rules))

    def known_leaf(
        self, direction: Direction, holders: Mapping[int, str], addresses: Sequence[int]
    ) -> list[Rule]:
        """A leaf of an unknown-address chain: RETURN for each address a local pod holds
        (at the source for ``EGRESS``); the chain's caller goes on to the policies."""
        own_end = Direction.EGRESS if direction is Direction.INGRESS else Direction.INGRESS
        return [
            self.at(
                own_end,
                self.host_text(address),
                Rule("RETURN", f"held by {holders[address]}", pod=holders[address]),
            )
            for address in addresses
        ]

    def unknown_deny(self, direction: Direction) -> tuple[Rule, ...]:
        end = "from" if direction is Direction.EGRESS else "to"
        return self.deny(f"netpol-agent: {end} a pod address no known pod holds", direction)

    def entry_chain(
        self, node_addresses: Sequence[IPAddress], pod_cidrs: Sequence[IPNetwork] = ()
    ) -> Chain:
        """``pod_cidrs``: the node's pod CIDRs of this family, when unknown addresses in
        them are isolated (after the node exemption, before the policies)."""
        config = self.config
        rules: list[Rule] = []
        if config.revoked_mark:
            # Flows the agent revoked (strict mode): dropped both ways. Deleting their
            # conntrack entries is not enough: the next packet from the side that
            # accepted the connection is picked up as a NEW flow in the reverse
            # direction, which the policy may allow, and the flow lives on.
            rules.append(
                Rule(
                    "DROP",
                    "netpol-agent: established flows revoked by a policy change",
                    matches=(Match("connmark", (("--mark", config.revoked_mark_text),)),),
                )
            )
        rules.append(
            Rule(
                "RETURN",
                "netpol-agent: replies and established flows",
                matches=(Match("conntrack", (("--ctstate", "RELATED,ESTABLISHED"),)),),
            )
        )
        if self.version == 6:
            rules.extend(
                Rule(
                    "RETURN",
                    "netpol-agent: IPv6 neighbour discovery",
                    protocol="ipv6-icmp",
                    matches=(Match("icmp6", (("--icmpv6-type", str(t)),)),),
                )
                for t in NEIGHBOUR_DISCOVERY_TYPES
            )
        rules.append(
            Rule(
                "RETURN",
                "netpol-agent: from this node",
                matches=(Match("addrtype", (("--src-type", "LOCAL"),)),),
            )
        )
        for address in sorted({a for a in node_addresses if a.version == self.version}, key=int):
            rules.append(
                Rule("RETURN", "netpol-agent: from this node", source=self.host_text(int(address)))
            )
        for network in pod_cidrs:
            text = str(network)
            rules.append(
                Rule(
                    config.unknown_chain(Direction.EGRESS),
                    f"netpol-agent: from pod CIDR {text}: a known pod?",
                    source=text,
                )
            )
            rules.append(
                Rule(
                    config.unknown_chain(Direction.INGRESS),
                    f"netpol-agent: to pod CIDR {text}: a known pod?",
                    destination=text,
                )
            )
        rules += [
            self.clear_mark("netpol-agent: start with a clear allow mark"),
            Rule(config.name(Direction.EGRESS.name), "netpol-agent: egress of local pods"),
            self.clear_mark("netpol-agent: egress allowed, clear for ingress"),
            Rule(config.name(Direction.INGRESS.name), "netpol-agent: ingress of local pods"),
            self.clear_mark("netpol-agent: allowed, leave no mark behind"),
        ]
        return Chain(config.entry_chain, tuple(rules))
