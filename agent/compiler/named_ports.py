"""Named ports. Ingress resolves a name on the selected pod itself (the policy chain is
keyed by the pod's named-port signature, see ports.py). Egress resolves it on every
destination pod: destinations are grouped by the number they serve the name on, one peer
group per number.

A ``NamedScope`` counts, per number, the destination pods in scope that serve the name;
only a number appearing or vanishing changes the policy chain.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from agent.compiler.naming import block_key, selector_key
from agent.compiler.peers import GroupSpec, Move, PeerGroups, PodChange
from agent.compiler.render import Renderer
from agent.model.objects import (
    Direction,
    IPBlock,
    NetworkPolicy,
    PolicyRule,
    Protocol,
    SelectorPeer,
)
from agent.policy.view import PeerMatcher, PolicyView
from agent.rules import Rule


@dataclass(frozen=True, slots=True)
class NamedScope:
    """Egress to a named port within one peer: how many destination pods serve the name
    on each number."""

    spec: GroupSpec
    port_name: str
    protocol: Protocol
    holders: dict[int, int]

    def count_changes(
        self,
        previous: PeerMatcher,
        state: PeerMatcher,
        pod_changes: Sequence[PodChange],
        version: int,
        moves: Sequence[Move] = (),
    ) -> bool:
        """Count pod changes (and namespace moves, see ``PeerGroups.move_namespace``)
        into the scope; True if a number appears or vanishes."""
        net: dict[int, int] = {}
        spec = self.spec
        for old, new in pod_changes:
            for pod, view, step in ((old, previous, -1), (new, state, +1)):
                if pod is None or not spec.matches(view, pod, version):
                    continue
                number = pod.resolve_named_port(self.port_name, self.protocol)
                if number is not None:
                    net[number] = net.get(number, 0) + step
        for in_scope, flip in moves:
            step = flip(spec)
            if not step:
                continue
            for pod in in_scope(spec):
                number = pod.resolve_named_port(self.port_name, self.protocol)
                if number is not None:
                    net[number] = net.get(number, 0) + step
        moved = False
        for number, step in net.items():
            if not step:
                continue
            before = self.holders.get(number, 0)
            after = before + step
            if after:
                self.holders[number] = after
            else:
                self.holders.pop(number, None)
            if (before == 0) != (after == 0):
                moved = True
        return moved


def egress_rules(
    state: PolicyView,
    groups: PeerGroups,
    render: Renderer,
    policy: NetworkPolicy,
    rule: PolicyRule,
    protocol: Protocol,
    port_name: str,
    comment: str,
    scopes_used: list[NamedScope],
) -> list[Rule]:
    """Egress to a named port: a jump per number the destinations serve it on."""
    version = render.version
    scopes: list[tuple[str, SelectorPeer | None, IPBlock | None]] = []
    if rule.peers is None:
        scopes.append(("all-pods", None, None))
    else:
        for peer in rule.peers:
            if isinstance(peer, IPBlock):
                if peer.cidr.version == version:
                    # Only pods inside the block serve named ports; bare addresses never do.
                    scopes.append((f"block={block_key(peer)}", None, peer))
            else:
                scopes.append((selector_key(peer, policy.namespace), peer, None))
    out: list[Rule] = []
    for key, scope_peer, block in scopes:
        unfiltered = GroupSpec(Direction.EGRESS, policy.namespace, scope_peer, block)
        holders: dict[int, int] = defaultdict(int)
        for pod in unfiltered.members(state, version):
            number = pod.resolve_named_port(port_name, protocol)
            if number is not None:
                holders[number] += 1
        scopes_used.append(NamedScope(unfiltered, port_name, protocol, dict(holders)))
        for number in sorted(holders):
            spec = dataclasses.replace(unfiltered, named=(protocol, port_name, number))
            group = groups.group(state, spec, f"{key} port={protocol.value}:{port_name}={number}")
            out.append(
                render.named_port_jump(group, comment, policy.key, protocol, port_name, number)
            )
    return out
