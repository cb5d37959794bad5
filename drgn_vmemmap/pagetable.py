"""
Page Tables
-----------

Translate kernel virtual ranges to physical addresses by walking the kernel
page tables (``init_mm.pgd``) in bulk: every page-table page is read with one
:meth:`drgn.Program.read` and decoded with numpy, so a vmemmap range costs one
read per table, not one drgn call per page.  The table format (levels, entry
encoding, byte order) comes from the program (:func:`walker_for`,
:mod:`~drgn_vmemmap.pgformat`): x86-64 4/5-level, arm64 (4K/16K/64K granule,
48/52-bit, LPA2) and ppc64 radix (4K/64K).  Where there is no format (ppc64
hash MMU, other architectures) drgn's
:func:`~drgn.helpers.linux.mm.follow_phys` translates once per page (slow,
but correct wherever drgn can translate).

The result is a list of :class:`Mapping` runs, coalesced where the physical
side is contiguous, or where every page maps the *same* frame (the HugeTLB
vmemmap optimisation remaps a folio's tail vmemmap pages onto one page).
"""

from typing import Dict, List, NamedTuple, Optional, Set, Tuple, Union

import numpy as np
from drgn import FaultError, Program
from drgn.helpers.common.prog import takes_program_or_default
from drgn.helpers.linux.mm import follow_phys

from .pgformat import PageTableFormat, format_for
from .records import MappingStatus

__all__ = (
    "Mapping",
    "PageTableWalker",
    "translate",
    "walker_for",
)


class Mapping(NamedTuple):
    """A run of virtual addresses that translates uniformly."""

    #: First virtual address of the run.
    va: int
    #: Physical address of ``va``, or None when ``status`` is not "mapped".
    pa: Optional[int]
    #: Length of the run in bytes.
    size: int
    #: ``"mapped"``, ``"unmapped"`` (an entry on the way is not present) or
    #: ``"unreadable"`` (a page-table page is missing from the dump, so
    #: whether it is mapped is unknown).
    status: MappingStatus = "mapped"
    #: 0 for a linear run (``va + i`` maps ``pa + i``).  Otherwise the run is
    #: made of ``alias``-byte pieces that all map ``[pa, pa + alias)``.
    alias: int = 0

    @property
    def end(self) -> int:
        return self.va + self.size


def _append(out: List[Mapping], m: Mapping) -> None:
    """Append ``m`` to ``out``, merging it into the last run when contiguous."""
    if out:
        last = out[-1]
        if last.va + last.size == m.va and last.status == m.status:
            size = last.size + m.size
            if m.status != "mapped":
                out[-1] = last._replace(size=size)
                return
            # Both runs are mapped, so both have a physical address.
            assert last.pa is not None
            # The size of one aliased piece on each side (0: linear run).
            a = last.alias or last.size
            b = m.alias or m.size
            if not last.alias and not m.alias and last.pa + last.size == m.pa:
                out[-1] = last._replace(size=size)
                return
            if a == b and last.pa == m.pa:
                out[-1] = last._replace(size=size, alias=a)
                return
            if not last.alias and last.size > b and last.pa + last.size - b == m.pa:
                # The linear run ends on the piece that m repeats: move that
                # piece into an aliased run, as one table's runs would be.
                out[-1] = last._replace(size=last.size - b)
                m = Mapping(m.va - b, m.pa, m.size + b, "mapped", b)
    out.append(m)


def _segments(kind: np.ndarray, pa: np.ndarray, size: int
              ) -> List[Tuple[int, int, int, bool]]:
    """
    Split one table's entries into runs: ``(first, last + 1, kind, alias)``.

    ``kind`` is 0 (not present), 1 (leaf) or 2 (next-level table); tables are
    runs of one.  Leaves that map the same frame as a neighbour form aliased
    runs first (a HugeTLB-optimised folio's vmemmap is one run); the other
    leaves run while physically contiguous.
    """
    n = len(kind)
    if n == 1:
        return [(0, 1, int(kind[0]), False)]
    leaf = kind == 1
    both = leaf[1:] & leaf[:-1]
    same = np.zeros(n + 1, dtype=bool)
    same[1:n] = both & (pa[1:] == pa[:-1])
    chain = same[:n] | same[1:]
    join = np.zeros(n, dtype=bool)
    join[1:] = (same[1:n]
                | (both & (pa[1:] == pa[:-1] + size) & ~chain[1:] & ~chain[:-1])
                | ((kind[1:] == 0) & (kind[:-1] == 0)))
    firsts = np.flatnonzero(~join)
    ends = np.append(firsts[1:], n)
    out = []
    for a, b in zip(firsts.tolist(), ends.tolist()):
        k = int(kind[a])
        out.append((a, b, k, k == 1 and b - a > 1 and bool(pa[a + 1] == pa[a])))
    return out


class PageTableWalker:
    """
    Walks the kernel page tables of one program in the format ``fmt`` (by
    default the program's own, :func:`~drgn_vmemmap.pgformat.format_for`;
    ValueError if it has none: see :func:`walker_for`).

    Page-table pages are cached for the walker's lifetime: make a new walker
    for each consistent view (a live kernel changes under it), or keep one
    and call :meth:`reread` to bring its pages up to date, and
    :meth:`start_walk` / :meth:`end_walk` around a walk to keep only the
    pages that walk used (:class:`~drgn_vmemmap.refresh.LiveModel`).
    """

    def __init__(self, prog: Program, fmt: Optional[PageTableFormat] = None) -> None:
        if fmt is None:
            fmt = format_for(prog)
            if fmt is None:
                platform = prog.platform
                raise ValueError("no bulk page-table format for "
                                 f"{platform.arch.name if platform else 'this program'}")
        self.prog = prog
        self.fmt = fmt
        # A kernel virtual address (swapper_pg_dir); the tables below it are
        # physical.
        self.pgd = prog["init_mm"].pgd.value_()
        self._tables: Dict[int, Union[np.ndarray, FaultError]] = {}
        #: The level each cached table was read at (its size).
        self._levels: Dict[int, int] = {}
        self.tables_read = 0
        #: Keys of the tables used since :meth:`start_walk`, or None.
        self._used: Optional[Set[int]] = None

    def start_walk(self) -> None:
        self._used = set()

    def end_walk(self) -> None:
        """Forget the cached tables the walk since :meth:`start_walk` did not use."""
        if self._used is not None:
            self._tables = {k: v for k, v in self._tables.items() if k in self._used}
            self._levels = {k: v for k, v in self._levels.items() if k in self._used}
        self._used = None

    def reread(self) -> int:
        """
        Read every cached table again; return how many changed (their
        entries, or whether they could be read).  A walk over unchanged
        tables gives the same mappings, so 0 means the last walk still holds.
        """
        changed = 0
        for key, old in list(self._tables.items()):
            del self._tables[key]
            new = self._table(abs(key), key >= 0, self._levels.get(key, 0))
            if isinstance(old, FaultError) or isinstance(new, FaultError):
                changed += not (isinstance(old, FaultError) and isinstance(new, FaultError))
            elif not np.array_equal(old, new):
                changed += 1
        return changed

    def _table(self, address: int, physical: bool, level: int
               ) -> Union[np.ndarray, FaultError]:
        key = address if physical else -address
        n = self.fmt.entries[level]
        self._levels[key] = level
        if self._used is not None:
            self._used.add(key)
        table = self._tables.get(key)
        # A table of another size at the same address (damaged tables) is
        # read again.
        if table is not None and (isinstance(table, FaultError) or len(table) == n):
            return table
        try:
            data = self.prog.read(address, n * 8, physical)
            table = np.frombuffer(data, dtype=self.fmt.byteorder + "u8").astype(
                np.uint64, copy=False)
            self.tables_read += 1
        except FaultError as e:
            table = e
        self._tables[key] = table
        return table

    def translate(self, start: int, length: int) -> List[Mapping]:
        """Translate ``[start, start + length)``; see :func:`translate`."""
        out: List[Mapping] = []
        if length <= 0:
            return out
        space = self.fmt.space
        bits = self.fmt.va_bits
        end = start + length
        if space == "sign":
            halves = {(va >> (bits - 1)) for va in (start, end - 1)}
            if len(halves) != 1 or not halves <= {0, (1 << (65 - bits)) - 1}:
                raise ValueError(f"[{start:#x}, {end:#x}) is not in one canonical half "
                                 f"of the {bits}-bit address space")
        elif start >> bits != (end - 1) >> bits:
            raise ValueError(f"[{start:#x}, {end:#x}) is not in one {bits}-bit "
                             "window of the address space")
        if space == "upper" and start >> bits != (1 << (64 - bits)) - 1:
            # Not a kernel (TTBR1) address: init_mm's table maps none of it.
            return [Mapping(start, None, length, "unmapped")]
        # Index the top table from the start of the window (the address-space
        # half, for "sign": sign extension takes care of itself).
        base = start & ~((1 << bits) - 1)
        # The top level is in the kernel image; let drgn translate it.
        self._walk(self._table(self.pgd, False, 0), 0, base, start, end, out)
        return out

    def _walk(self, table: Union[np.ndarray, FaultError], level: int, base: int,
              lo: int, hi: int, out: List[Mapping]) -> None:
        if isinstance(table, FaultError):
            _append(out, Mapping(lo, None, hi - lo, "unreadable"))
            return
        shift = self.fmt.shifts[level]
        size = 1 << shift
        i0 = (lo - base) >> shift
        i1 = (hi - base + size - 1) >> shift
        e = table[i0:i1]
        kind, pa = self.fmt.decode(level, e)
        for a, b, k, alias in _segments(kind, pa, size):
            va0 = max(base + ((i0 + a) << shift), lo)
            va1 = min(base + ((i0 + b) << shift), hi)
            if k == 0:
                _append(out, Mapping(va0, None, va1 - va0, "unmapped"))
            elif k == 2:
                child = self._table(int(pa[a]), True, level + 1)
                self._walk(child, level + 1, base + ((i0 + a) << shift), va0, va1, out)
            elif not alias:
                first = base + ((i0 + a) << shift)
                _append(out, Mapping(va0, int(pa[a]) + (va0 - first), va1 - va0))
            else:
                # Every entry maps the same frame; a clipped first or last
                # entry is emitted on its own, linearly.
                frame = int(pa[a])
                full0 = base + ((i0 + a) << shift)
                full1 = base + ((i0 + b) << shift)
                if va0 != full0:
                    cut = full0 + size
                    _append(out, Mapping(va0, frame + (va0 - full0), cut - va0))
                    va0 = cut
                tail = None
                if va1 != full1:
                    tail = Mapping(full1 - size, frame, va1 - (full1 - size))
                    va1 = full1 - size
                if va1 > va0:
                    _append(out, Mapping(va0, frame, va1 - va0, "mapped",
                                         size if va1 - va0 > size else 0))
                if tail is not None:
                    _append(out, tail)


def walker_for(prog: Program) -> Optional[PageTableWalker]:
    """A :class:`PageTableWalker` for ``prog``, or None when its page tables
    have no bulk format here (translate with ``follow_phys()`` then)."""
    fmt = format_for(prog)
    return None if fmt is None else PageTableWalker(prog, fmt)


def _follow_phys_translate(prog: Program, start: int, length: int) -> List[Mapping]:
    # Slow path: one drgn translation per page.  drgn raises FaultError at
    # the requested address when an entry is not present, and at the
    # page-table address when a table cannot be read.
    mm = prog["init_mm"].address_of_()
    page = prog["PAGE_SIZE"].value_()
    out: List[Mapping] = []
    va = start
    end = start + length
    while va < end:
        nxt = min((va | (page - 1)) + 1, end)
        try:
            m = Mapping(va, follow_phys(mm, va).value_(), nxt - va)
        except FaultError as e:
            m = Mapping(va, None, nxt - va, "unmapped" if e.address == va else "unreadable")
        _append(out, m)
        va = nxt
    return out


@takes_program_or_default
def translate(prog: Program, start: int, length: int, slow: bool = False) -> List[Mapping]:
    """
    Translate the kernel virtual range ``[start, start + length)``.

    >>> translate(prog, prog["vmemmap_base"].value_(), 4 << 20)
    [Mapping(va=0xffffea0000000000, pa=0x1f600000, size=2097152, ...), ...]

    Where the program's page tables have a bulk format (x86-64, arm64,
    ppc64 radix: :func:`walker_for`) they are walked in bulk, leaves at every
    level the architecture has them (x86-64 PUD 1 GiB and PMD 2 MiB, arm64
    blocks, ppc64 radix PUD/PMD leaves), permission and software bits
    ignored.  Elsewhere (ppc64 hash MMU, other architectures), or with
    ``slow``, each page goes through
    :func:`~drgn.helpers.linux.mm.follow_phys`.

    :param start: ``void *``
    :param length: bytes.
    :param slow: Use ``follow_phys()`` per page even where a bulk walk exists.
    :return: Runs covering the range in order, coalesced where contiguous.
    """
    walker = None if slow else walker_for(prog)
    if walker is None:
        return _follow_phys_translate(prog, start, length)
    return walker.translate(start, length)
