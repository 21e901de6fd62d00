"""Shared fixtures."""

# -- builder fixtures (owner: builder engineer) -----------------------------------------------
import os as _os
from pathlib import Path as _Path

import pytest as _pytest


def _stable_dir(request: _pytest.FixtureRequest, name: str) -> _Path:
    """A directory kept between runs (pytest cache), or a session temp dir without the cache."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return _Path(cache.mkdir(name))
    return request.getfixturevalue("tmp_path_factory").mktemp(name)


@_pytest.fixture(scope="session", autouse=True)
def _worker_cache_in_session_tmp(tmp_path_factory: _pytest.TempPathFactory):
    """Point local workers' node cache into this session's temp dir, removed at the end.

    Workers inherit the test's environment; without this, every env a test unpacks would
    pile up in the default /tmp/parsl-poncho-<uid> across runs (several GB each).
    """
    import shutil

    if "PARSL_PONCHO_WORKER_CACHE" in _os.environ:
        yield
        return
    cache = tmp_path_factory.mktemp("worker-cache")
    _os.environ["PARSL_PONCHO_WORKER_CACHE"] = str(cache)
    try:
        yield
    finally:
        del _os.environ["PARSL_PONCHO_WORKER_CACHE"]
        shutil.rmtree(cache, ignore_errors=True)


@_pytest.fixture(scope="session")
def seeded_channel(request: _pytest.FixtureRequest) -> _Path:
    """A local conda channel with this CPython and pip, seeded once (cheap when current).

    Lives in $PARSL_PONCHO_TEST_CHANNEL, else in the pytest cache, so runs reuse it.
    """
    from parsl_poncho.build import seed_channel

    explicit = _os.environ.get("PARSL_PONCHO_TEST_CHANNEL")
    dest = _Path(explicit) if explicit else _stable_dir(request, "parsl-poncho-channel")
    return seed_channel(dest)


@_pytest.fixture(scope="session")
def build_cache_dir(request: _pytest.FixtureRequest) -> _Path:
    """Rattler package/repodata and uv caches shared by every test build (warm after the first)."""
    explicit = _os.environ.get("PARSL_PONCHO_TEST_BUILD_CACHE")
    if explicit:
        return _Path(explicit)
    return _stable_dir(request, "parsl-poncho-build-cache")


@_pytest.fixture()
def build_options(seeded_channel: _Path, build_cache_dir: _Path, tmp_path: _Path):
    """BuildOptions that build offline from the seeded channel (spec channels replaced)."""
    from parsl_poncho.build import BuildOptions

    return BuildOptions(
        channels=(str(seeded_channel),),
        cache_dir=build_cache_dir,
        workdir=tmp_path / "build-work",
    )


# -- shared: a local HTTP server ------------------------------------------------------------
import functools as _functools  # noqa: E402
import http.server as _http_server  # noqa: E402
import threading as _threading  # noqa: E402


class _QuietHandler(_http_server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@_pytest.fixture()
def http_root(tmp_path: _Path):
    """(directory, base URL) of an HTTP server on 127.0.0.1 serving that directory."""
    root = tmp_path / "www"
    root.mkdir()
    handler = _functools.partial(_QuietHandler, directory=str(root))
    server = _http_server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    _threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
