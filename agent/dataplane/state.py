"""What is programmed: parse ``iptables-save -t filter`` output into what the planner needs.

nft and legacy print the same format. We read back only what identifies our rules: the
chains under our prefix, each rule's ``npa:<hash>`` comment, and the jumps from FORWARD
into our chains. Rule bodies are not compared (they print in a canonical form that differs
from what we render); the chained hash in the comment stands for the body.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from agent.rules import HASH_LEN, HASH_PREFIX, Family

JUMP_COMMENT = "netpol-agent"
FORWARD = "FORWARD"

# Stands in the hash tuple for a rule in our chain without our hash comment (added by
# someone else or mangled): it never equals a real hash, so the chain is rewritten.
FOREIGN_RULE = "-"

# iptables-save quotes a comment only when it contains spaces or quotes; ours start with
# the hash, so both forms are "--comment npa:<hash>" followed by a space or a quote.
_QUOTED_HASH_COMMENT = f'--comment "{HASH_PREFIX}'
_BARE_HASH_COMMENT = f"--comment {HASH_PREFIX}"
_HEX_DIGITS = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class ForwardJump:
    """A rule in FORWARD that jumps (or goes) to one of our chains."""

    position: int  # 1-based, among all FORWARD rules
    target: str
    # The rule's arguments after ``-A FORWARD`` exactly as iptables-save printed them,
    # so that ``-D FORWARD <spec>`` deletes exactly this rule.
    spec: str
    canonical: bool  # is it the one jump we install (comment + -j, nothing else)?


@dataclass(frozen=True, slots=True)
class ProgrammedState:
    family: Family
    prefix: str
    # Our chains, in the order they were declared, each with its rules' hashes
    # (FOREIGN_RULE for a rule that carries no hash of ours).
    chains: Mapping[str, tuple[str, ...]]
    forward_jumps: tuple[ForwardJump, ...]

    def jump_is_correct(self, entry_chain: str) -> bool:
        """Exactly one jump into our chains, at position 1, the canonical one to entry_chain."""
        if len(self.forward_jumps) != 1:
            return False
        jump = self.forward_jumps[0]
        return jump.position == 1 and jump.canonical and jump.target == entry_chain

    @property
    def rule_count(self) -> int:
        return sum(len(hashes) for hashes in self.chains.values())


def canonical_jump_spec(entry_chain: str) -> str:
    """The FORWARD jump we install, as restore arguments after ``FORWARD``."""
    return f"-m comment --comment {JUMP_COMMENT} -j {entry_chain}"


def parse_filter_save(text: str, family: Family, prefix: str) -> ProgrammedState:
    """Parse the ``*filter`` section of iptables-save output.

    Raises ValueError when the output has no filter table: an empty read must never be
    mistaken for "nothing programmed".
    """
    if not prefix:
        raise ValueError("the chain prefix must not be empty")
    chains: dict[str, list[str]] = {}
    jumps: list[ForwardJump] = []
    forward_position = 0
    in_filter = False
    seen_filter = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            in_filter = line == "*filter"
            seen_filter = seen_filter or in_filter
            continue
        if not in_filter:
            continue
        if line == "COMMIT":
            in_filter = False
        elif line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            if name.startswith(prefix):
                chains.setdefault(name, [])
        elif line.startswith("-A "):
            chain, _, spec = line[3:].partition(" ")
            if chain.startswith(prefix):
                chains.setdefault(chain, []).append(_rule_hash(spec))
            elif chain == FORWARD:
                forward_position += 1
                jump = _parse_forward_jump(spec, forward_position, prefix)
                if jump is not None:
                    jumps.append(jump)
    if not seen_filter:
        raise ValueError("iptables-save output has no *filter table")
    return ProgrammedState(
        family=family,
        prefix=prefix,
        chains={name: tuple(hashes) for name, hashes in chains.items()},
        forward_jumps=tuple(jumps),
    )


def _rule_hash(spec: str) -> str:
    """The hash from our comment, or FOREIGN_RULE. Plain string search: this runs once per
    programmed rule, and a regex per line doubled the cost of reading 20k rules."""
    for marker in (_QUOTED_HASH_COMMENT, _BARE_HASH_COMMENT):
        start = spec.find(marker)
        if start < 0:
            continue
        start += len(marker)
        rule_hash = spec[start : start + HASH_LEN]
        after = spec[start + HASH_LEN : start + HASH_LEN + 1]
        if (
            len(rule_hash) == HASH_LEN
            and after in ('"', " ", "")
            and _HEX_DIGITS.issuperset(rule_hash)
        ):
            return rule_hash
    return FOREIGN_RULE


def _parse_forward_jump(spec: str, position: int, prefix: str) -> ForwardJump | None:
    # Tokenize properly: a comment may contain " -j " text. FORWARD is short. A quote
    # left open (a comment cut by the kernel, someone else's rule) falls back to words.
    try:
        tokens = shlex.split(spec)
    except ValueError:
        tokens = spec.split()
    target: str | None = None
    for flag, value in itertools.pairwise(tokens):
        if flag in ("-j", "-g", "--jump", "--goto"):
            target = value
    if target is None or not target.startswith(prefix):
        return None
    canonical = tokens == ["-m", "comment", "--comment", JUMP_COMMENT, "-j", target]
    return ForwardJump(position=position, target=target, spec=spec, canonical=canonical)
