#!/usr/bin/env python3
"""
Mutation corpus: corrupt a real dump one field at a time and check that the
checker never crashes and catches every corruption its rules are about.

The corpus and its *oracle* share no code with the checker: this module
imports nothing from ``drgn_vmemmap`` (``tests/test_mutate.py`` holds it to
that).  It reads flag bits, masks, struct offsets and geometry from the
kernel's debug info with plain drgn, and the ground truth (memory blocks,
self-hosted ranges, kpageflags, HugeTLB heads) from the fixture's manifest,
whose truth comes from the guest's sysfs, never from drgn or this project.
The checker runs out of process in ``tools/mutate_driver.py``, a long-lived
worker that answers each request with the report as JSON; detection is
decided from the JSON violations alone (rule, pfn_start, pfn_end, section,
block).

For each fixture (default: every ``*-hotplug-basic``), an ELF copy of the
kdump-compressed dump is written once with :func:`tools.elfcore.write_elf`
(pages the dump lacks are left out, so the copy checks exactly like the
original; cached under ``~/.cache/drgn-vmemmap/mutate``), copied to a private
working file, and opened once here and once in the worker.  Then, for
mutation ``i`` of ``--count``, a generator seeded with ``(--seed, fixture,
i)`` (so any one mutation can be replayed alone with ``--index i``) flips 1-3
bits of one field of one kernel object, at the file offset of its physical
address (from the PT_LOAD headers), asks the worker to check the working
file, and restores the bytes: every mutation sees an otherwise pristine dump.
The worker clears its program's caches before each check (``--fresh``: it
opens the file afresh), so every check sees the mutated bytes.  A check that
takes longer than ``--timeout`` s is a crash (a hang): the worker is killed
and restarted.

Bits: one, or 30% of the time two or three, in the same field; one time in
ten the first is the field's top (sign) bit, where signedness bugs hide.

Target classes (weights in :data:`CLASSES`):

``vmemmap-page``
    a ``struct page`` of a self-hosted vmemmap frame (a pfn of
    ``[start, start + N)`` of a hot-plugged block, online or offline):
    ``flags`` (half the time a bit among ``PG_owner_priv_1``, ``PG_reserved``,
    ``PG_lru``, ``PG_head``, ``PG_swapbacked``, ``PG_slab``), ``page_type``,
    ``_refcount``, ``mapping`` or ``compound_head`` (half the time bit 0, the
    tail bit).
``block-page``
    a ``struct page`` anywhere in a hot-plugged block, same fields.
``compound``
    the head, first tail or second tail of a HugeTLB folio whose vmemmap is
    not optimised (heads from the manifest's ``truth.hugepage_heads``,
    confirmed on the hstate lists), same fields plus ``private`` (on the head
    half the time the ``HPG_vmemmap_optimized`` bit).
``hvo-folio``
    the head, first tail, second tail or another tail of a HugeTLB folio
    with ``HPG_vmemmap_optimized`` (found on ``hstates[i]``'s lists).  Its
    vmemmap is aliased: the bytes written are those of a frame that backs
    several struct pages (the fake heads of 6.12, 7.2's shared tail page),
    and the oracle judges every struct page the frame backs.
``hvo-replacement``
    the ``struct page`` of a frame that backs an optimised folio's vmemmap
    (HVO's head copy, 7.2's shared tail): an ordinary allocated page.
``buddy``, ``slab``, ``page-table``
    the ``struct page`` of a free buddy page (``PGTY_buddy``), a slab page,
    a page-table page (``PGTY_table``), found in the clean dump, in
    hot-plugged blocks first.
``section``
    the ``section_mem_map`` word of a present ``mem_section``: its flag bits
    (below ``SECTION_MAP_LAST_BIT``), or one time in five its encoded mem_map.
``block``
    a ``struct memory_block``: ``state``, ``start_section_nr``, ``nid``, and
    ``nr_vmemmap_pages`` (5.13-6.5) or ``altmap->alloc``, ``free``,
    ``base_pfn``, ``end_pfn``, ``reserve`` (6.6+; blocks with an altmap).
``dump``
    a fault of the dump rather than of the kernel (``tools/mutate_dump.py``):
    the page of one ``memory_block`` or ``vmem_altmap`` taken out of the
    dump, one vmemmap page-table page, one memmap frame, or one block's
    memmap overwritten with random bytes.  Its oracle is an expectation
    (the fault costs the structures on the page and nothing else), see
    that module.

The oracle (:func:`broken_rules`) says which rules of the catalogue
(DESIGN.md) a mutation breaks, from the kernel's definitions (KERNEL-NOTES
§10, §13): it evaluates the invariant on the object before and after, and
the mutation *broke an invariant* for a rule when that rule's invariant held
before and fails after.  Per object:

* a struct page in a self-hosted range of an ONLINE block (per the manifest):
  ``vmemmap-unmarked`` when a per-page marker is lost
  (``PG_vmemmap_self_hosted``; on kernels patched with it, the
  ``PGTY_vmemmap`` page type) or the flags become all ones (poison);
  ``vmemmap-page-state`` when, flags not all ones, the page gets a page type
  other than ``PGTY_vmemmap`` (the kernel's ``page_has_type()``) or
  ``PG_slab``, a refcount other than 1, a mapping, ``PG_lru``, ``PG_head``
  or a tail bit, a node (top ``NODES_SHIFT`` bits of ``flags``, from the
  kernel's config) other than its block's in the manifest, a zone (the
  ``ZONES_SHIFT`` bits below) other than the block's zone in the manifest,
  or a ``PG_reserved`` other than the guest saw (``reserved`` in the
  manifest's kpageflags).  Offline blocks: nothing (stale memmap).
* any other struct page in an online section (``SECTION_IS_ONLINE``) of an
  ONLINE block, flags not all ones: ``marker-stray`` when it carries
  ``PG_owner_priv_1`` that no alias explains, by each alias's page-flag
  policy (include/linux/page-flags.h; KERNEL-NOTES §13):

  - on a compound tail page (bit 0 of the word at ``compound_head`` /
    ``compound_info``) the bit is always ``PG_vmemmap_self_hosted``
    (``PF_ANY``; every alias is head-only or ``PF_NO_COMPOUND``);
  - ``PG_swapcache`` needs ``PG_swapbacked`` and a kernel that can swap:
    ``CONFIG_SWAP`` (the ``total_swap_pages`` symbol) and swap in use
    (``total_swap_pages`` or a ``swap_info`` entry with ``SWP_USED``);
  - ``PG_checked`` is for page-cache pages: ``mapping`` an
    ``address_space`` pointer (at or above the direct map base, low two
    bits clear, not a poison such as ``TAIL_MAPPING``), on a page with no
    page type and no ``PG_slab``;
  - Xen's ``PG_pinned`` / ``PG_foreign`` / ``PG_xen_remapped`` only on a
    Xen guest (``xen_domain_type`` not ``XEN_NATIVE``), and then on a
    non-compound page-table page the bit stays reported, as a warning; the
    oracle counts it as broken either way.

  And ``marker-stray`` when the page gets the ``PGTY_vmemmap`` type (no
  alias).
* the head of a HugeTLB folio (``private``): ``hvo-self-hosted`` when
  ``HPG_vmemmap_optimized`` becomes set on a folio that lies in a block with
  vmemmap pages or whose first struct page is backed by a self-hosted frame.
* a ``section``: ``section-state`` when a section of a block whose state is
  ONLINE or OFFLINE stops being present with a mem_map or
  ``SECTION_IS_ONLINE`` stops matching the state; and, present:
  ``early-self-hosted`` when a block recording vmemmap pages gets an early /
  PREINIT / ZONE_DEVICE section; ``block-geometry`` when the encoded mem_map
  stops being ``vmemmap``; ``section-marker`` when
  ``SECTION_CANNOT_OPTIMIZE_VMEMMAP`` or ``SECTION_USE_VMEMMAP`` (patched
  kernels) stops being set exactly on the sections of self-hosted blocks.
* a ``block``: ``block-geometry`` when ``start_section_nr`` is not its own;
  ``section-state`` when the state becomes ONLINE or OFFLINE and disagrees
  with its sections' ``SECTION_IS_ONLINE``; ``vmemmap-page-state`` when an
  online self-hosted block's ``nid`` stops being its pages' node;
  ``early-self-hosted`` when a boot block records vmemmap pages;
  ``altmap-mismatch`` when a hot-plugged block's
  record stops matching the manifest's self-hosted frames (``alloc`` /
  ``nr_vmemmap_pages`` = frames, ``base_pfn`` = first pfn, ``end_pfn`` =
  last pfn, ``reserve`` = 0, ``free`` = the area: frames plus force padding).

Everything else (other flag bits, a free page's refcount, a state that is
not a state, clearing ``SECTION_IS_EARLY``, ...) is *untargeted*: no rule is
about it.  Untargeted mutations that still produce violations are counted as
"flagged anyway" per rule and per class.

A mutation is *detected* when the report has a violation that the clean
copy's report lacks and whose pfn range covers a mutated pfn (pages: every
pfn whose struct page the written bytes hold), the section's pfns or number
(sections), or the block's pfns or id (blocks).  A *crash* is any exception
in the checker (or a check that takes longer than ``--timeout`` s); a
*refusal* is a clean ``TargetError`` (the CLI's exit status 2 with one
line), which is acceptable.

Usage: ``python tools/mutate.py [--fixture NAME]... [--count N] [--seed S]
[--index I]... [--fresh] [--timeout S] [--json] [-v]``.  Exit status 1 on a
crash or a targeted mutation missed.
"""

import argparse
import hashlib
import json
import lzma
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import drgn  # noqa: E402
import numpy as np  # noqa: E402
from drgn import FaultError, Program, offsetof, sizeof  # noqa: E402
from drgn.helpers.linux.list import list_for_each_entry  # noqa: E402
from drgn.helpers.linux.mm import (  # noqa: E402
    decode_memory_block_state_value,
    follow_phys,
    for_each_memory_block,
    pfn_to_virt,
)
from drgn.helpers.linux.mmzone import for_each_present_section  # noqa: E402

from tools.elfcore import Segment, file_offset, load_segments, write_elf  # noqa: E402

__all__ = ("Mutation", "Outcome", "Subject", "block_mutation", "broken_rules", "draw", "main",
           "page_mutation", "prepare", "run", "run_one", "run_subject", "section_mutation")

FIXTURES = ROOT / "vmcores" / "fixtures"
KERNELS = ROOT / "vmcores" / "kernels"
DRIVER = ROOT / "tools" / "mutate_driver.py"
FACTORY_BUILD = Path(os.environ.get(
    "DRGN_VMEMMAP_FACTORY_BUILD",
    os.path.expanduser("~/.cache/drgn-vmemmap-factory/build")))
#: Bump when the ELF copy's format changes.
ELF_VERSION = 1
#: Seconds the worker may take to open the program.
STARTUP_TIMEOUT = 300

PAGE_CLASSES = ("vmemmap-page", "block-page", "compound", "hvo-folio", "hvo-replacement",
                "buddy", "slab", "page-table")
CLASSES = (("vmemmap-page", 25), ("block-page", 12), ("section", 13), ("block", 15),
           ("compound", 8), ("hvo-folio", 7), ("hvo-replacement", 4), ("buddy", 6),
           ("slab", 5), ("page-table", 5), ("dump", 4))
PAGE_FIELDS = (("flags", 35), ("page_type", 20), ("refcount", 15), ("mapping", 15),
               ("compound_head", 15))
#: Classes of pages that are not vmemmap pages: more weight on the flags
#: (where the marker and its aliases are), and the folio's ``private``.
OTHER_PAGE_FIELDS = (("flags", 45), ("page_type", 15), ("refcount", 10), ("mapping", 10),
                     ("compound_head", 10), ("private", 10))
#: How often the first bit flipped is a field's top (sign) bit.
TOP_BIT = 0.1
INTERESTING_FLAGS = ("PG_owner_priv_1", "PG_reserved", "PG_lru", "PG_head", "PG_swapbacked",
                     "PG_slab")
_EARLY_SECTION_FLAGS = ("IS_EARLY", "IS_VMEMMAP_PREINIT", "TAINT_ZONE_DEVICE")
_SECTION_MARKERS = ("CANNOT_OPTIMIZE_VMEMMAP", "USE_VMEMMAP")
_ALL_ONES = 0xFFFFFFFFFFFFFFFF
#: Page types before they were an enum (include/linux/page-flags.h, up to
#: 6.9): bits cleared under PAGE_TYPE_BASE.
_MACRO_PAGE_TYPES = {"buddy": 0x80, "offline": 0x100, "table": 0x200, "guard": 0x400}
#: POISON_POINTER_DELTA (include/linux/poison.h, CONFIG_ILLEGAL_POINTER_VALUE).
_POISON_DELTA = {"X86_64": 0xdead000000000000, "AARCH64": 0xdead000000000000,
                 "S390X": 0xdead000000000000, "PPC64": 0x5deadbeef0000000}
#: SWP_USED (include/linux/swap.h): a swap_info entry in use.
_SWP_USED = 1 << 0
#: mm/page_alloc.c zone_names[] -> enum zone_type.
_ZONE_ENUM = {"DMA": "ZONE_DMA", "DMA32": "ZONE_DMA32", "Normal": "ZONE_NORMAL",
              "HighMem": "ZONE_HIGHMEM", "Movable": "ZONE_MOVABLE", "Device": "ZONE_DEVICE"}


# --- files -----------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$DRGN_VMEMMAP_CACHE``, else ``$XDG_CACHE_HOME/drgn-vmemmap`` (the
    project's cache; this corpus keeps its files under ``mutate/``)."""
    base = os.environ.get("DRGN_VMEMMAP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "drgn-vmemmap")
    return Path(base) / "mutate"


def _unxz(path: Path) -> Path:
    """``path``, or for ``*.xz`` a cached decompressed copy."""
    if path.suffix != ".xz":
        return path
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
                         .encode()).hexdigest()[:16]
    out = cache_dir() / f"{path.parent.name}-{path.stem}.{key}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        with lzma.open(path) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.rename(out)
    return out


def _dump_file(name: str, manifest: Dict[str, Any]) -> Path:
    return FIXTURES / manifest.get("dump", {}).get("file", f"{name}.vmcore")


def default_fixtures() -> List[str]:
    """Every ``*-hotplug-basic`` fixture whose dump is present."""
    out = []
    for p in sorted(FIXTURES.glob("*-hotplug-basic.json")):
        if _dump_file(p.stem, json.loads(p.read_text())).exists():
            out.append(p.stem)
    return out


def _vmlinux(manifest: Dict[str, Any]) -> Path:
    key = manifest["kernel"]["key"]
    for path in (KERNELS / key / "vmlinux.xz", FACTORY_BUILD / key / "vmlinux"):
        if path.exists():
            return _unxz(path)
    raise FileNotFoundError(f"no vmlinux for kernel {key!r}")


def _program(core: Path, vmlinux: Path) -> Program:
    prog = Program()
    prog.set_core_dump(str(core))
    prog.load_debug_info([str(vmlinux)], default=False)
    return prog


def elf_copy(vmcore: Path, vmlinux: Path) -> Path:
    """The cached ELF copy (with holes) of ``vmcore``, written if needed."""
    st = vmcore.stat()
    key = hashlib.sha256(f"{vmcore.resolve()}:{st.st_size}:{st.st_mtime_ns}:{ELF_VERSION}"
                         .encode()).hexdigest()[:16]
    stem = vmcore.name[:-3] if vmcore.name.endswith(".xz") else vmcore.name
    out = cache_dir() / f"{Path(stem).stem}.{key}.elf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        write_elf(_program(_unxz(vmcore), vmlinux), tmp, holes=True)
        tmp.rename(out)
    return out


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` keeping holes (SEEK_DATA / SEEK_HOLE)."""
    size = src.stat().st_size
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


# --- the checker, out of process ---------------------------------------------------------


class _Hang(Exception):
    pass


class _Died(Exception):
    pass


class Driver:
    """``tools/mutate_driver.py`` on the working file: ask it to check."""

    def __init__(self, core: Path, vmlinux: Path, log: Path) -> None:
        self.core, self.vmlinux, self.log_path = core, vmlinux, log
        self.proc: Optional[subprocess.Popen] = None
        self.restarts = 0
        self._buf = b""

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), str(self.core), str(self.vmlinux)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, bufsize=0,
            cwd=str(ROOT))
        self._buf = b""
        try:
            hello = self._recv(STARTUP_TIMEOUT)
        except (_Hang, _Died) as e:
            self.stop()
            raise RuntimeError(f"the checker worker did not start ({type(e).__name__}); "
                               f"see {self.log_path}") from e
        if not hello.get("ready"):
            self.stop()
            raise RuntimeError(f"the checker worker cannot open {self.core}: "
                               f"{hello.get('error') or hello.get('crash')}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.proc.stdin.write(b'{"op": "quit"}\n')
                    self.proc.stdin.flush()
                    self.proc.wait(5)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait()
            self._reap()

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # our own child, by its pid
            self.proc.wait()
            self._reap()

    def _reap(self) -> None:
        """Close the exited worker's pipes and log."""
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.proc = None
        self._log.close()

    def _recv(self, timeout: float) -> Dict[str, Any]:
        assert self.proc is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Hang()
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise _Died()
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def check(self, timeout: float, fresh: bool = False) -> Tuple[str, Any]:
        """("ok", report JSON) | ("refused", line) | ("crash", traceback) |
        ("hang", why); a hung or dead worker is restarted."""
        if self.proc is None:
            self.start()
        assert self.proc is not None
        try:
            self.proc.stdin.write(json.dumps({"op": "check", "fresh": fresh}).encode() + b"\n")
            self.proc.stdin.flush()
            answer = self._recv(timeout)
        except _Hang:
            self._kill()
            self.restarts += 1
            self.start()
            return "hang", f"check took longer than {timeout} s"
        except (_Died, OSError):
            tail = self._log_tail()
            self._kill()
            self.restarts += 1
            self.start()
            return "crash", f"the checker worker died\n{tail}"
        if "report" in answer:
            return "ok", answer["report"]
        if "error" in answer:
            return "refused", answer["error"]
        return "crash", answer.get("crash", repr(answer))


# --- the kernel's facts, read with plain drgn ----------------------------------------------


def _enum(prog: Program, name: str) -> Dict[str, int]:
    try:
        t = prog.type(name)
    except LookupError:
        return {}
    return {e.name: e.value for e in (t.enumerators or ())}


def _symbol(prog: Program, name: str) -> Optional[drgn.Object]:
    try:
        return prog[name]
    except (KeyError, LookupError):
        return None


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _offset(t: drgn.Type, *names: str) -> Tuple[int, int]:
    """(offset, size) of the first member of ``names`` that ``t`` has."""
    for name in names:
        try:
            off = offsetof(t, name)
        except LookupError:
            continue
        m = t
        for part in name.split("."):
            m = m.member(part).type
        return off, sizeof(m)
    raise LookupError(f"{t} has none of {names}")


class Kernel:
    """What the oracle needs to know about the kernel, from its debug info."""

    def __init__(self, prog: Program, manifest: Dict[str, Any]) -> None:
        self.prog = prog
        self.page_shift = prog["PAGE_SHIFT"].value_()
        self.page_size = 1 << self.page_shift
        self.pps = 1 << (prog["SECTION_SIZE_BITS"].value_() - self.page_shift)
        self.spb = prog["sections_per_block"].value_()
        self.ppb = self.pps * self.spb
        self.vmemmap = prog["vmemmap"].value_()
        self.page_offset = pfn_to_virt(prog, 0).value_()
        self.poison = _POISON_DELTA.get(prog.platform.arch.name, 0xdead000000000000)
        page = prog.type("struct page")
        self.page_t = page
        self.page_bytes = sizeof(page)
        # The word whose bit 0 marks a tail page: compound_head, compound_info
        # from 7.1 (offset 8 on 64-bit).
        self.fields: Dict[str, Tuple[int, int]] = {
            "flags": (offsetof(page, "flags"), 8),
            "refcount": (offsetof(page, "_refcount"), 4),
            "page_type": (_offset(page, "page_type", "_mapcount")[0], 4),
            "mapping": (offsetof(page, "mapping"), 8),
            "private": (offsetof(page, "private"), 8),
            "compound_head": (_offset(page, "compound_info", "compound_head")[0], 8),
        }
        self.pf = {k: v for k, v in _enum(prog, "enum pageflags").items()
                   if k.startswith("PG_")}
        self.owner_priv_1 = self.pf["PG_owner_priv_1"]
        #: The per-page marker bit (6.0+), else None.
        self.marker_bit = self.pf.get("PG_vmemmap_self_hosted")
        # page_type (include/linux/page-flags.h).
        pagetype = _enum(prog, "enum pagetype")
        self.types: Dict[str, int] = {}
        if "PGTY_mapcount_underflow" in pagetype:
            # 6.12+: the type is the top byte; page_has_type() is
            # (int)page_type < PGTY_mapcount_underflow << 24.
            self.type_scheme = "pgty"
            self.type_limit = _s32(pagetype["PGTY_mapcount_underflow"] << 24)
            self.types = {k[5:]: v for k, v in pagetype.items()
                          if k.startswith("PGTY_") and k != "PGTY_mapcount_underflow"}
        else:
            # Up to 6.11: a type's bit is cleared under PAGE_TYPE_BASE;
            # page_has_type() is (int)page_type < PAGE_MAPCOUNT_RESERVE.
            self.type_scheme = "inverted"
            self.type_base = pagetype.get("PAGE_TYPE_BASE", 0xF0000000) & 0xFFFFFFFF
            self.type_limit = _s32(pagetype.get("PAGE_MAPCOUNT_RESERVE", -128))
            enum_types = {k[3:]: v & 0xFFFFFFFF for k, v in pagetype.items()
                          if k.startswith("PG_")}
            self.types = enum_types or dict(_MACRO_PAGE_TYPES)
        #: The vmemmap page type of kernels patched with the 2019 scheme.
        self.vmemmap_type = self.types.get("vmemmap")
        # section_mem_map flags: an enum of SECTION_*_BIT since 6.0, macros before.
        present_bit = _symbol(prog, "SECTION_MARKED_PRESENT_BIT")
        if present_bit is not None:
            self.section_masks = {}
            self.map_last_bit = 5
            for e in present_bit.type_.enumerators:
                if e.name == "SECTION_MAP_LAST_BIT":
                    self.map_last_bit = e.value
                elif e.name.startswith("SECTION_") and e.name.endswith("_BIT"):
                    self.section_masks[e.name[8:-4]] = 1 << e.value
        else:
            self.section_masks = {"MARKED_PRESENT": 0x1, "HAS_MEM_MAP": 0x2, "IS_ONLINE": 0x4,
                                  "IS_EARLY": 0x8, "TAINT_ZONE_DEVICE": 0x10}
            self.map_last_bit = 5
        self.mb_type = prog.type("struct memory_block")
        self.altmap_type = (prog.type("struct vmem_altmap")
                            if self.mb_type.has_member("altmap") else None)
        self.hpg_optimized = _enum(prog, "enum hugetlb_page_flags").get("HPG_vmemmap_optimized")
        self.zones = [e.name for e in prog.type("enum zone_type").enumerators
                      if e.name != "__MAX_NR_ZONES"]
        self.nodes_shift = self._nodes_shift(manifest)
        n = len(self.zones)
        self.zones_shift = 0 if n <= 1 else 1 if n <= 2 else 2 if n <= 4 else 3
        self.swap = self._swap_in_use()
        self.xen = self._xen_guest()

    def _nodes_shift(self, manifest: Dict[str, Any]) -> int:
        """NODES_SHIFT from the kernel's config, else from MAX_NUMNODES
        (``node_data[]``'s length)."""
        key = manifest["kernel"]["key"]
        for config in (KERNELS / key / "config", FACTORY_BUILD / key / "config"):
            if config.exists():
                text = config.read_text()
                if "CONFIG_NUMA=y" not in text:
                    return 0
                for line in text.splitlines():
                    if line.startswith("CONFIG_NODES_SHIFT="):
                        return int(line.split("=", 1)[1])
        length = self.prog["node_data"].type_.length or 1
        return (length - 1).bit_length()

    def _swap_in_use(self) -> bool:
        """Whether a page can be in the swap cache: CONFIG_SWAP (mm/swapfile.c's
        ``total_swap_pages``) and swap space, or a swap device still in use
        (swapoff lowers ``total_swap_pages`` before it empties the cache)."""
        total = _symbol(self.prog, "total_swap_pages")
        if total is None:
            return False
        try:
            if total.value_():
                return True
            nr = self.prog["nr_swapfiles"].value_()
            info = self.prog["swap_info"]
            for i in range(nr):
                si = info[i].read_()
                if si and si.flags.value_() & _SWP_USED:
                    return True
            return False
        except (FaultError, KeyError, LookupError):
            return True  # cannot tell: allow the alias

    def _xen_guest(self) -> bool:
        t = _symbol(self.prog, "xen_domain_type")
        if t is None:
            return False  # no CONFIG_XEN
        try:
            return t.value_() != 0  # XEN_NATIVE
        except FaultError:
            return True

    # --- decoding ---

    def has_type(self, page_type: int) -> bool:
        return _s32(page_type) < self.type_limit

    def type_is(self, page_type: int, name: str) -> bool:
        value = self.types.get(name)
        if value is None or not self.has_type(page_type):
            return False
        if self.type_scheme == "pgty":
            return (page_type & 0xFFFFFFFF) >> 24 == value
        return (page_type & (self.type_base | value)) == self.type_base

    def flag(self, flags: int, name: str) -> bool:
        bit = self.pf.get(name)
        return bit is not None and bool(flags >> bit & 1)

    def node(self, flags: int) -> Optional[int]:
        """NODES_PGSHIFT = 64 - NODES_WIDTH (no section field with SPARSEMEM_VMEMMAP)."""
        return flags >> (64 - self.nodes_shift) if self.nodes_shift else None

    def zone(self, flags: int) -> Optional[int]:
        if not self.zones_shift:
            return None
        return flags >> (64 - self.nodes_shift - self.zones_shift) & ((1 << self.zones_shift) - 1)

    def tail(self, page: Dict[str, int]) -> bool:
        return bool(page["compound_head"] & 1)

    def slab(self, page: Dict[str, int]) -> bool:
        return self.flag(page["flags"], "PG_slab") or self.type_is(page["page_type"], "slab")

    def address_space(self, mapping: int) -> bool:
        """Could ``mapping`` be a ``struct address_space *``?"""
        if mapping == 0 or mapping & 3:
            return False
        if 0 <= mapping - self.poison < 0x10000:  # TAIL_MAPPING and friends
            return False
        return mapping >= self.page_offset


def _decode_pages(k: Kernel, data: bytes) -> Dict[str, np.ndarray]:
    words = np.frombuffer(data, np.uint8).reshape(-1, k.page_bytes)

    def col(name: str) -> np.ndarray:
        off, size = k.fields[name]
        dt = np.dtype("<u8" if size == 8 else "<u4")
        return np.ascontiguousarray(words[:, off:off + size]).view(dt).ravel()

    return {name: col(name) for name in k.fields}


# --- the subject: one fixture, its working copy, its clean state ---------------------------


class Folio(NamedTuple):
    head: int
    order: int
    optimized: bool


class Subject:
    """A fixture ready for mutations: working file, program, worker, clean report."""

    def __init__(self, name: str, workdir: Path, fresh: bool = False,
                 timeout: float = 60) -> None:
        self.name = name
        self.manifest = json.loads((FIXTURES / f"{name}.json").read_text())
        self.vmlinux = _vmlinux(self.manifest)
        vmcore = _dump_file(name, self.manifest)
        self.path = workdir / f"{name}.elf"
        sparse_copy(elf_copy(vmcore, self.vmlinux), self.path)
        self.segments: List[Segment] = load_segments(self.path)
        self.fresh = fresh
        self.fd = os.open(self.path, os.O_RDWR)
        self.prog = _program(self.path, self.vmlinux)
        prog = self.prog
        self.k = k = Kernel(prog, self.manifest)
        self.init_mm = prog["init_mm"].address_of_()
        self.driver = Driver(self.path, self.vmlinux, workdir / f"{name}.driver.log")
        self.driver.start()
        status, baseline = self.driver.check(max(timeout, 300), fresh)
        if status != "ok":
            self.close()
            raise RuntimeError(f"{name}: the clean copy does not check ({status}): {baseline}")
        self.baseline: Dict[str, Any] = baseline
        self.baseline_violations = {_vkey(v) for v in baseline["violations"]}

        truth = self.manifest["truth"]
        self.truth_blocks = {b["id"]: b for b in truth["blocks"]}
        #: Per block, the frames backing its struct pages, and its vmemmap
        #: area (the frames, plus the pageblock padding memmap_on_memory=force
        #: reserves and marks: the guest saw it in kpageflags).
        self.frames: Dict[int, int] = {r["block"]: r["nr_pages"] for r in truth["self_hosted"]}
        self.self_hosted: Dict[int, Tuple[int, int]] = {
            r["block"]: (r["start_pfn"], r["start_pfn"] + r.get("reserved_pages", r["nr_pages"]))
            for r in truth["self_hosted"]}
        found = {r["block"]: (r["start_pfn"], r["nr_pages"],
                              r["start_pfn"] + r.get("reserved_pages", r["nr_pages"]))
                 for r in baseline["ranges"]}
        want = {b: (lo, self.frames[b], hi) for b, (lo, hi) in self.self_hosted.items()}
        if found != want:
            self.close()
            raise RuntimeError(f"{name}: the checker's ranges on the clean copy {found} are "
                               f"not the manifest's {want}")
        self.hotplugged = sorted(b["id"] for b in truth["blocks"] if b.get("hotplugged"))
        self.online = {b["id"] for b in truth["blocks"] if b["state"] == "online"}
        self.truth_node = {b["id"]: b["node"] for b in truth["blocks"]}

        # Sections and blocks, as the clean dump has them.
        self.sections: Dict[int, Tuple[int, int]] = {}  # nr -> (address, section_mem_map)
        for nr, ms in for_each_present_section(prog):
            self.sections[nr] = (ms.value_(), ms.section_mem_map.value_())
        self.blocks: Dict[int, Dict[str, Any]] = {}
        for mem in for_each_memory_block(prog):
            self.blocks[mem.dev.id.value_()] = self._read_block(mem)
        for bid, b in self.blocks.items():
            want_state = {"online": "MEM_ONLINE", "offline": "MEM_OFFLINE"}.get(
                self.truth_blocks.get(bid, {}).get("state"))
            if want_state is not None and b["state"] != want_state:
                self.close()
                raise RuntimeError(f"{name}: block {bid} is {b['state']} in the dump, "
                                   f"{want_state} in the manifest")
        #: Expected zone index and PG_reserved of each online block's vmemmap
        #: pages (the manifest: the block's zone, and kpageflags' reserved).
        self.vmemmap_zone: Dict[int, Optional[int]] = {}
        self.vmemmap_reserved: Dict[int, Optional[bool]] = {}
        for bid, (start, _end) in self.self_hosted.items():
            zones = self.truth_blocks[bid].get("valid_zones") or []
            zname = _ZONE_ENUM.get(zones[0]) if len(zones) == 1 else None
            self.vmemmap_zone[bid] = k.zones.index(zname) if zname in k.zones else None
            reserved = None
            for run_start, n, kflags in self.manifest["truth"].get("kpageflags", {}).get(
                    str(bid), []):
                if run_start <= start < run_start + n:
                    reserved = "reserved" in kflags
            self.vmemmap_reserved[bid] = reserved

        self._classify()
        if k.nodes_shift:
            for bid, (start, end) in self.self_hosted.items():
                if bid not in self.online:
                    continue
                nodes = {k.node(self.page_fields(p)["flags"]) for p in range(start, end)}
                if nodes != {self.truth_node[bid]}:  # the oracle's layout is wrong
                    self.close()
                    raise RuntimeError(f"{name}: block {bid}'s vmemmap pages are on nodes "
                                       f"{nodes} by NODES_SHIFT {k.nodes_shift}, not on "
                                       f"node {self.truth_node[bid]}")

    def _read_block(self, mem: drgn.Object) -> Dict[str, Any]:
        k = self.k
        state_value = mem.state.value_()
        try:
            state = decode_memory_block_state_value(self.prog, state_value)
        except (ValueError, KeyError, LookupError):
            state = "?"
        altmap = None
        vmemmap_pages = None
        if k.altmap_type is not None:
            ptr = mem.altmap.read_()
            if ptr:
                a = ptr[0].read_()
                altmap = {f: getattr(a, f).value_()
                          for f in ("base_pfn", "end_pfn", "reserve", "free", "alloc")}
                vmemmap_pages = altmap["free"]
            else:
                vmemmap_pages = 0
            altmap_address = ptr.value_()
        else:
            altmap_address = 0
            if k.mb_type.has_member("nr_vmemmap_pages"):
                vmemmap_pages = mem.nr_vmemmap_pages.value_()
        return {"address": mem.value_(), "altmap_address": altmap_address,
                "state": state, "state_value": state_value,
                "start_section_nr": mem.start_section_nr.value_(),
                "nid": mem.nid.value_() & 0xFFFFFFFF,
                "vmemmap_pages": vmemmap_pages, "altmap": altmap}

    def _classify(self) -> None:
        """Find the pages of the other target classes in the clean dump."""
        k, prog = self.k, self.prog
        # HugeTLB folios, from the hstate lists.
        self.folios: Dict[int, Folio] = {}
        hstates = _symbol(prog, "hstates")
        if hstates is not None:
            for i in range(prog["hugetlb_max_hstate"].value_()):
                h = hstates[i]
                order = h.order.value_()
                heads = [h.hugepage_activelist.address_of_()]
                heads += [h.hugepage_freelists[n].address_of_()
                          for n in range(len(h.hugepage_freelists))]
                for head in heads:
                    try:
                        for folio in list_for_each_entry("struct folio", head, "lru"):
                            pfn = (folio.value_() - k.vmemmap) // k.page_bytes
                            opt = (k.hpg_optimized is not None
                                   and bool(folio.private.value_() >> k.hpg_optimized & 1))
                            self.folios[pfn] = Folio(pfn, order, opt)
                    except FaultError:
                        continue
        # Cross-check with the manifest (the guest's kpageflags).
        listed = {pfn for heads in self.manifest["truth"].get("hugepage_heads", {}).values()
                  for pfn in heads}
        self.compound_heads = sorted(p for p in listed
                                     if p in self.folios and not self.folios[p].optimized)
        self.hvo_heads = sorted(p for p, f in self.folios.items() if f.optimized)
        # Frames backing optimised folios' vmemmap, and whose struct pages each holds.
        self.frame_users: Dict[int, List[int]] = defaultdict(list)  # frame -> first pfns
        per_page = k.page_size // k.page_bytes
        for head in self.hvo_heads:
            f = self.folios[head]
            for i in range(max(1, ((1 << f.order) * k.page_bytes) // k.page_size)):
                va = k.vmemmap + head * k.page_bytes + i * k.page_size
                try:
                    frame = follow_phys(self.init_mm, va).value_() >> k.page_shift
                except FaultError:
                    continue
                self.frame_users[frame].append(head + i * per_page)
        #: HVO's replacement pages: the frames that back optimised folios'
        #: vmemmap now (6.12's head copy, 7.2's private copy and shared tail;
        #: 6.1's kept page 0).
        self.replacement_frames = sorted(self.frame_users)
        # Buddy, slab and page-table pages of online blocks, hot-plugged first.
        self.by_kind: Dict[str, List[int]] = {"buddy": [], "slab": [], "page-table": []}
        hot, boot = [], []
        for bid in sorted(self.online):
            start, end = bid * k.ppb, (bid + 1) * k.ppb
            cols, pfns = self._read_pages(start, end)
            if cols is None:
                continue
            pt, flags, ch = cols["page_type"], cols["flags"], cols["compound_head"]
            kinds = {"buddy": self._type_mask(pt, "buddy"),
                     "slab": self._type_mask(pt, "slab"),
                     "page-table": self._type_mask(pt, "table")}
            if "PG_slab" in k.pf:
                kinds["slab"] |= ((flags >> np.uint64(k.pf["PG_slab"])) & np.uint64(1)).astype(
                    bool) & ((ch & np.uint64(1)) == 0)
            for kind, mask in kinds.items():
                found = [int(p) for p in pfns[mask]]
                (hot if bid in self.hotplugged else boot).append((kind, found))
        for kind, found in hot + boot:
            if len(self.by_kind[kind]) < 4096:
                self.by_kind[kind] += found[:4096]
        self.hot_pfns = {kind: [p for kd, found in hot if kd == kind for p in found]
                         for kind in self.by_kind}

    def _type_mask(self, pt: np.ndarray, name: str) -> np.ndarray:
        k = self.k
        value = k.types.get(name)
        signed = pt.astype(np.int64)
        signed = np.where(signed >= 1 << 31, signed - (1 << 32), signed)
        has = signed < k.type_limit
        if value is None:
            return np.zeros(len(pt), bool)
        if k.type_scheme == "pgty":
            return has & ((pt >> np.uint32(24)) == value)
        return has & ((pt & np.uint32(k.type_base | value)) == k.type_base)

    def _read_pages(self, start: int, end: int):
        """Columns of the readable struct pages of ``[start, end)``."""
        k = self.k
        chunks, pfns = [], []
        step = k.page_size // k.page_bytes
        for lo in range(start, end, k.pps):
            hi = min(end, lo + k.pps)
            try:
                chunks.append(self.prog.read(k.vmemmap + lo * k.page_bytes,
                                             (hi - lo) * k.page_bytes))
                pfns.append(np.arange(lo, hi))
                continue
            except FaultError:
                pass
            for p in range(lo, hi, step):
                try:
                    chunks.append(self.prog.read(k.vmemmap + p * k.page_bytes,
                                                 step * k.page_bytes))
                    pfns.append(np.arange(p, p + step))
                except FaultError:
                    pass
        if not chunks:
            return None, None
        return _decode_pages(k, b"".join(chunks)), np.concatenate(pfns)

    def close(self) -> None:
        self.driver.stop()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # --- memory access -------------------------------------------------------------

    def offset_of(self, va: int, size: int) -> Optional[int]:
        """File offset of kernel virtual ``[va, va + size)``, None if not in the file."""
        try:
            pa = follow_phys(self.init_mm, va).value_()
        except FaultError:
            return None
        return file_offset(self.segments, pa, size)

    def read_file(self, offset: int, size: int) -> int:
        return int.from_bytes(os.pread(self.fd, size, offset), "little")

    def write_file(self, offset: int, size: int, value: int) -> None:
        os.pwrite(self.fd, value.to_bytes(size, "little"), offset)

    def page_fields(self, pfn: int) -> Dict[str, int]:
        k = self.k
        data = self.prog.read(k.vmemmap + pfn * k.page_bytes, k.page_bytes)
        return {name: int.from_bytes(data[off:off + size], "little")
                for name, (off, size) in k.fields.items()}

    def self_hosted_block(self, pfn: int) -> Optional[int]:
        for bid, (s, e) in self.self_hosted.items():
            if s <= pfn < e:
                return bid
        return None

    def aliases(self, pfn: int) -> Tuple[int, ...]:
        """Every pfn whose struct page shares the bytes of ``pfn``'s (HVO's
        aliased vmemmap), ``pfn`` first."""
        k = self.k
        per_page = k.page_size // k.page_bytes
        try:
            frame = follow_phys(self.init_mm, k.vmemmap + pfn * k.page_bytes).value_() \
                >> k.page_shift
        except FaultError:
            return (pfn,)
        users = self.frame_users.get(frame)
        if not users:
            return (pfn,)
        slot = pfn % per_page
        out = [pfn] + sorted({first + slot for first in users} - {pfn})
        return tuple(out)

    def folio_of(self, pfn: int) -> Optional[Folio]:
        for f in self.folios.values():
            if f.head <= pfn < f.head + (1 << f.order):
                return f
        return None


# --- mutations ------------------------------------------------------------------------


class Mutation(NamedTuple):
    index: int
    klass: str
    #: ``pfn`` for pages, section number, block id.
    target: int
    field: str
    offset: int  # in the working file
    size: int  # bytes
    old: int
    new: int
    bits: Tuple[int, ...]
    #: Object context for the oracle: pages: ``{"page": fields, "pfns":
    #: every pfn the bytes describe}``; blocks: the block's record.
    context: Dict[str, Any]

    def describe(self) -> str:
        if self.klass == "dump":
            return f"#{self.index} dump {self.field}: {self.context['what']}"
        what = "section" if self.klass == "section" else "block" if self.klass == "block" \
            else "pfn"
        extra = ""
        pfns = self.context.get("pfns") or ()
        if len(pfns) > 1:
            extra = f" (aliased: {len(pfns)} struct pages)"
        return (f"#{self.index} {self.klass} {what} {self.target:#x} {self.field}: "
                f"{self.old:#x} -> {self.new:#x} (bits {', '.join(map(str, self.bits))})"
                f"{extra}")


def _weighted(rng: random.Random, choices: Sequence[Tuple[str, int]]) -> str:
    return rng.choices([c for c, _ in choices], [w for _, w in choices])[0]


def _bits(rng: random.Random, hi: int, first: int, lo: int = 0) -> Tuple[int, ...]:
    """Bit ``first`` and, 30% of the time, 1-2 more random bits of ``[lo, hi)``."""
    bits = [first]
    extra = min(rng.choices([0, 1, 2], [70, 20, 10])[0], hi - lo - 1)
    while len(bits) < 1 + extra:
        b = rng.randrange(lo, hi)
        if b not in bits:
            bits.append(b)
    return tuple(sorted(bits))


def _flipped(old: int, bits: Sequence[int]) -> int:
    for b in bits:
        old ^= 1 << b
    return old


def _page_field(s: Subject, field: str) -> Tuple[int, int]:
    """(offset in struct page, size) of a mutable struct page field."""
    return s.k.fields[field]


def page_mutation(s: Subject, index: int, klass: str, pfn: int, field: str,
                  bits: Sequence[int]) -> Optional[Mutation]:
    """Flip ``bits`` of ``field`` of the struct page of ``pfn`` (None if not in the file)."""
    off, size = _page_field(s, field)
    offset = s.offset_of(s.k.vmemmap + pfn * s.k.page_bytes + off, size)
    if offset is None:
        return None
    try:
        page = s.page_fields(pfn)
    except FaultError:
        return None
    old = s.read_file(offset, size)
    return Mutation(index, klass, pfn, field, offset, size, old, _flipped(old, bits),
                    tuple(sorted(bits)), {"page": page, "pfns": s.aliases(pfn)})


def section_mutation(s: Subject, index: int, nr: int, bits: Sequence[int]) -> Optional[Mutation]:
    """Flip ``bits`` of ``mem_section[nr].section_mem_map``."""
    offset = s.offset_of(s.sections[nr][0], 8)  # the first member
    if offset is None:
        return None
    field = "flags" if all(b < s.k.map_last_bit for b in bits) else "mem_map"
    old = s.read_file(offset, 8)
    return Mutation(index, "section", nr, field, offset, 8, old, _flipped(old, bits),
                    tuple(sorted(bits)), {})


def block_field(s: Subject, bid: int, field: str) -> Tuple[int, int]:
    """(kernel address, size) of ``field`` (``"state"``, ``"altmap.alloc"``...) of block ``bid``."""
    b = s.blocks[bid]
    if field.startswith("altmap."):
        member = field.split(".", 1)[1]
        base, t = b["altmap_address"], s.k.altmap_type
    else:
        member, base, t = field, b["address"], s.k.mb_type
    return base + offsetof(t, member), sizeof(t.member(member).type)


def block_mutation(s: Subject, index: int, bid: int, field: str,
                   bits: Sequence[int]) -> Optional[Mutation]:
    """Flip ``bits`` of ``field`` of memory block ``bid``."""
    b = s.blocks[bid]
    address, size = block_field(s, bid, field)
    offset = s.offset_of(address, size)
    if offset is None:
        return None
    old = s.read_file(offset, size)
    context = {"state_value": b["state_value"], "start_section_nr": b["start_section_nr"],
               "nid": b["nid"], "vmemmap_pages": b["vmemmap_pages"],
               "altmap": dict(b["altmap"]) if b["altmap"] is not None else None}
    return Mutation(index, "block", bid, field, offset, size, old, _flipped(old, bits),
                    tuple(sorted(bits)), context)


def _page_target(s: Subject, rng: random.Random, klass: str) -> Optional[int]:
    k = s.k
    if klass == "vmemmap-page":
        if not s.self_hosted:
            return None
        start, end = s.self_hosted[rng.choice(sorted(s.self_hosted))]
        return rng.randrange(start, end)
    if klass == "block-page":
        if not s.hotplugged:
            return None
        bid = rng.choice(s.hotplugged)
        return rng.randrange(bid * k.ppb, (bid + 1) * k.ppb)
    if klass in ("compound", "hvo-folio"):
        heads = s.compound_heads if klass == "compound" else s.hvo_heads
        if not heads:
            return None
        f = s.folios[rng.choice(heads)]
        which = rng.choices([0, 1, 2, 3], [40, 25, 20, 15 if klass == "hvo-folio" else 0])[0]
        return f.head + (which if which < 3 else rng.randrange(3, 1 << f.order))
    if klass == "hvo-replacement":
        return rng.choice(s.replacement_frames) if s.replacement_frames else None
    pool = s.hot_pfns[klass] if s.hot_pfns[klass] and rng.random() < 0.7 else s.by_kind[klass]
    return rng.choice(pool) if pool else None


def _draw_page(s: Subject, rng: random.Random, index: int, klass: str) -> Optional[Mutation]:
    k = s.k
    pfn = _page_target(s, rng, klass)
    if pfn is None:
        return None
    field = _weighted(rng, PAGE_FIELDS if klass in ("vmemmap-page", "block-page")
                      else OTHER_PAGE_FIELDS)
    width = _page_field(s, field)[1] * 8
    if rng.random() < TOP_BIT:
        first = width - 1
    elif field == "flags" and rng.random() < 0.5:
        names = [n for n in INTERESTING_FLAGS if n in k.pf]
        first = k.pf[rng.choice(names)]
    elif field == "flags" and klass not in ("vmemmap-page", "block-page") \
            and rng.random() < 0.5:
        first = k.owner_priv_1  # the marker, where the aliases live
    elif field == "compound_head" and rng.random() < 0.5:
        first = 0
    elif field == "private" and k.hpg_optimized is not None and rng.random() < 0.5:
        first = k.hpg_optimized
    elif field == "page_type" and k.vmemmap_type is not None and rng.random() < 0.2:
        # Towards PGTY_vmemmap on the patched kernels (the top byte's bits).
        first = 24 + rng.randrange(8) if k.type_scheme == "pgty" else rng.randrange(width)
    else:
        first = rng.randrange(width)
    return page_mutation(s, index, klass, pfn, field, _bits(rng, width, first))


def _draw_section(s: Subject, rng: random.Random, index: int) -> Optional[Mutation]:
    last = s.k.map_last_bit
    nr = rng.choice(sorted(s.sections))
    if rng.random() < 0.8:
        bits = _bits(rng, last, rng.randrange(last))
    else:
        first = 63 if rng.random() < TOP_BIT else rng.randrange(last, 64)
        bits = _bits(rng, 64, first, lo=last)
    return section_mutation(s, index, nr, bits)


def _block_fields(s: Subject, b: Dict[str, Any]) -> List[Tuple[str, int]]:
    fields = [("state", 25), ("start_section_nr", 15), ("nid", 10)]
    if s.k.mb_type.has_member("nr_vmemmap_pages"):
        fields.append(("nr_vmemmap_pages", 50))
    elif s.k.altmap_type is not None and b["altmap"] is not None:
        fields += [("altmap.alloc", 15), ("altmap.free", 15), ("altmap.base_pfn", 10),
                   ("altmap.end_pfn", 5), ("altmap.reserve", 5)]
    return fields


def _draw_block(s: Subject, rng: random.Random, index: int) -> Optional[Mutation]:
    hot = [bid for bid in s.hotplugged if bid in s.blocks]
    boot = sorted(set(s.blocks) - set(hot))
    pool = hot if (hot and (rng.random() < 0.7 or not boot)) else boot
    bid = rng.choice(pool)
    b = s.blocks[bid]
    if b["state"] == "?":
        return None
    field = _weighted(rng, _block_fields(s, b))
    width = block_field(s, bid, field)[1] * 8
    # Low bits mostly: flipping bit 60 of a count is a less telling corruption.
    if rng.random() < TOP_BIT:
        first = width - 1
    elif field in ("state", "nid"):
        first = rng.randrange(min(width, 8)) if rng.random() < 0.8 else rng.randrange(width)
    elif field in ("altmap.base_pfn", "altmap.end_pfn"):
        first = rng.randrange(min(width, 40))
    else:
        first = rng.randrange(min(width, 16)) if rng.random() < 0.8 else rng.randrange(width)
    return block_mutation(s, index, bid, field, _bits(rng, width, first))


def draw(s: Subject, seed: int, index: int, only: Optional[Sequence[str]] = None) -> Mutation:
    """Mutation ``index`` of ``seed`` for this subject (deterministic), of the
    classes ``only`` if given."""
    seed_text = f"{seed}/{s.name}/{index}" if not only else \
        f"{seed}/{s.name}/{index}/{','.join(sorted(only))}"
    rng = random.Random(seed_text)
    classes = [c for c in CLASSES if not only or c[0] in only]
    for _ in range(100):
        klass = _weighted(rng, classes)
        if klass in PAGE_CLASSES:
            m = _draw_page(s, rng, index, klass)
        elif klass == "dump":
            from tools import mutate_dump
            m = mutate_dump.draw(s, rng, index)
        elif klass == "section":
            m = _draw_section(s, rng, index)
        else:
            m = _draw_block(s, rng, index)
        if m is not None and m.new != m.old:
            return m
    raise RuntimeError(f"{s.name}: no mutation target found for #{index}")


# --- the oracle -----------------------------------------------------------------------


def _section_flags(s: Subject, nr: int) -> Optional[int]:
    sec = s.sections.get(nr)
    return None if sec is None else sec[1] & ((1 << s.k.map_last_bit) - 1)


def _alias_explains(s: Subject, page: Dict[str, int]) -> bool:
    """Whether an alias of ``PG_owner_priv_1`` other than the self-hosted
    marker may be what is set on ``page``, by the aliases' page-flag
    policies (include/linux/page-flags.h, KERNEL-NOTES §13).  Xen's aliases
    leave a warning, so they never explain the bit away here."""
    k = s.k
    if k.tail(page):
        return False  # PF_ANY marker; every alias is head-only or PF_NO_COMPOUND
    flags = page["flags"]
    # PG_swapcache: folio_test_swapcache() = the bit && PG_swapbacked, on the head.
    if k.swap and k.flag(flags, "PG_swapbacked"):
        return True
    # PG_checked: filesystems, on page-cache pages (PF_NO_COMPOUND; the folio
    # API sets it on page 0), whose mapping is an address_space.
    if k.address_space(page["mapping"]) and not k.has_type(page["page_type"]) \
            and not k.slab(page):
        return True
    return False


def _page_broken(s: Subject, pfn: int, page: Dict[str, int]) -> Set[str]:
    """The rules whose invariant ``page`` (the struct page of ``pfn``) violates."""
    k = s.k
    flags = page["flags"]
    out: Set[str] = set()
    bid = s.self_hosted_block(pfn)
    if bid is not None:
        if bid not in s.online:
            return out  # offline: uninitialised or stale, not checked
        if flags == _ALL_ONES:
            return {"vmemmap-unmarked"}  # poisoned
        if k.marker_bit is not None and not flags >> k.marker_bit & 1:
            out.add("vmemmap-unmarked")
        has_type = k.has_type(page["page_type"])
        is_vmemmap = k.vmemmap_type is not None and k.type_is(page["page_type"], "vmemmap")
        if k.vmemmap_type is not None and not is_vmemmap:
            out.add("vmemmap-unmarked")  # the vmemmap page type is a marker too
        reserved = s.vmemmap_reserved[bid]
        if ((has_type and not is_vmemmap) or k.flag(flags, "PG_slab")
                or page["refcount"] != 1 or page["mapping"] != 0
                or k.node(flags) != (s.truth_node[bid] if k.nodes_shift else None)
                or (s.vmemmap_zone[bid] is not None and k.zone(flags) != s.vmemmap_zone[bid])
                or k.tail(page) or k.flag(flags, "PG_head") or k.flag(flags, "PG_lru")
                or (reserved is not None and k.flag(flags, "PG_reserved") != reserved)):
            out.add("vmemmap-page-state")
        return out
    # Outside the self-hosted ranges: marker-stray, on online memory.
    nr = pfn // k.pps
    sflags = _section_flags(s, nr)
    m = k.section_masks
    if sflags is None or not sflags & m["HAS_MEM_MAP"] or not sflags & m["IS_ONLINE"]:
        return out
    block = pfn // k.ppb
    if block in s.blocks and s.blocks[block]["state"] != "MEM_ONLINE":
        return out
    if flags == _ALL_ONES:
        return out
    if k.marker_bit is not None and flags >> k.marker_bit & 1 and not _alias_explains(s, page):
        out.add("marker-stray")
    if k.vmemmap_type is not None and k.type_is(page["page_type"], "vmemmap"):
        out.add("marker-stray")  # the vmemmap page type has no alias
    return out


def _folio_broken(s: Subject, f: Folio, private: int) -> Set[str]:
    """hvo-self-hosted for HugeTLB folio ``f`` whose head's ``private`` is ``private``."""
    k = s.k
    if k.hpg_optimized is None or not private >> k.hpg_optimized & 1:
        return set()
    end = f.head + (1 << f.order)
    for bid in s.self_hosted:
        lo, hi = bid * k.ppb, (bid + 1) * k.ppb
        if lo < end and f.head < hi:
            return {"hvo-self-hosted"}
    try:
        frame = follow_phys(s.init_mm, k.vmemmap + f.head * k.page_bytes).value_() \
            >> k.page_shift
    except FaultError:
        return set()
    if s.self_hosted_block(frame) is not None:
        return {"hvo-self-hosted"}
    return set()


def _pages_broken(s: Subject, m: Mutation, page: Dict[str, int]) -> Set[str]:
    out: Set[str] = set()
    for pfn in m.context["pfns"]:
        out |= _page_broken(s, pfn, page)
        f = s.folios.get(pfn)
        if f is not None:  # a HugeTLB folio's head (or a fake head of it: same bytes)
            out |= _folio_broken(s, f, page["private"])
    return out


def _section_broken(s: Subject, nr: int, word: int) -> Set[str]:
    k = s.k
    m = k.section_masks
    flags = word & ((1 << k.map_last_bit) - 1)
    mem_map = word & ~((1 << k.map_last_bit) - 1)
    present = bool(flags & m["MARKED_PRESENT"])
    has_map = bool(flags & m["HAS_MEM_MAP"])
    bid = nr // k.spb
    block = s.blocks.get(bid)
    out: Set[str] = set()
    if block is not None and block["state"] in ("MEM_ONLINE", "MEM_OFFLINE"):
        if not present or not has_map:
            out.add("section-state")
        elif bool(flags & m["IS_ONLINE"]) != (block["state"] == "MEM_ONLINE"):
            out.add("section-state")
    if present:
        early = any(flags & m[n] for n in _EARLY_SECTION_FLAGS if n in m)
        if block is not None and block["vmemmap_pages"] and early:
            out.add("early-self-hosted")
        if has_map and mem_map != k.vmemmap:
            out.add("block-geometry")
        # Section flags marking a self-hosted memmap (never-merged schemes):
        # set exactly on the sections of self-hosted blocks.
        for name in _SECTION_MARKERS:
            if name in m and bool(flags & m[name]) != (bid in s.self_hosted):
                out.add("section-marker")
    return out


def _block_broken(s: Subject, bid: int, values: Dict[str, Any]) -> Set[str]:
    k = s.k
    out: Set[str] = set()
    if values["start_section_nr"] != bid * k.spb:
        out.add("block-geometry")
    try:
        state = decode_memory_block_state_value(s.prog, values["state"])
    except Exception:  # not a state at all
        state = None
    flags = [_section_flags(s, nr) for nr in range(bid * k.spb, (bid + 1) * k.spb)]
    m = k.section_masks
    if state in ("MEM_ONLINE", "MEM_OFFLINE"):
        for fl in flags:
            if fl is not None and bool(fl & m["IS_ONLINE"]) != (state == "MEM_ONLINE"):
                out.add("section-state")
    if state == "MEM_ONLINE" and bid in s.self_hosted and k.nodes_shift \
            and values["nid"] != s.truth_node[bid]:
        # The block's vmemmap pages carry its true node in their flags.
        out.add("vmemmap-page-state")
    altmap = values.get("altmap")
    recorded = values.get("nr_vmemmap_pages")
    if altmap is not None:
        recorded = altmap["free"]
    early = any(fl is not None and any(fl & m[n] for n in _EARLY_SECTION_FLAGS if n in m)
                for fl in flags)
    if early and recorded:
        out.add("early-self-hosted")
    # A record that claims vmemmap pages where the page tables show none
    # (a block holding optimised HugeTLB folios, say) is altmap-mismatch or
    # early-self-hosted: "a block with vmemmap pages" is decided from the page
    # tables (the manifest's ground truth), which a record does not change.
    if bid in s.hotplugged:
        start, end = bid * k.ppb, (bid + 1) * k.ppb
        lo, hi = s.self_hosted.get(bid, (start, start))
        found = s.frames.get(bid, 0)
        if altmap is None:
            if (recorded or 0) != found:
                out.add("altmap-mismatch")
        elif (altmap["alloc"] != found or altmap["base_pfn"] != start
              or altmap["end_pfn"] != end - 1 or altmap["reserve"] != 0
              or altmap["free"] != hi - lo):  # the area: frames + force padding
            out.add("altmap-mismatch")
    return out


def _block_values(m: Mutation, value: int) -> Dict[str, Any]:
    ctx = m.context
    values: Dict[str, Any] = {"start_section_nr": ctx["start_section_nr"],
                              "state": ctx["state_value"], "nid": ctx["nid"],
                              "nr_vmemmap_pages": ctx["vmemmap_pages"],
                              "altmap": dict(ctx["altmap"]) if ctx["altmap"] else None}
    if m.field.startswith("altmap."):
        values["altmap"][m.field.split(".", 1)[1]] = value
    elif m.field in ("nr_vmemmap_pages", "start_section_nr", "state", "nid"):
        values[m.field] = value
    return values


def broken_rules(s: Subject, m: Mutation) -> Set[str]:
    """The rules whose invariant held before mutation ``m`` and fails after."""
    if m.klass == "dump":  # what the dump fault must cost (tools/mutate_dump.py)
        return {m.context["expect"]}
    if m.klass in PAGE_CLASSES:
        before = dict(m.context["page"])
        after = dict(before)
        after[m.field] = m.new
        return _pages_broken(s, m, after) - _pages_broken(s, m, before)
    if m.klass == "section":
        return _section_broken(s, m.target, m.new) - _section_broken(s, m.target, m.old)
    return (_block_broken(s, m.target, _block_values(m, m.new))
            - _block_broken(s, m.target, _block_values(m, m.old)))


# --- running ----------------------------------------------------------------------------


class Outcome(NamedTuple):
    mutation: Mutation
    #: Rules whose invariant the mutation broke (empty: untargeted).
    broken: Set[str]
    #: "ok", "crash", "refused" or "hang".
    status: str
    #: Rules of the new violations covering the target.
    detected_by: Set[str]
    #: Rules of all new violations (anywhere).
    flagged_by: Set[str]
    error: Optional[str]
    #: The report (JSON), if the check finished.
    report: Optional[Dict[str, Any]]


def _vkey(v: Dict[str, Any]) -> Tuple[Any, ...]:
    return (v["rule"], v["pfn_start"], v["pfn_end"], v.get("section"), v.get("block"))


def _covers(s: Subject, m: Mutation, v: Dict[str, Any]) -> bool:
    start, end = v["pfn_start"], v["pfn_end"]
    if m.klass in PAGE_CLASSES:
        return any(start <= p < end for p in m.context["pfns"])
    k = s.k
    if m.klass == "section":
        lo, hi = m.target * k.pps, (m.target + 1) * k.pps
        return v.get("section") == m.target or (start < hi and lo < end)
    lo, hi = m.target * k.ppb, (m.target + 1) * k.ppb
    return v.get("block") == m.target or (start < hi and lo < end)


def run_one(s: Subject, m: Mutation, timeout: int = 60) -> Outcome:
    """Apply ``m``, check (in the worker), restore; classify the result."""
    if m.klass == "dump":
        from tools import mutate_dump
        return mutate_dump.run_one(s, m, timeout)
    broken = broken_rules(s, m)
    s.write_file(m.offset, m.size, m.new)
    try:
        status, answer = s.driver.check(timeout, s.fresh)
    finally:
        s.write_file(m.offset, m.size, m.old)
        if s.read_file(m.offset, m.size) != m.old:
            raise RuntimeError(f"{s.name}: could not restore {m.describe()}")
    report = answer if status == "ok" else None
    error = None if status == "ok" else answer
    detected: Set[str] = set()
    flagged: Set[str] = set()
    if report is not None:
        for v in report["violations"]:
            if _vkey(v) in s.baseline_violations:
                continue
            flagged.add(v["rule"])
            if _covers(s, m, v):
                detected.add(v["rule"])
    return Outcome(m, broken, status, detected, flagged, error, report)


def prepare(name: str, workdir: Path, fresh: bool = False, timeout: float = 60) -> Subject:
    """Open fixture ``name`` for mutations (its working copy goes in ``workdir``)."""
    return Subject(name, workdir, fresh, timeout)


class Tally:
    """Counts over outcomes; see :meth:`to_json`."""

    def __init__(self, only: Optional[Sequence[str]] = None) -> None:
        self.only = "".join(f" --class {c}" for c in sorted(only or ()))
        self.mutations = 0
        self.targeted = 0
        self.detected = 0
        self.detected_by_expected_rule = 0
        self.crashes: List[Dict[str, Any]] = []
        self.refusals: List[Dict[str, Any]] = []
        self.missed: List[Dict[str, Any]] = []
        self.untargeted = 0
        self.untargeted_flagged = 0
        self.by_rule: Dict[str, Counter] = defaultdict(Counter)
        self.by_class: Dict[str, Counter] = defaultdict(Counter)
        self.untargeted_flagged_by_rule: Counter = Counter()
        self.untargeted_by_field: Counter = Counter()
        self.seconds = 0.0

    def add(self, fixture: str, seed: int, o: Outcome) -> None:
        m = o.mutation
        self.mutations += 1
        cls = self.by_class[m.klass]
        cls["mutations"] += 1
        where = {"fixture": fixture, "seed": seed, "index": m.index,
                 "mutation": m.describe(), "broke": sorted(o.broken),
                 "replay": f"python tools/mutate.py --fixture {fixture} --seed {seed} "
                           f"--index {m.index}{self.only} -v"}
        if o.status in ("crash", "hang"):
            self.crashes.append(dict(where, status=o.status, error=o.error))
            cls["crashes"] += 1
            return
        if o.status == "refused":
            self.refusals.append(dict(where, error=o.error))
            cls["refusals"] += 1
            return
        if o.broken:
            self.targeted += 1
            cls["targeted"] += 1
            if o.detected_by:
                self.detected += 1
                cls["detected"] += 1
            else:
                cls["missed"] += 1
                self.missed.append(dict(where, flagged=sorted(o.flagged_by),
                                        **({"error": o.error} if o.error else {})))
            if o.broken & o.detected_by:
                self.detected_by_expected_rule += 1
            for rule in o.broken:
                self.by_rule[rule]["broke"] += 1
                self.by_rule[rule]["detected"] += rule in o.detected_by
        else:
            self.untargeted += 1
            cls["untargeted"] += 1
            self.untargeted_by_field[f"{m.klass} {m.field}"] += 1
            if o.flagged_by:
                self.untargeted_flagged += 1
                cls["untargeted_flagged"] += 1
                self.untargeted_flagged_by_rule.update(o.flagged_by)

    def merge(self, other: "Tally") -> None:
        for k in ("mutations", "targeted", "detected", "detected_by_expected_rule",
                  "untargeted", "untargeted_flagged", "seconds"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.crashes += other.crashes
        self.refusals += other.refusals
        self.missed += other.missed
        for k, c in other.by_rule.items():
            self.by_rule[k].update(c)
        for k, c in other.by_class.items():
            self.by_class[k].update(c)
        self.untargeted_flagged_by_rule.update(other.untargeted_flagged_by_rule)
        self.untargeted_by_field.update(other.untargeted_by_field)

    def to_json(self) -> Dict[str, Any]:
        return {
            "mutations": self.mutations,
            "broke_an_invariant": self.targeted,
            "detected": self.detected,
            "detected_by_the_broken_rule": self.detected_by_expected_rule,
            "missed": self.missed,
            "crashes": self.crashes,
            "refusals": self.refusals,
            "untargeted": self.untargeted,
            "untargeted_flagged_anyway": self.untargeted_flagged,
            "untargeted_flagged_by_rule": dict(sorted(self.untargeted_flagged_by_rule.items())),
            "untargeted_by_field": dict(sorted(self.untargeted_by_field.items())),
            "per_rule": {r: dict(c) for r, c in sorted(self.by_rule.items())},
            "per_class": {k: dict(c) for k, c in sorted(self.by_class.items())},
            "seconds": round(self.seconds, 1),
        }


def run_subject(s: Subject, seed: int, indices: Sequence[int], timeout: int = 60,
                verbose: bool = False, only: Optional[Sequence[str]] = None) -> Tally:
    """Run mutations ``indices`` of ``seed`` on a prepared subject."""
    t0 = time.monotonic()
    tally = Tally(only)
    for i in indices:
        o = run_one(s, draw(s, seed, i, only), timeout)
        tally.add(s.name, seed, o)
        if verbose:
            _print_outcome(s.name, o)
    tally.seconds = time.monotonic() - t0
    return tally


def run(fixtures: Sequence[str], count: int, seed: int, indices: Optional[Sequence[int]] = None,
        fresh: bool = False, timeout: int = 60, verbose: bool = False,
        workdir: Optional[Path] = None,
        only: Optional[Sequence[str]] = None) -> Dict[str, Tally]:
    """Run the mutations; ``{fixture: Tally}`` (seconds include preparing the fixture)."""
    out: Dict[str, Tally] = {}
    with tempfile.TemporaryDirectory(prefix="drgn-vmemmap-mutate-", dir=workdir) as tmp:
        for name in fixtures:
            t0 = time.monotonic()
            s = prepare(name, Path(tmp), fresh, timeout)
            try:
                tally = run_subject(s, seed, indices if indices is not None else range(count),
                                    timeout, verbose, only)
            finally:
                s.close()
                os.unlink(s.path)
            tally.seconds = time.monotonic() - t0
            out[name] = tally
    return out


def _print_outcome(name: str, o: Outcome) -> None:
    m = o.mutation
    verdict = {"crash": "CRASH", "hang": "HANG", "refused": "refused"}.get(o.status)
    if verdict is None:
        if o.broken:
            verdict = ("detected by " + ",".join(sorted(o.detected_by)) if o.detected_by
                       else "MISSED")
        else:
            verdict = "untargeted" + (f" (flagged: {','.join(sorted(o.flagged_by))})"
                                      if o.flagged_by else "")
    broke = f" broke {','.join(sorted(o.broken))};" if o.broken else ""
    print(f"{name} {m.describe()}:{broke} {verdict}", file=sys.stderr)
    if o.error:
        print("  " + str(o.error).rstrip().replace("\n", "\n  "), file=sys.stderr)
    if o.report is not None and (o.status != "ok" or (o.broken and not o.detected_by)
                                 or os.environ.get("MUTATE_SHOW_VIOLATIONS")):
        for v in o.report["violations"]:
            print(f"  {v['rule']} {v['severity']} {v['pfn_start']:#x}-{v['pfn_end']:#x} "
                  f"section {v.get('section')} block {v.get('block')}: {v.get('found')}",
                  file=sys.stderr)
        for n in o.report["not_checked"]:
            print(f"  not checked: {n['rule']}: {n['reason']}", file=sys.stderr)


def _summary(results: Dict[str, Tally]) -> str:
    from tabulate import tabulate

    rows = []
    total = Tally()
    for name, t in results.items():
        total.merge(t)
        rows.append([name, t.mutations, t.targeted, t.detected, len(t.missed),
                     len(t.crashes), len(t.refusals), t.untargeted, t.untargeted_flagged,
                     f"{t.seconds:.1f}"])
    rows.append(["total", total.mutations, total.targeted, total.detected,
                 len(total.missed), len(total.crashes), len(total.refusals),
                 total.untargeted, total.untargeted_flagged, f"{total.seconds:.1f}"])
    text = tabulate(rows, headers=["fixture", "mutations", "broke an invariant", "detected",
                                   "missed", "crashes", "refusals", "untargeted",
                                   "untargeted, flagged", "seconds"])
    for name, t in results.items():
        per_class = [[k, c["mutations"], c["targeted"], c["detected"], c["missed"],
                      c["crashes"], c["refusals"], c["untargeted"], c["untargeted_flagged"]]
                     for k, c in sorted(t.by_class.items())]
        text += f"\n\n{name}, per class:\n" + tabulate(
            per_class, headers=["class", "mutations", "broke an invariant", "detected",
                                "missed", "crashes", "refusals", "untargeted",
                                "untargeted, flagged"])
    per_rule = [[r, c["broke"], c["detected"]] for r, c in sorted(total.by_rule.items())]
    text += "\n\n" + tabulate(per_rule, headers=["rule", "broken", "detected by it"])
    if total.untargeted_flagged_by_rule:
        text += "\n\nuntargeted mutations flagged anyway, by rule: " + ", ".join(
            f"{r} {n}" for r, n in sorted(total.untargeted_flagged_by_rule.items()))
    for kind, items in (("MISSED", total.missed), ("CRASH", total.crashes),
                        ("refused", total.refusals)):
        for it in items[:20]:
            text += f"\n{kind}: {it['fixture']} {it['mutation']}; replay: {it['replay']}"
            if it.get("error"):
                text += "\n  " + str(it["error"]).strip().splitlines()[-1]
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixture", action="append", metavar="NAME",
                   help="fixture to mutate (repeatable; default: every *-hotplug-basic)")
    p.add_argument("--count", type=int, default=100, help="mutations per fixture (default 100)")
    p.add_argument("--seed", type=int, default=1, help="seed (default 1)")
    p.add_argument("--index", type=int, action="append", metavar="I",
                   help="run only mutation I of the seed (repeatable): replay one")
    p.add_argument("--fresh", action="store_true",
                   help="have the worker open the mutated file afresh for every mutation "
                        "(slow; the default reuses one program and clears its caches)")
    p.add_argument("--timeout", type=int, default=60,
                   help="seconds per check (default 60); a longer check is a hang: the "
                        "worker is killed and restarted")
    p.add_argument("--class", dest="only", action="append", metavar="CLASS",
                   choices=[c for c, _ in CLASSES],
                   help="draw only from this target class (repeatable; default: all, "
                        "weighted as in CLASSES)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per mutation on stderr")
    args = p.parse_args(argv)
    fixtures = args.fixture or default_fixtures()
    if not fixtures:
        p.error("no fixtures")
    results = run(fixtures, args.count, args.seed, args.index, args.fresh, args.timeout,
                  args.verbose, only=args.only)
    total = Tally()
    for t in results.values():
        total.merge(t)
    if args.json:
        print(json.dumps({"seed": args.seed, "count": args.count,
                          "fixtures": {n: t.to_json() for n, t in results.items()},
                          "total": total.to_json()}, indent=1))
    else:
        print(_summary(results))
    return 1 if total.crashes or total.missed else 0


if __name__ == "__main__":
    # tools/mutate_dump.py imports this module as tools.mutate: one copy.
    sys.modules.setdefault("tools.mutate", sys.modules[__name__])
    sys.exit(main())
