"""Peak resident memory of the current process during a block of work.

``ru_maxrss`` (the kernel's high-water mark) only ever grows over a process's life, so in a
worker that runs many cells it says nothing about the cell at hand. :class:`PeakRSS` instead
samples the resident set size from ``/proc/self/statm`` on a background thread (every
``interval`` seconds, 10 ms by default) while the block runs, and reports the largest sample
(``peak_mb``) and its growth over the RSS at entry (``growth_mb``). Allocations that come and go
between two samples can be missed, so the figure is a lower bound within one interval. Where
``/proc`` is unavailable it falls back to the high-water mark.
"""

from __future__ import annotations

import os
import resource
import threading
from types import TracebackType

__all__ = ["PeakRSS", "current_rss_mb"]

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def current_rss_mb() -> float:
    """Resident set size now, in MiB (the high-water mark where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE_MB
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakRSS:
    """Context manager: ``with PeakRSS() as mem: ...; mem.peak_mb, mem.growth_mb``."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.start_mb = 0.0
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def growth_mb(self) -> float:
        """Peak minus the RSS at entry (never negative)."""
        return max(0.0, self.peak_mb - self.start_mb)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, current_rss_mb())

    def __enter__(self) -> PeakRSS:
        self.start_mb = self.peak_mb = current_rss_mb()
        self._thread = threading.Thread(target=self._sample, name="matl-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, current_rss_mb())
