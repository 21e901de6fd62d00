"""A preloaded heap that is cheap to fork: CPython's object arenas on transparent huge pages.

Imported by function_server.py, which poncho_serve copies beside it; standard library only.

Forking copies one page-table entry per 4 KiB page of the heap, and the call's exit frees
them: ~11 ms of kernel time per call with scikit-learn loaded, most of it for pymalloc's
1 MiB arenas (56 MB of them), which sit between the mappings of extension modules and so can
never be huge pages. Arenas reserved in one run before preloading are adjacent, so the
kernel merges them into one mapping, which MADV_COLLAPSE can then turn into 2 MiB pages: fork
and exit then copy and free ~60 times fewer entries. Contents and addresses stay, so this
changes speed, never results; only stretches that are mostly in memory already are collapsed,
so resident memory grows by at most a quarter of them, and nothing is marked on a kernel
without MADV_COLLAPSE.

Use: ``pins = reserve_arenas()``, import the preload, ``del pins``, then
:func:`collapse_to_huge_pages` (or :func:`collapse_and_report` for a log line).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import time

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]

ARENA_SIZE = 1 << 20  # pymalloc's arena on 64-bit CPython >= 3.10 (256 KiB before: still fine)
POOL_SIZE = 16 << 10
RESERVED_ARENAS = 64  # enough for numpy + scipy + scikit-learn (54 arenas)
_BIG_BLOCK = 470  # bytes(470) is a 503-byte object: pymalloc's largest size class (512 bytes)
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25  # Linux >= 6.1 (EINVAL before)
HUGE_PAGE = 2 << 20
MOSTLY_RESIDENT = 0.75  # collapse a 2 MiB stretch only if this much of it is in memory


def reserve_arenas(count: int = RESERVED_ARENAS) -> list[bytes]:
    """Make pymalloc map ``count`` arenas in one run and keep them (one live block in each
    pool that starts a new run of addresses); drop the list after preloading to let pymalloc
    unmap the arenas the preloaded modules did not fill."""
    try:
        blocks = [bytes(_BIG_BLOCK) for _ in range(count * ARENA_SIZE // 512)]
    except MemoryError:
        return []
    pins, previous = [], 0
    for block in blocks:
        address = id(block)
        if not previous < address < previous + 2 * POOL_SIZE:  # another arena (or pool run)
            pins.append(block)
        previous = address
    return pins


def collapsible_stretches() -> list[int]:
    """Start addresses of the 2 MiB-aligned stretches of this process's private anonymous
    memory (mappings and [heap]) that are mostly in memory: what collapsing would act on."""
    page = os.sysconf("SC_PAGE_SIZE")
    resident = ctypes.create_string_buffer(HUGE_PAGE // page)
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    starts = []
    for line in maps:
        fields = line.split()
        if "rw" not in fields[1] or (len(fields) > 5 and fields[5] != "[heap]"):
            continue  # file mappings, stacks and the like stay as they are
        low, high = (int(x, 16) for x in fields[0].split("-"))
        for start in range(-(-low // HUGE_PAGE) * HUGE_PAGE, high - HUGE_PAGE + 1, HUGE_PAGE):
            if _libc.mincore(start, HUGE_PAGE, resident) != 0:
                continue
            if sum(b & 1 for b in resident.raw) / len(resident.raw) >= MOSTLY_RESIDENT:
                starts.append(start)
    return starts


def collapse_to_huge_pages() -> tuple[bool, int, int]:
    """MADV_HUGEPAGE then MADV_COLLAPSE each of :func:`collapsible_stretches`, if the kernel
    can collapse at all; (whether it can, MiB now on huge pages, MiB anonymous) from
    /proc/self/smaps_rollup."""
    collapsing = can_collapse()
    for start in collapsible_stretches() if collapsing else []:
        if _libc.madvise(start, HUGE_PAGE, MADV_HUGEPAGE) == 0:
            _libc.madvise(start, HUGE_PAGE, MADV_COLLAPSE)
    sizes = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                sizes[name] = int(value.split()[0]) // 1024
    return collapsing, sizes.get("AnonHugePages", 0), sizes.get("Anonymous", 0)


def can_collapse() -> bool:
    """Whether MADV_COLLAPSE works here: tried on a throwaway mapping (a kernel without it must
    not be left with MADV_HUGEPAGE marks that khugepaged would act on)."""
    area = mmap.mmap(-1, 2 * HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        base = ctypes.addressof(ctypes.c_char.from_buffer(area))
        start = -(-base // HUGE_PAGE) * HUGE_PAGE
        area[start - base] = 1  # one page in memory: collapse must fill in the rest
        return (_libc.madvise(start, HUGE_PAGE, MADV_HUGEPAGE) == 0
                and _libc.madvise(start, HUGE_PAGE, MADV_COLLAPSE) == 0)
    finally:
        with contextlib.suppress(BufferError):
            area.close()


def collapse_and_report() -> str:
    """:func:`collapse_to_huge_pages` as a line for the server's log; never raises for a
    kernel or libc that lacks what it needs (the heap then stays as it is)."""
    start = time.perf_counter()
    try:
        collapsed, huge, anonymous = collapse_to_huge_pages()
    except (OSError, ValueError, IndexError, AttributeError, BufferError) as exc:
        return f"not used ({exc!r})"
    how = "" if collapsed else "the kernel cannot MADV_COLLAPSE (Linux >= 6.1); "
    return (f"{how}{huge} of {anonymous} MiB of anonymous memory "
            f"({time.perf_counter() - start:.3f}s)")
