"""
Shared test helpers: the committed vmcore fixtures and their manifests.

Any test taking a ``fixture_name`` argument runs once per fixture whose
``vmcores/fixtures/NAME.vmcore`` exists; the ``manifest`` and ``prog``
fixtures give that fixture's manifest and an opened (cached) Program.
The plain functions :func:`manifests` and :func:`fixture_program` do the same
outside pytest's fixture machinery.
"""

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import drgn
import pytest

from drgn_vmemmap.target import open_target

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # vmcores (the factory) is not installed, only drgn_vmemmap
    sys.path.insert(0, str(REPO))
FIXTURES = REPO / "vmcores" / "fixtures"
KERNELS = REPO / "vmcores" / "kernels"
#: Where the vmcore factory leaves uncompressed build products.
FACTORY_BUILD = Path(os.environ.get(
    "DRGN_VMEMMAP_FACTORY_BUILD",
    os.path.expanduser("~/.cache/drgn-vmemmap-factory/build")))


def manifests() -> Dict[str, Dict[str, Any]]:
    """
    ``{name: manifest}``, in name order, for every fixture whose vmcore
    exists (``manifests().items()`` lists ``(name, manifest)``).
    """
    out = {}
    for path in sorted(FIXTURES.glob("*.json")):
        manifest = json.loads(path.read_text())
        vmcore = FIXTURES / manifest.get("dump", {}).get("file", path.stem + ".vmcore")
        if vmcore.exists():
            out[path.stem] = manifest
    return out


def capture_overwrote(manifest: Dict[str, Any]) -> set:
    """Hot-plugged blocks a kdump capture kernel onlined (and used) before
    it wrote the dump: their memory, the crashed kernel's self-hosted memmap
    included, is the capture kernel's, not what the guest's kpageflags saw
    (vmcores/kdump.py; tests/test_kdump.py checks such dumps)."""
    hot = {b["id"] for b in manifest["truth"]["blocks"] if b.get("hotplugged")}
    return hot & set(manifest.get("dump", {}).get("capture_onlined_blocks", ()))


def manifest_of(name: str) -> Dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def vmlinux_for(key: Union[str, Dict[str, Any]]) -> Optional[Path]:
    """
    The committed ``vmlinux.xz`` for kernel ``key``, else the factory's build.
    ``key`` may also be a fixture's manifest (its ``kernel.key`` is used).
    """
    if isinstance(key, dict):
        key = key["kernel"]["key"]
    for path in (KERNELS / key / "vmlinux.xz", FACTORY_BUILD / key / "vmlinux"):
        if path.exists():
            return path
    return None


def kernel_config(key: Union[str, Dict[str, Any]], option: str) -> Optional[str]:
    """``CONFIG_<option>``'s value in the committed config of kernel ``key``
    (or a fixture manifest's kernel); None when unset."""
    if isinstance(key, dict):
        key = key["kernel"]["key"]
    for line in (KERNELS / key / "config").read_text().splitlines():
        if line.startswith(f"CONFIG_{option}="):
            return line.split("=", 1)[1]
    return None


@functools.lru_cache(maxsize=None)
def fixture_program(name: str) -> drgn.Program:
    """Open fixture ``name`` with its kernel's vmlinux (cached per name)."""
    manifest = manifest_of(name)
    key = manifest["kernel"]["key"]
    vmlinux = vmlinux_for(key)
    if vmlinux is None:
        raise FileNotFoundError(f"no vmlinux for kernel {key!r} "
                                f"(looked in {KERNELS / key} and {FACTORY_BUILD / key})")
    vmcore = FIXTURES / manifest.get("dump", {}).get("file", f"{name}.vmcore")
    return open_target(vmcore=str(vmcore), symbols=[str(vmlinux)])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fixture_name" in metafunc.fixturenames:
        metafunc.parametrize("fixture_name", list(manifests()))


@pytest.fixture
def manifest(fixture_name: str) -> Dict[str, Any]:
    return manifest_of(fixture_name)


@pytest.fixture
def prog(fixture_name: str) -> drgn.Program:
    try:
        return fixture_program(fixture_name)
    except FileNotFoundError as e:
        pytest.skip(str(e))


def pagetable_faults(manifest: Dict[str, Any]) -> Dict[int, Tuple[str, Optional[int]]]:
    """Blocks whose vmemmap mapping faultmod changed after the truth was
    taken: ``{block: (op, target frame or None)}``.  Such a block no longer
    hosts its own memmap as the truth says, whatever its record says:
    ``pmd_clear`` unmapped it, ``pmd_remap`` pointed it at another block's
    frames, ``hvo_remap`` aliased a folio's vmemmap onto one frame (the
    module's ``reused_frame``), ``vmemmap_fallback`` moved one vmemmap page
    to a page-allocator frame (``new_frame``)."""
    out = {}
    for f in manifest.get("faults", []):
        if f["op"] in ("pmd_clear", "pmd_remap"):
            out[f["target"]["block"]] = (f["op"], f["target"].get("value"))
        elif f["op"] == "hvo_remap":
            out[f["target"]["block"]] = (f["op"], f["module"]["reused_frame"])
        elif f["op"] == "vmemmap_fallback":
            # One vmemmap page moved to a page-allocator frame: the block
            # self-hosts one frame fewer than the truth says.
            out[f["target"]["block"]] = (f["op"], f["module"]["new_frame"])
    return out
