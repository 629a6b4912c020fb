"""The compiler's output: chains of structured iptables rules for one IP family.

This is the contract between the pure compiler and the dataplane backends. A rule is
structured (not a string) so the restore writer and the python-iptables writer build
the same rule from the same fields, and so every rule renders to one canonical text.

Every rule carries a comment. Its first word is a content hash (BLAKE2b, 8 bytes)
chained over the chain name and the previous rule (the scheme Calico uses), so the
dataplane can tell which chains differ from what is programmed by reading back only the comments. The hash covers
the rule's body and its comment exactly as written (escaped and cut, see comment.py).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.rules.comment import MAX_COMMENT_BYTES, escape_comment

HASH_PREFIX = "npa:"
HASH_LEN = 16
HASH_BYTES = HASH_LEN // 2
MAX_COMMENT = MAX_COMMENT_BYTES
# What is left of a comment after "npa:<hash> ".
MAX_COMMENT_TEXT = MAX_COMMENT - len(HASH_PREFIX) - HASH_LEN - 1
MAX_CHAIN_NAME = 28
_OPTIONS_TEXT: dict[tuple[tuple[str, str], ...], str] = {}  # a config has one or two


class Family(enum.Enum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"

    @property
    def version(self) -> int:
        return 4 if self is Family.IPV4 else 6


@dataclass(frozen=True, slots=True)
class Match:
    """An iptables match module with its options, e.g. ``-m multiport --dports 80,443``."""

    module: str
    options: tuple[tuple[str, str], ...] = ()

    def render(self) -> str:
        parts = ["-m", self.module]
        for option, value in self.options:
            parts.append(option)
            if value:
                parts.append(value)
        return " ".join(parts)


@dataclass(frozen=True, slots=True, init=False)
class Rule:
    """One rule. ``target`` is a verdict (RETURN, DROP, REJECT, MARK) or a chain name."""

    target: str
    comment: str
    source: str | None = None
    destination: str | None = None
    protocol: str | None = None
    matches: tuple[Match, ...] = ()
    target_options: tuple[tuple[str, str], ...] = ()
    goto: bool = False
    # Provenance for the rule-change log; not rendered, not hashed.
    policy: str = field(default="", compare=False)
    pod: str = field(default="", compare=False)
    # What the hash covers (body and written comment), computed once per rule: a rule
    # reused by several chains or rebuilds is rendered once.
    _hashed: str | None = field(default=None, init=False, repr=False, compare=False)

    def __init__(
        self,
        target: str,
        comment: str,
        source: str | None = None,
        destination: str | None = None,
        protocol: str | None = None,
        matches: tuple[Match, ...] = (),
        target_options: tuple[tuple[str, str], ...] = (),
        goto: bool = False,
        policy: str = "",
        pod: str = "",
    ) -> None:
        # What the generated frozen __init__ does, through the slots' own setters: a full
        # compile builds some 30,000 rules, and object.__setattr__ per field was a fifth
        # of its time.
        _set_target(self, target)
        _set_comment(self, comment)
        _set_source(self, source)
        _set_destination(self, destination)
        _set_protocol(self, protocol)
        _set_matches(self, matches)
        _set_target_options(self, target_options)
        _set_goto(self, goto)
        _set_policy(self, policy)
        _set_pod(self, pod)
        _set_hashed(self, None)

    @property
    def hashed_text(self) -> str:
        text = self._hashed
        if text is None:
            text = f"{self.render_body()}\0{self.written_comment}"
            _set_hashed(self, text)
        return text

    @classmethod
    def set_mark(
        cls,
        address: str,
        at_source: bool,
        comment: str,
        options: tuple[tuple[str, str], ...],
        pod: str,
        written_comment: str | None = None,
    ) -> Rule:
        """``-s|-d address -j MARK <options>``, the commonest rule (a peer-group leaf has
        one per address block): built with its hashed text directly. ``written_comment``:
        ``comment`` escaped and cut already (as ``written_comment`` is), when the caller
        keeps it for reuse."""
        if at_source:
            rule = cls("MARK", comment, address, None, None, (), options, False, "", pod)
        else:
            rule = cls("MARK", comment, None, address, None, (), options, False, "", pod)
        options_text = _OPTIONS_TEXT.get(options)
        if options_text is None:
            options_text = _OPTIONS_TEXT[options] = " ".join(
                x for pair in options for x in pair if x
            )
        if written_comment is None:
            written_comment = escape_comment(comment, MAX_COMMENT_TEXT)
        body = f"{'-s' if at_source else '-d'} {address} -j MARK {options_text}"
        _set_hashed(rule, f"{body}\0{written_comment}")
        return rule

    def render_body(self) -> str:
        """The rule's text without its comment: what the hash covers."""
        return " ".join(self._parts(comment=None))

    def render(self, rule_hash: str) -> str:
        """The rule's arguments after ``-A CHAIN``, with its hash-prefixed comment.

        The comment is the first match, which is where iptables-save prints it too.
        """
        return " ".join(self._parts(comment=self.comment_text(rule_hash)))

    def comment_text(self, rule_hash: str) -> str:
        """The comment as programmed (unquoted): what a libiptc writer sets directly."""
        return f"{HASH_PREFIX}{rule_hash} {self.written_comment}"

    @property
    def written_comment(self) -> str:
        """The comment after the hash as it is written: escaped and cut to fit."""
        return escape_comment(self.comment, MAX_COMMENT_TEXT)

    def _parts(self, comment: str | None) -> list[str]:
        parts: list[str] = []
        if self.source is not None:
            parts += ["-s", self.source]
        if self.destination is not None:
            parts += ["-d", self.destination]
        if self.protocol is not None:
            parts += ["-p", self.protocol]
        if comment is not None:
            parts += ["-m", "comment", "--comment", f'"{comment}"']
        parts += [m.render() for m in self.matches]
        parts += ["-g" if self.goto else "-j", self.target]
        for option, value in self.target_options:
            parts.append(option)
            if value:
                parts.append(value)
        return parts


_SetSlot = Callable[[Rule, Any], None]
_set_target: _SetSlot = Rule.__dict__["target"].__set__
_set_comment: _SetSlot = Rule.__dict__["comment"].__set__
_set_source: _SetSlot = Rule.__dict__["source"].__set__
_set_destination: _SetSlot = Rule.__dict__["destination"].__set__
_set_protocol: _SetSlot = Rule.__dict__["protocol"].__set__
_set_matches: _SetSlot = Rule.__dict__["matches"].__set__
_set_target_options: _SetSlot = Rule.__dict__["target_options"].__set__
_set_goto: _SetSlot = Rule.__dict__["goto"].__set__
_set_policy: _SetSlot = Rule.__dict__["policy"].__set__
_set_pod: _SetSlot = Rule.__dict__["pod"].__set__
_set_hashed: _SetSlot = Rule.__dict__["_hashed"].__set__


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    rules: tuple[Rule, ...]
    # Chained per-rule hashes, computed once: the dataplane compares these with the
    # hashes it reads back from the kernel.
    hashes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # Every target its rules name (verdicts and chains): lets the dataplane check
    # references with set operations instead of walking every rule on every sync.
    targets: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.name) > MAX_CHAIN_NAME:
            raise ValueError(f"chain name {self.name!r} is longer than {MAX_CHAIN_NAME}")
        # BLAKE2b cut to 8 bytes (HASH_LEN hex digits): half the cost of SHA-256 cut to
        # the same length, and a full compile hashes every rule (some 34,000 at L).
        hashes: list[str] = []
        targets: set[str] = set()
        previous = ""
        name = self.name
        blake2b = hashlib.blake2b
        for rule in self.rules:
            text = rule._hashed
            if text is None:
                text = rule.hashed_text
            previous = blake2b(
                f"{name}\0{previous}\0{text}".encode(), digest_size=HASH_BYTES
            ).hexdigest()
            hashes.append(previous)
            targets.add(rule.target)
        object.__setattr__(self, "hashes", tuple(hashes))
        object.__setattr__(self, "targets", frozenset(targets))

    def render_rules(self) -> Iterator[str]:
        """``-A`` lines for iptables-restore."""
        for rule, rule_hash in zip(self.rules, self.hashes, strict=True):
            yield f"-A {self.name} {rule.render(rule_hash)}"


@dataclass(frozen=True, slots=True)
class Ruleset:
    """Everything the agent wants programmed in the filter table for one family.

    ``entry_chain`` is the chain that the single jump from FORWARD targets; all other
    chains are reachable from it.
    """

    family: Family
    entry_chain: str
    chains: Mapping[str, Chain]

    @classmethod
    def of(cls, family: Family, entry_chain: str, chains: Iterable[Chain]) -> Ruleset:
        ordered = {chain.name: chain for chain in chains}
        if entry_chain not in ordered:
            raise ValueError(f"entry chain {entry_chain} is not among the chains")
        return cls(family=family, entry_chain=entry_chain, chains=ordered)

    @property
    def rule_count(self) -> int:
        return sum(len(chain.rules) for chain in self.chains.values())
