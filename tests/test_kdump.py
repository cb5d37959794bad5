"""Dumps from the kernel's own kdump path (vmcores/kdump.py).

A capture kernel loaded with ``kexec -p`` ran makedumpfile ``-F -c -d 31`` (``-d 1``
on 7.2) on ``/proc/vmcore``, as Debian's kdump-tools does.  The ground truth was read
from the guest before the panic; what the capture kernel itself did (which
memory blocks it onlined) is in the manifest's ``dump`` record.

* A whole dump (capture kernel with ``acpi_no_memhotplug``) checks clean
  with the exact self-hosted ranges, whatever ``-d 31`` dropped.
* A damaged dump (the capture kernel onlined the DIMMs and used them)
  names the damaged blocks, each one the capture kernel onlined, reports no
  violation in them, names the cause, and triage counts it as damaged.
"""

import json
import subprocess
import sys

import pytest

from drgn_vmemmap import check
from drgn_vmemmap.report import exit_status

from conftest import FIXTURES, KERNELS, REPO, fixture_program, manifests

MANIFESTS = manifests()
KDUMPS = sorted(n for n, m in MANIFESTS.items()
                if "capture kernel" in m.get("dump", {}).get("written_by", ""))
WHOLE = [n for n in KDUMPS if "acpi_no_memhotplug" in MANIFESTS[n]["dump"]["capture_cmdline"]]
DAMAGED = [n for n in KDUMPS if n not in WHOLE]


def test_corpus_has_kdump_fixtures():
    assert WHOLE, "no whole kdump fixture"
    assert DAMAGED, "no damaged kdump fixture"


@pytest.mark.parametrize("name", WHOLE)
def test_whole_kdump_checks_clean(name):
    m = MANIFESTS[name]
    # -d 31 as Debian's kdump-tools runs it; -d 1 on 7.2, whose page-type
    # encoding Debian 12's makedumpfile predates.
    assert m["dump"]["makedumpfile_level"] == (1 if m["kernel"]["key"] == "7.2" else 31)
    hot = {b["id"] for b in m["truth"]["blocks"] if b["hotplugged"]}
    assert not hot & set(m["dump"]["capture_onlined_blocks"]), \
        "acpi_no_memhotplug: the capture kernel onlined no DIMM"
    report = check(fixture_program(name))
    assert [(r.block, r.start_pfn, r.nr_pages) for r in report.ranges] == \
        [(r["block"], r["start_pfn"], r["nr_pages"]) for r in m["truth"]["self_hosted"]]
    assert not report.violations and not report.damaged and exit_status(report) == 0


@pytest.mark.parametrize("name", DAMAGED)
def test_damaged_kdump_is_damage_not_violations(name):
    m = MANIFESTS[name]
    report = check(fixture_program(name))
    damaged = [d["block"] for d in report.damaged]
    assert damaged, "the capture kernel's use of the DIMMs damaged no memmap"
    onlined = set(m["dump"]["capture_onlined_blocks"])
    hot_online = {b["id"] for b in m["truth"]["blocks"]
                  if b["hotplugged"] and b["state"] == "online"}
    assert set(damaged) <= onlined & hot_online, (damaged, onlined)
    assert not [v for v in report.violations if v.block in damaged]
    assert "acpi_no_memhotplug" in report.damaged[0]["cause"]
    verdicts = {b["block"]: b["verdict"] for b in report.blocks}
    assert all(verdicts[b] == "not checked (dump damaged)" for b in damaged)
    assert exit_status(report) == (1 if report.errors() else 0)


@pytest.mark.parametrize("name", DAMAGED)
def test_triage_counts_the_damaged_kdump(name):
    vmcore = FIXTURES / MANIFESTS[name]["dump"]["file"]
    proc = subprocess.run([sys.executable, "-m", "drgn_vmemmap.cli", "triage", str(vmcore),
                           "--debug-directory", str(KERNELS)], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert "Traceback" not in proc.stderr, proc.stderr
    (doc,) = map(json.loads, proc.stdout.splitlines())
    assert doc["status"] == "damaged", doc["status"]
    assert "1 damaged" in proc.stderr
