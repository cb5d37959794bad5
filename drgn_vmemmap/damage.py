"""
Dump Damage
-----------

Is a block's memmap, as a dump holds it, struct pages at all?

A capture kernel that onlines hot-plugged memory (Debian kernels are built
with ``MHP_DEFAULT_ONLINE_TYPE_ONLINE_AUTO``; its ACPI finds the crashed
kernel's DIMMs) uses that memory as its own before makedumpfile reads
``/proc/vmcore``: the crashed kernel's memmap there reads as junk
(``flags`` words like 0xddb223869d90eb53).  That is damage to the dump, not
a kernel bug, and no rule may read such memmap.

Every online block's memmap is sampled (one ``struct page`` in
:data:`STRIDE`, from every part of the block) before any rule runs; a
sample is plausible when what the kernel wrote into it at initialisation
(``__init_single_page()``: ``set_page_links()``) still holds:

* the node and zone fields of ``page->flags`` name a zone whose span
  (``zone_start_pfn``, ``spanned_pages`` of that node's ``node_zones``)
  holds the pfn.  The memory block's own record (``nid``, ``zone``) is not
  used: it may be what is corrupted, and that is a rule's finding
  (vmemmap-page-state), not damage to the dump;
* ``page_type`` / ``_mapcount`` is a value the kernel uses: -1 (no type),
  a small mapcount, or a page-type encoding (``PGTY_*`` in the top byte on
  6.12+, a cleared bit under ``PAGE_TYPE_BASE`` before).

Random bytes pass all three about once in several thousand samples; a
struct page written by the kernel always does (poisoned, all-ones memmap is
a kernel finding for the rules, not damage).  A block is damaged when fewer
than :data:`PLAUSIBLE` of its readable samples are plausible.  Live kernels
are not checked (nothing was overwritten), nor are kernels whose flags keep
neither node nor zone.
"""

from typing import Dict, List, NamedTuple, Optional, Set, Tuple

from drgn import FaultError, Program

from .features import Features
from .model import MemoryMap

__all__ = ("DamagedBlock", "STRIDE", "PLAUSIBLE", "CAUSE", "damaged_blocks")

#: Sample one struct page in this many (one per 8 memmap pages with 4 KiB
#: pages and 64-byte struct pages: 64 samples per 128 MiB block).
STRIDE = 512
#: A block whose readable samples are plausible below this fraction is damaged.
PLAUSIBLE = 0.5
#: What to tell the operator.
CAUSE = ("the capture kernel most likely onlined this hot-plugged memory and wrote over "
         "the crashed kernel's memmap before the dump was taken; boot the capture kernel "
         "with acpi_no_memhotplug or memhp_default_state=offline")


class DamagedBlock(NamedTuple):
    block: int
    pfn_start: int
    pfn_end: int
    #: Samples read, and how many of them were not struct pages.
    sampled: int
    implausible: int
    #: One implausible ``flags`` word, to show what was found.
    example_flags: int
    cause: str = CAUSE


def _type_ok(v: int, scheme: str, codes: Set[int]) -> bool:
    """Whether ``v`` is a ``page_type`` / ``_mapcount`` word the kernel writes
    (``codes``: the ``PGTY_*`` top bytes)."""
    if v == 0xFFFFFFFF or v < 0x10000:  # no type; a mapcount
        return True
    if scheme == "pgty":
        return (v >> 24) in codes
    return v >= 0xF0000000  # inverted: a type bit cleared under PAGE_TYPE_BASE


def _zone_spans(
    prog: Program, f: Features
) -> Optional[Dict[Tuple[int, int], Tuple[int, int]]]:
    """``(nid, zone index) -> (first pfn, end pfn)`` of every populated zone."""
    from drgn.helpers.linux.nodemask import for_each_online_node

    spans: Dict[Tuple[int, int], Tuple[int, int]] = {}
    try:
        for nid in for_each_online_node(prog):
            pgdat = prog["node_data"][nid]
            for z in range(len(f.zone_names)):
                zone = pgdat.node_zones[z]
                n = zone.spanned_pages.value_()
                if n:
                    start = zone.zone_start_pfn.value_()
                    spans[(nid, z)] = (start, start + n)
    except (KeyError, LookupError, FaultError):
        return None
    return spans


def damaged_blocks(prog: Program, mm: MemoryMap) -> List[DamagedBlock]:
    """The online blocks whose memmap in the dump is not struct pages."""
    f = mm.features
    if not f.nodes_shift and not f.zones_shift:
        return []
    sp = f.layout.size
    base = f.vmemmap_base
    flags_off = f.layout.flags
    type_off = f.layout.mapcount  # page_type shares the word
    types = f.page_types
    codes = set(types.types.values())
    spans = _zone_spans(prog, f)
    if not spans:
        return []
    out = []
    for b in sorted(mm.blocks.values(), key=lambda b: b.id):
        if b.error or b.state != "MEM_ONLINE":
            continue
        sampled = bad = 0
        example = 0
        for pfn in range(b.start_pfn, b.end_pfn, STRIDE):
            addr = base + pfn * sp
            try:
                raw = prog.read(addr, sp)
            except FaultError:
                continue  # missing from the dump: the scanner reports it
            flags = int.from_bytes(raw[flags_off:flags_off + 8], "little")
            if flags == 0xFFFFFFFFFFFFFFFF:
                continue  # poisoned: the rules' finding
            sampled += 1
            span = spans.get((f.page_node(flags), f.page_zone(flags)))
            ok = span is not None and span[0] <= pfn < span[1]
            v = int.from_bytes(raw[type_off:type_off + 4], "little")
            ok &= _type_ok(v, types.scheme, codes)
            if not ok:
                bad += 1
                example = example or flags
        if sampled and (sampled - bad) < PLAUSIBLE * sampled:
            out.append(DamagedBlock(b.id, b.start_pfn, b.end_pfn, sampled, bad, example))
    return out
