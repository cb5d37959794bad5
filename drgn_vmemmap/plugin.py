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
    from .subcommands import SUBCOMMANDS, drgn_code

    # Its errors and --help end the command, not drgn (argparse gives the
    # subcommands' parsers the class of the main one).
    parser = build_parser("%vmemmap", for_drgn=True, parser_class=_Parser)

    # drgn's decorator, typed as drgn documents it (its signature is copied
    # by a helper that mypy does not see).
    vmemmap_command: "CustomCommandFuncDecorator[Sequence[str]]" = linux_kernel_custom_command(
        name="vmemmap",
        description="check self-hosted vmemmap (memmap_on_memory) against the page tables",
        usage="**vmemmap** {" + ",".join(c.name + (" PFN" if c.name == "explain" else "")
                                         for c in SUBCOMMANDS if c.drgn_code) + "} "
              "[--format table|json|svg|html] [--drgn]",
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
            sys.stdout.write(drgn_code(ns))
            return 0
        try:
            return run_command(prog, ns)
        except Exception as e:  # one line, as the CLI
            raise CommandError(f"vmemmap: {describe(e)}") from e


_register()
