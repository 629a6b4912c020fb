"""The lab's transcription of the conformance suite's policies equals the upstream YAML.

``tests/lab/conformance_manifests.py`` writes every ``conformance/base/**`` file of
``sigs.k8s.io/network-policy-api@v0.3.0`` by hand; this compares each with the file in the
Go module cache (after filling in the ``HostNetworkPorts`` template the way the suite
does), field for field.  Skipped when the module is not downloaded.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.lab import conformance_manifests as manifests
from tests.lab.conformance import HOST_NETWORK_PORTS

MODULE = "sigs.k8s.io/network-policy-api@v0.3.0"

TRANSCRIBED: dict[str, Callable[[], Any]] = {
    "admin_tier/standard-egress-tcp-rules.yaml": manifests.admin_egress_tcp_rules,
    "admin_tier/standard-egress-udp-rules.yaml": manifests.admin_egress_udp_rules,
    "admin_tier/standard-egress-sctp-rules.yaml": manifests.admin_egress_sctp_rules,
    "admin_tier/standard-ingress-tcp-rules.yaml": manifests.admin_ingress_tcp_rules,
    "admin_tier/standard-ingress-udp-rules.yaml": manifests.admin_ingress_udp_rules,
    "admin_tier/standard-ingress-sctp-rules.yaml": manifests.admin_ingress_sctp_rules,
    "admin_tier/standard-gress-rules-combined.yaml": manifests.admin_gress_rules_combined,
    "admin_tier/standard-egress-inline-cidr-rules.yaml": (manifests.admin_egress_inline_cidr_rules),
    "admin_tier/standard-pod-selector-rules.yaml": manifests.admin_pod_selector_rules,
    "admin_tier/standard-port-range-rules-combined.yaml": (
        manifests.admin_port_range_rules_combined
    ),
    "admin_tier/standard-priority-field.yaml": manifests.admin_priority_field,
    "admin_tier/standard-same-priority.yaml": manifests.admin_same_priority,
    "admin_tier/experimental-egress-selector-rules.yaml": (
        manifests.admin_experimental_egress_selector_rules
    ),
    "api_integration/standard-anp-np-banp.yaml": manifests.api_integration_anp_np_banp,
    "baseline_tier/standard-egress-tcp-rules.yaml": manifests.baseline_egress_tcp_rules,
    "baseline_tier/standard-egress-udp-rules.yaml": manifests.baseline_egress_udp_rules,
    "baseline_tier/standard-egress-sctp-rules.yaml": manifests.baseline_egress_sctp_rules,
    "baseline_tier/standard-ingress-tcp-rules.yaml": manifests.baseline_ingress_tcp_rules,
    "baseline_tier/standard-ingress-udp-rules.yaml": manifests.baseline_ingress_udp_rules,
    "baseline_tier/standard-ingress-sctp-rules.yaml": manifests.baseline_ingress_sctp_rules,
    "baseline_tier/standard-gress-rules-combined.yaml": manifests.baseline_gress_rules_combined,
    "baseline_tier/standard-egress-inline-cidr-rules.yaml": (
        manifests.baseline_egress_inline_cidr_rules
    ),
    "baseline_tier/standard-pod-selector-rules.yaml": manifests.baseline_pod_selector_rules,
    "baseline_tier/standard-port-range-rules-combined.yaml": (
        manifests.baseline_port_range_rules_combined
    ),
    "baseline_tier/standard-same-priority.yaml": manifests.baseline_same_priority,
    "baseline_tier/experimental-egress-selector-rules.yaml": (
        manifests.baseline_experimental_egress_selector_rules
    ),
}


def base_dir() -> Path:
    cache = Path(os.environ.get("GOMODCACHE") or Path.home() / "go" / "pkg" / "mod")
    base = cache / MODULE / "conformance" / "base"
    if not base.is_dir():
        pytest.skip(f"{MODULE} is not in the Go module cache ({cache})")
    return base


def upstream(path: Path) -> list[dict[str, Any]]:
    text = re.sub(
        r"\{\{ index \.HostNetworkPorts (\d+) \}\}",
        lambda m: str(HOST_NETWORK_PORTS[int(m.group(1))]),
        path.read_text(),
    )
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        # ``podSelector:`` with no value: the API server stores {}
        if doc["kind"] == "NetworkPolicy" and doc["spec"].get("podSelector") is None:
            doc["spec"]["podSelector"] = {}
    return docs


def test_every_policy_manifest_is_transcribed() -> None:
    base = base_dir()
    files = {str(p.relative_to(base)) for p in base.glob("*/*.yaml")}
    assert files == set(TRANSCRIBED)


@pytest.mark.parametrize("name", sorted(TRANSCRIBED))
def test_transcription_equals_the_upstream_manifest(name: str) -> None:
    mine = TRANSCRIBED[name]()
    mine = mine if isinstance(mine, list) else [mine]
    canonical = json.dumps(mine, sort_keys=True, indent=1)
    assert canonical == json.dumps(upstream(base_dir() / name), sort_keys=True, indent=1)
