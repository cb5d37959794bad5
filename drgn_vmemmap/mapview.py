"""
Map
---

Physical memory drawn one cell per memory block (``drgn-vmemmap map``,
``%vmemmap map``): each block's state and zone, whether it hosts its own
memmap, where its struct pages live, and its worst finding.  Built from a
check's JSON document alone (:func:`build`), so that ``triage --html`` draws
the dumps its workers checked without opening them again.

Three renderings of one :class:`MapView`: :func:`render_text` for a terminal
(colour and Unicode when the terminal has them, plain ASCII otherwise: not a
tty, ``NO_COLOR``, ``TERM=dumb``, a non-UTF-8 encoding), :func:`render_svg`
(a hover title on every block, violations drawn at their pfn range inside
the block, cross-hosting as a link from a block to the block whose frames
hold its memmap) and :func:`render_html` (the SVG, its legend and the
findings, in one self-contained page).
"""

import html
import math
import os
import sys
from collections import Counter
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set, TextIO, Tuple

__all__ = ("Cell", "MapView", "build", "render_html", "render_svg", "render_text",
           "triage_html")

#: A run of this many absent block ids or more inside a node's span is drawn
#: as one gap cell.
GAP_MIN = 4

#: Block kinds, worst findings and memmap homes, with their text glyphs
#: (ASCII, Unicode), colours and legend words.
KINDS = {
    "movable": ("M", "M", "42", "#7cc47c", "online, ZONE_MOVABLE"),
    "kernel": ("K", "K", "44", "#6f9fd8", "online, a kernel zone (Normal, DMA32, ...)"),
    "boot": ("B", "B", "47", "#d9d9d9", "boot memory (online)"),
    "offline": ("o", "o", "100", "#8c8c8c", "offline (hot-plugged)"),
    "boot-offline": ("b", "b", "100", "#a8a8a8", "boot memory, offline"),
    "other": ("x", "x", "45", "#c69fd8", "another state (going offline, unreadable, ...)"),
    "gap": ("--", "\u22ef", "", "#ffffff", "no memory (absent block ids)"),
}
HOMES = {
    "own": ("s", "\u25cf", "its own block: self-hosted (memmap_on_memory)"),
    "boot": (".", "\u00b7", "boot memory (memblock, or the page allocator there)"),
    "other": (">", "\u2192", "another hot-plugged block (cross-hosting, HVO replacement pages)"),
    "none": (" ", " ", "not mapped or not known"),
}
FINDINGS = {  # worst first
    "error": ("!", "\u2716", "31", "#d62728", "error"),
    "warning": ("~", "\u25b2", "33", "#ff9900", "warning"),
    "not-checked": ("?", "?", "35", "#9467bd", "not checked (not in the dump, damaged, ...)"),
    "note": ("n", "\u2022", "36", "#17becf", "note (holds, worth knowing)"),
    "ok": (" ", " ", "", "", "ok"),
}
_ORDER = list(FINDINGS)
#: Columns of a text cell: state, memmap home, finding, a space.
CELL = 4


class Cell(NamedTuple):
    """One cell: a block, several (on big machines), or a gap of absent ids."""

    first: int  # first block id
    span: int  # block ids covered (blocks and absent ids)
    node: Optional[int]
    kind: str  # a KINDS key
    self_hosted: bool
    home: str  # a HOMES key
    finding: str  # a FINDINGS key
    #: The blocks' JSON entries (none for a gap).
    blocks: Tuple[Dict[str, Any], ...] = ()


class Mark(NamedTuple):
    """A violation drawn inside its block: fractions of the block's pfns."""

    block: int
    start: float
    end: float
    severity: str
    rule: str
    text: str


class MapView(NamedTuple):
    title: str
    pages_per_block: int
    page_size: int
    #: Blocks per cell (1 unless the machine has too many to draw).
    per_cell: int
    #: Node -> cells in block-id order (None: node unknown).
    nodes: Dict[Optional[int], List[Cell]]
    marks: List[Mark]
    #: (block, block whose frames hold part of its memmap): cross-hosting.
    links: List[Tuple[int, int]]
    findings: Dict[int, List[str]]
    total_blocks: int


def _kind(b: Dict[str, Any]) -> str:
    state, hot, zone = b.get("state"), b.get("hotplugged"), b.get("zone")
    if state == "online":
        if not hot:
            return "boot"
        return "movable" if zone == "Movable" else "kernel"
    if state == "offline":
        return "offline" if hot else "boot-offline"
    return "other"


def _home(b: Dict[str, Any], hot: Dict[int, bool]) -> str:
    hosts = b.get("memmap_host_blocks")
    if not hosts:
        return "none"
    if any(hot.get(h, False) and h != b["block"] for h in hosts):
        return "other"
    if b.get("hotplugged") and b["block"] in hosts and b.get("self_hosted_pages"):
        return "own"
    return "boot"


def _finding(b: Dict[str, Any], noted: Set[Any]) -> str:
    verdict = str(b.get("verdict", "ok"))
    if verdict in ("error", "warning"):
        return verdict
    if verdict.startswith("not checked"):
        return "not-checked"
    return "note" if b["block"] in noted else "ok"


def _worst(findings: Sequence[str]) -> str:
    return min(findings, key=_ORDER.index) if findings else "ok"


def _flush(cells: List[Cell], group: List[Dict[str, Any]], node: Optional[int],
           hot: Dict[int, bool], noted: Set[Any]) -> None:
    """Append the cell of the blocks in ``group`` (then emptied)."""
    if not group:
        return
    kinds = Counter(_kind(b) for b in group)
    homes = [_home(b, hot) for b in group]
    home = next((h for h in ("other", "own", "boot") if h in homes), "none")
    cells.append(Cell(group[0]["block"], group[-1]["block"] - group[0]["block"] + 1, node,
                      kinds.most_common(1)[0][0], any(b.get("self_hosted_pages") for b in group),
                      home, _worst([_finding(b, noted) for b in group]), tuple(group)))
    group.clear()


def build(doc: Dict[str, Any], max_cells: int = 4096, title: Optional[str] = None) -> MapView:
    """The map of a check's JSON document (``Report.to_json()``): at most
    ``max_cells`` block cells per node (more blocks share a cell)."""
    blocks = sorted(doc.get("blocks", []), key=lambda b: b["block"])
    ppb = int(doc.get("features", {}).get("pages_per_block") or
              (blocks[0]["nr_pages"] if blocks else 1))
    hot = {b["block"]: bool(b.get("hotplugged")) for b in blocks}
    noted = {n.get("block") for n in doc.get("notes", [])}
    by_node: Dict[Optional[int], List[Dict[str, Any]]] = {}
    for b in blocks:
        by_node.setdefault(b.get("node"), []).append(b)
    per_cell = max(1, max((math.ceil(len(v) / max_cells) for v in by_node.values()), default=1))
    nodes: Dict[Optional[int], List[Cell]] = {}
    for node in sorted(by_node, key=lambda n: (n is None, n or 0)):
        cells: List[Cell] = []
        group: List[Dict[str, Any]] = []
        prev = None
        for b in by_node[node]:
            if prev is not None and b["block"] - prev - 1 >= max(GAP_MIN, per_cell):
                _flush(cells, group, node, hot, noted)
                cells.append(Cell(prev + 1, b["block"] - prev - 1, node, "gap", False, "none",
                                  "ok"))
            elif group and b["block"] - group[0]["block"] >= per_cell:
                _flush(cells, group, node, hot, noted)
            group.append(b)
            prev = b["block"]
        _flush(cells, group, node, hot, noted)
        nodes[node] = cells
    marks = []
    findings: Dict[int, List[str]] = {}
    for v in doc.get("violations", []):
        bid = v["pfn_start"] // ppb
        start = (v["pfn_start"] - bid * ppb) / ppb
        end = min(1.0, (v["pfn_end"] - bid * ppb) / ppb)
        text = (f"{v['severity']} {v['rule']}: pfns {v['pfn_start']:#x}-{v['pfn_end'] - 1:#x}: "
                f"expected {v['expected']}, found {v['found']}")
        marks.append(Mark(bid, start, max(end, start), v["severity"], v["rule"], text))
        findings.setdefault(bid, []).append(text)
        if v.get("block") is not None and v["block"] != bid:
            findings.setdefault(v["block"], []).append(text)
    for n in doc.get("notes", []):
        if n.get("block") is not None:
            findings.setdefault(n["block"], []).append(f"note {n['rule']}: {n['message']}")
    links = sorted({(b["block"], h) for b in blocks for h in b.get("memmap_host_blocks") or ()
                    if h != b["block"] and hot.get(h) and h in hot})
    target = doc.get("target", {})
    t = title or f"{target.get('release', '?')} ({target.get('arch', '?')})"
    # Older documents have no page_size: 4 KiB (x86-64, arm64 as built here).
    page_size = int(doc.get("features", {}).get("page_size") or 4096)
    return MapView(t, ppb, page_size, per_cell, nodes, marks, links, findings, len(blocks))


# --- text ------------------------------------------------------------------------------------


def _terminal_caps(out: TextIO) -> Tuple[bool, bool]:
    """(Unicode, colour) for ``out``."""
    tty = hasattr(out, "isatty") and out.isatty()
    enc = (getattr(out, "encoding", None) or "").lower().replace("-", "")
    unicode = tty and enc.startswith("utf8") and os.environ.get("TERM") != "dumb"
    color = tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    return unicode, color


def _size(pages: int, page_size: int) -> str:
    b = pages * page_size
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if b >= 1 << shift and b % (1 << shift) == 0:
            return f"{b >> shift} {unit}"
    return f"{b} B"


def _cell_text(c: Cell, unicode: bool, color: bool) -> str:
    u = 1 if unicode else 0
    if c.kind == "gap":
        return KINDS["gap"][u].ljust(CELL)
    kind = KINDS[c.kind][u]
    home = HOMES[c.home][u]
    mark = FINDINGS[c.finding][u]
    if not color:
        return kind + home + mark + " "
    bg = KINDS[c.kind][2]
    fg = FINDINGS[c.finding][2]
    body = f"\x1b[{bg};30m{kind}{home}\x1b[0m" if bg else kind + home
    return body + (f"\x1b[1;{fg}m{mark}\x1b[0m" if fg else mark) + " "


def render_text(view: MapView, width: Optional[int] = None, unicode: Optional[bool] = None,
                color: Optional[bool] = None, out: Optional[TextIO] = None) -> str:
    """The map for a terminal ``width`` columns wide (default: the
    terminal's), with a legend.  ``unicode`` / ``color`` default to what
    ``out`` (stdout) can show."""
    out = out or sys.stdout
    caps = _terminal_caps(out)
    unicode = caps[0] if unicode is None else unicode
    color = caps[1] if color is None else color
    if width is None:
        try:
            width = os.get_terminal_size(out.fileno()).columns
        except (OSError, ValueError, AttributeError):
            width = int(os.environ.get("COLUMNS", "100") or 100)
    label = 8
    per_row = max(4, (width - label) // CELL)
    block_size = _size(view.pages_per_block, view.page_size)
    lines = [f"memory map: {view.title}; {view.total_blocks} blocks of {block_size}; "
             + ("1 cell = 1 block" if view.per_cell == 1
                else f"1 cell = up to {view.per_cell} blocks (worst finding shown)")]
    for node, cells in view.nodes.items():
        lines.append(f"node {node if node is not None else '?'}")
        for i in range(0, len(cells), per_row):
            row = cells[i:i + per_row]
            lines.append(f"{row[0].first:>{label - 2}}  "
                         + "".join(_cell_text(c, unicode, color) for c in row).rstrip())
        gaps = [c for c in cells if c.kind == "gap"]
        for g in gaps:
            lines.append(f"{'':>{label}}({KINDS['gap'][1 if unicode else 0]}: blocks "
                         f"{g.first}-{g.first + g.span - 1} absent)")
    u = 1 if unicode else 0
    lines.append("")
    lines.append("a cell is: state, where its struct pages live, worst finding; "
                 "rows start with a block id")
    legend = [("state", [f"{KINDS[k][u]} {KINDS[k][4]}" for k in KINDS]),
              ("memmap", [f"{HOMES[k][u]} {HOMES[k][2]}" for k in HOMES if k != "none"]),
              ("worst", [f"{FINDINGS[k][u]} {FINDINGS[k][4]}" for k in FINDINGS if k != "ok"])]
    for name, items in legend:
        line = f"  {name + ':':<8}"
        for item in items:
            if len(line) + len(item) + 3 > width and line.strip() != name + ":":
                lines.append(line.rstrip())
                line = " " * 10
            line += item + "   "
        lines.append(line.rstrip())
    return "\n".join(lines)


# --- SVG -------------------------------------------------------------------------------------

_CW, _CH, _GAP, _LEFT, _TOP, _ROW = 26, 26, 4, 60, 34, 34


def _tooltip(view: MapView, c: Cell) -> str:
    if c.kind == "gap":
        return f"blocks {c.first}-{c.first + c.span - 1}: no memory"
    parts = []
    for b in c.blocks:
        start, n = b["start_pfn"], b["nr_pages"]
        # The cell's home, decided in build() against every block (whether a
        # host block is hot-plugged); a shared cell's is the cell's, not each block's.
        home = HOMES[c.home][2] if len(c.blocks) == 1 else ""
        lines = [f"block {b['block']}: pfns {start:#x}-{start + n - 1:#x}, node {b.get('node')}, "
                 f"{b.get('zone') or '-'}, {b.get('state')}"
                 + (", hot-plugged" if b.get("hotplugged") else ", boot"),
                 f"vmemmap pages: recorded {b.get('recorded_vmemmap_pages')}, found "
                 f"{b.get('self_hosted_pages')} self-hosted",
                 f"struct pages on frames of blocks {b.get('memmap_host_blocks')}"
                 + (f" ({home})" if home else ""),
                 f"verdict: {b.get('verdict')}"]
        lines += view.findings.get(b["block"], [])
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _layout(view: MapView, per_row: int) -> Tuple[Dict[Tuple[Optional[int], int],
                                                        Tuple[float, float]], int, int,
                                                   List[Tuple[str, float]]]:
    """Cell positions by (node, first block id), the canvas size and node labels."""
    pos: Dict[Tuple[Optional[int], int], Tuple[float, float]] = {}
    labels: List[Tuple[str, float]] = []
    y = _TOP
    for node, cells in view.nodes.items():
        labels.append((f"node {node if node is not None else '?'}", y + 12))
        y += 18
        for i, c in enumerate(cells):
            if i and i % per_row == 0:
                y += _CH + _GAP
            pos[(node, c.first)] = (_LEFT + (i % per_row) * (_CW + _GAP), y)
        y += _CH + _ROW
    width = _LEFT + per_row * (_CW + _GAP) + 20
    return pos, width, y, labels


def render_svg(view: MapView, per_row: int = 32) -> str:
    """The map as a standalone SVG document."""
    used = max((len(cells) for cells in view.nodes.values()), default=1)
    pos, width, height, labels = _layout(view, min(per_row, max(used, 1)))
    width = max(width, 780)
    legend_y = height
    height += 120
    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="vmemmap-map" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" '
           f'font-size="11">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" '
           'markerHeight="6" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
           'fill="#444"/></marker></defs>',
           f'<text x="8" y="18" font-size="14" font-weight="bold">{e(view.title)}: '
           f'{view.total_blocks} blocks of {_size(view.pages_per_block, view.page_size)}'
           + ("" if view.per_cell == 1 else f", 1 cell = up to {view.per_cell} blocks")
           + '</text>']
    for text, y in labels:
        out.append(f'<text x="8" y="{y}" font-weight="bold">{e(text)}</text>')
    cell_of: Dict[int, Cell] = {}
    for cells in view.nodes.values():
        for c in cells:
            x, y = pos[(c.node, c.first)]
            if c.kind == "gap":
                out.append(f'<g class="gap"><title>{e(_tooltip(view, c))}</title>'
                           f'<text x="{x + 3}" y="{y + 15}">{KINDS["gap"][1]}</text></g>')
                continue
            for b in c.blocks:
                cell_of[b["block"]] = c
            fill = KINDS[c.kind][3]
            stroke = FINDINGS[c.finding][3] or "#555"
            sw = 2.5 if c.finding in ("error", "warning") else 1
            ids = " ".join(str(b["block"]) for b in c.blocks)
            out.append(
                f'<g class="block" data-blocks="{ids}" data-kind="{c.kind}" '
                f'data-home="{c.home}" data-finding="{c.finding}">'
                f'<title>{e(_tooltip(view, c))}</title>'
                f'<rect class="block" x="{x}" y="{y}" width="{_CW}" height="{_CH}" rx="2" '
                f'fill="{fill}" stroke="{stroke}" stroke-width="{sw}"/>'
                f'<text x="{x + 2}" y="{y + 9}" font-size="8">{c.first % 1000}</text>'
                + (f'<circle cx="{x + _CW / 2}" cy="{y + 15}" r="4" fill="#222"/>'
                   if c.home == "own" else
                   f'<text x="{x + 8}" y="{y + 21}" font-size="13">\u2192</text>'
                   if c.home == "other" else "")
                + '</g>')
    for m in view.marks:
        mc = cell_of.get(m.block)
        if mc is None:
            continue
        x, y = pos[(mc.node, mc.first)]
        x0: float = x
        w: float = _CW
        if len(mc.blocks) == 1:  # grouped: the mark spans the cell
            x0 = x + m.start * _CW
            w = max(2.0, (m.end - m.start) * _CW)
        color = FINDINGS.get(m.severity, FINDINGS["error"])[3]
        out.append(f'<rect class="mark {e(m.severity)}" data-block="{m.block}" '
                   f'data-rule="{e(m.rule)}" x="{x0:.2f}" y="{y + _CH - 6}" width="{w:.2f}" '
                   f'height="6" fill="{color}"><title>{e(m.text)}</title></rect>')
    for src, dst in view.links:
        ca, cb = cell_of.get(src), cell_of.get(dst)
        if ca is None or cb is None or ca is cb:
            continue
        (x1, y1), (x2, y2) = pos[(ca.node, ca.first)], pos[(cb.node, cb.first)]
        x1, y1, x2, y2 = x1 + _CW / 2, y1, x2 + _CW / 2, y2
        lift = 18 + abs(x2 - x1) / 6
        out.append(f'<path class="link" data-from="{src}" data-to="{dst}" '
                   f'd="M{x1},{y1} C{x1},{y1 - lift} {x2},{y2 - lift} {x2},{y2}" fill="none" '
                   f'stroke="#444" stroke-width="1.2" marker-end="url(#arrow)">'
                   f'<title>block {src}\'s memmap is on frames of block {dst}</title></path>')
    # Legend.
    y = legend_y
    x = 8
    out.append(f'<g class="legend"><text x="8" y="{y}" font-weight="bold">legend</text>')
    y += 14
    for k, v in KINDS.items():
        if k == "gap":
            continue
        out.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{v[3]}" stroke="#555"/>'
                   f'<text x="{x + 16}" y="{y + 10}">{e(v[4])}</text>')
        x += 16 + 6.5 * len(v[4]) + 14
        if x > width - 260:
            x, y = 8, y + 16
    x, y = 8, y + 18
    out.append(f'<circle cx="{x + 6}" cy="{y + 6}" r="4" fill="#222"/>'
               f'<text x="{x + 16}" y="{y + 10}">{e(HOMES["own"][2])}</text>')
    y += 16
    out.append(f'<text x="{x}" y="{y + 10}">\u2192</text><text x="{x + 16}" y="{y + 10}">'
               f'{e(HOMES["other"][2])}; a curve links the block to the one holding its '
               f'memmap</text>')
    y += 16
    out.append(f'<rect x="{x}" y="{y + 4}" width="12" height="6" fill="{FINDINGS["error"][3]}"/>'
               f'<text x="{x + 16}" y="{y + 10}">violation, drawn at its pfns in the block; '
               f'outline: worst finding (red error, orange warning)</text></g>')
    out.append("</svg>")
    return "\n".join(out)


# --- HTML ------------------------------------------------------------------------------------


def html_fragment(view: MapView, doc: Dict[str, Any], per_row: int = 32) -> str:
    """The map and its findings as an HTML fragment (for a page of many)."""
    e = html.escape
    rows = "".join(
        f"<tr class='{e(v['severity'])}'><td>{e(v['severity'])}</td><td>{e(v['rule'])}</td>"
        f"<td>{v['pfn_start']:#x}-{v['pfn_end'] - 1:#x}</td><td>{v.get('block')}</td>"
        f"<td>{e(str(v['expected']))}</td><td>{e(str(v['found']))}</td></tr>"
        for v in doc.get("violations", []))
    notes = "".join(f"<li>{e(n['rule'])}: {e(n['message'])}</li>" for n in doc.get("notes", []))
    parts = [render_svg(view, per_row)]
    if rows:
        parts.append("<table class='findings'><thead><tr><th>severity</th><th>rule</th>"
                     "<th>pfns</th><th>block</th><th>expected</th><th>found</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
    else:
        parts.append("<p class='clean'>No violation.</p>")
    if notes:
        parts.append(f"<ul class='notes'>{notes}</ul>")
    return "\n".join(parts)


STYLE = """body{font-family:sans-serif;margin:1.5em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;
font-size:13px;text-align:left}tr.error td{background:#fde0e0}tr.warning td{background:#fff1d6}
th{cursor:pointer;background:#f0f0f0}svg{max-width:100%;height:auto}"""


def render_html(view: MapView, doc: Dict[str, Any], per_row: int = 32) -> str:
    """A self-contained HTML page: the map, its legend and the findings."""
    e = html.escape
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>vmemmap map: "
            f"{e(view.title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>vmemmap map: {e(view.title)}</h1>"
            f"{html_fragment(view, doc, per_row)}</body></html>\n")


_SORT_JS = r"""
document.querySelectorAll('table.dumps th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.from(body.rows);
    var asc = th.dataset.order !== 'asc';
    th.dataset.order = asc ? 'asc' : 'desc';
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.key || a.cells[col].textContent;
      var y = b.cells[col].dataset.key || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? r : -r;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
// index.html#sort=N sorts by column N on load (a link to a sorted view).
var m = /sort=(\d+)/.exec(location.hash);
if (m) { document.querySelectorAll('table.dumps th')[+m[1]].click(); }
"""


def triage_html(results: Sequence[Dict[str, Any]], directory: str) -> str:
    """Write ``DIRECTORY/index.html`` for a triage run: a sortable table of
    the dumps and their verdicts, then each analysed dump's map and
    findings.  Returns the path written."""
    e = html.escape
    os.makedirs(directory, exist_ok=True)
    rows, sections = [], []
    for i, doc in enumerate(sorted(results, key=lambda d: str(d.get("path")))):
        path = str(doc.get("path", "?"))
        status = str(doc.get("status", "?"))
        violations = doc.get("violations", [])
        errors = sum(1 for v in violations if v.get("severity") == "error")
        warnings = sum(1 for v in violations if v.get("severity") == "warning")
        release = doc.get("target", {}).get("release", "")
        anchor = f"dump{i}"
        link = f"<a href='#{anchor}'>map</a>" if doc.get("blocks") else e(doc.get("error", ""))
        rows.append(f"<tr class='{e(status)}'><td>{e(path)}</td><td>{e(release)}</td>"
                    f"<td>{e(status)}</td><td>{errors}</td><td>{warnings}</td>"
                    f"<td>{len(doc.get('blocks', []))}</td>"
                    f"<td>{float(doc.get('seconds') or 0):.2f}</td><td>{link}</td></tr>")
        if doc.get("blocks"):
            view = build(doc, title=f"{path}: {release}")
            sections.append(f"<section id='{anchor}' class='dump'><h2>{e(path)}</h2>"
                            f"{html_fragment(view, doc)}</section>")
    counts = Counter(str(d.get("status", "?")) for d in results)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>vmemmap triage"
            f"</title><style>{STYLE}\ntr.violations td{{background:#fde0e0}}"
            f"tr.error td{{background:#eee}}</style></head><body><h1>vmemmap triage: "
            f"{len(results)} dumps</h1><p class='summary'>{e(summary)}</p>"
            "<table class='dumps'><thead><tr><th>dump</th><th>release</th><th>status</th>"
            "<th>errors</th><th>warnings</th><th>blocks</th><th>seconds</th><th>map</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>{''.join(sections)}"
            f"<script>{_SORT_JS}</script></body></html>\n")
    out = os.path.join(directory, "index.html")
    with open(out, "w", encoding="utf-8") as f:
        f.write(page)
    return out
