"""The interface every dataplane backend implements, its results and its errors."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.dataplane.plan import TablePlan, plan_table
from agent.dataplane.state import ProgrammedState
from agent.rules import Family


class BackendError(Exception):
    """Talking to the dataplane failed (binary missing, timed out, bad output).

    Callers treat it as transient: retry with a full resync, never guess.
    """


class RestoreError(BackendError):
    """iptables-restore (or the libiptc commit) rejected the transaction.

    Nothing of the transaction was applied: restore commits a table atomically.
    """

    def __init__(
        self,
        binary: str,
        returncode: int | None,
        stderr: str,
        line_number: int | None = None,
        line: str | None = None,
    ) -> None:
        self.binary = binary
        self.returncode = returncode
        self.stderr = stderr
        self.line_number = line_number
        self.line = line
        where = f" at line {line_number}: {line!r}" if line_number is not None else ""
        super().__init__(f"{binary} failed (exit {returncode}){where}: {stderr.strip()}")


@dataclass(frozen=True, slots=True)
class ApplyResult:
    family: Family
    backend: str
    bytes_written: int  # size of the restore payload (the equivalent one for libiptc)
    rules_written: int  # rules in created and rewritten chains
    chains_created: int
    chains_rewritten: int
    chains_deleted: int
    jump_changed: bool
    duration_seconds: float  # the write itself: exec + commit, or libiptc commit

    @classmethod
    def nothing(cls, family: Family, backend: str) -> ApplyResult:
        return cls(family, backend, 0, 0, 0, 0, 0, False, 0.0)

    @classmethod
    def of(cls, plan: TablePlan, backend: str, payload: str, seconds: float) -> ApplyResult:
        return cls(
            family=plan.family,
            backend=backend,
            bytes_written=encoded_size(payload),
            rules_written=plan.rules_to_write,
            chains_created=len(plan.created),
            chains_rewritten=len(plan.rewritten),
            chains_deleted=len(plan.deleted),
            jump_changed=bool(plan.jump_removals) or plan.jump_insert,
            duration_seconds=seconds,
        )


class Backend(Protocol):
    @property
    def name(self) -> str: ...

    def read(self, family: Family, prefix: str) -> ProgrammedState:
        """Our chains' hashes and the FORWARD jumps, as programmed now."""
        ...

    def apply(self, plan: TablePlan) -> ApplyResult:
        """Carry out the plan in one atomic transaction; RestoreError if rejected."""
        ...

    def cleanup(self, family: Family, prefix: str) -> ApplyResult:
        """Remove every chain under ``prefix`` and every FORWARD jump into them."""
        ...


def cleanup_with(backend: Backend, family: Family, prefix: str) -> ApplyResult:
    state = backend.read(family, prefix)
    return backend.apply(plan_table(None, state))


_FAILED_LINE = re.compile(r"line:? (\d+)")


def restore_error(binary: str, returncode: int | None, stderr: str, payload: str) -> RestoreError:
    """Build a RestoreError naming the payload line the binary complained about."""
    match = _FAILED_LINE.search(stderr)
    if match is None:
        return RestoreError(binary, returncode, stderr)
    number = int(match.group(1))
    lines = payload.splitlines()
    line = lines[number - 1] if 0 < number <= len(lines) else None
    return RestoreError(binary, returncode, stderr, number, line)


# What the kernel hands back is any bytes: a comment is cut at 255 bytes, possibly in
# the middle of a UTF-8 character, and other tools write what they like. Undecodable
# bytes become lone surrogates (surrogateescape), so nothing read back can fail to
# decode, and a rule spec read back (e.g. a FORWARD jump to delete) is written back
# byte for byte.
ENCODING = "utf-8"
ERRORS = "surrogateescape"


def encoded_size(text: str) -> int:
    return len(text.encode(ENCODING, ERRORS))


def run(
    argv: Sequence[str], *, stdin: str | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a binary, turning "not there", "hung" and unencodable input into BackendError."""
    try:
        return subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            encoding=ENCODING,
            errors=ERRORS,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as error:
        raise BackendError(f"{argv[0]} not found") from error
    except subprocess.TimeoutExpired as error:
        raise BackendError(f"{argv[0]} timed out after {timeout} s") from error
    except UnicodeEncodeError as error:
        raise BackendError(f"{argv[0]}: the payload is not encodable: {error}") from error
