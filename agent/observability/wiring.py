"""Build the observers (metrics, rule-change log, health) a running agent reports to."""

from __future__ import annotations

import argparse
from typing import Any

from agent.control.outcome import SyncObserver
from agent.control.source import Source


def build(args: argparse.Namespace, source: Source) -> tuple[list[SyncObserver], Any]:
    """The observers for ``run``, and the HTTP server to shut down at exit (or None)."""
    return [], None
