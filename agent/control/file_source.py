"""Cluster state from a file: the embedded default source (``--source-file``).

The file is read by :mod:`agent.model.reader`, exactly as ``render`` and ``explain`` read
it: multi-document YAML or JSON, any ``*List`` expanded. Objects are trimmed exactly as
the Kubernetes source trims them, and delivered as the same ``Change`` batches: everything
at start, then the difference whenever the file changes.

A file that cannot be read or parsed never changes what was delivered: the previous state
stays in force (fail static) and the error is reported once per distinct failure (one log
line, and ``health`` until a good version is read), because emitting "everything was
deleted" for a half-written file would drop every policy. For the same reason an empty
file (0 bytes) after a good one is treated as a half-written file; a file meant to hold no
objects says so with ``---``. Writers should replace the file atomically (write a
temporary file, then rename).
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
from agent.model.reader import ReadError, read_bytes

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


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """The trimmed objects of one version of the file, and what had to be skipped."""

    state: State
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Pending:
    """A new version of the file, read and diffed, not yet delivered."""

    state: State
    stamp: _FileStamp
    digest: bytes
    changes: tuple[Change, ...]


def parse_state(data: bytes, origin: str = "<input>") -> ParsedFile:
    """Read and trim a state file's bytes. Raises ``FileSourceError`` if it is unusable."""
    try:
        read = read_bytes(data, origin)
    except ReadError as error:
        raise FileSourceError(str(error)) from None
    state: State = {kind: {} for kind in Kind}
    problems = list(read.problems)
    for obj, where in zip(read.objects, read.origins, strict=True):
        kind = KINDS_BY_NAME.get(obj["kind"])
        if kind is None:  # a kind the parser reads that this source has no Kind for
            problems.append(f"{where}: {obj['kind']} is not delivered by this source; skipped")
            continue
        trimmed = trim(kind, obj)
        # The reader resolved duplicates already; a key shared by two unusable objects is
        # rejected by parsing either way.
        state[kind][object_key(kind, trimmed)] = trimmed
    return ParsedFile(state, tuple(problems))


class FileSource:
    """A ``Source`` backed by a state file, polled for changes every ``poll_interval``.

    ``start()`` reads the file synchronously and delivers the full initial batch before
    it returns (so ``--once`` needs no waiting); it raises ``FileSourceError`` if that
    first read fails, since there is no previous state to keep. ``poll_interval=None``
    starts no thread: call ``check_now()`` to look for changes.
    """

    def __init__(self, path: str | os.PathLike[str], poll_interval: float | None = 1.0) -> None:
        self._path = Path(path)
        self._poll_interval = poll_interval
        self._checking = threading.Lock()  # one check at a time: the thread vs check_now()
        self._lock = threading.Lock()  # the fields below, for health() from other threads
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink: ChangeSink | None = None
        self._state: State = {kind: {} for kind in Kind}
        self._stamp: _FileStamp | None = None
        self._delivered_stamp: _FileStamp | None = None
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
            data, digest = self._read()
            parsed = parse_state(data, str(self._path))
            self._log_problems(parsed)
        # One batch per kind, like the API source's initial lists; the version is recorded
        # only once every batch was taken.
        for kind in Kind:
            sink([Change(kind, key, obj) for key, obj in parsed.state[kind].items()])
        with self._lock:
            self._commit(parsed.state, stamp, digest)
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
        """Per kind; while the file is unusable every kind has ``connected=False`` and
        ``last_error`` saying why (the previous state stays in force)."""
        with self._lock:
            kinds = {kind: replace(self._health, objects=len(self._state[kind])) for kind in Kind}
        return SourceHealth(kinds)

    def check_now(self) -> list[Change]:
        """Look at the file once; deliver and return the changes (empty if none/broken).

        The new version becomes the one changes are computed from only once the sink has
        taken its batch: if the sink raises, the next check delivers the changes again.
        """
        if self._sink is None:
            raise RuntimeError("FileSource.check_now() before start()")
        with self._checking:
            with self._lock:
                pending = self._check()
            if pending is None:
                return []
            if pending.changes and not self._stopping.is_set():
                try:
                    self._sink(pending.changes)
                except Exception as error:
                    with self._lock:
                        self._stamp = None  # read this version again next time
                        self._report_error(
                            FileSourceError(f"{self._path}: applying the changes failed: {error}")
                        )
                    raise
            with self._lock:
                self._commit(pending.state, pending.stamp, pending.digest)
                self._recovered()
            log.info("%s changed: %d object changes", self._path, len(pending.changes))
            return list(pending.changes)

    def _poll_loop(self) -> None:
        assert self._poll_interval is not None
        last_failure = ""
        while not self._stopping.wait(self._poll_interval):
            try:
                self.check_now()
                last_failure = ""
            except Exception as error:  # the poller must survive a consumer bug
                failure = f"{type(error).__name__}: {error}"
                if failure != last_failure:  # one line per distinct failure, not per poll
                    log.error("%s: delivering changes failed (%s); retrying", self._path, failure)
                    log.debug("delivering changes failed", exc_info=True)
                last_failure = failure

    def _check(self) -> _Pending | None:
        try:
            stamp = self._stat()
        except FileSourceError as error:
            self._report_error(error)
            return None
        if stamp == self._stamp:
            if stamp == self._delivered_stamp:
                self._recovered()  # back as delivered (e.g. moved away and back)
            return None
        # From here on, this version of the file is looked at once: a broken version is
        # reported once, not every poll; the next write changes the stamp.
        self._stamp = stamp
        try:
            data, digest = self._read()
            if digest == self._digest:  # touched, or rewritten with the same bytes
                self._recovered()
                return None
            if not data:
                # Most likely caught between truncate and write by a non-atomic writer.
                raise FileSourceError(
                    f"{self._path}: file is empty (write '---' for a state with no objects)"
                )
            parsed = parse_state(data, str(self._path))
        except FileSourceError as error:
            self._report_error(error)
            return None
        except Exception as error:  # a reader bug must not lose the state nor loop loudly
            self._report_error(
                FileSourceError(f"{self._path}: cannot parse: {type(error).__name__}: {error}")
            )
            return None
        self._log_problems(parsed)
        changes = tuple(
            change
            for kind in Kind
            for change in diff_stores(kind, self._state[kind], parsed.state[kind])
        )
        return _Pending(parsed.state, stamp, digest, changes)

    def _commit(self, state: State, stamp: _FileStamp, digest: bytes) -> None:
        self._state = state
        self._stamp = stamp
        self._delivered_stamp = stamp
        self._digest = digest
        self._health = replace(self._health, last_event_time=time.time())

    def _log_problems(self, parsed: ParsedFile) -> None:
        # Once per version of the file: each version is parsed once.
        for problem in parsed.problems:
            log.warning("%s", problem)

    def _recovered(self) -> None:
        if self._health.last_error is not None:
            log.info("%s: readable again; applying it", self._path)
        self._health = replace(self._health, connected=True, last_error=None)

    def _report_error(self, error: FileSourceError) -> None:
        message = str(error)
        if message != self._health.last_error:  # one line per distinct failure
            log.error("%s; keeping the previous state", message)
        self._health = replace(
            self._health,
            connected=False,
            last_error=message,
            list_errors=self._health.list_errors + 1,
        )

    def _stat(self) -> _FileStamp:
        try:
            status = self._path.stat()
        except OSError as error:
            raise FileSourceError(f"{self._path}: cannot stat: {error.strerror}") from None
        return _FileStamp(status.st_ino, status.st_size, status.st_mtime_ns)

    def _read(self) -> tuple[bytes, bytes]:
        try:
            data = self._path.read_bytes()
        except OSError as error:
            raise FileSourceError(f"{self._path}: cannot read: {error.strerror}") from None
        return data, hashlib.sha256(data).digest()
