"""
The ``PG_memmap`` scheme: memmap-type.

The June 2022 review that led to ``PG_vmemmap_self_hosted`` (on "mm:
memory_hotplug: introduce SECTION_CANNOT_OPTIMIZE_VMEMMAP") ended with the
idea to "eventually, flag all (v)memmap pages with a type PG_memmap".  No
kernel merged it; the fixture kernel ``6.12-memmap``
(``vmcores/patches/6.12-pg-memmap.patch``) implements it as
``PGTY_memmap``.  Where a kernel has it (the enumerator in ``enum
pagetype``), the type must sit on exactly the frames that the page tables
show backing struct pages, whatever allocated them (boot memblock, the page
allocator, a block's altmap, HVO's replacement pages), and on nothing else.
"""

import bisect
from typing import Iterator, List, Optional, Tuple

import numpy as np

from ..context import Context
from ..records import Holds, NotChecked, Result
from ..scan import PageColumns, flag_set, runs
from .common import _v

#: What the frames of an extent kind hold, for messages.
_KIND_WHAT = {
    "self-hosted": "self-hosted memmap (with PG_vmemmap_self_hosted)",
    "boot-allocated": "boot memmap (memblock)",
    "ordinary": "memmap from the page allocator",
    "other-block": "memmap in another block's altmap area",
}

#: Codes for what a page is, in the order they are tested (first wins).
_WHAT = ("compound page", "slab page", "anonymous page", "page-cache page",
         "on an LRU", "reserved page", "free page (refcount 0)", "in use")


class _Frames:
    """The frames backing struct pages (merged intervals), with what the
    first extent on each holds."""

    def __init__(self, ctx: Context) -> None:
        pieces: List[Tuple[int, int, str]] = []
        self.unreadable: List[Tuple[int, int]] = []
        for e in ctx.extents():
            if e.kind == "unreadable":
                self.unreadable.append((e.described_start_pfn, e.described_end_pfn))
            if e.frame_start_pfn is None or e.kind in ("unbacked", "unreadable"):
                continue
            kind = "ordinary" if e.aliased and e.kind != "self-hosted" else e.kind
            what = ("HVO's remapped memmap (replacement page)" if e.aliased
                    else _KIND_WHAT.get(kind, kind))
            pieces.append((e.frame_start_pfn, e.frame_start_pfn + e.nr_frames, what))
        pieces.sort()
        merged: List[Tuple[int, int, str]] = []
        for lo, hi, what in pieces:
            if merged and lo <= merged[-1][1]:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi, merged[-1][2])
            else:
                merged.append((lo, hi, what))
        self.starts = [s for s, _, _ in merged]
        self.merged = merged

    def mask(self, start: int, end: int) -> np.ndarray:
        out = np.zeros(end - start, bool)
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        while i < len(self.merged) and self.merged[i][0] < end:
            s, e, _ = self.merged[i]
            if e > start:
                out[max(s, start) - start:min(e, end) - start] = True
            i += 1
        return out

    def what(self, pfn: int) -> str:
        i = bisect.bisect_right(self.starts, pfn) - 1
        return self.merged[i][2] if i >= 0 and self.merged[i][1] > pfn else "?"


def _what_codes(ctx: Context, cols: PageColumns, page_offset: Optional[int]) -> np.ndarray:
    """Per page, an index into :data:`_WHAT`: what it is, by its struct page
    (the type aside)."""
    f = ctx.features
    n = len(cols.flags)
    tests: List[np.ndarray] = []
    head = f.page_flags.get("PG_head")
    compound = (cols.compound_head & np.uint64(1)).astype(bool)
    if head is not None:
        compound = compound | flag_set(cols, head)
    tests.append(compound)
    slab = f.page_flags.get("PG_slab")  # a page type from 6.8 (then overwritten)
    tests.append(flag_set(cols, slab) if slab is not None else np.zeros(n, bool))
    mapping = cols.mapping
    tests.append((mapping & np.uint64(1)).astype(bool))  # PAGE_MAPPING_ANON
    pointer = (mapping != 0) & ((mapping & np.uint64(3)) == 0)
    if page_offset is not None:
        pointer &= mapping >= np.uint64(page_offset)
    tests.append(pointer)
    lru = f.page_flags.get("PG_lru")
    tests.append(flag_set(cols, lru) if lru is not None else np.zeros(n, bool))
    tests.append(flag_set(cols, f.page_flags["PG_reserved"]))
    tests.append(cols.refcount == 0)
    codes = np.full(n, len(_WHAT) - 1, np.int8)
    for i in range(len(tests) - 1, -1, -1):
        codes[tests[i]] = i
    return codes


def memmap_type(ctx: Context) -> Iterator[Result]:
    """
    ``PGTY_memmap`` on exactly the frames backing struct pages: each frame
    the page tables map the vmemmap to (all kinds, boot included, self-hosted
    ones alongside ``PG_vmemmap_self_hosted``) has it; no other page has it.
    Pages are reported with what they are instead: the frame's other type,
    or a typed page's state (free, slab, page cache, ...).
    """
    rule = "memmap-type"
    f = ctx.features
    if "memmap" not in f.page_types.types:
        yield NotChecked(rule, "scheme absent: this kernel has no PG_memmap page type "
                               "(no PGTY_memmap in enum pagetype)")
        return
    frames = _Frames(ctx)
    page_offset = ctx.page_offset()
    names = sorted(f.page_types.types)

    def check(start: int, end: int, cols: PageColumns
              ) -> List[Tuple[int, int, bool, str]]:
        """(start, end, missing, what they have or are) of each bad run."""
        out: List[Tuple[int, int, bool, str]] = []
        ok = cols.readable & (cols.flags != np.uint64(0xFFFFFFFFFFFFFFFF))
        typed = ctx.type_is(cols, "memmap")
        want = frames.mask(start, end)
        missing = ok & want & ~typed
        if missing.any():
            rest = missing.copy()  # not yet said what they have
            for name in names:
                if name == "memmap":
                    continue
                has = rest & ctx.type_is(cols, name)
                out += [(s, e, True, f"page type {name}") for s, e in runs(has, start)]
                rest &= ~has
            untyped = rest & ~ctx.has_type(cols)
            out += [(s, e, True, "no page type") for s, e in runs(untyped, start)]
            out += [(s, e, True, "an unknown page type")
                    for s, e in runs(rest & ~untyped, start)]
        stray = ok & typed & ~want
        if stray.any():
            codes = _what_codes(ctx, cols, page_offset)
            for c, what in enumerate(_WHAT):
                out += [(s, e, False, what) for s, e in runs(stray & (codes == c), start)]
        return out

    bad = 0
    for start, end, found, skip in ctx.map_all(check):
        if skip:
            yield NotChecked(rule, skip, start, end)
            continue
        assert found is not None
        for s, e, missing, what in sorted(found):
            if not missing and frames.unreadable:
                continue  # judged below: NotChecked
            bad += 1
            if missing:
                holds = frames.what(s)
                yield _v(rule, s, e, "PGTY_memmap", what,
                         f"frames holding {holds} lack PGTY_memmap",
                         section=ctx.section_nr(s), block=ctx.block_id(s))
            else:
                yield _v(rule, s, e, "no PGTY_memmap (backs no struct pages)",
                         f"PGTY_memmap on a {what}" if what != "in use"
                         else "PGTY_memmap on a page in use",
                         "PGTY_memmap on pages that the page tables map no vmemmap to",
                         section=ctx.section_nr(s), block=ctx.block_id(s))
    if frames.unreadable:
        # Without those page tables the frames behind that memmap are
        # unknown: a typed page may be one of them.
        for s, e in frames.unreadable:
            yield NotChecked(rule, "page tables of this memmap missing from the dump: "
                                   "typed pages elsewhere not judged", s, e)
    if not bad:
        yield Holds(rule)

