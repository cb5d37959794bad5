"""
Map in a browser
----------------

The :class:`~drgn_vmemmap.mapview.MapView` of ``map --format svg|html`` and
``triage --html``: :func:`render_svg` (a hover title on every block,
violations drawn at their pfn range inside the block, cross-hosting as a
link from a block to the block whose frames hold its memmap),
:func:`render_html` (the SVG, its legend and the findings, in one
self-contained page) and :func:`triage_html` (a run's sortable table of dumps
and each dump's map).
"""

import html
import os
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .mapview import FINDINGS, HOMES, KINDS, Cell, MapView, _size, build

__all__ = ("html_fragment", "render_html", "render_svg", "triage_html")


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
