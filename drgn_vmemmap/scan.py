"""
Scan
----

``struct page`` arrays read in bulk and decoded as numpy columns.

A chunk of the vmemmap (by default one section: 32768 pages, 2 MiB of
``struct page`` on x86_64) is read with one :meth:`drgn.Program.read` and
decoded by :func:`numpy.frombuffer` with a structured dtype built from
:attr:`~drgn_vmemmap.features.Features.layout`.  No drgn object is created
per page.

Filtered dumps lack some pages.  When a chunk cannot be read, it is bisected
down to single (4 KiB) pages of the vmemmap, so that exactly the struct pages
that are missing are marked unreadable in :attr:`PageColumns.readable`.  Their
columns hold zeros that mean nothing: every mask of :mod:`~drgn_vmemmap.columns`
(re-exported here) is False on them, and callers using the raw columns must
consult ``readable``.
"""

import multiprocessing
import os
from typing import Any, Callable, Generator, Iterable, Iterator, List, Optional, Tuple, cast

import numpy as np
from drgn import FaultError, PlatformFlags, Program, ProgramFlags

from .columns import (
    _COLUMNS,
    PageColumns,
    buddy_pages,
    flag_set,
    has_type,
    head_pfns,
    runs,
    type_is,
    type_name,
    unreadable_ranges,
)
from .features import features

__all__ = (
    "PageColumns",
    "buddy_pages",
    "flag_set",
    "has_type",
    "head_pfns",
    "iter_section_chunks",
    "map_spans",
    "parallel_jobs",
    "runs",
    "scan_pfns",
    "type_is",
    "type_name",
    "unreadable_ranges",
)

#: ``progress(pages_done, pages_total)``, called after each chunk.
Progress = Callable[[int, int], None]


def _dtype(prog: Program) -> np.dtype:
    key = "drgn_vmemmap.scan.dtype"
    try:
        return cast(np.dtype, prog.cache[key])
    except KeyError:
        pass
    layout = features(prog).layout
    order = "<" if prog.platform.flags & PlatformFlags.IS_LITTLE_ENDIAN else ">"
    word = "u8" if prog.platform.flags & PlatformFlags.IS_64_BIT else "u4"
    offsets = (layout.flags, layout.refcount, layout.mapcount, layout.mapping,
               layout.private, layout.compound_head)
    formats = (word, "i4", "u4", word, word, word)
    dtype = np.dtype({"names": list(_COLUMNS), "offsets": list(offsets),
                      "formats": [order + f for f in formats], "itemsize": layout.size})
    prog.cache[key] = dtype
    return dtype


def _read(prog: Program, address: int, size: int) -> bytes:
    # The one place memory is read; tests replace it to simulate holes.
    return cast(bytes, prog.read(address, size))


def _read_bisect(prog: Program, address: int, size: int, granule: int
                 ) -> Tuple[bytes, List[Tuple[int, int, str]]]:
    """
    Read ``size`` bytes at ``address``.  On a fault, split at ``granule``
    aligned addresses until the pieces that fail are single granules.
    Returns the bytes (zeros where unreadable) and the failed
    ``(offset, end, message)`` byte ranges, in order.
    """
    try:
        return _read(prog, address, size), []
    except FaultError as e:
        first_error: Optional[FaultError] = e
    buf = bytearray(size)
    bad: List[Tuple[int, int, str]] = []
    stack = [(address, address + size)]
    while stack:
        lo, hi = stack.pop()
        if first_error is not None:
            error, first_error = first_error, None  # [address, +size) failed
        else:
            try:
                buf[lo - address:hi - address] = _read(prog, lo, hi - lo)
                continue
            except FaultError as e:
                error = e
        first_granule_end = (lo // granule + 1) * granule
        if hi <= first_granule_end:
            bad.append((lo - address, hi - address, error.message))
            continue
        mid = ((lo + hi) // 2 // granule) * granule
        if mid <= lo:
            mid = first_granule_end
        stack.append((mid, hi))  # popped second: keeps ``bad`` in order
        stack.append((lo, mid))
    return bytes(buf), bad  # (copy is rare: only after a fault)


def _fill(prog: Program, cols: PageColumns, lo: int, hi: int) -> None:
    """Read and decode pfns ``[lo, hi)`` into ``cols``."""
    size = cols.struct_size
    granule = 1 << features(prog).page_shift
    data, bad = _read_bisect(prog, cols.vmemmap_base + lo * size, (hi - lo) * size, granule)
    rec = np.frombuffer(data, _dtype(prog), count=hi - lo)
    i, j = lo - cols.start_pfn, hi - cols.start_pfn
    for name in _COLUMNS:
        getattr(cols, name)[i:j] = rec[name]
    readable = cols.readable[i:j]
    readable[:] = True
    for off, end, message in bad:
        # Every struct page overlapping an unreadable granule is unreadable.
        a, b = off // size, -(-end // size)
        readable[a:b] = False
        start_pfn, end_pfn = lo + a, lo + b
        if cols.faults and cols.faults[-1][1] >= start_pfn and cols.faults[-1][2] == message:
            cols.faults[-1] = (cols.faults[-1][0], end_pfn, message)
        else:
            cols.faults.append((start_pfn, end_pfn, message))
    if bad:
        for name in _COLUMNS:
            getattr(cols, name)[i:j][~readable] = 0


def _chunks(start_pfn: int, end_pfn: int, chunk_pages: int) -> Iterator[Tuple[int, int]]:
    lo = start_pfn
    while lo < end_pfn:
        hi = min((lo // chunk_pages + 1) * chunk_pages, end_pfn)
        yield lo, hi
        lo = hi


def _new_columns(prog: Program, start_pfn: int, end_pfn: int) -> PageColumns:
    f = features(prog)
    return PageColumns(start_pfn, end_pfn, f.page_types, f.vmemmap_base, f.layout.size)


def scan_pfns(prog: Program, start_pfn: int, end_pfn: int,
              chunk_pages: Optional[int] = None,
              progress: Optional[Progress] = None) -> PageColumns:
    """
    Read the ``struct page``\\ s of pfns ``[start_pfn, end_pfn)``.

    :param chunk_pages: Pages per :meth:`~drgn.Program.read` (chunks are
        aligned to it); default one section.
    :param progress: Called with (pages done, pages total) after each chunk.
    """
    chunk_pages = chunk_pages or features(prog).pages_per_section
    cols = _new_columns(prog, start_pfn, end_pfn)
    for lo, hi in _chunks(start_pfn, end_pfn, chunk_pages):
        _fill(prog, cols, lo, hi)
        if progress is not None:
            progress(hi - start_pfn, end_pfn - start_pfn)
    return cols


def iter_section_chunks(prog: Program,
                        pfn_ranges: Optional[Iterable[Tuple[int, int]]] = None,
                        chunk_pages: Optional[int] = None,
                        progress: Optional[Progress] = None) -> Iterator[PageColumns]:
    """
    Scan ``pfn_ranges`` (``(start_pfn, end_pfn)`` pairs) one chunk at a time,
    with memory bounded by the chunk size.

    :param pfn_ranges: Default: every valid pfn (drgn's
        :func:`~drgn.helpers.linux.mm.for_each_valid_page_range`).
    :param chunk_pages: Pages per chunk (chunks are aligned to it and never
        span two ranges); default one section.
    :param progress: Called with (pages done, pages total) after each chunk.
    """
    if pfn_ranges is None:
        from drgn.helpers.linux.mm import for_each_valid_page_range

        pfn_ranges = [(s, e) for s, e, _ in for_each_valid_page_range(prog)]
    else:
        pfn_ranges = list(pfn_ranges)
    chunk_pages = chunk_pages or features(prog).pages_per_section
    total = sum(e - s for s, e in pfn_ranges)
    done = 0
    for start, end in pfn_ranges:
        for lo, hi in _chunks(start, end, chunk_pages):
            cols = _new_columns(prog, lo, hi)
            _fill(prog, cols, lo, hi)
            done += hi - lo
            yield cols
            if progress is not None:
                progress(done, total)


#: Below this many pages a scan stays in one process: forking costs more
#: than it saves (the fixtures, 0.4 M pages, scan in about 0.1 s).
PARALLEL_MIN_PAGES = 1 << 20

# What forked workers inherit: (program, function, spans).
_WORK: Optional[Tuple[Program, Callable[..., Any], List[Tuple[int, int]]]] = None


def parallel_jobs(prog: Program, pages: int) -> int:
    """
    How many processes should scan ``pages`` struct pages of ``prog``.

    More than one only for a core dump (a live kernel or a QEMU socket is one
    channel), on a machine with several CPUs, for at least
    :data:`PARALLEL_MIN_PAGES` pages, where ``fork`` exists and this process
    may have children.  Decompressing kdump pages is the cost of a scan, and
    drgn holds the GIL while it reads, so threads would not help; forked
    processes share the already loaded program.  ``DRGN_VMEMMAP_JOBS``
    overrides the choice (``1``: never fork).
    """
    env = os.environ.get("DRGN_VMEMMAP_JOBS")
    if env:
        return max(1, int(env))
    if (prog.flags & ProgramFlags.IS_LIVE or pages < PARALLEL_MIN_PAGES
            or "fork" not in multiprocessing.get_all_start_methods()
            or multiprocessing.current_process().daemon):
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def _scan_span(i: int) -> Tuple[Any, List[Tuple[int, int]]]:
    prog, fn, spans = _WORK  # type: ignore[misc]
    start, end = spans[i]
    cols = scan_pfns(prog, start, end)
    return fn(start, end, cols), unreadable_ranges(cols)


def map_spans(prog: Program, spans: List[Tuple[int, int]],
              fn: Callable[[int, int, PageColumns], Any],
              jobs: int = 1) -> Generator[Tuple[Any, List[Tuple[int, int]]], None, None]:
    """
    Scan each ``(start_pfn, end_pfn)`` span and apply ``fn(start, end,
    columns)`` to it; yield ``(fn's result, unreadable pfn ranges)`` per span,
    in order.

    With ``jobs`` > 1 the spans are scanned by that many forked processes,
    which inherit ``prog`` and ``fn``; only the results, which should be
    small (runs of pfns, counts), come back.  Everything ``fn`` needs from
    the program must be computed before the call: a worker must not load
    debug info (drgn indexes it with OpenMP threads, which do not survive a
    fork).
    """
    global _WORK
    _WORK = (prog, fn, spans)
    try:
        if jobs > 1 and len(spans) > 1:
            # Look up now what every worker needs (debug info, cached on
            # the program), so that no worker indexes DWARF after the fork.
            features(prog)
            _dtype(prog)
            pool = multiprocessing.get_context("fork").Pool(jobs)
            try:
                yield from pool.imap(_scan_span, range(len(spans)), chunksize=4)
            finally:
                pool.terminate()
        else:
            for i in range(len(spans)):
                yield _scan_span(i)
    finally:
        _WORK = None
