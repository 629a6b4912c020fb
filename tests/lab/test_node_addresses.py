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

WATCH = textwrap.dedent(
    """
    import subprocess, sys, threading
    from agent.control.node_addresses import AddressWatcher
    seen = threading.Event()
    changes = []
    def on_change(addresses):
        changes.append(addresses)
        if any(str(a) == "10.9.8.7" for a in addresses):
            seen.set()
    watcher = AddressWatcher(on_change)
    print("initial", sorted(map(str, watcher.addresses)), flush=True)
    watcher.start()
    subprocess.run(["ip", "addr", "add", "10.9.8.7/24", "dev", "dummy0"], check=True)
    ok = seen.wait(5)
    watcher.stop()
    print("followed" if ok else "missed", flush=True)
    sys.exit(0 if ok else 1)
    """
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
    result = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", WATCH],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    initial = result.stdout.splitlines()[0]
    assert "192.0.2.10" in initial
    assert "127.0.0.1" not in initial and "'::1'" not in initial
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
