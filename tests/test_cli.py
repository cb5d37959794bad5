"""The drgn-vmemmap command line: output formats, exit status, and bad inputs.

Bad input must give exit status 2 and exactly one line on stderr, never a
traceback.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drgn_vmemmap.target import decompressed

from conftest import FIXTURES, manifests, vmlinux_for

MANIFESTS = manifests()


def dump_file(name):
    """Fixture ``name``'s dump as committed (``.vmcore`` or ``.vmcore.xz``)."""
    return FIXTURES / MANIFESTS[name]["dump"]["file"]


def plain_dump(name):
    """Fixture ``name``'s kdump file itself (an ``.xz`` decompressed once, cached)."""
    return Path(decompressed(str(dump_file(name))))


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "drgn_vmemmap.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600, **kw)


def one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("drgn-vmemmap: error: ")
    return lines[0]


def target(name):
    m = MANIFESTS[name]
    vmlinux = vmlinux_for(m)
    if vmlinux is None:
        pytest.skip("no vmlinux")
    return ["-c", FIXTURES / m["dump"]["file"], "-s", vmlinux]


def test_check_clean_json():
    proc = run(*target("6.12-hotplug-basic"), "check", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == 1
    assert doc["target"] == {"kind": "vmcore", "release": "6.12.117", "arch": "x86_64"}
    assert doc["violations"] == []
    truth = MANIFESTS["6.12-hotplug-basic"]["truth"]["self_hosted"]
    assert [(r["block"], r["start_pfn"], r["nr_pages"]) for r in doc["ranges"]] == \
        [(r["block"], r["start_pfn"], r["nr_pages"]) for r in truth]
    for key in ("marker", "page_type", "block_accounting", "memmap_on_memory"):
        assert key in doc["features"]
    assert doc["features"]["marker"] == ["PG_vmemmap_self_hosted"]
    assert doc["stats"]["pages_scanned"] > 0


def test_check_faults_exit_1_and_table():
    name = "6.12-faults"
    if name not in MANIFESTS:
        pytest.fail("fixture missing")
    proc = run(*target(name), "check", "--format", "table")
    assert proc.returncode == 1, proc.stderr
    for fault in MANIFESTS[name]["faults"]:
        assert fault["expect"]["rule"] in proc.stdout
    assert "VIOLATIONS" in proc.stdout


def test_default_format_is_json_when_piped():
    proc = run(*target("6.1-hotplug-basic"), "ranges")
    assert proc.returncode == 0, proc.stderr
    ranges = json.loads(proc.stdout)
    assert [r["block"] for r in ranges] == [34]


@pytest.mark.parametrize("command", ["sections", "blocks", "features", "ranges"])
def test_listing_commands(command):
    proc = run(*target("7.2-hotplug-basic"), command, "--format", "table")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_explain_vmemmap_frame():
    r = MANIFESTS["6.12-hotplug-basic"]["truth"]["self_hosted"][0]
    proc = run(*target("6.12-hotplug-basic"), "explain", hex(r["start_pfn"]), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["self_hosted_range"]["block"] == r["block"]
    # The first frame of a self-hosted block holds the struct pages of the
    # block's first 64 pfns.
    assert d["holds_struct_pages_of"][0]["first_pfn"] == r["start_pfn"]
    assert d["holds_struct_pages_of"][0]["kind"] == "self-hosted"


def test_explain_ordinary_pfn():
    """A pfn of a hot-plugged block past its vmemmap: no self-hosted range,
    its struct page in the block's own frames, and the flags the guest's
    kpageflags showed (PG_owner_priv_1 clear, PG_reserved as kpageflags says)."""
    m = MANIFESTS["6.12-hotplug-basic"]
    r = m["truth"]["self_hosted"][0]
    assert r["state"] == "online"
    pfn = r["start_pfn"] + r["nr_pages"] + 1000
    runs = m["truth"]["kpageflags"][str(r["block"])]
    names = next(n for start, count, n in runs if start <= pfn < start + count)
    proc = run(*target("6.12-hotplug-basic"), "explain", hex(pfn), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["self_hosted_range"] is None and d["holds_struct_pages_of"] == []
    assert d["block"]["id"] == r["block"] and d["block"]["state"] == "online"
    assert d["struct_page"]["backing"] == "self-hosted"
    assert r["start_pfn"] <= d["struct_page"]["frame"] < r["start_pfn"] + r["nr_pages"]
    flags = set(d["page"]["flag_names"])
    assert ("PG_reserved" in flags) == ("reserved" in names)
    assert not {"PG_owner_priv_1", "PG_vmemmap_self_hosted"} & flags
    assert "owner_private" not in names


def test_explain_force_padding():
    """A frame of memmap_on_memory=force's padding: inside the block's area,
    marked, holding no struct page."""
    r = MANIFESTS["6.12-force-faults"]["truth"]["self_hosted"][0]
    pfn = r["start_pfn"] + r["nr_pages"] + 100
    proc = run(*target("6.12-force-faults"), "explain", hex(pfn), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["self_hosted_range"]["reserved_pages"] == r["reserved_pages"] > r["nr_pages"]
    assert d["holds_struct_pages_of"] == []
    # One name per bit: the alias that applies, none of the others.
    assert "PG_vmemmap_self_hosted" in d["page"]["flag_names"]
    assert not {"PG_owner_priv_1", "PG_checked", "PG_swapcache", "PG_pinned"} & \
        set(d["page"]["flag_names"])
    table = run(*target("6.12-force-faults"), "explain", hex(pfn), "--format", "table").stdout
    assert "memmap_on_memory=force padding, holds no struct page" in table


def test_explain_orphaned_frame():
    """A frame hvo_remap orphaned: still in the block's area, backing nothing."""
    m = MANIFESTS["6.12-pagetables"]
    f = next(f for f in m["faults"] if f["op"] == "hvo_remap")
    orphan = f["module"]["orphaned_frames"][0]
    proc = run(*target("6.12-pagetables"), "explain", hex(orphan), "--format", "table")
    assert proc.returncode == 0, proc.stderr
    assert "holds no struct page (remapped away?)" in proc.stdout
    reused = run(*target("6.12-pagetables"), "explain", hex(f["module"]["reused_frame"]),
                 "--format", "table").stdout
    assert f"pfns {f['target']['pfn']:#x}-{f['target']['pfn'] + 511:#x} " \
        "(self-hosted, HVO-aliased)" in reused


def test_check_jobs():
    one = run(*target("6.12-faults"), "check", "--format", "json")
    two = run(*target("6.12-faults"), "check", "--format", "json", "--jobs", "2")
    assert one.returncode == two.returncode == 1
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert (a["stats"]["jobs"], b["stats"]["jobs"]) == (1, 2)
    assert a["violations"] == b["violations"]
    bad = run(*target("6.12-faults"), "check", "--jobs", "0")
    assert bad.returncode == 2 and "--jobs" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_help_teaches():
    proc = run("--help")
    assert proc.returncode == 0
    for word in ("check", "ranges", "explain", "triage", "exit status", "--qemu", "vmlinux.xz"):
        assert word in proc.stdout


# --- bad inputs ---------------------------------------------------------------


def test_missing_file(tmp_path):
    line = one_line_error(run("-c", tmp_path / "nope", "check"))
    assert "nope" in line


def test_empty_file(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    assert "empty" in one_line_error(run("-c", tmp_path / "empty", "check"))


def test_not_a_core(tmp_path):
    (tmp_path / "text").write_text("hello\n" * 1000)
    one_line_error(run("-c", tmp_path / "text", "check"))


def test_directory(tmp_path):
    one_line_error(run("-c", tmp_path, "check"))


def test_user_space_core(tmp_path):
    # A real user-space core dump of a Python process (gcore-free: via the
    # kernel's own core dumping is not reliable in containers, so use
    # drgn's view of a process core if one can be made).
    script = ("import os, resource, signal; resource.setrlimit(resource.RLIMIT_CORE, "
              "(-1, -1)); os.kill(os.getpid(), signal.SIGABRT)")
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path)
    cores = [p for p in tmp_path.iterdir() if p.name.startswith("core")]
    if not cores:
        pytest.skip("the kernel's core_pattern does not write cores here")
    one_line_error(run("-c", cores[0], "check"))


def test_wrong_vmlinux():
    m61 = MANIFESTS["6.1-hotplug-basic"]
    line = one_line_error(run("-c", dump_file("6.12-hotplug-basic"),
                              "-s", vmlinux_for(m61), "check"))
    assert "debug info" in line or "vmlinux" in line


def test_missing_vmlinux_file(tmp_path):
    one_line_error(run("-c", dump_file("6.12-hotplug-basic"),
                       "-s", tmp_path / "vmlinux", "check"))


def test_truncated_dump(tmp_path):
    src = plain_dump("6.12-hotplug-basic")
    cut = tmp_path / "truncated.vmcore"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(os.path.getsize(src) // 3))
    proc = run("-c", cut, "-s", vmlinux_for(MANIFESTS["6.12-hotplug-basic"]), "check",
               "--format", "json")
    # Either a partial report (pages past the cut are unreadable, never
    # violations) or one clear line.
    if proc.returncode == 2:
        one_line_error(proc)
    else:
        doc = json.loads(proc.stdout)
        assert proc.returncode == 0, doc["violations"][:3]
        assert doc["unreadable"] or doc["not_checked"]


def test_unknown_rule():
    one_line_error(run(*target("6.12-hotplug-basic"), "check", "--rule", "no-such-rule"))


def test_list_rules():
    proc = run("check", "--list-rules")
    assert proc.returncode == 0
    assert "vmemmap-unmarked" in proc.stdout.split()


def test_zeroed_vmcoreinfo(tmp_path):
    """A kdump file whose VMCOREINFO was wiped: one line, exit 2 (or, if drgn
    still finds the kernel, a normal report) and never a traceback."""
    src = plain_dump("6.12-hotplug-basic")
    data = bytearray(src.read_bytes())
    assert data[:8] == b"KDUMP   "
    # The VMCOREINFO text ("OSRELEASE=...\n...") sits in makedumpfile's
    # sub-header, near the start of the file; wipe all of it.
    start = data.index(b"OSRELEASE=", 0, 1 << 20)
    end = data.index(b"\0", start)
    assert b"SYMBOL(mem_section)" in data[start:end]
    data[start:end] = bytes(end - start)
    bad = tmp_path / "novmcoreinfo.vmcore"
    bad.write_bytes(bytes(data))
    proc = run("-c", bad, "-s", vmlinux_for(MANIFESTS["6.12-hotplug-basic"]), "check",
               "--format", "json")
    assert "Traceback" not in proc.stderr
    if proc.returncode == 2:
        one_line_error(proc)
    else:
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["violations"] == []


def test_target_options_after_the_subcommand():
    """'drgn-vmemmap check -c DUMP -s VMLINUX' works like the options before
    the subcommand (DESIGN's contract); two targets are one line and exit 2."""
    name = "6.12-hotplug-basic"
    before = run(*target(name), "check", "--format", "json")
    after = run("check", *target(name), "--format", "json")
    assert after.returncode == before.returncode == 0, after.stderr
    strip = lambda p: {k: v for k, v in json.loads(p.stdout).items() if k != "stats"}
    assert strip(after) == strip(before)
    split = run("-c", target(name)[1], "ranges", "-s", target(name)[3], "--format", "json")
    assert split.returncode == 0 and json.loads(split.stdout), split.stderr
    line = one_line_error(run(*target(name), "check", "--qemu", "/nonexistent.sock"))
    assert "-c and --qemu: give one target" in line


def test_version():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("drgn-vmemmap "), proc.stderr


def test_unknown_rule_from_python_is_a_value_error():
    """From Python, a misspelt rule raises ValueError listing the known rules,
    before anything is read (it is not blamed on the kernel's debug info)."""
    from drgn_vmemmap import check

    from conftest import fixture_program
    with pytest.raises(ValueError) as e:
        check(fixture_program("6.12-hotplug-basic"), rules=["vmemmap-unmarkd"])
    assert "vmemmap-unmarkd" in str(e.value) and "vmemmap-unmarked" in str(e.value)
    assert "debug info" not in str(e.value)


def test_errors_name_only_drgns_lookups():
    """describe() blames the debug info only for drgn's own look-up failures;
    any other LookupError (IndexError, KeyError) is an internal error."""
    import drgn

    from drgn_vmemmap.errors import describe
    prog = drgn.Program()
    with pytest.raises(LookupError) as missing_type:
        prog.type("struct no_such_struct")
    with pytest.raises(KeyError) as missing_object:
        prog["no_such_symbol"]
    for e in (missing_type.value, missing_object.value):
        text = describe(e)
        assert text.startswith("the kernel's debug info has no ") and "no_such" in text, text
    for e in (IndexError("list index out of range"), KeyError(32), LookupError("x")):
        text = describe(e)
        assert text.startswith("internal error (") and "--debug" in text, text
        assert "debug info" not in text
