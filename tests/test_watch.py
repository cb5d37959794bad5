"""``watch`` on live guests under the kernel's own memory-hotplug selftest.

A committed kernel (6.12, 7.2) boots under QEMU/TCG with three DIMMs
hot-plugged and onlined movable, and one left offline.  ``drgn-vmemmap
--qemu SOCKET watch --format json`` runs on the host while the guest runs
``mem-on-off-test.sh`` taken from that kernel's own Debian source package
(``vmcores/selftest.py``) with Debian's ``bash-static``: it onlines every
offline block, offlines a share of the online ones (``-r``, trimmed here),
and onlines them again, twice.  The guest's own account (the script's
output, sysfs) is the truth of what changed.

* Clean kernels: no violation, and as many block transitions seen as the
  blocks the script changed.
* faultmod (built for the committed kernel's own source) clearing
  ``PG_vmemmap_self_hosted`` on an online self-hosted block's vmemmap pages
  after the selftest: the violation, at
  exactly those pfns, in the first settled re-check after the next change
  (a block onlined), and still standing at the end.
"""

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from test_live import boot, kernel_or_skip, plug, set_state, tool, truth

from vmcores import selftest

KERNELS = ["6.12", "7.2"]


class Watcher:
    """``drgn-vmemmap --qemu SOCKET watch --format json`` in the background."""

    def __init__(self, socket: Path, vmlinux: str):
        self.proc = subprocess.Popen(
            tool("drgn-vmemmap", "drgn_vmemmap.cli") + [
                "--qemu", str(socket), "-s", vmlinux, "watch", "--format", "json",
                "--interval", "0.05"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: List[Dict[str, Any]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def changes(self) -> List[Dict[str, Any]]:
        return [e for e in self.events if e["event"] == "change"]

    def wait_settled(self, after: int, timeout: float = 120) -> Dict[str, Any]:
        """The first settled re-check (consistent or violations) after
        ``after`` changes were seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.changes()[after:]:
                if e["verdict"] != "unsettled":
                    return e
            assert self.proc.poll() is None, self.proc.stderr.read()
            time.sleep(0.1)
        raise AssertionError(f"no settled re-check: {self.changes()[after:]}")

    def stop(self) -> Dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=120)
        self.thread.join(timeout=30)
        assert self.proc.returncode in (0, 1), self.proc.stderr.read()
        summary = self.events[-1]
        assert summary["event"] == "summary"
        return summary


@pytest.fixture(scope="module", params=KERNELS)
def guest(request, tmp_path_factory):
    key = request.param
    _, vmlinux = kernel_or_skip(key)
    work = tmp_path_factory.mktemp(f"watch-{key}")
    from vmcores.faults import build_module
    from vmcores.guest import build_initramfs
    extra = [build_module(key, committed=True)]
    initramfs = build_initramfs(work / "initramfs.cpio.gz", extra, files={
        "bin/bash": selftest.bash_static(),
        "mem-on-off-test.sh": selftest.mem_on_off_test(key)})
    with boot(key, work, initramfs=initramfs, extra_qmp=1, slots=6) as g:
        bs = truth.block_size(g)
        dimms = [plug(g, "dimm0", 256, 1, bs), plug(g, "dimm1", 256, 0, bs),
                 plug(g, "dimm2", 128, 1, bs)]
        for blocks in dimms[:2]:
            for b in blocks:
                set_state(g, b, "online_movable")
        spare = plug(g, "dimm3", 128, 0, bs)  # offline: the selftest onlines it
        yield key, g, vmlinux, bs, dimms, spare


@pytest.mark.live
def test_watch_under_the_selftest(guest):
    key, g, vmlinux, bs, dimms, spare = guest
    w = Watcher(g.tool_qmp_path, vmlinux)
    try:
        first = w.wait_settled(0)
        assert first["verdict"] == "consistent", first
        before = truth.memory_blocks(g)
        t0 = time.monotonic()
        out = ""
        for _ in range(2):
            out += g.sh("bash /mem-on-off-test.sh -r 30 2>&1; echo rc=$?", timeout=600)
        seconds = time.monotonic() - t0
        # What the script did, by its own account: every "offline->online" and
        # "online->offline" line it printed with a success after it.
        onlined = out.count("offline->online memory")
        offlined = out.count("-> Success")
        assert onlined and offlined, out
        time.sleep(1)  # one more look at a quiet guest
        settled = w.wait_settled(len(w.changes()) - 1)
    finally:
        summary = w.stop()
    assert settled["verdict"] == "consistent", settled
    assert summary["violations"] == [] and summary["standing"] == [], summary
    # A block offlined and onlined again between two looks nets out, so the
    # watcher sees at most the selftest's transitions; but every block the
    # selftest left in another state was seen arriving there.
    seen = summary["transitions"]
    after = truth.memory_blocks(g)
    assert after.keys() == before.keys()
    # At most two transitions per attempt: a failed offline may be seen
    # passing through going-offline and back.
    attempts = onlined + out.count("online->offline memory")
    assert 0 < seen <= 2 * attempts, (seen, onlined, offlined, attempts)
    last: Dict[int, str] = {}
    for e in w.changes():
        for t in e["transitions"]:
            last[t["block"]] = t["to"]
    moved = {b: a["state"] for b, a in after.items() if before[b]["state"] != a["state"]}
    assert moved and {b: last.get(b) for b in moved} == moved, (moved, last)
    assert summary["rss_mib_last"] - summary["rss_mib_first"] < 40, summary
    print(f"{key}: {seen} transitions in {seconds:.0f} s of selftest "
          f"({summary['transitions_per_minute']}/min), re-check mean "
          f"{summary['recheck_seconds_mean']} s max {summary['recheck_seconds_max']} s, "
          f"{summary['cpu_seconds']} s CPU, RSS {summary['rss_mib_first']} -> "
          f"{summary['rss_mib_last']} MiB")


@pytest.mark.live
def test_watch_catches_a_broken_marker(guest):
    key, g, vmlinux, bs, dimms, spare = guest
    from vmcores.faults import symbol
    w = Watcher(g.tool_qmp_path, vmlinux)
    try:
        w.wait_settled(0)
        # An online self-hosted block: the first of dimm0 (movable).
        block = next(b for b in dimms[0] if truth.memory_blocks(g)[b]["state"] == "online")
        pfn = block * (bs // 4096) + 100
        g.sh("dmesg -c > /dev/null")
        g.sh(f"insmod /lib/faultmod.ko op=clear_flag pfn={pfn} count=3 flag=owner_priv_1 "
             f"memory_blocks_addr={symbol(key, 'memory_blocks', committed=True)}")
        g.sh("rmmod faultmod")
        n = len(w.changes())
        # A change, the watcher re-checks: one more DIMM hot-added (its
        # blocks appear offline; offlining a block the selftest onlined can
        # fail with EBUSY when it went to a kernel zone).
        plug(g, "dimm4", 128, 0, bs)
        settled = w.wait_settled(n)
        assert settled["verdict"] == "violations", settled
    finally:
        summary = w.stop()
    got = [(v["rule"], v["pfn_start"], v["pfn_end"]) for v in summary["violations"]]
    assert got == [("vmemmap-unmarked", pfn, pfn + 3)], summary["violations"]
    assert summary["standing"] and summary["violations"][0]["time"] <= settled["time"]
