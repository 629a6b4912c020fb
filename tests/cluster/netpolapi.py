"""The ClusterNetworkPolicy CRD (sigs.k8s.io/network-policy-api, pinned in
tests/cluster/gobuild/netpolapi/go.mod) on the test apiserver: install, remove, and
create/replace/delete ClusterNetworkPolicies through the CustomObjects API.

The apiserver is shared by the session and starts without the CRD; a test that needs it
installs it (``install_crd``), one that needs it absent removes it (``remove_crd``). No
controller-manager runs there, but removing a CRD needs none: kube-apiserver itself
deletes its objects and then the CRD.
"""

from __future__ import annotations

import functools
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import ControlPlane

HERE = Path(__file__).resolve().parent
CRD_NAME = "clusternetworkpolicies.policy.networking.k8s.io"
GROUP = "policy.networking.k8s.io"
VERSION = "v1alpha2"
PLURAL = "clusternetworkpolicies"


@functools.cache
def crd_path() -> Path:
    """The experimental CRD YAML of the pinned module (downloaded once; raises if not)."""
    proc = subprocess.run(
        ["bash", str(HERE / "netpol-api.sh"), "crd"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"tests/cluster/netpol-api.sh crd failed: {proc.stderr.strip()}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    if not path.is_file():
        raise RuntimeError(f"tests/cluster/netpol-api.sh crd printed no file: {proc.stdout}")
    return path


def _kubectl(cp: ControlPlane, *args: str) -> str:
    proc = subprocess.run(
        [str(cp.binaries.kubectl), f"--kubeconfig={cp.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def crd_installed(cp: ControlPlane) -> bool:
    with cp.api_client() as api:
        try:
            k8s_client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD_NAME)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
    return True


def install_crd(cp: ControlPlane) -> None:
    """Apply the CRD and wait until the API serves it (a list answers)."""
    _kubectl(cp, "apply", "--server-side", "--field-manager=netpol-agent-tests",
             "-f", str(crd_path()))  # fmt: skip
    _kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    deadline = time.monotonic() + 30
    with cp.api_client() as api:
        custom = k8s_client.CustomObjectsApi(api)
        while True:
            try:
                custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1)
                return
            except ApiException as error:
                if error.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)


def remove_crd(cp: ControlPlane) -> None:
    """Delete the CRD (its objects go first) and wait until it is gone."""
    _kubectl(cp, "delete", "--ignore-not-found", "--wait=true", "--timeout=60s",
             f"crd/{CRD_NAME}")  # fmt: skip


def cnp(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": dict(spec),
    }


class ClusterPolicies:
    """Create, replace and delete ClusterNetworkPolicies; ``cleanup`` deletes the rest."""

    def __init__(self, api: k8s_client.ApiClient) -> None:
        self.custom = k8s_client.CustomObjectsApi(api)
        self._created: set[str] = set()

    def create(self, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.custom.create_cluster_custom_object(
            GROUP, VERSION, PLURAL, cnp(name, spec)
        )
        self._created.add(name)
        return created

    def get(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        return found

    def replace(self, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        body = cnp(name, spec)
        body["metadata"]["resourceVersion"] = self.get(name)["metadata"]["resourceVersion"]
        replaced: dict[str, Any] = self.custom.replace_cluster_custom_object(
            GROUP, VERSION, PLURAL, name, body
        )
        return replaced

    def delete(self, name: str) -> None:
        try:
            self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except ApiException as error:
            if error.status != 404:
                raise
        self._created.discard(name)

    def cleanup(self) -> None:
        for name in list(self._created):
            self.delete(name)

    def delete_all(self) -> None:
        """Every ClusterNetworkPolicy, whoever created it."""
        listed = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        for item in listed.get("items") or []:
            self.delete(item["metadata"]["name"])
