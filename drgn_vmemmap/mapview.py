"""
Map
---

Physical memory drawn one cell per memory block (``drgn-vmemmap map``,
``%vmemmap map``): each block's state and zone, whether it hosts its own
memmap, where its struct pages live, and its worst finding.  Built from a
check's JSON document alone (:func:`build`), so that ``triage --html`` draws
the dumps its workers checked without opening them again.

Here: the model (:func:`build`, :class:`MapView`) and :func:`render_text`
for a terminal (colour and Unicode when the terminal has them, plain ASCII
otherwise: not a tty, ``NO_COLOR``, ``TERM=dumb``, a non-UTF-8 encoding).
The browser's renderings are in :mod:`~drgn_vmemmap.maphtml`.
"""

import math
import os
import sys
from collections import Counter
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set, TextIO, Tuple

__all__ = ("Cell", "MapView", "build", "render_text")

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
