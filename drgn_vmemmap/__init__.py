"""
drgn-vmemmap
------------

Find self-hosted vmemmap (``memory_hotplug.memmap_on_memory``) from the kernel
page tables and check the kernel's markings against it, with drgn.

>>> from drgn_vmemmap import check, render_table
>>> print(render_table(check(prog)))

The ``%vmemmap`` drgn command and the ``drgn-vmemmap`` CLI are built on these
helpers.
"""

from .backing import vmemmap_backing
from .check import check, self_hosted_ranges
from .explain import explain as explain_pfn
from .features import features
from .model import memory_map
from .report import Report, Violation, exit_status, render_json, render_table
from .target import TargetError, open_target

__all__ = (
    "Report",
    "TargetError",
    "Violation",
    "check",
    "exit_status",
    "explain_pfn",
    "features",
    "memory_map",
    "open_target",
    "render_json",
    "render_table",
    "self_hosted_ranges",
    "vmemmap_backing",
)
