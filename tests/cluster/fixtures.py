"""Pytest fixtures for tests that need a real kube-apiserver + etcd.

Loaded as a plugin by tests/conftest.py. ``control_plane`` builds the binaries
(cached after the first run, see tests/cluster/build.sh) and starts one control
plane for the whole session. It never skips: if the build or the start fails,
every test using it errors, so CI goes red instead of silently green.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.controlplane import ControlPlane, build_binaries
from tests.cluster.kube import Kube


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One real etcd + kube-apiserver for the session (watch cache off, see ControlPlane)."""
    binaries = build_binaries()  # raises ControlPlaneError on failure: loud, not skipped
    with ControlPlane(binaries) as cp:
        yield cp


@pytest.fixture
def kube(control_plane: ControlPlane) -> Iterator[Kube]:
    """Admin helper; deletes what the test created through it when the test ends.

    The control plane is shared by the session: use the unique namespaces that
    ``kube.create_namespace()`` makes, and leave it running (restart the apiserver
    if you kill it: tests that do must call ``control_plane.start_apiserver()``).
    """
    if not control_plane.apiserver_running:
        control_plane.start_apiserver()  # a previous test left it down
    with control_plane.api_client() as api:
        helper = Kube(api)
        try:
            yield helper
        finally:
            if not control_plane.apiserver_running:
                control_plane.start_apiserver()
            helper.cleanup()


@pytest.fixture
def cnp_crd(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The ClusterNetworkPolicy CRD installed for the test, removed afterwards (the
    session's apiserver starts without it, and other tests expect that)."""
    from tests.cluster import netpolapi

    if not control_plane.apiserver_running:
        control_plane.start_apiserver()
    netpolapi.install_crd(control_plane)
    try:
        yield control_plane
    finally:
        if not control_plane.apiserver_running:
            control_plane.start_apiserver()
        netpolapi.remove_crd(control_plane)
