"""`parsl-poncho cache ls | rm HASH... | prune --max-size SIZE | learnt | forget APP...`: inspect
and trim the env cache and what apps learnt at run time."""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from parsl_poncho.errors import StoreError

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def register(subparsers: Any) -> None:
    """Add the ``cache`` subcommand and its ``ls``/``rm``/``prune`` actions."""
    cache = subparsers.add_parser(
        "cache",
        help="list, remove or prune cached environment tarballs",
        description="Inspect and trim the environment cache ($PARSL_PONCHO_CACHE or "
        "~/.cache/parsl-poncho). Entries in use by a running process are never removed.",
    )
    cache.add_argument(
        "--cache-dir", type=Path, help="default: $PARSL_PONCHO_CACHE or ~/.cache/parsl-poncho"
    )
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    cache.set_defaults(func=lambda args: _usage(cache))

    ls = actions.add_parser("ls", help="list entries, least recently used first")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    ls.set_defaults(func=cmd_ls)

    rm = actions.add_parser("rm", help="remove entries by hash (a unique prefix is enough)")
    rm.add_argument("hashes", nargs="+", metavar="HASH")
    rm.set_defaults(func=cmd_rm)

    prune = actions.add_parser(
        "prune", help="evict least recently used entries until the cache fits SIZE"
    )
    prune.add_argument(
        "--max-size",
        required=True,
        type=parse_size,
        metavar="SIZE",
        help="bytes, or with a suffix K, M, G, T (powers of 1024), e.g. 20G",
    )
    prune.set_defaults(func=cmd_prune)

    learnt = actions.add_parser(
        "learnt", help="list the modules apps learnt at run time (added to their envs)")
    learnt.add_argument("--json", action="store_true", help="print a JSON list")
    learnt.set_defaults(func=cmd_learnt)

    forget = actions.add_parser(
        "forget", help="forget what apps learnt (by app name or key prefix); their next "
        "run builds from the analysis alone")
    forget.add_argument("apps", nargs="+", metavar="APP")
    forget.set_defaults(func=cmd_forget)


def parse_size(text: str) -> int:
    """``"20G"`` -> 21474836480; accepts K/M/G/T with optional ``B``/``iB`` (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; use bytes or a number with K, M, G or T (e.g. 500M, 20G)"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_size(size: float) -> str:
    """Bytes as a short human string (``1.5G``)."""
    for unit in ("B", "K", "M", "G"):
        if size < 1024:
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}T"


def _store(args: argparse.Namespace) -> Any:
    from parsl_poncho.store import EnvStore

    return EnvStore(args.cache_dir)


def _layers(store: Any) -> Any:
    from parsl_poncho.layers import CodeLayers

    return CodeLayers(store.cache_dir)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def cmd_ls(args: argparse.Namespace) -> int:
    """Print the entries: envs (base layers) and code layers (hash, size, last use, in use,
    package counts or the local code they hold)."""
    store = _store(args)
    try:
        layers = _layers(store)
        rows = [_row(store, env) for env in store.entries()]
        rows += [_code_row(layers, layer) for layer in layers.entries()]
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'HASH':<16}  {'SIZE':>8}  {'LAST USED':<19}  {'IN USE':<6}  PACKAGES")
    for row in rows:
        used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["last_used"]))
        print(
            f"{row['hash'][:16]}  {format_size(row['size']):>8}  {used:<19}  "
            f"{'yes' if row['in_use'] else 'no':<6}  {row['packages']}"
        )
    total = sum(r["disk_size"] for r in rows)
    entries = f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}"
    print(f"{entries}, {format_size(total)} in {store.cache_dir}")
    return 0


def _row(store: Any, env: Any) -> dict[str, Any]:
    lock = env.manifest.get("lock") or {}
    return {
        "hash": env.hash,
        "tarball": str(env.tarball),
        "sha256": env.sha256,
        "size": env.size,
        "disk_size": store.entry_size(env.hash),
        "last_used": store.last_used(env.hash),
        "in_use": store.in_use(env.hash),
        "packages": f"{len(lock.get('conda') or [])} conda, {len(lock.get('pip') or [])} pip",
        "kind": "env",
    }


def _code_row(layers: Any, layer: Any) -> dict[str, Any]:
    return {
        "hash": layer.key,
        "tarball": str(layer.tarball),
        "sha256": layer.sha256,
        "size": layer.size,
        "disk_size": layer.size,
        "last_used": layers.last_used(layer.key),
        "in_use": layers.in_use(layer.key),
        "packages": "code layer: " + ", ".join(layer.names),
        "kind": "code",
    }


def cmd_rm(args: argparse.Namespace) -> int:
    """Remove the named entries (envs or code layers); exit 1 if one is unknown, ambiguous or
    in use."""
    store = _store(args)
    status = 0
    try:
        layers = _layers(store)
        codes = {layer.key for layer in layers.entries()}
        known = [env.hash for env in store.entries()] + sorted(codes)
        for prefix in args.hashes:
            matches = [h for h in known if h.startswith(prefix.lower())]
            if len(matches) != 1:
                what = "matches no entry" if not matches else f"matches {len(matches)} entries"
                print(f"parsl-poncho cache rm: {prefix!r} {what}; see `parsl-poncho cache ls`")
                status = 1
                continue
            try:
                (layers if matches[0] in codes else store).remove(matches[0])
                print(f"removed {matches[0]}")
            except StoreError as exc:
                print(f"parsl-poncho cache rm: {exc}")
                status = 1
    finally:
        store.close()
    return status


def cmd_prune(args: argparse.Namespace) -> int:
    """Evict least recently used entries (not in use) until the cache fits --max-size."""
    store = _store(args)
    try:
        layers = _layers(store)
        before = store.total_size() + sum(c.size for c in layers.entries())
        evicted = store.prune(args.max_size)
        evicted += layers.prune(max(0, args.max_size - store.total_size()))
        after = store.total_size() + sum(c.size for c in layers.entries())
    finally:
        store.close()
    for env_hash in evicted:
        print(f"evicted {env_hash}")
    print(
        f"{len(evicted)} evicted; {format_size(before)} -> {format_size(after)} "
        f"(limit {format_size(args.max_size)})"
    )
    if after > args.max_size:
        print("some entries are in use and were kept; prune again when they are released")
    return 0


def _cache_dir(args: argparse.Namespace) -> Path:
    from parsl_poncho.paths import default_cache_dir

    return Path(args.cache_dir or default_cache_dir()).expanduser()


def cmd_learnt(args: argparse.Namespace) -> int:
    """Print each app's learnt module -> distribution additions."""
    from parsl_poncho.learning import list_learnt

    records = list_learnt(_cache_dir(args))
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    for record in records:
        added = ", ".join(f"{m} ({d})" for m, d in sorted(record.get("modules", {}).items()))
        print(f"{record.get('app', '?')}  [{record['key']}]  {added}")
    print(f"{len(records)} app{'' if len(records) == 1 else 's'} learnt modules")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Remove learnt records; exit 1 if a selector matches none."""
    from parsl_poncho.errors import PonchoError
    from parsl_poncho.learning import forget_learnt

    try:
        removed = forget_learnt(_cache_dir(args), args.apps)
    except PonchoError as exc:
        print(f"parsl-poncho cache forget: {exc}")
        return 1
    for key in removed:
        print(f"forgot {key}")
    return 0
