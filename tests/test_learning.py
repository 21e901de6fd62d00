"""Tests of parsl_poncho.learning: what a failed task teaches its app, and the bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from parsl_poncho.analyze import Analyzer
from parsl_poncho.errors import PonchoError
from parsl_poncho.learning import (
    MAX_LEARN_RETRIES,
    AppIdentity,
    Learner,
    forget_learnt,
    list_learnt,
    misses_of,
)


def _script_function(source: str):
    """A function defined in a user's script (pickled and analysed by value, like most apps)."""
    namespace: dict = {"__name__": "__main__"}
    exec(source, namespace)
    return next(v for k, v in namespace.items() if not k.startswith("__"))


app = _script_function("def app(x):\n    return x + 1\n")
other_app = _script_function("def other_app(x):\n    return x - 1\n")


def make_learner(cache: Path | None, **kwargs) -> Learner:
    return Learner(lambda extra: Analyzer(extra_pkgs=extra), cache, **kwargs)


def pip_names(spec) -> list[str]:
    return [p.split("==")[0] for p in spec.pip]


def test_an_importable_miss_is_learnt_once_and_changes_only_that_apps_spec(tmp_path):
    learner = make_learner(tmp_path)
    before = learner.analyzer_for(app).analyze(app)
    assert "numpy" not in pip_names(before)
    assert learner.learn(app, ["numpy"]) == {"numpy": "numpy"}
    assert learner.learn(app, ["numpy"]) == {}  # an app learns a module once
    after = learner.analyzer_for(app).analyze(app)
    assert "numpy" in pip_names(after)
    assert "numpy" not in pip_names(learner.analyzer_for(other_app).analyze(other_app))


def test_modules_this_host_lacks_stdlib_and_bad_names_are_never_learnt(tmp_path):
    learner = make_learner(tmp_path)
    assert learner.learn(app, ["poncho_exists_nowhere", "json", "os.path"]) == {}
    assert learner.learnt(AppIdentity.of(app)) == {}


def test_a_second_module_of_a_learnt_distribution_adds_no_build(tmp_path):
    learner = make_learner(tmp_path)
    assert learner.learn(app, ["numpy"]) == {"numpy": "numpy"}
    assert learner.learn(app, ["numpy.linalg", "numpy.fft"]) == {}
    assert learner.learnt(AppIdentity.of(app)) == {"numpy": "numpy"}


def test_what_was_learnt_persists_for_the_next_run_and_can_be_forgotten(tmp_path):
    make_learner(tmp_path).learn(app, ["numpy"])
    again = make_learner(tmp_path)
    assert again.learnt(AppIdentity.of(app)) == {"numpy": "numpy"}
    assert "numpy" in pip_names(again.analyzer_for(app).analyze(app))
    records = list_learnt(tmp_path)
    assert [r["app"] for r in records] == ["__main__.app"]
    assert records[0]["modules"] == {"numpy": "numpy"}
    with pytest.raises(PonchoError, match=r"no learnt modules match 'nothing\.like\.this'"):
        forget_learnt(tmp_path, ["nothing.like.this"])
    assert forget_learnt(tmp_path, ["__main__.app"]) == [records[0]["key"]]
    assert make_learner(tmp_path).learnt(AppIdentity.of(app)) == {}


def test_an_edited_app_starts_afresh():
    namespace: dict = {}
    exec("def app(x):\n    return x + 1\n", namespace)
    first = AppIdentity.of(namespace["app"])
    exec("def app(x):\n    return x + 2\n", namespace)
    assert AppIdentity.of(namespace["app"]).code_hash != first.code_hash
    assert AppIdentity.of(namespace["app"]).key != first.key


def test_disabled_learning_learns_and_applies_nothing(tmp_path):
    learner = make_learner(tmp_path, enabled=False)
    assert learner.learn(app, ["numpy"]) == {}
    assert learner.analyzer_for(app) is learner.base


def test_a_task_is_retried_for_learning_at_most_a_few_times(tmp_path):
    learner = make_learner(None)
    assert [learner.may_retry("7") for _ in range(MAX_LEARN_RETRIES + 2)] == (
        [True] * MAX_LEARN_RETRIES + [False, False])
    learner.forget_task("7")
    assert learner.may_retry("7")


def test_only_import_related_failures_are_learnt_from():
    probed = {"status": "raised", "misses": ["ujson"], "exc_type": "builtins.ValueError",
              "message": "bad input", "exception": ValueError("bad input")}
    assert misses_of(probed) == []  # a bug after an optional probe: not rebuilt for it
    hidden = {**probed, "exc_type": "mylib.Error", "exception": None,
              "message": "install ujson to use fast mode"}
    assert misses_of(hidden) == ["ujson"]
    raised = {**probed, "exception": ImportError("Missing optional dependency")}
    assert misses_of(raised) == ["ujson"]
    assert misses_of({**probed, "status": "ok"}) == ["ujson"]


def test_misses_come_from_the_result_or_the_runners_stderr():
    assert misses_of({"misses": ["a", "b.c", "a", "not a name"]}) == ["a", "b.c"]
    output = "boom\nrun_function.py: modules not found: pytest, pandas\n"
    assert misses_of(None, output) == ["pytest", "pandas"]
    assert misses_of({}, "") == []


def test_unreadable_learnt_file_is_ignored(tmp_path):
    learner = make_learner(tmp_path)
    learner.learn(app, ["numpy"])
    (path,) = (tmp_path / "learnt").glob("*.json")
    path.write_text("{not json")
    assert make_learner(tmp_path).learnt(AppIdentity.of(app)) == {}


def test_cache_cli_lists_and_forgets_learnt_modules(tmp_path, capsys):
    from parsl_poncho.cli.main import main as poncho_main

    make_learner(tmp_path).learn(app, ["numpy"])
    assert poncho_main(["cache", "--cache-dir", str(tmp_path), "learnt"]) == 0
    out = capsys.readouterr().out
    assert "__main__.app" in out and "numpy (numpy)" in out and "1 app learnt" in out
    assert poncho_main(["cache", "--cache-dir", str(tmp_path), "learnt", "--json"]) == 0
    assert '"numpy": "numpy"' in capsys.readouterr().out
    assert poncho_main(["cache", "--cache-dir", str(tmp_path), "forget", "no.such"]) == 1
    assert "no learnt modules match 'no.such'" in capsys.readouterr().out
    assert poncho_main(["cache", "--cache-dir", str(tmp_path), "forget", "__main__"]) == 0
    assert "forgot" in capsys.readouterr().out
    assert list_learnt(tmp_path) == []
