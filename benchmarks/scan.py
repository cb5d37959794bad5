#!/usr/bin/env python3
"""
Benchmark: the bulk struct-page scanner against the naive drgn loop.

For each vmcore (default: every committed fixture), in the same run:

(a) naive: ``for pfn, page in for_each_valid_pfn_and_page(prog)`` testing
    ``PageVmemmapSelfHosted(page)`` (one drgn object per page);
(b) bulk: :func:`drgn_vmemmap.scan.iter_section_chunks` over the same valid
    pfn ranges, testing the ``PG_owner_priv_1`` column.

Each method gets a fresh :class:`drgn.Program`, so neither profits from the
other's decompressed-page cache (the OS page cache is warm for both; the bulk
scanner, run ``--repeat`` times, reports its best).  Prints pages/s, the
ratio, the number of marked pages each found on the pages both saw (they must
agree), and peak RSS.

``--elf`` also writes an ELF copy of each kdump-compressed fixture with
:func:`tools.elfcore.write_elf` (no tool here converts kdump-compressed to
ELF), by reading every present section's physical memory through drgn and
writing PT_LOAD segments plus the VMCOREINFO note.  Pages the kdump file
excluded become zeros (holes in a sparse file), so the ELF copy is for
timing, not for checking.  Then (a) and (b) are timed on the ELF copy as well.

``--pagetables`` also times the page-table step the same way: the vmemmap
of every valid pfn range translated by :func:`drgn_vmemmap.pagetable.translate`
(bulk: each table page read once, on the architectures it has a format for)
against the same call with ``slow=True`` (drgn's ``follow_phys()`` once per
vmemmap page, the naive loop), each on a fresh program; the two must return
the same mappings.

Not a test: run ``python benchmarks/scan.py [--limit N] [--elf] [--pagetables]
[FIXTURE | -s VMLINUX VMCORE ...]``.
"""

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from drgn import FaultError, Program
from drgn.helpers.linux.mm import (
    PageVmemmapSelfHosted,
    for_each_valid_page_range,
    for_each_valid_pfn_and_page,
)

from drgn_vmemmap.features import features
from drgn_vmemmap.scan import flag_set, iter_section_chunks, map_spans
from drgn_vmemmap.target import decompressed, open_target

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools.elfcore import write_elf  # noqa: E402  (shared with tools/mutate.py)

FIXTURES = ROOT / "vmcores" / "fixtures"
FACTORY_BUILD = Path(os.environ.get("VMCORES_CACHE")
                     or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                     / "drgn-vmemmap-factory") / "build"


def vmlinux_for(manifest: dict) -> Optional[str]:
    """A fixture's vmlinux: committed ``vmlinux.xz``, else the factory's build."""
    key = manifest["kernel"]["key"]
    xz = ROOT / "vmcores" / "kernels" / key / "vmlinux.xz"
    if xz.exists():
        return decompressed(str(xz))
    built = FACTORY_BUILD / key / "vmlinux"
    return str(built) if built.exists() else None


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def naive(prog: Program, limit: Optional[int]) -> Tuple[int, int, float, int]:
    """(pages, marked, seconds, last pfn + 1) of the naive drgn loop."""
    pages = marked = 0
    end = 0
    t = time.perf_counter()
    for pfn, page in for_each_valid_pfn_and_page(prog):
        if limit is not None and pages >= limit:
            break
        try:
            marked += PageVmemmapSelfHosted(page)
        except FaultError:
            pass
        pages += 1
        end = pfn + 1
    return pages, marked, time.perf_counter() - t, end


def bulk(prog: Program, ranges: List[Tuple[int, int]], bit: int, upto: int
         ) -> Tuple[int, int, int, float, int]:
    """(pages, marked, unreadable, seconds, marked below pfn ``upto``) of the scanner."""
    pages = marked = unreadable = marked_upto = 0
    t = time.perf_counter()
    for cols in iter_section_chunks(prog, ranges):
        mask = flag_set(cols, bit)
        pages += len(cols)
        unreadable += len(cols) - cols.nr_readable
        marked += int(np.count_nonzero(mask))
        if cols.start_pfn < upto:
            marked_upto += int(np.count_nonzero(mask[:upto - cols.start_pfn]))
    return pages, marked, unreadable, time.perf_counter() - t, marked_upto


def bulk_parallel(prog: Program, ranges: List[Tuple[int, int]], bit: int, upto: int,
                  jobs: int) -> Tuple[int, int, int, float, int]:
    """:func:`bulk` in ``jobs`` forked processes (scan.map_spans, what
    ``check`` does for marker-stray on large core dumps)."""
    per = features(prog).pages_per_section
    spans = [(lo, min(e, (lo // per + 1) * per)) for s, e in ranges
             for lo in [s] + list(range((s // per + 1) * per, e, per))]

    def count(start: int, end: int, cols) -> Tuple[int, int, int, int]:
        mask = flag_set(cols, bit)
        below = int(np.count_nonzero(mask[:max(0, upto - start)]))
        return len(cols), len(cols) - cols.nr_readable, int(np.count_nonzero(mask)), below

    t = time.perf_counter()
    pages = unreadable = marked = marked_upto = 0
    for (p, u, m, mu), _ in map_spans(prog, spans, count, jobs):
        pages, unreadable, marked, marked_upto = \
            pages + p, unreadable + u, marked + m, marked_upto + mu
    return pages, marked, unreadable, time.perf_counter() - t, marked_upto


def children_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def bench(label: str, vmcore: str, vmlinux: str, limit: Optional[int],
          repeat: int, jobs: int = 1) -> dict:
    prog = open_target(vmcore=vmcore, symbols=[vmlinux])
    f = features(prog)
    bit = f.page_flags["PG_owner_priv_1"]
    ranges = [(s, e) for s, e, _ in for_each_valid_page_range(prog)]
    total = sum(e - s for s, e in ranges)

    n_pages, n_marked, n_sec, n_end = naive(prog, limit)
    best = None
    for _ in range(repeat):
        del prog
        gc.collect()
        # A fresh program each time: drgn's caches must not help (b).
        prog = open_target(vmcore=vmcore, symbols=[vmlinux])
        result = bulk(prog, ranges, bit, n_end)
        if best is None or result[3] < best[3]:
            best = result
    del prog
    gc.collect()
    b_pages, b_marked, b_unread, b_sec, marked_upto = best

    n_rate, b_rate = n_pages / n_sec, b_pages / b_sec
    extrapolated = n_pages < total
    agree = n_marked == marked_upto
    print(f"{label}: {total} valid pages, {os.path.getsize(vmcore) / 1e6:.1f} MB")
    print(f"  naive drgn loop : {n_pages:>9} pages in {n_sec:7.3f} s = "
          f"{n_rate / 1e6:7.3f} M pages/s"
          + (f"  (EXTRAPOLATED to all pages: {total / n_rate:.1f} s)" if extrapolated else ""))
    print(f"  bulk scanner    : {b_pages:>9} pages in {b_sec:7.3f} s = "
          f"{b_rate / 1e6:7.3f} M pages/s"
          f"  (best of {repeat}; {b_unread} unreadable)")
    print(f"  ratio bulk/naive: {b_rate / n_rate:.0f}x")
    print(f"  marked pages    : naive {n_marked}, bulk {marked_upto} on the same pfns"
          f" ({'agree' if agree else 'DISAGREE'}); bulk total {b_marked}")
    out = {"vmcore": label, "pages": total, "naive_pages": n_pages,
           "naive_pages_per_s": n_rate, "naive_extrapolated": extrapolated,
           "bulk_pages_per_s": b_rate, "ratio": b_rate / n_rate, "agree": agree}
    if jobs > 1:
        best = None
        for _ in range(repeat):
            prog = open_target(vmcore=vmcore, symbols=[vmlinux])
            result = bulk_parallel(prog, ranges, bit, n_end, jobs)
            del prog
            gc.collect()
            if best is None or result[3] < best[3]:
                best = result
        p_pages, p_marked, p_unread, p_sec, p_upto = best
        p_rate = p_pages / p_sec
        p_agree = p_upto == n_marked and p_marked == b_marked and p_pages == b_pages
        agree = agree and p_agree
        print(f"  bulk, {jobs} procs  : {p_pages:>9} pages in {p_sec:7.3f} s = "
              f"{p_rate / 1e6:7.3f} M pages/s  (best of {repeat}; {p_unread} unreadable; "
              f"{'agrees' if p_agree else 'DISAGREES'} with one process)")
        print(f"  ratio {jobs} procs/naive: {p_rate / n_rate:.0f}x")
        out.update(parallel_jobs=jobs, parallel_pages_per_s=p_rate,
                   parallel_ratio=p_rate / n_rate, agree=agree)
    print(f"  peak RSS so far : {peak_rss_mib():.0f} MiB"
          + (f" (a worker: {children_rss_mib():.0f} MiB)" if jobs > 1 else ""))
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def pagetables(label: str, vmcore: str, vmlinux: str, repeat: int) -> dict:
    """The page-table step, bulk against follow_phys() per page (see the module)."""
    from drgn_vmemmap.pagetable import translate

    def spans(prog: Program) -> List[Tuple[int, int]]:
        f = features(prog)
        page = 1 << f.page_shift
        out = []
        for s, e, _ in for_each_valid_page_range(prog):
            lo = (f.vmemmap_base + s * f.layout.size) & ~(page - 1)
            hi = -(-(f.vmemmap_base + e * f.layout.size) // page) * page
            out.append((lo, hi - lo))
        return out

    prog = open_target(vmcore=vmcore, symbols=[vmlinux])
    todo = spans(prog)
    npages = sum(n for _, n in todo) >> features(prog).page_shift
    t = time.perf_counter()
    slow = [m for lo, n in todo for m in translate(prog, lo, n, slow=True)]
    n_sec = time.perf_counter() - t
    best = None
    for _ in range(repeat):
        del prog
        gc.collect()
        prog = open_target(vmcore=vmcore, symbols=[vmlinux])
        t = time.perf_counter()
        fast = [m for lo, n in todo for m in translate(prog, lo, n)]
        sec = time.perf_counter() - t
        best = sec if best is None else min(best, sec)
    assert best is not None
    arch = prog.platform.arch.name if prog.platform else "?"
    agree = fast == slow
    print(f"{label}: page tables ({arch}), {npages} vmemmap pages")
    print(f"  follow_phys/page: {n_sec:7.3f} s = {n_sec / npages * 1e6:6.2f} us/page")
    print(f"  bulk walker     : {best:7.3f} s = {best / npages * 1e6:6.3f} us/page "
          f"(best of {repeat})")
    print(f"  ratio           : {n_sec / best:.0f}x; mappings "
          f"{'agree' if agree else 'DISAGREE'} ({len(fast)} runs)")
    return {"vmcore": label, "pagetables": True, "arch": arch, "vmemmap_pages": npages,
            "naive_seconds": n_sec, "bulk_seconds": best, "ratio": n_sec / best,
            "agree": agree}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vmcores", nargs="*",
                        help="fixture names or vmcore files (default: every fixture)")
    parser.add_argument("-s", "--vmlinux", help="vmlinux for the given vmcores")
    parser.add_argument("--limit", type=int, help="pages for the naive loop (rate extrapolated)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of the bulk scanner, best reported (default 3)")
    parser.add_argument("--elf", action="store_true",
                        help="also benchmark an ELF copy of each fixture (written once)")
    parser.add_argument("--elf-dir", default=os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "drgn-vmemmap-bench"))
    parser.add_argument("--json", action="store_true", help="print results as JSON too")
    parser.add_argument("--pagetables", action="store_true",
                        help="also time the vmemmap page-table walk against follow_phys()")
    parser.add_argument("-j", "--jobs", type=int, default=1,
                        help="also time the scan in JOBS forked processes (what check does "
                        "on large core dumps)")
    args = parser.parse_args()

    targets = []
    for path in sorted(FIXTURES.glob("*.json")):
        manifest = json.loads(path.read_text())
        # The committed dump: NAME.vmcore, or NAME.vmcore.xz (opened through the cache).
        vmcore = FIXTURES / manifest.get("dump", {}).get("file", path.stem + ".vmcore")
        if vmcore.exists() and (not args.vmcores or path.stem in args.vmcores):
            vmlinux = vmlinux_for(manifest)
            if vmlinux:
                targets.append((path.stem, str(vmcore), vmlinux))
            else:
                print(f"{path.stem}: no vmlinux, skipped")
    for v in args.vmcores:
        if not (FIXTURES / f"{v}.json").exists():
            if not args.vmlinux:
                parser.error(f"{v}: not a fixture name; -s VMLINUX is required for a vmcore file")
            targets.append((v, v, args.vmlinux))
    results = []
    for label, vmcore, vmlinux in targets:
        results.append(bench(label, vmcore, vmlinux, args.limit, args.repeat, args.jobs))
        if args.pagetables:
            results.append(pagetables(label, vmcore, vmlinux, args.repeat))
        if args.elf:
            plain = vmcore[:-3] if vmcore.endswith(".xz") else vmcore
            elf = Path(args.elf_dir) / (Path(plain).stem + ".elf")
            if not elf.exists():
                elf.parent.mkdir(parents=True, exist_ok=True)
                ram, sec = write_elf(open_target(vmcore=vmcore, symbols=[vmlinux]), elf)
                gc.collect()
                used = os.stat(elf).st_blocks * 512
                print(f"  wrote {elf}: {ram >> 20} MiB of RAM, {used >> 20} MiB on disk, "
                      f"{sec:.1f} s")
            results.append(bench(label + " (ELF copy)", str(elf), vmlinux, args.limit,
                                 args.repeat, args.jobs))
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")
    if args.json:
        print(json.dumps(results, indent=1))
    return 0 if all(r["agree"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
