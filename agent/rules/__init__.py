"""Shared rule types: what the compiler produces and the dataplane programs.

Imports nothing of the agent: the compiler and the dataplane both build on it.
"""

from agent.rules.comment import escape_comment
from agent.rules.ruleset import (
    HASH_LEN,
    HASH_PREFIX,
    MAX_CHAIN_NAME,
    MAX_COMMENT,
    Chain,
    Family,
    Match,
    Rule,
    Ruleset,
)

__all__ = [
    "HASH_LEN",
    "HASH_PREFIX",
    "MAX_CHAIN_NAME",
    "MAX_COMMENT",
    "Chain",
    "Family",
    "Match",
    "Rule",
    "Ruleset",
    "escape_comment",
]
