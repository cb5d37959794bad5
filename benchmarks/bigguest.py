#!/usr/bin/env python3
"""
A large-memory dump for the benchmark (not a fixture: nothing commits it).

Boots a committed kernel (``--kernel``, default 6.12) under QEMU/TCG with
BOOT GiB of boot memory over two nodes (one on arm64), hot-adds DIMMS DIMMs
of DIMM_GIB GiB each (every 128 MiB block self-hosted) and onlines them
movable, then dumps the guest with QEMU.  x86-64: kdump-zlib, reassembled with
``makedumpfile -R`` and rewritten with ``makedumpfile -c -d 0`` (no page
excluded: every struct page is in it).  arm64 (``--kernel 6.12-arm64``): ELF,
its all-zero pages left out of the file (vmcores/elfslim.py), as the arm64
fixtures ship.  Prints the dump's path; then time it with
``benchmarks/scan.py --pagetables -s VMLINUX DUMP`` (the bulk scanner and the
bulk page-table walker against the naive drgn loops, same run) and
``drgn-vmemmap check``.

Run: ``python benchmarks/bigguest.py [--kernel KEY] [--boot-gib 8] [--dimms 4]
[--dimm-gib 2] [OUT]``
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from vmcores import truth  # noqa: E402
from vmcores.guest import Guest, build_initramfs  # noqa: E402
from vmcores.kernel import boot_image, spec  # noqa: E402
from vmcores.paths import CACHE  # noqa: E402
from vmcores.scenarios import CMDLINE  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", type=Path, default=CACHE / "big" / "big.vmcore")
    ap.add_argument("--kernel", default="6.12", help="a committed kernel key (6.12, 6.12-arm64)")
    ap.add_argument("--boot-gib", type=int, default=8)
    ap.add_argument("--dimms", type=int, default=4)
    ap.add_argument("--dimm-gib", type=int, default=2)
    args = ap.parse_args()

    work = CACHE / "big"
    work.mkdir(parents=True, exist_ok=True)
    arch = spec(args.kernel).arch
    nodes = 1 if arch == "arm64" else 2  # see vmcores/scenarios.py, _ARM64_BASIC
    initramfs = build_initramfs(work / "initramfs.cpio.gz", [], arch=arch)
    total = args.boot_gib + args.dimms * args.dimm_gib
    t0 = time.monotonic()
    with Guest(boot_image(ROOT / "vmcores/kernels" / args.kernel), initramfs, work / "guest",
               # arm64: free pages zero, so the ELF keeps little besides the memmap.
               cmdline=CMDLINE + (" init_on_free=1" if arch != "x86_64" else ""),
               mem_mb=args.boot_gib << 10,
               maxmem_gb=total + 1, slots=max(4, args.dimms), arch=arch, nodes=nodes) as g:
        bs = truth.block_size(g)
        print(f"booted with {args.boot_gib} GiB in {time.monotonic() - t0:.0f} s", flush=True)
        for i in range(args.dimms):
            info = g.plug(f"dimm{i}", args.dimm_gib << 10, i % nodes)
            first = info["addr"] // bs
            ids = range(first, first + info["size"] // bs)
            for _ in range(600):
                if all(b in truth.memory_blocks(g) for b in ids):
                    break
                time.sleep(0.2)
            g.sh("for b in " + " ".join(map(str, ids)) + "; do echo online_movable > "
                 "/sys/devices/system/memory/memory$b/state; done", timeout=1800)
            print(f"dimm{i}: blocks {ids.start}-{ids.stop - 1} online", flush=True)
        print(g.sh("grep -E 'MemTotal|MemFree' /proc/meminfo").strip(), flush=True)
        flat = work / "dump.flat"
        t = time.monotonic()
        g.dump(flat, fmt="kdump-zlib" if arch == "x86_64" else "elf")
        print(f"dump-guest-memory: {time.monotonic() - t:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if arch != "x86_64":
        from vmcores.elfslim import slim
        t = time.monotonic()
        nseg, data = slim(flat, args.out)
        flat.unlink()
        print(f"ELF without zero pages: {nseg} segments, {data >> 20} MiB of data, "
              f"{time.monotonic() - t:.0f} s", flush=True)
        print(f"{args.out}: {args.out.stat().st_size / 1e6:.0f} MB, {total} GiB of guest memory")
        return 0
    raw = work / "dump.raw"
    with open(flat, "rb") as f:
        subprocess.run(["makedumpfile", "-R", str(raw)], stdin=f, check=True,
                       capture_output=True)
    flat.unlink()
    # QEMU's own kdump header lacks what libkdumpfile wants (the arch name);
    # makedumpfile rewrites it.  -d 0: no page excluded, zlib per page.
    t = time.monotonic()
    subprocess.run(["makedumpfile", "-c", "-d", "0", str(raw), str(args.out)], check=True,
                   capture_output=True)
    raw.unlink()
    print(f"makedumpfile -c -d 0: {time.monotonic() - t:.0f} s", flush=True)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.0f} MB, {total} GiB of guest memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
