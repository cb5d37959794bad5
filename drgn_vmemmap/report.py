"""
Reports
-------

Typed results of a check and their renderings: a table for people (tabulate)
and JSON (``"schema": 1``) for scripts.  The JSON field names are a contract;
see the README.
"""

import json
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

from drgn import FaultError, Program

from .model import NOT_IN_DUMP
from .records import NotChecked, Note, Range, Violation, state_name
from .target import target_kind

if TYPE_CHECKING:
    from .context import Context

__all__ = (
    "Note",
    "NotChecked",
    "Range",
    "Report",
    "SCHEMA",
    "Violation",
    "blocks_json",
    "exit_status",
    "features_json",
    "render_json",
    "render_table",
    "target_json",
)

SCHEMA = 1


class Report(NamedTuple):
    target: Dict[str, Any]
    features: Dict[str, Any]
    ranges: List[Range]
    violations: List[Violation]
    not_checked: List[NotChecked]
    #: Struct-page ranges missing from the dump: [pfn_start, pfn_end) pairs.
    unreadable: List[List[int]]
    #: Rules that ran, and on how many ranges each held.
    holds: Dict[str, int]
    stats: Dict[str, Any]
    blocks: List[Dict[str, Any]]
    notes: List[Note] = []
    #: Blocks whose memmap in the dump is not struct pages (damage to the
    #: dump, not a kernel finding): ``{"block", "pfn_start", "pfn_end",
    #: "sampled", "implausible", "example_flags", "cause"}``.
    damaged: List[Dict[str, Any]] = []

    def errors(self) -> List[Violation]:
        return [v for v in self.violations if v.severity == "error"]

    def to_json(self) -> Dict[str, Any]:
        return {
            "schema": SCHEMA,
            "target": self.target,
            "features": self.features,
            "ranges": [r._asdict() for r in self.ranges],
            "violations": [v._asdict() for v in self.violations],
            "not_checked": [n._asdict() for n in self.not_checked],
            "notes": [n._asdict() for n in self.notes],
            "damaged": self.damaged,
            "unreadable": self.unreadable,
            "holds": self.holds,
            "blocks": self.blocks,
            "stats": self.stats,
        }


# --- the JSON document's parts, from a check's context ---------------------------


def features_json(ctx: "Context") -> Dict[str, object]:
    f = ctx.features
    return {
        "marker": f.markers,
        "page_type": f"{f.page_types.scheme} ({f.page_types.source})",
        "block_accounting": f.block_accounting,
        "memmap_on_memory": None if f.memmap_on_memory is None
        else f.memmap_on_memory != "N",
        "memmap_on_memory_mode": f.memmap_on_memory,
        "pageblock_order": f.pageblock_order,
        "vmemmap_reserved": f.vmemmap_reserved,
        "struct_page_size": f.layout.size,
        "pages_per_block": f.pages_per_block,
        "page_size": 1 << f.page_shift,
    }


def target_json(prog: Program) -> Dict[str, object]:
    try:
        release = prog["UTS_RELEASE"].string_().decode()
    except (KeyError, LookupError, FaultError):
        try:
            release = prog["init_uts_ns"].name.release.string_().decode()
        except (KeyError, LookupError, FaultError):
            release = "?"
    arch = prog.platform.arch.name.lower() if prog.platform else "?"
    return {"kind": target_kind(prog), "release": release, "arch": arch}


def blocks_json(ctx: "Context", violations: List[Violation],
                 raced: Iterable[int] = ()) -> List[Dict[str, object]]:
    hosted = ctx.self_hosted_by_block()
    bad = {v.block for v in violations if v.severity == "error"}
    warn = {v.block for v in violations if v.severity == "warning"}
    raced = set(raced)
    out = []
    for b in sorted(ctx.mm.blocks.values(), key=lambda b: b.id):
        r = hosted.get(b.id)
        # Where its struct pages live: the blocks (pfn // pages per block,
        # whether or not such a block exists) of the frames the page tables
        # map its memmap to.
        hosts = sorted({e.host_block for e in ctx.extents_overlapping(b.start_pfn, b.end_pfn)
                        if e.host_block is not None})
        out.append({
            "block": b.id, "state": state_name(b.state), "node": b.nid, "zone": b.zone,
            "start_pfn": b.start_pfn, "nr_pages": b.nr_pages,
            "hotplugged": ctx.is_hotplugged(b),
            "recorded_vmemmap_pages": b.vmemmap_pages,
            "self_hosted_pages": r.frames if r else 0,
            "memmap_host_blocks": hosts,
            "verdict": "error" if b.id in bad else "warning" if b.id in warn
            else "not checked (live race)" if b.id in raced
            else "not checked (dump damaged)" if b.id in ctx.damaged_ids
            else "not checked (not in the dump)" if b.error and b.error.startswith(NOT_IN_DUMP)
            else "not checked (unreadable)" if b.error else "ok",
        })
    return out


def exit_status(report: Report) -> int:
    """0 when no error-severity violation was found, 1 otherwise."""
    return 1 if report.errors() else 0


def render_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=False)


def _pfns(start: Optional[int], end: Optional[int]) -> str:
    if start is None:
        return "-"
    if end is None or end == start + 1:
        return f"{start:#x}"
    return f"{start:#x}-{end - 1:#x} ({end - start})"


def _ids(ids: List[int]) -> str:
    """[32, 33, 34, 36] -> '32-34, 36'."""
    out: List[List[int]] = []
    for i in sorted(ids):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


def render_table(report: Report) -> str:
    from tabulate import tabulate

    t = report.target
    f = report.features
    lines = [
        f"{t.get('kind')} {t.get('release')} ({t.get('arch')}); markers: "
        f"{', '.join(f.get('marker') or []) or 'none'}; page_type: {f.get('page_type')}; "
        f"block accounting: {f.get('block_accounting')}; memmap_on_memory: "
        + (f"force (pageblocks of {1 << f['pageblock_order']} pages)"
           if f.get("memmap_on_memory_mode") == "force" and f.get("pageblock_order") is not None
           else "force" if f.get("memmap_on_memory_mode") == "force"
           else str(f.get("memmap_on_memory"))),
        "",
    ]
    rows = []
    for b in report.blocks:
        if not b.get("hotplugged") and not b.get("self_hosted_pages"):
            continue
        rows.append([b["block"], b["state"], b.get("node"), b.get("zone") or "-",
                     _pfns(b["start_pfn"], b["start_pfn"] + b["nr_pages"]),
                     b.get("recorded_vmemmap_pages"), b.get("self_hosted_pages"),
                     b.get("verdict")])
    boot = sum(1 for b in report.blocks if not b.get("hotplugged"))
    if rows:
        lines.append(tabulate(rows, headers=["block", "state", "node", "zone", "pfns",
                                             "recorded", "self-hosted", "verdict"]))
    else:
        lines.append("no hot-plugged memory blocks")
    lines.append(f"({boot} boot blocks not listed: their memmap is boot-allocated)")
    by_rule: Dict[str, List[Violation]] = {}
    for v in report.violations:
        by_rule.setdefault(v.rule, []).append(v)
    for rule in sorted(by_rule):
        lines += ["", f"{rule}: {len(by_rule[rule])} violation(s)"]
        lines.append(tabulate(
            [[v.severity, _pfns(v.pfn_start, v.pfn_end),
              "-" if v.section is None else v.section, "-" if v.block is None else v.block,
              v.expected, v.found] for v in by_rule[rule]],
            headers=["severity", "pfns", "section", "block", "expected", "found"]))
    if report.not_checked:
        lines += ["", "not checked:"]
        seen: Dict[Tuple[str, str], int] = {}
        for n in report.not_checked:
            seen[(n.rule, n.reason)] = seen.get((n.rule, n.reason), 0) + 1
        for (rule, reason), count in sorted(seen.items()):
            lines.append(f"  {rule}: {reason}" + (f" ({count} ranges)" if count > 1 else ""))
    if report.damaged:
        ids = [d["block"] for d in report.damaged]
        lines += ["", f"dump damaged: the memmap of block(s) {_ids(ids)} in the dump is not "
                      "struct pages (not checked; not a kernel finding)"]
        lines.append(tabulate([[d["block"], _pfns(d["pfn_start"], d["pfn_end"]),
                                f"{d['implausible']}/{d['sampled']}",
                                f"{d['example_flags']:#018x}"] for d in report.damaged],
                              headers=["block", "pfns", "not struct pages", "e.g. flags"]))
        lines.append(f"likely cause: {report.damaged[0]['cause']}")
    if report.notes:
        lines += ["", "notes:"]
        lines += [f"  {n.rule}: {n.message}" for n in report.notes]
    st = report.stats
    level = st.get("dump_level")
    if report.unreadable or st.get("blocks_not_in_dump"):
        total = sum(e - s for s, e in report.unreadable)
        lines += ["", f"unreadable: {total} struct pages missing from the dump in "
                      f"{len(report.unreadable)} range(s)"
                      + (f", {st['blocks_not_in_dump']} memory block(s) not in the dump"
                         if st.get("blocks_not_in_dump") else "")
                      + (f" (makedumpfile -d {level})" if level is not None else "")
                      + "; not counted as violations"]
    s = report.stats
    nerr = len(report.errors())
    nwarn = len(report.violations) - nerr
    verdict = "VIOLATIONS" if nerr else "DUMP DAMAGED, rest consistent" if report.damaged \
        else "CONSISTENT"
    lines += ["", f"{verdict}: {nerr} error(s), "
                  f"{nwarn} warning(s); {s.get('sections')} sections, {s.get('blocks')} "
                  f"blocks, {s.get('pages_scanned')} struct pages scanned in "
                  f"{s.get('seconds', 0):.2f} s"]
    return "\n".join(lines)
