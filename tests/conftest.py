"""Shared pytest wiring: each area's fixtures live beside its helpers."""

pytest_plugins = [
    "tests.lab.fixtures",
    "tests.cluster.fixtures",
]
