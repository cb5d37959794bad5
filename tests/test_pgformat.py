"""
The page-table formats of :mod:`drgn_vmemmap.pgformat` on made-up tables:
the corners no dump reaches (arm64 LPA2 and FEAT_LPA address bits, 16K/64K
granules, big-endian entries, ppc64 radix PUD/PMD leaves and PTE fragments,
unreadable tables), and how :func:`~drgn_vmemmap.pgformat.format_for` reads
the format from a program.

The tables live in a fake program whose ``read()`` serves exactly one table's
bytes, in a byte order the test chooses (not the format's), so a walker that
reads the wrong size, the wrong address or the wrong byte order fails.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from drgn import Architecture, FaultError, Platform, PlatformFlags

from drgn_vmemmap.pagetable import Mapping, PageTableWalker, walker_for
from drgn_vmemmap.pgformat import arm64, format_for, ppc64_radix

G, M2 = 1 << 30, 1 << 21


class FakeProg:
    """Made-up page tables: ``tables`` maps (address, physical) to entries."""

    def __init__(self, pgd, top_entries, byteorder):
        self.pgd = pgd
        self.byteorder = byteorder
        self.tables = {(pgd, False): np.zeros(top_entries, np.uint64)}
        self.reads = []

    def __getitem__(self, name):
        assert name == "init_mm"
        return SimpleNamespace(pgd=SimpleNamespace(value_=lambda: self.pgd))

    def read(self, address, size, physical=False):
        self.reads.append((address, size, physical))
        table = self.tables.get((address, physical))
        if table is None or table.nbytes != size:
            raise FaultError("not in the dump", address)
        return table.astype(self.byteorder + "u8").tobytes()


def build(fmt, link, entries, pgd, byteorder, table_pa, step=0x10000):
    """
    A walker over made-up tables.  ``entries`` maps (level, va) to an entry;
    the tables on the way are allocated from ``table_pa`` on (``step`` apart)
    and linked with ``link(pa, level)`` (the entry pointing at a table of
    ``level``).
    """
    prog = FakeProg(pgd, fmt.entries[0], byteorder)
    nxt = [table_pa]
    children = {}

    def table_for(level, va):
        t = prog.tables[(pgd, False)]
        for lv in range(level):
            key = (lv, va >> fmt.shifts[lv])
            if key not in children:
                children[key] = nxt[0]
                prog.tables[(nxt[0], True)] = np.zeros(fmt.entries[lv + 1], np.uint64)
                t[(va >> fmt.shifts[lv]) & (fmt.entries[lv] - 1)] = link(nxt[0], lv + 1)
                nxt[0] += step
            t = prog.tables[(children[key], True)]
        return t

    for (level, va), value in entries.items():
        table_for(level, va)[(va >> fmt.shifts[level]) & (fmt.entries[level] - 1)] = value
    return PageTableWalker(prog, fmt), prog


# arm64 descriptor bits: valid, table/page, AF, nG, SH (bits 9:8 without
# LPA2), contiguous, PXN, UXN.
VALID, TABLE, AF, NG, SH, CONT, XN = 1, 2, 1 << 10, 1 << 11, 0x300, 1 << 52, 3 << 53
NT = 1 << 16  # a block's nT (FEAT_BBM): not an address bit


def _arm64_link(pa, level):
    return pa | 3


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_arm64_4k_48(byteorder):
    fmt = arm64(12, 48, big_endian=byteorder == ">")
    assert (fmt.shifts, fmt.entries, fmt.va_bits) == ((39, 30, 21, 12), (512,) * 4, 48)
    v = 0xFFFF_FC00_0000_0000
    walker, prog = build(fmt, _arm64_link, {
        # A 1 GiB block, a 2 MiB block, pages; attribute bits everywhere,
        # SH among them (not address bits without LPA2).
        (1, v): 0x8000_0000 | VALID | AF | NG | SH | XN,
        (2, v + G): 0x1_2340_0000 | NT | VALID | AF | SH | XN,
        (3, v + G + M2): 0x4567_8000 | 3 | AF | SH | CONT,
        (3, v + G + M2 + 0x1000): 0x9000 | 3 | AF | SH,
        (3, v + G + M2 + 0x2000): 0x9000 | 3 | AF | SH,
        (3, v + G + M2 + 0x3000): 0xA000 | VALID | AF,  # reserved at level 3
        (3, v + G + M2 + 0x4000): 0xB000 | TABLE | AF,  # not valid
        (2, v + G + 2 * M2): 0x1_2360_0000 | TABLE | AF,  # not valid
        # The first kernel GiB, at the index a TTBR0 address would take.
        (1, 0xFFFF_0000_0000_0000): 0x4000_0000 | VALID | AF,
    }, pgd=0xFFFF_8000_0123_0000, byteorder=byteorder, table_pa=0x4000_0000, step=0x1000)
    got = walker.translate(v + 0x5000, G + 3 * M2 - 0x5000)
    assert got == [
        Mapping(v + 0x5000, 0x8000_5000, G - 0x5000),
        Mapping(v + G, 0x1_2340_0000, M2),
        Mapping(v + G + M2, 0x4567_8000, 0x1000),
        Mapping(v + G + M2 + 0x1000, 0x9000, 0x2000, "mapped", 0x1000),
        Mapping(v + G + M2 + 0x3000, None, M2 - 0x3000 + M2, "unmapped"),
    ]
    assert (prog.pgd, 4096, False) in prog.reads
    assert walker.tables_read == 4  # PGD, PUD, PMD, PTE table
    # Not a kernel address: swapper_pg_dir maps none of TTBR0's half.
    prog.reads.clear()
    assert walker.translate(0x1000, 0x2000) == [Mapping(0x1000, None, 0x2000, "unmapped")]
    assert prog.reads == []
    with pytest.raises(ValueError):
        walker.translate(0x0000_FFFF_FFFF_F000, 0x2000)


def _lpa2_link(pa, level):
    # __phys_to_pte_val(): bits 49:12 in place, 51:50 in descriptor bits 9:8.
    return (pa & ((1 << 50) - (1 << 12))) | ((pa >> 50) & 3) << 8 | 3


def test_arm64_4k_52_lpa2():
    fmt = arm64(12, 52)
    # Five levels; the top one resolves the 4 bits left.
    assert (fmt.shifts, fmt.entries, fmt.va_bits) == (
        (48, 39, 30, 21, 12), (16, 512, 512, 512, 512), 52)
    v = 0xFFF8_0000_0000_0000
    block, page = 0x000E_1234_5660_0000, 0x0004_0000_0000_1000
    walker, prog = build(fmt, _lpa2_link, {
        (3, v): _lpa2_link(block, 0) & ~TABLE | AF | XN,
        (4, v + M2): _lpa2_link(page, 0) | AF,
        (4, v + M2 + 0x1000): _lpa2_link(page + 0x1000, 0) | AF | CONT,
    }, pgd=0xFFF8_1000_0000_0000, byteorder="<",
        # Every table above 2^50: their addresses need descriptor bits 9:8.
        table_pa=0x000F_0000_0004_0000, step=0x1000)
    got = walker.translate(v + 0x3000, M2)
    assert got == [
        Mapping(v + 0x3000, block + 0x3000, M2 - 0x3000),
        Mapping(v + M2, page, 0x2000),
        Mapping(v + M2 + 0x2000, None, 0x1000, "unmapped"),
    ]
    # The top table is 16 entries: 128 bytes read through drgn.
    assert (prog.pgd, 128, False) in prog.reads
    assert walker.tables_read == 5


def _lpa_link(pa, level):
    # 64K pages, FEAT_LPA: bits 51:48 in descriptor bits 15:12.
    return (pa & ((1 << 48) - (1 << 16))) | ((pa >> 48) & 0xF) << 12 | 3


def test_arm64_64k_52_lpa():
    fmt = arm64(16, 52)
    assert (fmt.shifts, fmt.entries) == ((42, 29, 16), (1024, 8192, 8192))
    v = 0xFFF0_0000_0000_0000 | 1023 << 42  # the last top entry
    walker, prog = build(fmt, _lpa_link, {
        (1, v): _lpa_link(0x000A_0000_2000_0000, 0) & ~TABLE | AF,  # 512 MiB block
        (2, v + (1 << 29)): _lpa_link(0x000B_0000_1234_0000, 0) | AF | SH,
    }, pgd=0xFFFF_8000_0200_0000, byteorder="<", table_pa=0x0008_0000_0000_0000)
    got = walker.translate(v, (1 << 29) + 0x20000)
    assert got == [
        Mapping(v, 0x000A_0000_2000_0000, 1 << 29),
        Mapping(v + (1 << 29), 0x000B_0000_1234_0000, 0x10000),
        Mapping(v + (1 << 29) + 0x10000, None, 0x10000, "unmapped"),
    ]
    assert (prog.pgd, 8192, False) in prog.reads


@pytest.mark.parametrize("page_shift, va_bits, shifts, entries", [
    (12, 39, (30, 21, 12), (512, 512, 512)),
    (14, 47, (36, 25, 14), (2048, 2048, 2048)),
    (14, 48, (47, 36, 25, 14), (2, 2048, 2048, 2048)),
    (14, 52, (47, 36, 25, 14), (32, 2048, 2048, 2048)),
    (16, 42, (29, 16), (8192, 8192)),
    (16, 48, (42, 29, 16), (64, 8192, 8192)),
])
def test_arm64_levels(page_shift, va_bits, shifts, entries):
    # ARM64_HW_PGTABLE_LEVELS and PTRS_PER_PGD (pgtable-hwdef.h).
    fmt = arm64(page_shift, va_bits)
    assert (fmt.shifts, fmt.entries, fmt.va_bits) == (shifts, entries, va_bits)


def test_arm64_16k_52_lpa2_bits():
    # 16K pages and 52 bits: LPA2 too (bits 51:50 in 9:8); 47 bits: SH.
    e = np.array([0x0003_0000_0000_4000 | SH | 3], np.uint64)
    for va_bits, pa in ((52, 0x000F_0000_0000_4000), (47, 0x4000)):
        fmt = arm64(14, va_bits)
        kind, got = fmt.decode(len(fmt.shifts) - 1, e)
        assert (kind.tolist(), got.tolist()) == ([1], [pa])


def test_arm64_bad_sizes():
    for page_shift, va_bits in ((13, 48), (12, 12), (12, 53)):
        with pytest.raises(ValueError):
            arm64(page_shift, va_bits)


# ppc64 radix: _PAGE_PRESENT, _PAGE_PTE, and flag bits (read, write,
# privileged, accessed, dirty) and a bit above _PAGE_PA_MAX.
P, PTE, FLAGS, HIGH = 1 << 63, 1 << 62, 0x18E, 1 << 56


def _radix_link(fmt):
    def link(pa, level):
        # pmd_populate() and co.: the table's address | its index size (NLS).
        return P | pa | (fmt.entries[level].bit_length() - 1)
    return link


def test_ppc64_radix_64k():
    fmt = ppc64_radix(16)
    assert (fmt.shifts, fmt.entries, fmt.byteorder) == (
        (39, 30, 21, 16), (8192, 512, 512, 32), ">")
    v = 0xC00C_0000_0000_0000  # RADIX_VMEMMAP_START
    k = 0x10000
    walker, prog = build(fmt, _radix_link(fmt), {
        (1, v): P | PTE | 0x4000_0000 | FLAGS | HIGH,  # 1 GiB leaf
        (2, v + G): P | PTE | 0x2_0020_0000 | FLAGS,  # 2 MiB leaf
        (3, v + G + M2): P | PTE | 0x3_0000_0000 | FLAGS | HIGH,
        (3, v + G + M2 + k): P | PTE | 0x5_0000 | FLAGS,
        (3, v + G + M2 + 2 * k): P | PTE | 0x5_0000 | FLAGS,
        (3, v + G + M2 + 3 * k): PTE | 0x6_0000 | FLAGS,  # not present
        (3, v + G + M2 + 4 * k): P | 0x7_0000 | FLAGS,  # a PTE, whatever _PAGE_PTE says
        (2, v + G + 2 * M2): PTE | 0x2_0060_0000 | FLAGS,  # not present
    }, pgd=0xC000_0000_0123_0000, byteorder=">",
        # PTE tables are 256-byte fragments, not page-aligned.
        table_pa=0x0100_0300, step=0x1_0100)
    got = walker.translate(v + k, G + 3 * M2 - k)
    assert got == [
        Mapping(v + k, 0x4001_0000, G - k),
        Mapping(v + G, 0x2_0020_0000, M2),
        Mapping(v + G + M2, 0x3_0000_0000, k),
        Mapping(v + G + M2 + k, 0x5_0000, 2 * k, "mapped", k),
        Mapping(v + G + M2 + 3 * k, None, k, "unmapped"),
        Mapping(v + G + M2 + 4 * k, 0x7_0000, k),
        Mapping(v + G + M2 + 5 * k, None, M2 - 5 * k + M2, "unmapped"),
    ]
    sizes = {size for _, size, _ in prog.reads}
    assert sizes == {65536, 4096, 256}


def test_ppc64_radix_4k():
    fmt = ppc64_radix(12)
    assert (fmt.shifts, fmt.entries) == ((39, 30, 21, 12), (8192, 512, 512, 512))
    v = 0xC00C_0000_0000_0000
    walker, _ = build(fmt, _radix_link(fmt), {
        (3, v): P | PTE | 0x1234_5000 | FLAGS,
        (3, v + 0x1000): P | PTE | 0x1234_6000 | FLAGS,
        (2, v + M2): P | PTE | 0x4060_0000 | FLAGS,
    }, pgd=0xC000_0000_0200_0000, byteorder=">", table_pa=0x0100_0000, step=0x1000)
    assert walker.translate(v, 2 * M2) == [
        Mapping(v, 0x1234_5000, 0x2000),
        Mapping(v + 0x2000, None, M2 - 0x2000, "unmapped"),
        Mapping(v + M2, 0x4060_0000, M2),
    ]
    # Little-endian entries are not radix entries: nothing is present.
    walker, _ = build(fmt, _radix_link(fmt), {(3, v): P | PTE | 0x1234_5000},
                      pgd=0xC000_0000_0200_0000, byteorder="<", table_pa=0x0100_0000)
    assert walker.translate(v, 0x1000) == [Mapping(v, None, 0x1000, "unmapped")]


def test_unreadable_tables():
    fmt = arm64(12, 48)
    v = 0xFFFF_0000_0000_0000
    walker, prog = build(fmt, _arm64_link, {
        (3, v): 0x5000 | 3 | AF,
        (2, v + M2): 0xDEAD_0000 | 3,  # a table the dump lacks
        (2, v + 2 * M2): 0x8000_0000 | VALID | AF,
    }, pgd=0xFFFF_8000_0123_0000, byteorder="<", table_pa=0x4000_0000, step=0x1000)
    assert walker.translate(v, 3 * M2) == [
        Mapping(v, 0x5000, 0x1000),
        Mapping(v + 0x1000, None, M2 - 0x1000, "unmapped"),
        Mapping(v + M2, None, M2, "unreadable"),
        Mapping(v + 2 * M2, 0x8000_0000, M2),
    ]
    # The failed read is remembered, not retried.
    n = len(prog.reads)
    walker.translate(v + M2, 0x1000)
    assert len(prog.reads) == n
    # No top table: nothing is known.
    del prog.tables[(prog.pgd, False)]
    fresh = PageTableWalker(prog, fmt)
    assert fresh.translate(v, 0x3000) == [Mapping(v, None, 0x3000, "unreadable")]
    assert fresh.tables_read == 0


class FakeObject:
    def __init__(self, value=None, **members):
        self.value = value
        self.__dict__.update(members)

    def value_(self):
        return self.value

    def string_(self):
        return self.value.encode()


class FakeKernel:
    """What format_for() reads: the platform and a few named objects."""

    def __init__(self, arch, little_endian=True, **objects):
        flags = PlatformFlags.IS_64_BIT
        if little_endian:
            flags |= PlatformFlags.IS_LITTLE_ENDIAN
        self.platform = Platform(arch, flags) if arch is not None else None
        self.objects = objects

    def __getitem__(self, name):
        return self.objects[name]  # KeyError, as drgn's


def _arm64_kernel(page_shift, vmcoreinfo=None, **objects):
    if vmcoreinfo is not None:
        objects["VMCOREINFO"] = FakeObject("OSRELEASE=6.12.0\nPAGESIZE=4096\n" + vmcoreinfo)
    return FakeKernel(Architecture.AARCH64, PAGE_SHIFT=FakeObject(page_shift), **objects)


@pytest.mark.parametrize("page_shift, vmcoreinfo, objects, va_bits", [
    # 52-bit kernel on 48-bit hardware: TCR_EL1.T1SZ says 48 (4 levels).
    (12, "NUMBER(VA_BITS)=52\nNUMBER(TCR_EL1_T1SZ)=0x10\n", {}, 48),
    (12, "NUMBER(VA_BITS)=52\nNUMBER(TCR_EL1_T1SZ)=0xc\n", {}, 52),
    (12, "NUMBER(VA_BITS)=48\n", {}, 48),  # before v5.9: no T1SZ
    (14, "NUMBER(VA_BITS)=52\nNUMBER(TCR_EL1_T1SZ)=0x11\n", {}, 47),
    # 64K: swapper_pg_dir is laid out for VA_BITS whatever TTBR1 uses.
    (16, "NUMBER(VA_BITS)=52\nNUMBER(TCR_EL1_T1SZ)=0x10\n", {}, 52),
    # No VMCOREINFO: what the kernel runs with.
    (12, None, {"vabits_actual": FakeObject(48)}, 48),
    (16, None, {"vabits_actual": FakeObject(52)}, 52),
    (16, None, {"vabits_actual": FakeObject(48)}, None),
    (12, None, {}, None),
    (13, "NUMBER(VA_BITS)=48\n", {}, None),
])
def test_format_for_arm64(page_shift, vmcoreinfo, objects, va_bits):
    fmt = format_for(_arm64_kernel(page_shift, vmcoreinfo, **objects))
    if va_bits is None:
        assert fmt is None
    else:
        assert fmt is not None and fmt.va_bits == va_bits
        assert fmt.shifts[-1] == page_shift and fmt.byteorder == "<"


def test_format_for_arm64_big_endian():
    prog = _arm64_kernel(12, "NUMBER(VA_BITS)=48\n")
    prog.platform = Platform(Architecture.AARCH64, PlatformFlags.IS_64_BIT)
    assert format_for(prog).byteorder == ">"


def _ppc64_kernel(page_shift, mmu_features, **objects):
    cpu_spec = FakeObject(mmu_features=FakeObject(mmu_features))
    return FakeKernel(Architecture.PPC64, PAGE_SHIFT=FakeObject(page_shift),
                      cur_cpu_spec=cpu_spec, **objects)


def test_format_for_ppc64():
    radix = 0x40 | 0x1 | 0x100  # MMU_FTR_TYPE_RADIX among others
    assert format_for(_ppc64_kernel(16, radix)).entries == (8192, 512, 512, 32)
    assert format_for(_ppc64_kernel(12, radix)).entries == (8192, 512, 512, 512)
    # Hash MMU, Book3E, an unknown page size: no bulk format.
    assert format_for(_ppc64_kernel(16, radix & ~0x40)) is None
    assert format_for(_ppc64_kernel(16, radix, interrupt_base_book3e=FakeObject(0))) is None
    assert format_for(_ppc64_kernel(14, radix)) is None


def test_no_format():
    for prog in (FakeKernel(Architecture.S390X), FakeKernel(None),
                 _ppc64_kernel(16, 0x1)):
        assert format_for(prog) is None
        assert walker_for(prog) is None
        with pytest.raises(ValueError):
            PageTableWalker(prog)
