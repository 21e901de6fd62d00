"""Tests for parsl_poncho.nesting: iterative depth checks of decoded data, JSON and YAML text."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from parsl_poncho.nesting import MAX_DEPTH, first_too_deep, json_text_too_deep, yaml_text_too_deep


def test_limit_is_far_from_real_specs_and_the_recursion_limit() -> None:
    assert 5 < 32 <= MAX_DEPTH <= 100


def test_first_too_deep_counts_the_top_level_container() -> None:
    assert first_too_deep([[[]]], limit=3) is None
    assert first_too_deep([[[[]]]], limit=3) == (0, 0, 0)
    assert first_too_deep({"a": [1, {"b": {}}]}, limit=2) == ("a", 1)
    assert first_too_deep("x" * 10, limit=0) is None, "scalars are not containers"


def test_first_too_deep_walks_shared_objects_once_per_depth() -> None:
    """A YAML alias bomb: 9 ** 30 leaves if expanded, 30 distinct lists."""
    node: Any = ["x"] * 9
    for _ in range(30):
        node = [node] * 9
    assert first_too_deep(node, limit=40) is None
    assert first_too_deep({"k": node}, limit=31) == ("k",) + (0,) * 30


def test_first_too_deep_reports_a_structure_that_contains_itself() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert first_too_deep({"d": loop}, limit=5) == ("d", 0, 0, 0, 0)


def test_json_text_too_deep_skips_brackets_in_strings() -> None:
    text = '{"a": "[[[[{{{{\\"[[[[", "b": [[1]]}'
    assert json_text_too_deep(text, limit=3) is None
    assert json_text_too_deep(text, limit=2) == (1, 31)  # the second "[" of [[1]]
    assert json_text_too_deep('{\n "a":\n  [[]]}', limit=2) == (3, 4)


def test_json_text_too_deep_scans_a_million_brackets() -> None:
    assert json_text_too_deep("[" * 1_000_000) == (1, MAX_DEPTH + 1)


def test_yaml_text_too_deep_reads_events_not_objects() -> None:
    assert yaml_text_too_deep("a: [[1]]\n", limit=3) is None
    assert yaml_text_too_deep("a:\n  b:\n    - [1]\n", limit=3) == (3, 7)
    assert yaml_text_too_deep("[" * 100_000, limit=MAX_DEPTH) == (1, MAX_DEPTH + 1)


def test_yaml_text_too_deep_lets_bad_yaml_raise() -> None:
    with pytest.raises(yaml.YAMLError, match="while parsing a flow"):
        yaml_text_too_deep("a: [1 2:\n")
