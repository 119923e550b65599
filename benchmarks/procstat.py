"""CPU time and peak memory of another process: psutil when installed, else Linux's /proc."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (all its threads)."""
    try:
        import psutil
    except ImportError:
        # /proc/<pid>/stat fields 14 and 15 (utime, stime) in clock ticks; the command name
        # (field 2) may hold spaces, so count from the closing parenthesis.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water mark of resident memory since it started (VmHWM)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import psutil  # not Linux: the current RSS is the best psutil knows

    return int(psutil.Process(pid).memory_info().rss)
