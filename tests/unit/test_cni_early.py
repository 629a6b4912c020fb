"""A CNI ADD gives the agent a pod's addresses before the pod's status does: the agent
enforces them at once and answers when they are written; the status's replace them; a DEL
or the pod's deletion drops them. And the socket protocol the plugin speaks."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.control.cni_server import BadRequest, CniServer, parse_request
from agent.control.reconciler import NetworkAddError, Reconciler, ReconcilerConfig
from agent.control.source import Change, Kind
from agent.model.objects import IPAddress
from tests.unit import builders as b
from tests.unit.test_reconciler import Dataplane, Source

IP = ipaddress.ip_address("10.244.1.7")


def _pod(*ips: str, node: str = "node1", uid: str = "u1", phase: str = "Pending") -> Change:
    obj = b.pod("x/web", *ips, node_name=node, phase=phase)
    obj["metadata"]["uid"] = uid
    return Change(Kind.POD, "x/web", obj)


@pytest.fixture
def agent() -> Iterator[Reconciler]:
    reconciler = Reconciler(
        ReconcilerConfig(node_name="node1", min_interval=0.0, resync_period=3600),
        Source(synced=True),  # type: ignore[arg-type]
        Dataplane(),  # type: ignore[arg-type]
    )
    reconciler.on_changes([Change(Kind.NAMESPACE, "x", b.namespace("x"))])
    stop = threading.Event()
    thread = threading.Thread(target=reconciler.run, args=(stop,))
    thread.start()
    yield reconciler
    stop.set()
    reconciler.wake()
    thread.join(5)


def _ips(reconciler: Reconciler) -> tuple[IPAddress, ...] | None:
    pod = reconciler.snapshot().pods.get("x/web")
    return pod.ips if pod is not None else None


def test_an_add_for_a_known_pod_enforces_its_address_before_the_status_has_it(
    agent: Reconciler,
) -> None:
    agent.on_changes([_pod()])  # scheduled, no address in its status yet
    agent.pod_network_added("x", "web", "u1", [IP], timeout=5)
    outcome = agent.last_outcome
    assert outcome is not None and outcome.succeeded
    assert ("x/web", "network added") in [(c.key, c.action) for c in outcome.changes]
    assert _ips(agent) == (IP,)


def test_an_add_for_a_pod_not_known_yet_waits_for_it(agent: Reconciler) -> None:
    done: list[float] = []

    def add() -> None:
        agent.pod_network_added("x", "web", "u1", [IP], timeout=5)
        done.append(time.monotonic())

    thread = threading.Thread(target=add)
    thread.start()
    time.sleep(0.3)
    assert not done
    arrived = time.monotonic()
    agent.on_changes([_pod()])
    thread.join(5)
    assert done and done[0] >= arrived
    assert _ips(agent) == (IP,)


def test_an_add_times_out_when_the_pod_never_comes(agent: Reconciler) -> None:
    with pytest.raises(NetworkAddError, match="not known") as raised:
        agent.pod_network_added("x", "ghost", "", [IP], timeout=0.3)
    assert raised.value.timed_out


def test_an_add_for_a_pod_of_another_node_is_refused(agent: Reconciler) -> None:
    agent.on_changes([_pod(node="node2")])
    with pytest.raises(NetworkAddError, match="node2") as raised:
        agent.pod_network_added("x", "web", "u1", [IP], timeout=2)
    assert not raised.value.timed_out


def test_the_status_addresses_take_over_once_the_status_has_them(agent: Reconciler) -> None:
    agent.on_changes([_pod()])
    agent.pod_network_added("x", "web", "u1", [IP], timeout=5)
    agent.on_changes([_pod("10.244.1.7", phase="Running")])
    assert _ips(agent) == (IP,)
    agent.on_changes([_pod(phase="Running")])  # the status loses it: so does the store
    assert _ips(agent) == ()


def test_a_new_sandboxs_addresses_win_while_the_status_shows_the_previous_ones(
    agent: Reconciler,
) -> None:
    old = ipaddress.ip_address("10.244.1.3")
    agent.on_changes([_pod(str(old), phase="Running")])  # the first sandbox's
    agent.pod_network_added("x", "web", "u1", [IP], timeout=5, container_id="c2")
    assert _ips(agent) == (old, IP)
    agent.pod_network_deleted("x", "web", "u1", container_id="c1")  # the old one's, late
    assert _ips(agent) == (old, IP)
    agent.on_changes([_pod("10.244.1.7", phase="Running")])  # the status catches up
    assert _ips(agent) == (IP,)
    agent.pod_network_deleted("x", "web", "u1", container_id="c2")
    assert _ips(agent) == (IP,)  # the status's now: a DEL no longer takes it


def test_a_pod_of_the_same_name_but_another_uid_does_not_take_them(agent: Reconciler) -> None:
    agent.on_changes([_pod(uid="old")])
    with pytest.raises(NetworkAddError):
        agent.pod_network_added("x", "web", "new", [IP], timeout=0.3)
    assert _ips(agent) == ()
    agent.on_changes([_pod(uid="new")])  # the ADD gave up; the kubelet's retry comes
    agent.pod_network_added("x", "web", "new", [IP], timeout=5)
    assert _ips(agent) == (IP,)


def test_a_del_or_the_pods_deletion_drops_the_early_addresses(agent: Reconciler) -> None:
    agent.on_changes([_pod()])
    agent.pod_network_added("x", "web", "u1", [IP], timeout=5)
    agent.pod_network_deleted("x", "web", "u1")
    assert _ips(agent) == ()
    agent.pod_network_added("x", "web", "u1", [IP], timeout=5)
    agent.on_changes([Change(Kind.POD, "x/web", None)])
    agent.on_changes([_pod()])  # the same name again: no address until an ADD says so
    assert _ips(agent) == ()


def test_check_says_whether_the_pod_is_enforced_with_those_addresses(agent: Reconciler) -> None:
    agent.on_changes([_pod()])
    assert not agent.pod_network_programmed("x", "web", "u1", [IP])
    agent.pod_network_added("x", "web", "u1", [IP], timeout=5)
    assert agent.pod_network_programmed("x", "web", "u1", [IP])
    assert not agent.pod_network_programmed("x", "web", "other", [IP])


# --- the socket -------------------------------------------------------------------------


class Pods:
    def __init__(self, fail: NetworkAddError | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail

    def pod_network_added(
        self,
        namespace: str,
        name: str,
        uid: str,
        ips: Sequence[IPAddress],
        timeout: float,
        container_id: str = "",
    ) -> None:
        self.calls.append(("add", namespace, name, uid, *map(str, ips), str(timeout), container_id))
        if self.fail is not None:
            raise self.fail

    def pod_network_deleted(
        self, namespace: str, name: str, uid: str, container_id: str = ""
    ) -> None:
        self.calls.append(("del", namespace, name, uid, container_id))

    def pod_network_programmed(
        self, namespace: str, name: str, uid: str, ips: Sequence[IPAddress]
    ) -> bool:
        return True


def _ask(path: str, request: Mapping[str, Any] | bytes) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(path)
        data = request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n"
        conn.sendall(data)
        return json.loads(conn.makefile("rb").readline())


def test_the_socket_answers_add_del_and_counts_adds(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "cni.sock")
    added: list[str] = []
    pods = Pods()
    server = CniServer(path, pods, on_add=lambda seconds, result: added.append(result)).start()
    try:
        assert os.stat(path).st_mode & 0o777 == 0o600
        request = {"op": "add", "namespace": "x", "name": "web", "uid": "u1",
                   "containerID": "c1", "ips": ["10.244.1.7"], "timeout": 3}  # fmt: skip
        assert _ask(path, request) == {"ok": True}
        assert _ask(path, {**request, "op": "del", "ips": []}) == {"ok": True}
        assert _ask(path, b"not json\n")["ok"] is False
        pods.fail = NetworkAddError("x/web: the pod is not known within 3s", timed_out=True)
        answer = _ask(path, request)
        assert answer == {"ok": False, "error": "x/web: the pod is not known within 3s"}
    finally:
        server.stop()
    assert pods.calls[0] == ("add", "x", "web", "u1", "10.244.1.7", "3.0", "c1")
    assert pods.calls[1] == ("del", "x", "web", "u1", "c1")
    assert added == ["ok", "timeout"]
    assert not os.path.exists(path)


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "nope", "namespace": "x", "name": "y"},
        {"op": "add", "namespace": "", "name": "y"},
        {"op": "add", "namespace": "x", "name": "y", "ips": ["10.0.0.300"]},
        {"op": "add", "namespace": "x", "name": "y", "ips": "10.0.0.1"},
        {"op": "add", "namespace": "x", "name": "y", "timeout": 0},
        {"op": "add", "namespace": "x", "name": "y", "timeout": True},
        ["add"],
    ],
)
def test_a_malformed_request_is_refused(request_: Any) -> None:
    with pytest.raises(BadRequest):
        parse_request(json.dumps(request_).encode())
