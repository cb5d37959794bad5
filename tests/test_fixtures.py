"""Every committed fixture, read by drgn alone (none of drgn-vmemmap's code but
the .xz decompression): the parts of its manifest that do not depend on this
project must hold, so that a broken or mispaired fixture fails loudly here
and not as a puzzling checker failure.
"""

import drgn
import pytest
from drgn.helpers.linux.mm import decode_memory_block_state, for_each_memory_block

from drgn_vmemmap.target import decompressed

from conftest import FIXTURES, manifests, vmlinux_for

MANIFESTS = manifests()

#: sysfs's names for the block states (drivers/base/memory.c, state_show()).
SYSFS = {"MEM_ONLINE": "online", "MEM_OFFLINE": "offline", "MEM_GOING_OFFLINE": "going-offline"}


def plain_drgn(name):
    m = MANIFESTS[name]
    prog = drgn.Program()
    prog.set_core_dump(decompressed(str(FIXTURES / m["dump"]["file"])))
    prog.load_debug_info([decompressed(str(vmlinux_for(m)))])
    return prog


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_fixture_as_drgn_reads_it(name):
    m = MANIFESTS[name]
    prog = plain_drgn(name)
    release = prog["UTS_RELEASE"].string_().decode()
    assert release == m["kernel"]["release"] == m["truth"]["uname"]
    blocks = {}
    for mem in for_each_memory_block(prog):
        bid = mem.start_section_nr.value_() // prog["sections_per_block"].value_()
        blocks[bid] = SYSFS.get(decode_memory_block_state(mem), decode_memory_block_state(mem))
    sysfs = {b["id"]: b["state"] for b in m["truth"]["blocks"]}
    # A fault that shifted a block's start_section_nr by one hides it behind
    # its neighbour in this view: leave both out.
    hidden = {f["target"]["block"] + i for f in m.get("faults", [])
              if f["op"] == "block_start_section" for i in (0, 1)}
    assert {b: s for b, s in blocks.items() if b not in hidden} == \
        {b: s for b, s in sysfs.items() if b not in hidden}
    assert len(blocks) == len(sysfs) - (1 if hidden else 0)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_readme_names_the_point_release(name):
    """The README's kernel table says which point release each fixture was
    built from: its manifest's source package and version, and its release."""
    from conftest import REPO
    m = MANIFESTS[name]["kernel"]
    row = next((line for line in (REPO / "README.md").read_text().splitlines()
                if line.startswith(f"| `{m['key']}` |")), None)
    assert row, f"no row for kernel {m['key']} in README's fixture-kernel table"
    assert f"`{m['source']}" in row and f"| {m['release']} |" in row, row
    committed = (REPO / "vmcores/kernels" / m["key"] / "source-version").read_text().strip()
    assert committed == m["source"]


def test_vmcores_within_budget():
    """DESIGN.md's budget: vmcores/ <= 230 MB in all (x86_64, arm64 and
    ppc64le together), no file over 25 MB.  Counted over the files git
    tracks, as a clone gets them."""
    import subprocess

    from conftest import REPO
    try:
        proc = subprocess.run(["git", "ls-files", "-z", "vmcores"], cwd=REPO,
                              capture_output=True)
    except FileNotFoundError:  # no git on this machine
        proc = subprocess.CompletedProcess([], 1)
    if proc.returncode == 0:
        files = proc.stdout.decode().split("\0")
    else:  # not a git checkout: what is there, caches aside
        files = [str(p.relative_to(REPO)) for p in (REPO / "vmcores").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts]
    sizes = {f: (REPO / f).stat().st_size for f in files if f and (REPO / f).exists()}
    assert sum(sizes.values()) <= 230e6, f"{sum(sizes.values()) / 1e6:.1f} MB"
    big = {f: s for f, s in sizes.items() if s > 25e6}
    assert not big, big
