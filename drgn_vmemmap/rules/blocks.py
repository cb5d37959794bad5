"""
Rules about memory blocks and their sections: block-geometry, section-state,
early-self-hosted and altmap-mismatch.
"""

from typing import Iterator, List, Optional, Set, Tuple

from drgn import FaultError, Program
from drgn.helpers.linux.mmzone import nr_to_section

from ..context import Context
from ..model import Block
from ..ranges import extent_delta
from ..records import Holds, NotChecked, Note, Result, state_name
from .common import _v

# --- block-geometry ----------------------------------------------------------


def block_geometry(ctx: Context) -> Iterator[Result]:
    rule = "block-geometry"
    mm, f = ctx.mm, ctx.features
    spb = f.sections_per_block
    xa = ctx.xarray_blocks()
    for b in mm.blocks.values():
        if b.error:
            yield NotChecked(rule, f"block {b.id} unreadable: {b.error}", b.start_pfn, b.end_pfn)
            continue
        ok = True
        if b.start_section_nr != b.id * spb:
            ok = False
            yield _v(rule, b.start_pfn, b.end_pfn, f"start_section_nr {b.id * spb}",
                     f"start_section_nr {b.start_section_nr}",
                     f"block {b.id} does not start at its own section",
                     section=b.id * spb, block=b.id)
        if xa is None:
            pass
        elif xa.get(b.id) != b.address:
            ok = False
            found = xa.get(b.id)
            yield _v(rule, b.start_pfn, b.end_pfn, f"memory_blocks[{b.id}] = {b.address:#x}",
                     "absent" if found is None else f"{found:#x}",
                     f"the memory_blocks xarray does not map block {b.id} to its device",
                     block=b.id)
        if ok:
            yield Holds(rule)
    if xa is None:
        yield NotChecked(rule, "memory_blocks xarray not readable")
    for s in mm.sections.values():
        bid = s.nr // spb
        if not s.has("IS_EARLY") and bid not in mm.blocks:
            yield _v(rule, s.start_pfn, s.end_pfn, f"a memory block {bid}", "none",
                     f"hot-plugged section {s.nr} belongs to no memory block",
                     section=s.nr, block=bid)
        if s.has("HAS_MEM_MAP") and s.mem_map != f.vmemmap_base:
            yield _v(rule, s.start_pfn, s.end_pfn, f"mem_map {f.vmemmap_base:#x}",
                     f"mem_map {s.mem_map:#x}",
                     f"section {s.nr}'s encoded mem_map is not the vmemmap base",
                     section=s.nr, block=bid)


# --- section-state -------------------------------------------------------------


def _section_word(prog: Program, nr: int) -> Optional[int]:
    """``mem_section[nr].section_mem_map``: 0 where no root holds it, None
    if the dump lacks it."""
    try:
        ms = nr_to_section(prog, nr)
        return int(ms.section_mem_map.value_()) if ms else 0
    except FaultError:
        return None


def section_state(ctx: Context) -> Iterator[Result]:
    rule = "section-state"
    mm = ctx.mm
    for b in mm.blocks.values():
        if b.error:
            yield NotChecked(rule, f"block {b.id}: {b.error}", b.start_pfn, b.end_pfn)
            continue
        if b.state not in ("MEM_ONLINE", "MEM_OFFLINE"):
            yield NotChecked(rule, f"block {b.id} is {state_name(b.state)} (transient)",
                             b.start_pfn, b.end_pfn)
            continue
        want_online = b.state == "MEM_ONLINE"
        bad = False
        per = ctx.features.pages_per_section
        # A boot block may have holes: add_boot_memory_block() makes a block
        # of any aligned range with one present section (drivers/base/memory.c),
        # e.g. a 2 GiB block (x86, boot RAM ending at >= 64 GiB) over RAM and
        # an E820 hole.  Hot-added ranges are whole blocks: no absent section.
        boot = not mm.is_hotplugged(b.id)
        for nr in range(b.id * ctx.features.sections_per_block,
                        (b.id + 1) * ctx.features.sections_per_block):
            s = mm.sections.get(nr)
            start = nr * per
            found = "absent"
            if s is None and boot:
                # A hole is a mem_section sparse_init() never wrote: all
                # zero.  A word left behind without SECTION_MARKED_PRESENT
                # is a section that lost it.
                word = _section_word(ctx.prog, nr)
                if not word:
                    continue
                found = f"section_mem_map {word:#x}, not marked present"
            if s is None or not s.has("HAS_MEM_MAP"):
                bad = True
                yield _v(rule, start, start + per, "present with a mem_map",
                         found if s is None else "|".join(s.flag_names),
                         f"section {nr} of {state_name(b.state)} block {b.id} has no memmap",
                         section=nr, block=b.id)
                continue
            if s.has("IS_ONLINE") != want_online:
                bad = True
                yield _v(rule, s.start_pfn, s.end_pfn,
                         "SECTION_IS_ONLINE" if want_online else "no SECTION_IS_ONLINE",
                         "|".join(s.flag_names),
                         f"section {nr} disagrees with {state_name(b.state)} block {b.id}",
                         section=nr, block=b.id)
        if not bad:
            yield Holds(rule)


# --- early-self-hosted -----------------------------------------------------------


_EARLY_FLAGS = ("IS_EARLY", "IS_VMEMMAP_PREINIT", "TAINT_ZONE_DEVICE")


def early_self_hosted(ctx: Context) -> Iterator[Result]:
    rule = "early-self-hosted"
    mm = ctx.mm
    if ctx.features.block_accounting == "none":
        yield NotChecked(rule, "this kernel's memory blocks record no vmemmap pages")
        return
    for b in mm.blocks.values():
        if b.error:
            yield NotChecked(rule, f"block {b.id}: {b.error}", b.start_pfn, b.end_pfn)
            continue
        if b.vmemmap_pages is None:
            continue
        tainted = [(s, [n for n in _EARLY_FLAGS if s.has(n)]) for s in mm.block_sections(b)]
        tainted = [(s, names) for s, names in tainted if names]
        if b.vmemmap_pages and tainted:
            s, names = tainted[0]
            yield _v(rule, b.start_pfn, b.start_pfn + b.vmemmap_pages,
                     "no vmemmap pages on a block with early sections",
                     f"{b.vmemmap_pages} vmemmap pages; section {s.nr} is "
                     + "|".join("SECTION_" + n for n in names),
                     f"block {b.id} records vmemmap pages but its memmap was allocated at boot",
                     section=s.nr, block=b.id)
        else:
            yield Holds(rule)


# --- altmap-mismatch -----------------------------------------------------------


def altmap_mismatch(ctx: Context) -> Iterator[Result]:
    rule = "altmap-mismatch"
    mm, f = ctx.mm, ctx.features
    if f.block_accounting == "none":
        yield NotChecked(rule, "this kernel's memory blocks record no vmemmap pages")
        return
    for b in mm.blocks.values():
        if b.error and ctx.is_hotplugged(b):
            yield NotChecked(rule, f"block {b.id}: {b.error}", b.start_pfn, b.end_pfn)
            continue
        if b.error or b.vmemmap_pages is None or not ctx.is_hotplugged(b):
            continue
        if ctx.backing_unreadable(b):
            yield NotChecked(rule, f"page tables of block {b.id}'s memmap missing from the dump",
                             b.start_pfn, b.end_pfn)
            continue
        if any(e.kind == "unbacked" for e in ctx.extents_overlapping(b.start_pfn, b.end_pfn)):
            yield NotChecked(rule, f"block {b.id}'s memmap is not mapped (see vmemmap-unbacked)",
                             b.start_pfn, b.end_pfn)
            continue
        found = ctx.self_hosted_pages(b.id)
        area = ctx.vmemmap_area(b.id)
        a = b.altmap
        problems = []
        if a is None:
            if found:
                problems.append(("no vmemmap pages recorded", f"{found} self-hosted frames"))
        else:
            alloc_ok = a.alloc == found
            if not alloc_ok:
                what = "alloc" if f.block_accounting == "altmap" else "nr_vmemmap_pages"
                problems.append((f"{what} = {found} (frames backing the block's struct pages)",
                                 f"{what} = {a.alloc}"))
            if f.block_accounting == "altmap":
                if a.base_pfn != b.start_pfn:
                    problems.append((f"base_pfn = {b.start_pfn:#x}", f"base_pfn = {a.base_pfn:#x}"))
                if a.end_pfn != b.end_pfn - 1:
                    problems.append((f"end_pfn = {b.end_pfn - 1:#x}", f"end_pfn = {a.end_pfn:#x}"))
                if a.reserve != 0:
                    problems.append(("reserve = 0", f"reserve = {a.reserve}"))
                # free is the reserved area: what population used, padded
                # up to whole pageblocks in force mode (6.6+).
                if f.memmap_on_memory == "force" and f.pageblock_order is None:
                    if a.free < found:
                        problems.append((f"free >= {found} (+ pageblock padding in force mode)",
                                         f"free = {a.free}"))
                elif a.free != area:
                    if area == found:
                        why = ""
                    elif f.memmap_on_memory == "force" and f.pageblock_order is not None:
                        why = (f" ({found} frames padded to pageblocks of "
                               f"{1 << f.pageblock_order} pages: memmap_on_memory=force)")
                    else:  # frames with holes between them (an HVO-style remap)
                        why = f" (the span of the {found} self-hosted frames, holes included)"
                    problems.append((f"free = {area}{why}", f"free = {a.free}"))
        if not problems and f.block_accounting == "altmap" and a is not None and not found \
                and area:
            # An altmap no frame of which backs the block's struct pages: the
            # kernel reused a mapping that was there (see
            # context._reused_mappings); normal, but the area is lost memory.
            yield Note(rule, b.start_pfn, b.start_pfn + area, b.id,
                       f"block {b.id}'s struct pages are mapped by a vmemmap mapping that "
                       f"already existed (vmemmap_populate() keeps a present leaf PMD: ppc64 "
                       f"radix with 64K pages, where one PMD maps the memmap of 2 GiB): its "
                       f"{area} reserved vmemmap pages are marked and unused")
        if a is not None:
            yield from _fallback(ctx, b)
        if problems:
            n = max(found, ctx.vmemmap_area(b.id), a.free if a else 0,
                    a.alloc if a else 0, 1)
            message = f"block {b.id}'s vmemmap record disagrees with the page tables"
            if a is not None and 0 < found < a.alloc:
                message += (f": {a.alloc - found} of the frames it allocated back no struct "
                            "page (remapped away, as HVO does?)")
            yield _v(rule, b.start_pfn, b.start_pfn + n, "; ".join(p[0] for p in problems),
                     "; ".join(p[1] for p in problems), message,
                     section=b.id * f.sections_per_block, block=b.id)
        else:
            yield Holds(rule)


def _fallback(ctx: Context, b: Block) -> Iterator[Result]:
    """
    Struct pages of a block added with an altmap on page-allocator frames of
    their own (not the continuation of a boot mapping, not HVO's aliases):
    what ``radix__vmemmap_pte_populate()`` (ppc64) leaves when the altmap
    cannot give a page and ``vmemmap_alloc_block_buf(..., NULL)`` takes one
    from RAM.  Harmless to the kernel, but the memmap is not where the block's
    record says, and those frames go back with ``vmemmap_free()``, not with
    the block: a warning.  Frames in a movable hot-plugged block or another
    block's vmemmap area are cross-hosted's to report.
    """
    hot = ctx.hotplugged()
    boot = ctx.boot_deltas()
    runs: List[Tuple[int, int, Set[int]]] = []
    for e in ctx.extents_overlapping(b.start_pfn, b.end_pfn):
        if e.kind != "ordinary" or e.aliased or extent_delta(ctx.mm, e) in boot:
            continue
        hb = ctx.mm.blocks.get(e.host_block) if e.host_block is not None else None
        if hot.get(e.host_block or -1, False) and hb is not None and hb.zone == "Movable":
            continue
        assert e.frame_start_pfn is not None  # ordinary: mapped
        on = set(range(e.frame_start_pfn, e.frame_start_pfn + e.nr_frames))
        if runs and runs[-1][1] == e.described_start_pfn:
            runs[-1] = (runs[-1][0], e.described_end_pfn, runs[-1][2] | on)
        else:
            runs.append((e.described_start_pfn, e.described_end_pfn, on))
    for start, end, held in runs:
        frames = len(held)
        yield _v("altmap-mismatch", start, end, "struct pages on the block's altmap frames",
                 f"{frames} page-allocator frame(s)",
                 f"block {b.id} was added with an altmap, yet the struct pages of pfns "
                 f"{start:#x}-{end - 1:#x} are on frames from the page allocator (the "
                 f"architecture's fallback when the altmap gives no page: "
                 f"radix__vmemmap_pte_populate() on ppc64)",
                 section=ctx.section_nr(start), block=b.id, severity="warning")
