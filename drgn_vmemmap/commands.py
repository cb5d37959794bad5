"""
Commands
--------

The subcommands shared by the CLI and the ``%vmemmap`` drgn command: each
returns ``(json-able data, table text)``.
"""

from typing import Any, Callable, List, Optional, TextIO, Tuple

from drgn import Program
from tabulate import tabulate

from .backing import vmemmap_backing
from .check import check, self_hosted_ranges
from .errors import UsageError
from .explain import explain as explain_pfn
from .features import features
from .model import memory_map
from .progress import ProgressBar
from .records import state_name
from .report import Report

__all__ = ("cmd_blocks", "cmd_explain", "cmd_features", "cmd_ranges", "cmd_sections",
           "progress_bar", "run_check")


def progress_bar(stream: Optional[TextIO] = None) -> Callable[[int, int], None]:
    """A progress callback that redraws one stderr line at most 10 times a second."""
    return ProgressBar("scanning struct pages", "pages", stream, rate=True)


def run_check(prog: Program, rules: Optional[List[str]] = None,
              vmemmap_page_type: Optional[int] = None,
              progress: Optional[Callable[[int, int], None]] = None,
              jobs: Optional[int] = None) -> Report:
    from .rules import RULES

    for r in rules or ():
        if r not in RULES:
            raise UsageError(f"unknown rule {r!r}; known: {', '.join(RULES)}")
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be 1 or more, not {jobs}")
    return check(prog, rules, vmemmap_page_type, progress, jobs)


def cmd_ranges(prog: Program, args: Any) -> Tuple[Any, str]:
    mm = memory_map(prog, getattr(args, "vmemmap_page_type", None))
    ranges = self_hosted_ranges(prog, mm, vmemmap_backing(prog, mm))
    data = [r._asdict() for r in ranges]
    if not ranges:
        return data, "no self-hosted vmemmap ranges"
    rows = [[r.block, r.state, r.node, r.zone or "-", f"{r.start_pfn:#x}",
             f"{r.area_end_pfn - 1:#x}", r.nr_pages] for r in ranges]
    headers = ["block", "state", "node", "zone", "first pfn", "last pfn", "pages"]
    if any(r.reserved_pages != r.frames for r in ranges):
        # The vmemmap area holds more than the frames: memmap_on_memory=force
        # padding, or frames remapped away inside the range.
        for row, r in zip(rows, ranges):
            row[-1] = f"{r.frames} of {r.reserved_pages}"
        headers[-1] = "frames of area"
    return data, tabulate(rows, headers=headers)


def cmd_blocks(prog: Program, args: Any) -> Tuple[Any, str]:
    mm = memory_map(prog, getattr(args, "vmemmap_page_type", None))
    data = []
    rows = []
    for b in sorted(mm.blocks.values(), key=lambda b: b.id):
        early = not mm.is_hotplugged(b.id)
        d = {"block": b.id, "state": state_name(b.state), "node": b.nid, "zone": b.zone,
             "start_pfn": b.start_pfn, "nr_pages": b.nr_pages, "boot": early,
             "vmemmap_pages": b.vmemmap_pages,
             "altmap": b.altmap._asdict() if b.altmap else None, "error": b.error}
        data.append(d)
        a = b.altmap
        rows.append([b.id, d["state"], b.nid, b.zone or "-", f"{b.start_pfn:#x}",
                     "boot" if early else "hotplug", b.vmemmap_pages,
                     f"free={a.free} alloc={a.alloc}" if a else "-", b.error or ""])
    return data, tabulate(rows, headers=["block", "state", "node", "zone", "first pfn",
                                         "memmap", "vmemmap pages", "altmap", "error"])


def cmd_sections(prog: Program, args: Any) -> Tuple[Any, str]:
    mm = memory_map(prog, getattr(args, "vmemmap_page_type", None))
    data = [{"section": s.nr, "start_pfn": s.start_pfn, "nr_pages": s.nr_pages,
             "flags": s.flag_names, "mem_map": s.mem_map,
             "block": s.nr // mm.features.sections_per_block} for s in mm.sections.values()]
    rows = [[s.nr, f"{s.start_pfn:#x}", s.nr // mm.features.sections_per_block,
             f"{s.mem_map:#x}", "|".join(s.flag_names)] for s in mm.sections.values()]
    return data, tabulate(rows, headers=["section", "first pfn", "block", "mem_map", "flags"])


def cmd_features(prog: Program, args: Any) -> Tuple[Any, str]:
    f = features(prog, getattr(args, "vmemmap_page_type", None))
    d = {
        "markers": f.markers, "page_type_scheme": f.page_types.scheme,
        "page_type_source": f.page_types.source, "page_types": f.page_types.types,
        "block_accounting": f.block_accounting, "vmemmap_reserved": f.vmemmap_reserved,
        "memmap_on_memory": f.memmap_on_memory, "struct_page_size": f.layout.size,
        "page_flags": {k: v for k, v in f.page_flags.items()
                       if k in ("PG_owner_priv_1", "PG_vmemmap_self_hosted", "PG_reserved",
                                "PG_swapbacked", "PG_head", "PG_lru")},
        "section_flags": f.section_flags.masks, "sections_per_block": f.sections_per_block,
        "hpg_vmemmap_optimized": f.hpg_vmemmap_optimized,
        "pageblock_order": f.pageblock_order,
        "pageblock_order_source": f.pageblock_order_source,
    }
    rows = [[k, v] for k, v in d.items()]
    return d, tabulate(rows, tablefmt="plain")


def cmd_explain(prog: Program, args: Any) -> Tuple[Any, str]:
    d = explain_pfn(prog, args.pfn, getattr(args, "vmemmap_page_type", None))
    lines = [f"pfn {d['pfn']:#x}"]
    if d["section"]:
        lines.append(f"  section {d['section']['nr']}: {'|'.join(d['section']['flags'])}")
    else:
        lines.append("  in no present section")
    if d["block"]:
        blk = d["block"]
        lines.append(f"  block {blk['id']}: {blk['state']}, node {blk['node']}, zone "
                     f"{blk['zone']}, recorded vmemmap pages {blk['vmemmap_pages']}")
    if d["self_hosted_range"]:
        r = d["self_hosted_range"]
        end = r["start_pfn"] + max(r["nr_pages"], r["reserved_pages"])
        line = (f"  inside block {r['block']}'s self-hosted vmemmap area "
                f"[{r['start_pfn']:#x}, {end:#x})")
        if not d["holds_struct_pages_of"]:
            line += (": memmap_on_memory=force padding, holds no struct page"
                     if r["reserved_pages"] > r["nr_pages"] and
                     d["pfn"] >= r["start_pfn"] + r["nr_pages"] else
                     ": holds no struct page (remapped away?)")
        lines.append(line)
    for h in d["holds_struct_pages_of"]:
        lines.append(f"  this frame holds the struct pages of pfns {h['first_pfn']:#x}-"
                     f"{h['first_pfn'] + h['count'] - 1:#x} ({h['kind']}"
                     + (", HVO-aliased" if h["aliased"] else "") + ")")
    sp = d.get("struct_page")
    if sp:
        where = "unmapped" if sp["frame"] is None else f"frame {sp['frame']:#x}"
        lines.append(f"  its struct page: {sp['address']:#x} in {where} ({sp['backing']})")
    page = d.get("page")
    if isinstance(page, dict):
        lines.append(f"  flags {page['flags']:#x} ({'|'.join(page['flag_names']) or '-'}); "
                     f"type {page['type']}; node {page['node']}, zone {page['zone']}; "
                     f"refcount {page['refcount']}; "
                     f"mapping {page['mapping']:#x}")
    elif page:
        lines.append(f"  struct page: {page}")
    return d, "\n".join(lines)
