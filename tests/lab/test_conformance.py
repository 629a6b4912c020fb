"""The network-policy-api conformance suite (``sigs.k8s.io/network-policy-api@v0.3.0``,
``conformance/``), transcribed case by case into the lab.

One test per upstream ``ConformanceTest`` (named after its ShortName; the docstring names
the Go file), parametrized over the iptables backend.  Each runs the Go test's steps in
order: its manifests (:mod:`tests.lab.conformance_manifests`), then every ``t.Run``
subtest (named by :meth:`ConformanceRun.subtest` with the exact ``t.Run`` string) with the
same policy patches, deletions and relabellings at the same points, and every
``PokeServer`` as a cell (client, protocol, server, port, shouldConnect) of the hand table.
Every cell is probed over IPv4 and IPv6 (upstream runs one family per cluster) and checked
against real traffic and ``explain``; ``rule=`` is the rule the Go test's comment says
takes effect (index in the list as mutated so far, "" = none), which ``explain`` must name
as the rule that decided or the Pass that handed the flow on (where the upstream comment
names a wrong index, the right one is written); see
:class:`tests.lab.conformance.ConformanceRun`.
Topology: :mod:`tests.lab.conformance` (``conformance/base/manifests.yaml``).

The 24 standard tests have the ClusterNetworkPolicy profile's feature only; the 6
experimental ones need named ports or node peers as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.lab import conformance_manifests as manifests
from tests.lab.conformance import (
    CEDRIC_DIGGORY_0,
    CEDRIC_DIGGORY_1,
    CENTAUR_1,
    DRACO_MALFOY_0,
    DRACO_MALFOY_1,
    HARRY_POTTER_0,
    HARRY_POTTER_1,
    HOST_NETWORK_PORTS,
    LUNA_LOVEGOOD_0,
    LUNA_LOVEGOOD_1,
    ConformanceRun,
    ns,
    swap,
)
from tests.lab.scenarios_support import cnp_named_port, cnp_networks
from tests.lab.topology import Backend, Lab

pytestmark = pytest.mark.lab

BOTH = pytest.mark.parametrize("backend", ["nft", "legacy"])
CONFORMANCE_ROLE = "conformance-role"  # conformanceRoleLabel in the pod-selector tests
# the same-priority tests' policies: <prefix><pair>
PAIRS = ("gryffindor-slytherin", "gryffindor-hufflepuff", "hufflepuff-slytherin")

Start = Callable[[str], ConformanceRun]


@pytest.fixture
def conformance(clean_conformance_lab: Lab, backend: Backend) -> Iterator[Start]:
    """``conformance("CNPAdminTierEgressTCP")`` -> a run of that test on ``backend``."""

    def start(name: str) -> ConformanceRun:
        return ConformanceRun(clean_conformance_lab, backend, name)

    yield start


def host_ips(lab: Lab, pod_key: str) -> list[str]:
    """``serverPod.Status.PodIP + mask`` as a CIDR per family (upstream runs one family per
    cluster and inserts its pod IP; the lab is dual-stack, so both)."""
    info = lab.pod(pod_key)
    return [f"{info.ipv4}/32", f"{info.ipv6}/128"]


# ================================================================ admin tier: protocols
@BOTH
def test_CNPAdminTierEgressTCP(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-standard-egress-tcp-rules.go:
    CNPAdminTierEgressTCP"""
    run = conformance("CNPAdminTierEgressTCP")
    cnp = manifests.admin_egress_tcp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-egress' policy for TCP protocol; ensure rule ordering is respected")  # fmt: skip
    # egressRule at index0 (Accept) takes precedence over egressRule at index1 (Deny)
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 80, True, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "tcp", LUNA_LOVEGOOD_0, 8080, True, rule="egress[0]")

    run.subtest("Should support an 'allow-egress' policy for TCP protocol at the specified port")
    # egressRule at index5 (Accept hufflepuff 8080), then index6 (Deny hufflepuff)
    run.poke(HARRY_POTTER_0, "tcp", CEDRIC_DIGGORY_1, 8080, True, rule="egress[5]")
    run.poke(HARRY_POTTER_1, "tcp", CEDRIC_DIGGORY_1, 80, False, rule="egress[6]")

    run.subtest("Should not affect ingress traffic when only egress rules are specified")
    # no ingress rules: gryffindor's ingress is untouched, even at port 80
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_0, 80, True, rule="")
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_1, 80, True, rule="")

    run.subtest("Should support an 'deny-egress' policy for TCP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["egress"], 0, 1)  # Deny now before Accept
    run.patch(cnp)
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_1, 80, False, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "tcp", LUNA_LOVEGOOD_1, 8080, False, rule="egress[0]")

    run.subtest("Should support a 'deny-egress' policy for TCP protocol at the specified port")
    # egressRule at index3 (Deny slytherin 80); 8080 matches no rule
    run.poke(HARRY_POTTER_0, "tcp", DRACO_MALFOY_0, 80, False, rule="egress[3]")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 8080, True, rule="")

    run.subtest("Should support an 'pass-egress' policy for TCP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["egress"], 0, 2)  # [Pass, Accept, Deny] ravenclaw: Pass first
    run.patch(cnp)
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 80, True, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "tcp", LUNA_LOVEGOOD_0, 8080, True, rule="egress[0]")

    run.subtest("Should support a 'pass-egress' policy for TCP protocol at the specified port")
    swap(cnp["spec"]["egress"], 3, 4)  # Pass slytherin 80 before Deny slytherin 80
    run.patch(cnp)
    run.poke(HARRY_POTTER_0, "tcp", DRACO_MALFOY_0, 80, True, rule="egress[3]")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 8080, True, rule="")
    run.finish()


@BOTH
def test_CNPAdminTierEgressUDP(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-standard-egress-udp-rules.go:
    CNPAdminTierEgressUDP"""
    run = conformance("CNPAdminTierEgressUDP")
    cnp = manifests.admin_egress_udp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-egress' policy for UDP protocol; ensure rule ordering is respected")  # fmt: skip
    run.poke(CEDRIC_DIGGORY_0, "udp", LUNA_LOVEGOOD_0, 53, True, rule="egress[0]")
    run.poke(CEDRIC_DIGGORY_1, "udp", LUNA_LOVEGOOD_0, 5353, True, rule="egress[0]")

    run.subtest("Should support an 'allow-egress' policy for UDP protocol at the specified port")
    # egressRule at index5 (Accept gryffindor 53), index6 (Deny gryffindor)
    run.poke(CEDRIC_DIGGORY_0, "udp", HARRY_POTTER_1, 53, True, rule="egress[5]")
    run.poke(CEDRIC_DIGGORY_1, "udp", HARRY_POTTER_1, 5353, False, rule="egress[6]")

    run.subtest("Should support an 'deny-egress' policy for UDP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["egress"], 0, 1)
    run.patch(cnp)
    run.poke(CEDRIC_DIGGORY_0, "udp", LUNA_LOVEGOOD_1, 53, False, rule="egress[0]")
    run.poke(CEDRIC_DIGGORY_1, "udp", LUNA_LOVEGOOD_1, 5353, False, rule="egress[0]")

    run.subtest("Should support a 'deny-egress' policy for UDP protocol at the specified port")
    # egressRule at index3 (Deny slytherin 5353); 53 matches no rule
    run.poke(CEDRIC_DIGGORY_0, "udp", DRACO_MALFOY_0, 5353, False, rule="egress[3]")
    run.poke(CEDRIC_DIGGORY_1, "udp", DRACO_MALFOY_0, 53, True, rule="")

    run.subtest("Should support an 'pass-egress' policy for UDP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["egress"], 0, 2)
    run.patch(cnp)
    run.poke(CEDRIC_DIGGORY_0, "udp", LUNA_LOVEGOOD_1, 5353, True, rule="egress[0]")
    run.poke(CEDRIC_DIGGORY_1, "udp", LUNA_LOVEGOOD_1, 53, True, rule="egress[0]")

    run.subtest("Should support a 'pass-egress' policy for UDP protocol at the specified port")
    swap(cnp["spec"]["egress"], 3, 4)
    run.patch(cnp)
    run.poke(CEDRIC_DIGGORY_0, "udp", DRACO_MALFOY_0, 5353, True, rule="egress[3]")
    run.poke(CEDRIC_DIGGORY_1, "udp", DRACO_MALFOY_0, 53, True, rule="")
    run.finish()


@BOTH
def test_CNPAdminTierEgressSCTP(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-standard-egress-sctp-rules.go:
    CNPAdminTierEgressSCTP"""
    run = conformance("CNPAdminTierEgressSCTP")
    cnp = manifests.admin_egress_sctp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-egress' policy for SCTP protocol; ensure rule ordering is respected")  # fmt: skip
    run.poke(LUNA_LOVEGOOD_0, "sctp", HARRY_POTTER_0, 9003, True, rule="egress[0]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", HARRY_POTTER_0, 9005, True, rule="egress[0]")

    run.subtest("Should support an 'allow-egress' policy for SCTP protocol at the specified port")
    # egressRule at index5 (Accept hufflepuff 9003), index6 (Deny hufflepuff)
    run.poke(LUNA_LOVEGOOD_0, "sctp", CEDRIC_DIGGORY_1, 9003, True, rule="egress[5]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", CEDRIC_DIGGORY_1, 9005, False, rule="egress[6]")

    run.subtest("Should support an 'deny-egress' policy for SCTP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["egress"], 0, 1)
    run.patch(cnp)
    run.poke(LUNA_LOVEGOOD_0, "sctp", HARRY_POTTER_1, 9003, False, rule="egress[0]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", HARRY_POTTER_1, 9005, False, rule="egress[0]")

    run.subtest("Should support a 'deny-egress' policy for SCTP protocol at the specified port")
    # egressRule at index3 (Deny slytherin 9003); 9005 matches no rule
    run.poke(LUNA_LOVEGOOD_0, "sctp", DRACO_MALFOY_0, 9003, False, rule="egress[3]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", DRACO_MALFOY_0, 9005, True, rule="")

    run.subtest("Should support an 'pass-egress' policy for SCTP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["egress"], 0, 2)
    run.patch(cnp)
    run.poke(LUNA_LOVEGOOD_0, "sctp", HARRY_POTTER_1, 9003, True, rule="egress[0]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", HARRY_POTTER_1, 9005, True, rule="egress[0]")

    run.subtest("Should support a 'pass-egress' policy for SCTP protocol at the specified port")
    swap(cnp["spec"]["egress"], 3, 4)
    run.patch(cnp)
    run.poke(LUNA_LOVEGOOD_0, "sctp", DRACO_MALFOY_0, 9003, True, rule="egress[3]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", DRACO_MALFOY_0, 9005, True, rule="")
    run.finish()


@BOTH
def test_CNPAdminTierIngressTCP(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-standard-ingress-tcp-rules.go:
    CNPAdminTierIngressTCP"""
    run = conformance("CNPAdminTierIngressTCP")
    cnp = manifests.admin_ingress_tcp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-ingress' policy for TCP protocol; ensure rule ordering is respected")  # fmt: skip
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_0, 80, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "tcp", HARRY_POTTER_0, 8080, True, rule="ingress[0]")

    run.subtest("Should support an 'allow-ingress' policy for TCP protocol at the specified port")
    # ingressRule at index5 (Accept hufflepuff 80), index6 (Deny hufflepuff)
    run.poke(CEDRIC_DIGGORY_0, "tcp", HARRY_POTTER_1, 80, True, rule="ingress[5]")
    run.poke(CEDRIC_DIGGORY_1, "tcp", HARRY_POTTER_1, 8080, False, rule="ingress[6]")

    run.subtest("Should not affect egress traffic when only ingress rules are specified")
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 80, True, rule="")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 80, True, rule="")

    run.subtest("Should support an 'deny-ingress' policy for TCP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["ingress"], 0, 1)
    run.patch(cnp)
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_1, 80, False, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "tcp", HARRY_POTTER_1, 8080, False, rule="ingress[0]")

    run.subtest("Should support a 'deny-ingress' policy for TCP protocol at the specified port")
    # ingressRule at index3 (Deny slytherin 80); 8080 matches no rule
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_0, 80, False, rule="ingress[3]")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_0, 8080, True, rule="")

    run.subtest("Should support an 'pass-ingress' policy for TCP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["ingress"], 0, 2)
    run.patch(cnp)
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_0, 80, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "tcp", HARRY_POTTER_0, 8080, True, rule="ingress[0]")

    run.subtest("Should support a 'pass-ingress' policy for TCP protocol at the specified port")
    swap(cnp["spec"]["ingress"], 3, 4)
    run.patch(cnp)
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_0, 80, True, rule="ingress[3]")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_0, 8080, True, rule="")
    run.finish()


@BOTH
def test_CNPAdminTierIngressUDP(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-standard-ingress-udp-rules.go:
    CNPAdminTierIngressUDP"""
    run = conformance("CNPAdminTierIngressUDP")
    cnp = manifests.admin_ingress_udp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-ingress' policy for UDP protocol; ensure rule ordering is respected")  # fmt: skip
    run.poke(LUNA_LOVEGOOD_0, "udp", CEDRIC_DIGGORY_0, 53, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "udp", CEDRIC_DIGGORY_0, 5353, True, rule="ingress[0]")

    run.subtest("Should support an 'allow-ingress' policy for UDP protocol at the specified port")
    # ingressRule at index5 (Accept gryffindor 53), index6 (Deny gryffindor)
    run.poke(HARRY_POTTER_0, "udp", CEDRIC_DIGGORY_1, 53, True, rule="ingress[5]")
    run.poke(HARRY_POTTER_1, "udp", CEDRIC_DIGGORY_1, 5353, False, rule="ingress[6]")

    run.subtest("Should support an 'deny-ingress' policy for UDP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["ingress"], 0, 1)
    run.patch(cnp)
    run.poke(LUNA_LOVEGOOD_0, "udp", CEDRIC_DIGGORY_1, 53, False, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "udp", CEDRIC_DIGGORY_1, 5353, False, rule="ingress[0]")

    run.subtest("Should support a 'deny-ingress' policy for UDP protocol at the specified port")
    # ingressRule at index3 (Deny slytherin 5353); 53 matches no rule
    run.poke(DRACO_MALFOY_0, "udp", CEDRIC_DIGGORY_0, 5353, False, rule="ingress[3]")
    run.poke(DRACO_MALFOY_1, "udp", CEDRIC_DIGGORY_0, 53, True, rule="")

    run.subtest("Should support an 'pass-ingress' policy for UDP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["ingress"], 0, 2)
    run.patch(cnp)
    run.poke(LUNA_LOVEGOOD_0, "udp", CEDRIC_DIGGORY_1, 5353, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "udp", CEDRIC_DIGGORY_1, 53, True, rule="ingress[0]")

    run.subtest("Should support a 'pass-ingress' policy for UDP protocol at the specified port")
    swap(cnp["spec"]["ingress"], 3, 4)
    run.patch(cnp)
    run.poke(DRACO_MALFOY_0, "udp", CEDRIC_DIGGORY_0, 5353, True, rule="ingress[3]")
    run.poke(DRACO_MALFOY_1, "udp", CEDRIC_DIGGORY_0, 53, True, rule="")
    run.finish()


@BOTH
def test_CNPAdminTierIngressSCTP(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-standard-ingress-sctp-rules.go:
    CNPAdminTierIngressSCTP"""
    run = conformance("CNPAdminTierIngressSCTP")
    cnp = manifests.admin_ingress_sctp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-ingress' policy for SCTP protocol; ensure rule ordering is respected")  # fmt: skip
    run.poke(HARRY_POTTER_0, "sctp", LUNA_LOVEGOOD_0, 9003, True, rule="ingress[0]")
    run.poke(HARRY_POTTER_1, "sctp", LUNA_LOVEGOOD_0, 9005, True, rule="ingress[0]")

    run.subtest("Should support an 'allow-ingress' policy for SCTP protocol at the specified port")
    # ingressRule at index5 (Accept hufflepuff 9003), index6 (Deny hufflepuff)
    run.poke(CEDRIC_DIGGORY_0, "sctp", LUNA_LOVEGOOD_1, 9003, True, rule="ingress[5]")
    run.poke(CEDRIC_DIGGORY_1, "sctp", LUNA_LOVEGOOD_1, 9005, False, rule="ingress[6]")

    run.subtest("Should support an 'deny-ingress' policy for SCTP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["ingress"], 0, 1)
    run.patch(cnp)
    run.poke(HARRY_POTTER_0, "sctp", LUNA_LOVEGOOD_1, 9003, False, rule="ingress[0]")
    run.poke(HARRY_POTTER_1, "sctp", LUNA_LOVEGOOD_1, 9005, False, rule="ingress[0]")

    run.subtest("Should support a 'deny-ingress' policy for SCTP protocol at the specified port")
    # ingressRule at index3 (Deny slytherin 9003); 9005 matches no rule
    run.poke(DRACO_MALFOY_0, "sctp", LUNA_LOVEGOOD_0, 9003, False, rule="ingress[3]")
    run.poke(DRACO_MALFOY_1, "sctp", LUNA_LOVEGOOD_0, 9005, True, rule="")

    run.subtest("Should support an 'pass-ingress' policy for SCTP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["ingress"], 0, 2)
    run.patch(cnp)
    run.poke(HARRY_POTTER_0, "sctp", LUNA_LOVEGOOD_1, 9003, True, rule="ingress[0]")
    run.poke(HARRY_POTTER_1, "sctp", LUNA_LOVEGOOD_1, 9005, True, rule="ingress[0]")

    run.subtest("Should support a 'pass-ingress' policy for SCTP protocol at the specified port")
    swap(cnp["spec"]["ingress"], 3, 4)
    run.patch(cnp)
    run.poke(DRACO_MALFOY_0, "sctp", LUNA_LOVEGOOD_0, 9003, True, rule="ingress[3]")
    run.poke(DRACO_MALFOY_1, "sctp", LUNA_LOVEGOOD_0, 9005, True, rule="")
    run.finish()


@BOTH
def test_CNPAdminTierGress(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-standard-gress-rules.go: CNPAdminTierGress"""
    run = conformance("CNPAdminTierGress")
    cnp = manifests.admin_gress_rules_combined()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-gress' policy across different protocols")
    # egress first
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 80, True, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "udp", LUNA_LOVEGOOD_0, 53, True, rule="egress[0]")
    run.poke(HARRY_POTTER_0, "sctp", LUNA_LOVEGOOD_0, 9003, True, rule="egress[0]")
    # then ingress
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_0, 80, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "udp", HARRY_POTTER_0, 53, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", HARRY_POTTER_0, 9003, True, rule="ingress[0]")

    run.subtest("Should support an 'allow-gress' policy across different protocols at the specified ports")  # fmt: skip
    # egress: index5 (Accept hufflepuff 8080/5353/9003), index6 (Deny hufflepuff)
    run.poke(HARRY_POTTER_0, "tcp", CEDRIC_DIGGORY_1, 8080, True, rule="egress[5]")
    run.poke(HARRY_POTTER_1, "tcp", CEDRIC_DIGGORY_1, 80, False, rule="egress[6]")
    run.poke(HARRY_POTTER_0, "udp", CEDRIC_DIGGORY_1, 5353, True, rule="egress[5]")
    run.poke(HARRY_POTTER_1, "udp", CEDRIC_DIGGORY_1, 53, False, rule="egress[6]")
    run.poke(HARRY_POTTER_0, "sctp", CEDRIC_DIGGORY_1, 9003, True, rule="egress[5]")
    run.poke(HARRY_POTTER_1, "sctp", CEDRIC_DIGGORY_1, 9005, False, rule="egress[6]")
    # ingress: index5 (Accept hufflepuff 80/5353/9003), index6 (Deny hufflepuff)
    run.poke(CEDRIC_DIGGORY_0, "tcp", HARRY_POTTER_1, 80, True, rule="ingress[5]")
    run.poke(CEDRIC_DIGGORY_1, "tcp", HARRY_POTTER_1, 8080, False, rule="ingress[6]")
    run.poke(CEDRIC_DIGGORY_0, "udp", HARRY_POTTER_1, 5353, True, rule="ingress[5]")
    run.poke(CEDRIC_DIGGORY_1, "udp", HARRY_POTTER_1, 53, False, rule="ingress[6]")
    run.poke(CEDRIC_DIGGORY_0, "sctp", HARRY_POTTER_1, 9003, True, rule="ingress[5]")
    run.poke(CEDRIC_DIGGORY_1, "sctp", HARRY_POTTER_1, 9005, False, rule="ingress[6]")

    run.subtest("Should support an 'deny-gress' policy across different protocols")
    swap(cnp["spec"]["egress"], 0, 1)
    swap(cnp["spec"]["ingress"], 0, 1)
    run.patch(cnp)
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_1, 80, False, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "udp", LUNA_LOVEGOOD_1, 53, False, rule="egress[0]")
    run.poke(HARRY_POTTER_0, "sctp", LUNA_LOVEGOOD_1, 9003, False, rule="egress[0]")
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_1, 80, False, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "udp", HARRY_POTTER_1, 53, False, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", HARRY_POTTER_1, 9003, False, rule="ingress[0]")

    run.subtest("Should support a 'deny-gress' policy across different protocols at the specified ports")  # fmt: skip
    # index3 (Deny slytherin 80/53/9003); other ports match no rule
    run.poke(HARRY_POTTER_0, "tcp", DRACO_MALFOY_0, 80, False, rule="egress[3]")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 8080, True, rule="")
    run.poke(HARRY_POTTER_0, "udp", DRACO_MALFOY_0, 53, False, rule="egress[3]")
    run.poke(HARRY_POTTER_1, "udp", DRACO_MALFOY_0, 5353, True, rule="")
    run.poke(HARRY_POTTER_0, "sctp", DRACO_MALFOY_0, 9003, False, rule="egress[3]")
    run.poke(HARRY_POTTER_1, "sctp", DRACO_MALFOY_0, 9005, True, rule="")
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_0, 80, False, rule="ingress[3]")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_0, 8080, True, rule="")
    run.poke(DRACO_MALFOY_0, "udp", HARRY_POTTER_0, 53, False, rule="ingress[3]")
    run.poke(DRACO_MALFOY_1, "udp", HARRY_POTTER_0, 5353, True, rule="")
    run.poke(DRACO_MALFOY_0, "sctp", HARRY_POTTER_0, 9003, False, rule="ingress[3]")
    run.poke(DRACO_MALFOY_1, "sctp", HARRY_POTTER_0, 9005, True, rule="")

    run.subtest("Should support an 'pass-gress' policy across different protocols")
    swap(cnp["spec"]["egress"], 0, 2)
    swap(cnp["spec"]["ingress"], 0, 2)
    run.patch(cnp)
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 80, True, rule="egress[0]")
    run.poke(HARRY_POTTER_0, "udp", LUNA_LOVEGOOD_0, 5353, True, rule="egress[0]")
    run.poke(HARRY_POTTER_0, "sctp", LUNA_LOVEGOOD_0, 9003, True, rule="egress[0]")
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_0, 80, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "udp", HARRY_POTTER_0, 53, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", HARRY_POTTER_0, 9003, True, rule="ingress[0]")

    run.subtest("Should support a 'pass-gress' policy across different protocols at the specified ports")  # fmt: skip
    swap(cnp["spec"]["egress"], 3, 4)
    swap(cnp["spec"]["ingress"], 3, 4)
    run.patch(cnp)
    run.poke(HARRY_POTTER_0, "tcp", DRACO_MALFOY_0, 80, True, rule="egress[3]")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 8080, True, rule="")
    run.poke(HARRY_POTTER_0, "udp", DRACO_MALFOY_0, 53, True, rule="egress[3]")
    run.poke(HARRY_POTTER_1, "udp", DRACO_MALFOY_0, 5353, True, rule="")
    run.poke(HARRY_POTTER_0, "sctp", DRACO_MALFOY_0, 9003, True, rule="egress[3]")
    run.poke(HARRY_POTTER_1, "sctp", DRACO_MALFOY_0, 9005, True, rule="")
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_0, 80, True, rule="ingress[3]")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_0, 8080, True, rule="")
    run.poke(DRACO_MALFOY_0, "udp", HARRY_POTTER_0, 53, True, rule="ingress[3]")
    run.poke(DRACO_MALFOY_1, "udp", HARRY_POTTER_0, 5353, True, rule="")
    run.poke(DRACO_MALFOY_0, "sctp", HARRY_POTTER_0, 9003, True, rule="ingress[3]")
    run.poke(DRACO_MALFOY_1, "sctp", HARRY_POTTER_0, 9005, True, rule="")
    run.finish()


# ========================================================= admin tier: the other fields
@BOTH
def test_CNPAdminTierIntegration(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-standard-integration.go:
    CNPAdminTierIntegration (Admin, NetworkPolicy and Baseline together)"""
    run = conformance("CNPAdminTierIntegration")
    admin, network_policy, baseline = manifests.api_integration_anp_np_banp()
    run.manifests(admin, network_policy, baseline)

    run.subtest("Should Deny traffic from slytherin to gryffindor respecting admin CNP")
    # admin ingressRule at index0 (Deny slytherin)
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_0, 80, False, rule="pass-example ingress[0]")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_0, 8080, False, rule="pass-example ingress[0]")

    run.subtest("Should Deny traffic to slytherin from gryffindor respecting admin CNP")
    run.poke(HARRY_POTTER_0, "tcp", DRACO_MALFOY_0, 80, False, rule="pass-example egress[0]")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 8080, False, rule="pass-example egress[0]")

    run.subtest("Should support a 'pass-ingress' policy for admin CNP and respect the match for network policy")  # fmt: skip
    admin["spec"]["ingress"][0]["action"] = "Pass"  # the NetworkPolicy's allow decides
    run.patch(admin)
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_0, 80, True, rule="pass-example ingress[0]")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_0, 8080, True, rule="pass-example ingress[0]")

    run.subtest("Should support a 'pass-egress' policy for admin CNP and respect the match for network policy")  # fmt: skip
    admin["spec"]["egress"][0]["action"] = "Pass"
    run.patch(admin)
    run.poke(HARRY_POTTER_0, "tcp", DRACO_MALFOY_0, 80, True, rule="pass-example egress[0]")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 8080, True, rule="pass-example egress[0]")

    run.subtest("Should support a 'pass-ingress' policy for admin CNP and respect the match for baseline cluster network policy")  # fmt: skip
    # the NetworkPolicy is deleted: the baseline Deny decides
    run.delete("NetworkPolicy", "allow-gress-from-to-slytherin-to-gryffindor", ns("gryffindor"))
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_0, 80, False, rule="default ingress[0]")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_0, 8080, False, rule="default ingress[0]")

    run.subtest("Should support a 'pass-egress' policy for admin CNP and respect the match for baseline cluster network policy")  # fmt: skip
    run.poke(HARRY_POTTER_0, "tcp", DRACO_MALFOY_0, 80, False, rule="default egress[0]")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 8080, False, rule="default egress[0]")
    run.finish()


@BOTH
def test_CNPAdminTierPodSelector(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-standard-pod-selector-rules.go:
    CNPAdminTierPodSelector"""
    run = conformance("CNPAdminTierPodSelector")
    run.manifests(*manifests.admin_pod_selector_rules())
    selectors, labelled = "pod-selector-rules", "label-selected-subject-rules"

    run.subtest("Should support pod selectors in egress peers")
    # index0 accepts luna-lovegood-0 on TCP 80 only; index1 denies ravenclaw pods
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 8080, False, rule=f"{selectors} egress[1]")
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 80, True, rule=f"{selectors} egress[0]")
    run.poke(HARRY_POTTER_1, "tcp", LUNA_LOVEGOOD_1, 80, False, rule=f"{selectors} egress[1]")

    run.subtest("Should support pod selectors in ingress peers")
    # index1 denies slytherin pods (pod label alone); index0 accepts draco-malfoy-0
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_1, 80, False, rule=f"{selectors} ingress[1]")
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_0, 80, True, rule=f"{selectors} ingress[0]")
    # index2 denies hufflepuff pods labelled conformance-role=blocked
    run.set_pod_label(CEDRIC_DIGGORY_0, CONFORMANCE_ROLE, "blocked")
    run.poke(CEDRIC_DIGGORY_0, "tcp", HARRY_POTTER_0, 80, False, rule=f"{selectors} ingress[2]")
    run.poke(CEDRIC_DIGGORY_1, "tcp", HARRY_POTTER_0, 80, True, rule="")
    run.remove_pod_label(CEDRIC_DIGGORY_0, CONFORMANCE_ROLE)
    run.poke(CEDRIC_DIGGORY_0, "tcp", HARRY_POTTER_0, 80, True, rule="")
    run.set_pod_label(CEDRIC_DIGGORY_1, CONFORMANCE_ROLE, "blocked")
    run.poke(CEDRIC_DIGGORY_1, "tcp", HARRY_POTTER_0, 80, False, rule=f"{selectors} ingress[2]")
    # t.Cleanup
    run.remove_pod_label(CEDRIC_DIGGORY_0, CONFORMANCE_ROLE)
    run.remove_pod_label(CEDRIC_DIGGORY_1, CONFORMANCE_ROLE)

    run.subtest("Should support pod selectors in the subject")
    # draco-malfoy-0 is not a subject of pod-selector-rules (gryffindor pods in any
    # namespace), so its egress deny to ravenclaw does not apply
    run.poke(DRACO_MALFOY_0, "tcp", LUNA_LOVEGOOD_1, 80, True, rule="")
    # label-selected-subject-rules: subject = ravenclaw pods labelled restricted
    run.set_pod_label(LUNA_LOVEGOOD_0, CONFORMANCE_ROLE, "restricted")
    run.poke(LUNA_LOVEGOOD_0, "tcp", DRACO_MALFOY_0, 80, False, rule=f"{labelled} egress[0]")
    run.poke(LUNA_LOVEGOOD_1, "tcp", DRACO_MALFOY_0, 80, True, rule="")
    run.remove_pod_label(LUNA_LOVEGOOD_0, CONFORMANCE_ROLE)
    run.poke(LUNA_LOVEGOOD_0, "tcp", DRACO_MALFOY_0, 80, True, rule="")
    run.set_pod_label(LUNA_LOVEGOOD_1, CONFORMANCE_ROLE, "restricted")
    run.poke(LUNA_LOVEGOOD_1, "tcp", DRACO_MALFOY_0, 80, False, rule=f"{labelled} egress[0]")
    run.finish()


@BOTH
def test_CNPAdminTierPortRange(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-standard-port-range-rules.go:
    CNPAdminTierPortRange"""
    run = conformance("CNPAdminTierPortRange")
    run.manifests(manifests.admin_port_range_rules_combined())

    run.subtest("Should support egress port range rules across different protocols")
    # ravenclaw: TCP 80-8080 in range; UDP 53 falls to deny-all-egress
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 80, True, rule="egress[0]")
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 8080, True, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "udp", LUNA_LOVEGOOD_0, 53, False, rule="egress[3]")
    # hufflepuff: UDP 53-5353
    run.poke(HARRY_POTTER_0, "udp", CEDRIC_DIGGORY_0, 53, True, rule="egress[1]")
    run.poke(HARRY_POTTER_0, "udp", CEDRIC_DIGGORY_0, 5353, True, rule="egress[1]")
    run.poke(HARRY_POTTER_1, "tcp", CEDRIC_DIGGORY_0, 80, False, rule="egress[3]")
    # slytherin: SCTP 9003-9005
    run.poke(HARRY_POTTER_0, "sctp", DRACO_MALFOY_0, 9003, True, rule="egress[2]")
    run.poke(HARRY_POTTER_0, "sctp", DRACO_MALFOY_0, 9005, True, rule="egress[2]")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 80, False, rule="egress[3]")

    run.subtest("Should support ingress port range rules across different protocols")
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_0, 80, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_0, 8080, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "udp", HARRY_POTTER_0, 53, False, rule="ingress[3]")
    run.poke(CEDRIC_DIGGORY_0, "udp", HARRY_POTTER_0, 53, True, rule="ingress[1]")
    run.poke(CEDRIC_DIGGORY_0, "udp", HARRY_POTTER_0, 5353, True, rule="ingress[1]")
    run.poke(CEDRIC_DIGGORY_1, "tcp", HARRY_POTTER_0, 80, False, rule="ingress[3]")
    run.poke(DRACO_MALFOY_0, "sctp", HARRY_POTTER_0, 9003, True, rule="ingress[2]")
    run.poke(DRACO_MALFOY_0, "sctp", HARRY_POTTER_0, 9005, True, rule="ingress[2]")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_0, 80, False, rule="ingress[3]")
    run.finish()


@BOTH
def test_CNPAdminTierPriorityField(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-standard-priority.go:
    CNPAdminTierPriorityField"""
    run = conformance("CNPAdminTierPriorityField")
    deny_50, pass_60, baseline = manifests.admin_priority_field()
    run.manifests(deny_50, pass_60, baseline)
    p50 = deny_50["metadata"]["name"]

    run.subtest("Should Deny traffic from slytherin to gryffindor respecting admin CNP")
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_0, 80, False, rule=f"{p50} ingress[0]")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_0, 8080, False, rule=f"{p50} ingress[0]")

    run.subtest("Should Deny traffic to slytherin from gryffindor respecting admin CNP")
    run.poke(HARRY_POTTER_0, "tcp", DRACO_MALFOY_0, 80, False, rule=f"{p50} egress[0]")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 8080, False, rule=f"{p50} egress[0]")

    run.subtest("Should respect admin CNP priority field; thus passing both ingress and egress traffic over to baseline CNP")  # fmt: skip
    pass_60["spec"]["priority"] = 40  # the Pass now comes before the Deny at 50
    run.patch(pass_60)
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_0, 80, True, rule="default ingress[0]")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_0, 8080, True, rule="default ingress[0]")
    run.poke(HARRY_POTTER_0, "tcp", DRACO_MALFOY_0, 80, True, rule="default egress[0]")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 8080, True, rule="default egress[0]")
    run.finish()


@BOTH
def test_CNPAdminTierSamePriority(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-standard-same-priority.go:
    CNPAdminTierSamePriority"""
    run = conformance("CNPAdminTierSamePriority")
    run.manifests(*manifests.admin_same_priority())
    gs, gh, hs = (f"same-priority-{pair}" for pair in PAIRS)
    gryffindor, slytherin = HARRY_POTTER_0, DRACO_MALFOY_0  # the servers
    hufflepuff, ravenclaw = CEDRIC_DIGGORY_0, LUNA_LOVEGOOD_0

    run.subtest("Should deny traffic in both directions for each same-priority policy")
    run.poke(DRACO_MALFOY_0, "tcp", gryffindor, 80, False, rule=f"{gs} ingress[0]")
    run.poke(HARRY_POTTER_0, "tcp", slytherin, 80, False, rule=f"{gs} egress[0]")
    run.poke(CEDRIC_DIGGORY_0, "tcp", gryffindor, 80, False, rule=f"{gh} ingress[0]")
    run.poke(HARRY_POTTER_1, "tcp", hufflepuff, 80, False, rule=f"{gh} egress[0]")
    run.poke(DRACO_MALFOY_1, "tcp", hufflepuff, 8080, False, rule=f"{hs} ingress[0]")
    run.poke(CEDRIC_DIGGORY_1, "tcp", slytherin, 8080, False, rule=f"{hs} egress[0]")

    run.subtest("Should not apply one same-priority policy's rules to another policy's subject")
    run.poke(DRACO_MALFOY_0, "tcp", gryffindor, 8080, True, rule="")
    run.poke(HARRY_POTTER_0, "tcp", slytherin, 8080, True, rule="")
    run.poke(DRACO_MALFOY_1, "tcp", hufflepuff, 80, True, rule="")
    run.poke(CEDRIC_DIGGORY_0, "tcp", slytherin, 80, True, rule="")

    run.subtest("Should not affect traffic matching no same-priority policy")
    run.poke(LUNA_LOVEGOOD_0, "tcp", gryffindor, 80, True, rule="")
    run.poke(HARRY_POTTER_1, "tcp", ravenclaw, 80, True, rule="")
    run.finish()


@BOTH
def test_CNPAdminTierEgressInlineCIDRPeers(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-standard-egress-inline-cidr-rules.go:
    CNPAdminTierEgressInlineCIDRPeers"""
    run = conformance("CNPAdminTierEgressInlineCIDRPeers")
    cnp = manifests.admin_egress_inline_cidr_rules()
    run.manifests(cnp)
    _inline_cidr_subtests(run, cnp)
    run.finish()


def _inline_cidr_subtests(run: ConformanceRun, cnp: dict[str, Any]) -> None:
    """The admin and baseline inline-CIDR tests make the same steps."""
    slytherin = ns("slytherin")

    run.subtest("Should support a 'deny-egress' rule policy for egress-cidr-peer")
    # egressRule at index1 (Deny 0.0.0.0/0, ::/0)
    for server in (LUNA_LOVEGOOD_0, CEDRIC_DIGGORY_0):
        run.poke(HARRY_POTTER_1, "tcp", server, 80, False, rule="egress[1]")
        run.poke(HARRY_POTTER_1, "udp", server, 53, False, rule="egress[1]")
        run.poke(HARRY_POTTER_1, "sctp", server, 9003, False, rule="egress[1]")
    # egressRule at index0 (Accept slytherin pods) comes first
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 80, True, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "udp", DRACO_MALFOY_0, 53, True, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "sctp", DRACO_MALFOY_0, 9003, True, rule="egress[0]")
    # slytherin's namespace no longer labelled slytherin: index0 stops matching
    run.set_namespace_labels(slytherin, {"conformance-house": "denied-namespace-label"})
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 80, False, rule="egress[1]")
    run.poke(HARRY_POTTER_1, "udp", DRACO_MALFOY_0, 53, False, rule="egress[1]")
    run.poke(HARRY_POTTER_1, "sctp", DRACO_MALFOY_0, 9003, False, rule="egress[1]")
    # and back
    run.set_namespace_labels(slytherin, {"conformance-house": "slytherin"})
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 80, True, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "udp", DRACO_MALFOY_0, 53, True, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "sctp", DRACO_MALFOY_0, 9003, True, rule="egress[0]")

    run.subtest("Should support an 'allow-egress' rule policy for egress-cidr-peer")
    # a new egressRule at index0 accepts luna-lovegood-0's and cedric-diggory-0's IPs
    allow_ips = {
        "name": "allow-egress-to-specific-podIPs",
        "action": "Accept",
        "to": [cnp_networks(*host_ips(run.lab, LUNA_LOVEGOOD_0),
                            *host_ips(run.lab, CEDRIC_DIGGORY_0))],
    }  # fmt: skip
    cnp["spec"]["egress"] = [allow_ips, *cnp["spec"]["egress"]]
    run.patch(cnp)
    for server in (LUNA_LOVEGOOD_0, CEDRIC_DIGGORY_0):
        run.poke(HARRY_POTTER_1, "tcp", server, 80, True, rule="egress[0]")
        run.poke(HARRY_POTTER_1, "udp", server, 53, True, rule="egress[0]")
        run.poke(HARRY_POTTER_1, "sctp", server, 9003, True, rule="egress[0]")
    # the other two pods of those houses still fall to the Deny (now index2)
    for server in (LUNA_LOVEGOOD_1, CEDRIC_DIGGORY_1):
        run.poke(HARRY_POTTER_1, "tcp", server, 80, False, rule="egress[2]")
        run.poke(HARRY_POTTER_1, "udp", server, 53, False, rule="egress[2]")
        run.poke(HARRY_POTTER_1, "sctp", server, 9003, False, rule="egress[2]")


# ======================================================== admin tier: experimental
@BOTH
def test_CNPAdminTierEgressNamedPort(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-experimental-egress-rules.go:
    CNPAdminTierEgressNamedPort (experimental: named ports)"""
    run = conformance("CNPAdminTierEgressNamedPort")
    cnp = manifests.admin_egress_tcp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-egress' policy for named port")
    # egressRule at index5 becomes "web", which the pods declare as TCP 80
    cnp["spec"]["egress"][5]["protocols"] = [cnp_named_port("web")]
    run.patch(cnp)
    run.poke(HARRY_POTTER_0, "tcp", CEDRIC_DIGGORY_1, 80, True, rule="egress[5]")
    run.poke(
        HARRY_POTTER_1, "tcp", CEDRIC_DIGGORY_1, 8080, False, rule="egress[6]"
    )  # index6 (Deny)
    run.finish()


@BOTH
def test_CNPAdminTierIngressNamedPort(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-experimental-ingress-rules.go:
    CNPAdminTierIngressNamedPort (experimental: named ports)"""
    run = conformance("CNPAdminTierIngressNamedPort")
    cnp = manifests.admin_ingress_udp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-ingress' policy for named port")
    # ingressRule at index5 becomes "dns", which the pods declare as UDP 53
    cnp["spec"]["ingress"][5]["protocols"] = [cnp_named_port("dns")]
    run.patch(cnp)
    run.poke(HARRY_POTTER_0, "udp", CEDRIC_DIGGORY_1, 53, True, rule="ingress[5]")
    run.poke(
        HARRY_POTTER_1, "udp", CEDRIC_DIGGORY_1, 5353, False, rule="ingress[6]"
    )  # index6 (Deny)
    run.finish()


@BOTH
def test_CNPAdminTierEgressNodePeers(conformance: Start) -> None:
    """conformance/tests/admin-network-policy-experimental-egress-rules.go:
    CNPAdminTierEgressNodePeers (experimental: node peers).  centaur-1 is a hostNetwork
    pod: the server is its node, node-2 (the clients are on node-1)."""
    run = conformance("CNPAdminTierEgressNodePeers")
    run.manifests(manifests.admin_experimental_egress_selector_rules())
    p = HOST_NETWORK_PORTS

    run.subtest("Should support an 'allow-egress' rule policy for egress-node-peer")
    run.poke(
        HARRY_POTTER_1, "tcp", CENTAUR_1, p[0], True, rule="egress[0]"
    )  # index0 (Accept TCP p0)

    run.subtest("Should support a 'pass-egress' rule policy for egress-node-peer")
    run.poke(HARRY_POTTER_1, "udp", CENTAUR_1, p[2], True, rule="egress[1]")  # index1 (Pass UDP p2)

    run.subtest("Should support a 'deny-egress' rule policy for egress-node-peer")
    # index2 (Deny nodes, slytherin pods and everywhere)
    run.poke(HARRY_POTTER_1, "tcp", CENTAUR_1, p[1], False, rule="egress[2]")
    run.poke(HARRY_POTTER_1, "udp", CENTAUR_1, p[4], False, rule="egress[2]")
    run.poke(HARRY_POTTER_1, "sctp", CENTAUR_1, p[6], False, rule="egress[2]")
    run.finish()


# =========================================================== baseline tier: protocols
@BOTH
def test_CNPBaselineTierEgressTCP(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-standard-egress-tcp-rules.go:
    CNPBaselineTierEgressTCP"""
    run = conformance("CNPBaselineTierEgressTCP")
    cnp = manifests.baseline_egress_tcp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-egress' policy for TCP protocol; ensure rule ordering is respected")  # fmt: skip
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 80, True, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "tcp", LUNA_LOVEGOOD_0, 8080, True, rule="egress[0]")

    run.subtest("Should support an 'allow-egress' policy for TCP protocol at the specified port")
    # egressRule at index3 (Accept hufflepuff 8080), index4 (Deny hufflepuff)
    run.poke(HARRY_POTTER_0, "tcp", CEDRIC_DIGGORY_1, 8080, True, rule="egress[3]")
    run.poke(HARRY_POTTER_1, "tcp", CEDRIC_DIGGORY_1, 80, False, rule="egress[4]")

    run.subtest("Should not affect ingress traffic when only egress rules are specified")
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_0, 80, True, rule="")
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_1, 80, True, rule="")

    run.subtest("Should support an 'deny-egress' policy for TCP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["egress"], 0, 1)
    run.patch(cnp)
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_1, 80, False, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "tcp", LUNA_LOVEGOOD_1, 8080, False, rule="egress[0]")

    run.subtest("Should support a 'deny-egress' policy for TCP protocol at the specified port")
    # egressRule at index2 (Deny slytherin 80); 8080 matches no rule
    run.poke(HARRY_POTTER_0, "tcp", DRACO_MALFOY_0, 80, False, rule="egress[2]")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 8080, True, rule="")
    run.finish()


@BOTH
def test_CNPBaselineTierEgressUDP(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-standard-egress-udp-rules.go:
    CNPBaselineTierEgressUDP"""
    run = conformance("CNPBaselineTierEgressUDP")
    cnp = manifests.baseline_egress_udp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-egress' policy for UDP protocol; ensure rule ordering is respected")  # fmt: skip
    run.poke(CEDRIC_DIGGORY_0, "udp", LUNA_LOVEGOOD_0, 53, True, rule="egress[0]")
    run.poke(CEDRIC_DIGGORY_1, "udp", LUNA_LOVEGOOD_0, 5353, True, rule="egress[0]")

    run.subtest("Should support an 'allow-egress' policy for UDP protocol at the specified port")
    # egressRule at index3 (Accept gryffindor 53), index4 (Deny gryffindor)
    run.poke(CEDRIC_DIGGORY_0, "udp", HARRY_POTTER_1, 53, True, rule="egress[3]")
    run.poke(CEDRIC_DIGGORY_1, "udp", HARRY_POTTER_1, 5353, False, rule="egress[4]")

    run.subtest("Should support an 'deny-egress' policy for UDP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["egress"], 0, 1)
    run.patch(cnp)
    run.poke(CEDRIC_DIGGORY_0, "udp", LUNA_LOVEGOOD_1, 53, False, rule="egress[0]")
    run.poke(CEDRIC_DIGGORY_1, "udp", LUNA_LOVEGOOD_1, 5353, False, rule="egress[0]")

    run.subtest("Should support a 'deny-egress' policy for UDP protocol at the specified port")
    # egressRule at index2 (Deny slytherin 5353); 53 matches no rule
    run.poke(CEDRIC_DIGGORY_0, "udp", DRACO_MALFOY_0, 5353, False, rule="egress[2]")
    run.poke(CEDRIC_DIGGORY_1, "udp", DRACO_MALFOY_0, 53, True, rule="")
    run.finish()


@BOTH
def test_CNPBaselineTierEgressSCTP(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-standard-egress-sctp-rules.go:
    CNPBaselineTierEgressSCTP"""
    run = conformance("CNPBaselineTierEgressSCTP")
    cnp = manifests.baseline_egress_sctp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-egress' policy for SCTP protocol; ensure rule ordering is respected")  # fmt: skip
    run.poke(LUNA_LOVEGOOD_0, "sctp", HARRY_POTTER_0, 9003, True, rule="egress[0]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", HARRY_POTTER_0, 9005, True, rule="egress[0]")

    run.subtest("Should support an 'allow-egress' policy for SCTP protocol at the specified port")
    # egressRule at index3 (Accept hufflepuff 9003), index4 (Deny hufflepuff)
    run.poke(LUNA_LOVEGOOD_0, "sctp", CEDRIC_DIGGORY_1, 9003, True, rule="egress[3]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", CEDRIC_DIGGORY_1, 9005, False, rule="egress[4]")

    run.subtest("Should support an 'deny-egress' policy for SCTP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["egress"], 0, 1)
    run.patch(cnp)
    run.poke(LUNA_LOVEGOOD_0, "sctp", HARRY_POTTER_1, 9003, False, rule="egress[0]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", HARRY_POTTER_1, 9005, False, rule="egress[0]")

    run.subtest("Should support a 'deny-egress' policy for SCTP protocol at the specified port")
    # egressRule at index2 (Deny slytherin 9003); 9005 matches no rule
    run.poke(LUNA_LOVEGOOD_0, "sctp", DRACO_MALFOY_0, 9003, False, rule="egress[2]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", DRACO_MALFOY_0, 9005, True, rule="")
    run.finish()


@BOTH
def test_CNPBaselineTierIngressTCP(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-standard-ingress-tcp-rules.go:
    CNPBaselineTierIngressTCP"""
    run = conformance("CNPBaselineTierIngressTCP")
    cnp = manifests.baseline_ingress_tcp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-ingress' policy for TCP protocol; ensure rule ordering is respected")  # fmt: skip
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_0, 80, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "tcp", HARRY_POTTER_0, 8080, True, rule="ingress[0]")

    run.subtest("Should support an 'allow-ingress' policy for TCP protocol at the specified port")
    # ingressRule at index3 (Accept hufflepuff 80), index4 (Deny hufflepuff)
    run.poke(CEDRIC_DIGGORY_0, "tcp", HARRY_POTTER_1, 80, True, rule="ingress[3]")
    run.poke(CEDRIC_DIGGORY_1, "tcp", HARRY_POTTER_1, 8080, False, rule="ingress[4]")

    run.subtest("Should not affect egress traffic when only ingress rules are specified")
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 80, True, rule="")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 80, True, rule="")

    run.subtest("Should support an 'deny-ingress' policy for TCP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["ingress"], 0, 1)
    run.patch(cnp)
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_1, 80, False, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "tcp", HARRY_POTTER_1, 8080, False, rule="ingress[0]")

    run.subtest("Should support a 'deny-ingress' policy for TCP protocol at the specified port")
    # ingressRule at index2 (Deny slytherin 80); 8080 matches no rule
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_0, 80, False, rule="ingress[2]")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_0, 8080, True, rule="")
    run.finish()


@BOTH
def test_CNPBaselineTierIngressUDP(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-standard-ingress-udp-rules.go:
    CNPBaselineTierIngressUDP"""
    run = conformance("CNPBaselineTierIngressUDP")
    cnp = manifests.baseline_ingress_udp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-ingress' policy for UDP protocol; ensure rule ordering is respected")  # fmt: skip
    run.poke(LUNA_LOVEGOOD_0, "udp", CEDRIC_DIGGORY_0, 53, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "udp", CEDRIC_DIGGORY_0, 5353, True, rule="ingress[0]")

    run.subtest("Should support an 'allow-ingress' policy for UDP protocol at the specified port")
    # ingressRule at index3 (Accept gryffindor 53), index4 (Deny gryffindor)
    run.poke(HARRY_POTTER_0, "udp", CEDRIC_DIGGORY_1, 53, True, rule="ingress[3]")
    run.poke(HARRY_POTTER_1, "udp", CEDRIC_DIGGORY_1, 5353, False, rule="ingress[4]")

    run.subtest("Should support an 'deny-ingress' policy for UDP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["ingress"], 0, 1)
    run.patch(cnp)
    run.poke(LUNA_LOVEGOOD_0, "udp", CEDRIC_DIGGORY_1, 53, False, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "udp", CEDRIC_DIGGORY_1, 5353, False, rule="ingress[0]")

    run.subtest("Should support a 'deny-ingress' policy for UDP protocol at the specified port")
    # ingressRule at index2 (Deny slytherin 5353); 53 matches no rule
    run.poke(DRACO_MALFOY_0, "udp", CEDRIC_DIGGORY_0, 5353, False, rule="ingress[2]")
    run.poke(DRACO_MALFOY_1, "udp", CEDRIC_DIGGORY_0, 53, True, rule="")
    run.finish()


@BOTH
def test_CNPBaselineTierIngressSCTP(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-standard-ingress-sctp-rules.go:
    CNPBaselineTierIngressSCTP"""
    run = conformance("CNPBaselineTierIngressSCTP")
    cnp = manifests.baseline_ingress_sctp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-ingress' policy for SCTP protocol; ensure rule ordering is respected")  # fmt: skip
    run.poke(HARRY_POTTER_0, "sctp", LUNA_LOVEGOOD_0, 9003, True, rule="ingress[0]")
    run.poke(HARRY_POTTER_1, "sctp", LUNA_LOVEGOOD_0, 9005, True, rule="ingress[0]")

    run.subtest("Should support an 'allow-ingress' policy for SCTP protocol at the specified port")
    # ingressRule at index3 (Accept hufflepuff 9003), index4 (Deny hufflepuff)
    run.poke(CEDRIC_DIGGORY_0, "sctp", LUNA_LOVEGOOD_1, 9003, True, rule="ingress[3]")
    run.poke(CEDRIC_DIGGORY_1, "sctp", LUNA_LOVEGOOD_1, 9005, False, rule="ingress[4]")

    run.subtest("Should support an 'deny-ingress' policy for SCTP protocol; ensure rule ordering is respected")  # fmt: skip
    swap(cnp["spec"]["ingress"], 0, 1)
    run.patch(cnp)
    run.poke(HARRY_POTTER_0, "sctp", LUNA_LOVEGOOD_1, 9003, False, rule="ingress[0]")
    run.poke(HARRY_POTTER_1, "sctp", LUNA_LOVEGOOD_1, 9005, False, rule="ingress[0]")

    run.subtest("Should support a 'deny-ingress' policy for SCTP protocol at the specified port")
    # ingressRule at index2 (Deny slytherin 9003); 9005 matches no rule
    run.poke(DRACO_MALFOY_0, "sctp", LUNA_LOVEGOOD_0, 9003, False, rule="ingress[2]")
    run.poke(DRACO_MALFOY_1, "sctp", LUNA_LOVEGOOD_0, 9005, True, rule="")
    run.finish()


@BOTH
def test_CNPBaselineTierGress(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-standard-gress-rules.go:
    CNPBaselineTierGress"""
    run = conformance("CNPBaselineTierGress")
    cnp = manifests.baseline_gress_rules_combined()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-gress' policy across different protocols")
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 80, True, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "udp", LUNA_LOVEGOOD_0, 53, True, rule="egress[0]")
    run.poke(HARRY_POTTER_0, "sctp", LUNA_LOVEGOOD_0, 9003, True, rule="egress[0]")
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_0, 80, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "udp", HARRY_POTTER_0, 53, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", HARRY_POTTER_0, 9003, True, rule="ingress[0]")

    run.subtest("Should support an 'allow-gress' policy across different protocols at the specified ports")  # fmt: skip
    # egress: index3 (Accept hufflepuff 8080/5353/9003), index4 (Deny hufflepuff)
    run.poke(HARRY_POTTER_0, "tcp", CEDRIC_DIGGORY_1, 8080, True, rule="egress[3]")
    run.poke(HARRY_POTTER_1, "tcp", CEDRIC_DIGGORY_1, 80, False, rule="egress[4]")
    run.poke(HARRY_POTTER_0, "udp", CEDRIC_DIGGORY_1, 5353, True, rule="egress[3]")
    run.poke(HARRY_POTTER_1, "udp", CEDRIC_DIGGORY_1, 53, False, rule="egress[4]")
    run.poke(HARRY_POTTER_0, "sctp", CEDRIC_DIGGORY_1, 9003, True, rule="egress[3]")
    run.poke(HARRY_POTTER_1, "sctp", CEDRIC_DIGGORY_1, 9005, False, rule="egress[4]")
    # ingress: index3 (Accept hufflepuff 80/5353/9003), index4 (Deny hufflepuff)
    run.poke(CEDRIC_DIGGORY_0, "tcp", HARRY_POTTER_1, 80, True, rule="ingress[3]")
    run.poke(CEDRIC_DIGGORY_1, "tcp", HARRY_POTTER_1, 8080, False, rule="ingress[4]")
    run.poke(CEDRIC_DIGGORY_0, "udp", HARRY_POTTER_1, 5353, True, rule="ingress[3]")
    run.poke(CEDRIC_DIGGORY_1, "udp", HARRY_POTTER_1, 53, False, rule="ingress[4]")
    run.poke(CEDRIC_DIGGORY_0, "sctp", HARRY_POTTER_1, 9003, True, rule="ingress[3]")
    run.poke(CEDRIC_DIGGORY_1, "sctp", HARRY_POTTER_1, 9005, False, rule="ingress[4]")

    run.subtest("Should support an 'deny-gress' policy across different protocols")
    swap(cnp["spec"]["egress"], 0, 1)
    swap(cnp["spec"]["ingress"], 0, 1)
    run.patch(cnp)
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_1, 80, False, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "udp", LUNA_LOVEGOOD_1, 53, False, rule="egress[0]")
    run.poke(HARRY_POTTER_0, "sctp", LUNA_LOVEGOOD_1, 9003, False, rule="egress[0]")
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_1, 80, False, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "udp", HARRY_POTTER_1, 53, False, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "sctp", HARRY_POTTER_1, 9003, False, rule="ingress[0]")

    run.subtest("Should support a 'deny-gress' policy across different protocols at the specified ports")  # fmt: skip
    # index2 (Deny slytherin 80/53/9003); other ports match no rule
    run.poke(HARRY_POTTER_0, "tcp", DRACO_MALFOY_0, 80, False, rule="egress[2]")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 8080, True, rule="")
    run.poke(HARRY_POTTER_0, "udp", DRACO_MALFOY_0, 53, False, rule="egress[2]")
    run.poke(HARRY_POTTER_1, "udp", DRACO_MALFOY_0, 5353, True, rule="")
    run.poke(HARRY_POTTER_0, "sctp", DRACO_MALFOY_0, 9003, False, rule="egress[2]")
    run.poke(HARRY_POTTER_1, "sctp", DRACO_MALFOY_0, 9005, True, rule="")
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_0, 80, False, rule="ingress[2]")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_0, 8080, True, rule="")
    run.poke(DRACO_MALFOY_0, "udp", HARRY_POTTER_0, 53, False, rule="ingress[2]")
    run.poke(DRACO_MALFOY_1, "udp", HARRY_POTTER_0, 5353, True, rule="")
    run.poke(DRACO_MALFOY_0, "sctp", HARRY_POTTER_0, 9003, False, rule="ingress[2]")
    run.poke(DRACO_MALFOY_1, "sctp", HARRY_POTTER_0, 9005, True, rule="")
    run.finish()


# ====================================================== baseline tier: the other fields
@BOTH
def test_CNPBaselineTierPodSelector(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-standard-pod-selector-rules.go:
    CNPBaselineTierPodSelector"""
    run = conformance("CNPBaselineTierPodSelector")
    run.manifests(*manifests.baseline_pod_selector_rules())
    selectors, labelled = "pod-selector-rules", "label-selected-subject-rules"

    run.subtest("Should support pod selectors in egress peers")
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 8080, False, rule=f"{selectors} egress[1]")
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 80, True, rule=f"{selectors} egress[0]")
    run.poke(HARRY_POTTER_1, "tcp", LUNA_LOVEGOOD_1, 80, False, rule=f"{selectors} egress[1]")

    run.subtest("Should support pod selectors in ingress peers")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_1, 80, False, rule=f"{selectors} ingress[1]")
    run.poke(DRACO_MALFOY_0, "tcp", HARRY_POTTER_0, 80, True, rule=f"{selectors} ingress[0]")
    run.set_pod_label(CEDRIC_DIGGORY_0, CONFORMANCE_ROLE, "blocked")
    run.poke(CEDRIC_DIGGORY_0, "tcp", HARRY_POTTER_0, 80, False, rule=f"{selectors} ingress[2]")
    run.poke(CEDRIC_DIGGORY_1, "tcp", HARRY_POTTER_0, 80, True, rule="")
    run.remove_pod_label(CEDRIC_DIGGORY_0, CONFORMANCE_ROLE)
    run.poke(CEDRIC_DIGGORY_0, "tcp", HARRY_POTTER_0, 80, True, rule="")
    run.set_pod_label(CEDRIC_DIGGORY_1, CONFORMANCE_ROLE, "blocked")
    run.poke(CEDRIC_DIGGORY_1, "tcp", HARRY_POTTER_0, 80, False, rule=f"{selectors} ingress[2]")
    # t.Cleanup
    run.remove_pod_label(CEDRIC_DIGGORY_0, CONFORMANCE_ROLE)
    run.remove_pod_label(CEDRIC_DIGGORY_1, CONFORMANCE_ROLE)

    run.subtest("Should support pod selectors in the subject")
    run.poke(DRACO_MALFOY_0, "tcp", LUNA_LOVEGOOD_1, 80, True, rule="")
    run.set_pod_label(LUNA_LOVEGOOD_0, CONFORMANCE_ROLE, "restricted")
    run.poke(LUNA_LOVEGOOD_0, "tcp", DRACO_MALFOY_0, 80, False, rule=f"{labelled} egress[0]")
    run.poke(LUNA_LOVEGOOD_1, "tcp", DRACO_MALFOY_0, 80, True, rule="")
    run.remove_pod_label(LUNA_LOVEGOOD_0, CONFORMANCE_ROLE)
    run.poke(LUNA_LOVEGOOD_0, "tcp", DRACO_MALFOY_0, 80, True, rule="")
    run.set_pod_label(LUNA_LOVEGOOD_1, CONFORMANCE_ROLE, "restricted")
    run.poke(LUNA_LOVEGOOD_1, "tcp", DRACO_MALFOY_0, 80, False, rule=f"{labelled} egress[0]")
    run.finish()


@BOTH
def test_CNPBaselineTierPortRange(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-standard-port-range-rules.go:
    CNPBaselineTierPortRange"""
    run = conformance("CNPBaselineTierPortRange")
    run.manifests(manifests.baseline_port_range_rules_combined())

    run.subtest("Should support egress port range rules across different protocols")
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 80, True, rule="egress[0]")
    run.poke(HARRY_POTTER_0, "tcp", LUNA_LOVEGOOD_0, 8080, True, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "udp", LUNA_LOVEGOOD_0, 53, False, rule="egress[3]")
    run.poke(HARRY_POTTER_0, "udp", CEDRIC_DIGGORY_0, 53, True, rule="egress[1]")
    run.poke(HARRY_POTTER_0, "udp", CEDRIC_DIGGORY_0, 5353, True, rule="egress[1]")
    run.poke(HARRY_POTTER_1, "tcp", CEDRIC_DIGGORY_0, 80, False, rule="egress[3]")
    run.poke(HARRY_POTTER_0, "sctp", DRACO_MALFOY_0, 9003, True, rule="egress[2]")
    run.poke(HARRY_POTTER_0, "sctp", DRACO_MALFOY_0, 9005, True, rule="egress[2]")
    run.poke(HARRY_POTTER_1, "tcp", DRACO_MALFOY_0, 80, False, rule="egress[3]")

    run.subtest("Should support ingress port range rules across different protocols")
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_0, 80, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_0, "tcp", HARRY_POTTER_0, 8080, True, rule="ingress[0]")
    run.poke(LUNA_LOVEGOOD_1, "udp", HARRY_POTTER_0, 53, False, rule="ingress[3]")
    run.poke(CEDRIC_DIGGORY_0, "udp", HARRY_POTTER_0, 53, True, rule="ingress[1]")
    run.poke(CEDRIC_DIGGORY_0, "udp", HARRY_POTTER_0, 5353, True, rule="ingress[1]")
    run.poke(CEDRIC_DIGGORY_1, "tcp", HARRY_POTTER_0, 80, False, rule="ingress[3]")
    run.poke(DRACO_MALFOY_0, "sctp", HARRY_POTTER_0, 9003, True, rule="ingress[2]")
    run.poke(DRACO_MALFOY_0, "sctp", HARRY_POTTER_0, 9005, True, rule="ingress[2]")
    run.poke(DRACO_MALFOY_1, "tcp", HARRY_POTTER_0, 80, False, rule="ingress[3]")
    run.finish()


@BOTH
def test_CNPBaselineTierSamePriority(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-standard-same-priority.go:
    CNPBaselineTierSamePriority"""
    run = conformance("CNPBaselineTierSamePriority")
    run.manifests(*manifests.baseline_same_priority())
    gs, gh, hs = (f"baseline-same-priority-{pair}" for pair in PAIRS)
    gryffindor, slytherin = HARRY_POTTER_1, DRACO_MALFOY_1  # the servers
    hufflepuff, ravenclaw = CEDRIC_DIGGORY_1, LUNA_LOVEGOOD_1

    run.subtest("Should deny traffic in both directions for each same-priority policy")
    run.poke(DRACO_MALFOY_0, "tcp", gryffindor, 80, False, rule=f"{gs} ingress[0]")
    run.poke(HARRY_POTTER_0, "tcp", slytherin, 80, False, rule=f"{gs} egress[0]")
    run.poke(CEDRIC_DIGGORY_0, "tcp", gryffindor, 80, False, rule=f"{gh} ingress[0]")
    run.poke(HARRY_POTTER_1, "tcp", hufflepuff, 80, False, rule=f"{gh} egress[0]")
    run.poke(DRACO_MALFOY_1, "tcp", hufflepuff, 8080, False, rule=f"{hs} ingress[0]")
    run.poke(CEDRIC_DIGGORY_1, "tcp", slytherin, 8080, False, rule=f"{hs} egress[0]")

    run.subtest("Should not apply one same-priority policy's rules to another policy's subject")
    run.poke(DRACO_MALFOY_0, "tcp", gryffindor, 8080, True, rule="")
    run.poke(HARRY_POTTER_0, "tcp", slytherin, 8080, True, rule="")
    run.poke(DRACO_MALFOY_1, "tcp", hufflepuff, 80, True, rule="")
    run.poke(CEDRIC_DIGGORY_0, "tcp", slytherin, 80, True, rule="")

    run.subtest("Should not affect traffic matching no same-priority policy")
    run.poke(LUNA_LOVEGOOD_0, "tcp", gryffindor, 80, True, rule="")
    run.poke(HARRY_POTTER_0, "tcp", ravenclaw, 80, True, rule="")
    run.finish()


@BOTH
def test_CNPBaselineTierEgressInlineCIDRPeers(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-standard-egress-inline-cidr-rules.go:
    CNPBaselineTierEgressInlineCIDRPeers"""
    run = conformance("CNPBaselineTierEgressInlineCIDRPeers")
    cnp = manifests.baseline_egress_inline_cidr_rules()
    run.manifests(cnp)
    _inline_cidr_subtests(run, cnp)
    run.finish()


# ===================================================== baseline tier: experimental
@BOTH
def test_CNPBaselineTierEgressNamedPort(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-experimental-egress-rules.go:
    CNPBaselineTierEgressNamedPort (experimental: named ports)"""
    run = conformance("CNPBaselineTierEgressNamedPort")
    cnp = manifests.baseline_egress_udp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-egress' policy for named port")
    # egressRule at index3 becomes "dns", which the pods declare as UDP 53
    cnp["spec"]["egress"][3]["protocols"] = [cnp_named_port("dns")]
    run.patch(cnp)
    run.poke(CEDRIC_DIGGORY_0, "udp", HARRY_POTTER_1, 53, True, rule="egress[3]")
    run.poke(
        CEDRIC_DIGGORY_1, "udp", HARRY_POTTER_1, 5353, False, rule="egress[4]"
    )  # index4 (Deny)
    run.finish()


@BOTH
def test_CNPBaselineTierIngressNamedPort(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-experimental-ingress-rules.go:
    CNPBaselineTierIngressNamedPort (experimental: named ports)"""
    run = conformance("CNPBaselineTierIngressNamedPort")
    cnp = manifests.baseline_ingress_tcp_rules()
    run.manifests(cnp)

    run.subtest("Should support an 'allow-ingress' policy for named port")
    # ingressRule at index3 becomes "web", which the pods declare as TCP 80
    cnp["spec"]["ingress"][3]["protocols"] = [cnp_named_port("web")]
    run.patch(cnp)
    run.poke(CEDRIC_DIGGORY_0, "tcp", HARRY_POTTER_1, 80, True, rule="ingress[3]")
    run.poke(
        CEDRIC_DIGGORY_1, "tcp", HARRY_POTTER_1, 8080, False, rule="ingress[4]"
    )  # index4 (Deny)
    run.finish()


@BOTH
def test_CNPBaselineTierEgressNodePeers(conformance: Start) -> None:
    """conformance/tests/baseline-admin-network-policy-experimental-egress-rules.go:
    CNPBaselineTierEgressNodePeers (experimental: node peers).  centaur-1 is a
    hostNetwork pod: the server is its node, node-2 (the clients are on node-1)."""
    run = conformance("CNPBaselineTierEgressNodePeers")
    run.manifests(manifests.baseline_experimental_egress_selector_rules())
    p = HOST_NETWORK_PORTS

    run.subtest("Should support an 'allow-egress' rule policy for egress-node-peer")
    # egressRule at index0 (Accept TCP p0-p1 to nodes)
    run.poke(HARRY_POTTER_0, "tcp", CENTAUR_1, p[0], True, rule="egress[0]")
    run.poke(HARRY_POTTER_1, "tcp", CENTAUR_1, p[1], True, rule="egress[0]")

    run.subtest("Should support a 'deny-egress' rule policy for egress-node-peer")
    # egressRule at index1 (Deny nodes and everywhere)
    run.poke(HARRY_POTTER_1, "udp", CENTAUR_1, p[4], False, rule="egress[1]")
    run.poke(HARRY_POTTER_1, "sctp", CENTAUR_1, p[6], False, rule="egress[1]")
    run.finish()
