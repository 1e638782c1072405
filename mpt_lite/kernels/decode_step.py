"""The engine's whole forward pass in one native call (csrc/cpu/decode_step.h).

A DecodePlan is filled once with every weight (float32, or the codes of one quantized format,
each weight its own), the norms, the config fields and each layer's paged KV cache; `step` then
runs a flat batch of new tokens of several sequences and returns the logits of the chosen rows.
The plan keeps a reference to every tensor it was given, so the pointers it holds stay valid."""
from __future__ import annotations

import torch

from .attention_ops import KV_CACHE_DTYPES, cache_geometry, check_k_bound
from .checks import check_int4_scales, check_tensor, check_threads, ptr
from .extension import _C
from .int6_ops import int6_row_bytes
from .layouts import AMX_MIN_ROWS, Q8_GEMM_MIN_K, Q8_MAX_ROWS, int4_group_of, int4_groups, nf4_q8_ok

_FMT = {"float32": -1, "int8": 0, "nf4": 1, "int4": 2, "int4_rows8": 3, "nf4_rows8": 4, "int8_rows8": 5, "int6": 6}


def _f32(name: str, t: object, numel: int) -> torch.Tensor:
    check_tensor(name, t, (torch.float32,))
    if t.numel() != numel or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous float32 tensor of {numel} elements, got {tuple(t.shape)}")
    return t


class DecodePlan:
    def __init__(self, *, d_model: int, n_heads: int, kv_heads: int, head_dim: int, ffn: int, vocab: int,
                 n_layers: int, eps: float, clip_qkv: float | None, softmax_scale: float,
                 logit_scale: float | None, slopes: torch.Tensor | None) -> None:
        if slopes is not None:
            slopes = _f32("slopes", slopes, n_heads)
        self.vocab, self.d_model = vocab, d_model
        self._keep: list[torch.Tensor] = [] if slopes is None else [slopes]
        self._plan = _C.DecodePlan(
            d_model=d_model, n_heads=n_heads, kv_heads=kv_heads, head_dim=head_dim, ffn=ffn, vocab=vocab,
            n_layers=n_layers, eps=float(eps), clip_qkv=float(clip_qkv or 0.0), softmax_scale=float(softmax_scale),
            logit_scale=float(logit_scale if logit_scale is not None else 1.0),
            has_logit_scale=logit_scale is not None, slopes=0 if slopes is None else ptr(slopes),
            q8_max_rows=Q8_MAX_ROWS, q8_gemm_min_k=Q8_GEMM_MIN_K, bf16_min_rows=AMX_MIN_ROWS)

    def _hold(self, t: torch.Tensor | None) -> int:
        if t is None:
            return 0
        check_tensor("plan tensor", t, (t.dtype,))  # on the CPU
        self._keep.append(t)
        return ptr(t)

    def set_float_weight(self, layer: int, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """weight float32 [N, K] (nn.Linear's layout, or an embedding table)."""
        check_tensor(name, weight, (torch.float32,), ndim=2)
        n, k = weight.shape
        bias = None if bias is None else _f32(f"{name} bias", bias, n)
        self._plan.set_weight(layer=layer, name=name, fmt=_FMT["float32"], n=n, k=k, blocksize=0,
                              data=self._hold(weight.contiguous()), scale=0, bias=self._hold(bias))

    def set_quant_weight(self, layer: int, name: str, quant_type: str, data: torch.Tensor, scale: torch.Tensor,
                         n: int, k: int, blocksize: int, bias: torch.Tensor | None, *, rows8: bool = False) -> None:
        """The codes of one weight [n, k] in `quant_type` (byte layouts: csrc/cpu/quant_formats.h, int6: the
        embedding's, quant_int6.h); rows8:
        codes in the rows8 layout (Linears and an int8 embedding, n a multiple of 8; nf4: nf4_q8_ok; int8: k a
        multiple of 32)."""
        if quant_type not in ("int8", "nf4", "int4", "int6"):
            raise ValueError(f"unknown quant_type {quant_type!r}")
        if rows8 and ((name == "embedding" and quant_type != "int8") or quant_type == "int6" or n % 8
                      or (quant_type == "nf4" and not nf4_q8_ok(k, blocksize)) or (quant_type == "int8" and k % 32)):
            raise ValueError(f"{name}: the rows8 layout is for Linears (and an int8 embedding) of a multiple of 8 "
                             "rows (nf4: nf4_q8_ok; int8: in_features a multiple of 32)")
        group = None
        if quant_type == "int4":  # any group (layouts.INT4_GROUPS): the scales' count says which; passed as blocksize
            group = int4_group_of(k, scale.numel() // n) if n and isinstance(scale, torch.Tensor) else None
            blocksize = group or 32
        want = {"int8": (n * k, n), "nf4": ((n * k + 1) // 2, (n * k + blocksize - 1) // blocksize),
                "int4": (n * int4_groups(k) * 16, n * int4_groups(k, group or 32)),
                "int6": (n * int6_row_bytes(k), n * int4_groups(k))}[quant_type]
        check_tensor(f"{name} codes", data, (torch.int8 if quant_type == "int8" else torch.uint8,))
        if data.numel() != want[0] or not data.is_contiguous():
            raise ValueError(f"{name}: {quant_type} codes of a [{n}, {k}] weight hold {want[0]} bytes, "
                             f"got {data.numel()}")
        if quant_type in ("int4", "int6"):  # half scales (int4: format version 3)
            check_int4_scales(scale)
            if scale.numel() != want[1] or not scale.is_contiguous():
                raise ValueError(f"{name} scales must be a contiguous float16 tensor of {want[1]} elements, "
                                 f"got {tuple(scale.shape)}")
        else:
            scale = _f32(f"{name} scales", scale, want[1])
        bias = None if bias is None else _f32(f"{name} bias", bias, n)
        fmt = _FMT[quant_type + "_rows8"] if rows8 else _FMT[quant_type]
        self._plan.set_weight(layer=layer, name=name, fmt=fmt, n=n, k=k, blocksize=blocksize,
                              data=self._hold(data), scale=self._hold(scale), bias=self._hold(bias))

    def set_norm(self, layer: int, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        weight = _f32(f"{name} weight", weight, self.d_model)
        bias = None if bias is None else _f32(f"{name} bias", bias, self.d_model)
        self._plan.set_norm(layer=layer, name=name, weight=self._hold(weight), bias=self._hold(bias))

    def set_cache(self, layer: int, k_cache: torch.Tensor, v_cache: torch.Tensor, k_scale: torch.Tensor | None,
                  v_scale: torch.Tensor | None, k_bound: torch.Tensor | None = None) -> None:
        """One layer's paged cache, (num_blocks, block_size, kv_heads, head_dim) each (see attention_ops);
        k_bound: a float cache's key bounds (attention_ops.check_k_bound), kept up to date by the step."""
        nb, bs, kvh, hd = cache_geometry(k_cache, v_cache, k_scale, v_scale)
        check_k_bound(k_bound, k_cache)
        self._plan.set_cache(layer=layer, k=self._hold(k_cache), v=self._hold(v_cache), k_scale=self._hold(k_scale),
                             v_scale=self._hold(v_scale), dtype=KV_CACHE_DTYPES[k_cache.dtype], num_slots=nb * bs,
                             kv_heads=kvh, head_dim=hd, block_size=bs, k_bound=self._hold(k_bound))

    def validate(self) -> None:
        """ValueError naming the first part of the plan that is missing or mis-shaped."""
        self._plan.validate()

    def step(self, ids: torch.Tensor, slot_mapping: torch.Tensor, block_tables: torch.Tensor,
             context_lens: torch.Tensor, query_start_loc: torch.Tensor, decode: bool,
             rows: torch.Tensor, num_threads: int | None = None) -> torch.Tensor:
        """Logits (len(rows), vocab) float32 of the flat batch `ids` (int64, the new tokens of every
        sequence back to back); the other arguments as kv_cache.PagedStep holds them. num_threads:
        at most this many kernel threads (None: the pool's size)."""
        n = ids.numel()
        ids = check_tensor("ids", ids, (torch.int64,)).reshape(-1).contiguous()
        slots = check_tensor("slot_mapping", slot_mapping, (torch.int64,), ndim=1).contiguous()
        tables = check_tensor("block_tables", block_tables, (torch.int32,), ndim=2).contiguous()
        lens = check_tensor("context_lens", context_lens, (torch.int32,), ndim=1).contiguous()
        qsl = check_tensor("query_start_loc", query_start_loc, (torch.int32,), ndim=1).contiguous()
        rows = check_tensor("rows", rows, (torch.int64,), ndim=1).contiguous()
        seqs = tables.shape[0]
        if slots.numel() != n or lens.numel() != seqs or qsl.numel() != seqs + 1:
            raise ValueError(f"a step of {n} tokens and {seqs} sequences needs {n} slots, {seqs} context lengths "
                             f"and {seqs + 1} query starts, got {slots.numel()}, {lens.numel()}, {qsl.numel()}")
        logits = torch.empty(rows.numel(), self.vocab, dtype=torch.float32)
        self._plan.step(ids=ptr(ids), n_tokens=n, slots=ptr(slots), block_tables=ptr(tables), num_seqs=seqs,
                        max_blocks=tables.shape[1], context_lens=ptr(lens), query_start_loc=ptr(qsl),
                        decode=bool(decode), rows=ptr(rows), n_rows=rows.numel(), logits=ptr(logits),
                        num_threads=check_threads(num_threads))
        return logits
