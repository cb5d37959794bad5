"""
Fleet
-----

``drgn-vmemmap triage --scheduler ADDRESS [--timeout SECONDS] PATH...``: the
dumps of a triage (:mod:`~drgn_vmemmap.triage`) checked as tasks on the
workers of a Dask cluster (the ``distributed`` package, the ``dask`` extra),
printed as local triage prints them: one JSON line per dump as each result
arrives (:func:`distributed.as_completed`), the same progress bar, summary
table and exit status.  ``ADDRESS`` is a scheduler's (``tcp://HOST:8786``),
or ``local:N`` for a :class:`distributed.LocalCluster` of N worker processes
of one thread each on this machine.

*A task ships paths, never data*: one dump's path as given, the client's
working directory (relative paths are taken from there), the debug
directories, ``--map`` and ``--vmemmap-page-type``.  The worker reads the
files itself, so the dumps and debug directories must be at the same paths
on every worker (shared storage).  It pairs the dump with its vmlinux
(:mod:`~drgn_vmemmap.pairing`) and checks it (:func:`~drgn_vmemmap.triage.analyse`):
the code and the document are local triage's.

*Each dump runs in an analysis process, not in the worker*: a child of the
worker (``python -c 'from drgn_vmemmap.fleet import serve; serve()'``, one
per worker thread, kept from one dump to the next) that reads jobs on its
stdin and answers on its stdout.  Why not in the worker, leaving failures
to Dask: a dump that crashes drgn would kill the worker, and Dask reruns a
task whose worker died, on another worker, which it kills too, until the
task has killed ``allowed-failures`` + 1 workers (Dask's default: 4); every
other task queued on those workers is counted as suspect each time, so
innocent dumps can be failed with it.  A dump that hangs drgn would hold a
worker thread for ever: Dask has no task time-out.  In a child, a crash is
the child's death, seen by the worker at once, and a hang is killed
(SIGKILL) at ``--timeout`` (default :data:`DEFAULT_TIMEOUT` seconds, for
pairing and check together); either way that dump alone gets an error
record (``status: "error"``, ``exit_status`` 2, a one-line ``error``), the
worker starts a fresh child for its next dump, and Dask never sees a
failure.  An analysis process also exits when its worker goes away (end of
its input, or its parent process gone).

*Dask's retries are left to workers lost to other causes* (a host down, the
OOM killer, a worker killed by hand): the scheduler reruns the tasks that
were running or queued on the dead worker elsewhere; each future still has
one result, and the client prints each dump once.  A cluster of ours
(``local:N``) is started with ``allowed-failures`` 1: a task is rerun after
one worker death, and a second makes it :class:`distributed.KilledWorker`,
which becomes that dump's error record rather than ending the run; and
``worker-saturation`` 1.0, so that a worker holds only the tasks it runs
and its death counts against those only (a ``tcp://`` scheduler keeps its
own settings: with Dask's default saturation a task merely queued on a
dying worker is counted too).  A failure that says nothing about the dump
(a worker without drgn_vmemmap, an analysis process that cannot start, the
scheduler lost) ends the run with one error line; what arrived is kept,
and ``--resume`` (:func:`~drgn_vmemmap.triage.triage_main`) goes on from
there.  (A worker told to stop, SIGTERM, first finishes the dump it runs,
as Dask does for any task: up to ``--timeout`` for a hung one.)

*Pairing at scale*: an analysis process keeps the
:class:`~drgn_vmemmap.pairing.VmlinuxIndex` of the run (keyed by working
directory, debug directories and a token of the run, so that a new run sees
new vmlinux files): the debug directories are walked once per worker thread
and run, not once per dump, and the build IDs of their vmlinux files come
from the cache on disk that :mod:`~drgn_vmemmap.pairing` keeps between runs.

Test hook, for tests only: an analysis process whose environment has
``DRGN_VMEMMAP_TEST_HANG=TEXT`` hangs (sleeps for ever) after pairing any
dump whose path contains ``TEXT``, as drgn hanging would.
"""

import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .dumpinfo import dump_info
from .errors import describe
from .pairing import VmlinuxIndex, flush_build_ids, pair_vmlinux
from .target import TargetError
from .triage import _crashed, analyse

__all__ = ("DEFAULT_TIMEOUT", "fleet_triage", "run_dump", "serve")

#: Seconds a dump may take (pairing and check) before it is given up.
DEFAULT_TIMEOUT = 600.0
#: Seconds an analysis process may take to start (import drgn_vmemmap).
_START_TIMEOUT = 120.0
#: Seconds to wait for a ``tcp://`` scheduler to answer, then for a worker.
_CONNECT_TIMEOUT = 15.0
_WORKER_TIMEOUT = 120.0
#: ``distributed.scheduler.allowed-failures`` of a ``local:N`` cluster.
_LOCAL_ALLOWED_FAILURES = 1
_SERVE = "from drgn_vmemmap.fleet import serve; serve()"


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


# --- the client ---------------------------------------------------------------------


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise TargetError("--scheduler needs Dask's 'distributed' package: "
                          "pip install 'drgn-vmemmap[dask]'") from None
    return distributed


def local_workers(scheduler: str) -> Optional[int]:
    """N of ``local:N``; None for a scheduler's address; TargetError if malformed."""
    if not scheduler.startswith("local:"):
        return None
    n = scheduler[len("local:"):]
    if not n.isdigit() or int(n) < 1:
        raise TargetError(f"--scheduler {scheduler}: expected local:N with N >= 1 workers, "
                          "or a scheduler's address (tcp://HOST:PORT)")
    return int(n)


@contextmanager
def _client(scheduler: str) -> Iterator[Any]:
    """A :class:`distributed.Client` of ``scheduler``, with a worker at least."""
    distributed = _import_distributed()
    import dask

    n = local_workers(scheduler)
    if n is not None:
        # One task at a time per worker thread (worker-saturation 1.0, not
        # Dask's 1.1): a worker that dies then counts against its running
        # task only, not against one merely queued there.
        with dask.config.set({"distributed.scheduler.allowed-failures":
                              _LOCAL_ALLOWED_FAILURES,
                              "distributed.scheduler.worker-saturation": 1.0}):
            cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=logging.ERROR)
        try:
            with distributed.Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = distributed.Client(scheduler, timeout=_CONNECT_TIMEOUT)
    except (OSError, ValueError, TypeError) as e:
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TargetError(f"--scheduler {scheduler}: cannot connect ({text})") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=_WORKER_TIMEOUT)
        except (TimeoutError, distributed.TimeoutError):
            raise TargetError(f"--scheduler {scheduler}: no worker joined in "
                              f"{_WORKER_TIMEOUT:g} s") from None
        yield client


def _quiet() -> None:
    """No more of Dask's logs: closing a client whose scheduler is gone logs
    tracebacks, and the run is ending with one error line of its own."""
    for name in ["distributed", *logging.root.manager.loggerDict]:
        if name.split(".")[0] == "distributed":
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def fleet_triage(dumps: Sequence[str], scheduler: str, timeout: Optional[float] = None,
                 debug_directories: Sequence[str] = (),
                 explicit: Optional[Dict[str, str]] = None,
                 vmemmap_page_type: Optional[int] = None,
                 emit: Optional[Callable[[Dict[str, Any]], None]] = None
                 ) -> List[Dict[str, Any]]:
    """
    Pair and check ``dumps`` on the workers of ``scheduler`` (see the module
    documentation); call ``emit`` with each result as it arrives, once per
    dump; return all results (in completion order).
    """
    distributed = _import_distributed()
    local_workers(scheduler)  # a malformed local:N before anything starts
    run = uuid.uuid4().hex[:12]
    root = os.getcwd()
    jobs = [{"path": dump, "root": root, "debug_directories": list(debug_directories),
             "explicit": dict(explicit or {}), "vmemmap_page_type": vmemmap_page_type,
             "run": run, "timeout": DEFAULT_TIMEOUT if timeout is None else timeout}
            for dump in dumps]
    results: List[Dict[str, Any]] = []
    with _client(scheduler) as client:
        keys = [f"drgn-vmemmap-triage-{run}-{i}" for i in range(len(jobs))]
        index = {k: i for i, k in enumerate(keys)}
        futures = client.map(run_dump, jobs, key=keys, pure=False)
        done = set()
        for fut in distributed.as_completed(futures):
            i = index[fut.key]
            try:
                doc = fut.result()
            except distributed.KilledWorker:
                doc = _crashed({"path": jobs[i]["path"]},
                               "the workers running it died (more than allowed-failures "
                               "times); run 'drgn-vmemmap -c' on this dump alone")
            except distributed.CancelledError:
                _quiet()
                client.cancel(futures)
                raise TargetError(f"--scheduler {scheduler}: the tasks were cancelled (the "
                                  "scheduler lost?); --resume goes on from what "
                                  "arrived") from None
            except Exception as e:
                _quiet()
                client.cancel(futures)
                text = (str(e).strip().splitlines() or [""])[0]
                raise TargetError(f"--scheduler {scheduler}: a task failed on a worker "
                                  f"({type(e).__name__}: {text}); --resume goes on from "
                                  "what arrived") from None
            fut.release()
            if i in done:  # never twice, whatever happened to its workers
                continue
            done.add(i)
            results.append(doc)
            if emit is not None:
                emit(doc)
    return results
