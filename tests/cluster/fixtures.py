"""Fixtures (placeholder until this area lands)."""
