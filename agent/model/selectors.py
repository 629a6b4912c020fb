"""Label selectors: matchLabels plus matchExpressions, ANDed."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Operator(enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        match self.operator:
            case Operator.IN:
                return present and labels[self.key] in self.values
            case Operator.NOT_IN:
                # An object without the key is "not in" any set of values.
                return not present or labels[self.key] not in self.values
            case Operator.EXISTS:
                return present
            case Operator.DOES_NOT_EXIST:
                return not present


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A parsed selector. The empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> LabelSelector:
        return cls(
            tuple(
                Requirement(key, Operator.IN, frozenset({value}))
                for key, value in sorted(labels.items())
            )
        )

    @property
    def is_empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    def canonical(self) -> str:
        """A stable text for hashing and display; equal selectors give equal text."""
        if not self.requirements:
            return "{}"
        parts = sorted(
            f"{r.key} {r.operator.value} ({','.join(sorted(r.values))})" for r in self.requirements
        )
        return "{" + "; ".join(parts) + "}"
