"""HugeTLB folios and HVO, against the guest's kpageflags and the page tables.

The folios the checker finds in the hstate pools must be exactly the
compound heads /proc/kpageflags showed as huge; a folio marked
HPG_vmemmap_optimized must really have its vmemmap remapped (aliased frames
in the page tables), and one without the mark must not.
"""

import pytest

from drgn_vmemmap import check
from drgn_vmemmap.context import Context

from conftest import capture_overwrote, fixture_program, kernel_config, manifests

MANIFESTS = manifests()


def has_hugetlb(name):
    """Whether the fixture's kernel was built with HugeTLB (its config)."""
    return kernel_config(MANIFESTS[name], "HUGETLBFS") == "y"


#: With HugeTLB, and pools as the guest saw them (a damaged kdump's capture
#: kernel wrote over the folios' struct pages: tests/test_kdump.py).
NAMES = sorted(n for n in MANIFESTS if has_hugetlb(n) and not capture_overwrote(MANIFESTS[n]))
WITHOUT = sorted(n for n in MANIFESTS if not has_hugetlb(n))


def injected_hpg(manifest):
    """Folios faultmod optimised: ``{head pfn: op}``; ``hpg_optimized`` sets
    only the flag, ``hvo_remap`` also remaps the vmemmap as HVO does."""
    return {f["target"]["pfn"]: f["op"] for f in manifest.get("faults", [])
            if f["op"] in ("hpg_optimized", "hvo_remap")}


@pytest.mark.parametrize("name", NAMES)
def test_folios_match_kpageflags(name):
    ctx = Context(fixture_program(name))
    folios = ctx.hugetlb_folios()
    heads = sorted(p for pfns in MANIFESTS[name]["truth"]["hugepage_heads"].values()
                   for p in pfns)
    assert sorted(pfn for pfn, _, _ in folios) == heads
    assert len(heads) == sum(MANIFESTS[name]["truth"]["nr_hugepages"].values())


@pytest.mark.parametrize("name", NAMES)
def test_optimized_means_remapped(name):
    ctx = Context(fixture_program(name))
    fake = injected_hpg(MANIFESTS[name])
    # Kernels without HVO (arm64 and ppc64 6.12: no
    # ARCH_WANT_OPTIMIZE_HUGETLB_VMEMMAP) optimise nothing.
    hvo = kernel_config(MANIFESTS[name], "HUGETLB_PAGE_OPTIMIZE_VMEMMAP") == "y"
    optimized = 0
    for pfn, nr, opt in ctx.hugetlb_folios():
        aliased = any(e.aliased for e in ctx.extents()
                      if e.described_start_pfn < pfn + nr and pfn < e.described_end_pfn)
        if not hvo:
            assert not opt and not aliased, hex(pfn)
            continue
        if fake.get(pfn) == "hpg_optimized":
            # faultmod set only the flag: the vmemmap was never remapped.
            assert opt and not aliased
            continue
        assert opt == aliased, hex(pfn)
        if not ctx.is_hotplugged(ctx.mm.blocks[ctx.block_id(pfn)]):
            # Boot-memory folios are optimised on every fixture kernel.
            assert opt, hex(pfn)
            optimized += 1
    assert optimized >= 8 or not hvo


@pytest.mark.parametrize("name", [n for n in NAMES if MANIFESTS[n]["kernel"]["key"] != "6.1"
                                  and MANIFESTS[n]["truth"]["self_hosted"]])
def test_hvo_refused_on_self_hosted_blocks(name):
    """6.0+: the kernel itself refuses HVO where the memmap is self-hosted."""
    ctx = Context(fixture_program(name))
    hosted = ctx.self_hosted_by_block()
    fake = injected_hpg(MANIFESTS[name])
    in_hosted = [(pfn, opt) for pfn, _, opt in ctx.hugetlb_folios()
                 if ctx.block_id(pfn) in hosted and pfn not in fake]
    assert in_hosted, "the scenario puts HugeTLB folios in self-hosted blocks"
    assert not any(opt for _, opt in in_hosted)


@pytest.mark.parametrize("name", WITHOUT)
def test_no_hugetlb_kernel(name):
    """Without HugeTLB there are no pools and no HVO: the rule says so."""
    ctx = Context(fixture_program(name))
    assert ctx.features.hpg_vmemmap_optimized is None
    report = check(fixture_program(name), rules=["hvo-self-hosted"])
    assert [n.reason for n in report.not_checked] == [
        "scheme absent: no HugeTLB vmemmap optimisation in this kernel"]
    assert not report.violations


@pytest.mark.parametrize("name", [n for n in NAMES if MANIFESTS[n]["truth"]["memmap_on_memory"]
                                  in ("N", "0")])
def test_hvo_applied_in_hotplugged_blocks_without_self_hosting(name):
    """memmap_on_memory off: nothing is self-hosted, so the kernel optimises
    the folios in hot-plugged blocks too, and puts their replacement vmemmap
    pages in ordinary frames (some in hot-plugged blocks) that are neither
    self-hosted nor a violation."""
    ctx = Context(fixture_program(name))
    hot = [(pfn, opt) for pfn, _, opt in ctx.hugetlb_folios()
           if ctx.is_hotplugged(ctx.mm.blocks[ctx.block_id(pfn)])]
    assert hot, "the scenario puts HugeTLB folios in hot-plugged blocks"
    assert all(opt for _, opt in hot)
    assert not ctx.self_hosted_by_block()
    replacement = [e for e in ctx.extents() if e.aliased]
    assert replacement and {e.kind for e in replacement} <= {"ordinary", "boot-allocated"}
    assert any(ctx.hotplugged().get(e.host_block) for e in replacement)
    report = check(fixture_program(name))
    assert not report.violations
