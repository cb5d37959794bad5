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
    ("virtio_mem", dev, size_mb)    resize a virtio-mem device (Scenario.guest's
                                    virtio_mem) over QMP, wait for its blocks
    ("dax_kmem", dev, 0|1)          give a dax device to kmem with that
                                    memmap_on_memory attribute
    ("sysctl", name, value)         write /proc/sys/NAME (dots for slashes)
    ("block_size", bytes)           stop unless the guest's memory blocks are that big
"""

import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple


class UnknownScenario(LookupError):
    """No such scenario for that kernel; ``str()`` is the one-line message."""


class Scenario(NamedTuple):
    kernel: str
    steps: List[Tuple[Any, ...]]
    doc: str
    filters: Tuple[int, ...] = (31, 17, 1)
    #: Boot memory of the guest, split over its two NUMA nodes.
    mem_mb: int = 1024
    #: Appended to CMDLINE.
    cmdline: str = ""
    #: Keep the filtered dump's pages uncompressed and xz the file (the
    #: tool reads .vmcore.xz): about half of zlib's size, for the budget.
    xz: bool = False
    #: Dump through the kernel's own kdump path instead of QEMU
    #: (vmcores/kdump.py): ``{"level": makedumpfile -d, "capture_cmdline":
    #: appended to Debian's, "fill_mb": memory the capture userspace takes,
    #: "crashkernel": the reservation}``.
    kdump: Optional[Dict[str, Any]] = None
    #: More ``Guest()`` keyword arguments (vmcores/guest.py), e.g.
    #: ``{"maxmem_gb": 80, "machine_opts": ",max-ram-below-4g=1G"}``.
    guest: Optional[Dict[str, Any]] = None
    #: Leave the guest RAM outside the guest's "System RAM" resources (an
    #: E820 reserved hole) out of QEMU's dump, as /proc/vmcore would
    #: (vmcores/ramonly.py).
    system_ram_only: bool = False


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
        "exactly one block before 6.6."), xz=True))


def _expect(rule: str, start: str, end: str, block: str = "$block",
            section: str = "$section", severity: str = "error") -> Dict[str, Any]:
    return {"rule": rule, "severity": severity, "pfn_start": start, "pfn_end": end,
            "block": block, "section": section}


# Each fault names the violation the checker must report for it, no more.
# Targets are symbolic (DIMM, block index, offset); faults.resolve() turns
# them into numbers recorded in the manifest.
_FAULTS_NEW = [  # 6.6+ (altmap accounting, PG_reserved clear since 6.11)
    ("fault", "clear_flag", {"dimm": "dimm0", "block": 0, "offset": 100, "count": 4,
                             "flag": "owner_priv_1",
                             "expect": _expect("vmemmap-unmarked", "$pfn", "$pfn+4")}),
    ("fault", "set_flag", {"dimm": "dimm0", "block": 0, "offset": 20000, "count": 2,
                           "flag": "owner_priv_1",
                           "expect": _expect("marker-stray", "$pfn", "$pfn+2")}),
    ("fault", "set_flag", {"dimm": "dimm0", "block": 0, "offset": 300, "count": 1,
                           "flag": "reserved",
                           "expect": _expect("vmemmap-page-state", "$pfn", "$pfn+1")}),
    ("fault", "page_ref", {"dimm": "dimm2", "block": 0, "offset": 10, "count": 1, "value": 1,
                           "expect": _expect("vmemmap-page-state", "$pfn", "$pfn+1")}),
    ("fault", "block_vmemmap", {"dimm": "dimm2", "block": 0, "value": 500,
                                "expect": _expect("altmap-mismatch", "$pfn", "$pfn+512")}),
    ("fault", "section_clear", {"dimm": "dimm1", "block": 0, "mask": 4,
                                "expect": _expect("section-state", "$pfn", "$pfn+32768")}),
    ("fault", "hpg_optimized", {"dimm": "dimm0", "block": 0, "hugepage": 0,
                                "expect": _expect("hvo-self-hosted", "$pfn", "$pfn+512")}),
    ("fault", "block_new_altmap", {"block_id": 3, "value": 512,
                                   "expect": _expect("early-self-hosted", "$pfn", "$pfn+512")}),
]

_FAULTS_OLD = [  # 5.13-6.5: nr_vmemmap_pages, PG_reserved set on vmemmap pages
    ("fault", "clear_flag", {"dimm": "dimm1", "block": 0, "offset": 0, "count": 8,
                             "flag": "owner_priv_1",
                             "expect": _expect("vmemmap-unmarked", "$pfn", "$pfn+8")}),
    ("fault", "clear_flag", {"dimm": "dimm1", "block": 0, "offset": 511, "count": 1,
                             "flag": "reserved",
                             "expect": _expect("vmemmap-page-state", "$pfn", "$pfn+1")}),
    ("fault", "set_flag", {"dimm": "dimm1", "block": 0, "offset": 9000, "count": 3,
                           "flag": "owner_priv_1",
                           "expect": _expect("marker-stray", "$pfn", "$pfn+3")}),
    ("fault", "block_vmemmap", {"dimm": "dimm1", "block": 0, "value": 256,
                                "expect": _expect("altmap-mismatch", "$pfn", "$pfn+512")}),
    ("fault", "block_vmemmap", {"block_id": 2, "value": 512,
                                "expect": _expect("early-self-hosted", "$pfn", "$pfn+512")}),
    ("fault", "section_clear", {"dimm": "dimm0", "block": 0, "mask": 4,
                                "expect": _expect("section-state", "$pfn", "$pfn+32768")}),
]

# Faults in the page tables and the block records themselves, on offline
# blocks (whose struct pages nothing touches before the dump).
_FAULTS_PAGETABLES = [
    ("fault", "pmd_clear", {"dimm": "dimm0", "block": 1,
                            "expect": _expect("vmemmap-unbacked", "$pfn", "$pfn+32768")}),
    ("fault", "pmd_remap", {"dimm": "dimm2", "block": 1, "target_dimm": "dimm2",
                            "target_block": 0,
                            "expect": [_expect("cross-hosted", "$pfn", "$pfn+32768"),
                                       _expect("altmap-mismatch", "$pfn", "$pfn+512")]}),
    ("fault", "block_start_section", {"dimm": "dimm1", "block": 0, "value": "$section+1",
                                      "expect": _expect("block-geometry", "$pfn",
                                                        "$pfn+32768")}),
    # Never-onlined block 37 (dimm3) gets its memmap from ordinary frames of
    # online ZONE_MOVABLE block 32, past that block's own vmemmap: memmap the
    # kernel would never allocate there (GFP_KERNEL), unmovable, keeping 32
    # from going offline (cross-hosted's warning; ordinary frames of a
    # kernel-zone block would be a note: 6.12-mom-off), and 37's altmap
    # records frames its page tables no longer use.
    ("fault", "pmd_remap", {"dimm": "dimm3", "block": 0, "target_dimm": "dimm0",
                            "target_block": 0, "target_offset": 512,
                            "expect": [_expect("cross-hosted", "$pfn", "$pfn+32768",
                                               severity="warning"),
                                       _expect("altmap-mismatch", "$pfn", "$pfn+512")]}),
    # PG_owner_priv_1 on a user page table (pid 1's stack): Xen PV's
    # PG_pinned looks like that, so marker-stray warns instead of failing.
    ("fault", "pgtable_owner_priv", {"expect": _expect("marker-stray", "$pfn", "$pfn+1",
                                                       severity="warning")}),
    # HVO done for real on a folio of online self-hosted block 32: its
    # vmemmap leaf split into PTEs, pages 1-7 of the folio's vmemmap mapped
    # onto page 0 (the 7 frames orphaned), HPG_vmemmap_optimized set.
    ("fault", "hvo_remap", {"dimm": "dimm0", "block": 0, "hugepage": 0,
                            "expect": [_expect("hvo-self-hosted", "$pfn", "$pfn+512"),
                                       _expect("altmap-mismatch", "$block_pfn",
                                               "$block_pfn+512")]}),
]
# hotplug-basic's steps, with block 33 offlined before the node-1 HugeTLB
# pool grows: in this 512 MiB guest the pool can land in block 33, and
# offlining then waits forever for room to migrate the folios (seen once).
_PAGETABLES_STEPS = [s for s in _BASIC if s != ("offline", "dimm0", [1])]
_PAGETABLES_STEPS.insert(_PAGETABLES_STEPS.index(("hugepages", 1, 24)), ("offline", "dimm0", [1]))
# A fourth DIMM, never onlined, for the cross-hosted warning.
_PAGETABLES_STEPS.insert(_PAGETABLES_STEPS.index(("plug", "dimm2", 256, 1)) + 1,
                         ("plug", "dimm3", 128, 0))
_add("pagetables", Scenario("6.12", _PAGETABLES_STEPS + _FAULTS_PAGETABLES, (
    "hotplug-basic, then faultmod.ko unmaps the vmemmap PMD of offline block 33, "
    "points offline block 36's at block 35's self-hosted frames, shifts block 34's "
    "start_section_nr, points never-onlined block 37's at ordinary frames of movable "
    "block 32, "
    "sets PG_owner_priv_1 on a user page table (Xen's PG_pinned alias), and remaps the "
    "vmemmap of a HugeTLB folio in online block 32 as HVO would (PMD split, 7 pages "
    "onto the first, HPG_vmemmap_optimized).  makedumpfile cannot filter a dump with "
    "unmapped vmemmap, so "
    "this guest boots with 512 MiB and init_on_free=1 (free pages are zero, and -d 1 "
    "drops zero pages) to keep its dump small."),
    filters=(31, 17, 1), mem_mb=512, cmdline="init_on_free=1"))

for _k in ("6.12", "7.2"):
    _add("faults", Scenario(_k, list(_BASIC) + _FAULTS_NEW, (
        "hotplug-basic, then faultmod.ko corrupts one thing per rule: a cleared and a "
        "stray PG_vmemmap_self_hosted, PG_reserved and an extra reference on vmemmap "
        "pages, a wrong altmap->alloc, a section's SECTION_IS_ONLINE, "
        "HPG_vmemmap_optimized on a self-hosted folio, an altmap on a boot block."),
        # 6.12-faults.vmcore stays zlib: README's first command opens it.
        xz=_k != "6.12"))
_add("faults", Scenario("6.1", list(_BASIC) + _FAULTS_OLD, (
    "hotplug-basic, then faultmod.ko corrupts: PG_vmemmap_self_hosted and PG_reserved "
    "on the self-hosted 128 MiB DIMM, a stray marker, nr_vmemmap_pages of a "
    "hot-plugged and of a boot block, SECTION_IS_ONLINE of an online section."), xz=True))


# The 6.12-marking kernel carries patches/6.12-vmemmap-marking.patch: the
# self-hosted markers proposed but never merged (SECTION_CANNOT_OPTIMIZE_VMEMMAP
# and SECTION_USE_VMEMMAP on every section added with an altmap; PGTY_vmemmap
# plus PG_reserved on the vmemmap pages of online blocks, reported by
# kpageflags as bit 43), on top of upstream's PG_vmemmap_self_hosted.
# Its section flags reach bit 5 (SECTION_MAP_LAST_BIT 6), which Debian 12's
# makedumpfile 1.7.2 hard-codes as the first map bit: the factory filters a
# scrubbed copy and restores the words (mdfix.py).
_MARKING_DOC = ("6.12 patched with the never-merged marking schemes: "
                "SECTION_CANNOT_OPTIMIZE_VMEMMAP and SECTION_USE_VMEMMAP on every "
                "section added with an altmap, PGTY_vmemmap + PG_reserved on vmemmap pages. ")
_add("hotplug-basic", Scenario("6.12-marking", list(_BASIC), _MARKING_DOC + (
    "Same steps as 6.12-hotplug-basic; kpageflags confirms PGTY_vmemmap and PG_reserved "
    "on the N = 512 vmemmap pages of every online hot-plugged block."), xz=True))

_FAULTS_MARKING = [
    # A self-hosted section that lost SECTION_CANNOT_OPTIMIZE_VMEMMAP.
    ("fault", "section_clear", {"dimm": "dimm0", "block": 0,
                                "sflag": "cannot_optimize_vmemmap",
                                "expect": _expect("section-marker", "$pfn", "$pfn+32768")}),
    # SECTION_USE_VMEMMAP on a boot section, whose memmap came from memblock.
    ("fault", "section_set", {"block_id": 5, "sflag": "use_vmemmap",
                              "expect": _expect("section-marker", "$pfn", "$pfn+32768")}),
    # Vmemmap pages whose PGTY_vmemmap was cleared ("no type").
    ("fault", "page_type", {"dimm": "dimm1", "block": 0, "offset": 200, "count": 3,
                            "value": 0xFFFFFFFF,
                            "expect": _expect("vmemmap-unmarked", "$pfn", "$pfn+3")}),
    # PGTY_vmemmap on ordinary pages of the same block.
    ("fault", "page_type", {"dimm": "dimm1", "block": 0, "offset": 9000, "count": 2,
                            "value": 0xF8000000,
                            "expect": _expect("marker-stray", "$pfn", "$pfn+2")}),
    # The 2019 scheme sets PG_reserved with the type: a vmemmap page without it.
    ("fault", "clear_flag", {"dimm": "dimm2", "block": 0, "offset": 50, "count": 2,
                             "flag": "reserved",
                             "expect": _expect("vmemmap-page-state", "$pfn", "$pfn+2")}),
]
_add("faults", Scenario("6.12-marking", list(_BASIC) + _FAULTS_MARKING, _MARKING_DOC + (
    "hotplug-basic, then faultmod.ko breaks the new markers: SECTION_CANNOT_OPTIMIZE_VMEMMAP "
    "cleared on a self-hosted section, SECTION_USE_VMEMMAP set on a boot section, "
    "PGTY_vmemmap cleared on three vmemmap pages and set on two ordinary pages, "
    "PG_reserved cleared on two vmemmap pages."), xz=True))


# Hot-remove: the middle of three DIMMs is offlined and ejected
# (device_del; the guest's ACPI handler offlines and removes its blocks, and
# QEMU releases the DIMM), leaving a hole between self-hosted blocks.  Its
# sections, memmap and vmemmap mapping must be gone, not reported.
_add("remove", Scenario("6.12", [
    ("hugepages", 0, 8),
    ("plug", "dimm0", 256, 1),
    ("plug", "dimm1", 256, 0),
    ("plug", "dimm2", 128, 1),
    ("online", "dimm0", "all", "online_movable"),
    ("online", "dimm1", "all", "online_movable"),
    ("online", "dimm2", "all", "online_kernel"),
    ("offline", "dimm0", [1]),
    # Node 1's pool grows into its hot-plugged blocks (HVO must refuse the
    # self-hosted ones), after block 33 went offline (see _PAGETABLES_STEPS).
    ("hugepages", 1, 16),
    # dimm1 is movable, so that offlining can migrate everything away (a
    # block onlined to ZONE_NORMAL holds unmovable kernel pages: EBUSY).
    ("unplug", "dimm1"),
], ("Three DIMMs (256 MiB node 1, 256 MiB node 0, 128 MiB node 1) onlined, one block "
    "offlined, HugeTLB pools in boot and hot-plugged memory, then the middle DIMM "
    "(onlined movable) offlined and removed with "
    "device_del: its blocks, sections and vmemmap are gone, a hole between the others.  "
    "512 MiB guest; pages stored plain and the file xz'd."), mem_mb=512, xz=True))

# The 6.12-force kernel has neither HugeTLB nor THP, so pageblock_order is
# MAX_PAGE_ORDER (10): a 128 MiB block's 512-page memmap is half a pageblock,
# memmap_on_memory=1 refuses every block and =force reserves 1024 pages per
# block (altmap free 1024, alloc 512).  The kernel marks all 1024 with
# PG_vmemmap_self_hosted.  A clean fixture, and one with faults on the
# padding and its accounting.
# hotplug-basic's steps without the HugeTLB pools (no HugeTLB in the kernel).
_FORCE_BASIC = [s for s in _BASIC if s[0] != "hugepages"]
_FORCE_FAULTS = [
    # The padding lost its marker: the kernel would hand those pages to
    # nothing, yet it relies on the marker when offlining.
    ("fault", "clear_flag", {"dimm": "dimm0", "block": 0, "offset": 700, "count": 5,
                             "flag": "owner_priv_1",
                             "expect": _expect("vmemmap-unmarked", "$pfn", "$pfn+5")}),
    # The first pages past the padding: ordinary memory, marker stray.
    ("fault", "set_flag", {"dimm": "dimm0", "block": 0, "offset": 1024, "count": 2,
                           "flag": "owner_priv_1",
                           "expect": _expect("marker-stray", "$pfn", "$pfn+2")}),
    # A padding page with an extra reference.
    ("fault", "page_ref", {"dimm": "dimm2", "block": 0, "offset": 900, "count": 1,
                           "value": 1,
                           "expect": _expect("vmemmap-page-state", "$pfn", "$pfn+1")}),
    # altmap->free without the padding (what memmap_on_memory=1 would record).
    ("fault", "block_altmap_free", {"dimm": "dimm1", "block": 0, "value": 512,
                                    "expect": _expect("altmap-mismatch", "$pfn",
                                                      "$pfn+1024")}),
]
_FORCE_DOC = ("6.12 without HugeTLB/THP (pageblock order 10) booted with "
              "memory_hotplug.memmap_on_memory=force: each hot-plugged block reserves 1024 "
              "pages for its 512-page memmap, all marked.  Three DIMMs as in hotplug-basic "
              "(no HugeTLB pools)")
_add("hotplug-basic", Scenario("6.12-force", list(_FORCE_BASIC), _FORCE_DOC + ".",
                               mem_mb=512, cmdline="memory_hotplug.memmap_on_memory=force",
                               xz=True))
_add("faults", Scenario("6.12-force", _FORCE_BASIC + _FORCE_FAULTS, _FORCE_DOC + (
    "; then faultmod.ko clears the marker on five padding pages, sets it on the two "
    "pages after the padding, adds a reference to a padding page and sets one block's "
    "altmap->free to 512."), mem_mb=512, cmdline="memory_hotplug.memmap_on_memory=force",
    xz=True))


# memmap_on_memory off (the distribution default) with HVO: every memmap of
# hot-added memory and every HVO replacement page comes from the page
# allocator.  The boot memory (1 GiB, below 4 GiB) is all DMA32, so the first
# DIMM onlined as kernel memory is node 1's only Normal zone, and GFP_KERNEL
# allocations on node 1 land there: the memmap of the DIMMs added after it
# (vmemmap_populate -> vmemmap_alloc_block) and the vmemmap pages HVO puts in
# place of a folio's (vmemmap_remap_free -> alloc_pages_node), for folios in
# the movable DIMM and in that Normal DIMM itself.  Nothing here is
# self-hosted; a checker that takes "backed by frames of the block" for
# self-hosting invents ranges in the Normal DIMM (issue 9's false positives).
_MOM_OFF = [
    ("plug", "dimm0", 256, 1),
    ("online", "dimm0", "all", "online_kernel"),
    ("plug", "dimm1", 128, 1),
    ("online", "dimm1", "all", "online_movable"),
    ("plug", "dimm2", 128, 0),
    ("hugepages", 0, 8),
    # Movable dimm1 first (GFP_HIGHUSER_MOVABLE), then Normal dimm0.
    ("hugepages", 1, 120),
]
for _k in ("6.12", "7.2"):
    _add("mom-off", Scenario(_k, list(_MOM_OFF), (
        "memory_hotplug.memmap_on_memory=0 with HVO: a 256 MiB DIMM onlined as kernel "
        "memory (node 1's only Normal zone), a 128 MiB DIMM onlined movable whose memmap "
        "the kernel allocates in the first, a 128 MiB DIMM never onlined (node 0), and "
        "HugeTLB pools that fill the movable DIMM and spill into the Normal one; HVO's "
        "replacement vmemmap pages come from the Normal DIMM.  Nothing is self-hosted."),
        cmdline="memory_hotplug.memmap_on_memory=0", xz=True))


# The kernel's own crash-dump path (vmcores/kdump.py): hotplug-basic's DIMMs
# and pools, then kexec -p, a panic, and makedumpfile -F -c -d 31 in the
# capture kernel, as Debian's kdump-tools runs it.
#  - kdump: the capture kernel boots with acpi_no_memhotplug (what RHEL's
#    kdump appends): it never sees the DIMMs; the dump is whole, with the
#    holes -d 31 makes.
#  - kdump-damaged: Debian's capture command line alone, plus
#    memhp_default_state=online (what Debian's MHP_DEFAULT_ONLINE_TYPE_ONLINE_AUTO
#    build default does): the capture kernel finds the DIMMs in ACPI, onlines
#    them and uses them (256 MiB of tmpfs, standing in for a distribution's
#    capture userspace) before makedumpfile reads /proc/vmcore: the crashed
#    kernel's memmap there is overwritten.
for _k in ("6.1", "6.12"):
    _add("kdump", Scenario(_k, list(_BASIC), (
        "hotplug-basic, then the kernel's own kdump path: kexec -p, a panic, and "
        "makedumpfile -F -c -d 31 on /proc/vmcore in a capture kernel booted with "
        "Debian's kdump command line plus acpi_no_memhotplug."),
        kdump={"level": 31, "capture_cmdline": "acpi_no_memhotplug", "fill_mb": 0,
               "crashkernel": "192M"}))
# 7.2 at -d 1 (zero pages only): Debian 12's makedumpfile 1.7.2 predates
# 7.2's page-type encoding, so at -d 31 it may take slab pages for user
# pages (DESIGN.md); -d 1 trusts no page flag.  init_on_free=1 keeps freed
# memory zero, so the dump stays small.
_add("kdump", Scenario("7.2", list(_BASIC), (
    "hotplug-basic, then the kernel's own kdump path with makedumpfile -F -c -d 1 "
    "(zero pages only) in a capture kernel booted with Debian's kdump command line "
    "plus acpi_no_memhotplug; init_on_free=1 keeps freed memory zero."),
    cmdline="init_on_free=1", xz=True,
    kdump={"level": 1, "capture_cmdline": "acpi_no_memhotplug", "fill_mb": 0,
           "crashkernel": "192M"}))
_add("kdump-damaged", Scenario("6.12", list(_BASIC), (
    "hotplug-basic, then kdump with Debian's capture command line and "
    "memhp_default_state=online (no acpi_no_memhotplug): the capture kernel onlines "
    "the DIMMs and fills 256 MiB of tmpfs before makedumpfile -d 31 runs, writing "
    "over the crashed kernel's memmap in them.  The dump is damaged; the kernel "
    "was consistent."),
    kdump={"level": 31, "capture_cmdline": "memhp_default_state=online", "fill_mb": 256,
           "crashkernel": "192M"}))


def lookup(kernel: str, name: str) -> Tuple[str, Scenario]:
    """The scenario ``name`` on ``kernel``.  hotplug-basic exists for every
    Debian series ``X.Y``, not only the committed ones: ``vmcores build 7.3
    hotplug-basic`` builds whatever 7.3 a reachable suite has."""
    full = f"{kernel}-{name}"
    if full not in SCENARIOS and name == "hotplug-basic" and re.fullmatch(r"\d+\.\d+", kernel):
        return full, Scenario(kernel, list(_BASIC), SCENARIOS["6.12-hotplug-basic"].doc)
    if full not in SCENARIOS:
        raise UnknownScenario(f"no scenario {name!r} for kernel {kernel!r}; have: "
                       + ", ".join(sorted(SCENARIOS)))
    return full, SCENARIOS[full]


# 2 GiB memory blocks.  x86's probe_memory_block_size() (arch/x86/mm/init_64.c)
# takes the largest block up to 2 GiB that aligns the end of boot RAM
# (max_pfn, from E820_TYPE_RAM entries only) when it ends at 64 GiB or more
# on a hypervisor.  The guest has 63 GiB of RAM, 1 GiB below 4 GiB
# (max-ram-below-4g=1G) and 62 GiB above, so RAM ends at 66 GiB; memmap=61G$4G
# turns 4G..65G into an E820 reserved hole that memblock never sees, leaving
# 2 GiB of boot memory (block 0: node 0's 1 GiB; block 32: node 1's 65-66 GiB)
# with max_pfn still at 66 GiB.  The RAM backends are reserve=off (the host
# never backs what the guest does not touch).  The DIMMs land at 66, 70 and
# 72 GiB, 2 GiB aligned; each 2 GiB block self-hosts 32 MiB of memmap
# (N = 8192 pages, 16 PMDs).
_BIGBLOCKS = [
    ("block_size", 2 << 30),
    ("hugepages", 0, 8),
    ("hugepages", 1, 8),
    ("plug", "dimm0", 4096, 1),
    ("plug", "dimm1", 2048, 0),
    ("plug", "dimm2", 2048, 1),
    ("online", "dimm0", "all", "online_movable"),
    ("online", "dimm1", "all", "online_kernel"),
    # Offlined before node 1's pool grows (see _PAGETABLES_STEPS).
    ("offline", "dimm0", [1]),
    ("hugepages", 1, 24),
]
_add("bigblocks", Scenario("6.12", _BIGBLOCKS, (
    "2 GiB memory blocks (x86 picks them when boot RAM ends at >= 64 GiB in a VM): "
    "63 GiB of RAM ending at 66 GiB, all but 2 GiB of it an E820 reserved hole "
    "(memmap=61G$4G); a 4 GiB DIMM on node 1 onlined movable with its second block "
    "offlined again, a 2 GiB DIMM on node 0 onlined as kernel memory, a 2 GiB DIMM on "
    "node 1 never onlined; HugeTLB pools in boot memory (HVO'd) and in the movable "
    "block.  Each self-hosted range is 8192 pages (32 MiB of memmap)."),
    cmdline="memmap=61G$4G", mem_mb=63 * 1024, xz=True, system_ram_only=True,
    guest={"maxmem_gb": 80, "machine_opts": ",max-ram-below-4g=1G",
           "ram_opts": ",reserve=off"}))


# Memory devices other than pc-dimm, in one guest (the 6.12-devices kernel,
# configs/devices.config), with HVO on and HugeTLB pools grown after the
# hot-adds:
#  - dax0.0: memmap=256M%0x20000000-1+0xefffffff turns node 1's first 256 MiB
#    of boot RAM into an E820 soft-reserved range (arch/x86/kernel/e820.c,
#    parse_memmap_one(); e820__memblock_setup() reserves it, never adds it),
#    which dax_hmem makes dax0.0 (drivers/dax/hmem/device.c, hmem_init();
#    hmem.c gives its region IORESOURCE_DAX_KMEM, so kmem takes it at boot,
#    without memmap_on_memory, and leaves its blocks offline).  The scenario
#    unbinds it (kmem removes the memory), sets memmap_on_memory and binds it
#    to kmem again: blocks 4 and 5, self-hosted, amid boot memory.
#  - vm0: a 384 MiB virtio-mem device on node 0 (first in device memory, at
#    4 GiB: blocks 32-34) resized to 200 MiB: block 32 fully plugged, 33 with
#    36 of its 64 sub-blocks (2 MiB), 34 never added.  virtio-mem never uses
#    memmap_on_memory; 33's unplugged sub-blocks are PageOffline once online.
#    32 onlined as kernel memory (node 0's only Normal zone: boot memory is
#    all DMA32), so node 0's HVO replacement pages land there.
#  - dimm0: a 256 MiB pc-dimm on node 1 after it (blocks 35, 36), self-hosted.
_DEVICES = [
    # Per-CPU free lists of at most 4 batches (mm/page_alloc.c,
    # zone_highsize(): a fraction this large gives batch * 4) instead of up
    # to 1/8 of a zone per CPU: node 0's only Normal zone is virtio-mem's
    # block 32, where the guest's own kpageflags readers allocate, and free
    # pages parked on pcp lists after the read are not PageBuddy in the dump.
    ("sysctl", "vm.percpu_pagelist_high_fraction", 1 << 20),
    # Boot-memory folios first, HVO'd as in every HugeTLB fixture.
    ("hugepages", 0, 8),
    ("hugepages", 1, 8),
    ("dax_kmem", "dax0.0", 1),
    ("virtio_mem", "vm0", 200),
    ("plug", "dimm0", 256, 1),
    ("online", "dax0.0", [0], "online_movable"),
    ("online", "dax0.0", [1], "online_kernel"),
    ("online", "vm0", [0], "online_kernel"),
    ("online", "vm0", [1], "online_movable"),
    ("online", "dimm0", [0], "online_movable"),
    ("online", "dimm0", [1], "online_kernel"),
    # Node 0: virtio-mem's movable block, then its Normal one (HVO'd: not
    # self-hosted).  Node 1: the self-hosted movable blocks of dax0.0 and
    # dimm0 (HVO refused), then its kernel blocks and boot memory.
    ("hugepages", 0, 72),
    ("hugepages", 1, 158),
]
_add("mixed", Scenario("6.12-devices", list(_DEVICES), (
    "virtio-mem, pc-dimm and dax/kmem in one guest, HVO on: dax0.0 (dax_hmem over a "
    "soft-reserved 256 MiB of node 1's boot RAM, memmap=256M%0x20000000-1+0xefffffff) "
    "rebound to kmem with its memmap_on_memory attribute set (blocks 4-5, self-hosted, "
    "movable and kernel); a 384 MiB virtio-mem device on node 0 resized to 200 MiB "
    "over QMP (block 32 plugged and onlined kernel, block 33 partly plugged and "
    "onlined movable: 28 sub-blocks of 2 MiB PageOffline; never self-hosted); a 256 MiB "
    "pc-dimm on node 1 (blocks 35-36, self-hosted, movable and kernel); HugeTLB pools "
    "in boot memory (HVO'd) grown after the hot-adds (HVO'd in virtio-mem, refused in "
    "self-hosted blocks); small per-CPU free lists (percpu_pagelist_high_fraction).  "
    "Pages stored plain and the file xz'd."),
    cmdline="memmap=256M%0x20000000-1+0xefffffff", xz=True,
    guest={"virtio_mem": [{"dev_id": "vm0", "size_mb": 384, "node": 0}]}))



# The 6.12-memmap kernel (patches/6.12-pg-memmap.patch, issue 14): PGTY_memmap
# on every page that holds struct pages, reported by kpageflags as bit 44.
# Every source of memmap in one guest, on devices.config: boot memory
# (memblock), HVO's replacement pages, self-hosted blocks (dax0.0 with its
# memmap_on_memory attribute, a pc-dimm), memmap from the page allocator
# (virtio-mem, never memmap_on_memory), and one block hot-removed: vm0 is
# plugged to 320 MiB (blocks 32, 33 and half of 34), onlined movable, then
# shrunk to 200 MiB, so that virtio-mem unplugs block 34's sub-blocks and
# offlines and removes the block (virtio_mem_sbm_unplug_any_sb_online()):
# section_deactivate() must clear the type off its memmap's frames before
# they go back to the page allocator.  Then _DEVICES' HugeTLB pools.
_MEMMAP = [s for s in _DEVICES if s[0] not in ("virtio_mem", "hugepages")
           or s[1:] in ((0, 8), (1, 8))]
_MEMMAP.insert(_MEMMAP.index(("dax_kmem", "dax0.0", 1)) + 1, ("virtio_mem", "vm0", 320))
_MEMMAP.insert(_MEMMAP.index(("online", "vm0", [1], "online_movable")) + 1,
               ("online", "vm0", [2], "online_movable"))
# Node 0's pool shrunk again at the end: HVO is undone on the folios freed
# (hugetlb_vmemmap_restore_folio(): new pages mapped where the shared one
# was), whose frames the kernel must type.
_MEMMAP += [("virtio_mem", "vm0", 200), ("hugepages", 0, 72), ("hugepages", 1, 158),
            ("hugepages", 0, 60)]
_MEMMAP_DOC = ("6.12 patched with PGTY_memmap on every page that holds struct pages "
               "(never upstream: the 2022 review's last proposal), kpageflags bit 44. ")
_MEMMAP_GUEST = {"virtio_mem": [{"dev_id": "vm0", "size_mb": 384, "node": 0}]}
_add("hotplug-basic", Scenario("6.12-memmap", list(_MEMMAP), _MEMMAP_DOC + (
    "6.12-devices-mixed's memory with one block hot-removed: boot memmap (memblock), "
    "HVO'd folios in boot memory and virtio-mem, self-hosted dax0.0 and pc-dimm blocks, "
    "virtio-mem blocks whose memmap came from the page allocator, and virtio-mem's "
    "third block plugged, onlined and removed again (shrunk from 320 to 200 MiB); "
    "node 0's HugeTLB pool shrunk at the end (HVO undone on 12 folios).  "
    "kpageflags shows the type on exactly the frames the page tables map the "
    "vmemmap to; the manifest lists them.  Pages stored plain and the file xz'd."),
    cmdline="memmap=256M%0x20000000-1+0xefffffff", xz=True, guest=_MEMMAP_GUEST))
_FAULTS_MEMMAP = [
    # A frame of the boot memmap (the one holding boot block 2's first
    # struct pages) without the type.
    ("fault", "memmap_type", {"block_id": 2, "flag": "backing", "value": 0xFFFFFFFF,
                              "expect": _expect("memmap-type", "$pfn", "$pfn+1")}),
    # HVO's replacement page of the first HVO'd folio in boot memory lost it.
    ("fault", "memmap_type", {"block_id": 0, "flag": "hvo_head", "value": 0xFFFFFFFF,
                              "expect": _expect("memmap-type", "$pfn", "$pfn+1")}),
    # A frame HVO freed from that folio still has it (a free page, or reused).
    ("fault", "memmap_type", {"block_id": 0, "flag": "hvo_freed", "value": 0xF9000000,
                              "expect": _expect("memmap-type", "$pfn", "$pfn+1")}),
    # The type on an ordinary page of the self-hosted pc-dimm's first block.
    ("fault", "page_type", {"dimm": "dimm0", "block": 0, "offset": 20000, "count": 1,
                            "value": 0xF9000000,
                            "expect": _expect("memmap-type", "$pfn", "$pfn+1")}),
]
_add("faults", Scenario("6.12-memmap", list(_MEMMAP) + _FAULTS_MEMMAP, _MEMMAP_DOC + (
    "hotplug-basic, then faultmod.ko breaks the type: cleared on a boot memmap frame "
    "and on an HVO replacement page, left on a frame HVO freed, set on an ordinary "
    "page."), cmdline="memmap=256M%0x20000000-1+0xefffffff", xz=True,
    guest=_MEMMAP_GUEST))

# arm64 (issue 11): QEMU virt with UEFI and ACPI, 4K pages, 128 MiB blocks
# and sections as on x86-64.  Boot RAM starts at 1 GiB (blocks 8-15); the
# DIMMs land in device memory from 2 GiB (block 16 on).  No HVO on arm64
# (6.12 has no ARCH_WANT_OPTIMIZE_HUGETLB_VMEMMAP there), so the HugeTLB
# pools are plain, and hpg_optimized is not a fault the kernel relies on.
_ARM64_FAULTS = [s for s in _FAULTS_NEW if s[1] != "hpg_optimized"
                 and s[1] != "block_new_altmap"] + [
    ("fault", "block_new_altmap", {"block_id": 11, "value": 512,
                                   "expect": _expect("early-self-hosted", "$pfn", "$pfn+512")}),
]
# One NUMA node: AAVMF reports the variable-store flash bank (64 MiB at
# 64 MiB) as memory that no SRAT node covers, so an arm64 guest with -numa
# nodes falls back to one faked node anyway (mm/numa_memblks.c,
# numa_meminfo_cover_memory()).  hotplug-basic's steps on node 0.
_ARM64_BASIC = [
    ("hugepages", 0, 16),
    ("plug", "dimm0", 256, 0),
    ("plug", "dimm1", 128, 0),
    ("plug", "dimm2", 256, 0),
    ("online", "dimm0", "all", "online_movable"),
    ("online", "dimm1", "all", "online_kernel"),
    ("online", "dimm2", [0], "online_movable"),
    # Offlined before the pool grows into the movable blocks (see
    # _PAGETABLES_STEPS).
    ("offline", "dimm0", [1]),
    ("hugepages", 0, 40),
]
_add("hotplug-basic", Scenario("6.12-arm64", _ARM64_BASIC, (
    "arm64 (QEMU virt, UEFI, ACPI, one NUMA node): three DIMMs (256, 128, 256 MiB) "
    "onlined movable/kernel, one block offlined again, one never onlined; HugeTLB pool "
    "in boot memory and grown into the movable hot-plugged blocks (no HVO on arm64).  "
    "Booted with init_on_free=1 (free pages are zero) and dumped by QEMU as ELF, "
    "all-zero pages left out of the file, xz'd."),
    cmdline="init_on_free=1", guest={"nodes": 1}))
_add("faults", Scenario("6.12-arm64", _ARM64_BASIC + _ARM64_FAULTS, (
    "arm64 hotplug-basic, then faultmod.ko (built for arm64) corrupts one thing per "
    "rule: a cleared and a stray PG_vmemmap_self_hosted, PG_reserved and an extra "
    "reference on vmemmap pages, a wrong altmap->alloc, a section's SECTION_IS_ONLINE, "
    "an altmap on a boot block."), cmdline="init_on_free=1", guest={"nodes": 1}))


# ppc64le pseries, radix, 64K pages, memmap_on_memory=force (issue 11).  An
# LMB (memory block) is 256 MiB: 16 sections of 16 MiB, 4096 pages whose
# memmap is 4 pages; force pads the altmap to one 32-page pageblock
# (pageblock_order 5), all 32 marked.  Boot RAM is 0-1 GiB, so the DIMMs
# start at 1 GiB (spapr's device memory).  One vmemmap PMD (2 MiB) holds the
# struct pages of 2 GiB of RAM, and boot mapped 0-2 GiB's with a PMD leaf:
# radix__vmemmap_populate() (arch/powerpc/mm/book3s64/radix_pgtable.c)
# reuses it for every LMB below 2 GiB (vmemmap_check_pmd()), so their
# altmap is reserved and marked but never used (alloc 0).  From 2 GiB on the
# PMD is empty and an LMB's memmap is mapped with base pages taken from its
# own altmap (4 frames): self-hosted.  pseries onlines each LMB it adds
# (dlpar_add_lmb(): device_online()), as kernel memory.
_PPC64K_BASIC = [
    ("hugepages", 0, 8),
    ("plug", "dimm0", 512, 0),   # 1.0-1.5 GiB: the boot PMD reused
    ("plug", "dimm1", 256, 1),   # 1.5-1.75 GiB: reused
    ("plug", "dimm2", 512, 1),   # 1.75-2.25 GiB: one LMB reused, one self-hosted
    ("plug", "dimm3", 512, 0),   # 2.25-2.75 GiB: self-hosted
    ("offline", "dimm3", [1]),
    ("hugepages", 1, 16),
]
_add("force-hotplug-basic", Scenario("6.12-ppc64le-64k", _PPC64K_BASIC, (
    "ppc64le pseries (POWER9, radix, 64K pages), memory_hotplug.memmap_on_memory=force: "
    "four DIMMs hot-plugged as 256 MiB LMBs, which the guest onlines itself; those "
    "below 2 GiB reuse the boot vmemmap PMD (32 pages reserved and marked, unused), "
    "those above are self-hosted (4 frames, 32 reserved); one LMB offlined again.  "
    "Booted with init_on_free=1 and dumped by QEMU as ELF (VMCOREINFO added from the "
    "guest), all-zero pages left out of the file, xz'd."),
    cmdline="memory_hotplug.memmap_on_memory=force init_on_free=1"))
# One fault per rule on that geometry: an LMB is 4096 pages (16 sections of
# 256), its altmap area 32.  dimm3's first LMB (2.25 GiB) is self-hosted and
# online; dimm0's first (1 GiB) reuses the boot PMD and is online.
_PPC64K_FAULTS = [
    ("fault", "clear_flag", {"dimm": "dimm3", "block": 0, "offset": 10, "count": 3,
                             "flag": "owner_priv_1",
                             "expect": _expect("vmemmap-unmarked", "$pfn", "$pfn+3")}),
    # Unused reserved pages of a block that reused the boot PMD lose theirs too.
    ("fault", "clear_flag", {"dimm": "dimm0", "block": 0, "offset": 30, "count": 2,
                             "flag": "owner_priv_1",
                             "expect": _expect("vmemmap-unmarked", "$pfn", "$pfn+2")}),
    ("fault", "set_flag", {"dimm": "dimm3", "block": 0, "offset": 32, "count": 1,
                           "flag": "owner_priv_1",
                           "expect": _expect("marker-stray", "$pfn", "$pfn+1")}),
    ("fault", "page_ref", {"dimm": "dimm3", "block": 0, "offset": 2, "count": 1, "value": 1,
                           "expect": _expect("vmemmap-page-state", "$pfn", "$pfn+1")}),
    ("fault", "block_vmemmap", {"dimm": "dimm2", "block": 1, "value": 3,
                                "expect": _expect("altmap-mismatch", "$pfn", "$pfn+32")}),
    # SECTION_IS_ONLINE off the first of the block's 16 sections: that
    # section (256 pages) is the violation, not the whole block.
    ("fault", "section_clear", {"dimm": "dimm1", "block": 0, "mask": 4,
                                "expect": _expect("section-state", "$pfn", "$pfn+256")}),
    ("fault", "block_new_altmap", {"block_id": 2, "value": 4,
                                   "expect": _expect("early-self-hosted", "$pfn", "$pfn+4")}),
    # The kernel's fallback: the last vmemmap page of offline self-hosted
    # block 10 (the struct pages of its pfns 3072-4095) on a page from the
    # page allocator, altmap->alloc 3.  Consistent, but the memmap is not
    # where the altmap says: a warning.
    ("fault", "vmemmap_fallback", {"dimm": "dimm3", "block": 1, "offset": 3072,
                                   "expect": _expect("altmap-mismatch", "$pfn", "$pfn+1024",
                                                     severity="warning")}),
]
_add("force-faults", Scenario("6.12-ppc64le-64k", _PPC64K_BASIC + _PPC64K_FAULTS, (
    "ppc64le-64k force-hotplug-basic, then faultmod.ko (built for ppc64le) breaks one "
    "thing per rule: markers cleared on a self-hosted block's memmap and on the unused "
    "reserved pages of a block that reused the boot PMD, a stray marker just past a "
    "reserved area, an extra reference on a vmemmap page, a wrong altmap->alloc, a "
    "section's SECTION_IS_ONLINE, an altmap on a boot LMB, and a vmemmap page moved to "
    "the page allocator's memory as radix__vmemmap_pte_populate() does when the altmap "
    "cannot give one."),
    cmdline="memory_hotplug.memmap_on_memory=force init_on_free=1"))


# ppc64le pseries radix with 4K pages and memmap_on_memory=1: an LMB's memmap
# is 1024 pages (4 MiB), two 2 MiB PMD leaves from its altmap (one vmemmap
# PMD holds the struct pages of 128 MiB, inside the LMB: no reuse, no
# padding: pageblock order 9 divides 1024).
_PPC4K_BASIC = [
    ("hugepages", 0, 8),
    ("plug", "dimm0", 512, 0),
    ("plug", "dimm1", 256, 1),
    ("plug", "dimm2", 256, 1),
    ("offline", "dimm0", [1]),
    ("hugepages", 1, 16),
]
_add("hotplug-basic", Scenario("6.12-ppc64le-4k", _PPC4K_BASIC, (
    "ppc64le pseries (POWER9, radix, 4K pages), memory_hotplug.memmap_on_memory=1: three "
    "DIMMs hot-plugged as 256 MiB LMBs (16 sections each) that the guest onlines itself, "
    "each self-hosting 1024 pages of memmap (two PMD leaves); one LMB offlined again; "
    "HugeTLB pools (no HVO on ppc64).  Booted with init_on_free=1, dumped by QEMU as ELF "
    "(VMCOREINFO added from the guest), all-zero pages left out, xz'd."),
    cmdline="init_on_free=1"))
