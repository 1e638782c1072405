"""The paged KV cache ops: writing keys/values into cache blocks, and ALiBi attention over them
(decode: one query per sequence; prefill: a causal chunk per sequence)."""
from __future__ import annotations

import torch

from .checks import check_tensor, check_threads, op_device, ptr
from .extension import _C, launch

# ---- paged KV cache and attention ----
#
# A layer's cache is a pair of tensors k_cache, v_cache of shape (num_blocks, block_size,
# kv_heads, head_dim) in float32, bfloat16, float16 or int8; int8 caches carry float32 scales
# k_scale, v_scale of shape (num_blocks, block_size, kv_heads): value = int8 * scale, with
# scale = absmax / 127 over one token and head. 4-bit caches (llama.cpp's q4_0 as a KV type) are
# uint8 tensors of shape (num_blocks, block_size, kv_heads, head_dim // 2), two codes a byte, with
# float32 scales of shape (num_blocks, block_size, kv_heads, head_dim // 32), one per 32 values
# (csrc/cpu/attention.h; kernels.reference.ref_quantize_kv_q4); CPU only. A slot is
# block * block_size + offset.

KV_CACHE_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.int8: 3, torch.uint8: 4}
Q4_GROUP = 32  # values a scale in a 4-bit cache


def cache_shapes(num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """The shape of one layer's k_cache (and v_cache) of this dtype, and of its k_scale (and v_scale), None
    for the float dtypes, which have no scales."""
    if dtype not in KV_CACHE_DTYPES:
        raise TypeError(f"KV cache dtype must be one of {', '.join(map(str, KV_CACHE_DTYPES))}, got {dtype}")
    rows = (num_blocks, block_size, kv_heads)
    if dtype == torch.uint8:
        if head_dim % Q4_GROUP:
            raise ValueError(f"a 4-bit KV cache needs head_dim a multiple of {Q4_GROUP}, got {head_dim}")
        return rows + (head_dim // 2,), rows + (head_dim // Q4_GROUP,)
    return rows + (head_dim,), (rows if dtype == torch.int8 else None)


def cache_geometry(k_cache: torch.Tensor, v_cache: torch.Tensor, k_scale: torch.Tensor | None,
                   v_scale: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Checks a layer's cache tensors (and their scales, exactly for int8 and 4-bit caches);
    returns (num_blocks, block_size, kv_heads, head_dim)."""
    check_tensor("k_cache", k_cache, tuple(KV_CACHE_DTYPES), ndim=4, device=op_device("k_cache", k_cache))
    check_tensor("v_cache", v_cache, (k_cache.dtype,), ndim=4, device=k_cache.device)
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"k_cache and v_cache differ in shape: {tuple(k_cache.shape)} vs {tuple(v_cache.shape)}")
    num_blocks, block_size, kv_heads, last = k_cache.shape
    if min(block_size, kv_heads, last) == 0:
        raise ValueError(f"empty KV cache dimensions: {tuple(k_cache.shape)}")
    q4 = k_cache.dtype == torch.uint8
    head_dim = 2 * last if q4 else last
    if q4 and k_cache.device.type != "cpu":
        raise ValueError("4-bit (uint8) KV caches run on the CPU only: use int8 or a float KV dtype on the GPU")
    _, want = cache_shapes(num_blocks, block_size, kv_heads, head_dim, k_cache.dtype)
    if want is not None:
        kind = "an int8" if k_cache.dtype == torch.int8 else "a 4-bit"
        for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
            if s is None:
                raise ValueError(f"{kind} KV cache needs {name}")
            check_tensor(name, s, (torch.float32,), ndim=len(want), device=k_cache.device)
            if tuple(s.shape) != want:
                raise ValueError(f"{name} must have shape {want}, got {tuple(s.shape)}")
    elif k_scale is not None or v_scale is not None:
        raise ValueError("k_scale/v_scale belong to int8 and 4-bit KV caches only")
    return num_blocks, block_size, kv_heads, head_dim


def check_k_bound(k_bound: torch.Tensor | None, k_cache: torch.Tensor) -> None:
    """A float CPU cache's optional key bounds: float32 (num_blocks, block_size, kv_heads), each key row's
    largest |value| as write_kv_cache stores it; attention then skips blocks ALiBi makes negligible."""
    if k_bound is None:
        return
    if k_cache.dtype in (torch.int8, torch.uint8):
        raise ValueError("k_bound belongs to float KV caches only (int8 and 4-bit caches bound keys by their scales)")
    if k_cache.device.type != "cpu":
        raise ValueError("k_bound is CPU only: the CUDA kernels neither write nor read it")
    check_tensor("k_bound", k_bound, (torch.float32,), ndim=3, device=k_cache.device)
    if tuple(k_bound.shape) != tuple(k_cache.shape[:3]):
        raise ValueError(f"k_bound must have shape {tuple(k_cache.shape[:3])}, got {tuple(k_bound.shape)}")


def _cache_args(k_cache, v_cache, k_scale, v_scale, k_bound=None) -> "_C.KvCache":
    num_blocks, block_size, kv_heads, head_dim = cache_geometry(k_cache, v_cache, k_scale, v_scale)
    check_k_bound(k_bound, k_cache)
    scaled = k_cache.dtype in (torch.int8, torch.uint8)
    return _C.KvCache(k=ptr(k_cache), v=ptr(v_cache), k_scale=ptr(k_scale) if scaled else 0,
                      v_scale=ptr(v_scale) if scaled else 0, dtype=KV_CACHE_DTYPES[k_cache.dtype],
                      num_slots=num_blocks * block_size, kv_heads=kv_heads, head_dim=head_dim, block_size=block_size,
                      k_bound=ptr(k_bound) if k_bound is not None else 0)


def _as_f32(name: str, t: object, shape_tail: tuple, device: str | torch.device = "cpu") -> torch.Tensor:
    check_tensor(name, t, (torch.float32, torch.bfloat16, torch.float16), ndim=1 + len(shape_tail), device=device)
    if tuple(t.shape[1:]) != shape_tail:
        raise ValueError(f"{name} must have shape (tokens, {', '.join(map(str, shape_tail))}), got {tuple(t.shape)}")
    return t.float().contiguous()


def _index(name: str, t: object, shape: tuple, dtype: torch.dtype,
           device: str | torch.device = "cpu") -> torch.Tensor:
    """An index array (slots, block tables, lengths). For a CUDA op it may sit on the CPU or on the
    op's device; the CUDA paths take both copies (_host_and_device)."""
    if isinstance(device, torch.device) and device.type == "cuda" and isinstance(t, torch.Tensor) \
            and t.device.type == "cpu":
        device = "cpu"
    check_tensor(name, t, (dtype,), ndim=len(shape), device=device)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return t.contiguous()


def _host_and_device(t: torch.Tensor, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The host copy (for argument checks) and the device copy of an index array. Every layer of a
    step passes the same CPU tensors, so the device copy is made once and kept on the tensor (keyed
    by its version counter: an in-place change makes a new copy)."""
    host = t.cpu().contiguous()
    if t.device == dev:
        return host, t.contiguous()
    memo = getattr(t, "_mpt_lite_device_copy", None)
    if memo is not None and memo[0] == t._version and memo[1].device == dev:
        return host, memo[1]
    copy = host.to(dev)
    t._mpt_lite_device_copy = (t._version, copy)
    return host, copy


def attach_device_copy(host: torch.Tensor, device_copy: torch.Tensor) -> None:
    """Makes device_copy the device copy that the CUDA ops use for the CPU index array host (a
    CUDA graph's static buffer, runtime/cuda_graphs.py): host keeps the values the host-side checks
    and launch geometry see; device_copy holds what the kernels read. host must not change after."""
    if host.device.type != "cpu" or device_copy.device.type != "cuda" or host.shape != device_copy.shape \
            or host.dtype != device_copy.dtype or not host.is_contiguous() or not device_copy.is_contiguous():
        raise ValueError("attach_device_copy takes a contiguous CPU tensor and a CUDA tensor of its shape and dtype")
    host._mpt_lite_device_copy = (host._version, device_copy)


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
                   v_scale: torch.Tensor | None = None, *, num_threads: int | None = None,
                   k_bound: torch.Tensor | None = None) -> None:
    """Writes key/value (tokens, kv_heads, head_dim) into the cache at slot_mapping (tokens,) int64;
    a negative slot skips its token. In place. num_threads: as for the quantized ops. k_bound (float CPU
    caches, optional; check_k_bound): also stores each written key row's largest |value| there."""
    threads = check_threads(num_threads)
    cache = _cache_args(k_cache, v_cache, k_scale, v_scale, k_bound)
    dev = k_cache.device
    tail = (cache.kv_heads, cache.head_dim)
    key, value = _as_f32("key", key, tail, dev), _as_f32("value", value, tail, dev)
    if key.shape != value.shape:
        raise ValueError(f"key and value differ in shape: {tuple(key.shape)} vs {tuple(value.shape)}")
    slots = _index("slot_mapping", slot_mapping, (key.shape[0],), torch.int64, dev)
    if dev.type == "cuda":
        host, slots = _host_and_device(slots, dev)
        _C.write_kv_cache_cuda(**launch(dev), key=ptr(key), value=ptr(value), n_tokens=key.shape[0],
                               slot_mapping=ptr(slots), slot_mapping_host=ptr(host), cache=cache)
        return
    _C.write_kv_cache(key=ptr(key), value=ptr(value), n_tokens=key.shape[0], slot_mapping=ptr(slots), cache=cache,
                      num_threads=threads)


def _attention(decode: bool, query, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale,
               slopes, k_scale, v_scale, num_threads, split_tokens=0, k_bound=None) -> torch.Tensor:
    threads = check_threads(num_threads)
    if not isinstance(split_tokens, int) or isinstance(split_tokens, bool) or split_tokens < 0:
        raise ValueError(f"split_tokens must be a non-negative integer, got {split_tokens!r}")
    cache = _cache_args(k_cache, v_cache, k_scale, v_scale, k_bound)
    dev = k_cache.device
    kv_heads, head_dim = cache.kv_heads, cache.head_dim
    check_tensor("query", query, (torch.float32, torch.bfloat16, torch.float16), ndim=3, device=dev)
    if query.shape[2] != head_dim:
        raise ValueError(f"query head_dim {query.shape[2]} differs from the cache's {head_dim}")
    num_heads = query.shape[1]
    if num_heads % kv_heads:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of the cache's kv_heads ({kv_heads})")
    q = query.float().contiguous()
    check_tensor("block_tables", block_tables, (torch.int32,), ndim=2,
                 device=block_tables.device if isinstance(block_tables, torch.Tensor) else "cpu")
    num_seqs = block_tables.shape[0]
    block_tables = _index("block_tables", block_tables, tuple(block_tables.shape), torch.int32, dev)
    lens = _index("context_lens", context_lens, (num_seqs,), torch.int32, dev)
    if decode:
        if q.shape[0] != num_seqs:
            raise ValueError(f"decode takes one query per sequence: {q.shape[0]} queries, {num_seqs} block tables")
        qsl = None
    else:
        qsl = _index("query_start_loc", query_start_loc, (num_seqs + 1,), torch.int32, dev)
        if int(qsl[-1]) != q.shape[0]:
            raise ValueError(f"query_start_loc ends at {int(qsl[-1])}, query has {q.shape[0]} tokens")
    slopes_ptr = 0
    if slopes is not None:
        slopes = _index("slopes", slopes, (num_heads,), torch.float32, dev).to(dev)
        slopes_ptr = ptr(slopes)
    out = torch.empty_like(q)
    if not num_seqs:
        return out

    def args(tables: torch.Tensor, lens: torch.Tensor, starts: torch.Tensor | None) -> "_C.AttnArgs":
        return _C.AttnArgs(q=ptr(q), out=ptr(out), num_tokens=q.shape[0], num_heads=num_heads, head_dim=head_dim,
                           num_seqs=num_seqs, block_tables=ptr(tables), max_blocks=tables.shape[1],
                           context_lens=ptr(lens), query_start_loc=0 if starts is None else ptr(starts),
                           slopes=slopes_ptr, scale=float(scale), split_tokens=split_tokens)

    if dev.type == "cuda":
        bt_h, bt_d = _host_and_device(block_tables, dev)
        lens_h, lens_d = _host_and_device(lens, dev)
        qsl_h, qsl_d = _host_and_device(qsl, dev) if not decode else (None, None)
        host = args(bt_h, lens_h, qsl_h)
        # scratch for long contexts, from torch's allocator on this stream (freed once the kernel ran)
        size = _C.paged_attention_cuda_workspace(decode=decode, args_host=host, cache=cache)
        work = torch.empty(size, dtype=torch.float32, device=dev)
        _C.paged_attention_cuda(**launch(dev), decode=decode, args=args(bt_d, lens_d, qsl_d), args_host=host,
                                cache=cache, workspace=ptr(work) if size else 0, workspace_size=size)
    else:
        _C.paged_attention(decode=decode, args=args(block_tables, lens, None if decode else qsl), cache=cache,
                           num_threads=threads)
    return out


def paged_attention_decode(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           slopes: torch.Tensor | None = None, k_scale: torch.Tensor | None = None,
                           v_scale: torch.Tensor | None = None, *, num_threads: int | None = None,
                           split_tokens: int = 0, k_bound: torch.Tensor | None = None) -> torch.Tensor:
    """One query per sequence, query (seqs, heads, head_dim), at position context_lens[s] - 1, over
    the keys its block_tables (seqs, max_blocks) int32 row names. Returns float32 (seqs, heads, head_dim).
    split_tokens (CPU): > 0 cuts every context into parts of that many tokens (whole blocks), run in
    parallel and merged (flash-decoding); 0 splits only when the sequences are too few for the
    threads. k_bound: the float cache's key bounds, if write_kv_cache kept them (check_k_bound)."""
    return _attention(True, query, k_cache, v_cache, block_tables, context_lens, None, scale, slopes, k_scale,
                      v_scale, num_threads, split_tokens, k_bound)


def paged_attention_prefill(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, context_lens: torch.Tensor,
                            query_start_loc: torch.Tensor, scale: float, slopes: torch.Tensor | None = None,
                            k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None, *,
                            num_threads: int | None = None, k_bound: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of the new tokens of each sequence: query (tokens, heads, head_dim) holds
    sequence s at rows query_start_loc[s]:query_start_loc[s+1], the last ones of its context_lens[s]
    tokens (a cached prefix plus these); their K/V must already be in the cache. k_bound: as for decode."""
    return _attention(False, query, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale, slopes,
                      k_scale, v_scale, num_threads, k_bound=k_bound)


def attention_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) of a float32 CPU tensor as the attention kernels of the current CPU variant compute
    it (a vector polynomial on AVX2/AVX-512); for accuracy tests against torch.exp."""
    check_tensor("x", x, (torch.float32,), device="cpu")
    x = x.contiguous()
    y = torch.empty_like(x)
    _C.attention_exp(x=ptr(x), y=ptr(y), n=x.numel())
    return y


# ---- ALiBi pruning (csrc/cpu/alibi_pruning.h) ----
#
# CPU attention (decode and prefill) over int8 and 4-bit caches, and over float caches given k_bound (as
# PagedKVCache keeps on the CPU), skips the cache blocks whose keys ALiBi has made negligible: a bound from
# the keys' scales (or k_bound) shows each would weigh under e^-(20 + ln context) of the query's own key.

def alibi_pruning() -> bool:
    """Whether CPU attention prunes now (default on; MPT_LITE_ALIBI_PRUNE=0 turns it off)."""
    return bool(_C.alibi_pruning())


def set_alibi_pruning(on: bool) -> None:
    """Turns the pruning of CPU attention on or off for the whole process."""
    _C.set_alibi_pruning(on=bool(on))


class use_alibi_pruning:
    """Context manager: CPU attention with pruning on or off, then the previous setting."""

    def __init__(self, on: bool) -> None:
        self.on, self.prev = bool(on), None

    def __enter__(self) -> "use_alibi_pruning":
        self.prev = alibi_pruning()
        set_alibi_pruning(self.on)
        return self

    def __exit__(self, *exc) -> None:
        set_alibi_pruning(self.prev)


def alibi_pruning_stats(reset: bool = False) -> tuple[int, int]:
    """(keys skipped, keys visited) by CPU attention since the last reset, counted once per
    query head, over every thread; reset=True also zeroes them."""
    skipped, seen = _C.alibi_pruning_stats(reset=bool(reset))
    return int(skipped), int(seen)
