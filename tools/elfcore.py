"""
ELF copies of kernel core dumps
-------------------------------

No tool here converts a kdump-compressed dump to ELF (makedumpfile does not
take a kdump-compressed file as input, and drgn cannot write cores), so
:func:`write_elf` does it through drgn: it reads every present section's
physical memory and writes one ``PT_LOAD`` segment per run, plus the
``VMCOREINFO`` note.  The file is sparse (all-zero pages are not written).

With ``holes=True`` pages the source dump lacks (filtered out by makedumpfile)
are left out of the ``PT_LOAD`` segments, so reading them from the copy
faults exactly as it does from the original: the copy checks like the
original.  Without, they read as zeros (fine for timing).

Layout: ELF header at 0, page data from the second page on (file offset of a
byte = its segment's base + offset in the run of present sections), then the
note and the program headers at the end, so that the number of segments need
not be known before the data is written.

:func:`load_segments` lists the ``PT_LOAD`` segments of such a file (or of
any 64-bit little-endian ELF core) for patching it at a physical address.
"""

import os
import struct
import time
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple, Union

import numpy as np
from drgn import Architecture, FaultError, Program
from drgn.helpers.linux.mm import phys_to_virt
from drgn.helpers.linux.mmzone import for_each_present_section

__all__ = ("Segment", "file_offset", "load_segments", "write_elf")

PT_LOAD = 1
PT_NOTE = 4
#: e_machine of each architecture with fixtures (little-endian all).
_EM = {Architecture.X86_64: 62, Architecture.AARCH64: 183, Architecture.PPC64: 21}


class Segment(NamedTuple):
    """A ``PT_LOAD`` segment: file bytes ``[offset, offset + size)`` hold physical
    ``[paddr, paddr + size)`` (virtual ``vaddr``)."""

    offset: int
    vaddr: int
    paddr: int
    size: int


def _read_physical(prog: Program, address: int, size: int, page: int,
                   bad: Optional[List[int]] = None) -> bytes:
    """Read physical memory; unreadable pages read as zeros and their
    addresses are appended to ``bad``."""
    try:
        return prog.read(address, size, True)
    except FaultError:
        if size <= page:
            if bad is not None:
                bad.append(address)
            return bytes(size)
        half = (size // 2 // page) * page
        return (_read_physical(prog, address, half, page, bad)
                + _read_physical(prog, address + half, size - half, page, bad))


def write_elf(prog: Program, out: Union[str, Path], holes: bool = False) -> Tuple[int, float]:
    """
    Write an ELF vmcore of ``prog``'s present sections to ``out``.

    :param holes: leave pages that cannot be read out of the segments (else
        they are zeros).
    :return: (bytes of RAM read, seconds).
    """
    out = Path(out)
    t = time.perf_counter()
    # Plain drgn only (no drgn_vmemmap): tools/mutate.py, whose oracle must
    # share no code with the checker, writes its ELF copies with this.
    page_shift = prog["PAGE_SHIFT"].value_()
    page = 1 << page_shift
    per = 1 << (prog["SECTION_SIZE_BITS"].value_() - page_shift)
    present = []
    try:
        for nr, _ in for_each_present_section(prog):
            present.append(nr)
    except FaultError:  # a mem_section root the dump lacks: keep what was found
        pass
    # Coalesce present sections into physical ranges.
    ranges: List[List[int]] = []
    for nr in sorted(present):
        if ranges and ranges[-1][1] == nr * per:
            ranges[-1][1] += per
        else:
            ranges.append([nr * per, nr * per + per])
    machine = _EM[prog.platform.arch] if prog.platform is not None else 62
    segments: List[Tuple[int, int, int]] = []  # (file offset, paddr, size)
    tmp = out.with_name(f"{out.name}.partial{os.getpid()}")
    total = 0
    off = page  # data starts at the second page
    with open(tmp, "wb") as fp:
        fp.truncate(off)
        chunk = 2 << 20
        for lo, hi in ranges:
            base = off - lo * page  # file offset of physical address 0 in this range
            run: Optional[List[int]] = None  # readable [start, end) being built
            for a in range(lo * page, hi * page, chunk):
                size = min(chunk, hi * page - a)
                total += size
                bad: List[int] = []
                buf = _read_physical(prog, a, size, page, bad if holes else None)
                words = np.frombuffer(buf, np.uint64).reshape(-1, page // 8)
                for i in np.flatnonzero(words.any(axis=1)):  # sparse: non-zero pages only
                    fp.seek(base + a + int(i) * page)
                    fp.write(buf[int(i) * page:(int(i) + 1) * page])
                if not holes:
                    continue
                bad_set = set(bad)
                for p in range(a, a + size, page):
                    if p in bad_set:
                        if run is not None:
                            segments.append((base + run[0], run[0], run[1] - run[0]))
                            run = None
                    elif run is None:
                        run = [p, p + page]
                    else:
                        run[1] = p + page
            if holes:
                if run is not None:
                    segments.append((base + run[0], run[0], run[1] - run[0]))
            else:
                segments.append((off, lo * page, (hi - lo) * page))
            off += (hi - lo) * page
        note_desc = prog["VMCOREINFO"].string_()
        name = b"VMCOREINFO\0"
        note = struct.pack("<III", len(name), len(note_desc), 0) + name.ljust(12, b"\0") \
            + note_desc.ljust(-(-len(note_desc) // 4) * 4, b"\0")
        note_off = off
        phoff = -(-(note_off + len(note)) // 8) * 8
        phdrs = [struct.pack("<IIQQQQQQ", PT_NOTE, 0, note_off, 0, 0, len(note), 0, 4)]
        for foff, pa, size in segments:
            vaddr = phys_to_virt(prog, pa).value_()  # the direct map's address
            phdrs.append(struct.pack("<IIQQQQQQ", PT_LOAD, 7, foff, vaddr, pa,
                                     size, size, page))
        phnum = len(phdrs)
        if phnum >= 0xFFFF:
            raise ValueError(f"{phnum} segments: more than an ELF header can count")
        ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, b"\0" * 7,
                           4, machine, 1, 0, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)  # ET_CORE
        fp.seek(0)
        fp.write(ehdr)
        fp.seek(note_off)
        fp.write(note.ljust(phoff - note_off, b"\0") + b"".join(phdrs))
    tmp.rename(out)
    return total, time.perf_counter() - t


def sparse_copy(src: Union[str, Path], dst: Union[str, Path]) -> None:
    """Copy ``src`` to ``dst`` keeping holes (SEEK_DATA / SEEK_HOLE)."""
    size = os.path.getsize(src)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fo.truncate(size)
        fdi, fdo = fi.fileno(), fo.fileno()
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fdi, pos, os.SEEK_DATA)
            except OSError:  # no more data
                break
            hole = os.lseek(fdi, data, os.SEEK_HOLE)
            while data < hole:
                n = min(hole - data, 8 << 20)
                os.pwrite(fdo, os.pread(fdi, n, data), data)
                data += n
            pos = hole


def program_headers(fp, path: Union[str, Path] = "") -> Tuple[int, int, bytes]:
    """``(e_phentsize, e_phnum, the program header table)`` of the 64-bit
    little-endian ELF file open as ``fp``."""
    fp.seek(0)
    ehdr = fp.read(64)
    if ehdr[:4] != b"\x7fELF" or ehdr[4] != 2 or ehdr[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", ehdr, 32)
    phentsize, phnum = struct.unpack_from("<HH", ehdr, 54)
    fp.seek(phoff)
    return phentsize, phnum, fp.read(phentsize * phnum)


def load_segments(path: Union[str, Path]) -> List[Segment]:
    """The ``PT_LOAD`` segments of a 64-bit little-endian ELF file, by paddr."""
    with open(path, "rb") as fp:
        phentsize, phnum, table = program_headers(fp, path)
    out = []
    for i in range(phnum):
        p_type, _, offset, vaddr, paddr, filesz = struct.unpack_from(
            "<IIQQQQ", table, i * phentsize)
        if p_type == PT_LOAD and filesz:
            out.append(Segment(offset, vaddr, paddr, filesz))
    out.sort(key=lambda s: s.paddr)
    return out


def file_offset(segments: List[Segment], paddr: int, size: int = 1) -> Optional[int]:
    """File offset of physical ``[paddr, paddr + size)``, None if not (wholly) in a segment."""
    import bisect

    i = bisect.bisect_right([s.paddr for s in segments], paddr) - 1
    if i < 0:
        return None
    s = segments[i]
    if paddr + size > s.paddr + s.size:
        return None
    return s.offset + paddr - s.paddr
