"""Where a loaded model's weights live: in transparent huge pages (kernels.huge_pages). The loader sizes one
mapping from the model it is about to fill (still on the meta device) and moves each module's weights into it
as soon as they are final, so each original's memory is reused by the next module's work instead of fresh
pages being faulted in for a second copy at the end, and the peak stays the weights plus the largest tensor."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..kernels import huge_pages


def _own_tensors(mod: nn.Module) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(kind, name, tensor) for a module's own parameters ('p', the Parameter) and buffers ('b')."""
    for name, p in mod.named_parameters(recurse=False, remove_duplicate=False):
        yield "p", name, p
    for name, b in mod.named_buffers(recurse=False, remove_duplicate=False):
        if b is not None:
            yield "b", name, b


class Placement:
    """Moves weights of at least `min_bytes` (with `views`, also parts of a bigger storage, e.g. of a file's
    memory map) into one HugePageArena of `capacity` bytes; what does not fit stays where it is."""

    def __init__(self, capacity: int, min_bytes: int = huge_pages.MIN_BYTES, views: bool = False) -> None:
        self.arena = huge_pages.HugePageArena(capacity) if capacity > 0 else None
        self.min_bytes, self.views = min_bytes, views
        self.moved = 0

    def _move(self, owners: list[tuple[nn.Module, str, str]]) -> None:
        """Moves one tensor, held by every (module, kind, name) in owners, and points them all at the copy."""
        mod, kind, name = owners[0]
        t = getattr(mod, name)  # fetched here, so no list keeps the original alive after its move
        data = t.data if kind == "p" else t
        if self.arena is None or self.arena.holds(data) or not huge_pages.placeable(data, self.min_bytes, self.views) \
                or not self.arena.fits(data):
            return
        moved = self.arena.copy(data)
        self.moved += data.numel() * data.element_size()
        if kind == "p":
            t.data = moved  # the Parameter object stays: every module holding it sees the move
        else:
            for m, _, n in owners:
                setattr(m, n, moved)  # a registered buffer's name: nn.Module keeps it a buffer
        del data, t, moved
        huge_pages.release_freed_memory()  # the original's pages, before the next copy

    def module_done(self, mod: nn.Module) -> None:
        """Moves this module's own parameters and buffers that are on the CPU (the loader calls it as each module's
        weights become final; a Parameter shared with another module moves once and stays shared)."""
        for kind, name in [(kind, name) for kind, name, _ in _own_tensors(mod)]:
            self._move([(mod, kind, name)])

    def finish(self, model: nn.Module) -> int:
        """Moves whatever is left in the model, each tensor once for all the modules that hold it (tied
        parameters and shared buffers stay shared); returns the bytes moved in all."""
        groups: dict[int, list[tuple[nn.Module, str, str]]] = {}
        for mod in model.modules():
            for kind, name, t in _own_tensors(mod):
                groups.setdefault(id(t), []).append((mod, kind, name))
        for owners in list(groups.values()):
            self._move(owners)
        return self.moved


def capacity_for(model: nn.Module, min_bytes: int = huge_pages.MIN_BYTES) -> int:
    """The arena bytes for the model's tensors of at least min_bytes (meta tensors count by their shapes)."""
    seen: dict[int, torch.Tensor] = {}
    for mod in model.modules():
        for _, _, t in _own_tensors(mod):
            if t.numel() * t.element_size() >= max(min_bytes, 1):
                seen[id(t)] = t
    return huge_pages.arena_bytes(seen.values())


def place_weights(model: nn.Module, min_bytes: int = huge_pages.MIN_BYTES, views: bool = False) -> int:
    """Moves every CPU parameter and buffer of at least `min_bytes` that owns its storage (with `views`, also parts
    of a bigger one) into one huge-page mapping; tied tensors stay tied. Returns the bytes moved."""
    return Placement(capacity_for(model, min_bytes), min_bytes, views).finish(model)


class _NoPlacement:
    def module_done(self, mod: nn.Module) -> None:
        pass

    def finish(self, model: nn.Module) -> int:
        return 0


def start_placement(meta_model: nn.Module, device: torch.device, mapped: bool, mode: str):
    """The loader's placement for a model still on the meta device: MPT_LITE_HUGE_PAGES (huge_pages.huge_page_mode)
    decides; weights mapped from a saved folder stay mapped unless the mode is 'all'; nothing moves off the CPU
    or where the kernel gives no huge pages."""
    if device.type != "cpu" or mode == "0" or (mapped and mode != "all") or not huge_pages.thp_available():
        return _NoPlacement()
    return Placement(capacity_for(meta_model), views=mapped)
