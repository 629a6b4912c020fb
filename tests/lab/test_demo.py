"""``make demo`` is also a test: the AKS walkthrough must match its expected matrices."""

from __future__ import annotations

import os

import pytest

from tests.lab import demo
from tests.lab.nsutil import list_netns

pytestmark = pytest.mark.lab


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the demo needs root (network namespaces, iptables)")


def _our_netns() -> set[str]:
    """Namespaces of labs made by this process (the lab prefix starts with our PID)."""
    return {n for n in list_netns() if n.startswith(f"l{os.getpid() % 10000:04d}")}


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_demo_walkthrough_passes(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = _our_netns()
    rc = demo.main([], environ={"DEMO_BACKEND": backend})
    out = capsys.readouterr().out
    assert rc == 0, out
    for step in demo.STEPS:
        assert f"Step {step.number}: {step.title}" in out
    assert "✔ all 4 steps matched" in out
    assert "ALLOWED: development/frontend" in out and "DENIED: production/frontend" in out
    assert f"iptables-{backend}-save" in out
    assert "\033[" not in out  # captured output is not a terminal: no colour
    assert _our_netns() == before  # the demo's lab is gone


def test_demo_fails_on_a_wrong_expectation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A step whose matrix differs from its expectation makes the demo exit non-zero."""
    deny_all = demo.STEPS[1]
    wrong = demo.Step(
        deny_all.number,
        deny_all.title,
        deny_all.explanation,
        deny_all.policy,
        frozenset({demo.DEV_FRONTEND}),  # not true: the policy denies everyone
    )
    monkeypatch.setattr(demo, "STEPS", (wrong,))
    before = _our_netns()
    rc = demo.main([], environ={})
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "2 of 24 probes differ" in out
    assert "FAILED: step(s) 1 differ" in out
    assert _our_netns() == before


def test_demo_rejects_an_unknown_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main([], environ={"DEMO_BACKEND": "bogus"}) == 2
    assert "DEMO_BACKEND must be one of nft, legacy" in capsys.readouterr().out
