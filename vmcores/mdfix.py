"""Let Debian 12's makedumpfile filter kernels with more section flags than it knows.

makedumpfile 1.7.2 hard-codes ``SECTION_MAP_LAST_BIT`` as ``1UL<<5`` and
decodes a section's mem_map as ``section_mem_map & ~0x1f``.  The
6.12-marking kernel (patches/6.12-vmemmap-marking.patch) has
``SECTION_MAP_LAST_BIT`` 6 and sets bit 5 (``SECTION_USE_VMEMMAP``) on every
self-hosted section, so makedumpfile reads those struct pages 32 bytes off and
any struct-page filter (``-d`` 2..16) stops at the end of such a section's
vmemmap ("__exclude_unnecessary_pages: Can't read the buffer of struct page").
``-d 1`` still works, but a kdump file keeps a 24-byte descriptor per zero
page: 18.8 MB for a 1.6 GiB guest, over the 12 MB budget.

The workaround, used only when some present section has such a bit:

1. ``scrub_plan``: find every ``mem_section::section_mem_map`` word with a
   flag bit at or above makedumpfile's ``SECTION_MAP_LAST_BIT`` (drgn reads
   the raw dump: mechanics only, nothing in the manifest comes from drgn);
2. ``rewrite(scrubbed=True)``: clear those bits in the factory's scratch
   copy of QEMU's dump (kdump-compressed: the page holding the words is
   appended uncompressed and its page descriptor pointed at the copy);
3. makedumpfile filters that as usual (its decisions are then the ones it
   would make if it knew the kernel's mask);
4. ``rewrite(scrubbed=False)``: the same on makedumpfile's output puts the
   original words back.

The fixture then holds the guest's memory exactly as the guest left it, with
the pages a correct ``-d`` filter excludes left out.
"""

import json
import struct
import subprocess
import sys
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

#: makedumpfile 1.7.2's SECTION_MAP_LAST_BIT (makedumpfile.h: 1UL<<5).
MAKEDUMPFILE_MAP_BITS = 5
PAGE_SIZE = 4096

#: (physical address of the word, its value in the guest, scrubbed value)
Word = Tuple[int, int, int]

_PLAN = r"""
import json, sys, drgn
from drgn.helpers.linux.mm import follow_phys
from drgn.helpers.linux.mmzone import for_each_present_section
# QEMU's kdump files name no architecture: give drgn one.
prog = drgn.Program(drgn.Platform(drgn.Architecture.X86_64, drgn.PlatformFlags.IS_64_BIT
                                  | drgn.PlatformFlags.IS_LITTLE_ENDIAN))
prog.set_core_dump(sys.argv[1]); prog.load_debug_info([sys.argv[2]])
try:
    last = prog["SECTION_MAP_LAST_BIT"].value_()
except (KeyError, LookupError):
    last = int(sys.argv[3])
extra = ((1 << last) - 1) & ~((1 << int(sys.argv[3])) - 1)
out = []
if extra:
    init_mm = prog["init_mm"].address_of_()
    for nr, ms in for_each_present_section(prog):
        word = ms.section_mem_map
        value = word.value_()
        if value & extra:
            phys = follow_phys(init_mm, word.address_of_().value_()).value_()
            out.append([phys, value, value & ~extra])
print(json.dumps(out))
"""


def scrub_plan(raw: Path, vmlinux: Path) -> List[Word]:
    """The section words of ``raw`` (QEMU's kdump file) that makedumpfile would misdecode."""
    proc = subprocess.run([sys.executable, "-c", _PLAN, str(raw), str(vmlinux),
                           str(MAKEDUMPFILE_MAP_BITS)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("reading mem_section from the raw dump failed: "
                           + (proc.stderr.strip().splitlines() or ["?"])[-1])
    return [tuple(w) for w in json.loads(proc.stdout)]


def _kdump_layout(f) -> Tuple[int, bytes, int]:
    """(block size, 2nd bitmap, offset of the first page descriptor)."""
    f.seek(0)
    hdr = f.read(PAGE_SIZE)
    if hdr[:8] != b"KDUMP   ":
        raise ValueError("not a kdump-compressed file")
    # struct disk_dump_header: signature[8], header_version, new_utsname
    # (6 x 65), struct timeval (8-aligned), then status, block_size,
    # sub_hdr_size, bitmap_blocks.
    off = (8 + 4 + 6 * 65 + 7) & ~7
    off += 16
    _status, block_size, sub_hdr_size, bitmap_blocks = struct.unpack_from("<IiiI", hdr, off)
    f.seek(block_size * (1 + sub_hdr_size))
    bitmaps = f.read(bitmap_blocks * block_size)
    second = bitmaps[len(bitmaps) // 2:]
    return block_size, second, block_size * (1 + sub_hdr_size + bitmap_blocks)


def _rank(bitmap: bytes, pfn: int) -> int:
    """How many pages before ``pfn`` are dumped (set bits of the 2nd bitmap)."""
    whole = int.from_bytes(bitmap[:pfn >> 3], "little").bit_count()
    return whole + (bitmap[pfn >> 3] & ((1 << (pfn & 7)) - 1)).bit_count()


_DESC = struct.Struct("<qIIQ")  # struct page_desc: offset, size, flags, page_flags
_ZLIB = 0x1                     # DUMP_DH_COMPRESSED_ZLIB


def rewrite(dump: Path, plan: List[Word], scrubbed: bool) -> int:
    """Write the scrubbed (or the original) values of ``plan`` into ``dump``.

    ``dump`` is kdump-compressed (QEMU's dump, or makedumpfile's output).
    Each page holding a word is appended uncompressed and its page
    descriptor pointed at the copy.  Returns the number of pages rewritten.
    """
    by_page: Dict[int, List[Word]] = defaultdict(list)
    for w in plan:
        by_page[w[0] // PAGE_SIZE].append(w)
    with open(dump, "r+b") as f:
        block_size, second, descs = _kdump_layout(f)
        if block_size != PAGE_SIZE:
            raise ValueError(f"kdump block size {block_size}")
        for pfn, words in sorted(by_page.items()):
            if not second[pfn >> 3] >> (pfn & 7) & 1:
                raise RuntimeError(f"the page holding mem_section words (pfn {pfn:#x}) "
                                   "was filtered out")
            at = descs + _rank(second, pfn) * _DESC.size
            f.seek(at)
            offset, size, flags, page_flags = _DESC.unpack(f.read(_DESC.size))
            f.seek(offset)
            data = f.read(size)
            if flags & _ZLIB:
                data = zlib.decompress(data)
            elif flags:
                raise RuntimeError(f"page {pfn:#x} uses compression {flags:#x}")
            if len(data) != PAGE_SIZE:
                raise RuntimeError(f"page {pfn:#x}: {len(data)} bytes")
            page = bytearray(data)
            for phys, value, clean in words:
                have, want = (value, clean) if scrubbed else (clean, value)
                old, = struct.unpack_from("<Q", page, phys % PAGE_SIZE)
                if old != have:
                    raise RuntimeError(f"word at {phys:#x} is {old:#x}, expected {have:#x}")
                struct.pack_into("<Q", page, phys % PAGE_SIZE, want)
            f.seek(0, 2)
            new_offset = f.tell()
            f.write(page)
            f.seek(at)
            f.write(_DESC.pack(new_offset, PAGE_SIZE, 0, page_flags))
    return len(by_page)
