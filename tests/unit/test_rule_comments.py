"""Comments are escaped: no name can move a rule's target into its comment, and what is
written fits the kernel's 255 bytes as valid text."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from agent.compiler.config import NodeContext
from agent.compiler.node import compile_node
from agent.policy.state import ClusterState
from agent.rules import MAX_COMMENT, Chain, Family, Rule, Ruleset
from agent.rules.comment import escape_comment
from tests.unit import builders as b
from tests.unit.builders import labels

HOSTILE = [
    "ends-in-backslash\\",
    'quote"-j ACCEPT "',
    "single'quote",
    "new\nline -j ACCEPT",
    "tab\tand\rreturn",
    "surrogate\ud800here",
    "\U0001f600" * 240,
    "é" * 300,
    "\\" * 300,
    "nul\x00byte",
    "--comment x -g NPA-X",
]


def _check_line(chain: Chain, rule: Rule, rule_hash: str, line: str) -> None:
    tokens = shlex.split(line)
    assert tokens[:2] == ["-A", chain.name]
    at = tokens.index("--comment")
    comment = tokens[at + 1]
    assert comment == rule.comment_text(rule_hash)
    assert len(comment.encode("utf-8")) <= MAX_COMMENT
    assert comment.isascii() and comment.isprintable()
    # Without the comment, the line is exactly the rule's body: the target is outside it.
    rest = tokens[2 : at - 2] + tokens[at + 2 :]
    assert rest == shlex.split(rule.render_body())
    jump = "-g" if rule.goto else "-j"
    assert rest[rest.index(jump) + 1] == rule.target


@pytest.mark.parametrize("text", HOSTILE)
def test_a_hostile_comment_stays_inside_its_quotes(text: str) -> None:
    rule = Rule("NPA-G-0123456789abcdef", text, goto=True)
    chain = Chain("NPA-PI-0123456789abcdef", (rule, Rule("DROP", text)))
    for rule, rule_hash, line in zip(chain.rules, chain.hashes, chain.render_rules(), strict=True):
        _check_line(chain, rule, rule_hash, line)


def test_escape_keeps_safe_text_and_cuts_to_the_byte_budget() -> None:
    assert escape_comment("ns/name x[0]: allowed") == "ns/name x[0]: allowed"
    assert escape_comment("a\"b\\c'd\ne\ud800f\U0001f600") == "a?b?c?d?e?f?"
    assert len(escape_comment("\U0001f600" * 300)) == MAX_COMMENT


def test_the_hash_covers_the_comment_as_written() -> None:
    # Two comments that differ only past the cut write the same text and hash the same;
    # two that differ where it is written do not.
    long = "x" * 300
    a = Chain("C", (Rule("DROP", long + "a"),))
    b_ = Chain("C", (Rule("DROP", long + "b"),))
    c = Chain("C", (Rule("DROP", "y" + long),))
    assert a.hashes == b_.hashes
    assert a.hashes != c.hashes


def _hostile_state(name: str) -> ClusterState:
    base = b.state_of(
        b.namespace("x"),
        b.node("node1", "172.18.0.1"),
        b.pod("x/web", "10.0.0.1", labels={"app": "web"}),
        b.pod("x/db", "10.0.0.2", labels={"app": "db"}),
        b.pod("x/other", "10.0.0.3", labels={"app": "db"}, node_name="node2"),
        b.policy(
            "x/allow",
            podSelector=labels(app="db"),
            ingress=[{"from": [{"podSelector": labels(app="web")}], "ports": [{"port": 80}]}],
        ),
    )
    pods = {}
    for pod in base.pods.values():
        renamed = dataclasses.replace(pod, name=f"{pod.name}{name}")
        pods[renamed.key] = renamed
    policies = {}
    for policy in base.policies.values():
        renamed_policy = dataclasses.replace(policy, name=f"{policy.name}{name}")
        policies[renamed_policy.key] = renamed_policy
    return ClusterState(base.namespaces, pods, policies, base.nodes)


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_object_names_do_not_change_any_rule(name: str) -> None:
    state = _hostile_state(name)
    plain = _hostile_state("")
    for family in Family:
        node = NodeContext("node1", state.node_addresses("node1"))
        ruleset: Ruleset = compile_node(state, node, family)
        reference = compile_node(plain, node, family)
        bodies = [r.render_body() for c in ruleset.chains.values() for r in c.rules]
        # Chain names are hashes of the names, so compare the rules' shapes.
        assert len(bodies) == len([r for c in reference.chains.values() for r in c.rules])
        for chain in ruleset.chains.values():
            for rule, rule_hash, line in zip(
                chain.rules, chain.hashes, chain.render_rules(), strict=True
            ):
                _check_line(chain, rule, rule_hash, line)


def test_set_mark_hashes_what_it_renders() -> None:
    for at_source in (True, False):
        for comment in ("peer pod ns/a", 'peer pod x"\\y', "p" * 300):
            built = Rule.set_mark(
                "10.0.0.0/24", at_source, comment, (("--set-xmark", "0x1/0x1"),), ""
            )
            plain = Rule(
                "MARK",
                comment,
                source="10.0.0.0/24" if at_source else None,
                destination=None if at_source else "10.0.0.0/24",
                target_options=(("--set-xmark", "0x1/0x1"),),
            )
            assert built == plain
            assert built.hashed_text == plain.hashed_text
            assert built.hashed_text == f"{plain.render_body()}\0{plain.written_comment}"
