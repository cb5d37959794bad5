"""
Context
-------

:class:`Context` is what the rules see for one check: the model, the
page-table backing and the bulk scanner, each computed once, and the
geometry the rules share (pfn -> section, pfn -> block, what is hot-plugged).
It sits between the model (features, model, scan, backing) and the rules.
"""

import bisect
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Set, Tuple, TypeVar

import numpy as np
from drgn import FaultError, Program

from . import backing as _backing
from . import scan as _scan
from .damage import DamagedBlock, damaged_blocks
from .hugetlb import pooled_folios
from .model import Block, MemoryMap, memory_map
from .ranges import boot_mapping_deltas, self_hosted_ranges, vmemmap_area_pages
from .records import Range, state_name
from .target import target_kind

if TYPE_CHECKING:
    from .refresh import LiveModel

__all__ = ("Context", "Progress", "self_hosted_ranges", "vmemmap_area_pages")

Progress = Callable[[int, int], None]

_T = TypeVar("_T")


class Context:
    """Shared, lazily computed state for the rules of one check."""

    def __init__(self, prog: Program, vmemmap_page_type: Optional[int] = None,
                 progress: Optional[Progress] = None, jobs: Optional[int] = None,
                 model: Optional["LiveModel"] = None):
        """:param model: take the memory map and backing from this live
        model (as its last refresh left them) rather than read them."""
        self.prog = prog
        #: Processes for whole-memory scans; None: :func:`scan.parallel_jobs`.
        self.jobs = jobs
        self.jobs_used = 1
        self.mm: MemoryMap = model.mm if model is not None else \
            memory_map(prog, vmemmap_page_type)
        self.features = self.mm.features
        #: Online blocks whose memmap in the dump is not struct pages
        #: (:mod:`~drgn_vmemmap.damage`); no rule reads their memmap.  Live
        #: kernels are not checked.
        self.damaged: List[DamagedBlock] = [] if target_kind(prog) != "vmcore" \
            else damaged_blocks(prog, self.mm)
        self.damaged_ids = {d.block for d in self.damaged}
        self.progress = progress
        self.pages_scanned = 0
        self.unreadable: List[List[int]] = []
        self._extents: Optional[_backing.Backing] = model.backing if model is not None else None
        self._extent_starts: Optional[List[int]] = None
        self._range_list: Optional[List[Range]] = None
        self._range_starts: List[int] = []
        self._ranges: Optional[Dict[int, Range]] = None
        self._boot_deltas: Optional[Set[int]] = None
        self._scans: Dict[Tuple[int, int], _scan.PageColumns] = {}
        self._hot: Optional[Dict[int, bool]] = None
        self._page_offset: Optional[int] = None
        self._folios: Optional[List[Tuple[int, int, bool]]] = None
        #: Pool lists :meth:`hugetlb_folios` could not walk whole, and why.
        self.hugetlb_problems: List[str] = []

    # --- geometry ------------------------------------------------------------

    def section_nr(self, pfn: int) -> int:
        return self.mm.section_nr(pfn)

    def block_id(self, pfn: int) -> int:
        return self.mm.block_id(pfn)

    def is_hotplugged(self, b: Block) -> bool:
        return self.hotplugged().get(b.id, False)

    def damage_reason(self, bid: int) -> str:
        return f"dump damaged: block {bid}'s memmap in the dump is not struct pages"

    def page_offset(self) -> Optional[int]:
        """The direct map's base (``PAGE_OFFSET``): every ``address_space``
        lies at or above it; poison values and user addresses do not."""
        if self._page_offset is None:
            from drgn.helpers.linux.mm import pfn_to_virt
            try:
                self._page_offset = pfn_to_virt(self.prog, 0).value_()
            except (LookupError, ValueError, FaultError, NotImplementedError):
                self._page_offset = -1
        return None if self._page_offset < 0 else self._page_offset

    def swap_possible(self) -> bool:
        """Whether any page can be in the swap cache: the kernel has swap
        (``total_swap_pages`` is a macro 0 without CONFIG_SWAP) and a swap
        area was ever enabled (``nr_swapfiles``) or is now."""
        prog = self.prog
        try:
            total: int = prog["total_swap_pages"].value_()
        except (KeyError, LookupError):
            return False
        except FaultError:
            return True
        try:
            files: int = prog["nr_swapfiles"].value_()
        except (KeyError, LookupError, FaultError):
            files = 1
        return total > 0 or files > 0

    def hotplugged(self) -> Dict[int, bool]:
        """Block id -> hot-plugged (present sections, none of them early)."""
        if self._hot is None:
            self._hot = self.mm.hotplugged()
        return self._hot

    def xarray_blocks(self) -> Optional[Dict[int, Optional[int]]]:
        from drgn.helpers.linux.xarray import xa_load

        try:
            xa = self.prog["memory_blocks"].address_of_()
            return {bid: xa_load(xa, bid).value_() or None for bid in self.mm.blocks}
        except (KeyError, LookupError, FaultError):
            return None

    # --- page-table truth ----------------------------------------------------

    def extents(self) -> List["_backing.Extent"]:
        if self._extents is None:
            self._extents = _backing.vmemmap_backing(self.prog, self.mm)
        return self._extents

    def boot_deltas(self) -> Set[int]:
        """See :func:`boot_mapping_deltas`."""
        if self._boot_deltas is None:
            self._boot_deltas = boot_mapping_deltas(self.mm, self.extents())
        return self._boot_deltas

    def self_hosted_by_block(self) -> Dict[int, Range]:
        if self._ranges is None:
            self._ranges = {r.block: r for r in self_hosted_ranges(self.prog, self.mm,
                                                                    self.extents())}
        return self._ranges

    def self_hosted_pages(self, bid: int) -> int:
        """Frames of block ``bid`` backing its own struct pages."""
        r = self.self_hosted_by_block().get(bid)
        return r.frames if r else 0

    def vmemmap_area(self, bid: int) -> int:
        """Pages of block ``bid``'s vmemmap area: its self-hosted frames,
        padded to whole pageblocks with ``memmap_on_memory=force``."""
        r = self.self_hosted_by_block().get(bid)
        return r.area_end_pfn - r.start_pfn if r else 0

    # Interval look-ups by bisection: extents are sorted by described pfn and
    # self-hosted ranges by frame, neither overlapping, so a 1 TiB machine's
    # ~10^4 extents and blocks never meet in a quadratic loop.

    def extents_overlapping(self, start: int, end: int) -> Iterator["_backing.Extent"]:
        """Extents describing any pfn in ``[start, end)``."""
        ext = self.extents()
        if self._extent_starts is None:
            self._extent_starts = [e.described_start_pfn for e in ext]
        i = max(bisect.bisect_right(self._extent_starts, start) - 1, 0)
        while i < len(ext) and ext[i].described_start_pfn < end:
            if ext[i].described_end_pfn > start:
                yield ext[i]
            i += 1

    def ranges_overlapping(self, start: int, end: int) -> List[Range]:
        """Self-hosted ranges whose vmemmap area (frames and force-mode
        padding) holds any frame in ``[start, end)``."""
        if self._range_list is None:
            self._range_list = sorted(self.self_hosted_by_block().values(),
                                      key=lambda r: r.start_pfn)
            self._range_starts = [r.start_pfn for r in self._range_list]
        rl = self._range_list
        i = max(bisect.bisect_right(self._range_starts, start) - 1, 0)
        out = []
        while i < len(rl) and rl[i].start_pfn < end:
            if rl[i].area_end_pfn > start:
                out.append(rl[i])
            i += 1
        return out

    def backing_unreadable(self, b: Block) -> bool:
        return any(e.kind == "unreadable" for e in self.extents_overlapping(b.start_pfn, b.end_pfn))

    def struct_pages_self_hosted(self, start: int, end: int) -> bool:
        for e in self.extents_overlapping(start, end):
            if e.kind == "self-hosted":
                return True
            if e.frame_start_pfn is not None and self.ranges_overlapping(
                    e.frame_start_pfn, e.frame_start_pfn + e.nr_frames):
                return True
        return False

    def self_hosted_mask_fn(self) -> Callable[[int, int], np.ndarray]:
        def inside(start: int, end: int) -> np.ndarray:
            mask = np.zeros(end - start, dtype=bool)
            for r in self.ranges_overlapping(start, end):
                s, e = max(start, r.start_pfn), min(end, r.area_end_pfn)
                mask[s - start:e - start] = True
            return mask

        return inside

    # --- struct pages --------------------------------------------------------

    def _note_unreadable(self, cols: _scan.PageColumns, start: int) -> None:
        for s, e in _scan.unreadable_ranges(cols):
            self.unreadable.append([s, e])

    def scan(self, start: int, end: int) -> _scan.PageColumns:
        key = (start, end)
        if key not in self._scans:
            cols = _scan.scan_pfns(self.prog, start, end)
            self.pages_scanned += end - start
            self._note_unreadable(cols, start)
            self._scans[key] = cols
        return self._scans[key]

    def has_type(self, cols: _scan.PageColumns) -> np.ndarray:
        return _scan.has_type(cols, self.features)

    def type_is(self, cols: _scan.PageColumns, name: str) -> np.ndarray:
        return _scan.type_is(cols, name, self.features)

    def type_name(self, cols: _scan.PageColumns, i: int) -> Optional[str]:
        return _scan.type_name(int(cols.page_type[i]), self.features)

    def map_all(self, fn: Callable[[int, int, _scan.PageColumns], _T]
                ) -> Iterator[Tuple[int, int, Optional[_T], Optional[str]]]:
        """
        ``fn(start, end, columns)`` over the struct pages of every online
        section with a memmap; yields ``(start, end, fn's result, None)``, or
        ``(start, end, None, why)`` for a section not scanned.  Scans in
        several processes on large core dumps (:func:`scan.parallel_jobs`),
        so ``fn`` should return little and use only what is computed: the
        page-table truth is, before the first section is read.
        """
        secs = [s for s in self.mm.sections.values() if s.has("HAS_MEM_MAP")]
        total = sum(s.nr_pages for s in secs)
        plan: List[Tuple[int, int, Optional[str]]] = []
        for s in secs:
            b = self.mm.blocks.get(self.block_id(s.start_pfn))
            if b is not None and b.error:
                plan.append((s.start_pfn, s.end_pfn, f"block {b.id}: {b.error}"))
            elif b is not None and b.id in self.damaged_ids:
                plan.append((s.start_pfn, s.end_pfn, self.damage_reason(b.id)))
            elif b is not None and b.state != "MEM_ONLINE":
                plan.append((s.start_pfn, s.end_pfn, f"block {b.id} is {state_name(b.state)}: "
                             "its memmap is uninitialised or stale"))
            elif not s.has("IS_ONLINE"):
                plan.append((s.start_pfn, s.end_pfn, f"section {s.nr} is offline"))
            else:
                plan.append((s.start_pfn, s.end_pfn, None))
        spans = [(a, b) for a, b, why in plan if why is None]
        self.self_hosted_by_block()  # computed before any fork
        jobs = self.jobs if self.jobs is not None else \
            _scan.parallel_jobs(self.prog, sum(b - a for a, b in spans))
        self.jobs_used = max(self.jobs_used, jobs)
        results = _scan.map_spans(self.prog, spans, fn, jobs)
        done = 0
        try:
            for start, end, why in plan:
                if why is None:
                    found, unreadable = next(results)
                    self.pages_scanned += end - start
                    self.unreadable.extend([s, e] for s, e in unreadable)
                    yield start, end, found, None
                else:
                    yield start, end, None, why
                done += end - start
                if self.progress:
                    self.progress(done, total)
        finally:
            results.close()

    # --- HugeTLB -------------------------------------------------------------

    def hugetlb_folios(self) -> List[Tuple[int, int, bool]]:
        """
        (head pfn, pages, HPG_vmemmap_optimized) of every pooled HugeTLB
        folio.  Each pool list (an hstate's active list, each node's free
        list) is walked on its own, at most as far as the hstate counts
        folios: a list that a filtered dump cuts or that loops (corruption)
        loses only itself, and says so in :attr:`hugetlb_problems`.
        """
        if self._folios is None:
            self._folios, self.hugetlb_problems = pooled_folios(self.prog, self.features)
        return self._folios

