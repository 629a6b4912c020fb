"""The lab proves itself: real traffic, hand-written iptables rules, no agent involved."""

from __future__ import annotations

import time
from typing import Literal

import pytest
import yaml

from tests.lab.background import ContinuousProber
from tests.lab.nsutil import read_sysctl, run
from tests.lab.prober import (
    ALL_PORT_PROTOCOLS,
    Probe,
    Prober,
    Verdict,
)
from tests.lab.sctp import build_init, crc32c, parse_sctp
from tests.lab.topology import Endpoint, Lab

Flavor = Literal["nft", "legacy"]
FLAVORS: tuple[Flavor, ...] = ("nft", "legacy")
FAMILIES = (4, 6)


# ------------------------------------------------------------------------------ no root needed
def test_crc32c_known_vectors() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(b"\0" * 32) == 0x8A9136AA


def test_sctp_init_roundtrip() -> None:
    pkt = build_init(40000, 80, 0xDEADBEEF)
    init = parse_sctp(pkt, "10.0.0.1")
    assert init is not None
    assert (init.sport, init.dport, init.init_tag, init.checksum_ok) == (
        40000,
        80,
        0xDEADBEEF,
        True,
    )
    corrupt = pkt[:-1] + bytes([pkt[-1] ^ 1])
    bad = parse_sctp(corrupt, "10.0.0.1")
    assert bad is not None and not bad.checksum_ok


# ------------------------------------------------------------------------------ helpers
def _insert(
    lab: Lab, node: str, flavor: Flavor, family: int, *rule: str, table: str = "filter"
) -> None:
    """``-I`` a rule tagged with the lab comment (so reset_firewall removes it)."""
    chain, *spec = rule
    lab.iptables(node, "-t", table, "-I", chain, *spec, *lab.lab_comment(), family=family,
                 flavor=flavor)  # fmt: skip


def _report(title: str, m_elapsed: float, n: int, text: str) -> None:
    print(f"\n=== {title}: {n} probes in {m_elapsed:.3f}s ===\n{text}")


# ------------------------------------------------------------------------------ topology
@pytest.mark.lab
def test_topology_sysctls_and_addresses(lab: Lab) -> None:
    for node in lab.nodes.values():
        assert read_sysctl(node.netns, "net.bridge.bridge-nf-call-iptables") == "1"
        assert read_sysctl(node.netns, "net.bridge.bridge-nf-call-ip6tables") == "1"
        assert read_sysctl(node.netns, "net.ipv4.ip_forward") == "1"
        assert read_sysctl(node.netns, "net.ipv6.conf.all.forwarding") == "1"
    # every name carries the prefix and fits IFNAMSIZ
    for ns in lab.all_netns():
        assert ns.startswith(lab.prefix + "-")
        links = run(["ip", "-o", "link", "show"], netns=ns).stdout
        for line in links.splitlines():
            ifname = line.split(":", 2)[1].strip().split("@", 1)[0]
            assert ifname == "lo" or (ifname.startswith(lab.prefix) and len(ifname) <= 15), ifname
    # nothing of ours in the root namespace
    assert lab.prefix not in run(["ip", "-o", "link", "show"]).stdout


@pytest.mark.lab
def test_objects_and_state_file(lab: Lab, tmp_path: object) -> None:
    objs = lab.objects()
    kinds = [o["kind"] for o in objs]
    assert kinds.count("Namespace") == 3 and kinds.count("Pod") == 9 and kinds.count("Node") == 2
    xa = next(o for o in objs if o["kind"] == "Pod" and o["metadata"]["name"] == "a"
              and o["metadata"]["namespace"] == "x")  # fmt: skip
    assert xa["metadata"]["labels"] == {"pod": "a"}
    assert xa["spec"]["nodeName"] == "node-1"
    ports = [p for c in xa["spec"]["containers"] for p in c["ports"]]
    assert {"name": "serve-80-sctp", "containerPort": 80, "protocol": "SCTP"} in ports
    assert len(ports) == 6
    assert [ip["ip"] for ip in xa["status"]["podIPs"]] == [lab.pod("x/a").ipv4, lab.pod("x/a").ipv6]
    ns_y = next(o for o in objs if o["kind"] == "Namespace" and o["metadata"]["name"] == "y")
    assert ns_y["metadata"]["labels"] == {"ns": "y", "kubernetes.io/metadata.name": "y"}
    node2 = next(o for o in objs if o["kind"] == "Node" and o["metadata"]["name"] == "node-2")
    assert [a["address"] for a in node2["status"]["addresses"] if a["type"] == "InternalIP"] == [
        lab.node("node-2").wan_v4,
        lab.node("node-2").wan_v6,
    ]
    assert lab.workdir is not None
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"namespace": "x", "name": "deny"}, "spec": {"podSelector": {}}}  # fmt: skip
    path = lab.write_state(lab.workdir / "t.yaml", [policy])
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == len(objs) + 1 and docs[-1] == policy
    argv = lab.agent_argv("node-1", path, backend="nft")
    assert argv[:4] == ["ip", "netns", "exec", lab.node("node-1").netns]
    assert argv[4].endswith("/bin/netpol-agent")
    assert argv[5:] == ["run", "--once", "--node", "node-1", "--source-file", str(path),
                        "--backend", "nft", "--chain-prefix", lab.prefix]  # fmt: skip


# ------------------------------------------------------------------------------ connectivity
@pytest.mark.lab
def test_no_policy_everything_reaches_everything(clean_lab: Lab, prober: Prober) -> None:
    # the e2e matrix: 9 pods + external host, 80/81 TCP/UDP, v4 and v6 …
    t0 = time.monotonic()
    m = prober.matrix(families=FAMILIES)
    wall = time.monotonic() - t0
    _report("e2e matrix 80/81 TCP+UDP v4+v6", wall, len(m), m.render(port=80, protocol="TCP"))
    assert len(m) == 10 * 10 * 4 * 2
    m.assert_matches(True)
    # … plus SCTP and every node as a source
    m = prober.matrix(
        sources=[*prober.endpoints], port_protocols=ALL_PORT_PROTOCOLS, families=FAMILIES
    )
    _report("all endpoints incl. nodes, +SCTP", m.elapsed, len(m), m.render(protocol="SCTP",
            family=6, port=81))  # fmt: skip
    m.assert_matches(True)
    assert wall < 5.0


@pytest.mark.lab
@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("new_only", [False, True], ids=["plain", "ctstate-new"])
def test_forward_drop_isolates_exactly_one_pod(
    clean_lab: Lab, prober: Prober, flavor: Flavor, new_only: bool
) -> None:
    lab = clean_lab
    target = "y/b"  # on node-2
    node = lab.pod(target).spec.node
    for fam in FAMILIES:
        ct = ["-m", "conntrack", "--ctstate", "NEW"] if new_only else []
        _insert(lab, node, flavor, fam, "FORWARD", "-d", lab.pod(target).ip(fam), *ct, "-j", "DROP")
    # (exactly one flavour holds rules)
    assert "DROP" in lab.ruleset_dump(node)

    def expected(p: Probe) -> bool:
        if p.src == p.dst:
            return True  # a pod always reaches itself (loopback)
        if p.dst == target:
            return p.src == node  # only its own node gets through (OUTPUT, not FORWARD)
        # without the NEW restriction the replies to the pod are dropped too (except for the
        # one-way SCTP INIT)
        return not (p.src == target and not new_only and p.protocol != "SCTP")

    sources = [*(e.name for e in lab.endpoints()), *lab.nodes]
    m = prober.matrix(sources=sources, port_protocols=ALL_PORT_PROTOCOLS, families=FAMILIES)
    _report(f"DROP -d {target} ({flavor}, {'NEW' if new_only else 'all'})", m.elapsed, len(m),
            m.render(port=80, protocol="UDP", family=6))  # fmt: skip
    m.assert_matches(expected)

    # and the reset really brings everything back
    lab.reset_firewall()
    prober.matrix(sources=sources, port_protocols=ALL_PORT_PROTOCOLS,
                  families=FAMILIES).assert_matches(True)  # fmt: skip


@pytest.mark.lab
@pytest.mark.parametrize("flavor", FLAVORS)
def test_sctp_is_matched_and_tracked(clean_lab: Lab, prober: Prober, flavor: Flavor) -> None:
    """A `-p sctp --dport 80` rule blocks SCTP/80 only; conntrack sees our INITs as NEW
    (i.e. the crafted CRC32c is valid), so `--ctstate NEW` rules apply to them."""
    lab = clean_lab
    for fam in FAMILIES:
        _insert(lab, "node-2", flavor, fam, "FORWARD", "-p", "sctp", "--dport", "80",
                "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")  # fmt: skip
    dsts = [p for p, i in lab.pods.items() if i.spec.node == "node-2"]
    m = prober.matrix(destinations=dsts, port_protocols=ALL_PORT_PROTOCOLS, families=FAMILIES)
    m.assert_matches(lambda p: p.src == p.dst or not (p.protocol == "SCTP" and p.port == 80))
    # conntrack on node-2 holds SCTP entries for the allowed port 81
    out = run(["conntrack", "-L", "-p", "sctp"], netns=lab.node("node-2").netns).stdout
    assert "dport=81" in out, out


@pytest.mark.lab
def test_refused_and_errors_are_not_denied(clean_lab: Lab, prober: Prober) -> None:
    lab = clean_lab
    # nothing listens on 82: TCP RST and ICMP port unreachable → REFUSED, fast
    for fam in FAMILIES:
        for proto in ("TCP", "UDP"):
            r = prober.probe("x/a", "z/c", 82, proto, fam)
            assert r.verdict is Verdict.REFUSED, r
            assert r.elapsed < 0.5
    # an admin-prohibited REJECT is an error, not a timeout
    _insert(lab, "node-2", "nft", 4, "FORWARD", "-d", lab.pod("z/c").ipv4, "-p", "tcp",
            "-j", "REJECT", "--reject-with", "icmp-admin-prohibited")  # fmt: skip
    r = prober.probe("x/a", "z/c", 80, "TCP", 4)
    assert r.verdict is Verdict.ERROR and "EHOSTUNREACH" in r.detail, r


@pytest.mark.lab
def test_extra_served_port(clean_lab: Lab, prober: Prober) -> None:
    clean_lab.serve("x/b", 8080, "TCP")
    clean_lab.serve("x/b", 8080, "UDP")
    for fam in FAMILIES:
        for proto in ("TCP", "UDP", "SCTP"):
            assert prober.probe("z/c", "x/b", 8080, proto, fam).allowed


@pytest.mark.lab
@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("backend_pod", ["x/c", "y/c"], ids=["other-node", "same-node"])
def test_service_dnat_then_policy_on_backend(
    clean_lab: Lab, prober: Prober, flavor: Flavor, backend_pod: str
) -> None:
    """kube-proxy style DNAT (ClusterIP:80 → pod:81) on the client's node works through the
    lab, both routed (other node) and bridged (same node, reply un-NATed by br_netfilter);
    a FORWARD rule on the *backend's* pod IP and port 81 then blocks the Service too."""
    lab = clean_lab
    client = "x/a"  # node-1
    cluster = {4: "10.96.0.10", 6: "fd00:10:96::a"}
    backend = lab.pod(backend_pod)
    client_node = lab.pod(client).spec.node
    for fam in FAMILIES:
        for proto in ("tcp", "udp"):
            dest = f"{backend.ip(fam)}:81" if fam == 4 else f"[{backend.ip(fam)}]:81"
            _insert(lab, client_node, flavor, fam, "PREROUTING", "-d", cluster[fam], "-p", proto,
                    "--dport", "80", "-j", "DNAT", "--to-destination", dest,
                    table="nat")  # fmt: skip
    svc = Endpoint("svc", backend.netns, cluster[4], cluster[6], "service")
    p = Prober([*lab.endpoints(nodes=True), svc])
    pp = [(80, "TCP"), (80, "UDP")]
    m = p.matrix(sources=[client], destinations=["svc"], port_protocols=pp, families=FAMILIES)
    _report(f"{client} -> ClusterIP -> {backend_pod}", m.elapsed, len(m), m.render())
    m.assert_matches(True)
    # policy is judged after DNAT: drop backend:81 on the backend's node
    for fam in FAMILIES:
        _insert(lab, backend.spec.node, flavor, fam, "FORWARD", "-d", backend.ip(fam),
                "-p", "tcp", "--dport", "81", "-j", "DROP")  # fmt: skip
    m = p.matrix(sources=[client], destinations=["svc"], port_protocols=pp, families=FAMILIES)
    m.assert_matches(lambda pr: pr.protocol == "UDP")


# ------------------------------------------------------------------------------ background
@pytest.mark.lab
@pytest.mark.parametrize("proto", ["UDP", "TCP", "SCTP"])
def test_continuous_prober_counts(clean_lab: Lab, proto: str) -> None:
    lab = clean_lab
    src, dst = "x/a", "z/a"  # cross-node
    cp = ContinuousProber.for_lab(lab, src, dst, 80, proto, 4, interval=0.002).start()
    time.sleep(0.4)
    open_counts = cp.stop()
    assert open_counts.sent > 50, open_counts
    assert open_counts.received == open_counts.sent, open_counts
    if proto != "SCTP":
        assert open_counts.answered == open_counts.sent, open_counts

    _insert(lab, "node-2", "nft", 4, "FORWARD", "-d", lab.pod(dst).ipv4, "-j", "DROP")
    cp = ContinuousProber.for_lab(lab, src, dst, 80, proto, 4, interval=0.002).start()
    time.sleep(0.4)
    closed = cp.stop()
    assert closed.sent > 50 and closed.received == 0 and closed.answered == 0, closed


@pytest.mark.lab
def test_continuous_prober_sees_rule_change(clean_lab: Lab) -> None:
    """Counts move when a DROP appears mid-run: snapshot before, then nothing more arrives."""
    lab = clean_lab
    cp = ContinuousProber.for_lab(lab, "y/a", "y/c", 81, "UDP", 6, interval=0.002).start()
    time.sleep(0.3)
    _insert(lab, "node-1", "legacy", 6, "FORWARD", "-d", lab.pod("y/c").ipv6, "-j", "DROP")
    time.sleep(0.2)  # let in-flight datagrams land
    before = cp.snapshot()
    time.sleep(0.4)
    after = cp.stop()
    assert before.received > 0
    assert after.received == before.received, (before, after)
    assert after.sent > before.sent


# ------------------------------------------------------------------------------ the agent
@pytest.mark.lab
@pytest.mark.parametrize("backend", ["nft", "legacy", "iptc"])
def test_agent_smoke_default_deny_ingress(
    clean_lab: Lab, prober: Prober, backend: Literal["nft", "legacy", "iptc"]
) -> None:
    """End to end through Lab.apply: default-deny ingress in namespace x."""
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": "x", "name": "deny-ingress"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    clean_lab.apply([deny], backend)
    m = prober.matrix(port_protocols=ALL_PORT_PROTOCOLS, families=FAMILIES)
    _report(f"deny ingress in x ({backend})", m.elapsed, len(m), m.render(port=80, protocol="TCP"))
    m.assert_matches(lambda p: p.src == p.dst or not p.dst.startswith("x/"))
    # a pod's own node always reaches it; the other node is an ordinary address
    n = prober.matrix(sources=list(clean_lab.nodes), destinations=["x/a", "x/c"], families=FAMILIES)
    n.assert_matches(lambda p: clean_lab.pod(p.dst).spec.node == p.src)
