"""
Vmemmap Backing
---------------

Which frames hold the ``struct page`` array of every present section, found
by walking the kernel page tables (the ground truth), and how each frame came
to hold it, by the kernel's allocation paths:

* the block's own **altmap area** (``memory_hotplug.memmap_on_memory``):
  ``mhp_init_memmap_on_memory()``'s frames, carved from the block's first
  pfn when it was added (``altmap->base_pfn``; ``altmap->reserve`` is 0 for
  every memory-hotplug altmap) and mapped in order, struct page ``i`` of the
  block on frame ``start + i * sizeof(struct page) / PAGE_SIZE``
  (``vmemmap_populate()`` -> ``vmemmap_alloc_block_buf(..., altmap)`` ->
  ``altmap_alloc_block_buf()``, x86/arm64 PMD leaves, ppc64 radix base
  pages).  Only these frames are **self-hosted**;
* **boot** memory (memblock: ``sparse_init()`` -> ``memmap_alloc()``), for
  boot sections;
* the **page allocator** (``vmemmap_alloc_block()`` -> ``alloc_pages_node()``
  when a block is added without memmap_on_memory, virtio-mem, and HVO's
  replacement vmemmap page, ``vmemmap_remap_free()`` -> ``alloc_pages_node()``):
  ordinary frames anywhere in a kernel zone, hot-added blocks included.
  Normal, and never marked;
* **another block's altmap area**: never done by the kernel (an error).

So "the page tables point into the block" is not self-hosting: a frame is in
a block's altmap area when the block's own memmap is mapped on it in that
order (the *identity* position), or the block records it as vmemmap
(``altmap->free``, ``nr_vmemmap_pages``).  The area is populated when the
block is added, before it exists as memory, so nothing allocated later (HVO)
can be at the identity position by chance: HVO's pages are aliased.

Boot memory is never self-hosted.  The boot memmap comes from memblock, near
the top of each node, so the last boot block's struct pages usually lie in
that very block; such extents are ``"boot-allocated"``.  Whether a block is
hot-plugged is decided by ``SECTION_IS_EARLY``: a block is hot-plugged iff
none of its present sections is early.
"""

import time
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, cast

from drgn import Program, ProgramFlags
from drgn.helpers.common.prog import takes_program_or_default

from .columns import coalesce
from .features import Features
from .model import MemoryMap, memory_map
from .pagetable import Mapping, PageTableWalker, translate, walker_for
from .records import EXTENT_KINDS, BlockState, ExtentKind, MappingStatus, state_name

__all__ = (
    "Backing",
    "Extent",
    "KINDS",
    "SelfHostedRun",
    "frames_to_described",
    "self_hosted_runs",
    "vmemmap_backing",
)

#: Extent kinds, in the order a report might list them.
KINDS = EXTENT_KINDS


class Extent(NamedTuple):
    """
    A run of one section's struct pages backed uniformly.

    ``kind`` is one of:

    * ``"self-hosted"``: frames of the described block's own altmap area;
    * ``"boot-allocated"``: the memmap of a boot (early) block, in boot
      memory (possibly inside the described block itself);
    * ``"other-block"``: frames of a *different* block's altmap area (the
      kernel never does this);
    * ``"ordinary"``: frames from the page allocator: a hot-plugged block's
      memmap anywhere outside an altmap area (memmap_on_memory off,
      virtio-mem), or any memmap in ordinary frames of a hot-plugged block
      (HVO's replacement pages), its own block included;
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
    kind: ExtentKind
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


class Backing(list[Extent]):
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


class SelfHostedRun(NamedTuple):
    """Frames ``[start_pfn, start_pfn + nr_pages)`` of a block holding its own memmap."""

    block: int
    start_pfn: int
    nr_pages: int
    #: The block's state as :func:`~drgn_vmemmap.records.state_name` spells
    #: it (``"online"``, ...), None if the block is unknown.
    state: Optional[BlockState]
    node: Optional[int]
    zone: Optional[str]


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


class _Piece(NamedTuple):
    """One section's run of a mapping, before it is classified."""

    pfn: int
    stop: int
    section: int
    va0: int
    va1: int
    status: MappingStatus
    frame: Optional[int]
    nframes: int
    pa0: Optional[int]
    aliased: bool


def _pieces(f: Features, mappings: List[Mapping]) -> Iterable[_Piece]:
    shift = f.page_shift
    page = 1 << shift
    sp = f.layout.size
    base = f.vmemmap_base
    block_bytes = f.pages_per_block << shift
    per_section = f.pages_per_section
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
                if m.status != "mapped":
                    yield _Piece(pfn, stop, nr, va0, va1, m.status, None, 0, None, False)
                else:
                    # A piece that fits inside one period of an aliased run
                    # is linear (two PMDs mapping the same 2 MiB, each
                    # describing its own section, are not HVO).
                    offset = (va0 - m.va) % m.alias if m.alias else 0
                    aliased = bool(m.alias) and offset + (va1 - va0) > m.alias
                    assert m.pa is not None  # a mapped run has a physical address
                    if aliased:
                        pa0 = m.pa
                        nframes = -(-m.alias // page)
                    else:
                        pa0 = m.pa + offset if m.alias else m.pa + (va0 - m.va)
                        nframes = ((pa0 + va1 - va0 - 1) >> shift) - (pa0 >> shift) + 1
                    yield _Piece(pfn, stop, nr, va0, va1, "mapped", pa0 >> shift, nframes,
                                 pa0, aliased)
                pfn = stop


def _areas(mm: MemoryMap, pieces: List[_Piece], hot: Dict[int, bool]) -> Dict[int, int]:
    """Hot-plugged block id -> end pfn of its altmap area (which starts at
    the block's first pfn): as far as its own struct pages are mapped at the
    identity position, or as far as the block records vmemmap pages, which
    ever is further.  Blocks with neither have no area."""
    f = mm.features
    per_block = f.pages_per_block
    sp = f.layout.size
    shift = f.page_shift
    base = f.vmemmap_base
    out: Dict[int, int] = {}
    for p in pieces:
        if p.frame is None or p.aliased:
            continue
        bid = p.pfn // per_block
        if not hot.get(bid) or p.frame // per_block != bid:
            continue
        start = bid * per_block
        if p.pa0 == (start << shift) + (p.va0 - (base + start * sp)):
            out[bid] = max(out.get(bid, 0), p.frame + p.nframes)
    for b in mm.blocks.values():
        if b.error or not hot.get(b.id):
            continue
        recorded = b.vmemmap_pages  # altmap->free from 6.6: force padding included
        if recorded:
            end = min(b.start_pfn + recorded, b.end_pfn)
            out[b.id] = max(out.get(b.id, 0), end)
    return out


def _classify(mm: MemoryMap, out: Backing, mappings: List[Mapping],
              hot: Dict[int, bool]) -> None:
    f = mm.features
    per_block = f.pages_per_block
    spb = f.sections_per_block
    pieces = list(_pieces(f, mappings))
    areas = _areas(mm, pieces, hot)
    for p in pieces:
        described_block = p.section // spb
        kind: ExtentKind
        if p.frame is None:
            kind = "unbacked" if p.status == "unmapped" else "unreadable"
            out.append(Extent(p.pfn, p.stop, None, 0, kind, None, p.section, p.va0, None,
                              p.va1 - p.va0, False))
            continue
        host = p.frame // per_block
        in_area = p.frame < areas.get(host, host * per_block)
        if in_area:
            kind = "self-hosted" if host == described_block else "other-block"
        elif hot.get(described_block, False) or hot.get(host, False):
            kind = "ordinary"
        else:
            kind = "boot-allocated"
        out.append(Extent(p.pfn, p.stop, p.frame, p.nframes, kind, host, p.section, p.va0,
                          p.pa0, p.va1 - p.va0, p.aliased))


@takes_program_or_default
def vmemmap_backing(prog: Program, mm: Optional[MemoryMap] = None, slow: bool = False,
                    walker: Optional[PageTableWalker] = None) -> Backing:
    """
    Find the frames backing the memmap of every present section with a
    mem_map (``SECTION_HAS_MEM_MAP``): the struct pages of pfn ``p`` are at
    ``vmemmap + p * sizeof(struct page)``.

    Cached in ``prog.cache["drgn_vmemmap.backing"]`` for core dumps; a live
    kernel is walked again on every call.

    :param mm: The :func:`~drgn_vmemmap.model.memory_map` to use (walked
        again if not given).
    :param slow: Translate with ``follow_phys()`` page by page (cross-check).
    :param walker: Walk with this walker and its cached tables
        (:class:`~drgn_vmemmap.refresh.LiveModel` keeps one up to date)
        rather than a new one; never cached.
    """
    key = "drgn_vmemmap.backing"
    live = bool(prog.flags & ProgramFlags.IS_LIVE)
    if not live and not slow and walker is None:
        try:
            return cast(Backing, prog.cache[key])
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

    # A bulk walk wherever the page tables have a format (else follow_phys).
    own = walker is None
    if own:
        walker = None if slow else walker_for(prog)
    tables0 = walker.tables_read if walker is not None else 0
    mapped = [nr for nr, s in mm.sections.items() if s.has("HAS_MEM_MAP")]
    mappings: List[Mapping] = []
    per = f.pages_per_section
    # One translation per run of consecutive sections.
    for first, end in coalesce(mapped):
        start = base + first * per * sp
        length = (end - first) * per * sp
        if walker is not None:
            mappings.extend(walker.translate(start, length))
        else:
            mappings.extend(translate(prog, start, length, slow=True))
    _classify(mm, result, mappings, mm.hotplugged())
    if walker is not None:
        result.tables_read = walker.tables_read - tables0
    result.seconds = time.perf_counter() - t0
    if not live and not slow and own:
        prog.cache[key] = result
    return result


def self_hosted_runs(mm: MemoryMap, extents: Sequence[Extent]) -> List[SelfHostedRun]:
    """
    Per hot-plugged block, the runs of frames inside it that hold the block's
    own struct pages, sorted by block and pfn.  A block whose self-hosted
    frames are not contiguous has several ranges.
    """
    frames: Dict[int, List[Tuple[int, int]]] = {}
    for e in extents:
        if e.kind == "self-hosted":
            # Self-hosted frames are mapped: they have a frame and a host block.
            assert e.host_block is not None and e.frame_start_pfn is not None
            frames.setdefault(e.host_block, []).append(
                (e.frame_start_pfn, e.frame_start_pfn + e.nr_frames))
    out = []
    for bid in sorted(frames):
        b = mm.blocks.get(bid)
        for start, end in _merge(frames[bid]):
            out.append(SelfHostedRun(bid, start, end - start,
                                       state_name(b.state) if b else None,
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
        assert e.pa is not None  # an extent with frames has a physical address
        a = max(lo, e.pa)
        b = min(hi, e.pa + e.size)
        va0 = e.va + (a - e.pa)
        va1 = e.va + (b - e.pa)
        out.append(((va0 - base) // sp, -(-(va1 - base) // sp), e))
    return out
