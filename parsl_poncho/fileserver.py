"""A small HTTP server for published environments: ``Url(serve=True)`` on the submit host.

It serves one directory read-only (GET and HEAD, no listings) from a thread of the submitting
process, so the bytes leave the Work Queue manager's single thread; a squid or any HTTP cache
can sit in front of it. It counts the GETs of each file (tests and benchmarks read
:attr:`FileServer.gets`), and can cap its total send rate to stand in for a slow origin.

Example::

    server = FileServer("/data/published", host="127.0.0.1")
    server.start()               # server.url == "http://127.0.0.1:<port>"
    ...
    server.stop()
"""

from __future__ import annotations

import collections
import http.server
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from parsl_poncho.errors import DeliveryError

logger = logging.getLogger(__name__)

_CHUNK = 256 * 1024


class _RateLimit:
    """A token bucket shared by every connection: at most ``rate`` bytes/s in total."""

    def __init__(self, rate: float) -> None:
        self.rate, self.lock, self.next_free = rate, threading.Lock(), time.monotonic()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
        if start > now:
            time.sleep(start - now)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        logger.debug("file server: " + format, *args)

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def do_HEAD(self) -> None:  # noqa: N802 - the base class's naming
        self._send(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._send(body=True)

    def _send(self, body: bool) -> None:
        name = self.path.split("?", 1)[0].lstrip("/")
        path = self.server.root / name
        if "/" in name or name.startswith(".") or not path.is_file():
            self.send_error(404, "not published")
            return
        if body:
            self.server.count(name)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below; the file may vanish first
        except OSError:
            self.send_error(404, "not published")
            return
        with f:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            self.end_headers()
            if body:
                self._copy(f)

    def _copy(self, f: Any) -> None:
        limit = self.server.limit
        if limit is None:
            shutil.copyfileobj(f, self.wfile, _CHUNK)
            return
        while chunk := f.read(_CHUNK):
            limit.take(len(chunk))
            self.wfile.write(chunk)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restarted server gets its port back at once

    def __init__(self, address: tuple[str, int], root: Path, limit: _RateLimit | None,
                 counts: collections.Counter) -> None:
        super().__init__(address, _Handler)
        self.root, self.limit, self.counts = root, limit, counts
        self.counts_lock = threading.Lock()
        self.open: set[Any] = set()

    def count(self, name: str) -> None:
        with self.counts_lock:
            self.counts[name] += 1

    def track(self, connection: Any, is_open: bool) -> None:
        with self.counts_lock:
            (self.open.add if is_open else self.open.discard)(connection)

    def drop_connections(self) -> None:
        """Cut every transfer in flight (as a dying server would)."""
        with self.counts_lock:
            connections = list(self.open)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class FileServer:
    """Serve the files of ``directory`` over HTTP from a thread.

    :param directory: the published files (flat: names without ``/``).
    :param host: the address to listen on ("" for every interface).
    :param port: the port (0: a free one, kept across :meth:`stop` / :meth:`start`).
    :param url_host: the host name workers use in URLs (default: ``host``, else this host's name).
    :param rate: bytes/s the server sends at most, over all connections (None: no cap).
    """

    def __init__(self, directory: str | os.PathLike, host: str = "", port: int = 0,
                 url_host: str | None = None, rate: float | None = None) -> None:
        self.directory = Path(directory)
        self.host, self.port = host, port
        self.url_host = url_host or host
        self.limit = _RateLimit(rate) if rate else None
        #: GETs per file name since the server was made (also across restarts)
        self.gets: collections.Counter[str] = collections.Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL of the served directory (after :meth:`start`)."""
        if not self.url_host:
            self.url_host = socket.gethostname()
        return f"http://{self.url_host}:{self.port}"

    def start(self) -> str:
        """Listen and serve from a daemon thread; returns :attr:`url`.

        :raises DeliveryError: the address cannot be bound.
        """
        if self._server is not None:
            return self.url
        try:
            self._server = _Server((self.host, self.port), self.directory, self.limit, self.gets)
        except OSError as exc:
            raise DeliveryError(
                f"cannot serve environments on {self.host or '*'}:{self.port}: {exc}; pick "
                "another port in Url(base=...) or serve publish_dir with a web server of your "
                "own (Url(base, publish_dir))") from exc
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=f"poncho-file-server-{self.port}")
        self._thread.start()
        logger.info("serving %s at %s", self.directory, self.url)
        return self.url

    def stop(self) -> None:
        """Stop serving and close the port (and every open connection)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=10)
