"""
Pairing
-------

Choosing the vmlinux for a dump (see :mod:`~drgn_vmemmap.triage`): an
explicit ``--map`` first; then the vmlinux whose GNU build ID equals the
dump's, among ``vmlinux``, ``vmlinux-*`` (and their ``.xz``) under the debug
directories and beside the dump, and ``.build-id/xx/yyyy.debug`` in the debug
directories; then, for a dump without a build ID (or candidates whose build
ID cannot be read), by release; else drgn's default debug-info search.

Reading a build ID can mean decompressing the start of a ``vmlinux.xz``, so
the build IDs found are kept between runs in ``build-ids.json`` in the cache
directory (:func:`~drgn_vmemmap.target.cache_dir`), keyed by each file's real
path, size and modification time: a file replaced or touched is read again.
"""

import atexit
import json
import os
import re
import time
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from .dumpinfo import DumpInfo, elf_build_id

__all__ = ("Candidate", "Pairing", "VmlinuxIndex", "flush_build_ids", "pair_vmlinux")


# --- vmlinux candidates -----------------------------------------------------------


_VMLINUX_NAME = re.compile(r"^vmlinux(-.+)?(\.xz)?$")


class Candidate(NamedTuple):
    path: str
    #: The kernel release this file says it is for (``release`` file beside
    #: it, ``vmlinux-RELEASE`` name, or the parent directory's name).
    releases: Tuple[str, ...]


def _release_hints(path: str) -> Tuple[str, ...]:
    hints = []
    d = os.path.dirname(path)
    try:
        with open(os.path.join(d, "release")) as fp:
            text = fp.read(256).strip()
            if text:
                hints.append(text.split()[0])
    except (OSError, UnicodeDecodeError, IndexError):
        pass
    m = _VMLINUX_NAME.match(os.path.basename(path))
    if m and m.group(1):
        hints.append(m.group(1)[1:])
    hints.append(os.path.basename(os.path.abspath(d)))
    return tuple(hints)


def _vmlinux_files(directory: str, recursive: bool) -> Iterator[str]:
    if not os.path.isdir(directory):
        return
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(files):
            if _VMLINUX_NAME.match(name) and not name.endswith((".partial", ".tmp")):
                path = os.path.join(root, name)
                if os.path.isfile(path):
                    yield path


# --- build IDs kept between runs ----------------------------------------------------


#: ``{real path: [size, mtime_ns, build ID]}`` as last read from or written to disk.
_Stamped = Dict[str, List[object]]


def _build_id_file() -> str:
    from .target import cache_dir

    return os.path.join(cache_dir(), "build-ids.json")


def _read_build_ids() -> _Stamped:
    try:
        with open(_build_id_file()) as fp:
            data = json.load(fp)
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 3} \
        if isinstance(data, dict) else {}


def _stamp(path: str) -> Optional[List[object]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _write_build_ids(new: _Stamped) -> None:
    """Merge ``new`` into the file (written whole, then renamed: several
    processes may add to it at once; one of two racing additions may be
    lost, and is read again next time).  Entries of files that changed or
    went away are dropped."""
    data = _read_build_ids()
    data.update(new)
    data = {k: v for k, v in data.items() if _stamp(k) == v[:2]}
    path = _build_id_file()
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w") as fp:
            json.dump(data, fp, sort_keys=True)
        os.replace(tmp, path)
    except OSError:  # a read-only cache: read the build IDs each run
        try:
            os.unlink(tmp)
        except OSError:
            pass


#: Build IDs found and not yet written; written at most every
#: :data:`_WRITE_EVERY` seconds (a debug directory of thousands of files is
#: not rewritten once per file) and at exit.
_pending: _Stamped = {}
_last_write = [0.0]
_WRITE_EVERY = 10.0


def flush_build_ids() -> None:
    """Write the build IDs found since the last write (also done at exit)."""
    if _pending:
        _write_build_ids(dict(_pending))
        _pending.clear()
    _last_write[0] = time.monotonic()


atexit.register(flush_build_ids)


class Pairing(NamedTuple):
    vmlinux: Optional[str]
    #: ``"map"``, ``"build-id"``, ``"release"`` or ``"default"`` (drgn's search).
    how: str


class VmlinuxIndex:
    """
    vmlinux candidates from the debug directories; build IDs read lazily,
    and kept on disk between runs (see the module documentation).  Build one
    per run (or per worker process), not one per dump.
    """

    def __init__(self, debug_directories: Sequence[str]) -> None:
        self.debug_directories = list(debug_directories)
        self._build_ids: Dict[str, Optional[str]] = {}
        self._on_disk: Optional[_Stamped] = None
        self._candidates: List[Candidate] = []
        seen = set()
        for d in self.debug_directories:
            for path in _vmlinux_files(d, recursive=True):
                key = os.path.realpath(path)
                if key not in seen:
                    seen.add(key)
                    self._candidates.append(Candidate(path, _release_hints(path)))
        self._siblings: Dict[str, List[Candidate]] = {}

    def build_id(self, path: str) -> Optional[str]:
        key = os.path.realpath(path)
        if key not in self._build_ids:
            if self._on_disk is None:
                self._on_disk = _read_build_ids()
            stamp = _stamp(key)
            known = self._on_disk.get(key)
            if stamp is not None and known is not None and known[:2] == stamp \
                    and isinstance(known[2], str):
                self._build_ids[key] = known[2]
            else:
                found = self._build_ids[key] = elf_build_id(path)
                if found is not None and stamp is not None:
                    # Only IDs found: a file unreadable now may not be next time.
                    self._on_disk[key] = _pending[key] = stamp + [found]
                    if time.monotonic() - _last_write[0] >= _WRITE_EVERY:
                        flush_build_ids()
        return self._build_ids[key]

    def candidates(self, dump: str) -> List[Candidate]:
        d = os.path.dirname(os.path.abspath(dump))
        if d not in self._siblings:
            self._siblings[d] = [Candidate(p, _release_hints(p))
                                 for p in _vmlinux_files(d, recursive=False)]
        seen = set()
        out = []
        for c in self._siblings[d] + self._candidates:
            key = os.path.realpath(c.path)
            if key not in seen:
                seen.add(key)
                out.append(c)
        return out

    def by_build_id_layout(self, build_id: str) -> Optional[str]:
        """``DIR/.build-id/xx/yyyy.debug`` (or without ``.debug``) in a debug directory."""
        for d in self.debug_directories:
            for suffix in (".debug", ""):
                path = os.path.join(d, ".build-id", build_id[:2], build_id[2:] + suffix)
                if os.path.isfile(path):
                    return path
        return None


def pair_vmlinux(dump: str, info: DumpInfo, index: VmlinuxIndex,
                 explicit: Dict[str, str]) -> Pairing:
    """Choose the vmlinux for ``dump`` (see the module documentation)."""
    real = os.path.realpath(dump)
    for key, vmlinux in explicit.items():
        if os.path.realpath(key) == real or (os.sep not in key
                                             and key == os.path.basename(dump)):
            return Pairing(vmlinux, "map")
    candidates = index.candidates(dump)
    if info.release:
        # Those that claim the dump's release first: cheaper when they match.
        candidates.sort(key=lambda c: info.release not in c.releases)
    if info.build_id:
        found = index.by_build_id_layout(info.build_id)
        if found:
            return Pairing(found, "build-id")
        for c in candidates:
            if index.build_id(c.path) == info.build_id:
                return Pairing(c.path, "build-id")
    if info.release:
        for c in candidates:
            if info.release in c.releases and (
                    not info.build_id or index.build_id(c.path) is None):
                return Pairing(c.path, "release")
    return Pairing(None, "default")
