"""``map``: the memory map in a terminal, as SVG and as HTML, against every
fixture's manifest (the guest's sysfs and the faults it injected), and the
triage page in a real browser (Debian's Chromium, headless)."""

import io
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from drgn_vmemmap import check
from drgn_vmemmap.maphtml import render_svg, triage_html
from drgn_vmemmap.mapview import build, render_text

from conftest import REPO, fixture_program, manifests, pagetable_faults, vmlinux_for

MANIFESTS = manifests()
NAMES = sorted(MANIFESTS)
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def docs():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = check(fixture_program(name)).to_json()
        return cache[name]

    return get


def _expected_marks(manifest):
    return sorted((e["pfn_start"], e["pfn_end"]) for f in manifest.get("faults", [])
                  for e in (f.get("expects") or ([f["expect"]] if f.get("expect") else [])))


@pytest.mark.parametrize("name", NAMES)
def test_map_draws_every_block(name, docs):
    """Every block of the guest's sysfs in exactly one cell, on its node; the
    self-hosted ones (clean fixtures: the manifest's ranges) drawn as such;
    one violation mark per fault, in the block of its pfns."""
    m = MANIFESTS[name]
    view = build(docs(name))
    drawn = {b["block"]: c for cells in view.nodes.values() for c in cells for b in c.blocks}
    truth = {b["id"]: b for b in m["truth"]["blocks"]}
    assert sorted(drawn) == sorted(truth)
    assert sum(len(c.blocks) for cells in view.nodes.values() for c in cells) == len(truth)
    for bid, c in drawn.items():
        assert c.node == truth[bid]["node"]
        want = {"online": ("movable", "kernel", "boot"), "offline": ("offline", "boot-offline")}
        assert c.kind in want.get(truth[bid]["state"], ("other",)), (bid, c.kind)
    if not m.get("faults") and not pagetable_faults(m):
        hosted = {r["block"] for r in m["truth"]["self_hosted"] if r["nr_pages"]}
        assert {bid for bid, c in drawn.items() if c.home == "own"} == hosted
        assert all(c.finding in ("ok", "note", "not-checked") for c in drawn.values())
    assert sorted((round(m_.start * view.pages_per_block) + m_.block * view.pages_per_block)
                  for m_ in view.marks) == [s for s, _ in _expected_marks(m)]


@pytest.mark.parametrize("name", ["6.12-faults", "6.12-pagetables", "6.12-memmap-faults",
                                  "6.12-ppc64le-64k-force-faults"])
def test_svg_matches_the_dump(name, docs):
    doc = docs(name)
    view = build(doc)
    root = ET.fromstring(render_svg(view))
    groups = [g for g in root.iter(SVG + "g") if g.get("class") == "block"]
    ids = sorted(int(x) for g in groups for x in g.get("data-blocks").split())
    assert ids == sorted(b["block"] for b in doc["blocks"])
    for g in groups:
        title = g.find(SVG + "title").text
        assert re.search(r"block \d+: pfns 0x[0-9a-f]+-0x[0-9a-f]+, node", title), title
        assert "vmemmap pages: recorded" in title
    marks = [r for r in root.iter(SVG + "rect") if (r.get("class") or "").startswith("mark")]
    assert len(marks) == len(doc["violations"]) > 0
    links = [p for p in root.iter(SVG + "path") if p.get("class") == "link"]
    # A block whose memmap sits on another hot-plugged block's frames says so
    # when hovered (the host judged against every block, not the cell's).
    for g in groups:
        if g.get("data-home") == "other":
            assert "(another hot-plugged block" in g.find(SVG + "title").text
    if name == "6.12-pagetables":
        # Block 36's memmap points at block 35's self-hosted frames and
        # block 37's at ordinary frames of block 32: both drawn as links.
        assert {(int(p.get("data-from")), int(p.get("data-to"))) for p in links} >= {
            (36, 35), (37, 32)}


def test_text_map_ascii_when_not_a_terminal(docs, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    view = build(docs("6.12-memmap-faults"))
    text = render_text(view, width=60, out=io.StringIO())
    assert text.isascii() and "\x1b[" not in text
    rows = [line for line in text.splitlines() if re.match(r"\s+\d+  ", line)]
    assert rows and all(len(line) <= 60 for line in rows)
    assert "node 0" in text and "node 1" in text
    # Rows of 4-column cells (state, memmap home, finding, space): every cell
    # of every node drawn once.
    assert sum(-(-len(line[8:]) // 4) for line in rows) == \
        sum(len(cells) for cells in view.nodes.values())
    assert "! error" in text and "s its own block" in text


def test_text_map_colour_and_unicode_on_request(docs):
    view = build(docs("6.12-faults"))
    text = render_text(view, width=100, unicode=True, color=True)
    assert "\x1b[" in text and "\u25cf" in text and "\u2716" in text


def test_many_blocks_share_cells():
    """Thousands of blocks: one cell stands for several, and says so."""
    blocks = [{"block": i, "state": "online", "node": i // 6000, "zone": "Normal",
               "start_pfn": i * 32768, "nr_pages": 32768, "hotplugged": i % 2 == 1,
               "recorded_vmemmap_pages": 512, "self_hosted_pages": 512 if i % 2 else 0,
               "memmap_host_blocks": [i], "verdict": "error" if i == 777 else "ok"}
              for i in range(12000)]
    doc = {"blocks": blocks, "violations": [], "notes": [],
           "features": {"pages_per_block": 32768, "page_size": 4096},
           "target": {"release": "synthetic", "arch": "x86_64"}}
    view = build(doc, max_cells=1000)
    assert view.per_cell == 6
    assert all(len(cells) <= 1000 for cells in view.nodes.values())
    assert sum(len(c.blocks) for cells in view.nodes.values() for c in cells) == 12000
    assert [c.finding for c in view.nodes[0] if 777 in [b["block"] for b in c.blocks]] == \
        ["error"]
    assert "1 cell = up to 6 blocks" in render_text(view, width=120, out=io.StringIO())


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "drgn_vmemmap.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_writes_svg_and_html(tmp_path):
    name = "6.12-memmap-faults"
    core = REPO / "vmcores" / "fixtures" / f"{name}.vmcore.xz"
    vmlinux = vmlinux_for(MANIFESTS[name])
    for fmt in ("svg", "html"):
        out = tmp_path / f"map.{fmt}"
        p = _cli("-c", str(core), "-s", str(vmlinux), "map", "--format", fmt, "-o", str(out))
        assert p.returncode == 1, p.stderr  # the faults are errors
        text = out.read_text()
        assert text.count('class="block"') >= len(MANIFESTS[name]["truth"]["blocks"])
        if fmt == "html":
            assert text.startswith("<!DOCTYPE html>") and "<table class='findings'>" in text
    p = _cli("-c", str(core), "-s", str(vmlinux), "map", "--format", "table", "--width", "70")
    assert p.returncode == 1 and "node 0" in p.stdout and "\x1b[" not in p.stdout
    p = _cli("-c", str(core), "-s", str(vmlinux), "check", "--format", "svg")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "for 'map' only" in p.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def test_triage_page_in_a_browser(tmp_path, docs):
    """The triage page, rendered by headless Chromium: the DOM it built has
    every block of every dump and one mark per violation, and the
    screenshot is a real image."""
    assert CHROMIUM, "Debian's chromium is needed (the README's apt line installs it)"
    names = ["6.12-hotplug-basic", "6.12-faults", "6.12-memmap-faults", "7.2-faults"]
    results = [dict(docs(n), path=f"/dumps/{n}", status="violations", seconds=0.1)
               for n in names]
    results.append({"path": "/dumps/broken.vmcore", "status": "error",
                    "error": "not a core dump", "exit_status": 2})
    index = triage_html(results, str(tmp_path / "html"))
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}",
                          "--dump-dom", f"file://{index}"],
                         capture_output=True, text=True, timeout=120).stdout
    blocks = re.findall(r'<g class="block" data-blocks="([0-9 ]+)"', dom)
    assert sum(len(b.split()) for b in blocks) == sum(len(docs(n)["blocks"]) for n in names)
    marks = re.findall(r'<rect class="mark (error|warning)"', dom)
    assert len(marks) == sum(len(docs(n)["violations"]) for n in names)
    assert dom.count("<tr class=") >= len(results)
    def errors_column(page):
        body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
        return [int(r.split("</td><td>")[3]) for r in body.split("<tr")[1:]]

    unsorted = errors_column(dom)
    # Sorted by the browser: the "errors" column (index 3), ascending.
    dom = subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}",
                          "--dump-dom", f"file://{index}#sort=3"],
                         capture_output=True, text=True, timeout=120).stdout
    errors = errors_column(dom)
    assert errors == sorted(unsorted) != unsorted and len(errors) == len(results), errors
    shot = tmp_path / "triage.png"
    subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}",
                    "--window-size=1200,1600", f"--screenshot={shot}", f"file://{index}"],
                   capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 1600) and len(data) > 20000
    json.dumps(results)  # the page came from plain JSON documents


def test_triage_html_option(tmp_path):
    """``triage --html DIR`` writes the page for the dumps it checked."""
    fixtures = REPO / "vmcores" / "fixtures"
    dumps = [str(fixtures / "6.12-faults.vmcore"), str(fixtures / "6.12-hotplug-basic.vmcore.xz")]
    p = _cli("triage", "-j", "2", "--debug-directory", str(REPO / "vmcores" / "kernels"),
             "--html", str(tmp_path / "html"), *dumps, timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]
    page = (tmp_path / "html" / "index.html").read_text()
    docs = [json.loads(line) for line in p.stdout.splitlines()]
    assert page.count('<g class="block"') == sum(len(d["blocks"]) for d in docs)
    assert page.count('<rect class="mark') == sum(len(d["violations"]) for d in docs)
    assert "wrote" in p.stderr
