"""
Records
-------

The domain records of a check, shared by every layer: a block's self-hosted
:class:`Range`, a :class:`Violation`, a rule that could :class:`NotChecked`
be decided somewhere, a :class:`Note` (normal, worth knowing), a rule that
:class:`Holds`, and the one vocabulary for block states (:func:`state_name`).
Presentation (tables, JSON) is :mod:`~drgn_vmemmap.report`'s business.
"""

from typing import Dict, Literal, NamedTuple, Optional, Tuple, Union, get_args

__all__ = ("EXTENT_KINDS", "STATE_NAMES", "BlockState", "ExtentKind", "Holds", "MappingStatus",
           "Note", "NotChecked", "Range", "Result", "Violation", "state_name")


class Range(NamedTuple):
    """
    A block's self-hosted vmemmap range, found from the page tables: its
    frames that back the block's own struct pages lie in ``[start_pfn,
    start_pfn + nr_pages)``, all of them but ``holes`` (frames inside the
    range that back nothing, as remapping self-hosted vmemmap the way HVO
    does leaves them; normally 0).  ``reserved_pages`` (>= ``nr_pages``) is
    the block's whole vmemmap area, which the kernel marks and accounts:
    with ``memmap_on_memory=force`` the range padded up to whole pageblocks,
    else the range itself.
    """

    block: int
    start_pfn: int
    nr_pages: int
    state: str
    node: Optional[int]
    zone: Optional[str]
    reserved_pages: int = 0
    holes: int = 0

    @property
    def frames(self) -> int:
        """Frames that really back the block's struct pages."""
        return self.nr_pages - self.holes

    @property
    def area_end_pfn(self) -> int:
        """End of the vmemmap area (frames plus any force-mode padding)."""
        return self.start_pfn + max(self.nr_pages, self.reserved_pages)


class Violation(NamedTuple):
    """A broken invariant over a coalesced pfn range ``[pfn_start, pfn_end)``."""

    rule: str
    severity: str  # "error" | "warning"
    pfn_start: int
    pfn_end: int
    section: Optional[int]
    block: Optional[int]
    expected: str
    found: str
    message: str


class NotChecked(NamedTuple):
    """A rule that could not be decided somewhere, and why."""

    rule: str
    reason: str
    pfn_start: Optional[int] = None
    pfn_end: Optional[int] = None


class Note(NamedTuple):
    """Something normal but worth knowing, over ``[pfn_start, pfn_end)``:
    it holds, and says what it implies (e.g. which block cannot be unplugged
    first).  Never a violation."""

    rule: str
    pfn_start: int
    pfn_end: int
    block: Optional[int]
    message: str


class Holds(NamedTuple):
    rule: str
    # A field named like tuple.count(), which it shadows (as at runtime).
    count: int = 1  # type: ignore[assignment]


Result = Union[Violation, NotChecked, Holds, Note]

#: How the frames behind a run of struct pages came to back it
#: (:mod:`~drgn_vmemmap.backing`): the described block's own altmap area,
#: boot memblock, another block's altmap area, the page allocator; or not
#: mapped, or not known (a page-table page missing from the dump).
ExtentKind = Literal["self-hosted", "boot-allocated", "other-block", "ordinary", "unbacked",
                     "unreadable"]
EXTENT_KINDS: Tuple[ExtentKind, ...] = get_args(ExtentKind)

#: What the page tables say of a virtual range (:mod:`~drgn_vmemmap.pagetable`).
MappingStatus = Literal["mapped", "unmapped", "unreadable"]

#: A memory block's state: the name of its ``enum memory_block_state``
#: value as the kernel's debug info spells it (``"MEM_ONLINE"``, ...), or
#: ``"?"`` when it cannot be read.  Open-ended (kernels add states), so a
#: ``str``; :func:`state_name` gives the one spelling users see.
BlockState = str

#: ``enum memory_block_state`` (include/linux/memory.h) -> the name sysfs
#: shows in ``/sys/devices/system/memory/memoryN/state`` and JSON uses.
STATE_NAMES: Dict[BlockState, str] = {
    "MEM_ONLINE": "online", "MEM_OFFLINE": "offline", "MEM_GOING_OFFLINE": "going-offline",
    "MEM_GOING_ONLINE": "going-online", "MEM_CANCEL_ONLINE": "cancel-online",
    "MEM_CANCEL_OFFLINE": "cancel-offline", "MEM_PREPARE_ONLINE": "prepare-online",
    "MEM_FINISH_OFFLINE": "finish-offline",
}


def state_name(state: BlockState) -> str:
    """``"MEM_ONLINE"`` -> ``"online"``; an unknown state lower-cased."""
    return STATE_NAMES.get(state, state.lower())
