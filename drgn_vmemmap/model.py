"""
Model
-----

Sections and memory blocks as plain records, built on drgn's SPARSEMEM and
memory-block helpers.  Reading a block or section that a filtered dump lacks
does not raise: the record says so.
"""

from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from drgn import FaultError, Object, ObjectNotFoundError, Program, TypeKind, sizeof
from drgn.helpers.common.prog import takes_program_or_default
from drgn.helpers.linux.mm import (
    decode_memory_block_state_value,
    for_each_memory_block,
    virt_to_phys,
)
from drgn.helpers.linux.mmzone import for_each_present_section

from .features import Features, features
from .records import BlockState

__all__ = (
    "Altmap",
    "Block",
    "MemoryMap",
    "Section",
    "NOT_IN_DUMP",
    "memory_map",
)


class Section(NamedTuple):
    """A present SPARSEMEM section (``struct mem_section``)."""

    nr: int
    address: int
    start_pfn: int
    nr_pages: int
    #: The flag bits of ``section_mem_map``.
    flags: int
    #: The encoded mem_map: ``struct page`` address of pfn 0 as this section
    #: sees it (equal to ``vmemmap`` under SPARSEMEM_VMEMMAP).
    mem_map: int
    flag_names: List[str]

    def has(self, name: str) -> bool:
        return name in self.flag_names

    @property
    def end_pfn(self) -> int:
        return self.start_pfn + self.nr_pages


class Altmap(NamedTuple):
    """``struct vmem_altmap`` (6.6+) or the 5.13-6.5 ``nr_vmemmap_pages`` as one."""

    base_pfn: int
    end_pfn: int  # inclusive, as in the kernel
    reserve: int
    free: int
    alloc: int
    align: int


class Block(NamedTuple):
    """A memory block (``struct memory_block``)."""

    id: int
    address: int
    #: ``MEM_ONLINE``, ``MEM_OFFLINE``, ... or ``"?"`` if unreadable.
    state: BlockState
    nid: Optional[int]
    zone: Optional[str]
    start_section_nr: Optional[int]
    start_pfn: int
    nr_pages: int
    #: Pages at the start of the block that the kernel says hold its memmap
    #: (``nr_vmemmap_pages``; ``altmap->free`` from 6.6), 0 if none, None if
    #: unknown (no accounting, or unreadable).
    vmemmap_pages: Optional[int]
    altmap: Optional[Altmap]
    #: Why the block could not be read, or None.
    error: Optional[str]

    @property
    def end_pfn(self) -> int:
        return self.start_pfn + self.nr_pages

    @property
    def online(self) -> bool:
        return self.state == "MEM_ONLINE"


class MemoryMap(NamedTuple):
    """Everything :func:`memory_map` found."""

    features: Features
    sections: Dict[int, Section]
    blocks: Dict[int, Block]
    #: Problems that did not stop the walk (unreadable objects).
    errors: List[str]

    def section_of(self, pfn: int) -> Optional[Section]:
        return self.sections.get(self.section_nr(pfn))

    def block_of(self, pfn: int) -> Optional[Block]:
        return self.blocks.get(self.block_id(pfn))

    def section_nr(self, pfn: int) -> int:
        """The one pfn -> section number."""
        return pfn >> (self.features.section_size_bits - self.features.page_shift)

    def block_id(self, pfn: int) -> int:
        """The one pfn -> memory block id."""
        return pfn // self.features.pages_per_block

    def block_sections(self, block: Block) -> Iterator[Section]:
        per = self.features.sections_per_block
        for nr in range(block.id * per, (block.id + 1) * per):
            if nr in self.sections:
                yield self.sections[nr]

    def hotplugged(self) -> Dict[int, bool]:
        """Block id -> hot-plugged, for every block with a present section.

        The one definition: a block is hot-plugged iff none of its present
        sections is early (``SECTION_IS_EARLY``, set by
        ``sparse_init_nid()`` for boot memory and never for
        ``sparse_add_section()``).  A boot block may have absent sections
        (a block over an E820 hole); a hot-added one never has.
        """
        per = self.features.sections_per_block
        hot: Dict[int, bool] = {}
        for nr, s in self.sections.items():
            bid = nr // per
            hot[bid] = hot.get(bid, True) and not s.has("IS_EARLY")
        return hot

    def is_hotplugged(self, bid: int) -> bool:
        """:meth:`hotplugged` for one block (its sections only)."""
        per = self.features.sections_per_block
        present = [self.sections[nr] for nr in range(bid * per, (bid + 1) * per)
                   if nr in self.sections]
        return bool(present) and not any(s.has("IS_EARLY") for s in present)


def _flag_names(flags: int, masks: Dict[str, int]) -> List[str]:
    return [name for name, mask in masks.items() if flags & mask]


def _zone_name(zone: Object) -> Optional[str]:
    if not zone:
        return None
    try:
        return str(zone.name.string_().decode())
    except FaultError:
        return "?"


def read_block(prog: Program, mem: Object, f: Features, index: Optional[int] = None) -> Block:
    """Build a :class:`Block` from a ``struct memory_block *``; ``index`` is
    its key in the ``memory_blocks`` xarray, its id when the structure
    itself cannot be read."""
    address = mem.value_()
    bid = -1 if index is None else index
    try:
        bid = mem.dev.id.value_()
        start_nr = mem.start_section_nr.value_()
        state = decode_memory_block_state_value(prog, mem.state.value_())
        nid = mem.nid.value_()
        zone = _zone_name(mem.zone.read_()) if mem.type_.type.has_member("zone") else None
        altmap = None
        vmemmap_pages: Optional[int] = None
        # The block id (device id, xarray key, sysfs name) places the block;
        # start_section_nr is checked against it by block-geometry.
        start_pfn = bid * f.pages_per_block
        if f.block_accounting == "altmap":
            ptr = mem.altmap.read_()
            if ptr:
                a = ptr[0].read_()
                altmap = Altmap(a.base_pfn.value_(), a.end_pfn.value_(),
                                a.reserve.value_(), a.free.value_(), a.alloc.value_(),
                                a.align.value_())
                vmemmap_pages = altmap.free
            else:
                vmemmap_pages = 0
        elif f.block_accounting == "nr_vmemmap_pages":
            vmemmap_pages = mem.nr_vmemmap_pages.value_()
            if vmemmap_pages:
                # Linux kernel commit a08a2ae34613 ("mm,memory_hotplug: allocate
                # memmap from the added memory range") (in v5.13): the altmap
                # lived on the stack; only the count of pages it handed out
                # survives, always from the block's first pfn.
                altmap = Altmap(start_pfn, start_pfn + f.pages_per_block - 1, 0,
                                vmemmap_pages, vmemmap_pages, 0)
        return Block(bid, address, state, nid, zone, start_nr, start_pfn,
                     f.pages_per_block, vmemmap_pages, altmap, None)
    except (FaultError, KeyError, ValueError) as e:
        start_pfn = bid * f.pages_per_block if bid >= 0 else 0
        # Missing from a filtered dump when the fault is on the structure
        # itself; a fault through one of its pointers is damage.
        missing = isinstance(e, FaultError) and _on_struct(prog, e, address,
                                                           sizeof(mem.type_.type))
        return Block(bid, address, "?", None, None, None, start_pfn, f.pages_per_block,
                     None, None, (f"{NOT_IN_DUMP}: " if missing else "")
                     + f"memory_block at {address:#x}: {e}")


def _sections_root_by_root(prog: Program, f: Features, sections: Dict[int, "Section"],
                           add: Callable[[int, Object], None], errors: List[str],
                           why: FaultError) -> List[range]:
    """
    The present sections of every ``mem_section`` root that can be read
    (``SPARSEMEM_EXTREME``: ``SECTIONS_PER_ROOT`` sections a page, roots
    allocated as needed).  A root whose page is missing from the dump loses
    its sections, and says so; the others are walked as usual.  Returns the
    section numbers lost.
    """
    try:
        per_root = prog["SECTIONS_PER_ROOT"].value_()
        nr_sections = 1 << (prog["MAX_PHYSMEM_BITS"].value_() - f.section_size_bits)
        present = f.section_flags.masks["MARKED_PRESENT"]
        mem_section = prog["mem_section"]
        t = mem_section.type_.unaliased()
        if t.kind == TypeKind.POINTER:
            mem_section = mem_section.read_()
        extreme = t.type.unaliased_kind() == TypeKind.POINTER
    except (KeyError, LookupError, FaultError) as e:
        errors.append(f"mem_section: {why}; cannot walk it root by root: {e}")
        return [range(0, 1 << 62)]
    lost = []
    for r in range(-(-nr_sections // per_root)):
        try:
            root = mem_section[r].read_() if extreme else mem_section[r]
            if extreme and not root:
                continue
            for i in range(per_root):
                ms = root[i]
                if ms.section_mem_map.value_() & present:
                    nr = r * per_root + i
                    if nr not in sections:
                        add(nr, ms.address_of_())
        except FaultError:
            lost.append(r)
    errors.append(f"mem_section: {why}; walked root by root instead: "
                  + (f"roots {lost} ({per_root} sections each) not in the dump"
                     if lost else "every root read"))
    return [range(r * per_root, (r + 1) * per_root) for r in lost]


def _on_struct(prog: Program, e: FaultError, address: int, size: int) -> bool:
    """Whether fault ``e`` is on the structure at ``address`` itself (drgn
    reports a virtual or, for ELF and kdump segments, a physical address)."""
    if address <= e.address < address + size:
        return True
    try:
        pa: int = virt_to_phys(Object(prog, "void *", address)).value_()
    except Exception:  # not a direct-map address: then it is not the struct
        return False
    return bool(pa <= e.address < pa + size)


@takes_program_or_default
def memory_map(prog: Program, vmemmap_page_type: Optional[int] = None) -> MemoryMap:
    """
    Walk ``mem_section`` and the memory blocks.

    :param vmemmap_page_type: see :func:`~drgn_vmemmap.features.features`.
    """
    f = features(prog, vmemmap_page_type)
    masks = f.section_flags.masks
    map_mask = f.section_flags.map_mask
    pages_per_section = f.pages_per_section
    errors: List[str] = []

    sections: Dict[int, Section] = {}

    def add(nr: int, ms: Object) -> None:
        try:
            value = ms.section_mem_map.value_()
        except FaultError as e:
            errors.append(f"section {nr}: {e}")
            return
        flags = value & ~map_mask & 0xFFFFFFFFFFFFFFFF
        sections[nr] = Section(nr, ms.value_(), nr * pages_per_section,
                               pages_per_section, flags, value & map_mask,
                               _flag_names(flags, masks))

    lost: List[range] = []  # section numbers whose mem_section the dump lacks
    try:
        for nr, ms in for_each_present_section(prog):
            add(nr, ms)
    except FaultError as e:
        # A mem_section root page the dump lacks: walk root by root, so that
        # only the sections on it are lost.
        lost = _sections_root_by_root(prog, f, sections, add, errors, e)

    blocks: Dict[int, Block] = {}
    try:
        for index, mem in _memory_blocks(prog):
            b = read_block(prog, mem, f, index)
            if b.error:
                errors.append(b.error)
            blocks[b.id] = b
    except FaultError as e:
        # A page of the list is missing from a filtered dump.  One page must
        # not lose every block: look up each block the sections imply on its
        # own, so that only those under the missing page go.
        _blocks_one_by_one(prog, f, sections, blocks, errors, e)
    except ObjectNotFoundError:
        errors.append("this kernel has no memory blocks (CONFIG_MEMORY_HOTPLUG is off)")
    if lost:
        # Blocks whose sections are unknown are not checked, never blamed
        # for sections that seem absent.
        spb = f.sections_per_block
        for bid, b in list(blocks.items()):
            if not b.error and any(bid * spb in r or (bid + 1) * spb - 1 in r for r in lost):
                blocks[bid] = b._replace(error=f"{NOT_IN_DUMP}: the mem_section root of "
                                         "its sections")
    return MemoryMap(f, sections, blocks, errors)


def _memory_blocks(prog: Program) -> Iterator[Tuple[Optional[int], Object]]:
    """``(id, struct memory_block *)`` of every block: from the
    ``memory_blocks`` xarray, node by node (a missing node loses the blocks
    under it, where drgn's for_each_memory_block() walks the bus's device
    list, which one missing ``memory_block`` cuts), or that list on kernels
    before the xarray."""
    from drgn.helpers.linux.xarray import xa_for_each

    try:
        xa = prog["memory_blocks"].address_of_()
    except (KeyError, LookupError):
        for mem in for_each_memory_block(prog):
            yield None, mem
        return
    t = prog.type("struct memory_block *")
    for index, entry in xa_for_each(xa):
        yield index, Object(prog, t, entry.value_())


#: Block.error of a block whose ``struct memory_block`` (or the xarray node
#: leading to it) a filtered dump lacks.  Rules report such blocks as not
#: checked, never as violations.
NOT_IN_DUMP = "not in the dump"


def _blocks_one_by_one(prog: Program, f: Features, sections: Dict[int, "Section"],
                       blocks: Dict[int, Block], errors: List[str], why: FaultError) -> None:
    """
    Look up every memory block that the present sections imply, one
    ``xa_load()`` each (Linux kernel commit 3fcebf90209a ("drivers/base/memory:
    use xarray to store memory blocks") (in v5.8)).  A block whose xarray
    node or ``struct memory_block`` is missing keeps its geometry (from its id
    and ``memory_block_size``) and says why in ``error``.
    """
    from drgn.helpers.linux.xarray import xa_load

    try:
        xa = prog["memory_blocks"].address_of_()
    except (KeyError, LookupError):
        errors.append(f"memory block list: {why}")
        return
    missing = 0
    for bid in sorted({nr // f.sections_per_block for nr in sections} - set(blocks)):
        start_pfn = bid * f.pages_per_block
        try:
            entry = xa_load(xa, bid)
            if not entry:
                continue  # no block there: block-geometry's to say
            b = read_block(prog, Object(prog, "struct memory_block *", entry.value_()), f, bid)
        except FaultError as e:
            b = Block(bid, 0, "?", None, None, None, start_pfn, f.pages_per_block, None, None,
                      f"{NOT_IN_DUMP}: memory_blocks xarray node ({e})")
        if b.error and not b.error.startswith(NOT_IN_DUMP):
            b = b._replace(error=f"{NOT_IN_DUMP}: {b.error}")
        if b.error:
            missing += 1
        blocks[b.id] = b
    errors.append(f"memory block list: {why}; looked up block by block instead: "
                  f"{missing} block(s) not in the dump")
