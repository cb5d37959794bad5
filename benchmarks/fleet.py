#!/usr/bin/env python3
"""
Benchmark: ``triage -j N`` (one local process pool) against ``triage
--scheduler local:N`` (a Dask LocalCluster of N one-thread workers, each
dump a task run in the worker's analysis process: drgn_vmemmap/fleet.py, fleetworker.py).

``--count`` (200) hard links of one small committed fixture (default
``vmcores/fixtures/6.12-kdump.vmcore``, a real makedumpfile dump that checks
clean; a plain file, so no copy is decompressed) go into a temporary
directory; each is a separate dump to triage.  Both runs are the CLI end to
end, in a subprocess (start-up, pairing, the summary table included), after
one warm-up triage that leaves the vmlinux decompressed in the cache and the
dump in the page cache.  Each is also run on a single dump, which gives its
fixed cost (pool or cluster start and stop), so the overhead per task is
reported twice: ``(cluster - pool) / count`` over the whole runs, and the
same without the fixed costs, ``((cluster - cluster_1) - (pool - pool_1)) /
(count - 1)``.

It also reports the mean ``seconds`` of the analyses (as the JSON lines say),
the dump's size, and the bytes one dump's pairing and analysis read with
``read()`` (``rchar`` of ``/proc/self/io`` around
:func:`~drgn_vmemmap.dumpinfo.dump_info`, :func:`~drgn_vmemmap.pairing.pair_vmlinux`
and :func:`~drgn_vmemmap.triage.analyse` in a fresh process, page cache or
not; what drgn maps of the decompressed vmlinux is not counted), from which
the README estimates a larger cluster and the storage it needs.

Not a test: run ``python benchmarks/fleet.py [-j N] [--count N] [FIXTURE]``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "vmcores" / "fixtures" / "6.12-kdump.vmcore"

_READ_BYTES = """
import json, sys
from drgn_vmemmap.dumpinfo import dump_info
from drgn_vmemmap.pairing import VmlinuxIndex, pair_vmlinux
from drgn_vmemmap.triage import analyse
dump, debug = sys.argv[1], sys.argv[2]
index = VmlinuxIndex([debug])
def rchar():
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])
before = rchar()
info = dump_info(dump)
pairing = pair_vmlinux(dump, info, index, {})
doc = analyse({"path": dump, "vmlinux": pairing.vmlinux, "pairing": pairing.how,
               "release": info.release})
print(json.dumps({"rchar": rchar() - before, "status": doc["status"]}))
"""


def triage(args: List[str], cwd: Path) -> Tuple[float, List[Dict[str, Any]]]:
    """Wall seconds and JSON lines of one ``drgn-vmemmap triage`` run."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "drgn_vmemmap.cli", "triage", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=3600)
    wall = time.monotonic() - t0
    if proc.returncode not in (0, 1) or "Traceback" in proc.stderr:
        sys.exit(f"triage {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, [json.loads(line) for line in proc.stdout.splitlines()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("fixture", nargs="?", default=str(DEFAULT))
    p.add_argument("-j", "--jobs", type=int, default=2, help="pool size = cluster size")
    p.add_argument("--count", type=int, default=200, help="copies of the fixture")
    p.add_argument("--debug-directory", default=str(REPO / "vmcores" / "kernels"))
    args = p.parse_args()
    fixture = Path(args.fixture).resolve()
    debug = ["--debug-directory", args.debug_directory]
    n = args.jobs
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        many, one = Path(tmp) / "many", Path(tmp) / "one"
        many.mkdir()
        one.mkdir()
        for i in range(args.count):
            dst = many / f"dump-{i:04d}.vmcore"
            try:
                os.link(fixture, dst)
            except OSError:
                dst.write_bytes(fixture.read_bytes())
        os.link(many / "dump-0000.vmcore", one / "dump-0000.vmcore")
        triage(["-j", "1", str(one), *debug], REPO)  # warm-up

        pool_1, _ = triage(["-j", str(n), str(one), *debug], REPO)
        cluster_1, _ = triage(["--scheduler", f"local:{n}", str(one), *debug], REPO)
        pool, pool_docs = triage(["-j", str(n), str(many), *debug], REPO)
        cluster, cluster_docs = triage(["--scheduler", f"local:{n}", str(many), *debug], REPO)
        read = subprocess.run([sys.executable, "-c", _READ_BYTES, str(one / "dump-0000.vmcore"),
                               args.debug_directory], capture_output=True, text=True,
                              cwd=REPO, timeout=600)
        rchar = json.loads(read.stdout)["rchar"] if read.returncode == 0 else None
    for docs in (pool_docs, cluster_docs):
        statuses = {d["status"] for d in docs}
        if len(docs) != args.count or "error" in statuses:
            sys.exit(f"expected {args.count} analysed dumps, got {len(docs)} ({statuses})")
    size = fixture.stat().st_size

    def mean_seconds(docs: List[Dict[str, Any]]) -> float:
        return sum(d["seconds"] for d in docs) / len(docs)

    out = {
        "fixture": fixture.name, "dump_bytes": size, "count": args.count, "workers": n,
        "pool_seconds": round(pool, 2), "cluster_seconds": round(cluster, 2),
        "pool_1_seconds": round(pool_1, 2), "cluster_1_seconds": round(cluster_1, 2),
        "pool_dumps_per_minute": round(args.count / pool * 60, 1),
        "cluster_dumps_per_minute": round(args.count / cluster * 60, 1),
        "overhead_per_task_seconds": round((cluster - pool) / args.count, 4),
        "overhead_per_task_without_fixed_seconds": round(
            ((cluster - cluster_1) - (pool - pool_1)) / (args.count - 1), 4),
        "pool_mean_analysis_seconds": round(mean_seconds(pool_docs), 3),
        "cluster_mean_analysis_seconds": round(mean_seconds(cluster_docs), 3),
        "bytes_read_per_analysis": rchar,
    }
    print(f"{args.count} copies of {fixture.name} ({size / 1e6:.1f} MB), {n} workers")
    print(f"  pool    -j {n}:        {pool:7.2f} s  {out['pool_dumps_per_minute']:7.1f} dumps/min"
          f"  (1 dump: {pool_1:.2f} s; mean analysis {out['pool_mean_analysis_seconds']} s)")
    print(f"  cluster local:{n}:     {cluster:7.2f} s  {out['cluster_dumps_per_minute']:7.1f} "
          f"dumps/min  (1 dump: {cluster_1:.2f} s; mean analysis "
          f"{out['cluster_mean_analysis_seconds']} s)")
    print(f"  overhead per task: {out['overhead_per_task_seconds'] * 1000:.1f} ms "
          f"({out['overhead_per_task_without_fixed_seconds'] * 1000:.1f} ms without the fixed "
          "start/stop costs)")
    if rchar is not None:
        print(f"  one dump's pairing and analysis read {rchar / 1e6:.2f} MB (rchar)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
