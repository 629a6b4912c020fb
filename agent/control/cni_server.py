"""The unix socket the node's CNI plugin (``cni/``) talks to at each pod's ADD, DEL and CHECK.

One request per connection: a JSON object on one line, answered by a JSON object on one
line (DESIGN.md, "CNI chaining")::

    {"op": "add", "namespace": "prod", "name": "web-0", "uid": "…", "containerID": "…",
     "ips": ["10.244.1.7"], "timeout": 10}
    {"ok": true}                                  or  {"ok": false, "error": "…"}

``add`` answers once the pod's rules are in the kernel (``Reconciler.pod_network_added``),
``del`` forgets the addresses the ADD gave, ``check`` says whether the pod is enforced with
those addresses. The plugin decides nothing: refusing, or not answering within the
timeout, fails the ADD (or passes it, if the operator chose that in the netconf).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.control.reconciler import NetworkAddError
from agent.model.objects import IPAddress

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/run/netpol-agent/cni.sock"
MAX_TIMEOUT = 300.0
MAX_REQUEST = 64 * 1024
READ_TIMEOUT = 5.0

# Result of an ADD, as the metrics count it.
OK, TIMEOUT, ERROR = "ok", "timeout", "error"


class PodNetworks(Protocol):
    def pod_network_added(
        self,
        namespace: str,
        name: str,
        uid: str,
        ips: Sequence[IPAddress],
        timeout: float,
        container_id: str = "",
    ) -> None: ...

    def pod_network_deleted(
        self, namespace: str, name: str, uid: str, container_id: str = ""
    ) -> None: ...

    def pod_network_programmed(
        self, namespace: str, name: str, uid: str, ips: Sequence[IPAddress]
    ) -> bool: ...


# (seconds from ADD received to answer, result: ok | timeout | error)
AddObserver = Callable[[float, str], None]


class BadRequest(ValueError):
    pass


def _text(request: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = request.get(name, "")
    if not isinstance(value, str) or (required and not value):
        raise BadRequest(f"{name} must be a non-empty string")
    return value


@dataclass(frozen=True, slots=True)
class Request:
    op: str  # add, del, check
    namespace: str
    name: str
    uid: str
    container_id: str
    ips: tuple[IPAddress, ...]
    timeout: float


def parse_request(line: bytes) -> Request:
    """The request on a line; BadRequest if unusable."""
    try:
        request = json.loads(line)
    except ValueError as error:
        raise BadRequest(f"not JSON: {error}") from None
    if not isinstance(request, dict):
        raise BadRequest("not a JSON object")
    op = _text(request, "op")
    if op not in ("add", "del", "check"):
        raise BadRequest(f"op must be add, del or check, not {op!r}")
    namespace, name = _text(request, "namespace"), _text(request, "name")
    uid = _text(request, "uid", required=False)
    container_id = _text(request, "containerID", required=False)
    raw_ips = request.get("ips", [])
    if not isinstance(raw_ips, list) or not all(isinstance(ip, str) for ip in raw_ips):
        raise BadRequest("ips must be a list of addresses")
    try:
        ips = tuple(ipaddress.ip_address(ip) for ip in raw_ips)
    except ValueError as error:
        raise BadRequest(str(error)) from None
    timeout = request.get("timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise BadRequest("timeout must be a positive number of seconds")
    return Request(op, namespace, name, uid, container_id, ips, min(float(timeout), MAX_TIMEOUT))


class CniServer:
    """Serves the plugin's requests on ``path``, one thread per connection."""

    def __init__(self, path: str, pods: PodNetworks, *, on_add: AddObserver | None = None) -> None:
        self.path = path
        self._pods = pods
        self._on_add = on_add
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> CniServer:
        """Bind (replacing a socket a previous agent left) and serve. Raises OSError."""
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if os.path.exists(self.path) and not os.path.isdir(self.path):
                os.unlink(self.path)
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer._handle(self.connection, self.rfile, self.wfile)

        server = socketserver.ThreadingUnixStreamServer(self.path, Handler)
        server.daemon_threads = True
        os.chmod(self.path, 0o600)  # root's plugin only
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="cni", daemon=True
        )
        self._thread.start()
        log.info("cni socket listening", extra={"kv": {"path": self.path}})
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _handle(self, connection: socket.socket, rfile: Any, wfile: Any) -> None:
        received = time.monotonic()
        connection.settimeout(READ_TIMEOUT)
        try:
            line = rfile.readline(MAX_REQUEST)
        except OSError:
            return
        answer, op, result = self.answer(line)
        if op == "add" and self._on_add is not None:
            self._on_add(time.monotonic() - received, result)
        try:
            wfile.write(json.dumps(answer).encode() + b"\n")
            wfile.flush()
        except OSError:
            pass  # the plugin gave up; it fails (or passes) the ADD by itself

    def answer(self, line: bytes) -> tuple[dict[str, Any], str, str]:
        """(answer, op, result) for one request line."""
        try:
            r = parse_request(line)
        except BadRequest as error:
            log.warning("bad cni request: %s", error)
            return {"ok": False, "error": f"bad request: {error}"}, "", ERROR
        op, key = r.op, f"{r.namespace}/{r.name}"
        if op == "del":
            self._pods.pod_network_deleted(r.namespace, r.name, r.uid, r.container_id)
            return {"ok": True}, op, OK
        if op == "check":
            if self._pods.pod_network_programmed(r.namespace, r.name, r.uid, r.ips):
                return {"ok": True}, op, OK
            return {"ok": False, "error": f"{key} is not enforced with {_ips(r.ips)}"}, op, ERROR
        try:
            self._pods.pod_network_added(
                r.namespace, r.name, r.uid, r.ips, r.timeout, r.container_id
            )
        except NetworkAddError as error:
            log.warning("pod network add not confirmed: %s", error)
            return {"ok": False, "error": str(error)}, op, TIMEOUT if error.timed_out else ERROR
        except Exception as error:  # never leave the plugin without an answer
            log.exception("pod network add of %s failed", key)
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}, op, ERROR
        return {"ok": True}, op, OK


def _ips(ips: Sequence[IPAddress]) -> str:
    return ",".join(str(ip) for ip in ips) or "no address"
