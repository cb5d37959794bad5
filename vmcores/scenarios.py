"""Scenarios: what happens in the guest before it is dumped.

A scenario is data: a list of steps, each a tuple whose first item names the
action.  ``fixture.py`` runs them.

    ("hugepages", node, count)      set node's 2 MiB HugeTLB pool (HVO applies)
    ("plug", dimm, size_mb, node)   hot-add a pc-dimm over QMP
    ("online", dimm, blocks, how)   blocks: "all" or indexes in the DIMM;
                                    how: online_movable | online_kernel | online
    ("offline", dimm, blocks)
    ("unplug", dimm)                offline its blocks, device_del, wait for eject
    ("fault", op, {args})           faultmod.ko injects a corruption (see faultmod/)
"""

from typing import Any, Dict, List, NamedTuple, Tuple


class Scenario(NamedTuple):
    kernel: str
    steps: List[Tuple[Any, ...]]
    doc: str
    filters: Tuple[int, ...] = (31, 17, 1)


# The guest boots with 1 GiB over two NUMA nodes and these parameters.
CMDLINE = ("memory_hotplug.memmap_on_memory=1 hugetlb_free_vmemmap=on "
           "memhp_default_state=offline")

_BASIC = [
    # Hugepages first, so that they come from boot memory and get HVO'd.
    ("hugepages", 0, 8),
    ("hugepages", 1, 8),
    ("plug", "dimm0", 256, 1),
    ("plug", "dimm1", 128, 0),
    ("plug", "dimm2", 256, 1),
    ("online", "dimm0", "all", "online_movable"),
    ("online", "dimm1", "all", "online_kernel"),
    ("online", "dimm2", [0], "online_movable"),
    # More hugepages on node 1 now land in dimm0/dimm2 (movable); HVO must
    # refuse those whose struct pages are self-hosted.
    ("hugepages", 1, 24),
    ("offline", "dimm0", [1]),
]

SCENARIOS: Dict[str, Scenario] = {}


def _add(name: str, scenario: Scenario) -> None:
    SCENARIOS[f"{scenario.kernel}-{name}"] = scenario


for _k in ("6.1", "6.12", "7.2"):
    _add("hotplug-basic", Scenario(_k, list(_BASIC), (
        "Three DIMMs (256 MiB node 1, 128 MiB node 0, 256 MiB node 1) onlined "
        "movable/kernel, one block offlined again, one never onlined; HugeTLB "
        "pages in boot memory (HVO'd) and in hot-plugged blocks.  On 6.1 only "
        "the 128 MiB DIMM is self-hosted: memmap_on_memory needs a range of "
        "exactly one block before 6.6.")))


def lookup(kernel: str, name: str) -> Tuple[str, Scenario]:
    full = f"{kernel}-{name}"
    if full not in SCENARIOS:
        raise KeyError(f"no scenario {name!r} for kernel {kernel!r}; have: "
                       + ", ".join(sorted(SCENARIOS)))
    return full, SCENARIOS[full]
