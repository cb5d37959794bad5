"""
drgn plugin: the ``%vmemmap`` command.

Registered through the ``drgn.plugins`` entry point, so that in ``drgn -k``,
``drgn -c VMCORE`` or ``drgn --qemu SOCKET``::

    >>> %vmemmap check
    >>> %vmemmap ranges --format json > ranges.json
    >>> %vmemmap explain 0x110000
    >>> %vmemmap check --drgn        # print the equivalent helper code

The subcommands and options are the CLI's, without the target options.
The command returns the exit status the CLI would (0, 1 or 2).
"""

import argparse
import sys
from typing import TYPE_CHECKING, Any, Sequence

from drgn import Program

if TYPE_CHECKING:
    from drgn.commands import CustomCommandFuncDecorator

__all__ = ()

DRGN_CODE = {
    "check": """\
from drgn_vmemmap import check, render_table

report = check(prog)
print(render_table(report))
for v in report.violations:
    print(v.rule, v.severity, hex(v.pfn_start), hex(v.pfn_end), v.found)
""",
    "ranges": """\
from drgn_vmemmap import memory_map, vmemmap_backing, self_hosted_ranges

mm = memory_map(prog)
for r in self_hosted_ranges(prog, mm, vmemmap_backing(prog, mm)):
    print(r.block, hex(r.start_pfn), r.nr_pages, r.state)
""",
    "blocks": """\
from drgn_vmemmap import memory_map

for block in memory_map(prog).blocks.values():
    print(block.id, block.state, block.nid, block.zone, block.vmemmap_pages, block.altmap)
""",
    "sections": """\
from drgn_vmemmap import memory_map

for section in memory_map(prog).sections.values():
    print(section.nr, hex(section.start_pfn), "|".join(section.flag_names))
""",
    "explain": """\
from drgn_vmemmap.commands import explain

print(explain(prog, PFN))
""",
    "features": """\
from drgn_vmemmap import features

print(features(prog))
""",
}


def _register() -> None:
    try:
        from drgn.commands import CommandError, parse_shell_command
        from drgn.commands.linux import linux_kernel_custom_command
    except ImportError:  # drgn without the command framework
        return

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise CommandError(f"vmemmap: {message}")

        def exit(self, status: int = 0, message: Any = None) -> None:  # type: ignore[override]
            if message:
                sys.stderr.write(message)
            raise CommandError("") if status else _HelpShown()

    class _HelpShown(Exception):
        pass

    from .cli import build_parser

    parser = build_parser("%vmemmap", for_drgn=True)
    parser.__class__ = _Parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.__class__ = _Parser
                sub.add_argument("--drgn", action="store_true",
                                 help="print how to do this with drgn_vmemmap's helpers")

    # drgn's decorator, typed as drgn documents it (its signature is copied
    # by a helper that mypy does not see).
    vmemmap_command: "CustomCommandFuncDecorator[Sequence[str]]" = linux_kernel_custom_command(
        name="vmemmap",
        description="check self-hosted vmemmap (memmap_on_memory) against the page tables",
        usage="**vmemmap** {check,ranges,blocks,sections,explain PFN,features} "
              "[--format table|json] [--drgn]",
        long_description=parser.format_help(),
        parse=parse_shell_command,
    )

    @vmemmap_command
    def _cmd_vmemmap(prog: Program, name: str, args: Sequence[str], **kwargs: Any) -> int:
        from .cli import run_command
        from .errors import describe

        try:
            ns = parser.parse_args(list(args))
        except _HelpShown:
            return 0
        if getattr(ns, "drgn", False):
            code = DRGN_CODE[ns.command]
            if ns.command == "explain":
                code = code.replace("PFN", hex(ns.pfn))
            sys.stdout.write(code)
            return 0
        try:
            return run_command(prog, ns)
        except Exception as e:  # one line, as the CLI
            raise CommandError(f"vmemmap: {describe(e)}") from e


_register()
