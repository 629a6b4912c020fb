"""Dataplane: program the compiler's rulesets into iptables' filter table.

Pure parts: ``state`` (parse iptables-save), ``plan`` (diff), ``restore`` (render the
transaction). I/O only in the backends and the ``Dataplane`` facade.
"""

from agent.dataplane.backend import ApplyResult, Backend, BackendError, RestoreError
from agent.dataplane.detect import DetectionError, detect_mode, make_backend
from agent.dataplane.plan import (
    ChainChange,
    ChangeKind,
    Drift,
    RuleAction,
    RuleChange,
    TablePlan,
    expected_state,
    find_drift,
    plan_table,
)
from agent.dataplane.restore import render_restore
from agent.dataplane.restore_backend import Binaries, RestoreBackend
from agent.dataplane.state import (
    JUMP_COMMENT,
    ForwardJump,
    ProgrammedState,
    canonical_jump_spec,
    parse_filter_save,
)
from agent.dataplane.table import Dataplane, DataplaneSyncError, FamilySync, SyncReport

__all__ = [
    "JUMP_COMMENT",
    "ApplyResult",
    "Backend",
    "BackendError",
    "Binaries",
    "ChainChange",
    "ChangeKind",
    "Dataplane",
    "DataplaneSyncError",
    "DetectionError",
    "Drift",
    "FamilySync",
    "ForwardJump",
    "ProgrammedState",
    "RestoreBackend",
    "RestoreError",
    "RuleAction",
    "RuleChange",
    "SyncReport",
    "TablePlan",
    "canonical_jump_spec",
    "detect_mode",
    "expected_state",
    "find_drift",
    "make_backend",
    "parse_filter_save",
    "plan_table",
    "render_restore",
]
