"""Label selectors: matchLabels and matchExpressions, ANDed (NETPOL-SEMANTICS 10)."""

from __future__ import annotations

from typing import Any

from agent.model.parse import parse_selector
from agent.model.selectors import LabelSelector


def selector(**raw: Any) -> LabelSelector:
    return parse_selector(raw, "sel")


def expression(key: str, operator: str, *values: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        entry["values"] = list(values)
    return entry


def test_empty_selector_matches_everything() -> None:
    assert selector().matches({})
    assert selector().matches({"app": "web"})
    assert parse_selector(None, "sel").matches({"any": "thing"})
    assert selector().is_empty


def test_match_labels_needs_every_label() -> None:
    web_prod = selector(matchLabels={"app": "web", "env": "prod"})
    assert web_prod.matches({"app": "web", "env": "prod", "extra": "x"})
    assert not web_prod.matches({"app": "web"})
    assert not web_prod.matches({"app": "web", "env": "dev"})


def test_in_matches_any_listed_value_and_needs_the_key() -> None:
    web_or_db = selector(matchExpressions=[expression("app", "In", "web", "db")])
    assert web_or_db.matches({"app": "web"})
    assert web_or_db.matches({"app": "db"})
    assert not web_or_db.matches({"app": "api"})
    assert not web_or_db.matches({})


def test_not_in_excludes_listed_values() -> None:
    not_web = selector(matchExpressions=[expression("app", "NotIn", "web")])
    assert not not_web.matches({"app": "web"})
    assert not_web.matches({"app": "db"})


def test_not_in_matches_objects_without_the_key() -> None:
    assert selector(matchExpressions=[expression("app", "NotIn", "web")]).matches({})


def test_exists_needs_the_key_whatever_its_value() -> None:
    has_app = selector(matchExpressions=[expression("app", "Exists")])
    assert has_app.matches({"app": ""})
    assert has_app.matches({"app": "web"})
    assert not has_app.matches({"other": "web"})


def test_does_not_exist_matches_objects_without_the_key() -> None:
    no_app = selector(matchExpressions=[expression("app", "DoesNotExist")])
    assert no_app.matches({})
    assert no_app.matches({"other": "x"})
    assert not no_app.matches({"app": "web"})


def test_match_labels_and_expressions_are_anded() -> None:
    both = selector(
        matchLabels={"env": "prod"},
        matchExpressions=[expression("app", "In", "web"), expression("debug", "DoesNotExist")],
    )
    assert both.matches({"env": "prod", "app": "web"})
    assert not both.matches({"env": "dev", "app": "web"})  # matchLabels fails
    assert not both.matches({"env": "prod", "app": "db"})  # first expression fails
    assert not both.matches({"env": "prod", "app": "web", "debug": "1"})  # second fails


def test_equal_selectors_have_equal_canonical_text() -> None:
    a = selector(
        matchLabels={"b": "2", "a": "1"},
        matchExpressions=[expression("c", "In", "y", "x"), expression("d", "Exists")],
    )
    b = selector(
        matchExpressions=[expression("d", "Exists"), expression("c", "In", "x", "y")],
        matchLabels={"a": "1", "b": "2"},
    )
    assert a.canonical() == b.canonical()


def test_match_labels_and_the_equivalent_in_expression_are_the_same_selector() -> None:
    assert (
        selector(matchLabels={"app": "web"}).canonical()
        == selector(matchExpressions=[expression("app", "In", "web")]).canonical()
        == LabelSelector.from_labels({"app": "web"}).canonical()
    )


def test_different_selectors_have_different_canonical_text() -> None:
    texts = {
        selector().canonical(),
        selector(matchLabels={"app": "web"}).canonical(),
        selector(matchExpressions=[expression("app", "NotIn", "web")]).canonical(),
        selector(matchExpressions=[expression("app", "Exists")]).canonical(),
        selector(matchExpressions=[expression("app", "DoesNotExist")]).canonical(),
        selector(matchExpressions=[expression("app", "In", "web", "db")]).canonical(),
    }
    assert len(texts) == 6
