"""Where the pip part installs from: the host's pip/uv configuration, credentials kept out of
specs, and build errors that name the cause their tool reported."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from parsl_poncho.build.diagnose import cause_of, local_label_hint, local_labels
from parsl_poncho.build_logs import KEEP, prune_failed_logs, with_build_log
from parsl_poncho.errors import BuildError
from parsl_poncho.pip_sources import (
    HostPipConfig,
    PipSources,
    parse_pip_config_list,
    read_host_config,
    scrub,
    strip_credentials,
)
from parsl_poncho.spec import Spec

SPEC = Spec(conda=("python=3.11.7", "pip"), pip=("cloudpickle==3.1.3",))


def hermetic_environ(tmp_path: Path, **variables: str) -> dict[str, str]:
    """An environment whose pip reads only ``variables`` (no config file, no PIP_*/UV_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no config file at all
    env.update(variables)
    return env


def test_pip_config_list_sections_follow_pips_precedence() -> None:
    listing = "\n".join([
        "global.index-url='https://global.example/simple'",
        "install.index-url='https://install.example/simple'",
        "global.extra-index-url='file:///a/simple file:///b/simple'",
        ":env:.find-links='/opt/wheels'",
        "global.find-links='/ignored'",
        "global.trusted-host='a.example b.example'",
        "global.cert='/etc/ssl/certs/ca.crt'",
    ])
    config = parse_pip_config_list(listing)
    assert config == HostPipConfig(
        index_url="https://install.example/simple",  # install beats global
        extra_index_urls=("file:///a/simple", "file:///b/simple"),
        find_links=("/opt/wheels",),  # the environment beats files
        trusted_hosts=("a.example", "b.example"),
    )


def test_real_pip_config_file_with_multi_line_values_and_quotes(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://u:p'q@idx.example/simple\n"
                    "extra-index-url =\n    https://a.example/simple\n"
                    "    https://b.example/simple\n"
                    "find-links = file:/opt/w\n")
    environ = hermetic_environ(tmp_path, PIP_CONFIG_FILE=str(conf))
    config = read_host_config(sys.executable, environ)
    assert config.index_url == "https://u:p'q@idx.example/simple"
    assert config.extra_index_urls == ("https://a.example/simple", "https://b.example/simple")
    assert PipSources().resolve(config).find_links == ("file:/opt/w",)  # a URL, kept as is


def test_host_config_is_read_with_pip_and_uvs_variables(tmp_path: Path) -> None:
    environ = hermetic_environ(
        tmp_path, PIP_FIND_LINKS=str(tmp_path / "wheels"),
        PIP_EXTRA_INDEX_URL="https://user:s3cret@private.example/simple",
        UV_INDEX="torch=https://download.pytorch.org/whl/cpu", UV_INSECURE_HOST="plain.example")
    config = read_host_config(sys.executable, environ)
    assert config.find_links == (str(tmp_path / "wheels"),)
    assert config.extra_index_urls == ("https://user:s3cret@private.example/simple",
                                       "https://download.pytorch.org/whl/cpu")
    assert config.trusted_hosts == ("plain.example",)
    assert read_host_config(sys.executable, hermetic_environ(tmp_path)) == HostPipConfig()


def test_credentials_stay_out_of_the_spec_and_its_hash() -> None:
    host = HostPipConfig(extra_index_urls=("https://user:s3cret@private.example/simple",))
    resolved = PipSources().resolve(host)
    spec = resolved.apply_to(SPEC)
    assert spec.pip_options.extra_index_urls == ("https://private.example/simple",)
    assert "s3cret" not in spec.canonical_json() and "s3cret" not in repr(resolved)
    assert "s3cret" not in repr(spec.to_dict())
    assert resolved.credentials == {
        "https://private.example/simple": "https://user:s3cret@private.example/simple"}
    other = PipSources().resolve(HostPipConfig(
        extra_index_urls=("https://user:other@private.example/simple",)))
    assert other.apply_to(SPEC).hash() == spec.hash()  # a new password is not a new env


def test_configuration_changes_the_hash_and_hermetic_ignores_it(tmp_path: Path) -> None:
    wheels_a, wheels_b = tmp_path / "a", tmp_path / "b"
    hash_a = PipSources().resolve(HostPipConfig(find_links=(str(wheels_a),))).apply_to(SPEC)
    hash_b = PipSources().resolve(HostPipConfig(find_links=(str(wheels_b),))).apply_to(SPEC)
    assert hash_a.hash() != hash_b.hash()
    hermetic = PipSources.hermetic().resolve(HostPipConfig(find_links=(str(wheels_a),)))
    assert hermetic.apply_to(SPEC) == SPEC and hermetic.hermetic
    conda_only = Spec(conda=("python=3.11.7",))
    assert PipSources().resolve(HostPipConfig(find_links=("/w",))).apply_to(
        conda_only) is conda_only  # nothing installs with pip: nothing changes


def test_explicit_sources_come_before_the_hosts() -> None:
    sources = PipSources(index_url="https://mine.example/simple", find_links=("wheels",))
    resolved = sources.resolve(HostPipConfig(index_url="https://host.example/simple",
                                             find_links=("/opt/wheels",)))
    assert resolved.index_url == "https://mine.example/simple"
    assert resolved.find_links == (os.path.abspath("wheels"), "/opt/wheels")


def test_reprs_never_show_a_password() -> None:
    from parsl_poncho import PonchoExecutor

    sources = PipSources(extra_index_urls=("https://u:PSsecret@h2/simple",))
    executor = PonchoExecutor(pip_sources=sources.adding(
        "https://u:IDXsecret@h/simple", (), ["https://t:FLsecret@h3/links/"]))
    for text in (repr(sources), repr(executor)):
        assert "secret" not in text and "h2/simple" in text, text
    assert executor.pip_sources.index_url == "https://u:IDXsecret@h/simple"  # kept for builds


def test_indexes_and_find_links_stay_off_the_command_line(tmp_path: Path) -> None:
    from parsl_poncho.build import pip

    request = pip.PipRequest(prefix=tmp_path, requirements=["six"],
                             index_url="https://u:IDXsecret@h/simple",
                             extra_index_urls=["https://u:EXsecret@h2/simple"],
                             find_links=["https://t:FLsecret@h3/links/", "/opt/wheels"])
    for tool in ("pip", "uv"):
        cmd = pip.pip_command(tool, "/bin/uv", request, None)
        assert not [part for part in cmd if "secret" in part], cmd
    assert pip.index_env("uv", request)["UV_FIND_LINKS"] == (
        "https://t:FLsecret@h3/links/,/opt/wheels")  # uv splits on commas, pip on spaces
    assert pip.index_env("pip", request)["PIP_FIND_LINKS"] == (
        "https://t:FLsecret@h3/links/ /opt/wheels")


def test_strip_and_scrub_credentials() -> None:
    assert strip_credentials("https://u:p@h.example:8443/simple") == "https://h.example:8443/simple"
    assert strip_credentials("https://token@h.example/simple") == "https://h.example/simple"
    assert strip_credentials("/opt/wheels") == "/opt/wheels"
    credentials = {"https://h/simple": "https://user:pa55@h/simple"}
    scrubbed = scrub("GET https://user:pa55@h/simple pa55", credentials)
    assert scrubbed == "GET https://***@h/simple ***"


@pytest.mark.parametrize(("log", "cause"), [
    ("error: failed to write to file: No space left on device (os error 28)", "disk_full"),
    ("OSError: [Errno 28] No space left on device", "disk_full"),
    ("ERROR: Could not install packages due to an OSError: [Errno 13] Permission denied: '/x'",
     "permission"),
    ("error: HTTP status client error (401 Unauthorized) for url (https://h/simple/x/)",
     "permission"),
    ("WARNING: Retrying ... Failed to establish a new connection: [Errno 111] Connection "
     "refused", "network"),
    ("ERROR: No matching distribution found for torch==2.13.0+cpu", "not_found"),
    ("Downloading numpy (401 kB)", None),
    ("WARNING: Retrying (Retry(total=4)) after ReadTimeoutError: Read timed out.\n"
     "ERROR: No matching distribution found for torch==2.13.0+cpu", "not_found"),
    ("WARNING: HTTP error 403 while getting https://h/whl/cpu/nosuchpkg/\n"
     "ERROR: No matching distribution found for nosuchpkg", "not_found"),
    ("[Errno 130] interrupted; (os error 1228)", None),
    ("error: No space left on device (os error 28)\nno version of numpy found", "disk_full"),
])
def test_cause_of_a_tools_output(log: str, cause: str | None) -> None:
    assert cause_of(log) == cause


def test_local_labels_and_their_hint() -> None:
    assert local_labels(["torch==2.13.0+cpu", "numpy==2.1", "x==1.0+cu121; python_version>'3'"]
                        ) == {"torch==2.13.0+cpu": "cpu",
                              "x==1.0+cu121; python_version>'3'": "cu121"}
    hint = local_label_hint("torch==2.13.0+cu121", "cu121", hermetic=True)
    assert "https://download.pytorch.org/whl/cu121" in hint and "this build is" in hint
    other = local_label_hint("mylib==1.0+site", "site")
    assert "download.pytorch.org" not in other and "+site" in other


def test_build_error_gets_its_tail_and_a_kept_log(tmp_path: Path) -> None:
    log = "\n".join(f"line {i}" for i in range(100)) + "\nerror: No space left on device"
    exc = BuildError("pip: uv ran out of disk space", step="pip", log_tail=log[-300:], log=log)
    shown = with_build_log(exc, tmp_path, "ab" * 32)
    assert isinstance(shown, BuildError) and shown.step == "pip"
    text = str(shown)
    assert "last lines of the pip step's output" in text and "No space left on device" in text
    assert "line 10\n" not in text  # only the tail is in the message
    kept = Path(shown.log_path)
    assert kept.parent == tmp_path / "failed" and kept.read_text().count("line ") == 100
    assert with_build_log(shown, tmp_path, "ab" * 32) is shown  # never wrapped twice


def test_failed_logs_are_pruned(tmp_path: Path) -> None:
    for i in range(KEEP + 3):
        exc = BuildError("boom", step="pip", log_tail="x", log="x")
        with_build_log(exc, tmp_path, f"{i:016x}" + "0" * 48)
    assert len(list((tmp_path / "failed").glob("*.log"))) == KEEP
    assert prune_failed_logs(tmp_path, keep=0)
    assert list((tmp_path / "failed").glob("*.log")) == []
