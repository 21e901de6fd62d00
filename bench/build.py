"""Benchmark the builder on one realistic spec: cold and warm build per phase, pack vs tar czf.

Usage: python bench/build.py [--repeat N] [--pip REQ ...] [--channel DIR] [--no-torch]

- cold: empty rattler/uv caches (fresh cache dir), channel already seeded (seeding is timed
  separately, into a fresh directory, unless --skip-seed).
- warm: the same spec again with the caches the cold build filled.
- pack: conda-pack of one env directory (what build_env does) against `tar czf` of the same
  directory (GNU tar + gzip -6, the floor for a tar.gz) and `tar -c | gzip -4` (same level as
  conda-pack's default); median of N runs each, interleaved, in the same process run.
- torch: what a first run with a big framework costs: an env with PyTorch's CPU build
  (``--torch-req``, default torch==2.13.0+cpu) from where this host's pip configuration finds
  it, cold caches: solve, install, pip, pack and unpack (tar xzf + conda-unpack) seconds, the
  tarball and unpacked sizes, and the rates of gzip -4 (pack) and gunzip (unpack) per MB of env.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parsl_poncho.build import BuildOptions, build_env, seed_channel  # noqa: E402
from parsl_poncho.build.pack import pack_env  # noqa: E402
from parsl_poncho.pip_sources import PipSources  # noqa: E402
from parsl_poncho.spec import Spec  # noqa: E402

PHASES = ("solve", "install", "pip", "data", "code", "pack")
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"


def realistic_spec(pip: list[str]) -> Spec:
    """What the analyzer produces for a small numeric Parsl app."""
    return Spec(conda=(f"python={PYVER}", "pip"), pip=tuple(pip))


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - start, value


def median_of(n: int, fn) -> float:
    return statistics.median(timed(fn)[0] for _ in range(n))


def row(name: str, phases: dict[str, float], total: float) -> str:
    cells = "".join(f"{phases.get(p, 0.0):>9.2f}" for p in PHASES)
    return f"{name:<6}{cells}{total:>9.2f}"


def store_hits(spec: Spec, options: BuildOptions, root: Path, repeat: int) -> None:
    """EnvStore.get of a built spec: the hit a second request costs (no build)."""
    try:
        from parsl_poncho.store import EnvStore
    except ImportError:
        print("store: parsl_poncho.store not available, hit time not measured")
        return
    with EnvStore(root / "store", build_options=options) as store:
        build_s, _ = timed(lambda: store.get(spec).result())
        same = median_of(repeat, lambda: store.get(spec).result())
    fresh = []
    for _ in range(repeat):
        with EnvStore(root / "store", build_options=options) as store:
            fresh.append(timed(lambda s=store: s.get(spec).result())[0])
    print(f"store: build+publish {build_s:.2f} s; hit (same EnvStore) "
          f"{same * 1e3:.2f} ms; hit (new EnvStore, e.g. a new process) "
          f"{statistics.median(fresh) * 1e3:.2f} ms  (median of {repeat})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per pack measurement")
    parser.add_argument("--pip", nargs="*", default=["numpy==2.4.6", "cloudpickle==3.1.2"])
    parser.add_argument("--channel", type=Path, help="an already seeded channel to use")
    parser.add_argument("--skip-seed", action="store_true", help="do not time a fresh seed")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch env row")
    parser.add_argument("--torch-req", default="torch==2.13.0+cpu")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="pp-bench-"))
    try:
        return run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: Path) -> int:
    if args.channel:
        channel = seed_channel(args.channel)
        seed_s = None
    elif args.skip_seed:
        channel = seed_channel()
        seed_s = None
    else:
        seed_s, channel = timed(seed_channel, root / "channel")
    spec = realistic_spec(args.pip)
    options = BuildOptions(channels=(str(channel),), cache_dir=root / "cache",
                           workdir=root / "work")
    print(f"spec: conda {list(spec.conda)} pip {list(spec.pip)}; channel {channel}")
    if seed_s is not None:
        print(f"seed channel (once per machine/interpreter): {seed_s:.2f} s")

    cold_s, cold = timed(build_env, spec, root / "cold.tar.gz", options=options,
                         progress=lambda _: None)
    warm_s, warm = timed(build_env, spec, root / "warm.tar.gz", options=options,
                         progress=lambda _: None)
    print(f"\nbuild time per phase (s); tarball {cold.size / 1e6:.1f} MB")
    print(f"{'':<6}" + "".join(f"{p:>9}" for p in PHASES) + f"{'total':>9}")
    print(row("cold", cold.phases, cold_s))
    print(row("warm", warm.phases, warm_s))
    print(f"warm/cold total: {warm_s / cold_s:.2f}")
    store_hits(spec, options, root, args.repeat)

    # pack vs tar czf of one and the same env dir
    keep = dataclasses.replace(options, keep_workdir=True, workdir=root / "keep")
    build_env(spec, root / "keep.tar.gz", options=keep, progress=lambda _: None)
    env_dir = next((root / "keep").glob("build-*/env"))
    out = root / "pack.tar.gz"
    tar6 = root / "tar6.tar.gz"
    tar4 = root / "tar4.tar.gz"
    methods = {
        "pack1": lambda: pack_env(env_dir, out, n_threads=1),
        "pack2": lambda: pack_env(env_dir, out, n_threads=2),
        "tar6": lambda: subprocess.run(["tar", "czf", str(tar6), "-C", str(env_dir), "."],
                                       check=True),
        "tar4": lambda: subprocess.run(f"tar -cf - -C '{env_dir}' . | gzip -4 > '{tar4}'",
                                       shell=True, check=True),
    }
    runs: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeat):  # interleaved, so load changes hit every method alike
        for name, fn in methods.items():
            runs[name].append(timed(fn)[0])
    pack_s, pack2_s, tar6_s, tar4_s = (statistics.median(runs[n]) for n in methods)
    pack_size = out.stat().st_size
    files = sum(1 for p in env_dir.rglob("*") if p.is_file())
    mb = sum(p.stat().st_size for p in env_dir.rglob("*") if p.is_file()) / 1e6
    print(f"\npack of one env dir ({mb:.0f} MB, {files} files), median of {args.repeat}")
    print(f"{'method':<28}{'seconds':>9}{'MB':>8}{'ratio':>8}")
    print(f"{'conda-pack tar.gz L4':<28}{pack_s:>9.2f}{pack_size / 1e6:>8.1f}{1.0:>8.2f}")
    print(f"{'conda-pack L4, 2 threads':<28}{pack2_s:>9.2f}{pack_size / 1e6:>8.1f}"
          f"{pack2_s / pack_s:>8.2f}")
    print(f"{'tar czf (gzip -6)':<28}{tar6_s:>9.2f}{tar6.stat().st_size / 1e6:>8.1f}"
          f"{tar6_s / pack_s:>8.2f}")
    print(f"{'tar | gzip -4':<28}{tar4_s:>9.2f}{tar4.stat().st_size / 1e6:>8.1f}"
          f"{tar4_s / pack_s:>8.2f}")
    print("ratio = method seconds / conda-pack seconds (below 1: faster than conda-pack)")
    if not args.no_torch:
        torch_row(args.torch_req, channel, root)
    return 0


def torch_row(requirement: str, channel: Path, root: Path) -> None:
    """Build, pack and unpack a PyTorch env from the host's pip configuration, cold caches."""
    sources = PipSources().resolve()
    spec = sources.apply_to(realistic_spec([requirement, "cloudpickle==3.1.3"]))
    options = BuildOptions(channels=(str(channel),), cache_dir=root / "torch-cache",
                           workdir=root / "torch-work", pip_sources=sources, keep_workdir=True)
    tarball = root / "torch.tar.gz"
    total, manifest = timed(build_env, spec, tarball, options=options, progress=lambda _: None)
    env_dir = next((root / "torch-work").glob("build-*/env"))
    env_mb = sum(p.stat().st_size for p in env_dir.rglob("*") if p.is_file()) / 1e6
    files = sum(1 for p in env_dir.rglob("*") if p.is_file())
    shutil.rmtree(root / "torch-work")
    target = root / "torch-unpacked"
    target.mkdir()
    untar_s, _ = timed(subprocess.run, ["tar", "-xzf", str(tarball), "-C", str(target)],
                       check=True)
    fix_s, _ = timed(subprocess.run, [str(target / "bin" / "python"),
                                      str(target / "bin" / "conda-unpack")], check=True)
    phases = manifest.phases
    print(f"\nPyTorch env ({requirement}, from {', '.join(spec.pip_options.find_links) or '-'}"
          f" + indexes {', '.join(spec.pip_options.extra_index_urls) or 'PyPI'}), cold caches")
    print(f"{'solve':>7}{'install':>9}{'pip':>7}{'pack':>7}{'untar':>7}{'unpack':>8}"
          f"{'total':>8}{'tar MB':>8}{'env MB':>8}{'files':>7}")
    print(f"{phases.get('solve', 0):>7.2f}{phases.get('install', 0):>9.2f}"
          f"{phases.get('pip', 0):>7.2f}{phases.get('pack', 0):>7.2f}{untar_s:>7.2f}"
          f"{fix_s:>8.2f}{total + untar_s + fix_s:>8.2f}{manifest.size / 1e6:>8.0f}"
          f"{env_mb:>8.0f}{files:>7}")
    print(f"gzip -4 packs {env_mb / phases.get('pack', 1):.0f} MB of env per s; tar xzf unpacks "
          f"{env_mb / untar_s:.0f} MB of env per s ({phases.get('pack', 0) / untar_s:.1f}x "
          "slower to pack than to unpack); unpack = conda-unpack's prefix rewrite")


if __name__ == "__main__":
    sys.exit(main())
