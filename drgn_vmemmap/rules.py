"""
Rules
-----

The invariants of DESIGN.md's rule catalogue, each a small generator over a
:class:`~drgn_vmemmap.context.Context` that yields
:class:`~drgn_vmemmap.records.Violation`,
:class:`~drgn_vmemmap.records.NotChecked` or :class:`~drgn_vmemmap.records.Holds`
records.  Every
rule on every range ends as one of the three.
"""

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

from .context import Context
from .records import Holds, NotChecked, Note, Range, Result, Violation, state_name
from .scan import PageColumns, flag_set, runs

__all__ = ("Holds", "RULES", "Result")


def _v(rule: str, start: int, end: int, expected: str, found: str, message: str,
       section: Optional[int] = None, block: Optional[int] = None,
       severity: str = "error") -> Violation:
    return Violation(rule, severity, start, end, section, block, expected, found, message)


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
            if s is None and boot:
                continue
            if s is None or not s.has("HAS_MEM_MAP"):
                bad = True
                yield _v(rule, start, start + per, "present with a mem_map",
                         "absent" if s is None else "|".join(s.flag_names),
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
                area = ctx.vmemmap_area(b.id)
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


# --- vmemmap-unbacked / cross-hosted (page-table extents) ----------------------


def vmemmap_unbacked(ctx: Context) -> Iterator[Result]:
    rule = "vmemmap-unbacked"
    bad = 0
    for e in ctx.extents():
        if e.kind == "unbacked":
            bad += 1
            yield _v(rule, e.described_start_pfn, e.described_end_pfn, "struct pages mapped",
                     "no page-table entry",
                     "struct pages of present pfns are not mapped by the kernel page tables",
                     section=ctx.section_nr(e.described_start_pfn),
                     block=ctx.block_id(e.described_start_pfn))
        elif e.kind == "unreadable":
            yield NotChecked(rule, "page tables missing from the dump",
                             e.described_start_pfn, e.described_end_pfn)
    if not bad:
        yield Holds(rule)


def cross_hosted(ctx: Context) -> Iterator[Result]:
    """
    Whose frames hold each memmap, by what that breaks:

    * another block's altmap area (its self-hosted vmemmap, or the pages it
      reserved for it): the kernel never does this, and removing either
      block corrupts the other's struct pages (error);
    * ordinary frames of another hot-pluggable block in ZONE_MOVABLE: the
      page allocator never hands those out for memmap (GFP_KERNEL), and
      unmovable memmap there makes the block impossible to offline (warning);
    * ordinary frames of another hot-pluggable block in a kernel zone: what
      memmap_on_memory=0, virtio-mem and HVO's replacement pages do all the
      time, and normal; a note says which block cannot be unplugged first.
    """
    rule = "cross-hosted"
    bad = 0
    hot = ctx.hotplugged()
    # (owner block, host block, aliased) -> [pfn_start, pfn_end, {host frames}]
    shared: Dict[Tuple[int, int, bool], List[Any]] = {}
    for e in ctx.extents():
        if e.kind in ("unbacked", "unreadable", "self-hosted"):
            continue
        owner = ctx.block_id(e.described_start_pfn)
        # The other kinds are mapped: they have frames and a host block.
        assert e.host_block is not None and e.frame_start_pfn is not None
        host = e.host_block
        fstart, fend = e.frame_start_pfn, e.frame_start_pfn + e.nr_frames
        inside = next((r for r in ctx.ranges_overlapping(fstart, fend) if r.block != owner),
                      None)
        if inside is not None or e.kind == "other-block":
            bad += 1
            area = inside.block if inside is not None else host
            yield _v(rule, e.described_start_pfn, e.described_end_pfn,
                     "struct pages backed outside other blocks' vmemmap areas",
                     f"frames {fstart:#x}-{fend - 1:#x} inside block {area}'s vmemmap area",
                     f"block {owner}'s memmap is hosted by block {area}'s self-hosted pages",
                     section=ctx.section_nr(e.described_start_pfn), block=owner)
            continue
        if host == owner or not hot.get(host, False):
            continue
        hb = ctx.mm.blocks.get(host)
        if hb is not None and hb.zone == "Movable":
            bad += 1
            yield _v(rule, e.described_start_pfn, e.described_end_pfn,
                     "memmap not in ZONE_MOVABLE",
                     f"frames {fstart:#x}-{fend - 1:#x} in movable block {host}",
                     f"block {owner}'s memmap lives in ZONE_MOVABLE block {host}: the kernel "
                     f"allocates memmap GFP_KERNEL, and unmovable memmap there keeps block "
                     f"{host} from going offline", section=ctx.section_nr(e.described_start_pfn),
                     block=owner, severity="warning")
            continue
        # HVO's replacement vmemmap pages (aliased) apart from the memmap
        # the block was added with: they go away with their folios.
        acc = shared.setdefault((owner, host, e.aliased),
                                [e.described_start_pfn, e.described_end_pfn, set()])
        acc[0] = min(acc[0], e.described_start_pfn)
        acc[1] = max(acc[1], e.described_end_pfn)
        acc[2].update(range(fstart, fend))
    for (owner, host, aliased), (start, end, frames) in sorted(shared.items()):
        hb = ctx.mm.blocks.get(host)
        zone = f" ({hb.zone})" if hb is not None and hb.zone else ""
        what = (f"HVO's replacement vmemmap pages for HugeTLB folios of block {owner}"
                if aliased else f"the memmap of block {owner}")
        until = (f"while block {owner} keeps those folios" if aliased
                 else f"while block {owner} is present")
        yield Note(rule, start, end, owner,
                   f"{len(frames)} ordinary frame(s) of hot-pluggable block {host}{zone} hold "
                   f"{what} (pfns {start:#x}-{end - 1:#x}): block {host} cannot be unplugged "
                   + until)
    if not bad:
        yield Holds(rule)


# --- page-state rules over scanned struct pages ----------------------------------


def _marker_masks(ctx: Context, cols: PageColumns) -> Dict[str, np.ndarray]:
    """Per self-hosted marker the kernel has: which pages carry it."""
    f = ctx.features
    out = {}
    if "PG_vmemmap_self_hosted" in f.markers:
        bit = f.page_flags["PG_vmemmap_self_hosted"]
        out["PG_vmemmap_self_hosted"] = ((cols.flags >> np.uint64(bit)) & np.uint64(1)).astype(bool)
    for name in ("PGTY_vmemmap", "PG_vmemmap"):
        if name in f.markers:
            out[name] = ctx.type_is(cols, "vmemmap")
    return out


def _what(r: Range, pfn: int) -> str:
    """How to name the pages of a block's vmemmap area from ``pfn`` on: its
    self-hosted frames, or the pageblock padding memmap_on_memory=force
    reserves (and marks) after them."""
    if pfn >= r.start_pfn + r.nr_pages:
        return "memmap_on_memory=force padding pages"
    return "self-hosted vmemmap pages"


#: Why the per-range rules decide nothing on a kernel with no self-hosted block.
_NO_RANGES = ("no self-hosted vmemmap: no block hosts its own memmap (memmap_on_memory "
              "off, or no block was added with it)")


def _not_online(ctx: Context, r: Range) -> str:
    """Why the struct pages of range ``r``'s block are not checked."""
    b = ctx.mm.blocks.get(r.block)
    if b is not None and b.error:
        return f"block {r.block}: {b.error}"
    return f"block {r.block} is {r.state}: its memmap is uninitialised"


def vmemmap_unmarked(ctx: Context) -> Iterator[Result]:
    rule = "vmemmap-unmarked"
    page_markers = [m for m in ctx.features.markers if not m.startswith("SECTION_")]
    if not page_markers:
        yield NotChecked(rule, "scheme absent: this kernel has no per-page self-hosted marker")
        return
    if not ctx.self_hosted_by_block():
        yield NotChecked(rule, _NO_RANGES)
    for r in ctx.self_hosted_by_block().values():
        start, end = r.start_pfn, r.area_end_pfn
        if r.state != "online":
            yield NotChecked(rule, _not_online(ctx, r), start, end)
            continue
        if r.block in ctx.damaged_ids:
            yield NotChecked(rule, ctx.damage_reason(r.block), start, end)
            continue
        cols = ctx.scan(start, end)
        readable = cols.readable
        if not readable.all():
            yield NotChecked(rule, "struct pages missing from the dump", start, end)
        poisoned = cols.flags == np.uint64(0xFFFFFFFFFFFFFFFF)
        bad_any = False
        for name, has in _marker_masks(ctx, cols).items():
            for s, e in runs(readable & ~has, start):
                bad_any = True
                yield _v(rule, s, e, name, "clear",
                         f"{_what(r, s)} of block {r.block} lack {name}",
                         section=ctx.section_nr(s), block=r.block)
        for s, e in runs(readable & poisoned, start):
            bad_any = True
            yield _v(rule, s, e, "initialised struct pages", "poisoned (all ones)",
                     f"{_what(r, s)} of online block {r.block} are poisoned",
                     section=ctx.section_nr(s), block=r.block)
        if not bad_any and readable.any():
            yield Holds(rule)


#: A vmemmap-page-state check: what is expected, the pages that break it, and
#: what one of those pages (by index in the scan) has instead.
_Check = Tuple[str, np.ndarray, Callable[[int], str]]


def vmemmap_page_state(ctx: Context) -> Iterator[Result]:
    rule = "vmemmap-page-state"
    f = ctx.features
    reserved_bit = np.uint64(f.page_flags["PG_reserved"])
    lru_bit = f.page_flags.get("PG_lru")
    head_bit = f.page_flags.get("PG_head")
    # Kernels patched with a vmemmap page type (the 2019 "Allocate memmap from
    # hotadded memory" series' PG_vmemmap, PGTY_vmemmap on 6.12+ encodings)
    # give vmemmap pages that type and PG_reserved together, whatever the
    # release does for hot-plugged memmap otherwise.
    vmemmap_type = any(m in f.markers for m in ("PGTY_vmemmap", "PG_vmemmap"))
    if not ctx.self_hosted_by_block():
        yield NotChecked(rule, _NO_RANGES)
    for r in ctx.self_hosted_by_block().values():
        start, end = r.start_pfn, r.area_end_pfn
        if r.state != "online":
            yield NotChecked(rule, _not_online(ctx, r), start, end)
            continue
        if r.block in ctx.damaged_ids:
            yield NotChecked(rule, ctx.damage_reason(r.block), start, end)
            continue
        cols = ctx.scan(start, end)
        ok = cols.readable & (cols.flags != np.uint64(0xFFFFFFFFFFFFFFFF))
        reserved = ((cols.flags >> reserved_bit) & np.uint64(1)).astype(bool)

        def type_found(i: int, c: PageColumns = cols) -> str:
            name = ctx.type_name(c, i)
            assert name is not None  # asked only of pages that have a type
            return name

        def refcount_found(i: int, c: PageColumns = cols) -> str:
            return f"refcount {int(c.refcount[i])}"

        def mapping_found(i: int, c: PageColumns = cols) -> str:
            return f"mapping {int(c.mapping[i]):#x}"

        type_check: _Check
        if vmemmap_type:
            # The vmemmap page type is the expected one; its absence is
            # vmemmap-unmarked's to report, any other type is ours.
            type_check = ("no page type but vmemmap",
                          ctx.has_type(cols) & ~ctx.type_is(cols, "vmemmap"), type_found)
        else:
            type_check = ("no page type", ctx.has_type(cols), type_found)
        checks: List[_Check] = [
            type_check,
            ("refcount 1", cols.refcount != 1, refcount_found),
            ("no mapping", cols.mapping != 0, mapping_found),
            ("not a compound page", (cols.compound_head & np.uint64(1)).astype(bool)
             | (((cols.flags >> np.uint64(head_bit)) & np.uint64(1)).astype(bool)
                if head_bit is not None else False),
             lambda i: "compound"),
        ]
        slab_bit = f.page_flags.get("PG_slab")  # a page flag before 6.8, a type after
        if slab_bit is not None:
            checks.append(("not a slab page", flag_set(cols, slab_bit), lambda i: "PG_slab"))
        if lru_bit is not None:
            checks.append(("not on an LRU", ((cols.flags >> np.uint64(lru_bit)) & np.uint64(1))
                           .astype(bool), lambda i: "PG_lru"))
        b = ctx.mm.blocks.get(r.block)
        if b is not None and b.nid is not None and f.nodes_shift:
            node = f.page_node(cols.flags)

            def node_found(i: int, node: npt.NDArray[np.integer[Any]] = node) -> str:
                return f"node {int(node[i])}"

            # nid is an int (NUMA_NO_NODE is -1): compare signed.
            checks.append((f"node {b.nid}", node.astype(np.int64) != b.nid, node_found))
        if b is not None and b.zone in f.zone_names and f.zones_shift:
            zone = f.page_zone(cols.flags)
            want = f.zone_names.index(b.zone)

            def zone_found(i: int, zone: npt.NDArray[np.integer[Any]] = zone) -> str:
                return "zone " + (f.zone_names[int(zone[i])] if int(zone[i]) < len(f.zone_names)
                                  else str(int(zone[i])))

            checks.append((f"zone {b.zone}", zone != np.uint64(want), zone_found))
        if vmemmap_type:
            checks.append(("PG_reserved (set with the vmemmap page type)", ~reserved,
                           lambda i: "PG_reserved clear"))
        elif f.vmemmap_reserved:
            checks.append(("PG_reserved", ~reserved, lambda i: "PG_reserved clear"))
        else:
            checks.append(("PG_reserved clear (hotplugged memmap is initialised PageOffline "
                           "since 6.11)", reserved, lambda i: "PG_reserved"))
        bad_any = False
        for expected, bad, describe in checks:
            for s, e in runs(ok & bad, start):
                bad_any = True
                yield _v(rule, s, e, expected, describe(s - start),
                         f"{_what(r, s)} of block {r.block} in the wrong state",
                         section=ctx.section_nr(s), block=r.block)
        if not bad_any and ok.any():
            yield Holds(rule)


def _bit(cols: PageColumns, bit: Optional[int]) -> npt.NDArray[np.bool_]:
    """:func:`scan.flag_set`, all clear for a flag this kernel lacks."""
    return np.zeros(len(cols.flags), bool) if bit is None else flag_set(cols, bit)


def _tail(cols: PageColumns) -> npt.NDArray[np.bool_]:
    """Compound tail pages: bit 0 of ``compound_head`` (``compound_info``
    from 7.1) is set on every tail, HVO's shared tails included."""
    return (cols.compound_head & np.uint64(1)).astype(bool)


def _compound(cols: PageColumns, head_bit: Optional[int]) -> npt.NDArray[np.bool_]:
    return _tail(cols) | _bit(cols, head_bit)


def _owner_priv_alias(cols: PageColumns, swapbacked: Optional[int], head_bit: Optional[int],
                      slab_bit: Optional[int], page_offset: Optional[int],
                      typed: np.ndarray) -> np.ndarray:
    """
    Pages on which ``PG_owner_priv_1`` may be another alias than
    ``PG_vmemmap_self_hosted``, by each alias's page-flag policy in
    include/linux/page-flags.h (the same from 5.13 to 7.2; KERNEL-NOTES §13):

    * ``PG_swapcache`` (``PF_NO_TAIL`` / ``FOLIO_HEAD_PAGE``, and only with
      ``PG_swapbacked``): a head or small page that is swap-backed, on a
      kernel that has swap (the caller passes ``swapbacked=None`` otherwise);
    * ``PG_checked`` (``PF_NO_COMPOUND``; the folio API sets it on page 0):
      a head or small page-cache page, whose ``mapping`` is an
      ``address_space`` pointer: a kernel address (at or above PAGE_OFFSET,
      so never a poison such as ``TAIL_MAPPING``) with the low two bits
      clear, on a page without a page type and not a slab page (whose
      ``mapping`` slot is ``slab_cache`` or ``slab_list``);
    * Xen's ``PG_pinned`` / ``PG_foreign`` / ``PG_xen_remapped``
      (``PF_NO_COMPOUND``): page tables, reported as a warning by the caller.

    ``PG_vmemmap_self_hosted`` is ``PF_ANY``: on a compound tail page none of
    the aliases can be set, so the bit there is always the marker.
    """
    not_tail = ~_tail(cols)
    alias = np.zeros(len(cols.flags), bool)
    if swapbacked is not None:
        alias |= not_tail & _bit(cols, swapbacked)
    mapping = cols.mapping
    pointer = (mapping != 0) & ((mapping & np.uint64(3)) == 0)
    if page_offset is not None:
        pointer &= mapping >= np.uint64(page_offset)
    alias |= not_tail & pointer & ~typed & ~_bit(cols, slab_bit)
    return alias


def marker_stray(ctx: Context) -> Iterator[Result]:
    """A self-hosted marker outside the self-hosted ranges."""
    rule = "marker-stray"
    f = ctx.features
    if "PG_vmemmap_self_hosted" not in f.markers and not any(
            m in f.markers for m in ("PGTY_vmemmap", "PG_vmemmap")):
        yield NotChecked(rule, "scheme absent: this kernel has no per-page self-hosted marker")
        return
    # PG_swapcache needs swap: on a kernel without it, or that never had a
    # swap area, the bit is never that alias.
    swapbacked = f.page_flags.get("PG_swapbacked") if ctx.swap_possible() else None
    head_bit = f.page_flags.get("PG_head")
    slab_bit = f.page_flags.get("PG_slab")  # a flag before 6.8, a page type after
    page_offset = ctx.page_offset()
    inside = ctx.self_hosted_mask_fn()

    def stray_runs(start: int, end: int, cols: PageColumns) -> List[Tuple[int, int, str, bool]]:
        """(start, end, marker, maybe Xen's PG_pinned) of each stray run;
        runs in a worker process on large dumps (Context.map_all)."""
        out: List[Tuple[int, int, str, bool]] = []
        readable = cols.readable & (cols.flags != np.uint64(0xFFFFFFFFFFFFFFFF))
        for name, has in _marker_masks(ctx, cols).items():
            stray = readable & has & ~inside(start, end)
            if not stray.any():
                continue
            if name == "PG_vmemmap_self_hosted":
                stray &= ~_owner_priv_alias(cols, swapbacked, head_bit, slab_bit, page_offset,
                                            ctx.has_type(cols))
                # Xen's PG_pinned marks page tables, which are never
                # compound: a warning, not an error.
                maybe = stray & ctx.type_is(cols, "table") & ~_compound(cols, head_bit)
            else:
                maybe = np.zeros_like(stray)
            out += [(s, e, name, False) for s, e in runs(stray & ~maybe, start)]
            out += [(s, e, name, True) for s, e in runs(maybe, start)]
        return out

    bad = 0
    for start, end, found, skip_reason in ctx.map_all(stray_runs):
        if skip_reason:
            yield NotChecked(rule, skip_reason, start, end)
            continue
        assert found is not None  # stray_runs' list, for a span scanned
        for s, e, name, maybe in found:
            bad += 1
            if maybe:
                yield _v(rule, s, e, f"no {name} outside self-hosted ranges",
                         f"{name} on page-table pages (Xen PG_pinned alias?)",
                         f"{name} set on page-table pages: may be Xen's PG_pinned",
                         section=ctx.section_nr(s), block=ctx.block_id(s), severity="warning")
            else:
                yield _v(rule, s, e, f"no {name} outside self-hosted ranges", name,
                         f"{name} set on pages that do not hold self-hosted memmap",
                         section=ctx.section_nr(s), block=ctx.block_id(s))
    if not bad:
        yield Holds(rule)


def section_marker(ctx: Context) -> Iterator[Result]:
    """
    Section flags that mark a self-hosted memmap, from proposals never merged:
    ``SECTION_CANNOT_OPTIMIZE_VMEMMAP`` (Muchun Song, 2022), set by
    ``sparse_add_section()`` on every non-early section added with an altmap,
    and ``SECTION_USE_VMEMMAP`` (Oscar Salvador's 2019 "Allocate memmap from
    hotadded memory"), set on every section of a range added with an altmap.
    Both flag exactly the sections of self-hosted blocks (as the page tables
    show them), online or not; boot sections never.
    """
    rule = "section-marker"
    names = [m for m in ctx.features.markers if m.startswith("SECTION_")]
    if not names:
        yield NotChecked(rule, "scheme absent: this kernel has no self-hosted section flag")
        return
    hosted = ctx.self_hosted_by_block()
    spb = ctx.features.sections_per_block
    unknown = set()
    for b in ctx.mm.blocks.values():
        if not b.error and ctx.backing_unreadable(b):
            # Without its page tables a block's self-hosting is unknown.
            unknown.add(b.id)
            yield NotChecked(rule, f"page tables of block {b.id}'s memmap missing from the dump",
                             b.start_pfn, b.end_pfn)
    for name in names:
        flag = name[len("SECTION_"):]
        bad = 0
        for s in ctx.mm.sections.values():
            bid = s.nr // spb
            if bid in unknown:
                continue
            want = bid in hosted
            if s.has(flag) != want:
                bad += 1
                yield _v(rule, s.start_pfn, s.end_pfn, name if want else f"no {name}",
                         "|".join(s.flag_names),
                         f"section {s.nr}'s {name} disagrees with the page tables "
                         f"(block {bid} is {'self-hosted' if want else 'not self-hosted'})",
                         section=s.nr, block=bid)
        if not bad:
            yield Holds(rule)


def hvo_self_hosted(ctx: Context) -> Iterator[Result]:
    """
    HugeTLB vmemmap optimisation must leave self-hosted memmap alone (the
    reason the markers exist): no folio in a self-hosted block, or whose
    struct pages sit on self-hosted frames, may be optimised, whether the
    kernel says so (``HPG_vmemmap_optimized``) or the page tables show it
    (the folio's vmemmap pages aliased onto one frame).
    """
    rule = "hvo-self-hosted"
    f = ctx.features
    if f.hpg_vmemmap_optimized is None:
        yield NotChecked(rule, "scheme absent: no HugeTLB vmemmap optimisation in this kernel")
        return
    folios = ctx.hugetlb_folios()
    for problem in ctx.hugetlb_problems:
        # The folios of a pool list that could not be walked (a page the
        # dump lacks, a corrupted link): the others are still checked.
        yield NotChecked(rule, problem)
    hosted = ctx.self_hosted_by_block()
    exclusive = "PG_vmemmap_self_hosted" not in f.markers
    bad = 0
    for pfn, nr_pages, optimized in folios:
        if ctx.block_id(pfn) in ctx.damaged_ids:
            continue  # its struct pages are junk in this dump (not checked there)
        remapped = any(e.aliased for e in ctx.extents_overlapping(pfn, pfn + nr_pages))
        if not optimized and not remapped:
            continue
        bid = ctx.block_id(pfn)
        backing_hosted = ctx.struct_pages_self_hosted(pfn, pfn + nr_pages)
        in_hosted_block = bid in hosted
        if in_hosted_block or backing_hosted or (exclusive and hosted):
            bad += 1
            why = (f"block {bid} has self-hosted vmemmap" if in_hosted_block else
                   "its struct pages are backed by self-hosted frames" if backing_hosted else
                   "HVO and memmap_on_memory are exclusive on this kernel")
            found = ("HPG_vmemmap_optimized, vmemmap remapped" if optimized and remapped else
                     "HPG_vmemmap_optimized (vmemmap not remapped)" if optimized else
                     "vmemmap remapped (aliased frames) without HPG_vmemmap_optimized")
            yield _v(rule, pfn, pfn + nr_pages, "not vmemmap-optimised", found,
                     f"HugeTLB folio at {pfn:#x} is vmemmap-optimised but {why}: HVO frees "
                     "or remaps memmap pages the block's altmap owns, and offlining or "
                     "removing the block frees pages still in use as memmap",
                     section=ctx.section_nr(pfn), block=bid)
    if not bad:
        yield Holds(rule)


RULES: Dict[str, Callable[..., Iterator[Result]]] = {
    "block-geometry": block_geometry,
    "section-state": section_state,
    "early-self-hosted": early_self_hosted,
    "altmap-mismatch": altmap_mismatch,
    "vmemmap-unbacked": vmemmap_unbacked,
    "cross-hosted": cross_hosted,
    "vmemmap-unmarked": vmemmap_unmarked,
    "marker-stray": marker_stray,
    "vmemmap-page-state": vmemmap_page_state,
    "section-marker": section_marker,
    "hvo-self-hosted": hvo_self_hosted,
}
