"""Nesting limits for specs: find where JSON/YAML input nests too deep, without recursing.

Python's JSON decoder, PyYAML's composer, jsonschema and ``repr`` all recurse once per level,
so a spec nested a few thousand levels deep would end in a ``RecursionError`` traceback instead
of a clear error. These checks are iterative and stop at the first container deeper than
:data:`MAX_DEPTH`, which is far above any real spec (the deepest item of a real one,
``conda.dependencies[i].pip[j]``, is 5 containers down) and far below the recursion limit.

>>> first_too_deep({"conda": {"dependencies": [[[]]]}}, limit=3)
('conda', 'dependencies', 0)
>>> first_too_deep({"conda": {"dependencies": []}}, limit=3) is None
True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Union

#: The most containers (objects, lists) a spec may nest, the top-level object included.
MAX_DEPTH = 64

PathParts = tuple[Union[str, int], ...]

# A JSON string (skipped: brackets inside it do not count) or one bracket.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def first_too_deep(value: Any, limit: int = MAX_DEPTH) -> PathParts | None:
    """The path to the first container nested deeper than ``limit``, or None.

    The top-level container is level 1, so the path returned has ``limit`` parts. Shared
    sub-objects (YAML aliases) are walked once per depth they are reached at, and a structure
    that contains itself is reported as too deep rather than walked forever.
    """
    seen: dict[int, int] = {}  # id of a container -> the deepest level it was reached at
    stack: list[tuple[Any, int, PathParts]] = [(value, 1, ())]
    while stack:
        node, level, parts = stack.pop()
        children = _children(node)
        if children is None:
            continue
        if level > limit:
            return parts
        if seen.get(id(node), 0) >= level:
            continue
        seen[id(node)] = level
        stack.extend((child, level + 1, parts + (key,)) for key, child in reversed(children))
    return None


def _children(node: Any) -> list[tuple[str | int, Any]] | None:
    """The (key, value) items of a container, or None for a scalar."""
    if isinstance(node, Mapping):
        return [(k if isinstance(k, (str, int)) else repr(k)[:40], v) for k, v in node.items()]
    if isinstance(node, (list, tuple)):
        return list(enumerate(node))
    return None


def json_text_too_deep(text: str, limit: int = MAX_DEPTH) -> tuple[int, int] | None:
    """(line, column), both from 1, of the first bracket opening level ``limit + 1``, or None.

    Brackets inside strings are skipped; the text need not be valid JSON (the decoder says
    what else is wrong).
    """
    level = 0
    for token in _JSON_TOKEN.finditer(text):
        char = token.group()
        if char in "[{":
            level += 1
            if level > limit:
                pos = token.start()
                return text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        elif char in "]}":
            level -= 1
    return None


def yaml_text_too_deep(text: str, limit: int = MAX_DEPTH) -> tuple[int, int] | None:
    """(line, column), both from 1, of the first YAML mapping or sequence at level ``limit + 1``.

    Reads PyYAML's event stream (its parser keeps an explicit stack; only composing the events
    into objects recurses). :raises yaml.YAMLError: the text is not YAML.
    """
    import yaml

    level = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            level += 1
            if level > limit:
                mark = event.start_mark
                return mark.line + 1, mark.column + 1
        elif isinstance(event, yaml.CollectionEndEvent):
            level -= 1
    return None
