"""Choose the iptables backend the node already uses, as kube-proxy's images do.

Order: the kubelet's hint chains in the nft mangle table, then in the legacy one; else
whichever has more rules; else nft. A binary that fails or hangs is a transient error:
we retry and then raise, never fall back to legacy on a guess (picking the wrong one
silently splits the node's rules across two tables that both filter traffic).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Literal

from agent.dataplane.backend import ENCODING, ERRORS, Backend, BackendError
from agent.dataplane.restore_backend import Mode, RestoreBackend
from agent.runtime.backoff import Backoff

KUBELET_HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")

Choice = Literal["auto", "nft", "legacy", "iptc"]

# A save runner returns the binary's stdout, None if the binary is not installed, and
# raises BackendError when it failed or timed out.
SaveRunner = Callable[[Sequence[str]], str | None]


class DetectionError(BackendError):
    """The backend could not be determined (after retries)."""


def run_save(argv: Sequence[str], timeout: float = 30.0) -> str | None:
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            encoding=ENCODING,
            errors=ERRORS,  # any bytes in a comment (cut at 255 bytes) must not stop us
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        return None
    except subprocess.TimeoutExpired as error:
        raise BackendError(f"{argv[0]} timed out after {timeout} s") from error
    if result.returncode != 0:
        raise BackendError(f"{' '.join(argv)} failed (exit {result.returncode}): {result.stderr}")
    return result.stdout


def proc_net_dir() -> str:
    # /proc/net follows the main thread's network namespace; thread-self follows the
    # calling thread's, which is what the binaries we spawn from this thread see.
    return "/proc/thread-self/net" if os.path.isdir("/proc/thread-self/net") else "/proc/net"


def legacy_tables(names_file: str) -> frozenset[str] | None:
    """Legacy tables that exist, or None when the legacy modules are not loaded.

    Calling iptables-legacy-save otherwise would load ip_tables and create the tables.
    """
    try:
        with open(names_file, encoding=ENCODING, errors=ERRORS) as handle:
            return frozenset(line.strip() for line in handle if line.strip())
    except FileNotFoundError:
        return None


def detect_mode(
    *,
    runner: SaveRunner = run_save,
    proc_net: str | None = None,
    attempts: int = 3,
    retry_delay_seconds: float = 1.0,
    sleep: Callable[[float], object] = time.sleep,
) -> Mode:
    last_error: BackendError | None = None
    backoff = Backoff(max(retry_delay_seconds, 1e-3), max(retry_delay_seconds, 1e-3) * 4)
    for attempt in range(attempts):
        try:
            return _detect_once(runner, proc_net or proc_net_dir())
        except BackendError as error:
            last_error = error
            if attempt + 1 < attempts and retry_delay_seconds > 0:
                sleep(backoff.next_delay())
    raise DetectionError(f"cannot detect the iptables backend: {last_error}") from last_error


def _detect_once(runner: SaveRunner, proc_net: str) -> Mode:
    legacy_v4 = legacy_tables(os.path.join(proc_net, "ip_tables_names"))
    legacy_v6 = legacy_tables(os.path.join(proc_net, "ip6_tables_names"))
    legacy_saves = [
        (binary, tables)
        for binary, tables in (
            ("iptables-legacy-save", legacy_v4),
            ("ip6tables-legacy-save", legacy_v6),
        )
        if tables
    ]

    for binary in ("iptables-nft-save", "ip6tables-nft-save"):
        if _has_hint(runner([binary, "-t", "mangle"])):
            return "nft"
    for binary, tables in legacy_saves:
        if "mangle" in tables and _has_hint(runner([binary, "-t", "mangle"])):
            return "legacy"

    nft_rules = sum(_rule_lines(runner([b])) for b in ("iptables-nft-save", "ip6tables-nft-save"))
    legacy_rules = sum(_rule_lines(runner([binary])) for binary, _ in legacy_saves)
    return "legacy" if legacy_rules > nft_rules else "nft"


def _has_hint(save_output: str | None) -> bool:
    if save_output is None:
        return False
    return any(
        line.startswith(f":{chain} ")
        for line in save_output.splitlines()
        for chain in KUBELET_HINT_CHAINS
    )


def _rule_lines(save_output: str | None) -> int:
    if save_output is None:
        return 0
    return sum(1 for line in save_output.splitlines() if line.startswith("-"))


def make_backend(
    choice: Choice = "auto",
    *,
    runner: SaveRunner = run_save,
    proc_net: str | None = None,
    attempts: int = 3,
) -> Backend:
    """The backend for an explicit choice, or the detected one for "auto"."""
    if choice == "iptc":
        from agent.dataplane.iptc_backend import IptcBackend

        return IptcBackend()
    if choice in ("nft", "legacy"):
        return RestoreBackend(choice)
    if choice == "auto":
        return RestoreBackend(detect_mode(runner=runner, proc_net=proc_net, attempts=attempts))
    raise ValueError(f"unknown backend {choice!r}; expected auto, nft, legacy or iptc")
