"""Liveness, readiness and /metrics over one small HTTP server, plus the log format.

``/healthz``  200 while every registered loop has ticked its heartbeat recently; 500 with
              the stale loop's name otherwise (the kubelet restarts the container).
``/readyz``   200 once the initial sync succeeded, a sync succeeded within
              ``ready_window`` seconds, the source is not failing (a file that cannot
              be read, a list/watch that fails) and no family's last write failed;
              503 otherwise, with one line per failing part, e.g.
              ``source failing: Pod, Namespace: 403 Forbidden…`` or
              ``ipv6 sync failing (3 attempts): ip6tables-restore failed…``.
``/metrics``  the Prometheus exposition of the agent's registry.

The server is stdlib ``http.server`` (``ThreadingHTTPServer``) in a daemon thread: a hung
request cannot block the reconciler, and the process exits without waiting for it.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from agent.control.outcome import SyncOutcome
from agent.control.source import SourceHealth
from agent.rules import Family

log = logging.getLogger("netpol-agent.health")

RECONCILER: Final = "reconciler"
DEFAULT_HEARTBEAT_TIMEOUT: Final = 60.0
# Must exceed the resync period (default 60 s): an idle agent still syncs once a period.
DEFAULT_READY_WINDOW: Final = 300.0


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    reason: str


class HealthState:
    """What /healthz and /readyz answer from; a ``SyncObserver``.

    ``HealthState(heartbeat_timeout=60, ready_window=300, loops=("reconciler",))``. Each
    loop in ``loops`` must call ``heartbeat(loop)`` at least every ``heartbeat_timeout``
    seconds (the reconciler on every iteration of its wait loop, including idle ones); a
    loop that never ticked counts from construction time. Thread-safe.
    """

    def __init__(
        self,
        *,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        ready_window: float = DEFAULT_READY_WINDOW,
        loops: Iterable[str] = (RECONCILER,),
        clock: Callable[[], float] = time.monotonic,
        source_health: Callable[[], SourceHealth] | None = None,
    ) -> None:
        if heartbeat_timeout <= 0 or ready_window <= 0:
            raise ValueError("heartbeat_timeout and ready_window must be positive")
        self.heartbeat_timeout = heartbeat_timeout
        self.ready_window = ready_window
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self._started = now
        self._beats: dict[str, float | None] = {loop: None for loop in loops}
        self._initial_done = False
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._failures_in_a_row = 0
        self._source_health = source_health
        # Per family: (error, failed attempts in a row) while its last write failed.
        self._family_failures: dict[Family, tuple[str, int]] = {}

    def heartbeat(self, loop: str = RECONCILER) -> None:
        now = self._clock()
        with self._lock:
            self._beats[loop] = now

    def changes_queued(self, at: float) -> None:
        pass

    def sync_finished(self, outcome: SyncOutcome) -> None:
        now = self._clock()
        with self._lock:
            self._beats[RECONCILER] = now  # finishing a pass proves the loop is alive
            if outcome.succeeded:
                self._initial_done = True
                self._last_success = now
                self._last_error = None
                self._failures_in_a_row = 0
            else:
                self._last_error = outcome.error
                self._failures_in_a_row += 1
            if outcome.report is not None:
                for family in outcome.report.families:
                    self._family_failures.pop(family, None)
            for family, error in outcome.family_errors.items():
                _, attempts = self._family_failures.get(family, ("", 0))
                self._family_failures[family] = (error, attempts + 1)

    def liveness(self) -> Check:
        now = self._clock()
        with self._lock:
            stale = []
            for loop, beat in self._beats.items():
                since = now - (beat if beat is not None else self._started)
                if since > self.heartbeat_timeout:
                    what = "last heartbeat" if beat is not None else "no heartbeat since start"
                    stale.append(f"{loop} loop stalled: {what} {since:.0f}s ago")
        if stale:
            return Check(False, "; ".join(stale))
        return Check(True, "ok")

    def readiness(self) -> Check:
        alive = self.liveness()
        if not alive.ok:
            return Check(False, alive.reason)
        failing = self._source_failures()
        now = self._clock()
        with self._lock:
            for family, (family_error, attempts) in sorted(
                self._family_failures.items(), key=lambda item: item[0].value
            ):
                failing.append(f"{family.value} sync failing ({attempts} attempts): {family_error}")
        with self._lock:
            if failing and not self._initial_done:
                failing.append("initial sync not done yet")
        if failing:
            return Check(False, "\n".join(failing))
        with self._lock:
            error = f": {self._last_error}" if self._last_error else ""
            if not self._initial_done:
                if self._failures_in_a_row:
                    return Check(
                        False,
                        f"initial sync not done ({self._failures_in_a_row} failed attempts){error}",
                    )
                return Check(False, "initial sync not done yet")
            assert self._last_success is not None
            age = now - self._last_success
            if age > self.ready_window:
                return Check(
                    False,
                    f"no successful sync for {age:.0f}s (window {self.ready_window:.0f}s); "
                    f"{self._failures_in_a_row} failed since{error}",
                )
            if self._failures_in_a_row:
                return Check(
                    True,
                    f"ok (last sync failed, last success {age:.0f}s ago){error}",
                )
            return Check(True, "ok")

    def _source_failures(self) -> list[str]:
        """One line per distinct source error (a file source reports it for every kind)."""
        if self._source_health is None:
            return []
        try:
            health = self._source_health()
        except Exception as error:  # never let a health read fail the probe itself
            return [f"source health unavailable: {error}"]
        kinds_by_error: dict[str, list[str]] = {}
        for kind, kind_health in health.kinds.items():
            if kind_health.last_error and not kind_health.connected:
                kinds_by_error.setdefault(kind_health.last_error, []).append(kind.value)
        return [
            f"source failing: {', '.join(kinds)}: {error}"
            for error, kinds in kinds_by_error.items()
        ]


# ---------------------------------------------------------------------------------------
# HTTP


#: The host of ``:port``: every address of both families (see :class:`HealthServer`).
ALL_ADDRESSES: Final = ""


def parse_address(address: str) -> tuple[str, int]:
    """``host:port``, ``:port`` (host :data:`ALL_ADDRESSES`) or ``[v6]:port``."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"metrics address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(
            f"metrics address {address!r}: port {port_text!r} is not a number"
        ) from None
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics address {address!r}: port {port} is out of range")
    return host, port


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    registry: CollectorRegistry
    state: HealthState


class _Server6(_Server):
    address_family = socket.AF_INET6


class _ServerDualStack(_Server6):
    """``[::]`` with IPV6_V6ONLY off: IPv6 and IPv4 (as v4-mapped) on one socket, whatever
    the machine's ``net.ipv6.bindv6only``."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "netpol-agent"
    protocol_version = "HTTP/1.1"
    routes: ClassVar[dict[str, str]] = {
        "/metrics": "_metrics",
        "/healthz": "_healthz",
        "/livez": "_healthz",
        "/readyz": "_readyz",
    }

    def do_GET(self) -> None:
        self._dispatch(body=True)

    def do_HEAD(self) -> None:
        self._dispatch(body=False)

    def _dispatch(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        method = self.routes.get(path)
        try:
            if method is None:
                status, content_type, payload = 404, "text/plain; charset=utf-8", b"not found\n"
            else:
                status, content_type, payload = getattr(self, method)()
        except Exception as error:  # never let a scrape kill the thread silently
            log.exception("error serving %s", path)
            status, content_type = 500, "text/plain; charset=utf-8"
            payload = _text(f"internal error: {error}")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _metrics(self) -> tuple[int, str, bytes]:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        return 200, content_type, encoder(self.server.registry)

    def _healthz(self) -> tuple[int, str, bytes]:
        check = self.server.state.liveness()
        return (200 if check.ok else 500), "text/plain; charset=utf-8", _text(check.reason)

    def _readyz(self) -> tuple[int, str, bytes]:
        check = self.server.state.readiness()
        return (200 if check.ok else 503), "text/plain; charset=utf-8", _text(check.reason)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes and scrapes arrive every few seconds: keep them out of the normal log.
        log.debug("%s %s", self.address_string(), format % args)


def _text(reason: str) -> bytes:
    return f"{reason}\n".encode("utf-8", "backslashreplace")


class HealthServer:
    """``HealthServer(address, registry, state)``: serves /metrics, /healthz, /readyz.

    ``start()`` binds (raises OSError if the port is taken) and serves from a daemon
    thread; ``stop()`` shuts it down. ``port`` is the bound port (useful with port 0).

    ``:port`` binds every address of both families, so the kubelet's probes reach a
    hostNetwork agent at the node's address whether that is IPv4 or IPv6 (an IPv6-only
    node has no IPv4 address for ``0.0.0.0`` to catch). A kernel without IPv6 sockets
    gets ``0.0.0.0`` instead. ``0.0.0.0:port`` stays IPv4 only, ``[::]:port`` whatever
    the machine's ``bindv6only`` says.
    """

    def __init__(self, address: str, registry: CollectorRegistry, state: HealthState) -> None:
        self.host, self._requested_port = parse_address(address)
        self.registry = registry
        self.state = state
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the health server is not started")
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the health server is not started")
        bound = str(self._server.server_address[0])
        host = f"[{bound}]" if ":" in bound else bound
        return f"http://{host}:{self.port}"

    def _bind(self) -> _Server:
        if self.host != ALL_ADDRESSES:
            server_class = _Server6 if ":" in self.host else _Server
            return server_class((self.host, self._requested_port), _Handler)
        try:
            return _ServerDualStack(("::", self._requested_port), _Handler)
        except OSError as error:
            if error.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
            return _Server(("0.0.0.0", self._requested_port), _Handler)

    def start(self) -> HealthServer:
        server = self._bind()
        server.registry = self.registry
        server.state = self.state
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="netpol-agent-http",
            daemon=True,
        )
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on %s", self.url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
