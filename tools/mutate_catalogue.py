"""
The mutation corpus's catalogue (``tools/mutate.py``): what can be
corrupted, with what weight, and how a :class:`Mutation` is drawn from a
seed so that any one can be replayed alone.  The classes are described in
``tools/mutate.py``; the ``dump`` class lives in ``tools/mutate_dump.py``.
"""

import random
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from drgn import FaultError, offsetof, sizeof  # noqa: E402

from tools.mutate_kernel import Subject  # noqa: E402

PAGE_CLASSES = ("vmemmap-page", "block-page", "compound", "hvo-folio", "hvo-replacement",
                "buddy", "slab", "page-table", "memmap-frame")
CLASSES = (("vmemmap-page", 25), ("block-page", 12), ("section", 13), ("block", 15),
           ("compound", 8), ("hvo-folio", 7), ("hvo-replacement", 4), ("buddy", 6),
           ("slab", 5), ("page-table", 5), ("dump", 4), ("memmap-frame", 10))
#: Classes drawn only on kernels that have what they target (so that adding
#: one leaves every other kernel's draws as they were).
_ONLY_WITH = {"memmap-frame": lambda s: s.k.memmap_type is not None}
PAGE_FIELDS = (("flags", 35), ("page_type", 20), ("refcount", 15), ("mapping", 15),
               ("compound_head", 15))
#: Classes of pages that are not vmemmap pages: more weight on the flags
#: (where the marker and its aliases are), and the folio's ``private``.
OTHER_PAGE_FIELDS = (("flags", 45), ("page_type", 15), ("refcount", 10), ("mapping", 10),
                     ("compound_head", 10), ("private", 10))
#: Frames that hold struct pages (PGTY_memmap kernels): the type first.
MEMMAP_FRAME_FIELDS = (("page_type", 50), ("flags", 20), ("refcount", 10), ("mapping", 10),
                       ("compound_head", 10))
#: How often the first bit flipped is a field's top (sign) bit.
TOP_BIT = 0.1
INTERESTING_FLAGS = ("PG_owner_priv_1", "PG_reserved", "PG_lru", "PG_head", "PG_swapbacked",
                     "PG_slab")


# --- mutations ------------------------------------------------------------------------


class Mutation(NamedTuple):
    index: int
    klass: str
    #: ``pfn`` for pages, section number, block id.
    target: int
    field: str
    offset: int  # in the working file
    size: int  # bytes
    old: int
    new: int
    bits: Tuple[int, ...]
    #: Object context for the oracle: pages: ``{"page": fields, "pfns":
    #: every pfn the bytes describe}``; blocks: the block's record.
    context: Dict[str, Any]

    def describe(self) -> str:
        if self.klass == "dump":
            return f"#{self.index} dump {self.field}: {self.context['what']}"
        what = "section" if self.klass == "section" else "block" if self.klass == "block" \
            else "pfn"
        extra = ""
        pfns = self.context.get("pfns") or ()
        if len(pfns) > 1:
            extra = f" (aliased: {len(pfns)} struct pages)"
        return (f"#{self.index} {self.klass} {what} {self.target:#x} {self.field}: "
                f"{self.old:#x} -> {self.new:#x} (bits {', '.join(map(str, self.bits))})"
                f"{extra}")


def _weighted(rng: random.Random, choices: Sequence[Tuple[str, int]]) -> str:
    return rng.choices([c for c, _ in choices], [w for _, w in choices])[0]


def _bits(rng: random.Random, hi: int, first: int, lo: int = 0) -> Tuple[int, ...]:
    """Bit ``first`` and, 30% of the time, 1-2 more random bits of ``[lo, hi)``."""
    bits = [first]
    extra = min(rng.choices([0, 1, 2], [70, 20, 10])[0], hi - lo - 1)
    while len(bits) < 1 + extra:
        b = rng.randrange(lo, hi)
        if b not in bits:
            bits.append(b)
    return tuple(sorted(bits))


def _flipped(old: int, bits: Sequence[int]) -> int:
    for b in bits:
        old ^= 1 << b
    return old


def _page_field(s: Subject, field: str) -> Tuple[int, int]:
    """(offset in struct page, size) of a mutable struct page field."""
    return s.k.fields[field]


def page_mutation(s: Subject, index: int, klass: str, pfn: int, field: str,
                  bits: Sequence[int]) -> Optional[Mutation]:
    """Flip ``bits`` of ``field`` of the struct page of ``pfn`` (None if not in the file)."""
    off, size = _page_field(s, field)
    offset = s.offset_of(s.k.vmemmap + pfn * s.k.page_bytes + off, size)
    if offset is None:
        return None
    try:
        page = s.page_fields(pfn)
    except FaultError:
        return None
    old = s.read_file(offset, size)
    return Mutation(index, klass, pfn, field, offset, size, old, _flipped(old, bits),
                    tuple(sorted(bits)), {"page": page, "pfns": s.aliases(pfn)})


def section_mutation(s: Subject, index: int, nr: int, bits: Sequence[int]) -> Optional[Mutation]:
    """Flip ``bits`` of ``mem_section[nr].section_mem_map``."""
    offset = s.offset_of(s.sections[nr][0], 8)  # the first member
    if offset is None:
        return None
    field = "flags" if all(b < s.k.map_last_bit for b in bits) else "mem_map"
    old = s.read_file(offset, 8)
    return Mutation(index, "section", nr, field, offset, 8, old, _flipped(old, bits),
                    tuple(sorted(bits)), {})


def block_field(s: Subject, bid: int, field: str) -> Tuple[int, int]:
    """(kernel address, size) of ``field`` (``"state"``, ``"altmap.alloc"``...) of block ``bid``."""
    b = s.blocks[bid]
    if field.startswith("altmap."):
        member = field.split(".", 1)[1]
        base, t = b["altmap_address"], s.k.altmap_type
    else:
        member, base, t = field, b["address"], s.k.mb_type
    return base + offsetof(t, member), sizeof(t.member(member).type)


def block_mutation(s: Subject, index: int, bid: int, field: str,
                   bits: Sequence[int]) -> Optional[Mutation]:
    """Flip ``bits`` of ``field`` of memory block ``bid``."""
    b = s.blocks[bid]
    address, size = block_field(s, bid, field)
    offset = s.offset_of(address, size)
    if offset is None:
        return None
    old = s.read_file(offset, size)
    context = {"state_value": b["state_value"], "start_section_nr": b["start_section_nr"],
               "nid": b["nid"], "vmemmap_pages": b["vmemmap_pages"],
               "altmap": dict(b["altmap"]) if b["altmap"] is not None else None}
    return Mutation(index, "block", bid, field, offset, size, old, _flipped(old, bits),
                    tuple(sorted(bits)), context)


def _page_target(s: Subject, rng: random.Random, klass: str) -> Optional[int]:
    k = s.k
    if klass == "vmemmap-page":
        if not s.self_hosted:
            return None
        start, end = s.self_hosted[rng.choice(sorted(s.self_hosted))]
        return rng.randrange(start, end)
    if klass == "block-page":
        if not s.hotplugged:
            return None
        bid = rng.choice(s.hotplugged)
        return rng.randrange(bid * k.ppb, (bid + 1) * k.ppb)
    if klass in ("compound", "hvo-folio"):
        heads = s.compound_heads if klass == "compound" else s.hvo_heads
        if not heads:
            return None
        f = s.folios[rng.choice(heads)]
        which = rng.choices([0, 1, 2, 3], [40, 25, 20, 15 if klass == "hvo-folio" else 0])[0]
        return f.head + (which if which < 3 else rng.randrange(3, 1 << f.order))
    if klass == "hvo-replacement":
        return rng.choice(s.replacement_frames) if s.replacement_frames else None
    if klass == "memmap-frame":
        # A frame with PGTY_memmap (the manifest's kpageflags) in an online
        # block: boot memmap, page-allocator memmap, HVO's pages.
        frames = s.memmap_frame_targets
        return rng.choice(frames) if frames else None
    pool = s.hot_pfns[klass] if s.hot_pfns[klass] and rng.random() < 0.7 else s.by_kind[klass]
    return rng.choice(pool) if pool else None


def _draw_page(s: Subject, rng: random.Random, index: int, klass: str) -> Optional[Mutation]:
    k = s.k
    pfn = _page_target(s, rng, klass)
    if pfn is None:
        return None
    field = _weighted(rng, PAGE_FIELDS if klass in ("vmemmap-page", "block-page")
                      else MEMMAP_FRAME_FIELDS if klass == "memmap-frame"
                      else OTHER_PAGE_FIELDS)
    width = _page_field(s, field)[1] * 8
    if rng.random() < TOP_BIT:
        first = width - 1
    elif field == "flags" and rng.random() < 0.5:
        names = [n for n in INTERESTING_FLAGS if n in k.pf]
        first = k.pf[rng.choice(names)]
    elif field == "flags" and klass not in ("vmemmap-page", "block-page") \
            and rng.random() < 0.5:
        first = k.owner_priv_1  # the marker, where the aliases live
    elif field == "compound_head" and rng.random() < 0.5:
        first = 0
    elif field == "private" and k.hpg_optimized is not None and rng.random() < 0.5:
        first = k.hpg_optimized
    elif field == "page_type" and (k.vmemmap_type is not None or k.memmap_type is not None) \
            and rng.random() < 0.2:
        # Towards PGTY_vmemmap / PGTY_memmap on the patched kernels (the top
        # byte's bits).
        first = 24 + rng.randrange(8) if k.type_scheme == "pgty" else rng.randrange(width)
    else:
        first = rng.randrange(width)
    return page_mutation(s, index, klass, pfn, field, _bits(rng, width, first))


def _draw_section(s: Subject, rng: random.Random, index: int) -> Optional[Mutation]:
    last = s.k.map_last_bit
    nr = rng.choice(sorted(s.sections))
    if rng.random() < 0.8:
        bits = _bits(rng, last, rng.randrange(last))
    else:
        first = 63 if rng.random() < TOP_BIT else rng.randrange(last, 64)
        bits = _bits(rng, 64, first, lo=last)
    return section_mutation(s, index, nr, bits)


def _block_fields(s: Subject, b: Dict[str, Any]) -> List[Tuple[str, int]]:
    fields = [("state", 25), ("start_section_nr", 15), ("nid", 10)]
    if s.k.mb_type.has_member("nr_vmemmap_pages"):
        fields.append(("nr_vmemmap_pages", 50))
    elif s.k.altmap_type is not None and b["altmap"] is not None:
        fields += [("altmap.alloc", 15), ("altmap.free", 15), ("altmap.base_pfn", 10),
                   ("altmap.end_pfn", 5), ("altmap.reserve", 5)]
    return fields


def _draw_block(s: Subject, rng: random.Random, index: int) -> Optional[Mutation]:
    hot = [bid for bid in s.hotplugged if bid in s.blocks]
    boot = sorted(set(s.blocks) - set(hot))
    pool = hot if (hot and (rng.random() < 0.7 or not boot)) else boot
    bid = rng.choice(pool)
    b = s.blocks[bid]
    if b["state"] == "?":
        return None
    field = _weighted(rng, _block_fields(s, b))
    width = block_field(s, bid, field)[1] * 8
    # Low bits mostly: flipping bit 60 of a count is a less telling corruption.
    if rng.random() < TOP_BIT:
        first = width - 1
    elif field in ("state", "nid"):
        first = rng.randrange(min(width, 8)) if rng.random() < 0.8 else rng.randrange(width)
    elif field in ("altmap.base_pfn", "altmap.end_pfn"):
        first = rng.randrange(min(width, 40))
    else:
        first = rng.randrange(min(width, 16)) if rng.random() < 0.8 else rng.randrange(width)
    return block_mutation(s, index, bid, field, _bits(rng, width, first))


def draw(s: Subject, seed: int, index: int, only: Optional[Sequence[str]] = None) -> Mutation:
    """Mutation ``index`` of ``seed`` for this subject (deterministic), of the
    classes ``only`` if given."""
    seed_text = f"{seed}/{s.name}/{index}" if not only else \
        f"{seed}/{s.name}/{index}/{','.join(sorted(only))}"
    rng = random.Random(seed_text)
    classes = [c for c in CLASSES if (not only or c[0] in only)
               and _ONLY_WITH.get(c[0], lambda s: True)(s)]
    for _ in range(100):
        klass = _weighted(rng, classes)
        if klass in PAGE_CLASSES:
            m = _draw_page(s, rng, index, klass)
        elif klass == "dump":
            from tools import mutate_dump
            m = mutate_dump.draw(s, rng, index)
        elif klass == "section":
            m = _draw_section(s, rng, index)
        else:
            m = _draw_block(s, rng, index)
        if m is not None and m.new != m.old:
            return m
    raise RuntimeError(f"{s.name}: no mutation target found for #{index}")
