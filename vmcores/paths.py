"""Locations and a logging subprocess runner shared by the factory."""

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
#: Downloads, kernel trees and builds.  Large (several GB); never committed.
CACHE = Path(os.environ.get("VMCORES_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "drgn-vmemmap-factory")
FIXTURES = HERE / "fixtures"
KERNEL_DIR = HERE / "kernels"


def log(msg: str) -> None:
    print(f"[vmcores] {msg}", file=sys.stderr, flush=True)


def run(cmd: List[str], cwd: Optional[Path] = None, env=None, quiet: bool = True) -> None:
    """Run ``cmd``; on failure show the tail of its output and raise."""
    log("$ " + " ".join(str(c) for c in cmd))
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env,
                          stdout=subprocess.PIPE if quiet else None,
                          stderr=subprocess.STDOUT if quiet else None, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout or "").splitlines()[-40:])
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")
