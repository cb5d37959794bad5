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
  blocks the script changed.  The watcher verifies its refreshed model
  against one built from scratch at every re-check (``--verify-every 0``):
  no drift.
* HVO undone on boot-memory HugeTLB folios (the pool shrunk), which sends
  no uevent (the guest's ``/sys/kernel/uevent_seqnum``): the watcher sees
  the vmemmap page tables change and re-checks, consistent.  A model whose
  page-table refresh is broken on purpose is caught by the verification.
* faultmod (built for the committed kernel's own source) clearing
  ``PG_vmemmap_self_hosted`` on an online self-hosted block's vmemmap pages
  after the selftest: the violation, at exactly those pfns, in the first
  settled re-check after it (the markers the watcher looks at changed), and
  still standing at the end.
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
HUGE = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
HUGEPAGES = 8


class Watcher:
    """``drgn-vmemmap --qemu SOCKET watch --format json`` in the background."""

    def __init__(self, socket: Path, vmlinux: str):
        self.proc = subprocess.Popen(
            tool("drgn-vmemmap", "drgn_vmemmap.cli") + [
                "--qemu", str(socket), "-s", vmlinux, "watch", "--format", "json",
                "--interval", "0.05", "--verify-every", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # Ctrl-C as in a foreground terminal: a background job of a
            # non-interactive shell (a CI runner's) starts with SIGINT
            # ignored, and Python then installs no KeyboardInterrupt.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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

    def stop(self, sig: int = signal.SIGINT) -> Dict[str, Any]:
        """Ctrl-C (or ``kill``'s SIGTERM); the summary."""
        self.proc.send_signal(sig)
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
        # HugeTLB pages from boot memory, before any movable memory exists:
        # HVO remaps their vmemmap (test_watch_sees_hvo_without_a_uevent).
        g.sh(f"echo {HUGEPAGES} > {HUGE}")
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
    # The refreshed model matched one built from scratch at every re-check,
    # and the memory map was read again only for the changes that moved it.
    assert summary["drifts"] == [] and summary["verifies"] >= len(w.changes()) - 1, summary
    assert summary["memory_map_reads"] <= summary["probes"], summary
    print(f"{key}: {seen} transitions in {seconds:.0f} s of selftest "
          f"({summary['transitions_per_minute']}/min), re-check mean "
          f"{summary['recheck_seconds_mean']} s max {summary['recheck_seconds_max']} s, "
          f"{summary['cpu_seconds']} s CPU, RSS {summary['rss_mib_first']} -> "
          f"{summary['rss_mib_last']} MiB")


@pytest.mark.live
def test_watch_sees_hvo_without_a_uevent(guest):
    """Shrinking the HugeTLB pool undoes HVO on boot-memory folios: their
    vmemmap PTE pages are rewritten and no uevent is sent (the guest's own
    ``/sys/kernel/uevent_seqnum`` says so).  The watcher sees the page-table
    change, re-checks, and stays consistent; its model, compared with one
    built from scratch at every re-check, never drifted."""
    key, g, vmlinux, bs, dimms, spare = guest
    assert int(g.sh(f"cat {HUGE}").strip()) == HUGEPAGES
    w = Watcher(g.tool_qmp_path, vmlinux)
    try:
        w.wait_settled(0)
        time.sleep(1)
        n = len(w.changes())
        seq0 = int(g.sh("cat /sys/kernel/uevent_seqnum"))
        g.sh(f"echo {HUGEPAGES // 2} > {HUGE}")
        assert int(g.sh(f"cat {HUGE}").strip()) == HUGEPAGES // 2
        e = w.wait_settled(n)
        seq1 = int(g.sh("cat /sys/kernel/uevent_seqnum"))
    finally:
        summary = w.stop(signal.SIGTERM)  # as kill, timeout or systemd stop it
    assert seq0 == seq1, "the guest sent a uevent: this test would not show anything"
    assert any("page-table" in why for why in e["why"]), e
    assert e["seqnum"] == seq0 and e["transitions"] == [], e
    assert e["verdict"] == "consistent", e
    assert summary["drifts"] == [] and summary["violations"] == [], summary


@pytest.mark.live
def test_a_stale_model_is_caught_by_verify(guest):
    """The safety net can fail: a model whose page-table refresh is broken
    (it never sees a change) drifts from a fresh one after HVO remaps a
    folio's vmemmap back, and :meth:`LiveModel.verify` says where."""
    key, g, vmlinux, bs, dimms, spare = guest
    from drgn_vmemmap.refresh import LiveModel
    from drgn_vmemmap.target import open_target

    prog = open_target(qemu=str(g.extra_qmp_paths[0]), symbols=[vmlinux])
    model = LiveModel(prog)
    assert model.verify() == []
    before = sum(e.aliased for e in model.backing)
    assert before > 0, "no HVO'd folio left (test_watch_sees_hvo_without_a_uevent keeps some)"
    walker = model.walker
    assert walker is not None
    walker.reread = lambda: 0  # type: ignore[method-assign]
    g.sh(f"echo 0 > {HUGE}")  # HVO undone on the rest of the pool
    assert model.refresh().page_tables == 0
    # (The frames whose markers the model digests follow the backing, so
    # "markers" may differ too: HVO's restored vmemmap pages are new frames.)
    diffs = model.verify()
    assert diffs is not None and diffs[0] == "vmemmap backing", diffs
    assert "memory map" not in diffs, diffs
    # verify() took the fresh model's state: the folios are gone from it.
    assert sum(e.aliased for e in model.backing) < before


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
        n = len(w.changes())
        g.sh(f"insmod /lib/faultmod.ko op=clear_flag pfn={pfn} count=3 flag=owner_priv_1 "
             f"memory_blocks_addr={symbol(key, 'memory_blocks', committed=True)}")
        g.sh("rmmod faultmod")
        # The module's load sends a uevent, and the watcher's look at the
        # markers of the memmap frames sees three flags go: it re-checks
        # with no block changing.
        settled = w.wait_settled(n)
        assert settled["verdict"] == "violations", settled
        assert any("markers" in e["why"] for e in w.changes()[n:]), w.changes()[n:]
    finally:
        summary = w.stop()
    got = [(v["rule"], v["pfn_start"], v["pfn_end"]) for v in summary["violations"]]
    assert got == [("vmemmap-unmarked", pfn, pfn + 3)], summary["violations"]
    assert summary["standing"] and summary["violations"][0]["time"] <= settled["time"]
