"""PonchoExecutor's option groups (envs, workers, sizing) and the flat names they replace."""

from __future__ import annotations

import inspect
import warnings

import pytest

from parsl_poncho import EnvOptions, PipSources, PonchoExecutor, SizingOptions, WorkerOptions
from parsl_poncho.errors import ExecutorError
from parsl_poncho.options import _FLAT

# one value per old flat name, different from its default
FLAT_VALUES = {
    "channels": ["conda-forge"], "cache_dir": "/scratch/envs", "pkg_mapping": {"cv2": "opencv"},
    "extra_pkgs": ["numpy"], "ignore": ["mylab"], "pin_transitive": False,
    "seed_channel": False, "verify": False,
    "data": {"http": {"T": {"url": "http://127.0.0.1:9/t.csv", "type": "file",
                            "sha256": "a" * 64}}}, "learn_missing": False,
    "worker_options": "--cores 4", "worker_executable": "/opt/wq/worker",
    "init_command": "module load gcc", "unpack_timeout": 60, "worker_cache_dir": "/local",
    "server_idle_timeout": 30, "default_cores": 2, "default_disk": None, "right_size": False,
    "autolabel": True, "autolabel_window": 5, "scaling_cores_per_worker": 8,
}


def test_every_flat_name_has_a_value_here() -> None:
    assert set(FLAT_VALUES) == set(_FLAT)


def test_groups_set_the_executor_and_show_in_its_repr() -> None:
    ex = PonchoExecutor(envs=EnvOptions(extra_pkgs=["numpy"], cache_dir="/c"),
                        workers=WorkerOptions(options="--cores 4"),
                        sizing=SizingOptions(default_cores=2))
    assert ex.envs.extra_pkgs == ("numpy",) and ex.workers.options == "--cores 4"
    assert ex.sizing.default_cores == 2 and ex.sizing.default_disk == 1024  # others default
    assert ex.workers_per_node == 1
    text = repr(ex)
    assert "envs=EnvOptions(" in text and "extra_pkgs=('numpy',)" in text
    assert "workers=WorkerOptions(options='--cores 4'" in text


def test_the_constructor_lost_its_flat_sprawl() -> None:
    names = list(inspect.signature(PonchoExecutor.__init__).parameters)
    assert not set(names) & set(_FLAT)
    assert len(names) - 2 <= 24, names  # self and **deprecated; there were 44


@pytest.mark.parametrize("name", sorted(FLAT_VALUES))
def test_a_flat_name_still_works_with_a_warning_that_names_the_new_spelling(name: str) -> None:
    group, cls, field = _FLAT[name]
    with pytest.warns(FutureWarning, match=rf"use PonchoExecutor\({group}={cls.__name__}"
                                            rf"\({field}=\.\.\.\)\)") as caught:
        old = PonchoExecutor(**{name: FLAT_VALUES[name]})
    assert caught[0].filename == __file__  # points at the caller's line
    new = PonchoExecutor(**{group: cls(**{field: FLAT_VALUES[name]})})
    assert getattr(old, group) == getattr(new, group) != cls()


def test_flat_names_fold_into_a_given_group() -> None:
    with pytest.warns(FutureWarning):
        ex = PonchoExecutor(envs=EnvOptions(extra_pkgs=["numpy"]), channels=["conda-forge"])
    assert ex.envs == EnvOptions(extra_pkgs=["numpy"], channels=["conda-forge"])


def test_a_field_given_two_different_ways_is_refused() -> None:
    with pytest.raises(ExecutorError, match=r"both channels=\['b'\] and envs=.*give it once"):
        PonchoExecutor(envs=EnvOptions(channels=["a"]), channels=["b"])


def test_old_pip_names_fold_into_pip_sources() -> None:
    with pytest.warns(FutureWarning) as caught:
        ex = PonchoExecutor(pip_index_url="https://idx.example/simple",
                            pip_find_links=["/opt/wheels"])
    assert [str(w.message).rpartition("use ")[2] for w in caught] == [
        "PonchoExecutor(pip_sources=PipSources(index_url=...))",
        "PonchoExecutor(pip_sources=PipSources(find_links=...))"]
    assert ex.pip_sources == PipSources().adding("https://idx.example/simple", (),
                                                 ["/opt/wheels"])


def test_a_misspelt_argument_is_a_type_error_with_a_suggestion() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'extra_pkg'; "
                                        r"did you mean 'extra_pkgs'\?"):
        PonchoExecutor(extra_pkg=["numpy"])
    with pytest.raises(TypeError, match=r"'colour'$"):
        PonchoExecutor(colour="red")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"envs": {"channels": ["a"]}}, r"envs=\{.*give a EnvOptions"),
    ({"sizing": WorkerOptions()}, r"sizing=WorkerOptions.*give a SizingOptions"),
])
def test_a_group_of_the_wrong_type_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ExecutorError, match=match):
        PonchoExecutor(**kwargs)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: SizingOptions(default_cores=0), r"SizingOptions\(default_cores=0\)"),
    (lambda: WorkerOptions(unpack_timeout=-1), r"WorkerOptions\(unpack_timeout=-1\)"),
    (lambda: EnvOptions(extra_pkgs="numpy"), r"EnvOptions\(extra_pkgs='numpy'\).*list"),
])
def test_bad_option_values_are_refused_when_made(make, match: str) -> None:
    with pytest.raises(ExecutorError, match=match):
        make()


def test_groups_copy_what_they_are_given() -> None:
    pkgs = ["numpy"]
    envs = EnvOptions(extra_pkgs=pkgs)
    pkgs.append("scipy")
    assert envs.extra_pkgs == ("numpy",)


def test_new_spelling_gives_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PonchoExecutor(envs=EnvOptions(), workers=WorkerOptions(), sizing=SizingOptions(),
                       pip_sources=PipSources())
