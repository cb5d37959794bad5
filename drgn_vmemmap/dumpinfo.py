"""
Dump info
---------

What a file says about itself, read without drgn or debug info: whether it
is a kernel core dump (kdump-compressed ``KDUMP   `` / ``DISKDUMP``,
makedumpfile's flattened format, or an ELF core with a ``VMCOREINFO`` note),
the kernel release and build ID its ``VMCOREINFO`` records, and the GNU build
ID of an ELF file (a vmlinux), ``.xz``-compressed or not.  Used by
:mod:`~drgn_vmemmap.triage` to find dumps and pair them with a vmlinux.
"""

import io
import lzma
import os
import re
import struct
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple, TypedDict

__all__ = ("DumpInfo", "dump_info", "elf_build_id", "find_dumps")

# --- finding dumps -------------------------------------------------------------

_DUMP_NAME = re.compile(r"^(vmcore.*|.*\.vmcore|dump.*|.*\.core)$")
#: Extensions of files that are never dumps, whatever their name (vmcore-dmesg.txt,
#: a manifest, compressed or source files, downloads in progress).
_NOT_A_DUMP = (
    ".json", ".txt", ".log", ".md", ".rst", ".html", ".xml", ".yaml", ".yml", ".cfg",
    ".conf", ".ini", ".csv",
    ".xz", ".gz", ".bz2", ".zst", ".lz4", ".lzma", ".zip", ".tar", ".deb", ".rpm",
    ".c", ".h", ".S", ".s", ".o", ".ko", ".so", ".a", ".cmd", ".d", ".mod", ".py", ".pyc",
    ".sh", ".diff", ".patch",
    ".sig", ".asc", ".sha256", ".partial", ".tmp", ".lock", ".pid",
)
_KDUMP_MAGIC = (b"KDUMP   ", b"DISKDUMP")
_FLATTENED_MAGIC = b"makedumpfile"
_ELF_MAGIC = b"\x7fELF"
#: How much of a dump's beginning is searched for VMCOREINFO text.
_HEADER_BYTES = 1 << 20


def _sniff(path: str) -> bool:
    """Does the file start like a kernel core dump?"""
    try:
        with open(path, "rb") as fp:
            head = fp.read(64)
            if head.startswith(_KDUMP_MAGIC) or head.startswith(_FLATTENED_MAGIC):
                return True
            if head.startswith(_ELF_MAGIC) and len(head) >= 18:
                order = "<" if head[5] == 1 else ">"
                e_type, = struct.unpack_from(order + "H", head, 16)
                return e_type == 4 and _elf_vmcoreinfo(path) is not None  # ET_CORE
    except OSError:
        pass
    return False


def _looks_like_dump_name(name: str) -> bool:
    if name.endswith(".xz"):  # a dump shipped compressed (opened through the cache)
        name = name[:-3]
    if not _DUMP_NAME.match(name):
        return False
    return not name.endswith(_NOT_A_DUMP)


def find_dumps(paths: Sequence[str]) -> Tuple[List[str], List[str]]:
    """
    ``(dumps, empty)``: the dump files among and under ``paths`` (files given
    by name are always taken, existing or not: opening them reports the
    problem), and the directories in which none was found.
    """
    dumps: List[str] = []
    empty: List[str] = []
    seen = set()

    def add(path: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            dumps.append(path)

    for top in paths:
        if not os.path.isdir(top):
            add(top)
            continue
        before = len(dumps)
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = os.path.join(root, name)
                if not os.path.isfile(path):
                    continue
                if _looks_like_dump_name(name) or (
                        not name.endswith(_NOT_A_DUMP) and _sniff(path)):
                    add(path)
        if len(dumps) == before:
            empty.append(top)
    return dumps, empty


# --- what a dump says about its kernel -----------------------------------------


#: The fields of an ELF header that :func:`_elf_header` reads: ``order`` is
#: the :mod:`struct` byte-order character, the others are numbers.
_ElfHeader = TypedDict("_ElfHeader", {
    "order": str, "class": int, "type": int, "phoff": int, "phentsize": int, "phnum": int,
    "shoff": int, "shentsize": int, "shnum": int,
})


class DumpInfo(NamedTuple):
    release: Optional[str]
    build_id: Optional[str]


def _parse_vmcoreinfo(text: bytes) -> DumpInfo:
    release = build_id = None
    m = re.search(rb"OSRELEASE=([\x21-\x7e]+)", text)
    if m:
        release = m.group(1).decode()
    m = re.search(rb"BUILD-ID=([0-9a-fA-F]+)", text)
    if m:
        build_id = m.group(1).decode().lower()
    return DumpInfo(release, build_id)


def _elf_header(head: bytes) -> Optional[_ElfHeader]:
    """Fields of an ELF header (32 or 64 bit, either byte order)."""
    if len(head) < 52 or not head.startswith(_ELF_MAGIC) or head[4] not in (1, 2) \
            or head[5] not in (1, 2):
        return None
    order = "<" if head[5] == 1 else ">"
    if head[4] == 2:
        if len(head) < 64:
            return None
        (e_type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
         _) = struct.unpack_from(order + "HHIQQQIHHHHHH", head, 16)
    else:
        (e_type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
         _) = struct.unpack_from(order + "HHIIIIIHHHHHH", head, 16)
    return {"order": order, "class": head[4], "type": e_type, "phoff": phoff,
            "phentsize": phentsize, "phnum": phnum, "shoff": shoff,
            "shentsize": shentsize, "shnum": shnum}


def _notes(data: bytes, order: str) -> Iterator[Tuple[bytes, int, bytes]]:
    """(name, type, desc) of each ELF note in ``data``."""
    i = 0
    while i + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(order + "III", data, i)
        i += 12
        name = data[i:i + namesz].rstrip(b"\0")
        i += -(-namesz // 4) * 4
        desc = data[i:i + descsz]
        i += -(-descsz // 4) * 4
        yield name, ntype, desc


def _note_segments(fp: io.BufferedIOBase, h: _ElfHeader) -> Iterator[bytes]:
    """Contents of the PT_NOTE segments of an open ELF file, in file order."""
    fp.seek(h["phoff"])
    table = fp.read(h["phentsize"] * h["phnum"])
    notes = []
    for i in range(h["phnum"]):
        off = i * h["phentsize"]
        if h["class"] == 2:
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
                h["order"] + "IIQQQQ", table, off)
        else:
            p_type, p_offset, _, _, p_filesz = struct.unpack_from(
                h["order"] + "IIIII", table, off)
        if p_type == 4 and 0 < p_filesz < (64 << 20):
            notes.append((p_offset, p_filesz))
    for offset, size in sorted(notes):
        fp.seek(offset)
        yield fp.read(size)


def _segment_notes(fp: io.BufferedIOBase, h: _ElfHeader
                   ) -> Iterator[Tuple[bytes, int, bytes]]:
    """(name, type, desc) of every note in the PT_NOTE segments."""
    for data in _note_segments(fp, h):
        yield from _notes(data, h["order"])


def _elf_vmcoreinfo(path: str) -> Optional[bytes]:
    """The VMCOREINFO note of an ELF core (``.xz`` or not), or None."""
    opener = lzma.open if path.endswith(".xz") else open
    try:
        with opener(path, "rb") as fp:
            h = _elf_header(fp.read(64))
            if h is None:
                return None
            for name, _, desc in _segment_notes(fp, h):
                if name == b"VMCOREINFO":
                    return desc
    except (OSError, EOFError, lzma.LZMAError, struct.error):
        pass
    return None


def dump_info(path: str) -> DumpInfo:
    """
    The kernel release and build ID a dump records in its ``VMCOREINFO``,
    read from the file (no debug info needed); unknown fields are None.
    """
    opener = lzma.open if path.endswith(".xz") else open
    try:
        with opener(path, "rb") as fp:
            head = fp.read(_HEADER_BYTES)
    except (OSError, EOFError, lzma.LZMAError):
        return DumpInfo(None, None)
    info = _parse_vmcoreinfo(head)  # kdump-compressed: in the sub-header
    if info.release is None and head.startswith(_ELF_MAGIC):
        note = _elf_vmcoreinfo(path)
        if note is not None:
            info = _parse_vmcoreinfo(note)
    if info.release is None and (head.startswith(_KDUMP_MAGIC) or head.startswith(_ELF_MAGIC)):
        try:  # drgn reads VMCOREINFO without debug info
            import drgn

            from .target import decompressed

            prog = drgn.Program()
            prog.set_core_dump(decompressed(path))
            info = _parse_vmcoreinfo(prog["VMCOREINFO"].string_())
        except Exception:
            pass
    return info


# --- build IDs ---------------------------------------------------------------------


def elf_build_id(path: str) -> Optional[str]:
    """
    The GNU build ID (hex) of an ELF file, ``.xz``-compressed or not; None if
    it has none or cannot be read.  For ``.xz`` only the file's beginning up
    to its PT_NOTE segment is decompressed when possible.
    """
    opener = lzma.open if path.endswith(".xz") else open
    try:
        with opener(path, "rb") as fp:
            h = _elf_header(fp.read(64))
            if h is None:
                return None
            for name, ntype, desc in _segment_notes(fp, h):
                if name == b"GNU" and ntype == 3:  # NT_GNU_BUILD_ID
                    return desc.hex()
            # No PT_NOTE (a debug-only file?): the SHT_NOTE sections.
            if not h["shoff"] or not h["shnum"]:
                return None
            fp.seek(h["shoff"])
            table = fp.read(h["shentsize"] * h["shnum"])
            for i in range(h["shnum"]):
                off = i * h["shentsize"]
                if h["class"] == 2:
                    _, sh_type, _, _, sh_offset, sh_size = struct.unpack_from(
                        h["order"] + "IIQQQQ", table, off)
                else:
                    _, sh_type, _, _, sh_offset, sh_size = struct.unpack_from(
                        h["order"] + "IIIIII", table, off)
                if sh_type == 7 and 0 < sh_size < (1 << 20):  # SHT_NOTE
                    fp.seek(sh_offset)
                    for name, ntype, desc in _notes(fp.read(sh_size), h["order"]):
                        if name == b"GNU" and ntype == 3:
                            return desc.hex()
    except (OSError, EOFError, lzma.LZMAError, struct.error):
        pass
    return None
