"""
Fleet worker
------------

The worker side of :mod:`~drgn_vmemmap.fleet`: :func:`run_dump`, the task a
Dask worker runs for one dump, and the analysis process it keeps
(:func:`serve`: pair and check one dump a line, in a process of its own so
that a hang or a crash in drgn loses one dump, never the worker).  See
:mod:`~drgn_vmemmap.fleet` for the design.
"""

import json
import os
import selectors
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

from .dumpinfo import dump_info
from .errors import describe
from .pairing import VmlinuxIndex, flush_build_ids, pair_vmlinux
from .triage import _crashed, analyse

__all__ = ("run_dump", "serve")

#: Seconds an analysis process may take to start (import drgn_vmemmap).
_START_TIMEOUT = 120.0
_SERVE = "from drgn_vmemmap.fleetworker import serve; serve()"

# --- the analysis process -----------------------------------------------------------


#: The analysis process's indexes, newest last: ``((root, dirs, run), index)``.
_indexes: List[Tuple[Tuple[str, Tuple[str, ...], str], VmlinuxIndex]] = []


def _index(root: str, dirs: Sequence[str], run: str) -> VmlinuxIndex:
    """The :class:`~drgn_vmemmap.pairing.VmlinuxIndex` of a run (built once)."""
    key = (root, tuple(dirs), run)
    for k, index in _indexes:
        if k == key:
            return index
    index = VmlinuxIndex(list(dirs))
    _indexes.append((key, index))
    del _indexes[:-2]  # a process serves one run at a time
    return index


def _pair_and_check(job: Dict[str, Any],
                    send: Callable[[str, Dict[str, Any]], None]) -> Dict[str, Any]:
    """One job in the analysis process: pair, say so (``paired``), check."""
    path = job["path"]
    try:
        os.chdir(job["root"])
    except OSError:
        os.chdir("/")
        if not os.path.isabs(path):
            return _crashed({"path": path}, f"{path}: a relative path, and the client's "
                            f"working directory {job['root']} is not on this worker "
                            "(give absolute paths on shared storage)")
    try:
        info = dump_info(path)
        index = _index(job["root"], job["debug_directories"], job["run"])
        pairing = pair_vmlinux(path, info, index, job["explicit"])
    except Exception as e:
        return _crashed({"path": path}, describe(e))
    task = {"path": path, "vmlinux": pairing.vmlinux, "pairing": pairing.how,
            "release": info.release, "vmemmap_page_type": job["vmemmap_page_type"]}
    send("paired", task)
    hang = os.environ.get("DRGN_VMEMMAP_TEST_HANG")
    if hang and hang in path:  # tests only (see the module documentation)
        while True:
            time.sleep(3600)
    return analyse(task)


def _watch_parent(parent: int) -> None:
    """End the process once its worker is gone (killed: no end of input)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def serve() -> None:
    """
    The analysis process of a worker: one job (JSON) a line on stdin; on
    stdout ``{"ready": ...}`` once, then for each job ``{"paired": ...}``
    (when it has one) and ``{"result": document}``, one line each.  Anything
    else written to stdout goes to stderr.  Returns at the end of stdin.
    """
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()

    def send(kind: str, doc: Dict[str, Any]) -> None:
        proto.write(json.dumps({kind: doc}) + "\n")
        proto.flush()

    from . import check  # noqa: F401 (imported before the first dump's clock)

    try:
        send("ready", {"pid": os.getpid()})
        for line in sys.stdin:
            send("result", _pair_and_check(json.loads(line), send))
        flush_build_ids()
    except (BrokenPipeError, KeyboardInterrupt):  # the worker went away
        os._exit(1)


# --- in the worker ------------------------------------------------------------------


class _Gone(Exception):
    """The analysis process died, or did not answer in time."""


class _Analyser:
    """One analysis process of this worker's, and its output not yet parsed."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env.setdefault("DRGN_VMEMMAP_JOBS", "1")  # the dumps already run in parallel
        # A session of its own: a Ctrl-C meant for a local cluster's client
        # does not reach it (it ends with its worker).
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, start_new_session=True)
        self.buf = b""
        try:
            self.message(time.monotonic() + _START_TIMEOUT)
        except _Gone as e:
            self.kill()
            raise RuntimeError(f"the analysis process did not start ({e}): "
                               f"is drgn_vmemmap installed for {sys.executable}?") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()

    def send(self, job: Dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(job).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as e:  # died while idle
            raise _Gone("died") from e

    def message(self, deadline: float) -> Dict[str, Any]:
        """The next message; :class:`_Gone` if it died or the deadline passed."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Gone("timed out")
                if sel.select(left):
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        raise _Gone("died")
                    self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        doc: Dict[str, Any] = json.loads(line)
        return doc


_idle: List[_Analyser] = []
_idle_lock = threading.Lock()


def _take() -> _Analyser:
    with _idle_lock:
        while _idle:
            a = _idle.pop()
            if a.alive():
                return a
            a.kill()
    return _Analyser()


def run_dump(job: Dict[str, Any]) -> Dict[str, Any]:
    """
    The task (in a worker): pair and check one dump in an analysis process
    of this worker's; return local triage's document, or an error record if
    the analysis died or took more than ``job["timeout"]`` seconds.
    Raises only for a failure that is not the dump's (no analysis process).
    """
    a = _take()
    paired: Dict[str, Any] = {"path": job["path"]}
    try:
        try:
            a.send(job)
        except _Gone:  # died while idle (not this dump's doing): a fresh one
            a.kill()
            a = _Analyser()
            a.send(job)
        deadline = time.monotonic() + job["timeout"]
        while True:
            msg = a.message(deadline)
            if "paired" in msg:
                paired = msg["paired"]
            elif "result" in msg:
                result: Dict[str, Any] = msg["result"]
                with _idle_lock:
                    _idle.append(a)
                return result
    except _Gone as e:
        a.kill()
        if str(e) == "timed out":
            why = (f"timed out after {job['timeout']:g} s and was killed (a hang in drgn or "
                   "the checker, or storage too slow?); run 'drgn-vmemmap -c' on this dump "
                   "alone")
        else:
            why = ("the analysis process died (a crash in drgn or the checker); run "
                   "'drgn-vmemmap -c' on this dump alone")
        return _crashed(paired, why)
    except BaseException:
        a.kill()
        raise
