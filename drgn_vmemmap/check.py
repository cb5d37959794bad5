"""
Check
-----

Run the rules over one program (with a
:class:`~drgn_vmemmap.context.Context`) and build a
:class:`~drgn_vmemmap.report.Report`, retrying a live check that raced with
memory hotplug.
"""

import time
from typing import Dict, Iterable, List, Optional, Tuple

from drgn import Program
from drgn.helpers.common.prog import takes_program_or_default

from .context import Context, Progress, self_hosted_ranges
from .damage import CAUSE
from .errors import UsageError
from .live import Epoch, Results, changed_blocks, hotplug_epoch, race, snapshot
from .model import NOT_IN_DUMP, memory_map
from .records import NotChecked, Note, Violation
from .refresh import LiveModel
from .report import Report, blocks_json, features_json, target_json
from .rules import RULES
from .target import TargetError, target_kind

__all__ = ("check", "self_hosted_ranges")

#: How many times a live check is retried when a block changes under it.
LIVE_RETRIES = 3



def _run_rules(ctx: Context, rules: Optional[Iterable[str]]) -> Results:
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


@takes_program_or_default
def check(prog: Program, rules: Optional[Iterable[str]] = None,
          vmemmap_page_type: Optional[int] = None,
          progress: Optional[Progress] = None, jobs: Optional[int] = None,
          model: Optional[LiveModel] = None) -> Report:
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
    :param model: a live kernel's :class:`~drgn_vmemmap.refresh.LiveModel`,
        as the caller last refreshed it: the memory map and the vmemmap
        backing come from it, and a retry or the re-read after the rules
        refreshes it instead of reading the map again (``watch``).
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
        e0 = hotplug_epoch(prog) if live else Epoch(None, False)
        if model is not None:
            # A retry uses the model as the previous attempt's re-read after
            # its rules left it (refreshed just now); what a refresh finds
            # from here on is for the next check.
            model.take()
        ctx = Context(prog, vmemmap_page_type, progress, jobs,
                      model=model if live else None)
        if not ctx.mm.sections:
            why = next((e for e in ctx.mm.errors if e.startswith("mem_section")),
                       "no present section")
            raise TargetError(f"no memory section could be read, nothing to check ({why})")
        results = _run_rules(ctx, rules)
        if not live:
            break
        if model is not None:
            model.refresh()
            again = model.mm
        else:
            again = memory_map(prog, vmemmap_page_type)
        e1 = hotplug_epoch(prog)
        snapshots += [snapshot(ctx.mm), snapshot(again)]
        raced = snapshots[-2] != snapshots[-1] or e0 != e1 or e0.busy or e1.busy
        if not raced:
            break
    if raced:
        results = race(results, changed_blocks(snapshots), ctx.features.pages_per_block,
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
        target=target_json(prog),
        features=features_json(ctx),
        ranges=sorted(ctx.self_hosted_by_block().values()),
        violations=violations,
        not_checked=not_checked,
        unreadable=[list(u) for u in unreadable],
        holds=holds,
        stats=stats,
        blocks=blocks_json(ctx, violations,
                            changed_blocks(snapshots) if raced else ()),
        notes=sorted(notes, key=lambda n: (n.rule, n.pfn_start)),
        damaged=[d._asdict() for d in ctx.damaged],
    )
