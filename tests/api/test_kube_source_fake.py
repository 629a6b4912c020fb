"""KubeSource against a scripted HTTP server, for the paths a real apiserver cannot be
made to take on demand: a 410 ERROR event, an HTTP 410 on a watch, an expired continue
token, a silent (half-open) connection, and 5xx/429 answers.

The server speaks HTTP/1.1 with chunked encoding and flushes one event per chunk, as
kube-apiserver does.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client as k8s_client

from agent.control.kube_source import KubeSource, KubeSourceConfig
from agent.control.source import Change, Kind

CONFIG = KubeSourceConfig(
    page_size=1,
    watch_timeout_seconds=60,
    watch_read_timeout_seconds=30,
    list_read_timeout_seconds=5,
    connect_timeout_seconds=1,
    backoff_initial_seconds=0.01,
    backoff_max_seconds=0.05,
)


@dataclass
class Reply:
    """What the fake server answers to one request."""

    status: int = 200
    body: Any = None  # a JSON document (list replies / errors)
    events: Sequence[Any] = ()  # watch events, one per chunk (a tuple: one chunk)
    hang: bool = False  # keep the stream open (silent) after the events


@dataclass
class Script:
    """Replies per (path, "list"|"watch"), consumed in order; the last one repeats."""

    replies: dict[tuple[str, str], list[Reply]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    closing: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, verb: str, *replies: Reply) -> None:
        self.replies.setdefault((path, verb), []).extend(replies)

    def next(self, path: str, verb: str, query: dict[str, str]) -> Reply:
        with self.lock:
            self.requests.append((path, verb, query))
            queue = self.replies.get((path, verb))
            if not queue:
                if verb == "list":
                    return Reply(body=pod_list([], "1"))
                return Reply(hang=True)
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def sent(self, path: str, verb: str) -> list[dict[str, str]]:
        with self.lock:
            return [q for p, v, q in self.requests if p == path and v == verb]


def pod(name: str, rv: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                     "resourceVersion": rv, "labels": labels, "annotations": {"x": "y"}},
        "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }


def pod_list(items: list[dict[str, Any]], rv: str, continue_token: str = "") -> dict[str, Any]:
    metadata = {"resourceVersion": rv}
    if continue_token:
        metadata["continue"] = continue_token
    return {"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items}


def gone(message: str = "too old resource version") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": "Expired", "code": 410}


def make_handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {key: values[0] for key, values in parse_qs(url.query).items()}
            verb = "watch" if query.get("watch") == "true" else "list"
            reply = script.next(url.path, verb, query)
            if verb == "list" or reply.status != 200:
                data = json.dumps(reply.body or {}).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for event in reply.events:
                    # A tuple of events goes out as one chunk.
                    group = event if isinstance(event, tuple) else (event,)
                    line = b"".join(json.dumps(e).encode() + b"\n" for e in group)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                while reply.hang and not script.closing.wait(0.05):
                    pass
                self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True
            except OSError:
                pass  # the client went away

    return Handler


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[Change]] = []
        self.lock = threading.Lock()

    def __call__(self, changes: Sequence[Change]) -> None:
        with self.lock:
            self.batches.append(list(changes))

    def pod_batches(self) -> list[list[tuple[str, bool]]]:
        with self.lock:
            return [
                [(c.key, c.obj is None) for c in batch]
                for batch in self.batches
                if batch and batch[0].kind is Kind.POD
            ]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def fake() -> Iterator[tuple[Script, Callable[..., tuple[KubeSource, Recorder]]]]:
    script = Script()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(script))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = k8s_client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    api: Any = k8s_client.ApiClient(configuration)
    sources: list[KubeSource] = []

    def start(
        config: KubeSourceConfig = CONFIG, recorder: Recorder | None = None
    ) -> tuple[KubeSource, Recorder]:
        source = KubeSource(api, config)
        recorder = recorder or Recorder()
        source.start(recorder)
        sources.append(source)
        return source, recorder

    yield script, start
    for source in sources:
        source.stop()
    script.closing.set()
    server.shutdown()
    server.server_close()
    api.close()


PODS = "/api/v1/pods"


def test_error_event_410_relists_and_diffs(fake: Any) -> None:
    script, start = fake
    script.add(PODS, "list",
               Reply(body=pod_list([pod("a", "8")], "10", "page2")),
               Reply(body=pod_list([pod("b", "9")], "10")),
               Reply(body=pod_list([pod("b", "19", role="new"), pod("c", "11")], "20")))
    script.add(PODS, "watch",
               Reply(events=[{"type": "ADDED", "object": pod("c", "11")},
                             {"type": "MODIFIED", "object": pod("c", "12")},  # rv bump only
                             {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "13"}}},
                             {"type": "ERROR", "object": gone()}]),
               Reply(hang=True))
    source, recorder = start()
    wait_until(lambda: source.health.kinds[Kind.POD].relists == 1, "a relist")
    wait_until(lambda: len(recorder.pod_batches()) == 3, "three pod batches")
    assert recorder.pod_batches() == [
        [("ns/a", False), ("ns/b", False)],  # the paged initial list, as one batch
        [("ns/c", False)],  # the rv-only MODIFIED is not emitted
        [("ns/b", False), ("ns/a", True)],  # relist diff: c unchanged, a deleted meanwhile
    ]
    watches = script.sent(PODS, "watch")
    assert watches[0]["resourceVersion"] == "10"
    assert watches[0]["allowWatchBookmarks"] == "true"
    wait_until(lambda: len(script.sent(PODS, "watch")) >= 2, "the second watch")
    assert script.sent(PODS, "watch")[1]["resourceVersion"] == "20"
    assert source.synced


def test_http_410_and_expired_continue_token(fake: Any) -> None:
    script, start = fake
    script.add(PODS, "list",
               Reply(body=pod_list([pod("a", "1")], "5", "tok1")),
               Reply(status=410, body=gone("continue token expired")),
               Reply(body=pod_list([pod("a", "1")], "6", "tok2")),
               Reply(body=pod_list([pod("b", "2")], "6")),
               Reply(body=pod_list([pod("a", "1")], "9")))
    script.add(PODS, "watch", Reply(status=410, body=gone()), Reply(hang=True))
    source, recorder = start()
    wait_until(lambda: len(recorder.pod_batches()) == 2, "two pod batches")
    assert recorder.pod_batches() == [[("ns/a", False), ("ns/b", False)], [("ns/b", True)]]
    health = source.health.kinds[Kind.POD]
    assert health.list_restarts == 1
    assert health.relists == 1
    lists = script.sent(PODS, "list")
    assert [q.get("continue") for q in lists[:4]] == [None, "tok1", None, "tok2"]
    assert all(q["limit"] == "1" for q in lists)


def test_silent_connection_is_cut_by_read_timeout_and_resumed(fake: Any) -> None:
    script, start = fake
    script.add(PODS, "list", Reply(body=pod_list([], "3")))
    script.add(PODS, "watch",
               Reply(events=[{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "4"}}}],
                     hang=True))
    config = KubeSourceConfig(watch_read_timeout_seconds=0.3, backoff_initial_seconds=0.01,
                              backoff_max_seconds=0.05)
    source, _recorder = start(config)
    wait_until(lambda: len(script.sent(PODS, "watch")) >= 2, "a second watch")
    assert script.sent(PODS, "watch")[1]["resourceVersion"] == "4"
    health = source.health.kinds[Kind.POD]
    assert health.watch_errors >= 1
    assert health.relists == 0
    assert len(script.sent(PODS, "list")) == 1
    started = time.monotonic()
    source.stop()  # while a watch hangs
    assert time.monotonic() - started < 1.0


def test_server_errors_back_off_and_log_once(
    fake: Any, caplog: pytest.LogCaptureFixture
) -> None:
    script, start = fake
    overloaded = {"kind": "Status", "code": 500, "reason": "InternalError", "message": "boom"}
    throttled = {"kind": "Status", "code": 429, "reason": "TooManyRequests", "message": "slow"}
    script.add(PODS, "list", *[Reply(status=500, body=overloaded)] * 3,
               Reply(status=429, body=throttled), Reply(body=pod_list([pod("a", "1")], "2")))
    with caplog.at_level(logging.DEBUG, logger="agent.control.kube_source"):
        source, recorder = start()
        wait_until(lambda: source.synced, "synced")
    assert source.health.kinds[Kind.POD].list_errors == 4
    assert recorder.pod_batches() == [[("ns/a", False)]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "list pods failed" in warnings[0]
    assert "500" in warnings[0]
    assert any("recovered after 4 failed attempts" in r.getMessage() for r in caplog.records)


def test_a_batch_the_consumer_fails_on_is_delivered_again(fake: Any) -> None:
    """A batch counts as seen only once delivered: the watch resumes from before it."""
    script, start = fake
    script.add(PODS, "list", Reply(body=pod_list([], "3")))
    replay = [{"type": "ADDED", "object": pod("a", "4")},
              {"type": "ADDED", "object": pod("b", "5", role="x")}]
    script.add(PODS, "watch", Reply(events=replay), Reply(events=replay, hang=True))
    failed: list[list[str]] = []

    class Failing(Recorder):
        def __call__(self, changes: Sequence[Change]) -> None:
            keys = [c.key for c in changes]
            if "ns/b" in keys and not failed:
                failed.append(keys)
                raise RuntimeError("consumer bug")
            super().__call__(changes)

    source, recorder = start(recorder=Failing())
    wait_until(lambda: len(script.sent(PODS, "watch")) >= 2, "a second watch")
    wait_until(lambda: ["ns/b"] in [[k for k, _ in b] for b in recorder.pod_batches()]
               or any("ns/b" in [k for k, _ in b] for b in recorder.pod_batches()),
               "the failed batch delivered again")
    assert failed  # it did fail once
    delivered = [key for batch in recorder.pod_batches() for key, _ in batch]
    assert sorted(delivered) == ["ns/a", "ns/b"]  # each delivered once, none lost
    assert script.sent(PODS, "watch")[1]["resourceVersion"] in ("3", "4")  # b not seen
    assert source.health.kinds[Kind.POD].watch_errors >= 1


def test_events_before_a_410_in_the_same_chunk_are_not_lost(fake: Any) -> None:
    """Applied but not delivered when the ERROR came: the relist's diff delivers them."""
    script, start = fake
    script.add(PODS, "list",
               Reply(body=pod_list([pod("a", "2")], "3")),
               Reply(body=pod_list([pod("a", "2"), pod("x", "4")], "9")))
    script.add(PODS, "watch",
               Reply(events=[({"type": "ADDED", "object": pod("x", "4")},
                              {"type": "ERROR", "object": gone()})]),
               Reply(hang=True))
    source, recorder = start()
    wait_until(lambda: source.health.kinds[Kind.POD].relists == 1, "a relist")
    wait_until(lambda: len(recorder.pod_batches()) == 2, "two pod batches")
    assert recorder.pod_batches() == [[("ns/a", False)], [("ns/x", False)]]


CNPS = "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies"


def cnp(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv},
            "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}}}}  # fmt: skip


def not_found() -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "the server could not find the requested resource",
            "reason": "NotFound", "code": 404}  # fmt: skip


class FailsOnceOnDeletes(Recorder):
    """A consumer that fails the first batch deleting a ClusterNetworkPolicy."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def __call__(self, changes: Sequence[Change]) -> None:
        deletes = any(c.kind is Kind.CLUSTER_NETWORK_POLICY and c.obj is None for c in changes)
        if deletes and not self.failed:
            self.failed = True
            raise RuntimeError("consumer busy")
        super().__call__(changes)

    def cnp_batches(self) -> list[list[tuple[str, bool]]]:
        with self.lock:
            return [
                [(c.key, c.obj is None) for c in batch]
                for batch in self.batches
                if batch and batch[0].kind is Kind.CLUSTER_NETWORK_POLICY
            ]


def test_a_crd_gone_mid_watch_deletes_its_objects_even_if_the_consumer_fails_once(
    fake: Any,
) -> None:
    script, start = fake
    script.add(CNPS, "list",
               Reply(body=pod_list([cnp("a", "4")], "5")),
               Reply(status=404, body=not_found()),  # gone: the consumer fails on it
               Reply(status=404, body=not_found()),  # gone: delivered this time
               Reply(body=pod_list([cnp("b", "7")], "8")))  # back
    script.add(CNPS, "watch", Reply(status=404, body=not_found()), Reply(hang=True))
    recorder = FailsOnceOnDeletes()
    source, _ = start(replace(CONFIG, unserved_recheck_seconds=0.05), recorder)
    wait_until(lambda: len(recorder.cnp_batches()) == 3, "three ClusterNetworkPolicy batches")
    assert recorder.failed
    assert recorder.cnp_batches() == [[("a", False)], [("a", True)], [("b", False)]]
    health = source.health.kinds[Kind.CLUSTER_NETWORK_POLICY]
    assert health.served and health.objects == 1
    assert source.synced
