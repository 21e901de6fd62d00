"""Run py-rattler (solve+install, or channel indexing) in a child process that skips finalization.

py-rattler's worker threads can crash CPython while it finalizes (pyo3 "PyGILState_Release ...
finalizing", SIGSEGV/SIGABRT in ~5-20% of exits here). Running rattler in a short-lived child
that leaves with ``os._exit`` keeps those crashes out of the caller's process.

Protocol: ``python -m parsl_poncho.build._rattler_child RESULT.json`` reads a JSON request on
stdin and writes a JSON result to RESULT.json:
  {"op": "create", "prefix", "specs", "channels", "platform", "cache_dir"}
      -> {"ok": true, "phases": {"solve": s, "install": s}, "packages": n}
  {"op": "index", "channel"} -> {"ok": true}
  failure -> {"ok": false, "where": "solve"|"install"|"index", "kind": ExcName, "message": str}
Exit status 0 when RESULT.json was written, 3 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from typing import Any


def _create(req: dict[str, Any]) -> dict[str, Any]:
    from rattler import Channel, Gateway, VirtualPackage, install, solve

    phases = {}
    start = time.perf_counter()
    try:
        gateway = Gateway(cache_dir=os.path.join(req["cache_dir"], "repodata"),
                          show_progress=False)
        records = asyncio.run(solve(
            sources=[Channel(url) for url in req["channels"]],
            specs=req["specs"],
            gateway=gateway,
            platforms=[req["platform"], "noarch"],
            virtual_packages=VirtualPackage.detect(),
        ))
    except Exception as exc:  # reported to the parent, which raises BuildError
        return {"ok": False, "where": "solve", "kind": type(exc).__name__, "message": str(exc)}
    phases["solve"] = time.perf_counter() - start
    start = time.perf_counter()
    try:
        asyncio.run(install(
            records,
            target_prefix=req["prefix"],
            cache_dir=os.path.join(req["cache_dir"], "pkgs"),
            show_progress=False,
            execute_link_scripts=False,
        ))
    except Exception as exc:
        return {"ok": False, "where": "install", "kind": type(exc).__name__, "message": str(exc)}
    phases["install"] = time.perf_counter() - start
    return {"ok": True, "phases": phases, "packages": len(records)}


def _index(req: dict[str, Any]) -> dict[str, Any]:
    from rattler.index import index_fs

    try:
        asyncio.run(index_fs(req["channel"], write_zst=False, write_shards=False, force=True))
    except Exception as exc:
        return {"ok": False, "where": "index", "kind": type(exc).__name__, "message": str(exc)}
    shutil.rmtree(os.path.join(req["channel"], ".tmp"), ignore_errors=True)
    return {"ok": True}


def main() -> None:
    """Handle one request; always leave through os._exit (no interpreter finalization)."""
    code = 3
    try:
        req = json.load(sys.stdin)
        result = _create(req) if req["op"] == "create" else _index(req)
        with open(sys.argv[1], "w") as out:
            json.dump(result, out)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported through stderr and the exit code
        print(f"rattler child failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
