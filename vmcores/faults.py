"""Host side of fault injection: build faultmod.ko, resolve targets, load it.

A fault step names its target symbolically, e.g. ``{"dimm": "dimm0",
"block": 0, "offset": 3, "count": 5}`` (pfns 3..7 of the DIMM's first block)
and carries ``expect``: the violation the checker must report for it.  The
manifest records the resolved numbers, the module's own account of the old
and new values, and the expectation.
"""

import json
import shutil
from pathlib import Path
from typing import Any, Dict

from . import kernel
from .paths import CACHE, HERE, run


def build_module(key: str, committed: bool = False) -> Path:
    """faultmod.ko for kernel ``key`` (its build, or the committed kernel)."""
    obj = kernel.objdir(key, committed)
    src = CACHE / "faultmod" / (key + ("-committed" if committed else ""))
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for f in ("faultmod.c", "Kbuild"):
        shutil.copy(HERE / "faultmod" / f, src / f)
    # A module tree for the committed kernel was never built, so it has no
    # Module.symvers: modpost cannot tell exported symbols from typos and
    # only warns.  The guest's insmod resolves them by name (no MODVERSIONS)
    # and fails loudly on any it lacks.
    run(["make", "-C", str(obj), f"M={src}", "modules", *kernel._arch_args(kernel.spec(key)),
         *(["KBUILD_MODPOST_WARN=1"] if committed else [])])
    return src / "faultmod.ko"


def symbol(key: str, name: str, committed: bool = False) -> int:
    obj = kernel.objdir(key, committed)
    for line in (obj / "System.map").read_text().splitlines():
        addr, _, sym = line.split()
        if sym == name:
            return int(addr, 16)
    raise KeyError(name)


def resolve(runner: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    """Turn symbolic targets into pfn / block / section numbers."""
    out = {k: v for k, v in args.items()
           if k not in ("dimm", "offset", "expect", "block_id", "hugepage", "target_dimm",
                        "target_block", "target_offset")}
    if "block_id" in args:
        # A boot block, by id.
        pages_per_block = runner.block_size // runner.page_size
        out["block"] = args["block_id"]
        out["pfn"] = args["block_id"] * pages_per_block + args.get("offset", 0)
        out["section"] = out["pfn"] // runner.section_pages
    if "dimm" in args:
        blocks = runner.dimm_blocks(args["dimm"])
        bid = blocks[args.get("block", 0)]
        pages_per_block = runner.block_size // runner.page_size
        out["block"] = bid
        out["pfn"] = bid * pages_per_block + args.get("offset", 0)
        out["section"] = out["pfn"] // runner.section_pages + args.get("section_index", 0)
        out.pop("section_index", None)
    if "target_dimm" in args:
        # A frame of another DIMM block (its first, or target_offset pages
        # in), for page-table remapping.
        pages_per_block = runner.block_size // runner.page_size
        out["value"] = runner.dimm_blocks(args["target_dimm"])[args.get("target_block", 0)] \
            * pages_per_block + args.get("target_offset", 0)
    for k, v in list(out.items()):
        if isinstance(v, str) and v.startswith("$"):
            out[k] = _ref(v, out)
    return out


def _ref(v: str, target: Dict[str, Any]) -> int:
    """``"$pfn"``, ``"$block"``, ``"$section+1"``: a number from the resolved target."""
    name, _, plus = v[1:].partition("+")
    return target[name] + int(plus or 0)


def inject(runner: Any, op: str, args: Dict[str, Any]) -> Dict[str, Any]:
    target = resolve(runner, args)
    if "hugepage" in args:
        # The n-th HugeTLB head inside the block, from kpageflags.
        from .truth import hugepage_heads, kpageflags_runs
        pages_per_block = runner.block_size // runner.page_size
        heads = hugepage_heads(kpageflags_runs(runner.g, target["block"] * pages_per_block,
                                               pages_per_block))
        target["pfn"] = heads[args["hugepage"]]
        target["block_pfn"] = target["block"] * pages_per_block
    params = {"op": op, "memory_blocks_addr": symbol(runner.scenario.kernel, "memory_blocks",
                                                      runner.committed)}
    if op == "vmemmap_fallback":
        params["init_mm_addr"] = symbol(runner.scenario.kernel, "init_mm", runner.committed)
    for k in ("pfn", "count", "flag", "sflag", "value", "mask", "block", "section"):
        if k in target:
            params[k] = target[k]
    runner.g.sh("dmesg -c > /dev/null")
    runner.g.sh("insmod /lib/faultmod.ko " + " ".join(f"{k}={v}" for k, v in params.items()))
    out = runner.g.sh("dmesg")
    runner.g.sh("rmmod faultmod")
    reports = [json.loads(line.split("faultmod: ", 1)[1]) for line in out.splitlines()
               if "faultmod: {" in line]
    if len(reports) != 1:
        raise RuntimeError(f"faultmod said nothing for {op}: {out}")
    if op == "pgtable_owner_priv":
        # The module chose the page: a page table, which kpageflags must
        # now show with PG_owner_priv_1.
        from .truth import kpageflags_runs
        pfn = reports[0]["pfn"]
        target.update(pfn=pfn, block=pfn // (runner.block_size // runner.page_size),
                      section=pfn // runner.section_pages)
        runs = kpageflags_runs(runner.g, pfn, 1)
        if not {"owner_private", "pgtable"} <= set(runs[0][2]):
            raise RuntimeError(f"kpageflags does not show a marked page table at {pfn}: {runs}")
    if op in ("set_flag", "clear_flag") and target.get("flag") == "owner_priv_1":
        # Confirm through the kernel's own decoder that the marker changed.
        from .truth import kpageflags_runs
        runs = kpageflags_runs(runner.g, target["pfn"], target.get("count", 1))
        want = op == "set_flag"
        if any(("owner_private" in names) != want for _, _, names in runs):
            raise RuntimeError(f"kpageflags does not show the {op} at {target['pfn']}: {runs}")
    if op == "memmap_type":
        # The module chose the frame from the page tables (see faultmod.c).
        pfn = reports[0]["pfn"]
        target.update(pfn=pfn, block=pfn // (runner.block_size // runner.page_size),
                      section=pfn // runner.section_pages,
                      described_pfn=reports[0]["described_pfn"])
    if op in ("page_type", "memmap_type"):
        # The patched kernels report their page types in kpageflags: the
        # 6.12-marking kernel PageVmemmap() (bit 43, PGTY 0xf8), the
        # 6.12-memmap kernel PageMemmap() (bit 44, PGTY 0xf9).  Confirm that
        # the type is now there, or gone, as asked.
        from .truth import kpageflags_runs
        runs = kpageflags_runs(runner.g, target["pfn"], target.get("count", 1))
        top = (target["value"] & 0xFFFFFFFF) >> 24
        for name, code in (("vmemmap", 0xF8), ("memmap", 0xF9)):
            if any((name in names) != (top == code) for _, _, names in runs):
                raise RuntimeError(f"kpageflags does not show page_type {target['value']:#x} "
                                   f"at {target['pfn']}: {runs}")
    # One expected violation, or a list when a fault breaks two invariants.
    expects = args.get("expect", [])
    expects = [expects] if isinstance(expects, dict) else expects
    resolved = []
    for e in expects:
        e = dict(e)
        for k, v in list(e.items()):
            if isinstance(v, str) and v.startswith("$"):
                e[k] = _ref(v, target)
        resolved.append(e)
    out = {"op": op, "target": target, "module": reports[0], "expects": resolved}
    if len(resolved) == 1:
        out["expect"] = resolved[0]
    return out
