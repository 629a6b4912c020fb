"""Chaining the CNI plugin into the node's network list: the editing is pure; the file
operations are atomic and idempotent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.control import cni_conf

ENTRY = cni_conf.plugin_entry("/var/run/netpol-agent/cni.sock")

BRIDGE: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "kindnet",
    "plugins": [
        {"type": "ptp", "ipam": {"type": "host-local"}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


def test_the_runtime_picks_the_first_conflist_in_lexical_order() -> None:
    names = ["99-loopback.conf", "20-b.conflist", "10-a.conflist", "05-x.json", ".tmp"]
    assert cni_conf.pick_conflist(names) == "10-a.conflist"
    assert cni_conf.pick_conflist(["10-a.conf"]) is None


def test_our_plugin_goes_last_after_every_plugin_of_the_main_cni() -> None:
    edited = cni_conf.with_plugin(BRIDGE, ENTRY)
    assert [p["type"] for p in edited["plugins"]] == ["ptp", "portmap", "netpol-agent"]
    assert edited["name"] == "kindnet" and edited["cniVersion"] == "1.0.0"
    assert BRIDGE["plugins"][-1]["type"] == "portmap"  # the input is left alone


def test_inserting_twice_changes_nothing() -> None:
    once = cni_conf.with_plugin(BRIDGE, ENTRY)
    assert cni_conf.with_plugin(once, ENTRY) == once


def test_an_entry_not_last_is_moved_to_the_end_and_a_changed_entry_replaced() -> None:
    stale = {**ENTRY, "timeoutSeconds": 3}
    moved = {**BRIDGE, "plugins": [BRIDGE["plugins"][0], stale, BRIDGE["plugins"][1]]}
    edited = cni_conf.with_plugin(moved, ENTRY)
    assert [p["type"] for p in edited["plugins"]] == ["ptp", "portmap", "netpol-agent"]
    assert edited["plugins"][-1] == ENTRY


def test_removing_takes_only_our_plugin_out() -> None:
    assert cni_conf.without_plugin(cni_conf.with_plugin(BRIDGE, ENTRY)) == BRIDGE
    assert cni_conf.without_plugin(BRIDGE) == BRIDGE


def test_a_list_without_plugins_is_refused() -> None:
    with pytest.raises(cni_conf.CniConfError):
        cni_conf.with_plugin({"cniVersion": "1.0.0", "name": "x", "plugins": []}, ENTRY)
    with pytest.raises(cni_conf.CniConfError):
        cni_conf.with_plugin({"cniVersion": "1.0.0", "name": "x"}, ENTRY)


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_a_list_of_a_spec_version_the_plugin_speaks_is_chained(version: str) -> None:
    assert cni_conf.with_plugin({**BRIDGE, "cniVersion": version}, ENTRY)["plugins"][-1] == ENTRY


@pytest.mark.parametrize("version", ["0.2.0", "0.3.0", "2.0.0", None])
def test_a_list_of_another_spec_version_is_left_alone(version: str | None) -> None:
    # the plugin would fail every ADD of that list
    with pytest.raises(cni_conf.CniConfError, match="cniVersion"):
        cni_conf.with_plugin({**BRIDGE, "cniVersion": version}, ENTRY)


def test_insert_and_remove_edit_the_file_in_place_keeping_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "10-kindnet.conflist"
    path.write_text(json.dumps(BRIDGE))
    path.chmod(0o644)
    (tmp_path / "20-other.conflist").write_text(json.dumps(BRIDGE))
    assert cni_conf.insert(str(tmp_path), ENTRY) == str(path)
    assert json.loads(path.read_text())["plugins"][-1] == ENTRY
    assert path.stat().st_mode & 0o777 == 0o644
    assert cni_conf.insert(str(tmp_path), ENTRY) is None  # already there
    assert json.loads((tmp_path / "20-other.conflist").read_text()) == BRIDGE
    assert cni_conf.remove(str(tmp_path)) == str(path)
    assert json.loads(path.read_text()) == BRIDGE
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "10-kindnet.conflist",
        "20-other.conflist",
    ]


def test_insert_into_a_dir_the_main_cni_has_not_written_yet_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(cni_conf.CniConfError, match=r"no \*\.conflist"):
        cni_conf.insert(str(tmp_path), ENTRY)


def test_the_keeper_puts_the_entry_back_when_the_main_cni_rewrites_its_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "10-kindnet.conflist"
    path.write_text(json.dumps(BRIDGE))
    keeper = cni_conf.ConflistKeeper(str(tmp_path), ENTRY)
    keeper.check()
    assert json.loads(path.read_text())["plugins"][-1] == ENTRY
    keeper.check()
    assert keeper.inserted == 1
    rewritten = tmp_path / "new"
    rewritten.write_text(json.dumps(BRIDGE))
    rewritten.replace(path)  # as a CNI installer writes: beside, then renamed
    keeper.check()
    assert json.loads(path.read_text())["plugins"][-1] == ENTRY
    assert keeper.inserted == 2


def test_the_binary_is_copied_executable_and_removed(tmp_path: Path) -> None:
    source = tmp_path / "plugin"
    source.write_bytes(b"\x7fELF...")
    target = cni_conf.install_binary(str(source), str(tmp_path / "bin"))
    assert Path(target).name == "netpol-agent" and Path(target).read_bytes() == b"\x7fELF..."
    assert Path(target).stat().st_mode & 0o777 == 0o755
    assert cni_conf.remove_binary(str(tmp_path / "bin"))
    assert not cni_conf.remove_binary(str(tmp_path / "bin"))
