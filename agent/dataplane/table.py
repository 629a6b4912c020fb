"""The dataplane facade: sync desired rulesets into the kernel, one restore per family."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from agent.dataplane.backend import ApplyResult, Backend, BackendError
from agent.dataplane.plan import Drift, TablePlan, expected_state, find_drift, plan_table
from agent.dataplane.state import ProgrammedState
from agent.rules import Family, Ruleset

# Called after each successful apply, e.g. to count restores.
AppliedListener = Callable[[TablePlan, ApplyResult], None]


@dataclass(frozen=True, slots=True)
class FamilySync:
    family: Family
    full: bool  # every desired chain was rewritten
    plan: TablePlan
    result: ApplyResult
    # Differences between the kernel and what we last wrote; None when we have not
    # written anything yet in this process (nothing to compare against).
    drift: Drift | None
    read_seconds: float

    @property
    def drift_found(self) -> bool:
        return self.drift is not None and self.drift.found

    @property
    def chains_created(self) -> int:
        return self.result.chains_created

    @property
    def chains_rewritten(self) -> int:
        return self.result.chains_rewritten

    @property
    def chains_deleted(self) -> int:
        return self.result.chains_deleted

    @property
    def rules_written(self) -> int:
        return self.result.rules_written

    @property
    def bytes_written(self) -> int:
        return self.result.bytes_written

    @property
    def restore_seconds(self) -> float:
        return self.result.duration_seconds


@dataclass(frozen=True, slots=True)
class SyncReport:
    families: Mapping[Family, FamilySync]
    duration_seconds: float

    @property
    def bytes_written(self) -> int:
        return sum(f.bytes_written for f in self.families.values())

    @property
    def rules_written(self) -> int:
        return sum(f.rules_written for f in self.families.values())

    @property
    def drift_found(self) -> bool:
        return any(f.drift_found for f in self.families.values())


class DataplaneSyncError(BackendError):
    """At least one family failed; the others were still synced (see ``report``).

    The failed families are fully rewritten on the next sync.
    """

    def __init__(self, report: SyncReport, errors: Mapping[Family, BackendError]) -> None:
        self.report = report
        self.errors = dict(errors)
        detail = "; ".join(f"{family.value}: {error}" for family, error in errors.items())
        super().__init__(f"dataplane sync failed: {detail}")


class Dataplane:
    """Keeps our chains under ``prefix`` equal to the desired rulesets.

    Each sync plans the difference between the desired rulesets and the programmed
    hashes and applies it in one restore per family. ``verify=True`` (the periodic
    resync) reads the table back and rewrites only what drifted; ``full=True`` (the
    retry after a failure) rewrites every desired chain. After a failure the next sync
    of that family is full regardless.
    """

    def __init__(
        self,
        backend: Backend,
        prefix: str,
        *,
        on_applied: Iterable[AppliedListener] = (),
        read_on_partial: bool = True,
    ) -> None:
        """``read_on_partial=False`` plans partial syncs against what we last wrote
        instead of reading the table back (kube-proxy/Calico style): a partial sync of a
        20k-rule table then costs the write only (tens of ms on nft, instead of ~0.5 s of
        iptables-save). Drift is then found only by full syncs, which always read."""
        if not prefix:
            raise ValueError("the chain prefix must not be empty")
        self.backend = backend
        self.prefix = prefix
        self._listeners = tuple(on_applied)
        self._lock = threading.Lock()
        self._written: dict[Family, Ruleset] = {}
        self._expected: dict[Family, ProgrammedState] = {}
        self._needs_full: set[Family] = set()
        self._read_on_partial = read_on_partial

    def sync(
        self, rulesets: Mapping[Family, Ruleset], *, full: bool, verify: bool = False
    ) -> SyncReport:
        """Program the given families; families not given are left as they are.

        ``verify`` reads the table back even on a partial sync, so chains someone else
        changed (drift) are found and rewritten; ``full`` rewrites every chain.
        """
        started = time.monotonic()
        done: dict[Family, FamilySync] = {}
        errors: dict[Family, BackendError] = {}
        for family, ruleset in rulesets.items():
            if ruleset.family is not family:
                raise ValueError(f"ruleset for {ruleset.family} given as {family}")

        def one(ruleset: Ruleset) -> FamilySync:
            return self._sync_family(ruleset, full=full, verify=verify)

        with self._lock:
            # The two families are separate tables and separate restore processes: write
            # them at the same time. python-iptables (libiptc) is not thread-safe.
            parallel = len(rulesets) > 1 and getattr(self.backend, "parallel_safe", False)
            if parallel:
                with concurrent.futures.ThreadPoolExecutor(len(rulesets)) as pool:
                    futures = {family: pool.submit(one, rs) for family, rs in rulesets.items()}
                outcomes: dict[Family, FamilySync | BaseException] = {
                    family: future.exception() or future.result()
                    for family, future in futures.items()
                }
            else:
                outcomes = {}
                for family, ruleset in rulesets.items():
                    try:
                        outcomes[family] = one(ruleset)
                    except BackendError as error:
                        outcomes[family] = error
            for family, outcome in outcomes.items():
                if isinstance(outcome, FamilySync):
                    done[family] = outcome
                elif isinstance(outcome, BackendError):
                    # The table may not be what we think: compare and rewrite all next time.
                    self._needs_full.add(family)
                    self._expected.pop(family, None)
                    errors[family] = outcome
                else:
                    raise outcome
        report = SyncReport(families=done, duration_seconds=time.monotonic() - started)
        if errors:
            raise DataplaneSyncError(report, errors)
        return report

    def cleanup(self, prefix: str | None = None) -> dict[Family, ApplyResult]:
        """Remove every chain under the prefix and every FORWARD jump into them."""
        with self._lock:
            results = {
                family: self.backend.cleanup(family, prefix or self.prefix) for family in Family
            }
            self._written.clear()
            self._expected.clear()
            return results

    def _sync_family(self, ruleset: Ruleset, *, full: bool, verify: bool) -> FamilySync:
        family = ruleset.family
        force_full = full or family in self._needs_full
        expected = self._expected.get(family)
        read_started = time.monotonic()
        if force_full or verify or self._read_on_partial or expected is None:
            programmed = self.backend.read(family, self.prefix)
            drift = find_drift(expected, programmed) if expected is not None else None
        else:
            programmed, drift = expected, None
        read_seconds = time.monotonic() - read_started
        plan = plan_table(
            ruleset, programmed, force_full=force_full, previous=self._written.get(family)
        )
        result = self.backend.apply(plan)
        self._written[family] = ruleset
        self._expected[family] = expected_state(ruleset, self.prefix)
        self._needs_full.discard(family)
        for listener in self._listeners:
            listener(plan, result)
        return FamilySync(family, force_full, plan, result, drift, read_seconds)
