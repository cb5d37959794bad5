"""
Features
--------

What a kernel has, detected from its debug info (never from its version):
which self-hosted vmemmap markers exist, how ``page_type`` is encoded, how a
memory block records its vmemmap pages, and the layout of ``struct page``.
Results are cached per program under ``"drgn_vmemmap."`` keys.
"""

from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    List,
    NamedTuple,
    Optional,
    Tuple,
    Union,
    cast,
    overload,
)

from drgn import FaultError, Program, TypeKind, sizeof
from drgn.helpers.common.prog import takes_program_or_default

from .pagetypes import PageTypes, _enumerators
from .pagetypes import page_types as _page_types

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = (
    "Features",
    "PageLayout",
    "PageTypes",
    "SectionFlags",
    "features",
)


class PageLayout(NamedTuple):
    """Byte offsets in ``struct page`` of the fields the scanner decodes."""

    size: int
    flags: int
    refcount: int
    mapcount: int  # page_type shares this word
    mapping: int
    private: int
    compound_head: int  # "compound_info" since 7.1; bit 0 set on tail pages
    lru: int


class SectionFlags(NamedTuple):
    """``mem_section::section_mem_map`` flag masks by name (without ``SECTION_``)."""

    masks: Dict[str, int]
    map_mask: int


class Features(NamedTuple):
    """Everything detected about a kernel.  See :func:`features`."""

    #: Self-hosted markers the kernel has: any of ``"PG_vmemmap_self_hosted"``,
    #: ``"SECTION_CANNOT_OPTIMIZE_VMEMMAP"``, ``"SECTION_USE_VMEMMAP"``,
    #: ``"PGTY_vmemmap"`` (or a user-supplied vmemmap page type).
    markers: List[str]
    page_flags: Dict[str, int]  # PG_* bit numbers, from enum pageflags
    page_types: PageTypes
    section_flags: SectionFlags
    #: ``"nr_vmemmap_pages"`` (5.13-6.5), ``"altmap"`` (6.6+) or ``"none"``.
    block_accounting: str
    #: Whether hot-plugged memmap is initialised PG_reserved (until 6.10) or
    #: PageOffline, then cleared (6.11+).  Decides whether a self-hosted
    #: vmemmap page is expected to carry PG_reserved.
    vmemmap_reserved: bool
    #: The ``memory_hotplug.memmap_on_memory`` setting ("Y", "N", "force"),
    #: or None when it cannot be read.
    memmap_on_memory: Optional[str]
    layout: PageLayout
    page_shift: int
    section_size_bits: int
    sections_per_block: int
    #: ``HPG_vmemmap_optimized`` bit in a HugeTLB folio's ``private``, or None.
    hpg_vmemmap_optimized: Optional[int]
    vmemmap_base: int
    #: Where page->flags keeps the node and zone (include/linux/page-flags-layout.h:
    #: | SECTION | NODE | ZONE | ... | FLAGS |, no SECTION field with
    #: SPARSEMEM_VMEMMAP): widths in bits, and zone names by index.
    nodes_shift: int
    zones_shift: int
    zone_names: List[str]
    #: ``pageblock_order`` and how it was found (see :func:`_pageblock_order`);
    #: the order is None when it cannot be told.
    pageblock_order: Optional[int] = None
    pageblock_order_source: str = ""

    @overload
    def page_node(self, flags: int) -> int: ...

    @overload
    def page_node(self, flags: "npt.NDArray[np.uint64]") -> "npt.NDArray[np.integer[Any]]": ...

    def page_node(
        self, flags: Union[int, "npt.NDArray[np.uint64]"]
    ) -> Union[int, "npt.NDArray[np.integer[Any]]"]:
        """Node ids of ``flags`` (an int or a numpy u64 array)."""
        if not self.nodes_shift:
            return flags * 0
        return flags >> (64 - self.nodes_shift)

    @overload
    def page_zone(self, flags: int) -> int: ...

    @overload
    def page_zone(self, flags: "npt.NDArray[np.uint64]") -> "npt.NDArray[np.integer[Any]]": ...

    def page_zone(
        self, flags: Union[int, "npt.NDArray[np.uint64]"]
    ) -> Union[int, "npt.NDArray[np.integer[Any]]"]:
        """Zone indexes of ``flags`` (an int or a numpy u64 array)."""
        shift = 64 - self.nodes_shift - self.zones_shift
        return (flags >> shift) & ((1 << self.zones_shift) - 1)

    @property
    def pages_per_section(self) -> int:
        return 1 << (self.section_size_bits - self.page_shift)

    @property
    def pages_per_block(self) -> int:
        return self.pages_per_section * self.sections_per_block


def _vmemmap_base(prog: Program) -> int:
    """The ``struct page`` array's base.  drgn's ``vmemmap`` object may read
    it through the first ``mem_section`` root, which a filtered dump can
    lack; x86-64 also keeps it in ``vmemmap_base`` (KASLR)."""
    try:
        return int(prog["vmemmap"].value_())
    except FaultError:
        try:
            return int(prog["vmemmap_base"].value_())
        except (KeyError, LookupError):
            raise


def _constant(prog: Program, name: str) -> Optional[int]:
    try:
        return int(prog.constant(name).value_())
    except (LookupError, ValueError):
        return None


def _member_offset(prog: Program, type_name: str, *names: str) -> int:
    from drgn import offsetof

    t = prog.type(type_name)
    for name in names:
        try:
            return int(offsetof(t, name))
        except LookupError:
            continue
    return -1


def _section_flags(prog: Program) -> SectionFlags:
    # Since Linux kernel commit ed7802dd48f7 ("mm: memory_hotplug: enumerate
    # all supported section flags") (in v6.0) the flags are an anonymous enum
    # of *_BIT enumerators; before, macros that never moved.
    try:
        flags_type = prog["SECTION_MARKED_PRESENT_BIT"].type_
    except (KeyError, LookupError):
        masks = {"MARKED_PRESENT": 0x1, "HAS_MEM_MAP": 0x2, "IS_ONLINE": 0x4,
                 "IS_EARLY": 0x8, "TAINT_ZONE_DEVICE": 0x10}
        return SectionFlags(masks, ~0x1F & 0xFFFFFFFFFFFFFFFF)
    masks = {}
    map_mask = ~0x1F & 0xFFFFFFFFFFFFFFFF
    for e in flags_type.enumerators:
        if e.name == "SECTION_MAP_LAST_BIT":
            map_mask = ~((1 << e.value) - 1) & 0xFFFFFFFFFFFFFFFF
        elif e.name.startswith("SECTION_") and e.name.endswith("_BIT"):
            masks[e.name[len("SECTION_"):-len("_BIT")]] = 1 << e.value
    return SectionFlags(masks, map_mask)


def _memmap_on_memory(prog: Program) -> Optional[str]:
    # 6.6+: static int memmap_mode with MEMMAP_ON_MEMORY_{DISABLE,ENABLE,FORCE}
    # (Linux kernel commit 2d1f649c7c08 ("mm/memory_hotplug: support
    # memmap_on_memory when memmap is not aligned to pageblocks") (in v6.6)).
    # 5.13-6.5: static bool memmap_on_memory.
    for name in ("memmap_mode", "memmap_on_memory"):
        try:
            obj = prog.object(name)
        except LookupError:
            continue
        try:
            if obj.type_.unaliased_kind() == TypeKind.FUNCTION:
                continue
            value = obj.value_()
        except FaultError:
            return None
        if name == "memmap_mode":
            return {0: "N", 1: "Y", 2: "force"}.get(value, str(value))
        return "Y" if value else "N"
    return None


def _vmemmap_reserved(prog: Program) -> bool:
    # In 6.11 the series "mm/memory_hotplug: initialize memmap of
    # !ZONE_DEVICE with PageOffline() instead of PageReserved()" also gave
    # __free_pages_core() a third parameter ("mm: pass meminit_context to
    # __free_pages_core()"): the debug-info witness of the new scheme.
    try:
        return len(prog["__free_pages_core"].type_.parameters) < 3
    except (KeyError, LookupError, AttributeError):
        pass
    # No witness (the function was inlined away): the page-type encoding
    # tells 6.11+ apart (PGTY_* from 6.12, PAGE_TYPE_BASE 0x80000000 in 6.11).
    enum = _enumerators(prog, "enum pagetype")
    return "PGTY_offline" not in enum and enum.get("PAGE_TYPE_BASE") != 0x80000000


def _symbol_exists(prog: Program, name: str) -> bool:
    try:
        prog.symbol(name)
        return True
    except LookupError:
        return False


#: Functions of mm/hugetlb_vmemmap.c, built only with HVO
#: (CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP): its initcall (5.13 on), and the
#: optimising entry points of 6.1 and of 6.8 on.
_HVO_SYMBOLS = ("hugetlb_vmemmap_init", "hugetlb_vmemmap_optimize",
                "hugetlb_vmemmap_optimize_folio")


def _pageblock_order(prog: Program, page_shift: int) -> Tuple[Optional[int], str]:
    """
    ``pageblock_order`` (include/linux/pageblock-flags.h), which decides how
    many pages ``memmap_on_memory=force`` reserves per block.  A variable only
    with CONFIG_HUGETLB_PAGE_SIZE_VARIABLE; otherwise a macro over config
    options, told apart here by the symbols they bring:

    - HugeTLB (``hstates``): min(HUGETLB_PAGE_ORDER, MAX_PAGE_ORDER);
    - else THP (``transparent_hugepage_flags``): min(HPAGE_PMD_ORDER,
      MAX_PAGE_ORDER) (the THP case since v6.10; older kernels used
      MAX_PAGE_ORDER there);
    - else MAX_PAGE_ORDER, from ``struct zone``'s ``free_area[NR_PAGE_ORDERS]``.

    Assumes CONFIG_PAGE_BLOCK_MAX_ORDER (7.0+) at its default, MAX_PAGE_ORDER.
    On x86-64 the huge page orders are the PMD order, page_shift - 3.
    """
    try:
        return prog["pageblock_order"].value_(), "variable pageblock_order"
    except (KeyError, LookupError, FaultError):
        pass
    try:
        nr_orders = prog.type("struct zone").member("free_area").type.length
    except (LookupError, AttributeError):
        return None, "unknown (no struct zone free_area)"
    if not nr_orders:
        return None, "unknown (no struct zone free_area)"
    max_order = nr_orders - 1
    pmd_order = page_shift - 3
    if _symbol_exists(prog, "hstates"):
        return min(pmd_order, max_order), "HugeTLB: min(HUGETLB_PAGE_ORDER, MAX_PAGE_ORDER)"
    if _symbol_exists(prog, "transparent_hugepage_flags"):
        return min(pmd_order, max_order), "THP: min(HPAGE_PMD_ORDER, MAX_PAGE_ORDER)"
    return max_order, "no HugeTLB or THP: MAX_PAGE_ORDER"


# mm/page_alloc.c zone_names[]: what struct zone::name says for each zone_type.
_ZONE_NAMES = {"ZONE_DMA": "DMA", "ZONE_DMA32": "DMA32", "ZONE_NORMAL": "Normal",
               "ZONE_HIGHMEM": "HighMem", "ZONE_MOVABLE": "Movable", "ZONE_DEVICE": "Device"}


def _node_zone_layout(prog: Program) -> Tuple[int, int, List[str]]:
    # NODES_SHIFT is a config option with no debug info of its own, but
    # node_data[] is declared with MAX_NUMNODES = 1 << NODES_SHIFT entries.
    nodes_shift = 0
    try:
        length = prog["node_data"].type_.length
        if length:
            nodes_shift = max(length - 1, 0).bit_length()
    except (KeyError, LookupError, AttributeError):
        pass
    zones = [e.name for e in (prog.type("enum zone_type").enumerators or ())
             if e.name != "__MAX_NR_ZONES"]
    # ZONES_SHIFT (include/linux/page-flags-layout.h) from MAX_NR_ZONES.
    n = len(zones)
    zones_shift = 0 if n <= 1 else 1 if n <= 2 else 2 if n <= 4 else 3
    return nodes_shift, zones_shift, [_ZONE_NAMES.get(z, z) for z in zones]


@takes_program_or_default
def features(prog: Program, vmemmap_page_type: Optional[int] = None) -> Features:
    """
    Detect (and cache) what this kernel has.

    :param vmemmap_page_type: For kernels whose vmemmap page type exists only
        as a macro (the 2019 ``PG_vmemmap`` proposal), its value: a ``PGTY_``
        top byte on 6.12+ encodings, else the inverted bit.
    """
    key = f"drgn_vmemmap.features.{vmemmap_page_type}"
    try:
        return cast(Features, prog.cache[key])
    except KeyError:
        pass

    pageflags = {k: v for k, v in _enumerators(prog, "enum pageflags").items()
                 if k.startswith("PG_")}
    extra = {"vmemmap": vmemmap_page_type} if vmemmap_page_type is not None else None
    page_types = _page_types(prog, extra)
    sflags = _section_flags(prog)

    markers = []
    if "PG_vmemmap_self_hosted" in pageflags:
        # Linux kernel commit 66361095129b ("mm: memory_hotplug: make
        # hugetlb_optimize_vmemmap compatible with memmap_on_memory") (in v6.0).
        markers.append("PG_vmemmap_self_hosted")
    for name in ("CANNOT_OPTIMIZE_VMEMMAP", "USE_VMEMMAP"):
        if name in sflags.masks:
            markers.append("SECTION_" + name)
    if "vmemmap" in page_types.types:
        markers.append("PGTY_vmemmap" if page_types.scheme == "pgty" else "PG_vmemmap")

    mb = None
    try:
        mb = prog.type("struct memory_block")
    except LookupError:
        pass
    if mb is not None and mb.has_member("altmap"):
        accounting = "altmap"
    elif mb is not None and mb.has_member("nr_vmemmap_pages"):
        accounting = "nr_vmemmap_pages"
    else:
        accounting = "none"

    page = prog.type("struct page")
    layout = PageLayout(
        size=sizeof(page),
        flags=_member_offset(prog, "struct page", "flags"),
        refcount=_member_offset(prog, "struct page", "_refcount"),
        mapcount=_member_offset(prog, "struct page", "page_type", "_mapcount"),
        mapping=_member_offset(prog, "struct page", "mapping"),
        private=_member_offset(prog, "struct page", "private"),
        compound_head=_member_offset(prog, "struct page", "compound_info", "compound_head"),
        lru=_member_offset(prog, "struct page", "lru"),
    )
    hpg = _enumerators(prog, "enum hugetlb_page_flags").get("HPG_vmemmap_optimized")
    if hpg is not None and not any(_symbol_exists(prog, s) for s in _HVO_SYMBOLS):
        # The flag is declared either way; without
        # CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP (arm64 and ppc64 in 6.12: no
        # ARCH_WANT_OPTIMIZE_HUGETLB_VMEMMAP) nothing ever sets it.
        hpg = None
    nodes_shift, zones_shift, zone_names = _node_zone_layout(prog)
    page_shift = prog["PAGE_SHIFT"].value_()
    pb_order, pb_source = _pageblock_order(prog, page_shift)

    result = Features(
        markers=markers,
        page_flags=pageflags,
        page_types=page_types,
        section_flags=sflags,
        block_accounting=accounting,
        vmemmap_reserved=_vmemmap_reserved(prog),
        memmap_on_memory=_memmap_on_memory(prog),
        layout=layout,
        page_shift=page_shift,
        section_size_bits=prog["SECTION_SIZE_BITS"].value_(),
        sections_per_block=prog["sections_per_block"].value_(),
        hpg_vmemmap_optimized=hpg,
        vmemmap_base=_vmemmap_base(prog),
        nodes_shift=nodes_shift,
        zones_shift=zones_shift,
        zone_names=zone_names,
        pageblock_order=pb_order,
        pageblock_order_source=pb_source,
    )
    prog.cache[key] = result
    return result
