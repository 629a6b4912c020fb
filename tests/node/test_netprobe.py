"""netprobe's behaviour (tests/node/netprobe), against itself on loopback.

Everything runs in one private network namespace held by an ``unshare --net`` process:
nothing is named, nothing outlives the holder, and the machine's own namespace is not
touched. The binary comes from ``tests/node/images.sh netprobe`` (cached).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Probe:
    binary: str
    holder: subprocess.Popen[bytes]

    def argv(self, *args: str) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", self.binary, *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=30)


def _lo_up(pid: int) -> bool:
    argv = ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-br", "link", "show", "lo"]
    return "UP" in subprocess.run(argv, capture_output=True, text=True).stdout.split()[-1]


@pytest.fixture(scope="module")
def probe() -> Iterator[Probe]:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("needs root, unshare and nsenter (a private network namespace)")
    out = subprocess.run(
        ["bash", str(REPO / "tests/node/images.sh"), "netprobe"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    binary = next(
        line.split("=", 1)[1] for line in out.splitlines() if line.startswith("NETPROBE_BIN=")
    )
    holder = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", "ip link set lo up && exec sleep 600"],
        stdin=subprocess.DEVNULL,
    )
    server: subprocess.Popen[bytes] | None = None
    try:
        p = Probe(binary, holder)
        # Wait for lo to be up in the holder's namespace before the server binds.
        deadline = time.monotonic() + 10
        while not _lo_up(holder.pid):
            assert time.monotonic() < deadline, "lo never came up"
            time.sleep(0.05)
        server = subprocess.Popen(
            p.argv("serve", "--tcp", "80,8080,9000", "--udp", "53,9000", "--http", "8080"),
            env={**os.environ, "POD_NAME": "probe-server"},
            stderr=subprocess.DEVNULL,
        )
        while p.run("connect", "tcp", "127.0.0.1:80").returncode != 0:
            assert server.poll() is None, "netprobe serve exited"
            assert time.monotonic() < deadline, "netprobe serve never answered"
            time.sleep(0.05)
        yield p
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0, "serve exits 0 on SIGTERM"
        server = None
    finally:
        if server is not None:
            server.kill()
            server.wait()
        holder.kill()
        holder.wait()


def test_tcp_answers_with_the_pod_name(probe: Probe) -> None:
    for addr in ("127.0.0.1:80", "127.0.0.1:9000", "[::1]:9000"):
        r = probe.run("connect", "tcp", addr)
        assert (r.returncode, r.stdout) == (0, "probe-server\n"), (addr, r)


def test_http_port_serves_healthz_and_plain_connects(probe: Probe) -> None:
    r = probe.run("connect", "tcp", "127.0.0.1:8080")
    assert r.returncode == 0, r
    get = "import urllib.request as u, sys; sys.stdout.write(u.urlopen(sys.argv[1], timeout=5).read().decode())"
    for path, body in (("/healthz", "ok\n"), ("/", "probe-server\n")):
        r = subprocess.run(
            [*probe.argv()[:2], "python3", "-c", get, f"http://127.0.0.1:8080{path}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (r.returncode, r.stdout) == (0, body), (path, r)


def test_udp_echoes(probe: Probe) -> None:
    for addr in ("127.0.0.1:53", "[::1]:9000"):
        r = probe.run("connect", "udp", addr)
        assert r.returncode == 0, (addr, r)
        assert r.stdout.startswith("netprobe "), r


def test_closed_ports_fail_with_1(probe: Probe) -> None:
    assert probe.run("connect", "tcp", "127.0.0.1:81").returncode == 1
    r = probe.run("connect", "udp", "127.0.0.1:54", "--timeout", "300ms")
    assert r.returncode == 1 and "connection refused" in r.stderr, r


def test_usage_errors_exit_2(probe: Probe) -> None:
    assert probe.run("connect", "tcp").returncode == 2
    assert probe.run("connect", "icmp", "127.0.0.1:80").returncode == 2
    assert probe.run("loop", "tcp", "127.0.0.1:80", "--count", "x").returncode == 2
    assert probe.run("serve", "--tcp", "0").returncode == 2


def test_loop_prints_one_line_per_attempt(probe: Probe) -> None:
    r = probe.run("loop", "tcp", "127.0.0.1:80", "--interval", "20ms", "--count", "3")
    assert r.returncode == 0, r
    lines = [line.split(" ", 4) for line in r.stdout.splitlines()]
    assert [(seq, verdict, reply) for _, seq, verdict, _, reply in lines] == [
        ("0", "ok", "probe-server"),
        ("1", "ok", "probe-server"),
        ("2", "ok", "probe-server"),
    ]
    assert all(stamp.endswith("Z") and len(stamp) == 30 for stamp, *_ in lines)
    assert "3 attempts, 3 ok, 0 fail" in r.stderr

    r = probe.run("loop", "udp", "127.0.0.1:54", "--interval", "20ms", "--count", "2")
    assert r.returncode == 0, r
    assert [line.split(" ")[2] for line in r.stdout.splitlines()] == ["fail", "fail"]

    r = probe.run("loop", "udp", "127.0.0.1:53", "--interval", "20ms", "--duration", "100ms")
    verdicts = [line.split(" ")[2] for line in r.stdout.splitlines()]
    assert 2 <= len(verdicts) <= 6 and set(verdicts) == {"ok"}, r


def test_loop_stops_cleanly_on_sigterm(probe: Probe) -> None:
    loop = subprocess.Popen(
        probe.argv("loop", "tcp", "127.0.0.1:80", "--interval", "20ms"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)
    loop.send_signal(signal.SIGTERM)
    out, err = loop.communicate(timeout=10)
    assert loop.returncode == 0, err
    assert out.count(" ok ") >= 3 and "stopping on terminated" in err
