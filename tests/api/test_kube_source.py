"""KubeSource against a real kube-apiserver + etcd (tests/cluster).

The control plane is shared by the whole session, so every test works in namespaces it
creates (``kube.create_namespace()``) and only looks at changes for its own objects.
The watch cache is off there: watches are served from etcd, so a resourceVersion older
than a compaction gets 410 Gone deterministically.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from agent.control.kube_source import KubeSource, KubeSourceConfig, make_api_client
from agent.control.source import Change, Kind
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kube import Kube, unique_name

pytestmark = pytest.mark.cluster

WAIT = 20.0

FAST = KubeSourceConfig(
    page_size=2,
    watch_timeout_seconds=60,
    watch_read_timeout_seconds=90,
    list_read_timeout_seconds=10,
    connect_timeout_seconds=2,
    backoff_initial_seconds=0.05,
    backoff_max_seconds=0.5,
    log_repeat_seconds=60,
)


class Recorder:
    """A sink that records batches; ``gate`` can hold the delivering thread."""

    def __init__(self) -> None:
        self.batches: list[list[Change]] = []
        self.cond = threading.Condition()
        self.gate = threading.Event()
        self.gate.set()
        self.blocked = threading.Event()

    def __call__(self, changes: Sequence[Change]) -> None:
        if not self.gate.is_set():
            self.blocked.set()
            self.gate.wait()
        with self.cond:
            self.batches.append(list(changes))
            self.cond.notify_all()

    def changes(self) -> list[Change]:
        with self.cond:
            return [change for batch in self.batches for change in batch]

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.cond.wait(min(remaining, 0.2))

    def wait_change(
        self, kind: Kind, key: str, *, deleted: bool = False, timeout: float = WAIT,
        where: Callable[[Any], bool] | None = None,
    ) -> Change:
        found: list[Change] = []

        def seen() -> bool:
            for batch in self.batches:
                for change in batch:
                    if change.kind is not kind or change.key != key:
                        continue
                    if (change.obj is None) != deleted:
                        continue
                    if where is not None and not where(change.obj):
                        continue
                    found.append(change)
                    return True
            return False

        self.wait_for(seen, f"{'delete' if deleted else 'upsert'} of {kind.value} {key}",
                      timeout)
        return found[0]

    def keys(self, kind: Kind, prefix: str = "") -> list[str]:
        return [c.key for c in self.changes() if c.kind is kind and c.key.startswith(prefix)]

    def clear(self) -> None:
        with self.cond:
            self.batches.clear()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def admin_client(control_plane: ControlPlane) -> Iterator[Any]:
    api = make_api_client(str(control_plane.admin_kubeconfig))
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def nodes(control_plane: ControlPlane) -> Iterator[Callable[..., str]]:
    """Create Node objects (there is no kubelet); deleted when the test ends."""
    created: list[str] = []
    with control_plane.api_client() as api:
        core = k8s_client.CoreV1Api(api)

        def create(name: str | None = None, address: str = "192.0.2.10") -> str:
            name = name or unique_name("node")
            body: Any = {"metadata": {"name": name}}
            core.create_node(body=body)
            created.append(name)
            set_node_address(core, name, address)
            return name

        yield create
        for name in created:
            try:
                core.delete_node(name)
            except ApiException as error:
                if error.status != 404:
                    raise


def set_node_address(core: Any, name: str, address: str, extra_condition: bool = False) -> None:
    status: dict[str, Any] = {"addresses": [{"type": "InternalIP", "address": address}]}
    if extra_condition:
        status["conditions"] = [{"type": "Ready", "status": "Unknown"}]
    core.patch_node_status(
        name, body={"status": status}, _content_type="application/merge-patch+json"
    )


@pytest.fixture
def start_source() -> Iterator[Callable[..., tuple[KubeSource, Recorder]]]:
    started: list[KubeSource] = []

    def start(api: Any, config: KubeSourceConfig = FAST) -> tuple[KubeSource, Recorder]:
        source = KubeSource(api, config)
        recorder = Recorder()
        source.start(recorder)
        started.append(source)
        return source, recorder

    yield start
    for source in started:
        source.stop()


# ---------------------------------------------------------------------------------------


def test_initial_sync_is_paged_and_one_batch_per_kind(
    kube: Kube, admin_client: Any, nodes: Callable[..., str], start_source: Any
) -> None:
    namespace = kube.create_namespace(labels={"team": "a"})
    pods = [
        kube.create_pod(namespace, f"p{i}", node_name="n", labels={"app": "web"},
                        ports=[(8080, "TCP", "http")], ip=f"10.1.0.{i + 1}")
        for i in range(5)
    ]
    kube.create_network_policy(namespace, {"metadata": {"name": "deny"},
                                           "spec": {"podSelector": {}}})
    node = nodes()

    # Count the paged requests the source makes (page size 2, at least 5 pods).
    pool = admin_client.rest_client.pool_manager
    real_request = pool.request
    continued: list[str] = []

    def counting_request(method: str, url: str, **kwargs: Any) -> Any:
        if "continue=" in url:
            continued.append(url)
        return real_request(method, url, **kwargs)

    pool.request = counting_request

    source, recorder = start_source(admin_client)
    wait_until(lambda: source.synced, "synced")
    assert any("/api/v1/pods?" in url for url in continued), "pods were not paged"

    first_batches: dict[Kind, list[Change]] = {}
    for batch in recorder.batches:
        if batch and batch[0].kind not in first_batches:
            first_batches[batch[0].kind] = batch
    pod_keys = {c.key for c in first_batches[Kind.POD]}
    assert {f"{namespace}/p{i}" for i in range(5)} <= pod_keys
    assert namespace in {c.key for c in first_batches[Kind.NAMESPACE]}
    assert f"{namespace}/deny" in {c.key for c in first_batches[Kind.NETWORK_POLICY]}
    assert node in {c.key for c in first_batches[Kind.NODE]}  # every node, not only ours

    pod = next(c for c in first_batches[Kind.POD] if c.key == f"{namespace}/p0")
    assert pod.obj is not None
    assert pod.obj["metadata"]["uid"] == pods[0]["metadata"]["uid"]
    assert pod.obj["metadata"]["labels"] == {"app": "web"}
    assert pod.obj["spec"] == {
        "nodeName": "n",
        "containers": [{"ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]}],
    }
    assert pod.obj["status"] == {
        "phase": "Running", "podIP": "10.1.0.1", "podIPs": [{"ip": "10.1.0.1"}]
    }
    ns_change = next(c for c in first_batches[Kind.NAMESPACE] if c.key == namespace)
    assert ns_change.obj is not None
    assert ns_change.obj["metadata"]["labels"]["team"] == "a"
    health = source.health
    assert health.connected or all(h.listed for h in health.kinds.values())
    assert health.kinds[Kind.POD].objects >= 5


def test_add_update_delete_for_each_kind(
    kube: Kube, admin_client: Any, nodes: Callable[..., str], start_source: Any,
    control_plane: ControlPlane,
) -> None:
    node = nodes()
    source, recorder = start_source(admin_client)
    wait_until(lambda: source.synced, "synced")
    wait_until(lambda: source.health.connected, "all watches connected")

    namespace = kube.create_namespace(labels={"team": "a"})
    recorder.wait_change(Kind.NAMESPACE, namespace)
    kube.set_namespace_labels(namespace, {"team": "b"})
    recorder.wait_change(Kind.NAMESPACE, namespace,
                         where=lambda o: o["metadata"]["labels"].get("team") == "b")

    kube.create_pod(namespace, "web", node_name="n", labels={"app": "a"}, ip="10.2.0.1")
    key = f"{namespace}/web"
    recorder.wait_change(Kind.POD, key, where=lambda o: o["status"].get("podIP") == "10.2.0.1")
    kube.set_pod_labels(namespace, "web", {"app": "b"})
    recorder.wait_change(Kind.POD, key, where=lambda o: o["metadata"]["labels"] == {"app": "b"})

    policy = {"metadata": {"name": "np"}, "spec": {"podSelector": {"matchLabels": {"a": "1"}}}}
    kube.create_network_policy(namespace, policy)
    recorder.wait_change(Kind.NETWORK_POLICY, f"{namespace}/np")
    policy["spec"] = {"podSelector": {"matchLabels": {"a": "2"}}}
    kube.update_network_policy(namespace, policy)
    recorder.wait_change(
        Kind.NETWORK_POLICY, f"{namespace}/np",
        where=lambda o: o["spec"]["podSelector"]["matchLabels"] == {"a": "2"},
    )

    with control_plane.api_client() as api:
        set_node_address(k8s_client.CoreV1Api(api), node, "192.0.2.99")
    recorder.wait_change(
        Kind.NODE, node, where=lambda o: o["status"]["addresses"][0]["address"] == "192.0.2.99"
    )

    kube.delete_network_policy(namespace, "np")
    recorder.wait_change(Kind.NETWORK_POLICY, f"{namespace}/np", deleted=True)
    kube.delete_pod(namespace, "web")
    recorder.wait_change(Kind.POD, key, deleted=True)
    kube.delete_namespace(namespace)
    recorder.wait_change(Kind.NAMESPACE, namespace, deleted=True)
    with control_plane.api_client() as api:
        k8s_client.CoreV1Api(api).delete_node(node)
    recorder.wait_change(Kind.NODE, node, deleted=True)
    assert source.synced


def test_irrelevant_changes_are_not_emitted(
    kube: Kube, admin_client: Any, nodes: Callable[..., str], start_source: Any,
    control_plane: ControlPlane,
) -> None:
    node = nodes()
    namespace = kube.create_namespace()
    kube.create_pod(namespace, "quiet", node_name="n", ip="10.3.0.1")
    kube.create_pod(namespace, "sentinel", node_name="n", ip="10.3.0.2")
    source, recorder = start_source(admin_client)
    wait_until(lambda: source.synced, "synced")
    wait_until(lambda: source.health.connected, "all watches connected")
    recorder.clear()

    # Only status.conditions change (Ready flips): nothing the compiler reads.
    kube.set_pod_status(namespace, "quiet", phase="Running", ip="10.3.0.1", ready=False)
    with control_plane.api_client() as api:
        core = k8s_client.CoreV1Api(api)
        set_node_address(core, node, "192.0.2.10", extra_condition=True)
        # A change that matters, after them: once it is seen, the others were processed.
        set_node_address(core, node, "192.0.2.11")
    kube.set_pod_labels(namespace, "sentinel", {"seen": "yes"})
    recorder.wait_change(Kind.POD, f"{namespace}/sentinel")
    recorder.wait_change(Kind.NODE, node)
    assert recorder.keys(Kind.POD, namespace) == [f"{namespace}/sentinel"]
    assert recorder.keys(Kind.NODE, node) == [node]


def test_node_watch_sees_every_node_with_its_labels(
    admin_client: Any, nodes: Callable[..., str], start_source: Any,
    control_plane: ControlPlane,
) -> None:
    mine = nodes()
    other = nodes()
    source, recorder = start_source(admin_client)
    wait_until(lambda: source.synced, "synced")
    wait_until(lambda: source.health.connected, "all watches connected")
    with control_plane.api_client() as api:
        core = k8s_client.CoreV1Api(api)
        set_node_address(core, mine, "192.0.2.51")
        core.patch_node(other, body={"metadata": {"labels": {"zone": "b"}}})
    recorder.wait_change(Kind.NODE, mine,
                         where=lambda o: o["status"]["addresses"][0]["address"] == "192.0.2.51")
    change = recorder.wait_change(Kind.NODE, other,
                                  where=lambda o: o["metadata"].get("labels") == {"zone": "b"})
    assert change.obj == {
        "metadata": {"name": other, "resourceVersion": change.obj["metadata"]["resourceVersion"],
                     "labels": {"zone": "b"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]},
    }


def test_a_node_created_later_is_seen(
    admin_client: Any, nodes: Callable[..., str], start_source: Any
) -> None:
    name = unique_name("node")
    source, recorder = start_source(admin_client)
    wait_until(lambda: source.synced, "synced without that Node object")
    assert name not in recorder.keys(Kind.NODE)
    wait_until(lambda: source.health.kinds[Kind.NODE].connected, "node watch connected")
    nodes(name)
    recorder.wait_change(Kind.NODE, name)


def test_gone_resource_version_relists_and_reports_missed_delete(
    kube: Kube, admin_client: Any, start_source: Any, control_plane: ControlPlane
) -> None:
    namespace = kube.create_namespace()
    kube.create_pod(namespace, "doomed", node_name="n", ip="10.4.0.1")
    kube.create_pod(namespace, "survivor", node_name="n", ip="10.4.0.2")
    source, recorder = start_source(admin_client)
    wait_until(lambda: source.synced, "synced")
    wait_until(lambda: source.health.connected, "all watches connected")
    relists_before = source.health.kinds[Kind.POD].relists
    seen_before = len(recorder.changes())

    # Hold the pod loop inside the sink so it reads nothing while the pod is deleted.
    recorder.gate.clear()
    kube.create_pod(namespace, "trigger", node_name="n", ip="10.4.0.3")
    assert recorder.blocked.wait(WAIT)
    kube.delete_pod(namespace, "doomed")
    kube.create_pod(namespace, "newcomer", node_name="n", ip="10.4.0.4")
    control_plane.compact_etcd()
    # The open stream (which may already carry the delete) is cut: the loop has to
    # resume from a resourceVersion that was compacted away.
    for watcher in source._watchers.values():  # cut every stream, as a network failure
        watcher.interrupt()
    recorder.gate.set()

    recorder.wait_change(Kind.POD, f"{namespace}/doomed", deleted=True)
    recorder.wait_change(Kind.POD, f"{namespace}/newcomer")
    assert source.health.kinds[Kind.POD].relists > relists_before
    later = recorder.changes()[seen_before:]
    assert f"{namespace}/survivor" not in [c.key for c in later]  # unchanged: no update
    assert source.synced
    # And the watch works again after the relist.
    kube.delete_pod(namespace, "survivor")
    recorder.wait_change(Kind.POD, f"{namespace}/survivor", deleted=True)


def test_apiserver_restart_reconnects_and_stays_synced(
    kube: Kube, admin_client: Any, start_source: Any, control_plane: ControlPlane,
    caplog: pytest.LogCaptureFixture,
) -> None:
    namespace = kube.create_namespace()
    kube.create_pod(namespace, "before", node_name="n", ip="10.5.0.1")
    source, recorder = start_source(admin_client)
    wait_until(lambda: source.synced, "synced")
    wait_until(lambda: source.health.connected, "all watches connected")

    with caplog.at_level(logging.WARNING, logger="agent.control.kube_source"):
        control_plane.kill_apiserver()
        wait_until(lambda: not source.health.connected, "watches noticing the outage")
        time.sleep(1.5)  # several reconnect attempts against a closed port
        assert source.synced  # fail static: the last known state stays valid
        errors = sum(h.watch_errors + h.list_errors for h in source.health.kinds.values())
        assert errors >= 3
        control_plane.start_apiserver()
    # Changes right after the restart, probably before the loops reconnect.
    kube.delete_pod(namespace, "before")
    kube.create_pod(namespace, "after", node_name="n", ip="10.5.0.2")
    recorder.wait_change(Kind.POD, f"{namespace}/before", deleted=True)
    recorder.wait_change(Kind.POD, f"{namespace}/after")
    wait_until(lambda: source.health.connected, "reconnected")
    assert source.synced
    # Log volume: one warning per kind for the outage, not one per attempt.
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 0 < len(warnings) <= 2 * len(source.health.kinds)


def test_server_side_watch_timeout_resumes_without_losing_events(
    kube: Kube, admin_client: Any, start_source: Any
) -> None:
    config = KubeSourceConfig(
        page_size=50, watch_timeout_seconds=1, backoff_initial_seconds=0.05,
        backoff_max_seconds=0.5,
    )
    source, recorder = start_source(admin_client, config)
    wait_until(lambda: source.synced, "synced")
    wait_until(lambda: source.health.kinds[Kind.POD].watch_restarts >= 2, "watch restarts")
    namespace = kube.create_namespace()
    kube.create_pod(namespace, "p", node_name="n", ip="10.6.0.1")
    recorder.wait_change(Kind.POD, f"{namespace}/p")
    assert source.health.kinds[Kind.POD].relists == 0


def test_stop_is_prompt(admin_client: Any, start_source: Any) -> None:
    source, _recorder = start_source(admin_client)
    wait_until(lambda: source.synced, "synced")
    wait_until(lambda: source.health.connected, "all watches connected")
    started = time.monotonic()
    source.stop()
    assert time.monotonic() - started < 2.0
    assert not source.health.connected


CLUSTER_ROLE_RULES = [
    {"apiGroups": [""], "resources": ["pods", "namespaces", "nodes"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["policy.networking.k8s.io"], "resources": ["clusternetworkpolicies"],
     "verbs": ["get", "list", "watch"]},
]


def test_rbac_forbidden_is_clear_and_recovers_once_granted(
    control_plane: ControlPlane, start_source: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sa_namespace = unique_name("agent")
    sa_name = "netpol-agent"
    token = control_plane.service_account_token(sa_namespace, sa_name)
    api = make_api_client(str(control_plane.kubeconfig_for_token(token)))
    identity = f"system:serviceaccount:{sa_namespace}:{sa_name}"
    role_name = unique_name("netpol-agent")
    with control_plane.api_client() as admin:
        rbac = k8s_client.RbacAuthorizationV1Api(admin)
        try:
            with caplog.at_level(logging.ERROR, logger="agent.control.kube_source"):
                source, _recorder = start_source(api)
                wait_until(
                    lambda: all(h.last_error for h in source.health.kinds.values()),
                    "every kind failing",
                )
                time.sleep(1.0)  # several retries
            assert not source.synced
            messages = [r.getMessage() for r in caplog.records]
            for resource in ("pods", "namespaces", "networkpolicies.networking.k8s.io",
                             "nodes", "clusternetworkpolicies.policy.networking.k8s.io"):
                relevant = [m for m in messages if f"cannot list {resource}" in m]
                assert relevant, f"no clear error for {resource}: {messages}"
                assert identity in relevant[0]
                assert "forbidden" in relevant[0]
                assert "grant get, list and watch" in relevant[0]
            # Rate-limited: a first error per kind, not one per retry.
            assert len(caplog.records) <= 2 * len(source.health.kinds)
            assert all(h.list_errors >= 2 for h in source.health.kinds.values())

            role: Any = {"metadata": {"name": role_name}, "rules": CLUSTER_ROLE_RULES}
            binding: Any = {
                "metadata": {"name": role_name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": role_name},
                "subjects": [{"kind": "ServiceAccount", "name": sa_name,
                              "namespace": sa_namespace}],
            }
            rbac.create_cluster_role(body=role)
            rbac.create_cluster_role_binding(body=binding)
            wait_until(lambda: source.synced, "synced once RBAC allows it")
            wait_until(lambda: source.health.connected, "all watches connected")
        finally:
            for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
                try:
                    delete(role_name)
                except ApiException as error:
                    if error.status != 404:
                        raise
            api.close()
