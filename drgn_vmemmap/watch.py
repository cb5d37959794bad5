"""
Watch
-----

``drgn-vmemmap watch`` (``-k`` or ``--qemu``): re-check a live kernel every
time its memory map changes, for as long as it runs.

Every ``--interval`` seconds it refreshes a
:class:`~drgn_vmemmap.refresh.LiveModel` of the kernel: ``uevent_seqnum``
and the hotplug locks, the ``mem_section`` roots, the page-table pages
under the vmemmap and the markers on the memmap frames of hot-plugged
memory, each read in bulk and compared with the last look; the memory map
and the vmemmap backing are derived again only when what they come from
changed.  When anything changed (a block added, removed, onlined or
offlined; HugeTLB vmemmap optimisation remapping a folio's vmemmap, which
no uevent announces; a marker set or cleared), or the last re-check did not
settle, it runs :func:`~drgn_vmemmap.check.check` on the model, which
refreshes it again after the rules and retries while the map moves.  A
re-check *settled* when no block changed under it, no hotplug operation was
under way at either end (no "live race" in its report) and no block is in a
transitional state (``going-offline``, ...).  Every ``--verify-every``
seconds the model is also built from scratch and compared with the
refreshed one; a difference is printed as *drift* (a bug of the refresh)
and the fresh model is used.

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

What stays from one look to the next is the model (its size is the
machine's, not the run's), the page-table pages its last walk used, the
findings and the blocks' last states; so memory stays flat however long it
runs (the summary shows it, with how often each part of the model had to be
derived again).

Rules that scan all of memory (a stray marker on an ordinary page) run at
every re-check; between re-checks only the markers above are watched, so a
stray marker on an ordinary page is found at the next re-check, or the
next ``--verify-every``, which re-checks too.
"""

import json
import resource
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, TextIO, Tuple

from drgn import Program

from .check import check
from .refresh import LiveModel
from .target import TargetError, target_kind

__all__ = ("watch",)

Key = Tuple[str, int, int]

#: A look at the kernel takes at most 1 / (1 + LOOK_SHARE) of the time: the
#: pause after one is at least LOOK_SHARE times as long (a machine whose
#: hot-plugged memmap is large is looked at less often than --interval).
LOOK_SHARE = 4


#: Events of each kind kept for the summary (all are emitted and counted).
KEEP = 1000


class _Kept(list):  # type: ignore[type-arg]
    """The first :data:`KEEP` events of a kind, and how many there were."""

    total = 0

    def add(self, ev: Dict[str, Any]) -> None:
        self.total += 1
        if len(self) < KEEP:
            self.append(ev)


class _Timings:
    """Count, total and maximum of durations, in constant memory (a watch
    runs for hours: no list of every look)."""

    __slots__ = ("n", "total", "max")

    def __init__(self) -> None:
        self.n, self.total, self.max = 0, 0.0, 0.0

    def add(self, seconds: float) -> None:
        self.n += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def mean(self, digits: int = 3) -> Optional[float]:
        return round(self.total / self.n, digits) if self.n else None


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


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, a service manager) ends a watch as
    Ctrl-C does, with its summary; only in the main thread, where Python
    runs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def watch(prog: Program, interval: float = 0.1, duration: Optional[float] = None,
          emit: Optional[Callable[[Dict[str, Any]], None]] = None,
          rules: Optional[List[str]] = None,
          verify_every: Optional[float] = 600.0,
          vmemmap_page_type: Optional[int] = None) -> Dict[str, Any]:
    """
    Watch a live kernel until ``duration`` seconds passed (None: until
    KeyboardInterrupt or SIGTERM); ``emit(event)`` gets each ``{"event": "change" |
    "violation" | "resolved" | "transient" | "drift", ...}``.  Returns the
    summary.

    :param verify_every: seconds between rebuilds of the model from scratch,
        compared with the refreshed one (0: before every re-check; None:
        never).
    :param vmemmap_page_type: see :func:`~drgn_vmemmap.features.features`.
    """
    if target_kind(prog) == "vmcore":
        raise TargetError("watch needs a live kernel (-k or --qemu), not a core dump")
    emit = emit or (lambda e: None)
    t_start = time.monotonic()
    cpu0 = time.process_time()
    model = LiveModel(prog, vmemmap_page_type)
    probes = _Timings()
    drifts = _Kept()
    verified = 0
    last_verify = time.monotonic()
    last_snap: Optional[Dict[int, str]] = None
    settled_last = True
    confirmed: Dict[Key, Dict[str, Any]] = {}
    transient: Dict[Key, Tuple[float, Dict[str, Any]]] = {}
    violations = _Kept()
    transients = _Kept()
    latencies = _Timings()
    changes = transitions = 0
    rss_first: Optional[float] = None
    with _stop_on_sigterm():
        try:
            while duration is None or time.monotonic() - t_start < duration:
                t0 = time.monotonic()
                model.refresh()
                look = time.monotonic() - t0
                probes.add(look)
                timed = bool(verify_every) and last_snap is not None and \
                    t0 - last_verify >= (verify_every or 0)
                if last_snap is not None and not model.pending and settled_last and not timed:
                    time.sleep(max(interval, LOOK_SHARE * look))
                    continue
                why = model.pending.reasons() or (["start"] if last_snap is None else
                                                  ["verify"] if timed else ["unsettled"])
                if verify_every is not None and last_snap is not None and (timed or
                                                                           not verify_every):
                    diffs = model.verify()
                    verified += 1
                    last_verify = time.monotonic()
                    if diffs:
                        ev = {"event": "drift", "time": round(last_verify - t_start, 3),
                              "parts": diffs}
                        drifts.add(ev)
                        emit(ev)
                # The blocks as the check read them (it reads the map again after
                # the rules and retries while it moves): no read of our own.
                report = check(prog, rules=rules, model=model,
                               vmemmap_page_type=vmemmap_page_type)
                snap = {b["block"]: str(b["state"]) for b in report.blocks}
                moved = _transitions(last_snap, snap)
                now = time.monotonic()
                latencies.add(now - t0)
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
                            violations.add(ev)
                            emit(ev)
                    for k, v in confirmed.items():
                        if k not in found:
                            emit(dict(v, event="resolved", time=when))
                    for k, (seen, v) in transient.items():
                        if k not in found:
                            ev = dict(v, event="transient", time=when,
                                      lasted=round(now - seen, 3))
                            transients.add(ev)
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
                emit({"event": "change", "time": when, "seqnum": model.epoch.seqnum,
                      "why": why,
                      "transitions": moved, "verdict": verdict,
                      "errors": sum(1 for v in report.violations if v.severity == "error"),
                      "recheck_seconds": round(now - t0, 3)})
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
        "rechecks": latencies.n,
        "recheck_seconds_mean": latencies.mean(),
        "recheck_seconds_max": round(latencies.max, 3) if latencies.n else None,
        "violations": violations, "standing": list(confirmed.values()),
        "transients": transients,
        "cpu_seconds": round(self_cpu + children.ru_utime + children.ru_stime, 2),
        "rss_mib_first": rss_first, "rss_mib_last": _rss_mib(),
        # The model: how often it was refreshed (one look per tick), and how
        # often each part had to be derived again.
        "probes": probes.n,
        "probe_seconds_mean": probes.mean(4),
        "probe_seconds_max": round(probes.max, 4) if probes.n else None,
        "memory_map_reads": model.memory_map_reads, "backing_walks": model.backing_walks,
        "verifies": verified, "drifts": drifts,
        # More than KEEP of a kind: the lists hold the first KEEP.
        "events_total": {"violations": violations.total, "transients": transients.total,
                         "drifts": drifts.total},
    }
    emit(summary)
    return summary


def _line(e: Dict[str, Any]) -> str:
    t = f"{e.get('time', 0):9.3f}s"
    kind = e["event"]
    if kind == "change":
        moved = ", ".join(f"block {m['block']} {m['from']}->{m['to']}" for m in e["transitions"])
        return (f"{t}  seq {e['seqnum']}  {moved or '(no block changed)'}  "
                f"{e['verdict']}  ({e['recheck_seconds']:.2f} s; {', '.join(e['why'])})")
    if kind == "drift":
        return (f"{t}  DRIFT: the refreshed model differed from a fresh one in "
                f"{', '.join(e['parts'])} (using the fresh one)")
    if kind in ("violation", "resolved", "transient"):
        extra = f" (lasted {e['lasted']:.2f} s)" if kind == "transient" else ""
        return (f"{t}  {kind.upper()}{extra}: {e['severity']} {e['rule']} pfns "
                f"{e['pfn_start']:#x}-{e['pfn_end'] - 1:#x} block {e.get('block')}: "
                f"expected {e['expected']}, found {e['found']}")
    return (f"summary: {e['seconds']:.0f} s, {e['changes']} changes, {e['transitions']} block "
            f"transitions ({e['transitions_per_minute']}/min), {e['rechecks']} re-checks "
            f"(mean {e['recheck_seconds_mean']} s, max {e['recheck_seconds_max']} s), "
            f"{e['events_total']['violations']} violation(s), {len(e['standing'])} standing, "
            f"{e['events_total']['transients']} transient(s); {e['cpu_seconds']} s CPU; RSS "
            f"{e['rss_mib_first']} -> {e['rss_mib_last']} MiB; {e['probes']} looks "
            f"(mean {e['probe_seconds_mean']} s), memory map read {e['memory_map_reads']}x, "
            f"vmemmap walked {e['backing_walks']}x, {e['verifies']} verif"
            f"{'y' if e['verifies'] == 1 else 'ies'}, {e['events_total']['drifts']} drift(s)")


def watch_main(prog: Program, fmt: str, interval: float, duration: Optional[float],
               out: Optional[TextIO] = None, verify_every: Optional[float] = 600.0,
               vmemmap_page_type: Optional[int] = None) -> int:
    """The CLI: lines or JSON lines on ``out``; exit 1 if a violation stood."""
    stream = out or sys.stdout

    def emit(e: Dict[str, Any]) -> None:
        stream.write((json.dumps(e) if fmt == "json" else _line(e)) + "\n")
        stream.flush()

    summary = watch(prog, interval, duration, emit, verify_every=verify_every,
                    vmemmap_page_type=vmemmap_page_type)
    return 1 if any(v["severity"] == "error" for v in summary["violations"]) else 0
