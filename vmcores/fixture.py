"""Run a scenario in a guest, record ground truth, dump and filter: one fixture.

Outputs ``vmcores/fixtures/NAME.vmcore`` (kdump-compressed, makedumpfile -c)
and ``NAME.json`` (the manifest).  Work happens in ``NAME.partial`` files and
is renamed into place only when complete.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import kernel, truth
from .guest import Guest, build_initramfs
from .paths import CACHE, FIXTURES, KERNEL_DIR, log, run
from .scenarios import CMDLINE, Scenario, lookup

PAGE_SIZE = 4096
#: sizeof(struct page) on every fixture kernel (x86-64, SLUB).  The factory's
#: rule for N uses it; kpageflags then confirms N on every online block.
STRUCT_PAGE_SIZE = 64


def kernel_version(key: str) -> tuple:
    return tuple(int(x) for x in key.split("-")[0].split("."))


def page_size(config: Dict[str, str]) -> int:
    """The kernel's base page size, from its config."""
    for opt, size in (("PPC_64K_PAGES", 65536), ("ARM64_64K_PAGES", 65536),
                      ("ARM64_16K_PAGES", 16384)):
        if config.get(opt) == "y":
            return size
    return 4096


def expected_vmemmap_pages(key: str, param: str, dimm_size: int, block_size: int,
                           page: int = PAGE_SIZE) -> int:
    """How many pages at the start of each block of a DIMM hold its own memmap.

    The kernel's rule (mm/memory_hotplug.c, mhp_supports_memmap_on_memory):
    the parameter is on; before 6.6 the hot-added range must be exactly one
    memory block (6.6 split larger ranges per block); the memmap must fill
    whole PMDs (true for 64-byte struct pages and 128 MiB blocks).
    """
    if param.upper() not in ("Y", "1", "FORCE"):
        return 0
    if kernel_version(key) < (6, 6) and dimm_size != block_size:
        return 0
    return (block_size // page) * STRUCT_PAGE_SIZE // page


#: What a self-hosted vmemmap page shows in kpageflags on the marking kernel.
MARKING_KPF = ("owner_private", "reserved", "vmemmap")


def memmap_kernel(key: str) -> bool:
    """Whether kernel ``key`` carries the PGTY_memmap patch (patches/6.12-pg-memmap.patch)."""
    return any("pg-memmap" in p for p in kernel.spec(key).patches)


def marking_kernel(key: str) -> bool:
    """Whether kernel ``key`` carries vmemmap-marking patches (see patches/)."""
    return any("vmemmap-marking" in p for p in kernel.spec(key).patches)


def kernel_files(key: str, committed: bool = False) -> Dict[str, Path]:
    """bzImage, vmlinux and the directory holding release / source-version of
    kernel ``key``: built (cached) from its Debian source, or with
    ``committed`` the kernel committed in ``vmcores/kernels/KEY``, so that a
    new scenario's dump pairs with a vmlinux.xz already in the repository."""
    if not committed:
        build = kernel.build_kernel(key)
        return {"bzImage": kernel.boot_image(build), "vmlinux": build / "vmlinux",
                "info": build}
    d = KERNEL_DIR / key
    if not kernel.boot_image(d).exists():
        raise kernel.debian.Unavailable(
            f"kernel {key}: no committed bzImage in {d} (only kernels that live tests "
            "boot keep one); build it from source instead")
    vmlinux = CACHE / "committed" / key / "vmlinux"
    if not vmlinux.exists() or vmlinux.stat().st_mtime < (d / "vmlinux.xz").stat().st_mtime:
        vmlinux.parent.mkdir(parents=True, exist_ok=True)
        with open(vmlinux, "wb") as f:
            subprocess.run(["xz", "-dc", str(d / "vmlinux.xz")], stdout=f, check=True)
    return {"bzImage": kernel.boot_image(d), "vmlinux": vmlinux, "info": d}


class Runner:
    def __init__(self, name: str, scenario: Scenario, guest: Guest, block_size: int):
        self.name = name
        self.scenario = scenario
        self.g = guest
        self.block_size = block_size
        self.log: List[Dict[str, Any]] = []
        self.faults: List[Dict[str, Any]] = []
        self.removed: List[Dict[str, Any]] = []
        #: Booted the committed kernel (faultmod builds against its module tree).
        self.committed = False
        #: The guest kernel's base page size (64K on ppc64le-64k).
        self.page_size = PAGE_SIZE
        #: Pages in a memory section: SECTION_SIZE_BITS is 27 on x86-64 and
        #: arm64 with 4K pages, 24 on ppc64.
        self.section_pages = (1 << 27) // PAGE_SIZE

    def dimm_blocks(self, dimm: str) -> List[int]:
        info = self.g.dimms[dimm]
        first = info["addr"] // self.block_size
        return list(range(first, first + info["size"] // self.block_size))

    def step(self, action: str, *args: Any) -> None:
        log(f"step {action} {args}")
        t = time.monotonic()
        getattr(self, "do_" + action)(*args)
        self.log.append({"step": [action, *args], "seconds": round(time.monotonic() - t, 2)})

    def do_hugepages(self, node: int, count: int) -> None:
        self.g.sh(f"echo {count} > /sys/devices/system/node/node{node}/hugepages/"
                  "hugepages-2048kB/nr_hugepages")

    def do_plug(self, dimm: str, size_mb: int, node: int) -> None:
        self.g.plug(dimm, size_mb, node)
        # Wait until the guest has added every block of the DIMM.
        self._wait_blocks(self.dimm_blocks(dimm), dimm)

    def _select(self, dimm: str, blocks: Any) -> List[int]:
        ids = self.dimm_blocks(dimm)
        return ids if blocks == "all" else [ids[i] for i in blocks]

    def do_online(self, dimm: str, blocks: Any, how: str) -> None:
        for b in self._select(dimm, blocks):
            self.g.sh(f"echo {how} > /sys/devices/system/memory/memory{b}/state")

    def do_offline(self, dimm: str, blocks: Any) -> None:
        for b in self._select(dimm, blocks):
            self.g.sh(f"echo offline > /sys/devices/system/memory/memory{b}/state")

    def do_unplug(self, dimm: str) -> None:
        # What QEMU said of the DIMM before it went: the manifest's record of
        # the range that must now be absent.
        self.removed.append(dict(self.g.dimms[dimm], blocks=self.dimm_blocks(dimm)))
        for b in self.dimm_blocks(dimm):
            self.g.sh(f"s=/sys/devices/system/memory/memory{b}/state; "
                      f"[ ! -e $s ] || [ $(cat $s) = offline ] || echo offline > $s")
        self.g.unplug(dimm)

    def do_block_size(self, size: int) -> None:
        # The guest's memory block size is the geometry a scenario is for.
        if self.block_size != size:
            raise RuntimeError(f"guest memory blocks are {self.block_size:#x} bytes, "
                               f"the scenario needs {size:#x}")

    def _wait_blocks(self, want: List[int], what: str) -> None:
        for _ in range(600):
            present = truth.memory_blocks(self.g)
            if all(b in present for b in want):
                return
            time.sleep(0.1)
        raise RuntimeError(f"guest did not add the blocks of {what}")

    def do_sysctl(self, name: str, value: Any) -> None:
        self.g.sh(f"echo {value} > /proc/sys/{name.replace('.', '/')}")

    def do_virtio_mem(self, dev: str, requested_mb: int) -> None:
        """Resize virtio-mem device ``dev`` (on QEMU's command line: see
        Scenario.guest's virtio_mem) over QMP.  The guest plugs sub-blocks in
        order and adds each memory block once it plugged its first sub-block
        (drivers/virtio/virtio_mem.c, virtio_mem_sbm_plug_and_add_mb()); the
        unplugged rest of a block stays fake-offline (PageOffline) once the
        block is onlined."""
        info = self.g.resize_virtio_mem(dev, requested_mb)
        first = info["addr"] // self.block_size
        used = -(-info["plugged_size"] // self.block_size)
        self._wait_blocks(list(range(first, first + used)), dev)
        # Shrunk: a block whose sub-blocks are all unplugged again is
        # offlined and removed by the guest (virtio_mem_sbm_unplug_any_sb_online()).
        gone = list(range(first + used, first + info["size"] // self.block_size))
        for _ in range(600):
            present = truth.memory_blocks(self.g)
            if not any(b in present for b in gone):
                return
            time.sleep(0.1)
        raise RuntimeError(f"guest did not remove the unplugged blocks of {dev}: {gone}")

    def do_dax_kmem(self, dev: str, memmap_on_memory: int) -> None:
        """Give dax device ``dev`` to kmem with its ``memmap_on_memory``
        attribute set (drivers/dax/bus.c, memmap_on_memory_store(): refused
        with EBUSY while kmem has it, so first unbind whatever driver has it;
        kmem's unbind removes its offline memory).  kmem then hot-adds the
        range with MHP_MEMMAP_ON_MEMORY (drivers/dax/kmem.c,
        dev_dax_kmem_probe())."""
        d = f"/sys/bus/dax/devices/{dev}"
        self.g.sh(f"[ ! -e {d}/driver ] || echo {dev} > {d}/driver/unbind")
        self.g.sh(f"echo {memmap_on_memory} > {d}/memmap_on_memory")
        self.g.sh(f"echo {dev} > /sys/bus/dax/drivers/kmem/bind")
        info = truth.dax_devices(self.g)[dev]
        if info["driver"] != "kmem" or info["memmap_on_memory"] != bool(memmap_on_memory):
            raise RuntimeError(f"{dev}: {info}")
        self.g.dimms[dev] = info
        self._wait_blocks(self.dimm_blocks(dev), dev)

    def do_fault(self, op: str, args: Dict[str, Any]) -> None:
        from .faults import inject
        self.faults.append(inject(self, op, args))


def reuses_boot_pmd(r: Runner, addr: int) -> bool:
    """Whether ppc64 radix maps the memmap of the block at ``addr`` with the
    vmemmap PMD leaf boot memory already has, instead of its altmap.

    radix__vmemmap_populate() (arch/powerpc/mm/book3s64/radix_pgtable.c)
    keeps a present leaf PMD (vmemmap_check_pmd()); boot RAM, 0 to mem_mb,
    had its memmap mapped with PMD leaves, each holding the struct pages of
    PMD_SIZE (2 MiB) / 64 * PAGE_SIZE bytes of RAM (2 GiB with 64K pages).
    A hot-added block in such a span reuses the mapping.  With 4K pages the
    span is 128 MiB, never shared with a 256 MiB-aligned LMB."""
    if kernel.spec(r.scenario.kernel).arch != "ppc64le":
        return False
    span = (2 << 20) // STRUCT_PAGE_SIZE * r.page_size
    return addr // span * span < r.scenario.mem_mb << 20


def collect_truth(r: Runner, key: str) -> Dict[str, Any]:
    g = r.g
    param = truth.memmap_on_memory_param(g)
    # memmap_on_memory=force pads each block's vmemmap area to whole
    # pageblocks; the kernel marks the padding like the memmap itself.
    padding = truth.force_padding(g) if param.lower() == "force" else 0
    blocks = truth.memory_blocks(g)
    bs = r.block_size
    pages_per_block = bs // r.page_size
    dimms = g.memory_devices()
    # dax/kmem ranges: hot-added by the guest's kmem driver, not by QEMU.
    dimms.update(truth.dax_devices(g))
    hot: Dict[int, Dict[str, Any]] = {}
    for d in dimms.values():
        first = d["addr"] // bs
        n = expected_vmemmap_pages(key, param, d["size"], bs, r.page_size)
        if d.get("type") == "virtio-mem" or not d.get("memmap_on_memory", True):
            # virtio-mem never self-hosts (add_memory_driver_managed()
            # without MHP_MEMMAP_ON_MEMORY); kmem only with the dax device's
            # memmap_on_memory attribute (dev_dax_kmem_probe()).
            n = 0
        for i in range(d["size"] // bs):
            hot[first + i] = {"dimm": d["id"], "index": i, "vmemmap_pages": n,
                              "reused": n > 0 and reuses_boot_pmd(r, (first + i) * bs)}
    out_blocks = []
    ranges = []
    kpf: Dict[str, Any] = {}
    hugepages: Dict[str, List[int]] = {}
    marking = marking_kernel(key)
    memmap = memmap_kernel(key)
    memmap_frames: List[List[int]] = []
    for bid in sorted(blocks):
        b = dict(blocks[bid])
        b["start_pfn"] = bid * pages_per_block
        b["nr_pages"] = pages_per_block
        b["hotplugged"] = bid in hot
        if bid in hot:
            b.update(dimm=hot[bid]["dimm"], dimm_index=hot[bid]["index"])
        runs = truth.kpageflags_runs(g, b["start_pfn"], pages_per_block)
        if memmap:
            # PageMemmap() frames, as the kernel's own kpageflags shows them
            # (bit 44): runs of [first pfn, pages].
            memmap_frames += [[s, n] for s, n, names in runs if "memmap" in names]
        heads = truth.hugepage_heads(runs)
        if heads:
            hugepages[str(bid)] = heads
        marker_pfns = sum(n for _, n, names in runs if "owner_private" in names)
        b["owner_private_pages"] = marker_pfns
        if bid in hot:
            kpf[str(bid)] = runs
            n = hot[bid]["vmemmap_pages"]
            marked = n + padding if n else 0
            if hot[bid]["reused"]:
                # The altmap is reserved and marked, no frame of it used.
                n = 0
                b["vmemmap_reuses_boot_pmd"] = True
            b["vmemmap_pages"] = n
            if marked != n:
                b["reserved_pages"] = marked
            if b["state"] == "online":
                seen = truth.vmemmap_run(runs, b["start_pfn"])
                if seen != marked:
                    raise RuntimeError(
                        f"block {bid}: kpageflags shows a PG_owner_priv_1 run of {seen} "
                        f"pages at its start, the rule expects {marked}")
                if marking:
                    # The marking patch promises PGTY_vmemmap (kpageflags bit
                    # 43) and PG_reserved on exactly the same pages.
                    typed = truth.vmemmap_run(runs, b["start_pfn"], MARKING_KPF)
                    if typed != n or sum(k for _, k, names in runs if "vmemmap" in names) != n:
                        raise RuntimeError(
                            f"block {bid}: kpageflags shows {typed} pages with "
                            f"{'+'.join(MARKING_KPF)} at its start, the patch promises {n}")
                if memmap and n:
                    # The memmap patch types every frame that backs struct
                    # pages: a self-hosted block's N frames among them.
                    typed = sum(max(0, min(p + k, b["start_pfn"] + n) - max(p, b["start_pfn"]))
                                for p, k, names in runs if "memmap" in names)
                    if typed != n:
                        raise RuntimeError(f"block {bid}: kpageflags shows PGTY_memmap on "
                                           f"{typed} of its {n} self-hosted frames")
                b["vmemmap_source"] = "kpageflags"
            else:
                b["vmemmap_source"] = "rule"
            if hot[bid]["reused"]:
                b["vmemmap_source"] += " (frames: none, the boot PMD reused)"
            if n:
                entry = {"block": bid, "start_pfn": b["start_pfn"], "nr_pages": n,
                         "state": b["state"], "node": b["node"]}
                if marked != n:
                    # memmap_on_memory=force: the marked area, past the frames.
                    entry["reserved_pages"] = marked
                ranges.append(entry)
        out_blocks.append(b)
    return {
        "memmap_on_memory": param,
        "force_padding_pages": padding,
        "block_size_bytes": bs,
        "blocks": out_blocks,
        "dimms": sorted(dimms.values(), key=lambda d: d["addr"]),
        "removed_dimms": list(r.removed),
        "self_hosted": ranges,
        "kpageflags": kpf,
        **({"memmap_type_frames": _coalesce_runs(memmap_frames)} if memmap else {}),
        "hugepage_heads": hugepages,
        # 0 on a kernel without HugeTLB (the force kernel).
        "nr_hugepages": {n: int(g.sh(f"cat /sys/devices/system/node/node{n}/hugepages/"
                                     "hugepages-2048kB/nr_hugepages 2>/dev/null "
                                     "|| echo 0").strip())
                         for n in (0, 1)},
        "uname": g.sh("uname -r").strip(),
        "meminfo": dict(line.split(":", 1)[0:2] for line in
                        g.sh("cat /proc/meminfo").splitlines() if ":" in line),
    }


def _coalesce_runs(runs: List[List[int]]) -> List[List[int]]:
    """``[[start, n], ...]`` sorted, adjacent runs merged."""
    out: List[List[int]] = []
    for start, n in sorted(runs):
        if out and out[-1][0] + out[-1][1] == start:
            out[-1][1] += n
        else:
            out.append([start, n])
    return out


def readable(vmcore: Path, vmlinux: Path, manifest: Dict[str, Any]) -> Optional[str]:
    """Why drgn cannot read what the tests need from ``vmcore``, or None.

    Only a readability check of the filtered dump; the manifest's contents
    never come from drgn.
    """
    code = r"""
import sys, drgn
from drgn.helpers.linux.mm import for_each_memory_block, for_each_valid_page_range
prog = drgn.Program(); prog.set_core_dump(sys.argv[1]); prog.load_debug_info([sys.argv[2]])
n = 0
for mem in for_each_memory_block(prog):
    prog.read(mem.value_(), drgn.sizeof(mem.type_.type)); n += 1
ps = drgn.sizeof(prog.type("struct page"))
online = set(int(x) for x in sys.argv[3].split(",") if x)
pages_per_block = int(sys.argv[4])
for start, end, mem_map in for_each_valid_page_range(prog):
    for pfn in range(start, end, pages_per_block):
        if pfn // pages_per_block in online:
            prog.read(mem_map.value_() + pfn * ps, min(pages_per_block, end - pfn) * ps)
print(n)
"""
    pages_per_block = manifest["truth"]["block_size_bytes"] // PAGE_SIZE
    online = ",".join(str(b["id"]) for b in manifest["truth"]["blocks"]
                      if b["state"] == "online")
    proc = subprocess.run([sys.executable, "-c", code, str(vmcore), str(vmlinux), online,
                           str(pages_per_block)], capture_output=True, text=True)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["?"])[-1]
    if int(proc.stdout.strip()) != len(manifest["truth"]["blocks"]):
        return "not every memory block was found"
    return None


def build_fixture(key: str, scenario_name: str, out_dir: Path = FIXTURES,
                  committed_kernel: bool = False) -> Path:
    name, scenario = lookup(key, scenario_name)
    files = kernel_files(scenario.kernel, committed_kernel)
    info = files["info"]
    work = CACHE / "run" / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    extra = []
    if any(s[0] == "fault" for s in scenario.steps):
        from .faults import build_module
        extra.append(build_module(scenario.kernel, committed_kernel))
    kd = scenario.kdump
    kfiles = {}
    if kd:
        from . import kdump
        capture = kdump.capture_initramfs(work / "capture.cpio.gz", kd["level"],
                                          kd.get("fill_mb", 0))
        kfiles = kdump.first_kernel_files(files["bzImage"], capture)
    arch = kernel.spec(scenario.kernel).arch
    initramfs = build_initramfs(work / "initramfs.cpio.gz", extra, files=kfiles, arch=arch)
    t0 = time.monotonic()
    cmdline = f"{CMDLINE} {scenario.cmdline}".strip()
    if kd:
        cmdline += f" crashkernel={kd['crashkernel']}"
    with Guest(files["bzImage"], initramfs, work, cmdline=cmdline,
               mem_mb=scenario.mem_mb, arch=arch, **(scenario.guest or {})) as g:
        r = Runner(name, scenario, g, truth.block_size(g))
        r.committed = committed_kernel
        r.page_size = page_size(kernel.read_config(info / "config"))
        r.section_pages = (1 << (24 if arch == "ppc64le" else 27)) // r.page_size
        clean_truth = None
        for step in scenario.steps:
            if step[0] == "fault" and clean_truth is None:
                # Ground truth describes the kernel before any corruption;
                # each fault then records exactly what it changed.
                clean_truth = collect_truth(r, scenario.kernel)
            r.step(*step)
        manifest: Dict[str, Any] = {
            "schema": 1,
            "name": name,
            "doc": scenario.doc,
            "kernel": {"key": scenario.kernel,
                       "source": (info / "source-version").read_text().strip(),
                       "release": (info / "release").read_text().strip(),
                       # Which Debian suite the source came from (newer builds only).
                       **({"suite": (info / "source-suite").read_text().strip()}
                          if (info / "source-suite").exists() else {}),
                       **({"committed": True} if committed_kernel else {}),
                       "cmdline": cmdline,
                       "patches": list(kernel.spec(scenario.kernel).patches)},
            "steps": r.log,
        }
        if kd:
            append = kdump.load_capture(g, kd["capture_cmdline"])
        manifest["truth"] = clean_truth or collect_truth(r, scenario.kernel)
        manifest["faults"] = r.faults
        flat = work / "dump.flat"
        if kd:
            # The truth above was read just before the crash; the capture
            # kernel's own account goes with the dump.
            capture_info = kdump.crash_and_capture(g, append, flat)
        else:
            ram = None
            if scenario.system_ram_only:
                from .ramonly import system_ram
                ram = system_ram(g.sh("cat /proc/iomem"))
            if arch != "x86_64":
                # VMCOREINFO's physical address and size, for a dump without
                # the note (pseries: no vmcoreinfo device).
                vmcoreinfo = tuple(int(x, 16) for x in
                                   g.sh("cat /sys/kernel/vmcoreinfo").split())
                g.dump(flat, fmt="elf")
            else:
                g.dump(flat)
    if arch != "x86_64":
        return _finish_elf(name, scenario, manifest, flat, out_dir, t0, r.page_size,
                           vmcoreinfo if arch == "ppc64le" else None)
    if kd:
        return _finish_kdump(name, scenario, manifest, flat, out_dir, capture_info, t0)
    raw = work / "dump.raw"
    with open(flat, "rb") as f:
        subprocess.run(["makedumpfile", "-R", str(raw)], stdin=f, check=True,
                       capture_output=True)
    flat.unlink()
    left_out = 0
    if ram is not None:
        from .ramonly import keep_only
        left_out = keep_only(raw, ram)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f"{name}.vmcore.partial"
    # Section flags beyond makedumpfile 1.7.2's mask (the marking kernel):
    # filter a scrubbed copy, then put the real words back (see mdfix.py).
    from . import mdfix
    scrub = mdfix.scrub_plan(raw, files["vmlinux"])
    if scrub:
        log(f"{len(scrub)} section words have flags makedumpfile does not know; "
            "filtering a scrubbed copy")
        mdfix.rewrite(raw, scrub, scrubbed=True)
    for level in scenario.filters:
        if partial.exists():
            partial.unlink()
        try:
            # Pages zlib-compressed one by one, or (scenario.xz) stored
            # plain for xz to compress across pages: about half the size.
            run(["makedumpfile", *([] if scenario.xz else ["-c"]), "-d", str(level),
                 str(raw), str(partial)])
        except RuntimeError as e:
            # makedumpfile reads every section's memmap to filter; it gives
            # up on a dump whose vmemmap is partly unmapped.
            log(f"-d {level}: makedumpfile failed ({str(e).splitlines()[-1]}); "
                "trying the next level")
            continue
        if scrub:
            mdfix.rewrite(partial, scrub, scrubbed=False)
        why = readable(partial, files["vmlinux"], manifest)
        if why is None:
            break
        log(f"-d {level} dropped pages the tests need ({why}); trying the next level")
    else:
        raise RuntimeError(f"{name}: no filter level keeps the dump readable")
    raw.unlink()
    manifest["dump"] = {"file": f"{name}.vmcore",
                        "format": "kdump-compressed (uncompressed pages)" if scenario.xz
                        else "kdump-compressed (zlib)",
                        "makedumpfile_level": level, "bytes": partial.stat().st_size,
                        "section_words_scrubbed_for_makedumpfile": len(scrub),
                        "guest_seconds": round(time.monotonic() - t0, 1)}
    if ram is not None:
        # What the guest's /proc/iomem called System RAM: the rest of its
        # RAM (pfns) never went into the dump (vmcores/ramonly.py).
        manifest["dump"].update(system_ram_pfns=[list(r) for r in ram],
                                pfns_left_out_not_system_ram=left_out)
    partial.rename(out_dir / f"{name}.vmcore")
    if level < 17 or scenario.xz:
        # Without mem_map filtering every page keeps a 24-byte descriptor
        # (zero pages share one zero page): several MB that xz squeezes.
        xz_dump(out_dir, name, manifest)
    (out_dir / f"{name}.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    log(f"{name}: {manifest['dump']['bytes'] / 1e6:.1f} MB at -d {level}")
    return out_dir / manifest["dump"]["file"]


def _finish_elf(name: str, scenario: Scenario, manifest: Dict[str, Any], flat: Path,
                out_dir: Path, t0: float, page: int, vmcoreinfo: Any) -> Path:
    """A foreign-architecture guest's dump: QEMU's ELF without its all-zero
    pages, xz'd (vmcores/elfslim.py says why)."""
    from .elfslim import slim
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f"{name}.vmcore.partial"
    nseg, data = slim(flat, partial, page=page, vmcoreinfo=vmcoreinfo)
    flat.unlink()
    manifest["dump"] = {"file": f"{name}.vmcore",
                        "format": "ELF (QEMU dump-guest-memory, all-zero pages as "
                        "p_filesz < p_memsz)", "segments": nseg, "data_bytes": data,
                        # Not filtered: every page of guest RAM reads as it was.
                        "makedumpfile_level": None,
                        **({"vmcoreinfo_note_from_guest_memory": list(vmcoreinfo)}
                           if vmcoreinfo else {}),
                        "bytes": partial.stat().st_size,
                        "guest_seconds": round(time.monotonic() - t0, 1)}
    partial.rename(out_dir / f"{name}.vmcore")
    xz_dump(out_dir, name, manifest)
    (out_dir / f"{name}.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    log(f"{name}: {manifest['dump']['bytes'] / 1e6:.1f} MB, {nseg} segments")
    return out_dir / manifest["dump"]["file"]


def _finish_kdump(name: str, scenario: Scenario, manifest: Dict[str, Any], flat: Path,
                  out_dir: Path, capture: Dict[str, Any], t0: float) -> Path:
    """The capture kernel's makedumpfile output is the fixture as it is: no
    fallback to another level, no readability check (what -d 31 drops is
    what the fixture is for)."""
    from . import kdump
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f"{name}.vmcore.partial"
    kdump.rebuild(flat, partial)
    flat.unlink()
    manifest["dump"] = {"file": f"{name}.vmcore", "format": "kdump-compressed (zlib)",
                        "written_by": "makedumpfile -F -c in the capture kernel (kexec -p)",
                        "makedumpfile_level": scenario.kdump["level"],
                        "bytes": partial.stat().st_size,
                        "guest_seconds": round(time.monotonic() - t0, 1), **capture}
    partial.rename(out_dir / f"{name}.vmcore")
    if scenario.xz:
        # The capture kernel's file, whole, in an xz container.
        xz_dump(out_dir, name, manifest)
    (out_dir / f"{name}.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    log(f"{name}: {manifest['dump']['bytes'] / 1e6:.1f} MB at -d {scenario.kdump['level']} "
        "from the capture kernel")
    return out_dir / manifest["dump"]["file"]


def xz_dump(out_dir: Path, name: str, manifest: Dict[str, Any]) -> None:
    """Replace ``NAME.vmcore`` by ``NAME.vmcore.xz`` (drgn-vmemmap reads both)."""
    src = out_dir / f"{name}.vmcore"
    run(["xz", "-9e", "-T1", "-f", str(src)])
    manifest["dump"].update(file=f"{name}.vmcore.xz", bytes=(out_dir / f"{name}.vmcore.xz")
                            .stat().st_size, container="xz")
