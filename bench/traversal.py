"""How many rules a new connection is compared against in our chains.

Counted from the rules (not timed): the compiled ruleset is walked for the first packet of
many connections to and from the measured node's pods, and the number of rules each
packet is compared against is recorded. The worst case is what the performance target
bounds; the median is what a typical new connection pays.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from typing import Any

from agent.compiler.walk import Packet, walk
from agent.model.objects import IPAddress, Pod
from agent.policy.state import ClusterState
from agent.rules import Ruleset

PORTS = (("tcp", 80), ("tcp", 8080), ("tcp", 9090), ("tcp", 443), ("tcp", 30050),
         ("udp", 53), ("udp", 5000), ("tcp", 12345))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Traversal:
    packets: int
    worst: int
    p99: float
    median: float
    worst_packet: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "packets": self.packets,
            "worst": self.worst,
            "p99": self.p99,
            "median": self.median,
            "worst_packet": self.worst_packet,
        }


def measure(
    state: ClusterState,
    ruleset: Ruleset,
    node: str,
    node_addresses: tuple[IPAddress, ...] = (),
    *,
    remote_sample: int = 60,
    seed: int = 1,
) -> Traversal:
    """Walk packets between every local pod and a fixed sample of other endpoints."""
    version = ruleset.family.version
    rng = random.Random(seed)
    local = [p for p in state.local_pods(node) if p.ips_of(version)]
    others = [p for p in state.selectable_pods if p.node_name != node and p.ips_of(version)]
    sample: list[Pod] = rng.sample(others, min(remote_sample, len(others)))
    externals = ["172.16.5.9", "8.8.8.8"] if version == 4 else ["fc00::99", "2001:db8::1"]
    import ipaddress

    peers: list[IPAddress] = [p.ips_of(version)[0] for p in (*local, *sample)]
    peers += [ipaddress.ip_address(e) for e in externals]
    counts: list[int] = []
    worst, worst_packet = -1, ""
    for pod in local:
        own = pod.ips_of(version)[0]
        for peer in peers:
            if peer == own:
                continue
            for protocol, port in PORTS:
                for source, destination in ((peer, own), (own, peer)):
                    packet = Packet(source, destination, protocol, port)
                    evaluated = walk(ruleset, packet, node_addresses).evaluated
                    counts.append(evaluated)
                    if evaluated > worst:
                        worst = evaluated
                        worst_packet = f"{source} -> {destination} {port}/{protocol}"
    counts.sort()
    return Traversal(
        packets=len(counts),
        worst=worst,
        p99=counts[int(len(counts) * 0.99)] if counts else 0,
        median=statistics.median(counts) if counts else 0,
        worst_packet=worst_packet,
    )
