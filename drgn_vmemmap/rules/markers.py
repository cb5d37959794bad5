"""
Rules about the self-hosted markers: vmemmap-unmarked and marker-stray (the
per-page markers, with ``PG_owner_priv_1``'s alias policy) and section-marker
(the section flags).
"""

from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

from ..context import Context
from ..records import Holds, NotChecked, Result
from ..scan import PageColumns, flag_set, runs
from .common import _NO_RANGES, _not_online, _v, _what


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
