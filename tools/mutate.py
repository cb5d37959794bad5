#!/usr/bin/env python3
"""
Mutation corpus: corrupt a real dump one field at a time and check that the
checker never crashes and catches every corruption its rules are about.

The corpus and its *oracle* share no code with the checker: this module
imports nothing from ``drgn_vmemmap`` (``tests/test_mutate.py`` holds it to
that).  It reads flag bits, masks, struct offsets and geometry from the
kernel's debug info with plain drgn, and the ground truth (memory blocks,
self-hosted ranges, kpageflags, HugeTLB heads) from the fixture's manifest,
whose truth comes from the guest's sysfs, never from drgn or this project.
The checker runs out of process in ``tools/mutate_driver.py``, a long-lived
worker that answers each request with the report as JSON; detection is
decided from the JSON violations alone (rule, pfn_start, pfn_end, section,
block).

For each fixture (default: every ``*-hotplug-basic``), an ELF copy of the
kdump-compressed dump is written once with :func:`tools.elfcore.write_elf`
(pages the dump lacks are left out, so the copy checks exactly like the
original; cached under ``~/.cache/drgn-vmemmap/mutate``), copied to a private
working file, and opened once here and once in the worker.  Then, for
mutation ``i`` of ``--count``, a generator seeded with ``(--seed, fixture,
i)`` (so any one mutation can be replayed alone with ``--index i``) flips 1-3
bits of one field of one kernel object, at the file offset of its physical
address (from the PT_LOAD headers), asks the worker to check the working
file, and restores the bytes: every mutation sees an otherwise pristine dump.
The worker clears its program's caches before each check (``--fresh``: it
opens the file afresh), so every check sees the mutated bytes.  A check that
takes longer than ``--timeout`` s is a crash (a hang): the worker is killed
and restarted.

Bits: one, or 30% of the time two or three, in the same field; one time in
ten the first is the field's top (sign) bit, where signedness bugs hide.

Target classes (weights in :data:`CLASSES`):

``vmemmap-page``
    a ``struct page`` of a self-hosted vmemmap frame (a pfn of
    ``[start, start + N)`` of a hot-plugged block, online or offline):
    ``flags`` (half the time a bit among ``PG_owner_priv_1``, ``PG_reserved``,
    ``PG_lru``, ``PG_head``, ``PG_swapbacked``, ``PG_slab``), ``page_type``,
    ``_refcount``, ``mapping`` or ``compound_head`` (half the time bit 0, the
    tail bit).
``block-page``
    a ``struct page`` anywhere in a hot-plugged block, same fields.
``compound``
    the head, first tail or second tail of a HugeTLB folio whose vmemmap is
    not optimised (heads from the manifest's ``truth.hugepage_heads``,
    confirmed on the hstate lists), same fields plus ``private`` (on the head
    half the time the ``HPG_vmemmap_optimized`` bit).
``hvo-folio``
    the head, first tail, second tail or another tail of a HugeTLB folio
    with ``HPG_vmemmap_optimized`` (found on ``hstates[i]``'s lists).  Its
    vmemmap is aliased: the bytes written are those of a frame that backs
    several struct pages (the fake heads of 6.12, 7.2's shared tail page),
    and the oracle judges every struct page the frame backs.
``hvo-replacement``
    the ``struct page`` of a frame that backs an optimised folio's vmemmap
    (HVO's head copy, 7.2's shared tail): an ordinary allocated page.
``memmap-frame``
    on kernels with ``PGTY_memmap`` only (6.12-memmap): the ``struct page``
    of a frame that holds struct pages (the manifest's
    ``truth.memmap_type_frames``, from the guest's kpageflags) in an online
    block: boot memmap, page-allocator memmap, HVO's pages; half the time
    its ``page_type``.
``buddy``, ``slab``, ``page-table``
    the ``struct page`` of a free buddy page (``PGTY_buddy``), a slab page,
    a page-table page (``PGTY_table``), found in the clean dump, in
    hot-plugged blocks first.
``section``
    the ``section_mem_map`` word of a present ``mem_section``: its flag bits
    (below ``SECTION_MAP_LAST_BIT``), or one time in five its encoded mem_map.
``block``
    a ``struct memory_block``: ``state``, ``start_section_nr``, ``nid``, and
    ``nr_vmemmap_pages`` (5.13-6.5) or ``altmap->alloc``, ``free``,
    ``base_pfn``, ``end_pfn``, ``reserve`` (6.6+; blocks with an altmap).
``dump``
    a fault of the dump rather than of the kernel (``tools/mutate_dump.py``):
    the page of one ``memory_block`` or ``vmem_altmap`` taken out of the
    dump, one vmemmap page-table page, one memmap frame, or one block's
    memmap overwritten with random bytes.  Its oracle is an expectation
    (the fault costs the structures on the page and nothing else), see
    that module.

The oracle (:func:`broken_rules`) says which rules of the catalogue
(DESIGN.md) a mutation breaks, from the kernel's definitions (KERNEL-NOTES
§10, §13): it evaluates the invariant on the object before and after, and
the mutation *broke an invariant* for a rule when that rule's invariant held
before and fails after.  Per object:

* a struct page in a self-hosted range of an ONLINE block (per the manifest):
  ``vmemmap-unmarked`` when a per-page marker is lost
  (``PG_vmemmap_self_hosted``; on kernels patched with it, the
  ``PGTY_vmemmap`` page type) or the flags become all ones (poison);
  ``vmemmap-page-state`` when, flags not all ones, the page gets a page type
  other than ``PGTY_vmemmap`` (the kernel's ``page_has_type()``) or
  ``PG_slab``, a refcount other than 1, a mapping, ``PG_lru``, ``PG_head``
  or a tail bit, a node (top ``NODES_SHIFT`` bits of ``flags``, from the
  kernel's config) other than its block's in the manifest, a zone (the
  ``ZONES_SHIFT`` bits below) other than the block's zone in the manifest,
  or a ``PG_reserved`` other than the guest saw (``reserved`` in the
  manifest's kpageflags).  Offline blocks: nothing (stale memmap).
* any other struct page in an online section (``SECTION_IS_ONLINE``) of an
  ONLINE block, flags not all ones: ``marker-stray`` when it carries
  ``PG_owner_priv_1`` that no alias explains, by each alias's page-flag
  policy (include/linux/page-flags.h; KERNEL-NOTES §13):

  - on a compound tail page (bit 0 of the word at ``compound_head`` /
    ``compound_info``) the bit is always ``PG_vmemmap_self_hosted``
    (``PF_ANY``; every alias is head-only or ``PF_NO_COMPOUND``);
  - ``PG_swapcache`` needs ``PG_swapbacked`` and a kernel that can swap:
    ``CONFIG_SWAP`` (the ``total_swap_pages`` symbol) and swap in use
    (``total_swap_pages`` or a ``swap_info`` entry with ``SWP_USED``);
  - ``PG_checked`` is for page-cache pages: ``mapping`` an
    ``address_space`` pointer (at or above the direct map base, low two
    bits clear, not a poison such as ``TAIL_MAPPING``), on a page with no
    page type and no ``PG_slab``;
  - Xen's ``PG_pinned`` / ``PG_foreign`` / ``PG_xen_remapped`` only on a
    Xen guest (``xen_domain_type`` not ``XEN_NATIVE``), and then on a
    non-compound page-table page the bit stays reported, as a warning; the
    oracle counts it as broken either way.

  And ``marker-stray`` when the page gets the ``PGTY_vmemmap`` type (no
  alias).
* any struct page in an online section of an ONLINE block, flags not all
  ones, on a kernel with ``PGTY_memmap`` (6.12-memmap): ``memmap-type`` when
  it has the type and is not one of the frames the guest's kpageflags
  showed with it (``truth.memmap_type_frames``), or is one of them and lost
  it.  Self-hosted pages have it too, so ``vmemmap-page-state`` allows it.
* the head of a HugeTLB folio (``private``): ``hvo-self-hosted`` when
  ``HPG_vmemmap_optimized`` becomes set on a folio that lies in a block with
  vmemmap pages or whose first struct page is backed by a self-hosted frame.
* a ``section``: ``section-state`` when a section of a block whose state is
  ONLINE or OFFLINE stops being present with a mem_map or
  ``SECTION_IS_ONLINE`` stops matching the state; and, present:
  ``early-self-hosted`` when a block recording vmemmap pages gets an early /
  PREINIT / ZONE_DEVICE section; ``block-geometry`` when the encoded mem_map
  stops being ``vmemmap``; ``section-marker`` when
  ``SECTION_CANNOT_OPTIMIZE_VMEMMAP`` or ``SECTION_USE_VMEMMAP`` (patched
  kernels) stops being set exactly on the sections of self-hosted blocks.
* a ``block``: ``block-geometry`` when ``start_section_nr`` is not its own;
  ``section-state`` when the state becomes ONLINE or OFFLINE and disagrees
  with its sections' ``SECTION_IS_ONLINE``; ``vmemmap-page-state`` when an
  online self-hosted block's ``nid`` stops being its pages' node;
  ``early-self-hosted`` when a boot block records vmemmap pages;
  ``altmap-mismatch`` when a hot-plugged block's
  record stops matching the manifest's self-hosted frames (``alloc`` /
  ``nr_vmemmap_pages`` = frames, ``base_pfn`` = first pfn, ``end_pfn`` =
  last pfn, ``reserve`` = 0, ``free`` = the area: frames plus force padding).

Everything else (other flag bits, a free page's refcount, a state that is
not a state, clearing ``SECTION_IS_EARLY``, ...) is *untargeted*: no rule is
about it.  Untargeted mutations that still produce violations are counted as
"flagged anyway" per rule and per class.

A mutation is *detected* when the report has a violation that the clean
copy's report lacks and whose pfn range covers a mutated pfn (pages: every
pfn whose struct page the written bytes hold), the section's pfns or number
(sections), or the block's pfns or id (blocks).  A *crash* is any exception
in the checker (or a check that takes longer than ``--timeout`` s); a
*refusal* is a clean ``TargetError`` (the CLI's exit status 2 with one
line), which is acceptable.

The code: ``tools/mutate_kernel.py`` (the fixture's files, the checker's
worker, the kernel's facts with plain drgn, the :class:`Subject`),
``tools/mutate_catalogue.py`` (classes, weights, drawing a mutation),
``tools/mutate_oracle.py`` (what a mutation breaks), ``tools/mutate_dump.py``
(the ``dump`` class, its own expectation) and this file (running, tallying,
the command line).

Usage: ``python tools/mutate.py [--fixture NAME]... [--count N] [--seed S]
[--index I]... [--fresh] [--timeout S] [--json] [-v]``.  Exit status 1 on a
crash or a targeted mutation missed.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


from tools.mutate_catalogue import (  # noqa: E402
    CLASSES,
    PAGE_CLASSES,
    Mutation,
    _page_field,
    block_mutation,
    draw,
    page_mutation,
    section_mutation,
)
from tools.mutate_kernel import Subject, _vkey, default_fixtures  # noqa: E402
from tools.mutate_oracle import broken_rules  # noqa: E402

# The corpus's API: the runner here, the catalogue, the oracle and the
# subject from their own modules.
__all__ = ("CLASSES", "Mutation", "Outcome", "Subject", "Tally", "_page_field", "block_mutation",
           "broken_rules", "default_fixtures", "draw", "main", "page_mutation", "prepare",
           "run", "run_one", "run_subject", "section_mutation")

# --- running ----------------------------------------------------------------------------


class Outcome(NamedTuple):
    mutation: Mutation
    #: Rules whose invariant the mutation broke (empty: untargeted).
    broken: Set[str]
    #: "ok", "crash", "refused" or "hang".
    status: str
    #: Rules of the new violations covering the target.
    detected_by: Set[str]
    #: Rules of all new violations (anywhere).
    flagged_by: Set[str]
    error: Optional[str]
    #: The report (JSON), if the check finished.
    report: Optional[Dict[str, Any]]




def _covers(s: Subject, m: Mutation, v: Dict[str, Any]) -> bool:
    start, end = v["pfn_start"], v["pfn_end"]
    if m.klass in PAGE_CLASSES:
        return any(start <= p < end for p in m.context["pfns"])
    k = s.k
    if m.klass == "section":
        lo, hi = m.target * k.pps, (m.target + 1) * k.pps
        return v.get("section") == m.target or (start < hi and lo < end)
    lo, hi = m.target * k.ppb, (m.target + 1) * k.ppb
    return v.get("block") == m.target or (start < hi and lo < end)


def run_one(s: Subject, m: Mutation, timeout: int = 60) -> Outcome:
    """Apply ``m``, check (in the worker), restore; classify the result."""
    if m.klass == "dump":
        from tools import mutate_dump
        return mutate_dump.run_one(s, m, timeout)
    broken = broken_rules(s, m)
    s.write_file(m.offset, m.size, m.new)
    try:
        status, answer = s.driver.check(timeout, s.fresh)
    finally:
        s.write_file(m.offset, m.size, m.old)
        if s.read_file(m.offset, m.size) != m.old:
            raise RuntimeError(f"{s.name}: could not restore {m.describe()}")
    report = answer if status == "ok" else None
    error = None if status == "ok" else answer
    detected: Set[str] = set()
    flagged: Set[str] = set()
    if report is not None:
        for v in report["violations"]:
            if _vkey(v) in s.baseline_violations:
                continue
            flagged.add(v["rule"])
            if _covers(s, m, v):
                detected.add(v["rule"])
    return Outcome(m, broken, status, detected, flagged, error, report)


def prepare(name: str, workdir: Path, fresh: bool = False, timeout: float = 60) -> Subject:
    """Open fixture ``name`` for mutations (its working copy goes in ``workdir``)."""
    return Subject(name, workdir, fresh, timeout)


class Tally:
    """Counts over outcomes; see :meth:`to_json`."""

    def __init__(self, only: Optional[Sequence[str]] = None) -> None:
        self.only = "".join(f" --class {c}" for c in sorted(only or ()))
        self.mutations = 0
        self.targeted = 0
        self.detected = 0
        self.detected_by_expected_rule = 0
        self.crashes: List[Dict[str, Any]] = []
        self.refusals: List[Dict[str, Any]] = []
        self.missed: List[Dict[str, Any]] = []
        self.untargeted = 0
        self.untargeted_flagged = 0
        self.by_rule: Dict[str, Counter] = defaultdict(Counter)
        self.by_class: Dict[str, Counter] = defaultdict(Counter)
        self.untargeted_flagged_by_rule: Counter = Counter()
        self.untargeted_by_field: Counter = Counter()
        self.seconds = 0.0

    def add(self, fixture: str, seed: int, o: Outcome) -> None:
        m = o.mutation
        self.mutations += 1
        cls = self.by_class[m.klass]
        cls["mutations"] += 1
        where = {"fixture": fixture, "seed": seed, "index": m.index,
                 "mutation": m.describe(), "broke": sorted(o.broken),
                 "replay": f"python tools/mutate.py --fixture {fixture} --seed {seed} "
                           f"--index {m.index}{self.only} -v"}
        if o.status in ("crash", "hang"):
            self.crashes.append(dict(where, status=o.status, error=o.error))
            cls["crashes"] += 1
            return
        if o.status == "refused":
            self.refusals.append(dict(where, error=o.error))
            cls["refusals"] += 1
            return
        if o.broken:
            self.targeted += 1
            cls["targeted"] += 1
            if o.detected_by:
                self.detected += 1
                cls["detected"] += 1
            else:
                cls["missed"] += 1
                self.missed.append(dict(where, flagged=sorted(o.flagged_by),
                                        **({"error": o.error} if o.error else {})))
            if o.broken & o.detected_by:
                self.detected_by_expected_rule += 1
            for rule in o.broken:
                self.by_rule[rule]["broke"] += 1
                self.by_rule[rule]["detected"] += rule in o.detected_by
        else:
            self.untargeted += 1
            cls["untargeted"] += 1
            self.untargeted_by_field[f"{m.klass} {m.field}"] += 1
            if o.flagged_by:
                self.untargeted_flagged += 1
                cls["untargeted_flagged"] += 1
                self.untargeted_flagged_by_rule.update(o.flagged_by)

    def merge(self, other: "Tally") -> None:
        for k in ("mutations", "targeted", "detected", "detected_by_expected_rule",
                  "untargeted", "untargeted_flagged", "seconds"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.crashes += other.crashes
        self.refusals += other.refusals
        self.missed += other.missed
        for k, c in other.by_rule.items():
            self.by_rule[k].update(c)
        for k, c in other.by_class.items():
            self.by_class[k].update(c)
        self.untargeted_flagged_by_rule.update(other.untargeted_flagged_by_rule)
        self.untargeted_by_field.update(other.untargeted_by_field)

    def to_json(self) -> Dict[str, Any]:
        return {
            "mutations": self.mutations,
            "broke_an_invariant": self.targeted,
            "detected": self.detected,
            "detected_by_the_broken_rule": self.detected_by_expected_rule,
            "missed": self.missed,
            "crashes": self.crashes,
            "refusals": self.refusals,
            "untargeted": self.untargeted,
            "untargeted_flagged_anyway": self.untargeted_flagged,
            "untargeted_flagged_by_rule": dict(sorted(self.untargeted_flagged_by_rule.items())),
            "untargeted_by_field": dict(sorted(self.untargeted_by_field.items())),
            "per_rule": {r: dict(c) for r, c in sorted(self.by_rule.items())},
            "per_class": {k: dict(c) for k, c in sorted(self.by_class.items())},
            "seconds": round(self.seconds, 1),
        }


def run_subject(s: Subject, seed: int, indices: Sequence[int], timeout: int = 60,
                verbose: bool = False, only: Optional[Sequence[str]] = None) -> Tally:
    """Run mutations ``indices`` of ``seed`` on a prepared subject."""
    t0 = time.monotonic()
    tally = Tally(only)
    for i in indices:
        o = run_one(s, draw(s, seed, i, only), timeout)
        tally.add(s.name, seed, o)
        if verbose:
            _print_outcome(s.name, o)
    tally.seconds = time.monotonic() - t0
    return tally


def run(fixtures: Sequence[str], count: int, seed: int, indices: Optional[Sequence[int]] = None,
        fresh: bool = False, timeout: int = 60, verbose: bool = False,
        workdir: Optional[Path] = None,
        only: Optional[Sequence[str]] = None) -> Dict[str, Tally]:
    """Run the mutations; ``{fixture: Tally}`` (seconds include preparing the fixture)."""
    out: Dict[str, Tally] = {}
    with tempfile.TemporaryDirectory(prefix="drgn-vmemmap-mutate-", dir=workdir) as tmp:
        for name in fixtures:
            t0 = time.monotonic()
            s = prepare(name, Path(tmp), fresh, timeout)
            try:
                tally = run_subject(s, seed, indices if indices is not None else range(count),
                                    timeout, verbose, only)
            finally:
                s.close()
                os.unlink(s.path)
            tally.seconds = time.monotonic() - t0
            out[name] = tally
    return out


def _print_outcome(name: str, o: Outcome) -> None:
    m = o.mutation
    verdict = {"crash": "CRASH", "hang": "HANG", "refused": "refused"}.get(o.status)
    if verdict is None:
        if o.broken:
            verdict = ("detected by " + ",".join(sorted(o.detected_by)) if o.detected_by
                       else "MISSED")
        else:
            verdict = "untargeted" + (f" (flagged: {','.join(sorted(o.flagged_by))})"
                                      if o.flagged_by else "")
    broke = f" broke {','.join(sorted(o.broken))};" if o.broken else ""
    print(f"{name} {m.describe()}:{broke} {verdict}", file=sys.stderr)
    if o.error:
        print("  " + str(o.error).rstrip().replace("\n", "\n  "), file=sys.stderr)
    if o.report is not None and (o.status != "ok" or (o.broken and not o.detected_by)
                                 or os.environ.get("MUTATE_SHOW_VIOLATIONS")):
        for v in o.report["violations"]:
            print(f"  {v['rule']} {v['severity']} {v['pfn_start']:#x}-{v['pfn_end']:#x} "
                  f"section {v.get('section')} block {v.get('block')}: {v.get('found')}",
                  file=sys.stderr)
        for n in o.report["not_checked"]:
            print(f"  not checked: {n['rule']}: {n['reason']}", file=sys.stderr)


def _summary(results: Dict[str, Tally]) -> str:
    from tabulate import tabulate

    rows = []
    total = Tally()
    for name, t in results.items():
        total.merge(t)
        rows.append([name, t.mutations, t.targeted, t.detected, len(t.missed),
                     len(t.crashes), len(t.refusals), t.untargeted, t.untargeted_flagged,
                     f"{t.seconds:.1f}"])
    rows.append(["total", total.mutations, total.targeted, total.detected,
                 len(total.missed), len(total.crashes), len(total.refusals),
                 total.untargeted, total.untargeted_flagged, f"{total.seconds:.1f}"])
    text = tabulate(rows, headers=["fixture", "mutations", "broke an invariant", "detected",
                                   "missed", "crashes", "refusals", "untargeted",
                                   "untargeted, flagged", "seconds"])
    for name, t in results.items():
        per_class = [[k, c["mutations"], c["targeted"], c["detected"], c["missed"],
                      c["crashes"], c["refusals"], c["untargeted"], c["untargeted_flagged"]]
                     for k, c in sorted(t.by_class.items())]
        text += f"\n\n{name}, per class:\n" + tabulate(
            per_class, headers=["class", "mutations", "broke an invariant", "detected",
                                "missed", "crashes", "refusals", "untargeted",
                                "untargeted, flagged"])
    per_rule = [[r, c["broke"], c["detected"]] for r, c in sorted(total.by_rule.items())]
    text += "\n\n" + tabulate(per_rule, headers=["rule", "broken", "detected by it"])
    if total.untargeted_flagged_by_rule:
        text += "\n\nuntargeted mutations flagged anyway, by rule: " + ", ".join(
            f"{r} {n}" for r, n in sorted(total.untargeted_flagged_by_rule.items()))
    for kind, items in (("MISSED", total.missed), ("CRASH", total.crashes),
                        ("refused", total.refusals)):
        for it in items[:20]:
            text += f"\n{kind}: {it['fixture']} {it['mutation']}; replay: {it['replay']}"
            if it.get("error"):
                text += "\n  " + str(it["error"]).strip().splitlines()[-1]
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixture", action="append", metavar="NAME",
                   help="fixture to mutate (repeatable; default: every *-hotplug-basic)")
    p.add_argument("--count", type=int, default=100, help="mutations per fixture (default 100)")
    p.add_argument("--seed", type=int, default=1, help="seed (default 1)")
    p.add_argument("--index", type=int, action="append", metavar="I",
                   help="run only mutation I of the seed (repeatable): replay one")
    p.add_argument("--fresh", action="store_true",
                   help="have the worker open the mutated file afresh for every mutation "
                        "(slow; the default reuses one program and clears its caches)")
    p.add_argument("--timeout", type=int, default=60,
                   help="seconds per check (default 60); a longer check is a hang: the "
                        "worker is killed and restarted")
    p.add_argument("--class", dest="only", action="append", metavar="CLASS",
                   choices=[c for c, _ in CLASSES],
                   help="draw only from this target class (repeatable; default: all, "
                        "weighted as in CLASSES)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per mutation on stderr")
    args = p.parse_args(argv)
    fixtures = args.fixture or default_fixtures()
    if not fixtures:
        p.error("no fixtures")
    results = run(fixtures, args.count, args.seed, args.index, args.fresh, args.timeout,
                  args.verbose, only=args.only)
    total = Tally()
    for t in results.values():
        total.merge(t)
    if args.json:
        print(json.dumps({"seed": args.seed, "count": args.count,
                          "fixtures": {n: t.to_json() for n, t in results.items()},
                          "total": total.to_json()}, indent=1))
    else:
        print(_summary(results))
    return 1 if total.crashes or total.missed else 0


if __name__ == "__main__":
    # tools/mutate_dump.py imports this module as tools.mutate: one copy.
    sys.modules.setdefault("tools.mutate", sys.modules[__name__])
    sys.exit(main())
