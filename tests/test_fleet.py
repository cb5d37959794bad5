"""``drgn-vmemmap triage --scheduler``: the dumps as tasks of a Dask cluster.

A ``local:2`` cluster and a separately started ``dask scheduler`` with two
``dask worker`` processes (all on 127.0.0.1) must print what local triage
prints; a worker killed mid-run, a dump that hangs its analysis and a run
killed half-way must each leave exactly one result per dump.  Pairing
builds its index once per run in each analysis process and keeps build IDs
on disk between runs.
"""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")  # a dependency of distributed

from conftest import FIXTURES, KERNELS, REPO  # noqa: E402

#: Small fixtures of three kernels, .xz and plain, one with violations;
#: relative to the repository, where the CLI runs (relative paths travel).
DUMPS = ["vmcores/fixtures/6.12-hotplug-basic.vmcore.xz", "vmcores/fixtures/6.12-faults.vmcore",
         "vmcores/fixtures/7.2-hotplug-basic.vmcore.xz",
         "vmcores/fixtures/6.1-hotplug-basic.vmcore.xz"]
DEBUG = ["--debug-directory", "vmcores/kernels"]
#: A real kdump (makedumpfile) that checks clean, not compressed with xz:
#: hard links of it are separate dumps that need no decompression each.
PLAIN = FIXTURES / "6.12-kdump.vmcore"


def triage(*args, env=None, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "drgn_vmemmap.cli", "triage", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=dict(os.environ, **(env or {})))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, [json.loads(line) for line in proc.stdout.splitlines()]


def untimed(doc):
    """``doc`` without its timings (``seconds`` at any depth)."""
    if isinstance(doc, dict):
        return {k: untimed(v) for k, v in doc.items() if k != "seconds"}
    if isinstance(doc, list):
        return [untimed(v) for v in doc]
    return doc


def by_path(lines):
    out = {d["path"]: untimed(d) for d in lines}
    assert len(out) == len(lines), "a dump was reported twice"
    return out


def copies(directory, n, prefix="copy"):
    """``n`` hard links (else copies) of :data:`PLAIN` in ``directory``."""
    directory.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        path = directory / f"{prefix}-{i:02d}.vmcore"
        if not path.exists():
            try:
                os.link(PLAIN, path)
            except OSError:
                path.write_bytes(PLAIN.read_bytes())
        out.append(path)
    return out


def lines_of(path):
    """The complete lines of a results file (a killed run may leave half a one)."""
    text = Path(path).read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def analysers(pid):
    """The analysis processes (fleetworker.serve) below process ``pid``."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in children:
        try:
            if "fleetworker import serve" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def gone(procs, timeout):
    """Wait until ``procs`` have all exited (zombies count as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


@contextmanager
def dask_cluster(tmp, worker_envs):
    """A ``dask scheduler`` and one ``dask worker`` per environment in
    ``worker_envs`` (added to ours), all on 127.0.0.1 with no dashboard on
    another address; yields (scheduler address, worker Popens)."""
    tmp.mkdir(exist_ok=True)
    sched_file = tmp / "scheduler.json"
    loopback = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    procs = []
    logs = []

    def start(argv, env=None):
        log = open(tmp / f"dask-{len(procs)}.log", "w")
        logs.append(log)
        p = subprocess.Popen([sys.executable, "-m", "dask", *argv, *loopback], cwd=tmp,
                             stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, **(env or {})))
        procs.append(p)
        return p

    try:
        start(["scheduler", "--port", "0", "--scheduler-file", str(sched_file)])
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline, (tmp / "dask-0.log").read_text()
            time.sleep(0.1)
        time.sleep(0.2)  # written whole
        address = json.loads(sched_file.read_text())["address"]
        workers = [start(["worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                          "--no-nanny", "--name", f"w{i}", "--local-directory", str(tmp)], env)
                   for i, env in enumerate(worker_envs)]
        with distributed.Client(address, timeout=30) as client:
            client.wait_for_workers(len(worker_envs), timeout=60)
        yield address, workers
    finally:
        # The workers first, then the scheduler: a worker closing while its
        # scheduler goes may wait for it in vain.
        for group in (procs[1:], procs[:1]):
            for p in group:
                if p.poll() is None:
                    p.terminate()
            for p in group:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=20)
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def local_results():
    proc, lines = triage("-j", "2", *DUMPS, *DEBUG)
    assert proc.returncode == 1, proc.stderr  # 6.12-faults has violations
    assert len(lines) == len(DUMPS)
    return by_path(lines)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with dask_cluster(tmp_path_factory.mktemp("dask"), [{}, {}]) as (address, _):
        yield address


def test_local_cluster_matches_local_triage(local_results):
    proc, lines = triage("--scheduler", "local:2", *DUMPS, *DEBUG)
    assert proc.returncode == 1, proc.stderr
    assert by_path(lines) == local_results
    assert "4 dump(s): 3 consistent, 1 with violations, 0 not analysed" in proc.stderr
    for dump in DUMPS:
        assert dump in proc.stderr  # the summary table


def test_dask_scheduler_and_workers_match_local_triage(cluster, local_results):
    # The workers run elsewhere (their own working directory): the relative
    # paths are taken from the client's.
    proc, lines = triage("--scheduler", cluster, *DUMPS, *DEBUG)
    assert proc.returncode == 1, proc.stderr
    assert by_path(lines) == local_results


def test_killed_worker_task_is_rerun(tmp_path):
    """SIGKILL a worker while it runs a dump: its tasks are rerun on the
    other worker, every dump has one result, its analysis process exits."""
    dumps = copies(tmp_path / "dumps", 12)
    # The first worker's analyses hang (until --timeout, far away), so that
    # it is surely in the middle of a dump when it is killed, and its dumps
    # can only come from the other worker.
    with dask_cluster(tmp_path / "dask", [{"DRGN_VMEMMAP_TEST_HANG": "copy-"}, {}]) \
            as (address, (doomed, _)):
        client = subprocess.Popen(
            [sys.executable, "-m", "drgn_vmemmap.cli", "triage", "--scheduler", address,
             "--timeout", "120", str(tmp_path / "dumps"), "--debug-directory", str(KERNELS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 60
            while not analysers(doomed.pid):
                assert time.monotonic() < deadline and client.poll() is None
                time.sleep(0.05)
            orphans = analysers(doomed.pid)
            time.sleep(0.5)  # paired, hanging
            doomed.send_signal(signal.SIGKILL)
            out, err = client.communicate(timeout=240)
        finally:
            if client.poll() is None:
                client.kill()
        assert "Traceback" not in err, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert client.returncode == 0, err
        assert sorted(Path(d["path"]).name for d in lines) == sorted(d.name for d in dumps)
        assert all(d["status"] == "ok" for d in lines), [d.get("error") for d in lines]
        # The killed worker's analysis process noticed and went.
        assert gone(orphans, 10)


def test_hanging_dump_times_out(tmp_path, local_results):
    hang = tmp_path / "hang-7.2.vmcore.xz"
    hang.symlink_to(REPO / DUMPS[2])
    dumps = [DUMPS[0], DUMPS[1], DUMPS[3], hang]
    t0 = time.monotonic()
    proc, lines = triage("--scheduler", "local:2", "--timeout", "5", *dumps, *DEBUG,
                         env={"DRGN_VMEMMAP_TEST_HANG": str(hang)})
    assert time.monotonic() - t0 < 120
    assert proc.returncode == 2, proc.stderr
    docs = by_path(lines)
    assert set(docs) == set(dumps[:3]) | {str(hang)}
    for dump in dumps[:3]:
        assert docs[dump] == local_results[dump]
    doc = docs[str(hang)]
    assert doc["status"] == "error" and doc["exit_status"] == 2
    assert doc["error"].startswith("timed out after 5 s") and "\n" not in doc["error"]
    # Paired before it hung: the record says with what.
    assert doc["pairing"] == "build-id" and doc["release"] == "7.2.13"
    assert "1 not analysed" in proc.stderr and "timed out" in proc.stderr
    # No analysis process is left behind, the killed one included.
    left = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("DRGN_VMEMMAP_TEST_HANG") == str(hang):
                left.append(p)
        except psutil.Error:
            pass
    assert gone(left, 10)


def test_resume(tmp_path, cluster):
    """Resume after a finished run with new dumps (in the local pool too),
    and after a client killed mid-run that left half a line."""
    dumps = tmp_path / "dumps"
    results = tmp_path / "results.jsonl"
    copies(dumps, 2)
    proc, lines = triage("--scheduler", cluster, "--resume", results, dumps, *DEBUG)
    assert proc.returncode == 0, proc.stderr
    assert len(lines) == 2 and lines_of(results) == lines

    copies(dumps, 5)  # three new ones; the local pool resumes as well
    proc, lines = triage("-j", "2", "--resume", results, dumps, *DEBUG)
    assert proc.returncode == 0, proc.stderr
    assert sorted(Path(d["path"]).name for d in lines) == \
        ["copy-02.vmcore", "copy-03.vmcore", "copy-04.vmcore"]
    assert "5 dump(s): 5 consistent" in proc.stderr  # the earlier ones count

    copies(dumps, 15)
    client = subprocess.Popen(
        [sys.executable, "-m", "drgn_vmemmap.cli", "triage", "--scheduler", cluster,
         "--resume", str(results), str(dumps), *DEBUG], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(results.read_text().splitlines()) <= 5:
            assert time.monotonic() < deadline and client.poll() is None
            time.sleep(0.02)
    finally:
        client.kill()
        client.wait(timeout=30)
    interrupted = len(lines_of(results))
    assert 5 < interrupted < 15, "the run was not interrupted"
    with open(results, "a") as fp:  # as if killed while writing a line
        fp.write('{"path": "' + str(dumps / "copy-14.vmcore")[:20])

    proc, lines = triage("--scheduler", cluster, "--resume", results, dumps, *DEBUG)
    assert proc.returncode == 0, proc.stderr
    assert "dropped an incomplete last line" in proc.stderr
    assert len(lines) == 15 - interrupted
    names = [Path(d["path"]).name for d in lines_of(results)]
    assert sorted(names) == [f"copy-{i:02d}.vmcore" for i in range(15)]  # each once
    assert "15 dump(s): 15 consistent" in proc.stderr

    # Nothing left to do: no line, the same verdict.
    proc, lines = triage("--scheduler", cluster, "--resume", results, dumps, *DEBUG)
    assert proc.returncode == 0 and lines == []
    assert len(lines_of(results)) == 15


def test_bad_options_one_line(monkeypatch, capsys):
    from drgn_vmemmap.cli import main

    dump = str(FIXTURES / "6.12-faults.vmcore")
    for argv, message in (
            (["--scheduler", "local:0"], "expected local:N"),
            (["--timeout", "5"], "needs --scheduler"),
            (["--scheduler", "local:1", "--timeout", "0"], "seconds > 0"),
    ):
        assert main(["triage", *argv, dump]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("drgn-vmemmap: error: "), err
        assert message in err[0]
    # Without distributed: one line saying how to install it.
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert main(["triage", "--scheduler", "local:2", dump]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'drgn-vmemmap[dask]'" in err[0], err


# --- pairing at scale, in one process --------------------------------------------------


def test_index_built_once_per_run():
    from drgn_vmemmap import fleetworker

    index = fleetworker._index(str(REPO), [str(KERNELS)], "run-1")
    assert fleetworker._index(str(REPO), [str(KERNELS)], "run-1") is index
    # A new run sees vmlinux files added since.
    assert fleetworker._index(str(REPO), [str(KERNELS)], "run-2") is not index


def test_build_ids_kept_on_disk(tmp_path, monkeypatch):
    from drgn_vmemmap import pairing

    monkeypatch.setenv("DRGN_VMEMMAP_CACHE", str(tmp_path / "cache"))
    debug = tmp_path / "debug" / "6.1"
    debug.mkdir(parents=True)
    (debug / "vmlinux.xz").write_bytes((KERNELS / "6.1" / "vmlinux.xz").read_bytes())
    index = pairing.VmlinuxIndex([str(tmp_path / "debug")])
    [candidate] = index.candidates(str(tmp_path / "dump"))
    build_id = index.build_id(candidate.path)
    assert build_id
    pairing.flush_build_ids()
    on_disk = json.loads((tmp_path / "cache" / "build-ids.json").read_text())
    assert on_disk[os.path.realpath(candidate.path)][2] == build_id

    reads = []
    monkeypatch.setattr(pairing, "elf_build_id", lambda path: reads.append(path) or build_id)
    assert pairing.VmlinuxIndex([str(tmp_path / "debug")]).build_id(candidate.path) == build_id
    assert reads == []  # from the file, not the vmlinux
    st = os.stat(candidate.path)
    os.utime(candidate.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # replaced?
    assert pairing.VmlinuxIndex([str(tmp_path / "debug")]).build_id(candidate.path) == build_id
    assert reads == [candidate.path]  # read again
