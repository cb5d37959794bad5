#!/usr/bin/env python3
"""
Benchmark: what one look of ``watch`` costs on a guest with more memory,
against rebuilding the model and against a whole check, in the same run.

Boots a committed kernel (``--kernel``, default 6.12) under QEMU/TCG with
BOOT GiB of boot memory over two nodes, 8 HugeTLB pages from boot memory
(HVO'd), and DIMMS DIMMs of DIMM_GIB GiB onlined movable (every 128 MiB block
self-hosted), and attaches over QMP.  Then, ``--repeat`` times each, wall
clock:

* ``look``: :meth:`~drgn_vmemmap.refresh.LiveModel.refresh` with nothing
  changed (what ``watch`` does every ``--interval``);
* ``rebuild``: a :class:`~drgn_vmemmap.refresh.LiveModel` built from scratch
  (the memory map, the page-table walk, the marker digest);
* ``check_on_model``: :func:`~drgn_vmemmap.check.check` on the refreshed
  model (a re-check of ``watch``);
* ``check``: a check that reads everything itself (what ``watch`` did per
  change before it kept a model, and what it would have to do every look
  to see an HVO remap or a marker change without one);
* ``markers_naive``: the flags and page_type of the same struct pages the
  look digests, read one drgn ``Object`` at a time (``pfn_to_page(pfn)``),
  against ``markers_bulk``, the look's bulk read of them.

Prints one JSON document: the guest's geometry, the sizes of what a look
reads, and each timing's mean and min.

Run: ``python benchmarks/watch_looks.py [--kernel K] [--boot-gib 4] [--dimms 4]
[--dimm-gib 2] [--repeat 10]``
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_live import kernel_or_skip  # noqa: E402

from vmcores import truth  # noqa: E402
from vmcores.guest import Guest, build_initramfs  # noqa: E402
from vmcores.kernel import boot_image  # noqa: E402
from vmcores.scenarios import CMDLINE  # noqa: E402


def timed(fn: Callable[[], Any], repeat: int) -> Dict[str, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"mean_s": round(sum(times) / len(times), 5), "min_s": round(min(times), 5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--kernel", default="6.12")
    ap.add_argument("--boot-gib", type=int, default=4)
    ap.add_argument("--dimms", type=int, default=4)
    ap.add_argument("--dimm-gib", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    _, vmlinux = kernel_or_skip(args.kernel)
    from drgn.helpers.linux.mm import pfn_to_page

    from drgn_vmemmap.check import check
    from drgn_vmemmap.refresh import LiveModel
    from drgn_vmemmap.target import open_target

    total = args.boot_gib + args.dimms * args.dimm_gib
    with tempfile.TemporaryDirectory(prefix="watch-looks-") as tmp:
        work = Path(tmp)
        initramfs = build_initramfs(work / "initramfs.cpio.gz")
        with Guest(boot_image(ROOT / "vmcores/kernels" / args.kernel), initramfs, work / "g",
                   cmdline=CMDLINE, mem_mb=args.boot_gib << 10, maxmem_gb=total + 1,
                   slots=max(4, args.dimms)) as g:
            bs = truth.block_size(g)
            g.sh("echo 8 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
            for i in range(args.dimms):
                info = g.plug(f"dimm{i}", args.dimm_gib << 10, i % 2)
                first = info["addr"] // bs
                ids = range(first, first + info["size"] // bs)
                while not all(b in truth.memory_blocks(g) for b in ids):
                    time.sleep(0.2)
                g.sh("for b in " + " ".join(map(str, ids)) + "; do echo online_movable > "
                     "/sys/devices/system/memory/memory$b/state; done", timeout=1800)
            prog = open_target(qemu=str(g.tool_qmp_path), symbols=[vmlinux])
            model = LiveModel(prog)
            frames = model.marker_frames()
            pfns = [p for a, b in frames for p in range(a, b)]

            def naive() -> None:
                for p in pfns:
                    page = pfn_to_page(prog, p)
                    page.flags.value_()
                    page.page_type.value_() if page.type_.type.has_member("page_type") \
                        else page._mapcount.counter.value_()

            out = {
                "kernel": args.kernel, "guest_gib": total,
                "sections": len(model.mm.sections), "blocks": len(model.mm.blocks),
                "extents": len(model.backing),
                "page_table_pages_cached": len(model.walker._tables) if model.walker else 0,
                "marker_frames": len(pfns),
                "marker_bytes": len(pfns) * model.mm.features.layout.size,
                "look": timed(lambda: model.refresh(), args.repeat),
                "rebuild": timed(lambda: LiveModel(prog), args.repeat),
                "check_on_model": timed(lambda: check(prog, model=model), args.repeat),
                "check": timed(lambda: check(prog), args.repeat),
                "markers_bulk": timed(model._marker_digest, args.repeat),
                "markers_naive": timed(naive, max(1, args.repeat // 5)),
            }
            assert not model.refresh(), "the guest changed during the benchmark"
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
