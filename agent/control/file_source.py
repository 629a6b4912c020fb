"""Cluster state from a YAML file: the embedded default source (``--source-file``).

The file holds any number of YAML documents, each a Namespace, Pod, NetworkPolicy or
Node (or a ``kind: List`` of them, as ``kubectl get -o yaml`` writes). Objects are
trimmed exactly as the Kubernetes source trims them, and delivered as the same
``Change`` batches: everything at start, then the difference whenever the file changes.

A file that cannot be read or parsed, or is empty, never changes what was delivered:
the previous state stays in force and the error is reported (log + health), because
emitting "everything was deleted" for a half-written file would drop every policy.
Writers should replace the file atomically (write a temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from agent.control.source import (
    Change,
    ChangeSink,
    Kind,
    KindHealth,
    SourceHealth,
    diff_stores,
    object_key,
    trim,
)

log = logging.getLogger(__name__)

KINDS_BY_NAME: Mapping[str, Kind] = {kind.value: kind for kind in Kind}

State = dict[Kind, dict[str, Mapping[str, Any]]]


class FileSourceError(Exception):
    """The state file could not be read or parsed; the message says where and why."""


@dataclass(frozen=True, slots=True)
class _FileStamp:
    """What we compare to notice a change without reading the file every poll."""

    inode: int
    size: int
    mtime_ns: int


def parse_state(text: str, origin: str = "<string>") -> State:
    """Parse and trim a multi-document YAML. Unknown kinds are logged and skipped.

    Raises ``FileSourceError`` if the YAML itself is broken.
    """
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as error:
        raise FileSourceError(f"{origin}: invalid YAML: {error}") from error
    state: State = {kind: {} for kind in Kind}
    for index, document in enumerate(documents, start=1):
        for obj in _expand_lists(document):
            _add_object(state, obj, f"{origin} document {index}")
    return state


def _expand_lists(document: Any) -> list[Any]:
    if document is None:  # an empty document, e.g. a trailing "---"
        return []
    if isinstance(document, Mapping) and document.get("kind") == "List":
        items = document.get("items") or []
        return list(items) if isinstance(items, list) else [items]
    return [document]


def _add_object(state: State, obj: Any, where: str) -> None:
    if not isinstance(obj, Mapping):
        log.warning("%s: not an object (got %s); skipped", where, type(obj).__name__)
        return
    kind = KINDS_BY_NAME.get(str(obj.get("kind")))
    if kind is None:
        log.warning("%s: unsupported kind %r; skipped", where, obj.get("kind"))
        return
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping) or not metadata.get("name"):
        log.warning("%s: %s without metadata.name; skipped", where, kind.value)
        return
    trimmed = trim(kind, obj)
    key = object_key(kind, trimmed)
    if key in state[kind]:
        log.warning("%s: duplicate %s %s; the later one wins", where, kind.value, key)
    state[kind][key] = trimmed


def load_state(path: str | os.PathLike[str]) -> State:
    """Read and parse a state file once (for ``--once``). Raises ``FileSourceError``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise FileSourceError(f"{path}: cannot read: {error}") from error
    return parse_state(text, str(path))


class FileSource:
    """A ``Source`` backed by a YAML file, polled for changes every ``poll_interval``.

    ``start()`` reads the file synchronously and delivers the full initial batch before
    it returns (so ``--once`` needs no waiting); it raises ``FileSourceError`` if that
    first read fails, since there is no previous state to keep. ``poll_interval=None``
    starts no thread: call ``check_now()`` to look for changes.
    """

    def __init__(self, path: str | os.PathLike[str], poll_interval: float | None = 1.0) -> None:
        self._path = Path(path)
        self._poll_interval = poll_interval
        self._lock = threading.Lock()  # one check at a time: the thread vs check_now()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink: ChangeSink | None = None
        self._state: State = {kind: {} for kind in Kind}
        self._stamp: _FileStamp | None = None  # the version last looked at
        self._delivered_stamp: _FileStamp | None = None  # the version last delivered
        self._digest = b""
        self._loaded = False
        self._health = KindHealth()

    @property
    def path(self) -> Path:
        return self._path

    def start(self, sink: ChangeSink) -> None:
        if self._sink is not None:
            raise RuntimeError("FileSource.start() called twice")
        self._sink = sink
        with self._lock:
            stamp = self._stat()
            text, digest = self._read()
            state = parse_state(text, str(self._path))
            # One batch per kind, like the API source's initial lists; recorded only once
            # delivered.
            for kind in Kind:
                sink([Change(kind, key, obj) for key, obj in state[kind].items()])
            self._commit(state, stamp, digest)
            self._loaded = True
            self._health = replace(self._health, listed=True, connected=True)
        if self._poll_interval is not None:
            self._thread = threading.Thread(target=self._poll_loop, name="file-source", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @property
    def synced(self) -> bool:
        return self._loaded

    @property
    def health(self) -> SourceHealth:
        with self._lock:
            kinds = {kind: replace(self._health, objects=len(self._state[kind])) for kind in Kind}
        return SourceHealth(kinds)

    def check_now(self) -> list[Change]:
        """Look at the file once; deliver and return the changes (empty if none/broken)."""
        if self._sink is None:
            raise RuntimeError("FileSource.check_now() before start()")
        with self._lock:
            found = self._check()
            if found is None:
                return []
            changes, state, stamp, digest = found
            if changes and not self._stopping.is_set():
                try:
                    self._sink(changes)
                except Exception as error:
                    # Not recorded as delivered: the next poll reads the file again and
                    # delivers the same batch whole.
                    self._report_error(
                        FileSourceError(f"{self._path}: applying the changes failed: {error}")
                    )
                    raise
            self._commit(state, stamp, digest)
            self._recovered()
            if changes:
                log.info("%s changed: %d object changes", self._path, len(changes))
        return changes

    def _poll_loop(self) -> None:
        assert self._poll_interval is not None
        while not self._stopping.wait(self._poll_interval):
            try:
                self.check_now()
            except Exception:  # the poller must survive a consumer bug; reported above
                log.debug("%s: checking for changes failed", self._path, exc_info=True)

    def _check(self) -> tuple[list[Change], State, _FileStamp, bytes] | None:
        """The changes since the last delivered version and what to commit once they are
        delivered; None when there is nothing to deliver (unchanged or broken)."""
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                if stamp == self._delivered_stamp:
                    self._recovered()  # back as delivered (e.g. moved away and back)
                return None
            text, digest = self._read()
        except FileSourceError as error:
            self._report_error(error)
            return None
        if digest == self._digest:  # touched or rewritten with the same bytes
            self._stamp = stamp
            self._recovered()  # e.g. readable again after a permission fix
            return None
        if not text:
            # Most likely caught between truncate and write by a non-atomic writer (write
            # to a temporary file and rename it instead); a file meant to hold no objects
            # can say so with "---".
            self._stamp = stamp
            self._report_error(FileSourceError(f"{self._path}: file is empty"))
            return None
        try:
            state = parse_state(text, str(self._path))
        except Exception as error:
            # Remember the stamp so one broken version is reported once, not every poll;
            # the next write changes the stamp and is read again.
            self._stamp = stamp
            self._report_error(
                error
                if isinstance(error, FileSourceError)
                else FileSourceError(f"{self._path}: cannot parse: {type(error).__name__}")
            )
            return None
        changes = [
            change for kind in Kind for change in diff_stores(kind, self._state[kind], state[kind])
        ]
        return changes, state, stamp, digest

    def _recovered(self) -> None:
        if self._health.last_error is not None:
            log.info("%s: readable again", self._path)
        self._health = replace(self._health, connected=True, last_error=None)

    def _commit(self, state: State, stamp: _FileStamp, digest: bytes) -> None:
        self._state = state
        self._stamp = stamp
        self._delivered_stamp = stamp
        self._digest = digest
        self._health = replace(self._health, last_event_time=time.time())

    def _report_error(self, error: FileSourceError) -> None:
        log.error("%s; keeping the previous state", error)
        self._health = replace(
            self._health,
            connected=False,
            last_error=str(error),
            list_errors=self._health.list_errors + 1,
        )

    def _stat(self) -> _FileStamp:
        try:
            status = self._path.stat()
        except OSError as error:
            raise FileSourceError(f"{self._path}: cannot stat: {error}") from error
        return _FileStamp(status.st_ino, status.st_size, status.st_mtime_ns)

    def _read(self) -> tuple[str, bytes]:
        try:
            data = self._path.read_bytes()
            return data.decode("utf-8"), hashlib.sha256(data).digest()
        except (OSError, UnicodeDecodeError) as error:
            raise FileSourceError(f"{self._path}: cannot read: {error}") from error
