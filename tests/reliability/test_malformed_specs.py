"""Hand-written malformed specs (tests/reliability/malformed/*.json): each is refused with a
SpecError whose message names the JSON path and the problem, before anything is built or cached.

Each case file holds ``why`` (what is wrong), ``error`` (a regex the message must match) and
either ``spec`` (the decoded JSON given to Spec.from_dict) or ``raw`` (file text given to
Spec.from_file).
"""

from __future__ import annotations

import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsl_poncho import EnvOptions, spec_checks, spec_files
from parsl_poncho import spec as spec_module
from parsl_poncho.errors import SpecError
from parsl_poncho.spec import Spec
from parsl_poncho.store import EnvStore

from .conftest import record

CASES = Path(__file__).parent / "malformed"
NAMES = sorted(p.stem for p in CASES.glob("*.json"))


def load_case(name: str) -> dict[str, Any]:
    return json.loads((CASES / f"{name}.json").read_text())


def test_there_are_at_least_twenty_cases() -> None:
    assert len(NAMES) >= 20
    for name in NAMES:
        case = load_case(name)
        assert case["why"] and case["error"] and ("spec" in case or "raw" in case), name


def refuse(case: dict[str, Any], tmp_path: Path) -> SpecError:
    if "raw" in case:
        path = tmp_path / "spec.json"
        path.write_text(case["raw"], encoding="utf-8", errors="surrogateescape")
        with pytest.raises(SpecError, match=case["error"]) as info:
            Spec.from_file(path)
    else:
        with pytest.raises(SpecError, match=case["error"]) as info:
            Spec.from_dict(case["spec"])
    return info.value


@pytest.mark.parametrize("name", NAMES)
def test_malformed_spec_is_refused_with_its_message(name: str, tmp_path: Path) -> None:
    error = refuse(load_case(name), tmp_path)
    assert str(error).startswith("Invalid environment spec"), str(error)
    if "spec" in load_case(name):
        assert error.problems, "a SpecError from validation lists its problems"
    record("bad input: malformed specs", tried=1, refused=1)


class _NeverBuild:
    """A builder that must never be called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise AssertionError("a malformed spec reached the builder")


def _direct_spec(data: Any) -> Spec:
    """The Spec a careless caller would construct from ``data`` without validating it."""
    if not isinstance(data, dict) or set(data) - {"conda", "pip", "git", "http"}:
        raise TypeError("not representable")
    conda = data.get("conda") or {}
    if not isinstance(conda, dict) or {"dependencies", "packages"} <= set(conda):
        raise TypeError("not representable")
    if isinstance(data.get("pip"), str) or isinstance(conda.get("channels"), str):
        raise TypeError("a lone string is a one-item list to the constructor")
    deps = conda.get("dependencies", conda.get("packages", []))
    if not isinstance(deps, list) or any(isinstance(d, dict) for d in deps):
        raise TypeError("not representable")
    return Spec(
        channels=conda.get("channels", ("conda-forge",)),
        conda=tuple(deps),
        pip=data.get("pip", ()),
        git=data.get("git", {}),
        http=data.get("http", {}),
    )


def _representable(name: str) -> bool:
    try:
        _direct_spec(load_case(name).get("spec"))
    except (TypeError, ValueError, AttributeError, KeyError):
        return False
    return True


@pytest.mark.parametrize("name", [n for n in NAMES if _representable(n)])
def test_malformed_spec_never_reaches_the_store(name: str, tmp_path: Path) -> None:
    """A Spec built directly from the malformed data (no from_dict) is refused by the store."""
    spec = _direct_spec(load_case(name)["spec"])
    never = _NeverBuild()
    with EnvStore(tmp_path / "cache", builder=never) as store:
        with pytest.raises(SpecError, match=r"Invalid environment spec"):
            store.get(spec)
        assert store.entries() == []
    assert never.calls == 0


# -- nesting deeper than Python's recursion limit ---------------------------------------------
# These cases are built in code: a file holding 3,000 nested objects cannot itself be json.load-ed.
DEEP = r"nested more than 64 levels deep; a PONCHO spec is at most 64 levels deep"
DEPTHS = [3_000, 100_000]


def nested_data(kind: str, depth: int) -> Any:
    """``depth`` nested dicts (``{"a": {"a": ...}}``) or lists, built without recursion."""
    top: Any = {} if kind == "object" else []
    node = top
    for _ in range(depth - 1):
        child: Any = {} if kind == "object" else []
        if kind == "object":
            node["a"] = child
        else:
            node.append(child)
        node = child
    return top


def nested_text(kind: str, depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1) if kind == "object" else (
        "[" * depth + "]" * depth
    )


PLACES = {
    "top level": ("{}", ""),
    "a conda dependency": ('{"conda": {"dependencies": [', "]}}"),
    "an http entry": ('{"http": {"DB": ', "}}"),
}


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("kind", ["object", "list"])
@pytest.mark.parametrize("place", ["a conda dependency", "an http entry"])
def test_deep_json_file_is_refused_with_line_and_column(
    depth: int, kind: str, place: str, tmp_path: Path
) -> None:
    before, after = PLACES[place]
    path = tmp_path / "spec.json"
    path.write_text(before + nested_text(kind, depth) + after)
    with pytest.raises(SpecError, match=rf"(?s)json \(1 problem\).*line 1 column \d+: {DEEP}"):
        Spec.from_file(path)
    record("bad input: deep nesting", tried=1, refused=1)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(("kind", "column"), [("object", 64 * len('{"a":') + 1), ("list", 65)])
def test_deep_json_document_is_refused(depth: int, kind: str, column: int, tmp_path: Path
                                       ) -> None:
    path = tmp_path / "spec.json"
    path.write_text(nested_text(kind, depth))
    with pytest.raises(SpecError, match=rf"line 1 column {column}: {DEEP}"):
        Spec.from_file(path)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(
    ("kind", "wrap", "path_re"),
    [
        ("object", lambda d: {"conda": {"dependencies": [d]}}, r"conda\.dependencies\[0\]\.a\.a"),
        ("list", lambda d: {"conda": {"dependencies": d}}, r"conda\.dependencies\[0\]\[0\]"),
        ("list", lambda d: {"conda": {"channels": d}}, r"conda\.channels\[0\]\[0\]"),
        ("object", lambda d: {"git": {"REPO": d}}, r"git\.REPO\.a\.a"),
        ("object", lambda d: {"x-parsl-poncho": {"local": d}}, r"x-parsl-poncho\.local\.a"),
        ("object", lambda d: d, r"a\.a\.a\.a"),
    ],
)
def test_deep_decoded_spec_is_refused_with_its_path(
    depth: int, kind: str, wrap: Callable[[Any], Any], path_re: str
) -> None:
    with pytest.raises(SpecError, match=rf"{path_re}[.\[\]a0-9]*\.\.\.: {DEEP}") as info:
        Spec.from_dict(wrap(nested_data(kind, depth)))
    assert len(info.value.problems) == 1
    assert len(str(info.value)) < 400, "the message names the path, it does not print the data"


def test_sixty_four_levels_are_not_refused_for_depth() -> None:
    """The limit is on containers, the top-level object included: 64 pass the depth check."""
    spec = {"conda": {"dependencies": [nested_data("list", 61)]}}  # 3 + 61 = 64 levels
    with pytest.raises(SpecError, match=r"conda\.dependencies\[0\]: .* is not of type") as info:
        Spec.from_dict(spec)
    assert "levels deep" not in str(info.value)
    spec = {"conda": {"dependencies": [nested_data("list", 62)]}}
    with pytest.raises(SpecError, match=DEEP):
        Spec.from_dict(spec)


YAML_CASES = {
    "flow sequence": lambda n: "dependencies:\n  - " + "[" * n + "]" * n + "\n",
    "flow mapping": lambda n: "dependencies:\n  - " + "{a: " * n + "1" + "}" * n + "\n",
    "block mapping": lambda n: "".join(" " * i + "a:\n" for i in range(n)) + " " * n + "a: 1\n",
    "block sequence": lambda n: "dependencies:\n" + "".join(
        " " * (2 * i) + "-\n" for i in range(1, n)) + " " * (2 * n) + "- x\n",
    "under pip": lambda n: "dependencies:\n  - pip:\n    - " + "[" * n + "]" * n + "\n",
}


@pytest.mark.parametrize("depth", [3_000, 20_000])
@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_deep_environment_yml_is_refused(depth: int, case: str, tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    path.write_text(YAML_CASES[case](depth))
    with pytest.raises(SpecError, match=rf"(?s)environment\.yml \(1 problem\).*"
                       rf"line \d+ column \d+: {DEEP}"):
        Spec.from_file(path)
    record("bad input: deep nesting", tried=1, refused=1)


def test_environment_yml_that_contains_itself_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    path.write_text("dependencies: &deps [*deps]\n")
    with pytest.raises(SpecError, match=rf"(?s)conda\.dependencies\[0\]\[0\].*\.\.\.: {DEEP}"):
        Spec.from_file(path)


def test_executor_data_option_that_is_deep_is_refused() -> None:
    """PonchoExecutor(data=...) is validated by Spec.from_dict when the executor is made."""
    from parsl_poncho import PonchoExecutor

    data = {"http": {"DB": nested_data("object", 100_000)}}
    with pytest.raises(SpecError, match=rf"(?s)Executor\(data=\.\.\.\).*http\.DB\.a\.a.*{DEEP}"):
        PonchoExecutor(envs=EnvOptions(data=data))
    data = {"git": {"REPO": {"remote": nested_data("list", 3_000)}}}
    with pytest.raises(SpecError, match=rf"(?s)git\.REPO\.remote\[0\].*{DEEP}"):
        PonchoExecutor(envs=EnvOptions(data=data))


def test_deep_spec_object_never_reaches_the_store(tmp_path: Path) -> None:
    """A Spec constructed directly around deep junk: hashing it recurses, validation refuses it."""
    spec = Spec(conda=(nested_data("list", 3_000),))
    never = _NeverBuild()
    with EnvStore(tmp_path / "cache", builder=never) as store:
        with pytest.raises(SpecError, match=rf"(?s)conda\.dependencies\[0\]\[0\].*{DEEP}"):
            store.get(spec)
        assert store.entries() == []
    assert never.calls == 0


@pytest.mark.parametrize("stdin", [False, True])
def test_poncho_package_create_refuses_a_deep_spec_in_one_error(
    stdin: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from parsl_poncho.cli.create import main

    text = PLACES["a conda dependency"][0] + nested_text("object", 3_000) + "]}}"
    spec = tmp_path / "deep.json"
    spec.write_text(text)
    if stdin:
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    out = tmp_path / "out.tar.gz"
    assert main(["-" if stdin else str(spec), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("poncho_package_create: error: Invalid environment spec in "), err
    assert re.search(rf"line 1 column \d+: {DEEP}", err), err
    assert "Traceback" not in err and "RecursionError" not in err
    assert len(err.splitlines()) == 2, err  # the header and the one problem
    assert not out.exists()


@pytest.mark.parametrize("check", ["json_text_too_deep", "yaml_text_too_deep", "first_too_deep"])
def test_recursion_error_is_wrapped_when_the_depth_check_misses(
    check: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last resort: with a depth check disabled, the RecursionError still becomes SpecError."""
    where = {"json_text_too_deep": spec_module, "yaml_text_too_deep": spec_files,
             "first_too_deep": spec_checks}[check]  # the module that calls it
    monkeypatch.setattr(where, check, lambda *args, **kwargs: None)
    if check == "first_too_deep":
        def load() -> Any:
            return Spec.from_dict({"conda": {"dependencies": [nested_data("list", 3_000)]}})
    else:
        path = tmp_path / ("environment.yml" if check.startswith("yaml") else "spec.json")
        path.write_text(YAML_CASES["flow sequence"](3_000) if check.startswith("yaml")
                        else nested_text("list", 3_000))

        def load() -> Any:
            return Spec.from_file(path)
    with pytest.raises(SpecError, match=r"nested too deeply for Python to read \(RecursionError\)"
                       ) as info:
        load()
    assert isinstance(info.value.__cause__, RecursionError)


@settings(max_examples=40, deadline=None)
@given(
    kinds=st.lists(st.booleans(), min_size=65, max_size=3_000),
    place=st.sampled_from(sorted(PLACES)),
)
def test_any_shape_of_deep_nesting_is_refused(kinds: list[bool], place: str) -> None:
    """Any mix of objects and lists deeper than the limit, anywhere: SpecError (text and data)."""
    before, after = PLACES[place]
    text = "".join('{"k":' if is_object else "[" for is_object in kinds) + "0" + "".join(
        "}" if is_object else "]" for is_object in reversed(kinds))
    text = before + text + after if after else text
    with pytest.raises(SpecError, match=rf"line 1 column \d+: {DEEP}"):
        spec_module.decode_json(text)
    data: Any = 0
    for is_object in reversed(kinds):
        data = {"k": data} if is_object else [data]
    wrapped = json.loads(before + "0" + after) if after else data
    if after:
        if place == "a conda dependency":
            wrapped["conda"]["dependencies"][0] = data
        else:
            wrapped["http"]["DB"] = data
    with pytest.raises(SpecError, match=DEEP):
        Spec.from_dict(wrapped)


# -- long requirements lines ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("foo" + " " * 200_000 + "x\n", r"requirements\.txt:1: per-requirement options|is not a"),
        ("foo \\\n" * 100_000, r"'foo  foo  foo [fo ]*\.\.\. is not a valid pip requirement"),
        ("foo; " + "(" * 3_000 + "python_version>'3'" + ")" * 3_000 + "\n",
         r"nested more than 200 levels deep"),
    ],
    ids=["200k blanks", "100k continuation lines", "3000 marker parentheses"],
)
def test_long_requirements_lines_are_refused_quickly(text: str, error: str, tmp_path: Path
                                                     ) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(SpecError, match=error) as info:
        Spec.from_file(path)
    assert time.monotonic() - started < 10, "parsing must stay linear in the line length"
    assert len(str(info.value)) < 1_000, "the message cuts the line, it does not print it all"
