"""The PG_memmap scheme (memmap-type) against the 6.12-memmap fixtures.

Their kernel (vmcores/patches/6.12-pg-memmap.patch) sets PGTY_memmap on every
page that holds struct pages and reports it in /proc/kpageflags (bit 44); the
factory recorded the pages the guest's kpageflags showed with it
(``truth.memmap_type_frames``).  That is the kernel's word; the checker's
frames come from the page tables of the dump.  The two must agree.
"""

from typing import Set, Tuple

import numpy as np
import pytest

from drgn_vmemmap import check
from drgn_vmemmap.backing import vmemmap_backing
from drgn_vmemmap.context import Context

from conftest import fixture_program, manifests

MANIFESTS = manifests()
MEMMAP = sorted(n for n, m in MANIFESTS.items() if "memmap_type_frames" in m["truth"])


def _online(manifest) -> Tuple[Set[int], int]:
    """Online block ids, and pages per block (the manifest's)."""
    blocks = manifest["truth"]["blocks"]
    return {b["id"] for b in blocks if b["state"] == "online"}, blocks[0]["nr_pages"]


def test_memmap_fixtures_present():
    # A clean one and one with faults: a missing fixture fails, never skips.
    assert any(not MANIFESTS[n].get("faults") for n in MEMMAP), MEMMAP
    assert any(MANIFESTS[n].get("faults") for n in MEMMAP), MEMMAP


@pytest.mark.parametrize("name", MEMMAP)
def test_page_tables_agree_with_kpageflags(name):
    """Every frame the page tables map the vmemmap to, in online memory, is
    one the guest's kpageflags showed with PGTY_memmap, and the other way
    round: boot memblock, page allocator (virtio-mem), altmap and HVO's
    replacement pages alike."""
    m = MANIFESTS[name]
    online, ppb = _online(m)
    kernel = {p for s, n in m["truth"]["memmap_type_frames"] for p in range(s, s + n)}
    prog = fixture_program(name)
    tables: Set[int] = set()
    kinds = set()
    for e in vmemmap_backing(prog):
        if e.frame_start_pfn is None:
            continue
        frames = {p for p in range(e.frame_start_pfn, e.frame_start_pfn + e.nr_frames)
                  if p // ppb in online}
        if frames:
            kinds.add("hvo" if e.aliased else e.kind)
        tables |= frames
    assert tables == kernel, (sorted(tables - kernel)[:20], sorted(kernel - tables)[:20])
    # The fixture exercises every source of memmap.
    assert {"boot-allocated", "ordinary", "self-hosted", "hvo"} <= kinds, kinds


@pytest.mark.parametrize("name", MEMMAP)
def test_memmap_type_checked(name):
    report = check(fixture_program(name), rules=["memmap-type"])
    assert not any("scheme absent" in n.reason for n in report.not_checked)
    found = sorted((v.pfn_start, v.pfn_end) for v in report.violations)
    want = sorted((e["pfn_start"], e["pfn_end"]) for f in MANIFESTS[name].get("faults", [])
                  for e in ([f["expect"]] if f.get("expect") else f.get("expects", []))
                  if e["rule"] == "memmap-type")
    assert found == want
    if not want:
        assert "memmap-type" in report.holds


def test_faults_say_what_the_page_is():
    """Each fault is reported with what the page has or is instead."""
    name = next(n for n in MEMMAP if MANIFESTS[n].get("faults"))
    report = check(fixture_program(name), rules=["memmap-type"])
    by_pfn = {v.pfn_start: v for v in report.violations}
    for f in MANIFESTS[name]["faults"]:
        v = by_pfn[f["target"]["pfn"]]
        if f["op"] == "memmap_type" and f["target"]["flag"] in ("backing", "hvo_head"):
            assert (v.expected, v.found) == ("PGTY_memmap", "no page type")
            holds = "HVO" if f["target"]["flag"] == "hvo_head" else "boot memmap"
            assert holds in v.message, v.message
        else:
            assert v.expected.startswith("no PGTY_memmap")
            assert v.found.startswith("PGTY_memmap on a"), v.found


def test_scheme_absent_elsewhere():
    name = "6.12-hotplug-basic"
    report = check(fixture_program(name), rules=["memmap-type"])
    assert not report.violations and not report.holds
    assert any("scheme absent" in n.reason for n in report.not_checked)


@pytest.mark.parametrize("name", MEMMAP)
def test_self_hosted_frames_carry_both(name):
    """Self-hosted frames of online blocks carry PG_vmemmap_self_hosted and
    PGTY_memmap, by the dump's struct pages."""
    prog = fixture_program(name)
    ctx = Context(prog)
    bit = ctx.features.page_flags["PG_vmemmap_self_hosted"]
    seen = 0
    for r in ctx.self_hosted_by_block().values():
        if r.state != "online":
            continue
        cols = ctx.scan(r.start_pfn, r.start_pfn + r.nr_pages)
        marked = ((cols.flags >> np.uint64(bit)) & np.uint64(1)).astype(bool)
        typed = ctx.type_is(cols, "memmap")
        assert marked.all() and typed.all(), r
        seen += 1
    assert seen
