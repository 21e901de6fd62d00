"""`poncho_package_analyze`: write the pinned environment spec a Python script needs.

Compatible with cctools' command (``SOURCE... OUT``, ``--toplevel``, ``--function NAME``,
``--pkg-mapping IMPORT=NAME``, ``--extra-pkg PKG``; ``-`` for stdin/stdout). The script is read,
never run: its bytecode is walked (imports, literal ``importlib.import_module("x")`` and
``__import__("x")`` calls, and for ``--function`` the module-level names the function reads,
followed through the script's other functions; a ``--function`` the script imports from a module
needs that module). Installed modules it imports are read too, without importing them: the
distributions their top-level code imports, declared by their owner or not, are added. Local
modules beside the script are shipped as local code. The output is a spec for
``poncho_package_create``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from pathlib import Path
from typing import Any

from parsl_poncho.analyze import Analyzer
from parsl_poncho.analyze.bytecode import code_info, find_code, scan_code, static_bindings
from parsl_poncho.analyze.modules import ModuleFinder, ModuleUse, static_function_uses
from parsl_poncho.errors import AnalysisError, AnalysisOptionError, PonchoError

HELP = """Determine the environment required by Python code and write it as a PONCHO spec:
every module it imports is mapped to the installed pip or conda distribution that provides it,
pinned to the installed version (with its dependencies unless --no-transitive), plus python, pip
and cloudpickle. Modules that no distribution provides but that exist as files (beside the script,
or editable installs) are shipped as local code. A module that cannot be resolved is an error:
map it with --pkg-mapping IMPORT=DISTRIBUTION, or leave it out with --ignore MODULE."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (cctools' options plus ours)."""
    parser = argparse.ArgumentParser(prog="poncho_package_analyze", description=HELP)
    parser.add_argument("source", nargs="*",
                        help="Analyze the given Python source code, or - for stdin.")
    parser.add_argument("out", help="Path to write the JSON description, or - for stdout.")
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("--toplevel", action="store_true",
                         help="Only include imports at the top level of the script.")
    actions.add_argument("--function", metavar="NAME",
                         help="Only include what the given function needs (its imports and the "
                              "imports and helper functions of the script it uses).")
    parser.add_argument("--pkg-mapping", action="append", metavar="IMPORT=NAME", default=[],
                        help="The module imported as IMPORT is provided by the pip/conda "
                             "package NAME (or a requirement, NAME==VERSION).")
    parser.add_argument("--extra-pkg", action="append", metavar="PKG", default=[],
                        help="Also include the pip/conda package PKG, even if it does not "
                             "appear in the sources.")
    parser.add_argument("--ignore", action="append", metavar="MODULE", default=[],
                        help="Never include MODULE (nor its submodules).")
    parser.add_argument("--no-transitive", action="store_true",
                        help="Pin only the distributions imported, not their dependencies.")
    parser.add_argument("--channel", action="append", metavar="CHANNEL", default=None,
                        help="Conda channel of the spec (repeatable; default conda-forge).")
    parser.add_argument("--conda-prefix", metavar="DIR", default=None,
                        help="Conda prefix whose conda-meta records to use (default: "
                             "sys.prefix).")
    return parser


def _mapping(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise AnalysisOptionError(f"--pkg-mapping {item!r} is not IMPORT=NAME, e.g. "
                                      "--pkg-mapping cv2=opencv-python")
        out[key.strip()] = value.strip()
    return out


def analyze_sources(sources: list[str], args: argparse.Namespace, analyzer: Analyzer
                    ) -> dict[str, Any]:
    """The spec (as a dict) for ``sources`` with the command-line options in ``args``."""
    uses: dict[str, ModuleUse] = {}
    for source in sources:
        if source != "-":
            folder = os.path.dirname(os.path.abspath(source))
            if folder not in sys.path:
                sys.path.insert(0, folder)  # as when the script runs: its folder is importable
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
            code = compile(text, "<stdin>" if source == "-" else source, "exec",
                           dont_inherit=True)
        except (OSError, SyntaxError, ValueError, UnicodeDecodeError) as exc:
            raise AnalysisError(f"Cannot read Python source {source!r}: {exc}") from exc
        name = "<stdin>" if source == "-" else source
        if args.function:
            found = _function_uses(code, args.function, name)
        else:
            found = _code_uses(code, _toplevel_import_lines(text) if args.toplevel else None)
        for module, use in found.items():
            uses.setdefault(module, use)
    label = f"{args.function} in {', '.join(sources)}" if args.function else ", ".join(sources)
    requirements = analyzer.resolve(uses, label)
    return analyzer.pin(requirements).to_dict()


def _function_uses(code: Any, function: str, name: str) -> dict[str, ModuleUse]:
    """What ``function`` needs: defined in the script, or imported by it from a module."""
    if find_code(code, function):
        return static_function_uses(code, function)
    module = static_bindings(code).get(function)
    if isinstance(module, str):  # ``from MODULE import function``: imported by reference
        return {module: ModuleUse(module, f"{function} (imported from {module} in {name})")}
    raise AnalysisError(f"No function or class {function!r} in {name}, nor imported by it "
                        "from a module; check --function")


def _toplevel_import_lines(text: str) -> set[int]:
    """Lines of the statements in the module body that import (as cctools' --toplevel reads
    it): import statements, and simple statements that may call ``import_module("x")``."""
    lines: set[int] = set()
    for node in ast.parse(text).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            lines.add(node.lineno)
        elif isinstance(node, (ast.Expr, ast.Assign, ast.AnnAssign)):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def _code_uses(code: Any, lines: set[int] | None) -> dict[str, ModuleUse]:
    """Imports of a script's code: all of them, or those on ``lines`` (module-body imports)."""
    finder = ModuleFinder()
    imports: list[Any] = []
    if lines is not None:
        scan_code(code, imports, [])
        imports = [imp for imp in imports if imp.line in lines]
    else:
        imports = list(code_info(code).imports)
    for imp in imports:
        finder._import(imp, None, f"{code.co_filename}:{imp.line}", False)
    return finder.modules


def main(argv: list[str] | None = None) -> int:
    """Run `poncho_package_analyze` with ``argv`` (default: sys.argv[1:]); returns the exit code."""
    args = build_parser().parse_args(argv)
    sources = args.source or ["-"]
    try:
        analyzer = Analyzer(
            pkg_mapping=_mapping(args.pkg_mapping),
            extra_pkgs=args.extra_pkg,
            ignore=args.ignore,
            pin_transitive=not args.no_transitive,
            channels=args.channel,
            conda_prefix=args.conda_prefix,
        )
        spec = analyze_sources(sources, args, analyzer)
    except PonchoError as exc:
        print(f"poncho_package_analyze: error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(spec, indent=4, sort_keys=True) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        tmp = f"{args.out}.tmp{os.getpid()}"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
