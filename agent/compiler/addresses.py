"""Address trees: a long list of host addresses as a tree of chains, so a lookup costs
O(log n) rules without ipsets.

A tree is a pure function of the address set: a node with more than ``LEAF_SIZE``
addresses splits four ways on the two address bits after its members' common prefix,
and each leaf's addresses are collapsed into CIDRs. Trees split on bits, never on list
positions, so sibling subtrees cover disjoint ranges and a ``-g`` into the wrong one
cannot happen; for the same reason a leaf's addresses are disjoint and its rules may set
the mark and carry on. nf_tables refuses chain graphs deeper than 16 jumps (EMLINK), so
tree depth is capped: leaves grow instead.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from agent.compiler import cidr
from agent.compiler.render import Renderer
from agent.model.objects import Direction, IPAddress
from agent.rules import Chain, Rule

# A tree node holds at most this many entries before it splits four ways on the next two
# address bits; a lookup walks at most four rules at the root, three per level below it
# (the last quarter needs no address match there), plus one leaf.
LEAF_SIZE = 16
# Depth budget under nf_tables' 16-level jump limit: FORWARD -> entry -> dispatch root
# (+ DISPATCH_DEPTH) -> pod -> policy -> group root (+ GROUP_DEPTH) stays at level 15 or less.
DISPATCH_DEPTH = 3
GROUP_DEPTH = 6


class Subtree(NamedTuple):
    block: cidr.Block
    size: int
    chains: list[Chain]  # bottom-up: the subtree's own chain last


TreeMemo = dict[str, Subtree]
LeafRules = Callable[[Sequence[int]], list[Rule]]


def host(address: IPAddress) -> cidr.Block:
    return (int(address), cidr.width(address.version))


def build_tree(
    render: Renderer,
    name_of: Callable[[str, str], str],
    root: str,
    addresses: Sequence[int],
    leaf_rules: LeafRules,
    direction: Direction,
    comment: str,
    max_depth: int,
    memo: TreeMemo,
    dirty: Iterable[int] | None = None,
) -> list[Chain]:
    """The chains matching ``addresses`` (sorted host addresses), root first.

    ``memo`` holds the last build's subtrees; with ``dirty`` (the addresses added or
    removed since), only subtrees containing a dirty address are rebuilt, so one
    membership change costs O(log n) chains, not O(n). ``direction`` says which end of
    the packet the addresses are at (ingress: the source).
    """
    version = render.version
    at_source = direction is Direction.INGRESS
    chains: list[Chain] = []
    fresh: TreeMemo = {}
    dirty_sorted = sorted(dirty) if dirty is not None else None

    def is_dirty(block: cidr.Block) -> bool:
        if dirty_sorted is None:
            return True
        position = bisect.bisect_left(dirty_sorted, block[0])
        return position < len(dirty_sorted) and dirty_sorted[position] <= cidr.last_address(
            block, version
        )

    def build(name: str, block: cidr.Block, low: int, high: int, depth: int) -> None:
        start, size = len(chains), high - low
        rules: list[Rule] = []
        if size <= LEAF_SIZE or depth >= max_depth:
            rules = leaf_rules(addresses[low:high])
        else:
            common = cidr.common_block(
                (
                    (addresses[low], cidr.width(version)),
                    (addresses[high - 1], cidr.width(version)),
                ),
                version,
            )
            parts: list[tuple[cidr.Block, int, int]] = []
            for half in cidr.halves(common, version):
                for quarter in cidr.halves(half, version):
                    end = bisect.bisect_right(
                        addresses, cidr.last_address(quarter, version), low, high
                    )
                    if end > low:
                        parts.append((quarter, low, end))
                    low = end
            for position, (quarter, first, end) in enumerate(parts):
                if end - first == 1:
                    rules.extend(leaf_rules(addresses[first:end]))
                    continue
                quarter_text = render.text(quarter)
                sub = name_of("T", f"{root}|{quarter_text}")
                known = memo.get(sub)
                if (
                    known is not None
                    and known.block == quarter
                    and known.size == end - first
                    and not is_dirty(quarter)
                ):
                    fresh[sub] = known
                    chains.extend(known.chains)
                else:
                    build(sub, quarter, first, end, depth + 1)
                jump_comment = f"{comment} {quarter_text}"
                if depth > 0 and position == len(parts) - 1:
                    # Below the root the packet is inside this node's block: when no
                    # earlier quarter took it, the last one must hold it.
                    rules.append(Rule(sub, jump_comment, goto=True))
                elif at_source:  # built directly: ``render.at`` would build it twice
                    rules.append(Rule(sub, jump_comment, source=quarter_text, goto=True))
                else:
                    rules.append(Rule(sub, jump_comment, destination=quarter_text, goto=True))
        chains.append(Chain(name, tuple(rules)))
        fresh[name] = Subtree(block, size, chains[start:])

    bits = cidr.width(version)
    root_block = (
        cidr.common_block(((addresses[0], bits), (addresses[-1], bits)), version)
        if addresses
        else (0, 0)
    )
    build(root, root_block, 0, len(addresses), 0)
    memo.clear()
    memo.update(fresh)
    root_chain = chains.pop()  # built bottom-up: the root came last
    return [root_chain, *chains]
