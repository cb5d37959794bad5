"""pageblock_order and memmap_on_memory=force areas: the corners no dump here
reaches, with drgn's mock programs; the real dumps are in test_check.py.

pageblock_order decides how far ``memmap_on_memory=force`` pads a block's
vmemmap (include/linux/pageblock-flags.h): a variable with
CONFIG_HUGETLB_PAGE_SIZE_VARIABLE, else min(PMD order, MAX_PAGE_ORDER) with
HugeTLB or THP, else MAX_PAGE_ORDER.  The fixture kernels cover HugeTLB
(6.1, 6.12, 7.2) and neither (6.12-force); a THP-only kernel and the
variable exist on no kernel built here.
"""

import pytest
from drgn import (
    Object,
    Program,
    Symbol,
    SymbolBinding,
    SymbolKind,
    TypeKind,
    TypeMember,
    host_platform,
)

from drgn_vmemmap.context import vmemmap_area_pages
from drgn_vmemmap.features import _pageblock_order
from drgn_vmemmap.model import memory_map

from conftest import fixture_program


def mock(symbols=(), nr_orders=11, variable=None):
    """A program with ``struct zone { free_area[nr_orders] }``, the given
    symbols and, if ``variable`` is set, ``unsigned int pageblock_order``."""
    prog = Program(host_platform)
    uint = prog.int_type("unsigned int", 4, False)
    free_area = prog.struct_type("free_area", 8, [])
    zone = prog.struct_type("zone", 8 * nr_orders, [
        TypeMember(prog.array_type(free_area, nr_orders), "free_area", 0)])

    def types(prog, kinds, name, filename):
        if name == "zone" and TypeKind.STRUCT in kinds:
            return zone
        return None

    def objects(prog, name, flags, filename):
        if name == "pageblock_order" and variable is not None:
            return Object(prog, uint, value=variable)
        return None

    def syms(prog, name, address, one):
        return [Symbol(n, 0xffffffff81000000 + 8 * i, 8, SymbolBinding.GLOBAL,
                       SymbolKind.OBJECT)
                for i, n in enumerate(symbols) if name is None or n == name]

    prog.register_type_finder("mock", types, enable_index=0)
    prog.register_object_finder("mock", objects, enable_index=0)
    prog.register_symbol_finder("mock", syms, enable_index=0)
    return prog


@pytest.mark.parametrize("symbols, nr_orders, variable, want", [
    (("hstates",), 11, None, 9),                       # HugeTLB: the PMD order
    (("hstates", "transparent_hugepage_flags"), 11, None, 9),
    (("transparent_hugepage_flags",), 11, None, 9),    # THP only (v6.10+)
    ((), 11, None, 10),                                # neither: MAX_PAGE_ORDER
    ((), 9, None, 8),                                  # a smaller MAX_PAGE_ORDER
    (("hstates",), 8, None, 7),                        # min() with MAX_PAGE_ORDER
    (("hstates",), 11, 11, 11),                        # the variable wins
])
def test_pageblock_order(symbols, nr_orders, variable, want):
    order, source = _pageblock_order(mock(symbols, nr_orders, variable), 12)
    assert order == want, source
    assert source


def test_pageblock_order_unknown():
    prog = Program(host_platform)  # no struct zone at all
    assert _pageblock_order(prog, 12)[0] is None


def test_force_area_without_pageblock_order():
    """When pageblock_order cannot be told, a force block's area is its own
    altmap->free if that covers the frames, else the frames alone."""
    mm = memory_map(fixture_program("6.12-force-hotplug-basic"))
    assert mm.features.pageblock_order == 10
    b = next(b for b in mm.blocks.values() if b.altmap is not None)
    assert vmemmap_area_pages(mm, b, b.start_pfn, 512) == 1024
    blind = mm._replace(features=mm.features._replace(pageblock_order=None))
    assert vmemmap_area_pages(blind, b, b.start_pfn, 512) == b.altmap.free == 1024
    short = b._replace(altmap=b.altmap._replace(free=100))
    assert vmemmap_area_pages(blind, short, b.start_pfn, 512) == 512
    # Not force: the frames, whatever the altmap says.
    plain = mm._replace(features=mm.features._replace(memmap_on_memory="Y"))
    assert vmemmap_area_pages(plain, b, b.start_pfn, 512) == 512
    # A range that does not start the block gets no padding.
    assert vmemmap_area_pages(mm, b, b.start_pfn + 1, 511) == 511
