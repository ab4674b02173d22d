"""Measured memory of this process: resident set on CPU, allocator peaks on GPUs."""

from __future__ import annotations

from pathlib import Path

import torch

GIB = 1024**3


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    """Current resident set size (Linux)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    """Peak resident set size since start or since :func:`reset_peak` (Linux)."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def reset_peak() -> bool:
    """Restart the peak counters: VmHWM (Linux >= 4.0) and the CUDA allocator's."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def snapshot() -> dict:
    """Current and peak memory, in bytes."""
    out = {"rss": rss_bytes(), "peak_rss": peak_rss_bytes()}
    if torch.cuda.is_available():
        out["cuda_allocated"] = torch.cuda.memory_allocated()
        out["cuda_peak_allocated"] = torch.cuda.max_memory_allocated()
        out["cuda_peak_reserved"] = torch.cuda.max_memory_reserved()
    return out
