"""The machine's memory read bandwidth, measured the way a decode step reads its weights: the
extension streams a buffer several times the last-level cache with the current kernel variant's
widest vector loads, one contiguous part per pool thread (csrc/cpu/memory_bandwidth.h). A yardstick
for benchmarks: weight bytes x decode tokens/s over this is the fraction of the bandwidth reached."""
from __future__ import annotations

import statistics

import torch

from .checks import check_threads, ptr
from .extension import _C


def last_level_cache_bytes() -> int:
    """Bytes of the largest data cache the CPU reports (sysconf or /sys); 0 when unknown."""
    return int(_C.last_level_cache_bytes())


def default_read_bytes() -> int:
    """read_bandwidth's default buffer: 4x the last-level cache, at least 256 MiB, at most half the
    free memory."""
    return int(_C.default_read_bytes())


def read_bandwidth(num_threads: int | None = None, nbytes: int | None = None, repeats: int = 5) -> dict:
    """Streams a buffer of `nbytes` (None: 4x the last-level cache, at least 256 MiB, at most half
    the free memory) `repeats` times on `num_threads` pool threads (None: the pool's size).
    Returns {"gb_s": median GB/s (1e9 bytes), "bytes", "threads", "isa", "gb_s_each": per pass,
    "cpu_gb_s": median of the bytes over the process's CPU time per thread (its CPU time / threads):
    on a shared machine, the rate the threads read at while they run}."""
    threads = check_threads(num_threads)
    if nbytes is not None:
        _check_positive("nbytes", nbytes, "None or ")
    _check_positive("repeats", repeats)
    try:
        r = _C.read_bandwidth(bytes=nbytes or 0, repeats=repeats, num_threads=threads)
    except MemoryError as e:
        raise MemoryError(f"read_bandwidth: cannot allocate a buffer of {nbytes or default_read_bytes()} bytes") from e
    return _summary(r)


def read_buffer_bandwidth(buffer: torch.Tensor, num_threads: int | None = None, repeats: int = 1) -> dict:
    """`repeats` timed passes of the same read loop over a caller's buffer (a contiguous CPU tensor of a
    positive multiple of 64 bytes), with no untimed pass: a benchmark interleaves these with the work it
    compares, so that both fall in the same phase of a shared host. Returns what read_bandwidth does."""
    threads = check_threads(num_threads)
    _check_positive("repeats", repeats)
    if not isinstance(buffer, torch.Tensor) or buffer.device.type != "cpu" or not buffer.is_contiguous():
        raise TypeError("buffer must be a contiguous CPU tensor, got "
                        + (f"one on {buffer.device}" if isinstance(buffer, torch.Tensor) else type(buffer).__name__))
    nbytes = buffer.numel() * buffer.element_size()
    if nbytes < 64 or nbytes % 64:
        raise ValueError(f"buffer must hold a positive multiple of 64 bytes, got {nbytes}")
    return _summary(_C.read_buffer_bandwidth(ptr=ptr(buffer), bytes=nbytes, repeats=repeats, num_threads=threads))


def _check_positive(name: str, v: object, alternatives: str = "") -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be {alternatives}a positive int, got {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")


def _summary(r: dict) -> dict:
    each = [r["bytes"] / s / 1e9 for s in r["seconds"]]
    cpu = [r["bytes"] * r["threads"] / max(c, 1e-9) / 1e9 for c in r["cpu_seconds"]]
    return {"gb_s": statistics.median(each), "bytes": int(r["bytes"]), "threads": int(r["threads"]),
            "isa": _C.current_isa(), "gb_s_each": each, "cpu_gb_s": statistics.median(cpu)}
