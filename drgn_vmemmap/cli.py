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
import sys
from typing import TYPE_CHECKING, List, Optional, TextIO, Type

if TYPE_CHECKING:
    from drgn import Program

__all__ = ("build_parser", "main", "run_command")


def _version() -> str:
    """The installed distribution's version (pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("drgn-vmemmap")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _target_options(parser: argparse.ArgumentParser, after: bool = False) -> None:
    """-k / -c / --qemu / -s: before the subcommand, or (``after``) after it,
    where SUPPRESS keeps a value given before."""
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


def _output_options(parser: argparse.ArgumentParser, default: Optional[str] = None) -> None:
    parser.add_argument("--format", choices=("table", "json", "svg", "html"), default=default,
                        help="output format (default: table on a terminal, else json; "
                             "svg and html for map)")
    parser.add_argument("--vmemmap-page-type", metavar="VALUE", default=default,
                        type=lambda s: int(s, 0),
                        help="value of a vmemmap page type that exists only as a macro "
                             "(PGTY_ top byte on 6.12+ encodings, else the inverted bit)")


def build_parser(prog: str = "drgn-vmemmap", for_drgn: bool = False,
                 parser_class: Type[argparse.ArgumentParser] = argparse.ArgumentParser
                 ) -> argparse.ArgumentParser:
    """The argument parser of the CLI, or (``for_drgn``) of ``%vmemmap``:
    no target options, no CLI-only subcommand, ``--drgn`` on each.  Both
    come from :data:`~drgn_vmemmap.subcommands.SUBCOMMANDS`."""
    from .subcommands import SUBCOMMANDS

    p = parser_class(prog=prog, description=__doc__, formatter_class=_formatter)
    if not for_drgn:
        _target_options(p)
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
        p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _output_options(p)
    # The same options after the subcommand; SUPPRESS keeps a value given
    # before it.
    common = parser_class(add_help=False)
    _output_options(common, argparse.SUPPRESS)
    # The target options too ("drgn-vmemmap check -c DUMP -s VMLINUX"), on
    # every subcommand that opens one target (not triage).
    targeted = parser_class(add_help=False)
    if not for_drgn:
        _target_options(targeted, after=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for c in SUBCOMMANDS:
        if for_drgn and c.drgn_code is None:
            continue
        parents = [common] + ([targeted] if c.targeted else [])
        sp = sub.add_parser(c.name, help=c.help, description=c.description or c.help,
                            parents=parents, formatter_class=_formatter)
        for a in c.arguments:
            sp.add_argument(*a.flags, **a.options)
        if for_drgn:
            sp.add_argument("--drgn", action="store_true",
                            help="print how to do this with drgn_vmemmap's helpers")
    return p


def run_command(prog: "Program", args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    """Run one subcommand on an open program; print; return the exit status."""
    from .subcommands import run_subcommand

    return run_subcommand(prog, args, out)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check" and args.list_rules:
        from .rules import RULES
        for rule in RULES:
            print(rule)
        return 0
    try:
        from .subcommands import by_name
        command = by_name(args.command)
        if not command.targeted:  # opens its own targets (triage)
            return int(command.run(args))
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
