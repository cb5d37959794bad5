#!/usr/bin/env python3
"""
Benchmark: ``watch`` over QMP for a long time under memory-hotplug churn,
sampling the watcher's resident memory.

A committed kernel (default 6.12) boots under QEMU/TCG with four DIMMs
hot-added: 8 HugeTLB pages are allocated from boot memory first (HugeTLB
vmemmap optimisation remaps their vmemmap), then two DIMMs are onlined
movable.  ``drgn-vmemmap --qemu SOCKET watch --format json`` runs on the
host, as a user would start it (``--interval 0.1``, ``--verify-every 60``:
the refreshed model is compared with one built from scratch every minute),
while the guest runs, in a loop until ``--minutes`` pass:

* ``mem-on-off-test.sh -r 30`` from the kernel's own Debian source package
  (it onlines every offline block, offlines a share of the online ones and
  onlines them again);
* the HugeTLB pool emptied and refilled (HVO undone and, where the pages
  land outside self-hosted memory, done again: page-table changes that no
  uevent announces).

Every ``--sample`` seconds the watcher's VmRSS is read from
``/proc/PID/status``.  The result is one JSON document: the cycles run, the
watcher's summary (changes, transitions per minute, re-checks and their
latency, looks at the kernel and their cost, how often the memory map and
the vmemmap were derived again, verifications and drift, CPU), and the RSS
samples with their first (after the first minute), maximum, last and
least-squares slope in MiB per hour.

Not a test: run ``python benchmarks/watch_soak.py [--kernel K] [--minutes M]``.
"""

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from test_live import boot, kernel_or_skip, plug, set_state, tool  # noqa: E402

from vmcores import selftest, truth  # noqa: E402
from vmcores.guest import build_initramfs  # noqa: E402

HUGE = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def slope_per_hour(samples: List[Tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB), in MiB per hour."""
    n = len(samples)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in samples) / n
    my = sum(r for _, r in samples) / n
    sxx = sum((t - mx) ** 2 for t, _ in samples)
    sxy = sum((t - mx) * (r - my) for t, r in samples)
    return sxy / sxx * 3600 if sxx else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--kernel", default="6.12")
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--sample", type=float, default=30, metavar="SECONDS")
    args = ap.parse_args()
    key = args.kernel
    _, vmlinux = kernel_or_skip(key)
    with tempfile.TemporaryDirectory(prefix="watch-soak-") as tmp:
        work = Path(tmp)
        initramfs = build_initramfs(work / "initramfs.cpio.gz", files={
            "bin/bash": selftest.bash_static(),
            "mem-on-off-test.sh": selftest.mem_on_off_test(key)})
        with boot(key, work, initramfs=initramfs, slots=6) as g:
            bs = truth.block_size(g)
            g.sh(f"echo 8 > {HUGE}")
            dimms = [plug(g, "dimm0", 256, 1, bs), plug(g, "dimm1", 256, 0, bs),
                     plug(g, "dimm2", 128, 1, bs), plug(g, "dimm3", 128, 0, bs)]
            for blocks in dimms[:2]:
                for b in blocks:
                    set_state(g, b, "online_movable")
            proc = subprocess.Popen(
                tool("drgn-vmemmap", "drgn_vmemmap.cli") + [
                    "--qemu", str(g.tool_qmp_path), "-s", vmlinux, "watch", "--format",
                    "json", "--interval", "0.1", "--verify-every", "60"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                # A background job of a non-interactive shell (nohup ... &)
                # starts with SIGINT ignored: stop with SIGTERM, which
                # watch handles as Ctrl-C (summary included).
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            events: List[Dict[str, Any]] = []

            def read() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    events.append(json.loads(line))

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            samples: List[Tuple[float, float]] = []
            t0 = time.monotonic()
            next_sample = t0
            cycles = 0
            end = t0 + args.minutes * 60
            while time.monotonic() < end:
                g.sh("bash /mem-on-off-test.sh -r 30 > /dev/null 2>&1; true", timeout=900)
                g.sh(f"echo 0 > {HUGE}; echo 8 > {HUGE}")
                cycles += 1
                while time.monotonic() >= next_sample:
                    samples.append((round(time.monotonic() - t0, 1), round(rss_mib(proc.pid), 1)))
                    next_sample += args.sample
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=300)
            reader.join(timeout=60)
    summary = events[-1]
    later = [s for s in samples if s[0] >= 60] or samples
    whys: Dict[str, int] = {}
    for e in events:
        for w in e.get("why", []):
            w = "page-table page(s)" if "page-table" in w else w
            whys[w] = whys.get(w, 0) + 1
    print(json.dumps({
        "kernel": key, "minutes": args.minutes, "cycles": cycles,
        "watch_exit": proc.returncode, "summary": summary, "change_reasons": whys,
        "rss_mib": {"first_after_1min": later[0][1] if later else None,
                    "max": max(r for _, r in samples) if samples else None,
                    "last": samples[-1][1] if samples else None,
                    "slope_mib_per_hour": round(slope_per_hour(later), 2)},
        "rss_samples": samples}, indent=1))


if __name__ == "__main__":
    main()
