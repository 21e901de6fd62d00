"""Where the pip part of an env installs from: the user's pip (and uv) configuration by default.

A package installed on the submit host came from somewhere: PyPI, PyTorch's own index (the
``+cpu`` / ``+cu121`` builds), a private index, a wheel directory. Builds look in the same
places, read from the host's configuration the way the user's own ``pip install`` reads it:

- pip: ``python -m pip config list`` (pip's own merge of its config files and ``PIP_*``
  variables; a section ``install`` overrides ``global``, variables override files);
- uv: ``UV_DEFAULT_INDEX`` / ``UV_INDEX_URL``, ``UV_INDEX`` / ``UV_EXTRA_INDEX_URL``,
  ``UV_FIND_LINKS`` and ``UV_INSECURE_HOST``.

What is found goes into each spec's ``pip_options`` (so the env hash covers it and a change
rebuilds), with credentials taken out of every URL: ``https://user:secret@host/simple`` becomes
``https://host/simple`` in the spec, the cache and the logs, and the build gets the full URL back
from :attr:`ResolvedSources.credentials`, which lives only in this process's memory.

``PipSources(host_config=False)`` (``PipSources.hermetic()``) ignores the host's configuration:
only the spec's own options and the ones given explicitly count.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from parsl_poncho.spec import PipOptions, Spec

logger = logging.getLogger(__name__)

#: pip config keys we carry, and whether each holds a list.
_PIP_KEYS = {"index-url": False, "extra-index-url": True, "find-links": True,
             "trusted-host": True}
#: Sections of ``pip config list`` by increasing precedence for ``pip install``.
_SECTIONS = ("global", "install", ":env:")
# pip prints each value with %r: quoted, a multi-line pip.conf value with \n escapes
_LINE = re.compile(r"^(?P<section>[^.\s]+|:env:)\.(?P<key>[a-z-]+)=(?P<value>.*)$")


@dataclass(frozen=True)
class PipSources:
    """Where the pip part of every env installs from (an option of PonchoExecutor and the CLI).

    :param host_config: read the submit host's pip and uv configuration (the default: builds
        then find packages where ``pip install`` found them). False: a hermetic build.
    :param index_url: the primary index (replaces PyPI), before the configuration's.
    :param extra_index_urls: more indexes, searched with the primary one.
    :param find_links: wheel directories or pages of links.
    :param trusted_hosts: hosts whose plain-HTTP or bad-certificate index is accepted.

    >>> PonchoExecutor(pip_sources=PipSources.hermetic())                 # doctest: +SKIP
    >>> PonchoExecutor(pip_sources=PipSources(
    ...     extra_index_urls=("https://download.pytorch.org/whl/cpu",)))  # doctest: +SKIP
    """

    host_config: bool = True
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("extra_index_urls", "find_links", "trusted_hosts"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))

    def __repr__(self) -> str:  # configs get printed and logged: never show a password
        shown = [f"host_config={self.host_config!r}"]
        if self.index_url:
            shown.append(f"index_url={strip_credentials(self.index_url)!r}")
        for name in ("extra_index_urls", "find_links"):
            if getattr(self, name):
                urls = tuple(strip_credentials(u) for u in getattr(self, name))
                shown.append(f"{name}={urls!r}")
        if self.trusted_hosts:
            shown.append(f"trusted_hosts={self.trusted_hosts!r}")
        return f"PipSources({', '.join(shown)})"

    def adding(self, index_url: str | None = None, extra_index_urls: Sequence[str] = (),
               find_links: Sequence[str] = ()) -> PipSources:
        """These sources with more indexes (an index URL here wins over ``index_url``)."""
        return replace(self, index_url=self.index_url or index_url,
                       extra_index_urls=(*self.extra_index_urls, *extra_index_urls),
                       find_links=(*self.find_links, *find_links))

    @classmethod
    def hermetic(cls, **explicit: object) -> PipSources:
        """Sources that ignore the host's pip and uv configuration."""
        return cls(host_config=False, **explicit)  # type: ignore[arg-type]

    def resolve(self, host: HostPipConfig | None = None) -> ResolvedSources:
        """These sources plus (unless hermetic) the host's configuration, credentials split off.

        :param host: the host configuration (default: read now with :func:`read_host_config`).
        """
        if self.host_config and host is None:
            host = read_host_config()
        merged = [HostPipConfig(self.index_url, self.extra_index_urls, self.find_links,
                                self.trusted_hosts)]
        if self.host_config and host is not None:
            merged.append(host)
        # local find-links as the user means them: the build runs elsewhere
        merged = [replace(c, find_links=tuple(_absolute_link(u) for u in c.find_links))
                  for c in merged]
        return ResolvedSources.from_configs(merged, hermetic=not self.host_config)


@dataclass(frozen=True)
class HostPipConfig:
    """Index options as one configuration states them (URLs may still carry credentials)."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResolvedSources:
    """Index options without credentials (for specs), and the credentials kept aside.

    :param credentials: URL without credentials -> the URL as configured. Never persisted,
        never logged (excluded from repr). Shared by everything that holds these sources (the
        executor's spec additions and its builds); :meth:`apply_to` adds the credentials of
        specs' own URLs to it.
    :param hermetic: the host configuration was ignored (error messages say so).
    """

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    credentials: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    hermetic: bool = False

    @classmethod
    def from_configs(cls, configs: Sequence[HostPipConfig], *, hermetic: bool = False
                     ) -> ResolvedSources:
        """Merge ``configs`` in order: the first primary index wins, lists are joined."""
        credentials: dict[str, str] = {}

        def clean(urls: Iterable[str]) -> tuple[str, ...]:
            out: list[str] = []
            for url in urls:
                bare = strip_credentials(url)
                if bare != url:
                    credentials[bare] = url
                if bare not in out:
                    out.append(bare)
            return tuple(out)

        index = next((c.index_url for c in configs if c.index_url), None)
        return cls(
            index_url=clean([index])[0] if index else None,
            extra_index_urls=clean(u for c in configs for u in c.extra_index_urls),
            find_links=clean(u for c in configs for u in c.find_links),
            trusted_hosts=tuple(dict.fromkeys(h for c in configs for h in c.trusted_hosts)),
            credentials=credentials,
            hermetic=hermetic,
        )

    def apply_to(self, spec: Spec) -> Spec:
        """``spec`` with these sources added to its pip options (its own come first).

        A spec with no pip requirements is returned as it is: where pip would look does not
        change an env that installs nothing with pip, so it must not change its hash either.
        Credentials in the spec's own URLs are split off into :attr:`credentials` too.
        """
        if not spec.pip:
            return spec
        own = spec.pip_options
        mine = HostPipConfig(own.index_url, own.extra_index_urls, own.find_links,
                             own.trusted_hosts)
        theirs = HostPipConfig(self.index_url, self.extra_index_urls, self.find_links,
                               self.trusted_hosts)
        merged = ResolvedSources.from_configs([mine, theirs])
        self.credentials.update(merged.credentials)
        return replace(spec, pip_options=merged.pip_options())

    def pip_options(self) -> PipOptions:
        """These sources as a spec's :class:`~parsl_poncho.spec.PipOptions`."""
        from parsl_poncho.spec import PipOptions

        return PipOptions(self.index_url, self.extra_index_urls, self.find_links,
                          self.trusted_hosts)


def strip_credentials(url: str) -> str:
    """``url`` without ``user:password@`` (or a token) in its network location."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.netloc or "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def with_credentials(url: str, credentials: Mapping[str, str]) -> str:
    """The configured URL (with its credentials) for a URL from a spec."""
    return credentials.get(url, url)


def scrub(text: str, credentials: Mapping[str, str]) -> str:
    """``text`` with every secret of ``credentials`` replaced by ``***``."""
    for full in credentials.values():
        userinfo = urlsplit(full).netloc.rpartition("@")[0]
        for secret in sorted({userinfo, userinfo.partition(":")[2]} - {""}, key=len,
                             reverse=True):  # user:password first, then the password alone
            text = text.replace(secret, "***")
    return text


def read_host_config(python: str | None = None,
                     environ: Mapping[str, str] | None = None) -> HostPipConfig:
    """The index options ``pip install`` (and ``uv pip install``) would use on this host.

    pip's part comes from ``pip config list`` run with ``python`` (default: this interpreter),
    so pip's own rules pick the files; uv's from its environment variables. The two are
    joined (pip's primary index first).
    """
    environ = os.environ if environ is None else environ
    pip = _pip_config(python or sys.executable, environ)
    uv = _uv_config(environ)
    return HostPipConfig(
        index_url=pip.index_url or uv.index_url,
        extra_index_urls=tuple(dict.fromkeys((*pip.extra_index_urls, *uv.extra_index_urls))),
        find_links=tuple(dict.fromkeys((*pip.find_links, *uv.find_links))),
        trusted_hosts=tuple(dict.fromkeys((*pip.trusted_hosts, *uv.trusted_hosts))),
    )


def parse_pip_config_list(output: str) -> HostPipConfig:
    """The index options from ``pip config list`` output (``section.key='value'`` lines)."""
    found: dict[str, dict[str, str]] = {}
    for line in output.splitlines():
        match = _LINE.match(line.strip())
        if match and match["key"] in _PIP_KEYS and match["section"] in _SECTIONS:
            try:
                value = ast.literal_eval(match["value"])
            except (ValueError, SyntaxError):
                continue
            found.setdefault(match["key"], {})[match["section"]] = str(value)
    values = {key: next((by[s] for s in reversed(_SECTIONS) if s in by), None)
              for key, by in found.items()}

    def words(key: str) -> tuple[str, ...]:
        return tuple((values.get(key) or "").split())  # as pip splits list options

    index = (values.get("index-url") or "").strip()
    return HostPipConfig(index_url=index or None,
                         extra_index_urls=words("extra-index-url"),
                         find_links=words("find-links"), trusted_hosts=words("trusted-host"))


def _pip_config(python: str, environ: Mapping[str, str]) -> HostPipConfig:
    try:
        proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True,
                              text=True, timeout=60, env=dict(environ), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.info("could not read pip's configuration (%s): builds use none of it", exc)
        return HostPipConfig()
    if proc.returncode != 0:
        logger.warning("`%s -m pip config list` failed (%s): builds use none of pip's "
                       "configuration; install pip there, or give PipSources(...) explicitly",
                       python, proc.stderr.strip()[-300:])
        return HostPipConfig()
    return parse_pip_config_list(proc.stdout)


def _uv_config(environ: Mapping[str, str]) -> HostPipConfig:
    def words(*names: str) -> tuple[str, ...]:
        out: list[str] = []
        for name in names:
            for word in re.split(r"[\s,]+", environ.get(name, "").strip()):
                if word:
                    out.append(word.partition("=")[2] if _NAMED_INDEX.match(word) else word)
        return tuple(out)

    primary = words("UV_DEFAULT_INDEX", "UV_INDEX_URL")
    return HostPipConfig(index_url=primary[0] if primary else None,
                         extra_index_urls=words("UV_INDEX", "UV_EXTRA_INDEX_URL"),
                         find_links=words("UV_FIND_LINKS"), trusted_hosts=words("UV_INSECURE_HOST"))


#: uv's ``name=url`` form of an index (UV_INDEX="pytorch=https://...").
_NAMED_INDEX = re.compile(r"^[A-Za-z0-9_.-]+=[a-z][a-z0-9+.-]*://")


def _absolute_link(link: str) -> str:
    """A local find-links path made absolute (the build does not run in the user's cwd)."""
    if urlsplit(link).scheme:  # https://..., file:/..., file:///...
        return link
    return os.path.abspath(os.path.expanduser(link))


def redacted(urls: Sequence[str]) -> list[str]:
    """``urls`` without credentials (for attributes that get printed)."""
    return [strip_credentials(u) for u in urls]
