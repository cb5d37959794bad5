#!/usr/bin/env python3
"""
The mutation corpus's view of one fixture (``tools/mutate.py``): its files
(the cached ELF copy, the private working copy), the checker's worker
(``tools/mutate_driver.py``) that checks it, the kernel's facts read with
plain drgn from debug info (flag bits, page-type encodings, section masks,
struct offsets, geometry), and the :class:`Subject`: the working copy with
its clean report, the manifest's ground truth and the targets found in the
clean dump.  Nothing here comes from ``drgn_vmemmap``.
"""

import hashlib
import json
import lzma
import os
import select
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import drgn  # noqa: E402
import numpy as np  # noqa: E402
from drgn import FaultError, Program, offsetof, sizeof  # noqa: E402
from drgn.helpers.linux.list import list_for_each_entry  # noqa: E402
from drgn.helpers.linux.mm import (  # noqa: E402
    decode_memory_block_state_value,
    follow_phys,
    for_each_memory_block,
    pfn_to_virt,
)
from drgn.helpers.linux.mmzone import for_each_present_section  # noqa: E402

from tools.elfcore import Segment, file_offset, load_segments, sparse_copy, write_elf  # noqa: E402

FIXTURES = ROOT / "vmcores" / "fixtures"
KERNELS = ROOT / "vmcores" / "kernels"
DRIVER = ROOT / "tools" / "mutate_driver.py"
FACTORY_BUILD = Path(os.environ.get(
    "DRGN_VMEMMAP_FACTORY_BUILD",
    os.path.expanduser("~/.cache/drgn-vmemmap-factory/build")))
#: Bump when the ELF copy's format changes.
ELF_VERSION = 1
#: Seconds the worker may take to open the program.
STARTUP_TIMEOUT = 300

#: Page types before they were an enum (include/linux/page-flags.h, up to
#: 6.9): bits cleared under PAGE_TYPE_BASE.
_MACRO_PAGE_TYPES = {"buddy": 0x80, "offline": 0x100, "table": 0x200, "guard": 0x400}
#: POISON_POINTER_DELTA (include/linux/poison.h, CONFIG_ILLEGAL_POINTER_VALUE).
_POISON_DELTA = {"X86_64": 0xdead000000000000, "AARCH64": 0xdead000000000000,
                 "S390X": 0xdead000000000000, "PPC64": 0x5deadbeef0000000}
#: SWP_USED (include/linux/swap.h): a swap_info entry in use.
_SWP_USED = 1 << 0
#: mm/page_alloc.c zone_names[] -> enum zone_type.
_ZONE_ENUM = {"DMA": "ZONE_DMA", "DMA32": "ZONE_DMA32", "Normal": "ZONE_NORMAL",
              "HighMem": "ZONE_HIGHMEM", "Movable": "ZONE_MOVABLE", "Device": "ZONE_DEVICE"}


# --- files -----------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$DRGN_VMEMMAP_CACHE``, else ``$XDG_CACHE_HOME/drgn-vmemmap`` (the
    project's cache; this corpus keeps its files under ``mutate/``)."""
    base = os.environ.get("DRGN_VMEMMAP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "drgn-vmemmap")
    return Path(base) / "mutate"


def _unxz(path: Path) -> Path:
    """``path``, or for ``*.xz`` a cached decompressed copy."""
    if path.suffix != ".xz":
        return path
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
                         .encode()).hexdigest()[:16]
    out = cache_dir() / f"{path.parent.name}-{path.stem}.{key}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        with lzma.open(path) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.rename(out)
    return out


def _dump_file(name: str, manifest: Dict[str, Any]) -> Path:
    return FIXTURES / manifest.get("dump", {}).get("file", f"{name}.vmcore")


def default_fixtures() -> List[str]:
    """Every ``*-hotplug-basic`` fixture whose dump is present."""
    out = []
    for p in sorted(FIXTURES.glob("*-hotplug-basic.json")):
        if _dump_file(p.stem, json.loads(p.read_text())).exists():
            out.append(p.stem)
    return out


def _vmlinux(manifest: Dict[str, Any]) -> Path:
    key = manifest["kernel"]["key"]
    for path in (KERNELS / key / "vmlinux.xz", FACTORY_BUILD / key / "vmlinux"):
        if path.exists():
            return _unxz(path)
    raise FileNotFoundError(f"no vmlinux for kernel {key!r}")


def _program(core: Path, vmlinux: Path) -> Program:
    prog = Program()
    prog.set_core_dump(str(core))
    prog.load_debug_info([str(vmlinux)], default=False)
    return prog


def elf_copy(vmcore: Path, vmlinux: Path) -> Path:
    """The cached ELF copy (with holes) of ``vmcore``, written if needed."""
    st = vmcore.stat()
    key = hashlib.sha256(f"{vmcore.resolve()}:{st.st_size}:{st.st_mtime_ns}:{ELF_VERSION}"
                         .encode()).hexdigest()[:16]
    stem = vmcore.name[:-3] if vmcore.name.endswith(".xz") else vmcore.name
    out = cache_dir() / f"{Path(stem).stem}.{key}.elf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        write_elf(_program(_unxz(vmcore), vmlinux), tmp, holes=True)
        tmp.rename(out)
    return out


# --- the checker, out of process ---------------------------------------------------------


class _Hang(Exception):
    pass


class _Died(Exception):
    pass


class Driver:
    """``tools/mutate_driver.py`` on the working file: ask it to check."""

    def __init__(self, core: Path, vmlinux: Path, log: Path) -> None:
        self.core, self.vmlinux, self.log_path = core, vmlinux, log
        self.proc: Optional[subprocess.Popen] = None
        self.restarts = 0
        self._buf = b""

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), str(self.core), str(self.vmlinux)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, bufsize=0,
            cwd=str(ROOT))
        self._buf = b""
        try:
            hello = self._recv(STARTUP_TIMEOUT)
        except (_Hang, _Died) as e:
            self.stop()
            raise RuntimeError(f"the checker worker did not start ({type(e).__name__}); "
                               f"see {self.log_path}") from e
        if not hello.get("ready"):
            self.stop()
            raise RuntimeError(f"the checker worker cannot open {self.core}: "
                               f"{hello.get('error') or hello.get('crash')}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.proc.stdin.write(b'{"op": "quit"}\n')
                    self.proc.stdin.flush()
                    self.proc.wait(5)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait()
            self._reap()

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # our own child, by its pid
            self.proc.wait()
            self._reap()

    def _reap(self) -> None:
        """Close the exited worker's pipes and log."""
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.proc = None
        self._log.close()

    def _recv(self, timeout: float) -> Dict[str, Any]:
        assert self.proc is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Hang()
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise _Died()
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def check(self, timeout: float, fresh: bool = False) -> Tuple[str, Any]:
        """("ok", report JSON) | ("refused", line) | ("crash", traceback) |
        ("hang", why); a hung or dead worker is restarted."""
        if self.proc is None:
            self.start()
        assert self.proc is not None
        try:
            self.proc.stdin.write(json.dumps({"op": "check", "fresh": fresh}).encode() + b"\n")
            self.proc.stdin.flush()
            answer = self._recv(timeout)
        except _Hang:
            self._kill()
            self.restarts += 1
            self.start()
            return "hang", f"check took longer than {timeout} s"
        except (_Died, OSError):
            tail = self._log_tail()
            self._kill()
            self.restarts += 1
            self.start()
            return "crash", f"the checker worker died\n{tail}"
        if "report" in answer:
            return "ok", answer["report"]
        if "error" in answer:
            return "refused", answer["error"]
        return "crash", answer.get("crash", repr(answer))

# --- the kernel's facts, read with plain drgn ----------------------------------------------


def _enum(prog: Program, name: str) -> Dict[str, int]:
    try:
        t = prog.type(name)
    except LookupError:
        return {}
    return {e.name: e.value for e in (t.enumerators or ())}


def _symbol(prog: Program, name: str) -> Optional[drgn.Object]:
    try:
        return prog[name]
    except (KeyError, LookupError):
        return None


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _offset(t: drgn.Type, *names: str) -> Tuple[int, int]:
    """(offset, size) of the first member of ``names`` that ``t`` has."""
    for name in names:
        try:
            off = offsetof(t, name)
        except LookupError:
            continue
        m = t
        for part in name.split("."):
            m = m.member(part).type
        return off, sizeof(m)
    raise LookupError(f"{t} has none of {names}")


class Kernel:
    """What the oracle needs to know about the kernel, from its debug info."""

    def __init__(self, prog: Program, manifest: Dict[str, Any]) -> None:
        self.prog = prog
        self.page_shift = prog["PAGE_SHIFT"].value_()
        self.page_size = 1 << self.page_shift
        self.pps = 1 << (prog["SECTION_SIZE_BITS"].value_() - self.page_shift)
        self.spb = prog["sections_per_block"].value_()
        self.ppb = self.pps * self.spb
        self.vmemmap = prog["vmemmap"].value_()
        self.page_offset = pfn_to_virt(prog, 0).value_()
        self.poison = _POISON_DELTA.get(prog.platform.arch.name, 0xdead000000000000)
        page = prog.type("struct page")
        self.page_t = page
        self.page_bytes = sizeof(page)
        # The word whose bit 0 marks a tail page: compound_head, compound_info
        # from 7.1 (offset 8 on 64-bit).
        self.fields: Dict[str, Tuple[int, int]] = {
            "flags": (offsetof(page, "flags"), 8),
            "refcount": (offsetof(page, "_refcount"), 4),
            "page_type": (_offset(page, "page_type", "_mapcount")[0], 4),
            "mapping": (offsetof(page, "mapping"), 8),
            "private": (offsetof(page, "private"), 8),
            "compound_head": (_offset(page, "compound_info", "compound_head")[0], 8),
        }
        self.pf = {k: v for k, v in _enum(prog, "enum pageflags").items()
                   if k.startswith("PG_")}
        self.owner_priv_1 = self.pf["PG_owner_priv_1"]
        #: The per-page marker bit (6.0+), else None.
        self.marker_bit = self.pf.get("PG_vmemmap_self_hosted")
        # page_type (include/linux/page-flags.h).
        pagetype = _enum(prog, "enum pagetype")
        self.types: Dict[str, int] = {}
        if "PGTY_mapcount_underflow" in pagetype:
            # 6.12+: the type is the top byte; page_has_type() is
            # (int)page_type < PGTY_mapcount_underflow << 24.
            self.type_scheme = "pgty"
            self.type_limit = _s32(pagetype["PGTY_mapcount_underflow"] << 24)
            self.types = {k[5:]: v for k, v in pagetype.items()
                          if k.startswith("PGTY_") and k != "PGTY_mapcount_underflow"}
        else:
            # Up to 6.11: a type's bit is cleared under PAGE_TYPE_BASE;
            # page_has_type() is (int)page_type < PAGE_MAPCOUNT_RESERVE.
            self.type_scheme = "inverted"
            self.type_base = pagetype.get("PAGE_TYPE_BASE", 0xF0000000) & 0xFFFFFFFF
            self.type_limit = _s32(pagetype.get("PAGE_MAPCOUNT_RESERVE", -128))
            enum_types = {k[3:]: v & 0xFFFFFFFF for k, v in pagetype.items()
                          if k.startswith("PG_")}
            self.types = enum_types or dict(_MACRO_PAGE_TYPES)
        #: The vmemmap page type of kernels patched with the 2019 scheme.
        self.vmemmap_type = self.types.get("vmemmap")
        #: PGTY_memmap (every memmap page) of the 6.12-memmap kernel.
        self.memmap_type = self.types.get("memmap")
        # section_mem_map flags: an enum of SECTION_*_BIT since 6.0, macros before.
        present_bit = _symbol(prog, "SECTION_MARKED_PRESENT_BIT")
        if present_bit is not None:
            self.section_masks = {}
            self.map_last_bit = 5
            for e in present_bit.type_.enumerators:
                if e.name == "SECTION_MAP_LAST_BIT":
                    self.map_last_bit = e.value
                elif e.name.startswith("SECTION_") and e.name.endswith("_BIT"):
                    self.section_masks[e.name[8:-4]] = 1 << e.value
        else:
            self.section_masks = {"MARKED_PRESENT": 0x1, "HAS_MEM_MAP": 0x2, "IS_ONLINE": 0x4,
                                  "IS_EARLY": 0x8, "TAINT_ZONE_DEVICE": 0x10}
            self.map_last_bit = 5
        self.mb_type = prog.type("struct memory_block")
        self.altmap_type = (prog.type("struct vmem_altmap")
                            if self.mb_type.has_member("altmap") else None)
        self.hpg_optimized = _enum(prog, "enum hugetlb_page_flags").get("HPG_vmemmap_optimized")
        self.zones = [e.name for e in prog.type("enum zone_type").enumerators
                      if e.name != "__MAX_NR_ZONES"]
        self.nodes_shift = self._nodes_shift(manifest)
        n = len(self.zones)
        self.zones_shift = 0 if n <= 1 else 1 if n <= 2 else 2 if n <= 4 else 3
        self.swap = self._swap_in_use()
        self.xen = self._xen_guest()

    def _nodes_shift(self, manifest: Dict[str, Any]) -> int:
        """NODES_SHIFT from the kernel's config, else from MAX_NUMNODES
        (``node_data[]``'s length)."""
        key = manifest["kernel"]["key"]
        for config in (KERNELS / key / "config", FACTORY_BUILD / key / "config"):
            if config.exists():
                text = config.read_text()
                if "CONFIG_NUMA=y" not in text:
                    return 0
                for line in text.splitlines():
                    if line.startswith("CONFIG_NODES_SHIFT="):
                        return int(line.split("=", 1)[1])
        length = self.prog["node_data"].type_.length or 1
        return (length - 1).bit_length()

    def _swap_in_use(self) -> bool:
        """Whether a page can be in the swap cache: CONFIG_SWAP (mm/swapfile.c's
        ``total_swap_pages``) and swap space, or a swap device still in use
        (swapoff lowers ``total_swap_pages`` before it empties the cache)."""
        total = _symbol(self.prog, "total_swap_pages")
        if total is None:
            return False
        try:
            if total.value_():
                return True
            nr = self.prog["nr_swapfiles"].value_()
            info = self.prog["swap_info"]
            for i in range(nr):
                si = info[i].read_()
                if si and si.flags.value_() & _SWP_USED:
                    return True
            return False
        except (FaultError, KeyError, LookupError):
            return True  # cannot tell: allow the alias

    def _xen_guest(self) -> bool:
        t = _symbol(self.prog, "xen_domain_type")
        if t is None:
            return False  # no CONFIG_XEN
        try:
            return t.value_() != 0  # XEN_NATIVE
        except FaultError:
            return True

    # --- decoding ---

    def has_type(self, page_type: int) -> bool:
        return _s32(page_type) < self.type_limit

    def type_is(self, page_type: int, name: str) -> bool:
        value = self.types.get(name)
        if value is None or not self.has_type(page_type):
            return False
        if self.type_scheme == "pgty":
            return (page_type & 0xFFFFFFFF) >> 24 == value
        return (page_type & (self.type_base | value)) == self.type_base

    def flag(self, flags: int, name: str) -> bool:
        bit = self.pf.get(name)
        return bit is not None and bool(flags >> bit & 1)

    def node(self, flags: int) -> Optional[int]:
        """NODES_PGSHIFT = 64 - NODES_WIDTH (no section field with SPARSEMEM_VMEMMAP)."""
        return flags >> (64 - self.nodes_shift) if self.nodes_shift else None

    def zone(self, flags: int) -> Optional[int]:
        if not self.zones_shift:
            return None
        return flags >> (64 - self.nodes_shift - self.zones_shift) & ((1 << self.zones_shift) - 1)

    def tail(self, page: Dict[str, int]) -> bool:
        return bool(page["compound_head"] & 1)

    def slab(self, page: Dict[str, int]) -> bool:
        return self.flag(page["flags"], "PG_slab") or self.type_is(page["page_type"], "slab")

    def address_space(self, mapping: int) -> bool:
        """Could ``mapping`` be a ``struct address_space *``?"""
        if mapping == 0 or mapping & 3:
            return False
        if 0 <= mapping - self.poison < 0x10000:  # TAIL_MAPPING and friends
            return False
        return mapping >= self.page_offset


def _decode_pages(k: Kernel, data: bytes) -> Dict[str, np.ndarray]:
    words = np.frombuffer(data, np.uint8).reshape(-1, k.page_bytes)

    def col(name: str) -> np.ndarray:
        off, size = k.fields[name]
        dt = np.dtype("<u8" if size == 8 else "<u4")
        return np.ascontiguousarray(words[:, off:off + size]).view(dt).ravel()

    return {name: col(name) for name in k.fields}

# --- the subject: one fixture, its working copy, its clean state ---------------------------


class Folio(NamedTuple):
    head: int
    order: int
    optimized: bool


class Subject:
    """A fixture ready for mutations: working file, program, worker, clean report."""

    def __init__(self, name: str, workdir: Path, fresh: bool = False,
                 timeout: float = 60) -> None:
        self.name = name
        self.manifest = json.loads((FIXTURES / f"{name}.json").read_text())
        self.vmlinux = _vmlinux(self.manifest)
        vmcore = _dump_file(name, self.manifest)
        self.path = workdir / f"{name}.elf"
        sparse_copy(elf_copy(vmcore, self.vmlinux), self.path)
        self.segments: List[Segment] = load_segments(self.path)
        self.fresh = fresh
        self.fd = os.open(self.path, os.O_RDWR)
        self.prog = _program(self.path, self.vmlinux)
        prog = self.prog
        self.k = k = Kernel(prog, self.manifest)
        self.init_mm = prog["init_mm"].address_of_()
        self.driver = Driver(self.path, self.vmlinux, workdir / f"{name}.driver.log")
        self.driver.start()
        status, baseline = self.driver.check(max(timeout, 300), fresh)
        if status != "ok":
            self.close()
            raise RuntimeError(f"{name}: the clean copy does not check ({status}): {baseline}")
        self.baseline: Dict[str, Any] = baseline
        self.baseline_violations = {_vkey(v) for v in baseline["violations"]}

        truth = self.manifest["truth"]
        self.truth_blocks = {b["id"]: b for b in truth["blocks"]}
        #: Per block, the frames backing its struct pages, and its vmemmap
        #: area (the frames, plus the pageblock padding memmap_on_memory=force
        #: reserves and marks: the guest saw it in kpageflags).
        self.frames: Dict[int, int] = {r["block"]: r["nr_pages"] for r in truth["self_hosted"]}
        self.self_hosted: Dict[int, Tuple[int, int]] = {
            r["block"]: (r["start_pfn"], r["start_pfn"] + r.get("reserved_pages", r["nr_pages"]))
            for r in truth["self_hosted"]}
        # Blocks whose memmap reused the boot vmemmap PMD (ppc64 radix 64K,
        # the factory's rule): no frame, the reserved area marked all the same.
        for b in truth["blocks"]:
            if b.get("vmemmap_reuses_boot_pmd"):
                self.frames[b["id"]] = 0
                self.self_hosted[b["id"]] = (b["start_pfn"], b["start_pfn"] + b["reserved_pages"])
        found = {r["block"]: (r["start_pfn"], r["nr_pages"],
                              r["start_pfn"] + r.get("reserved_pages", r["nr_pages"]))
                 for r in baseline["ranges"]}
        want = {b: (lo, self.frames[b], hi) for b, (lo, hi) in self.self_hosted.items()}
        if found != want:
            self.close()
            raise RuntimeError(f"{name}: the checker's ranges on the clean copy {found} are "
                               f"not the manifest's {want}")
        self.hotplugged = sorted(b["id"] for b in truth["blocks"] if b.get("hotplugged"))
        #: Frames with PGTY_memmap in the clean kernel, as the guest's
        #: kpageflags showed them (bit 44 of the 6.12-memmap kernel): the
        #: frames that hold struct pages, by the kernel's own word.
        self.memmap_frames: Set[int] = {
            p for start, n in truth.get("memmap_type_frames", []) for p in range(start, start + n)}
        if k.memmap_type is not None and not self.memmap_frames:
            self.close()
            raise RuntimeError(f"{name}: the kernel has PGTY_memmap, the manifest no "
                               "memmap_type_frames")
        online = {b["id"] for b in truth["blocks"] if b["state"] == "online"}
        self.memmap_frame_targets = sorted(p for p in self.memmap_frames if p // k.ppb in online)
        self.online = {b["id"] for b in truth["blocks"] if b["state"] == "online"}
        self.truth_node = {b["id"]: b["node"] for b in truth["blocks"]}

        # Sections and blocks, as the clean dump has them.
        self.sections: Dict[int, Tuple[int, int]] = {}  # nr -> (address, section_mem_map)
        for nr, ms in for_each_present_section(prog):
            self.sections[nr] = (ms.value_(), ms.section_mem_map.value_())
        self.blocks: Dict[int, Dict[str, Any]] = {}
        for mem in for_each_memory_block(prog):
            self.blocks[mem.dev.id.value_()] = self._read_block(mem)
        for bid, b in self.blocks.items():
            want_state = {"online": "MEM_ONLINE", "offline": "MEM_OFFLINE"}.get(
                self.truth_blocks.get(bid, {}).get("state"))
            if want_state is not None and b["state"] != want_state:
                self.close()
                raise RuntimeError(f"{name}: block {bid} is {b['state']} in the dump, "
                                   f"{want_state} in the manifest")
        #: Expected zone index and PG_reserved of each online block's vmemmap
        #: pages (the manifest: the block's zone, and kpageflags' reserved).
        self.vmemmap_zone: Dict[int, Optional[int]] = {}
        self.vmemmap_reserved: Dict[int, Optional[bool]] = {}
        for bid, (start, _end) in self.self_hosted.items():
            zones = self.truth_blocks[bid].get("valid_zones") or []
            zname = _ZONE_ENUM.get(zones[0]) if len(zones) == 1 else None
            self.vmemmap_zone[bid] = k.zones.index(zname) if zname in k.zones else None
            reserved = None
            for run_start, n, kflags in self.manifest["truth"].get("kpageflags", {}).get(
                    str(bid), []):
                if run_start <= start < run_start + n:
                    reserved = "reserved" in kflags
            self.vmemmap_reserved[bid] = reserved

        self._classify()
        if k.nodes_shift:
            for bid, (start, end) in self.self_hosted.items():
                if bid not in self.online:
                    continue
                nodes = {k.node(self.page_fields(p)["flags"]) for p in range(start, end)}
                if nodes != {self.truth_node[bid]}:  # the oracle's layout is wrong
                    self.close()
                    raise RuntimeError(f"{name}: block {bid}'s vmemmap pages are on nodes "
                                       f"{nodes} by NODES_SHIFT {k.nodes_shift}, not on "
                                       f"node {self.truth_node[bid]}")

    def _read_block(self, mem: drgn.Object) -> Dict[str, Any]:
        k = self.k
        state_value = mem.state.value_()
        try:
            state = decode_memory_block_state_value(self.prog, state_value)
        except (ValueError, KeyError, LookupError):
            state = "?"
        altmap = None
        vmemmap_pages = None
        if k.altmap_type is not None:
            ptr = mem.altmap.read_()
            if ptr:
                a = ptr[0].read_()
                altmap = {f: getattr(a, f).value_()
                          for f in ("base_pfn", "end_pfn", "reserve", "free", "alloc")}
                vmemmap_pages = altmap["free"]
            else:
                vmemmap_pages = 0
            altmap_address = ptr.value_()
        else:
            altmap_address = 0
            if k.mb_type.has_member("nr_vmemmap_pages"):
                vmemmap_pages = mem.nr_vmemmap_pages.value_()
        return {"address": mem.value_(), "altmap_address": altmap_address,
                "state": state, "state_value": state_value,
                "start_section_nr": mem.start_section_nr.value_(),
                "nid": mem.nid.value_() & 0xFFFFFFFF,
                "vmemmap_pages": vmemmap_pages, "altmap": altmap}

    def _classify(self) -> None:
        """Find the pages of the other target classes in the clean dump."""
        k, prog = self.k, self.prog
        # HugeTLB folios, from the hstate lists.
        self.folios: Dict[int, Folio] = {}
        hstates = _symbol(prog, "hstates")
        if hstates is not None:
            for i in range(prog["hugetlb_max_hstate"].value_()):
                h = hstates[i]
                order = h.order.value_()
                heads = [h.hugepage_activelist.address_of_()]
                heads += [h.hugepage_freelists[n].address_of_()
                          for n in range(len(h.hugepage_freelists))]
                for head in heads:
                    try:
                        for folio in list_for_each_entry("struct folio", head, "lru"):
                            pfn = (folio.value_() - k.vmemmap) // k.page_bytes
                            opt = (k.hpg_optimized is not None
                                   and bool(folio.private.value_() >> k.hpg_optimized & 1))
                            self.folios[pfn] = Folio(pfn, order, opt)
                    except FaultError:
                        continue
        # Cross-check with the manifest (the guest's kpageflags).
        listed = {pfn for heads in self.manifest["truth"].get("hugepage_heads", {}).values()
                  for pfn in heads}
        self.compound_heads = sorted(p for p in listed
                                     if p in self.folios and not self.folios[p].optimized)
        self.hvo_heads = sorted(p for p, f in self.folios.items() if f.optimized)
        # Frames backing optimised folios' vmemmap, and whose struct pages each holds.
        self.frame_users: Dict[int, List[int]] = defaultdict(list)  # frame -> first pfns
        per_page = k.page_size // k.page_bytes
        for head in self.hvo_heads:
            f = self.folios[head]
            for i in range(max(1, ((1 << f.order) * k.page_bytes) // k.page_size)):
                va = k.vmemmap + head * k.page_bytes + i * k.page_size
                try:
                    frame = follow_phys(self.init_mm, va).value_() >> k.page_shift
                except FaultError:
                    continue
                self.frame_users[frame].append(head + i * per_page)
        #: HVO's replacement pages: the frames that back optimised folios'
        #: vmemmap now (6.12's head copy, 7.2's private copy and shared tail;
        #: 6.1's kept page 0).
        self.replacement_frames = sorted(self.frame_users)
        # Buddy, slab and page-table pages of online blocks, hot-plugged first.
        self.by_kind: Dict[str, List[int]] = {"buddy": [], "slab": [], "page-table": []}
        hot, boot = [], []
        for bid in sorted(self.online):
            start, end = bid * k.ppb, (bid + 1) * k.ppb
            cols, pfns = self._read_pages(start, end)
            if cols is None:
                continue
            pt, flags, ch = cols["page_type"], cols["flags"], cols["compound_head"]
            kinds = {"buddy": self._type_mask(pt, "buddy"),
                     "slab": self._type_mask(pt, "slab"),
                     "page-table": self._type_mask(pt, "table")}
            if "PG_slab" in k.pf:
                kinds["slab"] |= ((flags >> np.uint64(k.pf["PG_slab"])) & np.uint64(1)).astype(
                    bool) & ((ch & np.uint64(1)) == 0)
            for kind, mask in kinds.items():
                found = [int(p) for p in pfns[mask]]
                (hot if bid in self.hotplugged else boot).append((kind, found))
        for kind, found in hot + boot:
            if len(self.by_kind[kind]) < 4096:
                self.by_kind[kind] += found[:4096]
        self.hot_pfns = {kind: [p for kd, found in hot if kd == kind for p in found]
                         for kind in self.by_kind}

    def _type_mask(self, pt: np.ndarray, name: str) -> np.ndarray:
        k = self.k
        value = k.types.get(name)
        signed = pt.astype(np.int64)
        signed = np.where(signed >= 1 << 31, signed - (1 << 32), signed)
        has = signed < k.type_limit
        if value is None:
            return np.zeros(len(pt), bool)
        if k.type_scheme == "pgty":
            return has & ((pt >> np.uint32(24)) == value)
        return has & ((pt & np.uint32(k.type_base | value)) == k.type_base)

    def _read_pages(self, start: int, end: int):
        """Columns of the readable struct pages of ``[start, end)``."""
        k = self.k
        chunks, pfns = [], []
        step = k.page_size // k.page_bytes
        for lo in range(start, end, k.pps):
            hi = min(end, lo + k.pps)
            try:
                chunks.append(self.prog.read(k.vmemmap + lo * k.page_bytes,
                                             (hi - lo) * k.page_bytes))
                pfns.append(np.arange(lo, hi))
                continue
            except FaultError:
                pass
            for p in range(lo, hi, step):
                try:
                    chunks.append(self.prog.read(k.vmemmap + p * k.page_bytes,
                                                 step * k.page_bytes))
                    pfns.append(np.arange(p, p + step))
                except FaultError:
                    pass
        if not chunks:
            return None, None
        return _decode_pages(k, b"".join(chunks)), np.concatenate(pfns)

    def close(self) -> None:
        self.driver.stop()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # --- memory access -------------------------------------------------------------

    def offset_of(self, va: int, size: int) -> Optional[int]:
        """File offset of kernel virtual ``[va, va + size)``, None if not in the file."""
        try:
            pa = follow_phys(self.init_mm, va).value_()
        except FaultError:
            return None
        return file_offset(self.segments, pa, size)

    def read_file(self, offset: int, size: int) -> int:
        return int.from_bytes(os.pread(self.fd, size, offset), "little")

    def write_file(self, offset: int, size: int, value: int) -> None:
        os.pwrite(self.fd, value.to_bytes(size, "little"), offset)

    def page_fields(self, pfn: int) -> Dict[str, int]:
        k = self.k
        data = self.prog.read(k.vmemmap + pfn * k.page_bytes, k.page_bytes)
        return {name: int.from_bytes(data[off:off + size], "little")
                for name, (off, size) in k.fields.items()}

    def self_hosted_block(self, pfn: int) -> Optional[int]:
        for bid, (s, e) in self.self_hosted.items():
            if s <= pfn < e:
                return bid
        return None

    def aliases(self, pfn: int) -> Tuple[int, ...]:
        """Every pfn whose struct page shares the bytes of ``pfn``'s (HVO's
        aliased vmemmap), ``pfn`` first."""
        k = self.k
        per_page = k.page_size // k.page_bytes
        try:
            frame = follow_phys(self.init_mm, k.vmemmap + pfn * k.page_bytes).value_() \
                >> k.page_shift
        except FaultError:
            return (pfn,)
        users = self.frame_users.get(frame)
        if not users:
            return (pfn,)
        slot = pfn % per_page
        out = [pfn] + sorted({first + slot for first in users} - {pfn})
        return tuple(out)

    def folio_of(self, pfn: int) -> Optional[Folio]:
        for f in self.folios.values():
            if f.head <= pfn < f.head + (1 << f.order):
                return f
        return None


def _vkey(v: Dict[str, Any]) -> Tuple[Any, ...]:
    return (v["rule"], v["pfn_start"], v["pfn_end"], v.get("section"), v.get("block"))
