"""The one node selector (reconcilers.selector): what the agent's selection and the roll-up both use."""

from __future__ import annotations

import pytest

from reconcilers import selector, spec

LABELS = {"zone": "a", "role": "storage"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, True),
        ({}, True),
        ({"matchLabels": {"zone": "a"}}, True),
        ({"matchLabels": {"zone": "b"}}, False),
        ({"matchLabels": {"missing": "x"}}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}, True),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, False),
        ({"matchExpressions": [{"key": "other", "operator": "NotIn", "values": ["a"]}]}, True),
        ({"matchExpressions": [{"key": "role", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]}, False),
        ({"matchLabels": {"zone": "a"}, "matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, False),
    ],
)
def test_selector_matching(raw: dict[str, object] | None, expected: bool) -> None:
    assert selector.matches(raw, LABELS) is expected


@pytest.mark.parametrize(
    "raw",
    [
        {"matchExpressions": [{"key": "zone", "operator": "Like", "values": ["a"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In"}]},
        {"matchExpressions": [{"key": "zone", "operator": "Exists", "values": ["a"]}]},
        {"matchExpressions": [{"operator": "Exists"}]},
        {"matchLabels": ["zone"]},
    ],
)
def test_malformed_selectors_raise(raw: dict[str, object]) -> None:
    with pytest.raises(selector.SelectorError):
        selector.matches(raw, LABELS)


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        (
            {"matchLabels": {"zone": "a b"}},
            "spec.nodeSelector.matchLabels['zone']",
            "not a valid label value",
        ),
        ({"matchLabels": {"-zone": "a"}}, "spec.nodeSelector.matchLabels['-zone']", "not a valid label key"),
        (
            {"matchLabels": {"zone": "a" * 64}},
            "spec.nodeSelector.matchLabels['zone']",
            "not a valid label value",
        ),
        (
            {"matchExpressions": [{"key": "k", "operator": "In", "values": ["x"] * 65}]},
            "spec.nodeSelector.matchExpressions[0].values",
            "the limit is 64",
        ),
        ({"nodeAffinity": {}}, "spec.nodeSelector.nodeAffinity", "unknown field"),
    ],
)
def test_every_kind_reports_a_malformed_selector_as_invalid_spec_naming_the_field(
    raw: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(selector.SelectorError) as info:
        selector.parse(raw)
    assert (info.value.field, message in info.value.message) == (field, True)
    with pytest.raises(spec.errors.InvalidSpec) as invalid:
        spec.node_selector(raw)
    assert invalid.value.field == field


def test_the_parsed_selector_is_a_value_that_matches() -> None:
    parsed = selector.parse(
        {
            "matchLabels": {"zone": "a"},
            "matchExpressions": [{"key": "role", "operator": "In", "values": ["storage", "db"]}],
        }
    )
    assert parsed == selector.NodeSelector(
        (("zone", "a"),), (selector.Requirement("role", "In", ("storage", "db")),)
    )
    assert parsed.matches(LABELS) and not parsed.matches({"zone": "a", "role": "web"})
    assert selector.parse(None) == selector.NodeSelector() and selector.NodeSelector().matches({})
