"""Hand-written malformed specs (tests/reliability/malformed/*.json): each is refused with a
SpecError whose message names the JSON path and the problem, before anything is built or cached.

Each case file holds ``why`` (what is wrong), ``error`` (a regex the message must match) and
either ``spec`` (the decoded JSON given to Spec.from_dict) or ``raw`` (file text given to
Spec.from_file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

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
