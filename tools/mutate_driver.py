#!/usr/bin/env python3
"""
The checker's side of the mutation corpus (``tools/mutate.py``), run as its
own process so that the corpus's oracle shares no code with the checker.

``python tools/mutate_driver.py CORE VMLINUX`` opens ``CORE`` (the corpus's
ELF working copy, which it patches between requests) with ``VMLINUX`` once,
then serves JSON lines on stdin / stdout:

* it first writes ``{"ready": true}``, or ``{"error": LINE}`` if the target
  cannot be opened (a :class:`~drgn_vmemmap.target.TargetError`) and exits;
* each request ``{"op": "check"}`` (optionally ``"fresh": true``) runs
  :func:`drgn_vmemmap.check` on the file as it is now and answers
  ``{"report": Report.to_json()}``, ``{"error": LINE}`` for a clean refusal
  (``TargetError``: the CLI's exit status 2) or ``{"crash": TRACEBACK}`` for
  any other exception;
* ``{"op": "quit"}`` (or end of input) ends it.

Every check sees the bytes in the file at the time of the request: drgn
reads an ELF core's memory from the file on each access, and the memoised
state of the checker and of drgn's helpers lives in ``prog.cache``, which is
cleared before each check (``"fresh": true`` opens a new program instead;
the corpus's ``--fresh``).  A request that hangs is the corpus's business:
it kills this process and starts another.

Anything the checker or drgn prints goes to stderr; stdout carries only the
protocol.
"""

import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from drgn_vmemmap import check, open_target  # noqa: E402
from drgn_vmemmap.target import TargetError  # noqa: E402


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: mutate_driver.py CORE VMLINUX", file=sys.stderr)
        return 2
    core, vmlinux = argv
    # The protocol owns the real stdout; stray prints go to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr

    def send(obj) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    def opened():
        return open_target(vmcore=core, symbols=[vmlinux])

    try:
        prog = opened()
    except TargetError as e:
        send({"error": _one_line(e)})
        return 2
    except Exception as e:
        send({"crash": "".join(traceback.format_exception(type(e), e, e.__traceback__))})
        return 1
    send({"ready": True})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
        except ValueError:
            send({"crash": f"bad request: {line[:200]}"})
            continue
        op = req.get("op")
        if op == "quit":
            break
        if op != "check":
            send({"crash": f"unknown op {op!r}"})
            continue
        try:
            if req.get("fresh"):
                target = opened()
            else:
                target = prog
                target.cache.clear()  # the checker's and drgn helpers' memoised state
            report = check(target)
            send({"report": report.to_json()})
        except TargetError as e:
            send({"error": _one_line(e)})
        except Exception as e:
            send({"crash": "".join(traceback.format_exception(type(e), e, e.__traceback__))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
