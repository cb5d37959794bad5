"""
Live races
----------

A live kernel (``-k``, QMP) may hotplug memory while it is checked.  What
tells a reader that it did (:func:`hotplug_epoch`: ``uevent_seqnum`` and the
hotplug locks), what a block looked like (:func:`snapshot`), which blocks
changed between reads (:func:`changed_blocks`), and how violations on those
blocks become "not checked (live race)" (:func:`race`).
:func:`~drgn_vmemmap.check.check` decides when to retry.
"""

from typing import Dict, List, NamedTuple, Optional, Tuple

from drgn import FaultError, Program, TypeKind

from .model import MemoryMap
from .records import NotChecked, Note, Violation

__all__ = ("Epoch", "Results", "changed_blocks", "hotplug_epoch", "race", "snapshot")

#: What the rules produced: violations, not checked, holds per rule, notes.
Results = Tuple[List[Violation], List[NotChecked], Dict[str, int], List[Note]]


def snapshot(mm: MemoryMap) -> Dict[int, Tuple[object, ...]]:
    """Per block id: what a live kernel may change under a check (the block's
    device, state, zone and vmemmap record, and its sections' words)."""
    per = mm.features.sections_per_block
    out: Dict[int, Tuple[object, ...]] = {}
    for b in mm.blocks.values():
        out[b.id] = (b.address, b.state, b.nid, b.zone, b.vmemmap_pages, b.altmap, b.error)
    sections: Dict[int, List[Tuple[int, int, int]]] = {}
    for s in mm.sections.values():
        sections.setdefault(s.nr // per, []).append((s.nr, s.flags, s.mem_map))
    for bid, secs in sections.items():
        out[bid] = out.get(bid, ()) + tuple(secs)
    return out


class Epoch(NamedTuple):
    """What tells a reader of a live kernel that memory hotplug happened."""

    #: ``uevent_seqnum``: every memory block added, removed, onlined or
    #: offlined advances it (device_online()/device_offline() send
    #: KOBJ_ONLINE/KOBJ_OFFLINE once the block's state has changed).  Two
    #: equal reads of the memory map do not prove it stood still: a block
    #: can go offline and online again in between (seen under a fast loop).
    seqnum: Optional[int]
    #: An operation is under way: ``device_hotplug_lock`` (held from the
    #: sysfs write or ACPI event to the uevent) or ``mem_hotplug_lock``
    #: (write-held by online_pages()/offline_pages()) is taken.
    busy: bool


def hotplug_epoch(prog: Program) -> Epoch:
    seqnum = None
    busy = False
    try:
        seq = prog["uevent_seqnum"]  # u64, atomic64_t in newer kernels
        if seq.type_.unaliased_kind() != TypeKind.INT:
            seq = seq.counter
        seqnum = seq.value_()
    except (KeyError, LookupError, AttributeError, FaultError):
        pass
    try:
        # The low bits of a mutex's owner are flags (MUTEX_FLAGS).
        busy = bool(prog["device_hotplug_lock"].owner.counter.value_() & ~0x7)
    except (KeyError, LookupError, AttributeError, FaultError):
        pass
    try:
        busy = busy or bool(prog["mem_hotplug_lock"].block.counter.value_())
    except (KeyError, LookupError, AttributeError, FaultError):
        pass
    return Epoch(seqnum, busy)


def changed_blocks(snapshots: List[Dict[int, Tuple[object, ...]]]) -> List[int]:
    """Blocks that were not the same in every snapshot."""
    ids = set().union(*snapshots)
    return sorted(bid for bid in ids if len({repr(s.get(bid)) for s in snapshots}) > 1)


def race(results: Results, changed: List[int], pages_per_block: int,
          epochs: Tuple[Epoch, Epoch]) -> Results:
    """Violations touching a block that kept changing become "not checked",
    and each such block is reported as not checked."""
    violations, not_checked, holds, notes = results
    kept: List[Violation] = []
    not_checked = list(not_checked) + [
        NotChecked("*", f"live race: block {bid} changed during the check",
                   bid * pages_per_block, (bid + 1) * pages_per_block) for bid in changed]
    if not changed:
        # Devices (maybe not memory) changed, but no block was seen changing:
        # say so, and keep the violations (nothing tells which of them it
        # could explain).
        e0, e1 = epochs
        busy = ", hotplug in progress" if e0.busy or e1.busy else ""
        not_checked.append(NotChecked("*", "live race: devices changed during the check "
                                      f"(uevent_seqnum {e0.seqnum} -> {e1.seqnum}{busy}); "
                                      "no memory block was seen changing"))
    for v in violations:
        hit = next((bid for bid in changed if v.block == bid or
                    (v.pfn_start < (bid + 1) * pages_per_block
                     and bid * pages_per_block < v.pfn_end)), None)
        if hit is None:
            kept.append(v)
        else:
            not_checked.append(NotChecked(v.rule, f"live race: block {hit} changed during "
                                          "the check", v.pfn_start, v.pfn_end))
    return kept, not_checked, holds, notes
