"""
Rules about the state of struct pages: vmemmap-page-state (the struct pages
of self-hosted memmap) and hvo-self-hosted (HugeTLB folios against
self-hosted memmap).
"""

from typing import Any, Callable, Iterator, List, Tuple

import numpy as np
import numpy.typing as npt

from ..context import Context
from ..records import Holds, NotChecked, Result
from ..scan import PageColumns, flag_set, runs
from .common import _NO_RANGES, _not_online, _v, _what

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
    # Kernels with the PG_memmap scheme (memmap-type) give every memmap page
    # PGTY_memmap, self-hosted ones included.
    allowed = [t for t in ("vmemmap", "memmap") if t in f.page_types.types
               and (t == "memmap" or vmemmap_type)]
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

        # The schemes' own page types are the expected ones: their absence is
        # vmemmap-unmarked's (PGTY_vmemmap) or memmap-type's (PGTY_memmap) to
        # report, any other type is ours.
        other_type = ctx.has_type(cols)
        for t in allowed:
            other_type &= ~ctx.type_is(cols, t)
        type_check: _Check = (
            "no page type" + (" but " + " or ".join(allowed) if allowed else ""),
            other_type, type_found)
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
    # Blocks whose own frames back struct pages: HVO looks at the frame behind
    # a folio's struct pages (vmemmap_should_optimize_folio()), so a block
    # that reused an existing mapping (no frame of its own) is no obstacle.
    hosted = {b: r for b, r in ctx.self_hosted_by_block().items() if r.frames}
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
