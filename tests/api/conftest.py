"""Fixtures for running the real agent against the real apiserver inside the lab."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.agent_harness import ApiLab
from tests.cluster.controlplane import ControlPlane
from tests.lab.prober import Prober
from tests.lab.topology import Lab


@pytest.fixture(scope="module")
def api_lab(
    request: pytest.FixtureRequest,
    lab: Lab,
    control_plane: ControlPlane,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiLab]:
    """The lab topology in the API, forwarders into both nodes; chains ``<lab prefix><S>``.

    ``S`` is the module's ``CHAIN_SUFFIX`` (one letter), so each module's chains are
    unique and still removed by the lab's own cleanup.
    """
    suffix = getattr(request.module, "CHAIN_SUFFIX", "T")
    env = ApiLab(lab, control_plane, tmp_path_factory.mktemp("api-lab"), suffix)
    try:
        env.start()
        yield env
    finally:
        env.close()


@pytest.fixture(scope="module")
def fast_prober(lab: Lab) -> Prober:
    """Every pod, node and the external host; denied = no answer within 0.5 s."""
    return Prober(lab.endpoints(external=True, nodes=True), timeout=0.5)
