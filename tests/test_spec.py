"""Tests for parsl_poncho.spec: formats in and out, validation messages, canonical hash."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsl_poncho.errors import SpecError
from parsl_poncho.spec import (
    BUILD_FORMAT_VERSION,
    EXTENSION_KEY,
    GitData,
    HttpData,
    LocalCode,
    PipOptions,
    Spec,
    current_platform,
)
from parsl_poncho.spec_checks import git_ref_error, git_remote_error, load_schema

SPECS = Path(__file__).parent / "specs"
INPUT_NAMES = ("spec.json", "environment.yml", "requirements.txt")
PYTHON = ".".join(str(v) for v in sys.version_info[:3])


def _cases(kind: str) -> list[Path]:
    return sorted(p for p in (SPECS / kind).iterdir() if p.is_dir())


def _input(case: Path) -> Path:
    return next(case / name for name in INPUT_NAMES if (case / name).exists())


def _expected(case: Path) -> Any:
    text = (case / "expected.json").read_text()
    text = text.replace("@PYTHON@", PYTHON).replace("@DIR@", str(case.resolve()))
    return json.loads(text)


# -- scenario folders ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", _cases("good"), ids=lambda p: p.name)
def test_good_spec_reads_to_expected_dict(case: Path) -> None:
    spec = Spec.from_file(_input(case))
    assert spec.to_dict() == _expected(case)
    # what we write reads back to the same spec and hash
    again = Spec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.hash() == spec.hash()


@pytest.mark.parametrize("case", _cases("bad"), ids=lambda p: p.name)
def test_bad_spec_lists_every_problem(case: Path) -> None:
    expected = _expected(case)["problems"]
    with pytest.raises(SpecError, match=r"(?s)spec|JSON") as info:
        Spec.from_file(_input(case))
    joined = "\n".join(info.value.problems)
    for problem in expected:
        assert problem in joined
        assert problem in str(info.value)
    assert info.value.source == str(_input(case))


def test_error_message_names_count_and_fix() -> None:
    with pytest.raises(SpecError, match=r"Invalid environment spec \(2 problems\); fix them"):
        Spec.from_dict({"conda": {"dependencies": ["numpy=>1", "scipy=<<2"]}})


def test_non_object_spec_is_refused() -> None:
    with pytest.raises(SpecError, match=r"must be a JSON object, got list"):
        Spec.from_dict(["python"])  # type: ignore[arg-type]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(SpecError, match=r"Cannot read spec file .*nope.json"):
        Spec.from_file(missing)


def test_unknown_nested_key_suggests_spelling() -> None:
    with pytest.raises(SpecError, match=r"conda: unknown key 'dependancies' \(did you mean"):
        Spec.from_dict({"conda": {"dependancies": ["python"]}})


def test_misspelt_extension_key_is_caught() -> None:
    with pytest.raises(SpecError, match=r"x-parsl-ponch: unknown extension; did you mean"):
        Spec.from_dict({"x-parsl-ponch": {"local": {}}})
    assert Spec.from_dict({"x-other": {}}) == Spec()


def test_pinned_section_gets_specific_advice() -> None:
    with pytest.raises(SpecError, match=r"'pinned' is not supported"):
        Spec.from_dict({"conda": {"dependencies": []}, "pinned": {"conda": {}}})


def test_same_variable_in_git_and_http_is_refused() -> None:
    data = {
        "git": {"DATA": {"remote": "https://example.org/r.git"}},
        "http": {"DATA": {"url": "https://example.org/d"}},
    }
    with pytest.raises(SpecError, match=r"http.DATA: variable 'DATA' is also defined under 'git'"):
        Spec.from_dict(data)


@pytest.mark.parametrize(
    "remote",
    [
        "-u",
        "--upload-pack=evil",
        "ext::sh -c evil",
        "fd::3",
        "EXT::x",
        "ssh://-oProxyCommand=evil/x",
        "https://ok/\nevil",
    ],
)
def test_dangerous_git_remotes_are_refused(remote: str) -> None:
    assert git_remote_error(remote)


@pytest.mark.parametrize(
    "remote",
    ["https://github.com/a/b.git", "git@github.com:a/b.git", "ssh://git@h/x", "/srv/repo", "./r"],
)
def test_ordinary_git_remotes_pass(remote: str) -> None:
    assert git_remote_error(remote) is None


@pytest.mark.parametrize("ref", ["HEAD", "main", "v1.2.3", "refs/tags/v1", "a" * 40, "fix/x-1"])
def test_ordinary_git_refs_pass(ref: str) -> None:
    assert git_ref_error(ref) is None


@pytest.mark.parametrize("ref", ["-x", "a..b", "a b", "x.lock", "x/", "@{-1}", "a;b", "/x"])
def test_bad_git_refs_are_refused(ref: str) -> None:
    assert git_ref_error(ref)


# -- the data model -----------------------------------------------------------------------------
def test_direct_construction_coerces_lists_and_validates() -> None:
    spec = Spec(conda=["python=3.11", "pip"], pip=["NumPy==2"])  # type: ignore[arg-type]
    assert spec.conda == ("python=3.11", "pip")
    assert spec.validate().pip == ("numpy==2",)
    with pytest.raises(SpecError, match=r"'numpy=>1' is not a valid match spec"):
        Spec(conda=("numpy=>1",)).validate()


def test_to_dict_omits_unused_sections() -> None:
    out = Spec(conda=("python=3.11",)).to_dict()
    assert out == {"conda": {"channels": ["conda-forge"], "dependencies": ["python=3.11"]}}


def test_environment_yml_unknown_key_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    path.write_text("dependencies: [python=3.11]\nvariables: {A: 1}\n")
    with pytest.raises(SpecError, match=r"variables: unknown key 'variables'"):
        Spec.from_file(path)


def test_requirements_python_can_be_chosen(tmp_path: Path) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text("numpy\n")
    assert "python=3.10.4" in Spec.from_requirements(path, python="3.10.4").conda


def test_schema_is_valid_json_schema() -> None:
    import jsonschema

    schema = load_schema()
    jsonschema.validators.validator_for(schema).check_schema(schema)


# -- cctools poncho compatibility ---------------------------------------------------------------
def _read_like_poncho(spec: dict[str, Any]) -> tuple[list[str], list[str], dict[str, Any]]:
    """What cctools' poncho_package_create reads from a spec (conda, pip, data), re-stated.

    poncho reads conda.channels, conda.dependencies (strings, and dicts with a "pip" list),
    git.VAR.remote and http.VAR.{url,type,compression}; ignores other keys; its dict_to_env()
    first sorts every nested dict and calls list.sort() on every list.
    """

    def sort_like_poncho(node: Any, path: str = "") -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                sort_like_poncho(value, f"{path}.{key}")
        elif isinstance(node, list) and path != ".conda.dependencies":
            sorted(node)  # raises TypeError on dicts, as poncho would

    sort_like_poncho(spec)
    conda = spec["conda"]
    assert isinstance(conda["channels"], list)
    deps = conda["dependencies"]
    conda_deps = [d for d in deps if isinstance(d, str)]
    pip_items = [d for d in deps if isinstance(d, dict)]
    assert all(set(d) == {"pip"} for d in pip_items)
    pip = [p for d in pip_items for p in d["pip"]]
    data = {}
    for var, entry in spec.get("git", {}).items():
        data[var] = entry["remote"]
    for var, entry in spec.get("http", {}).items():
        assert entry.get("type", "file") in ("file", "tar")
        assert entry.get("compression") in (None, "gzip")
        data[var] = entry["url"]
    return conda_deps, pip, data


def test_written_spec_is_what_cctools_poncho_reads(tmp_path: Path) -> None:
    spec = Spec(
        conda=("pip", "python=3.11.7"),
        pip=("numpy==1.26.4", "requests==2.31.0"),
        git={"REPO": GitData("https://example.org/r.git", "v1")},
        http={"DB": HttpData("https://example.org/db.tgz", "tar", "gzip", "a" * 64)},
        local=(LocalCode("b", "/x/b.py", "1" * 64), LocalCode("a", "/x/a", "2" * 64)),
        pip_options=PipOptions(find_links=("/w2", "/w1"), extra_index_urls=("https://i",)),
    )
    written = json.loads(json.dumps(spec.to_dict()))
    conda, pip, data = _read_like_poncho(written)
    assert conda == ["pip", "python=3.11.7"]
    assert pip == ["numpy==1.26.4", "requests==2.31.0"]
    assert data == {"REPO": "https://example.org/r.git", "DB": "https://example.org/db.tgz"}
    assert set(written) == {"conda", "git", "http", EXTENSION_KEY}
    without_ext = {k: v for k, v in written.items() if k != EXTENSION_KEY}
    assert Spec.from_dict(without_ext).to_dict() == without_ext


def test_cctools_man_page_example_is_accepted() -> None:
    example = {
        "conda": {
            "channels": ["conda-forge"],
            "dependencies": [
                "matplotlib=3.7.1=py311h38be061_0",
                "numpy=1.24.2=py311h8e6699e_0",
                "pip=23.0.1=pyhd8ed1ab_0",
                "python=3.11.0=he550d4f_1_cpython",
                {"pip": ["uproot==5.0.5"]},
            ],
        },
        "git": {"DATA_DIR": {"remote": "http://example.org/repo.git"}},
        "http": {
            "REFERENCE_DB": {"type": "file", "url": "https://example.org/example.dat"},
            "TRAINING_DATASET": {
                "type": "tar",
                "compression": "gzip",
                "url": "http://example.org/dataset.tar.gz",
            },
        },
    }
    spec = Spec.from_dict(example)
    assert spec.git["DATA_DIR"].ref == "HEAD"
    assert spec.pip == ("uproot==5.0.5",)


# -- canonical form and hash --------------------------------------------------------------------
BASE = {
    "conda": {
        "channels": ["conda-forge", "bioconda"],
        "dependencies": ["python=3.11.7", "pip", "numpy >=1.26", {"pip": ["scikit-learn==1.4.0"]}],
    },
    "git": {"G": {"remote": "https://example.org/r.git", "ref": "v1"}},
    "http": {"H": {"url": "https://example.org/h", "type": "file", "sha256": "c" * 64}},
    EXTENSION_KEY: {
        "local": [
            {"name": "a", "path": "/p/a.py", "sha256": "1" * 64},
            {"name": "b", "path": "/p/b", "sha256": "2" * 64},
        ],
        "pip_options": {"find_links": ["/w1", "/w2"]},
    },
}


def test_hash_covers_platform_and_format() -> None:
    spec = Spec.from_dict(BASE)
    assert spec.hash() == spec.hash(current_platform())
    assert spec.hash("linux-64") != spec.hash("osx-arm64")
    assert BUILD_FORMAT_VERSION >= 1
    assert current_platform().count("-") == 1


def test_hash_ignores_local_path_but_not_content() -> None:
    spec = Spec.from_dict(BASE)
    moved = Spec(**{**spec.__dict__, "local": (LocalCode("a", "/elsewhere", "1" * 64),)})
    same = Spec(**{**spec.__dict__, "local": (LocalCode("a", "/p/a.py", "1" * 64),)})
    edited = Spec(**{**spec.__dict__, "local": (LocalCode("a", "/p/a.py", "3" * 64),)})
    assert moved.hash() == same.hash()
    assert edited.hash() != same.hash()


def test_hash_changes_with_content() -> None:
    spec = Spec.from_dict(BASE)
    other = Spec(**{**spec.__dict__, "pip": ("scikit-learn==1.4.1",)})
    assert other.hash() != spec.hash()


def test_channel_order_is_significant() -> None:
    swapped = json.loads(json.dumps(BASE))
    swapped["conda"]["channels"].reverse()
    assert Spec.from_dict(swapped).hash() != Spec.from_dict(BASE).hash()


def test_whitespace_and_version_spelling_do_not_change_hash() -> None:
    a = Spec(conda=("numpy>=1.26",), pip=("scikit_learn == 1.4.0", "Foo[B,a]>=1.0,<2"))
    b = Spec(conda=(" numpy  >=1.26 ",), pip=("Scikit.Learn==1.4.0", "foo[a,b] <2, >=1.0"))
    assert a.canonical_json() == b.canonical_json()
    # PEP 440 normal form: 1.04 is 1.4; but 1.4 and 1.4.0 stay distinct strings
    assert Spec(pip=("x==1.04",)).hash() == Spec(pip=("x==1.4",)).hash()
    assert Spec(pip=("x==1.4",)).hash() != Spec(pip=("x==1.4.0",)).hash()


def _respell(name: str, rnd: random.Random) -> str:
    out = []
    for ch in name:
        if ch == "-":
            out.append(rnd.choice(["-", "_", ".", "--", "_-"]))
        else:
            out.append(ch.upper() if rnd.random() < 0.5 else ch)
    return "".join(out)


def _shuffled(data: Any, rnd: random.Random, path: str = "") -> Any:
    if isinstance(data, dict):
        items = list(data.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd, f"{path}.{k}") for k, v in items}
    if isinstance(data, list):
        items = [_shuffled(v, rnd, f"{path}[]") for v in data]
        if not path.endswith(("channels", "extra_index_urls")):  # priority order is meaningful
            rnd.shuffle(items)
        return items
    if isinstance(data, str) and path.endswith(".pip[]"):
        name, _, rest = data.partition("==")
        return _respell(name, rnd) + " == " + rest
    return data


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), indent=st.sampled_from([None, 1, 4]))
def test_hash_invariant_under_shuffles_and_spelling(seed: int, indent: int | None) -> None:
    rnd = random.Random(seed)
    variant = json.loads(json.dumps(_shuffled(BASE, rnd), indent=indent))
    assert Spec.from_dict(variant).hash() == Spec.from_dict(BASE).hash()


names = st.from_regex(r"[a-z][a-z0-9]{0,5}(-[a-z0-9]{1,4}){0,2}", fullmatch=True)
versions = st.from_regex(r"[1-9][0-9]?(\.[0-9]{1,2}){0,2}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    pkgs=st.dictionaries(names, versions, min_size=1, max_size=6),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_pip_hash_invariant_under_name_spelling(pkgs: dict[str, str], seed: int) -> None:
    rnd = random.Random(seed)
    reqs = [f"{n}=={v}" for n, v in pkgs.items()]
    respelled = [f"{_respell(n, rnd)} =={v}" for n, v in pkgs.items()]
    rnd.shuffle(respelled)
    a = Spec(conda=("python=3.11", "pip"), pip=tuple(reqs))
    b = Spec(conda=("pip", "python=3.11"), pip=tuple(respelled))
    assert a.hash("linux-64") == b.hash("linux-64")
    assert b.validate().hash("linux-64") == a.hash("linux-64")


def test_decode_json_refuses_nesting_deeper_than_a_spec_may_be() -> None:
    from parsl_poncho.spec import decode_json

    assert decode_json('{"conda": {"dependencies": [{"pip": ["six"]}]}}', source="s.json")
    with pytest.raises(SpecError, match=r"(?s)in s\.json .*line 1 column 65: nested more than 64"):
        decode_json("[" * 3_000 + "]" * 3_000, source="s.json")
    with pytest.raises(json.JSONDecodeError, match="Expecting property name"):
        decode_json("{nope", source="s.json")
