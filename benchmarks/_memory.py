"""The process's own memory, read from ``/proc/self`` (Linux), for the benchmark scripts that report peak memory
(``cam_large_k.py``, ``eval_memory.py``). Imports nothing heavy, so a parent process that only starts the
measured ones stays light."""

from __future__ import annotations


def status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field in MiB: ``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark,
    torch's allocations included, which ``tracemalloc`` does not see); NaN where it is absent."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset the process's RSS high-water mark (Linux >= 4.0; elsewhere it keeps the earlier peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
