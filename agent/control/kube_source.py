"""List and watch the Kubernetes API: Pods, Namespaces, NetworkPolicies, Nodes and
ClusterNetworkPolicies.

Each kind runs its own loop in a daemon thread: a paged LIST, then a WATCH from the
list's resourceVersion with bookmarks, resumed from the last seen resourceVersion
whenever the stream ends. When the server says the history we would resume from is gone
(410, as an HTTP status or as an ERROR event), the loop lists again and diffs the result
against its store, so deletions that happened while we were away are reported too.

The loop talks HTTP through the client's configured urllib3 pool directly, instead of
``kubernetes.watch.Watch`` or the informer: those retry once and give up, build full
model objects for every event, and have neither bookmarks nor client-side read
timeouts. Here every response is read as raw JSON and immediately trimmed to the few
fields the compiler needs (see ``agent.control.source``), so memory stays proportional
to what we keep rather than to what the API sends.

ClusterNetworkPolicy is a custom resource: a cluster without its CRD answers 404. That
kind then counts as listed and empty (NetworkPolicy enforcement does not wait for it),
is said once in the log, and is listed again every ``unserved_recheck_seconds`` so that
policies are picked up once the CRD is installed. A CRD that goes away takes its
objects with it: the store empties.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import urllib3

from agent.control.source import (
    Change,
    ChangeSink,
    Kind,
    KindHealth,
    SourceHealth,
    diff_stores,
    object_key,
    same_content,
    trim,
)
from agent.runtime.backoff import Backoff

log = logging.getLogger(__name__)

# A single event line larger than this is not a Kubernetes object (etcd caps objects at
# about 1.5 MiB); treat it as a broken stream instead of growing without bound.
MAX_EVENT_BYTES = 16 * 1024 * 1024
STREAM_CHUNK_BYTES = 64 * 1024
# A watch that delivered events, or stayed up this long, proves the connection works.
HEALTHY_WATCH_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Resource:
    """Where one kind lives in the API and how to describe it in error messages."""

    kind: Kind
    path: str  # collection path across all namespaces
    plural: str  # "networkpolicies.networking.k8s.io", as RBAC names it
    api_version: str = "v1"  # what list items lack and explain's reader needs
    # A custom resource: its API may not be served (no CRD), which is not an error.
    optional: bool = False


RESOURCES: Mapping[Kind, Resource] = {
    Kind.POD: Resource(Kind.POD, "/api/v1/pods", "pods"),
    Kind.NAMESPACE: Resource(Kind.NAMESPACE, "/api/v1/namespaces", "namespaces"),
    Kind.NETWORK_POLICY: Resource(
        Kind.NETWORK_POLICY,
        "/apis/networking.k8s.io/v1/networkpolicies",
        "networkpolicies.networking.k8s.io",
        "networking.k8s.io/v1",
    ),
    Kind.NODE: Resource(Kind.NODE, "/api/v1/nodes", "nodes"),
    Kind.CLUSTER_NETWORK_POLICY: Resource(
        Kind.CLUSTER_NETWORK_POLICY,
        "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies",
        "clusternetworkpolicies.policy.networking.k8s.io",
        "policy.networking.k8s.io/v1alpha2",
        optional=True,
    ),
}


# What the agent lists and watches, in this order (namespaces before the pods in them).
WATCHED = (
    Kind.NAMESPACE,
    Kind.NETWORK_POLICY,
    Kind.POD,
    Kind.NODE,
    Kind.CLUSTER_NETWORK_POLICY,
)


@dataclass(frozen=True, slots=True)
class KubeSourceConfig:
    page_size: int = 500
    # Server-side watch duration; each watch adds up to +25% jitter so that the agents
    # of a large cluster do not all reconnect at the same moment.
    watch_timeout_seconds: int = 300
    # Client-side limit on silence from the server. The apiserver sends a bookmark about
    # once a minute to watchers that ask for them, so anything much longer than that
    # means a half-open connection (dead peer, NAT or proxy dropped state). A timeout on a
    # healthy but bookmark-less server only costs a resume from the last resourceVersion.
    watch_read_timeout_seconds: float = 90.0
    list_read_timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 10.0
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    # Repeated failures of one kind are logged at WARNING at most this often.
    log_repeat_seconds: float = 60.0
    stop_join_seconds: float = 5.0
    # How often a kind whose API is not served (ClusterNetworkPolicy without its CRD) is
    # listed again, to notice the CRD being installed. Jittered down by up to 25%.
    unserved_recheck_seconds: float = 30.0


# ---------------------------------------------------------------------------------------
# Errors


class ApiStatusError(Exception):
    """The apiserver answered with a non-2xx status (or a watch ERROR event)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message

    @classmethod
    def from_status_object(cls, status_code: int, body: Mapping[str, Any]) -> ApiStatusError:
        return cls(
            int(body.get("code") or status_code),
            str(body.get("reason") or ""),
            str(body.get("message") or ""),
        )


class ResourceGoneError(ApiStatusError):
    """410: the resourceVersion (or continue token) we asked for has been compacted."""


class NotServedError(Exception):
    """The apiserver does not serve this (optional) resource: its CRD is not installed."""


class StreamError(Exception):
    """The watch stream broke in a way the HTTP layer did not report (oversized line)."""


def _status_error(status_code: int, body: bytes) -> ApiStatusError:
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {}
    if not isinstance(parsed, dict):
        parsed = {}
    if not parsed.get("message") and body:
        parsed["message"] = body[:200].decode("utf-8", "replace")
    error = ApiStatusError.from_status_object(status_code, parsed)
    if error.status == 410:
        return ResourceGoneError(error.status, error.reason, error.message)
    return error


# ---------------------------------------------------------------------------------------
# Auth


def make_api_client(kubeconfig: str | None) -> Any:
    """An ApiClient from a kubeconfig path, or from the pod's service account if None.

    In-cluster, the client re-reads the projected service-account token as it rotates.
    TCP keepalive is switched on so that a peer that vanished without closing the
    connection is noticed by the kernel, not only by our read timeout.
    """
    from kubernetes import client
    from kubernetes import config as kube_config

    config: Any = kube_config  # the loaders are untyped
    configuration = client.Configuration()
    if kubeconfig is None:
        config.load_incluster_config(client_configuration=configuration)
        source = "in-cluster service account"
    else:
        config.load_kube_config(
            config_file=kubeconfig, client_configuration=configuration, persist_config=False
        )
        source = kubeconfig
    # Which credentials a pod runs with is the first question when it is refused.
    log.info("kubernetes api", extra={"kv": {"config": source, "server": configuration.host}})
    configuration.keep_alive = True
    # Five long-lived watches plus a list at a time; never make a watch wait for a slot.
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 8)
    return client.ApiClient(configuration)


def _bearer_token(configuration: Any) -> str | None:
    try:
        settings = configuration.auth_settings()
    except Exception:  # an exec/refresh hook failing must not hide the real error
        return None
    bearer = settings.get("BearerToken") if isinstance(settings, dict) else None
    value = bearer.get("value") if isinstance(bearer, dict) else None
    if not isinstance(value, str) or not value:
        return None
    prefix, _, token = value.partition(" ")
    return token if prefix.lower() == "bearer" and token else value


def describe_identity(configuration: Any) -> str:
    """Best-effort name of who we authenticate as, for error messages only."""
    token = _bearer_token(configuration)
    if token:
        parts = token.split(".")
        if len(parts) == 3:  # a JWT, e.g. a service-account token: its subject names us
            padded = parts[1] + "=" * (-len(parts[1]) % 4)
            try:
                claims = json.loads(base64.urlsafe_b64decode(padded))
            except (ValueError, binascii.Error):
                claims = None
            if isinstance(claims, dict) and claims.get("sub"):
                return str(claims["sub"])
        return "a bearer token that is not a JWT"
    cert_file = getattr(configuration, "cert_file", None)
    if cert_file:
        return f"the client certificate {cert_file}"
    return "an unknown identity (anonymous?)"


# ---------------------------------------------------------------------------------------
# Log volume


class FailureLog:
    """Logs the first failure of a streak, then at most once per interval, then recovery."""

    def __init__(self, logger: logging.Logger, subject: str, repeat_seconds: float) -> None:
        self._logger = logger
        self._subject = subject
        self._repeat_seconds = repeat_seconds
        self._failures = 0
        self._suppressed = 0
        self._last_logged = 0.0

    def failure(self, message: str, level: int = logging.WARNING) -> None:
        self._failures += 1
        now = time.monotonic()
        if self._failures == 1 or now - self._last_logged >= self._repeat_seconds:
            suffix = (
                f" ({self._failures} failures in a row, {self._suppressed} not logged)"
                if self._failures > 1
                else ""
            )
            self._logger.log(level, "%s: %s%s", self._subject, message, suffix)
            self._last_logged = now
            self._suppressed = 0
        else:
            self._suppressed += 1
            self._logger.debug("%s: %s", self._subject, message)

    def success(self) -> None:
        if self._failures:
            self._logger.info(
                "%s: recovered after %d failed attempts", self._subject, self._failures
            )
        self._failures = 0
        self._suppressed = 0


# ---------------------------------------------------------------------------------------
# One kind's list/watch loop


class _KindWatcher:
    def __init__(
        self,
        api_client: Any,
        resource: Resource,
        field_selector: str | None,
        config: KubeSourceConfig,
        deliver: Callable[[Sequence[Change]], None],
        stopping: threading.Event,
    ) -> None:
        self._api_client = api_client
        self._resource = resource
        self._kind = resource.kind
        self._field_selector = field_selector
        self._config = config
        self._deliver = deliver
        self._stopping = stopping
        self._store: dict[str, Mapping[str, Any]] = {}
        self._resource_version = ""
        self._needs_list = True
        self._watches_opened = 0
        self._interrupted = False  # set by interrupt(): the next error is ours, not the server's
        self._lock = threading.Lock()
        self._health = KindHealth()
        self._response: Any = None  # the open HTTP response, so stop() can cut it
        # Full jitter: the agents of a large cluster must not reconnect in step.
        self._backoff = Backoff(
            config.backoff_initial_seconds, config.backoff_max_seconds, jitter=1.0
        )
        self._failures = FailureLog(log, f"{resource.plural} list/watch", config.log_repeat_seconds)
        self._thread = threading.Thread(
            target=self._run, name=f"kube-source-{self._kind.value}", daemon=True
        )

    # -- public to KubeSource

    def start(self) -> None:
        self._thread.start()

    def interrupt(self) -> None:
        with self._lock:
            response = self._response
            self._interrupted = response is not None
        if response is not None:
            _abort_response(response)

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def listed(self) -> bool:
        with self._lock:
            return self._health.listed

    def health(self) -> KindHealth:
        with self._lock:
            return replace(self._health, objects=len(self._store))

    # -- the loop

    def _run(self) -> None:
        phase = "list"
        while not self._stopping.is_set():
            try:
                if self._needs_list:
                    phase = "list"
                    self._list_and_deliver()
                phase = "watch"
                self._watch_once()
            except NotServedError:
                if self._stopping.is_set():
                    break
                try:
                    self._not_served(phase)
                except Exception as error:  # the consumer failed on the deletes
                    if self._stopping.is_set():
                        break
                    self._on_failure("list", error)
            except ResourceGoneError as gone:
                if self._stopping.is_set():
                    break
                if phase == "list":  # a fresh list cannot be "gone": treat as a failure
                    self._on_failure(phase, gone)
                    continue
                # The history we would resume from was compacted: only a fresh list can
                # tell us what changed (and what was deleted) meanwhile.
                self._needs_list = True
                self._update_health(relists=1, connected=False, last_error=str(gone))
                log.info(
                    "%s: resourceVersion %s is gone (%s); relisting",
                    self._resource.plural,
                    self._resource_version,
                    gone.message or gone.reason,
                )
                # Not reset by the list, so list -> 410 -> list cycles slow down.
                self._stopping.wait(self._backoff.next_delay())
            except Exception as error:
                if self._stopping.is_set():
                    break
                self._on_failure(phase, error)
        with self._lock:
            self._response = None
            self._health = replace(self._health, connected=False)

    def _not_served(self, phase: str) -> None:
        """The resource's API is gone or not there yet: the kind is listed and empty
        (what it selected is no longer enforced), said once, and listed again later."""
        self._needs_list = True
        if phase == "watch":
            # A CRD removed under a watch: a list tells whether it is really gone. If the
            # list succeeds and the watch keeps failing, back off rather than spin.
            self._stopping.wait(self._backoff.next_delay())
            return
        deletes = [Change(self._kind, key, None) for key in self._store]
        first_list = not self.listed
        if deletes or first_list:
            # Delivered first: if the consumer fails, the next attempt delivers again.
            self._deliver(deletes)
        self._store = {}
        self._resource_version = ""
        with self._lock:
            was_served = self._health.served
        if was_served:
            # Only ClusterNetworkPolicy is optional; a cluster without its CRD is normal.
            log.info(
                "ClusterNetworkPolicy API not served; enforcing NetworkPolicy only",
                extra={
                    "kv": {
                        "resource": self._resource.plural,
                        "path": self._resource.path,
                        "forgotten": len(deletes),
                        "recheck_seconds": self._config.unserved_recheck_seconds,
                    }
                },
            )
        self._failures.success()
        self._backoff.reset()
        self._update_health(
            listed=True,
            served=False,
            connected=False,
            resource_version="",
            last_error=None,
            **({"last_event_time": time.time()} if deletes or first_list else {}),
        )
        self._stopping.wait(self._config.unserved_recheck_seconds * random.uniform(0.75, 1.0))

    def _on_failure(self, phase: str, error: Exception) -> None:
        message, level = self._describe_failure(phase, error)
        self._update_health(
            connected=False,
            last_error=message,
            list_errors=1 if phase == "list" else 0,
            watch_errors=1 if phase == "watch" else 0,
        )
        if isinstance(error, urllib3.exceptions.ReadTimeoutError) and phase == "watch":
            # A silent stream is cut and resumed at once; repeated silence is rate-limited
            # by the read timeout itself.
            self._failures.failure(message, logging.INFO)
            return
        self._failures.failure(message, level)
        self._stopping.wait(self._backoff.next_delay())

    def _describe_failure(self, phase: str, error: Exception) -> tuple[str, int]:
        verb = "list" if phase == "list" else "watch"
        scope = "" if self._field_selector is None else f" ({self._field_selector})"
        with self._lock:
            interrupted, self._interrupted = self._interrupted, False
        if interrupted:
            # Reading a response closed under our feet raises whatever urllib3 trips on.
            return f"{verb} {self._resource.plural}: connection dropped on request", logging.INFO
        if isinstance(error, ApiStatusError) and error.status in (401, 403):
            identity = describe_identity(getattr(self._api_client, "configuration", None))
            what = "unauthenticated (401)" if error.status == 401 else "forbidden (403)"
            hint = (
                "check the credentials (token expired or revoked?)"
                if error.status == 401
                else f"grant get, list and watch on {self._resource.plural} to this identity"
                " (ClusterRole + ClusterRoleBinding)"
            )
            return (
                f"cannot {verb} {self._resource.plural}{scope} as {identity}: {what}: "
                f"{error.message or error.reason}; {hint}; retrying with backoff",
                logging.ERROR,
            )
        if isinstance(error, urllib3.exceptions.ReadTimeoutError):
            return (
                f"no data from the apiserver for {self._config.watch_read_timeout_seconds:.0f}s "
                f"on the {self._resource.plural} {verb}; reconnecting",
                logging.WARNING,
            )
        detail = (
            f"HTTP {error}"
            if isinstance(error, ApiStatusError)
            else (f"{type(error).__name__}: {error}")
        )
        return f"{verb} {self._resource.plural}{scope} failed: {detail}", logging.WARNING

    def _update_health(self, **changes: Any) -> None:
        counters = ("watch_restarts", "relists", "list_restarts", "list_errors", "watch_errors")
        with self._lock:
            current = self._health
            updates = {
                name: getattr(current, name) + value if name in counters else value
                for name, value in changes.items()
            }
            self._health = replace(current, **updates)

    # -- HTTP

    def _open(self, query: list[tuple[str, str]], read_timeout: float) -> Any:
        configuration = self._api_client.configuration
        if self._field_selector is not None:
            query = [*query, ("fieldSelector", self._field_selector)]
        url = f"{configuration.host}{self._resource.path}?{urlencode(query)}"
        headers = dict(getattr(self._api_client, "default_headers", {}) or {})
        headers["Accept"] = "application/json"
        token_header = configuration.auth_settings().get("BearerToken")
        if token_header and token_header.get("value"):
            headers[token_header["key"]] = token_header["value"]
        response = self._api_client.rest_client.pool_manager.request(
            "GET",
            url,
            headers=headers,
            timeout=urllib3.Timeout(
                connect=self._config.connect_timeout_seconds, read=read_timeout
            ),
            preload_content=False,
            # Retries are ours (backoff, logging, counters); urllib3's would hide them.
            retries=False,
        )
        with self._lock:
            self._response = response
        if self._stopping.is_set():  # stop() ran while we were connecting
            _abort_response(response)
        if not 200 <= response.status < 300:
            try:
                body = response.read(64 * 1024)
            finally:
                self._release(response)
            error = _status_error(response.status, body)
            if self._resource.optional and error.status == 404:
                raise NotServedError(str(error))
            raise error
        return response

    def _release(self, response: Any) -> None:
        with self._lock:
            if self._response is response:
                self._response = None
        try:
            response.release_conn()
        except Exception:
            log.debug("releasing a connection failed", exc_info=True)

    def _get_json(self, query: list[tuple[str, str]]) -> dict[str, Any]:
        response = self._open(query, self._config.list_read_timeout_seconds)
        try:
            body = response.read()
        finally:
            self._release(response)
        parsed = json.loads(body)
        if not isinstance(parsed, dict):
            raise StreamError(f"unexpected list response of type {type(parsed).__name__}")
        return parsed

    # -- LIST

    def _list(self) -> tuple[dict[str, Mapping[str, Any]], str]:
        """A full paged list. All pages come from the snapshot of the first one."""
        store: dict[str, Mapping[str, Any]] = {}
        continue_token = ""
        while True:
            query = [("limit", str(self._config.page_size))]
            if continue_token:
                query.append(("continue", continue_token))
            try:
                page = self._get_json(query)
            except ResourceGoneError:
                if not continue_token:
                    raise
                # The snapshot behind the continue token was compacted mid-list (a slow
                # list of a large cluster): start over from a fresh snapshot.
                log.info(
                    "%s: list continue token expired; restarting the list", self._resource.plural
                )
                self._update_health(list_restarts=1)
                store.clear()
                continue_token = ""
                continue
            items = page.get("items")
            if items is not None and not isinstance(items, list):
                raise StreamError(f"unexpected list response: items is {type(items).__name__}")
            for item in items or ():
                trimmed = trim(self._kind, item)
                store[object_key(self._kind, trimmed)] = trimmed
            metadata = page.get("metadata") or {}
            continue_token = str(metadata.get("continue") or "")
            if not continue_token:
                return store, str(metadata.get("resourceVersion") or "")
            if self._stopping.is_set():
                raise StreamError("stopped while listing")

    def _list_and_deliver(self) -> None:
        fresh, resource_version = self._list()
        first_list = not self.listed
        changes = (
            [Change(self._kind, key, obj) for key, obj in fresh.items()]
            if first_list
            else diff_stores(self._kind, self._store, fresh)
        )
        # The first list is one batch even when empty: it is the consumer's first view.
        # Delivered before it is recorded: if the consumer fails, the store and the
        # resourceVersion stay as they were and the next attempt lists and delivers again.
        if changes or first_list:
            self._deliver(changes)
        self._store = fresh
        self._resource_version = resource_version
        self._needs_list = False
        self._failures.success()
        with self._lock:
            was_served = self._health.served
        if not was_served:
            log.info(
                "ClusterNetworkPolicy API served; enforcing ClusterNetworkPolicy",
                extra={"kv": {"resource": self._resource.plural, "objects": len(fresh)}},
            )
        log.info(
            "%s: listed %d objects at resourceVersion %s (%d changes)",
            self._resource.plural,
            len(fresh),
            resource_version,
            len(changes),
        )
        # listed is set only after delivering: the reconciler polls synced from its own
        # thread, and seeing True while a kind's first batch is still on its way would make
        # it write rules from a partial view (e.g. no pods: isolated pods left open).
        self._update_health(
            listed=True, served=True, resource_version=resource_version, last_event_time=time.time()
        )

    # -- WATCH

    def _watch_once(self) -> None:
        timeout_seconds = int(self._config.watch_timeout_seconds * random.uniform(1.0, 1.25))
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", self._resource_version),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        if self._watches_opened:
            self._update_health(watch_restarts=1)
        self._watches_opened += 1
        started = time.monotonic()
        response = self._open(query, self._config.watch_read_timeout_seconds)
        self._update_health(connected=True, last_error=None)
        events = 0
        try:
            buffer = bytearray()
            for chunk in response.stream(STREAM_CHUNK_BYTES, decode_content=True):
                buffer += chunk
                changes: list[Change] = []
                # What the store held before this chunk's events: a batch counts as seen
                # only once it was delivered. If anything fails first (the consumer, a
                # 410 ERROR event after good ones, a broken line), the store and the
                # resourceVersion go back, and the resumed watch (or the relist's diff)
                # delivers these changes again.
                undo: dict[str, Mapping[str, Any] | None] = {}
                resumed_from = self._resource_version
                try:
                    while (newline := buffer.find(b"\n")) >= 0:
                        line = bytes(buffer[:newline])
                        del buffer[: newline + 1]
                        if line.strip():
                            changes.extend(self._apply_event(json.loads(line), undo))
                            events += 1  # after _apply_event: an ERROR event does not count
                    if len(buffer) > MAX_EVENT_BYTES:
                        raise StreamError(f"watch event larger than {MAX_EVENT_BYTES} bytes")
                    if events or time.monotonic() - started >= HEALTHY_WATCH_SECONDS:
                        # This connection works: the next failure starts a fresh backoff.
                        self._backoff.reset()
                        self._failures.success()
                    if changes:
                        self._deliver(changes)
                except BaseException:
                    self._undo(undo, resumed_from)
                    raise
        finally:
            self._release(response)
            if time.monotonic() - started >= HEALTHY_WATCH_SECONDS:
                self._backoff.reset()  # a long quiet watch that then broke still worked
        if self._stopping.is_set():
            return
        if events == 0 and time.monotonic() - started < 1.0:
            # A server that closes a fresh watch at once would otherwise make us spin.
            raise StreamError("the watch ended immediately without any event")
        # The server ended the watch (timeoutSeconds): resume from where we are.
        self._backoff.reset()
        log.debug(
            "%s: watch ended after %d events; resuming at %s",
            self._resource.plural,
            events,
            self._resource_version,
        )

    def _undo(self, undo: Mapping[str, Mapping[str, Any] | None], resource_version: str) -> None:
        for key, previous in undo.items():
            if previous is None:
                self._store.pop(key, None)
            else:
                self._store[key] = previous
        self._resource_version = resource_version
        self._update_health(resource_version=resource_version)

    def _apply_event(
        self, event: Any, undo: dict[str, Mapping[str, Any] | None] | None = None
    ) -> list[Change]:
        if not isinstance(event, dict):
            raise StreamError(f"unexpected watch event {event!r:.200}")
        event_type = event.get("type")
        obj = event.get("object") or {}
        if event_type == "ERROR":
            error = ApiStatusError.from_status_object(500, obj)
            if error.status == 410:
                raise ResourceGoneError(error.status, error.reason, error.message)
            if error.status == 404 and self._resource.optional:
                raise NotServedError(str(error))
            raise error
        metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
        version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
        resource_version = version if isinstance(version, str) else ""
        if resource_version:
            self._resource_version = resource_version
        self._update_health(resource_version=self._resource_version, last_event_time=time.time())
        if event_type == "BOOKMARK":
            return []
        trimmed = trim(self._kind, obj)
        key = object_key(self._kind, trimmed)
        if undo is not None and key not in undo:
            undo[key] = self._store.get(key)
        if event_type in ("ADDED", "MODIFIED"):
            previous = self._store.get(key)
            self._store[key] = trimmed
            if previous is not None and same_content(previous, trimmed):
                return []  # e.g. only status.conditions changed: nothing to recompile
            return [Change(self._kind, key, trimmed)]
        if event_type == "DELETED":
            if self._store.pop(key, None) is None:
                return []
            return [Change(self._kind, key, None)]
        log.debug("%s: ignoring watch event of type %r", self._resource.plural, event_type)
        return []


def _abort_response(response: Any) -> None:
    """Unblock a thread reading ``response``: shut the socket down, then close."""
    shutdown = getattr(response, "shutdown", None)  # urllib3 >= 2.3
    if shutdown is not None:
        try:
            shutdown()
        except Exception:
            log.debug("socket shutdown failed", exc_info=True)
    try:
        response.close()
    except Exception:
        log.debug("closing a response failed", exc_info=True)


# ---------------------------------------------------------------------------------------


class KubeSource:
    """The Kubernetes API as a ``Source``: every kind, cluster-wide.

    All Nodes, not only our own: ClusterNetworkPolicy ``nodes`` peers select nodes by
    label and stand for their addresses. A trimmed Node is small (name, labels,
    addresses, pod CIDRs), so even thousands of them cost little memory.
    """

    def __init__(self, api_client: Any, config: KubeSourceConfig | None = None) -> None:
        self._api_client = api_client
        self._config = config or KubeSourceConfig()
        self._stopping = threading.Event()
        self._sink_lock = threading.Lock()
        self._sink: ChangeSink | None = None
        self._watchers: dict[Kind, _KindWatcher] = {}

    def start(self, sink: ChangeSink) -> None:
        if self._watchers:
            raise RuntimeError("KubeSource.start() called twice")
        self._sink = sink
        for kind in WATCHED:
            self._watchers[kind] = _KindWatcher(
                self._api_client,
                RESOURCES[kind],
                None,
                self._config,
                self._deliver,
                self._stopping,
            )
        for watcher in self._watchers.values():
            watcher.start()

    def stop(self) -> None:
        self._stopping.set()
        for watcher in self._watchers.values():
            watcher.interrupt()
        deadline = time.monotonic() + self._config.stop_join_seconds
        for watcher in self._watchers.values():
            watcher.join(max(0.0, deadline - time.monotonic()))

    @property
    def synced(self) -> bool:
        return bool(self._watchers) and all(w.listed for w in self._watchers.values())

    @property
    def health(self) -> SourceHealth:
        return SourceHealth({kind: w.health() for kind, w in self._watchers.items()})

    def _deliver(self, changes: Sequence[Change]) -> None:
        # One consumer call at a time across kinds, so the consumer needs no locking; it
        # should be quick (hand off to a queue), since a slow sink stalls the watches.
        with self._sink_lock:
            if self._stopping.is_set() or self._sink is None:
                return
            try:
                self._sink(changes)
            except Exception as error:
                # The watcher does not record the batch as seen: it backs off and gets it
                # again (resume from the previous resourceVersion, or list again).
                log.error(
                    "the change consumer failed on a batch of %d (%s: %s); retrying it",
                    len(changes),
                    type(error).__name__,
                    error,
                )
                raise


def list_cluster(api_client: Any, config: KubeSourceConfig | None = None) -> list[dict[str, Any]]:
    """One paged list of every kind the agent watches, trimmed as the watch trims them,
    each with its ``kind`` and ``apiVersion`` (list items carry neither): what
    ``explain --kubeconfig`` judges, read as ``run`` reads it. A kind whose API is not
    served (no ClusterNetworkPolicy CRD) has no objects, as for ``run``.

    Raises ApiStatusError (the server refused: RBAC, not found...) or urllib3's errors
    (unreachable)."""
    stopping = threading.Event()
    objects: list[dict[str, Any]] = []
    for kind in WATCHED:
        resource = RESOURCES[kind]
        watcher = _KindWatcher(
            api_client, resource, None, config or KubeSourceConfig(), lambda _: None, stopping
        )
        try:
            store, _ = watcher._list()
        except NotServedError:
            continue
        for trimmed in store.values():
            objects.append({"apiVersion": resource.api_version, "kind": kind.value, **trimmed})
    return objects
