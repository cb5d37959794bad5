"""Live guests: a committed kernel booted under QEMU/TCG, checked over QMP.

Each kernel boots once (module-scoped fixture, about 10 s under TCG; 6.12
also with 5-level paging) and runs
a small scenario: three DIMMs hot-added over QMP, blocks onlined movable and
kernel through sysfs, one offlined again, one never onlined.  Then the
checker runs against the running guest, twice, each on a QMP socket of its
own (drgn hung on a socket another client had used and closed):

* ``drgn-vmemmap --qemu SOCKET -s vmlinux check --format json``;
* ``drgn --qemu SOCKET -s vmlinux -e ...`` running the ``%vmemmap`` command
  through ``drgn.commands.run_command`` (the non-interactive drgn CLI reads
  Python, not ``%`` commands, from stdin).

The output is compared with what the guest itself says, read through its
serial console just before and just after the run (both reads must agree):
block states and nodes from sysfs; the self-hosted ranges from the kernel's
rule (vmcores.fixture.expected_vmemmap_pages: N = 512 pages at the start of
every block of a hot-plugged DIMM; before 6.6 only for single-block DIMMs),
confirmed on every online block by a PG_owner_priv_1 run of N pages in
/proc/kpageflags.  Exit status 0 and no violation.

The helpers here are shared with test_churn.py and test_guest_drgn.py.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # vmcores is not installed, only drgn_vmemmap
    sys.path.insert(0, str(REPO))

from drgn_vmemmap.target import decompressed  # noqa: E402
from vmcores import truth  # noqa: E402
from vmcores.fixture import expected_vmemmap_pages  # noqa: E402
from vmcores.guest import MACHINES, Guest, build_initramfs  # noqa: E402
from vmcores.kernel import boot_image, spec  # noqa: E402
from vmcores.scenarios import CMDLINE  # noqa: E402

KERNELS = REPO / "vmcores" / "kernels"
PAGE_SIZE = 4096

#: Runs the %vmemmap command in a non-interactive drgn session; drgn exits
#: with the command's status (0, 1 or 2).
DRGN_CODE = ("import sys; from drgn.commands import run_command; "
             "sys.exit(run_command(prog, 'vmemmap check --format json'))")


# --- helpers (shared with the other live tests) --------------------------------


def kernel_or_skip(key: str) -> Tuple[Path, str]:
    """The committed boot image (bzImage, arm64's Image.gz) of kernel ``key``
    and its decompressed vmlinux."""
    d = KERNELS / key
    if not boot_image(d).exists() or not (d / "vmlinux.xz").exists():
        pytest.skip(f"kernel {key} not committed")
    qemu = MACHINES[spec(key).arch].qemu
    if shutil.which(qemu) is None:
        pytest.skip(f"{qemu} not installed")
    return boot_image(d), decompressed(str(d / "vmlinux.xz"))


def release(key: str) -> str:
    return (KERNELS / key / "release").read_text().strip()


def tool(name: str, module: str) -> List[str]:
    """The console script ``name`` of this interpreter's environment."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def boot(key: str, workdir: Path, initramfs: Optional[Path] = None, **kw: Any) -> Guest:
    bzimage, _ = kernel_or_skip(key)
    arch = spec(key).arch
    workdir.mkdir(parents=True, exist_ok=True)
    if initramfs is None:
        initramfs = build_initramfs(workdir / "initramfs.cpio.gz", arch=arch)
    if arch == "arm64":
        # One NUMA node: see vmcores/scenarios.py, _ARM64_BASIC.
        kw.setdefault("nodes", 1)
    return Guest(bzimage, initramfs, workdir, cmdline=CMDLINE, arch=arch, **kw)


def dimm_blocks(g: Guest, dimm: str, block_size: int) -> List[int]:
    info = g.dimms[dimm]
    first = info["addr"] // block_size
    return list(range(first, first + info["size"] // block_size))


def plug(g: Guest, dimm: str, size_mb: int, node: int, block_size: int) -> List[int]:
    """Hot-add a DIMM and wait until the guest has added all its blocks."""
    g.plug(dimm, size_mb, node)
    want = dimm_blocks(g, dimm, block_size)
    deadline = time.monotonic() + 60
    while not all(b in truth.memory_blocks(g) for b in want):
        if time.monotonic() > deadline:
            raise RuntimeError(f"guest did not add the blocks of {dimm}")
        time.sleep(0.2)
    return want


def set_state(g: Guest, block: int, state: str) -> None:
    g.sh(f"echo {state} > /sys/devices/system/memory/memory{block}/state")


def sysfs_blocks(g: Guest) -> Dict[int, Tuple[str, int]]:
    """``{block: (state, node)}`` as the guest's sysfs shows them."""
    return {bid: (b["state"], b["node"]) for bid, b in truth.memory_blocks(g).items()}


def expected_ranges(g: Guest, key: str, block_size: int,
                    blocks: Dict[int, Tuple[str, int]]) -> List[Tuple[int, int, int, str, int]]:
    """``(block, start_pfn, nr_pages, state, node)`` of every self-hosted range
    by the kernel's rule, each online one confirmed through /proc/kpageflags."""
    param = truth.memmap_on_memory_param(g)
    per_block = block_size // PAGE_SIZE
    out = []
    for d in g.memory_devices().values():
        n = expected_vmemmap_pages(key, param, d["size"], block_size)
        for bid in range(d["addr"] // block_size, (d["addr"] + d["size"]) // block_size):
            state, node = blocks[bid]
            start = bid * per_block
            if state == "online":
                runs = truth.kpageflags_runs(g, start, 2 * max(n, 1))
                seen = truth.vmemmap_run(runs, start)
                assert seen == n, (f"block {bid}: kpageflags shows a PG_owner_priv_1 run of "
                                   f"{seen} pages, the rule expects {n}")
            if n:
                out.append((bid, start, n, state, node))
    return sorted(out)


def run_json(argv: Sequence[str], timeout: float = 180) -> Tuple[int, Dict[str, Any], str]:
    """Run a checker; return (exit status, JSON document, stderr)."""
    t = time.monotonic()
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    print(f"{Path(argv[0]).name} ...: exit {proc.returncode} in {time.monotonic() - t:.1f} s")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"no JSON (exit {proc.returncode}): {proc.stdout[-1000:]!r} "
                    f"stderr: {proc.stderr[-2000:]}")
    return proc.returncode, doc, proc.stderr


def cli_argv(socket: Path, vmlinux: str) -> List[str]:
    return tool("drgn-vmemmap", "drgn_vmemmap.cli") + [
        "--qemu", str(socket), "-s", vmlinux, "check", "--format", "json", "--no-progress"]


def drgn_argv(socket: Path, vmlinux: str) -> List[str]:
    return tool("drgn", "drgn") + ["--qemu", str(socket), "-s", vmlinux, "-q", "-e", DRGN_CODE]


def found_ranges(doc: Dict[str, Any]) -> List[Tuple[int, int, int, str, int]]:
    return sorted((r["block"], r["start_pfn"], r["nr_pages"], r["state"], r["node"])
                  for r in doc["ranges"])


def found_blocks(doc: Dict[str, Any]) -> Dict[int, Tuple[str, int]]:
    return {b["block"]: (b["state"], b["node"]) for b in doc["blocks"]}


# --- the scenario ---------------------------------------------------------------


class Live:
    def __init__(self, key: str, g: Guest, vmlinux: str, block_size: int):
        self.key, self.g, self.vmlinux, self.block_size = key, g, vmlinux, block_size

    def check_against_guest(self, argv: Sequence[str]) -> Dict[str, Any]:
        before = sysfs_blocks(self.g)
        status, doc, stderr = run_json(argv)
        after = sysfs_blocks(self.g)
        assert before == after, "the guest's blocks changed during the run"
        assert status == 0, (status, doc["violations"], stderr[-2000:])
        assert doc["violations"] == []
        assert doc["target"] == {"kind": "qmp", "release": release(self.key),
                                 "arch": DRGN_ARCH[spec(self.key).arch]}
        assert found_blocks(doc) == before
        assert found_ranges(doc) == expected_ranges(self.g, self.key, self.block_size, before)
        assert doc["stats"]["pages_scanned"] > 0
        return doc


#: (kernel, QEMU -cpu): "max" has LA57, so the kernel (X86_5LEVEL=y) runs
#: with 5-level page tables; the default CPU model gives 4 levels.  The
#: arm64 kernel boots on virt with UEFI and ACPI (about 15 s under TCG).
LIVE = [("6.1", None), ("6.12", None), ("7.2", None), ("6.12", "max"), ("6.12-arm64", None)]
#: What the report's target says of each fixture architecture (drgn's name).
DRGN_ARCH = {"x86_64": "x86_64", "arm64": "aarch64", "ppc64le": "ppc64"}


@pytest.fixture(scope="module", params=LIVE,
                ids=[k + ("-5level" if cpu else "") for k, cpu in LIVE])
def live(request, tmp_path_factory):
    key, cpu = request.param
    _, vmlinux = kernel_or_skip(key)
    t0 = time.monotonic()
    with boot(key, tmp_path_factory.mktemp(f"live-{key}"), extra_qmp=2, cpu=cpu) as g:
        if cpu:
            assert " la57" in g.sh("grep -m1 ^flags /proc/cpuinfo")
        bs = truth.block_size(g)
        far = 1 if spec(key).arch == "x86_64" else 0  # arm64: one node
        dimm0 = plug(g, "dimm0", 256, far, bs)
        dimm1 = plug(g, "dimm1", 128, 0, bs)
        plug(g, "dimm2", 128, far, bs)  # never onlined
        for b in dimm0:
            set_state(g, b, "online_movable")
        set_state(g, dimm1[0], "online_kernel")
        set_state(g, dimm0[1], "offline")
        print(f"{key}: booted and set up in {time.monotonic() - t0:.1f} s")
        yield Live(key, g, vmlinux, bs)


@pytest.mark.live
def test_cli_check_over_qmp(live):
    doc = live.check_against_guest(cli_argv(live.g.tool_qmp_path, live.vmlinux))
    states = {r["state"] for r in doc["ranges"]}
    # The scenario leaves self-hosted ranges both online and offline.
    assert states == {"online", "offline"}
    assert doc["stats"]["live_retries"] == 0


@pytest.mark.live
def test_drgn_vmemmap_command_over_qmp(live):
    live.check_against_guest(drgn_argv(live.g.extra_qmp_paths[0], live.vmlinux))


@pytest.mark.live
def test_live_model_over_qmp(live):
    """``watch``'s model (drgn_vmemmap/refresh.py) on every live kernel and
    page-table format here (6.1's nr_vmemmap_pages, 5-level paging, arm64):
    a look at an idle guest finds nothing; onlining a block (the guest's
    sysfs says it did) is seen as a uevent and a memory-map change, with the
    block's new state in the model; and the refreshed model equals one built
    from scratch after each."""
    from drgn_vmemmap.refresh import LiveModel
    from drgn_vmemmap.target import open_target

    prog = open_target(qemu=str(live.g.extra_qmp_paths[1]), symbols=[live.vmlinux])
    model = LiveModel(prog)
    assert not model.refresh() and model.verify() == []
    walks = model.backing_walks
    offline = next(b for b, (st, _) in sysfs_blocks(live.g).items() if st == "offline"
                   and model.mm.blocks[b].vmemmap_pages)
    set_state(live.g, offline, "online_movable")
    try:
        assert sysfs_blocks(live.g)[offline][0] == "online"
        changes = model.refresh()
        assert changes.epoch and changes.memory_map, changes
        assert model.mm.blocks[offline].state == "MEM_ONLINE"
        assert model.verify() == []
    finally:
        set_state(live.g, offline, "offline")
    changes = model.refresh()
    assert changes.epoch and model.mm.blocks[offline].state == "MEM_OFFLINE"
    assert model.verify() == [] and not model.refresh()
    # The walk was redone only for the memory-map changes (two at most).
    assert model.backing_walks - walks <= 2
