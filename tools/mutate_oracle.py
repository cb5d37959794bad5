"""
The mutation corpus's oracle (``tools/mutate.py``): which rules of the
catalogue (DESIGN.md) a mutation breaks, decided from the kernel's own
definitions written out independently of the checker (KERNEL-NOTES §10,
§13) on the object before and after; the rules are listed in
``tools/mutate.py``'s documentation.
"""

import sys
from pathlib import Path
from typing import Any, Dict, Optional, Set

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from drgn import FaultError  # noqa: E402
from drgn.helpers.linux.mm import (  # noqa: E402
    decode_memory_block_state_value,
    follow_phys,
)

from tools.mutate_catalogue import PAGE_CLASSES, Mutation  # noqa: E402
from tools.mutate_kernel import _ZONE_ENUM, Folio, Subject  # noqa: E402,F401

_EARLY_SECTION_FLAGS = ("IS_EARLY", "IS_VMEMMAP_PREINIT", "TAINT_ZONE_DEVICE")
_SECTION_MARKERS = ("CANNOT_OPTIMIZE_VMEMMAP", "USE_VMEMMAP")
_ALL_ONES = 0xFFFFFFFFFFFFFFFF


# --- the oracle -----------------------------------------------------------------------


def _section_flags(s: Subject, nr: int) -> Optional[int]:
    sec = s.sections.get(nr)
    return None if sec is None else sec[1] & ((1 << s.k.map_last_bit) - 1)


def _alias_explains(s: Subject, page: Dict[str, int]) -> bool:
    """Whether an alias of ``PG_owner_priv_1`` other than the self-hosted
    marker may be what is set on ``page``, by the aliases' page-flag
    policies (include/linux/page-flags.h, KERNEL-NOTES §13).  Xen's aliases
    leave a warning, so they never explain the bit away here."""
    k = s.k
    if k.tail(page):
        return False  # PF_ANY marker; every alias is head-only or PF_NO_COMPOUND
    flags = page["flags"]
    # PG_swapcache: folio_test_swapcache() = the bit && PG_swapbacked, on the head.
    if k.swap and k.flag(flags, "PG_swapbacked"):
        return True
    # PG_checked: filesystems, on page-cache pages (PF_NO_COMPOUND; the folio
    # API sets it on page 0), whose mapping is an address_space.
    if k.address_space(page["mapping"]) and not k.has_type(page["page_type"]) \
            and not k.slab(page):
        return True
    return False


def _memmap_broken(s: Subject, pfn: int, page: Dict[str, int]) -> Set[str]:
    """memmap-type: ``PGTY_memmap`` on ``pfn``'s page exactly when the clean
    kernel's kpageflags showed it there (the frames holding struct pages),
    on initialised memmap (an online section of an online block, flags not
    poison)."""
    k = s.k
    if k.memmap_type is None or page["flags"] == _ALL_ONES:
        return set()
    sflags = _section_flags(s, pfn // k.pps)
    m = k.section_masks
    if sflags is None or not sflags & m["HAS_MEM_MAP"] or not sflags & m["IS_ONLINE"]:
        return set()
    block = s.blocks.get(pfn // k.ppb)
    if block is not None and block["state"] != "MEM_ONLINE":
        return set()
    if k.type_is(page["page_type"], "memmap") != (pfn in s.memmap_frames):
        return {"memmap-type"}
    return set()


def _page_broken(s: Subject, pfn: int, page: Dict[str, int]) -> Set[str]:
    """The rules whose invariant ``page`` (the struct page of ``pfn``) violates."""
    return _memmap_broken(s, pfn, page) | _marker_page_broken(s, pfn, page)


def _marker_page_broken(s: Subject, pfn: int, page: Dict[str, int]) -> Set[str]:
    """The marker and page-state rules for ``page``, the struct page of ``pfn``."""
    k = s.k
    flags = page["flags"]
    out: Set[str] = set()
    bid = s.self_hosted_block(pfn)
    if bid is not None:
        if bid not in s.online:
            return out  # offline: uninitialised or stale, not checked
        if flags == _ALL_ONES:
            return {"vmemmap-unmarked"}  # poisoned
        if k.marker_bit is not None and not flags >> k.marker_bit & 1:
            out.add("vmemmap-unmarked")
        has_type = k.has_type(page["page_type"])
        is_vmemmap = k.vmemmap_type is not None and k.type_is(page["page_type"], "vmemmap")
        if k.vmemmap_type is not None and not is_vmemmap:
            out.add("vmemmap-unmarked")  # the vmemmap page type is a marker too
        reserved = s.vmemmap_reserved[bid]
        # PGTY_memmap (6.12-memmap) is the type every memmap page has.
        is_memmap = k.memmap_type is not None and k.type_is(page["page_type"], "memmap")
        if ((has_type and not is_vmemmap and not is_memmap) or k.flag(flags, "PG_slab")
                or page["refcount"] != 1 or page["mapping"] != 0
                or k.node(flags) != (s.truth_node[bid] if k.nodes_shift else None)
                or (s.vmemmap_zone[bid] is not None and k.zone(flags) != s.vmemmap_zone[bid])
                or k.tail(page) or k.flag(flags, "PG_head") or k.flag(flags, "PG_lru")
                or (reserved is not None and k.flag(flags, "PG_reserved") != reserved)):
            out.add("vmemmap-page-state")
        return out
    # Outside the self-hosted ranges: marker-stray, on online memory.
    nr = pfn // k.pps
    sflags = _section_flags(s, nr)
    m = k.section_masks
    if sflags is None or not sflags & m["HAS_MEM_MAP"] or not sflags & m["IS_ONLINE"]:
        return out
    block = pfn // k.ppb
    if block in s.blocks and s.blocks[block]["state"] != "MEM_ONLINE":
        return out
    if flags == _ALL_ONES:
        return out
    if k.marker_bit is not None and flags >> k.marker_bit & 1 and not _alias_explains(s, page):
        out.add("marker-stray")
    if k.vmemmap_type is not None and k.type_is(page["page_type"], "vmemmap"):
        out.add("marker-stray")  # the vmemmap page type has no alias
    return out


def _folio_broken(s: Subject, f: Folio, private: int) -> Set[str]:
    """hvo-self-hosted for HugeTLB folio ``f`` whose head's ``private`` is ``private``."""
    k = s.k
    if k.hpg_optimized is None or not private >> k.hpg_optimized & 1:
        return set()
    end = f.head + (1 << f.order)
    for bid in s.self_hosted:
        lo, hi = bid * k.ppb, (bid + 1) * k.ppb
        if lo < end and f.head < hi:
            return {"hvo-self-hosted"}
    try:
        frame = follow_phys(s.init_mm, k.vmemmap + f.head * k.page_bytes).value_() \
            >> k.page_shift
    except FaultError:
        return set()
    if s.self_hosted_block(frame) is not None:
        return {"hvo-self-hosted"}
    return set()


def _pages_broken(s: Subject, m: Mutation, page: Dict[str, int]) -> Set[str]:
    out: Set[str] = set()
    for pfn in m.context["pfns"]:
        out |= _page_broken(s, pfn, page)
        f = s.folios.get(pfn)
        if f is not None:  # a HugeTLB folio's head (or a fake head of it: same bytes)
            out |= _folio_broken(s, f, page["private"])
    return out


def _section_broken(s: Subject, nr: int, word: int) -> Set[str]:
    k = s.k
    m = k.section_masks
    flags = word & ((1 << k.map_last_bit) - 1)
    mem_map = word & ~((1 << k.map_last_bit) - 1)
    present = bool(flags & m["MARKED_PRESENT"])
    has_map = bool(flags & m["HAS_MEM_MAP"])
    bid = nr // k.spb
    block = s.blocks.get(bid)
    out: Set[str] = set()
    if block is not None and block["state"] in ("MEM_ONLINE", "MEM_OFFLINE"):
        if not present or not has_map:
            out.add("section-state")
        elif bool(flags & m["IS_ONLINE"]) != (block["state"] == "MEM_ONLINE"):
            out.add("section-state")
    if present:
        early = any(flags & m[n] for n in _EARLY_SECTION_FLAGS if n in m)
        if block is not None and block["vmemmap_pages"] and early:
            out.add("early-self-hosted")
        if has_map and mem_map != k.vmemmap:
            out.add("block-geometry")
        # Section flags marking a self-hosted memmap (never-merged schemes):
        # set exactly on the sections of self-hosted blocks.
        for name in _SECTION_MARKERS:
            if name in m and bool(flags & m[name]) != (bid in s.self_hosted):
                out.add("section-marker")
    return out


def _block_broken(s: Subject, bid: int, values: Dict[str, Any]) -> Set[str]:
    k = s.k
    out: Set[str] = set()
    if values["start_section_nr"] != bid * k.spb:
        out.add("block-geometry")
    try:
        state = decode_memory_block_state_value(s.prog, values["state"])
    except Exception:  # not a state at all
        state = None
    flags = [_section_flags(s, nr) for nr in range(bid * k.spb, (bid + 1) * k.spb)]
    m = k.section_masks
    if state in ("MEM_ONLINE", "MEM_OFFLINE"):
        for fl in flags:
            if fl is not None and bool(fl & m["IS_ONLINE"]) != (state == "MEM_ONLINE"):
                out.add("section-state")
    if state == "MEM_ONLINE" and bid in s.self_hosted and k.nodes_shift \
            and values["nid"] != s.truth_node[bid]:
        # The block's vmemmap pages carry its true node in their flags.
        out.add("vmemmap-page-state")
    altmap = values.get("altmap")
    recorded = values.get("nr_vmemmap_pages")
    if altmap is not None:
        recorded = altmap["free"]
    early = any(fl is not None and any(fl & m[n] for n in _EARLY_SECTION_FLAGS if n in m)
                for fl in flags)
    if early and recorded:
        out.add("early-self-hosted")
    # A record that claims vmemmap pages where the page tables show none
    # (a block holding optimised HugeTLB folios, say) is altmap-mismatch or
    # early-self-hosted: "a block with vmemmap pages" is decided from the page
    # tables (the manifest's ground truth), which a record does not change.
    if bid in s.hotplugged:
        start, end = bid * k.ppb, (bid + 1) * k.ppb
        lo, hi = s.self_hosted.get(bid, (start, start))
        found = s.frames.get(bid, 0)
        if altmap is None:
            if (recorded or 0) != found:
                out.add("altmap-mismatch")
        elif (altmap["alloc"] != found or altmap["base_pfn"] != start
              or altmap["end_pfn"] != end - 1 or altmap["reserve"] != 0
              or altmap["free"] != hi - lo):  # the area: frames + force padding
            out.add("altmap-mismatch")
    return out


def _block_values(m: Mutation, value: int) -> Dict[str, Any]:
    ctx = m.context
    values: Dict[str, Any] = {"start_section_nr": ctx["start_section_nr"],
                              "state": ctx["state_value"], "nid": ctx["nid"],
                              "nr_vmemmap_pages": ctx["vmemmap_pages"],
                              "altmap": dict(ctx["altmap"]) if ctx["altmap"] else None}
    if m.field.startswith("altmap."):
        values["altmap"][m.field.split(".", 1)[1]] = value
    elif m.field in ("nr_vmemmap_pages", "start_section_nr", "state", "nid"):
        values[m.field] = value
    return values


def broken_rules(s: Subject, m: Mutation) -> Set[str]:
    """The rules whose invariant held before mutation ``m`` and fails after."""
    if m.klass == "dump":  # what the dump fault must cost (tools/mutate_dump.py)
        return {m.context["expect"]}
    if m.klass in PAGE_CLASSES:
        before = dict(m.context["page"])
        after = dict(before)
        after[m.field] = m.new
        return _pages_broken(s, m, after) - _pages_broken(s, m, before)
    if m.klass == "section":
        return _section_broken(s, m.target, m.new) - _section_broken(s, m.target, m.old)
    return (_block_broken(s, m.target, _block_values(m, m.new))
            - _block_broken(s, m.target, _block_values(m, m.old)))
