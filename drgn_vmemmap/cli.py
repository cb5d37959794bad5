"""drgn-vmemmap: is the memmap of hot-plugged memory where the kernel thinks it is?

With memory_hotplug.memmap_on_memory the struct pages of a hot-plugged memory
block live in the block's own first pages ("self-hosted vmemmap").  This tool
finds those ranges from the kernel page tables and checks that the kernel's
markings (PG_vmemmap_self_hosted, page types, section flags, memory-block
state and altmap accounting) agree with them.

examples:
  drgn-vmemmap -c /var/crash/vmcore -s vmlinux check
  drgn-vmemmap -k ranges                      # the running kernel (root)
  drgn-vmemmap --qemu ./qmp.sock check        # a QEMU guest, live
  drgn-vmemmap -c vmcore -s vmlinux.xz explain 0x110000
  drgn-vmemmap triage /var/crash -j 4 > results.jsonl

exit status: 0 consistent, 1 violations found, 2 cannot analyse.
  A dump whose memmap was overwritten before it was taken (a capture kernel
  that onlined hot-plugged memory) lists those blocks under "dump damaged"
  and checks the rest: 0 unless the rest has violations; 2 when no online
  block's memmap is left.  Pages missing from a filtered dump are "not
  checked", never violations.
"""

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, List, Optional, TextIO

if TYPE_CHECKING:
    from drgn import Program

__all__ = ("main",)

COMMANDS = ("check", "ranges", "blocks", "sections", "explain", "features", "triage")



def _version() -> str:
    """The installed distribution's version (pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("drgn-vmemmap")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"

def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def build_parser(prog: str = "drgn-vmemmap", for_drgn: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=_formatter)

    def target_options(parser: argparse.ArgumentParser, after: bool = False) -> None:
        """-k / -c / --qemu / -s: before the subcommand, or (``after``) after
        it, where SUPPRESS keeps a value given before."""
        d = argparse.SUPPRESS if after else None
        t = parser.add_argument_group("target (default: the running kernel)")
        x = t.add_mutually_exclusive_group()
        x.add_argument("-k", "--kernel", action="store_true",
                       default=argparse.SUPPRESS if after else False,
                       help="debug the running kernel through /proc/kcore (needs root)")
        x.add_argument("-c", "--core", metavar="VMCORE", default=d,
                       help="a kernel core dump: ELF (/proc/vmcore) or kdump-compressed")
        x.add_argument("--qemu", metavar="SOCKET", default=d,
                       help="a live QEMU guest through its QMP socket; give the tool a "
                            "socket of its own (QEMU accepts several -qmp options)")
        t.add_argument("-s", "--symbols", metavar="VMLINUX", action="append",
                       default=argparse.SUPPRESS if after else [],
                       help="kernel debug info (vmlinux, or vmlinux.xz, decompressed once "
                            "into ~/.cache/drgn-vmemmap); repeatable; default: drgn's search")

    if not for_drgn:
        target_options(p)
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
        p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    def output_options(parser: argparse.ArgumentParser, default: Optional[str] = None) -> None:
        parser.add_argument("--format", choices=("table", "json"), default=default,
                            help="output format (default: table on a terminal, else json)")
        parser.add_argument("--vmemmap-page-type", metavar="VALUE", default=default,
                            type=lambda s: int(s, 0),
                            help="value of a vmemmap page type that exists only as a macro "
                                 "(PGTY_ top byte on 6.12+ encodings, else the inverted bit)")

    output_options(p)
    # The same options after the subcommand; SUPPRESS keeps a value given
    # before it.
    common = argparse.ArgumentParser(add_help=False)
    output_options(common, argparse.SUPPRESS)
    # The target options too ("drgn-vmemmap check -c DUMP -s VMLINUX"), on
    # every subcommand that opens one target (not triage).
    targeted = argparse.ArgumentParser(add_help=False)
    if not for_drgn:
        target_options(targeted, after=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        parents = [common] + ([targeted] if name != "triage" else [])
        return _add(name, parents=parents, formatter_class=_formatter, **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    c = sub.add_parser("check", help="run the consistency rules (the default job)",
                       description="Run every rule of the catalogue and report violations.")
    c.add_argument("--rule", action="append", metavar="ID",
                   help="run only this rule (repeatable); see 'check --list-rules'")
    c.add_argument("--list-rules", action="store_true", help="list the rule ids and exit")
    c.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    c.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                   help="processes for the whole-memory scan (default: one per CPU, up to "
                   "8, on core dumps of 4 GiB or more; else 1)")
    sub.add_parser("ranges", help="self-hosted vmemmap ranges found from the page tables")
    sub.add_parser("blocks", help="memory blocks: state, node, zone, recorded vmemmap pages")
    sub.add_parser("sections", help="present SPARSEMEM sections and their flags")
    e = sub.add_parser("explain", help="everything known about one pfn")
    e.add_argument("pfn", type=lambda s: int(s, 0), help="page frame number (0x... accepted)")
    sub.add_parser("features", help="what was detected about this kernel")
    if not for_drgn:
        tr = sub.add_parser("triage", help="check many dumps in parallel, one JSON line each",
                            description="Check every dump under the given paths in parallel. "
                            "Prints one JSON line per dump (the check document plus path and "
                            "timing) on stdout and a summary table on stderr.")
        tr.add_argument("paths", nargs="+", metavar="DUMP_OR_DIR")
        tr.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel workers (default: number of CPUs)")
        tr.add_argument("--debug-directory", action="append", default=[], metavar="DIR",
                        help="where to look for vmlinux files (by build ID or release)")
        tr.add_argument("--map", action="append", default=[], metavar="DUMP=VMLINUX",
                        help="explicit vmlinux for a dump (repeatable)")
    return p


def _default_format(args: argparse.Namespace) -> str:
    return args.format or ("table" if sys.stdout.isatty() else "json")


def run_command(prog: "Program", args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    """Run one subcommand on an open program; print; return the exit status."""
    from . import commands

    out = out or sys.stdout
    fmt = _default_format(args)
    if args.command == "check":
        progress = None
        if not getattr(args, "no_progress", False) and sys.stderr.isatty():
            progress = commands.progress_bar()
        report = commands.run_check(prog, args.rule, args.vmemmap_page_type, progress,
                                    getattr(args, "jobs", None))
        from .report import exit_status, render_json, render_table
        print(render_json(report) if fmt == "json" else render_table(report), file=out)
        return exit_status(report)
    data, table = getattr(commands, "cmd_" + args.command)(prog, args)
    print(json.dumps(data, indent=2) if fmt == "json" else table, file=out)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check" and args.list_rules:
        from .rules import RULES
        for rule in RULES:
            print(rule)
        return 0
    try:
        if args.command == "triage":
            from .triage import triage_main
            return triage_main(args)
        from .target import TargetError, open_target
        chosen = [o for o, v in (("-k", args.kernel), ("-c", args.core), ("--qemu", args.qemu))
                  if v]
        if len(chosen) > 1:  # one before the subcommand, one after it
            raise TargetError(f"{' and '.join(chosen)}: give one target")
        prog = open_target(vmcore=args.core, qemu=args.qemu, symbols=args.symbols)
        return run_command(prog, args)
    except KeyboardInterrupt:
        print("drgn-vmemmap: interrupted", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except Exception as e:  # one line, never a traceback (unless --debug)
        if args.debug:
            raise
        from .errors import describe
        print(f"drgn-vmemmap: error: {describe(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
