"""Backend that writes through libiptc with python-iptables (legacy iptables only).

python-iptables is imported lazily, so the agent runs on nodes without libiptc as long
as this backend is not chosen. All changes of one apply go into one libiptc handle and
one ``iptc_commit``, which replaces the whole table in the kernel atomically.

Two things python-iptables does not do for us:
- it is not thread-safe (one process-wide lock serializes every use), and
- it does not take the xtables lock that iptables-legacy writers share, so a commit
  could overwrite a concurrent writer's change; we take ``/run/xtables.lock`` ourselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sysconfig
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from agent.dataplane.backend import (
    ApplyResult,
    BackendError,
    RestoreError,
    cleanup_with,
)
from agent.dataplane.plan import TablePlan
from agent.dataplane.restore import render_restore
from agent.dataplane.restore_backend import Binaries, save_filter
from agent.dataplane.state import FORWARD, JUMP_COMMENT, ProgrammedState, parse_filter_save
from agent.rules import Family, Match, Rule

LIBIPTC = "libiptc"
DEFAULT_XTABLES_LOCK = "/run/xtables.lock"

# iptables resolves these names itself, without /etc/protocols (often absent in
# containers); python-iptables' IPv6 rule does not know "ipv6-icmp" at all.
_PROTOCOL_NUMBERS = {
    "all": 0,
    "icmp": 1,
    "tcp": 6,
    "udp": 17,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "sctp": 132,
    "udplite": 136,
}

# python-iptables keeps process-wide state (cached Table handles, libxtables globals).
_IPTC_LOCK = threading.Lock()


def _xtables_libdir_candidates() -> list[str]:
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [f"/usr/lib/{multiarch}/xtables"] if multiarch else []
    return [*dirs, "/usr/lib64/xtables", "/usr/lib/xtables", "/usr/libexec/xtables"]


def load_iptc() -> ModuleType:
    """Import python-iptables, pointing it at the xtables extension directory.

    Without XTABLES_LIBDIR, python-iptables runs ``/sbin/ldconfig -N -v`` at import to
    find the extensions (Debian: /usr/lib/x86_64-linux-gnu/xtables); that fails where
    ldconfig is missing, so we set the variable when a known directory exists.
    """
    if "XTABLES_LIBDIR" not in os.environ:
        for candidate in _xtables_libdir_candidates():
            if os.path.isdir(candidate):
                os.environ["XTABLES_LIBDIR"] = candidate
                break
    try:
        import iptc
    except Exception as error:  # ImportError, XTablesError, OSError from ctypes
        raise BackendError(f"python-iptables is unavailable: {error}") from error
    module: ModuleType = iptc
    return module


@contextlib.contextmanager
def xtables_lock(path: str, wait_seconds: float, poll_seconds: float = 0.05) -> Iterator[None]:
    """Hold the lock iptables-legacy writers share, as ``iptables -w`` does."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BackendError(f"{path} still held after {wait_seconds} s") from None
                time.sleep(poll_seconds)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class IptcBackend:
    def __init__(
        self,
        *,
        binaries: Binaries | None = None,
        lock_path: str | None = None,
        lock_wait_seconds: float = 10.0,
        timeout_seconds: float = 120.0,
    ) -> None:
        self._iptc = load_iptc()
        # Reading goes through iptables-legacy-save: the same parser as the restore
        # backends, and no python-iptables round trip of every rule.
        self._binaries = binaries or Binaries.for_mode("legacy")
        self._lock_path = lock_path or os.environ.get("XTABLES_LOCKFILE", DEFAULT_XTABLES_LOCK)
        self._lock_wait_seconds = lock_wait_seconds
        self._timeout = timeout_seconds

    @property
    def name(self) -> str:
        return "iptc"

    def read(self, family: Family, prefix: str) -> ProgrammedState:
        text = save_filter(self._binaries.save(family), self._timeout)
        try:
            return parse_filter_save(text, family, prefix)
        except ValueError as error:
            raise BackendError(str(error)) from error

    def cleanup(self, family: Family, prefix: str) -> ApplyResult:
        return cleanup_with(self, family, prefix)

    def apply(self, plan: TablePlan) -> ApplyResult:
        if plan.is_noop:
            return ApplyResult.nothing(plan.family, self.name)
        payload = render_restore(plan)  # for the byte count, and to name a failing rule
        with _IPTC_LOCK, xtables_lock(self._lock_path, self._lock_wait_seconds):
            table = self._table(plan.family)
            started = time.monotonic()
            try:
                # A fresh snapshot: the cached handle may be stale or from another netns.
                table.refresh()
                self._stage(table, plan)
                table.commit()
            except RestoreError:
                self._discard(table)
                raise
            except Exception as error:
                self._discard(table)
                raise RestoreError(LIBIPTC, None, str(error)) from error
            seconds = time.monotonic() - started
        return ApplyResult.of(plan, self.name, payload, seconds)

    def _table(self, family: Family) -> Any:
        iptc = self._iptc
        if family is Family.IPV4:
            return iptc.Table(iptc.Table.FILTER, autocommit=False)
        return iptc.Table6(iptc.Table6.FILTER, autocommit=False)

    def _discard(self, table: Any) -> None:
        # With autocommit off, refresh frees the handle without committing.
        with contextlib.suppress(Exception):
            table.refresh()

    def _stage(self, table: Any, plan: TablePlan) -> None:
        """Make every change of the plan on the handle; nothing reaches the kernel yet."""
        iptc = self._iptc
        # Same order as the restore payload: chains exist and are empty first.
        for change in plan.changes:
            if table.is_chain(change.name):
                table.flush_entries(change.name)  # rewrite, delete, or created meanwhile
            else:
                table.create_chain(change.name)
        for chain in plan.chains_to_write:
            target_chain = iptc.Chain(table, chain.name)
            for line_rule, rule_hash in zip(chain.rules, chain.hashes, strict=True):
                try:
                    target_chain.append_rule(self._build(plan.family, line_rule, rule_hash))
                except Exception as error:
                    raise RestoreError(
                        LIBIPTC,
                        None,
                        str(error),
                        None,
                        f"-A {chain.name} {line_rule.render(rule_hash)}",
                    ) from error
        forward = iptc.Chain(table, FORWARD)
        if plan.jump_removals:
            rules = forward.rules
            # Highest position first, so the earlier positions stay valid.
            for jump in sorted(plan.jump_removals, key=lambda j: j.position, reverse=True):
                rule = rules[jump.position - 1] if jump.position <= len(rules) else None
                if rule is None or _target_name(rule) != jump.target:
                    raise RestoreError(
                        LIBIPTC, None, "FORWARD changed since it was read", None, jump.spec
                    )
                forward.delete_rule(rule)
        if plan.jump_insert:
            assert plan.entry_chain is not None
            jump_rule = self._new_rule(plan.family)
            jump_rule.create_match("comment").comment = JUMP_COMMENT
            jump_rule.create_target(plan.entry_chain)
            forward.insert_rule(jump_rule, 0)
        for name in plan.deleted:
            table.delete_chain(name)

    def _new_rule(self, family: Family) -> Any:
        return self._iptc.Rule() if family is Family.IPV4 else self._iptc.Rule6()

    def _build(self, family: Family, rule: Rule, rule_hash: str) -> Any:
        """The python-iptables rule for one of our rules, field by field."""
        built = self._new_rule(family)
        if rule.source is not None:
            built.src = rule.source
        if rule.destination is not None:
            built.dst = rule.destination
        if rule.protocol is not None:
            built.protocol = _protocol(rule.protocol)
        built.create_match("comment").comment = rule.comment_text(rule_hash)
        for match in rule.matches:
            _add_match(built, match)
        target = built.create_target(rule.target, goto=rule.goto)
        _set_options(target, rule.target_options)
        return built


def _target_name(rule: Any) -> str:
    target = rule.target
    return str(target.name) if target is not None else ""


def _protocol(protocol: str) -> str:
    name = protocol.strip().lower()
    number = _PROTOCOL_NUMBERS.get(name)
    return str(number) if number is not None else name


def _add_match(rule: Any, match: Match) -> None:
    _set_options(rule.create_match(match.module), match.options)


def _set_options(module: Any, options: tuple[tuple[str, str], ...]) -> None:
    """Set ``--opt value`` pairs on a match or target (the compiler negates nothing)."""
    for option, value in options:
        module.parse(option.strip().lstrip("-"), value.strip('"'))
