"""The mutation corpus (``tools/mutate.py``): corrupt real dumps one field at
a time; the checker must never crash and must catch every corruption a rule
is about.

A failure here names the mutation and the command that replays it alone.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, fixture_program, manifest_of

sys.path.insert(0, str(REPO))
from tools import mutate  # noqa: E402

#: Mutations per kernel in the default run, and their seed.
COUNT = 60
SEED = 1

FIXTURE_NAMES = mutate.default_fixtures()
pytestmark = pytest.mark.skipif(not FIXTURE_NAMES, reason="no *-hotplug-basic fixture")


@pytest.fixture(scope="module")
def subjects():
    out = {}
    with tempfile.TemporaryDirectory(prefix="drgn-vmemmap-test-mutate-") as tmp:
        for name in FIXTURE_NAMES:
            try:
                out[name] = mutate.prepare(name, Path(tmp))
            except FileNotFoundError as e:  # no vmlinux
                pytest.skip(str(e))
        yield out
        for s in out.values():
            s.close()


def _explain(tally) -> str:
    lines = []
    for kind, items in (("crash", tally.crashes), ("missed", tally.missed)):
        for it in items:
            lines.append(f"{kind}: {it['fixture']} {it['mutation']} (broke {it['broke']})\n"
                         f"  replay: {it['replay']}")
            if it.get("error"):
                lines.append("  " + it["error"].strip().splitlines()[-1])
    return "\n".join(lines)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_mutations(subjects, name):
    s = subjects[name]
    tally = mutate.run_subject(s, SEED, range(COUNT))
    assert tally.mutations == COUNT
    assert not tally.crashes and not tally.missed, _explain(tally)
    assert tally.detected == tally.targeted
    # The corpus must exercise something: invariants broken in every class
    # of kernel object.
    assert tally.targeted >= COUNT // 4
    for klass in ("vmemmap-page", "section", "block"):
        assert tally.by_class[klass]["targeted"] > 0, (klass, dict(tally.by_class))


def test_no_checker_code_in_the_oracle():
    """The oracle shares no code with the checker: importing the corpus (and
    every helper it uses) loads nothing from drgn_vmemmap."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tools import mutate; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'drgn_vmemmap'); "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True,
                       cwd=str(REPO))
    assert p.returncode == 0, f"tools/mutate.py imports {p.stdout.strip()}{p.stderr[-2000:]}"


def _first_online_self_hosted(s):
    for bid, (start, end) in sorted(s.self_hosted.items()):
        if s.blocks[bid]["state"] == "MEM_ONLINE":
            return bid, start, end
    pytest.skip("no online self-hosted block")


def _outcome(s, m):
    assert m is not None
    o = mutate.run_one(s, m)
    assert o.status == "ok", o.error
    return o


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_examples(subjects, name):
    """One hand-picked corruption per rule that the corpus targets."""
    s = subjects[name]
    pf = s.k.pf
    bid, start, end = _first_online_self_hosted(s)

    # Clearing PG_owner_priv_1 (PG_vmemmap_self_hosted) on an online self-hosted page.
    if "PG_vmemmap_self_hosted" in pf:
        o = _outcome(s, mutate.page_mutation(s, 0, "vmemmap-page", start + 5, "flags",
                                             [pf["PG_vmemmap_self_hosted"]]))
        assert o.broken == {"vmemmap-unmarked"}
        assert "vmemmap-unmarked" in o.detected_by

    # An extra reference on a vmemmap page.
    o = _outcome(s, mutate.page_mutation(s, 0, "vmemmap-page", start + 7, "refcount", [1]))
    assert o.broken == {"vmemmap-page-state"} and "vmemmap-page-state" in o.detected_by

    # The block's record of its vmemmap pages.
    field = "nr_vmemmap_pages" if s.k.altmap_type is None else "altmap.alloc"
    o = _outcome(s, mutate.block_mutation(s, 0, bid, field, [2]))
    assert o.broken == {"altmap-mismatch"} and "altmap-mismatch" in o.detected_by

    # SECTION_IS_ONLINE cleared on a section of the online block.
    online_bit = s.k.section_masks["IS_ONLINE"].bit_length() - 1
    nr = bid * s.k.spb
    o = _outcome(s, mutate.section_mutation(s, 0, nr, [online_bit]))
    assert o.broken == {"section-state"} and "section-state" in o.detected_by

    # start_section_nr no longer the block's own.
    o = _outcome(s, mutate.block_mutation(s, 0, bid, "start_section_nr", [3]))
    assert o.broken == {"block-geometry"} and "block-geometry" in o.detected_by

    # PG_owner_priv_1 set on an ordinary page of the online block (no alias).
    if "PG_vmemmap_self_hosted" in pf:
        for pfn in range(end + 1000, end + 3000):
            m = mutate.page_mutation(s, 0, "block-page", pfn, "flags",
                                     [pf["PG_vmemmap_self_hosted"]])
            if m is not None and mutate.broken_rules(s, m) == {"marker-stray"}:
                o = _outcome(s, m)
                assert "marker-stray" in o.detected_by
                break
        else:
            pytest.fail("no page without a PG_owner_priv_1 alias found")

    # The never-merged marking schemes (kernels patched with them).
    if s.k.vmemmap_type is not None:
        # PGTY_vmemmap -> PGTY_buddy: the marker lost, a wrong type gained.
        off, _ = mutate._page_field(s, "page_type")
        bits = [24 + b for b in range(8) if (s.k.vmemmap_type ^ s.k.types["buddy"])
                >> b & 1]
        o = _outcome(s, mutate.page_mutation(s, 0, "vmemmap-page", start + 11, "page_type",
                                             bits))
        assert o.broken == {"vmemmap-unmarked", "vmemmap-page-state"}
        assert o.broken <= o.detected_by
    for flag in ("CANNOT_OPTIMIZE_VMEMMAP", "USE_VMEMMAP"):
        if flag in s.k.section_masks:
            bit = s.k.section_masks[flag].bit_length() - 1
            o = _outcome(s, mutate.section_mutation(s, 0, nr, [bit]))  # cleared
            assert o.broken == {"section-marker"} and "section-marker" in o.detected_by
            o = _outcome(s, mutate.section_mutation(s, 0, 0, [bit]))  # set on boot memory
            assert o.broken == {"section-marker"} and "section-marker" in o.detected_by

    # Untargeted: a flag bit no rule reads (PG_referenced, say) changes nothing.
    if "PG_referenced" in pf:
        o = _outcome(s, mutate.page_mutation(s, 0, "vmemmap-page", start + 9, "flags",
                                             [pf["PG_referenced"]]))
        assert o.broken == set() and o.flagged_by == set()


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_compound_and_hvo_examples(subjects, name):
    """The kernel's page-flag policies on compound pages, HugeTLB folios and
    HVO's aliased vmemmap, one hand-picked corruption each."""
    s = subjects[name]
    k = s.k
    if k.marker_bit is None:
        pytest.skip("no PG_vmemmap_self_hosted")
    bit = k.owner_priv_1
    if s.compound_heads:
        head = s.compound_heads[0]
        # On a compound tail the bit is never an alias (PG_vmemmap_self_hosted is PF_ANY).
        for tail in (head + 1, head + 2):
            o = _outcome(s, mutate.page_mutation(s, 0, "compound", tail, "flags", [bit]))
            assert o.broken == {"marker-stray"} and "marker-stray" in o.detected_by
        # HPG_vmemmap_optimized on a folio in a block with vmemmap pages.
        if k.hpg_optimized is not None and head // k.ppb in s.self_hosted:
            o = _outcome(s, mutate.page_mutation(s, 0, "compound", head, "private",
                                                 [k.hpg_optimized]))
            assert o.broken == {"hvo-self-hosted"} and "hvo-self-hosted" in o.detected_by
    if s.hvo_heads:
        # A tail struct page of an optimised folio: the bytes live in a frame
        # that backs several struct pages, all of which get the bit.
        head = s.hvo_heads[0]
        m = mutate.page_mutation(s, 0, "hvo-folio", head + 100, "flags", [bit])
        assert len(m.context["pfns"]) > 1
        o = _outcome(s, m)
        assert o.broken == {"marker-stray"} and "marker-stray" in o.detected_by
    for kind in ("buddy", "page-table"):
        if s.by_kind[kind]:
            o = _outcome(s, mutate.page_mutation(s, 0, kind, s.by_kind[kind][0], "flags", [bit]))
            assert o.broken == {"marker-stray"} and "marker-stray" in o.detected_by


def test_reuse_matches_fresh(subjects):
    """Reusing one program (caches cleared) sees what a fresh open sees."""
    s = subjects[FIXTURE_NAMES[-1]]
    for i in range(8):
        m = mutate.draw(s, SEED, i)
        reused = mutate.run_one(s, m)
        s.fresh = True
        try:
            fresh = mutate.run_one(s, m)
        finally:
            s.fresh = False
        assert reused.status == fresh.status, m.describe()
        if reused.report is not None:
            assert reused.report["violations"] == fresh.report["violations"], m.describe()
            assert reused.report["not_checked"] == fresh.report["not_checked"], m.describe()


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_elf_copy_checks_like_the_original(subjects, name):
    """The ELF copy (pages the dump lacks left out) gives the kdump file's report."""
    from drgn_vmemmap import check

    s = subjects[name]
    try:
        original = check(fixture_program(name)).to_json()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    copy = s.baseline  # the worker's report, as JSON
    for key in ("features", "ranges", "violations", "not_checked", "unreadable", "holds",
                "blocks"):
        assert copy[key] == original[key], key
    truth = manifest_of(name)["truth"]
    # Blocks that reused the boot vmemmap PMD (ppc64 radix 64K): 0 frames.
    want = [(r["block"], r["start_pfn"], r["nr_pages"]) for r in truth["self_hosted"]] + \
        [(b["id"], b["start_pfn"], 0) for b in truth["blocks"] if b.get("vmemmap_reuses_boot_pmd")]
    assert [(r["block"], r["start_pfn"], r["nr_pages"]) for r in copy["ranges"]] == sorted(want)


#: Dump-level faults per fixture in the default run (tools/mutate_dump.py).
DUMP_COUNT = 16


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_dump_faults(subjects, name):
    """makedumpfile's filtering and a capture kernel's overwriting, one
    structure at a time (issue 15): each fault costs exactly the blocks on
    the lost page, with no new violation anywhere."""
    s = subjects[name]
    tally = mutate.run_subject(s, SEED, range(DUMP_COUNT), only=["dump"])
    assert tally.mutations == DUMP_COUNT
    assert not tally.crashes and not tally.missed, _explain(tally) + "\n" + "\n".join(
        str(it.get("error")) for it in tally.missed)
    assert tally.detected == tally.targeted == DUMP_COUNT
    kinds = {m for m in tally.untargeted_by_field}  # none: every dump fault is targeted
    assert not kinds
    assert {"not-in-dump", "unreadable", "dump-damaged"} <= set(tally.by_rule), \
        dict(tally.by_rule)


def test_dump_oracle_can_fail(subjects):
    """The dump-fault oracle rejects outcomes that break its expectation: a
    block outside the lost page that changes, a new violation, a lost record
    still called 'ok', an overwritten online block not called damaged."""
    from tools import mutate_dump

    s = subjects[FIXTURE_NAMES[-1]]
    rng = __import__("random").Random(5)
    drawn = {}
    for i in range(400):
        m = mutate_dump.draw(s, rng, i)
        if m is not None and (m.field != "memory-block-page" or m.context["records"]) \
                and (m.field != "memmap-overwrite" or m.context["online"]) \
                and (m.field != "memmap-frame" or m.target in s.online):
            drawn.setdefault(m.field, m)
        if len(drawn) == 4:
            break
    base = s.baseline
    assert mutate_dump.judge(s, drawn["memmap-frame"], "ok", base, None), \
        "a lost frame whose pfns are not unreadable passed"
    m = drawn["memory-block-page"]
    assert mutate_dump.judge(s, m, "ok", base, None), "a lost record still 'ok' passed"
    other = next(b for b in base["blocks"] if b["block"] not in m.context["affected"])
    bad = dict(base, blocks=[dict(b, verdict="error") if b is other else b
                             for b in base["blocks"]])
    assert any(f"block {other['block']} (not affected)" in w
               for w in mutate_dump.judge(s, m, "ok", bad, None))
    v = {"rule": "marker-stray", "severity": "error", "pfn_start": 1, "pfn_end": 2,
         "block": 0, "section": 0}
    assert any("new violations" in w for w in mutate_dump.judge(
        s, m, "ok", dict(base, violations=base["violations"] + [v]), None))
    m = drawn["memmap-overwrite"]
    assert mutate_dump.judge(s, m, "ok", base, None), "an undamaged report passed"
    assert mutate_dump.judge(s, m, "refused", None, "cannot analyse")


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_boot_section_losing_present_is_reported(subjects, name):
    """SECTION_MARKED_PRESENT cleared on a boot section: a boot block may
    have holes (absent sections), but a hole's mem_section is all zero; one
    that keeps its mem_map word without the bit lost it (section-state)."""
    s = subjects[name]
    bit = s.k.section_masks["MARKED_PRESENT"].bit_length() - 1
    o = _outcome(s, mutate.section_mutation(s, 0, 0, [bit]))
    assert o.broken == {"section-state"} and "section-state" in o.detected_by
