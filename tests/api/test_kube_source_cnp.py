"""KubeSource and ClusterNetworkPolicy against a real kube-apiserver: the CRD absent
(the kind is listed and empty, said once), installed later (picked up), objects created,
updated and deleted, and the CRD removed (its objects are gone)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from agent.control.kube_source import list_cluster
from agent.control.source import Kind
from tests.api.test_kube_source import FAST, admin_client, start_source, wait_until
from tests.cluster import netpolapi
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kube import unique_name

pytestmark = pytest.mark.cluster
__all__ = ["admin_client", "start_source"]  # fixtures shared with test_kube_source

CNP = Kind.CLUSTER_NETWORK_POLICY
# Recheck an unserved API quickly: the CRD appears within the test.
QUICK = replace(FAST, unserved_recheck_seconds=0.5)
NOT_SERVED = "ClusterNetworkPolicy API not served; enforcing NetworkPolicy only"
SERVED = "ClusterNetworkPolicy API served; enforcing ClusterNetworkPolicy"
SPEC = {
    "tier": "Admin",
    "priority": 10,
    "subject": {"namespaces": {"matchLabels": {"team": "a"}}},
    "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
}


@pytest.fixture
def no_crd(control_plane: ControlPlane) -> ControlPlane:
    netpolapi.remove_crd(control_plane)
    return control_plane


@pytest.fixture
def policies(control_plane: ControlPlane) -> Iterator[netpolapi.ClusterPolicies]:
    with control_plane.api_client() as api:
        helper = netpolapi.ClusterPolicies(api)
        try:
            yield helper
        finally:
            if netpolapi.crd_installed(control_plane):
                helper.cleanup()


def messages(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for record in caplog.records if record.getMessage() == text)


def test_without_the_crd_the_kind_is_listed_empty_and_said_once(
    no_crd: ControlPlane,
    admin_client: Any,
    start_source: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Count the lists of the unserved API: it is checked again and again.
    pool = admin_client.rest_client.pool_manager
    real_request = pool.request
    checks: list[str] = []

    def counting_request(method: str, url: str, **kwargs: Any) -> Any:
        if "/clusternetworkpolicies?" in url:
            checks.append(url)
        return real_request(method, url, **kwargs)

    pool.request = counting_request
    with caplog.at_level(logging.INFO, logger="agent.control.kube_source"):
        source, recorder = start_source(admin_client, QUICK)
        wait_until(lambda: source.synced, "synced without the CRD")
        wait_until(lambda: len(checks) >= 3, "the API checked three times")
    health = source.health.kinds[CNP]
    assert health.listed and not health.served and health.last_error is None
    assert health.objects == 0
    assert source.health.connected  # an API that is not there is nothing to connect to
    assert messages(caplog, NOT_SERVED) == 1
    first = [batch for batch in recorder.batches if batch == []]
    assert first, "the kind's first (empty) view was not delivered"
    assert recorder.keys(CNP) == []


def test_a_crd_installed_later_is_picked_up_and_its_policies_follow(
    no_crd: ControlPlane,
    admin_client: Any,
    start_source: Any,
    policies: netpolapi.ClusterPolicies,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = unique_name("cnp")
    with caplog.at_level(logging.INFO, logger="agent.control.kube_source"):
        source, recorder = start_source(admin_client, QUICK)
        wait_until(lambda: source.synced, "synced without the CRD")
        try:
            netpolapi.install_crd(no_crd)
            wait_until(lambda: source.health.kinds[CNP].served, "the CRD noticed")
            policies.create(name, SPEC)
            change = recorder.wait_change(CNP, name)
            assert change.obj == {
                "metadata": {"name": name,
                             "resourceVersion": change.obj["metadata"]["resourceVersion"]},
                "spec": SPEC,
            }  # fmt: skip

            policies.replace(name, {**SPEC, "priority": 20})
            recorder.wait_change(CNP, name, where=lambda o: o["spec"]["priority"] == 20)
            policies.delete(name)
            recorder.wait_change(CNP, name, deleted=True)

            # The CRD goes away with a policy in it: that policy is deleted too.
            policies.create(name, SPEC)
            recorder.wait_change(CNP, name, where=lambda o: o["spec"]["priority"] == 10)
            recorder.clear()
            netpolapi.remove_crd(no_crd)
            recorder.wait_change(CNP, name, deleted=True)
            wait_until(lambda: not source.health.kinds[CNP].served, "the CRD's removal noticed")
        finally:
            netpolapi.remove_crd(no_crd)
    assert source.health.kinds[CNP].objects == 0
    assert source.synced and source.health.connected
    assert messages(caplog, SERVED) == 1
    assert messages(caplog, NOT_SERVED) == 2  # at the start, and once removed


def test_list_cluster_includes_cluster_network_policies(
    cnp_crd: ControlPlane, admin_client: Any, policies: netpolapi.ClusterPolicies
) -> None:
    name = unique_name("cnp")
    policies.create(name, SPEC)
    listed = [o for o in list_cluster(admin_client) if o["kind"] == "ClusterNetworkPolicy"]
    mine = [o for o in listed if o["metadata"]["name"] == name]
    assert len(mine) == 1
    assert mine[0]["apiVersion"] == "policy.networking.k8s.io/v1alpha2"
    assert mine[0]["spec"] == SPEC


def test_list_cluster_without_the_crd_lists_the_rest(
    no_crd: ControlPlane, admin_client: Any
) -> None:
    kinds = {o["kind"] for o in list_cluster(admin_client)}
    assert "ClusterNetworkPolicy" not in kinds
    assert "Namespace" in kinds
