"""A real ``drgn -k`` inside a guest: the checker against the guest's own /proc/kcore.

The initramfs carries, besides the factory's busybox ``/init``, a pruned copy
of this interpreter (the binary, libpython, the standard library without
tests, IDLE, tkinter, ensurepip..., and every shared library ``ldd`` finds
for them), the installed files of drgn (with ``_drgn*.so`` and drgn.libs:
libdw, libelf, libkdumpfile...), numpy (without its tests) and tabulate, this
package with a dist-info naming its ``drgn.plugins`` entry point, and the
kernel's decompressed vmlinux as ``/vmlinux``.  Paths mirror the host's
(``sys.base_prefix`` is the same inside), so nothing needs configuring.  Run
from a virtual environment, the guest gets that environment too (its
``pyvenv.cfg``, its ``bin/python3`` pointing at the copied interpreter, and
the distributions from its site-packages), and runs its ``python3``.

The big part (interpreter, libraries, vmlinux) is one uncompressed cpio
archive cached under ``vmcores.paths.CACHE / "guest-drgn"``, keyed by
everything that goes into it; the small part (init, busybox, drgn_vmemmap) is
rebuilt every run and appended (the kernel unpacks concatenated archives).

The guest (the committed 6.12 kernel, 2 GiB over two nodes) hot-adds two
DIMMs, onlines them movable and kernel, and then runs:

* ``drgn -k -s /vmlinux -e ...`` running ``%vmemmap check --format json``
  through ``drgn.commands.run_command`` (the plugin found by entry point);
* ``python3 -m drgn_vmemmap.cli -k -s /vmlinux check --format json`` and
  ``... check --format table``.

Asserted: exit status 0, no violation, target kind "live" and the kernel's
release, blocks' states and nodes equal the guest's sysfs (read before and
after), and each hot-plugged block's self-hosted range is 512 pages at its
start, confirmed online by /proc/kpageflags.
"""

import compileall
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, List, Set

import pytest
from test_live import (  # also puts the repository on sys.path
    REPO,
    boot,
    dimm_blocks,
    expected_ranges,
    found_blocks,
    found_ranges,
    kernel_or_skip,
    plug,
    release,
    set_state,
    sysfs_blocks,
    truth,
)

import drgn_vmemmap
from vmcores import selftest
from vmcores.guest import BUSYBOX, INIT
from vmcores.paths import CACHE

KEY = "6.12"
#: Bump when the layout of the cached archive changes.
BUILDER_VERSION = 1
PREFIX = Path(sys.base_prefix)
#: The virtual environment the tests run in, if any.
VENV = Path(sys.prefix) if sys.prefix != sys.base_prefix else None
PYVER = f"python{sys.version_info.major}.{sys.version_info.minor}"
STDLIB = PREFIX / "lib" / PYVER
#: Where this environment installs pure-Python packages (a venv's
#: site-packages, Debian's /usr/local/lib/python3.X/dist-packages...).
SITE = Path(sysconfig.get_paths()["purelib"])
#: Top-level standard-library entries left out.
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "turtle.py", "ensurepip",
               "lib2to3", "pydoc_data", "site-packages", "__phello__", "venv"}
#: Extension modules left out (tests, GUIs, databases).
DYNLOAD_SKIP = re.compile(r"^(_test|_xx|xx|_tkinter|_curses|_dbm|_gdbm|_sqlite3|nis|"
                          r"ossaudiodev|_ctypes_test|audioop|spwd)")
DISTS = ("drgn", "numpy", "tabulate")
#: Inside a guest: the interpreter's bin directory first, a writable HOME.
_PATH = (f"{VENV}/bin:" if VENV else "") + f"{PREFIX}/bin:$PATH"
ENV = (f"export PATH={_PATH} HOME=/tmp PYTHONDONTWRITEBYTECODE=1 "
       "PYTHONHASHSEED=0; cd /tmp; ")
DRGN_CODE = ("import sys; from drgn.commands import run_command; "
             "sys.exit(run_command(prog, 'vmemmap check --format json'))")


def _skip_file(rel: str) -> bool:
    parts = rel.split("/")
    if "tests" in parts:
        return True
    if rel.endswith((".pyi", ".h", ".a", ".c", ".pxd", ".f", ".f90")):
        return True
    if "__pycache__" in parts and not rel.endswith(f".cpython-{sys.version_info.major}"
                                                   f"{sys.version_info.minor}.pyc"):
        return True  # keep only the plain .pyc (no .opt-N)
    return False


def _copy(src: Path, root: Path, dest: Path = None) -> Path:
    """Copy ``src`` to the same absolute path (or ``dest``) under ``root``."""
    out = root / (dest or src).relative_to("/")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        shutil.copy2(src, out)  # follows symlinks; keeps mtimes (pyc checks)
    return out


def _ldd(files: Iterable[Path]) -> Set[Path]:
    out: Set[Path] = set()
    files = [str(f) for f in files]
    for i in range(0, len(files), 100):
        proc = subprocess.run(["ldd", *files[i:i + 100]], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if "not found" in line:
                raise RuntimeError(f"ldd: {line.strip()}")
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                out.add(Path(m.group(1)))
    return out


def _stdlib_files() -> List[Path]:
    out = []
    for entry in STDLIB.iterdir():
        if entry.name in STDLIB_SKIP or entry.name.startswith("config-"):
            continue
        if entry.name == "lib-dynload":
            out += [p for p in entry.iterdir() if not DYNLOAD_SKIP.match(p.name)]
            continue
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        out += [p for p in files if not _skip_file(str(p.relative_to(STDLIB)))]
    return out


def _dist_files(name: str) -> List[Path]:
    dist = importlib.metadata.distribution(name)
    out = []
    for f in dist.files or ():
        path = Path(os.path.normpath(dist.locate_file(f)))
        if str(f).startswith("../") and path.parent != Path(sys.prefix) / "bin":
            continue
        if not path.is_file() or _skip_file(str(f)):
            continue
        out.append(path)
    return out


def _dists() -> Dict[str, str]:
    return {d: importlib.metadata.version(d) for d in DISTS}


def base_key(vmlinux: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([BUILDER_VERSION, sys.version, str(PREFIX), str(VENV), _dists(),
                         Path(vmlinux).name, os.path.getsize(vmlinux)]).encode())
    return h.hexdigest()[:16]


def _cpio(root: Path, dest: Path) -> None:
    names = subprocess.run(["find", ".", "-print0"], cwd=root, check=True,
                           capture_output=True).stdout
    with open(dest, "wb") as f:
        subprocess.run(["cpio", "--null", "-o", "-H", "newc", "--quiet", "--owner=0:0"],
                       cwd=root, input=names, stdout=f, check=True)


def build_base(vmlinux: str) -> Path:
    """The cached archive: interpreter, stdlib, drgn, numpy, tabulate, vmlinux."""
    cache = CACHE / "guest-drgn"
    out = cache / f"base-{base_key(vmlinux)}.cpio"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        root = Path(tmp) / "root"
        binary = PREFIX / "bin" / PYVER
        files = [binary] + _stdlib_files()
        for d in DISTS:
            files += _dist_files(d)
        for f in files:
            _copy(f, root)
        for link in ("python3", "python"):
            (root / (PREFIX / "bin" / link).relative_to("/")).symlink_to(PYVER)
        if VENV is not None:
            # The environment's interpreter is a link to the base one, which
            # finds pyvenv.cfg beside its bin/ and the environment's
            # site-packages from there.
            _copy(VENV / "pyvenv.cfg", root)
            vbin = root / (VENV / "bin").relative_to("/")
            vbin.mkdir(parents=True, exist_ok=True)
            for link in (PYVER, "python3", "python"):
                if not (vbin / link).exists():
                    (vbin / link).symlink_to(binary)
        # Every shared object the interpreter, extension modules and bundled
        # libraries load, and what those load in turn.
        elves = [f for f in files if f == binary or ".so" in f.name]
        for lib in _ldd(elves):
            copied = _copy(lib, root)
            if lib.name.startswith("libpython"):
                subprocess.run(["strip", "--strip-debug", str(copied)], check=True)
        _copy(Path(vmlinux), root, Path("/vmlinux"))
        partial = out.with_suffix(".partial")
        _cpio(root, partial)
        partial.rename(out)
    print(f"built {out} ({out.stat().st_size >> 20} MiB) in {time.monotonic() - t0:.0f} s")
    for old in cache.glob("base-*.cpio"):
        if old != out:
            old.unlink()
    return out


def _entry_points() -> str:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = []
    groups = {"console_scripts": project.get("scripts", {}),
              **project.get("entry-points", {})}
    for group, entries in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in entries.items()]
        lines.append("")
    return "\n".join(lines)


def build_top(dest: Path) -> Path:
    """The per-run archive: busybox /init and this package (as installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "mnt"):
            (root / d).mkdir()
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
        (root / "init").write_text(INIT.replace("@CHANNEL@", "/dev/ttyS1"))
        (root / "init").chmod(0o755)
        # The kernel's own memory-hotplug selftest, and bash for it (watch).
        shutil.copy(selftest.bash_static(), root / "bin" / "bash")
        shutil.copy(selftest.mem_on_off_test(KEY), root / "mem-on-off-test.sh")
        site = root / SITE.relative_to("/")
        pkg = Path(drgn_vmemmap.__file__).parent
        shutil.copytree(pkg, site / "drgn_vmemmap",
                        ignore=shutil.ignore_patterns("__pycache__"))
        info = site / "drgn_vmemmap-0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: drgn-vmemmap\n"
                                       "Version: 0.0\n")
        (info / "entry_points.txt").write_text(_entry_points())
        compileall.compile_dir(str(site / "drgn_vmemmap"), quiet=1, stripdir=str(root),
                               prependdir="/")
        _cpio(root, dest)
    return dest


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    if sys.version_info < (3, 11):
        pytest.skip("needs tomllib")
    if shutil.which("ldd") is None or shutil.which("cpio") is None:
        pytest.skip("needs ldd and cpio")
    _, vmlinux = kernel_or_skip(KEY)
    work = tmp_path_factory.mktemp("guest-drgn")
    t0 = time.monotonic()
    base = build_base(vmlinux)
    initramfs = work / "initramfs.cpio"
    with open(initramfs, "wb") as out:
        with open(base, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        out.write(build_top(work / "top.cpio").read_bytes())
    print(f"initramfs ready in {time.monotonic() - t0:.1f} s "
          f"({initramfs.stat().st_size >> 20} MiB)")
    t0 = time.monotonic()
    # numpy 2 needs x86-64-v2 (SSE4.2, POPCNT); la57 off keeps 4-level paging.
    with boot(KEY, work, initramfs=initramfs, mem_mb=2048, cpu="max,la57=off") as g:
        print(f"booted in {time.monotonic() - t0:.1f} s")
        bs = truth.block_size(g)
        dimm0 = plug(g, "dimm0", 256, 1, bs)
        dimm1 = plug(g, "dimm1", 128, 0, bs)
        for b in dimm0:
            set_state(g, b, "online_movable")
        set_state(g, dimm1[0], "online_kernel")
        yield g, bs


def run_in_guest(g, command: str, timeout: float = 240):
    """Run ``command`` in the guest; return (exit status, stdout, stderr)."""
    t = time.monotonic()
    rc = int(g.sh(f"{ENV}{command} > /tmp/o 2> /tmp/e; echo $?", timeout=timeout).strip())
    out, err = g.sh("cat /tmp/o"), g.sh("cat /tmp/e")
    print(f"guest: {command[:60]}...: exit {rc} in {time.monotonic() - t:.1f} s")
    return rc, out, err


def check_json(g, bs, command: str) -> dict:
    before = sysfs_blocks(g)
    rc, out, err = run_in_guest(g, command)
    after = sysfs_blocks(g)
    assert "Traceback" not in err, err[-3000:]
    assert rc == 0, (rc, out[-2000:], err[-2000:])
    doc = json.loads(out)
    assert before == after
    assert doc["violations"] == []
    assert doc["target"] == {"kind": "live", "release": release(KEY), "arch": "x86_64"}
    assert found_blocks(doc) == before
    ranges = expected_ranges(g, KEY, bs, before)
    assert found_ranges(doc) == ranges
    hot = sorted(b for dimm in g.dimms for b in dimm_blocks(g, dimm, bs))
    assert [r[0] for r in ranges] == hot and all(r[2] == 512 for r in ranges)
    assert doc["stats"]["live_retries"] == 0
    return doc


@pytest.mark.live
def test_drgn_k_vmemmap_command(guest):
    g, bs = guest
    check_json(g, bs, f"drgn -k -s /vmlinux -q -e \"{DRGN_CODE}\"")


@pytest.mark.live
def test_cli_k_json(guest):
    g, bs = guest
    check_json(g, bs, "python3 -m drgn_vmemmap.cli -k -s /vmlinux check --format json")


@pytest.mark.live
def test_cli_k_table(guest):
    g, _ = guest
    rc, out, err = run_in_guest(
        g, "python3 -m drgn_vmemmap.cli -k -s /vmlinux check --format table")
    assert rc == 0 and "Traceback" not in err, (out[-2000:], err[-2000:])
    assert "CONSISTENT: 0 error(s), 0 warning(s)" in out
    assert f"live {release(KEY)} (x86_64)" in out


@pytest.mark.live
def test_watch_k_under_the_selftest(guest):
    """``watch -k`` inside the guest, against its own /proc/kcore, while the
    guest runs the kernel's own mem-on-off-test.sh: no violation, no drift
    of the refreshed model, and the block transitions the selftest made
    seen.  (--duration: a background job of a non-interactive shell ignores
    SIGINT.)"""
    g, _ = guest
    g.sh(f"({ENV}exec python3 -m drgn_vmemmap.cli -k -s /vmlinux watch --format json "
         "--interval 0.1 --duration 75 --verify-every 0 "
         "> /tmp/watch.jsonl 2> /tmp/watch.err &)")
    deadline = time.monotonic() + 120
    while not g.sh("cat /tmp/watch.jsonl").strip():  # the first re-check
        assert time.monotonic() < deadline, g.sh("cat /tmp/watch.err")
        time.sleep(1)
    before = sysfs_blocks(g)
    out = ""
    for _ in range(2):
        out += g.sh("bash /mem-on-off-test.sh -r 30 2>&1", timeout=600)
    after = sysfs_blocks(g)
    assert "online->offline memory" in out and "-> Success" in out, out
    deadline = time.monotonic() + 240
    while '"summary"' not in g.sh("tail -n 1 /tmp/watch.jsonl"):
        assert time.monotonic() < deadline, g.sh("tail -n 3 /tmp/watch.jsonl; cat /tmp/watch.err")
        time.sleep(2)
    events = [json.loads(line) for line in g.sh("cat /tmp/watch.jsonl").splitlines() if line]
    summary = events[-1]
    assert "Traceback" not in g.sh("cat /tmp/watch.err")
    assert summary["violations"] == [] and summary["standing"] == [], summary
    # The model refreshed over /proc/kcore matched a fresh one at every
    # re-check (--verify-every 0).
    assert summary["drifts"] == [] and summary["verifies"] > 0, summary
    # Every block the selftest left in another state was seen arriving there
    # (a block offlined and onlined again between two looks nets out: the
    # count of transitions seen is at most the selftest's).
    last = {}
    for e in events:
        for t in (e["transitions"] if e["event"] == "change" else ()):
            last[t["block"]] = t["to"]
    moved = {b: st for b, (st, _) in after.items() if before.get(b, ("absent",))[0] != st}
    assert {b: last.get(b) for b in moved} == moved, (moved, last)
    assert 0 < summary["transitions"] <= 2 * out.count("memory"), summary
    print(f"watch -k in the guest: {summary['transitions']} transitions, re-check mean "
          f"{summary['recheck_seconds_mean']} s, {summary['cpu_seconds']} s CPU, RSS "
          f"{summary['rss_mib_first']} -> {summary['rss_mib_last']} MiB")
