"""
Page-table backing of the memmap, checked against each fixture's ground truth
(the guest's sysfs and /proc/kpageflags, recorded in the manifest) and, page
by page, against drgn's own ``follow_phys()``.
"""

import random

import numpy as np
import pytest
from drgn import FaultError
from drgn.helpers.linux.mm import follow_phys

from drgn_vmemmap.backing import (
    KINDS,
    frames_to_described,
    self_hosted_runs,
    vmemmap_backing,
)
from drgn_vmemmap.model import memory_map
from drgn_vmemmap.pagetable import Mapping, PageTableWalker, _append, translate
from drgn_vmemmap.pgformat import x86_64

from conftest import kernel_config, pagetable_faults

#: Block states as sysfs prints them.
SYSFS_STATE = {"MEM_ONLINE": "online", "MEM_OFFLINE": "offline",
               "MEM_GOING_OFFLINE": "going-offline"}


def _expected_pa(extents, va):
    for e in extents:
        if e.va <= va < e.va + e.size:
            if e.pa is None:
                return None
            page = 1 << extents.page_shift
            return e.pa + ((va - e.va) % page if e.aliased else va - e.va)
    raise AssertionError(f"{va:#x} is in no extent")


def test_self_hosted_runs_match_truth(prog, manifest):
    mm = memory_map(prog)
    faulted = pagetable_faults(manifest)
    found = [{"block": r.block, "start_pfn": r.start_pfn, "nr_pages": r.nr_pages,
              "state": SYSFS_STATE.get(r.state, r.state), "node": r.node}
             for r in self_hosted_runs(mm, vmemmap_backing(prog, mm))]
    # Frames only: force-mode padding (reserved_pages) is the checker's
    # business (test_check.py), not the page tables'.
    truth = sorted(({k: v for k, v in r.items() if k != "reserved_pages"}
                    for r in manifest["truth"]["self_hosted"]),
                   key=lambda r: (r["block"], r["start_pfn"]))
    # A block whose vmemmap PMD was cleared or pointed elsewhere no longer
    # hosts its own memmap: the page tables, not the record, say so.  One
    # whose folio vmemmap was remapped as HVO does has two runs of frames,
    # split by the orphaned ones.
    want = []
    for r in truth:
        op, _ = faulted.get(r["block"], (None, None))
        if op is None:
            want.append(r)
        elif op == "hvo_remap":
            f = next(f for f in manifest["faults"] if f["op"] == "hvo_remap")
            lo, hi = f["module"]["orphaned_frames"]
            want.append(dict(r, nr_pages=lo - r["start_pfn"]))
            want.append(dict(r, start_pfn=hi, nr_pages=r["start_pfn"] + r["nr_pages"] - hi))
        elif op == "vmemmap_fallback":
            # Its last vmemmap page moved off the altmap: the frame that
            # held it (the module's old_frame, the run's last) backs nothing.
            f = next(f for f in manifest["faults"] if f["op"] == "vmemmap_fallback")
            assert f["module"]["old_frame"] == r["start_pfn"] + r["nr_pages"] - 1
            want.append(dict(r, nr_pages=r["nr_pages"] - 1))
    assert found == want


def test_pagetable_faults_seen():
    """Where faultmod cleared or redirected a vmemmap PMD, the walk sees it."""
    from conftest import fixture_program, manifests
    seen = 0
    for name, manifest in manifests().items():
        faulted = pagetable_faults(manifest)
        if not faulted:
            continue
        prog = fixture_program(name)
        mm = memory_map(prog)
        extents = vmemmap_backing(prog, mm)
        per = mm.features.sections_per_block
        for block, (op, frame) in faulted.items():
            kinds = {(e.kind, e.frame_start_pfn) for e in extents if e.section // per == block}
            if op == "hvo_remap":
                continue  # test_hvo_remap_seen
            if op == "vmemmap_fallback":
                # Only the last vmemmap page moved: the rest stays self-hosted.
                assert ("ordinary", frame) in kinds
                assert {k for k, _ in kinds} == {"ordinary", "self-hosted"}
            elif op == "pmd_clear":
                assert kinds == {("unbacked", None)}
            else:
                # Pointed into another block's vmemmap area (the manifest's
                # self-hosted frames of that block): other-block.  Pointed at
                # ordinary frames: what the page allocator could have given.
                area = any(r["start_pfn"] <= frame < r["start_pfn"] + r.get(
                    "reserved_pages", r["nr_pages"]) for r in manifest["truth"]["self_hosted"])
                assert kinds == {("other-block" if area else "ordinary", frame)}
            seen += 1
    assert seen >= 2


def test_hvo_remap_seen():
    """faultmod did to a self-hosted folio's vmemmap what HVO does: the walk
    sees the folio's 8 vmemmap pages on one frame (the first), the other 7
    frames of the block's vmemmap back nothing, and the block's 512-page range
    has them as 7 holes (505 frames)."""
    from drgn_vmemmap.context import Context

    from conftest import fixture_program, manifests
    seen = 0
    for name, manifest in manifests().items():
        for f in manifest.get("faults", []):
            if f["op"] != "hvo_remap":
                continue
            prog = fixture_program(name)
            ctx = Context(prog)
            head, block = f["target"]["pfn"], f["target"]["block"]
            reused = f["module"]["reused_frame"]
            orphans = range(*f["module"]["orphaned_frames"])
            assert len(orphans) == f["module"]["remapped_pages"] == 7
            folio = [e for e in ctx.extents_overlapping(head, head + 512)]
            aliased = [e for e in folio if e.aliased]
            assert len(aliased) == 1
            a = aliased[0]
            assert (a.kind, a.frame_start_pfn, a.nr_frames, a.host_block) == \
                ("self-hosted", reused, 1, block)
            assert a.size == 8 * 4096
            # Every struct page of the folio is still mapped; none on an orphan.
            assert sum(e.size for e in folio) >= 512 * 64
            backing = {fr for e in ctx.extents() if e.frame_start_pfn is not None
                       for fr in range(e.frame_start_pfn, e.frame_end_pfn)}
            assert not backing & set(orphans)
            # The reused frame holds the folio's first 64 struct pages and,
            # through the alias, all 512; the orphans hold none.
            got = frames_to_described(ctx.extents(), reused)
            assert (min(s for s, _, _ in got), max(e for _, e, _ in got)) == (head, head + 512)
            assert all(frames_to_described(ctx.extents(), o) == [] for o in orphans)
            r = ctx.self_hosted_by_block()[block]
            assert (r.start_pfn, r.nr_pages, r.reserved_pages, r.holes, r.frames) == \
                (block * 32768, 512, 512, 7, 512 - 7)
            seen += 1
    assert seen, "the corpus has an hvo_remap fault"


def test_self_hosted_zone(prog, manifest):
    # An online block's sysfs valid_zones is the one zone it is in.
    mm = memory_map(prog)
    zones = {b["id"]: b["valid_zones"] for b in manifest["truth"]["blocks"]}
    for r in self_hosted_runs(mm, vmemmap_backing(prog, mm)):
        if r.state == "online":
            assert [r.zone] == zones[r.block], r


def test_kinds_by_block(prog, manifest):
    mm = memory_map(prog)
    extents = vmemmap_backing(prog, mm)
    per = mm.features.sections_per_block
    assert {e.kind for e in extents} <= set(KINDS)
    faulted = pagetable_faults(manifest)
    for b in manifest["truth"]["blocks"]:
        if b["id"] in faulted:
            continue  # test_pagetable_faults_seen
        kinds = {e.kind for e in extents if e.section // per == b["id"]}
        assert kinds, f"block {b['id']}: no extents"
        if not b["hotplugged"]:
            # Boot memory is never self-hosted, wherever its memmap lies
            # (HVO's replacement pages may be ordinary frames of a
            # hot-plugged block).
            assert kinds <= {"boot-allocated", "ordinary"}, (b["id"], kinds)
        elif b.get("vmemmap_pages"):
            assert "self-hosted" in kinds, (b["id"], kinds)
            assert "other-block" not in kinds, (b["id"], kinds)
        else:
            # Hot-plugged without memmap_on_memory (6.1's 256 MiB DIMMs,
            # memmap_on_memory=0): page-allocator frames, never an altmap area.
            assert kinds == {"ordinary"}, (b["id"], kinds)


def test_no_early_section_self_hosted(prog):
    mm = memory_map(prog)
    for e in vmemmap_backing(prog, mm):
        if mm.sections[e.section].has("IS_EARLY"):
            assert e.kind != "self-hosted", e


def test_boot_memmap_in_own_block(prog):
    # The memblock memmap sits at the top of each node, so the last boot
    # block's struct pages live in that very block: boot-allocated.
    mm = memory_map(prog)
    per = mm.features.sections_per_block
    own = [e for e in vmemmap_backing(prog, mm)
           if mm.sections[e.section].has("IS_EARLY") and e.host_block == e.section // per]
    if not own:
        pytest.skip("no boot memmap inside its own block in this dump")
    assert {e.kind for e in own} == {"boot-allocated"}


def test_every_struct_page_backed(prog, manifest):
    mm = memory_map(prog)
    extents = vmemmap_backing(prog, mm)
    cleared = {b for b, (op, _) in pagetable_faults(manifest).items() if op == "pmd_clear"}
    per = mm.features.sections_per_block
    assert not [e for e in extents if e.kind == "unreadable"
                or (e.kind == "unbacked" and e.section // per not in cleared)]
    by_section = {}
    for e in extents:
        by_section.setdefault(e.section, []).append(e)
    for nr, s in mm.sections.items():
        if not s.has("HAS_MEM_MAP"):
            continue
        es = sorted(by_section.get(nr, ()), key=lambda e: e.va)
        assert es, f"section {nr}: no extents"
        assert es[0].described_start_pfn == s.start_pfn
        assert es[-1].described_end_pfn == s.end_pfn
        for a, b in zip(es, es[1:]):
            assert a.va + a.size == b.va
        size = sum(e.size for e in es)
        assert size == s.nr_pages * mm.features.layout.size


def test_against_follow_phys(prog):
    mm = memory_map(prog)
    extents = vmemmap_backing(prog, mm)
    f = mm.features
    page = 1 << f.page_shift
    init_mm = prog["init_mm"].address_of_()
    rng = random.Random(0)
    checked = 0
    for s in mm.sections.values():
        if not s.has("HAS_MEM_MAP"):
            continue
        start = f.vmemmap_base + s.start_pfn * f.layout.size
        # A section's memmap can be under a page (ppc64 64K: 16 KiB).
        size = s.nr_pages * f.layout.size
        n = -(-size // page)
        for i in {0, n - 1, *rng.sample(range(n), min(n, 64))}:
            va = start + min(i * page + rng.randrange(page), size - 1)
            try:
                pa = follow_phys(init_mm, va).value_()
            except FaultError:
                pa = None
            assert _expected_pa(extents, va) == pa, f"{va:#x}"
            checked += 1
    assert checked


def test_slow_path_agrees(prog):
    mm = memory_map(prog)
    fast = vmemmap_backing(prog, mm)
    slow = vmemmap_backing(prog, mm, slow=True)
    assert list(slow) == list(fast)
    assert vmemmap_backing(prog, mm) is fast  # cached for a dump


def test_hvo_aliases(prog, manifest):
    # HVO'd HugeTLB folios in boot memory: their tail struct pages share
    # frames, so some extent is aliased; each aliased extent must really
    # repeat one frame.
    extents = vmemmap_backing(prog)
    aliased = [e for e in extents if e.aliased]
    if kernel_config(manifest, "HUGETLB_PAGE_OPTIMIZE_VMEMMAP") != "y":
        # No HVO in this kernel (6.12-force): nothing may alias.
        assert not aliased
        return
    assert aliased, "the fixture has HVO'd HugeTLB pages in boot memory"
    page = 1 << extents.page_shift
    for e in aliased[:16]:
        data = {prog.read(e.va + off, 64) for off in range(0, e.size, page)}
        assert len(data) == 1, e


def _spans(got):
    """frames_to_described()'s pfn ranges, adjacent ones merged: one frame
    holds the struct pages of several sections (one extent each) where a
    section's memmap is under a page (ppc64 64K: 16 KiB)."""
    out = []
    for s, e, _ in got:
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def test_frames_to_described(prog, manifest):
    mm = memory_map(prog)
    extents = vmemmap_backing(prog, mm)
    per_frame = (1 << mm.features.page_shift) // mm.features.layout.size
    # Frames a pmd_remap fault pointed another block at hold two memmaps.
    faults = pagetable_faults(manifest)
    shared = {frame for op, frame in faults.values() if frame and op == "pmd_remap"}
    remapped = {b for b, (op, _) in faults.items() if op == "hvo_remap"}
    # A block whose last vmemmap page moved to a page-allocator frame: its
    # last self-hosted frame describes the pfns before the moved ones.
    fallback = {b: frame for b, (op, frame) in faults.items() if op == "vmemmap_fallback"}
    for r in self_hosted_runs(mm, extents):
        if r.block in remapped:
            continue  # test_hvo_remap_seen
        if r.block in fallback:
            b = mm.blocks[r.block]
            moved = frames_to_described(extents, fallback[r.block])
            assert _spans(moved) == [(b.end_pfn - per_frame, b.end_pfn)]
            assert {e.kind for _, _, e in moved} == {"ordinary"}
            last = frames_to_described(extents, r.start_pfn + r.nr_pages - 1)
            assert _spans(last) == [(b.end_pfn - 2 * per_frame, b.end_pfn - per_frame)]
            continue
        if r.start_pfn in shared:
            assert len(frames_to_described(extents, r.start_pfn)) == 2
            continue
        b = mm.blocks[r.block]
        got = frames_to_described(extents, r.start_pfn)
        assert _spans(got) == [(b.start_pfn, b.start_pfn + per_frame)]
        assert {e.kind for _, _, e in got} == {"self-hosted"}
        last = frames_to_described(extents, r.start_pfn + r.nr_pages - 1)
        assert _spans(last) == [(b.end_pfn - per_frame, b.end_pfn)]
        if r.start_pfn + r.nr_pages not in shared:
            # The first frame past a block's vmemmap holds no struct page,
            # unless a pmd_remap fault pointed another block's memmap there.
            assert frames_to_described(extents, r.start_pfn + r.nr_pages) == []


def test_unmapped_hole(prog):
    mm = memory_map(prog)
    f = mm.features
    hole = next((nr for nr in range(max(mm.sections)) if nr not in mm.sections), None)
    if hole is None:
        pytest.skip("no absent section")
    start = f.vmemmap_base + hole * f.pages_per_section * f.layout.size
    length = f.pages_per_section * f.layout.size
    assert translate(prog, start, length) == [Mapping(start, None, length, "unmapped")]


def test_unreadable_table(prog):
    # Simulate a filtered dump: the page-table page that maps the first
    # hot-plugged section's memmap cannot be read.
    mm = memory_map(prog)
    f = mm.features
    nr = max(mm.sections)
    start = f.vmemmap_base + nr * f.pages_per_section * f.layout.size
    length = f.pages_per_section * f.layout.size
    walker = PageTableWalker(prog)
    assert all(m.status == "mapped" for m in walker.translate(start, length))
    pmd_tables = [k for k, v in walker._tables.items() if k > 0 and
                  isinstance(v, np.ndarray)]
    assert pmd_tables
    for k in pmd_tables:
        walker._tables[k] = FaultError("excluded page", k)
    got = walker.translate(start, length)
    assert got == [Mapping(start, None, length, "unreadable")]


def test_coalescing():
    out = []
    for va, pa in ((0, 0x10000), (0x1000, 0x11000), (0x2000, 0x11000), (0x3000, 0x11000),
                   (0x4000, 0x12000)):
        _append(out, Mapping(va, pa, 0x1000))
    assert out == [Mapping(0, 0x10000, 0x1000), Mapping(0x1000, 0x11000, 0x3000, "mapped", 0x1000),
                   Mapping(0x4000, 0x12000, 0x1000)]
    _append(out, Mapping(0x5000, None, 0x1000, "unmapped"))
    _append(out, Mapping(0x6000, None, 0x1000, "unmapped"))
    _append(out, Mapping(0x7000, None, 0x1000, "unreadable"))
    assert out[-2:] == [Mapping(0x5000, None, 0x2000, "unmapped"),
                        Mapping(0x7000, None, 0x1000, "unreadable")]


def _synthetic_walker(l5, entries):
    """A walker over made-up tables: ``entries`` maps (level, va) to an entry
    value, or to a list for the next table (allocated here)."""
    walker = PageTableWalker.__new__(PageTableWalker)
    walker.prog = None
    walker.fmt = x86_64(l5, (1 << 52) - 1)
    walker.pgd = 0x1000
    walker.tables_read = 0
    walker._levels = {}
    walker._used = None
    tables = {-walker.pgd: np.zeros(512, dtype="<u8")}
    next_pa = [0x7000000]

    def table_for(level, va):
        t = tables[-walker.pgd]
        for shift in walker.fmt.shifts[:level]:
            i = (va >> shift) & 511
            if not t[i]:
                next_pa[0] += 0x1000
                tables[next_pa[0]] = np.zeros(512, dtype="<u8")
                t[i] = next_pa[0] | 0x63
            t = tables[int(t[i]) & ~0xFFF & ((1 << 52) - 1)]
        return t

    for (level, va), value in entries.items():
        table_for(level, va)[(va >> walker.fmt.shifts[level]) & 511] = value
    walker._tables = tables
    return walker


@pytest.mark.parametrize("l5", [False, True])
def test_synthetic_leaves(l5):
    base = 0xFFD4000000000000 if l5 else 0xFFFFEA0000000000
    nx, pse, pat_large, rw = 1 << 63, 1 << 7, 1 << 12, 0x63
    pud, pmd, pte = (2, 3, 4) if l5 else (1, 2, 3)
    g = 1 << 30
    walker = _synthetic_walker(l5, {
        # A 1 GiB leaf with PAT and NX set, then a 2 MiB leaf and PTEs.
        (pud, base): 0x40000000 | pat_large | pse | nx | rw,
        (pmd, base + g): 0x80200000 | pat_large | pse | nx | rw,
        (pte, base + g + (2 << 20)): 0x80400000 | nx | rw,  # continues the PMD leaf
        (pte, base + g + (2 << 20) + 0x1000): 0x6000 | rw,
        (pte, base + g + (2 << 20) + 0x2000): 0x6000 | rw,
        (pte, base + g + (2 << 20) + 0x3000): 0x6000 | 0x62,  # not present
    })
    got = walker.translate(base + 0x123000, g + (2 << 20) + 0x5000 - 0x123000)
    assert got == [
        Mapping(base + 0x123000, 0x40123000, g - 0x123000),
        Mapping(base + g, 0x80200000, 0x201000),
        Mapping(base + g + 0x201000, 0x6000, 0x2000, "mapped", 0x1000),
        Mapping(base + g + 0x203000, None, 0x2000, "unmapped"),
    ]


def test_walker_kept_across_walks(prog):
    """A walker kept from one walk to the next (``watch``'s LiveModel): the
    same backing as a new walker's, nothing changed on re-reading a core
    dump's tables, and after :meth:`end_walk` only the tables the last walk
    used are kept.  A table altered in the cache is seen changed."""
    from drgn_vmemmap.pagetable import walker_for

    mm = memory_map(prog)
    walker = walker_for(prog)
    if walker is None:
        pytest.skip("no bulk page-table format")
    walker.start_walk()
    first = vmemmap_backing(prog, mm, walker=walker)
    walker.end_walk()
    assert list(first) == list(vmemmap_backing(prog, mm, slow=False))
    used = set(walker._tables)
    assert first.tables_read == len(used) > 0
    assert walker.reread() == 0
    # A second walk reads nothing new and keeps the same tables.
    walker.start_walk()
    again = vmemmap_backing(prog, mm, walker=walker)
    walker.end_walk()
    assert list(again) == list(first) and again.tables_read == 0
    assert set(walker._tables) == used
    # Tables of another address range (the direct map's first pages),
    # which the next walk does not use, go.
    from drgn.helpers.linux.mm import pfn_to_virt
    walker.translate(pfn_to_virt(prog, 0).value_(), 1 << 21)
    assert set(walker._tables) - used
    walker.start_walk()
    vmemmap_backing(prog, mm, walker=walker)
    walker.end_walk()
    assert set(walker._tables) == used
    # One cached table altered: reread() finds it (and restores the truth).
    key = next(k for k in used if k > 0)
    walker._tables[key] = walker._tables[key].copy()
    walker._tables[key][0] ^= np.uint64(1)
    assert walker.reread() == 1 and walker.reread() == 0
