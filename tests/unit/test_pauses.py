"""The collector is paused for exactly one compile."""

from __future__ import annotations

import gc

import pytest

from agent.compiler.pauses import without_gc


def test_paused_inside_and_restored_after_also_on_error() -> None:
    seen: list[bool] = []

    @without_gc
    def compile_once(fail: bool) -> int:
        seen.append(gc.isenabled())
        if fail:
            raise RuntimeError("boom")
        return 7

    assert gc.isenabled()
    assert compile_once(False) == 7
    with pytest.raises(RuntimeError):
        compile_once(True)
    assert seen == [False, False]
    assert gc.isenabled()


def test_a_pause_already_in_place_is_left_alone() -> None:
    @without_gc
    def compile_once() -> bool:
        return gc.isenabled()

    gc.disable()
    try:
        assert compile_once() is False
        assert not gc.isenabled()
    finally:
        gc.enable()
