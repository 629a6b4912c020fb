"""deploy/ against a real kube-apiserver: every manifest passes a server-side dry-run, and
the agent's ServiceAccount can do exactly what its ClusterRole grants, nothing more.

The namespace, ServiceAccount, ClusterRole and ClusterRoleBinding are really created (a
dry-run cannot be authorized against) and removed at the end of the module.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from tests.cluster import netpolapi
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kube import Kube, model

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
FIELD_MANAGER = "netpol-agent-tests"
NAMESPACE = "netpol-agent"
SERVICE_ACCOUNT = "netpol-agent"
AGENT_USER = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
# Same namespace, no binding: what any service account can do on this apiserver.
BASELINE_USER = f"system:serviceaccount:{NAMESPACE}:baseline-nobody"
AGENT_GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}", "system:authenticated"]  # fmt: skip
NOT_OBJECTS = {"kustomization.yaml", "prometheus-scrape-config.example.yaml"}
SERVICE_MONITOR = "servicemonitor.yaml"
# Applied for real, in this order (the rest only as a dry-run).
RBAC = ["namespace.yaml", "serviceaccount.yaml", "clusterrole.yaml", "clusterrolebinding.yaml"]

# What the ClusterRole grants: (resource as kubectl prints it, verbs).
EXPECTED_RULES = {
    ("pods", ("get", "list", "watch")),
    ("namespaces", ("get", "list", "watch")),
    ("nodes", ("get", "list", "watch")),
    ("networkpolicies.networking.k8s.io", ("get", "list", "watch")),
    ("clusternetworkpolicies.policy.networking.k8s.io", ("get", "list", "watch")),
}


def manifests() -> list[str]:
    return sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name not in NOT_OBJECTS)


def load(name: str) -> list[dict[str, Any]]:
    with (DEPLOY / name).open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def kubectl(
    cp: ControlPlane, *args: str, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(cp.binaries.kubectl), f"--kubeconfig={kubeconfig or cp.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


# ---------------------------------------------------------------------------------------
# Without a cluster: the files themselves


def test_kustomization_lists_every_manifest_except_the_servicemonitor() -> None:
    kustomization = load("kustomization.yaml")[0]
    resources = set(kustomization["resources"])
    assert resources == set(manifests()) - {SERVICE_MONITOR}
    assert SERVICE_MONITOR not in resources


def test_daemonset_contract() -> None:
    (ds,) = load("daemonset.yaml")
    spec = ds["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["hostNetwork"] is True
    assert spec["serviceAccountName"] == SERVICE_ACCOUNT
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert container["image"] == "netpol-agent:dev"
    assert container["args"] == ["run", "--node=$(NODE_NAME)"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    security = container["securityContext"]
    assert security["privileged"] is False
    assert set(security["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9872}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9872}
    assert container["resources"]["limits"]["memory"] == "256Mi"
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    lock = volumes[mounts["/run/xtables.lock"]]["hostPath"]
    assert lock == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert volumes[mounts["/var/log"]]["hostPath"]["path"] == "/var/log"


# ---------------------------------------------------------------------------------------
# Against the apiserver


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The namespace and RBAC objects, really applied; removed afterwards."""
    if not control_plane.apiserver_running:
        control_plane.start_apiserver()
    for name in RBAC:
        kubectl(control_plane, "apply", "--server-side", f"--field-manager={FIELD_MANAGER}",
                "-f", str(DEPLOY / name))  # fmt: skip
    try:
        yield control_plane
    finally:
        kubectl(control_plane, "delete", "--ignore-not-found", "--wait=false",
                "-f", str(DEPLOY / "clusterrolebinding.yaml"),
                "-f", str(DEPLOY / "clusterrole.yaml"),
                "-f", str(DEPLOY / "serviceaccount.yaml"))  # fmt: skip
        with control_plane.api_client() as api:
            Kube(api).delete_namespace(NAMESPACE)  # no namespace controller runs here


@pytest.mark.cluster
@pytest.mark.parametrize("name", manifests())
def test_manifest_passes_server_side_dry_run(installed: ControlPlane, name: str) -> None:
    if name == SERVICE_MONITOR:
        crd = kubectl(installed, "get", "crd", "servicemonitors.monitoring.coreos.com",
                      check=False)  # fmt: skip
        if crd.returncode != 0:
            pytest.skip(
                "servicemonitor.yaml needs the Prometheus Operator CRDs "
                "(monitoring.coreos.com/v1), which this apiserver does not have"
            )
    proc = kubectl(installed, "apply", "--server-side", "--dry-run=server",
                   f"--field-manager={FIELD_MANAGER}", "-f", str(DEPLOY / name))  # fmt: skip
    assert "(server dry run)" in proc.stdout


@pytest.mark.cluster
def test_kustomization_passes_server_side_dry_run(installed: ControlPlane) -> None:
    proc = kubectl(installed, "apply", "--server-side", "--dry-run=server",
                   f"--field-manager={FIELD_MANAGER}", "-k", str(DEPLOY))  # fmt: skip
    applied = {line.split(" ", 1)[0] for line in proc.stdout.splitlines()}
    assert applied == {
        "namespace/netpol-agent",
        "serviceaccount/netpol-agent",
        "clusterrole.rbac.authorization.k8s.io/netpol-agent",
        "clusterrolebinding.rbac.authorization.k8s.io/netpol-agent",
        "daemonset.apps/netpol-agent",
        "service/netpol-agent",
    }


@pytest.mark.cluster
def test_the_cni_component_passes_server_side_dry_run(
    installed: ControlPlane, tmp_path: Path
) -> None:
    """deploy/ with `components: [cni]`: the install-cni init container, the agent's CNI
    flags and the hostPaths."""
    import shutil

    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    with (copy / "kustomization.yaml").open("a") as kustomization:
        kustomization.write("components:\n  - cni\n")
    proc = kubectl(installed, "apply", "--server-side", "--dry-run=server", "-o", "yaml",
                   f"--field-manager={FIELD_MANAGER}", "-k", str(copy))  # fmt: skip
    objects = [o for o in yaml.safe_load_all(proc.stdout) if o]
    items = [i for o in objects for i in (o.get("items") or [o])]
    (ds,) = [o for o in items if o.get("kind") == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"][0] == "install-cni"
    (agent,) = pod["containers"]
    assert "--cni-socket=/var/run/netpol-agent/cni.sock" in agent["args"]
    assert "--cni-conf-dir=/host/etc/cni/net.d" in agent["args"]
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"  # the base is kept
    paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert {"/opt/cni/bin", "/etc/cni/net.d", "/var/run/netpol-agent"} <= paths


_RULE_LINE = re.compile(r"^(\S+)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")


def resource_rules(cp: ControlPlane, user: str) -> set[tuple[str, tuple[str, ...]]]:
    """``kubectl auth can-i --list`` as (resource, verbs), resource rules only."""
    proc = kubectl(cp, "auth", "can-i", "--list", f"--as={user}", "-n", NAMESPACE)
    rules = set()
    for line in proc.stdout.splitlines()[1:]:
        match = _RULE_LINE.match(line)
        if match is None:
            continue  # non-resource URLs (the line starts with spaces)
        resource, _, names, verbs = match.groups()
        assert not names, f"unexpected resourceNames restriction: {line}"
        rules.add((resource, tuple(sorted(verbs.split()))))
    return rules


@pytest.mark.cluster
def test_service_account_can_do_exactly_its_role(installed: ControlPlane) -> None:
    baseline = resource_rules(installed, BASELINE_USER)
    granted = resource_rules(installed, AGENT_USER) - baseline
    assert granted == EXPECTED_RULES


@pytest.mark.parametrize(
    ("verb", "group", "resource", "namespace", "allowed"),
    [
        ("list", "", "pods", "", True),
        ("watch", "", "pods", "", True),
        ("get", "", "pods", "default", True),
        ("watch", "", "namespaces", "", True),
        ("list", "networking.k8s.io", "networkpolicies", "", True),
        ("watch", "networking.k8s.io", "networkpolicies", "kube-system", True),
        ("get", "", "nodes", "", True),
        ("list", "", "nodes", "", True),
        ("watch", "", "nodes", "", True),
        ("get", "", "secrets", "", False),
        ("list", "", "secrets", NAMESPACE, False),
        ("get", "", "configmaps", "kube-system", False),
        ("create", "", "pods", "default", False),
        ("delete", "", "pods", "default", False),
        ("update", "networking.k8s.io", "networkpolicies", "default", False),
        ("patch", "networking.k8s.io", "networkpolicies", "default", False),
        ("create", "networking.k8s.io", "networkpolicies", "default", False),
        ("get", "policy.networking.k8s.io", "clusternetworkpolicies", "", True),
        ("list", "policy.networking.k8s.io", "clusternetworkpolicies", "", True),
        ("watch", "policy.networking.k8s.io", "clusternetworkpolicies", "", True),
        ("create", "policy.networking.k8s.io", "clusternetworkpolicies", "", False),
        ("update", "policy.networking.k8s.io", "clusternetworkpolicies", "", False),
        ("patch", "policy.networking.k8s.io", "clusternetworkpolicies", "", False),
        ("delete", "policy.networking.k8s.io", "clusternetworkpolicies", "", False),
        ("deletecollection", "policy.networking.k8s.io", "clusternetworkpolicies", "", False),
        ("update", "policy.networking.k8s.io", "clusternetworkpolicies/status", "", False),
        ("list", "policy.networking.k8s.io", "adminnetworkpolicies", "", False),
        ("create", "", "nodes", "", False),
        ("delete", "", "nodes", "", False),
        ("update", "", "nodes", "", False),
        ("patch", "", "nodes", "", False),
        ("update", "", "nodes/status", "", False),
        ("get", "", "nodes/proxy", "", False),
        ("create", "", "pods/exec", "default", False),
        ("list", "", "services", "", False),
        ("list", "", "endpoints", "", False),
        ("create", "", "events", NAMESPACE, False),
        ("list", "apps", "daemonsets", "", False),
        ("create", "", "serviceaccounts/token", NAMESPACE, False),
        ("escalate", "rbac.authorization.k8s.io", "clusterroles", "", False),
        ("bind", "rbac.authorization.k8s.io", "clusterroles", "", False),
        ("impersonate", "", "users", "", False),
    ],
)
@pytest.mark.cluster
def test_subject_access_review(
    installed: ControlPlane, verb: str, group: str, resource: str, namespace: str, allowed: bool
) -> None:
    subresource = ""
    if "/" in resource:
        resource, subresource = resource.split("/", 1)
    attributes = {"verb": verb, "group": group, "resource": resource}
    if subresource:
        attributes["subresource"] = subresource
    if namespace:
        attributes["namespace"] = namespace
    review = model(
        k8s_client.V1SubjectAccessReview,
        {"spec": {"user": AGENT_USER, "groups": AGENT_GROUPS, "resourceAttributes": attributes}},
    )
    with installed.api_client() as api:
        result = k8s_client.AuthorizationV1Api(api).create_subject_access_review(body=review)
    assert result.status.allowed is allowed, (verb, group, resource, subresource, namespace)


CNP = "clusternetworkpolicies.policy.networking.k8s.io"


@pytest.fixture(scope="module")
def crd(installed: ControlPlane) -> Iterator[ControlPlane]:
    """The ClusterNetworkPolicy CRD, for this module's tests that need it."""
    netpolapi.install_crd(installed)
    try:
        yield installed
    finally:
        netpolapi.remove_crd(installed)


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("get", CNP, True),
        ("list", CNP, True),
        ("watch", CNP, True),
        ("create", CNP, False),
        ("update", CNP, False),
        ("patch", CNP, False),
        ("delete", CNP, False),
        ("list", "nodes", True),
        ("watch", "nodes", True),
        ("create", "nodes", False),
        ("update", "nodes", False),
        ("patch", "nodes", False),
        ("delete", "nodes", False),
        ("get", "secrets", False),
        ("list", "secrets", False),
    ],
)
@pytest.mark.cluster
def test_kubectl_auth_can_i_as_the_service_account(
    crd: ControlPlane, verb: str, resource: str, allowed: bool
) -> None:
    """What an operator would type: ``kubectl auth can-i VERB RESOURCE --as=...``
    (cluster-wide: --all-namespaces for the namespaced ones), with the CRD installed."""
    proc = kubectl(crd, "auth", "can-i", verb, resource, f"--as={AGENT_USER}",
                   "--all-namespaces", check=False)  # fmt: skip
    assert proc.stdout.strip() == ("yes" if allowed else "no"), proc.stderr
    assert proc.returncode == (0 if allowed else 1)


@pytest.mark.cluster
def test_kubectl_auth_can_i_write_node_status_is_no(installed: ControlPlane) -> None:
    proc = kubectl(installed, "auth", "can-i", "update", "nodes", "--subresource=status",
                   f"--as={AGENT_USER}", check=False)  # fmt: skip
    assert proc.stdout.strip() == "no"


@pytest.mark.cluster
def test_real_token_reads_what_the_agent_reads_and_nothing_else(installed: ControlPlane) -> None:
    token = installed.service_account_token(NAMESPACE, SERVICE_ACCOUNT)
    with installed.api_client_for_token(token) as api:
        core = k8s_client.CoreV1Api(api)
        net = k8s_client.NetworkingV1Api(api)
        core.list_pod_for_all_namespaces(limit=1)
        core.list_namespace(limit=1)
        net.list_network_policy_for_all_namespaces(limit=1)
        core.list_node(limit=1)  # every Node: nodes peers select any of them
        forbidden = [
            lambda: core.list_secret_for_all_namespaces(limit=1),
            lambda: core.read_namespaced_config_map("kube-root-ca.crt", NAMESPACE),
            lambda: core.create_namespaced_pod(
                NAMESPACE,
                body=model(k8s_client.V1Pod, {
                    "metadata": {"name": "nope"},
                    "spec": {"containers": [{"name": "c", "image": "registry.invalid/x"}]},
                }),
            ),
            lambda: net.delete_collection_namespaced_network_policy(NAMESPACE),
            lambda: core.patch_node("node-under-test", body={"metadata": {"labels": {"x": "y"}}}),
        ]  # fmt: skip
        for call in forbidden:
            with pytest.raises(ApiException) as raised:
                call()
            assert raised.value.status == 403


@pytest.mark.cluster
def test_real_token_reads_cluster_network_policies_and_cannot_write_them(
    crd: ControlPlane,
) -> None:
    token = crd.service_account_token(NAMESPACE, SERVICE_ACCOUNT)
    with crd.api_client_for_token(token) as api:
        custom = k8s_client.CustomObjectsApi(api)
        args = (netpolapi.GROUP, netpolapi.VERSION, netpolapi.PLURAL)
        custom.list_cluster_custom_object(*args, limit=1)
        with pytest.raises(ApiException) as raised:
            custom.create_cluster_custom_object(
                *args, netpolapi.cnp("nope", {"tier": "Admin", "priority": 1,
                                              "subject": {"namespaces": {}}}),
            )  # fmt: skip
        assert raised.value.status == 403
