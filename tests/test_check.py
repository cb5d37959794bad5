"""The checker against every committed fixture's manifest.

Clean fixtures must give no violation at all; fault fixtures exactly the
violations their faults name (rule, severity, pfn range, block, section),
none more.  The self-hosted ranges must equal the guest's ground truth.
"""

import pytest

from drgn_vmemmap import check
from drgn_vmemmap.report import exit_status
from drgn_vmemmap.rules import RULES

from conftest import fixture_program, manifests, pagetable_faults

MANIFESTS = manifests()
NAMES = sorted(MANIFESTS)


@pytest.fixture(scope="module")
def reports():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = check(fixture_program(name))
        return cache[name]

    return get


def expected_violations(manifest):
    return sorted(
        (e["rule"], e["severity"], e["pfn_start"], e["pfn_end"], e["block"], e["section"])
        for f in manifest.get("faults", [])
        for e in (f.get("expects") or ([f["expect"]] if f.get("expect") else [])))


def test_corpus_present():
    # The corpus spans the three kernels; a missing fixture must fail, not skip.
    kernels = {m["kernel"]["key"] for m in MANIFESTS.values()}
    assert {"6.1", "6.12", "7.2"} <= kernels


@pytest.mark.parametrize("name", NAMES)
def test_ranges_match_ground_truth(name, reports):
    report = reports(name)
    faulted = pagetable_faults(MANIFESTS[name])
    # reserved_pages: the vmemmap area, frames plus memmap_on_memory=force's
    # pageblock padding, which the guest's kpageflags showed marked (older
    # manifests predate the field: no padding).
    # A block whose vmemmap faultmod remapped as HVO does keeps its range,
    # with the frames the remap orphaned as holes.
    orphaned = {f["target"]["block"]: f["module"]["remapped_pages"]
                for f in MANIFESTS[name].get("faults", []) if f["op"] == "hvo_remap"}
    truth = [(r["block"], r["start_pfn"], r["nr_pages"], r.get("reserved_pages", r["nr_pages"]),
              orphaned.get(r["block"], 0), r["state"], r["node"])
             for r in MANIFESTS[name]["truth"]["self_hosted"]
             if r["block"] not in faulted or r["block"] in orphaned]
    # Blocks whose memmap reuses the boot vmemmap PMD (ppc64 radix, 64K
    # pages; the factory's rule, vmcores.fixture.reuses_boot_pmd): no frame
    # of theirs backs a struct page, the reserved area is marked all the same.
    truth += [(b["id"], b["start_pfn"], 0, b["reserved_pages"], 0, b["state"], b["node"])
              for b in MANIFESTS[name]["truth"]["blocks"] if b.get("vmemmap_reuses_boot_pmd")]
    # A block whose last vmemmap page faultmod moved to a page-allocator
    # frame (the kernel's fallback) self-hosts one frame fewer.
    truth += [(r["block"], r["start_pfn"], r["nr_pages"] - 1,
               r.get("reserved_pages", r["nr_pages"]), 0, r["state"], r["node"])
              for r in MANIFESTS[name]["truth"]["self_hosted"]
              if faulted.get(r["block"], ("",))[0] == "vmemmap_fallback"]
    found = [(r.block, r.start_pfn, r.nr_pages, r.reserved_pages, r.holes, r.state, r.node)
             for r in report.ranges]
    assert found == sorted(truth)


@pytest.mark.parametrize("name", NAMES)
def test_violations_match_injected_faults(name, reports):
    report = reports(name)
    found = sorted((v.rule, v.severity, v.pfn_start, v.pfn_end, v.block, v.section)
                   for v in report.violations)
    assert found == expected_violations(MANIFESTS[name])
    assert exit_status(report) == (1 if MANIFESTS[name].get("faults") else 0)


@pytest.mark.parametrize("name", NAMES)
def test_every_rule_has_an_outcome(name, reports):
    report = reports(name)
    decided = set(report.holds) | {n.rule for n in report.not_checked} | \
        {v.rule for v in report.violations}
    assert set(RULES) <= decided


@pytest.mark.parametrize("name", NAMES)
def test_block_states_match_sysfs(name, reports):
    report = reports(name)
    sysfs = {b["id"]: (b["state"], b["node"]) for b in MANIFESTS[name]["truth"]["blocks"]}
    ours = {b["block"]: (b["state"], b["node"]) for b in report.blocks}
    assert ours == sysfs


def test_every_rule_violated_somewhere(reports):
    """Every rule of the catalogue has a fault in the corpus, caught for real."""
    expected = {e[0] for m in MANIFESTS.values() for e in expected_violations(m)}
    caught = {v.rule for name in NAMES for v in reports(name).violations}
    assert expected <= caught
    assert set(RULES) <= expected, sorted(set(RULES) - expected)


def test_warning_variants_caught(reports):
    """The warnings have real faults too: a memmap hosted by ordinary frames of
    another hot-pluggable block, and PG_owner_priv_1 on a page table (Xen's
    PG_pinned alias)."""
    expected = {(e[0], e[1]) for m in MANIFESTS.values() for e in expected_violations(m)
                if e[1] == "warning"}
    assert {("cross-hosted", "warning"), ("marker-stray", "warning")} <= expected
    caught = {(v.rule, v.severity) for name in NAMES for v in reports(name).violations}
    assert expected <= caught


FORCE = [n for n in NAMES if MANIFESTS[n]["truth"].get("force_padding_pages")]


def test_force_fixture_present():
    assert FORCE, "the corpus has a memmap_on_memory=force fixture with padding"


@pytest.mark.parametrize("name", FORCE)
def test_force_padding(name, reports):
    """memmap_on_memory=force: a block's memmap padded to a pageblock (x86:
    512 frames, 1024 pages reserved; ppc64 64K: 4 frames, 32 reserved).

    The padding the guest's dmesg and kpageflags showed equals what the tool
    derives from pageblock_order, and every block's altmap->free records it
    (but the one faultmod changed).  A block whose memmap reused an existing
    mapping (ppc64) has no frame and the same reserved area, alloc 0."""
    m = MANIFESTS[name]
    prog = fixture_program(name)
    report = reports(name)
    f = report.features
    assert f["memmap_on_memory_mode"] == "force"
    padding = m["truth"]["force_padding_pages"]
    frames = f["pages_per_block"] * f["struct_page_size"] >> prog["PAGE_SHIFT"].value_()
    assert (1 << f["pageblock_order"]) == frames + padding
    faulted = {flt["target"]["block"] for flt in m["faults"]
               if flt["op"] in ("block_altmap_free", "block_vmemmap", "vmemmap_fallback")}
    assert report.ranges and all(r.reserved_pages == frames + padding and
                                 r.nr_pages in (0, frames) for r in report.ranges
                                 if r.block not in faulted)
    from drgn_vmemmap import memory_map
    mm = memory_map(prog)
    for r in report.ranges:
        a = mm.blocks[r.block].altmap
        if r.block in faulted:
            # vmemmap_fallback keeps the record consistent: alloc = frames.
            if any(flt["op"] == "vmemmap_fallback" and flt["target"]["block"] == r.block
                   for flt in m["faults"]):
                assert (a.alloc, r.nr_pages) == (frames - 1, frames - 1)
            continue
        assert (a.alloc, a.free) == (r.nr_pages, frames + padding)
    for flt in m["faults"]:
        if flt["op"] == "block_altmap_free":
            assert mm.blocks[flt["target"]["block"]].altmap.free == flt["target"]["value"]


REMOVED = [n for n in NAMES if MANIFESTS[n]["truth"].get("removed_dimms")]


def test_remove_fixture_present():
    assert REMOVED, "the corpus has a fixture with a hot-removed DIMM"


@pytest.mark.parametrize("name", REMOVED)
def test_removed_dimms_leave_nothing(name, reports):
    """A DIMM hot-removed (offline + device_del, QEMU released it) leaves no
    block, no present section, no vmemmap mapping and no finding in its
    range, while the DIMMs around it check as usual."""
    from drgn_vmemmap import memory_map, vmemmap_backing
    from drgn_vmemmap.pagetable import PageTableWalker

    prog = fixture_program(name)
    mm = memory_map(prog)
    f = mm.features
    extents = vmemmap_backing(prog, mm)
    report = reports(name)
    for d in MANIFESTS[name]["truth"]["removed_dimms"]:
        start = d["addr"] >> f.page_shift
        end = start + (d["size"] >> f.page_shift)
        assert d["blocks"] == list(range(start // f.pages_per_block, end // f.pages_per_block))
        assert not set(d["blocks"]) & set(mm.blocks)
        assert not [s for s in mm.sections.values() if s.start_pfn < end and start < s.end_pfn]
        assert not [e for e in extents
                    if e.described_start_pfn < end and start < e.described_end_pfn]
        assert not [r for r in report.ranges if r.block in d["blocks"]]
        assert not [v for v in report.violations + report.not_checked
                    if v.pfn_start is not None and v.pfn_start < end and start < v.pfn_end]
        # vmemmap_free() unmapped its struct pages.
        va = f.vmemmap_base + start * f.layout.size
        maps = PageTableWalker(prog).translate(va, (end - start) * f.layout.size)
        assert maps and {m.status for m in maps} == {"unmapped"}
    # The blocks on either side are still self-hosted and found.
    assert {r.block for r in report.ranges} == \
        {r["block"] for r in MANIFESTS[name]["truth"]["self_hosted"]}


@pytest.mark.parametrize("name", [n for n in ("6.12-faults", "6.12-pagetables", "7.2-faults",
                                              "6.12-force-faults") if n in MANIFESTS])
def test_parallel_scan_agrees(name, reports):
    """The whole-memory scan in two forked processes (what a large core dump
    gets) finds exactly what one process finds, unreadable pages included."""
    serial = reports(name)
    assert serial.stats["jobs"] == 1  # a fixture is below the threshold
    par = check(fixture_program(name), jobs=2)
    assert par.stats["jobs"] == 2
    assert par.violations == serial.violations
    assert par.not_checked == serial.not_checked
    assert par.unreadable == serial.unreadable
    assert par.holds == serial.holds
    assert par.stats["pages_scanned"] == serial.stats["pages_scanned"]


def test_api_defaults():
    """The helpers a drgn session calls with the program alone."""
    from drgn_vmemmap import explain_pfn, memory_map, self_hosted_ranges, vmemmap_backing
    prog = fixture_program("6.12-hotplug-basic")
    mm = memory_map(prog)
    assert self_hosted_ranges(prog) == self_hosted_ranges(prog, mm, vmemmap_backing(prog, mm))
    first = self_hosted_ranges(prog)[0]
    d = explain_pfn(prog, first.start_pfn)
    assert d["self_hosted_range"]["block"] == first.block


@pytest.mark.parametrize("name", NAMES)
def test_cross_hosting_notes_name_kernel_zone_hosts(name, reports):
    """A cross-hosting note is about ordinary frames of another hot-plugged
    block in a kernel zone, as the guest's sysfs saw it (valid_zones of an
    online block is its zone); never a movable, offline or boot block."""
    blocks = {b["id"]: b for b in MANIFESTS[name]["truth"]["blocks"]}
    for n in reports(name).notes:
        if n.rule == "altmap-mismatch":
            # The other kind of note: a block whose memmap reused an existing
            # mapping (ppc64 radix 64K), as the factory's rule says.
            assert blocks[n.block].get("vmemmap_reuses_boot_pmd"), n
            continue
        assert n.rule == "cross-hosted"
        host = int(n.message.split("hot-pluggable block ")[1].split()[0])
        b = blocks[host]
        assert b["hotplugged"] and b["state"] == "online" and b["valid_zones"] != ["Movable"], n
        assert host != n.block


def test_memmap_on_memory_off_is_clean_with_notes(reports):
    """The distribution default with HVO (6.12-mom-off): nothing self-hosted,
    no violation, and the memmap the kernel allocated in the first (Normal)
    DIMM for the DIMM added after it is a note, not an error."""
    name = "6.12-mom-off"
    assert MANIFESTS[name]["truth"]["memmap_on_memory"] in ("N", "0")
    report = reports(name)
    assert not report.ranges and not report.violations and exit_status(report) == 0
    dimm0 = [b["id"] for b in MANIFESTS[name]["truth"]["blocks"] if b.get("dimm") == "dimm0"]
    dimm1 = [b["id"] for b in MANIFESTS[name]["truth"]["blocks"] if b.get("dimm") == "dimm1"]
    assert any(n.block in dimm1 and f"block {dimm0[0]} " in n.message for n in report.notes)


@pytest.mark.parametrize("name", [n for n in NAMES if not MANIFESTS[n].get("faults")])
def test_every_kernel_marked_page_explained(name, reports):
    """The kernel's own word on PG_owner_priv_1 (/proc/kpageflags
    KPF_OWNER_PRIVATE, read in the guest before the dump) against the
    checker's findings, for every pfn of every block of a clean fixture:
    every marked pfn of an online block lies in the vmemmap area the checker
    found from the page tables (none of these guests has swap or a
    filesystem using PG_checked, so no alias explains any other), and every
    pfn of such an area is marked.  Offline blocks: their memmap is stale
    and kpageflags shows nothing; no online area may be claimed there."""
    report = reports(name)
    truth = MANIFESTS[name]["truth"]
    areas = {r.block: (r.start_pfn, r.area_end_pfn) for r in report.ranges}
    for b in truth["blocks"]:
        kpf = truth["kpageflags"].get(str(b["id"]))
        marked = set()
        if kpf is not None:
            for pfn, n, names in kpf:
                if "owner_private" in names:
                    marked.update(range(pfn, pfn + n))
        assert len(marked) == b["owner_private_pages"] or kpf is None, b["id"]
        if b["state"] != "online":
            assert not marked, b["id"]
            continue
        area = set(range(*areas[b["id"]])) if b["id"] in areas else set()
        if kpf is None:  # boot blocks: only the count was recorded
            assert b["owner_private_pages"] == len(area) == 0, b["id"]
            continue
        assert marked == area, (b["id"], sorted(marked ^ area)[:8])


@pytest.mark.parametrize("name", NAMES)
def test_dump_level_from_the_kdump_header(name, reports):
    """The report says what the dump may lack: makedumpfile's -d level,
    read from the dump's kdump_sub_header, is the one the factory used."""
    stats = reports(name).stats
    assert stats["dump_level"] == MANIFESTS[name]["dump"]["makedumpfile_level"]
    assert stats["unreadable_pfns"] == sum(e - s for s, e in reports(name).unreadable)


# x86's 2 GiB blocks (ppc64's 256 MiB LMBs are multi-section too: their ranges
# are checked with every fixture's, test_ranges_match_ground_truth).
BIG = [n for n in NAMES if MANIFESTS[n]["truth"]["block_size_bytes"] >= 2 << 30]


def test_big_block_fixture_present():
    assert BIG, "the corpus has a fixture with 2 GiB memory blocks (6.12-bigblocks)"


@pytest.mark.parametrize("name", BIG)
def test_big_blocks(name, reports):
    """2 GiB blocks (x86, boot RAM ending at >= 64 GiB in a VM): 16 sections a
    block, 32 MiB of self-hosted memmap (8192 frames, 16 PMDs) at the start of
    each hot-plugged block, and boot blocks over an E820 hole whose absent
    sections are no violation (add_boot_memory_block())."""
    from drgn_vmemmap import memory_map

    report = reports(name)
    truth = MANIFESTS[name]["truth"]
    prog = fixture_program(name)
    mm = memory_map(prog)
    page = 1 << prog["PAGE_SHIFT"].value_()
    per_block = truth["block_size_bytes"] // page
    assert mm.features.sections_per_block * mm.features.pages_per_section == per_block
    assert mm.features.sections_per_block > 1
    frames = per_block * 64 // page
    assert [(r.block, r.start_pfn, r.nr_pages) for r in report.ranges] == \
        [(r["block"], r["block"] * per_block, frames) for r in truth["self_hosted"]]
    boot = [b["id"] for b in truth["blocks"] if not b.get("hotplugged")]
    partial = [bid for bid in boot
               if len(list(mm.block_sections(mm.blocks[bid]))) < mm.features.sections_per_block]
    assert partial, "a boot block with absent sections"
    assert "section-state" in report.holds and not report.violations
    assert exit_status(report) == 0
