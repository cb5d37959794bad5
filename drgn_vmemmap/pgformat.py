"""
Page-Table Formats
------------------

What :class:`~drgn_vmemmap.pagetable.PageTableWalker` needs to know of one
kind of kernel page table: its levels (the shift an entry of each level
covers and how many entries a table of that level has), the byte order of an
entry, which addresses the top table translates, and a numpy decoder that
turns a slice of one table into kinds (0: not present, 1: leaf, 2: next-level
table) and physical addresses.

:func:`format_for` finds the format of a program from the program itself: its
platform, the kernel's ``VMCOREINFO`` and kernel variables, as drgn's own
translation does.  Supported: x86-64 4- and 5-level; arm64 with 4K, 16K and
64K granules, 48- and 52-bit virtual addresses (FEAT_LPA2 and FEAT_LPA
descriptors); ppc64 Book3S radix with 4K and 64K pages.  None elsewhere
(ppc64 hash MMU, Book3E, other architectures): callers fall back to drgn's
:func:`~drgn.helpers.linux.mm.follow_phys`.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
from drgn import Architecture, FaultError, PlatformFlags, Program
from drgn.helpers.linux.boot import pgtable_l5_enabled

__all__ = (
    "PageTableFormat",
    "arm64",
    "format_for",
    "ppc64_radix",
    "x86_64",
)

#: ``decode(level, entries) -> (kind, pa)``: per entry, 0 (not present),
#: 1 (leaf: ``pa`` is the start of the frame, aligned to the level's size) or
#: 2 (next-level table at physical address ``pa``).
Decoder = Callable[[int, np.ndarray], Tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class PageTableFormat:
    """How to read one kind of kernel page table (level 0 is the top)."""

    name: str
    #: log2 of the bytes an entry of each level covers.
    shifts: Tuple[int, ...]
    #: Entries in a table of each level (the top one can have fewer).
    entries: Tuple[int, ...]
    decode: Decoder
    #: numpy byte order of a stored entry: ``"<"`` or ``">"``.
    byteorder: str = "<"
    #: Which addresses the top table translates.  ``"sign"``: both halves of
    #: a ``va_bits`` address space, sign-extended (x86-64); ``"upper"``: only
    #: addresses whose bits above ``va_bits`` are all ones (arm64's TTBR1;
    #: the rest is not mapped by ``swapper_pg_dir``); ``"any"``: the bits
    #: above ``va_bits`` are ignored (ppc64 radix: they select the quadrant).
    space: str = "sign"

    @property
    def va_bits(self) -> int:
        """Address bits the top table resolves."""
        return self.shifts[0] + self.entries[0].bit_length() - 1


def _kinds(leaf: np.ndarray, present: np.ndarray) -> np.ndarray:
    return np.where(leaf, 1, np.where(present, 2, 0))


def x86_64(l5: bool, physical_mask: int = (1 << 52) - 1) -> PageTableFormat:
    """
    x86-64 4-level (or 5-level, ``l5``): 512 entries a table, ``_PAGE_PSE``
    leaves at PUD (1 GiB) and PMD (2 MiB).  Physical address bits are
    ``physical_mask`` (no NX or software bits), from bit 12 for tables and
    from the leaf size for leaves (a large leaf's bit 12 is
    ``_PAGE_PAT_LARGE``).
    """
    shifts = (48, 39, 30, 21, 12) if l5 else (39, 30, 21, 12)
    table_mask = np.uint64(physical_mask & ~0xFFF)

    def decode(level: int, e: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        shift = shifts[level]
        present = (e & 1) != 0  # _PAGE_PRESENT
        if shift == 12:
            leaf = present
        elif shift in (30, 21):
            leaf = present & ((e & (1 << 7)) != 0)  # _PAGE_PSE
        else:
            leaf = np.zeros(len(e), dtype=bool)
        leaf_mask = np.uint64(physical_mask & ~((1 << shift) - 1))
        return _kinds(leaf, present), np.where(leaf, e & leaf_mask, e & table_mask)

    return PageTableFormat(f"x86-64 {len(shifts)}-level", shifts, (512,) * len(shifts),
                           decode, "<", "sign")


def arm64(page_shift: int, va_bits: int, big_endian: bool = False) -> PageTableFormat:
    """
    arm64 translation tables for ``TTBR1`` (kernel addresses), granule
    ``1 << page_shift``, ``va_bits`` the size the kernel runs with.

    Each level resolves ``page_shift - 3`` bits; the top one what is left
    (16 entries for 4K/52-bit).  Descriptor bits 1:0 are 3 for a table (a
    page at the last level) and 1 for a block at the other levels.  Output
    address bits 47:``page_shift`` are in place; with 64K pages bits 51:48
    are in descriptor bits 15:12 (FEAT_LPA, zero without it); with 4K or 16K
    pages and 52-bit addresses (FEAT_LPA2, which the kernel requires for
    them) bits 49:48 are in place and bits 51:50 are in descriptor bits 9:8,
    otherwise the shareability field.
    """
    if page_shift not in (12, 14, 16) or not page_shift < va_bits <= 52:
        raise ValueError(f"no arm64 format for {1 << page_shift}-byte pages and "
                         f"{va_bits}-bit addresses")
    bits = page_shift - 3
    levels = -(-(va_bits - page_shift) // bits)
    shifts = tuple(page_shift + bits * (levels - 1 - i) for i in range(levels))
    top = 1 << (va_bits - shifts[0])
    low = 0x0000_FFFF_FFFF_FFFF & ~((1 << page_shift) - 1)
    if page_shift == 16:
        high, high_shift = 0xF000, 36
    elif va_bits == 52:
        low |= 0x0003_0000_0000_0000
        high, high_shift = 0x300, 42
    else:
        high, high_shift = 0, 0
    low_u, high_u, shift_u = np.uint64(low), np.uint64(high), np.uint64(high_shift)

    def decode(level: int, e: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        t = e & 3
        if level == levels - 1:
            kind = np.where(t == 3, 1, 0)
        else:
            kind = np.where(t == 1, 1, np.where(t == 3, 2, 0))
        pa = (e & low_u) | ((e & high_u) << shift_u)
        leaf_mask = np.uint64(~((1 << shifts[level]) - 1) & 0xFFFF_FFFF_FFFF_FFFF)
        return kind, np.where(kind == 1, pa & leaf_mask, pa)

    return PageTableFormat(f"arm64 {1 << (page_shift - 10)}K {va_bits}-bit",
                           shifts, (top,) + (1 << bits,) * (levels - 1), decode,
                           ">" if big_endian else "<", "upper")


#: RADIX_{PGD,PUD,PMD,PTE}_INDEX_SIZE (book3s/64/radix-4k.h, radix-64k.h).
_RADIX_INDEX = {12: (13, 9, 9, 9), 16: (13, 9, 9, 5)}


def ppc64_radix(page_shift: int) -> PageTableFormat:
    """
    ppc64 Book3S radix tree, stored big-endian whatever the kernel's byte
    order: ``_PAGE_PRESENT`` (bit 63), ``_PAGE_PTE`` (bit 62) for a leaf
    above the PTE level (1 GiB PUD, 2 MiB PMD); a leaf's frame is bits
    52:``shift`` (``PTE_RPN_MASK``), a next-level table is the entry without
    ``*_MASKED_BITS`` (the flag bits and the next level's size, NLS).  Tables
    are ``8 << index_size`` bytes (a 64K-page PTE table is a 256-byte
    fragment).
    """
    try:
        index = _RADIX_INDEX[page_shift]
    except KeyError:
        raise ValueError(f"no ppc64 radix format for {1 << page_shift}-byte pages") from None
    shifts = tuple(page_shift + sum(index[i + 1:]) for i in range(4))
    rpn = (1 << 53) - 1
    table_mask = np.uint64(~0xC0000000000000FF & 0xFFFF_FFFF_FFFF_FFFF)

    def decode(level: int, e: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        present = (e & np.uint64(1 << 63)) != 0  # _PAGE_PRESENT
        leaf = present if level == 3 else present & ((e & np.uint64(1 << 62)) != 0)
        leaf_mask = np.uint64(rpn & ~((1 << shifts[level]) - 1))
        return _kinds(leaf, present), np.where(leaf, e & leaf_mask, e & table_mask)

    return PageTableFormat(f"ppc64 radix {1 << (page_shift - 10)}K", shifts,
                           tuple(1 << i for i in index), decode, ">", "any")


def _vmcoreinfo(prog: Program) -> Dict[str, str]:
    try:
        text = prog["VMCOREINFO"].string_().decode(errors="replace")
    except (LookupError, FaultError):
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _number(info: Dict[str, str], key: str) -> Optional[int]:
    try:
        return int(info[key], 0)
    except (KeyError, ValueError):
        return None


def _arm64_va_bits(prog: Program, page_shift: int) -> Optional[int]:
    # As drgn: VA_BITS is the configured size; 64 - TCR_EL1.T1SZ what the
    # kernel runs with (a 52-bit kernel falls back to 48 bits, or 47 with
    # 16K pages, on hardware without FEAT_LPA2, with one level less).  With
    # 64K pages the level count is the same either way and swapper_pg_dir
    # is laid out for VA_BITS (TTBR1 is offset), so VA_BITS is used.
    info = _vmcoreinfo(prog)
    configured = _number(info, "NUMBER(VA_BITS)")
    t1sz = _number(info, "NUMBER(TCR_EL1_T1SZ)")
    if configured is not None and (page_shift == 16 or not t1sz):
        return configured
    if t1sz:
        return 64 - t1sz
    try:  # No VMCOREINFO: the size the kernel runs with.
        actual = int(prog["vabits_actual"].value_())
    except (LookupError, FaultError):
        return None
    # With 64K pages a 48-bit run may be a 52-bit layout: unknown.
    return actual if page_shift != 16 or actual == 52 else None


def _ppc64_radix(prog: Program) -> bool:
    try:
        prog["interrupt_base_book3e"]
        return False  # Book3E: no radix tree
    except LookupError:
        pass
    try:
        # MMU_FTR_TYPE_RADIX (asm/mmu.h); the hash MMU's tables are not a tree.
        return bool(prog["cur_cpu_spec"].mmu_features.value_() & 0x40)
    except (LookupError, FaultError):
        return False


def format_for(prog: Program) -> Optional[PageTableFormat]:
    """The kernel page-table format of ``prog``, or None if it has none here."""
    platform = prog.platform
    if platform is None:
        return None
    arch = platform.arch
    if arch == Architecture.X86_64:
        # CONFIG_DYNAMIC_PHYSICAL_MASK kernels keep the usable physical
        # address bits (without the SME/SEV C-bit or the TDX shared bit) in
        # physical_mask; otherwise it is __PHYSICAL_MASK_SHIFT = 52 bits.
        try:
            physical_mask = prog["physical_mask"].value_()
        except (KeyError, LookupError, FaultError):
            physical_mask = (1 << 52) - 1
        return x86_64(bool(pgtable_l5_enabled(prog)), physical_mask)
    if arch not in (Architecture.AARCH64, Architecture.PPC64):
        return None
    page_shift = int(prog["PAGE_SHIFT"].value_())
    try:
        if arch == Architecture.AARCH64:
            va_bits = _arm64_va_bits(prog, page_shift)
            if va_bits is None:
                return None
            big = not platform.flags & PlatformFlags.IS_LITTLE_ENDIAN
            return arm64(page_shift, va_bits, big)
        return ppc64_radix(page_shift) if _ppc64_radix(prog) else None
    except ValueError:
        return None
