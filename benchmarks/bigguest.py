#!/usr/bin/env python3
"""
A large-memory dump for the benchmark (not a fixture: nothing commits it).

Boots the committed 6.12 kernel under QEMU/TCG with BOOT GiB of boot memory
over two nodes, hot-adds DIMMS DIMMs of DIMM_GIB GiB each (every 128 MiB
block self-hosted) and onlines them movable, then dumps the guest with QEMU
(kdump-zlib), reassembles it with ``makedumpfile -R`` and rewrites it with
``makedumpfile -c -d 0`` (no page excluded: every struct page is in it).  Prints the
dump's path; then time it with ``benchmarks/scan.py -s VMLINUX DUMP`` (the
bulk scanner against the naive drgn loop, same run) and ``drgn-vmemmap
check``.

Run: ``python benchmarks/bigguest.py [--boot-gib 8] [--dimms 4] [--dimm-gib 2] [OUT]``
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
from vmcores.paths import CACHE  # noqa: E402
from vmcores.scenarios import CMDLINE  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", type=Path, default=CACHE / "big" / "big.vmcore")
    ap.add_argument("--boot-gib", type=int, default=8)
    ap.add_argument("--dimms", type=int, default=4)
    ap.add_argument("--dimm-gib", type=int, default=2)
    args = ap.parse_args()

    work = CACHE / "big"
    work.mkdir(parents=True, exist_ok=True)
    initramfs = build_initramfs(work / "initramfs.cpio.gz", [])
    total = args.boot_gib + args.dimms * args.dimm_gib
    t0 = time.monotonic()
    with Guest(ROOT / "vmcores/kernels/6.12/bzImage", initramfs, work / "guest",
               cmdline=CMDLINE, mem_mb=args.boot_gib << 10, maxmem_gb=total + 1,
               slots=max(4, args.dimms)) as g:
        bs = truth.block_size(g)
        print(f"booted with {args.boot_gib} GiB in {time.monotonic() - t0:.0f} s", flush=True)
        for i in range(args.dimms):
            info = g.plug(f"dimm{i}", args.dimm_gib << 10, i % 2)
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
        g.dump(flat)
        print(f"dump-guest-memory: {time.monotonic() - t:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
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
