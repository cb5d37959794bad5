"""
Filtered-dump faults on a real dump
-----------------------------------

:func:`exclude_pages` takes an ELF core (for example an ELF copy of a fixture
from :func:`tools.elfcore.write_elf`) and writes a copy in which the given
physical pages are missing, exactly as makedumpfile leaves out the pages it
filters: the ``PT_LOAD`` segments that held them are split around them, so
reading them faults ("could not find memory segment") while every other byte
reads as before.  Tests use it to take one ``struct memory_block``, one
page-table page or one memmap frame out of a real dump and check that only
the structures on that page are lost.

It reads and writes ELF headers only (tools/elfcore.py parses them).
"""

import struct
from pathlib import Path
from typing import Callable, Iterable, List, Tuple, Union

from tools.elfcore import program_headers, sparse_copy

PT_LOAD = 1
_PHDR = struct.Struct("<IIQQQQQQ")


def exclude_pages(src: Union[str, Path], dst: Union[str, Path], paddrs: Iterable[int],
                  page_size: int = 4096) -> int:
    """Copy ELF core ``src`` to ``dst`` without the pages holding ``paddrs``.

    :return: how many pages were taken out (pages not in the dump are
        ignored).
    """
    sparse_copy(src, dst)  # the copy of a sparse ELF stays sparse
    removed, _ = exclude_in_place(dst, paddrs, page_size)
    return removed


def exclude_in_place(path: Union[str, Path], paddrs: Iterable[int],
                     page_size: int = 4096) -> Tuple[int, Callable[[], None]]:
    """Take the pages holding ``paddrs`` out of ELF core ``path`` itself.

    No byte of memory moves: a new program header table is appended to the
    file and the ELF header points at it.  :return: ``(pages taken out,
    restore)``; ``restore()`` points the header back at the old table and
    cuts the new one off, which gives back the file as it was.
    """
    pages = sorted({p - p % page_size for p in paddrs})
    with open(path, "r+b") as f:
        f.seek(0)
        ehdr = f.read(64)
        phentsize, phnum, raw = program_headers(f, path)
        out: List[Tuple[int, ...]] = []
        removed = 0
        for i in range(phnum):
            ph = _PHDR.unpack_from(raw, i * phentsize)
            p_type, flags, offset, vaddr, paddr, filesz, memsz, align = ph
            if p_type != PT_LOAD:
                out.append(ph)
                continue
            start = paddr
            for page in pages:
                if not paddr <= page < paddr + filesz:
                    continue
                removed += 1
                if page > start:
                    d = start - paddr
                    out.append((p_type, flags, offset + d, vaddr + d, start, page - start,
                                page - start, align))
                start = page + page_size
            if start < paddr + filesz:
                d = start - paddr
                n = paddr + filesz - start
                out.append((p_type, flags, offset + d, vaddr + d, start, n, n, align))
        if len(out) >= 0xFFFF:
            raise ValueError(f"{len(out)} segments: more than an ELF header can count")
        # The new table goes at the end of the file; the old one stays where
        # it was, for restore().
        f.seek(0, 2)
        end = f.tell()
        new_phoff = -(-end // 8) * 8
        f.write(b"\0" * (new_phoff - end))
        f.write(b"".join(_PHDR.pack(*ph) for ph in out))
        f.seek(32)
        f.write(struct.pack("<Q", new_phoff))
        f.seek(56)
        f.write(struct.pack("<H", len(out)))

    def restore() -> None:
        with open(path, "r+b") as f:
            f.seek(0)
            f.write(ehdr)
            f.truncate(end)

    return removed, restore
