"""Property-based fuzzing of specs: every input validates or is refused with a SpecError, never
another exception from deep inside; what validates hashes, round-trips, passes the builder's own
source checks and goes through the store; a few valid ones are really built.

Inputs are dicts shaped like the real schema (every section, with realistic and hostile values)
mixed with arbitrary JSON-like garbage at every level, files with random bytes under every name
the loader dispatches on, and Spec objects constructed directly with junk.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsl_poncho.build import check_data_sources
from parsl_poncho.errors import BuildError, SpecError
from parsl_poncho.spec import GitData, HttpData, Spec
from parsl_poncho.store import EnvStore

from .conftest import PYTHON, check_entry, record

SHORT, LONG = 250, 4000

# -- strategies ---------------------------------------------------------------------------------
junk: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

HOSTILE = [
    "", " ", "-", "--", "--upload-pack=touch /tmp/pwned", "-oProxyCommand=touch /tmp/pwned",
    "ext::sh -c touch% /tmp/pwned", "fd::3", "ssh://-oProxyCommand=x/r", "a\nb", "a\x00b",
    "../../etc/passwd", "/etc/passwd", "$(touch /tmp/pwned)", "`id`", "a;rm -rf ~", "é", "\u202e",
    "x" * 300, "numpy=>1", "numpy==", "==1", "python=3.11=*=*", "@", "a @ file:///etc",
    "http://", "file://", "https://127.0.0.1:9/x", "main..evil", "HEAD", "refs/heads/main",
    "main.lock", "-c", "@{-1}",
]
MATCH_SPECS = ["python", f"python={PYTHON}", "python >=3.11", "pip", "numpy=1.26.4",
               "numpy=1.26.4=py311h64a7726_0", "conda-forge::numpy", "numpy[version='>=1.2']",
               "scipy>=1.0,<2", "*"]
PIP_REQS = ["numpy==2.4.6", "Pkg_A==1.0", "requests[socks]>=2", "six", "a @ https://x.org/a.whl",
            "foo; python_version < '3.12'", "pandas!=2.0.0"]
REMOTES = ["https://example.org/r.git", "git@example.org:r.git", "ssh://git@example.org/r.git",
           "file:///srv/r.git", "/srv/r.git", "git://example.org/r"]
URLS = ["https://example.org/db.csv", "http://127.0.0.1:9/x.tar.gz", "file:///srv/db",
        "ftp://example.org/x", "gopher://x", "https://", "javascript:alert(1)"]
SHAS = ["a" * 64, "A" * 64, "abc", "g" * 64, "0" * 63]
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True) | st.text(max_size=6)


def text_from(choices: list[str]) -> st.SearchStrategy[str]:
    """Mostly realistic values, else hostile ones or arbitrary text."""
    good = st.sampled_from(choices)
    return st.one_of(good, good, good, good, st.sampled_from(HOSTILE), st.text(max_size=16))


def or_junk(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``strategy``, sometimes garbage in its place."""
    return st.one_of(*[strategy] * 9, junk)


def optional_dict(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({k: or_junk(v) for k, v in required.items()},
                                 optional={k: or_junk(v) for k, v in optional.items()})


pip_list = st.lists(text_from(PIP_REQS), max_size=4)
conda_items = st.lists(text_from(MATCH_SPECS) | st.fixed_dictionaries({"pip": pip_list}),
                       max_size=5)
conda_section = optional_dict({}, {"channels": st.lists(text_from(["conda-forge", "defaults",
                                                                  "file:///srv/ch", "/srv/ch"]),
                                                        max_size=3),
                                   "dependencies": conda_items,
                                   "packages": st.lists(text_from(MATCH_SPECS), max_size=4)})
git_entry = optional_dict({"remote": text_from(REMOTES)}, {"ref": text_from(["main", "v1.0",
                                                                               "a" * 40])})
http_entry = optional_dict({"url": text_from(URLS)},
                           {"type": st.sampled_from(["file", "tar", "zip"]) | junk,
                            "compression": st.sampled_from(["gzip", "bzip2", "xz", "rar"]) | junk,
                            "sha256": st.sampled_from(SHAS) | junk})
local_entry = optional_dict({"path": text_from(["mod.py", "/srv/pkg"]),
                             "sha256": st.sampled_from(SHAS)}, {"name": names})
extensions = optional_dict({}, {
    "local": st.dictionaries(names, local_entry, max_size=2) | st.lists(local_entry, max_size=2),
    "pip_options": optional_dict({}, {"index_url": text_from(URLS),
                                      "extra_index_urls": st.lists(text_from(URLS), max_size=2),
                                      "find_links": st.lists(text_from(["/opt/wheels"]),
                                                             max_size=2),
                                      "trusted_host": st.text(max_size=5)}),
})
spec_dicts = st.one_of(
    junk,
    *[optional_dict({}, {
        "conda": conda_section,
        "pip": pip_list,
        "git": st.dictionaries(names, git_entry, max_size=2),
        "http": st.dictionaries(names, http_entry, max_size=2),
        "x-parsl-poncho": extensions,
        "x-other": junk,
        "pinned": junk,
        "condaa": junk,
    })] * 2,
    optional_dict({}, {"conda": conda_section, "pip": pip_list}),
    st.fixed_dictionaries({}, optional={  # realistic values only: exercises the valid path
        "conda": st.fixed_dictionaries({}, optional={
            "channels": st.lists(st.sampled_from(["conda-forge", "defaults", "/srv/ch"]),
                                 max_size=2),
            "dependencies": st.lists(st.sampled_from(MATCH_SPECS) | st.fixed_dictionaries(
                {"pip": st.lists(st.sampled_from(PIP_REQS), max_size=3)}), max_size=4)}),
        "git": st.dictionaries(st.from_regex(r"[A-Z]{1,4}", fullmatch=True), st.fixed_dictionaries(
            {"remote": st.sampled_from(REMOTES)}, optional={"ref": st.sampled_from(
                ["main", "v1.0", "a" * 40])}), max_size=2),
        "http": st.dictionaries(st.from_regex(r"H[A-Z]{0,4}", fullmatch=True),
                                st.fixed_dictionaries({"url": st.sampled_from(URLS[:3])},
                                                      optional={"sha256": st.just("a" * 64)}),
                                max_size=2),
    }),
)

# -- properties ---------------------------------------------------------------------------------
COUNTS: Counter[str] = Counter()  # this session's counts (also added to the run's report)
SECTION = "bad input: fuzzed specs"


def count(what: str) -> None:
    COUNTS[what] += 1
    record(SECTION, **{what: 1})


def check_dict(data: Any) -> Spec | None:
    """The property: Spec.from_dict accepts ``data`` or raises SpecError, nothing else."""
    count("tried")
    try:
        spec = Spec.from_dict(data)
    except SpecError as exc:
        count("refused")
        assert str(exc).startswith("Invalid environment spec") and exc.problems
        return None
    count("valid")
    digest = spec.hash()
    assert len(digest) == 64 and spec.hash() == digest
    again = Spec.from_dict(spec.to_dict())
    assert again.hash() == digest, "to_dict/from_dict changed the hash"
    assert Spec.from_dict(spec.to_dict()).canonical_json() == spec.canonical_json()
    spec.validate()
    try:  # the builder's own refusals (for Specs that skipped validation) agree with validation
        check_data_sources(spec)
    except BuildError as exc:
        count("valid but refused by the builder")
        pytest.fail(f"validation accepted what the builder refuses: {exc}")
    return spec


class FakeBuilder:
    """Writes a small tarball (what the store needs) and a manifest."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, spec: Spec, output: Path, *, options: Any = None,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        import io
        import tarfile

        self.calls += 1
        payload = spec.canonical_json().encode()
        with tarfile.open(output, "w:gz") as tar:
            info = tarfile.TarInfo("spec.json")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        return {"spec": spec.to_dict()}


def fuzz(max_examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _dict_property(data: Any) -> None:
    spec = check_dict(data)
    if spec is not None and COUNTS["stored"] < 40:
        with tempfile.TemporaryDirectory() as tmp, EnvStore(Path(tmp),
                                                            builder=FakeBuilder()) as store:
            env = store.get(spec).result(timeout=60)
            assert store.get(spec).done()
            check_entry(env.tarball.parent)
        count("stored")


@given(spec_dicts)
@fuzz(SHORT)
def test_fuzzed_spec_dicts_validate_or_are_refused(data: Any) -> None:
    _dict_property(data)


@pytest.mark.long
@given(spec_dicts)
@fuzz(LONG)
def test_fuzzed_spec_dicts_validate_or_are_refused_long(data: Any) -> None:
    _dict_property(data)


# Files: random text/bytes under each name the loader dispatches on.
file_names = st.sampled_from(["spec.json", "poncho.json", "environment.yml", "env.yaml",
                              "requirements.txt", "dev-requirements.in"])
file_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    st.builds(lambda lines: "\n".join(lines), st.lists(text_from(PIP_REQS + [
        "-r other.txt", "--index-url https://127.0.0.1:9/simple", "-e .", "--hash=sha256:00",
        "-c constraints.txt", "# comment", "\\"]), max_size=6)),
    st.builds(lambda deps: "name: x\ndependencies:\n" + "".join(f"  - {d}\n" for d in deps),
              st.lists(text_from(MATCH_SPECS + ["pip:", "- six", "{pip: [a]}"]), max_size=5)),
)


def _file_property(name: str, body: bytes | str) -> None:
    count("files tried")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        if isinstance(body, str):
            path.write_text(body, encoding="utf-8", errors="surrogatepass")
        else:
            path.write_bytes(body)
        try:
            spec = Spec.from_file(path)
        except SpecError:
            count("files refused")
            return
    spec.validate()
    assert len(spec.hash()) == 64


@given(file_names, file_bodies)
@fuzz(SHORT)
def test_fuzzed_spec_files_load_or_are_refused(name: str, body: bytes | str) -> None:
    _file_property(name, body)


@pytest.mark.long
@given(file_names, file_bodies)
@fuzz(LONG)
def test_fuzzed_spec_files_load_or_are_refused_long(name: str, body: bytes | str) -> None:
    _file_property(name, body)


# Spec objects constructed directly (no from_dict): validate() and the store refuse the junk.
direct_kwargs = st.fixed_dictionaries({
    "channels": st.lists(text_from(["conda-forge"]) | junk, max_size=2),
    "conda": st.lists(text_from(MATCH_SPECS) | junk, max_size=3),
    "pip": st.lists(text_from(PIP_REQS) | junk, max_size=3),
    "git": st.dictionaries(names | junk.filter(lambda v: isinstance(v, (int, str))),
                           st.builds(GitData, text_from(REMOTES), text_from(["main"])),
                           max_size=2),
    "http": st.dictionaries(names, st.builds(HttpData, text_from(URLS),
                                             st.sampled_from(["file", "tar", "zip"]),
                                             st.sampled_from([None, "gzip", "rar"]),
                                             st.sampled_from([None, *SHAS])), max_size=2),
})


def _direct_property(kwargs: dict[str, Any]) -> None:
    try:  # the constructor may reject wrongly typed arguments outright (a caller's bug)
        spec = Spec(**kwargs)
    except TypeError:
        count("objects refused by the constructor")
        return
    count("objects tried")
    never = FakeBuilder()
    try:
        spec.validate()
        valid = True
    except SpecError:
        count("objects refused")
        valid = False
    with tempfile.TemporaryDirectory() as tmp, EnvStore(Path(tmp), builder=never) as store:
        if valid:
            check_data_sources(spec)
            assert store.get(spec).result(timeout=60).size > 0
        else:
            with pytest.raises(SpecError, match=r"Invalid environment spec"):
                store.get(spec)
            assert never.calls == 0 and store.entries() == []


@given(direct_kwargs)
@fuzz(SHORT)
def test_directly_constructed_specs_are_validated(kwargs: dict[str, Any]) -> None:
    _direct_property(kwargs)


@pytest.mark.long
@given(direct_kwargs)
@fuzz(LONG)
def test_directly_constructed_specs_are_validated_long(kwargs: dict[str, Any]) -> None:
    _direct_property(kwargs)


# -- a bounded sample of valid fuzzed specs, really built ----------------------------------------
def buildable_specs(port: int, missing: Path) -> st.SearchStrategy[dict[str, Any]]:
    """Valid specs whose every source is this machine: the seeded channel, a closed local port
    for pip and http, a missing local path for git (never any other address)."""
    pythons = st.sampled_from(["python", f"python={PYTHON}", "python >=3.11", "python <3"])
    return st.fixed_dictionaries(
        {"conda": st.fixed_dictionaries({"dependencies": st.lists(
            pythons | st.sampled_from(["pip", "not-a-package-xyz"]), min_size=1, max_size=3)})},
        optional={
            "pip": st.lists(st.from_regex(r"[a-z]{1,8}==1\.[0-9]", fullmatch=True), max_size=2),
            "http": st.dictionaries(st.from_regex(r"[A-Z]{1,5}", fullmatch=True), st.builds(
                lambda n: {"url": f"http://127.0.0.1:{port}/{n}"}, st.integers(0, 99)),
                max_size=1),
            "git": st.dictionaries(st.from_regex(r"G[A-Z]{0,4}", fullmatch=True), st.just(
                {"remote": str(missing / "repo.git"), "ref": "main"}), max_size=1),
        },
    )


def _build_sample(n: int, tmp_path: Path, real_options: Any, closed_port: int) -> None:
    import dataclasses

    options = dataclasses.replace(real_options,
                                  index_url=f"http://127.0.0.1:{closed_port}/simple")
    strategy = buildable_specs(closed_port, tmp_path / "missing")
    outcomes: Counter[str] = Counter()
    seen: list[Any] = []

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def draw(data: dict[str, Any]) -> None:
        seen.append(data)

    draw()
    with EnvStore(tmp_path / "cache", build_options=options) as store:
        for data in seen[:n]:
            spec = Spec.from_dict(data)
            try:
                env = store.get(spec).result(timeout=600)
            except BuildError as exc:
                assert exc.step in ("solve", "install", "pip", "data", "code", "pack"), exc
                assert str(exc) and "Traceback" not in str(exc)
                outcomes[f"refused at {exc.step}"] += 1
                assert store.lookup(store.key(spec)) is None
                continue
            check_entry(env.tarball.parent)
            outcomes["built"] += 1
    record("bad input: fuzzed specs really built", tried=len(seen[:n]),
           **{k: v for k, v in sorted(outcomes.items())})
    assert sum(outcomes.values()) == len(seen[:n]) > 0


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("n", [pytest.param(4, id="short"),
                               pytest.param(16, id="long", marks=pytest.mark.long)])
def test_sample_of_valid_fuzzed_specs_builds_or_fails_cleanly(
    n: int, tmp_path: Path, real_options: Any, closed_port: int
) -> None:
    _build_sample(n, tmp_path, real_options, closed_port)
