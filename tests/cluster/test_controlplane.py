"""The test control plane itself: real apiserver behaviour the agent's tests rely on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3
from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import ControlPlane
from tests.cluster.kube import Kube, model, unique_name

pytestmark = pytest.mark.cluster


def _watch(
    w: k8s_watch.Watch, func: Callable[..., Any], *args: Any, **kwargs: Any
) -> Iterator[dict[str, Any]]:
    """Typed shim over the (untyped) kubernetes.watch.Watch.stream."""
    events: Iterator[dict[str, Any]] = w.stream(func, *args, **kwargs)  # type: ignore[no-untyped-call]
    yield from events


def _new_watch() -> k8s_watch.Watch:
    w: k8s_watch.Watch = k8s_watch.Watch()  # type: ignore[no-untyped-call]
    return w


def _rv(obj: Any) -> str:
    rv: str = obj.metadata.resource_version
    return rv


def _eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Retry ``check`` until it stops raising (RBAC caches take a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_version_is_pinned_release(control_plane: ControlPlane) -> None:
    with control_plane.api_client() as api:
        info = k8s_client.VersionApi(api).get_code()
    assert info.git_version == "v1.37.2"


def test_admin_creates_pod_and_patches_status(kube: Kube) -> None:
    ns = kube.create_namespace(labels={"team": "a"})
    assert kube.get_namespace(ns)["metadata"]["labels"] == {
        "team": "a",
        "kubernetes.io/metadata.name": ns,
    }
    pod = kube.create_pod(
        ns, "web", node_name="node-a", labels={"app": "web"},
        ports=[8080, (53, "UDP", "dns"), {"containerPort": 9000, "protocol": "SCTP"}],
        ips=["10.244.1.5", "fd00:10:244:1::5"], host_ip="192.0.2.10",
    )
    assert pod["spec"]["nodeName"] == "node-a"
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"] == "10.244.1.5"
    assert [a["ip"] for a in pod["status"]["podIPs"]] == ["10.244.1.5", "fd00:10:244:1::5"]
    ready = [c for c in pod["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True"
    assert [p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]] == [
        8080, 53, 9000,
    ]
    # No ServiceAccount admission: nothing was injected behind our back.
    assert not pod["spec"].get("volumes")

    relabeled = kube.set_pod_labels(ns, "web", {"app": "web2", "tier": "front"})
    assert relabeled["metadata"]["labels"] == {"app": "web2", "tier": "front"}
    kube.set_namespace_labels(ns, {"team": "b"})
    assert kube.get_namespace(ns)["metadata"]["labels"]["team"] == "b"

    done = kube.set_pod_status(ns, "web", phase="Succeeded", ips=["10.244.1.5"])
    assert done["status"]["phase"] == "Succeeded"

    kube.delete_pod(ns, "web")
    with pytest.raises(ApiException) as err:
        kube.get_pod(ns, "web")
    assert err.value.status == 404

    kube.delete_namespace(ns)
    with pytest.raises(ApiException) as err:
        kube.get_namespace(ns)
    assert err.value.status == 404


def test_network_policy_crud(kube: Kube) -> None:
    ns = kube.create_namespace()
    policy: dict[str, Any] = {
        "metadata": {"name": "allow-dns"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": "UDP", "port": 53}]}],
        },
    }
    created = kube.create_network_policy(ns, policy)
    assert created["spec"]["ingress"][0]["ports"][0]["port"] == 53
    policy["spec"]["ingress"] = [{"ports": [{"protocol": "TCP", "port": 80, "endPort": 90}]}]
    updated = kube.update_network_policy(ns, policy)
    assert updated["spec"]["ingress"][0]["ports"][0]["endPort"] == 90
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    kube.delete_network_policy(ns, "allow-dns")
    with pytest.raises(ApiException) as err:
        kube.get_network_policy(ns, "allow-dns")
    assert err.value.status == 404


def test_service_account_without_rbac_is_forbidden(control_plane: ControlPlane) -> None:
    ns = unique_name("sa")
    token = control_plane.service_account_token(ns, "nobody")
    with control_plane.api_client_for_token(token) as api:
        core = k8s_client.CoreV1Api(api)
        with pytest.raises(ApiException) as err:
            core.list_pod_for_all_namespaces()
        assert err.value.status == 403
        # Authenticated as the SA (not anonymous): the message names it.
        assert f"system:serviceaccount:{ns}:nobody" in str(err.value.body)


@pytest.fixture
def reader_role(control_plane: ControlPlane) -> Iterator[str]:
    """A ClusterRole that can get/list/watch what the agent watches."""
    name = unique_name("netpol-reader")
    with control_plane.api_client() as api:
        rbac = k8s_client.RbacAuthorizationV1Api(api)
        rbac.create_cluster_role(body=model(k8s_client.V1ClusterRole, {
            "metadata": {"name": name},
            "rules": [
                {"apiGroups": [""], "resources": ["pods", "namespaces"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
                 "verbs": ["get", "list", "watch"]},
            ],
        }))
        try:
            yield name
        finally:
            rbac.delete_cluster_role(name)


def test_service_account_bound_to_cluster_role_can_list_and_watch(
    control_plane: ControlPlane, kube: Kube, reader_role: str
) -> None:
    sa_ns = kube.create_namespace()
    token = control_plane.service_account_token(sa_ns, "agent", audiences=["netpol-agent"])
    # A token for another audience than the apiserver's is rejected (401)...
    with control_plane.api_client_for_token(token) as api:
        with pytest.raises(ApiException) as err:
            k8s_client.CoreV1Api(api).list_pod_for_all_namespaces()
        assert err.value.status == 401
    token = control_plane.service_account_token(sa_ns, "agent")

    binding = unique_name("netpol-reader")
    with control_plane.api_client() as admin:
        rbac = k8s_client.RbacAuthorizationV1Api(admin)
        rbac.create_cluster_role_binding(body=model(k8s_client.V1ClusterRoleBinding, {
            "metadata": {"name": binding},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": reader_role},
            "subjects": [{"kind": "ServiceAccount", "namespace": sa_ns, "name": "agent"}],
        }))
        try:
            with control_plane.api_client_for_token(token) as api:
                core = k8s_client.CoreV1Api(api)
                listing = _eventually(core.list_pod_for_all_namespaces)
                k8s_client.NetworkingV1Api(api).list_network_policy_for_all_namespaces()
                rv = _rv(listing)

                ns = kube.create_namespace()
                threading.Timer(0.5, lambda: kube.create_pod(
                    ns, "watched", node_name="node-b", ip="10.244.2.7")).start()
                seen: list[tuple[str, str, str | None]] = []
                w = _new_watch()
                for event in _watch(w, core.list_pod_for_all_namespaces,
                                    resource_version=rv, timeout_seconds=20):
                    obj = event["object"]
                    seen.append((event["type"], obj.metadata.name, obj.status.pod_ip))
                    if (event["type"] == "MODIFIED" and obj.metadata.name == "watched"
                            and obj.status.pod_ip):
                        w.stop()  # type: ignore[no-untyped-call]
                assert ("ADDED", "watched", None) in seen
                assert ("MODIFIED", "watched", "10.244.2.7") in seen
                # Writes are still forbidden.
                with pytest.raises(ApiException) as err:
                    core.delete_namespaced_pod("watched", ns)
                assert err.value.status == 403
        finally:
            rbac.delete_cluster_role_binding(binding)


def test_watch_from_compacted_resource_version_gets_410(
    control_plane: ControlPlane, kube: Kube
) -> None:
    ns = kube.create_namespace()
    kube.create_pod(ns, "a", node_name="n", ip="10.244.3.1")
    old_rv = _rv(kube.core.list_namespaced_pod(ns))

    # Before compaction, the old resourceVersion can still be watched from.
    for _ in _watch(_new_watch(), kube.core.list_namespaced_pod, ns,
                    resource_version=old_rv, timeout_seconds=1):
        pass

    kube.create_pod(ns, "b", node_name="n", ip="10.244.3.2")
    revision = control_plane.compact_etcd()
    assert revision > int(old_rv)

    with pytest.raises(ApiException) as err:
        for _ in _watch(_new_watch(), kube.core.list_namespaced_pod, ns,
                        resource_version=old_rv, timeout_seconds=5):
            pass
    assert err.value.status == 410

    # A fresh list + watch from its resourceVersion works again.
    fresh_rv = _rv(kube.core.list_namespaced_pod(ns))
    for _ in _watch(_new_watch(), kube.core.list_namespaced_pod, ns,
                    resource_version=fresh_rv, timeout_seconds=1):
        pass


def test_apiserver_restart_keeps_data(control_plane: ControlPlane, kube: Kube) -> None:
    ns = kube.create_namespace(labels={"keep": "me"})
    pod = kube.create_pod(ns, "p", node_name="n", labels={"a": "b"}, ip="10.244.4.4")
    with control_plane.api_client() as api:
        core = k8s_client.CoreV1Api(api)
        control_plane.kill_apiserver()
        assert not control_plane.apiserver_running
        with pytest.raises(urllib3.exceptions.HTTPError):
            core.read_namespaced_pod("p", ns, _request_timeout=2)
        control_plane.start_apiserver()
    again = kube.get_pod(ns, "p")
    assert again["metadata"]["uid"] == pod["metadata"]["uid"]
    assert again["metadata"]["resourceVersion"] == pod["metadata"]["resourceVersion"]
    assert again["status"]["podIP"] == "10.244.4.4"
    assert kube.get_namespace(ns)["metadata"]["labels"]["keep"] == "me"
