"""Tests of parsl_poncho.envs that need no build (builds and checks run in test_executor.py)."""

from __future__ import annotations

from parsl_poncho.envs import modules_from_requirements


def test_modules_from_requirements_skips_optional_and_marks_local():
    from parsl_poncho.analyze import Analyzer

    class Req:
        providers = {"numpy": "numpy", "helpers": "local:helpers", "ujson": "ujson"}
        modules = {"ujson": type("U", (), {"optional": True})()}

    assert modules_from_requirements(Req()) == {"numpy": "numpy", "helpers": None}
    import json

    req = Analyzer().requirements(lambda: json.dumps([]))
    assert "json" not in modules_from_requirements(req)
