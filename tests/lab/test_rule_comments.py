"""Hostile comments through the real restore binaries and libiptc: accepted, the target
stays outside the comment, and iptables-save reads back the hashes that were written."""

from __future__ import annotations

import shlex

import pytest

from agent.dataplane import Dataplane
from agent.rules import Chain, Family, Rule, Ruleset
from tests.lab.test_dataplane import (  # noqa: F401  (netns is a fixture)
    BACKENDS,
    PREFIX,
    Netns,
    assert_programmed,
    make,
    netns,
    save,
)
from tests.unit.test_rule_comments import HOSTILE

pytestmark = pytest.mark.lab


def hostile_ruleset(family: Family) -> Ruleset:
    target = f"{PREFIX}T"
    entry = Chain(
        f"{PREFIX}FWD",
        tuple(Rule(target, text, goto=False) for text in HOSTILE),
    )
    leaf = Chain(target, tuple(Rule("RETURN", text) for text in HOSTILE))
    return Ruleset.of(family, entry.name, [entry, leaf])


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_hostile_comments_program_and_read_back(netns: Netns, backend_name: str) -> None:  # noqa: F811
    rulesets = {family: hostile_ruleset(family) for family in Family}
    dataplane = Dataplane(make(backend_name), PREFIX)
    netns.call(dataplane.sync, rulesets, full=False)
    assert_programmed(netns, dataplane, rulesets)
    for family in Family:
        lines = [
            line
            for line in save(netns, backend_name, family).splitlines()
            if line.startswith(f"-A {PREFIX}FWD ")
        ]
        assert len(lines) == len(HOSTILE)
        for line in lines:
            tokens = shlex.split(line)
            at = tokens.index("--comment")
            assert tokens[at + 2 :] == ["-j", f"{PREFIX}T"]
    second = netns.call(dataplane.sync, rulesets, full=False)
    assert second.bytes_written == 0 and not second.drift_found
    netns.call(dataplane.cleanup)
