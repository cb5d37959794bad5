"""The factory, end to end: rebuild one fixture from an empty cache.

Downloads Debian's linux-source-6.12 (whatever point release the mirror has
today: the mirror keeps only the newest), builds the kernel, boots it under
QEMU/TCG, runs the scenario, dumps and filters, then compares what the factory
promises with the committed fixture: the series, the ground truth, and that
the new dump is analysed like the committed one.  The point release is never
compared: the committed fixture was built from an older one.  About 6 minutes
on 2 cores.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vmcores import debian

ROOT = Path(__file__).resolve().parent.parent


def series(release: str) -> str:
    """'6.12.118' -> '6.12'; '6.12.117-marking' -> '6.12'."""
    return ".".join(re.match(r"(\d+)\.(\d+)", release).groups())


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
    # Pages stored plain, the file xz'd (scenario xz=True), as committed.
    assert new["dump"]["file"] == committed["dump"]["file"] == "6.12-hotplug-basic.vmcore.xz"
    assert (out / new["dump"]["file"]).stat().st_size > 1_000_000
    assert not list(out.glob("*.partial"))
    for key in ("self_hosted", "memmap_on_memory", "block_size_bytes", "dimms"):
        assert new["truth"][key] == committed["truth"][key], key
    states = lambda m: [(b["id"], b["state"], b["node"]) for b in m["truth"]["blocks"]]
    assert states(new) == states(committed)
    # The series asked for, from the package of that series, with the exact
    # version and suite it came from recorded.
    assert series(new["kernel"]["release"]) == series(committed["kernel"]["release"]) == "6.12"
    package, version = new["kernel"]["source"].split()
    assert package == "linux-source-6.12" and debian.series_of(version) == "6.12"
    assert new["kernel"]["suite"]
    assert new["truth"]["uname"] == new["kernel"]["release"]  # `uname -r` in the guest

    # The new dump is analysed like the committed one.
    from drgn_vmemmap import check, open_target
    prog = open_target(vmcore=str(out / new["dump"]["file"]),
                       symbols=[str(tmp_path / "cache/build/6.12/vmlinux")])
    report = check(prog)
    assert not report.violations
    assert [(r.block, r.start_pfn, r.nr_pages) for r in report.ranges] == \
        [(r["block"], r["start_pfn"], r["nr_pages"]) for r in committed["truth"]["self_hosted"]]
    old = open_target(vmcore=str(ROOT / "vmcores/fixtures" / committed["dump"]["file"]),
                      symbols=[str(ROOT / "vmcores/kernels/6.12/vmlinux.xz")])
    old_report = check(old)
    verdicts = lambda r: [(b["block"], b["state"], b["verdict"]) for b in r.blocks]
    assert verdicts(report) == verdicts(old_report)


@pytest.mark.factory
def test_series_nowhere_is_one_line(tmp_path):
    """A series no suite has: one line naming it and the series that exist, exit 2."""
    env = dict(os.environ, VMCORES_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "vmcores", "build", "5.99", "hotplug-basic"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert "Traceback" not in line
    assert line.startswith("python -m vmcores: error: linux-source-5.99: no such package")
    # The committed series are all on the mirror, each with a version of
    # that series and the suite it is in.
    for s in ("6.1", "6.12", "7.2"):
        m = re.search(rf"(?<![\d.]){re.escape(s)} \(([^,]+), ([\w-]+)\)", line)
        assert m, (s, line)
        assert debian.series_of(m.group(1)) == s


def test_unknown_scenario_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "vmcores", "build", "6.12", "no-such"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no scenario 'no-such'" in proc.stderr


C = debian.Candidate
OWN = ["bookworm", "bookworm-updates", "bookworm-security"]
GROUPS = [OWN] + [[s] for s in debian.EXTRA_SUITES if s not in OWN]


def test_pick_prefers_own_suites_then_newest():
    """The machine's own suites win over a newer version elsewhere; within
    them the newest version (Debian order, not string order) is taken."""
    found = [C("linux-source-6.12", "6.12.99-1~deb12u1", "bookworm-security"),
             C("linux-source-6.12", "6.12.118-1~deb12u1", "bookworm-security"),
             C("linux-source-6.12", "6.12.119-1", "trixie-security")]
    assert debian._pick(found, GROUPS).version == "6.12.118-1~deb12u1"


def test_pick_follows_a_series_out_of_sid():
    """7.2 is preferred from sid; when 7.3 replaces it there, the newest 7.2
    of the next suite that has it (forky, then backports) is taken."""
    in_sid = [C("linux-source-7.2", "7.2.13-1", "sid"),
              C("linux-source-7.2", "7.2.12-1", "forky"),
              C("linux-source-7.2", "7.2.12-1~bpo13+1", "trixie-backports")]
    assert debian._pick(in_sid, [["sid"]] + GROUPS).suite == "sid"
    left = in_sid[1:]
    assert debian._pick(left, [["sid"]] + GROUPS) == left[0]
    assert debian._pick(left[1:], [["sid"]] + GROUPS) == left[1]
    assert debian._pick([], GROUPS) is None


def test_series_of():
    assert debian.series_of("6.12.118-1~deb12u1") == "6.12"
    assert debian.series_of("7.3~rc7-1~exp1") == "7.3"
    assert debian.series_of("1:6.1.192-3") == "6.1"


def test_sources_parsed_in_both_formats(tmp_path):
    (tmp_path / "a.sources").write_text(
        "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb-src\nURIs: http://m.example/debian\nSuites: sid\n\n"
        "Types: deb\nURIs: http://m.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nEnabled: no\nURIs: http://m.example/debian\nSuites: experimental\n")
    (tmp_path / "b.list").write_text(
        "deb [signed-by=/k.gpg] http://m.example/debian trixie main\n"
        "# deb http://m.example/debian forky main\n"
        "deb https://elsewhere.example/apt stable main\n")
    assert debian._apt_sources([tmp_path / "a.sources", tmp_path / "b.list"]) == [
        ("http://m.example/debian", "bookworm"), ("http://m.example/debian", "bookworm-updates"),
        ("http://m.example/debian-security", "bookworm-security"),
        ("http://m.example/debian", "trixie")]
