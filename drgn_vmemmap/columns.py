"""
Columns
-------

The ``struct page``\\ s of a pfn range as numpy columns
(:class:`PageColumns`, filled by :mod:`~drgn_vmemmap.scan`), and their
decoding: page flags, page types, compound heads, free buddy blocks, and
runs of pfns.

Struct pages missing from a filtered dump are False in
:attr:`PageColumns.readable`; their columns hold zeros that mean nothing:
every mask returned here is False on them, and callers using the raw
columns must consult ``readable``.
"""

from typing import Iterable, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from .features import Features, PageTypes

__all__ = (
    "PageColumns",
    "buddy_pages",
    "flag_set",
    "has_type",
    "head_pfns",
    "runs",
    "type_is",
    "type_name",
    "unreadable_ranges",
)

_COLUMNS = ("flags", "refcount", "page_type", "mapping", "private", "compound_head")


class PageColumns:
    """
    The ``struct page``\\ s of pfns ``[start_pfn, end_pfn)`` as columns.

    Each column is a numpy array with one entry per pfn: ``flags`` (uint64),
    ``refcount`` (int32, ``_refcount``), ``page_type`` (uint32, the word
    shared with ``_mapcount``), ``mapping``, ``private`` and
    ``compound_head`` (uint64; ``compound_info`` since 7.1).  ``readable``
    (bool) is False for struct pages missing from the dump; their other
    columns are meaningless zeros.
    """

    __slots__ = ("start_pfn", "end_pfn", "readable", "faults", "page_types",
                 "vmemmap_base", "struct_size") + _COLUMNS

    def __init__(self, start_pfn: int, end_pfn: int, page_types: PageTypes,
                 vmemmap_base: int, struct_size: int) -> None:
        n = end_pfn - start_pfn
        self.start_pfn = start_pfn
        self.end_pfn = end_pfn
        #: How to decode ``page_type`` (the program's default
        #: :func:`~drgn_vmemmap.features.features`; pass other
        #: :class:`Features` to :func:`has_type` / :func:`type_is` for a
        #: user-supplied vmemmap page type).
        self.page_types = page_types
        #: Address of the ``struct page`` of pfn 0, and ``sizeof(struct page)``.
        self.vmemmap_base = vmemmap_base
        self.struct_size = struct_size
        self.flags = np.zeros(n, np.uint64)
        self.refcount = np.zeros(n, np.int32)
        self.page_type = np.zeros(n, np.uint32)
        self.mapping = np.zeros(n, np.uint64)
        self.private = np.zeros(n, np.uint64)
        self.compound_head = np.zeros(n, np.uint64)
        self.readable = np.zeros(n, bool)
        #: ``(start_pfn, end_pfn, message)`` of each run of unreadable struct
        #: pages, with drgn's fault message (e.g. an excluded page).
        self.faults: List[Tuple[int, int, str]] = []

    def __len__(self) -> int:
        return self.end_pfn - self.start_pfn

    def __repr__(self) -> str:
        return (f"PageColumns({self.start_pfn:#x}-{self.end_pfn:#x}, "
                f"{len(self) - self.nr_readable} unreadable)")

    @property
    def pfns(self) -> np.ndarray:
        """The pfn of each entry (int64)."""
        return np.arange(self.start_pfn, self.end_pfn, dtype=np.int64)

    @property
    def nr_readable(self) -> int:
        return int(np.count_nonzero(self.readable))


def flag_set(cols: PageColumns, bit: int) -> np.ndarray:
    """Mask of readable pages whose ``flags`` have bit ``bit`` set."""
    return ((cols.flags >> np.uint64(bit)) & np.uint64(1)).astype(bool) & cols.readable


def _types(cols: PageColumns, types: Union[Features, PageTypes, None]) -> PageTypes:
    if types is None:
        return cols.page_types
    return types.page_types if isinstance(types, Features) else types


def has_type(cols: PageColumns,
             types: Union[Features, PageTypes, None] = None) -> npt.NDArray[np.bool_]:
    """
    Mask of readable pages that have a page type (any).

    :param types: How ``page_type`` is encoded (default: ``cols.page_types``,
        the program's).
    """
    pt = cols.page_type
    signed = pt.view(np.int32)
    types = _types(cols, types)
    mask: npt.NDArray[np.bool_]
    if types.scheme == "pgty":
        # Linux kernel commit 4ffca5a96678 ("mm: support only one page_type
        # per page") (in v6.12): the type is the top byte, 0x80-0xfe.
        mask = signed < -(1 << 24)
    else:
        # page_has_type() up to 6.11 tests only the sign threshold, not the
        # base bits: a word below it is a type the kernel sees, if unknown.
        mask = signed < types.reserve
    return mask & cols.readable


def type_is(cols: PageColumns, name: str,
            types: Union[Features, PageTypes, None] = None) -> npt.NDArray[np.bool_]:
    """
    Mask of readable pages whose page type is ``name`` (``"buddy"``,
    ``"offline"``, ...: a key of :attr:`PageTypes.types`).

    :param types: As for :func:`has_type`.
    :raises LookupError: if this kernel has no such page type.
    """
    types = _types(cols, types)
    try:
        value = types.types[name]
    except KeyError:
        raise LookupError(f"this kernel has no {name!r} page type") from None
    pt = cols.page_type
    match: npt.NDArray[np.bool_]
    if types.scheme == "pgty":
        match = (pt >> np.uint32(24)) == np.uint32(value)
    else:
        base = np.uint32(types.base)
        match = (pt & (base | np.uint32(value))) == base
    return match & has_type(cols, types)


def type_name(page_type: int, types: Union[Features, PageTypes]) -> Optional[str]:
    """
    Decode one ``page_type`` word: the type's name (for the inverted scheme,
    names joined by ``"|"``), ``"unknown (0x...)"``, or None if it has no type.
    """
    types = types.page_types if isinstance(types, Features) else types
    page_type &= 0xFFFFFFFF
    signed = page_type - (1 << 32) if page_type & 0x80000000 else page_type
    if types.scheme == "pgty":
        if signed >= -(1 << 24):
            return None
        names = [k for k, v in types.types.items() if v == page_type >> 24]
    else:
        if signed >= types.reserve:
            return None
        if page_type & types.base != types.base:
            return f"unknown ({page_type:#010x})"
        names = [k for k, v in types.types.items()
                 if page_type & (types.base | v) == types.base]
    return "|".join(sorted(names)) if names else f"unknown ({page_type:#010x})"


def head_pfns(cols: PageColumns) -> np.ndarray:
    """
    The pfn of each page's compound head (int64): the page itself unless it
    is a tail page (bit 0 of ``compound_head``), -1 where unreadable.

    ``compound_head`` holds the head's address + 1, or, since 7.1 with HVO
    and a power-of-2 ``struct page``, a mask that gives the head's address
    when and-ed with the tail's: ``GENMASK(63, order + log2(size)) | 1``.
    The two forms are told apart by value (a vmemmap address is never of
    the mask form).
    """
    info = cols.compound_head
    tail = ((info & np.uint64(1)) == np.uint64(1)) & cols.readable
    addrs = (np.uint64(cols.vmemmap_base)
             + cols.pfns.astype(np.uint64) * np.uint64(cols.struct_size))
    value = info & ~np.uint64(1)
    # value is a mask iff -value is a power of two.
    neg = (~value) + np.uint64(1)
    is_mask = (value != 0) & ((neg & (neg - np.uint64(1))) == 0)
    head_addr = np.where(is_mask, addrs & value, value)
    heads = ((head_addr - np.uint64(cols.vmemmap_base))
             // np.uint64(cols.struct_size)).astype(np.int64)
    out = np.where(tail, heads, cols.pfns)
    out[~cols.readable] = -1
    return out


def buddy_pages(cols: PageColumns, max_order: int = 20) -> np.ndarray:
    """
    Mask of pages inside a free buddy block whose head (the only page with
    the Buddy type; its order is in ``private``) is in ``cols``: what
    ``/proc/kpageflags`` reports as ``KPF_BUDDY``.
    """
    n = len(cols)
    heads = np.flatnonzero(type_is(cols, "buddy"))
    orders = np.minimum(cols.private[heads], np.uint64(max_order)).astype(np.int64)
    ends = np.minimum(heads + (np.int64(1) << orders), n)
    delta = np.zeros(n + 1, np.int64)
    np.add.at(delta, heads, 1)
    np.add.at(delta, ends, -1)
    return np.cumsum(delta[:n]) > 0


def coalesce(numbers: Union[Iterable[int], np.ndarray]) -> List[Tuple[int, int]]:
    """
    The one run coalescer: integers (pfns, frames, in any order, repeats
    allowed) as sorted ``(first, last + 1)`` runs of consecutive values.
    """
    a = np.asarray(numbers if isinstance(numbers, np.ndarray) else list(numbers),
                   dtype=np.int64)
    if a.size == 0:
        return []
    steps = np.diff(a)
    if (steps <= 0).any():  # not strictly increasing (a mask's pfns are): sort
        a = np.unique(a)
        steps = np.diff(a)
    breaks = np.flatnonzero(steps != 1)
    starts = np.concatenate((a[:1], a[breaks + 1]))
    ends = np.concatenate((a[breaks] + 1, a[-1:] + 1))
    return list(zip(starts.tolist(), ends.tolist()))


def runs(mask: np.ndarray, base_pfn: int) -> List[Tuple[int, int]]:
    """
    Coalesce a boolean mask into ``(start_pfn, end_pfn)`` runs of True, the
    mask's first entry being ``base_pfn``.  End pfns are exclusive.
    """
    return coalesce(np.flatnonzero(np.asarray(mask, bool)) + base_pfn)


def unreadable_ranges(cols: PageColumns) -> List[Tuple[int, int]]:
    """``(start_pfn, end_pfn)`` runs of struct pages missing from the dump."""
    return runs(~cols.readable, cols.start_pfn)
