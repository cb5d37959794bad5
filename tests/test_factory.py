"""The factory, end to end: rebuild one fixture from an empty cache.

Downloads Debian's linux-source-6.12, builds the kernel, boots it under
QEMU/TCG, runs the scenario, dumps and filters, then compares the new
manifest's ground truth with the committed one.  About 6 minutes on 2 cores.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.factory
def test_rebuild_6_12_hotplug_basic(tmp_path):
    committed = json.loads((ROOT / "vmcores/fixtures/6.12-hotplug-basic.json").read_text())
    env = dict(os.environ, VMCORES_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "vmcores", "build", "6.12", "hotplug-basic",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = json.loads((out / "6.12-hotplug-basic.json").read_text())
    assert (out / "6.12-hotplug-basic.vmcore").stat().st_size > 1_000_000
    assert not list(out.glob("*.partial"))
    for key in ("self_hosted", "memmap_on_memory", "block_size_bytes", "dimms"):
        assert new["truth"][key] == committed["truth"][key], key
    states = lambda m: [(b["id"], b["state"], b["node"]) for b in m["truth"]["blocks"]]
    assert states(new) == states(committed)
    assert new["kernel"]["release"] == committed["kernel"]["release"]

    # The new dump is analysed like the committed one.
    from drgn_vmemmap import check, open_target
    prog = open_target(vmcore=str(out / "6.12-hotplug-basic.vmcore"),
                       symbols=[str(tmp_path / "cache/build/6.12/vmlinux")])
    report = check(prog)
    assert not report.violations
    assert [(r.block, r.start_pfn, r.nr_pages) for r in report.ranges] == \
        [(r["block"], r["start_pfn"], r["nr_pages"]) for r in committed["truth"]["self_hosted"]]
