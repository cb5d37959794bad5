"""One-line descriptions of failures, for the CLI, the drgn command and triage."""

import drgn

from .target import TargetError

__all__ = ("describe",)


def describe(e: BaseException) -> str:
    """A single line saying what went wrong, without a traceback."""
    if isinstance(e, TargetError):
        return str(e)
    if isinstance(e, drgn.FaultError):
        return (f"memory the analysis needs is missing from the dump "
                f"({str(e).splitlines()[0]})")
    if isinstance(e, (LookupError, drgn.ObjectNotFoundError)):
        return (f"the kernel's debug info lacks {str(e).splitlines()[0] if str(e) else e!r}: "
                "is this a SPARSEMEM_VMEMMAP kernel with MEMORY_HOTPLUG, and the right vmlinux?")
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
