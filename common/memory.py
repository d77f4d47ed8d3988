"""A process's own resident memory on Linux, read from /proc (the CPU side of memory measurements).

``reset_peak_rss`` makes ``VmHWM`` (the peak resident set) equal the current ``VmRSS``, so a peak read
after some work is that work's peak, not the process's since start-up.
"""

from __future__ import annotations


def status_mib(key: str) -> float:
    """``/proc/self/status`` field ``key`` (``VmRSS``, ``VmHWM``, ...) in MiB."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(f"{key}:"))
    return int(line.split()[1]) / 1024


def reset_peak_rss() -> None:
    """Reset this process's peak resident set (``VmHWM``) to its current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
