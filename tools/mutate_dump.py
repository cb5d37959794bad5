"""
Dump-level faults for the mutation corpus (``tools/mutate.py``, class
``dump``): what makedumpfile's filtering and a capture kernel that wrote over
the crashed kernel's memory do to a real dump.

Four kinds, drawn with the weights of :data:`KINDS`:

``memory-block-page``
    the physical page holding one ``struct memory_block`` (or, a third of
    the time when the block has one, its ``struct vmem_altmap``) is taken
    out of the dump, the way makedumpfile leaves out a page it filters;
``page-table-page``
    one page-table page that maps the vmemmap (a PMD table, or a PTE table
    where HVO split a PMD mapping), found by walking ``init_mm``'s tables by
    hand (x86-64, 4-level);
``memmap-frame``
    one frame that backs the memmap of a block;
``memmap-overwrite``
    every frame that backs one hot-plugged block's memmap is overwritten
    with random bytes (a capture kernel that onlined the memory).

The expectation is written from the issue, not from the checker: the fault
costs the structures on the page and nothing else.  What lies on the page
comes from plain drgn on the clean dump: which blocks' ``memory_block`` /
``vmem_altmap`` records, which nodes of the ``memory_blocks`` xarray (and
every block under them), which struct pages (a memmap frame's, every pfn of
HVO's aliases included), which stretch of vmemmap a table maps.  Then, on
the faulty dump:

* no violation appears that the clean dump did not have, and nothing
  crashes or hangs;
* every block outside the affected set keeps its clean verdict and its
  self-hosted range;
* ``memory-block-page``: each block whose record was on the page is "not
  checked (not in the dump)", and the affected blocks are not checked;
* ``memmap-frame``: every pfn of an online block whose struct page was on
  the frame is in the report's ``unreadable`` ranges (an offline block's
  memmap is stale and no rule reads it);
* ``memmap-overwrite``: an online block is reported ``damaged`` (and "not
  checked (dump damaged)"); an offline one may be, or may stay as it was;
* ``page-table-page``: the affected blocks are not in error; a clean
  refusal (exit status 2) is accepted only when every block is affected.

An outcome meets its expectation or is counted as missed (with what it
broke named ``not-in-dump``, ``unreadable`` or ``dump-damaged``).  Each
check opens the faulty file afresh (a program caches its segments).
"""

import os
import random
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import drgn
from drgn import FaultError, Object, sizeof
from drgn.helpers.linux.mm import follow_phys, virt_to_phys

from tools import mutate as M  # the runner: Outcome
from tools import mutate_catalogue as C
from tools import mutate_kernel as K
from tools.dumpedit import exclude_in_place
from tools.elfcore import file_offset

KINDS = (("memory-block-page", 35), ("page-table-page", 15), ("memmap-frame", 30),
         ("memmap-overwrite", 20))
#: What each kind is expected to cost (the oracle's "rule" for the tally).
EXPECT = {"memory-block-page": "not-in-dump", "page-table-page": "not-in-dump",
          "memmap-frame": "unreadable", "memmap-overwrite": "dump-damaged"}
_PRESENT, _HUGE = 1 << 0, 1 << 7
_ADDR = ((1 << 52) - 1) & ~0xFFF


# --- what the clean dump holds (plain drgn), computed once per subject ---------------------


def _phys(prog: drgn.Program, address: int) -> int:
    return virt_to_phys(Object(prog, "void *", address)).value_()


def _xa_nodes(prog: drgn.Program) -> List[Tuple[int, Set[int]]]:
    """``(address, block ids under it)`` of every node of ``memory_blocks``
    (lib/xarray.c: an internal entry is ``node | 2``; a node's slots hold
    entries ``shift`` bits apart)."""
    out: List[Tuple[int, Set[int]]] = []

    def walk(entry: int, base: int) -> Set[int]:
        if entry & 3 != 2 or entry < 4096:
            return set()
        node = Object(prog, "struct xa_node *", entry - 2)
        shift = node.shift.value_()
        ids: Set[int] = set()
        for i, slot in enumerate(node.slots.read_()):
            v = slot.value_()
            if not v:
                continue
            index = base + (i << shift)
            if shift == 0:
                ids.add(index)
            else:
                ids |= walk(v, index)
        out.append((entry - 2, ids))
        return ids

    walk(prog["memory_blocks"].xa_head.value_(), 0)
    return out


def _vmemmap_tables(s: "K.Subject") -> Dict[int, Tuple[int, int]]:
    """Physical address -> (first pfn, end pfn) whose struct pages the
    table maps, for every PMD and PTE table under the vmemmap of the dump's
    blocks (x86-64, 4-level paging; {} elsewhere)."""
    prog, k = s.prog, s.k
    if prog.platform.arch != drgn.Architecture.X86_64:
        return {}
    try:
        if prog["__pgtable_l5_enabled"].value_():
            return {}
    except KeyError:
        pass
    pgd = prog["init_mm"].pgd.value_()

    def entry(table: int, va: int, shift: int, physical: bool = True) -> int:
        return int.from_bytes(prog.read(table + ((va >> shift) & 511) * 8, 8, physical),
                              "little")

    def pfns(lo_va: int, hi_va: int) -> Tuple[int, int]:
        return ((lo_va - k.vmemmap) // k.page_bytes, (hi_va - k.vmemmap) // k.page_bytes)

    out: Dict[int, Tuple[int, int]] = {}
    ids = sorted(s.blocks)
    if not ids:
        return out
    lo = k.vmemmap + ids[0] * k.ppb * k.page_bytes
    hi = k.vmemmap + (ids[-1] + 1) * k.ppb * k.page_bytes
    va = lo & ~((1 << 30) - 1)
    while va < hi:
        try:
            pud = entry(pgd, va, 39, physical=False)
            pmd_t = entry(pud & _ADDR, va, 30)
        except FaultError:
            va += 1 << 30
            continue
        if not pud & _PRESENT or not pmd_t & _PRESENT or pmd_t & _HUGE:
            va += 1 << 30
            continue
        table = pmd_t & _ADDR
        out[table] = pfns(va, va + (1 << 30))
        for i in range(512):
            v2 = va + (i << 21)
            try:
                pmd = entry(table, v2, 21)
            except FaultError:
                continue
            if pmd & _PRESENT and not pmd & _HUGE:
                out[pmd & _ADDR] = pfns(v2, v2 + (1 << 21))
        va += 1 << 30
    return out


class DumpFacts:
    """Where the structures the faults hit lie, from the clean dump."""

    def __init__(self, s: "K.Subject") -> None:
        prog, k = s.prog, s.k
        self.record_page: Dict[int, int] = {}  # block -> page of its memory_block
        self.altmap_page: Dict[int, int] = {}
        self.on_page: Dict[int, Set[int]] = {}  # page -> blocks with a record on it
        mb_size = sizeof(k.mb_type)
        al_size = sizeof(k.altmap_type) if k.altmap_type is not None else 0
        for bid, b in s.blocks.items():
            for addr, size, where in ((b["address"], mb_size, self.record_page),
                                      (b["altmap_address"], al_size, self.altmap_page)):
                if not addr:
                    continue
                first, last = _phys(prog, addr), _phys(prog, addr + size - 1)
                where[bid] = first - first % k.page_size
                for pa in {first - first % k.page_size, last - last % k.page_size}:
                    self.on_page.setdefault(pa, set()).add(bid)
        self.xa_nodes = [(_phys(prog, a) // k.page_size * k.page_size, ids)
                         for a, ids in _xa_nodes(prog)]
        self.tables = _vmemmap_tables(s)

    def blocks_lost_with(self, page: int) -> Tuple[Set[int], Set[int]]:
        """(blocks whose record or altmap is on ``page``, those plus every
        block under an xarray node on it)."""
        direct = set(self.on_page.get(page, ()))
        under = set(direct)
        for node_page, ids in self.xa_nodes:
            if node_page == page:
                under |= ids
        return direct, under


def facts(s: "K.Subject") -> DumpFacts:
    f = getattr(s, "_dump_facts", None)
    if f is None:
        f = s._dump_facts = DumpFacts(s)
    return f


# --- drawing ---------------------------------------------------------------------------


def _frame_of(s: "K.Subject", pfn: int) -> Optional[int]:
    """Physical frame backing ``pfn``'s struct page."""
    try:
        return follow_phys(s.init_mm, s.k.vmemmap + pfn * s.k.page_bytes).value_() \
            >> s.k.page_shift
    except FaultError:
        return None


def _described(s: "K.Subject", frame: int, pfn: int) -> Set[int]:
    """Every pfn whose struct page lies on ``frame`` (HVO's aliases too)."""
    per = s.k.page_size // s.k.page_bytes
    firsts = set(s.frame_users.get(frame, ())) | {pfn - pfn % per}
    return {first + i for first in firsts for i in range(per)}


def _memmap_frames(s: "K.Subject", bid: int) -> Optional[List[int]]:
    """Every frame backing block ``bid``'s memmap, None if one is missing
    or also backs struct pages outside the block."""
    k = s.k
    per = k.page_size // k.page_bytes
    lo, hi = bid * k.ppb, (bid + 1) * k.ppb
    frames: List[int] = []
    for pfn in range(lo, hi, per):
        frame = _frame_of(s, pfn)
        if frame is None or any(not lo <= p < hi for p in _described(s, frame, pfn)):
            return None
        frames.append(frame)
    return sorted(set(frames))


def draw(s: "K.Subject", rng: random.Random, index: int) -> Optional["C.Mutation"]:
    k = s.k
    f = facts(s)
    kind = C._weighted(rng, KINDS)
    hot = [b for b in s.hotplugged if b in s.blocks]
    pool = hot if hot and rng.random() < 0.7 else sorted(s.blocks)
    bid = rng.choice(pool)
    ctx: Dict[str, Any] = {"kind": kind, "expect": EXPECT[kind], "block": bid}
    if kind == "memory-block-page":
        if bid in f.altmap_page and rng.random() < 1 / 3:
            page, what = f.altmap_page[bid], "vmem_altmap"
        elif bid in f.record_page:
            page, what = f.record_page[bid], "memory_block"
        else:
            return None
        direct, under = f.blocks_lost_with(page)
        records = {b for b in direct if f.record_page.get(b) == page}
        for node_page, ids in f.xa_nodes:
            if node_page == page:
                records |= ids
        ctx.update(paddrs=[page], affected=sorted(under), records=sorted(records),
                   what=f"the page of block {bid}'s {what} ({page:#x})")
    elif kind == "page-table-page":
        if not f.tables:
            return None
        table = rng.choice(sorted(f.tables))
        lo, hi = f.tables[table]
        affected = sorted(b for b in s.blocks if b * k.ppb < hi and lo < (b + 1) * k.ppb)
        if not affected:
            return None
        ctx.update(paddrs=[table], affected=affected,
                   what=f"the vmemmap page table at {table:#x} (pfns {lo:#x}-{hi:#x})")
        bid = ctx["block"] = affected[0]
    elif kind == "memmap-frame":
        pfn = rng.randrange(bid * k.ppb, (bid + 1) * k.ppb)
        frame = _frame_of(s, pfn)
        if frame is None:
            return None
        described = _described(s, frame, pfn)
        ctx.update(paddrs=[frame << k.page_shift], described=sorted(described),
                   affected=sorted({p // k.ppb for p in described}),
                   what=f"memmap frame {frame:#x} (struct pages of pfn {pfn:#x})")
    else:
        if bid not in s.hotplugged:
            return None
        frames = _memmap_frames(s, bid)
        if not frames:
            return None
        ctx.update(frames=frames, affected=[bid], online=bid in s.online,
                   seed=rng.getrandbits(32),
                   what=f"block {bid}'s memmap ({len(frames)} frames) overwritten")
    for pa in ctx.get("paddrs", ()):
        if file_offset(s.segments, pa, k.page_size) is None:
            return None  # not in the dump to begin with
    return C.Mutation(index, "dump", bid, kind, 0, 0, 0, 1, (), ctx)


# --- running and judging ------------------------------------------------------------------


def _overwrite(s: "K.Subject", frames: Iterable[int], seed: int) -> List[Tuple[int, bytes]]:
    """Random bytes over ``frames`` in the working file; the old bytes."""
    rng = random.Random(seed)
    saved = []
    size = s.k.page_size
    for frame in frames:
        off = file_offset(s.segments, frame << s.k.page_shift, size)
        if off is None:
            continue
        saved.append((off, os.pread(s.fd, size, off)))
        os.pwrite(s.fd, rng.randbytes(size), off)
    return saved


def _verdicts(report: Dict[str, Any]) -> Dict[int, str]:
    return {b["block"]: b["verdict"] for b in report["blocks"]}


def _ranges(report: Dict[str, Any]) -> Dict[int, Tuple[int, int]]:
    return {r["block"]: (r["start_pfn"], r["nr_pages"]) for r in report["ranges"]}


def judge(s: "K.Subject", m: "C.Mutation", status: str,
          report: Optional[Dict[str, Any]], error: Optional[str]) -> List[str]:
    """What the outcome got wrong against the expectation (empty: met)."""
    ctx = m.context
    affected = set(ctx["affected"])
    if status != "ok":
        if status == "refused" and ctx["kind"] == "page-table-page" \
                and affected >= set(s.blocks):
            return []
        return [f"{status}: {error}"]
    assert report is not None
    wrong: List[str] = []
    new = [v for v in report["violations"] if K._vkey(v) not in s.baseline_violations]
    if new:
        wrong.append("new violations: " + ", ".join(
            f"{v['rule']} {v['pfn_start']:#x}-{v['pfn_end']:#x} block {v.get('block')}"
            for v in new[:5]))
    before, after = _verdicts(s.baseline), _verdicts(report)
    for b, v in sorted(before.items()):
        if b not in affected and after.get(b) != v:
            wrong.append(f"block {b} (not affected) went {v!r} -> {after.get(b)!r}")
    r0, r1 = _ranges(s.baseline), _ranges(report)
    for b in sorted(set(r0) | set(r1)):
        if b not in affected and r0.get(b) != r1.get(b):
            wrong.append(f"block {b} (not affected) range {r0.get(b)} -> {r1.get(b)}")
    kind = ctx["kind"]
    if kind == "memory-block-page":
        for b in ctx["records"]:
            if before.get(b) == "ok" and after.get(b) != "not checked (not in the dump)":
                wrong.append(f"block {b}, its record lost, is {after.get(b)!r}")
        for b in affected:
            if before.get(b) == "ok" and not str(after.get(b, "not checked")).startswith(
                    "not checked"):
                wrong.append(f"block {b}, affected, is {after.get(b)!r}")
    elif kind == "page-table-page":
        for b in affected:
            if after.get(b) in ("error", "warning") and before.get(b) != after.get(b):
                wrong.append(f"block {b}, its memmap unmapped, is {after.get(b)!r}")
    elif kind == "memmap-frame":
        spans = report.get("unreadable") or []
        # Offline blocks' memmap is stale and read by no rule (KERNEL-NOTES
        # §10): only online blocks' struct pages must be missed.
        missing = [p for p in ctx["described"] if p // s.k.ppb in s.online
                   and not any(lo <= p < hi for lo, hi in spans)]
        if missing:
            wrong.append(f"{len(missing)} pfns whose struct page is gone are not unreadable "
                         f"(first {missing[0]:#x})")
    else:
        bid = ctx["block"]
        damaged = {d["block"] for d in report.get("damaged") or []}
        if damaged - affected:
            wrong.append(f"blocks {sorted(damaged - affected)} called damaged")
        if ctx["online"] and (bid not in damaged
                              or after.get(bid) != "not checked (dump damaged)"):
            wrong.append(f"online block {bid} not reported damaged ({after.get(bid)!r})")
    return wrong


def run_one(s: "K.Subject", m: "C.Mutation", timeout: int = 60) -> "M.Outcome":
    ctx = m.context
    restore = None
    saved: List[Tuple[int, bytes]] = []
    try:
        if ctx["kind"] == "memmap-overwrite":
            saved = _overwrite(s, ctx["frames"], ctx["seed"])
        else:
            _, restore = exclude_in_place(s.path, ctx["paddrs"], s.k.page_size)
        status, answer = s.driver.check(timeout, True)
    finally:
        if restore is not None:
            restore()
        for off, data in saved:
            os.pwrite(s.fd, data, off)
    report = answer if status == "ok" else None
    error = None if status == "ok" else answer
    wrong = judge(s, m, status, report, error)
    flagged = {v["rule"] for v in (report or {}).get("violations", [])
               if K._vkey(v) not in s.baseline_violations}
    expect = {ctx["expect"]}
    if wrong:
        # A refusal or crash the expectation does not allow is a miss with
        # its reason, unless it is a crash (counted as one).
        if status in ("crash", "hang"):
            return M.Outcome(m, expect, status, set(), flagged, error, report)
        return M.Outcome(m, expect, "ok", set(), flagged, "; ".join(wrong), report)
    return M.Outcome(m, expect, "ok", expect, flagged, None, report)
