"""The node's own addresses come from the kernel (pyroute2) and follow its changes."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from agent.control.node_addresses import compare_with_node_object
from agent.model.objects import IPAddress

pytestmark = pytest.mark.lab

# Adds 10.9.8.7 either after the watcher started or between its first read and start():
# both must reach on_change (the second is the race a list-then-subscribe order loses).
WATCH = textwrap.dedent(
    """
    import subprocess, sys, threading
    from agent.control.node_addresses import AddressWatcher
    add_before_start = sys.argv[1] == "before-start"
    seen = threading.Event()
    def on_change(addresses):
        if any(str(a) == "10.9.8.7" for a in addresses):
            seen.set()
    def add():
        subprocess.run(["ip", "addr", "add", "10.9.8.7/24", "dev", "dummy0"], check=True)
    watcher = AddressWatcher(on_change)
    print("initial", sorted(map(str, watcher.addresses)), flush=True)
    if add_before_start:
        add()
    watcher.start()
    if not add_before_start:
        add()
    ok = seen.wait(5)
    watcher.stop()
    print("followed" if ok else "missed", flush=True)
    sys.exit(0 if ok else 1)
    """
)


def _watch(netns: str, when: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", WATCH, when],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    name = f"na{os.getpid() % 10000}{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1"],
            ["ip", "link", "set", "dummy0", "up"],
            ["ip", "addr", "add", "192.0.2.10/24", "dev", "dummy0"],
        ):
            subprocess.run(["ip", "netns", "exec", name, *command], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_kernel_addresses_are_read_and_followed_without_loopback(netns: str) -> None:
    result = _watch(netns, "after-start")
    assert result.returncode == 0, result.stdout + result.stderr
    initial = result.stdout.splitlines()[0]
    assert "192.0.2.10" in initial
    assert "127.0.0.1" not in initial and "'::1'" not in initial
    assert "followed" in result.stdout


def test_an_address_added_before_the_watch_starts_is_not_lost(netns: str) -> None:
    result = _watch(netns, "before-start")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10.9.8.7" not in result.stdout.splitlines()[0]
    assert "followed" in result.stdout


def test_node_object_addresses_missing_from_the_kernel_are_reported() -> None:
    import ipaddress

    kernel: list[IPAddress] = [ipaddress.ip_address("192.0.2.10")]
    listed: list[IPAddress] = [
        ipaddress.ip_address("192.0.2.10"),
        ipaddress.ip_address("198.51.100.1"),
    ]
    warnings = compare_with_node_object(kernel, listed, "node-a")
    assert len(warnings) == 1 and "198.51.100.1" in warnings[0] and "node-a" in warnings[0]
