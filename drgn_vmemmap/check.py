"""
Check
-----

Run the rules over one program (with a
:class:`~drgn_vmemmap.context.Context`) and build a
:class:`~drgn_vmemmap.report.Report`, retrying a live check that raced with
memory hotplug.
"""

import time
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

from drgn import FaultError, Program, TypeKind
from drgn.helpers.common.prog import takes_program_or_default

from .context import Context, Progress, self_hosted_ranges
from .damage import CAUSE
from .errors import UsageError
from .model import NOT_IN_DUMP, MemoryMap, memory_map
from .records import NotChecked, Note, Violation, state_name
from .report import Report
from .rules import RULES
from .target import TargetError, target_kind

__all__ = ("check", "self_hosted_ranges")

def _features_json(ctx: Context) -> Dict[str, object]:
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
    }


def _target_json(prog: Program) -> Dict[str, object]:
    try:
        release = prog["UTS_RELEASE"].string_().decode()
    except (KeyError, LookupError, FaultError):
        try:
            release = prog["init_uts_ns"].name.release.string_().decode()
        except (KeyError, LookupError, FaultError):
            release = "?"
    arch = prog.platform.arch.name.lower() if prog.platform else "?"
    return {"kind": target_kind(prog), "release": release, "arch": arch}


def _blocks_json(ctx: Context, violations: List[Violation],
                 raced: Iterable[int] = ()) -> List[Dict[str, object]]:
    hosted = ctx.self_hosted_by_block()
    bad = {v.block for v in violations if v.severity == "error"}
    warn = {v.block for v in violations if v.severity == "warning"}
    raced = set(raced)
    out = []
    for b in sorted(ctx.mm.blocks.values(), key=lambda b: b.id):
        r = hosted.get(b.id)
        out.append({
            "block": b.id, "state": state_name(b.state), "node": b.nid, "zone": b.zone,
            "start_pfn": b.start_pfn, "nr_pages": b.nr_pages,
            "hotplugged": ctx.is_hotplugged(b),
            "recorded_vmemmap_pages": b.vmemmap_pages,
            "self_hosted_pages": r.frames if r else 0,
            "verdict": "error" if b.id in bad else "warning" if b.id in warn
            else "not checked (live race)" if b.id in raced
            else "not checked (dump damaged)" if b.id in ctx.damaged_ids
            else "not checked (not in the dump)" if b.error and b.error.startswith(NOT_IN_DUMP)
            else "not checked (unreadable)" if b.error else "ok",
        })
    return out


#: How many times a live check is retried when a block changes under it.
LIVE_RETRIES = 3

_Results = Tuple[List[Violation], List[NotChecked], Dict[str, int], List[Note]]


def _run_rules(ctx: Context, rules: Optional[Iterable[str]]) -> _Results:
    violations: List[Violation] = []
    not_checked: List[NotChecked] = [NotChecked("*", e) for e in ctx.mm.errors]
    holds: Dict[str, int] = {}
    notes: List[Note] = []
    for rule_id in rules or RULES:
        for result in RULES[rule_id](ctx):
            if isinstance(result, Violation):
                violations.append(result)
            elif isinstance(result, NotChecked):
                not_checked.append(result)
            elif isinstance(result, Note):
                notes.append(result)
            else:
                holds[result.rule] = holds.get(result.rule, 0) + result.count
    return violations, not_checked, holds, notes


def _snapshot(mm: MemoryMap) -> Dict[int, Tuple[object, ...]]:
    """Per block id: what a live kernel may change under a check (the block's
    device, state, zone and vmemmap record, and its sections' words)."""
    per = mm.features.sections_per_block
    out: Dict[int, Tuple[object, ...]] = {}
    for b in mm.blocks.values():
        out[b.id] = (b.address, b.state, b.nid, b.zone, b.vmemmap_pages, b.altmap, b.error)
    sections: Dict[int, List[Tuple[int, int, int]]] = {}
    for s in mm.sections.values():
        sections.setdefault(s.nr // per, []).append((s.nr, s.flags, s.mem_map))
    for bid, secs in sections.items():
        out[bid] = out.get(bid, ()) + tuple(secs)
    return out


class _Epoch(NamedTuple):
    """What tells a reader of a live kernel that memory hotplug happened."""

    #: ``uevent_seqnum``: every memory block added, removed, onlined or
    #: offlined advances it (device_online()/device_offline() send
    #: KOBJ_ONLINE/KOBJ_OFFLINE once the block's state has changed).  Two
    #: equal reads of the memory map do not prove it stood still: a block
    #: can go offline and online again in between (seen under a fast loop).
    seqnum: Optional[int]
    #: An operation is under way: ``device_hotplug_lock`` (held from the
    #: sysfs write or ACPI event to the uevent) or ``mem_hotplug_lock``
    #: (write-held by online_pages()/offline_pages()) is taken.
    busy: bool


def _hotplug_epoch(prog: Program) -> _Epoch:
    seqnum = None
    busy = False
    try:
        seq = prog["uevent_seqnum"]  # u64, atomic64_t in newer kernels
        if seq.type_.unaliased_kind() != TypeKind.INT:
            seq = seq.counter
        seqnum = seq.value_()
    except (KeyError, LookupError, AttributeError, FaultError):
        pass
    try:
        # The low bits of a mutex's owner are flags (MUTEX_FLAGS).
        busy = bool(prog["device_hotplug_lock"].owner.counter.value_() & ~0x7)
    except (KeyError, LookupError, AttributeError, FaultError):
        pass
    try:
        busy = busy or bool(prog["mem_hotplug_lock"].block.counter.value_())
    except (KeyError, LookupError, AttributeError, FaultError):
        pass
    return _Epoch(seqnum, busy)


def _changed_blocks(snapshots: List[Dict[int, Tuple[object, ...]]]) -> List[int]:
    """Blocks that were not the same in every snapshot."""
    ids = set().union(*snapshots)
    return sorted(bid for bid in ids if len({repr(s.get(bid)) for s in snapshots}) > 1)


def _race(results: _Results, changed: List[int], pages_per_block: int,
          epochs: Tuple[_Epoch, _Epoch]) -> _Results:
    """Violations touching a block that kept changing become "not checked",
    and each such block is reported as not checked."""
    violations, not_checked, holds, notes = results
    kept: List[Violation] = []
    not_checked = list(not_checked) + [
        NotChecked("*", f"live race: block {bid} changed during the check",
                   bid * pages_per_block, (bid + 1) * pages_per_block) for bid in changed]
    if not changed:
        # Devices (maybe not memory) changed, but no block was seen changing:
        # say so, and keep the violations (nothing tells which of them it
        # could explain).
        e0, e1 = epochs
        busy = ", hotplug in progress" if e0.busy or e1.busy else ""
        not_checked.append(NotChecked("*", "live race: devices changed during the check "
                                      f"(uevent_seqnum {e0.seqnum} -> {e1.seqnum}{busy}); "
                                      "no memory block was seen changing"))
    for v in violations:
        hit = next((bid for bid in changed if v.block == bid or
                    (v.pfn_start < (bid + 1) * pages_per_block
                     and bid * pages_per_block < v.pfn_end)), None)
        if hit is None:
            kept.append(v)
        else:
            not_checked.append(NotChecked(v.rule, f"live race: block {hit} changed during "
                                          "the check", v.pfn_start, v.pfn_end))
    return kept, not_checked, holds, notes


@takes_program_or_default
def check(prog: Program, rules: Optional[Iterable[str]] = None,
          vmemmap_page_type: Optional[int] = None,
          progress: Optional[Progress] = None, jobs: Optional[int] = None) -> Report:
    """
    Check every rule (or those named) and return the report.

    On a live target (``-k``, QMP) the memory map is read again after the
    rules ran.  The check stands if both reads are equal, no memory hotplug
    operation ended in between (``uevent_seqnum`` unchanged) and none was
    under way at either end (hotplug locks free); otherwise it is retried,
    up to :data:`LIVE_RETRIES` times.  If it never stood, violations on the
    blocks that changed in any read become "not checked (live race)".
    ``stats["live_retries"]`` says how many retries were needed.

    :param rules: rule ids from :data:`~drgn_vmemmap.rules.RULES`; an unknown
        one raises :class:`ValueError` naming the known ones.
    :param jobs: processes for the whole-memory scan (marker-stray); None
        decides by :func:`~drgn_vmemmap.scan.parallel_jobs` (several only for
        a core dump of at least 4 GiB); ``stats["jobs"]`` says what was used.
    """
    if rules is not None:
        rules = list(rules)
        unknown = [r for r in rules if r not in RULES]
        if unknown:
            raise UsageError(f"unknown rule(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(RULES)}")
    t0 = time.monotonic()
    live = target_kind(prog) != "vmcore"
    raced = False
    snapshots: List[Dict[int, Tuple[object, ...]]] = []
    for attempt in range(1 + (LIVE_RETRIES if live else 0)):  # noqa: B007 (read after)
        e0 = _hotplug_epoch(prog) if live else _Epoch(None, False)
        ctx = Context(prog, vmemmap_page_type, progress, jobs)
        if not ctx.mm.sections:
            why = next((e for e in ctx.mm.errors if e.startswith("mem_section")),
                       "no present section")
            raise TargetError(f"no memory section could be read, nothing to check ({why})")
        results = _run_rules(ctx, rules)
        if not live:
            break
        again = memory_map(prog, vmemmap_page_type)
        e1 = _hotplug_epoch(prog)
        snapshots += [_snapshot(ctx.mm), _snapshot(again)]
        raced = snapshots[-2] != snapshots[-1] or e0 != e1 or e0.busy or e1.busy
        if not raced:
            break
    if raced:
        results = _race(results, _changed_blocks(snapshots), ctx.features.pages_per_block,
                        (e0, e1))
    violations, not_checked, holds, notes = results
    if ctx.damaged and len(ctx.damaged) == sum(b.state == "MEM_ONLINE" and not b.error
                                                for b in ctx.mm.blocks.values()):
        raise TargetError(f"dump damaged: the memmap of every online block ({len(ctx.damaged)}) "
                          f"is not struct pages; {CAUSE}")
    violations.sort(key=lambda v: (v.rule, v.pfn_start))
    unreadable = sorted({(s, e) for s, e in ctx.unreadable})
    stats = {"sections": len(ctx.mm.sections), "blocks": len(ctx.mm.blocks),
             "pages_scanned": ctx.pages_scanned, "jobs": ctx.jobs_used,
             "seconds": round(time.monotonic() - t0, 3),
             # What a filtered dump may lack, and what it did lack.
             "dump_level": prog.cache.get("drgn_vmemmap.dump_level"),
             "unreadable_pfns": sum(e - s for s, e in unreadable),
             "blocks_not_in_dump": sum(1 for b in ctx.mm.blocks.values()
                                       if b.error and b.error.startswith(NOT_IN_DUMP))}
    if live:
        stats["live_retries"] = attempt
    return Report(
        target=_target_json(prog),
        features=_features_json(ctx),
        ranges=sorted(ctx.self_hosted_by_block().values()),
        violations=violations,
        not_checked=not_checked,
        unreadable=[list(u) for u in unreadable],
        holds=holds,
        stats=stats,
        blocks=_blocks_json(ctx, violations,
                            _changed_blocks(snapshots) if raced else ()),
        notes=sorted(notes, key=lambda n: (n.rule, n.pfn_start)),
        damaged=[d._asdict() for d in ctx.damaged],
    )
