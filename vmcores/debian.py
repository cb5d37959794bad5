"""Find a Debian package's newest version in the suites this machine reaches.

Debian's mirror keeps only the newest point release of a package in each
suite (6.12.117 is gone the day 6.12.118 lands), and a kernel series leaves
unstable when the next one arrives (7.2 moves on to forky and backports).  So
the factory never pins a version: it asks for a *series*
(``linux-source-6.12``) and takes the newest version of it from the first
group of suites, in its order of preference, that has it.

Everything is read through one private apt state directory in the factory
cache (``-o Dir::Etc::sourcelist=… -o Dir::State::Lists=…``), whose sources
are the machine's own Debian suites plus :data:`EXTRA_SUITES`, on the
machine's own mirrors.  The system's apt configuration and lists are never
touched.  The lists are refreshed when older than :data:`MAX_AGE` seconds, and
once more when a download finds the mirror has moved on since.
"""

import functools
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple

from .paths import CACHE, log

#: Suites searched after the machine's own, on the machine's mirrors, in
#: order of preference: where a series goes when it leaves unstable (testing,
#: then the backports of the stable releases), and where it comes from
#: (experimental).  A suite the mirror does not have is skipped.
EXTRA_SUITES = ("sid", "forky", "trixie", "trixie-updates", "trixie-security",
                "trixie-backports", "bookworm", "bookworm-updates",
                "bookworm-security", "bookworm-backports", "experimental")
#: Lists older than this are refreshed before a look-up.
MAX_AGE = 12 * 3600
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class Unavailable(Exception):
    """The package is in no suite this machine reaches.  ``str()`` is the
    one-line message for the user."""


class Candidate(NamedTuple):
    package: str
    version: str
    suite: str


def _apt_sources(paths: Iterable[Path]) -> List[Tuple[str, str]]:
    """``(uri, suite)`` of every enabled Debian source (one-line and deb822
    formats) in ``paths``."""
    out: List[Tuple[str, str]] = []
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.M))
                if fields.get("Enabled", "yes").lower() == "no" or \
                        "deb" not in fields.get("Types", "").split():
                    continue
                for uri in fields.get("URIs", "").split():
                    out += [(uri.rstrip("/"), s) for s in fields.get("Suites", "").split()]
        else:
            for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
                out.append((m.group(1).rstrip("/"), m.group(2)))
    return [(u, s) for u, s in out if re.search(r"/debian(-security)?$", u)]


def machine_sources() -> List[Tuple[str, str]]:
    """The machine's configured Debian ``(uri, suite)`` pairs."""
    paths = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        paths += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    return _apt_sources(paths)


def mirror() -> str:
    """The machine's Debian mirror URI (for the main archive)."""
    for uri, _ in machine_sources():
        if uri.endswith("/debian"):
            return uri
    raise Unavailable("no Debian mirror in the machine's apt sources "
                      "(/etc/apt/sources.list, /etc/apt/sources.list.d)")


def all_sources() -> List[Tuple[str, str]]:
    """The machine's own Debian sources, then :data:`EXTRA_SUITES` on its
    mirrors (``*-security`` suites on the security mirror)."""
    own = machine_sources()
    main = mirror()
    security = next((u for u, _ in own if u.endswith("/debian-security")),
                    main + "-security")
    out = list(dict.fromkeys(own))
    for suite in EXTRA_SUITES:
        uri = security if suite.endswith("-security") else main
        if (uri, suite) not in out:
            out.append((uri, suite))
    return out


class Apt:
    """apt-get / apt-cache on the private state directory ``CACHE/apt``."""

    def __init__(self, state: Path = CACHE / "apt") -> None:
        self.state = state
        self.sources = all_sources()
        (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        lines = "".join(f"deb [signed-by={KEYRING}] {u} {s} main\n" for u, s in self.sources)
        listfile = state / "sources.list"
        if not listfile.exists() or listfile.read_text() != lines:
            listfile.write_text(lines)
            (state / "updated").unlink(missing_ok=True)
        self.opts = [
            f"-oDir::Etc::sourcelist={listfile}",
            "-oDir::Etc::sourceparts=-",
            f"-oDir::State::Lists={state / 'lists'}",
            f"-oDir::Cache={state / 'cache'}",
            "-oAPT::Get::List-Cleanup=0",
            "-oAcquire::Languages=none",
        ]

    def update(self, force: bool = False) -> None:
        stamp = self.state / "updated"
        if not force and stamp.exists() and time.time() - stamp.stat().st_mtime < MAX_AGE:
            return
        # A suite the mirror lacks (an old backports, say) fails its own
        # index only: apt still updates the rest and exits non-zero, so the
        # exit status is not an error here.  No index at all is.
        proc = subprocess.run(["apt-get", *self.opts, "update"], capture_output=True, text=True)
        if not any((self.state / "lists").glob("*_Packages*")):
            raise Unavailable("apt could not read any Debian suite: "
                              + (proc.stderr.strip().splitlines() or ["no output"])[-1])
        stamp.touch()

    def apt_cache(self, *args: str) -> str:
        return subprocess.run(["apt-cache", *self.opts, *args], capture_output=True,
                              text=True, check=True).stdout

    def versions(self, *packages: str) -> List[Candidate]:
        """Every ``(version, suite)`` of ``packages`` in the lists (one
        apt-cache run: each reads every list)."""
        out = []
        for line in self.apt_cache("madison", *packages).splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[0] in packages:
                # "http://deb.debian.org/debian sid/main amd64 Packages"
                suite = parts[2].split()[1].split("/")[0]
                out.append(Candidate(parts[0], parts[1], suite))
        return out

    def packages(self, prefix: str) -> List[str]:
        return sorted(p for p in self.apt_cache("pkgnames", prefix).split() if p)

    def download(self, cand: Candidate, dest: Path) -> Path:
        """Download ``cand`` into ``dest``; return the .deb."""
        def fetch() -> subprocess.CompletedProcess:
            log(f"$ apt-get download {cand.package}={cand.version}  ({cand.suite})")
            return subprocess.run(["apt-get", *self.opts, "download",
                                   f"{cand.package}={cand.version}"], cwd=dest,
                                  capture_output=True, text=True)
        proc = fetch()
        if proc.returncode != 0:
            # The lists predate the mirror's last move: refresh once.
            self.update(force=True)
            proc = fetch()
        if proc.returncode != 0:
            raise Unavailable(f"could not download {cand.package}={cand.version}: "
                              + (proc.stderr.strip().splitlines() or ["?"])[-1])
        return deb_path(dest, cand)


def deb_path(dest: Path, cand: Candidate) -> Path:
    """Where ``apt-get download`` puts ``cand`` (an epoch's ':' is '%3a')."""
    version = cand.version.replace(":", "%3a")
    debs = sorted(dest.glob(f"{cand.package}_{version}_*.deb"))
    return debs[0] if debs else dest / f"{cand.package}_{version}_all.deb"


def compare_versions(a: str, b: str) -> int:
    """Debian version order (dpkg --compare-versions)."""
    if a == b:
        return 0
    lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
    return -1 if lt else 1


def newest(cands: Sequence[Candidate]) -> Candidate:
    return max(cands, key=functools.cmp_to_key(lambda x, y: compare_versions(x.version, y.version)))


def series_of(version: str) -> str:
    """``6.12.118-1~deb12u1`` -> ``6.12``; ``7.3~rc7-1~exp1`` -> ``7.3``."""
    m = re.match(r"(?:\d+:)?(\d+\.\d+)", version)
    return m.group(1) if m else version


def _groups(apt: Apt, prefer: Optional[str]) -> List[List[str]]:
    """Suites in order of preference, grouped: ``prefer``, the machine's own
    suites (one group: stable, its updates and security), then each extra."""
    own = list(dict.fromkeys(s for _, s in machine_sources()))
    groups = [[prefer]] if prefer is not None else []
    groups.append(own)
    groups += [[s] for s in dict.fromkeys(s for _, s in apt.sources) if s not in own]
    return groups


def _pick(found: Sequence[Candidate], groups: List[List[str]]) -> Optional[Candidate]:
    for group in groups:
        cands = [c for c in found if c.suite in group]
        if cands:
            return newest(cands)
    return newest(found) if found else None


def resolve(package: str, prefer: Optional[str] = None, apt: Optional[Apt] = None) -> Candidate:
    """The version of ``package`` to use: the newest one in the first group
    of suites that has it.  The groups, in order: ``prefer`` (a suite name;
    None means the machine's own suites), the machine's own suites, then
    :data:`EXTRA_SUITES` one at a time.

    Raises :class:`Unavailable` naming the package, the suites searched and
    the versions of its family (``linux-source-*``) that do exist.
    """
    apt = apt or Apt()
    apt.update()
    cand = _pick(apt.versions(package), _groups(apt, prefer))
    if cand is None:
        raise Unavailable(unavailable_message(package, apt))
    return cand


def unavailable_message(package: str, apt: Apt) -> str:
    """One line: ``package`` is nowhere; the suites searched; the series of
    its family (``linux-source-X.Y``) that exist, each with the version and
    suite :func:`resolve` would take."""
    family = re.sub(r"-[\d.]+$", "-", package)
    names = [n for n in apt.packages(family)
             if n != package and re.fullmatch(re.escape(family) + r"\d+\.\d+", n)]
    found = apt.versions(*names) if names else []
    groups = _groups(apt, None)
    picks = [c for c in (_pick([f for f in found if f.package == n], groups) for n in names) if c]
    picks.sort(key=lambda c: tuple(int(x) for x in c.package[len(family):].split(".")))
    listing = ", ".join(f"{c.package[len(family):]} ({c.version}, {c.suite})" for c in picks)
    suites = ", ".join(dict.fromkeys(s for _, s in apt.sources))
    return (f"{package}: no such package in any Debian suite this machine reaches "
            f"({suites}); series available: {listing or 'none'}")


#: Debian's name for each fixture architecture.
DEB_ARCH = {"x86_64": "amd64", "arm64": "arm64", "ppc64le": "ppc64el"}


def foreign_busybox(arch: str) -> Path:
    """A static busybox for ``arch`` (a fixture architecture), for the
    initramfs of a foreign-architecture guest: ``busybox-static`` of the
    machine's own suites, the same version as the host's, fetched straight
    from the mirror's pool.  The private apt lists are amd64's only (another
    architecture's would triple every list refresh), so the pool file name
    is the amd64 one with the architecture swapped: Debian builds every
    architecture of a version from one source into one pool directory.
    Cached in ``CACHE/busybox/ARCH``."""
    import urllib.request

    dest = CACHE / "busybox" / arch / "busybox"
    if dest.exists():
        return dest
    apt = Apt()
    cand = resolve("busybox-static", None, apt)
    show = apt.apt_cache("show", f"busybox-static={cand.version}")
    filename = re.search(r"^Filename: (\S+)_amd64\.deb$", show, re.M)
    if filename is None:
        raise Unavailable(f"busybox-static {cand.version}: no amd64 pool file to follow")
    uri = next(u for u, s in apt.sources if s == cand.suite)
    # A binNMU ("+b1") is per architecture: the other may have none.
    stems = dict.fromkeys([filename.group(1), re.sub(r"\+b\d+$", "", filename.group(1))])
    work = dest.parent / "unpack"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for stem in stems:
        url = f"{uri}/{stem}_{DEB_ARCH[arch]}.deb"
        log(f"fetch {url}")
        try:
            with urllib.request.urlopen(url, timeout=120) as r:
                (work / "busybox.deb").write_bytes(r.read())
            break
        except OSError as e:
            error = f"could not fetch {url}: {e}"
    else:
        raise Unavailable(error)
    subprocess.run(["dpkg-deb", "-x", str(work / "busybox.deb"), str(work / "x")], check=True)
    (work / "x" / "bin" / "busybox").rename(dest)
    shutil.rmtree(work)
    return dest
