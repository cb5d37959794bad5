"""Ground truth read from inside the guest (sysfs, /proc/kpageflags) and from QEMU.

Nothing here uses drgn or drgn_vmemmap: the manifest must be an independent
oracle for the tool under test.
"""

from typing import Any, Dict, List, Tuple

from .guest import Guest

# include/uapi/linux/kernel-page-flags.h
KPF = {
    "slab": 7, "buddy": 10, "compound_head": 15, "compound_tail": 16, "huge": 17,
    "nopage": 20, "offline": 23, "pgtable": 26, "reserved": 32, "owner_private": 37,
    # Not upstream: the 6.12-marking patch reports PageVmemmap() here (a
    # kernel-hacking bit no kernel up to 7.2 uses, so never set elsewhere).
    "vmemmap": 43,
    # Not upstream either: the 6.12-memmap patch reports PageMemmap() (every
    # page that holds struct pages) here.
    "memmap": 44,
}
KPF_BY_BIT = {v: k for k, v in KPF.items()}

# Run-length encodes the chosen kpageflags bits of COUNT pfns from START.
# od prints each u64 as 16 zero-padded hex digits; bit b is in digit
# 16 - b/4 (1-based, from the left).  uniq -c first folds runs of equal
# words into "N word" lines (awk under TCG takes ~0.5 ms a line: 4.5 minutes
# for the 524288 pfns of a 2 GiB block unfolded); n counts the pfns before
# the line.
_AWK = r"""BEGIN{for(i=0;i<16;i++)V[substr("0123456789abcdef",i+1,1)]=i;nb=split(BITS,B,",");P[0]=1;P[1]=2;P[2]=4;P[3]=8}
{k="";for(j=1;j<=nb;j++){b=B[j];v=V[substr($2,16-int(b/4),1)];if(int(v/P[b%4])%2)k=k b ","}
 if(n==0||k!=p){if(n>0)print s,n-s0,p;s=START+n;s0=n;p=k};n+=$1}
END{if(n>0)print s,n-s0,p}"""


def kpageflags_runs(guest: Guest, start_pfn: int, count: int) -> List[List[Any]]:
    """``[[pfn, npages, [flag names]], ...]`` for pfns [start, start+count)."""
    bits = ",".join(str(b) for b in sorted(KPF.values()))
    awk = _AWK.replace("\n", " ")
    out = guest.sh(
        f"dd if=/proc/kpageflags bs=8 skip={start_pfn} count={count} 2>/dev/null"
        f" | od -A n -t x8 -v -w8 | uniq -c | awk -v START={start_pfn} -v BITS={bits} '{awk}'")
    runs = []
    for line in out.split("\n"):
        parts = line.split()
        if len(parts) < 2:
            continue
        names = [KPF_BY_BIT[int(b)] for b in (parts[2].split(",") if len(parts) > 2 else []) if b]
        runs.append([int(parts[0]), int(parts[1]), sorted(names)])
    if sum(r[1] for r in runs) != count:
        raise RuntimeError(f"kpageflags: read {sum(r[1] for r in runs)} of {count} pfns at {start_pfn}")
    return runs


def memory_blocks(guest: Guest) -> Dict[int, Dict[str, Any]]:
    """Every memory block as sysfs shows it."""
    script = ("cd /sys/devices/system/memory; for d in memory[0-9]*; do "
              "n=$(ls -d $d/node[0-9]* 2>/dev/null | head -1); "
              "echo ${d#memory} $(cat $d/state) $(cat $d/phys_index) ${n##*/node} "
              "$(cat $d/valid_zones 2>/dev/null | tr ' ' ,); done")
    blocks = {}
    for line in guest.sh(script).splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        bid = int(parts[0])
        blocks[bid] = {"id": bid, "state": parts[1], "phys_index": int(parts[2], 16),
                       "node": int(parts[3]),
                       "valid_zones": parts[4].split(",") if len(parts) > 4 else []}
    return blocks


def block_size(guest: Guest) -> int:
    return int(guest.sh("cat /sys/devices/system/memory/block_size_bytes").strip(), 16)


def memmap_on_memory_param(guest: Guest) -> str:
    return guest.sh("cat /sys/module/memory_hotplug/parameters/memmap_on_memory "
                    "2>/dev/null || echo absent").strip()


def vmemmap_run(runs: List[List[Any]], start_pfn: int,
                flags: Tuple[str, ...] = ("owner_private",)) -> int:
    """Length of the run that starts exactly at ``start_pfn`` and has every
    one of ``flags`` (by default PG_owner_priv_1 alone)."""
    for pfn, n, names in runs:
        if pfn == start_pfn:
            return n if all(f in names for f in flags) else 0
    return 0


def hugepage_heads(runs: List[List[Any]]) -> List[int]:
    out = []
    for pfn, n, names in runs:
        if "huge" in names and "compound_head" in names:
            out.extend(range(pfn, pfn + n))
    return out


def force_padding(guest: Guest) -> int:
    """Pages ``memmap_on_memory=force`` reserves in each block beyond its
    memmap, as the kernel logs them at boot (6.6+, mm/memory_hotplug.c:
    "Memory hotplug will waste N pages in each memory block"); 0 if the
    kernel said nothing."""
    import re

    out = guest.sh("dmesg | grep 'Memory hotplug will waste' || true")
    m = re.search(r"will waste (\d+) pages", out)
    return int(m.group(1)) if m else 0


def dax_devices(guest: Guest) -> Dict[str, Dict[str, Any]]:
    """Every device-dax instance as sysfs shows it (drivers/dax/bus.c):
    its range, node, ``memmap_on_memory`` attribute (6.8+) and driver
    (``kmem`` when its memory is System RAM)."""
    script = ("cd /sys/bus/dax/devices 2>/dev/null || exit 0; for d in dax*; do "
              "[ -e $d/resource ] || continue; drv=$(readlink $d/driver); "
              "echo $d $(cat $d/resource) $(cat $d/size) $(cat $d/target_node) "
              "$(cat $d/memmap_on_memory 2>/dev/null || echo -) ${drv##*/}; done")
    out = {}
    for line in guest.sh(script).splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        out[parts[0]] = {"id": parts[0], "type": "dax", "addr": int(parts[1], 16),
                         "size": int(parts[2]), "node": int(parts[3]),
                         "memmap_on_memory": parts[4] == "1",
                         "driver": parts[5] if len(parts) > 5 else None}
    return out
