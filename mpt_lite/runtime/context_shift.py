"""Context shift: when a sequence would pass its window (max_seq_len, or what the KV budget can
give it), drop the oldest whole KV blocks after the first n_keep tokens and go on.

Nothing is recomputed: with ALiBi a key carries no position, and the attention kernels measure a
key's distance by its place in the block table, so once blocks leave the table the kept keys are
contiguous and distances are taken over the kept positions. n_keep rounds up to whole blocks (the
block holding the n_keep-th token is kept whole), so up to block_size - 1 more tokens are kept."""
from __future__ import annotations

from .arguments import check_n_keep
from .block_manager import BlockManager
from .request import Request


def check_context_shift(config, n_keep: int, window: int, block_size: int) -> None:
    """ValueError unless a sequence of this model can shift within `window` tokens keeping n_keep."""
    if config.uses_wpe:
        raise ValueError(
            "context_shift needs ALiBi: this model has learned positions (transformer.wpe, alibi off), so "
            "its kept keys would need their positions changed, which a shift does not do")
    check_n_keep(n_keep)
    kept = -(-n_keep // block_size) * block_size
    if kept + block_size > window:
        raise ValueError(
            f"n_keep={n_keep} (kept as {kept} tokens, whole blocks of {block_size}) leaves no room in a window of "
            f"{window} tokens for a context shift; lower n_keep")


def fit_chunk(blocks: BlockManager, req: Request, start: int, end: int) -> int:
    """For a context-shift request about to compute its tokens [start, end): shortens the chunk to
    what fits the window even after dropping every droppable block, drops the blocks needed, and
    returns the new end (> start)."""
    seq, bs = req.blocks, blocks.block_size
    lowest = seq.kv_len(start) - blocks.droppable_blocks(seq, req.n_keep) * bs  # once all it may drop is gone
    end = min(end, start + req.window - lowest)
    over = seq.kv_len(end) - req.window
    if over > 0:
        blocks.shift(seq, req.n_keep, -(-over // bs))
    return end


def shift_for_memory(blocks: BlockManager, req: Request) -> bool:
    """Drops one block of a context-shift request that cannot grow for lack of free blocks;
    False when it has none to drop."""
    if not req.context_shift or blocks.droppable_blocks(req.blocks, req.n_keep) == 0:
        return False
    blocks.shift(req.blocks, req.n_keep, 1)
    return True
