"""Peak resident memory of one step of the benchmark (the erasure), not of the whole process.

On Linux the kernel's RSS high-water mark (``VmHWM`` in /proc/self/status)
can be reset to the current RSS by writing ``5`` to /proc/self/clear_refs;
`PeakRSS` does that before the step and reads the mark after it, so each
(method, scenario) gets its own peak.  Where that is not possible (other
systems, restricted /proc) it falls back to ``getrusage`` ru_maxrss, which
is the process-wide high-water mark since start (never reset) and says so
in ``how``.  tracemalloc is not used: it does not see torch's allocations.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_high_water() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _ru_maxrss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


class PeakRSS:
    """``with PeakRSS() as m: step()`` then ``m.result()`` -> peak/start/increase in MB and how it was read."""

    def __enter__(self) -> "PeakRSS":
        self.resettable = _status_kb("VmHWM") is not None and _reset_high_water()
        self.start_kb = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.peak_kb = _status_kb("VmHWM") if self.resettable else None

    def result(self) -> dict:
        if self.resettable and self.peak_kb is not None and self.start_kb is not None:
            return {"peak_rss_mb": self.peak_kb / 1024, "start_rss_mb": self.start_kb / 1024,
                    "increase_mb": max(0, self.peak_kb - self.start_kb) / 1024,
                    "how": "RSS high-water mark of this step (VmHWM, reset via /proc/self/clear_refs)"}
        return {"peak_rss_mb": _ru_maxrss_mb(), "start_rss_mb": None, "increase_mb": None,
                "how": "process-wide RSS high-water mark since start (getrusage ru_maxrss; not resettable here)"}
