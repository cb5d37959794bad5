"""
Tests for :mod:`drgn_vmemmap.scan`: the bulk struct-page scanner against the
guest's own ``/proc/kpageflags`` (the manifests' ``truth.kpageflags``), against
drgn objects, and against simulated holes in the dump.
"""

import numpy as np
import pytest
from drgn import FaultError
from drgn.helpers.linux.mm import pfn_to_page

from drgn_vmemmap import scan
from drgn_vmemmap.features import PageTypes, features
from drgn_vmemmap.model import memory_map
from drgn_vmemmap.scan import (
    PageColumns,
    buddy_pages,
    flag_set,
    has_type,
    head_pfns,
    iter_section_chunks,
    runs,
    scan_pfns,
    type_is,
    type_name,
    unreadable_ranges,
)

from conftest import capture_overwrote, fixture_program, manifests

MANIFESTS = manifests()
NAMES = sorted(MANIFESTS)
#: Fixtures whose memmap is what the guest saw (not a damaged kdump's).
INTACT = [n for n in NAMES if not capture_overwrote(MANIFESTS[n])]
#: Free pages move between the buddy lists, the per-cpu lists and users while
#: the guest runs its kpageflags dump and the dump itself: tolerate this much.
BUDDY_CHURN = 0.01
#: Largest share of an online block whose struct pages may be missing.
MAX_UNREADABLE = 0.02
#: kpageflags names of the page flags that the fault-injection module flips.
FAULT_FLAGS = {"owner_priv_1": "owner_private", "reserved": "reserved"}


def _release(manifest):
    return tuple(int(x) for x in manifest["kernel"]["release"].split("-")[0].split(".")[:2])


def _truth_masks(manifest, block_id, start_pfn, n):
    """
    kpageflags of a block as masks by flag name, with the manifest's injected
    flag faults applied (set and clear are idempotent, so this holds whether
    kpageflags was read before or after the injection).
    """
    masks = {}

    def mask(name):
        return masks.setdefault(name, np.zeros(n, bool))

    for pfn, count, names in manifest["truth"]["kpageflags"][str(block_id)]:
        for name in names:
            mask(name)[pfn - start_pfn:pfn - start_pfn + count] = True
    for fault in manifest.get("faults", ()):
        op = fault.get("module", {})
        if op.get("op") in ("set_flag", "clear_flag") and op.get("flag") in FAULT_FLAGS:
            a = op["pfn"] - start_pfn
            if 0 <= a < n:
                mask(FAULT_FLAGS[op["flag"]])[a:a + op["count"]] = op["op"] == "set_flag"
    return mask


def _online_hotplugged(manifest):
    kpf = manifest["truth"]["kpageflags"]
    for b in manifest["truth"]["blocks"]:
        if b.get("hotplugged") and b["state"] == "online" and str(b["id"]) in kpf:
            yield b


@pytest.mark.parametrize("name", INTACT)
def test_kpageflags(name, record_property):
    manifest = MANIFESTS[name]
    prog = fixture_program(name)
    f = features(prog)
    # Linux kernel commit dee3d0bef2b0 ("proc: rewrite stable_page_flags()")
    # (in v6.9): kpageflags copies PG_* bits from the folio (head) page.
    folio_flags = _release(manifest) >= (6, 9)
    blocks = list(_online_hotplugged(manifest))
    assert blocks, "no online hot-plugged block with kpageflags"
    unreadable_by_block = {}
    for b in blocks:
        cols = scan_pfns(prog, b["start_pfn"], b["start_pfn"] + b["nr_pages"])
        n = len(cols)
        truth = _truth_masks(manifest, b["id"], cols.start_pfn, n)
        assert not truth("nopage").any(), f"block {b['id']}: online but nopage"
        unreadable = unreadable_by_block[b["id"]] = n - cols.nr_readable
        record_property("unreadable", unreadable_by_block)
        assert unreadable <= MAX_UNREADABLE * n, \
            f"block {b['id']}: {unreadable} of {n} struct pages unreadable"

        compared = cols.readable.copy()
        flags = cols.flags
        if folio_flags:
            heads = head_pfns(cols) - cols.start_pfn
            inside = (heads >= 0) & (heads < n)
            compared &= inside
            heads = np.where(inside, heads, 0)
            compared &= cols.readable[heads]
            flags = flags[heads]

        def bit(name, flags=flags):
            return ((flags >> np.uint64(f.page_flags[name])) & np.uint64(1)).astype(bool)

        for kpf, mine in (("owner_private", bit("PG_owner_priv_1")),
                          ("reserved", bit("PG_reserved")),
                          ("offline", type_is(cols, "offline"))):
            diff = (mine != truth(kpf)) & compared
            assert not diff.any(), \
                f"block {b['id']}: {kpf} differs on {runs(diff, cols.start_pfn)[:5]}"

        mine = buddy_pages(cols)
        diff = (mine != truth("buddy")) & cols.readable
        # Not vacuous: most pages outside HugeTLB folios, the block's own
        # vmemmap area and virtio-mem's unplugged (PageOffline) sub-blocks,
        # none of which is ever free, are free (a block the scenario filled
        # with folios has few others: 6.12-devices-mixed's blocks 4 and 33).
        huge = len(manifest["truth"].get("hugepage_heads", {}).get(str(b["id"]), [])) * 512
        vmemmap = b.get("reserved_pages", b.get("vmemmap_pages", 0))
        offline = int(truth("offline")[cols.readable].sum())
        assert truth("buddy")[cols.readable].sum() > \
            0.5 * (cols.nr_readable - huge - vmemmap - offline)
        assert diff.sum() <= BUDDY_CHURN * n, \
            f"block {b['id']}: buddy differs on {int(diff.sum())} pages: " \
            f"{runs(diff, cols.start_pfn)[:5]}"

        owner = flag_set(cols, f.page_flags["PG_owner_priv_1"])
        if unreadable == 0:
            assert int(owner.sum()) == int(truth("owner_private").sum()), f"block {b['id']}"
            if not manifest.get("faults"):
                assert int(owner.sum()) == b["owner_private_pages"], f"block {b['id']}"


@pytest.mark.parametrize("name", NAMES)
def test_columns_match_objects(name):
    prog = fixture_program(name)
    b = next(_online_hotplugged(MANIFESTS[name]))
    # One pfn of each kpageflags run: vmemmap, buddy, compound head/tail...
    pfns = [pfn for pfn, _, _ in MANIFESTS[name]["truth"]["kpageflags"][str(b["id"])]][:40]
    cols = scan_pfns(prog, pfns[0], pfns[-1] + 1)
    for pfn in pfns:
        i = pfn - cols.start_pfn
        try:
            page = pfn_to_page(prog, pfn)[0].read_()
        except FaultError:
            assert not cols.readable[i]
            continue
        assert cols.readable[i]
        fl = page.flags
        if fl.type_.unaliased().kind.name == "STRUCT":  # memdesc_flags_t (7.2)
            fl = fl.f
        info = page.compound_info if page.type_.has_member("compound_info") \
            else page.compound_head
        assert int(cols.flags[i]) == fl.value_()
        assert int(cols.refcount[i]) == page._refcount.counter.value_()
        pt = page.page_type if page.type_.has_member("page_type") else page._mapcount.counter
        assert int(cols.page_type[i]) == pt.value_() & 0xFFFFFFFF
        assert int(cols.mapping[i]) == page.mapping.value_()
        assert int(cols.private[i]) == page.private.value_()
        assert int(cols.compound_head[i]) == info.value_()


@pytest.mark.parametrize("name", INTACT)
def test_unmapped_section_boundary(name):
    """The vmemmap of an absent section is unmapped: exactly it is unreadable."""
    prog = fixture_program(name)
    mm = memory_map(prog)
    per = mm.features.pages_per_section
    starts = [nr for nr in sorted(mm.sections) if nr > 0 and nr - 1 not in mm.sections]
    if not starts:
        pytest.skip("no absent section before a present one")
    boundary = starts[0] * per
    cols = scan_pfns(prog, boundary - 100, boundary + 100)
    assert unreadable_ranges(cols) == [(boundary - 100, boundary)]
    assert cols.faults and cols.faults[0][:2] == (boundary - 100, boundary)
    assert not cols.flags[:100].any()
    whole = scan_pfns(prog, boundary, boundary + 100)
    assert whole.readable.all()
    assert (whole.flags == cols.flags[100:]).all()


@pytest.mark.parametrize("name", NAMES[:1])
def test_simulated_holes(name, monkeypatch):
    """Bisection marks exactly the struct pages of the missing 4 KiB pages."""
    prog = fixture_program(name)
    f = features(prog)
    block = next(_online_hotplugged(MANIFESTS[name]))
    start = block["start_pfn"]
    end = start + f.pages_per_section
    clean = scan_pfns(prog, start, end)
    page = 1 << f.page_shift
    base = f.vmemmap_base + start * f.layout.size
    holes = [base + 3 * page, base + 4 * page, base + 100 * page, base + 511 * page]
    real_read = scan._read
    calls = []

    def holey_read(prog, address, size):
        calls.append(size)
        for h in holes:
            if address < h + page and h < address + size:
                raise FaultError("simulated excluded page", h)
        return real_read(prog, address, size)

    monkeypatch.setattr(scan, "_read", holey_read)
    done = []
    cols = scan_pfns(prog, start, end, progress=lambda d, t: done.append((d, t)))
    expected = np.ones(len(cols), bool)
    for h in holes:
        a = (h - f.vmemmap_base) // f.layout.size - start
        expected[a:-(-(h + page - f.vmemmap_base) // f.layout.size) - start] = False
    assert (cols.readable == expected).all()
    assert len(calls) < 100, calls  # bisection, not a page-by-page read
    for column in ("flags", "refcount", "page_type", "mapping", "private", "compound_head"):
        got, want = getattr(cols, column), getattr(clean, column)
        assert (got[expected] == want[expected]).all(), column
        assert not got[~expected].any(), column
    assert [r[:2] for r in cols.faults] == unreadable_ranges(cols)
    assert all(r[2] == "simulated excluded page" for r in cols.faults)
    assert done[-1] == (len(cols), len(cols))
    assert not (has_type(cols) & ~expected).any()


@pytest.mark.parametrize("name", NAMES[:1])
def test_iter_section_chunks(name):
    prog = fixture_program(name)
    f = features(prog)
    block = next(_online_hotplugged(MANIFESTS[name]))
    start, per = block["start_pfn"], f.pages_per_section
    ranges = [(start - 5, start + 1000), (start + per - 10, start + per)]
    whole = [scan_pfns(prog, s, e) for s, e in ranges]
    progress = []
    chunks = list(iter_section_chunks(prog, ranges, chunk_pages=256,
                                      progress=lambda d, t: progress.append((d, t))))
    assert all(len(c) <= 256 for c in chunks)
    assert all(c.start_pfn // 256 == (c.end_pfn - 1) // 256 for c in chunks)
    assert progress[-1] == (1005 + 10, 1005 + 10)
    got = np.concatenate([c.flags for c in chunks])
    assert (got == np.concatenate([w.flags for w in whole])).all()


def _synthetic(page_types, page_type, compound_head=None, private=None):
    n = len(page_type)
    cols = PageColumns(1000, 1000 + n, page_types, 0xFFFFEA0000000000, 64)
    cols.page_type = np.array(page_type, np.uint32)
    cols.readable = np.ones(n, bool)
    if compound_head is not None:
        cols.compound_head = np.array(compound_head, np.uint64)
    if private is not None:
        cols.private = np.array(private, np.uint64)
    return cols


def test_page_type_decoding():
    pgty = PageTypes("pgty", 0, {"buddy": 0xF0, "offline": 0xF1}, "test")
    cols = _synthetic(pgty, [0xFFFFFFFF, 0xF0000000, 0xF1000003, 0xFF000000,
                             0x00000000, 0x7F000000, 0x80000000])
    cols.readable[-1] = False
    assert has_type(cols).tolist() == [False, True, True, False, False, False, False]
    assert type_is(cols, "buddy").tolist() == [False, True] + [False] * 5
    assert type_is(cols, "offline").tolist() == [False, False, True] + [False] * 4
    with pytest.raises(LookupError):
        type_is(cols, "vmemmap")
    assert [type_name(v, pgty) for v in (0xFFFFFFFF, 0xF0000000, 0xF1000003, 0xF7000000)] \
        == [None, "buddy", "offline", "unknown (0xf7000000)"]

    inverted = PageTypes("inverted", 0xF0000000, {"buddy": 0x80, "offline": 0x100}, "test")
    cols = _synthetic(inverted, [0xFFFFFFFF, 0xFFFFFF7F, 0xFFFFFEFF, 0xFFFFFE7F,
                                 0x0, 0xFFFFFFFE, 0x7FFFFF7F])
    assert has_type(cols).tolist() == [False, True, True, True, False, False, False]
    assert type_is(cols, "buddy").tolist() == [False, True, False, True, False, False, False]
    assert type_is(cols, "offline").tolist() == [False, False, True, True, False, False, False]
    assert (type_is(cols, "buddy", inverted) == type_is(cols, "buddy")).all()
    assert [type_name(v, inverted) for v in (0xFFFFFFFF, 0xFFFFFF7F, 0xFFFFFE7F, 0xFFFFF7FF)] \
        == [None, "buddy", "buddy|offline", "unknown (0xfffff7ff)"]


def test_head_pfns_and_buddy():
    pgty = PageTypes("pgty", 0, {"buddy": 0xF0}, "test")
    base, size = 0xFFFFEA0000000000, 64
    head_ptr = base + 1000 * size + 1  # pointer form: tails of pfn 1000
    mask = (~((1 << (2 + 6)) - 1) & 0xFFFFFFFFFFFFFFFF) | 1  # mask form, order 2
    cols = _synthetic(pgty, [0xFFFFFFFF] * 4 + [0xF0000000, 0xFFFFFFFF, 0xF0000000, 0xFFFFFFFF],
                      compound_head=[0, head_ptr, head_ptr, head_ptr, 0, 0, 0, 0],
                      private=[0, 0, 0, 0, 1, 0, 0, 0])
    assert head_pfns(cols).tolist() == [1000, 1000, 1000, 1000, 1004, 1005, 1006, 1007]
    assert buddy_pages(cols).tolist() == [False] * 4 + [True, True, True, False]
    cols.compound_head = np.array([0, mask, mask, mask, 0, mask, mask, mask], np.uint64)
    cols.readable[7] = False
    assert head_pfns(cols).tolist() == [1000, 1000, 1000, 1000, 1004, 1004, 1004, -1]


def test_runs():
    assert runs(np.zeros(0, bool), 5) == []
    assert runs(np.array([True]), 5) == [(5, 6)]
    assert runs(np.array([False, True, True, False, True]), 10) == [(11, 13), (14, 15)]
    assert runs(np.ones(4, bool), 0) == [(0, 4)]
