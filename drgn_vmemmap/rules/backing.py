"""
Rules over the page-table extents that back the memmap: vmemmap-unbacked and
cross-hosted.
"""

from typing import Any, Dict, Iterator, List, Tuple

from ..context import Context
from ..records import Holds, NotChecked, Note, Result
from .common import _v

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
