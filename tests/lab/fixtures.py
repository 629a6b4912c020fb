"""Pytest fixtures for the network-namespace lab (loaded as a plugin by tests/conftest.py).

* ``lab`` (session): the default e2e topology (pods a/b/c in namespaces x/y/z on two nodes + external host),
  built once.  Skipped only when not root; any other failure to build it is an error.
* ``clean_lab`` (function): the same lab, with every ``<prefix>`` chain, every rule jumping to
  one (or tagged with the lab comment), and the nodes' conntrack tables flushed before AND
  after the test; labels reset to the spec.  Use it for every scenario that touches
  iptables.
* ``prober`` (session): a :class:`~tests.lab.prober.Prober` knowing all endpoints.
* ``conformance_lab`` (session) / ``clean_conformance_lab`` (function): the same for the
  network-policy-api conformance suite's topology (:mod:`tests.lab.conformance`), built
  only when a test asks for it.

Cleanup is guaranteed three ways: the fixture finalizer, an ``atexit`` hook (both delete
everything named with the run prefix), and a sweep at the next start that removes labs whose
owning process is gone (``/run/netpol-lab/<prefix>.pid``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.lab.conformance import conformance_spec
from tests.lab.ownership import owner_marker, signals_as_interrupt, sweep_stale_labs
from tests.lab.prober import Prober, lab_prober
from tests.lab.topology import Lab


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    yield from _session_lab(Lab())


@pytest.fixture(scope="session")
def conformance_lab() -> Iterator[Lab]:
    yield from _session_lab(Lab(conformance_spec()))


def _session_lab(the_lab: Lab) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the netns lab needs root (network namespaces, iptables, raw sockets)")
    sweep_stale_labs()
    with signals_as_interrupt(), owner_marker(the_lab.prefix):
        try:
            the_lab.start()
            yield the_lab
        finally:
            the_lab.close()


def _reset(lab: Lab) -> None:
    lab.reset_firewall()  # also flushes conntrack
    lab.pod_labels = {k: v.spec.effective_labels() for k, v in lab.pods.items()}
    lab.namespace_labels = {n.name: n.effective_labels() for n in lab.spec.namespaces}


@pytest.fixture
def clean_lab(lab: Lab) -> Iterator[Lab]:
    _reset(lab)
    try:
        yield lab
    finally:
        _reset(lab)


@pytest.fixture
def clean_conformance_lab(conformance_lab: Lab) -> Iterator[Lab]:
    _reset(conformance_lab)
    try:
        yield conformance_lab
    finally:
        _reset(conformance_lab)


@pytest.fixture(scope="session")
def prober(lab: Lab) -> Prober:
    return lab_prober(lab)
