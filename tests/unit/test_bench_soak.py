"""The soak benchmark still runs (tiny cluster, a few hundred events)."""

from __future__ import annotations

from bench import soak


def test_soak_runs_and_reports_rss() -> None:
    result = soak.run("tiny", 200, 20, batch=20, pod_population=20, policy_population=4)
    assert result["passes"] >= 11
    assert result["rss_after_warmup_kib"] > 0 and result["rss_end_kib"] > 0
