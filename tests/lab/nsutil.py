"""Low-level network-namespace helpers for the lab (setns on the calling thread, commands).

Python 3.11 has no ``os.setns``; we call libc ``setns(2)`` through ctypes.  A namespace switch
only affects the calling thread, and every switch is undone in a ``finally`` so the thread
always returns to the namespace it started in.  Sockets keep the namespace they were created
in for their whole life, which is what makes one-process servers and probers possible.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


class LabCommandError(RuntimeError):
    """A command run for the lab failed; carries its output."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command failed (rc={returncode}): {' '.join(argv)}\n"
            f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        )


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside network namespace ``name``.

    ``None`` means "stay where you are" (handy for the root namespace in tests).
    """
    if name is None:
        yield
        return
    target = os.open(NETNS_RUN_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(orig)
    finally:
        os.close(target)
        os.close(orig)


def write_sysctl(netns: str, values: dict[str, str]) -> None:
    """Write ``net.*`` sysctls inside ``netns`` (keys in dotted form)."""
    with in_netns(netns):
        for key, value in values.items():
            path = Path("/proc/sys") / key.replace(".", "/")
            path.write_text(value)


def read_sysctl(netns: str, key: str) -> str:
    with in_netns(netns):
        return (Path("/proc/sys") / key.replace(".", "/")).read_text().strip()


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    input_text: str | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run a command (inside ``netns`` via ``ip netns exec`` when given)."""
    full = [*(["ip", "netns", "exec", netns] if netns else []), *argv]
    proc = subprocess.run(
        full, input=input_text, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise LabCommandError(full, proc.returncode, proc.stdout, proc.stderr)
    return proc


def ip_batch(commands: Sequence[str], *, netns: str | None = None) -> None:
    """Run several ``ip`` commands in one process (``ip [-n NS] -batch -``)."""
    if not commands:
        return
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    run(argv, input_text="\n".join(commands) + "\n")


def list_netns() -> list[str]:
    if not NETNS_RUN_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_RUN_DIR.iterdir())


def netns_exists(name: str) -> bool:
    return (NETNS_RUN_DIR / name).exists()
