"""
Triage
------

Check many dumps in parallel: ``drgn-vmemmap triage PATH... [-j N]
[--debug-directory DIR]... [--map DUMP=VMLINUX]...``.

1. *Find the dumps*: files given by name, and under each directory (walked
   recursively, hidden directories skipped) the files named like dumps
   (``vmcore*``, ``*.vmcore``, ``dump*``, ``*.core``, and those names with
   ``.xz``, decompressed once into the cache; not text, JSON, source or
   other compressed files) or starting like one (kdump-compressed ``KDUMP   `` /
   ``DISKDUMP``, makedumpfile's flattened format, or an ELF core with a
   ``VMCOREINFO`` note).
2. *Pair each with a vmlinux*, from its ``VMCOREINFO`` (``OSRELEASE=``,
   ``BUILD-ID=``, read from the file without debug info): an explicit
   ``--map`` first; then the vmlinux whose GNU build ID equals the dump's,
   among ``vmlinux``, ``vmlinux-*`` (and their ``.xz``) under the
   ``--debug-directory`` directories and beside the dump, and
   ``.build-id/xx/yyyy.debug`` in the debug directories; then, for a dump
   without a build ID (or candidates whose build ID cannot be read), by
   release: a ``release`` file beside the vmlinux (as in
   ``vmcores/kernels/KEY/``), a ``vmlinux-RELEASE`` name or a directory
   named RELEASE; else drgn's default debug-info search.
3. *Check them* in a pool of ``-j`` worker processes (each runs
   :func:`analyse`: :func:`~drgn_vmemmap.target.open_target` and
   :func:`~drgn_vmemmap.check.check`), printing one JSON line per dump on
   stdout as each finishes: the check document plus ``path``, ``status``
   (``ok``, ``violations``, ``damaged``, ``error``), ``exit_status``, ``vmlinux``,
   ``pairing`` and ``seconds``; a dump that cannot be analysed gives
   ``{"path", "status": "error", "error": one line, "exit_status": 2, ...}``
   and does not stop the others.  A worker process that dies (a crash in
   drgn) is detected and the dumps it may have been working on are retried
   one at a time, so that only the guilty dump is reported as an error.

``--scheduler ADDRESS`` runs the dumps as tasks of a Dask cluster instead of
the pool (``local:N``, or a scheduler's ``tcp://HOST:PORT``), each under a
``--timeout``: see :mod:`~drgn_vmemmap.fleet`.  ``--resume RESULTS.jsonl``
(with or without a cluster) skips the dumps that file already has a line for
(matched on ``path``, resolved to a real absolute path: run from the same
directory, or give absolute paths) and appends each new line to it as it
arrives, flushed; an incomplete last line (a run killed while writing) is
dropped first and its dump run again.  Its earlier lines for the dumps
found count in the summary table and the exit status, not on stdout.

A progress bar goes to stderr when it is a terminal, and a summary table to
stderr at the end.  Exit status: 2 if any dump could not be analysed (or a
directory given holds none: one warning line each; if no dump is found at
all, one error line and nothing else), else 1 if any has an error-severity
violation, else 0.  The output is JSON lines whatever ``--format`` says.
"""

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

from .dumpinfo import DumpInfo, dump_info, elf_build_id, find_dumps
from .pairing import VmlinuxIndex, pair_vmlinux
from .progress import ProgressBar
from .target import TargetError

__all__ = (
    "DumpInfo",
    "analyse",
    "dump_info",
    "elf_build_id",
    "find_dumps",
    "pair_vmlinux",
    "triage",
    "triage_main",
)


# --- the workers ---------------------------------------------------------------------


def analyse(job: Dict[str, Any]) -> Dict[str, Any]:
    """
    Check one dump (in a worker process): ``job`` has ``path``, ``vmlinux``
    (or None for drgn's default search), ``pairing``, ``release`` and
    ``vmemmap_page_type``.  Returns the JSON line's document; never raises
    for a dump that cannot be analysed.
    """
    from .check import check
    from .errors import describe
    from .report import exit_status
    from .target import open_target

    t0 = time.monotonic()
    head = {"path": job["path"]}
    try:
        prog = open_target(vmcore=job["path"],
                           symbols=[job["vmlinux"]] if job.get("vmlinux") else [])
        report = check(prog, vmemmap_page_type=job.get("vmemmap_page_type"))
        status = exit_status(report)
        # Damage to the dump (memmap that is not struct pages) is the dump's
        # fault, not the kernel's: a status of its own, exit status 0 unless
        # the rest of the dump has violations (which then win).
        head.update(status="violations" if status else "damaged" if report.damaged else "ok",
                    exit_status=status)
        body = report.to_json()
    except Exception as e:  # one line, as the CLI would print it
        head.update(status="error", exit_status=2, error=describe(e))
        body = {"release": job.get("release")}
    head.update(vmlinux=job.get("vmlinux"), pairing=job.get("pairing"),
                seconds=round(time.monotonic() - t0, 3))
    head.update(body)
    return head


def _crashed(job: Dict[str, Any], why: str) -> Dict[str, Any]:
    return {"path": job["path"], "status": "error", "exit_status": 2, "error": why,
            "vmlinux": job.get("vmlinux"), "pairing": job.get("pairing"), "seconds": None,
            "release": job.get("release")}


def _run_pool(jobs: List[Dict[str, Any]], workers: int,
              emit: Callable[[Dict[str, Any]], None]) -> List[Dict[str, Any]]:
    """Run ``jobs``; emit each result; return the jobs lost to a broken pool."""
    ctx = multiprocessing.get_context("spawn")  # drgn's OpenMP threads and fork don't mix
    # The dumps already run in parallel: each check scans in one process
    # (the workers inherit the environment).
    os.environ.setdefault("DRGN_VMEMMAP_JOBS", "1")
    pending: Dict[Future[Dict[str, Any]], Dict[str, Any]] = {}
    lost: List[Dict[str, Any]] = []
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        for job in jobs:
            try:
                pending[ex.submit(analyse, job)] = job
            except BrokenProcessPool:
                lost.append(job)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                job = pending.pop(fut)
                try:
                    emit(fut.result())
                except BrokenProcessPool:
                    lost.append(job)
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    return lost


def triage(dumps: Sequence[str], workers: int, debug_directories: Sequence[str] = (),
           explicit: Optional[Dict[str, str]] = None,
           vmemmap_page_type: Optional[int] = None,
           emit: Optional[Callable[[Dict[str, Any]], None]] = None) -> List[Dict[str, Any]]:
    """
    Pair and check ``dumps`` with ``workers`` processes; call ``emit`` with
    each result as it arrives; return all results (in completion order).
    """
    from .target import decompressed

    index = VmlinuxIndex(debug_directories)
    jobs = []
    decompressed_ok: Dict[str, Optional[str]] = {}
    for dump in dumps:
        info = dump_info(dump)
        pairing = pair_vmlinux(dump, info, index, explicit or {})
        vmlinux = pairing.vmlinux
        if vmlinux and vmlinux.endswith(".xz") and os.path.isfile(vmlinux):
            # Once here rather than in several workers at the same time.
            if vmlinux not in decompressed_ok:
                try:
                    decompressed_ok[vmlinux] = decompressed(vmlinux)
                except (OSError, TargetError):
                    decompressed_ok[vmlinux] = None  # the worker reports it
        jobs.append({"path": dump, "vmlinux": vmlinux, "pairing": pairing.how,
                     "release": info.release, "vmemmap_page_type": vmemmap_page_type})
    results: List[Dict[str, Any]] = []

    def collect(doc: Dict[str, Any]) -> None:
        results.append(doc)
        if emit is not None:
            emit(doc)

    lost = _run_pool(jobs, max(1, min(workers, len(jobs))), collect)
    # A worker died (a crash in drgn?): which dump killed it is unknown, so
    # run the dumps that did not finish one at a time, each in a fresh pool.
    for job in lost:
        again = _run_pool([job], 1, collect)
        for j in again:
            collect(_crashed(j, "the analysis process died (a crash in drgn or the "
                                "checker); run 'drgn-vmemmap -c' on this dump alone"))
    return results


# --- the command -----------------------------------------------------------------------


def _counts(doc: Dict[str, Any]) -> Tuple[int, int]:
    violations = doc.get("violations") or []
    errors = sum(1 for v in violations if v.get("severity") == "error")
    return errors, len(violations) - errors


def summary_table(results: Sequence[Dict[str, Any]]) -> str:
    """The summary printed on stderr: one row per dump, in path order."""
    from tabulate import tabulate

    rows = []
    failures = []
    for doc in sorted(results, key=lambda d: d["path"]):
        release = (doc.get("target") or {}).get("release") or doc.get("release") or "?"
        if doc.get("status") == "error":
            errors = warnings = None
            error = str(doc.get("error"))
            if not error.startswith(doc["path"] + ":"):
                error = f"{doc['path']}: {error}"
            failures.append("  " + error)
        else:
            errors, warnings = _counts(doc)
        rows.append([doc["path"], release, doc.get("status"), errors, warnings,
                     doc.get("seconds")])
    n_err = sum(1 for d in results if d.get("status") == "error")
    n_bad = sum(1 for d in results if d.get("status") == "violations")
    n_dmg = sum(1 for d in results if d.get("status") == "damaged")
    table = tabulate(rows, headers=["path", "release", "status", "errors", "warnings",
                                    "seconds"], floatfmt=".2f", missingval="-")
    text = (f"{table}\n\n{len(results)} dump(s): "
            f"{len(results) - n_err - n_bad - n_dmg} consistent, {n_bad} with violations, "
            + (f"{n_dmg} damaged (memmap overwritten before the dump: see each dump's "
               "'damaged'), " if n_dmg else "")
            + f"{n_err} not analysed")
    if failures:
        text += ":\n" + "\n".join(failures)
    return text


def _parse_maps(maps: Sequence[str]) -> Dict[str, str]:
    out = {}
    for m in maps:
        dump, sep, vmlinux = m.partition("=")
        if not sep or not dump or not vmlinux:
            raise TargetError(f"--map {m!r}: expected DUMP=VMLINUX")
        out[dump] = vmlinux
    return out


def _resume(path: str) -> Tuple[Dict[str, Dict[str, Any]], IO[str]]:
    """
    ``({real path: document}, file open for appending)`` of a results file
    (created if missing), after dropping an incomplete last line; each
    document cut down to what :func:`summary_table` and the exit status read.
    """
    done: Dict[str, Dict[str, Any]] = {}
    try:
        with open(path, "rb") as fp:
            data = fp.read()
    except FileNotFoundError:
        data = b""
    except OSError as e:
        raise TargetError(f"--resume {path}: {e.strerror}") from None
    complete = data.rfind(b"\n") + 1
    for n, line in enumerate(data[:complete].splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("path"), str):
            raise TargetError(f"--resume {path}: line {n} is not a triage result "
                              "(a JSON object with a path)")
        # What the summary table and the exit status read, no more: the
        # file may hold many thousands of documents.
        done[os.path.realpath(doc["path"])] = {
            "path": doc["path"], "status": doc.get("status"),
            "exit_status": doc.get("exit_status", 2), "error": doc.get("error"),
            "release": (doc.get("target") or {}).get("release") or doc.get("release"),
            "seconds": doc.get("seconds"),
            "violations": [{"severity": v.get("severity")} for v in doc.get("violations") or []
                           if isinstance(v, dict)]}
    try:
        out = open(path, "a", encoding="utf-8")
        if complete < len(data):
            print(f"drgn-vmemmap: warning: --resume {path}: dropped an incomplete last line",
                  file=sys.stderr)
            out.truncate(complete)
    except OSError as e:
        raise TargetError(f"--resume {path}: {e.strerror}") from None
    return done, out


def triage_main(args: argparse.Namespace) -> int:
    """The ``triage`` subcommand (``args`` from :func:`drgn_vmemmap.cli.build_parser`)."""
    explicit = _parse_maps(getattr(args, "map", None) or [])
    for d in getattr(args, "debug_directory", None) or []:
        if not os.path.isdir(d):
            raise TargetError(f"--debug-directory {d}: not a directory")
    dumps, empty = find_dumps(args.paths)
    if not dumps:
        raise TargetError(f"{', '.join(empty)}: no core dumps found (looked for vmcore*, "
                          "*.vmcore, dump*, *.core and kdump/ELF core files)")
    for d in empty:
        print(f"drgn-vmemmap: warning: {d}: no core dumps found", file=sys.stderr)
    jobs = getattr(args, "jobs", None) or os.cpu_count() or 1
    if jobs < 1:
        raise TargetError(f"-j {jobs}: need at least one worker")
    scheduler = getattr(args, "scheduler", None)
    timeout = getattr(args, "timeout", None)
    if timeout is not None and (scheduler is None or not timeout > 0):
        raise TargetError(f"--timeout {timeout:g}: " + (
            "seconds > 0 expected" if scheduler else
            "needs --scheduler (local:N for this machine's cores)"))
    if scheduler is not None:
        from .fleet import _import_distributed, local_workers

        _import_distributed()
        local_workers(scheduler)
    previous: Dict[str, Dict[str, Any]] = {}
    out: Optional[IO[str]] = None
    if getattr(args, "resume", None):
        previous, out = _resume(args.resume)
        found = {os.path.realpath(d) for d in dumps}
        previous = {k: v for k, v in previous.items() if k in found}
        dumps = [d for d in dumps if os.path.realpath(d) not in previous]
    bar = ProgressBar("triage", "dumps", interval=0)
    done = [0, 0]  # dumps finished, of which not analysed

    def emit(doc: Dict[str, Any]) -> None:
        bar.clear()  # keep the bar off the lines of a shared tty
        line = json.dumps(doc)
        if out is not None:
            out.write(line + "\n")
            out.flush()
        print(line, flush=True)
        done[0] += 1
        done[1] += doc.get("status") == "error"
        bar(done[0], len(dumps), f", {done[1]} not analysed" if done[1] else "")

    debug_directories = getattr(args, "debug_directory", None) or []
    vmemmap_page_type = getattr(args, "vmemmap_page_type", None)
    try:
        if not dumps:
            results = []
        elif scheduler is not None:
            from .fleet import fleet_triage

            results = fleet_triage(dumps, scheduler, timeout, debug_directories, explicit,
                                   vmemmap_page_type, emit)
        else:
            results = triage(dumps, jobs, debug_directories, explicit, vmemmap_page_type,
                             emit)
    finally:
        if out is not None:
            out.close()
    results = list(previous.values()) + results
    print(summary_table(results), file=sys.stderr)
    if getattr(args, "html", None):
        from .maphtml import triage_html

        index = triage_html(results, args.html)
        print(f"drgn-vmemmap: wrote {index}", file=sys.stderr)
    statuses = [d.get("exit_status", 2) for d in results]
    if empty or 2 in statuses:
        return 2
    return 1 if 1 in statuses else 0
