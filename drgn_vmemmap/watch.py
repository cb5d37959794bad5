"""
Watch
-----

``drgn-vmemmap watch`` (``-k`` or ``--qemu``): re-check a live kernel every
time its memory map changes, for as long as it runs.

Every ``--interval`` seconds it reads ``uevent_seqnum`` and the hotplug locks
(:func:`~drgn_vmemmap.live.hotplug_epoch`).  When the sequence number moved
(a block was added, removed, onlined or offlined), or the last re-check did
not settle, it reads the memory map, says which blocks changed and how, and
runs :func:`~drgn_vmemmap.check.check`, which itself re-reads the map after
the rules and retries while it moves.  A re-check *settled* when no block
changed under it, no hotplug operation was under way at either end (no
"live race" in its report) and no block is in a transitional state
(``going-offline``, ...).

* A finding that a settled re-check reports is a **violation**: it holds in
  a state the kernel considers finished.  It is printed once when first
  settled, and again as *resolved* when a later settled re-check lacks it.
* A finding seen only by unsettled re-checks (mid-transition) and gone at
  the next settled one is **transient**, printed with how long it lasted.

One line per change (time, ``uevent_seqnum``, block transitions, verdict,
re-check time), JSON lines with ``--format json``; a summary at the end
(Ctrl-C, or ``--duration``): changes and transitions seen, re-checks and
their latency, violations, transients, the CPU time used and the resident
memory at the first and the last re-check.

Each re-check reads the memory map and page tables afresh (a live kernel
is never cached, :func:`~drgn_vmemmap.backing.vmemmap_backing`), and nothing
is kept from one to the next but the findings and the blocks' last states,
so memory stays flat however long it runs (the summary shows it).
"""

import json
import resource
import sys
import time
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple

from drgn import Program

from .check import check
from .live import hotplug_epoch
from .target import TargetError, target_kind

__all__ = ("watch",)

Key = Tuple[str, int, int]


def _rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _transitions(old: Optional[Dict[int, str]], new: Dict[int, str]) -> List[Dict[str, Any]]:
    """Block changes between two ``{block: state}`` reads (absent: added or removed)."""
    if old is None:
        return []
    return [{"block": bid, "from": old.get(bid, "absent"), "to": new.get(bid, "absent")}
            for bid in sorted(set(old) | set(new)) if old.get(bid) != new.get(bid)]


def watch(prog: Program, interval: float = 0.1, duration: Optional[float] = None,
          emit: Optional[Callable[[Dict[str, Any]], None]] = None,
          rules: Optional[List[str]] = None) -> Dict[str, Any]:
    """
    Watch a live kernel until ``duration`` seconds passed (None: until
    KeyboardInterrupt); ``emit(event)`` gets each ``{"event": "change" |
    "violation" | "resolved" | "transient", ...}``.  Returns the summary.
    """
    if target_kind(prog) == "vmcore":
        raise TargetError("watch needs a live kernel (-k or --qemu), not a core dump")
    emit = emit or (lambda e: None)
    t_start = time.monotonic()
    cpu0 = time.process_time()
    last_seq: Optional[int] = None
    last_snap: Optional[Dict[int, str]] = None
    settled_last = True
    confirmed: Dict[Key, Dict[str, Any]] = {}
    transient: Dict[Key, Tuple[float, Dict[str, Any]]] = {}
    violations: List[Dict[str, Any]] = []
    transients: List[Dict[str, Any]] = []
    latencies: List[float] = []
    changes = transitions = 0
    rss_first: Optional[float] = None
    try:
        while duration is None or time.monotonic() - t_start < duration:
            epoch = hotplug_epoch(prog)
            if last_snap is not None and epoch.seqnum == last_seq and settled_last:
                time.sleep(interval)
                continue
            t0 = time.monotonic()
            # The blocks as the check read them (it reads the map again after
            # the rules and retries while it moves): no read of our own.
            report = check(prog, rules=rules)
            snap = {b["block"]: str(b["state"]) for b in report.blocks}
            moved = _transitions(last_snap, snap)
            now = time.monotonic()
            latencies.append(now - t0)
            if rss_first is None:
                rss_first = _rss_mib()
            # Settled: the check stood (no live race: map, uevent_seqnum and
            # locks unchanged across it) and no block is in transition
            # (going-offline, going-online, ...), whatever the locks said.
            settled = (not any(n.reason.startswith("live race") for n in report.not_checked)
                       and all(b["state"] in ("online", "offline") for b in report.blocks))
            found = {(v.rule, v.pfn_start, v.pfn_end): v._asdict() for v in report.violations}
            when = round(now - t_start, 3)
            if settled:
                for k, v in found.items():
                    if k not in confirmed:
                        seen = transient.get(k, (now, v))[0]
                        ev = dict(v, event="violation", time=when,
                                  first_seen=round(seen - t_start, 3))
                        violations.append(ev)
                        emit(ev)
                for k, v in confirmed.items():
                    if k not in found:
                        emit(dict(v, event="resolved", time=when))
                for k, (seen, v) in transient.items():
                    if k not in found:
                        ev = dict(v, event="transient", time=when,
                                  lasted=round(now - seen, 3))
                        transients.append(ev)
                        emit(ev)
                confirmed = found
                transient = {}
            else:
                for k, v in found.items():
                    transient.setdefault(k, (now, v))
            if last_snap is not None:
                changes += 1
                transitions += len(moved)
            verdict = ("violations" if settled and found else "consistent" if settled
                       else "unsettled")
            emit({"event": "change", "time": when, "seqnum": epoch.seqnum,
                  "transitions": moved, "verdict": verdict,
                  "errors": sum(1 for v in report.violations if v.severity == "error"),
                  "recheck_seconds": round(now - t0, 3)})
            last_seq = hotplug_epoch(prog).seqnum if settled else epoch.seqnum
            last_snap = snap
            settled_last = settled
    except KeyboardInterrupt:
        pass
    elapsed = time.monotonic() - t_start
    self_cpu = time.process_time() - cpu0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = {
        "event": "summary", "seconds": round(elapsed, 3), "changes": changes,
        "transitions": transitions,
        "transitions_per_minute": round(transitions / elapsed * 60, 1) if elapsed else 0.0,
        "rechecks": len(latencies),
        "recheck_seconds_mean": round(sum(latencies) / len(latencies), 3) if latencies else None,
        "recheck_seconds_max": round(max(latencies), 3) if latencies else None,
        "violations": violations, "standing": list(confirmed.values()),
        "transients": transients,
        "cpu_seconds": round(self_cpu + children.ru_utime + children.ru_stime, 2),
        "rss_mib_first": rss_first, "rss_mib_last": _rss_mib(),
    }
    emit(summary)
    return summary


def _line(e: Dict[str, Any]) -> str:
    t = f"{e.get('time', 0):9.3f}s"
    kind = e["event"]
    if kind == "change":
        moved = ", ".join(f"block {m['block']} {m['from']}->{m['to']}" for m in e["transitions"])
        return (f"{t}  seq {e['seqnum']}  {moved or '(no block changed)'}  "
                f"{e['verdict']}  ({e['recheck_seconds']:.2f} s)")
    if kind in ("violation", "resolved", "transient"):
        extra = f" (lasted {e['lasted']:.2f} s)" if kind == "transient" else ""
        return (f"{t}  {kind.upper()}{extra}: {e['severity']} {e['rule']} pfns "
                f"{e['pfn_start']:#x}-{e['pfn_end'] - 1:#x} block {e.get('block')}: "
                f"expected {e['expected']}, found {e['found']}")
    return (f"summary: {e['seconds']:.0f} s, {e['changes']} changes, {e['transitions']} block "
            f"transitions ({e['transitions_per_minute']}/min), {e['rechecks']} re-checks "
            f"(mean {e['recheck_seconds_mean']} s, max {e['recheck_seconds_max']} s), "
            f"{len(e['violations'])} violation(s), {len(e['standing'])} standing, "
            f"{len(e['transients'])} transient(s); {e['cpu_seconds']} s CPU; RSS "
            f"{e['rss_mib_first']} -> {e['rss_mib_last']} MiB")


def watch_main(prog: Program, fmt: str, interval: float, duration: Optional[float],
               out: Optional[TextIO] = None) -> int:
    """The CLI: lines or JSON lines on ``out``; exit 1 if a violation stood."""
    stream = out or sys.stdout

    def emit(e: Dict[str, Any]) -> None:
        stream.write((json.dumps(e) if fmt == "json" else _line(e)) + "\n")
        stream.flush()

    summary = watch(prog, interval, duration, emit)
    return 1 if any(v["severity"] == "error" for v in summary["violations"]) else 0
