"""
Triage
------

Check many dumps in parallel: ``drgn-vmemmap triage PATH... [-j N]
[--debug-directory DIR]... [--map DUMP=VMLINUX]...``.

1. *Find the dumps*: files given by name, and under each directory (walked
   recursively, hidden directories skipped) the files named like dumps
   (``vmcore*``, ``*.vmcore``, ``dump*``, ``*.core``, and those names with
   ``.xz``, decompressed once into the cache; not text, JSON, source or
   other compressed files) or starting like one (kdump-compressed ``KDUMP   `` /
   ``DISKDUMP``, makedumpfile's flattened format, or an ELF core with a
   ``VMCOREINFO`` note).
2. *Pair each with a vmlinux*, from its ``VMCOREINFO`` (``OSRELEASE=``,
   ``BUILD-ID=``, read from the file without debug info): an explicit
   ``--map`` first; then the vmlinux whose GNU build ID equals the dump's,
   among ``vmlinux``, ``vmlinux-*`` (and their ``.xz``) under the
   ``--debug-directory`` directories and beside the dump, and
   ``.build-id/xx/yyyy.debug`` in the debug directories; then, for a dump
   without a build ID (or candidates whose build ID cannot be read), by
   release: a ``release`` file beside the vmlinux (as in
   ``vmcores/kernels/KEY/``), a ``vmlinux-RELEASE`` name or a directory
   named RELEASE; else drgn's default debug-info search.
3. *Check them* in a pool of ``-j`` worker processes (each runs
   :func:`analyse`: :func:`~drgn_vmemmap.target.open_target` and
   :func:`~drgn_vmemmap.check.check`), printing one JSON line per dump on
   stdout as each finishes: the check document plus ``path``, ``status``
   (``ok``, ``violations``, ``damaged``, ``error``), ``exit_status``, ``vmlinux``,
   ``pairing`` and ``seconds``; a dump that cannot be analysed gives
   ``{"path", "status": "error", "error": one line, "exit_status": 2, ...}``
   and does not stop the others.  A worker process that dies (a crash in
   drgn) is detected and the dumps it may have been working on are retried
   one at a time, so that only the guilty dump is reported as an error.

A progress bar goes to stderr when it is a terminal, and a summary table to
stderr at the end.  Exit status: 2 if any dump could not be analysed (or a
directory given holds none: one warning line each; if no dump is found at
all, one error line and nothing else), else 1 if any has an error-severity
violation, else 0.  The output is JSON lines whatever ``--format`` says.
"""

import argparse
import io
import json
import lzma
import multiprocessing
import os
import re
import struct
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    TypedDict,
)

from .target import TargetError

__all__ = (
    "DumpInfo",
    "analyse",
    "dump_info",
    "elf_build_id",
    "find_dumps",
    "pair_vmlinux",
    "triage",
    "triage_main",
)

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


# --- vmlinux candidates -----------------------------------------------------------


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


_VMLINUX_NAME = re.compile(r"^vmlinux(-.+)?(\.xz)?$")


class Candidate(NamedTuple):
    path: str
    #: The kernel release this file says it is for (``release`` file beside
    #: it, ``vmlinux-RELEASE`` name, or the parent directory's name).
    releases: Tuple[str, ...]


def _release_hints(path: str) -> Tuple[str, ...]:
    hints = []
    d = os.path.dirname(path)
    try:
        with open(os.path.join(d, "release")) as fp:
            text = fp.read(256).strip()
            if text:
                hints.append(text.split()[0])
    except (OSError, UnicodeDecodeError, IndexError):
        pass
    m = _VMLINUX_NAME.match(os.path.basename(path))
    if m and m.group(1):
        hints.append(m.group(1)[1:])
    hints.append(os.path.basename(os.path.abspath(d)))
    return tuple(hints)


def _vmlinux_files(directory: str, recursive: bool) -> Iterator[str]:
    if not os.path.isdir(directory):
        return
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(files):
            if _VMLINUX_NAME.match(name) and not name.endswith((".partial", ".tmp")):
                path = os.path.join(root, name)
                if os.path.isfile(path):
                    yield path


class Pairing(NamedTuple):
    vmlinux: Optional[str]
    #: ``"map"``, ``"build-id"``, ``"release"`` or ``"default"`` (drgn's search).
    how: str


class VmlinuxIndex:
    """vmlinux candidates from the debug directories; build IDs read lazily."""

    def __init__(self, debug_directories: Sequence[str]) -> None:
        self.debug_directories = list(debug_directories)
        self._build_ids: Dict[str, Optional[str]] = {}
        self._candidates: List[Candidate] = []
        seen = set()
        for d in self.debug_directories:
            for path in _vmlinux_files(d, recursive=True):
                key = os.path.realpath(path)
                if key not in seen:
                    seen.add(key)
                    self._candidates.append(Candidate(path, _release_hints(path)))
        self._siblings: Dict[str, List[Candidate]] = {}

    def build_id(self, path: str) -> Optional[str]:
        key = os.path.realpath(path)
        if key not in self._build_ids:
            self._build_ids[key] = elf_build_id(path)
        return self._build_ids[key]

    def candidates(self, dump: str) -> List[Candidate]:
        d = os.path.dirname(os.path.abspath(dump))
        if d not in self._siblings:
            self._siblings[d] = [Candidate(p, _release_hints(p))
                                 for p in _vmlinux_files(d, recursive=False)]
        seen = set()
        out = []
        for c in self._siblings[d] + self._candidates:
            key = os.path.realpath(c.path)
            if key not in seen:
                seen.add(key)
                out.append(c)
        return out

    def by_build_id_layout(self, build_id: str) -> Optional[str]:
        """``DIR/.build-id/xx/yyyy.debug`` (or without ``.debug``) in a debug directory."""
        for d in self.debug_directories:
            for suffix in (".debug", ""):
                path = os.path.join(d, ".build-id", build_id[:2], build_id[2:] + suffix)
                if os.path.isfile(path):
                    return path
        return None


def pair_vmlinux(dump: str, info: DumpInfo, index: VmlinuxIndex,
                 explicit: Dict[str, str]) -> Pairing:
    """Choose the vmlinux for ``dump`` (see the module documentation)."""
    real = os.path.realpath(dump)
    for key, vmlinux in explicit.items():
        if os.path.realpath(key) == real or (os.sep not in key
                                             and key == os.path.basename(dump)):
            return Pairing(vmlinux, "map")
    candidates = index.candidates(dump)
    if info.release:
        # Those that claim the dump's release first: cheaper when they match.
        candidates.sort(key=lambda c: info.release not in c.releases)
    if info.build_id:
        found = index.by_build_id_layout(info.build_id)
        if found:
            return Pairing(found, "build-id")
        for c in candidates:
            if index.build_id(c.path) == info.build_id:
                return Pairing(c.path, "build-id")
    if info.release:
        for c in candidates:
            if info.release in c.releases and (
                    not info.build_id or index.build_id(c.path) is None):
                return Pairing(c.path, "release")
    return Pairing(None, "default")


# --- the workers ---------------------------------------------------------------------


def analyse(job: Dict[str, Any]) -> Dict[str, Any]:
    """
    Check one dump (in a worker process): ``job`` has ``path``, ``vmlinux``
    (or None for drgn's default search), ``pairing``, ``release`` and
    ``vmemmap_page_type``.  Returns the JSON line's document; never raises
    for a dump that cannot be analysed.
    """
    from .check import check
    from .errors import describe
    from .report import exit_status
    from .target import open_target

    t0 = time.monotonic()
    head = {"path": job["path"]}
    try:
        prog = open_target(vmcore=job["path"],
                           symbols=[job["vmlinux"]] if job.get("vmlinux") else [])
        report = check(prog, vmemmap_page_type=job.get("vmemmap_page_type"))
        status = exit_status(report)
        # Damage to the dump (memmap that is not struct pages) is the dump's
        # fault, not the kernel's: a status of its own, exit status 0 unless
        # the rest of the dump has violations (which then win).
        head.update(status="violations" if status else "damaged" if report.damaged else "ok",
                    exit_status=status)
        body = report.to_json()
    except Exception as e:  # one line, as the CLI would print it
        head.update(status="error", exit_status=2, error=describe(e))
        body = {"release": job.get("release")}
    head.update(vmlinux=job.get("vmlinux"), pairing=job.get("pairing"),
                seconds=round(time.monotonic() - t0, 3))
    head.update(body)
    return head


def _crashed(job: Dict[str, Any], why: str) -> Dict[str, Any]:
    return {"path": job["path"], "status": "error", "exit_status": 2, "error": why,
            "vmlinux": job.get("vmlinux"), "pairing": job.get("pairing"), "seconds": None,
            "release": job.get("release")}


def _run_pool(jobs: List[Dict[str, Any]], workers: int,
              emit: Callable[[Dict[str, Any]], None]) -> List[Dict[str, Any]]:
    """Run ``jobs``; emit each result; return the jobs lost to a broken pool."""
    ctx = multiprocessing.get_context("spawn")  # drgn's OpenMP threads and fork don't mix
    # The dumps already run in parallel: each check scans in one process
    # (the workers inherit the environment).
    os.environ.setdefault("DRGN_VMEMMAP_JOBS", "1")
    pending: Dict[Future[Dict[str, Any]], Dict[str, Any]] = {}
    lost: List[Dict[str, Any]] = []
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        for job in jobs:
            try:
                pending[ex.submit(analyse, job)] = job
            except BrokenProcessPool:
                lost.append(job)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                job = pending.pop(fut)
                try:
                    emit(fut.result())
                except BrokenProcessPool:
                    lost.append(job)
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    return lost


def triage(dumps: Sequence[str], workers: int, debug_directories: Sequence[str] = (),
           explicit: Optional[Dict[str, str]] = None,
           vmemmap_page_type: Optional[int] = None,
           emit: Optional[Callable[[Dict[str, Any]], None]] = None) -> List[Dict[str, Any]]:
    """
    Pair and check ``dumps`` with ``workers`` processes; call ``emit`` with
    each result as it arrives; return all results (in completion order).
    """
    from .target import decompressed

    index = VmlinuxIndex(debug_directories)
    jobs = []
    decompressed_ok: Dict[str, Optional[str]] = {}
    for dump in dumps:
        info = dump_info(dump)
        pairing = pair_vmlinux(dump, info, index, explicit or {})
        vmlinux = pairing.vmlinux
        if vmlinux and vmlinux.endswith(".xz") and os.path.isfile(vmlinux):
            # Once here rather than in several workers at the same time.
            if vmlinux not in decompressed_ok:
                try:
                    decompressed_ok[vmlinux] = decompressed(vmlinux)
                except (OSError, TargetError):
                    decompressed_ok[vmlinux] = None  # the worker reports it
        jobs.append({"path": dump, "vmlinux": vmlinux, "pairing": pairing.how,
                     "release": info.release, "vmemmap_page_type": vmemmap_page_type})
    results: List[Dict[str, Any]] = []

    def collect(doc: Dict[str, Any]) -> None:
        results.append(doc)
        if emit is not None:
            emit(doc)

    lost = _run_pool(jobs, max(1, min(workers, len(jobs))), collect)
    # A worker died (a crash in drgn?): which dump killed it is unknown, so
    # run the dumps that did not finish one at a time, each in a fresh pool.
    for job in lost:
        again = _run_pool([job], 1, collect)
        for j in again:
            collect(_crashed(j, "the analysis process died (a crash in drgn or the "
                                "checker); run 'drgn-vmemmap -c' on this dump alone"))
    return results


# --- the command -----------------------------------------------------------------------


def _counts(doc: Dict[str, Any]) -> Tuple[int, int]:
    violations = doc.get("violations") or []
    errors = sum(1 for v in violations if v.get("severity") == "error")
    return errors, len(violations) - errors


def _progress(total: int) -> Callable[[Dict[str, Any]], None]:
    done = [0, 0]

    def update(doc: Dict[str, Any]) -> None:
        done[0] += 1
        done[1] += doc.get("status") == "error"
        width = 30
        filled = width * done[0] // max(total, 1)
        line = (f"\rtriage [{'#' * filled}{' ' * (width - filled)}] {done[0]}/{total} dumps"
                + (f", {done[1]} not analysed" if done[1] else ""))
        sys.stderr.write(line if done[0] < total else "\r" + " " * len(line) + "\r")
        sys.stderr.flush()

    return update


def summary_table(results: Sequence[Dict[str, Any]]) -> str:
    """The summary printed on stderr: one row per dump, in path order."""
    from tabulate import tabulate

    rows = []
    failures = []
    for doc in sorted(results, key=lambda d: d["path"]):
        release = (doc.get("target") or {}).get("release") or doc.get("release") or "?"
        if doc.get("status") == "error":
            errors = warnings = None
            error = str(doc.get("error"))
            if not error.startswith(doc["path"] + ":"):
                error = f"{doc['path']}: {error}"
            failures.append("  " + error)
        else:
            errors, warnings = _counts(doc)
        rows.append([doc["path"], release, doc.get("status"), errors, warnings,
                     doc.get("seconds")])
    n_err = sum(1 for d in results if d.get("status") == "error")
    n_bad = sum(1 for d in results if d.get("status") == "violations")
    n_dmg = sum(1 for d in results if d.get("status") == "damaged")
    table = tabulate(rows, headers=["path", "release", "status", "errors", "warnings",
                                    "seconds"], floatfmt=".2f", missingval="-")
    text = (f"{table}\n\n{len(results)} dump(s): "
            f"{len(results) - n_err - n_bad - n_dmg} consistent, {n_bad} with violations, "
            + (f"{n_dmg} damaged (memmap overwritten before the dump: see each dump's "
               "'damaged'), " if n_dmg else "")
            + f"{n_err} not analysed")
    if failures:
        text += ":\n" + "\n".join(failures)
    return text


def _parse_maps(maps: Sequence[str]) -> Dict[str, str]:
    out = {}
    for m in maps:
        dump, sep, vmlinux = m.partition("=")
        if not sep or not dump or not vmlinux:
            raise TargetError(f"--map {m!r}: expected DUMP=VMLINUX")
        out[dump] = vmlinux
    return out


def triage_main(args: argparse.Namespace) -> int:
    """The ``triage`` subcommand (``args`` from :func:`drgn_vmemmap.cli.build_parser`)."""
    explicit = _parse_maps(getattr(args, "map", None) or [])
    for d in getattr(args, "debug_directory", None) or []:
        if not os.path.isdir(d):
            raise TargetError(f"--debug-directory {d}: not a directory")
    dumps, empty = find_dumps(args.paths)
    if not dumps:
        raise TargetError(f"{', '.join(empty)}: no core dumps found (looked for vmcore*, "
                          "*.vmcore, dump*, *.core and kdump/ELF core files)")
    for d in empty:
        print(f"drgn-vmemmap: warning: {d}: no core dumps found", file=sys.stderr)
    jobs = getattr(args, "jobs", None) or os.cpu_count() or 1
    if jobs < 1:
        raise TargetError(f"-j {jobs}: need at least one worker")
    progress = _progress(len(dumps)) if sys.stderr.isatty() else None

    def emit(doc: Dict[str, Any]) -> None:
        if progress is not None:  # keep the bar off the lines of a shared tty
            sys.stderr.write("\r\033[K")
        print(json.dumps(doc), flush=True)
        if progress is not None:
            progress(doc)

    results = triage(dumps, jobs, getattr(args, "debug_directory", None) or [], explicit,
                     getattr(args, "vmemmap_page_type", None), emit)
    print(summary_table(results), file=sys.stderr)
    statuses = [d.get("exit_status", 2) for d in results]
    if empty or 2 in statuses:
        return 2
    return 1 if 1 in statuses else 0
