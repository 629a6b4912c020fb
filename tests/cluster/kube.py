"""A small typed helper to drive the test control plane like a kubelet + a user would.

There is no scheduler, kubelet or controller-manager, so:

* pods are created with ``spec.nodeName`` set, then their status (phase, podIP(s),
  Ready condition) is written through the ``status`` subresource, as a kubelet does;
* :meth:`Kube.delete_pod` deletes with grace period 0 by default (a graceful delete
  of a bound pod would wait forever for a kubelet; pass ``grace_period_seconds``
  to get a pod stuck in Terminating on purpose);
* namespaces are deleted by first deleting the pods and NetworkPolicies in them,
  then finalizing the namespace ourselves (no namespace controller runs).

All objects come back as plain JSON-like dicts (camelCase keys, as on the wire).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, Self, TypeVar

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

JSON = dict[str, Any]
#: A container port: 8080 (TCP), (53, "UDP"), (8080, "TCP", "http"), or a
#: ContainerPort dict such as {"containerPort": 80, "protocol": "SCTP", "name": "x"}.
PortLike = int | tuple[int, str] | tuple[int, str, str] | Mapping[str, Any]

MERGE_PATCH = "application/merge-patch+json"
TEST_IMAGE = "registry.invalid/netpol-agent/test:none"


class _FromDict(Protocol):
    @classmethod
    def from_dict(cls, obj: dict[str, Any] | None) -> Self | None: ...


M = TypeVar("M", bound=_FromDict)


def model(cls: type[M], data: Mapping[str, Any]) -> M:
    """Build a typed client model from a wire-format (camelCase) dict.

    The models forbid unknown fields, so a typo in a test's dict fails loudly.
    """
    out = cls.from_dict(dict(data))
    if out is None:
        raise ValueError(f"cannot build {cls.__name__} from {data!r}")
    return out


def unique_name(prefix: str = "t") -> str:
    """A DNS-1123 label unique to this call (``prefix-<10 hex>``)."""
    return f"{prefix}-{secrets.token_hex(5)}"


def _container_port(port: PortLike) -> JSON:
    if isinstance(port, int):
        return {"containerPort": port, "protocol": "TCP"}
    if isinstance(port, tuple):
        out: JSON = {"containerPort": port[0], "protocol": port[1]}
        if len(port) == 3:
            out["name"] = port[2]
        return out
    return dict(port)


def _ignore_404(exc: ApiException) -> None:
    if exc.status != 404:
        raise exc


class Kube:
    """Typed helper around an admin ApiClient; remembers what it created for cleanup()."""

    def __init__(self, api: k8s_client.ApiClient) -> None:
        self.api = api
        self.core = k8s_client.CoreV1Api(api)
        self.net = k8s_client.NetworkingV1Api(api)
        self._namespaces: list[str] = []
        self._pods: list[tuple[str, str]] = []
        self._policies: list[tuple[str, str]] = []

    def _dict(self, obj: Any) -> JSON:
        out: JSON = self.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return out

    # -- namespaces ------------------------------------------------------------

    def create_namespace(
        self, name: str | None = None, labels: Mapping[str, str] | None = None
    ) -> str:
        """Create a namespace (a unique name if none is given); returns its name."""
        name = name or unique_name("ns")
        self.core.create_namespace(body=model(
            k8s_client.V1Namespace, {"metadata": {"name": name, "labels": dict(labels or {})}}
        ))
        self._namespaces.append(name)
        return name

    def get_namespace(self, name: str) -> JSON:
        return self._dict(self.core.read_namespace(name))

    def set_namespace_labels(self, name: str, labels: Mapping[str, str]) -> JSON:
        """Replace the namespace's labels with exactly ``labels``.

        The apiserver keeps its own ``kubernetes.io/metadata.name`` label.
        """
        return self._replace_labels(
            lambda body: self.core.patch_namespace(name, body=body, _content_type=MERGE_PATCH),
            self.get_namespace(name),
            labels,
        )

    def delete_namespace(self, name: str, *, timeout: float = 30.0) -> None:
        """Delete pods and NetworkPolicies in it, then the namespace itself, and wait."""
        for pod in self._dict(self.core.list_namespaced_pod(name))["items"]:
            self.delete_pod(name, pod["metadata"]["name"])
        for pol in self._dict(self.net.list_namespaced_network_policy(name))["items"]:
            self.delete_network_policy(name, pol["metadata"]["name"])
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.core.delete_namespace(name)
                ns = self.core.read_namespace(name)
            except ApiException as exc:
                _ignore_404(exc)
                break
            if ns.spec is not None and ns.spec.finalizers:
                # Do the namespace controller's last step: drop the "kubernetes"
                # finalizer so the next delete removes the object.
                body = self._dict(ns)
                body["spec"]["finalizers"] = []
                try:
                    self.core.replace_namespace_finalize(
                        name, body=model(k8s_client.V1Namespace, body)
                    )
                except ApiException as exc:
                    if exc.status not in (404, 409):
                        raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"namespace {name} still exists after {timeout}s")
            time.sleep(0.1)
        if name in self._namespaces:
            self._namespaces.remove(name)

    # -- pods ------------------------------------------------------------------

    def create_pod(
        self,
        namespace: str,
        name: str | None = None,
        *,
        node_name: str,
        labels: Mapping[str, str] | None = None,
        ports: Iterable[PortLike] = (),
        ip: str | None = None,
        ips: Sequence[str] | None = None,
        phase: str | None = "Running",
        host_network: bool = False,
        host_ip: str | None = None,
    ) -> JSON:
        """Create a pod bound to ``node_name``, then set its status like a kubelet.

        ``ips`` (dual stack) defaults to ``[ip]``; ``ip`` defaults to ``ips[0]``.
        With ``phase=None`` the status is left as the apiserver made it (Pending,
        no IP). Returns the pod after the status write.
        """
        name = name or unique_name("pod")
        body: JSON = {
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
            "spec": {
                "nodeName": node_name,
                "hostNetwork": host_network,
                "terminationGracePeriodSeconds": 30,
                "containers": [{
                    "name": "main",
                    "image": TEST_IMAGE,
                    "ports": [_container_port(p) for p in ports],
                }],
            },
        }
        created = self._dict(self.core.create_namespaced_pod(
            namespace, body=model(k8s_client.V1Pod, body)
        ))
        self._pods.append((namespace, name))
        if phase is None:
            return created
        return self.set_pod_status(
            namespace, name, phase=phase, ip=ip, ips=ips, host_ip=host_ip
        )

    def get_pod(self, namespace: str, name: str) -> JSON:
        return self._dict(self.core.read_namespaced_pod(name, namespace))

    def set_pod_status(
        self,
        namespace: str,
        name: str,
        *,
        phase: str = "Running",
        ip: str | None = None,
        ips: Sequence[str] | None = None,
        host_ip: str | None = None,
        ready: bool | None = None,
    ) -> JSON:
        """Write status via the status subresource (merge patch: lists are replaced).

        ``ready`` defaults to ``phase == "Running"``.
        """
        pod_ips = list(ips) if ips else ([ip] if ip else [])
        ip = ip or (pod_ips[0] if pod_ips else None)
        ready = (phase == "Running") if ready is None else ready
        status: JSON = {
            "phase": phase,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
        }
        if ip:
            status["podIP"] = ip
            status["podIPs"] = [{"ip": a} for a in pod_ips]
        if host_ip:
            status["hostIP"] = host_ip
            status["hostIPs"] = [{"ip": host_ip}]
        return self._dict(self.core.patch_namespaced_pod_status(
            name, namespace, body={"status": status}, _content_type=MERGE_PATCH
        ))

    def set_pod_labels(self, namespace: str, name: str, labels: Mapping[str, str]) -> JSON:
        """Replace the pod's labels with exactly ``labels``."""
        return self._replace_labels(
            lambda body: self.core.patch_namespaced_pod(
                name, namespace, body=body, _content_type=MERGE_PATCH
            ),
            self.get_pod(namespace, name),
            labels,
        )

    def delete_pod(
        self, namespace: str, name: str, *, grace_period_seconds: int = 0
    ) -> None:
        """Delete a pod; grace period 0 (default) removes it at once."""
        try:
            self.core.delete_namespaced_pod(
                name, namespace, grace_period_seconds=grace_period_seconds
            )
        except ApiException as exc:
            _ignore_404(exc)
        if grace_period_seconds == 0 and (namespace, name) in self._pods:
            self._pods.remove((namespace, name))

    # -- network policies ----------------------------------------------------------

    def create_network_policy(self, namespace: str, policy: Mapping[str, Any]) -> JSON:
        """Create a networking.k8s.io/v1 NetworkPolicy from a dict (apiVersion/kind optional)."""
        body = self._policy_body(namespace, policy)
        created = self._dict(self.net.create_namespaced_network_policy(
            namespace, body=model(k8s_client.V1NetworkPolicy, body)
        ))
        self._policies.append((namespace, created["metadata"]["name"]))
        return created

    def get_network_policy(self, namespace: str, name: str) -> JSON:
        return self._dict(self.net.read_namespaced_network_policy(name, namespace))

    def update_network_policy(self, namespace: str, policy: Mapping[str, Any]) -> JSON:
        """Replace (PUT) a NetworkPolicy with ``policy``; the resourceVersion is filled in."""
        body = self._policy_body(namespace, policy)
        name = body["metadata"]["name"]
        if not body["metadata"].get("resourceVersion"):
            current = self.get_network_policy(namespace, name)
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self._dict(self.net.replace_namespaced_network_policy(
            name, namespace, body=model(k8s_client.V1NetworkPolicy, body)
        ))

    def delete_network_policy(self, namespace: str, name: str) -> None:
        try:
            self.net.delete_namespaced_network_policy(name, namespace)
        except ApiException as exc:
            _ignore_404(exc)
        if (namespace, name) in self._policies:
            self._policies.remove((namespace, name))

    # -- cleanup -------------------------------------------------------------------

    def cleanup(self) -> None:
        """Delete everything this helper created (that still exists)."""
        errors: list[BaseException] = []
        for ns, name in list(self._policies):
            try:
                self.delete_network_policy(ns, name)
            except Exception as exc:
                errors.append(exc)
        for ns, name in list(self._pods):
            try:
                self.delete_pod(ns, name)
            except Exception as exc:
                errors.append(exc)
        for ns in list(reversed(self._namespaces)):
            try:
                self.delete_namespace(ns)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- internals -----------------------------------------------------------------

    @staticmethod
    def _policy_body(namespace: str, policy: Mapping[str, Any]) -> JSON:
        body: JSON = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy"}
        body.update(policy)
        meta = dict(body.get("metadata") or {})
        if "name" not in meta and "generateName" not in meta:
            meta["name"] = unique_name("np")
        meta.setdefault("namespace", namespace)
        body["metadata"] = meta
        return body

    def _replace_labels(
        self, patch: Any, current: JSON, labels: Mapping[str, str]
    ) -> JSON:
        old: Mapping[str, str] = current["metadata"].get("labels") or {}
        new: dict[str, str | None] = {k: None for k in old if k not in labels}
        if "kubernetes.io/metadata.name" in old:
            new.pop("kubernetes.io/metadata.name", None)
        new.update(labels)
        return self._dict(patch({"metadata": {"labels": new}}))
