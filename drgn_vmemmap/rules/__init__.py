"""
Rules
-----

The invariants of DESIGN.md's rule catalogue, each a small generator over a
:class:`~drgn_vmemmap.context.Context` that yields
:class:`~drgn_vmemmap.records.Violation`,
:class:`~drgn_vmemmap.records.NotChecked` or :class:`~drgn_vmemmap.records.Holds`
records.  Every
rule on every range ends as one of the three.
"""

from typing import Callable, Dict, Iterator

from ..records import Holds, Result
from .backing import cross_hosted, vmemmap_unbacked
from .blocks import altmap_mismatch, block_geometry, early_self_hosted, section_state
from .markers import marker_stray, section_marker, vmemmap_unmarked
from .memmap import memmap_type
from .pages import hvo_self_hosted, vmemmap_page_state

__all__ = ("Holds", "RULES", "Result")


RULES: Dict[str, Callable[..., Iterator[Result]]] = {
    "block-geometry": block_geometry,
    "section-state": section_state,
    "early-self-hosted": early_self_hosted,
    "altmap-mismatch": altmap_mismatch,
    "vmemmap-unbacked": vmemmap_unbacked,
    "cross-hosted": cross_hosted,
    "vmemmap-unmarked": vmemmap_unmarked,
    "marker-stray": marker_stray,
    "vmemmap-page-state": vmemmap_page_state,
    "section-marker": section_marker,
    "hvo-self-hosted": hvo_self_hosted,
    "memmap-type": memmap_type,
}
