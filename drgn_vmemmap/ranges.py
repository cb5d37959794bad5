"""
Ranges
------

Self-hosted vmemmap ranges, one per block, from the page-table backing
(:func:`self_hosted_ranges`): the block's frames that back its own struct
pages, its vmemmap area (padded to whole pageblocks with
``memmap_on_memory=force``: :func:`vmemmap_area_pages`), and the blocks whose
memmap the kernel mapped with a mapping that already existed (ppc64 radix:
no frame of their own, the area reserved all the same).
"""

import bisect
from typing import Dict, Iterator, List, Optional, Sequence, Set

from drgn import Program

from . import backing as _backing
from .model import Block, MemoryMap, memory_map
from .records import Range, state_name

__all__ = ("boot_mapping_deltas", "extent_delta", "self_hosted_ranges", "vmemmap_area_pages")


def vmemmap_area_pages(mm: MemoryMap, block: Optional[Block], start_pfn: int,
                       nr_pages: int) -> int:
    """
    How many pages from ``start_pfn`` form the block's vmemmap area when
    ``nr_pages`` frames there back its struct pages.

    ``memmap_on_memory=force`` (6.6+) reserves the memmap padded up to whole
    pageblocks (``altmap->free = pageblock_align(nr)``,
    mm/memory_hotplug.c:memory_block_memmap_on_memory_pages()) and marks
    every reserved page like the memmap itself.  When ``pageblock_order``
    cannot be told, the block's own ``altmap->free`` is taken if it covers
    the frames; altmap-mismatch still compares the two.
    """
    f = mm.features
    if f.memmap_on_memory != "force" or block is None or start_pfn != block.start_pfn:
        return nr_pages
    if f.pageblock_order is not None:
        pb = 1 << f.pageblock_order
        padded = -(-nr_pages // pb) * pb
    elif block.altmap is not None and block.altmap.free >= nr_pages:
        padded = block.altmap.free
    else:
        padded = nr_pages
    return min(padded, block.end_pfn - start_pfn)


def self_hosted_ranges(prog: Program, mm: Optional[MemoryMap] = None,
                       extents: Optional[Sequence["_backing.Extent"]] = None) -> List[Range]:
    """
    Self-hosted vmemmap ranges found from the page tables, one per block.

    ``nr_pages`` spans the block's frames that back its own struct pages,
    from the first to the last; ``holes`` counts those inside that back
    nothing (what an HVO-style remap of self-hosted vmemmap leaves behind;
    altmap-mismatch reports them); ``reserved_pages`` goes on to whole
    pageblocks with ``memmap_on_memory=force``.

    :param mm: the :func:`~drgn_vmemmap.model.memory_map` (read if not given).
    :param extents: its :func:`~drgn_vmemmap.backing.vmemmap_backing` (walked
        if not given).
    """
    if mm is None:
        mm = memory_map(prog)
    if extents is None:
        extents = _backing.vmemmap_backing(prog, mm)
    runs: Dict[int, List["_backing.SelfHostedRun"]] = {}
    for r in _backing.self_hosted_runs(mm, extents):
        runs.setdefault(r.block, []).append(r)
    out = []
    for bid, rs in sorted(runs.items()):
        b = mm.blocks.get(bid)
        start = rs[0].start_pfn
        span = rs[-1].start_pfn + rs[-1].nr_pages - start
        out.append(Range(bid, start, span,
                         state_name(b.state) if b else "?", b.nid if b else None,
                         b.zone if b else None,
                         vmemmap_area_pages(mm, b, start, span),
                         span - sum(r.nr_pages for r in rs)))
    out.extend(_reused_mappings(mm, extents, set(runs)))
    out.sort(key=lambda r: r.block)
    return out


def extent_delta(mm: MemoryMap, e: "_backing.Extent") -> Optional[int]:
    """Virtual minus physical address of the page that holds the extent's
    first struct page: equal for every extent of one linear mapping (a leaf
    PMD, a run of boot memmap), None when not mapped."""
    if e.frame_start_pfn is None:
        return None
    f = mm.features
    page = 1 << f.page_shift
    va = (f.vmemmap_base + e.described_start_pfn * f.layout.size) & ~(page - 1)
    return va - (e.frame_start_pfn << f.page_shift)


def boot_mapping_deltas(mm: MemoryMap, extents: Sequence["_backing.Extent"]) -> Set[int]:
    """:func:`extent_delta` of every boot-allocated extent: the linear runs
    of the memmap set up at boot, which later memmap may continue (a leaf
    PMD reused by ``vmemmap_check_pmd()``)."""
    return {d for e in extents if e.kind == "boot-allocated"
            for d in (extent_delta(mm, e),) if d is not None}


#: Extent kinds of a memmap mapped by frames of the kernel's own choosing.
_MAPPED = frozenset(("boot-allocated", "ordinary", "self-hosted"))


def _reused_mappings(mm: MemoryMap, extents: Sequence["_backing.Extent"],
                     found: Set[int]) -> Iterator[Range]:
    """
    Blocks added with an altmap whose struct pages the kernel mapped with a
    mapping that already existed, so that no frame of the altmap backs them:
    ``Range(nr_pages=0, reserved_pages=the area)``.

    ``vmemmap_populate()`` keeps a present leaf PMD (``vmemmap_check_pmd()``).
    On ppc64 radix with 64K pages one vmemmap PMD holds the struct pages of
    2 GiB, and boot memory's were mapped with PMD leaves, so a block added in
    the same 2 GiB reuses it (``radix__vmemmap_populate()``).  The block's
    altmap area is reserved and marked all the same
    (``mhp_init_memmap_on_memory()``), and ``altmap->alloc`` stays 0.  The area
    is what the kernel reserves for a block, computed here, not read from the
    block: its memmap pages, padded to whole pageblocks with
    ``memmap_on_memory=force``; altmap-mismatch compares it with ``free``.
    """
    f = mm.features
    if f.block_accounting != "altmap":
        return
    hot = mm.hotplugged()
    boot = boot_mapping_deltas(mm, extents)
    starts = [e.described_start_pfn for e in extents]
    need = -(-f.pages_per_block * f.layout.size // (1 << f.page_shift))
    for b in mm.blocks.values():
        a = b.altmap
        if (b.id in found or b.error or a is None or a.alloc or not a.free
                or a.base_pfn != b.start_pfn or not hot.get(b.id, False)):
            continue
        i = max(bisect.bisect_right(starts, b.start_pfn) - 1, 0)
        kinds = set()
        while i < len(extents) and extents[i].described_start_pfn < b.end_pfn:
            e = extents[i]
            if e.described_end_pfn > b.start_pfn:
                # Ordinary frames count as the boot mapping's only when they
                # continue it (the same leaf); a page of its own is the
                # page allocator's (altmap-mismatch's fallback warning).
                shared = e.kind != "ordinary" or extent_delta(mm, e) in boot
                kinds.add(e.kind if shared else "fallback")
            i += 1
        if kinds and kinds <= _MAPPED:
            yield Range(b.id, b.start_pfn, 0, state_name(b.state), b.nid, b.zone,
                        vmemmap_area_pages(mm, b, b.start_pfn, need), 0)
