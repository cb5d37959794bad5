"""
Vmemmap Backing
---------------

Which frames hold the ``struct page`` array of every present section, found
by walking the kernel page tables (the ground truth), and from that the
self-hosted ranges: the frames at the start of a hot-plugged memory block that
hold that block's own struct pages (``memory_hotplug.memmap_on_memory``).

Boot memory is never self-hosted.  The boot memmap comes from memblock, near
the top of each node, so the last boot block's struct pages usually lie in
that very block; such extents are ``"boot-allocated"``.  Whether a block is
hot-plugged is decided by ``SECTION_IS_EARLY``: a block is hot-plugged iff
none of its present sections is early.
"""

import time
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from drgn import Architecture, Program, ProgramFlags
from drgn.helpers.common.prog import takes_program_or_default

from .model import MemoryMap, memory_map
from .pagetable import Mapping, PageTableWalker, translate

__all__ = (
    "Backing",
    "Extent",
    "KINDS",
    "SelfHostedRange",
    "frames_to_described",
    "self_hosted_ranges",
    "vmemmap_backing",
)

#: Extent kinds, in the order a report might list them.
KINDS = ("self-hosted", "boot-allocated", "other-block", "ordinary", "unbacked",
         "unreadable")


class Extent(NamedTuple):
    """
    A run of one section's struct pages backed uniformly.

    ``kind`` is one of:

    * ``"self-hosted"``: frames inside the hot-plugged block whose pfns they
      describe;
    * ``"boot-allocated"``: the memmap of a boot (early) block, in boot memory
      (possibly inside the described block itself);
    * ``"other-block"``: frames inside a *different* hot-plugged block;
    * ``"ordinary"``: a hot-plugged block's memmap in boot memory or in RAM
      outside any hot-plugged block;
    * ``"unbacked"``: not mapped by the page tables;
    * ``"unreadable"``: page-table pages missing from the dump.
    """

    #: Described pfns: ``[described_start_pfn, described_end_pfn)``; with a
    #: ``struct page`` size that does not divide the page size, the first and
    #: last may be described only partly.
    described_start_pfn: int
    described_end_pfn: int
    #: Frames ``[frame_start_pfn, frame_start_pfn + nr_frames)`` holding them,
    #: None and 0 when not mapped.
    frame_start_pfn: Optional[int]
    nr_frames: int
    kind: str
    #: Memory block id of the frames (``pfn // pages_per_block``, whether or
    #: not that block exists), None when not mapped.
    host_block: Optional[int]
    #: Section number of the described pfns.
    section: int
    #: Virtual address (``struct page *``) and physical address of the first
    #: byte, and the length in bytes.
    va: int
    pa: Optional[int]
    size: int
    #: True when every page of ``[va, va + size)`` maps the same
    #: ``nr_frames`` frames (HugeTLB vmemmap optimisation).
    aliased: bool

    @property
    def frame_end_pfn(self) -> Optional[int]:
        if self.frame_start_pfn is None:
            return None
        return self.frame_start_pfn + self.nr_frames


class Backing(list):
    """
    A list of :class:`Extent`, in described-pfn order, with the constants
    needed to map a frame back to the pfns it describes.
    """

    page_shift: int
    struct_page_size: int
    vmemmap_base: int
    #: Wall-clock seconds the page-table walk and classification took.
    seconds: float
    #: Page-table pages read (0 on the ``follow_phys()`` path).
    tables_read: int


class SelfHostedRange(NamedTuple):
    """Frames ``[start_pfn, start_pfn + nr_pages)`` of a block holding its own memmap."""

    block: int
    start_pfn: int
    nr_pages: int
    #: The block's state (``"MEM_ONLINE"``, ...), None if the block is unknown.
    state: Optional[str]
    node: Optional[int]
    zone: Optional[str]


def _hotplugged_blocks(mm: MemoryMap) -> Dict[int, bool]:
    """Block id -> hot-plugged (no present section of it is early)."""
    per = mm.features.sections_per_block
    hot: Dict[int, bool] = {}
    for nr, s in mm.sections.items():
        bid = nr // per
        hot[bid] = hot.get(bid, True) and not s.has("IS_EARLY")
    return hot


def _runs(numbers: Iterable[int]) -> List[Tuple[int, int]]:
    """Consecutive integers as ``(first, last + 1)`` runs."""
    out: List[Tuple[int, int]] = []
    for n in sorted(numbers):
        if out and out[-1][1] == n:
            out[-1] = (out[-1][0], n + 1)
        else:
            out.append((n, n + 1))
    return out


def _merge(intervals: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Union of half-open intervals, as sorted disjoint ``(start, end)``."""
    out: List[Tuple[int, int]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _split_by_host(m: Mapping, block_bytes: int) -> Iterable[Mapping]:
    """Cut a linear mapping where its frames cross a memory-block boundary."""
    if m.pa is None or m.alias:
        yield m
        return
    va, pa, size = m.va, m.pa, m.size
    while size > 0:
        room = block_bytes - pa % block_bytes
        n = min(size, room)
        yield Mapping(va, pa, n)
        va, pa, size = va + n, pa + n, size - n


def _classify(mm: MemoryMap, out: Backing, mappings: List[Mapping],
              hot: Dict[int, bool]) -> None:
    f = mm.features
    shift = f.page_shift
    page = 1 << shift
    sp = f.layout.size
    base = f.vmemmap_base
    block_bytes = f.pages_per_block << shift
    per_section = f.pages_per_section
    per_block = f.pages_per_block
    for whole in mappings:
        for m in _split_by_host(whole, block_bytes):
            first = (m.va - base) // sp
            last = -(-(m.end - base) // sp)  # exclusive, rounded up
            # Cut at section boundaries of the described pfns.
            pfn = first
            while pfn < last:
                nr = pfn // per_section
                stop = min(last, (nr + 1) * per_section)
                va0 = max(m.va, base + pfn * sp)
                va1 = min(m.end, base + stop * sp)
                described_block = nr // mm.features.sections_per_block
                if m.status != "mapped":
                    kind = "unbacked" if m.status == "unmapped" else "unreadable"
                    ext = Extent(pfn, stop, None, 0, kind, None, nr, va0, None,
                                 va1 - va0, False)
                else:
                    # A piece that fits inside one period of an aliased run
                    # is linear (two PMDs mapping the same 2 MiB, each
                    # describing its own section, are not HVO).
                    offset = (va0 - m.va) % m.alias if m.alias else 0
                    aliased = bool(m.alias) and offset + (va1 - va0) > m.alias
                    if aliased:
                        pa0 = m.pa
                        nframes = -(-m.alias // page)
                    elif m.alias:
                        pa0 = m.pa + offset
                        nframes = ((pa0 + va1 - va0 - 1) >> shift) - (pa0 >> shift) + 1
                    else:
                        pa0 = m.pa + (va0 - m.va)
                        nframes = ((pa0 + va1 - va0 - 1) >> shift) - (pa0 >> shift) + 1
                    frame = pa0 >> shift
                    host = frame // per_block
                    host_hot = hot.get(host, False)
                    if host == described_block:
                        kind = "self-hosted" if host_hot else "boot-allocated"
                    elif host_hot:
                        kind = "other-block"
                    elif hot.get(described_block, False):
                        kind = "ordinary"
                    else:
                        kind = "boot-allocated"
                    ext = Extent(pfn, stop, frame, nframes, kind, host, nr, va0, pa0,
                                 va1 - va0, aliased)
                out.append(ext)
                pfn = stop


@takes_program_or_default
def vmemmap_backing(prog: Program, mm: Optional[MemoryMap] = None, slow: bool = False) -> Backing:
    """
    Find the frames backing the memmap of every present section with a
    mem_map (``SECTION_HAS_MEM_MAP``): the struct pages of pfn ``p`` are at
    ``vmemmap + p * sizeof(struct page)``.

    Cached in ``prog.cache["drgn_vmemmap.backing"]`` for core dumps; a live
    kernel is walked again on every call.

    :param mm: The :func:`~drgn_vmemmap.model.memory_map` to use (walked
        again if not given).
    :param slow: Translate with ``follow_phys()`` page by page (cross-check).
    """
    key = "drgn_vmemmap.backing"
    live = bool(prog.flags & ProgramFlags.IS_LIVE)
    if not live and not slow:
        try:
            return prog.cache[key]
        except KeyError:
            pass
    t0 = time.perf_counter()
    if mm is None:
        mm = memory_map(prog)
    f = mm.features
    sp = f.layout.size
    base = f.vmemmap_base
    result = Backing()
    result.page_shift = f.page_shift
    result.struct_page_size = sp
    result.vmemmap_base = base
    result.tables_read = 0

    use_walker = not slow and prog.platform is not None and \
        prog.platform.arch == Architecture.X86_64
    walker = PageTableWalker(prog) if use_walker else None
    mapped = [nr for nr, s in mm.sections.items() if s.has("HAS_MEM_MAP")]
    mappings: List[Mapping] = []
    per = f.pages_per_section
    # One translation per run of consecutive sections.
    for first, end in _runs(mapped):
        start = base + first * per * sp
        length = (end - first) * per * sp
        if walker is not None:
            mappings.extend(walker.translate(start, length))
        else:
            mappings.extend(translate(prog, start, length, slow=True))
    _classify(mm, result, mappings, _hotplugged_blocks(mm))
    if walker is not None:
        result.tables_read = walker.tables_read
    result.seconds = time.perf_counter() - t0
    if not live and not slow:
        prog.cache[key] = result
    return result


def self_hosted_ranges(mm: MemoryMap, extents: Sequence[Extent]) -> List[SelfHostedRange]:
    """
    Per hot-plugged block, the runs of frames inside it that hold the block's
    own struct pages, sorted by block and pfn.  A block whose self-hosted
    frames are not contiguous has several ranges.
    """
    frames: Dict[int, List[Tuple[int, int]]] = {}
    for e in extents:
        if e.kind == "self-hosted":
            frames.setdefault(e.host_block, []).append(
                (e.frame_start_pfn, e.frame_start_pfn + e.nr_frames))
    out = []
    for bid in sorted(frames):
        b = mm.blocks.get(bid)
        for start, end in _merge(frames[bid]):
            out.append(SelfHostedRange(bid, start, end - start,
                                       b.state if b else None,
                                       b.nid if b else None,
                                       b.zone if b else None))
    return out


def frames_to_described(extents: Backing, frame_pfn: int) -> List[Tuple[int, int, Extent]]:
    """
    Which struct pages does frame ``frame_pfn`` hold?

    :return: ``(start_pfn, end_pfn, extent)`` for every extent backed by the
        frame: the struct pages of pfns ``[start_pfn, end_pfn)`` lie (at least
        partly) in it.  Empty if the frame holds no memmap.  An aliased
        extent gives its whole described range: all of it reads this frame.
    """
    shift = extents.page_shift
    sp = extents.struct_page_size
    base = extents.vmemmap_base
    lo = frame_pfn << shift
    hi = lo + (1 << shift)
    out = []
    for e in extents:
        if e.frame_start_pfn is None or not (
                e.frame_start_pfn <= frame_pfn < e.frame_start_pfn + e.nr_frames):
            continue
        if e.aliased:
            out.append((e.described_start_pfn, e.described_end_pfn, e))
            continue
        a = max(lo, e.pa)
        b = min(hi, e.pa + e.size)
        va0 = e.va + (a - e.pa)
        va1 = e.va + (b - e.pa)
        out.append(((va0 - base) // sp, -(-(va1 - base) // sp), e))
    return out
