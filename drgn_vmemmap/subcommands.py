"""
Subcommands
-----------

Every subcommand is declared once, here: its name, help, arguments, what it
runs and, for ``%vmemmap NAME --drgn``, the same done with drgn_vmemmap's
helpers.  The ``drgn-vmemmap`` CLI (:mod:`~drgn_vmemmap.cli`) and the
``%vmemmap`` drgn command (:mod:`~drgn_vmemmap.plugin`) are both built from
:data:`SUBCOMMANDS`; neither lists a subcommand of its own.
"""

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, NamedTuple, Optional, TextIO, Tuple

if TYPE_CHECKING:
    from drgn import Program

__all__ = ("SUBCOMMANDS", "Arg", "Output", "Subcommand", "by_name", "run_subcommand")


class Arg(NamedTuple):
    """One ``add_argument(*flags, **options)``."""

    flags: Tuple[str, ...]
    options: Dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


class Output(NamedTuple):
    """What a subcommand produced: JSON-able data, the table text, the exit status."""

    data: Any
    table: str
    status: int = 0


class Subcommand(NamedTuple):
    name: str
    help: str
    #: ``run(prog, args)`` for a subcommand on one target; ``run(args)``
    #: returning the exit status for one that opens its own (``targeted``
    #: False: triage).
    run: Callable[..., Any]
    arguments: Tuple[Arg, ...] = ()
    description: Optional[str] = None
    targeted: bool = True
    #: The same with drgn_vmemmap's helpers (``%vmemmap NAME --drgn``);
    #: ``{pfn}`` is replaced by the argument.  None: CLI only.
    drgn_code: Optional[str] = None


def _pfn(text: str) -> int:
    return int(text, 0)


def _check(prog: "Program", args: argparse.Namespace) -> Output:
    from . import commands
    from .report import exit_status, render_table

    progress = None
    if not getattr(args, "no_progress", False) and sys.stderr.isatty():
        progress = commands.progress_bar()
    report = commands.run_check(prog, args.rule, args.vmemmap_page_type, progress,
                                getattr(args, "jobs", None))
    return Output(report.to_json(), render_table(report), exit_status(report))


# What each table subcommand runs, imported when it runs (the %vmemmap
# plugin builds its parser at drgn's start-up, before any of it is needed).


def _ranges(prog: "Program", args: argparse.Namespace) -> Output:
    from .commands import cmd_ranges

    return Output(*cmd_ranges(prog, args))


def _blocks(prog: "Program", args: argparse.Namespace) -> Output:
    from .commands import cmd_blocks

    return Output(*cmd_blocks(prog, args))


def _sections(prog: "Program", args: argparse.Namespace) -> Output:
    from .commands import cmd_sections

    return Output(*cmd_sections(prog, args))


def _explain(prog: "Program", args: argparse.Namespace) -> Output:
    from .commands import cmd_explain

    return Output(*cmd_explain(prog, args))


def _features(prog: "Program", args: argparse.Namespace) -> Output:
    from .commands import cmd_features

    return Output(*cmd_features(prog, args))


def _map(prog: "Program", args: argparse.Namespace) -> Output:
    from . import commands
    from .check import check
    from .maphtml import render_html, render_svg
    from .mapview import build, render_text

    progress = None
    if not args.no_progress and sys.stderr.isatty():
        progress = commands.progress_bar()
    report = check(prog, vmemmap_page_type=args.vmemmap_page_type, progress=progress,
                   jobs=args.jobs)
    doc = report.to_json()
    view = build(doc)
    fmt = args.format or ("table" if sys.stdout.isatty() else "json")
    status = 1 if report.errors() else 0
    if fmt in ("svg", "html"):
        text = render_svg(view) if fmt == "svg" else render_html(view, doc)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
            return Output({"written": args.output}, f"wrote {args.output}", status)
        return Output(text, text, status)
    data = {"title": view.title, "blocks_per_cell": view.per_cell,
            "nodes": {str(n): [c._replace(blocks=tuple(b["block"] for b in c.blocks))._asdict()
                               for c in cells] for n, cells in view.nodes.items()},
            "marks": [m._asdict() for m in view.marks], "links": view.links}
    return Output(data, render_text(view, width=args.width), status)


def _watch(prog: "Program", args: argparse.Namespace) -> Output:
    from .watch import watch_main

    fmt = args.format or ("table" if sys.stdout.isatty() else "json")
    verify = None if args.verify_every < 0 else args.verify_every
    return Output(None, "", watch_main(prog, fmt, args.interval, args.duration,
                                       verify_every=verify,
                                       vmemmap_page_type=args.vmemmap_page_type))


def _triage(args: argparse.Namespace) -> int:
    from .triage import triage_main

    return triage_main(args)


SUBCOMMANDS: Tuple[Subcommand, ...] = (
    Subcommand(
        "check", "run the consistency rules (the default job)", _check,
        (arg("--rule", action="append", metavar="ID",
             help="run only this rule (repeatable); see 'check --list-rules'"),
         arg("--list-rules", action="store_true", help="list the rule ids and exit"),
         arg("--no-progress", action="store_true", help="no progress bar on stderr"),
         arg("-j", "--jobs", type=int, default=None, metavar="N",
             help="processes for the whole-memory scan (default: one per CPU, up to 8, on "
                  "core dumps of 4 GiB or more; else 1)")),
        description="Run every rule of the catalogue and report violations.",
        drgn_code="""\
from drgn_vmemmap import check, render_table

report = check(prog)
print(render_table(report))
for v in report.violations:
    print(v.rule, v.severity, hex(v.pfn_start), hex(v.pfn_end), v.found)
"""),
    Subcommand(
        "ranges", "self-hosted vmemmap ranges found from the page tables",
        _ranges, drgn_code="""\
from drgn_vmemmap import memory_map, vmemmap_backing, self_hosted_ranges

mm = memory_map(prog)
for r in self_hosted_ranges(prog, mm, vmemmap_backing(prog, mm)):
    print(r.block, hex(r.start_pfn), r.nr_pages, r.state)
"""),
    Subcommand(
        "blocks", "memory blocks: state, node, zone, recorded vmemmap pages",
        _blocks, drgn_code="""\
from drgn_vmemmap import memory_map

for block in memory_map(prog).blocks.values():
    print(block.id, block.state, block.nid, block.zone, block.vmemmap_pages, block.altmap)
"""),
    Subcommand(
        "sections", "present SPARSEMEM sections and their flags",
        _sections, drgn_code="""\
from drgn_vmemmap import memory_map

for section in memory_map(prog).sections.values():
    print(section.nr, hex(section.start_pfn), "|".join(section.flag_names))
"""),
    Subcommand(
        "explain", "everything known about one pfn", _explain,
        (arg("pfn", type=_pfn, help="page frame number (0x... accepted)"),),
        drgn_code="""\
from drgn_vmemmap import explain_pfn

print(explain_pfn(prog, {pfn}))
"""),
    Subcommand(
        "features", "what was detected about this kernel", _features,
        drgn_code="""\
from drgn_vmemmap import features

print(features(prog))
"""),
    Subcommand(
        "map", "draw physical memory one cell per memory block (terminal, SVG, HTML)", _map,
        (arg("-o", "--output", metavar="FILE",
             help="write the SVG or HTML map to FILE (default: stdout)"),
         arg("--width", type=int, default=None, metavar="COLUMNS",
             help="terminal width to wrap to (default: the terminal's)"),
         arg("--no-progress", action="store_true", help="no progress bar on stderr"),
         arg("-j", "--jobs", type=int, default=None, metavar="N",
             help="processes for the whole-memory scan (as for check)")),
        description="Check every rule, then draw physical memory one cell per memory block: "
                    "its state and zone (M online movable, K online in a kernel zone, B boot, "
                    "o offline), where its struct pages live (s its own block: self-hosted; "
                    ". boot memory; > another hot-plugged block) and its worst finding "
                    "(! error, ~ warning, ? not checked, n note).  Nodes are drawn apart, rows "
                    "wrap to the terminal and are labelled with their first block id; colour "
                    "and Unicode only on a terminal that has them (NO_COLOR is honoured).  "
                    "--format svg or html writes the same map for a browser (-o FILE): hover a "
                    "block for its pfns, node, zone, vmemmap pages and findings; violations "
                    "are drawn at their pfns inside the block, cross-hosting as a link to the "
                    "block that holds the memmap.  Exit status as for check.",
        drgn_code="""\
from drgn_vmemmap import check
from drgn_vmemmap.maphtml import render_svg
from drgn_vmemmap.mapview import build, render_text

view = build(check(prog).to_json())
print(render_text(view))
open("map.svg", "w").write(render_svg(view))
"""),
    Subcommand(
        "watch", "re-check a live kernel whenever its memory map changes", _watch,
        (arg("--interval", type=float, default=0.1, metavar="SECONDS",
             help="how often to look for a change (default 0.1; never more often than "
                  "leaves 4 times a look's duration between looks)"),
         arg("--duration", type=float, default=None, metavar="SECONDS",
             help="stop after this long (default: until Ctrl-C)"),
         arg("--verify-every", type=float, default=600.0, metavar="SECONDS",
             help="rebuild the model from scratch this often and compare it with the "
                  "refreshed one, re-checking too (default 600; 0: at every re-check; "
                  "-1: never)")),
        description="Live kernels only (-k, --qemu).  Keeps a model of the kernel's memory "
                    "map and vmemmap page tables and refreshes it every --interval, reading "
                    "again only what changed: uevent_seqnum and the hotplug locks (a memory "
                    "block added, removed, onlined or offlined), the mem_section roots, the "
                    "page-table pages under the vmemmap (HugeTLB vmemmap optimisation "
                    "remaps them without a uevent) and the markers on the memmap frames of "
                    "hot-plugged memory.  On any change it prints which blocks changed, "
                    "and why, and re-checks.  A finding of a settled re-check (no "
                    "block in transition, hotplug locks free, uevent_seqnum unchanged across "
                    "it) is a violation; one seen only mid-transition is reported as "
                    "transient, with how long it lasted.  One line per change (JSON lines "
                    "with --format json), a summary on Ctrl-C or SIGTERM.  Exit status 1 if "
                    "a violation of error severity was seen.",
        drgn_code="""\
from drgn_vmemmap.watch import watch

summary = watch(prog, interval=0.1, duration=60, emit=print)
"""),
    Subcommand(
        "triage", "check many dumps in parallel, one JSON line each", _triage,
        (arg("paths", nargs="+", metavar="DUMP_OR_DIR"),
         arg("-j", "--jobs", type=int, default=os.cpu_count() or 1,
             help="parallel workers (default: number of CPUs)"),
         arg("--debug-directory", action="append", default=[], metavar="DIR",
             help="where to look for vmlinux files (by build ID or release)"),
         arg("--map", action="append", default=[], metavar="DUMP=VMLINUX",
             help="explicit vmlinux for a dump (repeatable)"),
         arg("--scheduler", metavar="ADDRESS",
             help="run the dumps on a Dask cluster: a scheduler's tcp://HOST:PORT, or "
                  "local:N for N worker processes here (needs drgn-vmemmap[dask]; -j is "
                  "then unused)"),
         arg("--timeout", type=float, default=None, metavar="SECONDS",
             help="with --scheduler: give up a dump (an error record) after this long "
                  "(default 600)"),
         arg("--resume", metavar="RESULTS.jsonl",
             help="skip the dumps this file has a line for; append the new lines to it"),
         arg("--html", metavar="DIR",
             help="also write DIR/index.html: a sortable table of the dumps and their "
                  "verdicts, and each dump's memory map (see 'map')")),
        description="Check every dump under the given paths in parallel. Prints one JSON "
                    "line per dump (the check document plus path and timing) on stdout and "
                    "a summary table on stderr.  --scheduler runs them on a Dask cluster, "
                    "each under --timeout; --resume goes on from an earlier run's results.",
        targeted=False),
)


def by_name(name: str) -> Subcommand:
    return next(c for c in SUBCOMMANDS if c.name == name)


def drgn_code(args: argparse.Namespace) -> str:
    """The helper code equivalent to ``args`` (``%vmemmap ... --drgn``)."""
    code = by_name(args.command).drgn_code or ""
    return code.replace("{pfn}", hex(args.pfn)) if "pfn" in args else code


def run_subcommand(prog: "Program", args: argparse.Namespace,
                   out: Optional[TextIO] = None) -> int:
    """Run one targeted subcommand on an open program; print it in the
    chosen format (default: a table on a terminal, else JSON); return the
    exit status."""
    out = out or sys.stdout
    fmt = args.format or ("table" if sys.stdout.isatty() else "json")
    if fmt in ("svg", "html") and args.command != "map":
        raise ValueError(f"--format {fmt} is for 'map' only; {args.command} writes table or json")
    o: Output = by_name(args.command).run(prog, args)
    if o.data is None and not o.table:  # streamed its own output (watch)
        return o.status
    if fmt in ("svg", "html"):
        print(o.table, file=out)
        return o.status
    print(json.dumps(o.data, indent=2) if fmt == "json" else o.table, file=out)
    return o.status
