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
columns hold zeros that mean nothing: every mask returned here is False on
them, and callers using the raw columns must consult ``readable``.
"""

import multiprocessing
import os
from typing import Any, Callable, Generator, Iterable, Iterator, List, Optional, Tuple, Union, cast

import numpy as np
import numpy.typing as npt
from drgn import FaultError, PlatformFlags, Program, ProgramFlags

from .features import Features, PageTypes, features

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

_COLUMNS = ("flags", "refcount", "page_type", "mapping", "private", "compound_head")


class PageColumns:
    """
    The ``struct page``\\ s of pfns ``[start_pfn, end_pfn)`` as columns.

    Each column is a numpy array with one entry per pfn: ``flags`` (uint64),
    ``refcount`` (int32, ``_refcount``), ``page_type`` (uint32, the word
    shared with ``_mapcount``), ``mapping``, ``private`` and
    ``compound_head`` (uint64; ``compound_info`` since 7.1).  ``readable``
    (bool) is False for struct pages missing from the dump; their other
    columns are meaningless zeros.
    """

    __slots__ = ("start_pfn", "end_pfn", "readable", "faults", "page_types",
                 "vmemmap_base", "struct_size") + _COLUMNS

    def __init__(self, start_pfn: int, end_pfn: int, page_types: PageTypes,
                 vmemmap_base: int, struct_size: int) -> None:
        n = end_pfn - start_pfn
        self.start_pfn = start_pfn
        self.end_pfn = end_pfn
        #: How to decode ``page_type`` (the program's default
        #: :func:`~drgn_vmemmap.features.features`; pass other
        #: :class:`Features` to :func:`has_type` / :func:`type_is` for a
        #: user-supplied vmemmap page type).
        self.page_types = page_types
        #: Address of the ``struct page`` of pfn 0, and ``sizeof(struct page)``.
        self.vmemmap_base = vmemmap_base
        self.struct_size = struct_size
        self.flags = np.zeros(n, np.uint64)
        self.refcount = np.zeros(n, np.int32)
        self.page_type = np.zeros(n, np.uint32)
        self.mapping = np.zeros(n, np.uint64)
        self.private = np.zeros(n, np.uint64)
        self.compound_head = np.zeros(n, np.uint64)
        self.readable = np.zeros(n, bool)
        #: ``(start_pfn, end_pfn, message)`` of each run of unreadable struct
        #: pages, with drgn's fault message (e.g. an excluded page).
        self.faults: List[Tuple[int, int, str]] = []

    def __len__(self) -> int:
        return self.end_pfn - self.start_pfn

    def __repr__(self) -> str:
        return (f"PageColumns({self.start_pfn:#x}-{self.end_pfn:#x}, "
                f"{len(self) - self.nr_readable} unreadable)")

    @property
    def pfns(self) -> np.ndarray:
        """The pfn of each entry (int64)."""
        return np.arange(self.start_pfn, self.end_pfn, dtype=np.int64)

    @property
    def nr_readable(self) -> int:
        return int(np.count_nonzero(self.readable))


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


def flag_set(cols: PageColumns, bit: int) -> np.ndarray:
    """Mask of readable pages whose ``flags`` have bit ``bit`` set."""
    return ((cols.flags >> np.uint64(bit)) & np.uint64(1)).astype(bool) & cols.readable


def _types(cols: PageColumns, types: Union[Features, PageTypes, None]) -> PageTypes:
    if types is None:
        return cols.page_types
    return types.page_types if isinstance(types, Features) else types


def has_type(cols: PageColumns,
             types: Union[Features, PageTypes, None] = None) -> npt.NDArray[np.bool_]:
    """
    Mask of readable pages that have a page type (any).

    :param types: How ``page_type`` is encoded (default: ``cols.page_types``,
        the program's).
    """
    pt = cols.page_type
    signed = pt.view(np.int32)
    types = _types(cols, types)
    mask: npt.NDArray[np.bool_]
    if types.scheme == "pgty":
        # Linux kernel commit 4ffca5a96678 ("mm: support only one page_type
        # per page") (in v6.12): the type is the top byte, 0x80-0xfe.
        mask = signed < -(1 << 24)
    else:
        # page_has_type() up to 6.11 tests only the sign threshold, not the
        # base bits: a word below it is a type the kernel sees, if unknown.
        mask = signed < types.reserve
    return mask & cols.readable


def type_is(cols: PageColumns, name: str,
            types: Union[Features, PageTypes, None] = None) -> npt.NDArray[np.bool_]:
    """
    Mask of readable pages whose page type is ``name`` (``"buddy"``,
    ``"offline"``, ...: a key of :attr:`PageTypes.types`).

    :param types: As for :func:`has_type`.
    :raises LookupError: if this kernel has no such page type.
    """
    types = _types(cols, types)
    try:
        value = types.types[name]
    except KeyError:
        raise LookupError(f"this kernel has no {name!r} page type") from None
    pt = cols.page_type
    match: npt.NDArray[np.bool_]
    if types.scheme == "pgty":
        match = (pt >> np.uint32(24)) == np.uint32(value)
    else:
        base = np.uint32(types.base)
        match = (pt & (base | np.uint32(value))) == base
    return match & has_type(cols, types)


def type_name(page_type: int, types: Union[Features, PageTypes]) -> Optional[str]:
    """
    Decode one ``page_type`` word: the type's name (for the inverted scheme,
    names joined by ``"|"``), ``"unknown (0x...)"``, or None if it has no type.
    """
    types = types.page_types if isinstance(types, Features) else types
    page_type &= 0xFFFFFFFF
    signed = page_type - (1 << 32) if page_type & 0x80000000 else page_type
    if types.scheme == "pgty":
        if signed >= -(1 << 24):
            return None
        names = [k for k, v in types.types.items() if v == page_type >> 24]
    else:
        if signed >= types.reserve:
            return None
        if page_type & types.base != types.base:
            return f"unknown ({page_type:#010x})"
        names = [k for k, v in types.types.items()
                 if page_type & (types.base | v) == types.base]
    return "|".join(sorted(names)) if names else f"unknown ({page_type:#010x})"


def head_pfns(cols: PageColumns) -> np.ndarray:
    """
    The pfn of each page's compound head (int64): the page itself unless it
    is a tail page (bit 0 of ``compound_head``), -1 where unreadable.

    ``compound_head`` holds the head's address + 1, or, since 7.1 with HVO
    and a power-of-2 ``struct page``, a mask that gives the head's address
    when and-ed with the tail's: ``GENMASK(63, order + log2(size)) | 1``.
    The two forms are told apart by value (a vmemmap address is never of
    the mask form).
    """
    info = cols.compound_head
    tail = ((info & np.uint64(1)) == np.uint64(1)) & cols.readable
    addrs = (np.uint64(cols.vmemmap_base)
             + cols.pfns.astype(np.uint64) * np.uint64(cols.struct_size))
    value = info & ~np.uint64(1)
    # value is a mask iff -value is a power of two.
    neg = (~value) + np.uint64(1)
    is_mask = (value != 0) & ((neg & (neg - np.uint64(1))) == 0)
    head_addr = np.where(is_mask, addrs & value, value)
    heads = ((head_addr - np.uint64(cols.vmemmap_base))
             // np.uint64(cols.struct_size)).astype(np.int64)
    out = np.where(tail, heads, cols.pfns)
    out[~cols.readable] = -1
    return out


def buddy_pages(cols: PageColumns, max_order: int = 20) -> np.ndarray:
    """
    Mask of pages inside a free buddy block whose head (the only page with
    the Buddy type; its order is in ``private``) is in ``cols``: what
    ``/proc/kpageflags`` reports as ``KPF_BUDDY``.
    """
    n = len(cols)
    heads = np.flatnonzero(type_is(cols, "buddy"))
    orders = np.minimum(cols.private[heads], np.uint64(max_order)).astype(np.int64)
    ends = np.minimum(heads + (np.int64(1) << orders), n)
    delta = np.zeros(n + 1, np.int64)
    np.add.at(delta, heads, 1)
    np.add.at(delta, ends, -1)
    return np.cumsum(delta[:n]) > 0


def runs(mask: np.ndarray, base_pfn: int) -> List[Tuple[int, int]]:
    """
    Coalesce a boolean mask into ``(start_pfn, end_pfn)`` runs of True, the
    mask's first entry being ``base_pfn``.  End pfns are exclusive.
    """
    padded = np.concatenate(([False], np.asarray(mask, bool), [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + base_pfn
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def unreadable_ranges(cols: PageColumns) -> List[Tuple[int, int]]:
    """``(start_pfn, end_pfn)`` runs of struct pages missing from the dump."""
    return runs(~cols.readable, cols.start_pfn)
