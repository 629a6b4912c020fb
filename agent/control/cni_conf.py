"""Installing the CNI plugin on a node: its binary in the CNI bin dir, its entry last in the
node's network configuration list; and taking both away again.

The node's network is the first ``*.conflist`` of the conf dir in lexical order (the one
the kubelet's runtime picks). Our entry is the plugin of type ``netpol-agent``; putting it
in is idempotent (an entry already last and equal changes nothing), and it is always moved
to the end, after whatever the main CNI lists, so it sees the final ``prevResult``. Files
are replaced atomically (written beside, then renamed), so the runtime never reads half
a file. The editing itself (``with_plugin``, ``without_plugin``) is pure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

PLUGIN_TYPE = "netpol-agent"
BINARY_NAME = "netpol-agent"
# The spec versions the plugin speaks (cni/main.go): a list of another version would fail
# every ADD, so it is left alone.
SPEC_VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")


class CniConfError(Exception):
    """The conf dir or its network list cannot be used; the message says which file."""


def plugin_entry(
    socket: str, *, timeout: float = 10.0, failure_policy: str = "fail"
) -> dict[str, Any]:
    """Our entry in a network list."""
    if failure_policy not in ("fail", "pass"):
        raise ValueError(f"failure policy is fail or pass, not {failure_policy!r}")
    return {
        "type": PLUGIN_TYPE,
        "socket": socket,
        "timeoutSeconds": timeout,
        "failurePolicy": failure_policy,
    }


def pick_conflist(names: Iterable[str]) -> str | None:
    """The network list the runtime uses: the first ``*.conflist`` in lexical order."""
    lists = sorted(name for name in names if name.endswith(".conflist"))
    return lists[0] if lists else None


def _plugins(conflist: Mapping[str, Any]) -> list[Any]:
    plugins = conflist.get("plugins")
    if not isinstance(plugins, list):
        raise CniConfError("it has no plugins list")
    return plugins


def _ours(plugin: Any) -> bool:
    return isinstance(plugin, dict) and plugin.get("type") == PLUGIN_TYPE


def with_plugin(conflist: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """``conflist`` with ``entry`` as its last plugin (and nowhere else)."""
    version = conflist.get("cniVersion")
    if version not in SPEC_VERSIONS:
        raise CniConfError(
            f"its cniVersion is {version!r}; the plugin speaks {', '.join(SPEC_VERSIONS)}"
        )
    plugins = [plugin for plugin in _plugins(conflist) if not _ours(plugin)]
    if not plugins:
        raise CniConfError("it lists no plugin to chain after")
    return {**conflist, "plugins": [*plugins, dict(entry)]}


def without_plugin(conflist: Mapping[str, Any]) -> dict[str, Any]:
    """``conflist`` without our plugin."""
    return {**conflist, "plugins": [p for p in _plugins(conflist) if not _ours(p)]}


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            conflist = json.load(file)
    except (OSError, ValueError) as error:
        raise CniConfError(f"{path}: cannot read it: {error}") from None
    if not isinstance(conflist, dict):
        raise CniConfError(f"{path}: not a JSON object")
    return conflist


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    directory = os.path.dirname(path) or "."
    # A name the runtime never loads (no .conf/.conflist/.json ending).
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".netpol-agent-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _edit(conf_dir: str, edit: Any) -> str | None:
    """Apply ``edit`` to the node's network list; its path if the file changed."""
    try:
        name = pick_conflist(os.listdir(conf_dir))
    except OSError as error:
        raise CniConfError(f"{conf_dir}: {error}") from None
    if name is None:
        return None
    path = os.path.join(conf_dir, name)
    conflist = _read(path)
    try:
        edited = edit(conflist)
    except CniConfError as error:
        raise CniConfError(f"{path}: {error}") from None
    if edited == conflist:
        return None
    mode = os.stat(path).st_mode & 0o777
    _write_atomically(path, (json.dumps(edited, indent=2) + "\n").encode(), mode)
    return path


def insert(conf_dir: str, entry: Mapping[str, Any]) -> str | None:
    """Put ``entry`` last in the node's network list; the file's path if it changed.
    Raises CniConfError when the dir has no network list yet (the main CNI writes it)."""
    try:
        names = os.listdir(conf_dir)
    except OSError as error:
        raise CniConfError(f"{conf_dir}: {error}") from None
    if pick_conflist(names) is None:
        raise CniConfError(f"{conf_dir}: no *.conflist yet (the node's main CNI writes one)")
    return _edit(conf_dir, lambda conflist: with_plugin(conflist, entry))


def remove(conf_dir: str) -> str | None:
    """Take our plugin out of the node's network list; the file's path if it changed."""
    if not os.path.isdir(conf_dir):
        return None
    return _edit(conf_dir, without_plugin)


def install_binary(source: str, bin_dir: str) -> str:
    """Copy the plugin binary to ``bin_dir/netpol-agent`` (atomically); its path."""
    os.makedirs(bin_dir, exist_ok=True)
    target = os.path.join(bin_dir, BINARY_NAME)
    fd, tmp = tempfile.mkstemp(dir=bin_dir, prefix=".netpol-agent-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def remove_binary(bin_dir: str) -> bool:
    try:
        os.unlink(os.path.join(bin_dir, BINARY_NAME))
    except FileNotFoundError:
        return False
    return True


class ConflistKeeper:
    """Puts our entry back when the main CNI rewrites its network list: a look every
    ``interval`` seconds (a stat and, when the file changed, a read)."""

    def __init__(self, conf_dir: str, entry: Mapping[str, Any], interval: float = 2.0) -> None:
        self.conf_dir = conf_dir
        self.entry = dict(entry)
        self.interval = interval
        self.inserted = 0  # times the entry had to be put (back) in
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: tuple[str, float, int] | None = None
        self._problem = ""

    def check(self) -> None:
        """One look: put the entry back if it is missing or not last."""
        try:
            name = pick_conflist(os.listdir(self.conf_dir))
            if name is None:
                raise CniConfError(f"{self.conf_dir}: no *.conflist yet")
            path = os.path.join(self.conf_dir, name)
            stat = os.stat(path)
            seen = (path, stat.st_mtime, stat.st_ino)
            if seen == self._seen:
                return
            changed = insert(self.conf_dir, self.entry)
            stat = os.stat(path)
            self._seen = (path, stat.st_mtime, stat.st_ino)
            self._problem = ""
            if changed:
                self.inserted += 1
                log.info("cni plugin put in the network list", extra={"kv": {"file": changed}})
        except (OSError, CniConfError) as error:
            if str(error) != self._problem:  # once per distinct problem, not every look
                self._problem = str(error)
                log.warning("cannot put the cni plugin in the network list: %s", error)

    def start(self) -> ConflistKeeper:
        self.check()
        self._thread = threading.Thread(target=self._loop, name="cni-conf", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
