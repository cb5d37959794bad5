"""
HugeTLB pools
-------------

Every pooled HugeTLB folio (:func:`pooled_folios`), from the hstates of
drgn's :func:`~drgn.helpers.linux.hugetlb.for_each_hstate`: its head pfn,
its size in pages and whether HVO optimised its vmemmap
(``HPG_vmemmap_optimized`` in ``folio->private``).  Each pool list (an
hstate's active list, each node's free list) is walked on its own, at most
as far as the hstate counts folios: a list that a filtered dump cuts or that
loops (corruption) loses only itself, and says so.
"""

from typing import List, Set, Tuple

from drgn import FaultError, Program
from drgn.helpers.linux.hugetlb import for_each_hstate
from drgn.helpers.linux.list import list_for_each_entry

from .features import Features

__all__ = ("Folio", "pooled_folios")

#: (head pfn, pages, HPG_vmemmap_optimized)
Folio = Tuple[int, int, bool]


def pooled_folios(prog: Program, f: Features) -> Tuple[List[Folio], List[str]]:
    """The pooled folios, and what could not be walked (and why)."""
    out: List[Folio] = []
    problems: List[str] = []
    try:
        hstates = list(for_each_hstate(prog))
    except (KeyError, LookupError):  # no HugeTLB in this kernel's debug info
        return out, problems
    except FaultError as e:
        return out, [f"HugeTLB pools not readable: {e}"]
    for i, h in enumerate(hstates):
        try:
            nr_pages = 1 << h.order.value_()
            limit = h.nr_huge_pages.value_()
            lists = [("active", h.hugepage_activelist.address_of_())]
            lists += [(f"free list of node {nid}", head.address_of_())
                      for nid, head in enumerate(h.hugepage_freelists)]
        except FaultError as e:
            problems.append(f"hstate {i} not readable: {e}")
            continue
        for what, head in lists:
            seen: Set[int] = set()
            try:
                for page in list_for_each_entry("struct page", head, "lru"):
                    addr = page.value_()
                    if addr in seen or len(seen) >= limit:
                        raise ValueError("loops or holds more folios than the pool "
                                         f"counts ({limit})")
                    seen.add(addr)
                    pfn = (addr - f.vmemmap_base) // f.layout.size
                    optimized = (f.hpg_vmemmap_optimized is not None and bool(
                        page.private.value_() >> f.hpg_vmemmap_optimized & 1))
                    out.append((pfn, nr_pages, optimized))
            except (FaultError, ValueError) as e:
                problems.append(f"hstate {i} {what}: {e} (after {len(seen)} folios)")
    return out, problems
