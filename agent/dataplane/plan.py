"""Diff the desired ruleset against what is programmed: pure, no I/O.

A chain is rewritten as a whole when its hash list differs (the hashes are chained, so
any change anywhere in a chain shows up from that rule on). Unchanged chains are left
alone, so a sync writes bytes in proportion to the change, not to the ruleset.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from agent.dataplane.state import (
    ForwardJump,
    ProgrammedState,
    canonical_jump_spec,
)
from agent.rules import Chain, Family, Rule, Ruleset


class ChangeKind(enum.Enum):
    CREATE = "create"
    REWRITE = "rewrite"
    DELETE = "delete"


class RuleAction(enum.Enum):
    ADDED = "added"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class RuleChange:
    """One line for the rule-change log.

    ``rule`` is None for a removed rule whose content we do not know (we only read hashes
    back from the kernel, and the agent may not have written it in this process).
    """

    family: Family
    chain: str
    action: RuleAction
    rule_hash: str
    rule: Rule | None


@dataclass(frozen=True, slots=True)
class ChainChange:
    name: str
    kind: ChangeKind
    old_hashes: tuple[str, ...]  # as programmed (empty for CREATE)
    new_chain: Chain | None  # what we write (None for DELETE)
    # What we believe the programmed chain contains, if the programmed hashes match a
    # chain we wrote earlier; lets the log name removed rules instead of bare hashes.
    old_chain: Chain | None = None

    @property
    def new_hashes(self) -> tuple[str, ...]:
        return self.new_chain.hashes if self.new_chain is not None else ()

    def rule_changes(self, family: Family) -> Iterator[RuleChange]:
        """The rules this change adds and removes, one entry each.

        With the old chain known, rules are matched by content (so inserting one rule at
        the top logs one addition, not a rewrite of every chained hash after it).
        Otherwise every old hash is logged as removed and every new rule as added.
        """
        old_rules = self.old_chain.rules if self.old_chain is not None else None
        new_rules = self.new_chain.rules if self.new_chain is not None else ()
        new_hashes = self.new_hashes
        if old_rules is None:
            for old_hash in self.old_hashes:
                yield RuleChange(family, self.name, RuleAction.REMOVED, old_hash, None)
            for new_hash, rule in zip(new_hashes, new_rules, strict=True):
                yield RuleChange(family, self.name, RuleAction.ADDED, new_hash, rule)
            return
        old_keys = [(rule.render_body(), rule.comment) for rule in old_rules]
        new_keys = [(rule.render_body(), rule.comment) for rule in new_rules]
        matcher = difflib.SequenceMatcher(None, old_keys, new_keys, autojunk=False)
        for tag, old_start, old_end, new_start, new_end in matcher.get_opcodes():
            if tag == "equal":
                continue
            for index in range(old_start, old_end):
                yield RuleChange(
                    family, self.name, RuleAction.REMOVED, self.old_hashes[index], old_rules[index]
                )
            for index in range(new_start, new_end):
                yield RuleChange(
                    family, self.name, RuleAction.ADDED, new_hashes[index], new_rules[index]
                )


@dataclass(frozen=True, slots=True)
class TablePlan:
    """Everything one restore transaction must do for one family."""

    family: Family
    entry_chain: str | None  # None when removing everything (cleanup)
    # CREATE and REWRITE changes in write order (a chain's targets before the chain),
    # then DELETE changes.
    changes: tuple[ChainChange, ...]
    unchanged: tuple[str, ...]
    jump_removals: tuple[ForwardJump, ...]
    jump_insert: bool  # insert the canonical jump to entry_chain at FORWARD position 1

    @property
    def created(self) -> tuple[str, ...]:
        return self._names(ChangeKind.CREATE)

    @property
    def rewritten(self) -> tuple[str, ...]:
        return self._names(ChangeKind.REWRITE)

    @property
    def deleted(self) -> tuple[str, ...]:
        return self._names(ChangeKind.DELETE)

    @property
    def chains_to_write(self) -> tuple[Chain, ...]:
        return tuple(c.new_chain for c in self.changes if c.new_chain is not None)

    @property
    def rules_to_write(self) -> int:
        return sum(len(chain.rules) for chain in self.chains_to_write)

    @property
    def is_noop(self) -> bool:
        return not self.changes and not self.jump_removals and not self.jump_insert

    def _names(self, kind: ChangeKind) -> tuple[str, ...]:
        return tuple(c.name for c in self.changes if c.kind is kind)


def plan_table(
    desired: Ruleset | None,
    programmed: ProgrammedState,
    *,
    force_full: bool = False,
    previous: Ruleset | None = None,
) -> TablePlan:
    """Plan the transaction that turns ``programmed`` into ``desired``.

    ``desired=None`` removes everything we own. ``force_full`` rewrites every desired
    chain, e.g. after a failure when the programmed hashes cannot be trusted.
    ``previous`` is the ruleset last written, used only to name removed rules in the log.
    """
    if desired is not None:
        if desired.family is not programmed.family:
            raise ValueError(f"desired {desired.family} but programmed {programmed.family}")
        validate_ruleset(desired, programmed.prefix)
    desired_chains: Mapping[str, Chain] = desired.chains if desired is not None else {}
    previous_chains: Mapping[str, Chain] = previous.chains if previous is not None else {}

    writes: dict[str, ChainChange] = {}
    unchanged: list[str] = []
    for name, chain in desired_chains.items():
        old_hashes = programmed.chains.get(name)
        if old_hashes is None:
            writes[name] = ChainChange(name, ChangeKind.CREATE, (), chain)
        elif force_full or old_hashes != chain.hashes:
            old_chain = previous_chains.get(name)
            if old_chain is not None and old_chain.hashes != old_hashes:
                old_chain = None
            writes[name] = ChainChange(name, ChangeKind.REWRITE, old_hashes, chain, old_chain)
        else:
            unchanged.append(name)

    deletes = [
        ChainChange(name, ChangeKind.DELETE, hashes, None, _known(previous_chains, name, hashes))
        for name, hashes in programmed.chains.items()
        if name not in desired_chains
    ]

    if desired is None:
        jump_removals = programmed.forward_jumps
        jump_insert = False
    elif force_full or not programmed.jump_is_correct(desired.entry_chain):
        # Remove every copy, then insert one: simpler than reasoning about which copy to
        # keep, and it all happens inside one atomic transaction.
        jump_removals = programmed.forward_jumps
        jump_insert = True
    else:
        jump_removals = ()
        jump_insert = False

    # Order only what is written: a partial sync must not cost a walk of the whole table.
    ordered_writes = [writes[name] for name in _write_order({n: desired_chains[n] for n in writes})]
    return TablePlan(
        family=programmed.family,
        entry_chain=desired.entry_chain if desired is not None else None,
        changes=(*ordered_writes, *deletes),
        unchanged=tuple(unchanged),
        jump_removals=jump_removals,
        jump_insert=jump_insert,
    )


def expected_state(ruleset: Ruleset, prefix: str) -> ProgrammedState:
    """What reading the table back should give right after ``ruleset`` was written."""
    jump = ForwardJump(
        position=1,
        target=ruleset.entry_chain,
        spec=canonical_jump_spec(ruleset.entry_chain),
        canonical=True,
    )
    return ProgrammedState(
        family=ruleset.family,
        prefix=prefix,
        chains={name: chain.hashes for name, chain in ruleset.chains.items()},
        forward_jumps=(jump,),
    )


@dataclass(frozen=True, slots=True)
class Drift:
    """Where the kernel differs from what we last wrote (someone else changed it)."""

    chains: tuple[str, ...]  # ours, modified, missing or unexpectedly present
    jump: bool  # FORWARD jump missing, duplicated or not first

    @property
    def found(self) -> bool:
        return bool(self.chains) or self.jump


def find_drift(expected: ProgrammedState, programmed: ProgrammedState) -> Drift:
    names = list(expected.chains)
    names += [name for name in programmed.chains if name not in expected.chains]
    drifted = tuple(
        name for name in names if expected.chains.get(name) != programmed.chains.get(name)
    )
    entry = expected.forward_jumps[0].target if expected.forward_jumps else None
    if entry is None:
        jump_drift = bool(programmed.forward_jumps)
    else:
        jump_drift = not programmed.jump_is_correct(entry)
    return Drift(chains=drifted, jump=jump_drift)


def validate_ruleset(ruleset: Ruleset, prefix: str) -> None:
    """Reject rulesets we could not program or read back correctly."""
    names = set(ruleset.chains)
    for name, chain in ruleset.chains.items():
        if not name.startswith(prefix):
            # We would never read it back as ours: rewritten forever, never deleted.
            raise ValueError(f"chain {name} does not start with the prefix {prefix}")
        for target in chain.targets - names:
            if target.startswith(prefix):
                raise ValueError(f"chain {name} refers to {target}, which is not in the set")


def _known(previous: Mapping[str, Chain], name: str, hashes: tuple[str, ...]) -> Chain | None:
    chain = previous.get(name)
    return chain if chain is not None and chain.hashes == hashes else None


def _write_order(chains: Mapping[str, Chain]) -> list[str]:
    """Chains ordered so that every chain comes after the chains (among these) it jumps to.

    Inside one transaction the order does not change what packets see, but it keeps the
    payload readable as "callees first" and would stay safe if it were ever split.
    """
    order: list[str] = []
    state: dict[str, bool] = {}  # False while being visited, True when done

    def visit(root: str) -> None:
        # Iterative DFS: chain graphs can be deep, Python recursion is not.
        stack: list[tuple[str, Iterator[str]]] = [(root, _targets(chains[root]))]
        state[root] = False
        while stack:
            name, targets = stack[-1]
            for target in targets:
                if target in chains and target not in state:
                    state[target] = False
                    stack.append((target, _targets(chains[target])))
                    break
            else:
                stack.pop()
                state[name] = True
                order.append(name)

    for name in chains:
        if name not in state:
            visit(name)
    return order


def _targets(chain: Chain) -> Iterator[str]:
    return (rule.target for rule in chain.rules)
