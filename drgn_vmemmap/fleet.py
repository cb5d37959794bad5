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
worker (``python -c 'from drgn_vmemmap.fleetworker import serve; serve()'``, one
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

import logging
import os
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from .fleetworker import run_dump, serve
from .target import TargetError
from .triage import _crashed

__all__ = ("DEFAULT_TIMEOUT", "fleet_triage", "run_dump", "serve")

#: Seconds a dump may take (pairing and check) before it is given up.
DEFAULT_TIMEOUT = 600.0
#: Seconds to wait for a ``tcp://`` scheduler to answer, then for a worker.
_CONNECT_TIMEOUT = 15.0
_WORKER_TIMEOUT = 120.0
#: ``distributed.scheduler.allowed-failures`` of a ``local:N`` cluster.
_LOCAL_ALLOWED_FAILURES = 1


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
