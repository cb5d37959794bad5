#!/usr/bin/env python3
"""
Mutation corpus: corrupt a real dump one field at a time and check that the
checker never crashes and catches every corruption its rules are about.

For each fixture (default: every ``*-hotplug-basic``), an ELF copy of the
kdump-compressed dump is written once with :func:`tools.elfcore.write_elf`
(pages the dump lacks are left out, so the copy checks exactly like the
original; cached under ``~/.cache/drgn-vmemmap/mutate``), copied to a private
working file, and opened once.  Then, for mutation ``i`` of ``--count``, a
generator seeded with ``(--seed, fixture, i)`` (so any one mutation can be
replayed alone with ``--index i``) flips 1-3 bits of one field of one kernel
object, at the file offset of its physical address (from the PT_LOAD
headers), runs :func:`drgn_vmemmap.check` on the working file, and restores
the bytes: every mutation sees an otherwise pristine dump.

Bits: one, or 30% of the time two or three, in the same field; one time in
ten the first is the field's top (sign) bit, where signedness bugs hide.

Target classes (weights 35/20/20/25):

``vmemmap-page``
    a ``struct page`` of a self-hosted vmemmap frame (a pfn of
    ``[start, start + N)`` of a hot-plugged block, online or offline):
    ``flags`` (half the time a bit among ``PG_owner_priv_1``, ``PG_reserved``,
    ``PG_lru``, ``PG_head``, ``PG_swapbacked``), ``page_type``, ``_refcount``,
    ``mapping`` or ``compound_head`` (half the time bit 0, the tail bit).
``block-page``
    a ``struct page`` anywhere in a hot-plugged block, same fields.
``section``
    the ``section_mem_map`` word of a present ``mem_section``: its flag bits
    (below ``SECTION_MAP_LAST_BIT``), or one time in five its encoded mem_map.
``block``
    a ``struct memory_block``: ``state``, ``start_section_nr``, ``nid``, and
    ``nr_vmemmap_pages`` (5.13-6.5) or ``altmap->alloc``, ``free``,
    ``base_pfn``, ``end_pfn``, ``reserve`` (6.6+; blocks with an altmap).

The oracle (:func:`broken_rules`) says which rules of the catalogue a
mutation breaks, from the kernel's definitions, independently of the
checker's code: it evaluates the invariant on the object before and after,
and the mutation *broke an invariant* for a rule when that rule's invariant
held before and fails after.  Per class:

* ``vmemmap-page`` of an ONLINE block: ``vmemmap-unmarked`` when a
  per-page marker is lost (``PG_vmemmap_self_hosted``; on kernels patched
  with it, the ``PGTY_vmemmap`` page type) or the flags become all ones;
  ``vmemmap-page-state`` when, flags not all ones, the page gets a page type
  other than ``PGTY_vmemmap`` (the kernel's ``page_has_type()``:
  ``(int)page_type < PGTY_mapcount_underflow << 24`` on 6.12+ encodings,
  ``< PAGE_MAPCOUNT_RESERVE`` before), a refcount other than 1, a mapping,
  ``PG_lru``, ``PG_head`` or a tail bit, a node (top ``NODES_SHIFT`` bits
  of ``flags``, from the kernel's config) other than its block's in the
  manifest, a zone (the ``ZONES_SHIFT`` bits below) or a ``PG_reserved``
  other than the clean dump's.  Offline blocks: nothing (their memmap is
  stale).
* ``block-page`` outside the self-hosted range, in an online section of an
  online block: ``marker-stray`` when ``PG_owner_priv_1`` becomes set with
  neither ``PG_swapbacked`` (swapcache) nor a file mapping (``PG_checked``),
  or the page type becomes ``PGTY_vmemmap``.
* ``section`` of a block whose state is ONLINE or OFFLINE: ``section-state``
  when it stops being present with a mem_map or ``SECTION_IS_ONLINE``
  stops matching the state; and, present: ``early-self-hosted`` when a
  block recording vmemmap pages gets an early / PREINIT / ZONE_DEVICE
  section; ``block-geometry`` when the encoded mem_map stops being
  ``vmemmap``; ``section-marker`` when ``SECTION_CANNOT_OPTIMIZE_VMEMMAP``
  or ``SECTION_USE_VMEMMAP`` (patched kernels) stops being set exactly on
  the sections of self-hosted blocks.
* ``block``: ``block-geometry`` when ``start_section_nr`` is not its own;
  ``section-state`` when the state becomes ONLINE or OFFLINE and disagrees
  with its sections' ``SECTION_IS_ONLINE``; ``vmemmap-page-state`` when an
  online self-hosted block's ``nid`` stops being its pages' node;
  ``early-self-hosted`` when a boot block records vmemmap pages;
  ``altmap-mismatch`` when a hot-plugged block's record stops matching the
  self-hosted frames of the manifest's ground truth (``alloc`` /
  ``nr_vmemmap_pages`` = frames, ``base_pfn`` = first pfn, ``end_pfn`` = last
  pfn, ``reserve`` = 0, ``free`` = ``alloc``, or ``>= alloc`` in force mode).

Everything else (other flag bits, ``nid``, a state that is not a state,
clearing ``SECTION_IS_EARLY``, ...) is *untargeted*: no rule is about it.
Untargeted mutations that still produce violations are counted as
"flagged anyway" per rule (e.g. a boot block that loses ``SECTION_IS_EARLY``
looks hot-plugged and self-hosted).

A mutation is *detected* when the report has a violation that the clean
copy's report lacks and whose pfn range covers the mutated pfn (pages), the
section's pfns or number (sections), or the block's pfns or id (blocks).  A
*crash* is any exception from :func:`~drgn_vmemmap.check` (or a check that
takes longer than ``--timeout`` s); a *refusal* is a clean
:class:`~drgn_vmemmap.target.TargetError` (the CLI's exit status 2 with one
line), which is acceptable.

Usage: ``python tools/mutate.py [--fixture NAME]... [--count N] [--seed S]
[--index I]... [--fresh] [--json] [-v]``.  Exit status 1 on a crash or a
targeted mutation missed.
"""

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import drgn  # noqa: E402
from drgn import FaultError, Program, offsetof, sizeof  # noqa: E402
from drgn.helpers.linux.mm import decode_memory_block_state_value, follow_phys  # noqa: E402

from drgn_vmemmap.check import check  # noqa: E402
from drgn_vmemmap.features import features  # noqa: E402
from drgn_vmemmap.model import memory_map  # noqa: E402
from drgn_vmemmap.report import Report  # noqa: E402
from drgn_vmemmap.target import TargetError, cache_dir, decompressed, open_target  # noqa: E402
from tools.elfcore import Segment, file_offset, load_segments, write_elf  # noqa: E402

__all__ = ("Mutation", "Outcome", "Subject", "block_mutation", "broken_rules", "draw", "main",
           "page_mutation", "prepare", "run", "run_one", "run_subject", "section_mutation")

FIXTURES = ROOT / "vmcores" / "fixtures"
KERNELS = ROOT / "vmcores" / "kernels"
FACTORY_BUILD = Path(os.environ.get(
    "DRGN_VMEMMAP_FACTORY_BUILD",
    os.path.expanduser("~/.cache/drgn-vmemmap-factory/build")))
#: Bump when the ELF copy's format changes.
ELF_VERSION = 1

CLASSES = (("vmemmap-page", 35), ("block-page", 20), ("section", 20), ("block", 25))
PAGE_FIELDS = (("flags", 35), ("page_type", 20), ("refcount", 15), ("mapping", 15),
               ("compound_head", 15))
#: How often the first bit flipped is a field's top (sign) bit.
TOP_BIT = 0.1
INTERESTING_FLAGS = ("PG_owner_priv_1", "PG_reserved", "PG_lru", "PG_head", "PG_swapbacked")
_EARLY_SECTION_FLAGS = ("IS_EARLY", "IS_VMEMMAP_PREINIT", "TAINT_ZONE_DEVICE")
_SECTION_MARKERS = ("CANNOT_OPTIMIZE_VMEMMAP", "USE_VMEMMAP")


# --- the subject: one fixture, its ELF working copy, its clean state --------------------


def _dump_file(name: str, manifest: Dict[str, Any]) -> Path:
    return FIXTURES / manifest.get("dump", {}).get("file", f"{name}.vmcore")


def default_fixtures() -> List[str]:
    """Every ``*-hotplug-basic`` fixture whose dump is present."""
    out = []
    for p in sorted(FIXTURES.glob("*-hotplug-basic.json")):
        if _dump_file(p.stem, json.loads(p.read_text())).exists():
            out.append(p.stem)
    return out


def _vmlinux(manifest: Dict[str, Any]) -> str:
    key = manifest["kernel"]["key"]
    for path in (KERNELS / key / "vmlinux.xz", FACTORY_BUILD / key / "vmlinux"):
        if path.exists():
            return decompressed(str(path))
    raise FileNotFoundError(f"no vmlinux for kernel {key!r}")


def elf_copy(vmcore: Path, vmlinux: str) -> Path:
    """The cached ELF copy (with holes) of ``vmcore``, written if needed."""
    st = vmcore.stat()
    key = hashlib.sha256(f"{vmcore.resolve()}:{st.st_size}:{st.st_mtime_ns}:{ELF_VERSION}"
                         .encode()).hexdigest()[:16]
    out = cache_dir() / "mutate" / f"{vmcore.stem}.{key}.elf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        write_elf(open_target(vmcore=str(vmcore), symbols=[vmlinux]), tmp, holes=True)
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


class Subject:
    """A fixture ready for mutations: working file, program, clean report."""

    def __init__(self, name: str, workdir: Path, fresh: bool = False) -> None:
        self.name = name
        self.manifest = json.loads((FIXTURES / f"{name}.json").read_text())
        self.vmlinux = _vmlinux(self.manifest)
        vmcore = _dump_file(name, self.manifest)
        self.path = workdir / f"{name}.elf"
        sparse_copy(elf_copy(vmcore, self.vmlinux), self.path)
        self.segments: List[Segment] = load_segments(self.path)
        self.fresh = fresh
        self.fd = os.open(self.path, os.O_RDWR)
        self.prog = open_target(vmcore=str(self.path), symbols=[self.vmlinux])
        prog = self.prog
        self.baseline: Report = check(prog)
        self.baseline_violations = set(self.baseline.violations)
        self.f = features(prog)
        self.mm = memory_map(prog)
        self.init_mm = prog["init_mm"].address_of_()
        f = self.f
        # Ground truth: the manifest's (sysfs), checked against the clean report.
        # Per block, the frames backing its struct pages and its vmemmap area
        # (the frames, plus the pageblock padding memmap_on_memory=force
        # reserves and marks: the guest saw it in kpageflags).
        truth = self.manifest["truth"]["self_hosted"]
        self.frames: Dict[int, int] = {r["block"]: r["nr_pages"] for r in truth}
        self.self_hosted: Dict[int, Tuple[int, int]] = {
            r["block"]: (r["start_pfn"], r["start_pfn"] + r.get("reserved_pages", r["nr_pages"]))
            for r in truth}
        found = {r.block: (r.start_pfn, r.frames, r.start_pfn + r.reserved_pages)
                 for r in self.baseline.ranges}
        want = {b: (lo, self.frames[b], hi) for b, (lo, hi) in self.self_hosted.items()}
        if found != want:
            raise RuntimeError(f"{name}: the ELF copy's ranges {found} are not the "
                               f"manifest's {want}")
        self.hotplugged = sorted(
            b.id for b in self.mm.blocks.values()
            if any(True for _ in self.mm.block_sections(b))
            and not any(s.has("IS_EARLY") for s in self.mm.block_sections(b)))
        self.page_types = _kernel_page_types(prog)
        #: ``PGTY_vmemmap`` (a vmemmap page type, in kernels patched with the
        #: 2019 marking scheme on 6.12+ encodings), else None.
        try:
            self.vmemmap_type: Optional[int] = prog.constant("PGTY_vmemmap").value_()
        except LookupError:
            self.vmemmap_type = None
        self.mb_type = prog.type("struct memory_block")
        self.altmap_type = (prog.type("struct vmem_altmap")
                            if self.mb_type.has_member("altmap") else None)
        self.flag_masks = f.section_flags.masks
        self.map_last_bit = (~f.section_flags.map_mask & 0xFFFFFFFFFFFFFFFF).bit_length()
        self.pps = f.pages_per_section
        self.ppb = f.pages_per_block
        self.truth_node = {b["id"]: b["node"] for b in self.manifest["truth"]["blocks"]}
        self.nodes_shift, self.zones_shift = _node_zone_widths(prog, self.manifest)
        # The clean struct pages of the self-hosted ranges (the oracle's
        # reference for PG_reserved, which the kernel sets or clears by version).
        self.clean_pages: Dict[int, Dict[str, int]] = {}
        for start, end in self.self_hosted.values():
            for pfn in range(start, end):
                try:
                    self.clean_pages[pfn] = self.page_fields(pfn)
                except FaultError:
                    pass
        for bid, (start, end) in self.self_hosted.items():
            if self.mm.blocks[bid].state == "MEM_ONLINE" and self.nodes_shift:
                nodes = {self.page_node(self.clean_pages[p]["flags"])
                         for p in range(start, end) if p in self.clean_pages}
                if nodes != {self.truth_node[bid]}:  # the oracle's layout is wrong
                    raise RuntimeError(f"{name}: block {bid}'s vmemmap pages are on nodes "
                                       f"{nodes} by NODES_SHIFT {self.nodes_shift}, not on "
                                       f"node {self.truth_node[bid]}")

    def close(self) -> None:
        os.close(self.fd)

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
        lay = self.f.layout
        data = self.prog.read(self.f.vmemmap_base + pfn * lay.size, lay.size)

        def word(off: int, size: int) -> int:
            return int.from_bytes(data[off:off + size], "little")

        return {"flags": word(lay.flags, 8), "page_type": word(lay.mapcount, 4),
                "refcount": word(lay.refcount, 4), "mapping": word(lay.mapping, 8),
                "compound_head": word(lay.compound_head, 8)}

    def page_type_of(self, page_type: int) -> Tuple[bool, bool]:
        """(the kernel's ``page_has_type()``, and the type is ``PGTY_vmemmap``)."""
        _, limit = self.page_types
        has_type = _s32(page_type) < limit
        return has_type, (has_type and self.vmemmap_type is not None
                          and (page_type & 0xFFFFFFFF) >> 24 == self.vmemmap_type)

    def page_node(self, flags: int) -> Optional[int]:
        """The node in a struct page's flags (NODES_PGSHIFT = 64 - NODES_WIDTH)."""
        return flags >> (64 - self.nodes_shift) if self.nodes_shift else None

    def page_zone(self, flags: int) -> Optional[int]:
        """The zone index in a struct page's flags (just below the node)."""
        if not self.zones_shift:
            return None
        return flags >> (64 - self.nodes_shift - self.zones_shift) & ((1 << self.zones_shift) - 1)

    def self_hosted_block(self, pfn: int) -> Optional[int]:
        for bid, (s, e) in self.self_hosted.items():
            if s <= pfn < e:
                return bid
        return None


def _node_zone_widths(prog: Program, manifest: Dict[str, Any]) -> Tuple[int, int]:
    """
    (NODES_WIDTH, ZONES_WIDTH) of ``page->flags`` (include/linux/page-flags-layout.h;
    SPARSEMEM_VMEMMAP keeps no section there, so the node is the top field):
    NODES_SHIFT from the kernel's config (``vmcores/kernels/KEY/config``), else
    from ``MAX_NUMNODES``; ZONES_SHIFT from ``MAX_NR_ZONES``.
    """
    nodes = None
    key = manifest["kernel"]["key"]
    config = KERNELS / key / "config"
    if not config.exists():
        config = FACTORY_BUILD / key / "config"
    if config.exists():
        text = config.read_text()
        if "CONFIG_NUMA=y" not in text:
            nodes = 0
        else:
            for line in text.splitlines():
                if line.startswith("CONFIG_NODES_SHIFT="):
                    nodes = int(line.split("=", 1)[1])
    if nodes is None:
        length = prog["node_data"].type_.length or 1
        nodes = (length - 1).bit_length()
    zones = len([e for e in prog.type("enum zone_type").enumerators
                 if e.name != "__MAX_NR_ZONES"])
    return nodes, 0 if zones <= 1 else 1 if zones <= 2 else 2 if zones <= 4 else 3


def _kernel_page_types(prog: Program) -> Tuple[str, int]:
    """
    How this kernel's ``page_has_type()`` decides: ``("pgty", limit)`` with
    ``limit = PGTY_mapcount_underflow << 24`` (Linux 6.12+: ``(int)page_type <
    limit``) or ``("reserve", PAGE_MAPCOUNT_RESERVE)`` (before: ``(int)page_type
    < PAGE_MAPCOUNT_RESERVE``, -128 while it was a macro).
    """
    try:
        enum = {e.name: e.value for e in prog.type("enum pagetype").enumerators}
    except LookupError:
        enum = {}
    if "PGTY_mapcount_underflow" in enum:
        limit = enum["PGTY_mapcount_underflow"] << 24
        return ("pgty", limit - (1 << 32) if limit & 0x80000000 else limit)
    reserve = enum.get("PAGE_MAPCOUNT_RESERVE", -128)
    if reserve > 0x7FFFFFFF:
        reserve -= 1 << 32
    return ("reserve", reserve)


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


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
    #: Object context for the oracle (the page's other fields, the block's record).
    context: Dict[str, Any]

    def describe(self) -> str:
        what = {"vmemmap-page": "pfn", "block-page": "pfn", "section": "section",
                "block": "block"}[self.klass]
        return (f"#{self.index} {self.klass} {what} {self.target:#x} {self.field}: "
                f"{self.old:#x} -> {self.new:#x} (bits {', '.join(map(str, self.bits))})")


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
    lay = s.f.layout
    return {"flags": (lay.flags, 8), "page_type": (lay.mapcount, 4),
            "refcount": (lay.refcount, 4), "mapping": (lay.mapping, 8),
            "compound_head": (lay.compound_head, 8)}[field]


def page_mutation(s: Subject, index: int, klass: str, pfn: int, field: str,
                  bits: Sequence[int]) -> Optional[Mutation]:
    """Flip ``bits`` of ``field`` of the struct page of ``pfn`` (None if not in the file)."""
    off, size = _page_field(s, field)
    offset = s.offset_of(s.f.vmemmap_base + pfn * s.f.layout.size + off, size)
    if offset is None:
        return None
    try:
        context = s.page_fields(pfn)
    except FaultError:
        return None
    old = s.read_file(offset, size)
    return Mutation(index, klass, pfn, field, offset, size, old, _flipped(old, bits),
                    tuple(sorted(bits)), context)


def section_mutation(s: Subject, index: int, nr: int, bits: Sequence[int]) -> Optional[Mutation]:
    """Flip ``bits`` of ``mem_section[nr].section_mem_map``."""
    offset = s.offset_of(s.mm.sections[nr].address, 8)  # the first member
    if offset is None:
        return None
    field = "flags" if all(b < s.map_last_bit for b in bits) else "mem_map"
    old = s.read_file(offset, 8)
    return Mutation(index, "section", nr, field, offset, 8, old, _flipped(old, bits),
                    tuple(sorted(bits)), {})


def block_field(s: Subject, bid: int, field: str) -> Tuple[int, int]:
    """(kernel address, size) of ``field`` (``"state"``, ``"altmap.alloc"``...) of block ``bid``."""
    b = s.mm.blocks[bid]
    if field.startswith("altmap."):
        member = field.split(".", 1)[1]
        base = drgn.Object(s.prog, "struct memory_block", address=b.address).altmap.value_()
        t = s.altmap_type
    else:
        member, base, t = field, b.address, s.mb_type
    return base + offsetof(t, member), sizeof(t.member(member).type)


def block_mutation(s: Subject, index: int, bid: int, field: str,
                   bits: Sequence[int]) -> Optional[Mutation]:
    """Flip ``bits`` of ``field`` of memory block ``bid``."""
    b = s.mm.blocks[bid]
    address, size = block_field(s, bid, field)
    offset = s.offset_of(address, size)
    if offset is None:
        return None
    old = s.read_file(offset, size)
    raw = drgn.Object(s.prog, "struct memory_block", address=b.address)
    context = {"state_value": raw.state.value_(), "start_section_nr": b.start_section_nr,
               "nid": raw.nid.value_() & 0xFFFFFFFF,
               "vmemmap_pages": b.vmemmap_pages,
               # The model makes a 5.13-6.5 nr_vmemmap_pages look like an altmap:
               # here only a real struct vmem_altmap counts.
               "altmap": b.altmap._asdict() if b.altmap is not None
               and s.altmap_type is not None else None}
    return Mutation(index, "block", bid, field, offset, size, old, _flipped(old, bits),
                    tuple(sorted(bits)), context)


def _draw_page(s: Subject, rng: random.Random, index: int, klass: str) -> Optional[Mutation]:
    if klass == "vmemmap-page":
        if not s.self_hosted:
            return None
        start, end = s.self_hosted[rng.choice(sorted(s.self_hosted))]
    else:
        if not s.hotplugged:
            return None
        bid = rng.choice(s.hotplugged)
        start, end = bid * s.ppb, (bid + 1) * s.ppb
    pfn = rng.randrange(start, end)
    field = _weighted(rng, PAGE_FIELDS)
    width = _page_field(s, field)[1] * 8
    if rng.random() < TOP_BIT:
        first = width - 1
    elif field == "flags" and rng.random() < 0.5:
        names = [n for n in INTERESTING_FLAGS if n in s.f.page_flags]
        first = s.f.page_flags[rng.choice(names)]
    elif field == "compound_head" and rng.random() < 0.5:
        first = 0
    else:
        first = rng.randrange(width)
    return page_mutation(s, index, klass, pfn, field, _bits(rng, width, first))


def _draw_section(s: Subject, rng: random.Random, index: int) -> Optional[Mutation]:
    nr = rng.choice(sorted(s.mm.sections))
    if rng.random() < 0.8:
        bits = _bits(rng, s.map_last_bit, rng.randrange(s.map_last_bit))
    else:
        first = 63 if rng.random() < TOP_BIT else rng.randrange(s.map_last_bit, 64)
        bits = _bits(rng, 64, first, lo=s.map_last_bit)
    return section_mutation(s, index, nr, bits)


def _block_fields(s: Subject, b) -> List[Tuple[str, int]]:
    fields = [("state", 25), ("start_section_nr", 15), ("nid", 10)]
    if s.mb_type.has_member("nr_vmemmap_pages"):
        fields.append(("nr_vmemmap_pages", 50))
    elif s.altmap_type is not None and b.altmap is not None:
        fields += [("altmap.alloc", 15), ("altmap.free", 15), ("altmap.base_pfn", 10),
                   ("altmap.end_pfn", 5), ("altmap.reserve", 5)]
    return fields


def _draw_block(s: Subject, rng: random.Random, index: int) -> Optional[Mutation]:
    hot = [bid for bid in s.hotplugged if bid in s.mm.blocks]
    boot = sorted(set(s.mm.blocks) - set(hot))
    pool = hot if (hot and (rng.random() < 0.7 or not boot)) else boot
    b = s.mm.blocks[rng.choice(pool)]
    if b.error:
        return None
    field = _weighted(rng, _block_fields(s, b))
    width = block_field(s, b.id, field)[1] * 8
    # Low bits mostly: flipping bit 60 of a count is a less telling corruption.
    if rng.random() < TOP_BIT:
        first = width - 1
    elif field in ("state", "nid"):
        first = rng.randrange(min(width, 8)) if rng.random() < 0.8 else rng.randrange(width)
    elif field in ("altmap.base_pfn", "altmap.end_pfn"):
        first = rng.randrange(min(width, 40))
    else:
        first = rng.randrange(min(width, 16)) if rng.random() < 0.8 else rng.randrange(width)
    return block_mutation(s, index, b.id, field, _bits(rng, width, first))


def draw(s: Subject, seed: int, index: int) -> Mutation:
    """Mutation ``index`` of ``seed`` for this subject (deterministic)."""
    rng = random.Random(f"{seed}/{s.name}/{index}")
    for _ in range(100):
        klass = _weighted(rng, CLASSES)
        if klass in ("vmemmap-page", "block-page"):
            m = _draw_page(s, rng, index, klass)
        elif klass == "section":
            m = _draw_section(s, rng, index)
        else:
            m = _draw_block(s, rng, index)
        if m is not None and m.new != m.old:
            return m
    raise RuntimeError(f"{s.name}: no mutation target found for #{index}")


# --- the oracle -----------------------------------------------------------------------


def _bit(value: int, bit: Optional[int]) -> bool:
    return bit is not None and bool(value >> bit & 1)


def _page_broken(s: Subject, pfn: int, page: Dict[str, int]) -> Set[str]:
    """The rules whose invariant ``page`` (the struct page of ``pfn``) violates."""
    pf = s.f.page_flags
    flags = page["flags"]
    out: Set[str] = set()
    bid = s.self_hosted_block(pfn)
    if bid is not None:
        block = s.mm.blocks.get(bid)
        if block is None or block.state != "MEM_ONLINE":
            return out  # offline: uninitialised or stale, not checked
        if flags == 0xFFFFFFFFFFFFFFFF:
            return {"vmemmap-unmarked"}  # poisoned
        if "PG_vmemmap_self_hosted" in pf and not _bit(flags, pf["PG_vmemmap_self_hosted"]):
            out.add("vmemmap-unmarked")
        has_type, is_vmemmap = s.page_type_of(page["page_type"])
        if s.vmemmap_type is not None and not is_vmemmap:
            out.add("vmemmap-unmarked")  # the vmemmap page type is a marker too
        clean = s.clean_pages[pfn]
        if ((has_type and not is_vmemmap) or page["refcount"] != 1 or page["mapping"] != 0
                or s.page_node(flags) != s.truth_node[bid]
                or s.page_zone(flags) != s.page_zone(clean["flags"])
                or page["compound_head"] & 1 or _bit(flags, pf.get("PG_head"))
                or _bit(flags, pf.get("PG_lru"))
                or _bit(flags, pf["PG_reserved"]) != _bit(clean["flags"], pf["PG_reserved"])):
            out.add("vmemmap-page-state")
        return out
    # Outside the self-hosted ranges: only marker-stray looks, and only where
    # it scans (online sections of online blocks).
    sec = s.mm.section_of(pfn)
    block = s.mm.block_of(pfn)
    if sec is None or not sec.has("HAS_MEM_MAP") or not sec.has("IS_ONLINE"):
        return out
    if block is not None and block.state != "MEM_ONLINE":
        return out
    if flags == 0xFFFFFFFFFFFFFFFF:
        return out
    marker = pf.get("PG_vmemmap_self_hosted")
    file_mapped = page["mapping"] != 0 and page["mapping"] & 3 == 0
    if _bit(flags, marker) and not _bit(flags, pf.get("PG_swapbacked")) and not file_mapped:
        out.add("marker-stray")
    if s.page_type_of(page["page_type"])[1]:
        out.add("marker-stray")  # the vmemmap page type has no alias
    return out


def _section_broken(s: Subject, nr: int, word: int) -> Set[str]:
    m = s.flag_masks
    flags = word & ((1 << s.map_last_bit) - 1)
    mem_map = word & ~((1 << s.map_last_bit) - 1)
    present = bool(flags & m["MARKED_PRESENT"])
    has_map = bool(flags & m["HAS_MEM_MAP"])
    block = s.mm.blocks.get(nr // s.f.sections_per_block)
    out: Set[str] = set()
    if block is not None and not block.error and block.state in ("MEM_ONLINE", "MEM_OFFLINE"):
        if not present or not has_map:
            out.add("section-state")
        elif bool(flags & m["IS_ONLINE"]) != (block.state == "MEM_ONLINE"):
            out.add("section-state")
    if present:
        early = any(flags & m[n] for n in _EARLY_SECTION_FLAGS if n in m)
        if block is not None and block.vmemmap_pages and early:
            out.add("early-self-hosted")
        if has_map and mem_map != s.f.vmemmap_base:
            out.add("block-geometry")
        # Section flags marking a self-hosted memmap (never-merged schemes):
        # set exactly on the sections of self-hosted blocks.
        for name in _SECTION_MARKERS:
            if name in m and bool(flags & m[name]) != (nr // s.f.sections_per_block
                                                       in s.self_hosted):
                out.add("section-marker")
    return out


def _block_broken(s: Subject, bid: int, values: Dict[str, Any]) -> Set[str]:
    out: Set[str] = set()
    spb = s.f.sections_per_block
    if values["start_section_nr"] != bid * spb:
        out.add("block-geometry")
    try:
        state = decode_memory_block_state_value(s.prog, values["state"])
    except Exception:  # not a state at all
        state = None
    sections = [sec for sec in (s.mm.sections.get(nr) for nr in range(bid * spb, (bid + 1) * spb))]
    if state in ("MEM_ONLINE", "MEM_OFFLINE"):
        for sec in sections:
            if sec is not None and sec.has("IS_ONLINE") != (state == "MEM_ONLINE"):
                out.add("section-state")
    if state == "MEM_ONLINE" and bid in s.self_hosted and s.nodes_shift \
            and values["nid"] != s.truth_node[bid]:
        # The block's vmemmap pages carry its true node in their flags.
        out.add("vmemmap-page-state")
    altmap = values.get("altmap")
    recorded = values.get("nr_vmemmap_pages")
    if altmap is not None:
        recorded = altmap["free"]
    early = any(sec is not None and any(sec.has(n) for n in _EARLY_SECTION_FLAGS)
                for sec in sections)
    if early and recorded:
        out.add("early-self-hosted")
    if bid in s.hotplugged:
        start, end = bid * s.ppb, (bid + 1) * s.ppb
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
    elif m.field == "nr_vmemmap_pages":
        values["nr_vmemmap_pages"] = value
    elif m.field == "start_section_nr":
        values["start_section_nr"] = value
    elif m.field == "state":
        values["state"] = value
    elif m.field == "nid":
        values["nid"] = value
    return values


def broken_rules(s: Subject, m: Mutation) -> Set[str]:
    """The rules whose invariant held before mutation ``m`` and fails after."""
    if m.klass in ("vmemmap-page", "block-page"):
        before = dict(m.context)
        after = dict(m.context)
        after[m.field] = m.new
        return _page_broken(s, m.target, after) - _page_broken(s, m.target, before)
    if m.klass == "section":
        return _section_broken(s, m.target, m.new) - _section_broken(s, m.target, m.old)
    before = _block_values(m, m.old)
    after = _block_values(m, m.new)
    return _block_broken(s, m.target, after) - _block_broken(s, m.target, before)


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
    report: Optional[Report]


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def _covers(s: Subject, m: Mutation, v) -> bool:
    if m.klass in ("vmemmap-page", "block-page"):
        return v.pfn_start <= m.target < v.pfn_end
    if m.klass == "section":
        lo, hi = m.target * s.pps, (m.target + 1) * s.pps
        return v.section == m.target or (v.pfn_start < hi and lo < v.pfn_end)
    lo, hi = m.target * s.ppb, (m.target + 1) * s.ppb
    return v.block == m.target or (v.pfn_start < hi and lo < v.pfn_end)


def _check(s: Subject, timeout: int) -> Report:
    if s.fresh:
        prog = open_target(vmcore=str(s.path), symbols=[s.vmlinux])
    else:
        prog = s.prog
        prog.cache.clear()  # the checker's (and drgn helpers') memoised state
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        return check(prog)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_one(s: Subject, m: Mutation, timeout: int = 60) -> Outcome:
    """Apply ``m``, check, restore; classify the result."""
    broken = broken_rules(s, m)
    s.write_file(m.offset, m.size, m.new)
    report = None
    error = None
    try:
        report = _check(s, timeout)
        status = "ok"
    except TargetError as e:
        status, error = "refused", str(e)
    except _Hang:
        status, error = "hang", f"check took longer than {timeout} s"
    except Exception as e:
        status = "crash"
        error = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    finally:
        s.write_file(m.offset, m.size, m.old)
        if s.read_file(m.offset, m.size) != m.old:
            raise RuntimeError(f"{s.name}: could not restore {m.describe()}")
    detected: Set[str] = set()
    flagged: Set[str] = set()
    if report is not None:
        for v in report.violations:
            if v in s.baseline_violations:
                continue
            flagged.add(v.rule)
            if _covers(s, m, v):
                detected.add(v.rule)
    return Outcome(m, broken, status, detected, flagged, error, report)


def prepare(name: str, workdir: Path, fresh: bool = False) -> Subject:
    """Open fixture ``name`` for mutations (its working copy goes in ``workdir``)."""
    return Subject(name, workdir, fresh)


class Tally:
    """Counts over outcomes; see :meth:`to_json`."""

    def __init__(self) -> None:
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
                           f"--index {m.index} -v"}
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
                self.missed.append(dict(where, flagged=sorted(o.flagged_by)))
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
                verbose: bool = False) -> Tally:
    """Run mutations ``indices`` of ``seed`` on a prepared subject."""
    t0 = time.monotonic()
    tally = Tally()
    for i in indices:
        o = run_one(s, draw(s, seed, i), timeout)
        tally.add(s.name, seed, o)
        if verbose:
            _print_outcome(s.name, o)
    tally.seconds = time.monotonic() - t0
    return tally


def run(fixtures: Sequence[str], count: int, seed: int, indices: Optional[Sequence[int]] = None,
        fresh: bool = False, timeout: int = 60, verbose: bool = False,
        workdir: Optional[Path] = None) -> Dict[str, Tally]:
    """Run the mutations; ``{fixture: Tally}`` (seconds include preparing the fixture)."""
    out: Dict[str, Tally] = {}
    with tempfile.TemporaryDirectory(prefix="drgn-vmemmap-mutate-", dir=workdir) as tmp:
        for name in fixtures:
            t0 = time.monotonic()
            s = prepare(name, Path(tmp), fresh)
            try:
                tally = run_subject(s, seed, indices if indices is not None else range(count),
                                    timeout, verbose)
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
        print("  " + o.error.rstrip().replace("\n", "\n  "), file=sys.stderr)
    if o.report is not None and (o.status != "ok" or (o.broken and not o.detected_by)
                                 or os.environ.get("MUTATE_SHOW_VIOLATIONS")):
        for v in o.report.violations:
            print(f"  {v.rule} {v.severity} {v.pfn_start:#x}-{v.pfn_end:#x} section "
                  f"{v.section} block {v.block}: {v.found}", file=sys.stderr)
        for n in o.report.not_checked:
            print(f"  not checked: {n.rule}: {n.reason}", file=sys.stderr)


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
                text += "\n  " + it["error"].strip().splitlines()[-1]
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
                   help="open the mutated file afresh for every mutation (slow; the default "
                        "reuses one program and clears its caches)")
    p.add_argument("--timeout", type=int, default=60, help="seconds per check (default 60)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per mutation on stderr")
    args = p.parse_args(argv)
    fixtures = args.fixture or default_fixtures()
    if not fixtures:
        p.error("no fixtures")
    results = run(fixtures, args.count, args.seed, args.index, args.fresh, args.timeout,
                  args.verbose)
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
    sys.exit(main())
