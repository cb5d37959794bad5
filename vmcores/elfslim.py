"""Shrink QEMU's ELF dump of a foreign-architecture guest into the shipped format.

makedumpfile on the build machine (amd64, 1.7.2) filters x86-64 dumps only,
and QEMU's kdump-compressed output for arm64 is one drgn cannot read (its
header says machine "Unknown"), so arm64 and ppc64le fixtures ship as ELF
cores.  QEMU writes every byte of guest RAM, most of it never touched (zero);
this rewrite keeps the ELF format and what a reader sees, but leaves the
all-zero pages out of the file: each ``PT_LOAD`` is split into segments made
of a run of data pages followed by the run of zero pages after it, stored as
``p_filesz`` < ``p_memsz`` (the ELF rule: the rest of the segment reads as
zeros).  The file is then xz'd whole.

Two fixes on the way, both QEMU 7.2's:

- a little-endian ppc64 guest's dump has a big-endian ELF header (and notes):
  the output is rewritten in the guest's byte order (``little``);
- pseries has no fw_cfg, so no ``vmcoreinfo`` device: ``vmcoreinfo`` (the
  physical address and size the guest's ``/sys/kernel/vmcoreinfo`` gives) is
  read out of the dump's own memory and added as the ``VMCOREINFO`` note, the
  note the kernel itself built there (kernel/vmcore_info.c).

The original notes are kept when the byte order does not change; otherwise
only the ``VMCOREINFO`` note (drgn-vmemmap needs no register state).
"""

import struct
from pathlib import Path
from typing import BinaryIO, List, Optional, Tuple

PT_LOAD = 1
PT_NOTE = 4
CHUNK = 1 << 24


def _header(f: BinaryIO) -> Tuple[str, bytes, List[Tuple[int, ...]]]:
    ident = f.read(64)
    if ident[:4] != b"\x7fELF" or ident[4] != 2:
        raise ValueError("not a 64-bit ELF file")
    e = "<" if ident[5] == 1 else ">"
    phoff, = struct.unpack_from(e + "Q", ident, 32)
    phentsize, phnum = struct.unpack_from(e + "HH", ident, 54)
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    phdrs = [struct.unpack_from(e + "IIQQQQQQ", table, i * phentsize) for i in range(phnum)]
    return e, ident, phdrs


def _read_phys(f: BinaryIO, loads: List[Tuple[int, ...]], paddr: int, size: int) -> bytes:
    for _, _, off, _, pa, filesz, _, _ in loads:
        if pa <= paddr and paddr + size <= pa + filesz:
            f.seek(off + paddr - pa)
            return f.read(size)
    raise ValueError(f"physical {paddr:#x}+{size:#x} is not in the dump")


def _runs(f: BinaryIO, off: int, size: int, page: int) -> List[Tuple[int, int]]:
    """``(data bytes, zero bytes)`` pieces covering ``size`` bytes at ``off``."""
    import numpy as np

    zero = []
    done = 0
    while done < size:
        n = min(CHUNK, size - done)
        f.seek(off + done)
        buf = np.frombuffer(f.read(n), dtype=np.uint8)
        pages = buf[: n - n % page].reshape(-1, page)
        zero.extend((~pages.any(axis=1)).tolist())
        if n % page:
            zero.append(not buf[n - n % page:].any())
        done += n
    out: List[Tuple[int, int]] = []
    i = 0
    while i < len(zero):
        j = i
        while j < len(zero) and not zero[j]:
            j += 1
        k = j
        while k < len(zero) and zero[k]:
            k += 1
        data = min((j - i) * page, size - i * page)
        out.append((data, min((k - i) * page, size - i * page) - data))
        i = k
    return out


def slim(src: Path, dst: Path, page: int = 4096, byteorder: str = "little",
         vmcoreinfo: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    """Write ``dst`` from QEMU's ELF dump ``src`` (see the module); return
    ``(PT_LOAD segments, data bytes)``."""
    out_e = "<" if byteorder == "little" else ">"
    with open(src, "rb") as f:
        e, ident, phdrs = _header(f)
        loads = [p for p in phdrs if p[0] == PT_LOAD]
        notes = b""
        if e == out_e:
            for p in phdrs:
                if p[0] == PT_NOTE:
                    f.seek(p[2])
                    notes += f.read(p[5])
        if vmcoreinfo is not None:
            notes += _read_phys(f, loads, *vmcoreinfo)
        segs: List[Tuple[int, int, int, int, int]] = []  # vaddr, paddr, filesz, memsz, src off
        for _, _flags, off, vaddr, paddr, filesz, memsz, _ in loads:
            pos = 0
            for data, zeros in _runs(f, off, filesz, page):
                segs.append((vaddr + pos, paddr + pos, data, data + zeros, off + pos))
                pos += data + zeros
            if memsz > filesz:
                segs.append((vaddr + filesz, paddr + filesz, 0, memsz - filesz, 0))
        nph = len(segs) + (1 if notes else 0)
        hdr = bytearray(ident)
        hdr[5] = 1 if out_e == "<" else 2
        etype, machine = struct.unpack_from(e + "HH", ident, 16)
        struct.pack_into(out_e + "HHIQQQIHHHHHH", hdr, 16, etype, machine, 1, 0, 64, 0,
                         0, 64, 56, nph, 0, 0, 0)
        data_off = -(-(64 + 56 * nph + len(notes)) // page) * page
        with open(dst, "wb") as o:
            o.write(hdr)
            pos = data_off
            table = b""
            if notes:
                table += struct.pack(out_e + "IIQQQQQQ", PT_NOTE, 0, 64 + 56 * nph, 0, 0,
                                     len(notes), len(notes), 0)
            for vaddr, paddr, filesz, memsz, _ in segs:
                table += struct.pack(out_e + "IIQQQQQQ", PT_LOAD, 7, pos, vaddr, paddr,
                                     filesz, memsz, 0)
                pos += filesz
            o.write(table)
            o.write(notes)
            o.seek(data_off)
            total = 0
            for _, _, filesz, _, soff in segs:
                left = filesz
                f.seek(soff)
                while left:
                    buf = f.read(min(CHUNK, left))
                    o.write(buf)
                    left -= len(buf)
                total += filesz
            o.truncate(data_off + total)
    return len(segs), total
