"""Dataplane against real iptables (nft, legacy, python-iptables) in a throwaway netns.

Every kernel-touching call runs in one worker thread that has joined the test's network
namespace (setns affects only the calling thread, and processes it spawns inherit it).
The root namespace's tables are never read or written: each call first checks that the
worker is still in the test namespace.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.dataplane import (
    Backend,
    Binaries,
    Dataplane,
    DataplaneSyncError,
    RestoreBackend,
    RestoreError,
    canonical_jump_spec,
    plan_table,
)
from agent.rules import Chain, Family, Match, Rule, Ruleset

pytestmark = pytest.mark.lab

CLONE_NEWNET = 0x40000000
PREFIX = f"T{os.getpid() % 1000}X-"
FOREIGN = f"F{os.getpid() % 1000}X-OTHER"
T = TypeVar("T")

if os.geteuid() != 0 or shutil.which("ip") is None:
    pytest.skip("needs root and iproute2", allow_module_level=True)


class Netns:
    """A run-unique network namespace with a worker thread inside it."""

    def __init__(self) -> None:
        self.name = f"npa-dp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self._path = f"/run/netns/{self.name}"
        self._inode = os.stat(self._path).st_ino
        self._pool = ThreadPoolExecutor(max_workers=1, initializer=self._enter)

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(self._path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {self.name}")
        finally:
            os.close(fd)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def inside() -> T:
            if os.stat("/proc/thread-self/ns/net").st_ino != self._inode:
                raise RuntimeError("worker thread is not in the test namespace")
            return fn(*args, **kwargs)

        return self._pool.submit(inside).result(timeout=600)

    def run(self, *argv: str, check: bool = True) -> str:
        result = self.call(subprocess.run, list(argv), capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} failed: {result.stderr}")
        return result.stdout

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        subprocess.run(["ip", "netns", "delete", self.name], check=False)


@pytest.fixture
def netns() -> Iterator[Netns]:
    namespace = Netns()
    try:
        yield namespace
    finally:
        namespace.close()


# --- backends under test -------------------------------------------------------------

BACKENDS = ("nft", "legacy", "iptc")


def cli_mode(backend_name: str) -> str:
    return "nft" if backend_name == "nft" else "legacy"


def make(backend_name: str, binaries: Binaries | None = None) -> Backend:
    if backend_name == "iptc":
        from agent.dataplane.iptc_backend import IptcBackend

        return IptcBackend(binaries=binaries)
    return RestoreBackend("nft" if backend_name == "nft" else "legacy", binaries=binaries)


def iptables(netns: Netns, backend_name: str, family: Family, *args: str) -> str:
    tool = "iptables" if family is Family.IPV4 else "ip6tables"
    return netns.run(f"{tool}-{cli_mode(backend_name)}", "-w", *args)


def save(netns: Netns, backend_name: str, family: Family) -> str:
    tool = "iptables" if family is Family.IPV4 else "ip6tables"
    return netns.run(f"{tool}-{cli_mode(backend_name)}-save", "-t", "filter")


def our_lines(save_output: str) -> list[str]:
    return [
        line
        for line in save_output.splitlines()
        if line.startswith((f":{PREFIX}", f"-A {PREFIX}")) or PREFIX in line.split(" -j ")[-1]
    ]


# --- a hand-built ruleset ---------------------------------------------------------------


def ctstate(states: str) -> Match:
    return Match("conntrack", (("--ctstate", states),))


def mark(bits: str) -> tuple[tuple[str, str], ...]:
    return (("--set-xmark", bits),)


def v4_ruleset(*, policy_port: str = "53", with_extra: bool = True) -> Ruleset:
    entry = f"{PREFIX}FWD"
    pod = f"{PREFIX}POD-A"
    policy = f"{PREFIX}POL-1"
    extra = f"{PREFIX}EXTRA"
    chains = [
        Chain(
            entry,
            (
                Rule("ACCEPT", "established", matches=(ctstate("RELATED,ESTABLISHED"),)),
                Rule("DROP", "invalid", matches=(ctstate("INVALID"),)),
                Rule(pod, "to pod a", destination="10.1.0.5/32", goto=True),
                Rule("RETURN", "untracked", matches=(ctstate("UNTRACKED"),)),
            )
            + ((Rule(extra, "extra"),) if with_extra else ()),
        ),
        Chain(
            pod,
            (
                Rule("MARK", "clear accept bit", target_options=mark("0x0/0x10000")),
                Rule(
                    policy,
                    "policy 'web' (tcp)",
                    protocol="tcp",
                    matches=(Match("multiport", (("--dports", "80,443,8000:8080"),)),),
                ),
                Rule(
                    policy,
                    "sctp",
                    protocol="sctp",
                    matches=(Match("sctp", (("--dport", "9999"),)),),
                ),
                Rule(
                    "RETURN",
                    "accepted",
                    matches=(Match("mark", (("--mark", "0x10000/0x10000"),)),),
                ),
                Rule("DROP", "default deny"),
            ),
        ),
        Chain(
            policy,
            (
                Rule(
                    "MARK",
                    "dns from ns b",
                    source="10.2.0.0/16",
                    protocol="udp",
                    matches=(Match("udp", (("--dport", policy_port),)),),
                    target_options=mark("0x10000/0x10000"),
                ),
                Rule(
                    "REJECT",
                    "reject the rest",
                    target_options=(("--reject-with", "icmp-port-unreachable"),),
                ),
            ),
        ),
    ]
    if with_extra:
        chains.append(Chain(extra, (Rule("RETURN", ""),)))
    return Ruleset.of(Family.IPV4, entry, chains)


def v6_ruleset() -> Ruleset:
    entry = f"{PREFIX}FWD6"
    return Ruleset.of(
        Family.IPV6,
        entry,
        [
            Chain(
                entry,
                (
                    Rule(
                        "ACCEPT",
                        "neighbour solicitation",
                        protocol="ipv6-icmp",
                        matches=(Match("icmp6", (("--icmpv6-type", "neighbour-solicitation"),)),),
                    ),
                    Rule(
                        "ACCEPT",
                        "neighbour advertisement",
                        protocol="ipv6-icmp",
                        matches=(Match("icmp6", (("--icmpv6-type", "136"),)),),
                    ),
                    Rule(
                        f"{PREFIX}POD6",
                        "pod",
                        destination="fd00:10::5/128",
                        goto=True,
                    ),
                ),
            ),
            Chain(
                f"{PREFIX}POD6",
                (
                    Rule(
                        "RETURN",
                        "web",
                        source="fd00:20::/64",
                        protocol="tcp",
                        matches=(Match("multiport", (("--dports", "80,443"),)),),
                    ),
                    Rule(
                        "REJECT",
                        "deny",
                        target_options=(("--reject-with", "icmp6-adm-prohibited"),),
                    ),
                ),
            ),
        ],
    )


def both() -> dict[Family, Ruleset]:
    return {Family.IPV4: v4_ruleset(), Family.IPV6: v6_ruleset()}


def assert_programmed(netns: Netns, dataplane: Dataplane, rulesets: dict[Family, Ruleset]) -> None:
    for family, ruleset in rulesets.items():
        state = netns.call(dataplane.backend.read, family, PREFIX)
        assert plan_table(ruleset, state).is_noop, f"{family} differs after sync"
        assert {name: c.hashes for name, c in ruleset.chains.items()} == dict(state.chains)


# --- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_apply_then_resync_writes_nothing(netns: Netns, backend_name: str) -> None:
    dataplane = Dataplane(make(backend_name), PREFIX)
    first = netns.call(dataplane.sync, both(), full=False)
    assert first.families[Family.IPV4].chains_created == 4
    assert first.families[Family.IPV6].chains_created == 2
    assert first.rules_written == v4_ruleset().rule_count + v6_ruleset().rule_count
    assert_programmed(netns, dataplane, both())

    v4_save = save(netns, backend_name, Family.IPV4)
    assert f"-A FORWARD {canonical_jump_spec(f'{PREFIX}FWD')}" in v4_save.splitlines()
    assert "--set-xmark 0x10000/0x10000" in v4_save
    assert f"-g {PREFIX}POD-A" in v4_save
    assert "--ctstate UNTRACKED" in v4_save
    assert "--dports 80,443,8000:8080" in v4_save
    assert "-m sctp --dport 9999" in v4_save
    v6_save = save(netns, backend_name, Family.IPV6)
    assert "-p ipv6-icmp -m comment" in v6_save
    assert "--icmpv6-type 135" in v6_save and "--icmpv6-type 136" in v6_save

    second = netns.call(dataplane.sync, both(), full=False)
    assert second.bytes_written == 0
    assert second.rules_written == 0
    assert not second.drift_found


def test_iptc_programs_the_same_rules_as_restore() -> None:
    """libiptc-built rules print exactly like restore-built ones."""
    outputs = []
    for backend_name in ("legacy", "iptc"):
        namespace = Netns()
        try:
            namespace.call(Dataplane(make(backend_name), PREFIX).sync, both(), full=False)
            outputs.append([our_lines(save(namespace, backend_name, family)) for family in Family])
        finally:
            namespace.close()
    # python-iptables round-trips option values through save + shlex before building the
    # entry, which stores a single quote in a comment as \' (cosmetic: the hash word
    # before it is intact). Everything else must be byte-identical.
    quirk = "\\\\\\'"  # iptables-save prints the stored \' as \\\'
    assert [[line.replace(quirk, "\\'") for line in family] for family in outputs[1]] == outputs[0]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_changing_one_chain_rewrites_only_that_chain(netns: Netns, backend_name: str) -> None:
    dataplane = Dataplane(make(backend_name), PREFIX)
    full = netns.call(dataplane.sync, both(), full=False)
    changed = {Family.IPV4: v4_ruleset(policy_port="5353"), Family.IPV6: v6_ruleset()}
    applied = []
    dataplane = Dataplane(
        dataplane.backend, PREFIX, on_applied=[lambda plan, result: applied.append(plan)]
    )
    report = netns.call(dataplane.sync, changed, full=False)
    v4 = report.families[Family.IPV4]
    assert v4.plan.rewritten == (f"{PREFIX}POL-1",)
    assert (v4.chains_created, v4.chains_deleted) == (0, 0)
    assert v4.rules_written == 2
    assert 0 < v4.bytes_written < full.families[Family.IPV4].bytes_written / 2
    assert report.families[Family.IPV6].bytes_written == 0
    assert "--dport 5353" in save(netns, backend_name, Family.IPV4)
    assert_programmed(netns, dataplane, changed)
    # Both families are offered to the listeners (written concurrently, in any order).
    assert sorted(p.family.value for p in applied) == ["ipv4", "ipv6"]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_chain_dropped_from_desired_set_is_deleted(netns: Netns, backend_name: str) -> None:
    dataplane = Dataplane(make(backend_name), PREFIX)
    netns.call(dataplane.sync, both(), full=False)
    smaller = {Family.IPV4: v4_ruleset(with_extra=False)}
    report = netns.call(dataplane.sync, smaller, full=False)
    v4 = report.families[Family.IPV4]
    assert v4.plan.deleted == (f"{PREFIX}EXTRA",)
    assert v4.plan.rewritten == (f"{PREFIX}FWD",)  # it no longer jumps to EXTRA
    assert f"{PREFIX}EXTRA" not in save(netns, backend_name, Family.IPV4)
    assert_programmed(netns, dataplane, smaller)


DRIFTS = {
    "flushed chain": lambda ns, b: iptables(ns, b, Family.IPV4, "-F", f"{PREFIX}POD-A"),
    "jump deleted": lambda ns, b: iptables(
        ns, b, Family.IPV4, "-D", "FORWARD", *canonical_jump_spec(f"{PREFIX}FWD").split()
    ),
    "rule above jump": lambda ns, b: iptables(
        ns, b, Family.IPV4, "-I", "FORWARD", "1", "-s", "192.0.2.1/32", "-j", "ACCEPT"
    ),
    "duplicated jump": lambda ns, b: iptables(
        ns, b, Family.IPV4, "-A", "FORWARD", *canonical_jump_spec(f"{PREFIX}FWD").split()
    ),
    "foreign rule in our chain": lambda ns, b: iptables(
        ns, b, Family.IPV4, "-I", f"{PREFIX}POL-1", "2", "-j", "ACCEPT"
    ),
}


@pytest.mark.parametrize("drift", sorted(DRIFTS))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_full_sync_repairs_drift(netns: Netns, backend_name: str, drift: str) -> None:
    dataplane = Dataplane(make(backend_name), PREFIX)
    netns.call(dataplane.sync, both(), full=False)
    DRIFTS[drift](netns, backend_name)

    report = netns.call(dataplane.sync, both(), full=True)
    assert report.families[Family.IPV4].drift_found
    assert not report.families[Family.IPV6].drift_found
    assert_programmed(netns, dataplane, both())
    forward = [
        line
        for line in save(netns, backend_name, Family.IPV4).splitlines()
        if line.startswith("-A FORWARD")
    ]
    assert forward[0] == f"-A FORWARD {canonical_jump_spec(f'{PREFIX}FWD')}"
    assert sum(PREFIX in line for line in forward) == 1
    if drift == "rule above jump":
        assert "-A FORWARD -s 192.0.2.1/32 -j ACCEPT" in forward  # not ours: kept

    after = netns.call(dataplane.sync, both(), full=False)
    assert after.bytes_written == 0 and not after.drift_found


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_cleanup_removes_ours_and_nothing_else(netns: Netns, backend_name: str) -> None:
    dataplane = Dataplane(make(backend_name), PREFIX)
    netns.call(dataplane.sync, both(), full=False)
    for family in Family:
        iptables(netns, backend_name, family, "-N", FOREIGN)
        iptables(netns, backend_name, family, "-A", FOREIGN, "-j", "RETURN")
        iptables(netns, backend_name, family, "-A", "FORWARD", "-j", FOREIGN)
    before = {family: save(netns, backend_name, family) for family in Family}

    results = netns.call(dataplane.cleanup)
    assert results[Family.IPV4].chains_deleted == 4
    assert results[Family.IPV6].chains_deleted == 2
    for family in Family:
        after = save(netns, backend_name, family)
        assert PREFIX not in after
        kept = [line for line in before[family].splitlines() if PREFIX not in line]
        assert [line for line in after.splitlines() if not line.startswith("#")] == [
            line for line in kept if not line.startswith("#")
        ]
    again = netns.call(dataplane.cleanup)
    assert all(result.bytes_written == 0 for result in again.values())


def failing_binaries(tmp_path: Path, backend_name: str) -> Binaries:
    """Real restore binaries that corrupt the port 5353 of our payload into a bad one.

    The transaction then fails after it declared (flushed) every chain it rewrites,
    which is exactly where a non-atomic writer would leave a half-written table.
    """
    mode = "legacy" if backend_name == "iptc" else backend_name
    real = Binaries.for_mode(mode)  # type: ignore[arg-type]
    paths = []
    for family in Family:
        script = tmp_path / f"failing-restore-{family.value}"
        script.write_text(
            "#!/bin/sh\n"
            f"sed 's/--dport 5353/--dport notaport/' | exec {real.restore(family)} \"$@\"\n"
        )
        script.chmod(0o755)
        paths.append(str(script))
    return Binaries(paths[0], paths[1], real.save_v4, real.save_v6)


@pytest.mark.parametrize("backend_name", ("nft", "legacy"))
def test_failing_restore_raises_and_changes_nothing(
    netns: Netns, backend_name: str, tmp_path: Path
) -> None:
    good = Dataplane(make(backend_name), PREFIX)
    netns.call(good.sync, both(), full=False)
    before = save(netns, backend_name, Family.IPV4)

    failing = Dataplane(make(backend_name, failing_binaries(tmp_path, backend_name)), PREFIX)
    changed = {Family.IPV4: v4_ruleset(policy_port="5353", with_extra=False)}
    with pytest.raises(DataplaneSyncError) as caught:
        netns.call(failing.sync, changed, full=True)
    error = caught.value.errors[Family.IPV4]
    assert isinstance(error, RestoreError)
    assert error.line is not None and error.line.startswith(f"-A {PREFIX}POL-1 -s 10.2.0.0/16")
    assert "--dport 5353" in error.line
    assert "notaport" in error.stderr
    assert save(netns, backend_name, Family.IPV4).splitlines()[2:-2] == before.splitlines()[2:-2]


def test_iptc_failure_raises_and_changes_nothing(netns: Netns) -> None:
    dataplane = Dataplane(make("iptc"), PREFIX)
    netns.call(dataplane.sync, both(), full=False)
    before = save(netns, "iptc", Family.IPV4)

    broken = v4_ruleset(policy_port="5353", with_extra=False)
    bad_rule = Rule("RETURN", "bad", protocol="tcp", matches=(Match("tcp", (("--dport", "x"),)),))
    last = broken.chains[f"{PREFIX}POL-1"]
    chains = dict(broken.chains)
    chains[last.name] = Chain(last.name, (*last.rules, bad_rule))
    broken = replace(broken, chains=chains)
    with pytest.raises(DataplaneSyncError) as caught:
        netns.call(dataplane.sync, {Family.IPV4: broken}, full=True)
    error = caught.value.errors[Family.IPV4]
    assert isinstance(error, RestoreError)
    assert error.line is not None and "--dport x" in error.line
    assert save(netns, "iptc", Family.IPV4).splitlines()[2:-2] == before.splitlines()[2:-2]

    # A failure forces the next sync of that family to be full.
    report = netns.call(dataplane.sync, both(), full=False)
    assert report.families[Family.IPV4].full
    assert report.families[Family.IPV4].chains_rewritten == 4


def test_detection_follows_the_kubelet_hint(netns: Netns) -> None:
    from agent.dataplane import detect_mode

    assert netns.call(detect_mode) == "nft"  # nothing anywhere: nft
    netns.run("iptables-legacy", "-w", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    assert netns.call(detect_mode) == "legacy"
    netns.run("ip6tables-nft", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")
    assert netns.call(detect_mode) == "nft"  # nft's hint wins, as in iptables-wrappers


# --- whatever bytes the kernel hands back ----------------------------------------------

# 240 emoji in a comment: the kernel keeps 255 bytes, cutting a 4-byte character.
EMOJI_COMMENT = "npa:0123456789abcdef " + "\U0001f600" * 240


@pytest.mark.parametrize("backend_name", ["nft", "legacy"])
def test_a_comment_cut_mid_character_does_not_break_reading_or_detection(
    netns: Netns, backend_name: str
) -> None:
    from agent.dataplane.detect import detect_mode

    chain = f"{PREFIX}EMOJI"
    tool = "iptables"
    payload = (
        "*filter\n"
        f":{chain} - [0:0]\n"
        f'-A {chain} -m comment --comment "{EMOJI_COMMENT}" -j ACCEPT\n'
        f'-A FORWARD -m comment --comment "{EMOJI_COMMENT}" -j {chain}\n'
        f'-A FORWARD -m comment --comment "x{EMOJI_COMMENT}" -j ACCEPT\n'
        "COMMIT\n"
    )
    netns.call(
        subprocess.run,
        [f"{tool}-{backend_name}-restore", "--noflush"],
        input=payload.encode(),
        check=True,
    )
    raw = netns.call(
        subprocess.run, [f"{tool}-{backend_name}-save", "-t", "filter"], capture_output=True
    ).stdout
    with pytest.raises(UnicodeDecodeError):
        raw.decode()  # the premise: what the kernel kept is not valid UTF-8

    backend = make(backend_name)
    state = netns.call(backend.read, Family.IPV4, PREFIX)
    assert state.chains[chain] == ("0123456789abcdef",)
    (jump,) = state.forward_jumps
    assert jump.target == chain and not jump.canonical
    # A restart: backend detection reads every table and must not die either.
    assert netns.call(detect_mode) == backend_name
    # The next sync adopts and repairs: our chain is rewritten, the odd jump replaced
    # (deleted by the spec read back, bytes and all).
    dataplane = Dataplane(backend, PREFIX)
    netns.call(dataplane.sync, {Family.IPV4: v4_ruleset()}, full=True)
    assert_programmed(netns, dataplane, {Family.IPV4: v4_ruleset()})
    after = netns.call(backend.read, Family.IPV4, PREFIX)
    assert chain not in after.chains
    assert after.jump_is_correct(f"{PREFIX}FWD")
