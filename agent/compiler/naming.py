"""Chain names: ``<prefix>-<kind>-<hash>``, upper-case hex of a SHA-256 of what the chain
stands for, so a name never depends on a chain's content and a cached chain that jumps to
a rebuilt one stays valid.

Kinds: ``E``/``I`` a local pod's egress/ingress, ``SE``/``SI`` the verdict chain shared by
pods the same policies select, ``PE``/``PI`` a policy, ``G`` a peer group, ``B`` an
ipBlock with excepts, ``T`` a subtree of a long address list; for ClusterNetworkPolicy,
``CE``/``CI`` one rule (sets the mark when it matches), ``XE``/``XI`` the Admin tier of
the pods the same rules apply to, ``NE``/``NI`` what follows it (the NetworkPolicy verdict
chain, or the Baseline tier), ``H`` the node addresses of a ``nodes`` peer.
"""

from __future__ import annotations

from collections.abc import Set

from agent.compiler.config import CompilerConfig
from agent.model.objects import IPBlock, SelectorPeer
from agent.rules import Family


class ChainNames:
    """Hashed names, memoized (hashing is most of a name's cost). ``forget`` drops the
    names built for an object that is gone, so the memo holds live objects only."""

    def __init__(self, config: CompilerConfig, family: Family) -> None:
        self._config = config
        self._family = family.value
        self._names: dict[tuple[str, str], str] = {}

    def __call__(self, kind: str, key: str) -> str:
        memo_key = (kind, key)
        name = self._names.get(memo_key)
        if name is None:
            name = self._config.hashed_name(kind, f"{self._family}|{key}")
            self._names[memo_key] = name
        return name

    def keep_only(self, live: Set[str]) -> None:
        """Forget every memoized name not in ``live``, once the memo has grown to twice
        the live names (so the sweep's cost is spread over the passes that grew it)."""
        if len(self._names) > 2 * len(live) + 256:
            self._names = {k: v for k, v in self._names.items() if v in live}

    def __len__(self) -> int:
        return len(self._names)


def selector_key(peer: SelectorPeer, policy_namespace: str) -> str:
    """What a selector peer selects, as text: equal peers share one group."""
    scope = (
        f"ns={policy_namespace}"
        if peer.namespace_selector is None
        else f"nssel={peer.namespace_selector.canonical()}"
    )
    pods = "*" if peer.pod_selector is None else peer.pod_selector.canonical()
    return f"{scope} pods={pods}"


def block_key(block: IPBlock) -> str:
    return f"{block.cidr}-{','.join(map(str, block.excepts))}"
