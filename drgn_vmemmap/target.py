"""
Targets
-------

Open a :class:`drgn.Program` on a vmcore, the running kernel or a QEMU guest
over QMP, with clear one-line errors for everything that can go wrong.
Compressed debug files (``vmlinux.xz``) are decompressed once into a cache.
"""

import hashlib
import logging
import lzma
import os
import shutil
from pathlib import Path
from typing import List, Optional, Sequence

import drgn

__all__ = (
    "TargetError",
    "cache_dir",
    "decompressed",
    "open_target",
    "target_kind",
)


class TargetError(Exception):
    """The target cannot be analysed.  The message is one line for the user."""


def cache_dir() -> Path:
    """Where decompressed files and other derived data are kept
    (``$DRGN_VMEMMAP_CACHE``, else ``$XDG_CACHE_HOME/drgn-vmemmap``)."""
    base = os.environ.get("DRGN_VMEMMAP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "drgn-vmemmap")
    return Path(base)


def decompressed(path: str) -> str:
    """Return ``path``, or for ``*.xz`` a cached decompressed copy of it."""
    if not path.endswith(".xz"):
        return path
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"
                         .encode()).hexdigest()[:16]
    out = cache_dir() / f"{Path(path).name[:-3]}.{key}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        try:
            with lzma.open(path) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (lzma.LZMAError, EOFError) as e:
            tmp.unlink(missing_ok=True)
            raise TargetError(f"{path}: not a valid xz file ({e})") from e
        tmp.rename(out)
    return str(out)


def target_kind(prog: drgn.Program) -> str:
    """``"live"``, ``"qmp"`` or ``"vmcore"``."""
    if not prog.flags & drgn.ProgramFlags.IS_LIVE:
        return "vmcore"
    return "live" if prog.flags & drgn.ProgramFlags.IS_LOCAL else "qmp"


def _check_kernel(prog: drgn.Program, what: str) -> None:
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        raise TargetError(f"{what}: not a Linux kernel core dump (a user-space core?)")


def dump_level(path: str) -> Optional[int]:
    """makedumpfile's ``-d`` level of a kdump-compressed dump, from its
    ``kdump_sub_header`` (the block after ``disk_dump_header``, whose
    ``block_size`` is at byte 428 on 64-bit); None for ELF and other dumps.
    It says what a filtered dump may lack: 1 zero pages, 2 and 4 page
    cache, 8 user pages, 16 free pages."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(440)
            if not head.startswith((b"KDUMP   ", b"DISKDUMP")) or len(head) < 440:
                return None
            version, = struct.unpack_from("<i", head, 8)
            block, = struct.unpack_from("<i", head, 428)
            if version < 1 or not 0 < block <= 1 << 20:
                return None
            f.seek(block + 8)
            level, = struct.unpack("<i", f.read(4))
            return level if 0 <= level <= 31 else None
    except (OSError, struct.error):
        return None


def open_target(vmcore: Optional[str] = None, qemu: Optional[str] = None,
                symbols: Sequence[str] = (), default_debug_info: bool = True
                ) -> drgn.Program:
    """
    Open the target: ``vmcore`` if given, else the QEMU guest behind the QMP
    socket ``qemu``, else the running kernel.

    :param symbols: vmlinux (or ``.xz``) and module debug files.  Without
        them drgn's default debug-info search is used.
    :raises TargetError: with a one-line reason.
    """
    prog = drgn.Program()
    if vmcore is not None:
        what = vmcore
        if os.path.isdir(vmcore):
            raise TargetError(f"{vmcore}: is a directory (use 'triage' for many dumps)")
        try:
            if os.path.getsize(vmcore) == 0:
                raise TargetError(f"{vmcore}: empty file")
        except OSError as e:
            raise TargetError(f"{vmcore}: {e.strerror}") from e
        try:
            # A dump shipped as .xz (as the tests' unfilterable fixtures are)
            # is decompressed once into the cache, like vmlinux.xz.
            path = decompressed(vmcore)
            prog.set_core_dump(path)
            prog.cache["drgn_vmemmap.dump_level"] = dump_level(path)
        except TargetError:
            raise
        except Exception as e:  # OSError, ValueError, drgn's BadDataError, ...
            raise TargetError(f"{vmcore}: cannot open as a core dump: {_short(e)}") from e
        _check_kernel(prog, what)
    elif qemu is not None:
        what = f"QEMU guest at {qemu}"
        set_qemu = getattr(prog, "set_qemu_qmp", None)
        try:
            if set_qemu is not None:
                set_qemu(qemu)
            else:
                prog.set_core_dump(f"qmp:{qemu}")
        except (OSError, ValueError) as e:
            raise TargetError(f"{what}: cannot attach: {_short(e)}") from e
    else:
        what = "the running kernel"
        try:
            prog.set_kernel()
        except PermissionError:
            raise TargetError("the running kernel: permission denied "
                              "(run as root, or pass -c VMCORE)") from None
        except (OSError, ValueError) as e:
            raise TargetError(f"the running kernel: {_short(e)}") from e

    files: List[str] = []
    for s in symbols:
        if not os.path.exists(s):
            raise TargetError(f"{s}: no such file")
        files.append(decompressed(s))
    with _DrgnLog() as drgn_log:
        try:
            prog.load_debug_info(files, default=default_debug_info and not files)
        except drgn.MissingDebugInfoError as e:
            drgn_log.messages.append(str(e).splitlines()[0] if str(e) else "missing debug info")
        except (OSError, ValueError) as e:
            raise TargetError(f"{what}: cannot load debug info: {_short(e)}") from e
    try:
        prog.type("struct page")
    except LookupError:
        if files:
            why = ("the vmlinux given does not match this kernel's build ID"
                   if any("did not match" in m for m in drgn_log.messages)
                   else "; ".join(drgn_log.messages[:1]) or "no usable debug info in it")
            raise TargetError(f"{what}: no kernel debug info: {why}") from None
        raise TargetError(f"{what}: no kernel debug info found "
                          "(pass the matching vmlinux with -s)") from None
    try:
        prog["mem_section"]
    except LookupError:
        raise TargetError(f"{what}: the kernel has no SPARSEMEM mem_section "
                          "(or its debug info is incomplete)") from None
    return prog


class _DrgnLog(logging.Handler):
    """Collect drgn's log messages instead of letting them reach stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: List[str] = []
        self._logger = logging.getLogger("drgn")

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> "_DrgnLog":
        self._propagate = self._logger.propagate
        self._logger.addHandler(self)
        self._logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
