"""
Progress
--------

The one progress display: a text bar on one line of stderr, drawn only when
that stream is a terminal and erased when the work is done, e.g.
``scanning struct pages [#####.....] 1234/5678 pages (1.2 M pages/s)``
(the check's scan) or ``triage [###.......] 3/9 dumps, 1 not analysed``.
"""

import sys
import time
from typing import Optional, TextIO

__all__ = ("ProgressBar",)


class ProgressBar:
    """
    ``bar(done, total)`` redraws ``LABEL [###...] done/total UNIT``, at most
    every ``interval`` seconds (always for the first and the last call), and
    erases it once ``done >= total``.

    :param stream: Default :data:`sys.stderr`; nothing is drawn unless it is
        a terminal.
    :param rate: Also show the rate, in millions of ``unit`` a second.
    """

    WIDTH = 30

    def __init__(self, label: str, unit: str, stream: Optional[TextIO] = None, *,
                 rate: bool = False, interval: float = 0.1) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.rate = rate
        self.interval = interval
        #: Drawing at all (the stream is a terminal).
        self.active = self.stream.isatty()
        self._t0 = time.monotonic()
        self._last = 0.0
        self._shown = 0  # length of the line on screen

    def __call__(self, done: int, total: int, note: str = "") -> None:
        """Show ``done`` of ``total``, followed by ``note`` (e.g. ``", 2 failed"``)."""
        if not self.active:
            return
        if done >= total:
            self.clear()
            return
        now = time.monotonic()
        if self._shown and now - self._last < self.interval:
            return
        self._last = now
        filled = self.WIDTH * done // max(total, 1)
        line = (f"{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                f"{done}/{total} {self.unit}")
        if self.rate:
            per_second = done / max(now - self._t0, 1e-9)
            line += f" ({per_second / 1e6:.1f} M {self.unit}/s)"
        line += note
        pad = " " * max(self._shown - len(line), 0)
        self.stream.write(f"\r{line}{pad}")
        self.stream.flush()
        self._shown = len(line)

    def clear(self) -> None:
        """Erase the bar (before other output on the terminal, or when done)."""
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0
