"""Leave guest RAM that is not System RAM out of QEMU's dump, as /proc/vmcore does.

QEMU's ``dump-guest-memory`` writes every page of the guest's RAM.  A kdump
of a real machine holds only the crashed kernel's "System RAM" resources
(the capture kernel's ELF core header is built from them: kexec-tools, or
``crash_prepare_elf64_headers()`` with ``walk_system_ram_res()``).  For a
guest whose RAM is mostly an E820 reserved hole (``memmap=nn$ss``: the
6.12-bigblocks scenario reserves 61 of its 63 GiB), QEMU's kdump-zlib file
keeps one 24-byte descriptor per zero page of the hole (17 M of them, 410
MB), and makedumpfile keeps them all: pages with no struct page are never
filtered, and ``-d 1`` in a kdump file still writes a descriptor per zero
page.

``keep_only()`` edits the flattened-then-rebuilt kdump file (``makedumpfile
-R``'s output) in place before makedumpfile filters it: the pfns outside the
given ranges are cleared from both bitmaps and their page descriptors
removed (the later descriptors move down; page data stays where it is, each
descriptor holds its absolute offset).  makedumpfile then treats them as
never dumped.
"""

import struct
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from .paths import log

PAGE_SHIFT = 12
#: sizeof(page_desc_t): offset (8), size (4), flags (4), page_flags (8).
PD_SIZE = 24


def system_ram(iomem: str) -> List[Tuple[int, int]]:
    """The top-level ``System RAM`` lines of ``/proc/iomem`` as pfn ranges
    ``[start, end)``, rounded outwards (a page partly RAM is kept)."""
    out = []
    for line in iomem.splitlines():
        if line.startswith(" ") or ": System RAM" not in line:
            continue
        lo, hi = line.split(":", 1)[0].strip().split("-")
        out.append((int(lo, 16) >> PAGE_SHIFT, (int(hi, 16) >> PAGE_SHIFT) + 1))
    return sorted(out)


def keep_only(raw: Path, keep: Sequence[Tuple[int, int]]) -> int:
    """Drop every dumped pfn of kdump file ``raw`` outside ``keep``; return
    how many were dropped."""
    with open(raw, "r+b") as f:
        head = f.read(448)
        if not head.startswith((b"KDUMP   ", b"DISKDUMP")):
            raise ValueError(f"{raw}: not a kdump-compressed file")
        # disk_dump_header (64-bit): block_size at 428, then sub_hdr_size,
        # bitmap_blocks, max_mapnr.
        block_size, sub_hdr_size, bitmap_blocks, max_mapnr = struct.unpack_from(
            "<iiiI", head, 428)
    bitmap_off = (1 + sub_hdr_size) * block_size
    half = bitmap_blocks * block_size // 2
    pd_off = bitmap_off + 2 * half
    mm = np.memmap(raw, dtype=np.uint8, mode="r+")
    bm1 = np.unpackbits(mm[bitmap_off:bitmap_off + half], bitorder="little")
    bm2 = np.unpackbits(mm[bitmap_off + half:bitmap_off + 2 * half], bitorder="little")
    inside = np.zeros(bm2.size, dtype=bool)
    for start, end in keep:
        inside[start:end] = True
    dumped = bm2.astype(bool)
    drop = dumped & ~inside
    n = int(drop.sum())
    if n:
        ndumped = int(dumped.sum())
        pds = mm[pd_off:pd_off + ndumped * PD_SIZE].reshape(ndumped, PD_SIZE)
        kept = pds[~drop[dumped]].copy()
        pds[:len(kept)] = kept
        pds[len(kept):] = 0
        bm1[~inside] = 0
        bm2[drop] = 0
        mm[bitmap_off:bitmap_off + half] = np.packbits(bm1, bitorder="little")
        mm[bitmap_off + half:bitmap_off + 2 * half] = np.packbits(bm2, bitorder="little")
        mm.flush()
    del mm
    log(f"{n} dumped pfns outside System RAM left out of {raw.name}")
    return n
