"""
Helpers shared by the rule modules: building a
:class:`~drgn_vmemmap.records.Violation`, and naming the self-hosted ranges
the per-range page-state rules skip or report on.
"""

from typing import Optional

from ..context import Context
from ..records import Range, Violation


def _v(rule: str, start: int, end: int, expected: str, found: str, message: str,
       section: Optional[int] = None, block: Optional[int] = None,
       severity: str = "error") -> Violation:
    return Violation(rule, severity, start, end, section, block, expected, found, message)


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
