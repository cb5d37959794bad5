"""
Explain
-------

Everything known about one pfn (:func:`explain`): its section, its block,
its struct page and where that lives, and, if the pfn is a vmemmap frame,
whose struct pages it holds.  The CLI's ``explain`` and ``%vmemmap explain``
render it; from Python it is ``drgn_vmemmap.explain_pfn``.
"""

from typing import Any, Dict, List, Optional

from drgn import Program

from .backing import frames_to_described, vmemmap_backing
from .model import memory_map
from .ranges import self_hosted_ranges
from .records import state_name

__all__ = ("explain", "flag_names")


def flag_names(f: Any, flags: int, vmemmap: bool = False) -> List[str]:
    """
    One name per set bit of ``flags``, without the alias noise: enum
    pageflags lists each bit's own name first and its aliases after
    (``PG_checked = PG_owner_priv_1``, ``PG_swapcache``, Xen's ``PG_pinned``,
    ``PG_foreign`` ...), so the first name wins, except that
    ``PG_owner_priv_1`` reads ``PG_vmemmap_self_hosted`` on a page of a
    self-hosted vmemmap area (``vmemmap``).
    """
    first: Dict[int, str] = {}
    for name, bit in f.page_flags.items():
        first.setdefault(bit, name)
    if vmemmap and "PG_vmemmap_self_hosted" in f.page_flags:
        first[f.page_flags["PG_vmemmap_self_hosted"]] = "PG_vmemmap_self_hosted"
    return [first[bit] for bit in sorted(first) if flags >> bit & 1]


def explain(prog: Program, pfn: int, vmemmap_page_type: Optional[int] = None) -> Dict[str, Any]:
    """Everything known about one pfn: its section, block, struct page, and the
    struct pages it holds if it is a vmemmap frame."""
    from . import scan

    mm = memory_map(prog, vmemmap_page_type)
    f = mm.features
    ext = vmemmap_backing(prog, mm)
    ranges = self_hosted_ranges(prog, mm, ext)
    s = mm.section_of(pfn)
    b = mm.block_of(pfn)
    out: Dict[str, Any] = {
        "pfn": pfn,
        "section": None if s is None else {"nr": s.nr, "flags": s.flag_names},
        "block": None if b is None else {"id": b.id, "state": state_name(b.state),
                                         "node": b.nid, "zone": b.zone,
                                         "vmemmap_pages": b.vmemmap_pages},
    }
    inside = [r for r in ranges if r.start_pfn <= pfn < r.area_end_pfn]
    out["self_hosted_range"] = inside[0]._asdict() if inside else None
    # HVO aliases one frame under many struct pages: frames_to_described()
    # knows, a linear computation would not.
    out["holds_struct_pages_of"] = [
        {"first_pfn": start, "count": end - start, "kind": e.kind,
         "aliased": e.aliased}
        for start, end, e in frames_to_described(ext, pfn)[:8]]
    own = [e for e in ext if e.described_start_pfn <= pfn < e.described_end_pfn]
    if own:
        e = own[0]
        frame = None
        if e.pa is not None:
            from .pagetable import translate
            va = f.vmemmap_base + pfn * f.layout.size
            m = translate(prog, va, f.layout.size)
            if m and m[0].pa is not None:
                frame = m[0].pa >> f.page_shift
        out["struct_page"] = {"address": f.vmemmap_base + pfn * f.layout.size,
                              "frame": frame, "backing": e.kind}
    if s is not None and s.has("HAS_MEM_MAP"):
        cols = scan.scan_pfns(prog, pfn, pfn + 1)
        if cols.readable[0]:
            flags = int(cols.flags[0])
            out["page"] = {
                "flags": flags,
                "flag_names": flag_names(f, flags, vmemmap=bool(inside)),
                "page_type": int(cols.page_type[0]),
                "type": scan.type_name(int(cols.page_type[0]), f) or "none",
                "node": int(f.page_node(flags)),
                "zone": (f.zone_names[int(f.page_zone(flags))]
                         if int(f.page_zone(flags)) < len(f.zone_names) else None),
                "refcount": int(cols.refcount[0]),
                "mapping": int(cols.mapping[0]),
            }
        else:
            out["page"] = "missing from the dump"
    return out
