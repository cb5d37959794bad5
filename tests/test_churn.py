"""Live races: checks of a guest whose memory blocks change under them.

A live check reads the memory map (sections and blocks), runs the rules, then
reads the map again.  It stands if both reads agree, ``uevent_seqnum`` did not
move and no hotplug lock was held at either end; otherwise it is retried (up
to ``LIVE_RETRIES`` times), and violations on a block that changed in any read
become "not checked (live race: block N changed during the check)".  Equal
reads alone are not enough: under a fast loop a block went offline and online
again between two reads, and a section-state violation got through.

``test_checks_under_churn`` boots a committed kernel, starts a shell loop in
the guest that onlines and offlines three hot-plugged blocks as fast as it
can, then paced (0.3 s between changes), and runs ``drgn-vmemmap --qemu``
against it repeatedly: no crash, no traceback, exit 0 and no violation every
time; every live race is reported as such, only for the churned blocks; a
block left alone is found every time.  The churn must really have raced
(some check saw a changed map and retried).  Once the loop is stopped a
final check needs no retry and matches the guest's sysfs exactly.

``test_race_*`` drive the same code deterministically on a fault fixture
whose re-read memory map is made to differ.
"""

import importlib
import re
import time

import pytest
from test_live import (  # noqa: F401 (the helpers boot vmcores' Guest)
    Live,
    boot,
    cli_argv,
    found_ranges,
    kernel_or_skip,
    plug,
    run_json,
    set_state,
    sysfs_blocks,
    truth,
)

from drgn_vmemmap import check

from conftest import fixture_program, manifests

# The module (the package's ``check`` attribute is the function).
check_mod = importlib.import_module("drgn_vmemmap.check")
context_mod = importlib.import_module("drgn_vmemmap.context")

RACE = re.compile(r"live race: block (\d+) changed during the check")
STATE = "/sys/devices/system/memory/memory{}/state"
# The loop's files, in the guest's initramfs (its /init makes /tmp), not on the host.
COUNT, NEW, PID = "/tmp/churn.count", "/tmp/churn.new", "/tmp/churn.pid"


def loop(blocks_how, pause: str) -> str:
    """A guest shell loop onlining (each block its own way) then offlining.

    Offlining a block onlined to ZONE_NORMAL can wait forever for unmovable
    kernel pages that landed in it (seen on 7.2: going-offline for good), so
    that offline is given one second; the signal makes offline_pages() give up
    and the block stays online until the next try.
    """
    steps = [f"echo {how} > {STATE.format(b)}" for b, how in blocks_how]
    steps += [f"echo offline > {STATE.format(b)}" if how == "online_movable" else
              f"timeout 1 sh -c 'echo offline > {STATE.format(b)}'" for b, how in blocks_how]
    body = "; ".join(f"{s} {pause}".strip() for s in steps)
    return (f"( i=0; while true; do {body}; i=$((i+1)); echo $i > {NEW}; mv {NEW} {COUNT}; "
            f"done ) > /dev/null 2>&1 & echo $! > {PID}")


def cycles(g) -> int:
    """Loop cycles so far.  The loop renames a complete file into place: a
    plain ``echo > file`` let a read land between truncation and write and
    see an empty file (a CI run read 39, then 0)."""
    out = g.sh(f"cat {COUNT} 2>/dev/null", check=False).strip()
    return int(out) if out else 0


def stop(g) -> None:
    g.sh(f"kill $(cat {PID}); rm -f {COUNT} {NEW}")
    # Let the last write finish: two equal reads in a row.
    prev = None
    for _ in range(50):
        cur = sysfs_blocks(g)
        if cur == prev:
            return
        prev = cur
        time.sleep(0.3)
    raise RuntimeError("blocks kept changing after the loop was stopped")


@pytest.mark.live
@pytest.mark.parametrize("key", ["6.12", "7.2"])
def test_checks_under_churn(key, tmp_path, record_property):
    _, vmlinux = kernel_or_skip(key)
    runs, retried, raced = 0, 0, 0
    phases = []
    with boot(key, tmp_path / key) as g:
        bs = truth.block_size(g)
        dimm0 = plug(g, "dimm0", 256, 1, bs)
        dimm1 = plug(g, "dimm1", 128, 0, bs)
        stable = plug(g, "dimm2", 128, 1, bs)[0]
        set_state(g, stable, "online_movable")
        churned = set(dimm0 + dimm1)
        per_block = bs // 4096
        churn = [(b, "online_movable") for b in dimm0] + [(dimm1[0], "online_kernel")]
        for pause, nruns in (("", 8), ("; sleep 0.3", 6)):
            retried0, raced0 = retried, raced
            g.sh(loop(churn, pause))
            time.sleep(1)
            start = cycles(g)
            for _ in range(nruns):
                # One client at a time on the tool's socket, each run a new one.
                status, doc, stderr = run_json(cli_argv(g.tool_qmp_path, vmlinux))
                runs += 1
                assert status == 0, (doc["violations"], stderr[-2000:])
                assert doc["violations"] == []
                assert doc["target"]["kind"] == "qmp"
                raced_blocks = set()
                for n in doc["not_checked"]:
                    m = RACE.fullmatch(n["reason"])
                    if m:
                        bid = int(m.group(1))
                        raced_blocks.add(bid)
                        assert n["pfn_start"] < (bid + 1) * per_block
                        assert bid * per_block < n["pfn_end"]
                assert raced_blocks <= churned
                retried += doc["stats"]["live_retries"] > 0
                raced += bool(raced_blocks)
                # The block nobody touches is found every time.
                assert (stable, stable * per_block, 512, "online", 1) in found_ranges(doc)
            done = cycles(g) - start
            assert done > 0, "the churn loop did not run during the checks"
            phases.append(f"{'paced' if pause else 'fast'}: {nruns} checks, "
                          f"{retried - retried0} retried, {raced - raced0} raced, "
                          f"{done} loop cycles")
            stop(g)
        summary = (f"{runs} checks, {retried} retried, {raced} ended with a live race "
                   f"({'; '.join(phases)})")
        print(f"{key}: {summary}")
        record_property("churn", summary)
        assert retried > 0, "the churn never changed a block during a check"

        # Settled: no retry, and exactly what the guest says.
        doc = Live(key, g, vmlinux, bs).check_against_guest(
            cli_argv(g.tool_qmp_path, vmlinux))
        assert doc["stats"]["live_retries"] == 0
        assert not [n for n in doc["not_checked"] if RACE.fullmatch(n["reason"])]


# --- deterministic: a re-read memory map that differs ---------------------------


FAULTS = "6.12-faults"


def flickering_memory_map(monkeypatch, block: int, flicker_until: int):
    """Make check() see a live target whose ``block`` has a section word that
    differs between consecutive reads for the first ``flicker_until`` reads."""
    real = check_mod.memory_map
    calls = []

    def fake(prog, vmemmap_page_type=None):
        mm = real(prog, vmemmap_page_type)
        n = len(calls)
        calls.append(n)
        if n < flicker_until and n % 2:
            per = mm.features.sections_per_block
            for nr in range(block * per, (block + 1) * per):
                s = mm.sections.get(nr)
                if s is not None:  # a bit no rule reads
                    mm.sections[nr] = s._replace(flags=s.flags ^ (1 << 40))
        return mm

    # check() re-reads the map itself; its Context (drgn_vmemmap.context)
    # reads the first one.
    for mod in (check_mod, context_mod):
        monkeypatch.setattr(mod, "target_kind", lambda prog: "qmp")
        monkeypatch.setattr(mod, "memory_map", fake)
    return calls


def expected(name):
    return sorted((f["expect"]["rule"], f["expect"]["pfn_start"], f["expect"]["block"])
                  for f in manifests()[name]["faults"])


@pytest.fixture
def faults_prog():
    if FAULTS not in manifests():
        pytest.fail(f"fixture {FAULTS} missing")
    return fixture_program(FAULTS)


def test_race_that_persists_becomes_not_checked(monkeypatch, faults_prog):
    block = 32  # dimm0's first block: four of the fixture's faults
    calls = flickering_memory_map(monkeypatch, block, flicker_until=1000)
    report = check(faults_prog)
    assert len(calls) == 2 * (1 + check_mod.LIVE_RETRIES)
    assert report.stats["live_retries"] == check_mod.LIVE_RETRIES
    want = expected(FAULTS)
    kept = [w for w in want if w[2] != block]
    assert sorted((v.rule, v.pfn_start, v.block) for v in report.violations) == kept
    race = [n for n in report.not_checked if RACE.fullmatch(n.reason)]
    assert sorted((n.rule, n.pfn_start) for n in race if n.rule != "*") == \
        sorted((w[0], w[1]) for w in want if w[2] == block)
    assert [(n.rule, n.pfn_start, n.pfn_end) for n in race if n.rule == "*"] == \
        [("*", block * 32768, (block + 1) * 32768)]
    verdicts = {b["block"]: b["verdict"] for b in report.blocks}
    assert verdicts[35] == "error"
    # Its violations were set aside: the raced block is not called "ok".
    assert verdicts[block] == "not checked (live race)"


def test_race_that_settles_is_retried(monkeypatch, faults_prog):
    calls = flickering_memory_map(monkeypatch, 32, flicker_until=2)
    report = check(faults_prog)
    assert len(calls) == 4  # read, re-read (differs), read, re-read (same)
    assert report.stats["live_retries"] == 1
    assert sorted((v.rule, v.pfn_start, v.block) for v in report.violations) == \
        expected(FAULTS)
    assert not [n for n in report.not_checked if RACE.fullmatch(n.reason)]


def ticking_epoch(monkeypatch):
    """Every read of the hotplug epoch sees a new uevent_seqnum."""
    ticks = []

    def fake(prog):
        ticks.append(1)
        return check_mod.Epoch(len(ticks), False)

    monkeypatch.setattr(check_mod, "hotplug_epoch", fake)
    return ticks


def test_race_seen_only_by_the_epoch(monkeypatch, faults_prog):
    # A block went offline and online again between two equal reads (ABA):
    # only uevent_seqnum tells.  The block changed in no read, so nothing
    # says which violation it could explain: they stay, with a note.
    calls = flickering_memory_map(monkeypatch, 32, flicker_until=0)
    ticks = ticking_epoch(monkeypatch)
    report = check(faults_prog)
    assert len(calls) == 8 and len(ticks) == 8
    assert report.stats["live_retries"] == check_mod.LIVE_RETRIES
    assert sorted((v.rule, v.pfn_start, v.block) for v in report.violations) == \
        expected(FAULTS)
    notes = [n.reason for n in report.not_checked if n.reason.startswith("live race")]
    assert notes == ["live race: devices changed during the check (uevent_seqnum 7 -> 8); "
                     "no memory block was seen changing"]


def test_race_blocks_from_every_read(monkeypatch, faults_prog):
    # The map differed only in the first attempt; later attempts read equal
    # maps but the epoch kept moving: block 32 is still the one that raced.
    flickering_memory_map(monkeypatch, 32, flicker_until=2)
    ticking_epoch(monkeypatch)
    report = check(faults_prog)
    assert {v.block for v in report.violations} == {3, 34, 35}
    assert [n.pfn_start for n in report.not_checked if n.rule == "*"
            and RACE.fullmatch(n.reason)] == [32 * 32768]


def test_vmcore_is_read_once(monkeypatch, faults_prog):
    real = check_mod.memory_map
    calls = []
    for mod in (check_mod, context_mod):
        monkeypatch.setattr(mod, "memory_map", lambda *a: calls.append(1) or real(*a))
    report = check(faults_prog)
    assert len(calls) == 1
    assert "live_retries" not in report.stats
