"""Pages missing from a filtered dump cost only what lies on them.

A real fixture is copied to ELF (tools/elfcore.py), then one physical page is
taken out of the copy (tools/dumpedit.py), the way makedumpfile leaves out a
page it filters: the page that holds a ``struct memory_block``, the xarray
node that indexes them, or a self-hosted memmap frame.  What lies on that
page comes from plain drgn; the checker must report exactly those
structures as not checked (not in the dump) or unreadable, and nothing else
may change: no violation, the same ranges, every other block still "ok".
"""

from pathlib import Path

import pytest
from drgn.helpers.linux.mm import for_each_memory_block, virt_to_phys

from drgn_vmemmap import check
from drgn_vmemmap.report import exit_status
from drgn_vmemmap.target import open_target
from tools.dumpedit import exclude_pages
from tools.elfcore import write_elf

from conftest import fixture_program, manifest_of, vmlinux_for

NAME = "6.12-hotplug-basic"
PAGE = 4096


@pytest.fixture(scope="module")
def elf(tmp_path_factory):
    path = tmp_path_factory.mktemp("holes") / "copy.elf"
    write_elf(fixture_program(NAME), path, holes=True)
    return path


@pytest.fixture(scope="module")
def baseline(elf):
    return check(open_target(vmcore=str(elf), symbols=[str(vmlinux_for(manifest_of(NAME)))]))


def _check_without(elf: Path, paddrs, tmp_path):
    out = tmp_path / "holed.elf"
    assert exclude_pages(elf, out, paddrs) == len({p // PAGE for p in paddrs})
    prog = open_target(vmcore=str(out), symbols=[str(vmlinux_for(manifest_of(NAME)))])
    return check(prog)


def _geometry(report):
    """The ranges as the page tables give them (state, node and zone come
    from the block, which may be what went missing)."""
    return [(r.block, r.start_pfn, r.nr_pages, r.reserved_pages, r.holes) for r in report.ranges]


def _verdicts(report):
    return {b["block"]: b["verdict"] for b in report.blocks}


def test_baseline_copy_checks_like_the_fixture(baseline):
    assert not baseline.violations and exit_status(baseline) == 0
    assert set(_verdicts(baseline).values()) == {"ok"}


def test_one_memory_block_page_missing(elf, baseline, tmp_path):
    """The slab page holding block 34's struct memory_block (and whichever
    other blocks share it) is gone: those blocks are not checked, the rest
    is as before."""
    prog = fixture_program(NAME)
    where = {mem.dev.id.value_(): virt_to_phys(mem).value_() for mem in for_each_memory_block(prog)}
    page = where[34] - where[34] % PAGE
    lost = {bid for bid, pa in where.items() if pa - pa % PAGE == page}
    report = _check_without(elf, [page], tmp_path)
    assert not report.violations and exit_status(report) == 0
    assert _geometry(report) == _geometry(baseline)  # the page tables still say where memmap is
    verdicts = _verdicts(report)
    assert {b for b, v in verdicts.items() if v != "ok"} == lost
    assert all(verdicts[b] == "not checked (not in the dump)" for b in lost)
    assert any("not in the dump" in n.reason and n.pfn_start == 34 * 32768
               for n in report.not_checked)


def test_memory_blocks_xarray_node_missing(elf, baseline, tmp_path):
    """The xarray node that indexes every block is gone: no block can be
    read, yet no hot-plugged section is blamed for belonging to no block."""
    prog = fixture_program(NAME)
    head = prog["memory_blocks"].xa_head.value_()
    assert head & 3 == 2, "memory_blocks has an internal node at its head"
    node = head - 2
    report = _check_without(elf, [_phys(prog, node)], tmp_path)
    assert not report.violations and exit_status(report) == 0
    assert _geometry(report) == _geometry(baseline)
    assert set(_verdicts(report).values()) == {"not checked (not in the dump)"}
    assert any("looked up block by block" in n.reason for n in report.not_checked)


def test_one_self_hosted_frame_missing(elf, baseline, tmp_path):
    """A self-hosted memmap frame of online block 34 is gone: the 64 struct
    pages on it are unreadable and not checked; nothing is a violation."""
    frame = 34 * 32768 + 3
    report = _check_without(elf, [frame * PAGE], tmp_path)
    assert not report.violations and exit_status(report) == 0
    assert _geometry(report) == _geometry(baseline)
    # Frame 3 of the block's memmap holds the struct pages of pfns
    # [start + 3 * 64, start + 4 * 64).
    described = [34 * 32768 + 3 * 64, 34 * 32768 + 4 * 64]
    assert described in report.unreadable
    assert any(n.rule == "vmemmap-unmarked" and n.pfn_start is not None
               and n.pfn_start <= described[0] < n.pfn_end for n in report.not_checked)


def _phys(prog, addr: int) -> int:
    from drgn import Object
    return virt_to_phys(Object(prog, "void *", addr)).value_()


def _overwrite(src: Path, dst: Path, paddr: int, data: bytes) -> None:
    """Write ``data`` at physical ``paddr`` of ELF core ``dst`` (a copy of ``src``)."""
    from tools.elfcore import file_offset, load_segments, sparse_copy
    sparse_copy(src, dst)
    segs = load_segments(dst)
    with open(dst, "r+b") as f:
        for i in range(0, len(data), PAGE):
            off = file_offset(segs, paddr + i, PAGE)
            assert off is not None, hex(paddr + i)
            f.seek(off)
            f.write(data[i:i + PAGE])


def test_overwritten_memmap_is_dump_damage(elf, baseline, tmp_path):
    """A capture kernel that onlined block 34 wrote over its memmap (here:
    random bytes over the block's 512 self-hosted memmap frames).  The
    block's memmap is reported as dump damage with its likely cause; no
    rule reads it, nothing is a violation, every other block is as before."""
    import random

    from drgn_vmemmap.report import render_table
    rng = random.Random(15)
    start = 34 * 32768
    out = tmp_path / "damaged.elf"
    _overwrite(elf, out, start * PAGE, bytes(rng.getrandbits(8) for _ in range(512 * PAGE)))
    report = check(open_target(vmcore=str(out), symbols=[str(vmlinux_for(manifest_of(NAME)))]))
    assert [d["block"] for d in report.damaged] == [34]
    d = report.damaged[0]
    assert d["implausible"] > 0.9 * d["sampled"] and "acpi_no_memhotplug" in d["cause"]
    assert not report.violations and exit_status(report) == 0
    verdicts = _verdicts(report)
    assert verdicts.pop(34) == "not checked (dump damaged)"
    assert set(verdicts.values()) == {"ok"}
    assert _geometry(report) == _geometry(baseline)
    text = render_table(report)
    assert "dump damaged: the memmap of block(s) 34 in the dump is not struct pages" in text
    assert "DUMP DAMAGED, rest consistent" in text


def test_triage_counts_damaged_dumps_apart(elf, tmp_path):
    """triage files a damaged dump under a status of its own, 'damaged',
    counts it apart from violations, and exits 0 when nothing else is wrong."""
    import json
    import random
    import subprocess
    import sys

    from conftest import FIXTURES, KERNELS, REPO
    rng = random.Random(16)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    _overwrite(elf, dumps / "damaged.vmcore", 34 * 32768 * PAGE,
               bytes(rng.getrandbits(8) for _ in range(512 * PAGE)))
    # Named like the fixture's file (triage opens .xz through its cache).
    committed = manifest_of(NAME)["dump"]["file"]
    clean = "clean.vmcore" + (".xz" if committed.endswith(".xz") else "")
    (dumps / clean).symlink_to(FIXTURES / committed)
    proc = subprocess.run([sys.executable, "-m", "drgn_vmemmap.cli", "triage", "-j", "2",
                           str(dumps), "--debug-directory", str(KERNELS / "6.12")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    docs = {Path(d["path"]).name: d for d in map(json.loads, proc.stdout.splitlines())}
    assert docs["damaged.vmcore"]["status"] == "damaged"
    assert [d["block"] for d in docs["damaged.vmcore"]["damaged"]] == [34]
    assert docs[clean]["status"] == "ok"
    assert "2 dump(s): 1 consistent, 0 with violations, 1 damaged" in proc.stderr


def test_vmemmap_page_table_page_missing(elf, baseline, tmp_path):
    """The PMD table that maps the vmemmap of the hot-plugged blocks is gone
    (found by walking init_mm's page tables by hand, x86-64 4-level): the
    backing of those struct pages is unknown, so every rule that needs it
    says 'not checked', and nothing is a violation."""
    prog = fixture_program(NAME)
    va = prog["vmemmap_base"].value_() + 34 * 32768 * 64
    mask = ((1 << 52) - 1) & ~0xFFF

    def entry(table, shift, physical=True):
        return int.from_bytes(prog.read(table + ((va >> shift) & 511) * 8, 8, physical),
                              "little")

    pud_table = entry(prog["init_mm"].pgd.value_(), 39, physical=False) & mask
    pmd_table = entry(pud_table, 30) & mask
    report = _check_without(elf, [pmd_table], tmp_path)
    assert not report.violations and exit_status(report) == 0
    reasons = {n.reason for n in report.not_checked}
    assert any("page tables" in r and "missing from the dump" in r for r in reasons), reasons
    # The blocks' records were read; only what needs the page tables is lost.
    assert all(v != "error" for v in _verdicts(report).values())


def test_mem_section_root_missing_cannot_analyse(elf, tmp_path):
    """The mem_section root that holds every section of this small guest is
    gone: nothing is left to check, which is 'cannot analyse' (exit 2, one
    line), not a pile of section-state violations."""
    import subprocess
    import sys

    from conftest import REPO
    prog = fixture_program(NAME)
    root = prog["mem_section"].read_()[0].read_()
    out = tmp_path / "noroot.elf"
    assert exclude_pages(elf, out, [virt_to_phys(root).value_()]) == 1
    proc = subprocess.run([sys.executable, "-m", "drgn_vmemmap.cli", "-c", str(out), "-s",
                           str(vmlinux_for(manifest_of(NAME))), "check"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no memory section could be read" in lines[0], proc.stderr
    assert "root" in lines[0] and "not in the dump" in lines[0]
