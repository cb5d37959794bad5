"""
Page types
----------

How a kernel encodes ``page_type`` (``page_has_type()``, ``PageBuddy()``
...), detected from its debug info: the ``PGTY_*`` top byte of 6.12+, the
inverted bits of ``enum pagetype`` (6.10-6.11), or the macros before,
confirmed through VMCOREINFO where the kernel exports them.
"""

from typing import Dict, NamedTuple, Optional

from drgn import FaultError, Program

__all__ = ("PageTypes", "page_types")


class PageTypes(NamedTuple):
    """How ``page_type`` says a page has a type.

    ``scheme`` is ``"pgty"`` (top byte, ``enum pagetype``'s ``PGTY_*``, Linux
    6.12+) or ``"inverted"`` (a type's bit is *cleared* under ``base``; Linux
    4.18-6.11).  ``types`` maps type names (``"buddy"``, ``"offline"``, ...) to
    the top-byte value (pgty) or the bit (inverted).
    """

    scheme: str
    base: int
    types: Dict[str, int]
    source: str
    #: Inverted scheme: ``page_has_type()`` is ``(int)page_type <
    #: PAGE_MAPCOUNT_RESERVE`` (-128 up to 6.10, ``~0xffff`` in 6.11).
    reserve: int = -128


def _enumerators(prog: Program, type_name: str) -> Dict[str, int]:
    try:
        t = prog.type(type_name)
    except LookupError:
        return {}
    return {e.name: e.value for e in (t.enumerators or ())}


# Page types before they were an enum: include/linux/page-flags.h.  The
# values under PAGE_TYPE_BASE 0xf0000000 never moved until 6.11.
_OLD_PAGE_TYPES = {"buddy": 0x80, "offline": 0x100, "table": 0x200, "guard": 0x400}


def page_types(prog: Program, extra: Optional[Dict[str, int]]) -> PageTypes:
    enum = _enumerators(prog, "enum pagetype")
    pgty = {k[len("PGTY_"):]: v for k, v in enum.items() if k.startswith("PGTY_")}
    if pgty:
        # Linux kernel commit 4ffca5a96678 ("mm: support only one page_type
        # per page") (in v6.12): the type is the top byte.
        pgty.pop("mapcount_underflow", None)
        types = dict(pgty)
        types.update(extra or {})
        return PageTypes("pgty", 0, types, "enum pagetype")
    if enum:
        # v6.10-v6.11: enum pagetype of PG_* bits and PAGE_TYPE_BASE.
        base = enum.get("PAGE_TYPE_BASE", 0xF0000000) & 0xFFFFFFFF
        types = {k[3:]: v & 0xFFFFFFFF for k, v in enum.items() if k.startswith("PG_")}
        types.update(extra or {})
        reserve = enum.get("PAGE_MAPCOUNT_RESERVE", -128) & 0xFFFFFFFF
        reserve = reserve - (1 << 32) if reserve & 0x80000000 else reserve
        return PageTypes("inverted", base, types, "enum pagetype", reserve)
    # Up to v6.9: macros.  Confirm the encoding through VMCOREINFO when
    # possible (PAGE_BUDDY_MAPCOUNT_VALUE is ~PG_buddy).
    types = dict(_OLD_PAGE_TYPES)
    source = "macros (assumed)"
    try:
        info = prog["VMCOREINFO"].string_().decode()
        for line in info.splitlines():
            if line.startswith("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)="):
                buddy = ~int(line.split("=", 1)[1]) & 0xFFFFFFFF
                types["buddy"] = buddy
                source = "macros (VMCOREINFO)"
            elif line.startswith("NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)="):
                types["offline"] = ~int(line.split("=", 1)[1]) & 0xFFFFFFFF
            elif line.startswith("NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)="):
                types["hugetlb"] = ~int(line.split("=", 1)[1]) & 0xFFFFFFFF
            elif line.startswith("NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)="):
                types["slab"] = ~int(line.split("=", 1)[1]) & 0xFFFFFFFF
    except (KeyError, LookupError, FaultError, UnicodeDecodeError):
        pass
    types.update(extra or {})
    return PageTypes("inverted", 0xF0000000, types, source)
