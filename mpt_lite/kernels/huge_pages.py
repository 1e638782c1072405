"""Weights in transparent huge pages: one anonymous mapping, advised MADV_HUGEPAGE, holding many tensors.

Decode streams every weight once a token. With 4 KiB pages that is a TLB miss every 4 KiB, and in a virtual
machine each miss walks two page tables (guest and host); with 2 MiB pages the walks all but vanish. On the
2-vCPU virtual machine of docs/benchmarks.md the same int4 weights decoded faster from huge pages in 20 of 24
in-process rounds (median +3.8%; int8 +2.6%, nf4 +1.6%). Linux only; elsewhere, or where THP is `never`,
nothing moves.

MPT_LITE_HUGE_PAGES: `auto` (the default: the loader places weights it made itself, not those it maps from a
saved folder, which stay a file mapping that pages in as used), `all` (mapped ones too, copied), `0` (off).
hub/placement.py decides what moves and when."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os
from pathlib import Path

import torch

HUGE_PAGE = 2 << 20
ALIGN = 4096  # each tensor starts on a page: the kernels' 64-byte alignment and more
MIN_BYTES = 64 << 10  # smaller tensors are not worth a page of padding each
MODES = ("auto", "all", "0")
_THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_page_mode() -> str:
    """MPT_LITE_HUGE_PAGES, checked: 'auto', 'all' or '0' ('1' and 'on' read as 'auto', 'off' as '0')."""
    raw = os.environ.get("MPT_LITE_HUGE_PAGES", "auto").strip().lower()
    mode = {"1": "auto", "on": "auto", "off": "0", "": "auto"}.get(raw, raw)
    if mode not in MODES:
        raise ValueError(f"MPT_LITE_HUGE_PAGES must be one of auto, all, 0 (or 1 / on / off), got {raw!r}")
    return mode


def thp_available() -> bool:
    """Whether this kernel gives huge pages to a mapping that asks (THP `always` or `madvise`)."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        setting = _THP_ENABLED.read_text()
    except OSError:
        return False
    return "[always]" in setting or "[madvise]" in setting


def _contiguous_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.layout == torch.strided and t.is_contiguous()


def placeable(t: torch.Tensor | None, min_bytes: int = MIN_BYTES, views: bool = False) -> bool:
    """A contiguous CPU tensor of at least min_bytes; unless `views`, one that is the whole of its storage (a view
    of something bigger is left alone by default: moving it copies the part and keeps the whole)."""
    if not isinstance(t, torch.Tensor) or not _contiguous_cpu(t):
        return False
    n = t.numel() * t.element_size()
    return n >= max(min_bytes, 1) and (views or (t.storage_offset() == 0 and t.untyped_storage().nbytes() == n))


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Hands the C heap's free pages back to the system (glibc's malloc_trim). Tensors below glibc's mmap
    threshold live in its heap, and freeing them leaves the pages resident: without this, moving weights one by
    one would still hold the originals' pages, and the peak would be the weights twice."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _padded(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


class HugePageArena:
    """One private anonymous mapping of `capacity` bytes advised for huge pages, handed out in order by copy(),
    each tensor on a 4 KiB boundary. Pages are faulted in as copies land; the mapping is freed when the last
    tensor over it is. Callers drop each original after its copy (and release_freed_memory()), so the peak is the
    weights once plus the largest tensor."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        mm = mmap.mmap(-1, max(self.capacity, 1) + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            mm.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # refused (e.g. a sandbox's seccomp policy): plain pages, still correct
            pass
        self._view = memoryview(mm)
        self._base = torch.frombuffer(mm, dtype=torch.uint8)  # the whole mapping's address range, for holds()
        self._start = (-self._base.data_ptr()) % HUGE_PAGE  # the first 2 MiB boundary
        self.used = 0

    def holds(self, t: torch.Tensor) -> bool:
        """Whether t's memory lies in this arena."""
        lo = self._base.data_ptr()
        return t.device.type == "cpu" and lo <= t.data_ptr() < lo + self._base.numel()

    def fits(self, t: torch.Tensor) -> bool:
        return self.used + t.numel() * t.element_size() <= self.capacity

    def copy(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of `t` (same dtype, shape and values) in the next free part of the mapping."""
        if not _contiguous_cpu(t):
            raise ValueError(f"HugePageArena takes contiguous CPU tensors, got {t.dtype} {tuple(t.shape)} on {t.device}")
        n = t.numel() * t.element_size()
        if not self.fits(t):
            raise ValueError(f"HugePageArena: {n} bytes do not fit ({self.capacity - self.used} of "
                             f"{self.capacity} left)")
        at = self._start + self.used
        # A storage of its own over its slice (which keeps the mapping alive): torch.save or pickling one tensor
        # then writes its own bytes, not the whole mapping, and safetensors sees no shared storage.
        dst = torch.frombuffer(self._view[at: at + n], dtype=torch.uint8).view(t.dtype).view(t.shape)
        dst.copy_(t)
        self.used += _padded(n)
        return dst


def arena_bytes(tensors) -> int:
    """The capacity an arena needs for these tensors (or meta tensors of their shapes)."""
    return sum(_padded(t.numel() * t.element_size()) for t in tensors)


def copy_to_huge_pages(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of `tensors`, all in one HugePageArena."""
    arena = HugePageArena(arena_bytes(tensors))
    return [arena.copy(t) for t in tensors]
