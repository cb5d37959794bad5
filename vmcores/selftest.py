"""The kernel's own memory-hotplug selftest, for a busybox guest.

``mem_on_off_test(key)``: ``tools/testing/selftests/memory-hotplug/
mem-on-off-test.sh`` from the committed kernel's own Debian source package
(the exact version in ``kernels/KEY/source-version`` when the mirror still
has it, else the newest of its series: the script is the same across a
stable series), taken out of the package's tarball alone, without unpacking
the tree.  ``bash_static()``: Debian's ``bash-static`` (the script is bash;
busybox's ash is not enough).  Both cached under ``CACHE/selftest``.
"""

import shutil
import subprocess
from pathlib import Path

from . import debian
from .kernel import KERNEL_DIR
from .paths import CACHE, log

SCRIPT = "tools/testing/selftests/memory-hotplug/mem-on-off-test.sh"


def _deb(package: str, version: str = "") -> Path:
    apt = debian.Apt()
    apt.update()
    cands = apt.versions(package)
    cand = next((c for c in cands if c.version == version), None) if version else None
    if cand is None:
        if not cands:
            raise debian.Unavailable(debian.unavailable_message(package, apt))
        series = debian.series_of(version) if version else None
        same = [c for c in cands if series is None or debian.series_of(c.version) == series]
        cand = debian.newest(same or cands)
        if version:
            log(f"{package} {version} is gone from the mirror: {cand.version} instead")
    dest = CACHE / "selftest" / "debs"
    dest.mkdir(parents=True, exist_ok=True)
    deb = debian.deb_path(dest, cand)
    return deb if deb.exists() else apt.download(cand, dest)


def mem_on_off_test(key: str) -> Path:
    dest = CACHE / "selftest" / key / "mem-on-off-test.sh"
    if dest.exists():
        return dest
    package, version = (KERNEL_DIR / key / "source-version").read_text().split()
    deb = _deb(package, version)
    dest.parent.mkdir(parents=True, exist_ok=True)
    series = package[len("linux-source-"):]
    log(f"{SCRIPT} from {deb.name}")
    # dpkg-deb --fsys-tarfile | tar -xO the source tarball | tar -xJO the script
    fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    inner = subprocess.Popen(["tar", "-xO", f"./usr/src/linux-source-{series}.tar.xz"],
                             stdin=fsys.stdout, stdout=subprocess.PIPE)
    assert fsys.stdout is not None and inner.stdout is not None
    fsys.stdout.close()
    script = subprocess.run(["tar", "-xJO", "--wildcards", f"*/{SCRIPT}"], stdin=inner.stdout,
                            capture_output=True, check=True).stdout
    inner.wait()
    fsys.wait()
    if not script.startswith(b"#!/bin/bash"):
        raise RuntimeError(f"{SCRIPT} not found in {deb}")
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(script)
    tmp.rename(dest)
    return dest


def bash_static() -> Path:
    dest = CACHE / "selftest" / "bash-static"
    if dest.exists():
        return dest
    apt = debian.Apt()
    cand = debian.resolve("bash-static", None, apt)  # the machine's own suites first
    dest.parent.mkdir(parents=True, exist_ok=True)
    deb = debian.deb_path(dest.parent, cand)
    if not deb.exists():
        deb = apt.download(cand, dest.parent)
    work = dest.parent / "bash-unpack"
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work)], check=True)
    # /bin before the /usr merge, /usr/bin after.
    next(p for p in (work / "usr/bin/bash-static", work / "bin/bash-static")
         if p.exists()).rename(dest)
    shutil.rmtree(work)
    return dest
