"""``drgn-vmemmap triage``: many dumps in parallel, one JSON line each.

Pairing with a vmlinux must work from the dumps alone (build ID in
VMCOREINFO, release files beside ``vmcores/kernels/KEY/vmlinux.xz``), without
``--map``.
"""

import json
import os
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from drgn_vmemmap.triage import (
    DumpInfo,
    VmlinuxIndex,
    dump_info,
    elf_build_id,
    find_dumps,
    pair_vmlinux,
)

from conftest import FIXTURES, KERNELS, capture_overwrote, manifests, vmlinux_for

MANIFESTS = manifests()


def triage(*args):
    proc = subprocess.run([sys.executable, "-m", "drgn_vmemmap.cli", "triage", "-j", "2",
                           *map(str, args)], capture_output=True, text=True, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc, lines


def vmcore(name):
    return FIXTURES / MANIFESTS[name].get("dump", {}).get("file", f"{name}.vmcore")


def expected_counts(manifest):
    """(errors, warnings, rules) the manifest's injected faults should produce."""
    expects = [e for f in manifest.get("faults", [])
               for e in (f.get("expects") or ([f["expect"]] if f.get("expect") else []))]
    errors = sum(1 for e in expects if e["severity"] == "error")
    return errors, len(expects) - errors, Counter(e["rule"] for e in expects)


def committed(name):
    """Is fixture ``name``'s vmlinux.xz committed under vmcores/kernels?"""
    return (KERNELS / MANIFESTS[name]["kernel"]["key"] / "vmlinux.xz").exists()


def by_path(lines):
    out = {os.path.realpath(d["path"]): d for d in lines}
    assert len(out) == len(lines), "a dump was reported twice"
    return out


def test_triage_fixtures():
    # Kernels not committed (yet) are found in the factory's build directory.
    extra = []
    for name, manifest in MANIFESTS.items():
        vmlinux = vmlinux_for(manifest)
        if not committed(name) and vmlinux is not None:
            extra += ["--debug-directory", vmlinux.parent]
    proc, lines = triage(FIXTURES, "--debug-directory", KERNELS, *extra)
    docs = by_path(lines)
    assert set(docs) == {os.path.realpath(vmcore(n)) for n in MANIFESTS}
    any_errors = unanalysable = False
    for name, manifest in MANIFESTS.items():
        doc = docs[os.path.realpath(vmcore(name))]
        if vmlinux_for(manifest) is None:  # no debug info anywhere
            assert doc["status"] == "error" and doc["exit_status"] == 2
            unanalysable = True
            continue
        assert doc["status"] != "error", doc.get("error")
        assert doc["pairing"] == "build-id", name
        assert Path(doc["vmlinux"]).resolve() == Path(vmlinux_for(manifest)).resolve()
        assert doc["target"]["release"] == manifest["kernel"]["release"]
        errors, warnings, rules = expected_counts(manifest)
        found = doc["violations"]
        assert sum(v["severity"] == "error" for v in found) == errors, name
        assert sum(v["severity"] == "warning" for v in found) == warnings, name
        assert Counter(v["rule"] for v in found) == rules, name
        if name.endswith("-hotplug-basic"):
            assert found == [], name
        if name.endswith("-faults"):
            assert errors > 0
        assert doc["exit_status"] == (1 if errors else 0)
        # A kdump whose capture kernel wrote over hot-plugged memory is
        # filed as damaged (tests/test_kdump.py says which blocks).
        damaged = bool(capture_overwrote(manifest)) and bool(doc["damaged"])
        assert doc["status"] == ("violations" if errors else "damaged" if damaged else "ok")
        assert doc["schema"] == 1 and doc["seconds"] > 0
        any_errors |= bool(errors)
    assert proc.returncode == (2 if unanalysable else 1 if any_errors else 0), proc.stderr
    # The summary table on stderr names every dump.
    for name in MANIFESTS:
        assert str(vmcore(name)) in proc.stderr


def clean_fixtures():
    """Fixtures without faults (nor a damaged kdump) whose vmlinux.xz is committed."""
    names = [n for n, m in MANIFESTS.items()
             if not m.get("faults") and not capture_overwrote(m) and committed(n)]
    if not names:
        pytest.skip("no fixture without faults and with a committed vmlinux.xz")
    return names


def test_triage_clean_exit_0(tmp_path):
    # A plain (not .xz) dump first: only its magic names it a dump below.
    names = sorted(clean_fixtures(), key=lambda n: vmcore(n).name.endswith(".xz"))
    for i, name in enumerate(names):
        # One of them under a name that only its magic gives away.
        link = tmp_path / (f"crash-{i}" if i == 0 else vmcore(name).name)
        link.symlink_to(vmcore(name))
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "vmcore-dmesg.txt").write_text("[    0.000000] Linux version\n")
    proc, lines = triage(tmp_path, "--debug-directory", KERNELS)
    assert proc.returncode == 0, proc.stderr
    assert len(lines) == len(names)
    assert all(d["status"] == "ok" and d["violations"] == [] for d in lines)
    assert all(Path(d["path"]).parent == tmp_path for d in lines)


def test_triage_bad_file_does_not_stop_the_others(tmp_path):
    name = clean_fixtures()[0]
    good = "good.vmcore" + (".xz" if vmcore(name).name.endswith(".xz") else "")
    (tmp_path / good).symlink_to(vmcore(name))
    (tmp_path / "vmcore-empty").write_bytes(b"")
    (tmp_path / "text.vmcore").write_text("this is not a core dump\n" * 10)
    proc, lines = triage(tmp_path, "--debug-directory", KERNELS)
    assert proc.returncode == 2, proc.stderr
    docs = {Path(d["path"]).name: d for d in lines}
    assert set(docs) == {good, "vmcore-empty", "text.vmcore"}
    assert docs[good]["status"] == "ok"
    assert docs[good]["violations"] == []
    for bad in ("vmcore-empty", "text.vmcore"):
        doc = docs[bad]
        assert doc["status"] == "error" and doc["exit_status"] == 2
        assert doc["error"] and "\n" not in doc["error"]
        assert bad in doc["error"]


def test_triage_empty_directory(tmp_path):
    (tmp_path / "README.txt").write_text("nothing here\n")
    proc, lines = triage(tmp_path)
    assert proc.returncode == 2
    assert lines == []
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("drgn-vmemmap: error: ") and "no core dumps" in err[0]


def test_triage_map(tmp_path):
    name = clean_fixtures()[0]
    vmlinux = vmlinux_for(MANIFESTS[name])
    proc, lines = triage(vmcore(name), "--map", f"{vmcore(name).name}={vmlinux}")
    assert proc.returncode == 0, proc.stderr
    assert [d["pairing"] for d in lines] == ["map"]
    proc, lines = triage(vmcore(name), "--map", "no-equals-sign")
    assert proc.returncode == 2 and lines == []
    assert len(proc.stderr.strip().splitlines()) == 1


# --- pairing and discovery, without drgn -----------------------------------------------


def test_pairing_by_build_id_then_release():
    index = VmlinuxIndex([str(KERNELS)])
    names = [n for n in MANIFESTS if committed(n)]
    if not names:
        pytest.skip("no committed vmlinux.xz")
    for name in names:
        manifest = MANIFESTS[name]
        key = manifest["kernel"]["key"]
        info = dump_info(str(vmcore(name)))
        assert info.release == manifest["kernel"]["release"]
        assert info.build_id == elf_build_id(str(KERNELS / key / "vmlinux.xz"))
        want = str(KERNELS / key / "vmlinux.xz")
        assert pair_vmlinux("x", info, index, {}) == (want, "build-id")
        # A dump without a build ID: the release file beside vmlinux.xz.
        assert pair_vmlinux("x", DumpInfo(info.release, None), index, {}) == (want, "release")
        # A build ID nothing has: never a release match whose ID differs.
        assert pair_vmlinux("x", DumpInfo(info.release, "00" * 20), index, {}) == \
            (None, "default")


def fake_elf_core(path, note_name=b"VMCOREINFO", desc=b"OSRELEASE=9.9.9\nBUILD-ID=abcd12\n"):
    """An ELF core holding a single PT_NOTE (no memory)."""
    name = note_name + b"\0"
    note = struct.pack("<III", len(name), len(desc), 0) + name.ljust(-(-len(name) // 4) * 4,
                                                                     b"\0") \
        + desc.ljust(-(-len(desc) // 4) * 4, b"\0")
    ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, b"\0" * 7,
                       4, 62, 1, 0, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 120, 0, 0, len(note), 0, 4)
    path.write_bytes(ehdr + phdr + note)


def test_find_dumps(tmp_path):
    fake_elf_core(tmp_path / "unusual-name")
    fake_elf_core(tmp_path / "user-core", note_name=b"CORE", desc=b"\0" * 16)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "dump.202401010000").write_bytes(b"KDUMP   " + b"\0" * 100)
    (tmp_path / "sub" / "vmcore.json").write_text("{}")
    (tmp_path / "sub" / "vmcore-dmesg.txt").write_text("x")
    (tmp_path / "sub" / "vmlinux").write_bytes(b"\x7fELF")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "vmcore").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    dumps, empty = find_dumps([str(tmp_path), str(tmp_path / "empty"), "given-by-name"])
    assert sorted(Path(d).name for d in dumps) == \
        ["dump.202401010000", "given-by-name", "unusual-name"]
    assert empty == [str(tmp_path / "empty")]
    assert dump_info(str(tmp_path / "unusual-name")) == DumpInfo("9.9.9", "abcd12")


def test_triage_worker_crash_names_only_its_dump(tmp_path):
    """A worker process that dies takes no innocent dump with it."""
    names = clean_fixtures()[:2]
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    for name in names:
        (dumps / vmcore(name).name).symlink_to(vmcore(name))
    (dumps / "crash.vmcore").write_bytes(b"")  # its worker dies before opening it
    (tmp_path / "crasher.py").write_text(
        "import os\n"
        "from drgn_vmemmap import triage\n"
        "_analyse = triage.analyse\n"
        "def analyse(job):\n"
        "    if job['path'].endswith('crash.vmcore'):\n"
        "        os._exit(9)\n"
        "    return _analyse(job)\n")
    (tmp_path / "run.py").write_text(
        "import sys\n"
        "if __name__ == '__main__':\n"
        "    import crasher\n"
        "    from drgn_vmemmap import triage\n"
        "    triage.analyse = crasher.analyse\n"
        "    from drgn_vmemmap.cli import main\n"
        "    sys.exit(main(sys.argv[1:]))\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}"
               + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(tmp_path / "run.py"), "triage", "-j", "2",
                           str(dumps), "--debug-directory", str(KERNELS)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 2, proc.stderr
    docs = {Path(d["path"]).name: d for d in map(json.loads, proc.stdout.splitlines())}
    assert docs["crash.vmcore"]["status"] == "error"
    assert "process died" in docs["crash.vmcore"]["error"]
    for name in names:
        assert docs[vmcore(name).name]["status"] == "ok"
