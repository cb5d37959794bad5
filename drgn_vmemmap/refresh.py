"""
Refresh
-------

:class:`LiveModel` keeps the model of a live kernel (the memory map and the
page-table backing of the vmemmap) from one look to the next and refreshes
it in place, re-reading and re-deriving only what changed.  ``watch`` uses
it to decide when to re-check and hands it to
:func:`~drgn_vmemmap.check.check`, whose rules then re-read only struct
pages (the markers they judge).

Each :meth:`LiveModel.refresh` reads, in bulk:

* ``uevent_seqnum`` and the hotplug locks (:func:`~drgn_vmemmap.live.hotplug_epoch`)
  and the ``mem_section`` root pages.  The memory map (sections and blocks) is
  read again only when one of them moved: the kernel sends a uevent for
  every block added, removed, onlined or offlined, under
  ``device_hotplug_lock``, and a section's word changes only in its root
  page;
* every page-table page the last walk of the vmemmap used, compared with
  what it held.  The vmemmap is walked and classified again only when one
  differs (or the memory map changed).  This is how HugeTLB vmemmap
  optimisation is seen: remapping a folio's vmemmap, or restoring it,
  rewrites a PTE page and moves no ``uevent_seqnum``;
* the ``flags`` and ``page_type`` words of the struct pages of the frames
  that back the memmap of hot-plugged memory (where
  ``PG_vmemmap_self_hosted``, ``PG_vmemmap`` and ``PG_memmap`` live), as
  a digest.  Their size is 1/64 of those frames' memmap, which is 1/64 of
  what a check reads.

Nothing is kept but the current model, the digest and the page-table pages
the current walk used (the walker drops the others after each walk), so
memory is bounded by the size of the model, however long it runs.

:meth:`LiveModel.verify` rebuilds the model from scratch and says whether
the refreshed one differed: ``watch --verify-every`` runs it as a safety
net (and the tests at every settled re-check).
"""

import hashlib
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
from drgn import FaultError, PlatformFlags, Program, TypeKind

from . import backing as _backing
from .live import Epoch, hotplug_epoch, snapshot
from .model import MemoryMap, memory_map
from .pagetable import PageTableWalker, walker_for
from .scan import scan_pfns

__all__ = ("Changes", "LiveModel")


class Changes(NamedTuple):
    """What one :meth:`LiveModel.refresh` found changed since the last."""

    #: ``uevent_seqnum`` moved or a hotplug lock is (or was) held.
    epoch: bool
    #: The memory map was read again and differs (sections or blocks).
    memory_map: bool
    #: Page-table pages under the vmemmap whose entries changed.
    page_tables: int
    #: The flags or page types of the memmap frames' struct pages changed.
    markers: bool

    def __bool__(self) -> bool:
        return self.epoch or self.memory_map or bool(self.page_tables) or self.markers

    def __or__(self, other: object) -> "Changes":
        if not isinstance(other, Changes):
            return NotImplemented
        return Changes(self.epoch or other.epoch, self.memory_map or other.memory_map,
                       self.page_tables + other.page_tables, self.markers or other.markers)

    def reasons(self) -> List[str]:
        out = []
        if self.epoch:
            out.append("uevent")
        if self.memory_map:
            out.append("memory map")
        if self.page_tables:
            out.append(f"{self.page_tables} page-table page(s)")
        if self.markers:
            out.append("markers")
        return out


NOTHING = Changes(False, False, 0, False)


def _roots(prog: Program) -> Optional[List[Tuple[int, int]]]:
    """``(address, bytes)`` of the ``mem_section`` root array and of every
    allocated root (SPARSEMEM_EXTREME), or of the static array; None if the
    kernel's layout is not one of those."""
    try:
        ms = prog["mem_section"]
        t = ms.type_.unaliased()
        if t.kind == TypeKind.ARRAY:  # static: [NR_SECTION_ROOTS][SECTIONS_PER_ROOT]
            return [(ms.address_, ms.type_.size)]
        per_root = prog["SECTIONS_PER_ROOT"].value_()
        size = prog.type("struct mem_section").size
        roots = ms.read_()
        n = prog["NR_SECTION_ROOTS"].value_()
        if not roots:
            return []
        little = prog.platform is None or bool(prog.platform.flags
                                                & PlatformFlags.IS_LITTLE_ENDIAN)
        ptrs = np.frombuffer(prog.read(roots.value_(), n * 8),
                             dtype=("<" if little else ">") + "u8")
        return ([(roots.value_(), n * 8)]
                + [(int(p), per_root * size) for p in ptrs if p])
    except (KeyError, LookupError, FaultError, AttributeError, ValueError):
        return None


class LiveModel:
    """
    The memory map and vmemmap backing of a live kernel, refreshed in place.

    >>> model = LiveModel(prog)
    >>> model.refresh()           # what changed since it was built
    Changes(epoch=False, memory_map=False, page_tables=0, markers=False)
    >>> check(prog, model=model)  # the rules on the refreshed model
    """

    def __init__(self, prog: Program, vmemmap_page_type: Optional[int] = None) -> None:
        self.prog = prog
        self.vmemmap_page_type = vmemmap_page_type
        self.refreshes = 0
        #: How many times each part was derived again (the first build included).
        self.memory_map_reads = 0
        self.backing_walks = 0
        #: What the refreshes since the last :meth:`take` found.
        self.pending = NOTHING
        self._build()

    def take(self) -> Changes:
        """What changed since the last call (a check about to use the
        model takes it: what a later refresh finds is for the next check)."""
        out, self.pending = self.pending, NOTHING
        return out

    def _build(self) -> None:
        self.epoch: Epoch = hotplug_epoch(self.prog)
        self._sections = self._read_roots()
        self.mm: MemoryMap = memory_map(self.prog, self.vmemmap_page_type)
        self.memory_map_reads += 1
        self.walker: Optional[PageTableWalker] = walker_for(self.prog)
        self.backing: _backing.Backing = self._walk()
        self._markers = self._marker_digest()

    def _read_roots(self) -> Optional[bytes]:
        roots = _roots(self.prog)
        if roots is None:
            return None
        try:
            return b"".join(self.prog.read(a, n) for a, n in roots)
        except FaultError:
            return None

    def _walk(self) -> _backing.Backing:
        self.backing_walks += 1
        if self.walker is None:
            return _backing.vmemmap_backing(self.prog, self.mm)
        self.walker.start_walk()
        try:
            return _backing.vmemmap_backing(self.prog, self.mm, walker=self.walker)
        finally:
            self.walker.end_walk()

    def marker_frames(self) -> List[Tuple[int, int]]:
        """Frames (``(start, end)`` pfn runs) backing the memmap of
        hot-plugged blocks, or lying in one: whose struct pages carry the
        markers the probe watches."""
        hot = self.mm.hotplugged()
        per = self.mm.features.pages_per_block
        frames = []
        for e in self.backing:
            if e.frame_start_pfn is None:
                continue
            if hot.get(e.described_start_pfn // per) or hot.get(e.frame_start_pfn // per):
                frames.append((e.frame_start_pfn, e.frame_start_pfn + e.nr_frames))
        return _backing._merge(frames)

    def _marker_digest(self) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        per = self.mm.features.pages_per_section
        for start, end in self.marker_frames():
            # Section by section, and only where a memmap exists.
            lo = start
            while lo < end:
                hi = min(end, (lo // per + 1) * per)
                s = self.mm.sections.get(lo // per)
                if s is not None and s.has("HAS_MEM_MAP"):
                    cols = scan_pfns(self.prog, lo, hi)
                    h.update(np.int64(lo).tobytes())
                    for col in (cols.flags, cols.page_type, cols.readable):
                        h.update(col.tobytes())
                lo = hi
        return h.digest()

    def refresh(self) -> Changes:
        """Bring the model up to date with the kernel; say what changed."""
        self.refreshes += 1
        epoch = hotplug_epoch(self.prog)
        roots = self._read_roots()
        moved = epoch != self.epoch or epoch.busy or self.epoch.busy
        map_changed = False
        if moved or roots is None or roots != self._sections:
            old = snapshot(self.mm)
            self.mm = memory_map(self.prog, self.vmemmap_page_type)
            self.memory_map_reads += 1
            map_changed = snapshot(self.mm) != old
        self.epoch, self._sections = epoch, roots
        # Without a bulk walker (ppc64 hash), walk again every time.
        tables = self.walker.reread() if self.walker is not None else 1
        if map_changed or tables:
            self.backing = self._walk()
        markers = self._marker_digest()
        marked = markers != self._markers
        self._markers = markers
        changes = Changes(moved, map_changed, tables, marked)
        self.pending = self.pending | changes
        return changes

    def verify(self, attempts: int = 3) -> Optional[List[str]]:
        """
        Build a model from scratch and compare the refreshed one with it:
        what the refreshed model had wrong (empty if nothing), or None when
        the kernel changed under every attempt.  Each attempt builds the
        fresh model, refreshes this one, and compares them only if the fresh
        one is still current (its own refresh finds nothing).  Where they
        differ, this model takes the fresh one's state.
        """
        for _ in range(attempts):
            fresh = LiveModel(self.prog, self.vmemmap_page_type)
            self.refresh()
            if fresh.refresh():
                continue
            diffs = []
            if snapshot(self.mm) != snapshot(fresh.mm):
                diffs.append("memory map")
            if list(self.backing) != list(fresh.backing):
                diffs.append("vmemmap backing")
            if self._markers != fresh._markers:
                diffs.append("markers")
            if diffs:
                # The fresh state is the truth: take it, and have the next
                # check use it (the refreshed one may have been judged).
                kept = (self.refreshes, self.memory_map_reads, self.backing_walks,
                        self.pending | Changes(False, True, 0, False))
                self.__dict__.update(fresh.__dict__)
                (self.refreshes, self.memory_map_reads, self.backing_walks,
                 self.pending) = kept
            return diffs
        return None
