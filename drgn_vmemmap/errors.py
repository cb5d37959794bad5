"""One-line descriptions of failures, for the CLI, the drgn command and triage.

Only failures whose cause is known get a cause: a target that cannot be
analysed (:class:`~drgn_vmemmap.target.TargetError`), memory missing from the
dump (drgn's :class:`~drgn.FaultError`) and debug info that lacks what the
analysis needs (drgn's own look-up failures: :class:`~drgn.ObjectNotFoundError`
and the ``LookupError("could not find ...")`` of ``Program.type()``).
Anything else, a ``KeyError`` or ``IndexError`` of our own included, is an
internal error and says so, with the hint to rerun with ``--debug``.
"""

import drgn

from .target import TargetError

__all__ = ("UsageError", "describe", "is_missing_debug_info")


class UsageError(ValueError):
    """A request that cannot be met as given (an unknown rule name, say);
    ``str()`` is the one line to show."""


def is_missing_debug_info(e: BaseException) -> bool:
    """Whether ``e`` is drgn saying the debug info has no such object or type."""
    if isinstance(e, drgn.ObjectNotFoundError):
        return True
    # Program.type() and friends raise a plain LookupError, never a subclass.
    return type(e) is LookupError and str(e).startswith("could not find")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else ""


def describe(e: BaseException) -> str:
    """A single line saying what went wrong, without a traceback."""
    if isinstance(e, (TargetError, UsageError)):
        return str(e)
    if isinstance(e, drgn.FaultError):
        return f"memory the analysis needs is missing from the dump ({_first_line(e)})"
    if is_missing_debug_info(e):
        what = _first_line(e).replace("could not find ", "", 1) or repr(e)
        return (f"the kernel's debug info has no {what}: is this a SPARSEMEM_VMEMMAP kernel "
                "with MEMORY_HOTPLUG, and the right vmlinux?")
    text = _first_line(e)
    what = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return f"internal error ({what}); rerun with --debug for the traceback and report it"
