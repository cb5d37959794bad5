"""Fetch a Debian kernel source package and build a minimal fixture kernel.

A kernel key ("6.1", "6.12", "7.2", "6.12-marking") names a Debian source
package, the config fragments merged onto ``tinyconfig`` and optional patches.
The build is deterministic in everything we control (timestamp, user, host),
and its outputs land in the factory cache:

    CACHE/build/KEY/{bzImage, vmlinux, config, release, source-version}

``commit_kernel()`` copies what the tests need into ``vmcores/kernels/KEY``:
``bzImage``, ``config`` and ``vmlinux.xz`` (debug info only, dwz-compressed).
"""

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

from . import debian
from .paths import CACHE, HERE, KERNEL_DIR, log, run


class KernelSpec(NamedTuple):
    key: str
    package: str
    #: The suite preferred for ``package`` (None: the machine's own suites).
    #: Never a version: the newest one there is taken (see debian.resolve).
    suite: Optional[str]
    fragments: List[str]
    patches: List[str]
    #: REQUIRED options this kernel turns off on purpose (its fragment says =n).
    without: Tuple[str, ...] = ()
    #: Commit the bzImage (live tests boot it); a kernel only dumps are
    #: read with does without, which keeps ``vmcores/`` within its budget.
    bzimage: bool = True
    #: The target architecture (see ARCHES); cross-built with Debian's
    #: gcc-<triplet> when it is not the build machine's.
    arch: str = "x86_64"


class Arch(NamedTuple):
    """How one architecture's kernel is built and which file boots it."""

    #: make's ARCH=.
    make_arch: str
    #: CROSS_COMPILE= (Debian's cross toolchain package gcc-<triplet>).
    cross: str
    #: The make target and the file it leaves, relative to the object tree.
    target: str
    image: str
    #: The name the boot image is kept under in the cache and in vmcores/kernels.
    boot_name: str


ARCHES: Dict[str, Arch] = {
    "x86_64": Arch("x86", "", "bzImage", "arch/x86/boot/bzImage", "bzImage"),
    # QEMU decompresses Image.gz itself, also when UEFI loads it over fw_cfg.
    "arm64": Arch("arm64", "aarch64-linux-gnu-", "Image.gz", "arch/arm64/boot/Image.gz",
                  "Image.gz"),
    # pseries (x-vof=on) boots the ELF vmlinux; the stripped copy is enough.
    "ppc64le": Arch("powerpc", "powerpc64le-linux-gnu-", "vmlinux", "vmlinux",
                    "vmlinux.boot"),
}


#: REQUIRED options pseries does without: ACPI (device tree and RTAS
#: instead), fw_cfg (VMCOREINFO comes from the guest's sysfs), the 8250
#: console (hvc) and HVO (not on ppc64).
PPC_WITHOUT = ("ACPI", "ACPI_NUMA", "ACPI_HOTPLUG_MEMORY", "PCI", "FW_CFG_SYSFS",
               "SERIAL_8250_CONSOLE", "HUGETLB_PAGE_OPTIMIZE_VMEMMAP")

KERNELS: Dict[str, KernelSpec] = {
    "6.1": KernelSpec("6.1", "linux-source-6.1", None, ["base", "6.1"], []),
    "6.12": KernelSpec("6.12", "linux-source-6.12", None, ["base", "6.12"], []),
    "7.2": KernelSpec("7.2", "linux-source-7.2", "sid", ["base", "7.2"], []),
    # 6.12 with the marking schemes that were proposed but never merged:
    # SECTION_CANNOT_OPTIMIZE_VMEMMAP (2022), SECTION_USE_VMEMMAP and a
    # PGTY_vmemmap page type with PG_reserved (2019).  See the patch header.
    "6.12-marking": KernelSpec("6.12-marking", "linux-source-6.12", None,
                               ["base", "6.12", "marking"], ["6.12-vmemmap-marking.patch"],
                               bzimage=False),
    # 6.12 without HugeTLB and THP (pageblock order 10), booted with
    # memory_hotplug.memmap_on_memory=force: 1024 pages reserved per block
    # for a 512-page memmap.  See configs/force.config.
    "6.12-force": KernelSpec("6.12-force", "linux-source-6.12", None,
                             ["base", "6.12", "force"], [],
                             without=("HUGETLBFS", "HUGETLB_PAGE",
                                      "HUGETLB_PAGE_OPTIMIZE_VMEMMAP"),
                             bzimage=False),
    # 6.12 with virtio-mem and dax/kmem (dax_hmem over a soft-reserved
    # range): memory devices other than pc-dimm in one guest.  See
    # configs/devices.config.
    "6.12-devices": KernelSpec("6.12-devices", "linux-source-6.12", None,
                               ["base", "6.12", "devices"], [], bzimage=False),
    # 6.12 with the last proposal of the 2022 review, never written upstream:
    # a PGTY_memmap page type on every page that holds struct pages (issue 14;
    # see the patch header).  HVO and memmap_on_memory as in 6.12.
    "6.12-memmap": KernelSpec("6.12-memmap", "linux-source-6.12", None,
                              ["base", "6.12", "devices", "memmap"], ["6.12-pg-memmap.patch"],
                              bzimage=False),
    # Cross-built, from the same Debian 6.12 source (issue 11): arm64 with 4K
    # pages on QEMU virt + UEFI + ACPI; ppc64le pseries radix with 64K and 4K
    # pages (pseries has no HugeTLB vmemmap optimisation, neither has arm64
    # in 6.12: ARCH_WANT_OPTIMIZE_HUGETLB_VMEMMAP is x86, riscv, loongarch).
    "6.12-arm64": KernelSpec("6.12-arm64", "linux-source-6.12", None, ["arm64"], [],
                             without=("HUGETLB_PAGE_OPTIMIZE_VMEMMAP", "X86_64_ACPI_NUMA",
                                      "SERIAL_8250_CONSOLE"), arch="arm64"),
    "6.12-ppc64le-64k": KernelSpec("6.12-ppc64le-64k", "linux-source-6.12", None,
                                   ["ppc64le", "ppc64le-64k"], [],
                                   without=PPC_WITHOUT, bzimage=False, arch="ppc64le"),
    "6.12-ppc64le-4k": KernelSpec("6.12-ppc64le-4k", "linux-source-6.12", None,
                                  ["ppc64le", "ppc64le-4k"], [],
                                  without=PPC_WITHOUT, bzimage=False, arch="ppc64le"),
}

# Options whose absence makes a fixture meaningless.  Checked after
# olddefconfig, which silently drops options whose dependencies are missing.
REQUIRED = [
    "64BIT", "SMP", "NUMA", "ACPI_NUMA", "PCI", "ACPI", "ACPI_HOTPLUG_MEMORY",
    "SPARSEMEM_VMEMMAP", "MEMORY_HOTPLUG", "MEMORY_HOTREMOVE",
    "MHP_MEMMAP_ON_MEMORY", "HUGETLBFS", "HUGETLB_PAGE",
    "HUGETLB_PAGE_OPTIMIZE_VMEMMAP", "FW_CFG_SYSFS", "CRASH_DUMP",
    "PROC_KCORE", "PROC_PAGE_MONITOR", "KALLSYMS_ALL", "MODULES",
    "DEBUG_INFO_DWARF5", "SERIAL_8250_CONSOLE", "BLK_DEV_INITRD",
]

REPRO_ENV = {
    "KBUILD_BUILD_TIMESTAMP": "2026-01-01",
    "KBUILD_BUILD_USER": "vmcores",
    "KBUILD_BUILD_HOST": "drgn-vmemmap",
    "KBUILD_BUILD_VERSION": "1",
}


def spec(key: str) -> KernelSpec:
    """The spec of kernel ``key``: one of :data:`KERNELS`, or any Debian
    series ``X.Y`` (``linux-source-X.Y`` from whichever suite has it, with
    ``configs/X.Y.config`` when there is one)."""
    if key in KERNELS:
        return KERNELS[key]
    if re.fullmatch(r"\d+\.\d+", key):
        frags = ["base"] + ([key] if (HERE / "configs" / f"{key}.config").exists() else [])
        return KernelSpec(key, f"linux-source-{key}", None, frags, [])
    raise debian.Unavailable(f"kernel {key!r}: not a Debian kernel series (X.Y) nor one of "
                             + ", ".join(sorted(KERNELS)))


def fetch_source(ks: KernelSpec, version: Optional[str] = None) -> Tuple[Path, debian.Candidate]:
    """Download (no install) the newest version of the spec's source package
    that a reachable suite has (see debian.resolve), or exactly ``version``;
    return the unpacked kernel tree and the version it is."""
    src = CACHE / "src"
    src.mkdir(parents=True, exist_ok=True)
    apt = debian.Apt()
    if version is None:
        cand = debian.resolve(ks.package, ks.suite, apt)
    else:
        apt.update()
        cand = next((c for c in apt.versions(ks.package) if c.version == version), None)
        if cand is None:
            raise debian.Unavailable(
                f"{ks.package} {version} is no longer on the mirror (it has: "
                + (", ".join(sorted({c.version for c in apt.versions(ks.package)})) or "none")
                + "); build from the newest source instead")
    log(f"{ks.package}: {cand.version} from {cand.suite}")
    deb = debian.deb_path(src, cand)
    if not deb.exists():
        deb = apt.download(cand, src)
    tree = CACHE / "tree" / f"{ks.package}_{cand.version}"
    if not (tree / "Makefile").exists():
        unpack = CACHE / "tree" / (tree.name + ".unpack")
        shutil.rmtree(unpack, ignore_errors=True)
        unpack.mkdir(parents=True)
        run(["dpkg-deb", "-x", str(deb), str(unpack)])
        tarball = next((unpack / "usr" / "src").glob("linux-source-*.tar.*"))
        with tarfile.open(tarball) as tf:
            if hasattr(tarfile, "fully_trusted_filter"):  # 3.11.4+, 3.12+
                tf.extractall(unpack / "x", filter="fully_trusted")
            else:  # Debian 12's python3 (3.11.2): no filters, the same behaviour
                tf.extractall(unpack / "x")
        (top,) = (unpack / "x").iterdir()
        shutil.rmtree(tree, ignore_errors=True)
        top.rename(tree)
        shutil.rmtree(unpack)
    return tree, cand


def _patched(tree: Path, ks: KernelSpec) -> Path:
    """The tree with the spec's patches applied (a copy of its own)."""
    if not ks.patches:
        return tree
    ptree = CACHE / "tree" / f"{tree.name}+{ks.key}"
    if not (ptree / "Makefile").exists():
        shutil.rmtree(ptree, ignore_errors=True)
        run(["cp", "-a", str(tree), str(ptree)])
        for patch in ks.patches:
            run(["patch", "-p1", "-i", str(HERE / "patches" / patch)], cwd=ptree)
    return ptree


def module_tree(key: str) -> Path:
    """An object directory that builds modules for the kernel *committed* in
    ``vmcores/kernels/KEY`` (faultmod.ko for fault fixtures on it), with a
    ``System.map`` read from its committed vmlinux.

    The committed source version is configured with the committed config and
    prepared (``modules_prepare``), never built: a module needs only the
    headers, the config and a matching release string (tinyconfig has no
    MODVERSIONS, so no symbol CRCs).  Needs that exact source version on the
    mirror; fails with one line when it is gone.
    """
    d = KERNEL_DIR / key
    ks = spec(key)
    package, version = (d / "source-version").read_text().split()
    release = (d / "release").read_text().strip()
    obj = CACHE / "obj-committed" / key
    if (obj / "done").exists():
        return obj
    tree, _ = fetch_source(ks._replace(package=package), version)
    tree = _patched(tree, ks)
    shutil.rmtree(obj, ignore_errors=True)
    obj.mkdir(parents=True)
    shutil.copy(d / "config", obj / ".config")
    env = dict(os.environ, **REPRO_ENV)
    make = ["make", "-C", str(tree), f"O={obj}", f"-j{(os.cpu_count() or 1) + 1}",
            *_arch_args(ks)]
    run(make + ["olddefconfig"], env=env)
    run(make + ["modules_prepare"], env=env)
    got = (obj / "include/config/kernel.release").read_text().strip()
    if got != release:
        raise RuntimeError(f"kernel {key}: the prepared tree says {got}, the committed "
                           f"kernel {release}")
    with open(obj / "System.map", "w") as f:
        vmlinux = subprocess.run(["xz", "-dc", str(d / "vmlinux.xz")], capture_output=True,
                                 check=True).stdout
        tmp = obj / "vmlinux.debug"
        tmp.write_bytes(vmlinux)
        subprocess.run([ARCHES[ks.arch].cross + "nm", "-n", str(tmp)], stdout=f, check=True)
        tmp.unlink()
    (obj / "done").touch()
    return obj


def objdir(key: str, committed: bool = False) -> Path:
    """The object directory modules for kernel ``key`` build against: its
    build's, or with ``committed`` the one for the committed kernel."""
    if committed:
        return module_tree(key)
    return Path((build_kernel(key) / "objdir").read_text().strip())


def _arch_args(ks: KernelSpec) -> List[str]:
    """make's ARCH= and CROSS_COMPILE= for the spec (none for x86-64)."""
    arch = ARCHES[ks.arch]
    if ks.arch == "x86_64":
        return []
    return [f"ARCH={arch.make_arch}", f"CROSS_COMPILE={arch.cross}"]


def boot_image(d: Path) -> Path:
    """The boot image in a build or committed kernel directory ``d``."""
    for a in ARCHES.values():
        if (d / a.boot_name).exists():
            return d / a.boot_name
    return d / "bzImage"


def read_config(path: Path) -> Dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"CONFIG_(\w+)=(.*)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def build_kernel(key: str, jobs: Optional[int] = None) -> Path:
    """Build kernel ``key``; return its build directory in the cache."""
    kspec = spec(key)
    out = CACHE / "build" / key
    if (out / "done").exists():
        return out
    tree, cand = fetch_source(kspec)
    obj = CACHE / "obj" / key
    tree = _patched(tree, kspec)  # patched kernels build from their own copy
    obj.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **REPRO_ENV)
    jobs = jobs or (os.cpu_count() or 1) + 1
    arch = ARCHES[kspec.arch]
    make = ["make", "-C", str(tree), f"O={obj}", f"-j{jobs}", *_arch_args(kspec)]
    run(make + ["tinyconfig"], env=env)
    fragments = [str(HERE / "configs" / f"{f}.config") for f in kspec.fragments]
    run([str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(obj),
         str(obj / ".config"), *fragments], env=env, cwd=tree)
    run(make + ["olddefconfig"], env=env)
    config = read_config(obj / ".config")
    missing = [o for o in REQUIRED if o not in kspec.without and config.get(o) != "y"]
    # Every option the fragments ask for must survive, "=n" included; a later
    # fragment overrides an earlier one, as merge_config.sh does.
    wanted: Dict[str, str] = {}
    for f in fragments:
        wanted.update(read_config(Path(f)))
    for opt, val in wanted.items():
        have = config.get(opt, "n")
        if val != have and not (val == "n" and opt not in config):
            missing.append(f"{opt}={val} (got {have})")
    if missing:
        raise RuntimeError(f"kernel {key}: config lost required options: "
                           + ", ".join(sorted(set(missing))))
    run(make + [arch.target, "vmlinux", "modules", "modules_prepare"], env=env)
    out.mkdir(parents=True, exist_ok=True)
    if arch.boot_name == "vmlinux.boot":
        run([f"{arch.cross}objcopy", "--strip-all", str(obj / arch.image),
             str(out / arch.boot_name)])
    else:
        shutil.copy(obj / arch.image, out / arch.boot_name)
    (out / "arch").write_text(kspec.arch + "\n")
    shutil.copy(obj / "vmlinux", out / "vmlinux")
    shutil.copy(obj / ".config", out / "config")
    release = (obj / "include/config/kernel.release").read_text().strip()
    (out / "release").write_text(release + "\n")
    (out / "source-version").write_text(f"{kspec.package} {cand.version}\n")
    (out / "source-suite").write_text(cand.suite + "\n")
    (out / "objdir").write_text(str(obj) + "\n")
    (out / "done").touch()
    return out


#: Sections the committed debug file drops: line tables, location lists and
#: call frame information, which type and variable look-ups never read
#: (about a third of the compressed size; drgn-vmemmap needs types,
#: variables and symbols only).
LEAN_DROP = (".debug_line", ".debug_loclists", ".debug_frame")


def debug_vmlinux(build: Path) -> Path:
    """A debug-info-only copy of vmlinux, dwz-compressed then stripped of
    LEAN_DROP (after dwz, which needs the line tables): what gets committed."""
    dbg = build / "vmlinux.lean"
    arch = (build / "arch").read_text().strip() if (build / "arch").exists() else "x86_64"
    objcopy = ARCHES[arch].cross + "objcopy"
    if not dbg.exists():
        tmp = build / (dbg.name + ".tmp")
        run([objcopy, "--only-keep-debug", "--compress-debug-sections=none",
             str(build / "vmlinux"), str(tmp)])
        # dwz exits non-zero when it finds nothing to share; that is harmless.
        subprocess.run(["dwz", "-L", "none", str(tmp)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run([objcopy, *[f"--remove-section={s}" for s in LEAN_DROP], str(tmp)])
        tmp.rename(dbg)
    return dbg


def commit_kernel(key: str) -> Path:
    """Copy a built kernel into ``vmcores/kernels/KEY``: config, release,
    source-version, ``vmlinux.xz`` and, if it is booted live, bzImage."""
    kspec = spec(key)
    build = build_kernel(key)
    dest = HERE / "kernels" / key
    dest.mkdir(parents=True, exist_ok=True)
    if kspec.bzimage:
        image = ARCHES[kspec.arch].boot_name
        shutil.copy(build / image, dest / image)
    shutil.copy(build / "config", dest / "config")
    for name in ("release", "source-version"):
        shutil.copy(build / name, dest / name)
    dbg = debug_vmlinux(build)
    with open(dest / "vmlinux.xz", "wb") as f:
        subprocess.run(["xz", "-9e", "-T1", "-c", str(dbg)], stdout=f, check=True)
    return dest
